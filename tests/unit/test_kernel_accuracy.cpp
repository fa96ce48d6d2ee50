// Accuracy of the vectorised kernels against double-precision references, on every compiled
// Highway target this CPU supports, with the error bound each test states; and the fp32 peak
// probe (posformer/core/peak.h). Bounds are in float ulps of the double result (ulp(w) =
// 2^(exponent(w) - 23)) or relative errors, measured with margin on AVX3 / AVX2 / SSE4.
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../src/kernels/cpu/attention_kernels.h"
#include "hwy_targets.h"
#include "posformer/core/peak.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/norm.h"
#include "posformer/ops/softmax.h"

namespace {

using namespace posformer;
using namespace posformer::ops;

using pf_test::for_each_target;

// Error of got in float ulps of the exact (double) value w.
double ulps(float got, double w) {
  if (w == 0.0) return got == 0.0f ? 0.0 : 1e30;
  int e = 0;
  std::frexp(w, &e);  // |w| in [2^(e-1), 2^e)
  return std::abs(double(got) - w) / std::ldexp(1.0, e - 1 - 23);
}

// Dense grid over [lo, hi] (n points) plus the given specials.
std::vector<float> grid(float lo, float hi, int n, std::vector<float> extra = {}) {
  std::vector<float> x;
  for (int i = 0; i < n; ++i) x.push_back(lo + (hi - lo) * float(i) / float(n - 1));
  x.insert(x.end(), extra.begin(), extra.end());
  return x;
}

double gelu_d(double x) {
  return 0.5 * x * std::erfc(-x / std::sqrt(2.0));
}
double silu_d(double x) {
  return x / (1.0 + std::exp(-x));
}
double gelu_tanh_d(double x) {
  const double z = std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
  return x / (1.0 + std::exp(-2.0 * z));
}

// Max error in ulps of act(x) over x where |want| >= floor (exp flushes results below e^-86 to
// 0, so the deep tails are checked for absolute error separately).
template <class Ref>
double act_max_ulps(Act act, const std::vector<float>& x, const Ref& ref, double floor,
                    double* max_abs_tail) {
  std::vector<float> y(x.size(), std::nanf(""));
  activation(act, x.data(), y.data(), int64_t(x.size()));
  double worst = 0.0;
  *max_abs_tail = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double w = ref(double(x[i]));
    if (std::abs(w) >= floor) {
      worst = std::max(worst, ulps(y[i], w));
    } else {
      *max_abs_tail = std::max(*max_abs_tail, std::abs(double(y[i]) - w));
    }
  }
  return worst;
}

// GELU (exact, erf): <= 20 ulps on [-3, 3] (measured 15.5 AVX3 / AVX2, 17.9 SSE4 / scalar),
// and relative error <= 5e-7 (1 + x^2) on [-13, 6] (measured 4.1e-7; Phi's condition number
// grows like x^2 in the left tail).
TEST(KernelAccuracy, GeluExactUlpBoundOnEveryTarget) {
  for_each_target([](const std::string& t) {
    double tail = 0.0;
    const auto core = grid(-3.0f, 3.0f, 60001, {1e-20f, -1e-20f, 1e-6f, -1e-6f});
    const double u = act_max_ulps(Act::Gelu, core, gelu_d, 1e-30, &tail);
    EXPECT_LE(u, 20.0) << t;
    EXPECT_LE(tail, 1e-30) << t;
    const auto wide = grid(-13.0f, 6.0f, 190001);
    std::vector<float> y(wide.size());
    activation(Act::Gelu, wide.data(), y.data(), int64_t(wide.size()));
    double worst = 0.0;
    for (size_t i = 0; i < wide.size(); ++i) {
      const double xi = wide[i], w = gelu_d(xi);
      if (std::abs(w) < 1e-35) {
        EXPECT_LE(std::abs(y[i]), 1e-35) << xi;
        continue;
      }
      worst = std::max(worst, std::abs(y[i] - w) / std::abs(w) / (1.0 + xi * xi));
    }
    EXPECT_LE(worst, 5e-7) << t;
    std::printf("[%s] gelu: %.2f ulps on [-3, 3], rel / (1 + x^2) %.2e on [-13, 6]\n", t.c_str(), u,
                worst);
  });
}

