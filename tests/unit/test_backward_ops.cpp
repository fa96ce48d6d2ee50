// SIMD backward kernels (activation / SwiGLU / LayerNorm / RMSNorm / bias / cross-entropy) and the
// blocked attention backward against double-precision references written out here, on sizes
// with vector tails, several row blocks and several causal query blocks; row reductions must
// not depend on the thread count.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "posformer/attention/attention.h"
#include "posformer/model/transformer.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/loss.h"
#include "posformer/ops/norm.h"
#include "test_util.h"

using namespace posformer;

namespace {

using pf_test::randn;

// max |a - b| / max(max |b|, floor)
double rel_err(const std::vector<float>& a, const std::vector<double>& b, double floor = 1e-3) {
  double num = 0, den = floor;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::abs(double(a[i]) - b[i]));
    den = std::max(den, std::abs(b[i]));
  }
  return num / den;
}

double act_grad_ref(ops::Act act, double x) {
  switch (act) {
    case ops::Act::Identity:
      return 1.0;
    case ops::Act::Relu:
      return x > 0 ? 1.0 : 0.0;
    case ops::Act::Gelu:
      return 0.5 * (1.0 + std::erf(x / std::sqrt(2.0))) +
             x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI);
    case ops::Act::GeluTanh: {
      const double k = std::sqrt(2.0 / M_PI), u = k * (x + 0.044715 * x * x * x), t = std::tanh(u);
      return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
    }
    case ops::Act::Silu: {
      const double s = 1.0 / (1.0 + std::exp(-x));
      return s * (1.0 + x * (1.0 - s));
    }
  }
  return 0;
}

}  // namespace

TEST(BackwardOps, ActivationGradMatchesDouble) {
  const int64_t n = 1037;  // vector tail
  std::vector<float> x = randn(n, 1, 3.0f), dy = randn(n, 2);
  x[0] = 0.0f, x[1] = -30.0f, x[2] = 30.0f, x[3] = 1e-6f, x[4] = -9.5f, x[5] = 12.0f;
  for (ops::Act act :
       {ops::Act::Identity, ops::Act::Relu, ops::Act::Gelu, ops::Act::GeluTanh, ops::Act::Silu}) {
    std::vector<float> dx(n);
    std::vector<double> ref(n);
    ops::activation_backward(act, x.data(), dy.data(), dx.data(), n);
    for (int64_t i = 0; i < n; ++i) ref[i] = dy[i] * act_grad_ref(act, x[i]);
    EXPECT_LT(rel_err(dx, ref), 2e-6) << ops::act_name(act);
    std::vector<float> inplace = dy;  // dx may alias dy
    ops::activation_backward(act, x.data(), inplace.data(), inplace.data(), n);
    EXPECT_EQ(inplace, dx) << ops::act_name(act);
  }
}

TEST(BackwardOps, SwigluGradMatchesDouble) {
  const int64_t n = 203;
  std::vector<float> a = randn(n, 3, 3.0f), b = randn(n, 4), dy = randn(n, 5);
  std::vector<float> da(n), db(n);
  ops::swiglu_backward(a.data(), b.data(), dy.data(), da.data(), db.data(), n);
  std::vector<double> rda(n), rdb(n);
  for (int64_t i = 0; i < n; ++i) {
    const double s = 1.0 / (1.0 + std::exp(-double(a[i])));
    rda[i] = double(dy[i]) * b[i] * s * (1.0 + a[i] * (1.0 - s));
    rdb[i] = double(dy[i]) * a[i] * s;
  }
  EXPECT_LT(rel_err(da, rda), 2e-6);
  EXPECT_LT(rel_err(db, rdb), 2e-6);
  std::vector<float> da2 = dy, db2(n);  // da may alias dy
  ops::swiglu_backward(a.data(), b.data(), da2.data(), da2.data(), db2.data(), n);
  EXPECT_EQ(da2, da);
  EXPECT_EQ(db2, db);
}

