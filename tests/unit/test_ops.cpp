// Fast ops (oneDNN / Highway) against their scalar references, refs against known values,
// argument validation, and every compiled Highway target this CPU supports.
#include <gtest/gtest.h>
#include <hwy/targets.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../src/kernels/cpu/kernels.h"
#include "hwy_targets.h"
#include "posformer/core/error.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/matmul.h"
#include "posformer/ops/norm.h"
#include "posformer/ops/rope.h"
#include "posformer/ops/softmax.h"

namespace {

using namespace posformer;
using namespace posformer::ops;

const float kInf = std::numeric_limits<float>::infinity();
const std::vector<int64_t> kSizes = {1, 3, 7, 8, 16, 17, 31, 64, 100, 257, 1000};

std::vector<float> uniform(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// |got - want| <= rtol |want| + atol elementwise; reports the first few failures.
void expect_close(const float* got, const float* want, size_t n, double rtol, double atol,
                  const std::string& what) {
  int failures = 0;
  for (size_t i = 0; i < n && failures < 5; ++i) {
    const double g = got[i], w = want[i];
    const bool same_special = (std::isnan(g) && std::isnan(w)) || (std::isinf(w) && g == w);
    if (same_special) continue;
    if (!(std::abs(g - w) <= rtol * std::abs(w) + atol)) {
      ADD_FAILURE() << what << ": index " << i << " got " << g << " want " << w << " (diff "
                    << std::abs(g - w) << ")";
      ++failures;
    }
  }
}
void expect_close(const std::vector<float>& got, const std::vector<float>& want, double rtol,
                  double atol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  expect_close(got.data(), want.data(), got.size(), rtol, atol, what);
}

// ---------------------------------------------------------------- checks shared by all targets

const Act kActs[] = {Act::Identity, Act::Relu, Act::Gelu, Act::GeluTanh, Act::Silu};

void check_activation() {
  for (Act act : kActs)
    for (int64_t n : kSizes) {
      const std::string what = std::string(act_name(act)) + " n=" + std::to_string(n);
      auto x = uniform(n, 1000 + n, -9.0f, 9.0f);
      if (n > 7) {  // extremes: huge, tiny, exact zero
        x[0] = 0.0f, x[1] = -100.0f, x[2] = 100.0f, x[3] = 1e-30f, x[4] = -1e-30f, x[5] = -30.0f;
      }
      std::vector<float> want(n), got(n);
      ref::activation(act, x.data(), want.data(), n);
      activation(act, x.data(), got.data(), n);
      expect_close(got, want, 1e-5, 1e-30, what);
      got = x;  // aliasing: y == x
      activation(act, got.data(), got.data(), n);
      expect_close(got, want, 1e-5, 1e-30, what + " aliased");
    }
}

void check_bias_act() {
  for (Act act : kActs)
    for (int64_t rows : {1, 3, 17})
      for (int64_t cols : {1, 7, 31, 64, 100}) {
        const std::string what =
            std::string(act_name(act)) + " " + std::to_string(rows) + "x" + std::to_string(cols);
        const auto y0 = uniform(rows * cols, uint32_t(rows * 131 + cols), -6.0f, 6.0f);
        const auto bias = uniform(cols, uint32_t(cols + 7), -2.0f, 2.0f);
        for (const float* b : {bias.data(), static_cast<const float*>(nullptr)}) {
          auto want = y0, got = y0;
          ref::bias_act(act, want.data(), b, rows, cols);
          bias_act(act, got.data(), b, rows, cols);
          expect_close(got, want, 1e-5, 1e-30, what + (b ? " bias" : " no-bias"));
        }
      }
}

void check_swiglu_add() {
  for (int64_t n : kSizes) {
    const auto a = uniform(n, uint32_t(n), -8.0f, 8.0f),
               b = uniform(n, uint32_t(n + 1), -3.0f, 3.0f);
    std::vector<float> want(n), got(n);
    ref::swiglu(a.data(), b.data(), want.data(), n);
    swiglu(a.data(), b.data(), got.data(), n);
    expect_close(got, want, 1e-5, 1e-30, "swiglu n=" + std::to_string(n));
    got = a;  // y aliases a
    swiglu(got.data(), b.data(), got.data(), n);
    expect_close(got, want, 1e-5, 1e-30, "swiglu aliased n=" + std::to_string(n));

    auto yw = a, yg = a;
    ref::add_inplace(yw.data(), b.data(), n);
    add_inplace(yg.data(), b.data(), n);
    expect_close(yg, yw, 0.0, 0.0, "add_inplace n=" + std::to_string(n));  // exact
  }
  // copy: threads from 2^18 floats on; every float, the slices' seams and the end included
  for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{17}, (int64_t{1} << 18) + 5}) {
    const auto x = uniform(n, uint32_t(n + 7), -5.0f, 5.0f);
    std::vector<float> y(static_cast<size_t>(n) + 1, std::nanf(""));
    copy(x.data(), y.data(), n);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(y[i], x[i]) << "copy n=" << n << " i=" << i;
    EXPECT_TRUE(std::isnan(y[n])) << "copy wrote past n=" << n;
  }
}

