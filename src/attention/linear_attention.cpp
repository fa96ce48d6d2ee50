// Linear attention (SPEC.md 6, docs/attention.md): sim(q, k) = phi(q) . phi(k), phi = elu + 1.
// Per query row t of head h (kv head g = h / (H/Hkv)) over the keys it sees, s < e_t =
// AttnDesc::visible_keys(b, t) (causal mask by positions, key padding):
//
//   o_t = phi(q_t)^T S_t / (phi(q_t) . z_t),   S_t = sum_{s<e_t} phi(k_s) v_s^T,   z_t = sum
//   phi(k_s)
//
// A row that sees no key outputs 0 (as softmax does). attention.scale does not apply.
//
// Chunked form (forward and backward, causal or not): the query rows go in chunks of kChunk.
// For a chunk [t0, t0+n), every row sees keys [0, ef) with ef = e_(t0), carried in a running
// state (S, z) that is advanced key block by key block; the keys [ef, el), el = e_(t0+n-1), are
// seen by some rows only and go through the masked quadratic form
//   P = (phi(Q) phi(Kp)^T) * mask,   num = phi(Q) S + P Vp,   den = phi(Q) z + P 1.
// Non-causal: ef = el = the key count, so every row reads the state alone. Work is
// O(T D^2 + T kChunk D) per head, memory O(D^2 + kChunk^2 + kChunk D) per thread.
//
// Backward, with A = phi(Q), C = phi(K), dN_t = dO_t / den_t, dd_t = -(dO_t . o_t) / den_t:
//   dA_t = S_t dN_t + dd_t z_t                       (prefix state: a forward scan)
//   dC_s = R_s v_s + r_s,  dV_s = R_s^T c_s,   R_s = sum_{t sees s} a_t dN_t^T, r_s = sum a_t dd_t
//                                                    (suffix state: a reverse scan over chunks)
//   the partly seen keys of each chunk through the quadratic form (dP = (dN Vp^T + dd) * mask),
//   dq = dA * phi'(q), dk = dC * phi'(k), phi'(x) = 1 (x > 0), e^x (x <= 0).
// Nothing is kept from the forward: the backward recomputes the chunk states (the same O(T D^2)
// work). Each (b, h) (forward) or (b, kv head) (backward, decode state) is one task; every sum
// inside a task runs in a fixed order, so results do not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "posformer/attention/attention.h"
#include "posformer/core/error.h"
#include "posformer/ops/matmul.h"
#include "posformer/posenc/position_encoding.h"
#include "variants.h"

namespace posformer {
namespace {

constexpr int64_t kChunk = 64;  // query rows per chunk, keys per state-update block

inline float phi(float x) {
  return x > 0.0f ? x + 1.0f : std::exp(x);
}
inline float dphi(float x) {
  return x > 0.0f ? 1.0f : std::exp(x);
}

// out[r * D + c] = phi(x[r * ld + c]) for rows x D.
void phi_rows(const float* x, int64_t ld, int64_t rows, int64_t D, float* out) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < D; ++c) out[r * D + c] = phi(x[r * ld + c]);
}

// Per-thread buffers, sized for one head dim D.
struct Work {
  explicit Work(int64_t D)
      : S(D * D),
        z(D),
        R(D * D),
        r(D),
        A(kChunk * D),
        Cp(kChunk * D),
        Kb(kChunk * D),
        num(kChunk * D),
        dN(kChunk * D),
        dA(kChunk * D),
        P(kChunk * kChunk),
        dP(kChunk * kChunk),
        den(kChunk),
        dd(kChunk) {}
  std::vector<float> S, z, R, r;              // prefix state; suffix state (backward)
  std::vector<float> A, Cp, Kb, num, dN, dA;  // [kChunk, D]
  std::vector<float> P, dP;                   // [kChunk, kChunk]
  std::vector<float> den, dd;                 // [kChunk]
  std::vector<float> inv_all, dd_all;         // backward: per query row of the head
  std::vector<int64_t> ef_all;                // backward: ef of each chunk
};

// Rows of sequence b: query row t of head h, key/value row s of kv head g.
struct Rows {
  const AttnDesc& a;
  int64_t b;
  const float* q(int64_t t, int64_t h) const { return a.q + (b * a.Tq + t) * a.ldq + h * a.D; }
  const float* k(int64_t s, int64_t g) const {
    return a.k + (b * a.kv_rows() + s) * a.ldk + g * a.D;
  }
  const float* v(int64_t s, int64_t g) const {
    return a.v + (b * a.kv_rows() + s) * a.ldv + g * a.D;
  }
};

