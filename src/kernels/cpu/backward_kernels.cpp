// Backward kernels of the element-wise / normalisation ops, the cross-entropy loss and the
// attention softmax (Highway, runtime dispatch). See backward_kernels.h.
#include "backward_kernels.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstring>
#include <vector>

#include "kernels.h"
#include "parallel.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "../src/kernels/cpu/backward_kernels.cpp"  // relative to include/
#include <hwy/foreach_target.h>                                       // IWYU pragma: keep
#include <hwy/highway.h>

#include "hwy_util-inl.h"

HWY_BEFORE_NAMESPACE();
namespace posformer::kernels::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Full vector when count == Lanes(d), else a padded tail (never touches memory past count).
template <class D>
HWY_INLINE hn::Vec<D> load_n(D d, const float* p, size_t count, float pad) {
  return count == hn::Lanes(d) ? hn::LoadU(d, p) : load_tail(d, p, count, pad);
}
template <class D>
HWY_INLINE void store_n(D d, hn::Vec<D> v, float* p, size_t count) {
  if (count == hn::Lanes(d))
    hn::StoreU(v, d, p);
  else
    store_tail(d, v, p, count);
}

// s = sigmoid(z) and q = s (1 - s) = e / (1 + e)^2 with e = exp(-|z|): no cancellation.
template <class D, class V>
HWY_INLINE void sigmoid_slope(D d, V z, V& s, V& q) {
  const V one = hn::Set(d, 1.0f);
  const V e = exp_vec(d, hn::Neg(hn::Abs(z)));
  const V r = hn::Div(one, hn::Add(one, e));
  const V er = hn::Mul(e, r);
  s = hn::IfThenElse(hn::Lt(z, hn::Zero(d)), er, r);
  q = hn::Mul(er, r);
}

// act'(x) for ops::Act 0..4 (identity, relu, gelu (erf), gelu_tanh, silu).
struct IdentityGrad {
  template <class D, class V>
  HWY_INLINE V operator()(D d, V) const {
    return hn::Set(d, 1.0f);
  }
};
struct ReluGrad {
  template <class D, class V>
  HWY_INLINE V operator()(D d, V x) const {
    return hn::IfThenElseZero(hn::Gt(x, hn::Zero(d)), hn::Set(d, 1.0f));
  }
};
struct GeluGrad {  // Phi(x) + x phi(x)
  template <class D, class V>
  HWY_INLINE V operator()(D d, V x) const {
    const V t = hn::Mul(hn::Abs(x), hn::Set(d, 0.70710678118654752f));
    const V h = erfc_nonneg_vec(d, t, -0.69314718055994531f);  // 0.5 erfc(|x| / sqrt 2)
    const V cdf = hn::IfThenElse(hn::Lt(x, hn::Zero(d)), h, hn::Sub(hn::Set(d, 1.0f), h));
    const V pdf = hn::Mul(hn::Set(d, 0.3989422804014327f),
                          exp_vec(d, hn::Mul(hn::Set(d, -0.5f), hn::Mul(x, x))));
    return hn::MulAdd(x, pdf, cdf);
  }
};
struct GeluTanhGrad {  // x s(2u), u = k (x + c x^3):  s + 2 x s (1 - s) k (1 + 3 c x^2)
  template <class D, class V>
  HWY_INLINE V operator()(D d, V x) const {
    const V x2 = hn::Mul(x, x);
    const V two_k = hn::Set(d, 1.5957691216057308f);
    const V z = hn::Mul(two_k, hn::Mul(x, hn::MulAdd(hn::Set(d, 0.044715f), x2, hn::Set(d, 1.0f))));
    V s, q;
    sigmoid_slope(d, z, s, q);
    const V du = hn::Mul(two_k, hn::MulAdd(hn::Set(d, 3.0f * 0.044715f), x2, hn::Set(d, 1.0f)));
    return hn::MulAdd(hn::Mul(x, q), du, s);
  }
};
struct SiluGrad {  // s (1 + x (1 - s)) = s + x s (1 - s)
  template <class D, class V>
  HWY_INLINE V operator()(D d, V x) const {
    V s, q;
    sigmoid_slope(d, x, s, q);
    return hn::MulAdd(x, q, s);
  }
};