TEST(BackwardOps, NormGradsMatchDoubleAndIgnoreThreadCount) {
  const int64_t rows = 97, cols = 77;  // rows: several blocks + a partial one; cols: a tail
  const float eps = 1e-5f;
  std::vector<float> x = randn(rows * cols, 6, 2.0f), g = randn(cols, 7),
                     dy = randn(rows * cols, 8);
  for (float& v : x) v += 3.0f;  // a mean far from 0
  for (bool rms : {false, true}) {
    std::vector<double> rdx(rows * cols), rdg(cols, 0.5), rdb(cols, -0.25);
    for (int64_t r = 0; r < rows; ++r) {
      const float* xr = x.data() + r * cols;
      const float* dyr = dy.data() + r * cols;
      double mean = 0, var = 0;
      if (!rms) {
        for (int64_t c = 0; c < cols; ++c) mean += xr[c];
        mean /= cols;
      }
      for (int64_t c = 0; c < cols; ++c) var += (xr[c] - mean) * (xr[c] - mean);
      var /= cols;
      const double rstd = 1.0 / std::sqrt(var + eps);
      double m1 = 0, m2 = 0;
      for (int64_t c = 0; c < cols; ++c) {
        const double xh = (xr[c] - mean) * rstd, gdy = double(g[c]) * dyr[c];
        m1 += gdy, m2 += gdy * xh;
        rdg[c] += dyr[c] * xh, rdb[c] += dyr[c];
      }
      m1 = rms ? 0.0 : m1 / cols, m2 /= cols;
      for (int64_t c = 0; c < cols; ++c)
        rdx[r * cols + c] = rstd * (double(g[c]) * dyr[c] - m1 - (xr[c] - mean) * rstd * m2);
    }
    std::vector<float> first_dx;
    for (int threads : {1, 2}) {
      const int saved = omp_get_max_threads();
      omp_set_num_threads(threads);
      std::vector<float> dx(rows * cols), dg(cols, 0.5f), db(cols, -0.25f);
      if (rms)
        ops::rmsnorm_backward(x.data(), g.data(), dy.data(), dx.data(), dg.data(), rows, cols, eps);
      else
        ops::layernorm_backward(x.data(), g.data(), dy.data(), dx.data(), dg.data(), db.data(),
                                rows, cols, eps);
      omp_set_num_threads(saved);
      EXPECT_LT(rel_err(dx, rdx), 2e-5) << "rms " << rms;
      EXPECT_LT(rel_err(dg, rdg), 2e-6) << "rms " << rms;
      if (!rms) {
        EXPECT_LT(rel_err(db, rdb), 2e-6);
      }
      if (first_dx.empty()) {
        first_dx = dx;
      } else {
        EXPECT_EQ(first_dx, dx) << "thread count changed the result";
      }
      // in place (dx aliasing dy)
      std::vector<float> io = dy, dg2(cols), db2(cols);
      if (rms)
        ops::rmsnorm_backward(x.data(), g.data(), io.data(), io.data(), dg2.data(), rows, cols,
                              eps);
      else
        ops::layernorm_backward(x.data(), g.data(), io.data(), io.data(), dg2.data(), db2.data(),
                                rows, cols, eps);
      EXPECT_EQ(io, dx);
    }
  }
}

TEST(BackwardOps, BiasGradAccumulatesColumnSums) {
  const int64_t rows = 1000, cols = 37;
  std::vector<float> dy = randn(rows * cols, 9), db(cols, 1.0f);
  std::vector<double> ref(cols, 1.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) ref[c] += dy[r * cols + c];
  ops::bias_grad(dy.data(), db.data(), rows, cols);
  EXPECT_LT(rel_err(db, ref), 1e-6);
}

TEST(BackwardOps, CrossEntropyMatchesDouble) {
  const int64_t rows = 53, V = 261;
  std::vector<float> z = randn(rows * V, 10, 4.0f);
  std::vector<int32_t> tg(rows);
  for (int64_t r = 0; r < rows; ++r) tg[r] = r % 7 == 3 ? -1 : static_cast<int32_t>((r * 37) % V);
  int64_t count = 0;
  double loss = 0;
  std::vector<double> rdz(rows * V, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    if (tg[r] < 0) continue;
    ++count;
    double mx = -1e300, s = 0;
    for (int64_t c = 0; c < V; ++c) mx = std::max(mx, double(z[r * V + c]));
    for (int64_t c = 0; c < V; ++c) s += std::exp(z[r * V + c] - mx);
    const double lse = mx + std::log(s);
    loss += lse - z[r * V + tg[r]];
    for (int64_t c = 0; c < V; ++c) rdz[r * V + c] = std::exp(z[r * V + c] - lse) - (c == tg[r]);
  }
  for (double& v : rdz) v *= 0.5 / count;
  std::vector<float> dz = z;  // in place, as the trainer calls it
  ops::CrossEntropy ce = ops::cross_entropy(z.data(), tg.data(), rows, V, dz.data(), 0.5f);
  EXPECT_EQ(ce.count, count);
  EXPECT_NEAR(ce.loss, loss / count, 1e-6 * loss / count);
  EXPECT_LT(rel_err(dz, rdz, 1e-9), 2e-6);
  ops::CrossEntropy ce2 = ops::cross_entropy(z.data(), tg.data(), rows, V, nullptr);
  EXPECT_EQ(ce2.loss, ce.loss);
}