// S += phi(K)^T V, z += colsum phi(K) over keys [from, to) of kv head g, in blocks of kChunk.
void advance(const Rows& x, int64_t g, int64_t from, int64_t to, float* S, float* z, float* Kb) {
  const int64_t D = x.a.D;
  for (int64_t s0 = from; s0 < to; s0 += kChunk) {
    const int64_t nb = std::min(kChunk, to - s0);
    phi_rows(x.k(s0, g), x.a.ldk, nb, D, Kb);
    ops::gemm(true, false, D, D, nb, 1.0f, Kb, D, x.v(s0, g), x.a.ldv, 1.0f, S, D);
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t c = 0; c < D; ++c) z[c] += Kb[r * D + c];
  }
}

// One query chunk [t0, t0+n) of head h: the keys every row sees, [0, ef), are added to the
// state (w.S, w.z; *acc keys of the descriptor are in it already), then w.A = phi(Q), the
// unnormalised outputs w.num [n, D] and normalisers w.den [n]; the partly seen keys [ef, el)
// leave w.Cp = phi(Kp) [m, D] and the masked w.P [n, m]. Returns m = el - ef.
int64_t scan_chunk(const Rows& x, int64_t h, int64_t t0, int64_t n, int64_t* acc, Work& w,
                   int64_t* ef_out) {
  const AttnDesc& a = x.a;
  const int64_t D = a.D, g = h / (a.H / a.Hkv), b = x.b;
  // visible_keys never decreases in t and grows by at most 1 per row: ef >= *acc, m < n
  const int64_t ef = a.visible_keys(b, t0), el = a.visible_keys(b, t0 + n - 1), m = el - ef;
  advance(x, g, *acc, ef, w.S.data(), w.z.data(), w.Kb.data());
  *acc = ef;
  phi_rows(x.q(t0, h), a.ldq, n, D, w.A.data());
  ops::gemm(false, false, n, D, D, 1.0f, w.A.data(), D, w.S.data(), D, 0.0f, w.num.data(), D);
  for (int64_t t = 0; t < n; ++t) {
    float s = 0.0f;
    for (int64_t c = 0; c < D; ++c) s += w.A[t * D + c] * w.z[c];
    w.den[t] = s;
  }
  if (m > 0) {
    phi_rows(x.k(ef, g), a.ldk, m, D, w.Cp.data());
    ops::gemm(false, true, n, m, D, 1.0f, w.A.data(), D, w.Cp.data(), D, 0.0f, w.P.data(), m);
    for (int64_t t = 0; t < n; ++t) {
      float* row = w.P.data() + t * m;
      std::fill(row + (a.visible_keys(b, t0 + t) - ef), row + m, 0.0f);
      float s = 0.0f;
      for (int64_t j = 0; j < m; ++j) s += row[j];
      w.den[t] += s;
    }
    ops::gemm(false, false, n, D, m, 1.0f, w.P.data(), m, x.v(ef, g), a.ldv, 1.0f, w.num.data(), D);
  }
  if (ef_out) *ef_out = ef;
  return m;
}

// Does query row t see anything: a key of the descriptor, or (decoding) the state it started from.
bool sees(const AttnDesc& a, int64_t b, int64_t t, bool prior) {
  return prior || a.visible_keys(b, t) > 0;
}

// The forward of one (b, h), starting from the state (w.S, w.z) of `prior` keys seen by every row.
void head_forward(const AttnDesc& a, int64_t b, int64_t h, bool prior, Work& w) {
  const Rows x{a, b};
  const int64_t D = a.D;
  int64_t acc = 0;
  for (int64_t t0 = 0; t0 < a.Tq; t0 += kChunk) {
    const int64_t n = std::min(kChunk, a.Tq - t0);
    scan_chunk(x, h, t0, n, &acc, w, nullptr);
    for (int64_t t = 0; t < n; ++t) {
      float* o = a.out + (b * a.Tq + t0 + t) * a.ldo + h * D;
      const float inv = sees(a, b, t0 + t, prior) ? 1.0f / w.den[t] : 0.0f;
      for (int64_t c = 0; c < D; ++c) o[c] = w.num[t * D + c] * inv;
    }
  }
}

void check_linear_desc(const AttnDesc& a) {
  check_attn_desc(a);
  PF_CHECK(!a.hook, "[attention] linear attention takes no score hook (relative positions)");
}