template <class Op>
HWY_INLINE void act_grad_map(const Op& op, const float* x, const float* dy, float* dx, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  for (size_t i = 0; i < n; i += N) {
    const size_t c = n - i < N ? n - i : N;
    const auto v = load_n(d, x + i, c, 0.0f);
    store_n(d, hn::Mul(load_n(d, dy + i, c, 0.0f), op(d, v)), dx + i, c);
  }
}

void act_backward_flat(int act, const float* x, const float* dy, float* dx, size_t n) {
  switch (act) {
    case 0:
      return act_grad_map(IdentityGrad(), x, dy, dx, n);
    case 1:
      return act_grad_map(ReluGrad(), x, dy, dx, n);
    case 2:
      return act_grad_map(GeluGrad(), x, dy, dx, n);
    case 3:
      return act_grad_map(GeluTanhGrad(), x, dy, dx, n);
    default:
      return act_grad_map(SiluGrad(), x, dy, dx, n);
  }
}

// Rows r of x, dy, dx with their own row strides (n = cols floats each).
void act_backward_kernel(int act, const float* x, size_t ldx, const float* dy, size_t lddy,
                         float* dx, size_t lddx, size_t rows, size_t cols) {
  for (size_t r = 0; r < rows; ++r)
    act_backward_flat(act, x + r * ldx, dy + r * lddy, dx + r * lddx, cols);
}

void swiglu_backward_flat(const float* a, const float* b, const float* dy, float* da, float* db,
                          size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  for (size_t i = 0; i < n; i += N) {
    const size_t c = n - i < N ? n - i : N;
    const auto va = load_n(d, a + i, c, 0.0f), vb = load_n(d, b + i, c, 0.0f);
    const auto g = load_n(d, dy + i, c, 0.0f);
    hn::Vec<decltype(d)> s, q;
    sigmoid_slope(d, va, s, q);
    const auto silu = hn::Mul(va, s), dsilu = hn::MulAdd(va, q, s);
    store_n(d, hn::Mul(hn::Mul(g, vb), dsilu), da + i, c);
    store_n(d, hn::Mul(g, silu), db + i, c);
  }
}

// Rows of a, b (stride ldab), dy, da (stride ld) and db (stride lddb).
void swiglu_backward_kernel(const float* a, const float* b, size_t ldab, const float* dy, float* da,
                            size_t ld, float* db, size_t lddb, size_t rows, size_t cols) {
  for (size_t r = 0; r < rows; ++r)
    swiglu_backward_flat(a + r * ldab, b + r * ldab, dy + r * ld, da + r * ld, db + r * lddb, cols);
}

// Sum over the row of f(chunk) (tail lanes padded with `pad`, f(pad) must be 0).
template <class D, class F>
HWY_INLINE float row_sum(D d, const float* x, size_t n, float pad, const F& f) {
  const size_t N = hn::Lanes(d);
  auto s0 = hn::Zero(d), s1 = hn::Zero(d);
  size_t i = 0;
  for (; i + 2 * N <= n; i += 2 * N) {
    s0 = hn::Add(s0, f(hn::LoadU(d, x + i)));
    s1 = hn::Add(s1, f(hn::LoadU(d, x + i + N)));
  }
  for (; i < n; i += N) s0 = hn::Add(s0, f(load_n(d, x + i, n - i < N ? n - i : N, pad)));
  return hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1)));
}