namespace {

struct AttnCase {
  int64_t B, H, Hkv, D, Tq, Tk, q_pos0, k_pos0, pad;  // pad: extra floats per q/k/v row
  bool causal;
  std::vector<int32_t> key_len;
};

// attention_backward (query blocks over visible keys) vs the formulas in double.
void check_attention_backward(const AttnCase& c) {
  AttnDesc a;
  a.B = c.B, a.H = c.H, a.Hkv = c.Hkv, a.D = c.D, a.Tq = c.Tq, a.Tk = c.Tk;
  a.ldq = a.ldo = c.H * c.D + c.pad, a.ldk = a.ldv = c.Hkv * c.D + c.pad;
  a.causal = c.causal, a.q_pos0 = c.q_pos0, a.k_pos0 = c.k_pos0;
  a.scale = 1.0f / std::sqrt(float(c.D));
  if (!c.key_len.empty()) a.key_len = c.key_len.data();
  std::vector<float> q = randn(c.B * c.Tq * a.ldq, 11), k = randn(c.B * c.Tk * a.ldk, 12),
                     v = randn(c.B * c.Tk * a.ldv, 13), dO = randn(c.B * c.Tq * a.ldq, 14);
  std::vector<float> out(c.B * c.Tq * a.ldo), P(c.B * c.H * c.Tq * c.Tk);
  a.q = q.data(), a.k = k.data(), a.v = v.data(), a.out = out.data(), a.probs = P.data();
  attention_forward(a);
  // reference gradients from the same (float) probabilities
  const int64_t group = c.H / c.Hkv;
  std::vector<double> rdq(q.size(), 0.0), rdk(k.size(), 0.0), rdv(v.size(), 0.0);
  std::vector<double> dS(c.Tq * c.Tk);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h) {
      const int64_t g = h / group;
      const float* Ph = P.data() + (b * c.H + h) * c.Tq * c.Tk;
      auto Q = [&](int64_t t, int64_t i) {
        return double(q[(b * c.Tq + t) * a.ldq + h * c.D + i]);
      };
      auto K = [&](int64_t s, int64_t i) {
        return double(k[(b * c.Tk + s) * a.ldk + g * c.D + i]);
      };
      auto Vv = [&](int64_t s, int64_t i) {
        return double(v[(b * c.Tk + s) * a.ldv + g * c.D + i]);
      };
      auto O = [&](int64_t t, int64_t i) {
        return double(dO[(b * c.Tq + t) * a.ldq + h * c.D + i]);
      };
      for (int64_t t = 0; t < c.Tq; ++t) {
        double dot = 0;
        for (int64_t s = 0; s < c.Tk; ++s) {
          double dp = 0;
          for (int64_t i = 0; i < c.D; ++i) dp += O(t, i) * Vv(s, i);
          dS[t * c.Tk + s] = dp;
          dot += Ph[t * c.Tk + s] * dp;
        }
        for (int64_t s = 0; s < c.Tk; ++s)
          dS[t * c.Tk + s] = Ph[t * c.Tk + s] * (dS[t * c.Tk + s] - dot);
      }
      for (int64_t t = 0; t < c.Tq; ++t)
        for (int64_t s = 0; s < c.Tk; ++s) {
          const double p = Ph[t * c.Tk + s], ds = a.scale * dS[t * c.Tk + s];
          for (int64_t i = 0; i < c.D; ++i) {
            rdv[(b * c.Tk + s) * a.ldv + g * c.D + i] += p * O(t, i);
            rdq[(b * c.Tq + t) * a.ldq + h * c.D + i] += ds * K(s, i);
            rdk[(b * c.Tk + s) * a.ldk + g * c.D + i] += ds * Q(t, i);
          }
        }
    }
  // gradients in buffers pre-filled with garbage: every used element must be written
  std::vector<float> dq(q.size(), 7.0f), dk(k.size(), 7.0f), dv(v.size(), 7.0f);
  AttnGrads gr;
  gr.dout = dO.data(), gr.lddo = a.ldq, gr.dq = dq.data(), gr.dk = dk.data(), gr.dv = dv.data();
  attention_backward(a, P.data(), gr, nullptr);
  auto used = [](std::vector<float> x, const std::vector<double>& ref, int64_t ld, int64_t w) {
    std::vector<float> xs;
    std::vector<double> rs;
    for (size_t i = 0; i < x.size(); ++i)
      if (int64_t(i) % ld < w) xs.push_back(x[i]), rs.push_back(ref[i]);
    return rel_err(xs, rs);
  };
  EXPECT_LT(used(dq, rdq, a.ldq, c.H * c.D), 1e-5);
  EXPECT_LT(used(dk, rdk, a.ldk, c.Hkv * c.D), 1e-5);
  EXPECT_LT(used(dv, rdv, a.ldv, c.Hkv * c.D), 1e-5);
}

}  // namespace