// Runs f(task) for task in [0, n) over the OpenMP team, each thread with its own Work.
template <class F>
void parallel_tasks(int64_t n, int64_t D, const F& f) {
#pragma omp parallel if (n > 1 && omp_get_max_threads() > 1 && !omp_in_parallel())
  {
    Work w(D);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n; ++task) f(task, w);
  }
}

void linear_forward(const AttnDesc& a) {
  check_linear_desc(a);
  if (a.B == 0 || a.Tq == 0) return;
  parallel_tasks(a.B * a.H, a.D, [&](int64_t bh, Work& w) {
    std::fill(w.S.begin(), w.S.end(), 0.0f);
    std::fill(w.z.begin(), w.z.end(), 0.0f);
    head_forward(a, bh / a.H, bh % a.H, false, w);
  });
}

// dq, dk, dv (overwritten) of one (b, kv head g): the heads of the group one after the other.
void group_backward(const AttnDesc& a, const AttnGrads& gr, int64_t b, int64_t g, Work& w) {
  const Rows x{a, b};
  const int64_t D = a.D, group = a.H / a.Hkv, nchunks = (a.Tq + kChunk - 1) / kChunk;
  float* dk0 = gr.dk + b * a.kv_rows() * a.ldk + g * D;  // key row s at dk0 + s * ldk
  float* dv0 = gr.dv + b * a.kv_rows() * a.ldv + g * D;
  for (int64_t s = 0; s < a.Tk; ++s) {  // dk accumulates dL/dphi(k) until the end
    std::fill_n(dk0 + s * a.ldk, D, 0.0f);
    std::fill_n(dv0 + s * a.ldv, D, 0.0f);
  }
  w.inv_all.resize(static_cast<size_t>(a.Tq));
  w.dd_all.resize(static_cast<size_t>(a.Tq));
  w.ef_all.resize(static_cast<size_t>(nchunks));
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    const float* dO = gr.dout + b * a.Tq * gr.lddo + h * D;  // query row t at dO + t * lddo
    float* dq = gr.dq + b * a.Tq * a.ldq + h * D;
    // Forward scan: dq, and the partly seen keys' share of dk, dv.
    std::fill(w.S.begin(), w.S.end(), 0.0f);
    std::fill(w.z.begin(), w.z.end(), 0.0f);
    int64_t acc = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t t0 = c * kChunk, n = std::min(kChunk, a.Tq - t0);
      int64_t ef = 0;
      const int64_t m = scan_chunk(x, h, t0, n, &acc, w, &ef);
      w.ef_all[c] = ef;
      for (int64_t t = 0; t < n; ++t) {
        const float inv = sees(a, b, t0 + t, false) ? 1.0f / w.den[t] : 0.0f;
        const float* go = dO + (t0 + t) * gr.lddo;
        float dot = 0.0f;
        for (int64_t i = 0; i < D; ++i) {
          w.dN[t * D + i] = go[i] * inv;
          dot += go[i] * (w.num[t * D + i] * inv);
        }
        w.dd[t] = -dot * inv;
        w.inv_all[t0 + t] = inv, w.dd_all[t0 + t] = w.dd[t];
      }
      // dA = dN S^T + dd z^T (+ dP Cp)
      ops::gemm(false, true, n, D, D, 1.0f, w.dN.data(), D, w.S.data(), D, 0.0f, w.dA.data(), D);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t i = 0; i < D; ++i) w.dA[t * D + i] += w.dd[t] * w.z[i];
      if (m > 0) {
        ops::gemm(false, true, n, m, D, 1.0f, w.dN.data(), D, x.v(ef, g), a.ldv, 0.0f, w.dP.data(),
                  m);
        for (int64_t t = 0; t < n; ++t) {
          float* row = w.dP.data() + t * m;
          const int64_t vis = a.visible_keys(b, t0 + t) - ef;
          for (int64_t j = 0; j < m; ++j) row[j] = j < vis ? row[j] + w.dd[t] : 0.0f;
        }
        ops::gemm(false, false, n, D, m, 1.0f, w.dP.data(), m, w.Cp.data(), D, 1.0f, w.dA.data(),
                  D);
        ops::gemm(true, false, m, D, n, 1.0f, w.dP.data(), m, w.A.data(), D, 1.0f, dk0 + ef * a.ldk,
                  a.ldk);
        ops::gemm(true, false, m, D, n, 1.0f, w.P.data(), m, w.dN.data(), D, 1.0f, dv0 + ef * a.ldv,
                  a.ldv);
      }
      for (int64_t t = 0; t < n; ++t) {
        const float* qr = x.q(t0 + t, h);
        float* out = dq + (t0 + t) * a.ldq;
        for (int64_t i = 0; i < D; ++i) out[i] = w.dA[t * D + i] * dphi(qr[i]);
      }
    }
    // Reverse scan: (R, r) over the rows of chunks after c reach keys [ef_c, ef_(c+1)), which
    // every one of those rows sees and no earlier row sees entirely.
    std::fill(w.R.begin(), w.R.end(), 0.0f);
    std::fill(w.r.begin(), w.r.end(), 0.0f);
    auto apply_suffix = [&](int64_t lo, int64_t hi) {
      for (int64_t s0 = lo; s0 < hi; s0 += kChunk) {
        const int64_t nb = std::min(kChunk, hi - s0);
        phi_rows(x.k(s0, g), a.ldk, nb, D, w.Kb.data());
        ops::gemm(false, true, nb, D, D, 1.0f, x.v(s0, g), a.ldv, w.R.data(), D, 1.0f,
                  dk0 + s0 * a.ldk, a.ldk);
        for (int64_t s = 0; s < nb; ++s)
          for (int64_t i = 0; i < D; ++i) dk0[(s0 + s) * a.ldk + i] += w.r[i];
        ops::gemm(false, false, nb, D, D, 1.0f, w.Kb.data(), D, w.R.data(), D, 1.0f,
                  dv0 + s0 * a.ldv, a.ldv);
      }
    };
    for (int64_t c = nchunks - 1; c >= 0; --c) {
      const int64_t t0 = c * kChunk, n = std::min(kChunk, a.Tq - t0);
      if (c + 1 < nchunks) apply_suffix(w.ef_all[c], w.ef_all[c + 1]);
      phi_rows(x.q(t0, h), a.ldq, n, D, w.A.data());
      for (int64_t t = 0; t < n; ++t) {
        const float* go = dO + (t0 + t) * gr.lddo;
        for (int64_t i = 0; i < D; ++i) w.dN[t * D + i] = go[i] * w.inv_all[t0 + t];
      }
      ops::gemm(true, false, D, D, n, 1.0f, w.A.data(), D, w.dN.data(), D, 1.0f, w.R.data(), D);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t i = 0; i < D; ++i) w.r[i] += w.A[t * D + i] * w.dd_all[t0 + t];
    }
    if (nchunks > 0) apply_suffix(0, w.ef_all[0]);
  }
  for (int64_t s = 0; s < a.Tk; ++s) {  // dL/dphi(k) -> dL/dk
    const float* kr = x.k(s, g);
    float* d = dk0 + s * a.ldk;
    for (int64_t i = 0; i < D; ++i) d[i] *= dphi(kr[i]);
  }
}