// SiLU x sigmoid(x): <= 6 ulps on [-80, 80] where |silu| >= 1e-30 (measured 3.9). GELU-tanh:
// <= 220 ulps on [-9, 9] (measured 155 AVX3 / AVX2, 173 SSE4 / scalar): in the left tail
// y ~ x e^(2z) with |2z| up to ~60, so the float rounding of z alone costs ~|2z| ulps.
TEST(KernelAccuracy, SiluAndGeluTanhUlpBoundOnEveryTarget) {
  for_each_target([](const std::string& t) {
    double tail = 0.0;
    const auto xs = grid(-80.0f, 80.0f, 160001, {1e-20f, -1e-20f});
    const double us = act_max_ulps(Act::Silu, xs, silu_d, 1e-30, &tail);
    EXPECT_LE(us, 6.0) << t;
    EXPECT_LE(tail, 1e-30) << t;
    const auto xt = grid(-9.0f, 9.0f, 90001);
    const double ut = act_max_ulps(Act::GeluTanh, xt, gelu_tanh_d, 1e-30, &tail);
    EXPECT_LE(ut, 220.0) << t;
    EXPECT_LE(tail, 1e-30) << t;
    std::printf("[%s] silu %.2f ulps, gelu_tanh %.2f ulps\n", t.c_str(), us, ut);
  });
}

// SwiGLU silu(a) * b: <= 6 ulps of the double product (measured 3.6).
TEST(KernelAccuracy, SwigluUlpBoundOnEveryTarget) {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> ua(-20.0f, 20.0f), ub(-4.0f, 4.0f);
  std::vector<float> a(50001), b(a.size());
  for (size_t i = 0; i < a.size(); ++i) a[i] = ua(rng), b[i] = ub(rng);
  for_each_target([&](const std::string& t) {
    std::vector<float> y(a.size(), std::nanf(""));
    swiglu(a.data(), b.data(), y.data(), int64_t(a.size()));
    double worst = 0.0;
    for (size_t i = 0; i < a.size(); ++i) {
      const double w = silu_d(a[i]) * double(b[i]);
      if (std::abs(w) >= 1e-30) worst = std::max(worst, ulps(y[i], w));
    }
    EXPECT_LE(worst, 6.0) << t;
    std::printf("[%s] swiglu %.2f ulps\n", t.c_str(), worst);
  });
}

// Softmax rows (lengths 1..1000, logits in [-30, 30]): relative error <= 3e-6 per element
// where the probability >= 1e-30 (measured 2.1e-6 AVX3, 2.4e-6 scalar: exp(x - max) with
// |x - max| up to 60 amplifies the rounding of x - max ~60x); rows sum to 1 within 1e-5.
TEST(KernelAccuracy, SoftmaxRelativeBoundOnEveryTarget) {
  std::mt19937 rng(4);
  std::uniform_real_distribution<float> u(-30.0f, 30.0f);
  for_each_target([&](const std::string& t) {
    double worst = 0.0, worst_sum = 0.0;
    for (int64_t n : {1, 7, 16, 17, 100, 128, 1000}) {
      const int64_t rows = 9;
      std::vector<float> x(size_t(rows * n));
      for (float& v : x) v = u(rng);
      std::vector<float> y = x;
      softmax_rows(y.data(), rows, n, n);
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = &x[size_t(r * n)];
        double mx = -1e300, s = 0.0, sy = 0.0;
        for (int64_t j = 0; j < n; ++j) mx = std::max(mx, double(xr[j]));
        for (int64_t j = 0; j < n; ++j) s += std::exp(double(xr[j]) - mx);
        for (int64_t j = 0; j < n; ++j) {
          const double w = std::exp(double(xr[j]) - mx) / s, g = y[size_t(r * n + j)];
          sy += g;
          if (w >= 1e-30) worst = std::max(worst, std::abs(g - w) / w);
        }
        worst_sum = std::max(worst_sum, std::abs(sy - 1.0));
      }
    }
    EXPECT_LE(worst, 3e-6) << t;
    EXPECT_LE(worst_sum, 1e-5) << t;
    std::printf("[%s] softmax rel %.2e, |sum - 1| %.2e\n", t.c_str(), worst, worst_sum);
  });
}