TEST(AttentionBackward, CausalSelfAttentionManyQueryBlocks) {
  check_attention_backward({2, 4, 2, 16, 150, 150, 0, 0, 0, true, {}});
}

TEST(AttentionBackward, CausalWithOffsetPaddingAndStrides) {
  // queries at positions 60.. over keys 0..159 (as after a cache), padded keys, GQA, ld > H*D
  check_attention_backward({2, 4, 1, 8, 100, 160, 60, 0, 5, true, {160, 90}});
  // queries before every key in the first block: rows that see no key at all
  check_attention_backward({1, 2, 2, 8, 130, 130, 0, 70, 0, true, {}});
}

TEST(AttentionBackward, NonCausalCrossAttention) {
  check_attention_backward({2, 3, 3, 8, 70, 130, 0, 0, 3, false, {130, 17}});
}

// d_ff = 1024 takes the padded-row-stride path of the FFN backward (see transformer_backward.cpp);
// the GradCheck suite's models are too narrow to reach it.
TEST(BackwardOps, WideFfnGradientsMatchFiniteDifferences) {
  for (std::string act : {"gelu", "swiglu"}) {
    ModelConfig c;
    c.arch = "decoder", c.d_model = 8, c.n_layers = 1, c.n_heads = 2, c.d_ff = 1024;
    c.activation = act, c.vocab_size = 11, c.max_len = 16, c.tie_embeddings = false;
    c.position.type = "learned";
    Transformer m = Transformer::random_init(c, 3);
    std::mt19937 rng(7);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    for (auto& [name, t] : m.params().all()) {
      if (name.find("norm") != std::string::npos) continue;
      float* p = t.data<float>();
      const float sd = t.ndim() == 2 ? 1.0f / std::sqrt(float(t.dim(1))) : 0.3f;
      for (int64_t i = 0; i < t.numel(); ++i) p[i] = sd * nd(rng);
    }
    TokenBatch tok = {{1, 4, 2, 9, 3, 7}, {5, 0, 8, 6, 2, 10}};
    TokenBatch tgt = {{4, 2, 9, 3, 7, 1}, {0, 8, 6, 2, 10, 5}};
    ParamStore grads = m.zero_grads();
    m.loss_and_grad(tok, tgt, grads);
    std::mt19937 pick(5);
    for (auto& [name, t] : m.params().all()) {
      if (name.find("ffn") == std::string::npos && name != "decoder.layers.0.attn.v.weight")
        continue;
      float* p = t.data<float>();
      std::uniform_int_distribution<int64_t> idx(0, t.numel() - 1);
      for (int k = 0; k < 4; ++k) {
        const int64_t i = idx(pick);
        const float old = p[i], h = 2e-3f;
        p[i] = old + h;
        const double lp = m.loss(tok, tgt).loss;
        p[i] = old - h;
        const double lm = m.loss(tok, tgt).loss;
        p[i] = old;
        const double fd = (lp - lm) / (2.0 * h);
        EXPECT_NEAR(grads.f32(name)[i], fd, 2e-3 + 2e-2 * std::fabs(fd))
            << act << " " << name << "[" << i << "]";
      }
    }
  }
}