void check_softmax() {
  for (int64_t rows : {1, 2, 5, 16})
    for (int64_t cols : kSizes)
      for (int64_t pad : {0, 3}) {
        const int64_t ld = cols + pad;
        const std::string what = "softmax " + std::to_string(rows) + "x" + std::to_string(cols) +
                                 " ld=" + std::to_string(ld);
        auto x = uniform(rows * ld, uint32_t(rows * 7919 + cols * 31 + pad), -20.0f, 20.0f);
        std::mt19937 rng{uint32_t(cols)};
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t j = 0; j < ld; ++j) {
            float& v = x[r * ld + j];
            if (j >= cols)
              v = 12345.0f;  // padding: must stay untouched
            else if (rng() % 4 == 0)
              v = -kInf;  // masked key
            else if (r == 1)
              v = -kInf;  // row 1 fully masked
          }
        auto want = x, got = x;
        ref::softmax_rows(want.data(), rows, cols, ld);
        softmax_rows(got.data(), rows, cols, ld);
        expect_close(got, want, 1e-5, 1e-7, what);
        for (int64_t r = 0; r < rows; ++r) {
          double sum = 0.0;
          for (int64_t j = 0; j < cols; ++j) {
            const float v = got[r * ld + j];
            ASSERT_FALSE(std::isnan(v)) << what;
            if (x[r * ld + j] == -kInf) {
              ASSERT_EQ(v, 0.0f) << what << " masked entry not 0";
            }
            sum += v;
          }
          for (int64_t j = cols; j < ld; ++j) ASSERT_EQ(got[r * ld + j], 12345.0f) << what;
          bool all_masked = true;
          for (int64_t j = 0; j < cols; ++j) all_masked &= x[r * ld + j] == -kInf;
          EXPECT_NEAR(sum, all_masked ? 0.0 : 1.0, 1e-5) << what << " row " << r;
        }
      }
}

void check_norm() {
  for (int64_t rows : {1, 3, 17})
    for (int64_t cols : kSizes) {
      const std::string what = std::to_string(rows) + "x" + std::to_string(cols);
      auto x = uniform(rows * cols, uint32_t(rows * 31 + cols), -3.0f, 3.0f);
      for (int64_t j = 0; j < cols; ++j) x[j] += 100.0f;  // row 0: large mean
      const auto g = uniform(cols, uint32_t(cols + 1), 0.5f, 1.5f);
      const auto b = uniform(cols, uint32_t(cols + 2), -1.0f, 1.0f);
      for (const float* bp : {b.data(), static_cast<const float*>(nullptr)}) {
        std::vector<float> want(x.size()), got(x.size());
        ref::layernorm(x.data(), g.data(), bp, want.data(), rows, cols, 1e-5f);
        layernorm(x.data(), g.data(), bp, got.data(), rows, cols, 1e-5f);
        expect_close(got, want, 1e-5, 2e-5, "layernorm " + what);
        got = x;
        layernorm(got.data(), g.data(), bp, got.data(), rows, cols, 1e-5f);
        expect_close(got, want, 1e-5, 2e-5, "layernorm aliased " + what);
      }
      std::vector<float> want(x.size()), got(x.size());
      ref::rmsnorm(x.data(), g.data(), want.data(), rows, cols, 1e-6f);
      rmsnorm(x.data(), g.data(), got.data(), rows, cols, 1e-6f);
      expect_close(got, want, 1e-5, 1e-6, "rmsnorm " + what);
      got = x;
      rmsnorm(got.data(), g.data(), got.data(), rows, cols, 1e-6f);
      expect_close(got, want, 1e-5, 1e-6, "rmsnorm aliased " + what);
    }
}

