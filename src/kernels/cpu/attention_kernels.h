// Internal row kernels of the fused ("flash") softmax attention
// (src/attention/fused_attention.cpp). Highway SIMD, runtime dispatch, single-threaded (the caller
// runs one tile per thread).
//
// A tile holds `rows` query rows of a score block over `cols` keys, row stride ld. Row r sees
// only its first vis[r] <= cols keys (the mask, from AttnDesc::visible_keys); the others are
// treated as -inf without being read.
#pragma once
#include <cmath>
#include <cstdint>
#include <limits>

namespace posformer::kernels::cpu {

// The online softmax's running state (max m, sum l) after a block whose visible scores have max
// mx (> -inf) and whose exponentials exp(s - mx) sum to `sum`. Returns true when the max grew:
// the row's accumulated output must then be scaled by *alpha = exp(m_old - mx) (0 on the first
// block, m_old = -inf). Shared by flash_online_softmax and the bf16 softmax (flash_bf16.h).
// base2: m, mx and the scores are in log2 units, alpha = 2^(m_old - mx).
inline bool flash_online_update(float& m, float& l, float mx, float sum, float* alpha,
                                bool base2 = false) {
  if (m == mx) {
    l += sum;
    return false;
  }
  *alpha = m == -std::numeric_limits<float>::infinity() ? 0.0f
           : base2                                      ? std::exp2(m - mx)
                                                        : std::exp(m - mx);
  l = l * *alpha + sum;
  m = mx;
  return true;
}

// Online softmax step over one key block, in place. Per row r, with running max m[r], running
// sum l[r] and output accumulator O (row stride ldO, D columns):
//   m' = max(m, max_s S[s]);  alpha = exp(m - m');  S[s] = exp(S[s] - m') (0 where masked);
//   l = alpha l + sum_s S[s];  O_r *= alpha;  m = m'.
// A row whose m' is -inf (nothing visible yet) gets S = 0 and keeps m = -inf, l = 0.
// Pb (optional): the probabilities go to Pb (row stride ldPb) as bfloat16 bits instead, over
// round_up(cols, 2) entries (0 where masked and in an odd tile's pad entry); l sums the float32
// exponentials. Pb may be S itself (Pb = (uint16_t*)S, ldPb = 2 ldS: each row's bf16 values
// fill the first half of its float row, every store landing on entries already read); S is
// otherwise left as it was.
// base2: the scores (and m) are in log2 units (the scale times log2(e) folded into q), and the
// step uses 2^ in place of exp: S[s] = 2^(S[s] - m'), alpha = 2^(m - m'); the row's log-sum-exp
// in natural units is then (m + log2 l) ln 2. On AVX-512 this exponential takes 9 instructions
// against exp's 12 (exp_avx512.h).
void flash_online_softmax(float* S, int64_t ldS, int64_t rows, int64_t cols, const int64_t* vis,
                          float* m, float* l, float* O, int64_t ldO, int64_t D,
                          uint16_t* Pb = nullptr, int64_t ldPb = 0, bool base2 = false);

// Backward tile: P = exp(S - L[r]) recomputed in place in S (0 where masked or L[r] = -inf),
// then dP (in place) becomes dS = P * (dP - Di[r]).
void flash_dscores(float* S, int64_t ldS, float* dP, int64_t lddP, int64_t rows, int64_t cols,
                   const int64_t* vis, const float* L, const float* Di);

// out[r] = sum_c a[r*lda + c] * b[r*ldb + c] over c < D (double accumulation is not needed:
// D is a head dim).
void rowdot(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t rows, int64_t D,
            float* out);

}  // namespace posformer::kernels::cpu
