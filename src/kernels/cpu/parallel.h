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

}  // namespace posformer::kernels::cpu
