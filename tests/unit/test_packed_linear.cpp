// Packed-weight linears (ops/packed_linear.h) against the unpacked fast path and the double
// reference, forward and dx, over a grid of shapes; outputs poisoned (NaN) before each call.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../../src/kernels/cpu/panel_gemm.h"
#include "posformer/core/error.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/matmul.h"
#include "posformer/ops/packed_linear.h"

namespace {

using namespace posformer;
using namespace posformer::ops;

std::vector<float> randu(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = u(rng);
  return v;
}

// max |got - want| / scale over the M x cols block of row stride ld, scale[i, j] = the sum of
// |products| of that dot product (+ |bias| + |beta C|): the relative error of a dot product
// whatever its cancellation. Every entry must be finite (written).
double rel_diff(const std::vector<float>& got, const std::vector<float>& want,
                const std::vector<float>& scale, int64_t M, int64_t cols, int64_t ld,
                const std::string& what) {
  double worst = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const size_t k = size_t(i * ld + j);
      EXPECT_TRUE(std::isfinite(got[k])) << what << " (" << i << ", " << j << ") unwritten";
      worst =
          std::max(worst, std::abs(double(got[k]) - want[k]) / std::max(1e-30, double(scale[k])));
    }
  return worst;
}
std::vector<float> absv(std::vector<float> v) {
  for (float& x : v) x = std::abs(x);
  return v;
}

// (768 x 768 floats, 2.3 MB, is packed into 2 MiB-aligned mapped memory, the smaller weights
// into heap memory: both allocations of packed_linear.cpp are covered)
TEST(PackedLinear, ForwardMatchesUnpackedOnAGrid) {
  for (int64_t N : {1, 17, 100, 768})
    for (int64_t K : {1, 31, 257, 768}) {
      if (N * K > 768 * 257 && !(N == 768 && K == 768)) continue;
      const auto W = randu(size_t(N * K), uint32_t(N * 7 + K));
      const auto b = randu(size_t(N), uint32_t(N + 1));
      PackedWeight pw;
      pw.pack(W.data(), N, K, false);
      EXPECT_TRUE(pw.has_forward());
      EXPECT_FALSE(pw.has_backward());
      for (int64_t M : {1, 3, 17, 130}) {
        const auto x = randu(size_t(M * K), uint32_t(M + 3 * K));
        std::vector<float> scale(size_t(M * N));
        const auto ab = absv(b);
        ref::linear(absv(x).data(), absv(W).data(), ab.data(), scale.data(), M, N, K);
        for (const float* bp : {b.data(), static_cast<const float*>(nullptr)}) {
          const std::string what = "M " + std::to_string(M) + " N " + std::to_string(N) + " K " +
                                   std::to_string(K) + (bp ? " bias" : "");
          std::vector<float> want(size_t(M * N), std::nanf("")), got = want, ref = want;
          linear(x.data(), W.data(), bp, want.data(), M, N, K);
          linear_packed(x.data(), pw, bp, got.data(), M);
          ref::linear(x.data(), W.data(), bp, ref.data(), M, N, K);
          EXPECT_LE(rel_diff(got, want, scale, M, N, N, what), 1e-6) << what;
          EXPECT_LE(rel_diff(got, ref, scale, M, N, N, what), 1e-6) << what << " vs double";
        }
      }
    }
}

TEST(PackedLinear, DxMatchesUnpackedGemmWithStridesAndBeta) {
  for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{
           {1, 1}, {17, 31}, {100, 257}, {3072, 64}, {64, 3072}}) {
    const auto W = randu(size_t(N * K), uint32_t(N + 5 * K));
    PackedWeight pw;
    pw.pack(W.data(), N, K, true);
    ASSERT_TRUE(pw.has_backward());
    for (int64_t M : {1, 5, 129})
      for (float beta : {0.0f, 1.0f})
        for (int64_t pad : {0, 3}) {
          const int64_t lddy = N + pad, lddx = K + 2 * pad;
          const auto dy = randu(size_t(M * lddy), uint32_t(M + N));
          const auto dx0 = randu(size_t(M * lddx), uint32_t(M + K));
          std::vector<float> want = dx0, got = dx0;
          if (beta == 0.0f)
            for (int64_t i = 0; i < M; ++i)
              for (int64_t j = 0; j < K; ++j) got[size_t(i * lddx + j)] = std::nanf("");
          gemm(false, false, M, K, N, 1.0f, dy.data(), lddy, W.data(), K, beta, want.data(), lddx);
          std::vector<float> scale = absv(dx0);
          ref::gemm(false, false, M, K, N, 1.0f, absv(dy).data(), lddy, absv(W).data(), K, beta,
                    scale.data(), lddx);
          linear_dx_packed(dy.data(), lddy, pw, beta, got.data(), lddx, M);
          const std::string what = "M " + std::to_string(M) + " N " + std::to_string(N) + " K " +
                                   std::to_string(K) + " beta " + std::to_string(beta) + " pad " +
                                   std::to_string(pad);
          EXPECT_LE(rel_diff(got, want, scale, M, K, lddx, what), 1e-6) << what;
          for (int64_t i = 0; i < M; ++i)  // padding between rows untouched
            for (int64_t j = K; j < lddx; ++j)
              ASSERT_EQ(got[size_t(i * lddx + j)], dx0[size_t(i * lddx + j)]) << what;
        }
  }
}