struct RopeCase {
  int64_t T, n_heads, D, R, pad;
};
const RopeCase kRopeCases[] = {{1, 1, 2, 2, 0},   {3, 2, 8, 8, 0},     {5, 3, 16, 12, 5},
                               {7, 4, 64, 64, 0}, {17, 2, 64, 32, 3},  {4, 1, 34, 34, 0},
                               {2, 2, 40, 6, 1},  {31, 12, 64, 64, 7}, {3, 2, 128, 70, 0}};

void check_rope() {
  for (const auto& c : kRopeCases)
    for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::Half}) {
      const int64_t ld = c.n_heads * c.D + c.pad, h = c.R / 2;
      const std::string what = "rope T=" + std::to_string(c.T) + " H=" + std::to_string(c.n_heads) +
                               " D=" + std::to_string(c.D) + " R=" + std::to_string(c.R) +
                               (layout == RopeLayout::Half ? " half" : " interleaved");
      std::vector<double> pos(c.T);
      for (int64_t t = 0; t < c.T; ++t) pos[t] = double(3 * t + 1);
      const auto theta = rope_inv_freq(c.R, 10000.0);
      std::vector<float> cs(c.T * h), sn(c.T * h);
      rope_tables(pos.data(), c.T, theta, 1.0, cs.data(), sn.data());
      const auto x = uniform(c.T * ld, uint32_t(c.T * 97 + c.D + c.R), -2.0f, 2.0f);
      for (float sign : {1.0f, -1.0f}) {
        auto want = x, got = x;
        ref::rope_apply(want.data(), c.T, c.n_heads, c.D, ld, c.R, layout, cs.data(), sn.data(),
                        sign);
        rope_apply(got.data(), c.T, c.n_heads, c.D, ld, c.R, layout, cs.data(), sn.data(), sign);
        expect_close(got, want, 1e-5, 1e-6, what + " sign " + std::to_string(int(sign)));
        for (int64_t t = 0; t < c.T; ++t)  // dims >= R and row padding untouched
          for (int64_t j = 0; j < ld; ++j) {
            const bool rotated = j < c.n_heads * c.D && j % c.D < c.R;
            if (!rotated) {
              ASSERT_EQ(got[t * ld + j], x[t * ld + j]) << what << " j=" << j;
            }
          }
      }
      auto y = x;  // sign -1 inverts sign +1
      rope_apply(y.data(), c.T, c.n_heads, c.D, ld, c.R, layout, cs.data(), sn.data(), 1.0f);
      rope_apply(y.data(), c.T, c.n_heads, c.D, ld, c.R, layout, cs.data(), sn.data(), -1.0f);
      expect_close(y, x, 1e-5, 1e-6, what + " inverse");
    }
}

using pf_test::for_each_target;

// ---------------------------------------------------------------- references vs known values

TEST(OpsRef, ActivationKnownValues) {
  const std::vector<float> x = {-5.0f, -2.0f, -0.5f, 0.0f, 0.25f, 1.0f, 3.0f};
  const size_t n = x.size();
  std::vector<float> y(n);
  ref::activation(Act::Gelu, x.data(), y.data(), int64_t(n));
  for (size_t i = 0; i < n; ++i)
    EXPECT_NEAR(y[i], 0.5 * x[i] * (1.0 + std::erf(x[i] / std::sqrt(2.0))), 1e-7) << x[i];
  EXPECT_NEAR(y[5], 0.8413447460685429, 1e-7);  // gelu(1) = Phi(1)
  ref::activation(Act::GeluTanh, x.data(), y.data(), int64_t(n));
  for (size_t i = 0; i < n; ++i) {
    const double xi = x[i], k = std::sqrt(2.0 / M_PI);
    EXPECT_NEAR(y[i], 0.5 * xi * (1.0 + std::tanh(k * (xi + 0.044715 * xi * xi * xi))), 1e-7);
  }
  ref::activation(Act::Silu, x.data(), y.data(), int64_t(n));
  EXPECT_NEAR(y[5], 1.0 / (1.0 + std::exp(-1.0)), 1e-7);
  EXPECT_EQ(y[3], 0.0f);
  ref::activation(Act::Relu, x.data(), y.data(), int64_t(n));
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[6], 3.0f);
  float a = 2.0f, b = 3.0f, s;
  ref::swiglu(&a, &b, &s, 1);
  EXPECT_NEAR(s, 3.0 * 2.0 / (1.0 + std::exp(-2.0)), 1e-6);
}

