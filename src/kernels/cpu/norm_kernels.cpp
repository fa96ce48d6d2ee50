// LayerNorm / RMSNorm over the last dim (Highway, runtime dispatch).
#include <algorithm>
#include <cmath>
#include <cstddef>

#include "kernels.h"
#include "parallel.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "../src/kernels/cpu/norm_kernels.cpp"  // relative to include/
#include <hwy/foreach_target.h>                                   // IWYU pragma: keep
#include <hwy/highway.h>

#include "hwy_util-inl.h"

HWY_BEFORE_NAMESPACE();
namespace posformer::kernels::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sum of f(v) over the row; tail lanes are padded with `pad` (f(pad) must be 0).
template <class D, class F>
HWY_INLINE float row_sum(D d, const float* x, size_t n, float pad, const F& f) {
  const size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d), s1 = hn::Zero(d), s2 = hn::Zero(d), s3 = hn::Zero(d);
  size_t i = 0;
  for (; i + 4 * N <= n; i += 4 * N) {
    s0 = hn::Add(s0, f(hn::LoadU(d, x + i)));
    s1 = hn::Add(s1, f(hn::LoadU(d, x + i + N)));
    s2 = hn::Add(s2, f(hn::LoadU(d, x + i + 2 * N)));
    s3 = hn::Add(s3, f(hn::LoadU(d, x + i + 3 * N)));
  }
  for (; i + N <= n; i += N) s0 = hn::Add(s0, f(hn::LoadU(d, x + i)));
  if (i < n) s1 = hn::Add(s1, f(load_tail(d, x + i, n - i, pad)));
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(s0, s1), hn::Add(s2, s3))));
}

// Two-pass mean / variance (robust to a large mean), then y = (x - mean) r g + b.
void layernorm_kernel(const float* x, const float* g, const float* b, float* y, size_t rows,
                      size_t cols, float eps) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const float mean = row_sum(d, xr, cols, 0.0f, [](auto v) { return v; }) / float(cols);
    const auto vmean = hn::Set(d, mean);
    const float var = row_sum(d, xr, cols, mean,
                              [&](auto v) {
                                const auto c = hn::Sub(v, vmean);
                                return hn::Mul(c, c);
                              }) /
                      float(cols);
    const auto vr = hn::Set(d, 1.0f / std::sqrt(var + eps));
    const auto f = [&](auto v, auto vg, auto vb) {
      return hn::MulAdd(hn::Mul(hn::Sub(v, vmean), vr), vg, vb);
    };
    size_t i = 0;
    for (; i + N <= cols; i += N) {
      const auto vb = b ? hn::LoadU(d, b + i) : hn::Zero(d);
      hn::StoreU(f(hn::LoadU(d, xr + i), hn::LoadU(d, g + i), vb), d, yr + i);
    }
    if (i < cols) {
      const size_t k = cols - i;
      const auto vb = b ? load_tail(d, b + i, k, 0.0f) : hn::Zero(d);
      store_tail(d, f(load_tail(d, xr + i, k, 0.0f), load_tail(d, g + i, k, 0.0f), vb), yr + i, k);
    }
  }
}

void rmsnorm_kernel(const float* x, const float* g, float* y, size_t rows, size_t cols, float eps) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    const float ms = row_sum(d, xr, cols, 0.0f, [](auto v) { return hn::Mul(v, v); }) / float(cols);
    const auto vr = hn::Set(d, 1.0f / std::sqrt(ms + eps));
    size_t i = 0;
    for (; i + N <= cols; i += N) {
      hn::StoreU(hn::Mul(hn::Mul(hn::LoadU(d, xr + i), vr), hn::LoadU(d, g + i)), d, yr + i);
    }
    if (i < cols) {
      const size_t k = cols - i;
      const auto v =
          hn::Mul(hn::Mul(load_tail(d, xr + i, k, 0.0f), vr), load_tail(d, g + i, k, 0.0f));
      store_tail(d, v, yr + i, k);
    }
  }
}

}  // namespace posformer::kernels::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace posformer::kernels::cpu {

HWY_EXPORT(layernorm_kernel);
HWY_EXPORT(rmsnorm_kernel);

namespace {
// One thread up to 1 MB of input (e.g. [128, 768]); see act_kernels.cpp kMemBoundThreshold.
constexpr int64_t kNormThreshold = int64_t{1} << 18;
}  // namespace

// Normalises rows [lo, hi) with `norm(r0, r1)`, then (yb) rounds them to bf16 bits, block by
// block while they are still in cache.
template <class F>
void norm_rows(float* y, int64_t lo, int64_t hi, int64_t cols, uint16_t* yb, const F& norm) {
  row_blocks(lo, hi, cols, yb != nullptr, [&](int64_t r, int64_t e) {
    norm(r, e);
    if (yb) to_bf16_serial(y + r * cols, yb + r * cols, (e - r) * cols);
  });
}

void layernorm(const float* x, const float* g, const float* b, float* y, int64_t rows, int64_t cols,
               float eps, uint16_t* yb) {
  if (rows <= 0 || cols <= 0) return;
  parallel_range(rows, 1, use_omp(rows * cols, kNormThreshold), [&](int64_t lo, int64_t hi) {
    norm_rows(y, lo, hi, cols, yb, [&](int64_t r0, int64_t r1) {
      HWY_DYNAMIC_DISPATCH(layernorm_kernel)
      (x + r0 * cols, g, b, y + r0 * cols, size_t(r1 - r0), size_t(cols), eps);
    });
  });
}

void rmsnorm(const float* x, const float* g, float* y, int64_t rows, int64_t cols, float eps,
             uint16_t* yb) {
  if (rows <= 0 || cols <= 0) return;
  parallel_range(rows, 1, use_omp(rows * cols, kNormThreshold), [&](int64_t lo, int64_t hi) {
    norm_rows(y, lo, hi, cols, yb, [&](int64_t r0, int64_t r1) {
      HWY_DYNAMIC_DISPATCH(rmsnorm_kernel)
      (x + r0 * cols, g, y + r0 * cols, size_t(r1 - r0), size_t(cols), eps);
    });
  });
}

}  // namespace posformer::kernels::cpu
#endif  // HWY_ONCE