TEST(PackedLinear, RepackAfterTheWeightChanges) {
  const int64_t M = 9, N = 33, K = 65;
  auto W = randu(size_t(N * K), 1);
  const auto x = randu(size_t(M * K), 2);
  PackedWeight pw;
  pw.pack(W.data(), N, K, true);
  for (float& w : W) w = 0.5f * w + 0.01f;  // an "optimizer step"
  std::vector<float> want(size_t(M * N)), got(size_t(M * N), std::nanf(""));
  linear(x.data(), W.data(), nullptr, want.data(), M, N, K);
  linear_packed(x.data(), pw, nullptr, got.data(), M);
  std::vector<float> scale(size_t(M * N));
  ref::linear(absv(x).data(), absv(W).data(), nullptr, scale.data(), M, N, K);
  EXPECT_GT(rel_diff(got, want, scale, M, N, N, "stale"), 1e-2);  // the snapshot: the old weight
  pw.pack(W.data(), N, K, true);
  linear_packed(x.data(), pw, nullptr, got.data(), M);
  EXPECT_LE(rel_diff(got, want, scale, M, N, N, "repacked"), 1e-6);
}

// Fused epilogues: act(x W^T + b) against ops::linear then ops::activation (the erf / exp of
// oneDNN's post-ops: <= 2e-6 absolute on outputs of size ~1-3), and y += x W^T + b.
TEST(PackedLinear, FusedActivationAndAccumulate) {
  const int64_t M = 37, N = 96, K = 80;
  const auto W = randu(size_t(N * K), 11), b = randu(size_t(N), 12), x = randu(size_t(M * K), 13);
  PackedWeight pw;
  pw.pack(W.data(), N, K, false);
  std::vector<float> scale(size_t(M * N));
  const auto ab = absv(b);
  ref::linear(absv(x).data(), absv(W).data(), ab.data(), scale.data(), M, N, K);
  for (Act act : {Act::Relu, Act::Gelu, Act::GeluTanh, Act::Silu}) {
    std::vector<float> want(size_t(M * N)), got(size_t(M * N), std::nanf(""));
    linear(x.data(), W.data(), b.data(), want.data(), M, N, K);
    activation(act, want.data(), want.data(), M * N);
    linear_packed(x.data(), pw, b.data(), got.data(), M, {act, false});
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_TRUE(std::isfinite(got[i])) << act_name(act) << " " << i;
      worst = std::max(worst, std::abs(double(got[i]) - want[i]) / std::max(1.0, double(scale[i])));
    }
    EXPECT_LE(worst, 2e-6) << act_name(act);
  }
  const auto y0 = randu(size_t(M * N), 14);
  std::vector<float> want(size_t(M * N)), got = y0;
  linear(x.data(), W.data(), b.data(), want.data(), M, N, K);
  for (size_t i = 0; i < want.size(); ++i) want[i] += y0[i];
  linear_packed(x.data(), pw, b.data(), got.data(), M, {Act::Identity, true});
  const auto s2 = absv(y0);
  std::vector<float> sc = scale;
  for (size_t i = 0; i < sc.size(); ++i) sc[i] += s2[i];
  EXPECT_LE(rel_diff(got, want, sc, M, N, N, "accumulate"), 1e-6);
}

