// The fused attention's register-blocked tile products (src/kernels/cpu/flash_gemm.h) against
// plain double-precision loops, on every compiled Highway target this CPU supports, over a grid
// of odd shapes (rows and columns not multiples of the vector width or the register block,
// K = D in 1..128), strided inputs, both A orientations and the row limits. Outputs are
// poisoned with NaN before each run (the nt product's whole C; the acc product's padding past D
// and past M, which must stay untouched).
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "../../src/kernels/cpu/flash_gemm.h"
#include "../../src/kernels/cpu/scratch.h"
#include "hwy_targets.h"
#include "test_util.h"

namespace {

using namespace posformer::kernels::cpu;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

using pf_test::for_each_target;

TEST(FlashGemm, PackPanelsAndRows) {
  std::mt19937 g(7);
  for (int64_t n : {1, 15, 16, 17, 40}) {
    for (int64_t D : {1, 5, 64}) {
      const int64_t ld = D + 3;
      const auto src = pf_test::randv(static_cast<size_t>(n * ld), g);
      std::vector<float> p(static_cast<size_t>(flash_round_up(n) * D), kNaN);
      flash_pack_panels(src.data(), ld, n, D, p.data());
      for (int64_t c = 0; c < flash_round_up(n); ++c)
        for (int64_t d = 0; d < D; ++d) {
          const float got =
              p[(c / kFlashPanel) * D * kFlashPanel + d * kFlashPanel + c % kFlashPanel];
          ASSERT_EQ(got, c < n ? src[c * ld + d] : 0.0f) << "n=" << n << " D=" << D;
        }
      const int64_t ldd = flash_round_up(D);
      std::vector<float> r(static_cast<size_t>(n * ldd), kNaN);
      flash_pack_rows(src.data(), ld, n, D, ldd, r.data());
      for (int64_t c = 0; c < n; ++c)
        for (int64_t d = 0; d < ldd; ++d) ASSERT_EQ(r[c * ldd + d], d < D ? src[c * ld + d] : 0.0f);
    }
  }
}

// C = alpha A B^T over M x ncols, K terms; lim: row m is checked for columns < lim[m].
// alpha = 1 takes the epilogue without the multiply (the forward's scores in log2 units).
void check_nt(int64_t M, int64_t ncols, int64_t K, bool limits, float alpha, std::mt19937& g) {
  const int64_t lda = K + 5, ldb = K + 2, ldc = flash_round_up(ncols) + 16;
  const auto A = pf_test::randv(static_cast<size_t>(M * lda), g);
  const auto B = pf_test::randv(static_cast<size_t>(ncols * ldb), g);
  std::vector<float> Bp(static_cast<size_t>(flash_round_up(ncols) * K));
  flash_pack_panels(B.data(), ldb, ncols, K, Bp.data());
  std::vector<int64_t> lim(static_cast<size_t>(M));
  std::uniform_int_distribution<int64_t> u(0, ncols);
  for (auto& x : lim) x = u(g);
  std::vector<float> C(static_cast<size_t>(M * ldc), kNaN);
  flash_gemm_nt(M, ncols, K, alpha, A.data(), lda, Bp.data(), C.data(), ldc,
                limits ? lim.data() : nullptr);
  const std::string what = "nt M=" + std::to_string(M) + " n=" + std::to_string(ncols) +
                           " K=" + std::to_string(K) + " limits=" + std::to_string(limits) +
                           " alpha=" + std::to_string(alpha);
  for (int64_t m = 0; m < M; ++m) {
    const int64_t n = limits ? lim[m] : ncols;
    for (int64_t c = 0; c < n; ++c) {
      double want = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        want += double(A[m * lda + k]) * B[c * ldb + k];
        mag += std::fabs(double(A[m * lda + k]) * B[c * ldb + k]);
      }
      pf_test::expect_sum_close(C[m * ldc + c], alpha * want, alpha * mag, what);
    }
    for (int64_t c = flash_round_up(ncols); c < ldc; ++c)  // past the padded row: untouched
      ASSERT_TRUE(std::isnan(C[m * ldc + c])) << what;
  }
}

TEST(FlashGemm, NtMatchesReference) {
  for_each_target([] {
    std::mt19937 g(11);
    for (int64_t M : {1, 5, 8, 13, 37})
      for (int64_t n : {1, 7, 16, 17, 48, 100})
        for (int64_t K : {1, 20, 32, 64, 80, 96, 128})
          for (bool limits : {false, true})
            for (float alpha : {0.37f, 1.0f}) check_nt(M, n, K, limits, alpha, g);
  });
}

