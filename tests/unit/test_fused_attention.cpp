// The fused ("flash") softmax attention kernel (fused_attention.cpp) against the unfused kernels
// (which store P) and a double-precision reference, forward and backward, over a sparse grid of
// T (1 .. 2048, odd sizes), causal, key padding, GQA, decoding offsets, head dims and hooks
// (ALiBi, T5, XL, DeBERTa, RealFormer's carried scores). Outputs and gradients are NaN-poisoned
// before every run, so a row the kernel forgets to write fails.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "hwy_targets.h"
#include "posformer/attention/attention.h"
#include "posformer/attention/variant.h"
#include "posformer/model/config.h"
#include "posformer/ops/packed_linear.h"
#include "posformer/posenc/position_encoding.h"
#include "test_util.h"

using namespace posformer;

namespace {
using pf_test::randn;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct FCase {
  int64_t B = 1, H = 2, Hkv = 1, D = 32, Tq = 8, Tk = 8;
  bool causal = false, padding = false;
  int64_t q_pos0 = 0, k_pos0 = 0;
  std::string hook = "none";  // a position scheme, or "residual" (carried scores)
  std::string str() const {
    return "B=" + std::to_string(B) + " H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) +
           " D=" + std::to_string(D) + " Tq=" + std::to_string(Tq) + " Tk=" + std::to_string(Tk) +
           " causal=" + std::to_string(causal) + " pad=" + std::to_string(padding) +
           " q_pos0=" + std::to_string(q_pos0) + " k_pos0=" + std::to_string(k_pos0) +
           " hook=" + hook;
  }
};

// Case j of a sparse grid over T: head dim and hook in rotation, GQA every other case, key
// padding every fourth; variant 0 causal, 1 padded and not causal, 2 decoding (new queries after
// a prefix, causal).
FCase grid_case(int64_t T, size_t j, int variant, const std::vector<int64_t>& Ds,
                const std::vector<std::string>& hooks) {
  FCase c;
  c.Tq = c.Tk = T;
  c.D = Ds[j % Ds.size()];
  c.hook = hooks[j % hooks.size()];
  c.causal = variant != 1;
  c.padding = j % 4 == 1 || variant == 1;
  c.B = T <= 129 ? 2 : 1;
  c.H = 2, c.Hkv = j % 2 ? 1 : 2;
  if (T >= 255) c.D = std::min<int64_t>(c.D, 64);  // keep the tests fast
  if (variant == 2) {
    c.Tq = std::max<int64_t>(1, T / 3);
    c.q_pos0 = c.Tk - c.Tq, c.k_pos0 = 0;
  }
  return c;
}

// max |x - ref| / max(max |ref|, floor) (NaN anywhere in x: infinity)
double rel_err(const std::vector<float>& x, const std::vector<float>& ref, double floor = 0) {
  double num = 0, den = floor;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i])) return std::numeric_limits<double>::infinity();
    num = std::max(num, std::fabs(double(x[i]) - ref[i]));
    den = std::max(den, std::fabs(double(ref[i])));
  }
  return den > 0 ? num / den : num;
}

// Everything one case needs: inputs, a position scheme with random parameters, hooks.
struct CaseData {
  FCase c;
  std::vector<float> q, k, v, dO;
  std::vector<int32_t> klen;
  std::unique_ptr<PositionEncoding> pe;
  std::vector<ParamSpec> specs;
  ParamStore ps;
  AttnDesc a;
  // residual: the previous layer's scores (and dS of the next layer). The hook adds them to
  // every column of a tile, masked or not, so the model keeps them 0 at masked keys (else the
  // result would depend on the tiling); so does this test.
  std::vector<float> carried_in;

