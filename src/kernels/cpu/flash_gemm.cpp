// Register-blocked tile products of the fused attention (Highway, runtime dispatch);
// flash_gemm.h has the maths and layouts.
#include "flash_gemm.h"

#include <algorithm>
#include <cstddef>
#include <cstring>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "../src/kernels/cpu/flash_gemm.cpp"  // relative to include/
#include <hwy/foreach_target.h>                                 // IWYU pragma: keep
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace posformer::kernels::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;
using DF = hn::CappedTag<float, kFlashPanel>;  // lanes divide the panel width
using VF = hn::Vec<DF>;

// Register blocks (rows x vectors): 32 vector registers on AVX-512 / NEON, 16 on AVX2 / SSE.
#if HWY_ARCH_X86 && HWY_TARGET > HWY_AVX3
constexpr int kNtMR = 6, kNtNV = 2, kAccMR = 6, kAccNV = 2;
#else
constexpr int kNtMR = 8, kNtNV = 3, kAccMR = 6, kAccNV = 4;
#endif

// MR rows x NV vectors of columns from c0: ap[i] are the rows' A, bp[j] the columns' panels.
template <int MR, int NV>
HWY_NOINLINE void nt_block(DF d, int64_t K, float alpha, const float* const* ap,
                           const float* const* bp, float* C, int64_t ldc, int64_t mvalid) {
  VF acc[MR][NV];
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = hn::Zero(d);
  for (int64_t k = 0; k < K; ++k) {
    VF b[NV];
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) b[j] = hn::LoadU(d, bp[j] + k * kFlashPanel);
#pragma GCC unroll 24
    for (int i = 0; i < MR; ++i) {
      const VF a = hn::Set(d, ap[i][k]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = hn::MulAdd(a, b[j], acc[i][j]);
    }
  }
  const size_t N = hn::Lanes(d);
  if (alpha == 1.0f) {  // the forward's scores in log2 units: the scale is in q
#pragma GCC unroll 24
    for (int i = 0; i < MR; ++i) {
      if (i >= mvalid) break;
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) hn::StoreU(acc[i][j], d, C + i * ldc + j * N);
    }
    return;
  }
  const VF va = hn::Set(d, alpha);
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i) {
    if (i >= mvalid) break;
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) hn::StoreU(hn::Mul(acc[i][j], va), d, C + i * ldc + j * N);
  }
}

template <int MR>
HWY_INLINE void nt_cols(DF d, int64_t K, float alpha, const float* const* ap, const float* Bp,
                        int64_t nvec, float* C, int64_t ldc, int64_t mvalid) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const float* bp[kNtNV];
  for (int64_t v0 = 0; v0 < nvec; v0 += kNtNV) {
    const int64_t nv = std::min<int64_t>(kNtNV, nvec - v0);
    for (int64_t j = 0; j < nv; ++j) {
      const int64_t c = (v0 + j) * N;
      bp[j] = Bp + (c / kFlashPanel) * K * kFlashPanel + c % kFlashPanel;
    }
    float* c = C + v0 * N;
    if (nv == kNtNV)
      nt_block<MR, kNtNV>(d, K, alpha, ap, bp, c, ldc, mvalid);
    else if (nv == 2)
      nt_block<MR, 2>(d, K, alpha, ap, bp, c, ldc, mvalid);
    else
      nt_block<MR, 1>(d, K, alpha, ap, bp, c, ldc, mvalid);
  }
}

void flash_gemm_nt_kernel(int64_t M, int64_t ncols, int64_t K, float alpha, const float* A,
                          int64_t lda, const float* Bp, float* C, int64_t ldc, const int64_t* lim) {
  const DF d;
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  for (int64_t m0 = 0; m0 < M; m0 += kNtMR) {
    const int64_t mvalid = std::min<int64_t>(kNtMR, M - m0);
    int64_t n = ncols;
    if (lim) {
      int64_t mx = 0;
      for (int64_t i = 0; i < mvalid; ++i) mx = std::max(mx, lim[m0 + i]);
      n = std::min(n, mx);
    }
    if (n <= 0) continue;
    const float* ap[kNtMR];  // rows past M repeat the last one; their results are not stored
    for (int64_t i = 0; i < kNtMR; ++i) ap[i] = A + std::min(m0 + i, M - 1) * lda;
    const int64_t nvec = (n + N - 1) / N;
    // a short block (a linear's few rows when decoding, a tile's last rows) at its own height
    if (mvalid == 1)
      nt_cols<1>(d, K, alpha, ap, Bp, nvec, C + m0 * ldc, ldc, mvalid);
    else if (mvalid <= 2)
      nt_cols<2>(d, K, alpha, ap, Bp, nvec, C + m0 * ldc, ldc, mvalid);
    else if (mvalid <= 4)
      nt_cols<4>(d, K, alpha, ap, Bp, nvec, C + m0 * ldc, ldc, mvalid);
    else
      nt_cols<kNtMR>(d, K, alpha, ap, Bp, nvec, C + m0 * ldc, ldc, mvalid);
  }
}

