// Per-target Highway helpers (tails, exp / erf / activations). Included from inside the
// foreach_target sections of the kernel .cpp files, hence the toggle guard.
#if defined(POSFORMER_KERNELS_CPU_HWY_UTIL_INL_H_) == defined(HWY_TARGET_TOGGLE)
#ifdef POSFORMER_KERNELS_CPU_HWY_UTIL_INL_H_
#undef POSFORMER_KERNELS_CPU_HWY_UTIL_INL_H_
#else
#define POSFORMER_KERNELS_CPU_HWY_UTIL_INL_H_
#endif

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "exp_avx512.h"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace posformer::kernels::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Loads count < Lanes(d) floats, other lanes = pad; never reads past p + count.
template <class D>
HWY_INLINE hn::Vec<D> load_tail(D d, const float* p, size_t count, float pad) {
  HWY_ALIGN float buf[hn::MaxLanes(D())];
  hn::Store(hn::Set(d, pad), d, buf);
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

// exp(x) for x <= 88: round-to-nearest n = x / ln 2 by the 1.5 * 2^23 trick, Cody-Waite
// r = x - n ln 2, degree-6 fit of e^r (Estrin), 2^n added to the exponent bits. Results below
// e^-86 (and exp(-inf)) are exactly 0, so no denormals; NaN gives NaN.
template <class D, class V>
HWY_INLINE V exp_vec(D d, V x) {
  const hn::RebindToSigned<D> di;
  const V lo = hn::Set(d, -86.0f);
  const V magic = hn::Set(d, 12582912.0f);
  const V xc = hn::Max(lo, x);  // second operand wins for NaN on x86: keeps NaN
  const V z = hn::MulAdd(xc, hn::Set(d, 1.44269504088896341f), magic);
  const V n = hn::Sub(z, magic);
  V r = hn::NegMulAdd(n, hn::Set(d, 0.693145751953125f), xc);
  r = hn::NegMulAdd(n, hn::Set(d, 1.4286068203094172e-6f), r);
  const V r2 = hn::Mul(r, r);
  const V p01 = hn::MulAdd(r, hn::Set(d, 1.0000000377162138f), hn::Set(d, 1.0f));
  const V p23 = hn::MulAdd(r, hn::Set(d, 0.16666415514653275f), hn::Set(d, 0.50000000471177577f));
  const V p45 =
      hn::MulAdd(r, hn::Set(d, 0.0083751263981533357f), hn::Set(d, 0.041666352896775157f));
  const V p46 = hn::MulAdd(r2, hn::Set(d, 0.0013941108433972675f), p45);
  const V p = hn::MulAdd(hn::Mul(r2, r2), p46, hn::MulAdd(r2, p23, p01));
  const auto scale = hn::ShiftLeft<23>(hn::BitCast(di, z));  // n << 23
  const V y = hn::BitCast(d, hn::Add(hn::BitCast(di, p), scale));
  return hn::IfThenZeroElse(hn::Lt(x, lo), y);
}

// 2^x for x <= 127: n = round(x) by the 1.5 * 2^23 trick, f = x - n exact in [-1/2, 1/2],
// kExp2Poly (exp_avx512.h) by Horner, 2^n added to the exponent bits. Results
// below 2^-125 (and 2^-inf) are exactly 0, so no denormals; NaN gives NaN.
template <class D, class V>
HWY_INLINE V exp2_vec(D d, V x) {
  const hn::RebindToSigned<D> di;
  const V lo = hn::Set(d, -125.0f);
  const V magic = hn::Set(d, 12582912.0f);
  // second operands win for NaN on x86: keeps NaN
  const V xc = hn::Min(hn::Set(d, 127.0f), hn::Max(lo, x));
  const V z = hn::Add(xc, magic);
  const V f = hn::Sub(xc, hn::Sub(z, magic));
  V p = hn::Set(d, kExp2Poly[4]);
  for (int i = 3; i >= 0; --i) p = hn::MulAdd(p, f, hn::Set(d, kExp2Poly[i]));
  p = hn::MulAdd(p, f, hn::Set(d, 1.0f));
  const auto scale = hn::ShiftLeft<23>(hn::BitCast(di, z));  // n << 23
  const V y = hn::BitCast(d, hn::Add(hn::BitCast(di, p), scale));
  return hn::IfThenZeroElse(hn::Lt(x, lo), y);
}

// Which exponential exp_sub_sum_to applies: kVec exp_vec; kFlash exp(x) for the fused
// attention's probabilities (x = score - row max <= 0; -inf gives 0): on AVX-512 exp_avx512
// (exp_avx512.h: 12 instructions against exp_vec's 18, relative error 1.9e-7), exp_vec elsewhere;
// kFlash2 2^x for the fp32 forward's probabilities in log2 units: on AVX-512 exp2_avx512 (9
// instructions), exp2_vec elsewhere.
enum class ExpKind { kVec, kFlash, kFlash2 };

template <ExpKind kExp, class D, class V>
HWY_INLINE V exp_of(D d, V x) {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
  if constexpr (kExp != ExpKind::kVec && hn::MaxLanes(D()) == 16 && sizeof(hn::TFromD<D>) == 4) {
    if constexpr (kExp == ExpKind::kFlash2)
      return V{exp2_avx512(x.raw)};
    else
      return V{exp_avx512(x.raw)};
  }
#endif
  if constexpr (kExp == ExpKind::kFlash2)
    return exp2_vec(d, x);
  else
    return exp_vec(d, x);
}

// exp_of<ExpKind::kFlash>: the fused attention's exp (forward with hooks, backward's P).
template <class D, class V>
HWY_INLINE V exp_flash(D d, V x) {
  return exp_of<ExpKind::kFlash>(d, x);
}

// 1 / (1 + exp(-z)) without overflow: e = exp(-|z|) in (0, 1].
template <class D, class V>
HWY_INLINE V sigmoid_vec(D d, V z) {
  const V one = hn::Set(d, 1.0f);
  const V e = exp_vec(d, hn::Neg(hn::Abs(z)));
  const V r = hn::Div(one, hn::Add(one, e));
  return hn::IfThenElse(hn::Lt(z, hn::Zero(d)), hn::Mul(e, r), r);
}

// erfc(t) * e^log_scale for t >= 0, relative error ~2e-7: u exp(-t^2 + P(u) + log_scale),
// u = 2 / (2 + t), P a degree-9 Chebyshev fit of log(erfc(t) / u) + t^2, t in [0, 9.5].
template <class D, class V>
HWY_INLINE V erfc_nonneg_vec(D d, V t, float log_scale = 0.0f) {
  const V two = hn::Set(d, 2.0f);
  const V u = hn::Div(two, hn::Add(two, t));
  const V u2 = hn::Mul(u, u);
  const V u4 = hn::Mul(u2, u2);
  const V p01 =
      hn::MulAdd(u, hn::Set(d, 0.99848676815715052f), hn::Set(d, -1.2654403779436664f + log_scale));
  const V p23 = hn::MulAdd(u, hn::Set(d, 0.029222682199243816f), hn::Set(d, 0.38782640636349133f));
  const V p45 = hn::MulAdd(u, hn::Set(d, -0.10748658898426536f), hn::Set(d, 0.016350997441714572f));
  const V p67 = hn::MulAdd(u, hn::Set(d, 1.1336978460470903f), hn::Set(d, -0.66457127382158314f));
  const V p89 = hn::MulAdd(u, hn::Set(d, 0.14322467798606841f), hn::Set(d, -0.67131109201246859f));
  const V p03 = hn::MulAdd(u2, p23, p01);
  const V p47 = hn::MulAdd(u2, p67, p45);
  const V p = hn::MulAdd(hn::Mul(u4, u4), p89, hn::MulAdd(u4, p47, p03));
  return hn::Mul(u, exp_vec(d, hn::NegMulAdd(t, t, p)));
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
  const V t = hn::Mul(hn::Abs(x), hn::Set(d, 0.70710678118654752f));
  const V h = erfc_nonneg_vec(d, t, -0.69314718055994531f);  // 0.5 erfc(t)
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

// Largest of x[0..n) (-inf when n = 0): two accumulators, the tail padded with -inf.
template <class D>
HWY_INLINE float row_max(D d, const float* x, size_t n) {
  const size_t N = hn::Lanes(d);
  const float ninf = -std::numeric_limits<float>::infinity();
  auto m0 = hn::Set(d, ninf), m1 = m0;
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    m0 = hn::Max(m0, hn::LoadU(d, x + i));
    m1 = hn::Max(m1, hn::LoadU(d, x + i + N));
  }
  for (; i + N <= n; i += N) m0 = hn::Max(m0, hn::LoadU(d, x + i));
  if (i < n) m1 = hn::Max(m1, load_tail(d, x + i, n - i, ninf));
  return hn::GetLane(hn::MaxOfLanes(d, hn::Max(m0, m1)));
}

// v rounded to bfloat16 bits (nearest even, NaN kept quiet: ops::to_bf16_bits), stored as
// Lanes(d) uint16 at p (count < Lanes: the first count only).
template <class D>
HWY_INLINE void store_bf16(D d, hn::Vec<D> v, uint16_t* p, size_t count) {
  const hn::RebindToUnsigned<D> du;
  const hn::RebindToSigned<D> di;
  const hn::Rebind<uint16_t, decltype(di)> d16;
  const auto u = hn::BitCast(du, v);
  const auto hi = hn::ShiftRight<16>(u);
  const auto rounded =
      hn::ShiftRight<16>(hn::Add(u, hn::Add(hn::Set(du, 0x7fffu), hn::And(hi, hn::Set(du, 1u)))));
  const auto nan = hn::Gt(hn::BitCast(di, hn::And(u, hn::Set(du, 0x7fffffffu))),
                          hn::BitCast(di, hn::Set(du, 0x7f800000u)));
  const auto r = hn::IfThenElse(hn::RebindMask(du, nan), hn::Or(hi, hn::Set(du, 0x40u)), rounded);
  const auto h = hn::DemoteTo(d16, hn::BitCast(di, r));
  if (count >= hn::Lanes(d)) {
    hn::StoreU(h, d16, p);
  } else {
    HWY_ALIGN uint16_t tmp[hn::MaxLanes(d16)];
    hn::StoreU(h, d16, tmp);
    for (size_t i = 0; i < count; ++i) p[i] = tmp[i];
  }
}

// e[i] = exp(x[i] - mx) over [0, n), handed to store(e, i, count) a vector at a time (count
// lanes valid, the tail padded); returns their sum (exp(-inf) is exactly 0).
// kExp: which exponential (ExpKind above; kFlash2 gives e[i] = 2^(x[i] - mx)).
template <class D, class Store, ExpKind kExp = ExpKind::kVec>
HWY_INLINE float exp_sub_sum_to(D d, const float* x, size_t n, float mx, const Store& store) {
  const auto ex = [d](hn::Vec<D> v) { return exp_of<kExp>(d, v); };
  const size_t N = hn::Lanes(d);
  const auto vmax = hn::Set(d, mx);
  auto s0 = hn::Zero(d), s1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    const auto e0 = ex(hn::Sub(hn::LoadU(d, x + i), vmax));
    const auto e1 = ex(hn::Sub(hn::LoadU(d, x + i + N), vmax));
    store(e0, i, N);
    store(e1, i + N, N);
    s0 = hn::Add(s0, e0);
    s1 = hn::Add(s1, e1);
  }
  for (; i + N <= n; i += N) {
    const auto e = ex(hn::Sub(hn::LoadU(d, x + i), vmax));
    store(e, i, N);
    s0 = hn::Add(s0, e);
  }
  if (i < n) {
    const auto e =
        ex(hn::Sub(load_tail(d, x + i, n - i, -std::numeric_limits<float>::infinity()), vmax));
    store(e, i, n - i);
    s1 = hn::Add(s1, e);
  }
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1)));
}