  explicit CaseData(const FCase& cs, uint32_t seed) : c(cs) {
    q = randn(c.B * c.Tq * c.H * c.D, seed);
    k = randn(c.B * c.Tk * c.Hkv * c.D, seed + 1);
    v = randn(c.B * c.Tk * c.Hkv * c.D, seed + 2);
    dO = randn(c.B * c.Tq * c.H * c.D, seed + 3);
    for (int64_t b = 0; b < c.B; ++b)  // padding: sequence b keeps Tk - 3 b keys (at least 0)
      klen.push_back(
          static_cast<int32_t>(c.padding ? std::max<int64_t>(0, c.Tk - 3 * b - 1) : c.Tk));
    PositionConfig pc;
    pc.type = c.hook == "residual" ? "none" : c.hook;
    pc.num_buckets = 8, pc.max_distance = 20, pc.span = 4;
    StackGeom g{"decoder.", 1, c.H * c.D, c.H, c.Hkv, c.D, 1 << 20, c.causal, true};
    pe = make_position_encoding(pc, g);
    pe->declare(specs);
    for (auto& s : specs) {
      s.init = Init::Normal;
      ps.add(s.name, init_param(s, seed, 0.5f));
    }
    a.B = c.B, a.Tq = c.Tq, a.Tk = c.Tk, a.H = c.H, a.Hkv = c.Hkv, a.D = c.D;
    a.q = q.data(), a.ldq = c.H * c.D, a.k = k.data(), a.ldk = c.Hkv * c.D, a.v = v.data();
    a.ldv = c.Hkv * c.D, a.ldo = c.H * c.D, a.scale = pe->default_scale(c.D);
    a.causal = c.causal, a.q_pos0 = c.q_pos0, a.k_pos0 = c.k_pos0;
    a.key_len = c.padding ? klen.data() : nullptr;
    if (c.hook == "residual") {  // zero at masked keys, as the model's carried dS is
      carried_in = randn(c.B * c.H * c.Tq * c.Tk, seed + 4);
      for (int64_t b = 0; b < c.B; ++b)
        for (int64_t h = 0; h < c.H; ++h)
          for (int64_t t = 0; t < c.Tq; ++t)
            for (int64_t j = a.visible_keys(b, t); j < c.Tk; ++j)
              carried_in[((b * c.H + h) * c.Tq + t) * c.Tk + j] = 0.0f;
    }
  }
  // A fresh hook (and where it records carried scores).
  std::unique_ptr<ScoreHook> hook(std::vector<float>* carried_out) {
    if (c.hook == "residual") {
      carried_out->assign(carried_in.size(), 0.0f);
      return std::make_unique<ResidualScoresHook>(a, carried_in.data(), carried_out->data());
    }
    return pe->prepare(ps, AttnInputs{0, &a});
  }
};

struct Result {
  std::vector<float> out, dq, dk, dv, carried_fwd, carried_bwd;
  ParamStore grads;
};

Result run(CaseData& s, bool fused, bool backward = true) {
  Result r;
  AttnDesc a = s.a;
  r.out.assign(s.dO.size(), kNaN);
  a.out = r.out.data();
  auto hook = s.hook(&r.carried_fwd);
  a.hook = hook.get();
  std::vector<float> lse, P;
  if (fused) {
    lse.assign(size_t(a.B * a.H * a.Tq), kNaN);
    fused_attention_forward(a, lse.data());
  } else {
    P.assign(size_t(a.B * a.H * a.Tq * a.Tk), kNaN);
    a.probs = P.data();
    attention_forward(a);
  }
  if (!backward) return r;
  r.dq.assign(s.q.size(), kNaN), r.dk.assign(s.k.size(), kNaN), r.dv.assign(s.v.size(), kNaN);
  AttnGrads g;
  g.dout = s.dO.data(), g.lddo = a.ldo, g.dq = r.dq.data(), g.dk = r.dk.data(), g.dv = r.dv.data();
  auto bhook = s.hook(&r.carried_bwd);
  for (auto& sp : s.specs) r.grads.add(sp.name, Tensor(sp.shape));
  if (fused) {
    fused_attention_backward(a, lse.data(), g, bhook.get());
  } else {
    attention_backward(a, P.data(), g, bhook.get());
  }
  if (bhook) bhook->finish_backward(r.grads);
  return r;
}

// Carried scores are compared where both kernels must have written them: visible keys.
std::vector<float> visible_part(const CaseData& s, const std::vector<float>& x) {
  std::vector<float> y;
  const AttnDesc& a = s.a;
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t h = 0; h < a.H; ++h)
      for (int64_t t = 0; t < a.Tq; ++t)
        for (int64_t j = 0; j < a.visible_keys(b, t); ++j)
          y.push_back(x[((b * a.H + h) * a.Tq + t) * a.Tk + j]);
  return y;
}

void check_fused_vs_unfused(const FCase& c, uint32_t seed, double tol = 1e-5) {
  SCOPED_TRACE(c.str());
  CaseData s(c, seed);
  Result f = run(s, true), u = run(s, false);
  EXPECT_LE(rel_err(f.out, u.out), tol) << "out";
  EXPECT_LE(rel_err(f.dq, u.dq), tol) << "dq";
  EXPECT_LE(rel_err(f.dk, u.dk), tol) << "dk";
  EXPECT_LE(rel_err(f.dv, u.dv), tol) << "dv";
  for (auto& sp : s.specs) {
    const Tensor &x = f.grads.get(sp.name), &y = u.grads.get(sp.name);
    std::vector<float> xv(x.data<float>(), x.data<float>() + x.numel()),
        yv(y.data<float>(), y.data<float>() + y.numel());
    // reductions over every (t, s) pair with cancellation; DeBERTa's pos_k bias gradient is
    // sum_s dS[t, s] = 0 exactly (softmax rows): fp32 noise ~1e-6, compared at the scale 0.1
    EXPECT_LE(rel_err(xv, yv, 0.1), 10 * tol) << sp.name;
  }
  if (c.hook == "residual") {
    EXPECT_LE(rel_err(visible_part(s, f.carried_fwd), visible_part(s, u.carried_fwd)), tol);
    EXPECT_LE(rel_err(visible_part(s, f.carried_bwd), visible_part(s, u.carried_bwd)), tol);
  }
  // rows that see no key output exactly 0
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t t = 0; t < c.Tq; ++t)
      if (s.a.visible_keys(b, t) == 0) {
        for (int64_t i = 0; i < c.H * c.D; ++i)
          ASSERT_EQ(f.out[(b * c.Tq + t) * c.H * c.D + i], 0.0f) << "b=" << b << " t=" << t;
      }
}

}  // namespace