// C rows of MR x NV vectors from column c0 (ci[i]: the rows' C), terms k in [k0, k1).
template <int MR, int NV>
HWY_NOINLINE void acc_block(DF d, int64_t k0, int64_t k1, float alpha, const float* const* ap,
                            int64_t a_ks, const float* B, int64_t ldb, float* const* ci,
                            int64_t mvalid, size_t tail) {
  const size_t N = hn::Lanes(d);
  VF acc[MR][NV];
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) acc[i][j] = hn::Zero(d);
  for (int64_t k = k0; k < k1; ++k) {
    VF b[NV];
    const float* bk = B + k * ldb;
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) b[j] = hn::LoadU(d, bk + j * N);
#pragma GCC unroll 24
    for (int i = 0; i < MR; ++i) {
      const VF a = hn::Set(d, ap[i][k * a_ks]);
#pragma GCC unroll 4
      for (int j = 0; j < NV; ++j) acc[i][j] = hn::MulAdd(a, b[j], acc[i][j]);
    }
  }
  const VF va = hn::Set(d, alpha);
  const auto tmask = hn::FirstN(d, tail);
#pragma GCC unroll 24
  for (int i = 0; i < MR; ++i) {
    if (i >= mvalid) break;
#pragma GCC unroll 4
    for (int j = 0; j < NV; ++j) {
      float* p = ci[i] + j * N;
      if (j == NV - 1 && tail != N) {  // the row's last, partial vector
        const VF c = hn::MaskedLoad(tmask, d, p);
        hn::BlendedStore(hn::MulAdd(acc[i][j], va, c), tmask, d, p);
      } else {
        hn::StoreU(hn::MulAdd(acc[i][j], va, hn::LoadU(d, p)), d, p);
      }
    }
  }
}

// Rows m0 .. m0 + mvalid (<= MR) over all D columns, terms [k0, k1).
template <int MR>
HWY_INLINE void acc_rows(DF d, int64_t m0, int64_t mvalid, int64_t M, int64_t D, int64_t k0,
                         int64_t k1, float alpha, const float* A, int64_t a_rs, int64_t a_ks,
                         const float* B, int64_t ldb, float* C, int64_t ldc) {
  const int64_t N = static_cast<int64_t>(hn::Lanes(d));
  const int64_t nvec = (D + N - 1) / N;
  const size_t last = static_cast<size_t>(D - (nvec - 1) * N);  // lanes of a row's last vector
  const float* ap[MR];  // rows past M repeat the last one; their results are not stored
  float* cc[MR];
  for (int64_t v0 = 0; v0 < nvec; v0 += kAccNV) {
    for (int64_t i = 0; i < MR; ++i) {
      const int64_t m = std::min(m0 + i, M - 1);
      ap[i] = A + m * a_rs;
      cc[i] = C + m * ldc + v0 * N;
    }
    const int64_t nv = std::min<int64_t>(kAccNV, nvec - v0);
    const size_t tail = v0 + nv == nvec ? last : static_cast<size_t>(N);
    const float* b = B + v0 * N;
    if (nv == kAccNV)
      acc_block<MR, kAccNV>(d, k0, k1, alpha, ap, a_ks, b, ldb, cc, mvalid, tail);
    else if (nv == 3)
      acc_block<MR, 3>(d, k0, k1, alpha, ap, a_ks, b, ldb, cc, mvalid, tail);
    else if (nv == 2)
      acc_block<MR, 2>(d, k0, k1, alpha, ap, a_ks, b, ldb, cc, mvalid, tail);
    else
      acc_block<MR, 1>(d, k0, k1, alpha, ap, a_ks, b, ldb, cc, mvalid, tail);
  }
}