// The fused attention's online-softmax step (exp_flash on AVX-512: degree-5 minimax and
// vscalefps; exp_vec elsewhere), and its log2-unit form (base2: exp2_flash, the same structure
// for 2^): each probability within 3e-7 relative of exp(d) (2^d) in double, d = float(x - max)
// as the kernel forms it, where it is >= 1e-30 (the exponential itself: measured AVX3 / AVX2
// below), and within 6e-6 of the exact exp(x - max) (the rounding of x - max at |x - max| <= 80
// dominates, ~80 x 6e-8); exactly 0 where masked (-inf) or past the visible keys, NaN where the
// score is NaN; l, the running sum, within 1e-6 relative; a second block rescales O by
// exp(m_old - m) (2^ for base2) to 1e-6.
TEST(KernelAccuracy, FlashSoftmaxStepRelativeBoundOnEveryTarget) {
  for (const bool base2 : {false, true}) {
    std::mt19937 rng(8);
    std::uniform_real_distribution<float> u(-40.0f, 40.0f);
    const float ninf = -std::numeric_limits<float>::infinity();
    const auto ex = [base2](double v) { return base2 ? std::exp2(v) : std::exp(v); };
    for_each_target([&](const std::string& t) {
      double worst = 0.0, worst_exact = 0.0, worst_l = 0.0;
      for (int64_t cols : {1, 15, 16, 33, 512}) {
        const int64_t rows = 7, ldS = cols + 16, D = 8;
        std::vector<float> S(size_t(rows * ldS), 7.0f), m(rows, ninf), l(rows, 0.0f);
        std::vector<float> O(size_t(rows * D), 1.0f);
        std::vector<int64_t> vis(rows);
        for (int64_t r = 0; r < rows; ++r) {
          vis[size_t(r)] = std::max<int64_t>(0, cols - r);  // row r sees cols - r keys
          for (int64_t c = 0; c < cols; ++c) S[size_t(r * ldS + c)] = u(rng);
          if (cols > 3) S[size_t(r * ldS + 2)] = ninf;  // a masked key inside the visible range
        }
        const std::vector<float> x = S;
        kernels::cpu::flash_online_softmax(S.data(), ldS, rows, cols, vis.data(), m.data(),
                                           l.data(), O.data(), D, D, nullptr, 0, base2);
        for (int64_t r = 0; r < rows; ++r) {
          const float* xr = &x[size_t(r * ldS)];
          const float* p = &S[size_t(r * ldS)];
          double mx = -1e300, s = 0.0;
          for (int64_t c = 0; c < vis[size_t(r)]; ++c) mx = std::max(mx, double(xr[c]));
          for (int64_t c = 0; c < cols; ++c) {
            if (c >= vis[size_t(r)] || xr[c] == ninf) {
              EXPECT_EQ(p[c], 0.0f) << t << " row " << r << " col " << c;
              continue;
            }
            const double w = ex(double(xr[c]) - mx);
            const double wf = ex(double(xr[c] - float(mx)));
            s += w;
            if (w >= 1e-30) {
              worst = std::max(worst, std::abs(double(p[c]) - wf) / wf);
              worst_exact = std::max(worst_exact, std::abs(double(p[c]) - w) / w);
            }
          }
          if (vis[size_t(r)] > 0) {
            EXPECT_EQ(double(m[size_t(r)]), mx) << t;
            worst_l = std::max(worst_l, std::abs(double(l[size_t(r)]) - s) / s);
          }
        }
        // a second block whose scores are 3 higher: the max grows, O and l are rescaled
        const std::vector<float> m1 = m, l1 = l;
        std::vector<float> S2(size_t(rows * ldS));
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) S2[size_t(r * ldS + c)] = x[size_t(r * ldS + c)] + 3;
        std::fill(O.begin(), O.end(), 1.0f);
        kernels::cpu::flash_online_softmax(S2.data(), ldS, rows, cols, vis.data(), m.data(),
                                           l.data(), O.data(), D, D, nullptr, 0, base2);
        for (int64_t r = 0; r < rows; ++r) {
          if (vis[size_t(r)] == 0) continue;
          const double alpha = ex(double(m1[size_t(r)]) - double(m[size_t(r)]));
          EXPECT_NEAR(O[size_t(r * D)], alpha, 1e-6 * alpha) << t << " base2 " << base2;
          double s2 = 0.0;
          for (int64_t c = 0; c < vis[size_t(r)]; ++c)
            if (S2[size_t(r * ldS + c)] != ninf) s2 += S2[size_t(r * ldS + c)];
          const double want = double(l1[size_t(r)]) * alpha + s2;
          EXPECT_NEAR(l[size_t(r)], want, 1e-6 * want) << t << " base2 " << base2;
        }
      }
      EXPECT_LE(worst, 3e-7) << t << " base2 " << base2;
      EXPECT_LE(worst_exact, 6e-6) << t << " base2 " << base2;
      EXPECT_LE(worst_l, 1e-6) << t << " base2 " << base2;
      std::printf("[%s] flash softmax step%s: exp rel %.2e, vs exact %.2e, l rel %.2e\n", t.c_str(),
                  base2 ? " (2^, log2 units)" : "", worst, worst_exact, worst_l);
      // NaN scores stay visible (SIMD targets; the scalar fallback's Max drops a NaN operand)
      if (t == "SCALAR" || t == "EMU128") return;
      std::vector<float> S = {0.5f, std::nanf(""), -1.0f, 0.0f}, m = {ninf}, l = {0.0f}, O(4, 0.0f);
      const int64_t vis1 = 4;
      kernels::cpu::flash_online_softmax(S.data(), 4, 1, 4, &vis1, m.data(), l.data(), O.data(), 4,
                                         4, nullptr, 0, base2);
      EXPECT_TRUE(std::isnan(S[1]) || std::isnan(l[0])) << t;
    });
  }
}