// A sparse grid: every T class (1, 2, odd, block edges 127/128/129, 511/513 around the key tile)
// meets causal / padding / GQA / offsets / head dims / hooks in rotation.
TEST(FusedAttention, MatchesUnfusedOverGrid) {
  const std::vector<int64_t> Ts = {1, 2, 3, 7, 17, 64, 100, 127, 128, 129, 255, 511, 513, 700};
  const std::vector<int64_t> Ds = {32, 64, 80, 96, 128, 40};
  const std::vector<std::string> hooks = {"none", "alibi", "t5", "xl", "deberta", "residual"};
  uint32_t seed = 100;
  for (size_t i = 0; i < Ts.size(); ++i)
    for (int variant = 0; variant < 3; ++variant) {
      check_fused_vs_unfused(grid_case(Ts[i], i * 3 + variant, variant, Ds, hooks), seed++);
    }
}

// POSFORMER_FLASH_GEMM for one scope (the fused kernel reads it at each call).
struct FlashGemmMode {
  explicit FlashGemmMode(const char* mode) { setenv("POSFORMER_FLASH_GEMM", mode, 1); }
  ~FlashGemmMode() { unsetenv("POSFORMER_FLASH_GEMM"); }
};

// The tile products (kernels/cpu/flash_gemm.h) on every compiled Highway target this CPU
// supports (AVX-512, AVX2, SSE4 ...): head dims that are and are not multiples of the vector
// width, GQA, masks, hooks, row counts off the register blocks.
TEST(FusedAttention, EveryTargetMatchesUnfused) {
  pf_test::for_each_target([] {
    FlashGemmMode m("2");  // the backward's micro-kernels too
    uint32_t seed = 900;
    int i = 0;
    for (int64_t D : {20, 32, 64, 80, 96, 128}) {
      FCase c;
      c.B = 2, c.H = 4, c.Hkv = i % 2 ? 2 : 4, c.D = D, c.Tq = c.Tk = 30 + 29 * i;
      c.causal = i % 3 != 1, c.padding = i % 2 == 0;
      c.hook = i % 3 == 0 ? "none" : i % 3 == 1 ? "alibi" : "t5";
      check_fused_vs_unfused(c, seed++);
      ++i;
    }
  });
}

// A bad POSFORMER_FLASH_GEMM is refused, naming the variable and the value.
TEST(FusedAttention, BadFlashGemmModeIsNamed) {
  for (const char* bad : {"3", "x", "12", "-1", "1 "}) {
    FlashGemmMode m(bad);
    FCase c;
    c.B = 1, c.H = 2, c.Hkv = 2, c.D = 16, c.Tq = c.Tk = 40;
    try {
      check_fused_vs_unfused(c, 7);
      ADD_FAILURE() << bad << ": no throw";
    } catch (const posformer::Error& e) {
      EXPECT_NE(std::string(e.what()).find("POSFORMER_FLASH_GEMM"), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos)
          << e.what();
    }
  }
}

// The backward's micro-kernel path (POSFORMER_FLASH_GEMM=2; by default without a hook, and with
// one at Tk <= 48), the forward-only one (1: the backward on sgemm at every T, small ViT-sized T
// included) and the all-sgemm path (0): every hook, masks, GQA, head dims off the vector width,
// several blocks and tiles.
TEST(FusedAttention, MicroKernelBackwardAndSgemmPaths) {
  for (const char* mode : {"2", "1", "0"}) {
    SCOPED_TRACE(std::string("POSFORMER_FLASH_GEMM=") + mode);
    FlashGemmMode m(mode);
    uint32_t seed = 1000;
    int i = 0;
    for (const char* hook : {"none", "alibi", "t5", "xl", "deberta", "residual"})
      for (bool causal : {false, true}) {
        FCase c;
        c.B = 2, c.H = 4, c.Hkv = i % 2 ? 2 : 4, c.D = i % 3 == 0 ? 20 : i % 3 == 1 ? 32 : 80;
        c.Tq = c.Tk = 150 + 29 * (i % 3), c.causal = causal, c.padding = i % 4 < 2;
        c.hook = hook;
        check_fused_vs_unfused(c, seed++);
        ++i;
      }
    FCase c;  // two query blocks x two key tiles
    c.B = 1, c.H = 2, c.Hkv = 1, c.D = 64, c.Tq = c.Tk = 700, c.causal = true;
    check_fused_vs_unfused(c, seed++);
    for (int64_t T : {17, 48, 49}) {  // around the default's switch to micro-kernels (Tk <= 48)
      FCase v;
      v.B = 3, v.H = 4, v.Hkv = 4, v.D = 32, v.Tq = v.Tk = T, v.hook = T == 48 ? "t5" : "none";
      check_fused_vs_unfused(v, seed++);
    }
  }
}