void linear_backward(const AttnDesc& a, const AttnGrads& gr) {
  check_linear_desc(a);
  PF_CHECK(gr.dout && gr.dq && gr.dk && gr.dv, "[attention] backward needs dout, dq, dk, dv");
  parallel_tasks(a.B * a.Hkv, a.D,
                 [&](int64_t bg, Work& w) { group_backward(a, gr, bg / a.Hkv, bg % a.Hkv, w); });
}

// The backward keeps nothing from the forward but the sizes it ran with.
struct LinearSaved final : AttnSaved {
  int64_t B = 0, H = 0, Tq = 0, Tk = 0;
};

// Per (sequence, kv head): S [D, D] and z [D] over every position decoded so far.
class RecurrentState final : public AttnDecodeState {
 public:
  RecurrentState(int64_t B, int64_t Hkv, int64_t D, int64_t capacity)
      : S({B, Hkv, D, D}), z({B, Hkv, D}), capacity(capacity) {}
  int64_t length() const override { return len; }
  size_t bytes() const override { return S.nbytes() + z.nbytes(); }
  Tensor S, z;
  int64_t capacity, len = 0;
};

class LinearAttention final : public Attention {
 public:
  explicit LinearAttention(const StackGeom& g) : g_(g) {}
  std::string name() const override { return "linear"; }
  AttentionCaps caps() const override {
    AttentionCaps c;
    c.score_hooks = c.value_hooks = false;  // no score matrix for relative terms to act on
    c.rotary_outside =
        false;  // RoPE on q, k breaks phi's positivity (linear_rope: its own variant)
    c.decode = DecodeKind::Recurrent;
    c.residual_scores = false;  // no score matrix to carry (RealFormer)
    return c;
  }