TEST(OpsRef, SoftmaxKnownValues) {
  std::vector<float> x = {0.0f, std::log(2.0f), -kInf, -kInf, -kInf, -kInf};
  ref::softmax_rows(x.data(), 2, 2, 3);  // row 0 = [0, ln 2 | -inf pad], row 1 all -inf
  EXPECT_NEAR(x[0], 1.0 / 3.0, 1e-7);
  EXPECT_NEAR(x[1], 2.0 / 3.0, 1e-7);
  EXPECT_EQ(x[2], -kInf);  // padding untouched
  EXPECT_EQ(x[3], 0.0f);
  EXPECT_EQ(x[4], 0.0f);
}

TEST(OpsRef, NormKnownValues) {
  const float x[4] = {1, 2, 3, 4}, g[4] = {1, 1, 2, 1}, b[4] = {0, 0, 0, 10};
  float y[4];
  ref::layernorm(x, g, b, y, 1, 4, 0.0f);  // mean 2.5, var 1.25
  const double r = 1.0 / std::sqrt(1.25);
  EXPECT_NEAR(y[0], -1.5 * r, 1e-6);
  EXPECT_NEAR(y[2], 2 * 0.5 * r, 1e-6);
  EXPECT_NEAR(y[3], 1.5 * r + 10, 1e-6);
  ref::rmsnorm(x, g, y, 1, 4, 0.0f);  // mean(x^2) = 7.5
  EXPECT_NEAR(y[1], 2.0 / std::sqrt(7.5), 1e-6);
  EXPECT_NEAR(y[2], 6.0 / std::sqrt(7.5), 1e-6);
}

TEST(OpsRef, GemmKnownValues) {
  const float A[4] = {1, 2, 3, 4}, B[4] = {5, 6, 7, 8};  // [[1,2],[3,4]], [[5,6],[7,8]]
  float C[4] = {1, 1, 1, 1};
  ref::gemm(false, false, 2, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2);
  EXPECT_EQ(std::vector<float>(C, C + 4), (std::vector<float>{19, 22, 43, 50}));
  ref::gemm(true, false, 2, 2, 2, 2.0f, A, 2, B, 2, 1.0f, C, 2);  // + 2 A^T B
  EXPECT_EQ(std::vector<float>(C, C + 4), (std::vector<float>{19 + 52, 22 + 60, 43 + 76, 50 + 88}));
  const float bias[2] = {0.5f, -1.0f};
  float y[4];
  ref::linear(A, B, bias, y, 2, 2, 2);  // x W^T + b, W = [[5,6],[7,8]]
  EXPECT_EQ(std::vector<float>(y, y + 4), (std::vector<float>{17.5f, 22, 39.5f, 52}));
}