// The default's sgemm backward with the causal diagonal on the micro-kernels (no hook, fewer than
// 16 query rows per kv head, so the rest stays on sgemm): query blocks whose rows see different
// numbers of keys inside one key tile, at panel boundaries and off them, with key padding.
TEST(FusedAttention, DefaultSplitDiagonalBackward) {
  unsetenv("POSFORMER_FLASH_GEMM");
  uint32_t seed = 1100;
  for (auto [Tq, Tk] : std::vector<std::array<int64_t, 2>>{{7, 300}, {15, 530}, {3, 16}, {12, 64}})
    for (int64_t D : {32, 20}) {
      FCase c;
      c.B = 2, c.H = 2, c.Hkv = 2, c.D = D, c.Tq = Tq, c.Tk = Tk, c.q_pos0 = Tk - Tq;
      c.causal = true, c.padding = D == 20, c.hook = "none";
      check_fused_vs_unfused(c, seed++);
    }
}

// Every hook x causal x padding x GQA at a size with several query blocks and key tiles.
TEST(FusedAttention, EveryHookEveryMask) {
  uint32_t seed = 300;
  for (const char* hook : {"none", "alibi", "t5", "xl", "deberta", "residual"})
    for (bool causal : {false, true})
      for (bool pad : {false, true}) {
        FCase c;
        c.B = 2, c.H = 4, c.Hkv = pad ? 2 : 4, c.D = 32, c.Tq = c.Tk = 150;
        c.causal = causal, c.padding = pad, c.hook = hook;
        check_fused_vs_unfused(c, seed++);
      }
}

// Queries with other key positions (cross-attention-like Tq != Tk, k_pos0 > 0).
TEST(FusedAttention, OffsetsAndRectangles) {
  uint32_t seed = 400;
  for (auto [Tq, Tk, qp, kp] : std::vector<std::array<int64_t, 4>>{
           {5, 600, 595, 0}, {1, 1000, 999, 0}, {70, 30, 0, 0}, {30, 70, 10, 5}, {130, 530, 3, 9}})
    for (bool causal : {false, true}) {
      FCase c;
      c.B = 2, c.H = 3, c.Hkv = 1, c.D = 64, c.Tq = Tq, c.Tk = Tk, c.q_pos0 = qp, c.k_pos0 = kp;
      c.causal = causal, c.padding = true, c.hook = causal ? "alibi" : "t5";
      check_fused_vs_unfused(c, seed++);
    }
}

// T = 2048 once (4 key tiles per query block, 16 query blocks), no hook.
TEST(FusedAttention, LongSequence) {
  FCase c;
  c.B = 1, c.H = 1, c.Hkv = 1, c.D = 64, c.Tq = c.Tk = 2048, c.causal = true;
  check_fused_vs_unfused(c, 500);
}

