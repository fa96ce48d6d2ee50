// Nystrom attention (SPEC.md 6, docs/attention.md; Xiong et al. 2021, "Nystromformer"). Per
// (b, h), kv head g = h / (H/Hkv), s = AttnDesc::scale, m = min(n_landmarks, Tq, Tk):
//
//   Ql = Pq Q [m, D], Kl = Pk K [m, D]   landmarks: means of m consecutive segments of rows;
//                                        segment i = rows [floor(i T / m), floor((i+1) T / m))
//                                        (lengths floor(T/m) or ceil(T/m), every row in one)
//   F = softmax(s Q Kl^T) [Tq, m],  A = softmax(s Ql Kl^T) [m, m],  Bm = softmax(s Ql K^T) [m, Tk]
//   Z = pinv(A): Z0 = A^T / (max_i sum_j A_ij * max_j sum_i A_ij) (= A^T / (|A|_inf |A|_1)),
//       n = pinv_iterations times  X = A Z,  Z <- 1/4 Z (13I - X (15I - X (7I - X)))
//   out = F (Z (Bm V))  (+ conv: out_t += sum_j w[h, j] v_(t + j - k/2), zero outside [0, T))
//
// m = T (self-attention) makes Ql = Q, Kl = K, F = A = Bm = softmax(s Q K^T) and out = A Z A V
// -> A V (exact softmax) as Z converges to A^-1.
//
// Backward is exact reverse mode through the same steps (computed afresh from q, k, v: nothing
// is kept from the forward but its sizes): matmul adjoints, the iterations unrolled backward
// from their stored Z, X, (7I - X), (15I - X(7I - X)), (13I - ...), the Z0 scale through the
// two maxima (the argmax row and column), softmax adjoints, segment means. Each (b, h) (forward)
// or (b, kv head) (backward) is one task with sums in a fixed order: results do not depend on the
// thread count; conv weight gradients are kept per task and summed in task order.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "posformer/attention/attention.h"
#include "posformer/core/error.h"
#include "posformer/model/params.h"
#include "posformer/ops/matmul.h"
#include "posformer/posenc/position_encoding.h"
#include "variants.h"