TEST(OpsRef, RopeKnownValues) {
  const auto theta = rope_inv_freq(4, 10000.0);
  ASSERT_EQ(theta.size(), 2u);
  EXPECT_DOUBLE_EQ(theta[0], 1.0);
  EXPECT_NEAR(theta[1], 0.01, 1e-15);
  const double pos[2] = {0.0, 2.0};
  float cs[4], sn[4];
  rope_tables(pos, 2, theta, 0.5, cs, sn);
  EXPECT_FLOAT_EQ(cs[0], 0.5f);
  EXPECT_FLOAT_EQ(sn[0], 0.0f);
  EXPECT_FLOAT_EQ(cs[2], float(0.5 * std::cos(2.0)));
  EXPECT_FLOAT_EQ(sn[3], float(0.5 * std::sin(0.02)));

  // One pair (1, 0) rotated by pi/6 gives (cos, sin); the inverse rotation undoes it.
  const float c = std::cos(float(M_PI / 6)), s = std::sin(float(M_PI / 6));
  for (RopeLayout layout : {RopeLayout::Interleaved, RopeLayout::Half}) {
    float v[3] = {1.0f, 0.0f, 7.0f};  // D = 3, R = 2: v[2] passes through
    ref::rope_apply(v, 1, 1, 3, 3, 2, layout, &c, &s, 1.0f);
    EXPECT_FLOAT_EQ(v[0], c);
    EXPECT_FLOAT_EQ(v[1], s);
    EXPECT_EQ(v[2], 7.0f);
  }
  // Half layout with R = 4 pairs (x0, x2), (x1, x3); a quarter turn maps (a, b) -> (-b, a).
  float v[4] = {1, 2, 3, 4};
  const float c2[2] = {0, 1}, s2[2] = {1, 0};
  ref::rope_apply(v, 1, 1, 4, 4, 4, RopeLayout::Half, c2, s2, 1.0f);
  EXPECT_EQ(std::vector<float>(v, v + 4), (std::vector<float>{-3, 2, 1, 4}));
  float w[4] = {1, 2, 3, 4};
  ref::rope_apply(w, 1, 1, 4, 4, 4, RopeLayout::Interleaved, c2, s2, -1.0f);  // (1,2) by -90deg
  EXPECT_EQ(std::vector<float>(w, w + 4), (std::vector<float>{2, -1, 3, 4}));
}

TEST(OpsRef, ActNames) {
  for (Act a : {Act::Relu, Act::Gelu, Act::GeluTanh, Act::Silu})
    EXPECT_EQ(act_from_name(act_name(a)), a);
  EXPECT_STREQ(act_name(Act::Identity), "identity");
  try {
    act_from_name("gelu_new");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("gelu_new"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- fast vs ref

TEST(OpsErf, MatchesStdErf) {
  std::vector<float> x;
  for (int i = -100000; i <= 100000; ++i) x.push_back(float(i) * 1e-4f);  // [-10, 10]
  for (float v : {1e-30f, -1e-30f, 1e-6f, 0.9999999f, 1.0f, 1.0000001f, 30.0f, -30.0f, kInf, -kInf})
    x.push_back(v);
  std::vector<float> y(x.size());
  kernels::cpu::erf(x.data(), y.data(), int64_t(x.size()));
  double max_abs = 0.0, max_rel_small = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double want = std::erf(double(x[i]));
    max_abs = std::max(max_abs, std::abs(y[i] - want));
    if (std::abs(x[i]) < 1.0f && x[i] != 0.0f)
      max_rel_small = std::max(max_rel_small, std::abs(y[i] - want) / std::abs(want));
  }
  EXPECT_LE(max_abs, 1.5e-7);
  EXPECT_LE(max_rel_small, 5e-7);  // odd polynomial branch is relative-accurate near 0
  EXPECT_EQ(y[x.size() - 2], 1.0f);
  EXPECT_EQ(y[x.size() - 1], -1.0f);
}

TEST(OpsErf, GeluRelativeAccuracyInTails) {
  std::vector<float> x;
  for (int i = -130000; i <= 60000; ++i) x.push_back(float(i) * 1e-4f);  // [-13, 6]
  std::vector<float> y(x.size());
  activation(Act::Gelu, x.data(), y.data(), int64_t(x.size()));
  double worst = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double xi = x[i], want = 0.5 * xi * std::erfc(-xi / std::sqrt(2.0));
    if (std::abs(want) < 1e-35) continue;  // exp flushes below e^-86 (no denormals)
    // Phi(x) has condition number ~x^2 in the left tail; scale the bound with it.
    const double tol = 4e-7 * (1.0 + xi * xi);
    worst = std::max(worst, std::abs(y[i] - want) / std::abs(want) / tol);
  }
  EXPECT_LE(worst, 1.0);
}

TEST(OpsActivation, FastMatchesRef) {
  check_activation();
}
TEST(OpsActivation, BiasActMatchesRef) {
  check_bias_act();
}
TEST(OpsActivation, SwigluAndAddMatchRef) {
  check_swiglu_add();
}
TEST(OpsSoftmax, FastMatchesRef) {
  check_softmax();
}
TEST(OpsSoftmax, LargeLogitsStable) {
  std::vector<float> x = {1000.0f, 1000.0f + std::log(2.0f), -1000.0f, 88.0f};
  const double d = double(x[1]) - double(x[0]);  // ~ln 2 after float rounding
  softmax_rows(x.data(), 1, 4, 4);
  EXPECT_NEAR(x[0], 1.0 / (1.0 + std::exp(d)), 1e-6);
  EXPECT_NEAR(x[1], 1.0 / (1.0 + std::exp(-d)), 1e-6);
  EXPECT_EQ(x[2], 0.0f);
  EXPECT_EQ(x[3], 0.0f);
}
TEST(OpsNorm, FastMatchesRef) {
  check_norm();
}
TEST(OpsRope, FastMatchesRef) {
  check_rope();
}

TEST(OpsRope, TablesMatchDoublePrecision) {
  const int64_t T = 300, R = 64;
  const auto theta = rope_inv_freq(R, 500000.0);
  std::vector<double> pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = 1000.0 * double(t) + 0.5;  // large angles
  std::vector<float> cs(T * R / 2), sn(T * R / 2);
  rope_tables(pos.data(), T, theta, 1.25, cs.data(), sn.data());
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < R / 2; ++i) {
      const double a = pos[t] * std::pow(500000.0, -2.0 * double(i) / double(R));
      ASSERT_FLOAT_EQ(cs[t * R / 2 + i], float(1.25 * std::cos(a)));
      ASSERT_FLOAT_EQ(sn[t * R / 2 + i], float(1.25 * std::sin(a)));
    }
}