// C[m][0..D) += alpha sum_k A(m, k) B[k][..]; A(m, k) is 0 outside [k_lo[m], k_hi[m]) when
// limits are given (the contract: the skipped terms are zero). trans: A stored as A^T.
void check_acc(int64_t M, int64_t D, int64_t K, bool trans, bool limits, std::mt19937& g) {
  const int64_t lda = (trans ? M : K) + 3, ldb = flash_round_up(D) + 16, ldc = D + 7;
  const int64_t a_rs = trans ? 1 : lda, a_ks = trans ? lda : 1;
  const float alpha = -1.3f;
  auto A = pf_test::randv(static_cast<size_t>((trans ? K : M) * lda), g);
  auto B = pf_test::randv(static_cast<size_t>(K * ldb), g);
  std::vector<int64_t> lo(static_cast<size_t>(M)), hi(static_cast<size_t>(M));
  std::uniform_int_distribution<int64_t> u(0, K);
  for (int64_t m = 0; m < M; ++m) {
    lo[m] = u(g);
    hi[m] = u(g);
    if (lo[m] > hi[m]) std::swap(lo[m], hi[m]);
    if (limits)
      for (int64_t k = 0; k < K; ++k)
        if (k < lo[m] || k >= hi[m]) A[m * a_rs + k * a_ks] = 0.0f;
  }
  const int64_t Mp = M + 2;  // two rows past M, poisoned
  auto C = pf_test::randv(static_cast<size_t>(Mp * ldc), g);
  for (int64_t m = 0; m < Mp; ++m)
    for (int64_t c = 0; c < ldc; ++c)
      if (m >= M || c >= D) C[m * ldc + c] = kNaN;
  const auto C0 = C;
  flash_gemm_acc(M, D, K, alpha, A.data(), a_rs, a_ks, B.data(), ldb, C.data(), ldc,
                 limits ? lo.data() : nullptr, limits ? hi.data() : nullptr);
  const std::string what = "acc M=" + std::to_string(M) + " D=" + std::to_string(D) +
                           " K=" + std::to_string(K) + " trans=" + std::to_string(trans) +
                           " limits=" + std::to_string(limits);
  for (int64_t m = 0; m < Mp; ++m)
    for (int64_t c = 0; c < ldc; ++c) {
      if (m >= M || c >= D) {
        ASSERT_TRUE(std::isnan(C[m * ldc + c])) << what << " wrote m=" << m << " c=" << c;
        continue;
      }
      double want = C0[m * ldc + c], mag = std::fabs(want);
      for (int64_t k = 0; k < K; ++k) {
        const double t = double(alpha) * A[m * a_rs + k * a_ks] * B[k * ldb + c];
        want += t;
        mag += std::fabs(t);
      }
      pf_test::expect_sum_close(C[m * ldc + c], want, mag, what);
    }
}

TEST(FlashGemm, AccMatchesReference) {
  for_each_target([] {
    std::mt19937 g(13);
    for (int64_t M : {1, 5, 6, 13, 37})
      for (int64_t D : {1, 20, 32, 64, 80, 96, 128})
        for (int64_t K : {1, 7, 17, 130})
          for (bool trans : {false, true})
            for (bool limits : {false, true}) check_acc(M, D, K, trans, limits, g);
  });
}

// The attention kernels' scratch (kernels/cpu/scratch.h) starts on a 64-byte boundary at every
// size, small (from the heap) and large (glibc serves >= 128 KB from mmap, 16 bytes past a page
// start under new[]), so whole AVX-512 vectors of a tile row never straddle two cache lines;
// a size of 0 or less holds nothing.
TEST(FlashGemm, ScratchIsCacheLineAligned) {
  for (int64_t n : {1, 3, 17, 1000, 32768, 65536 + 3, 1 << 20}) {
    const posformer::kernels::cpu::Scratch f(n);
    const posformer::kernels::cpu::Scratch16 h(n);
    ASSERT_NE(f.data(), nullptr) << n;
    ASSERT_NE(h.data(), nullptr) << n;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(f.data()) % 64, 0u) << "float scratch of " << n;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(h.data()) % 64, 0u) << "bf16 scratch of " << n;
    f.data()[n - 1] = 1.0f;  // the whole extent is usable (AddressSanitizer checks)
    h.data()[n - 1] = 1;
  }
  EXPECT_EQ(posformer::kernels::cpu::Scratch(0).data(), nullptr);
  EXPECT_EQ(posformer::kernels::cpu::Scratch(-5).data(), nullptr);
}

}  // namespace
