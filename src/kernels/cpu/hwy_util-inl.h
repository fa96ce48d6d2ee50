// Per-target Highway helpers (tails, exp-based functions). Included from inside the
// foreach_target sections of the kernel .cpp files, hence the toggle guard.
#if defined(POSFORMER_KERNELS_CPU_HWY_UTIL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef POSFORMER_KERNELS_CPU_HWY_UTIL_INL_H_
#undef POSFORMER_KERNELS_CPU_HWY_UTIL_INL_H_
#else
#define POSFORMER_KERNELS_CPU_HWY_UTIL_INL_H_
#endif

#include <cstddef>
#include <cstring>

#include "hwy/contrib/math/math-inl.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace posformer::kernels::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Loads count < Lanes(d) floats, other lanes = pad; never reads past p + count.
template <class D>
HWY_INLINE hn::Vec<D> load_tail(D d, const float* p, size_t count, float pad) {
  HWY_ALIGN float buf[hn::MaxLanes(D())];
  for (size_t i = 0; i < hn::Lanes(d); ++i) buf[i] = pad;
  std::memcpy(buf, p, count * sizeof(float));
  return hn::Load(d, buf);
}

// Stores the first count lanes of v; never writes past p + count.
template <class D>
HWY_INLINE void store_tail(D d, hn::Vec<D> v, float* p, size_t count) {
  HWY_ALIGN float buf[hn::MaxLanes(D())];
  hn::Store(v, d, buf);
  std::memcpy(p, buf, count * sizeof(float));
}

// 1 / (1 + exp(-z)) without overflow: e = exp(-|z|) in (0, 1].
template <class D, class V>
HWY_INLINE V sigmoid_vec(D d, V z) {
  const V one = hn::Set(d, 1.0f);
  const V e = hn::Exp(d, hn::Neg(hn::Abs(z)));
  const V r = hn::Div(one, hn::Add(one, e));
  return hn::IfThenElse(hn::Lt(z, hn::Zero(d)), hn::Mul(e, r), r);
}

// erfc(t) for t >= 0 with relative error ~2e-7: u * exp(-t^2 + P(u)), u = 2 / (2 + t),
// P a degree-9 Chebyshev fit of log(erfc(t) / u) + t^2 over t in [0, 9.5].
template <class D, class V>
HWY_INLINE V erfc_nonneg_vec(D d, V t) {
  const V two = hn::Set(d, 2.0f);
  const V u = hn::Div(two, hn::Add(two, t));
  V p = hn::Set(d, 0.14322467798606841f);
  p = hn::MulAdd(p, u, hn::Set(d, -0.67131109201246859f));
  p = hn::MulAdd(p, u, hn::Set(d, 1.1336978460470903f));
  p = hn::MulAdd(p, u, hn::Set(d, -0.66457127382158314f));
  p = hn::MulAdd(p, u, hn::Set(d, -0.10748658898426536f));
  p = hn::MulAdd(p, u, hn::Set(d, 0.016350997441714572f));
  p = hn::MulAdd(p, u, hn::Set(d, 0.029222682199243816f));
  p = hn::MulAdd(p, u, hn::Set(d, 0.38782640636349133f));
  p = hn::MulAdd(p, u, hn::Set(d, 0.99848676815715052f));
  p = hn::MulAdd(p, u, hn::Set(d, -1.2654403779436664f));
  return hn::Mul(u, hn::Exp(d, hn::NegMulAdd(t, t, p)));
}

// erf(x): odd degree-13 fit x * Q(x^2) for |x| < 1, else sign(x) * (1 - erfc(|x|)).
template <class D, class V>
HWY_INLINE V erf_vec(D d, V x) {
  const V a = hn::Abs(x);
  const V s = hn::Mul(x, x);
  V q = hn::Set(d, 7.8758750626854883e-5f);
  q = hn::MulAdd(q, s, hn::Set(d, -0.00080168642871658695f));
  q = hn::MulAdd(q, s, hn::Set(d, 0.005189087423433974f));
  q = hn::MulAdd(q, s, hn::Set(d, -0.026854212010626412f));
  q = hn::MulAdd(q, s, hn::Set(d, 0.11283594715160218f));
  q = hn::MulAdd(q, s, hn::Set(d, -0.37612626666720331f));
  q = hn::MulAdd(q, s, hn::Set(d, 1.1283791658483509f));
  const V small = hn::Mul(x, q);
  const V big = hn::CopySignToAbs(hn::Sub(hn::Set(d, 1.0f), erfc_nonneg_vec(d, a)), x);
  return hn::IfThenElse(hn::Lt(a, hn::Set(d, 1.0f)), small, big);
}

// Phi(x) = 0.5 erfc(-x / sqrt 2), relative-accurate in both tails; gelu(x) = x Phi(x).
template <class D, class V>
HWY_INLINE V gelu_vec(D d, V x) {
  const V h = hn::Mul(hn::Set(d, 0.5f), erfc_nonneg_vec(d, hn::Mul(hn::Abs(x), hn::Set(d, 0.70710678118654752f))));
  const V phi = hn::IfThenElse(hn::Lt(x, hn::Zero(d)), h, hn::Sub(hn::Set(d, 1.0f), h));
  return hn::Mul(x, phi);
}

// 0.5 x (1 + tanh(z)) == x sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3); no cancellation.
template <class D, class V>
HWY_INLINE V gelu_tanh_vec(D d, V x) {
  const V x2 = hn::Mul(x, x);
  const V inner = hn::Mul(x, hn::MulAdd(hn::Set(d, 0.044715f), x2, hn::Set(d, 1.0f)));
  return hn::Mul(x, sigmoid_vec(d, hn::Mul(hn::Set(d, 1.5957691216057308f), inner)));
}

template <class D, class V>
HWY_INLINE V silu_vec(D d, V x) {
  return hn::Mul(x, sigmoid_vec(d, x));
}

}  // namespace posformer::kernels::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // include guard toggle