namespace posformer {
namespace {

// Landmark segment i of T rows in m segments: [seg_lo(i), seg_lo(i + 1)).
inline int64_t seg_lo(int64_t i, int64_t T, int64_t m) {
  return i * T / m;
}

// L[i] = mean of rows of segment i of x (T rows, stride ld) for m segments; L [m, D].
void landmarks(const float* x, int64_t ld, int64_t T, int64_t m, int64_t D, float* L) {
  for (int64_t i = 0; i < m; ++i) {
    const int64_t lo = seg_lo(i, T, m), hi = seg_lo(i + 1, T, m);
    float* o = L + i * D;
    std::fill_n(o, D, 0.0f);
    for (int64_t r = lo; r < hi; ++r)
      for (int64_t c = 0; c < D; ++c) o[c] += x[r * ld + c];
    const float inv = 1.0f / static_cast<float>(hi - lo);
    for (int64_t c = 0; c < D; ++c) o[c] *= inv;
  }
}

// Backward of landmarks: dx row r += dL[segment of r] / segment length.
void landmarks_backward(const float* dL, int64_t T, int64_t m, int64_t D, float* dx, int64_t ld) {
  for (int64_t i = 0; i < m; ++i) {
    const int64_t lo = seg_lo(i, T, m), hi = seg_lo(i + 1, T, m);
    const float inv = 1.0f / static_cast<float>(hi - lo);
    for (int64_t r = lo; r < hi; ++r)
      for (int64_t c = 0; c < D; ++c) dx[r * ld + c] += dL[i * D + c] * inv;
  }
}

void softmax_rows(float* X, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    float* x = X + r * cols;
    const float mx = *std::max_element(x, x + cols);
    float sum = 0.0f;
    for (int64_t c = 0; c < cols; ++c) sum += (x[c] = std::exp(x[c] - mx));
    const float inv = 1.0f / sum;
    for (int64_t c = 0; c < cols; ++c) x[c] *= inv;
  }
}

// dX holds dL/dP; becomes dL/dlogits = P * (dP - rowsum(dP * P)).
void softmax_rows_backward(const float* P, float* dX, int64_t rows, int64_t cols) {
  for (int64_t r = 0; r < rows; ++r) {
    const float* p = P + r * cols;
    float* d = dX + r * cols;
    float dot = 0.0f;
    for (int64_t c = 0; c < cols; ++c) dot += p[c] * d[c];
    for (int64_t c = 0; c < cols; ++c) d[c] = p[c] * (d[c] - dot);
  }
}

// Y = c I - Y for an m x m matrix.
void c_eye_minus(float* Y, int64_t m, float c) {
  for (int64_t i = 0; i < m * m; ++i) Y[i] = -Y[i];
  for (int64_t i = 0; i < m; ++i) Y[i * m + i] += c;
}

struct Opts {
  int64_t M = 64, iters = 6, kernel = 0;
};

// Per-thread buffers of one (b, h); sized on first use, reused.
struct Work {
  std::vector<float> Ql, Kl, F, A, Bm, W, U;
  std::vector<float> Z, X, T1, T2, T3;  // per iteration (iters + 1 Z's)
  std::vector<float> dF, dU, dZ, dZp, dW, dBm, dA, dX, dT, dT2, dQl, dKl;
  std::vector<float> dw;  // conv weight gradient of the task's heads [group, kernel]
  int64_t r_arg = 0, c_arg = 0;
  float rmax = 0, cmax = 0;
};

template <class V>
void fit(V& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

// Rows of sequence b: query row t of head h, key/value row s of kv head g.
struct Rows {
  const AttnDesc& a;
  int64_t b;
  const float* q(int64_t h) const { return a.q + b * a.Tq * a.ldq + h * a.D; }
  const float* k(int64_t g) const { return a.k + b * a.kv_rows() * a.ldk + g * a.D; }
  const float* v(int64_t g) const { return a.v + b * a.kv_rows() * a.ldv + g * a.D; }
};

int64_t n_marks(const AttnDesc& a, const Opts& o) {
  return std::min({o.M, a.Tq, a.Tk});
}

// The forward of (b, h) up to U = Z W, keeping every intermediate in w (backward reads them).
void head_core(const AttnDesc& a, const Opts& o, int64_t b, int64_t h, Work& w) {
  const Rows x{a, b};
  const int64_t D = a.D, g = h / (a.H / a.Hkv), m = n_marks(a, o), mm = m * m, Tq = a.Tq, Tk = a.Tk;
  const float s = a.scale;
  fit(w.Ql, m * D), fit(w.Kl, m * D), fit(w.F, Tq * m), fit(w.A, mm), fit(w.Bm, m * Tk);
  fit(w.W, m * D), fit(w.U, m * D);
  fit(w.Z, (o.iters + 1) * mm), fit(w.X, o.iters * mm), fit(w.T1, o.iters * mm);
  fit(w.T2, o.iters * mm), fit(w.T3, o.iters * mm);
  landmarks(x.q(h), a.ldq, Tq, m, D, w.Ql.data());
  landmarks(x.k(g), a.ldk, Tk, m, D, w.Kl.data());
  ops::gemm(false, true, Tq, m, D, s, x.q(h), a.ldq, w.Kl.data(), D, 0.0f, w.F.data(), m);
  softmax_rows(w.F.data(), Tq, m);
  ops::gemm(false, true, m, m, D, s, w.Ql.data(), D, w.Kl.data(), D, 0.0f, w.A.data(), m);
  softmax_rows(w.A.data(), m, m);
  ops::gemm(false, true, m, Tk, D, s, w.Ql.data(), D, x.k(g), a.ldk, 0.0f, w.Bm.data(), Tk);
  softmax_rows(w.Bm.data(), m, Tk);
  // Z0 = A^T / (max row sum * max column sum); first maximum wins a tie
  const float* A = w.A.data();
  w.rmax = -1, w.cmax = -1;
  for (int64_t i = 0; i < m; ++i) {
    float r = 0.0f, c = 0.0f;
    for (int64_t j = 0; j < m; ++j) r += A[i * m + j], c += A[j * m + i];
    if (r > w.rmax) w.rmax = r, w.r_arg = i;
    if (c > w.cmax) w.cmax = c, w.c_arg = i;
  }
  const float inv = 1.0f / (w.rmax * w.cmax);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j) w.Z[i * m + j] = A[j * m + i] * inv;
  for (int64_t it = 0; it < o.iters; ++it) {
    const float* Z = w.Z.data() + it * mm;
    float *X = w.X.data() + it * mm, *T1 = w.T1.data() + it * mm, *T2 = w.T2.data() + it * mm,
          *T3 = w.T3.data() + it * mm;
    ops::gemm(false, false, m, m, m, 1.0f, A, m, Z, m, 0.0f, X, m);
    for (int64_t i = 0; i < mm; ++i) T1[i] = -X[i];
    for (int64_t i = 0; i < m; ++i) T1[i * m + i] += 7.0f;
    ops::gemm(false, false, m, m, m, 1.0f, X, m, T1, m, 0.0f, T2, m);
    c_eye_minus(T2, m, 15.0f);
    ops::gemm(false, false, m, m, m, 1.0f, X, m, T2, m, 0.0f, T3, m);
    c_eye_minus(T3, m, 13.0f);
    ops::gemm(false, false, m, m, m, 0.25f, Z, m, T3, m, 0.0f, w.Z.data() + (it + 1) * mm, m);
  }
  const float* Zn = w.Z.data() + o.iters * mm;
  ops::gemm(false, false, m, D, Tk, 1.0f, w.Bm.data(), Tk, x.v(g), a.ldv, 0.0f, w.W.data(), D);
  ops::gemm(false, false, m, D, m, 1.0f, Zn, m, w.W.data(), D, 0.0f, w.U.data(), D);
}

// out (row stride ld) += the depthwise convolution of head h over v of kv head g.
void conv_add(const AttnDesc& a, const float* wconv, int64_t kernel, int64_t b, int64_t h,
              float* out, int64_t ld) {
  const int64_t g = h / (a.H / a.Hkv), half = kernel / 2, D = a.D;
  const float* v = Rows{a, b}.v(g);
  for (int64_t t = 0; t < a.Tq; ++t)
    for (int64_t j = 0; j < kernel; ++j) {
      const int64_t r = t + j - half;
      if (r < 0 || r >= a.Tk) continue;
      const float c = wconv[h * kernel + j];
      for (int64_t i = 0; i < D; ++i) out[t * ld + i] += c * v[r * a.ldv + i];
    }
}

void check_nystrom_desc(const AttnDesc& a, const Opts& o) {
  check_attn_desc(a);
  PF_CHECK(!a.hook, "[attention] nystrom attention takes no score hook (relative positions)");
  PF_CHECK(!a.causal, "[attention] nystrom attention cannot be causal");
  PF_CHECK(!a.key_len, "[attention] nystrom attention takes no key padding");
  PF_CHECK(!a.has_window(), "[attention] nystrom attention takes no key window (segment masks)");
  if (o.kernel > 0) {
    PF_CHECK(a.Tq == a.Tk,
             "[attention] nystrom's convolution over V needs Tq == Tk (self-attention)",
             ", got Tq=", a.Tq, " Tk=", a.Tk);
    PF_CHECK(a.params, "[attention] nystrom with attention.conv_kernel needs its weights (",
             a.param_prefix, "conv.weight)");
  }
}

const float* conv_weight(const AttnDesc& a, const Opts& o) {
  if (o.kernel == 0) return nullptr;
  const Tensor& t = a.params->get(a.param_prefix + "conv.weight");
  PF_CHECK(t.shape() == (Shape{a.H, o.kernel}), "[attention] ", a.param_prefix,
           "conv.weight has shape ", shape_str(t.shape()), ", expected [", a.H, ", ", o.kernel,
           "]");
  return t.data<float>();
}

template <class F>
void parallel_tasks(int64_t n, const F& f) {
#pragma omp parallel if (n > 1 && omp_get_max_threads() > 1 && !omp_in_parallel())
  {
    Work w;
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n; ++task) f(task, w);
  }
}

