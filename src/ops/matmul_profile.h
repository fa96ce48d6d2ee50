// Internal: the matmul profiler's recording hook (ops/matmul.h), shared by the packed linears.
#pragma once
#include <cstdint>

namespace posformer::ops::detail {
bool matmul_profiling();
void matmul_profile_record(int64_t M, int64_t N, int64_t K, double seconds);
double matmul_now_s();
}  // namespace posformer::ops::detail
