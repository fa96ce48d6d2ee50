// Rotary position embedding, in place (Highway, runtime dispatch).
#include <cstddef>
#include <vector>

#include "kernels.h"
#include "parallel.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "../src/kernels/cpu/rope_kernels.cpp"  // relative to include/
#include <hwy/foreach_target.h>                                   // IWYU pragma: keep
#include <hwy/highway.h>

#include "hwy_util-inl.h"

HWY_BEFORE_NAMESPACE();
namespace posformer::kernels::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Half layout: pairs (x[i], x[i + h]), h = R/2, table entries c[i], s[i] (s already signed).
HWY_INLINE void rope_half_head(float* x, size_t h, const float* c, const float* s) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  float* xb = x + h;
  size_t i = 0;
  for (; i + N <= h; i += N) {
    const auto a = hn::LoadU(d, x + i), b = hn::LoadU(d, xb + i);
    const auto vc = hn::LoadU(d, c + i), vs = hn::LoadU(d, s + i);
    hn::StoreU(hn::NegMulAdd(b, vs, hn::Mul(a, vc)), d, x + i);
    hn::StoreU(hn::MulAdd(a, vs, hn::Mul(b, vc)), d, xb + i);
  }
  if (i < h) {
    const size_t k = h - i;
    const auto a = load_tail(d, x + i, k, 0.0f), b = load_tail(d, xb + i, k, 0.0f);
    const auto vc = load_tail(d, c + i, k, 0.0f), vs = load_tail(d, s + i, k, 0.0f);
    store_tail(d, hn::NegMulAdd(b, vs, hn::Mul(a, vc)), x + i, k);
    store_tail(d, hn::MulAdd(a, vs, hn::Mul(b, vc)), xb + i, k);
  }
}

// Interleaved layout with expanded tables cc = [c0 c0 c1 c1 ..], ss = [-s0 s0 -s1 s1 ..]:
// y = x * cc + swap_pairs(x) * ss over R floats (R even, so pairs never straddle vectors).
HWY_INLINE void rope_interleaved_head(float* x, size_t R, const float* cc, const float* ss) {
#if HWY_TARGET == HWY_SCALAR
  for (size_t j = 0; j < R; j += 2) {
    const float a = x[j], b = x[j + 1];
    x[j] = a * cc[j] + b * ss[j];
    x[j + 1] = b * cc[j + 1] + a * ss[j + 1];
  }
#else
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= R; i += N) {
    const auto v = hn::LoadU(d, x + i);
    const auto y =
        hn::MulAdd(hn::Reverse2(d, v), hn::LoadU(d, ss + i), hn::Mul(v, hn::LoadU(d, cc + i)));
    hn::StoreU(y, d, x + i);
  }
  if (i < R) {
    const size_t k = R - i;
    const auto v = load_tail(d, x + i, k, 0.0f);
    const auto y = hn::MulAdd(hn::Reverse2(d, v), load_tail(d, ss + i, k, 0.0f),
                              hn::Mul(v, load_tail(d, cc + i, k, 0.0f)));
    store_tail(d, y, x + i, k);
  }
#endif
}

void rope_kernel(float* x, size_t T, size_t n_heads, size_t D, size_t ld, size_t R, int interleaved,
                 const float* cos, const float* sin, float sign) {
  const size_t h = R / 2;
  std::vector<float> tab(2 * R);  // per-row scratch: signed sin (half) or cc/ss (interleaved)
  for (size_t t = 0; t < T; ++t) {
    const float* c = cos + t * h;
    const float* s = sin + t * h;
    float* xt = x + t * ld;
    if (interleaved) {
      for (size_t i = 0; i < h; ++i) {
        tab[2 * i] = tab[2 * i + 1] = c[i];
        tab[R + 2 * i] = -sign * s[i];
        tab[R + 2 * i + 1] = sign * s[i];
      }
      for (size_t hd = 0; hd < n_heads; ++hd)
        rope_interleaved_head(xt + hd * D, R, tab.data(), tab.data() + R);
    } else {
      for (size_t i = 0; i < h; ++i) tab[i] = sign * s[i];
      for (size_t hd = 0; hd < n_heads; ++hd) rope_half_head(xt + hd * D, h, c, tab.data());
    }
  }
}

}  // namespace posformer::kernels::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace posformer::kernels::cpu {

HWY_EXPORT(rope_kernel);

void rope_apply(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t ld, int64_t R,
                bool interleaved, const float* cos, const float* sin, float sign) {
  if (T <= 0 || n_heads <= 0) return;
  const int64_t h = R / 2;
  const bool par = use_omp(T * n_heads * R, int64_t{1} << 15);
  parallel_range(T, 1, par, [&](int64_t b, int64_t e) {
    HWY_DYNAMIC_DISPATCH(rope_kernel)
    (x + b * ld, size_t(e - b), size_t(n_heads), size_t(D), size_t(ld), size_t(R),
     interleaved ? 1 : 0, cos + b * h, sin + b * h, sign);
  });
}

}  // namespace posformer::kernels::cpu
#endif  // HWY_ONCE
