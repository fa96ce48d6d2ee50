// panel_gemm.h: an AVX-512 register-blocked kernel (6 rows x 64 columns, 24 accumulators) and
// a scalar one for CPUs without AVX-512F (correct, not fast: the callers keep oneDNN there).
#include "panel_gemm.h"

#include <omp.h>

#include <algorithm>

#include "parallel.h"
#include "x86_intrin.h"
#if defined(__x86_64__) && defined(__GNUC__)
#define POSFORMER_PANEL_AVX512 1
#endif

namespace posformer::kernels::cpu {
namespace {

constexpr int64_t kRows = 6;         // rows per register block
constexpr int64_t kChunkRows = 240;  // rows per L2 chunk (a multiple of kRows)
constexpr int64_t kBlockK = 768;     // K per L2 block

// The next panel block, fetched into L2 a few lines at a time while the current one runs.
struct Prefetch {
  const char* p = nullptr;
  const char* end = nullptr;
  int per_step = 1;  // lines per 4 k steps
};

// One register block: rows [0, mr) x the panel's 64 columns over kn k steps, A and B already
// offset to the block's first k. beta == 0: C not read.
using Kernel = void (*)(int64_t kn, const float* A, int64_t lda, const float* B, float* C,
                        int64_t ldc, int64_t nvalid, float beta, const float* bias, Prefetch* pf);

template <int MR>
void block_scalar(int64_t kn, const float* A, int64_t lda, const float* B, float* C, int64_t ldc,
                  int64_t nvalid, float beta, const float* bias, Prefetch*) {
  for (int r = 0; r < MR; ++r) {
    float acc[kPanelCols] = {};
    for (int64_t k = 0; k < kn; ++k) {
      const float a = A[r * lda + k];
      for (int64_t j = 0; j < kPanelCols; ++j) acc[j] += a * B[k * kPanelCols + j];
    }
    for (int64_t j = 0; j < nvalid; ++j) {
      float v = acc[j];
      if (bias) v += bias[j];
      if (beta != 0.0f) v += beta * C[r * ldc + j];
      C[r * ldc + j] = v;
    }
  }
}

#if defined(POSFORMER_PANEL_AVX512)
#pragma GCC push_options
#pragma GCC target("avx512f")

template <int MR>
void block_avx512(int64_t kn, const float* A, int64_t lda, const float* B, float* C, int64_t ldc,
                  int64_t nvalid, float beta, const float* bias, Prefetch* pf) {
  __m512 c[MR][4];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < 4; ++j) c[r][j] = _mm512_setzero_ps();
  const float* a[MR];
  for (int r = 0; r < MR; ++r) a[r] = A + r * lda;
  auto step = [&](int64_t k) {
    const float* b = B + k * kPanelCols;
    const __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
    const __m512 b2 = _mm512_loadu_ps(b + 32), b3 = _mm512_loadu_ps(b + 48);
    for (int r = 0; r < MR; ++r) {
      const __m512 av = _mm512_set1_ps(a[r][k]);
      c[r][0] = _mm512_fmadd_ps(av, b0, c[r][0]);
      c[r][1] = _mm512_fmadd_ps(av, b1, c[r][1]);
      c[r][2] = _mm512_fmadd_ps(av, b2, c[r][2]);
      c[r][3] = _mm512_fmadd_ps(av, b3, c[r][3]);
    }
  };
  int64_t k = 0;
  for (; k + 4 <= kn; k += 4) {
    for (int i = 0; i < pf->per_step && pf->p < pf->end; ++i, pf->p += 64)
      _mm_prefetch(pf->p, _MM_HINT_T1);
    step(k);
    step(k + 1);
    step(k + 2);
    step(k + 3);
  }
  for (; k < kn; ++k) step(k);
  __mmask16 m[4];
  for (int j = 0; j < 4; ++j) {
    const int64_t n = std::clamp<int64_t>(nvalid - 16 * j, 0, 16);
    m[j] = static_cast<__mmask16>((1u << n) - 1u);
  }
  const __m512 vb = _mm512_set1_ps(beta);
  for (int j = 0; j < 4; ++j) {
    if (!m[j]) continue;
    const __m512 bj = bias ? _mm512_maskz_loadu_ps(m[j], bias + 16 * j) : _mm512_setzero_ps();
    for (int r = 0; r < MR; ++r) {
      float* cp = C + r * ldc + 16 * j;
      __m512 v = _mm512_add_ps(c[r][j], bj);
      if (beta != 0.0f) v = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m[j], cp), v);
      _mm512_mask_storeu_ps(cp, m[j], v);
    }
  }
}