// Rows [0, rows) of one block: dx, and the block's partial sums pg[c] = sum_r dy xhat,
// pb[c] = sum_r dy (pb may be null). rms: RMSNorm (no mean, no bias).
void norm_backward_kernel(bool rms, const float* x, const float* g, const float* dy, float* dx,
                          float* pg, float* pb, size_t rows, size_t cols, float eps) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const float inv_n = 1.0f / static_cast<float>(cols);
  for (size_t c = 0; c < cols; ++c) {
    pg[c] = 0.0f;
    if (pb) pb[c] = 0.0f;
  }
  for (size_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    const float* dyr = dy + r * cols;
    float* dxr = dx + r * cols;
    float mean = 0.0f, var;
    if (rms) {
      var = row_sum(d, xr, cols, 0.0f, [](auto v) { return hn::Mul(v, v); }) * inv_n;
    } else {
      mean = row_sum(d, xr, cols, 0.0f, [](auto v) { return v; }) * inv_n;
      const auto vm = hn::Set(d, mean);
      var = row_sum(d, xr, cols, mean,
                    [&](auto v) {
                      const auto t = hn::Sub(v, vm);
                      return hn::Mul(t, t);
                    }) *
            inv_n;
    }
    const float rstd = 1.0f / std::sqrt(var + eps);
    const auto vm = hn::Set(d, mean), vr = hn::Set(d, rstd);
    // m1 = mean(g dy), m2 = mean(g dy xhat); block partials of dg, db
    auto a1 = hn::Zero(d), a2 = hn::Zero(d);
    for (size_t i = 0; i < cols; i += N) {
      const size_t c = cols - i < N ? cols - i : N;
      const auto xh = hn::Mul(hn::Sub(load_n(d, xr + i, c, mean), vm), vr);
      const auto vdy = load_n(d, dyr + i, c, 0.0f);
      const auto gdy = hn::Mul(load_n(d, g + i, c, 0.0f), vdy);
      a1 = hn::Add(a1, gdy);
      a2 = hn::MulAdd(gdy, xh, a2);
      store_n(d, hn::MulAdd(vdy, xh, load_n(d, pg + i, c, 0.0f)), pg + i, c);
      if (pb) store_n(d, hn::Add(vdy, load_n(d, pb + i, c, 0.0f)), pb + i, c);
    }
    const auto m1 = rms ? hn::Zero(d) : hn::Set(d, hn::GetLane(hn::SumOfLanes(d, a1)) * inv_n);
    const auto m2 = hn::Set(d, hn::GetLane(hn::SumOfLanes(d, a2)) * inv_n);
    for (size_t i = 0; i < cols; i += N) {
      const size_t c = cols - i < N ? cols - i : N;
      const auto xh = hn::Mul(hn::Sub(load_n(d, xr + i, c, mean), vm), vr);
      const auto gdy = hn::Mul(load_n(d, g + i, c, 0.0f), load_n(d, dyr + i, c, 0.0f));
      store_n(d, hn::Mul(vr, hn::NegMulAdd(xh, m2, hn::Sub(gdy, m1))), dxr + i, c);
    }
  }
}

// out[c] = sum over rows of dy[r, c] (row stride ld; float, this block only).
void col_sum_kernel(const float* dy, size_t ld, float* out, size_t rows, size_t cols) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + 2 * N <= cols; i += 2 * N) {
    auto s0 = hn::Zero(d), s1 = hn::Zero(d);
    for (size_t r = 0; r < rows; ++r) {
      s0 = hn::Add(s0, hn::LoadU(d, dy + r * ld + i));
      s1 = hn::Add(s1, hn::LoadU(d, dy + r * ld + i + N));
    }
    hn::StoreU(s0, d, out + i);
    hn::StoreU(s1, d, out + i + N);
  }
  for (; i < cols; i += N) {
    const size_t c = cols - i < N ? cols - i : N;
    auto s = hn::Zero(d);
    for (size_t r = 0; r < rows; ++r) s = hn::Add(s, load_n(d, dy + r * ld + i, c, 0.0f));
    store_n(d, s, out + i, c);
  }
}