void nystrom_forward(const AttnDesc& a, const Opts& o) {
  check_nystrom_desc(a, o);
  if (a.B == 0 || a.Tq == 0) return;
  const float* wconv = conv_weight(a, o);
  parallel_tasks(a.B * a.H, [&](int64_t bh, Work& w) {
    const int64_t b = bh / a.H, h = bh % a.H, D = a.D;
    float* out = a.out + b * a.Tq * a.ldo + h * D;
    if (a.Tk == 0) {  // no key: 0, as softmax gives a row that sees none
      for (int64_t t = 0; t < a.Tq; ++t) std::fill_n(out + t * a.ldo, D, 0.0f);
      return;
    }
    head_core(a, o, b, h, w);
    const int64_t m = n_marks(a, o);
    ops::gemm(false, false, a.Tq, D, m, 1.0f, w.F.data(), m, w.U.data(), D, 0.0f, out, a.ldo);
    if (wconv) conv_add(a, wconv, o.kernel, b, h, out, a.ldo);
  });
}

// dq, dk, dv (overwritten) of one (b, kv head g); the conv weight gradient of its heads in w.dw.
void group_backward(const AttnDesc& a, const Opts& o, const AttnGrads& gr, const float* wconv,
                    int64_t b, int64_t g, Work& w) {
  const Rows x{a, b};
  const int64_t D = a.D, group = a.H / a.Hkv, Tq = a.Tq, Tk = a.Tk;
  float* dk = gr.dk + b * a.kv_rows() * a.ldk + g * D;
  float* dv = gr.dv + b * a.kv_rows() * a.ldv + g * D;
  for (int64_t r = 0; r < Tk; ++r) std::fill_n(dk + r * a.ldk, D, 0.0f);
  for (int64_t r = 0; r < Tk; ++r) std::fill_n(dv + r * a.ldv, D, 0.0f);
  fit(w.dw, group * o.kernel);
  std::fill_n(w.dw.data(), group * o.kernel, 0.0f);
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    float* dq = gr.dq + b * Tq * a.ldq + h * D;
    if (Tk == 0 || Tq == 0) {  // no landmarks: nothing depends on q, k, v
      for (int64_t t = 0; t < Tq; ++t) std::fill_n(dq + t * a.ldq, D, 0.0f);
      continue;
    }
    const float* G = gr.dout + b * Tq * gr.lddo + h * D;
    head_core(a, o, b, h, w);
    const int64_t m = n_marks(a, o), mm = m * m;
    const float s = a.scale;
    fit(w.dF, Tq * m), fit(w.dU, m * D), fit(w.dZ, mm), fit(w.dZp, mm), fit(w.dW, m * D);
    fit(w.dBm, m * Tk), fit(w.dA, mm), fit(w.dX, mm), fit(w.dT, mm), fit(w.dT2, mm);
    fit(w.dQl, m * D), fit(w.dKl, m * D);
    const float *A = w.A.data(), *Zn = w.Z.data() + o.iters * mm;
    // out = F U, U = Z W, W = Bm V
    ops::gemm(false, true, Tq, m, D, 1.0f, G, gr.lddo, w.U.data(), D, 0.0f, w.dF.data(), m);
    ops::gemm(true, false, m, D, Tq, 1.0f, w.F.data(), m, G, gr.lddo, 0.0f, w.dU.data(), D);
    ops::gemm(false, true, m, m, D, 1.0f, w.dU.data(), D, w.W.data(), D, 0.0f, w.dZ.data(), m);
    ops::gemm(true, false, m, D, m, 1.0f, Zn, m, w.dU.data(), D, 0.0f, w.dW.data(), D);
    ops::gemm(false, true, m, Tk, D, 1.0f, w.dW.data(), D, x.v(g), a.ldv, 0.0f, w.dBm.data(), Tk);
    ops::gemm(true, false, Tk, D, m, 1.0f, w.Bm.data(), Tk, w.dW.data(), D, 1.0f, dv, a.ldv);
    // the iterations backward: Z' = 1/4 Z T3, T3 = 13I - X T2, T2 = 15I - X T1, T1 = 7I - X
    std::fill_n(w.dA.data(), mm, 0.0f);
    for (int64_t it = o.iters - 1; it >= 0; --it) {
      const float *Z = w.Z.data() + it * mm, *X = w.X.data() + it * mm, *T1 = w.T1.data() + it * mm,
                  *T2 = w.T2.data() + it * mm, *T3 = w.T3.data() + it * mm;
      float *dZ = w.dZ.data(), *dZp = w.dZp.data(), *dX = w.dX.data(), *dT = w.dT.data(),
            *dT2 = w.dT2.data();
      ops::gemm(false, true, m, m, m, 0.25f, dZ, m, T3, m, 0.0f, dZp, m);        // dZ T3^T / 4
      ops::gemm(true, false, m, m, m, 0.25f, Z, m, dZ, m, 0.0f, dT, m);          // dT3 = Z^T dZ / 4
      ops::gemm(false, true, m, m, m, -1.0f, dT, m, T2, m, 0.0f, dX, m);         // dX = -dT3 T2^T
      ops::gemm(true, false, m, m, m, -1.0f, X, m, dT, m, 0.0f, dT2, m);         // dT2 = -X^T dT3
      ops::gemm(false, true, m, m, m, -1.0f, dT2, m, T1, m, 1.0f, dX, m);        // dX -= dT2 T1^T
      ops::gemm(true, false, m, m, m, -1.0f, X, m, dT2, m, 0.0f, dT, m);         // dT1 = -X^T dT2
      for (int64_t i = 0; i < mm; ++i) dX[i] -= dT[i];                           // T1 = 7I - X
      ops::gemm(false, true, m, m, m, 1.0f, dX, m, Z, m, 1.0f, w.dA.data(), m);  // X = A Z
      ops::gemm(true, false, m, m, m, 1.0f, A, m, dX, m, 1.0f, dZp, m);
      std::swap(w.dZ, w.dZp);
    }
    // Z0 = A^T / c, c = rmax * cmax
    {
      const float c = w.rmax * w.cmax, *dZ = w.dZ.data();
      float* dA = w.dA.data();
      double dc = 0;
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < m; ++j) {
          dA[i * m + j] += dZ[j * m + i] / c;
          dc -= double(dZ[j * m + i]) * A[i * m + j];
        }
      const float dcf = static_cast<float>(dc / (double(c) * c));
      for (int64_t j = 0; j < m; ++j) dA[w.r_arg * m + j] += dcf * w.cmax;
      for (int64_t i = 0; i < m; ++i) dA[i * m + w.c_arg] += dcf * w.rmax;
    }
    // softmaxes: logits s Q Kl^T, s Ql Kl^T, s Ql K^T
    softmax_rows_backward(w.F.data(), w.dF.data(), Tq, m);
    softmax_rows_backward(A, w.dA.data(), m, m);
    softmax_rows_backward(w.Bm.data(), w.dBm.data(), m, Tk);
    ops::gemm(false, false, Tq, D, m, s, w.dF.data(), m, w.Kl.data(), D, 0.0f, dq, a.ldq);
    ops::gemm(true, false, m, D, Tq, s, w.dF.data(), m, x.q(h), a.ldq, 0.0f, w.dKl.data(), D);
    ops::gemm(false, false, m, D, m, s, w.dA.data(), m, w.Kl.data(), D, 0.0f, w.dQl.data(), D);
    ops::gemm(true, false, m, D, m, s, w.dA.data(), m, w.Ql.data(), D, 1.0f, w.dKl.data(), D);
    ops::gemm(false, false, m, D, Tk, s, w.dBm.data(), Tk, x.k(g), a.ldk, 1.0f, w.dQl.data(), D);
    ops::gemm(true, false, Tk, D, m, s, w.dBm.data(), Tk, w.Ql.data(), D, 1.0f, dk, a.ldk);
    landmarks_backward(w.dQl.data(), Tq, m, D, dq, a.ldq);
    landmarks_backward(w.dKl.data(), Tk, m, D, dk, a.ldk);
    if (wconv) {  // out_t += sum_j w[h, j] v_(t + j - k/2)
      const int64_t half = o.kernel / 2;
      const float* v = x.v(g);
      for (int64_t t = 0; t < Tq; ++t)
        for (int64_t j = 0; j < o.kernel; ++j) {
          const int64_t r = t + j - half;
          if (r < 0 || r >= Tk) continue;
          const float c = wconv[h * o.kernel + j];
          float dot = 0.0f;
          for (int64_t i = 0; i < D; ++i) {
            dv[r * a.ldv + i] += c * G[t * gr.lddo + i];
            dot += G[t * gr.lddo + i] * v[r * a.ldv + i];
          }
          w.dw[(h - g * group) * o.kernel + j] += dot;
        }
    }
  }
}