// LayerNorm / RMSNorm (cols 1..3072, inputs with mean 3 and sd 2): |y - y_double| <= 2e-6 x
// max(|y_double|, 1) (measured <= 9.3e-7; the outputs are O(1), and cancellation in x - mean
// sets an absolute floor).
TEST(KernelAccuracy, NormsBoundOnEveryTarget) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(3.0f, 2.0f);
  std::uniform_real_distribution<float> ug(0.5f, 1.5f), ub(-1.0f, 1.0f);
  for_each_target([&](const std::string& t) {
    double worst_ln = 0.0, worst_rms = 0.0;
    for (int64_t n : {1, 5, 16, 33, 768, 3072}) {
      const int64_t rows = 5;
      std::vector<float> x(static_cast<size_t>(rows * n)), g(static_cast<size_t>(n)),
          b(static_cast<size_t>(n));
      for (float& v : x) v = nd(rng);
      for (float& v : g) v = ug(rng);
      for (float& v : b) v = ub(rng);
      std::vector<float> yl(x.size(), std::nanf("")), yr(x.size(), std::nanf(""));
      layernorm(x.data(), g.data(), b.data(), yl.data(), rows, n, 1e-5f);
      rmsnorm(x.data(), g.data(), yr.data(), rows, n, 1e-6f);
      for (int64_t r = 0; r < rows; ++r) {
        const float* xr = &x[size_t(r * n)];
        double mean = 0.0, var = 0.0, ms = 0.0;
        for (int64_t j = 0; j < n; ++j) mean += xr[j], ms += double(xr[j]) * xr[j];
        mean /= double(n), ms /= double(n);
        for (int64_t j = 0; j < n; ++j) var += (xr[j] - mean) * (xr[j] - mean);
        var /= double(n);
        const double rl = 1.0 / std::sqrt(var + 1e-5), rr = 1.0 / std::sqrt(ms + 1e-6);
        for (int64_t j = 0; j < n; ++j) {
          const size_t k = size_t(r * n + j);
          const double wl = (xr[j] - mean) * rl * g[j] + b[j], wr = xr[j] * rr * g[j];
          worst_ln = std::max(worst_ln, std::abs(yl[k] - wl) / std::max(std::abs(wl), 1.0));
          worst_rms = std::max(worst_rms, std::abs(yr[k] - wr) / std::max(std::abs(wr), 1.0));
        }
      }
    }
    EXPECT_LE(worst_ln, 2e-6) << t;
    EXPECT_LE(worst_rms, 2e-6) << t;
    std::printf("[%s] layernorm %.2e, rmsnorm %.2e\n", t.c_str(), worst_ln, worst_rms);
  });
}

// The peak probe runs on the best target this CPU supports and counts its lanes.
TEST(Fp32Peak, UsesTheWidestTarget) {
  const Fp32Peak p = measure_fp32_peak(1, 1);
  const auto targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  EXPECT_EQ(p.isa, hwy::TargetName(targets.front()));
  EXPECT_GT(p.gflops, 0.0);
  EXPECT_EQ(p.chains, 12);
  EXPECT_EQ(p.threads, 1);
  EXPECT_GE(p.lanes, 4);
}

// The probe's chains are distinct (each starts at its own value), so its result is the sum of
// twelve different chains: checked against scalar std::fma chains. (With equal starts GCC folded
// the twelve chains into one latency-bound chain and the probe over-reported the peak 1.5x.)
TEST(Fp32Peak, ChainsAreDistinct) {
  const int64_t iters = 1000;
  const float seed = 1.25f;
  const Fp32Peak p = measure_fp32_peak(1, 1);
  double want = 0;
  for (int i = 0; i < 12; ++i) {
    float a = fp32_peak_chain_start(seed, i);
    if (i) {
      EXPECT_GT(a, fp32_peak_chain_start(seed, i - 1));
    }
    for (int64_t k = 0; k < iters; ++k) a = std::fma(a, 0.999999f, 1e-7f);
    want += double(a) * p.lanes;
  }
  const double got = fp32_peak_checksum(iters, seed);
  EXPECT_NEAR(got, want, 1e-5 * want);
  // equal starts would give 12 x chain 0
  float a0 = fp32_peak_chain_start(seed, 0);
  for (int64_t k = 0; k < iters; ++k) a0 = std::fma(a0, 0.999999f, 1e-7f);
  EXPECT_GT(std::abs(got - 12.0 * p.lanes * a0), 1e-3 * want);
}

}  // namespace