// Backward against a double-precision reference (scores and softmax in double; the hook's
// score terms and its dq/dk terms through the same hook calls on the whole matrix).
TEST(FusedAttention, BackwardMatchesDoubleReference) {
  uint32_t seed = 600;
  for (const char* hook : {"none", "alibi", "xl", "deberta"})
    for (bool causal : {false, true}) {
      FCase c;
      c.B = 2, c.H = 2, c.Hkv = 1, c.D = 16, c.Tq = c.Tk = 75, c.causal = causal, c.padding = true,
      c.hook = hook;
      SCOPED_TRACE(c.str());
      CaseData s(c, seed++);
      Result f = run(s, true);
      const AttnDesc& a = s.a;
      const int64_t D = c.D, HD = c.H * D, KD = c.Hkv * D, group = c.H / c.Hkv;
      std::vector<double> out(f.out.size()), dq(f.dq.size()), dk(f.dk.size()), dv(f.dv.size());
      std::vector<float> dqh(f.dq.size(), 0.0f), dkh(f.dk.size(), 0.0f);  // the hook's terms
      auto hk = s.pe->prepare(s.ps, AttnInputs{0, &a});
      if (hk) hk->begin_backward();
      const int64_t Tq = c.Tq, Tk = c.Tk;
      for (int64_t b = 0; b < c.B; ++b)
        for (int64_t h = 0; h < c.H; ++h) {
          const int64_t g = h / group;
          auto qv = [&](int64_t t, int64_t i) {
            return double(s.q[(b * Tq + t) * HD + h * D + i]);
          };
          auto kv = [&](int64_t j, int64_t i) {
            return double(s.k[(b * Tk + j) * KD + g * D + i]);
          };
          auto vv = [&](int64_t j, int64_t i) {
            return double(s.v[(b * Tk + j) * KD + g * D + i]);
          };
          auto go = [&](int64_t t, int64_t i) {
            return double(s.dO[(b * Tq + t) * HD + h * D + i]);
          };
          std::vector<float> term(Tq * Tk, 0.0f);
          if (hk) hk->add_scores(b, h, ScoreTile{0, Tq, 0, Tk}, term.data(), Tk);
          std::vector<float> dSf(Tq * Tk, 0.0f);
          for (int64_t t = 0; t < Tq; ++t) {
            const int64_t n = a.visible_keys(b, t);
            std::vector<double> p(n);
            double mx = -1e300, sum = 0;
            for (int64_t j = 0; j < n; ++j) {
              double d = 0;
              for (int64_t i = 0; i < D; ++i) d += qv(t, i) * kv(j, i);
              p[j] = a.scale * d + term[t * Tk + j];
              mx = std::max(mx, p[j]);
            }
            for (int64_t j = 0; j < n; ++j) sum += (p[j] = std::exp(p[j] - mx));
            for (int64_t j = 0; j < n; ++j) p[j] /= sum;
            std::vector<double> dp(n);
            double di = 0;
            for (int64_t j = 0; j < n; ++j) {
              double d = 0;
              for (int64_t i = 0; i < D; ++i) d += go(t, i) * vv(j, i);
              dp[j] = d, di += p[j] * d;
            }
            for (int64_t i = 0; i < D; ++i) {
              double o = 0;
              for (int64_t j = 0; j < n; ++j) o += p[j] * vv(j, i);
              out[(b * Tq + t) * HD + h * D + i] = o;
            }
            for (int64_t j = 0; j < n; ++j) {
              const double ds = p[j] * (dp[j] - di);
              dSf[t * Tk + j] = float(ds);
              for (int64_t i = 0; i < D; ++i) {
                dv[(b * Tk + j) * KD + g * D + i] += p[j] * go(t, i);
                dq[(b * Tq + t) * HD + h * D + i] += a.scale * ds * kv(j, i);
                dk[(b * Tk + j) * KD + g * D + i] += a.scale * ds * qv(t, i);
              }
            }
          }
          if (hk)
            hk->backward_scores(b, h, ScoreTile{0, Tq, 0, Tk}, dSf.data(), Tk,
                                dqh.data() + b * Tq * HD + h * D, HD,
                                dkh.data() + b * Tk * KD + g * D, KD);
        }
      auto as_float = [](const std::vector<double>& x, const std::vector<float>& add) {
        std::vector<float> y(x.size());
        for (size_t i = 0; i < x.size(); ++i) y[i] = float(x[i] + add[i]);
        return y;
      };
      const std::vector<float> zq(dq.size(), 0.0f), zk(dk.size(), 0.0f), zo(out.size(), 0.0f);
      EXPECT_LE(rel_err(f.out, as_float(out, zo)), 2e-6);
      EXPECT_LE(rel_err(f.dq, as_float(dq, dqh)), 1e-5);
      EXPECT_LE(rel_err(f.dk, as_float(dk, dkh)), 1e-5);
      EXPECT_LE(rel_err(f.dv, as_float(dv, zk)), 1e-5);
    }
}

// T5's bucket table gradient by central finite differences of L = sum(out * dO).
TEST(FusedAttention, T5TableGradientByFiniteDifferences) {
  FCase c;
  c.B = 2, c.H = 2, c.Hkv = 2, c.D = 32, c.Tq = c.Tk = 90, c.causal = true, c.padding = true;
  c.hook = "t5";
  CaseData s(c, 700);
  Result f = run(s, true);
  ASSERT_EQ(s.specs.size(), 1u);
  const std::string name = s.specs[0].name;
  float* table = s.ps.f32(name);
  const float* grad = f.grads.f32(name);
  auto loss = [&]() {
    Result r = run(s, true, false);
    double L = 0;
    for (size_t i = 0; i < r.out.size(); ++i) L += double(r.out[i]) * s.dO[i];
    return L;
  };
  const int64_t n = s.ps.get(name).numel();
  int checked = 0;
  for (int64_t i = 0; i < n; i += 3) {
    const float keep = table[i], eps = 1e-2f;
    table[i] = keep + eps;
    const double Lp = loss();
    table[i] = keep - eps;
    const double Lm = loss();
    table[i] = keep;
    const double fd = (Lp - Lm) / (2.0 * eps);
    EXPECT_NEAR(grad[i], fd, 2e-3 * (1 + std::fabs(fd))) << name << "[" << i << "]";
    checked += std::fabs(fd) > 1e-3;
  }
  EXPECT_GT(checked, 0);
}

