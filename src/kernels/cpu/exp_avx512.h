// exp(x) on 16 floats with AVX-512, for the fused attention's probabilities (x = score - row
// max <= 0; -inf gives 0): the one implementation behind the fp32 softmax (exp_flash in
// hwy_util-inl.h, Highway's AVX3 targets) and the bf16 softmax (flash_bf16.cpp).
//   n = round(x / ln 2) by vrndscaleps, Cody-Waite r = x - n ln 2 (two-part ln 2), e^r by a
//   degree-5 minimax polynomial with e^0 = 1 exactly (relative error 7.4e-8 on |r| <= ln 2 / 2,
//   1.9e-7 after float rounding), scaled by 2^n with a masked vscalefps: lanes below -87 are
//   exactly 0 (no denormals reach the products that read P), NaN stays NaN. 12 instructions.
#pragma once
#include "x86_intrin.h"

namespace posformer::kernels::cpu {

// 2^f ~ 1 + f (c[0] + f (c[1] + f (c[2] + f (c[3] + f c[4])))) on f in [-1/2, 1/2]: the
// degree-5 minimax fit (relative error 9.2e-8) behind exp2_avx512 below and exp2_vec
// (hwy_util-inl.h, the other targets).
inline constexpr float kExp2Poly[5] = {0.6931470036506653f, 0.24022242426872253f,
                                       0.05550733581185341f, 0.009671512991189957f,
                                       0.0013264729641377926f};

}  // namespace posformer::kernels::cpu

#if defined(__x86_64__) && defined(__GNUC__)

namespace posformer::kernels::cpu {

__attribute__((target("avx512f"), always_inline)) inline __m512 exp_avx512(__m512 x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_NLT_UQ);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.4286068203094172e-6f), r);
  __m512 p = _mm512_fmadd_ps(r, _mm512_set1_ps(0.008325664326548576f),
                             _mm512_set1_ps(0.04190804436802864f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.16666939854621887f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.49999043345451355f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(keep, p, n);
}

// 2^x on 16 floats with AVX-512, for the fp32 fused attention's probabilities in log2 units
// (scores scaled by log2(e) with the softmax scale, so the natural exponential's multiply by
// 1 / ln 2 and the two-part reduction fall away): n = round(x) by vrndscaleps, f = x - n exact in
// [-1/2, 1/2], 2^f by kExp2Poly (2^0 = 1 exactly; relative error 9.2e-8,
// 1.9e-7 after float rounding), scaled by 2^n with a masked vscalefps: lanes below -125 are
// exactly 0 (no denormals reach the products), NaN stays NaN. 9 instructions.
__attribute__((target("avx512f"), always_inline)) inline __m512 exp2_avx512(__m512 x) {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-125.0f), _CMP_NLT_UQ);
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(kExp2Poly[4]);
  for (int i = 3; i >= 0; --i) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kExp2Poly[i]));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(keep, p, n);
}

}  // namespace posformer::kernels::cpu
#endif