// Tolerance bound for gemm: 1e-4 * (|alpha| |op(A)| |op(B)| + |beta| |C|) elementwise.
std::vector<float> gemm_bound(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                              const std::vector<float>& A, int64_t lda, const std::vector<float>& B,
                              int64_t ldb, float beta, const std::vector<float>& C, int64_t ldc) {
  auto abs_of = [](std::vector<float> v) {
    for (auto& x : v) x = std::abs(x);
    return v;
  };
  auto bound = abs_of(C);
  const auto a = abs_of(A), b = abs_of(B);
  ref::gemm(ta, tb, M, N, K, std::abs(alpha), a.data(), lda, b.data(), ldb, std::abs(beta),
            bound.data(), ldc);
  return bound;
}

TEST(OpsGemm, FastMatchesRefAllTransposes) {
  struct Case {
    int64_t M, N, K;
  };
  const Case cases[] = {{1, 1, 1},     {3, 7, 17},   {17, 3, 7},   {31, 64, 100},
                        {64, 31, 257}, {100, 17, 1}, {1, 257, 33}, {128, 96, 64}};
  for (const auto& c : cases)
    for (int tr = 0; tr < 4; ++tr)
      for (int params = 0; params < 3; ++params) {
        const bool ta = tr & 1, tb = tr & 2;
        const float alpha = params == 0 ? 1.0f : (params == 1 ? -0.75f : 2.0f);
        const float beta = params == 0 ? 0.0f : (params == 1 ? 0.5f : 1.0f);
        const int64_t lda = (ta ? c.M : c.K) + (params == 0 ? 0 : 3);
        const int64_t ldb = (tb ? c.K : c.N) + (params == 2 ? 5 : 0);
        const int64_t ldc = c.N + (params == 1 ? 2 : 0);
        const auto A = uniform((ta ? c.K : c.M) * lda, uint32_t(c.M * 3 + tr), -1.0f, 1.0f);
        const auto B = uniform((tb ? c.N : c.K) * ldb, uint32_t(c.N * 5 + tr), -1.0f, 1.0f);
        auto C = uniform(c.M * ldc, uint32_t(c.K * 7 + tr), -1.0f, 1.0f);
        if (beta == 0.0f) std::fill(C.begin(), C.end(), std::nanf(""));  // must not be read
        auto want = C, got = C;
        ref::gemm(ta, tb, c.M, c.N, c.K, alpha, A.data(), lda, B.data(), ldb, beta, want.data(),
                  ldc);
        gemm(ta, tb, c.M, c.N, c.K, alpha, A.data(), lda, B.data(), ldb, beta, got.data(), ldc);
        auto bound = beta == 0.0f ? std::vector<float>(C.size(), 0.0f) : C;
        bound = gemm_bound(ta, tb, c.M, c.N, c.K, alpha, A, lda, B, ldb, beta, bound, ldc);
        const std::string what = "gemm " + std::to_string(c.M) + "x" + std::to_string(c.N) + "x" +
                                 std::to_string(c.K) + " ta=" + std::to_string(ta) +
                                 " tb=" + std::to_string(tb) + " params=" + std::to_string(params);
        for (int64_t i = 0; i < c.M; ++i) {
          for (int64_t j = 0; j < c.N; ++j) {
            const size_t k = size_t(i * ldc + j);
            ASSERT_LE(std::abs(got[k] - want[k]), 1e-4 * bound[k] + 1e-7)
                << what << " at " << i << "," << j;
          }
          for (int64_t j = c.N; j < ldc; ++j)  // C padding untouched (NaN compares by bits)
            ASSERT_EQ(std::memcmp(&got[i * ldc + j], &C[i * ldc + j], 4), 0) << what;
        }
      }
}