// Through the variant: softmax keeps L (not P) and its backward uses it; Shaw (value terms)
// stays on the unfused path; decoding through a KV cache gives the full forward's rows.
TEST(FusedAttention, SoftmaxVariantPaths) {
  for (const char* scheme : {"alibi", "shaw"}) {
    FCase c;
    c.B = 2, c.H = 4, c.Hkv = 2, c.D = 32, c.Tq = c.Tk = 40, c.causal = true, c.hook = scheme;
    SCOPED_TRACE(scheme);
    CaseData s(c, 800);
    StackGeom g{"decoder.", 1, c.H * c.D, c.H, c.Hkv, c.D, 1024, true, true};
    AttentionConfig ac;
    auto attn = make_attention(ac, g, *s.pe);
    AttnDesc a = s.a;
    auto hook = s.pe->prepare(s.ps, AttnInputs{0, &a});
    a.hook = hook.get();
    std::vector<float> out(s.dO.size(), kNaN), ref(out.size(), kNaN);
    a.out = out.data();
    std::unique_ptr<AttnSaved> saved;
    attn->forward(a, &saved);
    AttnDesc r = a;
    r.out = ref.data();
    ref::attention_forward(r);
    EXPECT_LE(rel_err(out, ref), 2e-6);
    std::vector<float> dq(s.q.size(), kNaN), dk(s.k.size(), kNaN), dv(s.v.size(), kNaN);
    AttnGrads gr;
    gr.dout = s.dO.data(), gr.lddo = a.ldo, gr.dq = dq.data(), gr.dk = dk.data(), gr.dv = dv.data();
    attn->backward(a, *saved, gr, hook.get());
    Result u = run(s, false);
    EXPECT_LE(rel_err(dq, u.dq), 1e-5);
    EXPECT_LE(rel_err(dk, u.dk), 1e-5);
    EXPECT_LE(rel_err(dv, u.dv), 1e-5);
    // decoding: 40 positions fed as 25 + 1 x 15, each step's rows equal the full forward's
    auto st = attn->start_decode(c.B, 64);
    std::vector<float> dec(out.size(), kNaN);
    const int64_t HD = c.H * c.D, KD = c.Hkv * c.D;
    for (int64_t p0 = 0; p0 < c.Tq;) {
      const int64_t n = p0 == 0 ? 25 : 1;
      std::vector<float> qs(c.B * n * HD), ks(c.B * n * KD), vs(ks.size()), os(qs.size(), kNaN);
      for (int64_t b = 0; b < c.B; ++b) {
        std::copy_n(s.q.data() + (b * c.Tq + p0) * HD, n * HD, qs.data() + b * n * HD);
        std::copy_n(s.k.data() + (b * c.Tk + p0) * KD, n * KD, ks.data() + b * n * KD);
        std::copy_n(s.v.data() + (b * c.Tk + p0) * KD, n * KD, vs.data() + b * n * KD);
      }
      AttnDesc d = a;
      d.Tq = d.Tk = n, d.q_pos0 = d.k_pos0 = p0, d.hook = nullptr;
      d.q = qs.data(), d.k = ks.data(), d.v = vs.data(), d.out = os.data();
      attn->decode(*st, d, [&](const AttnDesc& ad) {
        return s.pe->prepare(s.ps, AttnInputs{0, &ad});
      });
      for (int64_t b = 0; b < c.B; ++b)
        std::copy_n(os.data() + b * n * HD, n * HD, dec.data() + (b * c.Tq + p0) * HD);
      p0 += n;
    }
    EXPECT_LE(rel_err(dec, ref), 2e-6);
  }
}

// Forward and backward give bit-identical results on 1 and 2 threads (fixed per-task order).
TEST(FusedAttention, IndependentOfThreadCount) {
  FCase c;
  c.B = 2, c.H = 4, c.Hkv = 2, c.D = 64, c.Tq = c.Tk = 300, c.causal = true, c.padding = true;
  c.hook = "alibi";
  CaseData s(c, 900);
  const int keep = omp_get_max_threads();
  omp_set_num_threads(1);
  Result one = run(s, true);
  omp_set_num_threads(2);
  Result two = run(s, true);
  omp_set_num_threads(keep);
  EXPECT_EQ(one.out, two.out);
  EXPECT_EQ(one.dq, two.dq);
  EXPECT_EQ(one.dk, two.dk);
  EXPECT_EQ(one.dv, two.dv);
}

