// Row kernels of the fused softmax attention (Highway, runtime dispatch); attention_kernels.h.
#include "attention_kernels.h"

#include <cmath>
#include <cstddef>
#include <cstring>
#include <limits>

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "../src/kernels/cpu/attention_kernels.cpp"  // relative to include/
#include <hwy/foreach_target.h>                                        // IWYU pragma: keep
#include <hwy/highway.h>

#include "hwy_util-inl.h"

HWY_BEFORE_NAMESPACE();
namespace posformer::kernels::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

void flash_online_softmax_kernel(float* S, int64_t ldS, int64_t rows, int64_t cols,
                                 const int64_t* vis, float* m, float* l, float* O, int64_t ldO,
                                 int64_t D, uint16_t* Pb, int64_t ldPb, bool base2) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    float* x = S + r * ldS;
    const size_t n = static_cast<size_t>(vis[r]);
    // row max over the visible keys
    const float mx = std::max(m[r], row_max(d, x, n));
    uint16_t* pb = Pb ? Pb + r * ldPb : nullptr;
    const size_t pcols = static_cast<size_t>(cols + cols % 2);  // bf16 P: whole pairs
    if (mx == ninf) {  // nothing visible so far: probabilities 0, state unchanged
      if (pb)
        std::memset(pb, 0, pcols * sizeof(uint16_t));
      else
        std::memset(x, 0, static_cast<size_t>(cols) * sizeof(float));
      continue;
    }
    float sum;
    if (pb) {
      sum = base2 ? exp_sub_sum_bf16<ExpKind::kFlash2>(d, x, n, mx, pb)
                  : exp_sub_sum_bf16(d, x, n, mx, pb);
      if (n < pcols) std::memset(pb + n, 0, (pcols - n) * sizeof(uint16_t));
    } else {
      sum = base2 ? exp_sub_sum<ExpKind::kFlash2>(d, x, n, mx)
                  : exp_sub_sum<ExpKind::kFlash>(d, x, n, mx);
      if (n < static_cast<size_t>(cols))
        std::memset(x + n, 0, static_cast<size_t>(cols - vis[r]) * sizeof(float));
    }
    float alpha;
    if (flash_online_update(m[r], l[r], mx, sum, &alpha, base2)) {  // the max grew: rescale O's row
      float* o = O + r * ldO;
      const auto va = hn::Set(d, alpha);
      size_t c = 0;
      for (; c + N <= static_cast<size_t>(D); c += N)
        hn::StoreU(hn::Mul(hn::LoadU(d, o + c), va), d, o + c);
      for (; c < static_cast<size_t>(D); ++c) o[c] *= alpha;
    }
  }
}

void flash_dscores_kernel(float* S, int64_t ldS, float* dP, int64_t lddP, int64_t rows,
                          int64_t cols, const int64_t* vis, const float* L, const float* Di) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    float* p = S + r * ldS;
    float* g = dP + r * lddP;
    const size_t n = L[r] == ninf ? 0 : static_cast<size_t>(vis[r]);
    const auto vl = hn::Set(d, L[r]), vd = hn::Set(d, Di[r]);
    size_t i = 0;
    for (; i + N <= n; i += N) {
      const auto e = exp_flash(d, hn::Sub(hn::LoadU(d, p + i), vl));
      hn::StoreU(e, d, p + i);
      hn::StoreU(hn::Mul(e, hn::Sub(hn::LoadU(d, g + i), vd)), d, g + i);
    }
    if (i < n) {
      const auto e = exp_flash(d, hn::Sub(load_tail(d, p + i, n - i, ninf), vl));
      store_tail(d, e, p + i, n - i);
      store_tail(d, hn::Mul(e, hn::Sub(load_tail(d, g + i, n - i, 0.0f), vd)), g + i, n - i);
    }
    if (n < static_cast<size_t>(cols)) {
      std::memset(p + n, 0, (static_cast<size_t>(cols) - n) * sizeof(float));
      std::memset(g + n, 0, (static_cast<size_t>(cols) - n) * sizeof(float));
    }
  }
}

void rowdot_kernel(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t rows,
                   int64_t D, float* out) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d), n = static_cast<size_t>(D);
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = a + r * lda;
    const float* y = b + r * ldb;
    auto acc = hn::Zero(d);
    size_t i = 0;
    for (; i + N <= n; i += N) acc = hn::MulAdd(hn::LoadU(d, x + i), hn::LoadU(d, y + i), acc);
    if (i < n)
      acc = hn::MulAdd(load_tail(d, x + i, n - i, 0.0f), load_tail(d, y + i, n - i, 0.0f), acc);
    out[r] = hn::GetLane(hn::SumOfLanes(d, acc));
  }
}

}  // namespace posformer::kernels::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace posformer::kernels::cpu {

HWY_EXPORT(flash_online_softmax_kernel);
HWY_EXPORT(flash_dscores_kernel);
HWY_EXPORT(rowdot_kernel);

void flash_online_softmax(float* S, int64_t ldS, int64_t rows, int64_t cols, const int64_t* vis,
                          float* m, float* l, float* O, int64_t ldO, int64_t D, uint16_t* Pb,
                          int64_t ldPb, bool base2) {
  HWY_DYNAMIC_DISPATCH(flash_online_softmax_kernel)
  (S, ldS, rows, cols, vis, m, l, O, ldO, D, Pb, ldPb, base2);
}
void flash_dscores(float* S, int64_t ldS, float* dP, int64_t lddP, int64_t rows, int64_t cols,
                   const int64_t* vis, const float* L, const float* Di) {
  HWY_DYNAMIC_DISPATCH(flash_dscores_kernel)(S, ldS, dP, lddP, rows, cols, vis, L, Di);
}
void rowdot(const float* a, int64_t lda, const float* b, int64_t ldb, int64_t rows, int64_t D,
            float* out) {
  HWY_DYNAMIC_DISPATCH(rowdot_kernel)(a, lda, b, ldb, rows, D, out);
}

}  // namespace posformer::kernels::cpu
#endif  // HWY_ONCE
