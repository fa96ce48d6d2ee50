// Row softmax in place (Highway, runtime dispatch).
#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>

#include "kernels.h"
#include "parallel.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "../src/kernels/cpu/softmax_kernels.cpp"  // relative to include/
#include <hwy/foreach_target.h>                                      // IWYU pragma: keep
#include <hwy/highway.h>

#include "hwy_util-inl.h"

HWY_BEFORE_NAMESPACE();
namespace posformer::kernels::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

HWY_INLINE void softmax_row(float* x, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const float ninf = -std::numeric_limits<float>::infinity();
  // Pass 1: row max (tail padded with -inf).
  const float mx = row_max(d, x, n);
  if (mx == ninf) {  // fully masked row attends to nothing
    std::memset(x, 0, n * sizeof(float));
    return;
  }
  // Pass 2: x = exp(x - max), summed; exp(-inf) is exactly 0.
  const float sum = exp_sub_sum(d, x, n, mx);
  // Pass 3: scale by 1 / sum (sum >= 1: the max element contributes exp(0)).
  const auto inv = hn::Set(d, 1.0f / sum);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(hn::Mul(hn::LoadU(d, x + i), inv), d, x + i);
  if (i < n) store_tail(d, hn::Mul(load_tail(d, x + i, n - i, 0.0f), inv), x + i, n - i);
}

void softmax_kernel(float* x, size_t rows, size_t cols, size_t ld) {
  for (size_t r = 0; r < rows; ++r) softmax_row(x + r * ld, cols);
}

}  // namespace posformer::kernels::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace posformer::kernels::cpu {

HWY_EXPORT(softmax_kernel);

void softmax_rows(float* x, int64_t rows, int64_t cols, int64_t ld) {
  if (rows <= 0 || cols <= 0) return;
  const bool par = use_omp(rows * cols, int64_t{1} << 14);
  parallel_range(rows, 1, par, [&](int64_t b, int64_t e) {
    HWY_DYNAMIC_DISPATCH(softmax_kernel)(x + b * ld, size_t(e - b), size_t(cols), size_t(ld));
  });
}

}  // namespace posformer::kernels::cpu
#endif  // HWY_ONCE