// The default backward at Tk > 48 without a hook: the keys every row of a query block sees run
// on sgemm, the block's diagonal part (keys only some rows see) on the micro-kernels. Causal
// blocks and tiles of every kind (the first block all diagonal, diagonals inside and across the
// 512-key tile, a short last block), decoding offsets, GQA, head dims on and off the vector
// width (packed Q, dO, K rows), key padding; then the same with sgemm alone (=1) and
// micro-kernels alone (=2), which must agree with it.
TEST(FusedAttention, DiagonalSplitMatchesUnfused) {
  uint32_t seed = 1300;
  int i = 0;
  for (int64_t T : {49, 130, 255, 511, 600}) {
    for (int64_t D : {20, 40, 64}) {
      FCase c;
      c.B = T <= 255 ? 2 : 1, c.H = 2, c.Hkv = i % 2 ? 1 : 2, c.D = D, c.Tq = c.Tk = T;
      c.causal = true, c.padding = i % 3 == 2;
      if (i % 4 == 3) c.Tq = T / 3 + 1, c.q_pos0 = c.Tk - c.Tq;  // queries after a prefix
      check_fused_vs_unfused(c, seed++);
      ++i;
    }
  }
  for (const char* mode : {"1", "2"}) {
    FlashGemmMode m(mode);
    FCase c;
    c.B = 1, c.H = 2, c.Hkv = 1, c.D = 40, c.Tq = c.Tk = 300, c.causal = true;
    check_fused_vs_unfused(c, seed++);
  }
}

// ---- bfloat16 products (AttnDesc::bf16) ----
namespace {

// POSFORMER_BF16_NATIVE for one scope (0: the portable loop even on an AVX512-BF16 CPU).
struct Bf16Native {
  explicit Bf16Native(const char* v) { setenv("POSFORMER_BF16_NATIVE", v, 1); }
  ~Bf16Native() { unsetenv("POSFORMER_BF16_NATIVE"); }
};

// The bf16 forward against the float32 unfused forward on the same q, k, v rounded to bf16: the
// only other rounding is P's (relative 2^-9 per probability, P in [0, 1]), so every output
// element is within 2^-9 max |v| (+ float32 noise) of the reference. A wrong layout, pair or
// mask gives errors of order max |v|. The output is NaN-poisoned first.
void check_bf16_forward(const FCase& c, uint32_t seed, const char* native) {
  SCOPED_TRACE(c.str() + " native=" + native);
  Bf16Native nat(native);
  CaseData s(c, seed);
  for (auto* x : {&s.q, &s.k, &s.v})
    for (float& e : *x) e = posformer::ops::bf16_bits_to_float(posformer::ops::to_bf16_bits(e));
  const Result u = run(s, false, false);
  AttnDesc a = s.a;
  a.bf16 = true;
  std::vector<float> out(s.dO.size(), kNaN), lse(size_t(a.B * a.H * a.Tq), kNaN);
  a.out = out.data();
  std::vector<float> unused;
  auto hook = s.hook(&unused);
  a.hook = hook.get();
  fused_attention_forward(a, lse.data());
  double vmax = 0;
  for (float e : s.v) vmax = std::max(vmax, double(std::fabs(e)));
  double worst = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    ASSERT_FALSE(std::isnan(out[i])) << "element " << i << " not written";
    worst = std::max(worst, std::fabs(double(out[i]) - u.out[i]));
  }
  EXPECT_LE(worst, (1.0 / 512 + 1e-5) * vmax) << "max |v| " << vmax;
  // the bf16 path ran (decoding-sized calls, under 16 query rows per kv head, stay fp32): P's
  // rounding moves the output
  if (c.Tq * (c.H / c.Hkv) >= 16 && c.Tk > 1) {
    EXPECT_GT(worst, 0.0);
  }
  // L = log sum exp of each row's scores: the scores are exact products of bf16 values summed in
  // float32, so L matches a double-precision log-sum-exp of them closely (no hook here)
  if (c.hook != "none") return;
  const int64_t group = c.H / c.Hkv;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h)
      for (int64_t t = 0; t < c.Tq; ++t) {
        const float L = lse[(b * c.H + h) * c.Tq + t];
        const int64_t k0 = a.first_key(b, t), k1 = a.visible_keys(b, t);
        if (k1 <= k0) {
          EXPECT_EQ(L, -std::numeric_limits<float>::infinity());
          continue;
        }
        std::vector<double> sc;
        for (int64_t j = k0; j < k1; ++j) {
          double d = 0;
          for (int64_t i = 0; i < c.D; ++i)
            d += double(s.q[(b * c.Tq + t) * a.ldq + h * c.D + i]) *
                 s.k[(b * c.Tk + j) * a.ldk + (h / group) * c.D + i];
          sc.push_back(d * a.scale);
        }
        const double mx = *std::max_element(sc.begin(), sc.end());
        double sum = 0;
        for (double x : sc) sum += std::exp(x - mx);
        EXPECT_NEAR(L, mx + std::log(sum), 1e-4) << "b=" << b << " h=" << h << " t=" << t;
      }
}

}  // namespace