TEST(OpsGemm, DegenerateSizes) {
  std::vector<float> C = {1, 2, 3, 4};
  gemm(false, false, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 2, 0.5f, C.data(), 2);  // K == 0
  EXPECT_EQ(C, (std::vector<float>{0.5f, 1, 1.5f, 2}));
  C.assign(4, std::nanf(""));
  gemm(false, true, 2, 2, 0, 1.0f, nullptr, 1, nullptr, 1, 0.0f, C.data(), 2);
  EXPECT_EQ(C, (std::vector<float>(4, 0.0f)));
  gemm(false, false, 0, 2, 3, 1.0f, nullptr, 3, nullptr, 2, 0.0f, nullptr, 2);  // M == 0
  gemm(false, false, 2, 0, 3, 1.0f, nullptr, 3, nullptr, 1, 0.0f, nullptr, 1);  // N == 0
  const float b[2] = {3, -4};
  std::vector<float> y(4, std::nanf(""));
  linear(nullptr, nullptr, b, y.data(), 2, 2, 0);  // K == 0: bias only
  EXPECT_EQ(y, (std::vector<float>{3, -4, 3, -4}));
}

TEST(OpsLinear, FastMatchesRef) {
  for (int64_t M : {1, 7, 64})
    for (int64_t N : {1, 17, 100})
      for (int64_t K : {1, 31, 257}) {
        const auto x = uniform(M * K, uint32_t(M + K), -1.0f, 1.0f);
        const auto W = uniform(N * K, uint32_t(N + K + 1), -1.0f, 1.0f);
        const auto b = uniform(N, uint32_t(N), -1.0f, 1.0f);
        for (const float* bp : {b.data(), static_cast<const float*>(nullptr)}) {
          std::vector<float> want(M * N), got(M * N, std::nanf(""));
          ref::linear(x.data(), W.data(), bp, want.data(), M, N, K);
          linear(x.data(), W.data(), bp, got.data(), M, N, K);
          expect_close(got, want, 1e-4, 1e-4 * std::sqrt(double(K)) * 0.1,
                       "linear " + std::to_string(M) + "x" + std::to_string(N) + "x" +
                           std::to_string(K) + (bp ? " bias" : ""));
        }
      }
}

// Sizes big enough to take the OpenMP paths, and calls from inside an outer parallel region.
TEST(OpsParallel, LargeAndNestedMatchRef) {
  const int64_t rows = 128, cols = 3072;
  const auto x = uniform(rows * cols, 77, -6.0f, 6.0f);
  std::vector<float> want(x.size()), got(x.size());
  ref::activation(Act::Gelu, x.data(), want.data(), rows * cols);
  activation(Act::Gelu, x.data(), got.data(), rows * cols);
  expect_close(got, want, 1e-5, 1e-30, "gelu large");
  const auto g = uniform(cols, 78, 0.5f, 1.5f), b = uniform(cols, 79);
  ref::layernorm(x.data(), g.data(), b.data(), want.data(), rows, cols, 1e-12f);
  layernorm(x.data(), g.data(), b.data(), got.data(), rows, cols, 1e-12f);
  expect_close(got, want, 1e-5, 2e-5, "layernorm large");
  want = x, got = x;
  ref::softmax_rows(want.data(), rows, cols, cols);
  softmax_rows(got.data(), rows, cols, cols);
  expect_close(got, want, 1e-5, 1e-9, "softmax large");

  // 12 "heads" of 128x128 softmax, each call made from inside an omp parallel for.
  const int64_t H = 12, S = 128;
  auto s = uniform(H * S * S, 80, -10.0f, 10.0f);
  auto s_want = s;
  ref::softmax_rows(s_want.data(), H * S, S, S);
#pragma omp parallel for num_threads(2)
  for (int64_t h = 0; h < H; ++h) {
    softmax_rows(s.data() + h * S * S, S, S, S);
    activation(Act::Identity, s.data() + h * S * S, s.data() + h * S * S, S * S);
  }
  expect_close(s, s_want, 1e-5, 1e-9, "softmax nested");
}