#pragma GCC pop_options

bool avx512() {
  static const bool cpu = __builtin_cpu_supports("avx512f") != 0;
  return cpu;
}
#else
bool avx512() {
  return false;
}
#endif

// The kernel for a block of mr = 1..6 rows.
Kernel kernel_for(int64_t mr, bool fast) {
  static constexpr Kernel scalar[] = {block_scalar<1>, block_scalar<2>, block_scalar<3>,
                                      block_scalar<4>, block_scalar<5>, block_scalar<6>};
#if defined(POSFORMER_PANEL_AVX512)
  static constexpr Kernel simd[] = {block_avx512<1>, block_avx512<2>, block_avx512<3>,
                                    block_avx512<4>, block_avx512<5>, block_avx512<6>};
  if (fast) return simd[mr - 1];
#else
  (void)fast;
#endif
  return scalar[mr - 1];
}

// The jobs' panels numbered one after another: global panel p is job j's local panel
// p - first[j] for first[j] <= p < first[j + 1].
struct Args {
  int64_t M, K;
  const float* A;
  int64_t lda;
  const PanelJob* jobs;
  int64_t njobs;
  int64_t first[kPanelMaxJobs + 1];
};

struct PanelRef {
  const PanelJob* job;
  int64_t local;  // panel index inside the job
};
PanelRef panel_ref(const Args& g, int64_t p) {
  int64_t j = 0;
  while (p >= g.first[j + 1]) ++j;
  return {g.jobs + j, p - g.first[j]};
}
const float* panel_at(const Args& g, int64_t p, int64_t k0) {
  const PanelRef r = panel_ref(g, p);
  return r.job->Bp + r.local * r.job->pstride + k0 * kPanelCols;
}

