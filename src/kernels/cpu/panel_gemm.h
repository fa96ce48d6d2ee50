// fp32 GEMM on weights packed in 64-column panels, with the next panel software-prefetched
// into L2 while the current one is multiplied (the packed linears of ops::linear_packed).
//
//   C[M, N] = post(beta * C + A[M, K] B + bias)
//
// B [K, N] is read from panels of 64 columns: element (k, n) at Bp[(n / 64) * pstride +
// k * 64 + n % 64], columns n >= N of the last panel readable (any finite or infinite value:
// they are computed and never stored). This is oneDNN's `BA16a64b` blocked layout (K blocks of
// 16 rows inside each 64-column block), which its matmul picks for fp32 weights on AVX-512, so a
// weight packed for oneDNN is read in place.
//
// Why: inside a 12-layer model every linear's weight comes from L3 or memory. oneDNN's brgemm
// leaves that stream to the hardware prefetchers and runs 9-15% below its rate on a weight that
// stays in L2 (bench/RESULTS.md section 1, the Xeon); here each thread, while it multiplies
// one panel with all of its rows, prefetches its next panel (prefetcht1, spread over the
// panel's k steps), so the next panel is in L2 when it starts. ops::linear_packed uses it for
// up to 256 rows (decoding, BERT at T = 128), where it measured 4-16% faster than oneDNN's
// matmul; from 512 rows on, oneDNN is level or faster and keeps those.
//
// Threads: the panels are split between the OpenMP threads (rows, when there are fewer panels
// than threads); no team inside an active parallel region. Blocking: rows in chunks of <= 240,
// K in blocks of <= 768, so that a thread's A block and two panels fit its L2.
// Fast on AVX-512F (panel_gemm_available()); elsewhere a scalar kernel keeps it correct and the
// caller keeps oneDNN.
#pragma once
#include <cstdint>

namespace posformer::kernels::cpu {

inline constexpr int64_t kPanelCols = 64;

// Whether this CPU runs panel_gemm (AVX-512F, detected at run time).
bool panel_gemm_available();

// Applied by each thread to the finished rows of its columns: post(ctx, row, n) on C + r * ldc +
// c0 for n columns (e.g. an activation); null: none.
using PanelPost = void (*)(void* ctx, float* row, int64_t n);

// C (above); beta scales the old C (beta == 0: C is not read, so it may hold anything);
// bias [N] or null. Requires M, N, K >= 1, lda >= K, ldc >= N, pstride >= K * 64.
void panel_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bp,
                int64_t pstride, const float* bias, float beta, float* C, int64_t ldc,
                PanelPost post, void* post_ctx);

// Several products of the same A [M, K] at once (q, k and v of one attention sublayer): job j is
// C_j = post_j(beta_j C_j + A B_j + bias_j) as above, B_j [K, N_j] in panels. The jobs' panels are
// split between the threads as one list, and each thread prefetches across job boundaries, so the
// products run as one wider call (one thread team, no barrier between them). More than
// kPanelMaxJobs jobs run as several such calls. N_j >= 1, ldc_j >= N_j, pstride_j >= K * 64.
inline constexpr int64_t kPanelMaxJobs = 4;
struct PanelJob {
  const float* Bp;
  int64_t pstride, N;
  const float* bias;
  float beta;
  float* C;
  int64_t ldc;
  PanelPost post;
  void* post_ctx;
};
void panel_gemm_group(int64_t M, int64_t K, const float* A, int64_t lda, const PanelJob* jobs,
                      int64_t njobs);

}  // namespace posformer::kernels::cpu
