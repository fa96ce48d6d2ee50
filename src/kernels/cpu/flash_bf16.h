// bfloat16 tile products of the fused softmax attention (AttnDesc::bf16): the products' inputs
// (q, k, v and the probabilities P) rounded to bfloat16 (round to nearest even), the sums in
// float32. On a CPU with AVX512-BF16 one `vdpbf16ps` does two multiply-adds per float lane, twice
// the work of an fp32 FMA per instruction; elsewhere a portable loop gives the same results (the
// same rounded operands, float32 sums, up to summation order) at a fraction of the speed.
//
// Operands go in pairs along the summed dimension (d for S = Q K^T, keys for O += P V): a pair is
// one 32-bit word, broadcast to every lane, and multiplied with 16 lanes of pairs.
//   rows   A[r * lda + d], d < round_up(D, 2) (odd D: a zero pads the last pair)
//   panels K in panels of kFlashPanel (16) keys: key c, pair j = d / 2 at
//          Bp[(c / 16) * (Dh * 32) + j * 32 + (c % 16) * 2 + d % 2], Dh = (D + 1) / 2; keys past n
//          and d >= D zero
//   pairs  V by key pairs: key s, column c at Vp[(s / 2) * (2 * Dp) + c * 2 + s % 2], c < Dp
//          (Dp a multiple of 16; columns >= D and an odd last key zero)
#pragma once
#include <cstdint>

namespace posformer::kernels::cpu {

// True when this CPU has AVX512-BF16 and POSFORMER_BF16_NATIVE is not 0 (tests force the
// portable loop with it; values other than 0 and 1 are refused). Read it once per call of the
// attention, outside parallel regions, and pass it to the products as `native` (the products
// take the portable loop when native is false or the CPU lacks AVX512-BF16).
bool flash_bf16_native();

inline constexpr int64_t flash_bf16_pairs(int64_t D) {
  return (D + 1) / 2;
}

// rows: dst[r * ldd + d] for r < n, d < D; zero for D <= d < ldd (ldd even, >= D).
void flash_bf16_pack_rows(const float* src, int64_t ld, int64_t n, int64_t D, int64_t ldd,
                          uint16_t* dst);
// panels: n keys into round_up(n, 16) * 2 * Dh bf16 (layout above).
void flash_bf16_pack_panels(const float* src, int64_t ld, int64_t n, int64_t D, uint16_t* dst);
// pairs: n keys into round_up(n, 2) * Dp bf16 (layout above).
void flash_bf16_pack_pairs(const float* src, int64_t ld, int64_t n, int64_t D, int64_t Dp,
                           uint16_t* dst);

// C[m][c] = alpha * sum_d A[m][d] K[c][d] for m < M, c < ncols (each row at least up to
// min(ncols, lim[m]); written in whole 16-float vectors, so C rows need round_up(ncols, 16)
// floats); A in rows of stride lda (>= 2 Dh), Bp panels from the tile's first key (a multiple of
// 16). lim null: all columns.
void flash_bf16_nt(int64_t M, int64_t ncols, int64_t D, float alpha, const uint16_t* A, int64_t lda,
                   const uint16_t* Bp, float* C, int64_t ldc, const int64_t* lim, bool native);

// flash_online_softmax (attention_kernels.h) with P to bf16 in place (Pb = (uint16_t*)S, row
// stride 2 ldS) on AVX512-BF16: exponentials of relative error < 3e-6 (well below bf16's 2^-9;
// l sums them in float32) and the CPU's bf16 rounding (vcvtneps2bf16, nearest even). Returns
// false, doing nothing, when native is false or the CPU lacks AVX512-BF16: the caller then runs
// flash_online_softmax with Pb.
bool flash_bf16_softmax(float* S, int64_t ldS, int64_t rows, int64_t cols, const int64_t* vis,
                        float* m, float* l, float* O, int64_t ldO, int64_t D, bool native);

// C[m][0..Dp) += sum_{s < k_hi[m]} A[m][s] V[s][0..Dp) for m < M: A in rows of stride lda holding
// round_up(K, 2) entries (entries at or past a row's k_hi must be 0, not NaN: pairs and blocks of
// rows read past it), Vp pairs from the tile's first key (even); k_hi null: all K.
void flash_bf16_acc(int64_t M, int64_t Dp, int64_t K, const uint16_t* A, int64_t lda,
                    const uint16_t* Vp, float* C, int64_t ldc, const int64_t* k_hi, bool native);

}  // namespace posformer::kernels::cpu