// Every T class, head dims (odd and off the vector width), causal, key padding, GQA, decoding
// offsets and the in-tile hooks (ALiBi, T5), on the AVX512-BF16 kernels (where present) and the
// portable loop.
TEST(FusedAttention, Bf16ForwardMatchesRoundedReference) {
  const std::vector<int64_t> Ts = {1, 2, 17, 100, 128, 129, 513};
  const std::vector<int64_t> Ds = {32, 64, 80, 33, 96, 128, 7};
  const std::vector<std::string> hooks = {"none", "alibi", "t5"};
  for (const char* native : {"1", "0"}) {
    uint32_t seed = 1500;
    for (size_t i = 0; i < Ts.size(); ++i)
      for (int variant = 0; variant < 3; ++variant) {
        if (native[0] == '0' && Ts[i] > 129) continue;  // the portable loop is slow
        check_bf16_forward(grid_case(Ts[i], i * 3 + variant, variant, Ds, hooks), seed++, native);
      }
  }
}

// Two query blocks x two key tiles, causal, at D 64 (the benchmark's head dim).
TEST(FusedAttention, Bf16ForwardLong) {
  FCase c;
  c.B = 1, c.H = 2, c.Hkv = 2, c.D = 64, c.Tq = c.Tk = 700, c.causal = true;
  check_bf16_forward(c, 1600, "1");
  c.causal = false;
  check_bf16_forward(c, 1601, "1");
}

// The fused backward recomputes P in float32 and refuses a bf16 description by name.
TEST(FusedAttention, Bf16BackwardIsRefused) {
  FCase c;
  CaseData s(c, 1700);
  AttnDesc a = s.a;
  std::vector<float> out(s.dO.size()), lse(size_t(a.B * a.H * a.Tq));
  a.out = out.data();
  a.bf16 = true;
  fused_attention_forward(a, lse.data());
  std::vector<float> dq(s.q.size()), dk(s.k.size()), dv(s.v.size());
  AttnGrads g;
  g.dout = s.dO.data(), g.lddo = a.ldo, g.dq = dq.data(), g.dk = dk.data(), g.dv = dv.data();
  try {
    fused_attention_backward(a, lse.data(), g, nullptr);
    ADD_FAILURE() << "no throw";
  } catch (const posformer::Error& e) {
    EXPECT_NE(std::string(e.what()).find("bf16"), std::string::npos) << e.what();
  }
}

// Key windows (packed documents: row t sees keys from its document's start, AttnDesc::key_lo;
// not causal: also up to the document's end, key_hi) in the bf16 forward, against the float32
// unfused forward on the same rounded inputs (the bound of check_bf16_forward).
TEST(FusedAttention, Bf16ForwardKeyWindows) {
  for (bool causal : {true, false}) {
    SCOPED_TRACE(causal ? "causal" : "not causal");
    FCase c;
    c.B = 2, c.H = 2, c.Hkv = 1, c.D = 32, c.Tq = c.Tk = 300, c.causal = causal;
    CaseData s(c, 1800);
    for (auto* x : {&s.q, &s.k, &s.v})
      for (float& e : *x) e = posformer::ops::bf16_bits_to_float(posformer::ops::to_bf16_bits(e));
    std::vector<int32_t> lo(size_t(c.B * c.Tq)), hi(lo.size());
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t t = 0; t < c.Tq; ++t) {  // documents [0, 100 + b), [100 + b, 217), [217, 300)
        const int32_t s0 = t < 100 + b ? 0 : t < 217 ? 100 + int32_t(b) : 217;
        const int32_t s1 = t < 100 + b ? 100 + int32_t(b) : t < 217 ? 217 : 300;
        lo[b * c.Tq + t] = s0, hi[b * c.Tq + t] = s1;
      }
    AttnDesc a = s.a;
    a.key_lo = lo.data();
    if (!causal) a.key_hi = hi.data();
    std::vector<float> ref(s.dO.size(), kNaN), out(s.dO.size(), kNaN);
    a.out = ref.data();
    attention_forward(a);
    a.out = out.data();
    a.bf16 = true;
    fused_attention_forward(a, nullptr);
    double vmax = 0, worst = 0;
    for (float e : s.v) vmax = std::max(vmax, double(std::fabs(e)));
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_FALSE(std::isnan(out[i])) << "element " << i << " not written";
      worst = std::max(worst, std::fabs(double(out[i]) - ref[i]));
    }
    EXPECT_LE(worst, (1.0 / 512 + 1e-5) * vmax);
    EXPECT_GT(worst, 0.0);
  }
}