void cross_entropy_kernel(const float* z, const int32_t* targets, size_t rows, size_t cols,
                          float* dz, double k, double* loss, double eps) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  const float ninf = -HUGE_VALF;
  for (size_t r = 0; r < rows; ++r) {
    const float* zr = z + r * cols;
    float* dzr = dz ? dz + r * cols : nullptr;
    const int32_t t = targets[r];
    if (t < 0) {
      loss[r] = 0.0;
      if (dzr) std::memset(dzr, 0, cols * sizeof(float));
      continue;
    }
    auto vmax = hn::Set(d, ninf);
    for (size_t i = 0; i < cols; i += N)
      vmax = hn::Max(vmax, load_n(d, zr + i, cols - i < N ? cols - i : N, ninf));
    const float mx = hn::GetLane(hn::MaxOfLanes(d, vmax));
    const auto vmx = hn::Set(d, mx);
    auto s0 = hn::Zero(d), s1 = hn::Zero(d);
    size_t i = 0;
    for (; i + 2 * N <= cols; i += 2 * N) {
      s0 = hn::Add(s0, exp_vec(d, hn::Sub(hn::LoadU(d, zr + i), vmx)));
      s1 = hn::Add(s1, exp_vec(d, hn::Sub(hn::LoadU(d, zr + i + N), vmx)));
    }
    for (; i < cols; i += N)
      s0 = hn::Add(s0,
                   exp_vec(d, hn::Sub(load_n(d, zr + i, cols - i < N ? cols - i : N, ninf), vmx)));
    const double sum = hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1)));
    const double lse = double(mx) + std::log(sum);
    const double zt = zr[t];
    if (eps == 0.0) {
      loss[r] = lse - zt;
    } else {  // target q = (1 - eps) onehot(t) + eps / cols: lse - (1 - eps) z_t - eps mean(z)
      double zsum = 0;
      for (size_t c = 0; c < cols; ++c) zsum += zr[c];
      loss[r] = lse - (1.0 - eps) * zt - eps * zsum / static_cast<double>(cols);
    }
    if (!dzr) continue;
    const float ueps = static_cast<float>(k * eps / static_cast<double>(cols));
    const auto vl = hn::Set(d, static_cast<float>(lse));
    const auto vk = hn::Set(d, static_cast<float>(k));
    for (i = 0; i < cols; i += N) {
      const size_t c = cols - i < N ? cols - i : N;
      store_n(d, hn::Mul(vk, exp_vec(d, hn::Sub(load_n(d, zr + i, c, ninf), vl))), dzr + i, c);
    }
    if (eps != 0.0)  // dz = k (softmax - q)
      for (size_t c = 0; c < cols; ++c) dzr[c] -= ueps;
    dzr[t] = static_cast<float>(k * (std::exp(zt - lse) - (1.0 - eps) - eps / double(cols)));
  }
}

void softmax_backward_kernel(const float* P, size_t ldp, float* dP, size_t lddp, size_t rows,
                             size_t cols) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  for (size_t t = 0; t < rows; ++t) {
    const float* pr = P + t * ldp;
    float* dr = dP + t * lddp;
    auto s0 = hn::Zero(d), s1 = hn::Zero(d);
    size_t i = 0;
    for (; i + 2 * N <= cols; i += 2 * N) {
      s0 = hn::MulAdd(hn::LoadU(d, pr + i), hn::LoadU(d, dr + i), s0);
      s1 = hn::MulAdd(hn::LoadU(d, pr + i + N), hn::LoadU(d, dr + i + N), s1);
    }
    for (; i < cols; i += N) {
      const size_t c = cols - i < N ? cols - i : N;
      s0 = hn::MulAdd(load_n(d, pr + i, c, 0.0f), load_n(d, dr + i, c, 0.0f), s0);
    }
    const auto dot = hn::Set(d, hn::GetLane(hn::SumOfLanes(d, hn::Add(s0, s1))));
    for (i = 0; i < cols; i += N) {
      const size_t c = cols - i < N ? cols - i : N;
      const auto p = load_n(d, pr + i, c, 0.0f);
      store_n(d, hn::Mul(p, hn::Sub(load_n(d, dr + i, c, 0.0f), dot)), dr + i, c);
    }
  }
}

}  // namespace posformer::kernels::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace posformer::kernels::cpu {