void flash_gemm_acc_kernel(int64_t M, int64_t D, int64_t K, float alpha, const float* A,
                           int64_t a_rs, int64_t a_ks, const float* B, int64_t ldb, float* C,
                           int64_t ldc, const int64_t* k_lo, const int64_t* k_hi) {
  const DF d;
  for (int64_t m0 = 0; m0 < M; m0 += kAccMR) {
    const int64_t mvalid = std::min<int64_t>(kAccMR, M - m0);
    int64_t k0 = K, k1 = 0;
    for (int64_t i = 0; i < mvalid; ++i) {
      k0 = std::min(k0, k_lo ? k_lo[m0 + i] : 0);
      k1 = std::max(k1, k_hi ? k_hi[m0 + i] : K);
    }
    k1 = std::min(k1, K);
    if (k0 >= k1) continue;
    if (mvalid <= 2)  // a short last block (128 = 21 x 6 + 2) at its own size
      acc_rows<2>(d, m0, mvalid, M, D, k0, k1, alpha, A, a_rs, a_ks, B, ldb, C, ldc);
    else
      acc_rows<kAccMR>(d, m0, mvalid, M, D, k0, k1, alpha, A, a_rs, a_ks, B, ldb, C, ldc);
  }
}

}  // namespace posformer::kernels::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace posformer::kernels::cpu {

HWY_EXPORT(flash_gemm_nt_kernel);
HWY_EXPORT(flash_gemm_acc_kernel);

void flash_pack_panels(const float* src, int64_t ld, int64_t n, int64_t D, float* dst) {
  for (int64_t c0 = 0; c0 < n; c0 += kFlashPanel) {
    float* p = dst + c0 * D;  // panel c0 / P starts at (c0 / P) * D * P
    const int64_t w = std::min(kFlashPanel, n - c0);
    // a partial (last) panel: zeroed whole, contiguously, then its w keys written (at small T,
    // e.g. the ViT's 17 keys, most of the last panel is padding)
    if (w < kFlashPanel) {
      std::memset(p, 0, static_cast<size_t>(D * kFlashPanel) * sizeof(float));
      for (int64_t i = 0; i < w; ++i) {
        const float* s = src + (c0 + i) * ld;
        for (int64_t k = 0; k < D; ++k) p[k * kFlashPanel + i] = s[k];
      }
      continue;
    }
    // a whole panel: one contiguous 16-float row of the panel per d, read across the 16 keys'
    // rows (each row's cache line serves 16 consecutive d); 2-2.7x faster than walking each key's
    // row with stores 64 bytes apart (training spent ~2% of its samples here)
    const float* __restrict s = src + c0 * ld;
    float* __restrict q = p;
    for (int64_t k = 0; k < D; ++k)
#pragma GCC unroll 16
      for (int64_t i = 0; i < kFlashPanel; ++i) q[k * kFlashPanel + i] = s[i * ld + k];
  }
}

void flash_pack_rows(const float* src, int64_t ld, int64_t n, int64_t D, int64_t ldd, float* dst) {
  for (int64_t c = 0; c < n; ++c) {
    std::memcpy(dst + c * ldd, src + c * ld, static_cast<size_t>(D) * sizeof(float));
    std::fill(dst + c * ldd + D, dst + (c + 1) * ldd, 0.0f);
  }
}

void flash_gemm_nt(int64_t M, int64_t ncols, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* Bp, float* C, int64_t ldc, const int64_t* lim) {
  HWY_DYNAMIC_DISPATCH(flash_gemm_nt_kernel)(M, ncols, K, alpha, A, lda, Bp, C, ldc, lim);
}

void flash_gemm_acc(int64_t M, int64_t D, int64_t K, float alpha, const float* A, int64_t a_rs,
                    int64_t a_ks, const float* B, int64_t ldb, float* C, int64_t ldc,
                    const int64_t* k_lo, const int64_t* k_hi) {
  HWY_DYNAMIC_DISPATCH(flash_gemm_acc_kernel)
  (M, D, K, alpha, A, a_rs, a_ks, B, ldb, C, ldc, k_lo, k_hi);
}

}  // namespace posformer::kernels::cpu
#endif  // HWY_ONCE