TEST(OpsAllTargets, FastMatchesRefOnEveryTarget) {
  for_each_target([] {
    check_activation();
    check_bias_act();
    check_swiglu_add();
    check_softmax();
    check_norm();
    check_rope();
    std::vector<float> x, y;
    for (int i = -1000; i <= 1000; ++i) x.push_back(float(i) * 1e-2f);
    y.resize(x.size());
    kernels::cpu::erf(x.data(), y.data(), int64_t(x.size()));
    for (size_t i = 0; i < x.size(); ++i) ASSERT_NEAR(y[i], std::erf(double(x[i])), 1.5e-7) << x[i];
  });
}

// ---------------------------------------------------------------- argument validation

template <class F>
void expect_error(const F& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected posformer::Error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST(OpsErrors, BadArgumentsThrow) {
  std::vector<float> buf(64, 0.0f);
  float* p = buf.data();
  expect_error([&] { rope_apply(p, 1, 1, 8, 8, 7, RopeLayout::Half, p, p); },
               "[rope] rotary dim must be even, got 7");
  expect_error([&] { ref::rope_apply(p, 1, 1, 8, 8, 7, RopeLayout::Half, p, p); }, "got 7");
  expect_error([&] { rope_apply(p, 1, 1, 8, 8, 10, RopeLayout::Half, p, p); }, "[rope]");
  expect_error([&] { rope_apply(p, 1, 1, 8, 8, 0, RopeLayout::Interleaved, p, p); }, "[rope]");
  expect_error([&] { rope_apply(p, 1, 2, 8, 8, 8, RopeLayout::Half, p, p); }, "ld");
  expect_error([&] { rope_apply(p, -1, 1, 8, 8, 8, RopeLayout::Half, p, p); }, "[rope]");
  expect_error([] { rope_inv_freq(5, 10000.0); }, "[rope] rotary dim must be even, got 5");
  expect_error([] { rope_inv_freq(4, -1.0); }, "[rope]");
  expect_error([&] { gemm(false, false, -1, 2, 2, 1.0f, p, 2, p, 2, 0.0f, p, 2); }, "[gemm]");
  expect_error([&] { ref::gemm(false, false, 2, 2, -3, 1.0f, p, 2, p, 2, 0.0f, p, 2); }, "-3");
  expect_error([&] { gemm(false, false, 2, 4, 4, 1.0f, p, 3, p, 4, 0.0f, p, 4); }, "lda");
  expect_error([&] { gemm(false, true, 2, 4, 4, 1.0f, p, 4, p, 3, 0.0f, p, 4); }, "ldb");
  expect_error([&] { gemm(false, false, 2, 4, 4, 1.0f, p, 4, p, 4, 0.0f, p, 2); }, "ldc");
  expect_error([&] { linear(p, p, nullptr, p, 2, -2, 2); }, "[linear]");
  expect_error([&] { softmax_rows(p, -1, 4, 4); }, "[softmax]");
  expect_error([&] { softmax_rows(p, 2, 4, 3); }, "ld");
  expect_error([&] { layernorm(p, p, nullptr, p, 2, -4, 1e-5f); }, "[layernorm]");
  expect_error([&] { rmsnorm(p, p, p, -2, 4, 1e-5f); }, "[rmsnorm]");
  expect_error([&] { activation(Act::Gelu, p, p, -1); }, "[activation]");
  expect_error([&] { bias_act(Act::Relu, p, p, 2, -1); }, "[bias_act]");
  expect_error([&] { swiglu(p, p, p, -5); }, "[swiglu]");
  expect_error([&] { add_inplace(p, p, -5); }, "[add_inplace]");
  expect_error([&] { copy(p, p, -5); }, "[copy]");
  expect_error([] { act_from_name("tanh"); }, "'tanh'");
}

}  // namespace
