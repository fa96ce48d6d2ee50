// OpenMP helpers shared by the CPU kernels.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstdint>

namespace posformer::kernels::cpu {

// Whether a loop touching `work` floats is worth an OpenMP team. Never inside an active
// parallel region: callers such as attention may already parallelise over heads.
inline bool use_omp(int64_t work, int64_t threshold) {
  return work >= threshold && !omp_in_parallel() && omp_get_max_threads() > 1;
}

// Calls f(begin, end) on contiguous slices of [0, n), one per thread when `par`; slice
// boundaries are multiples of `grain` (e.g. 16 floats = one cache line) except the last.
template <class F>
void parallel_range(int64_t n, int64_t grain, bool par, const F& f) {
  if (n <= 0) return;
  if (!par) {
    f(int64_t{0}, n);
    return;
  }
#pragma omp parallel
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t units = (n + grain - 1) / grain;
    const int64_t b = std::min(n, units * t / nt * grain);
    const int64_t e = std::min(n, units * (t + 1) / nt * grain);
    if (b < e) f(b, e);
  }
}

// Calls f(r, e) on consecutive blocks of rows [lo, hi) of `cols` floats each, about 8K floats
// per block when `blocked` (a kernel that also rounds its output to bf16 then reads each block
// back while it is still in cache), else once on [lo, hi).
template <class F>
void row_blocks(int64_t lo, int64_t hi, int64_t cols, bool blocked, const F& f) {
  const int64_t step = blocked ? std::max<int64_t>(1, (int64_t{1} << 13) / cols) : hi - lo;
  for (int64_t r = lo; r < hi; r += step) f(r, std::min(hi, r + step));
}

}  // namespace posformer::kernels::cpu