struct NystromSaved final : AttnSaved {
  int64_t B = 0, H = 0, Tq = 0, Tk = 0;
};

class NystromAttention final : public Attention {
 public:
  NystromAttention(const StackGeom& g, const Opts& o) : g_(g), o_(o) {}
  std::string name() const override { return "nystrom"; }
  AttentionCaps caps() const override {
    AttentionCaps c;
    c.causal = false;                       // landmarks mix every row: no causal form
    c.key_padding = false;                  // no masked landmarks (refused, not approximated)
    c.score_hooks = c.value_hooks = false;  // no T x T score matrix for relative terms
    c.rotary_outside = true;                // RoPE rotates q, k before: landmarks of rotated rows
    c.residual_scores = false;
    c.key_window = false;  // landmarks mix every row, across documents
    return c;
  }

  void declare(std::vector<ParamSpec>& specs) const override {
    if (o_.kernel == 0) return;
    for (int64_t l = 0; l < g_.n_layers; ++l)
      specs.push_back({g_.prefix + "layers." + std::to_string(l) + ".attn.conv.weight",
                       {g_.H, o_.kernel},
                       Init::Normal,
                       "attention",
                       true});
  }

  // Per (b, head): landmarks (Tq + Tk) D adds; the three score products 2 D (Tq m + m^2 + m Tk)
  // and their softmaxes; 8 m^3 per iteration; W, U, out: 2 D (m Tk + m^2 + Tq m); conv
  // 2 k D Tq. Backward recomputes the forward and takes about twice it: 3x the forward.
  AttnCost cost(const AttnDesc& a) const override {
    const double m = double(n_marks(a, o_)), D = double(a.D), Tq = double(a.Tq), Tk = double(a.Tk);
    const double per = (Tq + Tk) * D + 2 * D * (Tq * m + m * m + m * Tk) +
                       8 * m * m * m * double(o_.iters) + 2 * D * (m * Tk + m * m + Tq * m) +
                       2 * double(o_.kernel) * D * Tq;
    const double f = per * double(a.B * a.H);
    return {f, 3 * f};
  }

