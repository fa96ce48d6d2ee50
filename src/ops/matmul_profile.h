// Internal: the matmul profiler's recording hook (ops/matmul.h), shared by the packed linears.
#pragma once
#include <cstdint>

namespace posformer::ops::detail {
bool matmul_profiling();
void matmul_profile_record(int64_t M, int64_t N, int64_t K, double seconds);
double matmul_now_s();

// Runs f(); when the profiler is on, records its time as one M x N x K product.
template <class F>
void matmul_timed(int64_t M, int64_t N, int64_t K, const F& f) {
  if (!matmul_profiling()) return f();
  const double t0 = matmul_now_s();
  f();
  matmul_profile_record(M, N, K, matmul_now_s() - t0);
}
}  // namespace posformer::ops::detail