HWY_EXPORT(act_backward_kernel);
HWY_EXPORT(swiglu_backward_kernel);
HWY_EXPORT(norm_backward_kernel);
HWY_EXPORT(col_sum_kernel);
HWY_EXPORT(cross_entropy_kernel);
HWY_EXPORT(softmax_backward_kernel);

namespace {
// Element-wise transcendental work: a team pays off from ~16K floats. Row reductions use
// fixed blocks of kRowBlock rows (partials summed in block order, see the header).
constexpr int64_t kActThreshold = int64_t{1} << 14;
constexpr int64_t kRowThreshold = int64_t{1} << 15;
constexpr int64_t kRowBlock = 32;

// Runs f(block) for every block of kRowBlock rows, blocks split over the team.
template <class F>
void for_row_blocks(int64_t rows, int64_t cols, const F& f) {
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  parallel_range(blocks, 1, use_omp(rows * cols, kRowThreshold), [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) f(b, b * kRowBlock, std::min(rows, (b + 1) * kRowBlock));
  });
}

// dst[c] += sum over blocks (in order, double) of part[block * cols + c].
void add_block_sums(const std::vector<float>& part, int64_t blocks, int64_t cols, float* dst) {
  for (int64_t c = 0; c < cols; ++c) {
    double s = 0;
    for (int64_t b = 0; b < blocks; ++b) s += part[static_cast<size_t>(b * cols + c)];
    dst[c] += static_cast<float>(s);
  }
}

void norm_backward(bool rms, const float* x, const float* g, const float* dy, float* dx, float* dg,
                   float* db, int64_t rows, int64_t cols, float eps) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  std::vector<float> pg(static_cast<size_t>(blocks * cols)), pb(db ? pg.size() : 0);
  for_row_blocks(rows, cols, [&](int64_t b, int64_t r0, int64_t r1) {
    HWY_DYNAMIC_DISPATCH(norm_backward_kernel)
    (rms, x + r0 * cols, g, dy + r0 * cols, dx + r0 * cols, pg.data() + b * cols,
     db ? pb.data() + b * cols : nullptr, size_t(r1 - r0), size_t(cols), eps);
  });
  add_block_sums(pg, blocks, cols, dg);
  if (db) add_block_sums(pb, blocks, cols, db);
}
}  // namespace

void act_backward(ops::Act act, const float* x, const float* dy, float* dx, int64_t n) {
  if (n <= 0) return;
  const int a = static_cast<int>(act);
  const int64_t threshold = a <= 1 ? (int64_t{1} << 18) : kActThreshold;
  parallel_range(n, 16, use_omp(n, threshold), [&](int64_t lo, int64_t hi) {
    const size_t m = size_t(hi - lo);
    HWY_DYNAMIC_DISPATCH(act_backward_kernel)(a, x + lo, m, dy + lo, m, dx + lo, m, 1, m);
  });
}

void act_backward_rows(ops::Act act, const float* x, int64_t ldx, const float* dy, int64_t lddy,
                       float* dx, int64_t lddx, int64_t rows, int64_t cols, uint16_t* dxb) {
  if (rows <= 0 || cols <= 0) return;
  const int a = static_cast<int>(act);
  const int64_t threshold = a <= 1 ? (int64_t{1} << 18) : kActThreshold;
  parallel_range(rows, 1, use_omp(rows * cols, threshold), [&](int64_t lo, int64_t hi) {
    row_blocks(lo, hi, cols, dxb != nullptr, [&](int64_t r, int64_t e) {  // dxb: while in cache
      HWY_DYNAMIC_DISPATCH(act_backward_kernel)
      (a, x + r * ldx, size_t(ldx), dy + r * lddy, size_t(lddy), dx + r * lddx, size_t(lddx),
       size_t(e - r), size_t(cols));
      if (dxb)
        for (int64_t i = r; i < e; ++i) to_bf16_serial(dx + i * lddx, dxb + i * cols, cols);
    });
  });
}