  // The state products per (b, head): each key adds phi(k) [v | 1]^T (2 D (D + 1)), each query
  // reads phi(q)^T [S | z] (2 D (D + 1)); backward about twice that. The chunk-local quadratic
  // parts of the causal form are not counted (they are the implementation's, not the method's).
  AttnCost cost(const AttnDesc& a) const override {
    const double per = 2.0 * double(a.D) * double(a.D + 1) * double(a.B * a.H);
    const double f = per * double(a.Tq + a.Tk);
    return {f, 2 * f};
  }

  void forward(const AttnDesc& desc, std::unique_ptr<AttnSaved>* saved) const override {
    linear_forward(desc);
    if (saved) {
      if (!dynamic_cast<LinearSaved*>(saved->get())) *saved = std::make_unique<LinearSaved>();
      auto& s = static_cast<LinearSaved&>(**saved);
      s.B = desc.B, s.H = desc.H, s.Tq = desc.Tq, s.Tk = desc.Tk;
    }
  }

  void backward(const AttnDesc& desc, const AttnSaved& saved, const AttnGrads& g,
                ScoreHook* hook) const override {
    const auto* s = dynamic_cast<const LinearSaved*>(&saved);
    PF_CHECK(s && s->B == desc.B && s->H == desc.H && s->Tq == desc.Tq && s->Tk == desc.Tk,
             "[attention] linear backward without a forward of the same shape");
    PF_CHECK(!hook, "[attention] linear attention takes no score hook (relative positions)");
    linear_backward(desc, g);
  }

  std::unique_ptr<AttnDecodeState> start_decode(int64_t B, int64_t capacity) const override {
    return std::make_unique<RecurrentState>(B, g_.Hkv, g_.D, capacity);
  }

  uint64_t decode_bytes(int64_t B, int64_t /*capacity*/) const override {
    return uint64_t(B) * uint64_t(g_.Hkv) * uint64_t(g_.D * g_.D + g_.D) * sizeof(float);
  }

  // The new queries over the state (every earlier position) and the new keys; then the new
  // keys join the state. No score hook: make_attention refused every scheme that has one.
  void decode(AttnDecodeState& state, const AttnDesc& desc,
              const HookMaker& /*make_hook*/) const override {
    auto& st = dynamic_cast<RecurrentState&>(state);
    check_linear_desc(desc);
    const int64_t D = g_.D, Hkv = g_.Hkv;
    PF_CHECK(desc.B == st.S.dim(0) && desc.Hkv == Hkv && desc.D == D,
             "[attention] decoding a batch of ", desc.B, " with a state of ", st.S.dim(0));
    PF_CHECK(desc.q_pos0 == st.len && desc.k_pos0 == st.len && desc.Tq == desc.Tk,
             "[attention] decoding from position ", desc.q_pos0, " with a state holding ", st.len);
    PF_CHECK(st.len + desc.Tq <= st.capacity, "[attention] the decode state holds ", st.capacity,
             " positions; ", st.len, " used, ", desc.Tq, " more requested");
    PF_CHECK(!desc.key_len, "[attention] decoding takes no key padding");
    if (desc.B == 0 || desc.Tq == 0) return;
    float *S = st.S.data<float>(), *z = st.z.data<float>();
    const int64_t group = desc.H / Hkv;
    parallel_tasks(desc.B * desc.H, D, [&](int64_t bh, Work& w) {
      const int64_t b = bh / desc.H, h = bh % desc.H, bg = b * Hkv + h / group;
      std::copy_n(S + bg * D * D, D * D, w.S.data());
      std::copy_n(z + bg * D, D, w.z.data());
      head_forward(desc, b, h, st.len > 0, w);
    });
    parallel_tasks(desc.B * Hkv, D, [&](int64_t bg, Work& w) {
      advance(Rows{desc, bg / Hkv}, bg % Hkv, 0, desc.Tk, S + bg * D * D, z + bg * D, w.Kb.data());
    });
    st.len += desc.Tq;
  }

 private:
  StackGeom g_;
};

}  // namespace

std::unique_ptr<Attention> make_linear_attention(const StackGeom& geom) {
  return std::make_unique<LinearAttention>(geom);
}

}  // namespace posformer