  void forward(const AttnDesc& desc, std::unique_ptr<AttnSaved>* saved) const override {
    nystrom_forward(desc, o_);
    if (saved) {
      if (!dynamic_cast<NystromSaved*>(saved->get())) *saved = std::make_unique<NystromSaved>();
      auto& s = static_cast<NystromSaved&>(**saved);
      s.B = desc.B, s.H = desc.H, s.Tq = desc.Tq, s.Tk = desc.Tk;
    }
  }

  void backward(const AttnDesc& a, const AttnSaved& saved, const AttnGrads& gr,
                ScoreHook* hook) const override {
    const auto* s = dynamic_cast<const NystromSaved*>(&saved);
    PF_CHECK(s && s->B == a.B && s->H == a.H && s->Tq == a.Tq && s->Tk == a.Tk,
             "[attention] nystrom backward without a forward of the same shape");
    PF_CHECK(!hook, "[attention] nystrom attention takes no score hook (relative positions)");
    check_nystrom_desc(a, o_);
    PF_CHECK(gr.dout && gr.dq && gr.dk && gr.dv, "[attention] backward needs dout, dq, dk, dv");
    PF_CHECK(o_.kernel == 0 || gr.param_grads, "[attention] nystrom backward needs param_grads ",
             "for ", a.param_prefix, "conv.weight");
    const float* wconv = conv_weight(a, o_);
    const int64_t group = a.H / a.Hkv, n = a.B * a.Hkv;
    std::vector<float> dw(static_cast<size_t>(n * group * o_.kernel), 0.0f);  // per task
    parallel_tasks(n, [&](int64_t bg, Work& w) {
      group_backward(a, o_, gr, wconv, bg / a.Hkv, bg % a.Hkv, w);
      std::copy_n(w.dw.data(), group * o_.kernel, dw.data() + bg * group * o_.kernel);
    });
    if (wconv) {  // tasks in order: (b, g) holds heads g*group.. of sequence b
      float* out = gr.param_grads->f32(a.param_prefix + "conv.weight");
      for (int64_t bg = 0; bg < n; ++bg)
        for (int64_t i = 0; i < group * o_.kernel; ++i)
          out[(bg % a.Hkv) * group * o_.kernel + i] += dw[bg * group * o_.kernel + i];
    }
  }