// Rows [r0, r1) x global panels [p0, p1) on the calling thread.
void run_part(const Args& g, int64_t r0, int64_t r1, int64_t p0, int64_t p1, bool fast) {
  if (r0 >= r1 || p0 >= p1) return;
  const int64_t nkb = (g.K + kBlockK - 1) / kBlockK;
  const int64_t kc = (g.K + nkb - 1) / nkb;
  const int64_t nmc = (r1 - r0 + kChunkRows - 1) / kChunkRows;
  const int64_t mc = ((r1 - r0 + nmc - 1) / nmc + kRows - 1) / kRows * kRows;
  for (int64_t m0 = r0; m0 < r1; m0 += mc) {
    const int64_t m1 = std::min(r1, m0 + mc);
    const int64_t blocks = (m1 - m0 + kRows - 1) / kRows;
    for (int64_t kb = 0; kb < nkb; ++kb) {
      const int64_t k0 = kb * kc, kn = std::min(g.K, k0 + kc) - k0;
      for (int64_t p = p0; p < p1; ++p) {
        // the block that runs next on this thread: next panel (of this job or the next one),
        // else first panel of the next K block or row chunk
        const float* next = nullptr;
        int64_t next_k = kn;
        if (p + 1 < p1)
          next = panel_at(g, p + 1, k0);
        else if (kb + 1 < nkb) {
          next = panel_at(g, p0, k0 + kc);
          next_k = std::min(g.K, k0 + 2 * kc) - (k0 + kc);
        } else if (m1 < r1) {
          next = panel_at(g, p0, 0);
          next_k = std::min(g.K, kc);
        }
        Prefetch pf;
        if (next) {
          pf.p = reinterpret_cast<const char*>(next);
          pf.end = pf.p + next_k * kPanelCols * sizeof(float);
          // its 4 * next_k lines over blocks * kn / 4 steps of 4 k
          const int64_t steps = std::max<int64_t>(1, blocks * (kn / 4));
          pf.per_step =
              static_cast<int>(std::clamp<int64_t>((4 * next_k + steps - 1) / steps, 1, 16));
        }
        const PanelRef ref = panel_ref(g, p);
        const PanelJob& job = *ref.job;
        const float* B = job.Bp + ref.local * job.pstride + k0 * kPanelCols;
        const int64_t nvalid = std::min(kPanelCols, job.N - ref.local * kPanelCols);
        const float beta = kb == 0 ? job.beta : 1.0f;
        const float* bias = kb == 0 && job.bias ? job.bias + ref.local * kPanelCols : nullptr;
        float* C = job.C + ref.local * kPanelCols;
        for (int64_t m = m0, mr = 0; m < m1; m += mr) {
          // blocks of 6 rows; a last 7-9 rows as two blocks of 3-5 (4 + 4, not 6 + 2: a block of
          // 1-2 rows loads as many B vectors for a third of the FMAs)
          const int64_t left = m1 - m;
          mr = left > kRows && left < 10 ? (left + 1) / 2 : std::min(kRows, left);
          kernel_for(mr, fast)(kn, g.A + m * g.lda + k0, g.lda, B, C + m * job.ldc, job.ldc, nvalid,
                               beta, bias, &pf);
        }
      }
    }
    // each job's post over this thread's columns of it
    for (int64_t j = 0; j < g.njobs; ++j) {
      const PanelJob& job = g.jobs[j];
      const int64_t q0 = std::max(p0, g.first[j]), q1 = std::min(p1, g.first[j + 1]);
      if (!job.post || q0 >= q1) continue;
      const int64_t c0 = (q0 - g.first[j]) * kPanelCols;
      const int64_t c1 = std::min(job.N, (q1 - g.first[j]) * kPanelCols);
      for (int64_t r = m0; r < m1; ++r) job.post(job.post_ctx, job.C + r * job.ldc + c0, c1 - c0);
    }
  }
}

}  // namespace

bool panel_gemm_available() {
  return avx512();
}

void panel_gemm(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda, const float* Bp,
                int64_t pstride, const float* bias, float beta, float* C, int64_t ldc,
                PanelPost post, void* post_ctx) {
  const PanelJob job{Bp, pstride, N, bias, beta, C, ldc, post, post_ctx};
  panel_gemm_group(M, K, A, lda, &job, 1);
}

void panel_gemm_group(int64_t M, int64_t K, const float* A, int64_t lda, const PanelJob* jobs,
                      int64_t njobs) {
  if (M <= 0 || K <= 0 || njobs <= 0) return;
  if (njobs > kPanelMaxJobs) {  // in groups of kPanelMaxJobs
    for (int64_t j = 0; j < njobs; j += kPanelMaxJobs)
      panel_gemm_group(M, K, A, lda, jobs + j, std::min(kPanelMaxJobs, njobs - j));
    return;
  }
  Args g{M, K, A, lda, jobs, njobs, {}};
  int64_t flops_n = 0;
  for (int64_t j = 0; j < g.njobs; ++j) {
    g.first[j + 1] = g.first[j] + std::max<int64_t>(0, (jobs[j].N + kPanelCols - 1) / kPanelCols);
    flops_n += std::max<int64_t>(0, jobs[j].N);
  }
  const int64_t np = g.first[g.njobs];
  if (np == 0) return;
  const bool fast = avx512();
  if (!use_omp(M * flops_n * K, int64_t{1} << 17)) return run_part(g, 0, M, 0, np, fast);
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    if (np >= nt)  // panels split between the threads, every row
      run_part(g, 0, M, np * t / nt, np * (t + 1) / nt, fast);
    else  // rows split (in whole register blocks), every panel
      run_part(g, std::min(M, (M + kRows - 1) / kRows * t / nt * kRows),
               std::min(M, (M + kRows - 1) / kRows * (t + 1) / nt * kRows), 0, np, fast);
  }
}

}  // namespace posformer::kernels::cpu
