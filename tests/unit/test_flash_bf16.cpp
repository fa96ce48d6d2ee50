// The fused attention's bfloat16 tile products (src/kernels/cpu/flash_bf16.h): the packings
// against their layout definition, and the nt and acc products against double-precision sums
// of the same bf16-rounded operands, on the AVX512-BF16 kernels (where this CPU has them) and
// on the portable loop, over odd shapes (rows and columns off the register blocks, odd head
// dims and key counts) and row limits. Outputs are poisoned with NaN before each run.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../src/kernels/cpu/flash_bf16.h"
#include "posformer/core/error.h"
#include "posformer/ops/packed_linear.h"
#include "test_util.h"

namespace {

using namespace posformer::kernels::cpu;
using posformer::ops::bf16_bits_to_float;
using posformer::ops::to_bf16_bits;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr uint16_t kNaN16 = 0x7FC0;

float rb(float x) {  // x rounded to bf16
  return bf16_bits_to_float(to_bf16_bits(x));
}
int64_t up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

// The implementations to check: the portable loop, and AVX512-BF16 where present.
std::vector<bool> natives() {
  std::vector<bool> v = {false};
  if (flash_bf16_native()) v.push_back(true);
  return v;
}

TEST(FlashBf16, Packings) {
  std::mt19937 g(3);
  for (int64_t n : {1, 2, 15, 16, 17, 41})
    // even D <= 128: whole panels through the stack tile (130: even, past it); 601: rows
    // converted in 512-entry pieces
    for (int64_t D : {1, 5, 32, 33, 64, 80, 128, 130, 601}) {
      const int64_t ld = D + 3, Dh = flash_bf16_pairs(D);
      const auto src = pf_test::randv(static_cast<size_t>(n * ld), g);
      const std::string what = "n=" + std::to_string(n) + " D=" + std::to_string(D);
      // panels
      std::vector<uint16_t> p(static_cast<size_t>(up(n, 16) * 2 * Dh), kNaN16);
      flash_bf16_pack_panels(src.data(), ld, n, D, p.data());
      for (int64_t c = 0; c < up(n, 16); ++c)
        for (int64_t d = 0; d < 2 * Dh; ++d) {
          const uint16_t got = p[(c / 16) * Dh * 32 + (d / 2) * 32 + (c % 16) * 2 + d % 2];
          ASSERT_EQ(got, c < n && d < D ? to_bf16_bits(src[c * ld + d]) : 0) << what;
        }
      // rows
      const int64_t ldd = 2 * Dh + 2;
      std::vector<uint16_t> r(static_cast<size_t>(n * ldd), kNaN16);
      flash_bf16_pack_rows(src.data(), ld, n, D, ldd, r.data());
      for (int64_t c = 0; c < n; ++c)
        for (int64_t d = 0; d < ldd; ++d)
          ASSERT_EQ(r[c * ldd + d], d < D ? to_bf16_bits(src[c * ld + d]) : 0) << what;
      // pairs (V: keys in pairs, Dp columns)
      const int64_t Dp = up(D, 16);
      std::vector<uint16_t> v(static_cast<size_t>(up(n, 2) * Dp), kNaN16);
      flash_bf16_pack_pairs(src.data(), ld, n, D, Dp, v.data());
      for (int64_t s = 0; s < up(n, 2); ++s)
        for (int64_t c = 0; c < Dp; ++c)
          ASSERT_EQ(v[(s / 2) * 2 * Dp + c * 2 + s % 2],
                    s < n && c < D ? to_bf16_bits(src[s * ld + c]) : 0)
              << what;
    }
}

// C = alpha A K^T over M x ncols with D terms; limits: row m checked for columns < lim[m].
void check_nt(int64_t M, int64_t ncols, int64_t D, bool limits, bool native, std::mt19937& g) {
  const int64_t Dh = flash_bf16_pairs(D), lda = 2 * Dh + 4, ldc = up(ncols, 16) + 16;
  const float alpha = 0.37f;
  const auto Af = pf_test::randv(static_cast<size_t>(M * D), g);
  const auto Kf = pf_test::randv(static_cast<size_t>(ncols * (D + 1)), g);
  std::vector<uint16_t> A(static_cast<size_t>(M * lda), kNaN16);
  flash_bf16_pack_rows(Af.data(), D, M, D, lda, A.data());
  std::vector<uint16_t> Kp(static_cast<size_t>(up(ncols, 16) * 2 * Dh));
  flash_bf16_pack_panels(Kf.data(), D + 1, ncols, D, Kp.data());
  std::vector<int64_t> lim(static_cast<size_t>(M));
  std::uniform_int_distribution<int64_t> u(0, ncols);
  for (auto& x : lim) x = u(g);
  std::vector<float> C(static_cast<size_t>(M * ldc), kNaN);
  flash_bf16_nt(M, ncols, D, alpha, A.data(), lda, Kp.data(), C.data(), ldc,
                limits ? lim.data() : nullptr, native);
  const std::string what = "nt M=" + std::to_string(M) + " n=" + std::to_string(ncols) +
                           " D=" + std::to_string(D) + " limits=" + std::to_string(limits) +
                           " native=" + std::to_string(native);
  for (int64_t m = 0; m < M; ++m) {
    const int64_t n = limits ? lim[m] : ncols;
    for (int64_t c = 0; c < n; ++c) {
      double want = 0, mag = 0;
      for (int64_t d = 0; d < D; ++d) {
        const double t = double(rb(Af[m * D + d])) * rb(Kf[c * (D + 1) + d]);
        want += t;
        mag += std::fabs(t);
      }
      pf_test::expect_sum_close(C[m * ldc + c], alpha * want, alpha * mag, what);
    }
    for (int64_t c = up(ncols, 16); c < ldc; ++c)  // past the padded row: untouched
      ASSERT_TRUE(std::isnan(C[m * ldc + c])) << what;
  }
}

TEST(FlashBf16, NtMatchesReference) {
  for (bool native : natives()) {
    std::mt19937 g(11);
    for (int64_t M : {1, 5, 8, 13, 37})
      for (int64_t n : {1, 7, 16, 17, 48, 100})
        for (int64_t D : {1, 5, 32, 33, 64, 80, 128})
          for (bool limits : {false, true}) check_nt(M, n, D, limits, native, g);
  }
}

// C[m][0..Dp) += sum_{k < k_hi[m]} P[m][k] V[k][..]; P is 0 at and past k_hi[m] (the contract),
// rows past M and columns past Dp poisoned and must stay so.
void check_acc(int64_t M, int64_t D, int64_t K, bool limits, bool native, std::mt19937& g) {
  const int64_t Dp = up(D, 16), lda = up(K, 2) + 6, ldc = Dp + 8;
  auto Pf = pf_test::randv(static_cast<size_t>(M * K), g);
  const auto Vf = pf_test::randv(static_cast<size_t>(K * D), g);
  std::vector<int64_t> hi(static_cast<size_t>(M));
  std::uniform_int_distribution<int64_t> u(0, K);
  for (int64_t m = 0; m < M; ++m) {
    hi[m] = limits ? u(g) : K;
    for (int64_t k = hi[m]; k < K; ++k) Pf[m * K + k] = 0.0f;
  }
  std::vector<uint16_t> P(static_cast<size_t>(M * lda), kNaN16);
  flash_bf16_pack_rows(Pf.data(), K, M, K, lda, P.data());  // an odd K's pad entry 0
  for (int64_t m = 0; m < M; ++m)
    for (int64_t k = up(K, 2); k < lda; ++k) P[m * lda + k] = kNaN16;  // never read
  std::vector<uint16_t> Vp(static_cast<size_t>(up(K, 2) * Dp));
  flash_bf16_pack_pairs(Vf.data(), D, K, D, Dp, Vp.data());
  const int64_t Mp = M + 2;
  auto C = pf_test::randv(static_cast<size_t>(Mp * ldc), g);
  for (int64_t m = 0; m < Mp; ++m)
    for (int64_t c = 0; c < ldc; ++c)
      if (m >= M || c >= Dp) C[m * ldc + c] = kNaN;
  const auto C0 = C;
  flash_bf16_acc(M, Dp, K, P.data(), lda, Vp.data(), C.data(), ldc, limits ? hi.data() : nullptr,
                 native);
  const std::string what = "acc M=" + std::to_string(M) + " D=" + std::to_string(D) +
                           " K=" + std::to_string(K) + " limits=" + std::to_string(limits) +
                           " native=" + std::to_string(native);
  for (int64_t m = 0; m < Mp; ++m)
    for (int64_t c = 0; c < ldc; ++c) {
      if (m >= M || c >= Dp) {
        ASSERT_TRUE(std::isnan(C[m * ldc + c])) << what << " wrote m=" << m << " c=" << c;
        continue;
      }
      double want = C0[m * ldc + c], mag = std::fabs(want);
      for (int64_t k = 0; k < K && c < D; ++k) {
        const double t = double(rb(Pf[m * K + k])) * rb(Vf[k * D + c]);
        want += t;
        mag += std::fabs(t);
      }
      pf_test::expect_sum_close(C[m * ldc + c], want, mag, what);
    }
}

TEST(FlashBf16, AccMatchesReference) {
  for (bool native : natives()) {
    std::mt19937 g(13);
    for (int64_t M : {1, 5, 6, 13, 37})
      for (int64_t D : {1, 20, 33, 64, 80, 128})
        for (int64_t K : {1, 2, 7, 17, 130})
          for (bool limits : {false, true}) check_acc(M, D, K, limits, native, g);
  }
}

// POSFORMER_BF16_NATIVE: 0 forces the portable loop, 1 or unset leaves the CPU's choice, any
// other value is refused with the variable's name and the value.
TEST(FlashBf16, NativeSwitch) {
  const bool cpu = flash_bf16_native();
  setenv("POSFORMER_BF16_NATIVE", "0", 1);
  EXPECT_FALSE(flash_bf16_native());
  setenv("POSFORMER_BF16_NATIVE", "1", 1);
  EXPECT_EQ(flash_bf16_native(), cpu);
  for (const char* bad : {"2", "yes", "01", " 1"}) {
    setenv("POSFORMER_BF16_NATIVE", bad, 1);
    try {
      flash_bf16_native();
      ADD_FAILURE() << bad << ": no throw";
    } catch (const posformer::Error& e) {
      const std::string m = e.what();
      EXPECT_NE(m.find("POSFORMER_BF16_NATIVE"), std::string::npos) << m;
      EXPECT_NE(m.find(std::string("'") + bad + "'"), std::string::npos) << m;
    }
  }
  unsetenv("POSFORMER_BF16_NATIVE");
}

}  // namespace
