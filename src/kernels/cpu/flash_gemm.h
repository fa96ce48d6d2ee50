// Register-blocked tile products of the fused ("flash") softmax attention
// (src/attention/fused_attention.cpp). Highway SIMD, runtime dispatch (AVX-512 / AVX2 / SSE4 /
// NEON ...), single-threaded: the caller runs one tile per thread.
//
// Two products cover every tile product of the forward and the backward:
//   nt:  C[m][c] = alpha * sum_d A[m][d] Bp(c, d)        (S = scale Q K^T, dP = dO V^T)
//        B is packed in panels of kFlashPanel keys: Bp(c, d) = Bp[(c / P) * K * P + d * P + c % P]
//        with P = kFlashPanel, rows c >= n of the last panel zero (flash_pack_panels).
//   acc: C[m][0..D) += alpha * sum_k A(m, k) B[k][0..D)   (O += P V, dV += P^T dO, dQ += dS K,
//        dK += dS^T Q), A(m, k) = A[m * a_rs + k * a_ks] (so A or A^T), B rows at stride ldb
//        readable for round_up(D, kFlashPanel) floats (flash_pack_rows pads them), C rows
//        unpadded (the last vector of a row is masked).
// Limits skip products known to be zero: the attention tiles' P and dS rows are 0 past the
// row's visible keys, so row m of nt needs only columns c < lim[m] (the others are left as they
// were, or written up to the next vector boundary), and acc row m only terms
// k_lo[m] <= k < k_hi[m]. A null limit array means all.
#pragma once
#include <cstdint>

namespace posformer::kernels::cpu {

// Keys per packed panel: a multiple of every dispatched target's float lanes (16 on AVX-512).
inline constexpr int64_t kFlashPanel = 16;
inline constexpr int64_t flash_round_up(int64_t n) {
  return (n + kFlashPanel - 1) / kFlashPanel * kFlashPanel;
}

// dst (flash_round_up(n) * D floats) = rows src[c * ld + d], c < n, d < D, in panels (above).
void flash_pack_panels(const float* src, int64_t ld, int64_t n, int64_t D, float* dst);
// dst[c * ldd + d] = src[c * ld + d] for d < D, zero for D <= d < ldd; c < n.
void flash_pack_rows(const float* src, int64_t ld, int64_t n, int64_t D, int64_t ldd, float* dst);

// nt product (above): M rows, columns [0, ncols) (each row at least up to min(ncols, lim[m])),
// written in whole vectors, so C rows need room for flash_round_up(ncols) floats.
void flash_gemm_nt(int64_t M, int64_t ncols, int64_t K, float alpha, const float* A, int64_t lda,
                   const float* Bp, float* C, int64_t ldc, const int64_t* lim);

// acc product (above): M rows of D columns, K terms.
void flash_gemm_acc(int64_t M, int64_t D, int64_t K, float alpha, const float* A, int64_t a_rs,
                    int64_t a_ks, const float* B, int64_t ldb, float* C, int64_t ldc,
                    const int64_t* k_lo, const int64_t* k_hi);

}  // namespace posformer::kernels::cpu