// x[i] = exp(x[i] - mx) in place over [0, n); returns their sum (exp(-inf) is exactly 0).
// kExp: the exponential (exp_sub_sum_to); kFlash2 gives 2^(x[i] - mx).
template <ExpKind kExp = ExpKind::kVec, class D>
HWY_INLINE float exp_sub_sum(D d, float* x, size_t n, float mx) {
  const auto store = [&](hn::Vec<D> e, size_t i, size_t count) {
    if (count == hn::Lanes(d))
      hn::StoreU(e, d, x + i);
    else
      store_tail(d, e, x + i, count);
  };
  return exp_sub_sum_to<D, decltype(store), kExp>(d, x, n, mx, store);
}

// y[i] = bf16(exp(x[i] - mx)) over [0, n); returns the sum of the float32 exponentials. y may
// be x itself as uint16 (each vector's stores land on entries already read).
// kExp as in exp_sub_sum_to.
template <ExpKind kExp = ExpKind::kVec, class D>
HWY_INLINE float exp_sub_sum_bf16(D d, const float* x, size_t n, float mx, uint16_t* y) {
  const auto store = [&](hn::Vec<D> e, size_t i, size_t count) { store_bf16(d, e, y + i, count); };
  return exp_sub_sum_to<D, decltype(store), kExp>(d, x, n, mx, store);
}

}  // namespace posformer::kernels::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#endif  // include guard toggle