TEST(PackedLinear, BadArgumentsAreNamed) {
  PackedWeight pw;
  float v = 0;
  auto expect_error = [](const auto& f, const std::string& needle) {
    try {
      f();
      ADD_FAILURE() << "no throw, expected " << needle;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([&] { linear_packed(&v, pw, nullptr, &v, 1); }, "not packed");
  expect_error([&] { pw.pack(&v, 0, 1, false); }, "N=0");
  pw.pack(&v, 1, 1, false);
  expect_error([&] { linear_dx_packed(&v, 1, pw, 0.0f, &v, 1, 1); }, "not packed for the backward");
  expect_error(
      [&] {
        linear_packed(&v, pw, nullptr, &v, 1, {Act::Gelu, true});
      },
      "accumulate takes no activation");
  // the huge-page switch takes 0 or 1 and names itself otherwise; 0 packs the same values
  std::vector<float> W(size_t(768 * 768), 0.5f), x(768, 1.0f), y1(768), y0(768);
  for (const char* bad : {"yes", "2", "01"}) {
    setenv("POSFORMER_HUGEPAGES", bad, 1);
    expect_error(
        [&] {
          PackedWeight p;
          p.pack(W.data(), 768, 768, false);
        },
        "POSFORMER_HUGEPAGES");
  }
  PackedWeight p1, p0;
  setenv("POSFORMER_HUGEPAGES", "1", 1);
  p1.pack(W.data(), 768, 768, false);
  setenv("POSFORMER_HUGEPAGES", "0", 1);
  p0.pack(W.data(), 768, 768, false);
  unsetenv("POSFORMER_HUGEPAGES");
  linear_packed(x.data(), p1, nullptr, y1.data(), 1);
  linear_packed(x.data(), p0, nullptr, y0.data(), 1);
  EXPECT_EQ(y1, y0);
  EXPECT_EQ(y1[0], 384.0f);
}

// kernels::cpu::panel_gemm on a hand-made panel layout (64-column panels, stride padded past
// K * 64, padding columns NaN: they must never reach C), against the double reference: row
// chunks (M > 240), uneven K blocks (K > 768), a partial last panel, fewer panels than threads,
// beta 0 / 1 / 0.5, bias or none, a post pass; on CPUs without AVX-512F the scalar kernel runs.
TEST(PanelGemm, MatchesTheDoubleReferenceOnEveryBlocking) {
  using kernels::cpu::kPanelCols;
  struct Case {
    int64_t M, N, K;
  };
  for (const Case c : {Case{1, 1, 1}, Case{5, 64, 3}, Case{7, 100, 33}, Case{487, 130, 70},
                       Case{13, 64, 1537}, Case{241, 192, 800}, Case{2, 3072, 5}}) {
    const auto [M, N, K] = c;
    const int64_t np = (N + kPanelCols - 1) / kPanelCols, pstride = K * kPanelCols + 32;
    const int64_t lda = K + 3, ldc = N + 5;
    const auto W = randu(size_t(N * K), uint32_t(N + 7 * K));
    const auto A = randu(size_t(M * lda), uint32_t(M + K));
    const auto b = randu(size_t(N), uint32_t(N));
    std::vector<float> Bp(size_t(np * pstride), std::nanf(""));
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        Bp[size_t((n / kPanelCols) * pstride + k * kPanelCols + n % kPanelCols)] =
            W[size_t(n * K + k)];
    for (float beta : {0.0f, 1.0f, 0.5f})
      for (const float* bias : {b.data(), static_cast<const float*>(nullptr)}) {
        const std::string what = "M " + std::to_string(M) + " N " + std::to_string(N) + " K " +
                                 std::to_string(K) + " beta " + std::to_string(beta) +
                                 (bias ? " bias" : "");
        const auto C0 = randu(size_t(M * ldc), uint32_t(M * 3 + N));
        std::vector<float> got = C0;
        if (beta == 0.0f)
          for (int64_t i = 0; i < M; ++i)
            for (int64_t j = 0; j < N; ++j) got[size_t(i * ldc + j)] = std::nanf("");
        // post: y -> 2y + 1 on every finished row segment, once
        const kernels::cpu::PanelPost post = [](void*, float* row, int64_t n) {
          for (int64_t j = 0; j < n; ++j) row[j] = 2.0f * row[j] + 1.0f;
        };
        kernels::cpu::panel_gemm(M, N, K, A.data(), lda, Bp.data(), pstride, bias, beta, got.data(),
                                 ldc, post, nullptr);
        std::vector<float> want(size_t(M * ldc)), scale(size_t(M * ldc));
        for (int64_t i = 0; i < M; ++i)
          for (int64_t j = 0; j < N; ++j) {
            double s = 0, sa = 0;
            for (int64_t k = 0; k < K; ++k) {
              const double p = double(A[size_t(i * lda + k)]) * W[size_t(j * K + k)];
              s += p, sa += std::abs(p);
            }
            const double old = C0[size_t(i * ldc + j)];
            const double bj = bias ? bias[j] : 0.0;
            want[size_t(i * ldc + j)] = float(2.0 * (s + bj + beta * old) + 1.0);
            scale[size_t(i * ldc + j)] = float(2.0 * (sa + std::abs(bj) + std::abs(beta * old)));
          }
        EXPECT_LE(rel_diff(got, want, scale, M, N, ldc, what), 1e-6) << what;
        for (int64_t i = 0; i < M; ++i)  // the gaps between rows untouched
          for (int64_t j = N; j < ldc; ++j)
            ASSERT_EQ(got[size_t(i * ldc + j)], C0[size_t(i * ldc + j)]) << what;
      }
  }
}

// The packed linears through panel_gemm (the default where the CPU has AVX-512F and oneDNN laid
// the weight out in 64-column panels) against the same weights through oneDNN's matmul
// (POSFORMER_PANEL_GEMM=0): forward with bias and every fused activation, accumulate, dx with
// beta; shapes with a partial panel, K not a multiple of 16 and K blocks.
TEST(PackedLinear, PanelKernelAgreesWithOneDnnMatmul) {
  for (auto [N, K] : std::vector<std::pair<int64_t, int64_t>>{{768, 768}, {130, 77}, {64, 1000}}) {
    const auto W = randu(size_t(N * K), uint32_t(N + 3 * K)), b = randu(size_t(N), uint32_t(K));
    PackedWeight pw;
    pw.pack(W.data(), N, K, true);
    for (int64_t M : {1, 6, 131}) {
      const auto x = randu(size_t(M * K), uint32_t(M + N));
      std::vector<float> scale(size_t(M * N));
      const auto ab = absv(b);
      ref::linear(absv(x).data(), absv(W).data(), ab.data(), scale.data(), M, N, K);
      for (Act act : {Act::Identity, Act::Relu, Act::Gelu, Act::GeluTanh, Act::Silu}) {
        const std::string what = "M " + std::to_string(M) + " N " + std::to_string(N) + " K " +
                                 std::to_string(K) + " " + act_name(act);
        std::vector<float> onednn(size_t(M * N), std::nanf("")), panel = onednn;
        setenv("POSFORMER_PANEL_GEMM", "0", 1);
        linear_packed(x.data(), pw, b.data(), onednn.data(), M, {act, false});
        unsetenv("POSFORMER_PANEL_GEMM");
        linear_packed(x.data(), pw, b.data(), panel.data(), M, {act, false});
        double worst = 0;
        for (size_t i = 0; i < panel.size(); ++i) {
          ASSERT_TRUE(std::isfinite(panel[i])) << what << " " << i;
          worst = std::max(
              worst, std::abs(double(panel[i]) - onednn[i]) / std::max(1.0, double(scale[i])));
        }
        EXPECT_LE(worst, 2e-6) << what;  // the activations' erf / exp: oneDNN's vs posformer's
      }
      std::vector<float> y0 = randu(size_t(M * N), 5), y1 = y0;
      setenv("POSFORMER_PANEL_GEMM", "0", 1);
      linear_packed(x.data(), pw, b.data(), y0.data(), M, {Act::Identity, true});
      unsetenv("POSFORMER_PANEL_GEMM");
      linear_packed(x.data(), pw, b.data(), y1.data(), M, {Act::Identity, true});
      EXPECT_LE(rel_diff(y1, y0, scale, M, N, N, "accumulate"), 1e-6);
      const auto dy = randu(size_t(M * N), uint32_t(M * 7));
      for (float beta : {0.0f, 1.0f}) {
        std::vector<float> d0 = randu(size_t(M * K), 9), d1 = d0;
        setenv("POSFORMER_PANEL_GEMM", "0", 1);
        linear_dx_packed(dy.data(), N, pw, beta, d0.data(), K, M);
        unsetenv("POSFORMER_PANEL_GEMM");
        linear_dx_packed(dy.data(), N, pw, beta, d1.data(), K, M);
        std::vector<float> sc(size_t(M * K), 0.0f);
        ref::gemm(false, false, M, K, N, 1.0f, absv(dy).data(), N, absv(W).data(), K, 0.0f,
                  sc.data(), K);
        for (float& v : sc) v += 1.0f;  // |beta * dx0| <= 1
        EXPECT_LE(rel_diff(d1, d0, sc, M, K, K, "dx beta " + std::to_string(beta)), 1e-6);
      }
    }
  }
  setenv("POSFORMER_PANEL_GEMM", "yes", 1);
  const auto W = randu(64, 1), x = randu(8, 2);
  PackedWeight pw;
  pw.pack(W.data(), 8, 8, false);
  std::vector<float> y(8);
  try {  // named on every CPU, whichever kernel would run
    linear_packed(x.data(), pw, nullptr, y.data(), 1);
    ADD_FAILURE() << "POSFORMER_PANEL_GEMM=yes taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("POSFORMER_PANEL_GEMM must be 0 or 1"), std::string::npos)
        << e.what();
  }
  unsetenv("POSFORMER_PANEL_GEMM");
}

// q, k and v of one sublayer in one call: bit for bit the separate calls (the panel kernel's
// per-element sums do not depend on how panels and rows are split between the threads), every
// output row written (poisoned with NaN first), on oneDNN too (POSFORMER_PANEL_GEMM=0, or no
// AVX-512F: one linear_packed per job), with GQA widths, 5 jobs (more than one panel_gemm_group
// call), a null bias, and mismatched K refused by name.
TEST(PackedLinear, GroupEqualsSeparateCalls) {
  const int64_t K = 200;
  const std::vector<int64_t> Ns = {256, 64, 64, 130, 7};
  std::vector<std::vector<float>> Ws, bs;
  std::vector<PackedWeight> pws(Ns.size());
  for (size_t j = 0; j < Ns.size(); ++j) {
    Ws.push_back(randu(size_t(Ns[j] * K), uint32_t(11 + j)));
    bs.push_back(randu(size_t(Ns[j]), uint32_t(31 + j)));
    pws[j].pack(Ws[j].data(), Ns[j], K, false);
  }
  for (const char* mode : {"1", "0"}) {
    setenv("POSFORMER_PANEL_GEMM", mode, 1);
    for (int64_t M : {1, 5, 128, 300}) {
      const auto x = randu(size_t(M * K), uint32_t(M));
      for (size_t n : {size_t(3), Ns.size()}) {
        std::vector<std::vector<float>> sep, grp;
        std::vector<PackedLinearJob> jobs;
        for (size_t j = 0; j < n; ++j) {
          sep.emplace_back(size_t(M * Ns[j]), std::nanf(""));
          grp.emplace_back(size_t(M * Ns[j]), std::nanf(""));
          const float* b = j == 1 ? nullptr : bs[j].data();
          linear_packed(x.data(), pws[j], b, sep[j].data(), M);
        }
        for (size_t j = 0; j < n; ++j)
          jobs.push_back({&pws[j], j == 1 ? nullptr : bs[j].data(), grp[j].data()});
        linear_packed_group(x.data(), M, jobs.data(), int64_t(n));
        for (size_t j = 0; j < n; ++j)
          for (size_t i = 0; i < grp[j].size(); ++i) {
            ASSERT_TRUE(std::isfinite(grp[j][i]))
                << "mode " << mode << " M " << M << " job " << j << " entry " << i;
            ASSERT_EQ(grp[j][i], sep[j][i])
                << "mode " << mode << " M " << M << " job " << j << " entry " << i;
          }
        // and against the double reference
        std::vector<float> ref(size_t(M * Ns[0]));
        ref::linear(x.data(), Ws[0].data(), bs[0].data(), ref.data(), M, Ns[0], K);
        std::vector<float> scale(size_t(M * Ns[0]));
        ref::linear(absv(x).data(), absv(Ws[0]).data(), absv(bs[0]).data(), scale.data(), M, Ns[0],
                    K);
        EXPECT_LE(rel_diff(grp[0], ref, scale, M, Ns[0], Ns[0], "group vs reference"), 1e-6);
      }
    }
  }
  unsetenv("POSFORMER_PANEL_GEMM");
  PackedWeight other;
  const auto W2 = randu(size_t(8 * 100), 3);
  other.pack(W2.data(), 8, 100, false);
  std::vector<float> y0(8), y1(8);
  const auto x = randu(size_t(K), 4);
  const PackedLinearJob bad[] = {{&pws[0], nullptr, y0.data()}, {&other, nullptr, y1.data()}};
  try {
    linear_packed_group(x.data(), 1, bad, 2);
    ADD_FAILURE() << "mismatched K taken";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("job 1 has K 100, job 0 has 200"), std::string::npos)
        << e.what();
  }
}

}  // namespace