  // Never reached: make_attention refuses nystrom for causal (decoder self-attention) stacks.
  std::unique_ptr<AttnDecodeState> start_decode(int64_t, int64_t) const override {
    throw Error("[attention] nystrom attention has no decode state (it cannot be causal)");
  }
  uint64_t decode_bytes(int64_t, int64_t) const override { return 0; }
  void decode(AttnDecodeState&, const AttnDesc&, const HookMaker&) const override {
    throw Error("[attention] nystrom attention has no decode state (it cannot be causal)");
  }

 private:
  StackGeom g_;
  Opts o_;
};

}  // namespace

std::unique_ptr<Attention> make_nystrom_attention(const AttentionConfig& cfg,
                                                  const StackGeom& geom) {
  PF_CHECK(cfg.n_landmarks >= 1, "[config] attention.n_landmarks must be >= 1, got ",
           cfg.n_landmarks);
  PF_CHECK(cfg.pinv_iterations >= 0, "[config] attention.pinv_iterations must be >= 0, got ",
           cfg.pinv_iterations);
  PF_CHECK(cfg.conv_kernel >= 0 && (cfg.conv_kernel == 0 || cfg.conv_kernel % 2 == 1),
           "[config] attention.conv_kernel must be 0 (off) or an odd size, got ", cfg.conv_kernel);
  return std::make_unique<NystromAttention>(
      geom, Opts{cfg.n_landmarks, cfg.pinv_iterations, cfg.conv_kernel});
}

}  // namespace posformer