void swiglu_backward(const float* a, const float* b, const float* dy, float* da, float* db,
                     int64_t n) {
  if (n <= 0) return;
  parallel_range(n, 16, use_omp(n, kActThreshold), [&](int64_t lo, int64_t hi) {
    const size_t m = size_t(hi - lo);
    HWY_DYNAMIC_DISPATCH(swiglu_backward_kernel)
    (a + lo, b + lo, m, dy + lo, da + lo, m, db + lo, m, 1, m);
  });
}

void swiglu_backward_rows(const float* a, const float* b, int64_t ldab, const float* dy, float* da,
                          int64_t ld, float* db, int64_t lddb, int64_t rows, int64_t cols,
                          uint16_t* dab, uint16_t* dbb) {
  if (rows <= 0 || cols <= 0) return;
  const bool round = dab && dbb;
  parallel_range(rows, 1, use_omp(rows * cols, kActThreshold), [&](int64_t lo, int64_t hi) {
    row_blocks(lo, hi, cols, round, [&](int64_t r, int64_t e) {  // rounded while in cache
      HWY_DYNAMIC_DISPATCH(swiglu_backward_kernel)
      (a + r * ldab, b + r * ldab, size_t(ldab), dy + r * ld, da + r * ld, size_t(ld),
       db + r * lddb, size_t(lddb), size_t(e - r), size_t(cols));
      if (round)
        for (int64_t i = r; i < e; ++i) {
          to_bf16_serial(da + i * ld, dab + i * cols, cols);
          to_bf16_serial(db + i * lddb, dbb + i * cols, cols);
        }
    });
  });
}

void layernorm_backward(const float* x, const float* g, const float* dy, float* dx, float* dg,
                        float* db, int64_t rows, int64_t cols, float eps) {
  norm_backward(false, x, g, dy, dx, dg, db, rows, cols, eps);
}

void rmsnorm_backward(const float* x, const float* g, const float* dy, float* dx, float* dg,
                      int64_t rows, int64_t cols, float eps) {
  norm_backward(true, x, g, dy, dx, dg, nullptr, rows, cols, eps);
}

void bias_grad(const float* dy, int64_t ld, float* db, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  const int64_t blocks = (rows + kRowBlock - 1) / kRowBlock;
  std::vector<float> part(static_cast<size_t>(blocks * cols));
  for_row_blocks(rows, cols, [&](int64_t b, int64_t r0, int64_t r1) {
    HWY_DYNAMIC_DISPATCH(col_sum_kernel)
    (dy + r0 * ld, size_t(ld), part.data() + b * cols, size_t(r1 - r0), size_t(cols));
  });
  add_block_sums(part, blocks, cols, db);
}

void copy_rows(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  parallel_range(rows, 1, use_omp(rows * cols, int64_t{1} << 18), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r)
      std::memcpy(dst + r * ldd, src + r * lds, size_t(cols) * sizeof(float));
  });
}

void cross_entropy_rows(const float* z, const int32_t* targets, int64_t rows, int64_t cols,
                        float* dz, double k, double* loss, double eps) {
  if (rows <= 0 || cols <= 0) return;
  parallel_range(rows, 1, use_omp(rows * cols, kRowThreshold), [&](int64_t lo, int64_t hi) {
    HWY_DYNAMIC_DISPATCH(cross_entropy_kernel)
    (z + lo * cols, targets + lo, size_t(hi - lo), size_t(cols), dz ? dz + lo * cols : nullptr, k,
     loss + lo, eps);
  });
}

void softmax_backward_rows(const float* P, int64_t ldp, float* dP, int64_t lddp, int64_t rows,
                           int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  HWY_DYNAMIC_DISPATCH(softmax_backward_kernel)
  (P, size_t(ldp), dP, size_t(lddp), size_t(rows), size_t(cols));
}

}  // namespace posformer::kernels::cpu
#endif  // HWY_ONCE
