// Element-wise activations, SwiGLU and residual add (Highway, runtime dispatch).
#include <algorithm>
#include <cstddef>
#include <cstring>

#include "kernels.h"
#include "parallel.h"
#include "posformer/ops/packed_linear.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "../src/kernels/cpu/act_kernels.cpp"  // relative to include/
#include <hwy/foreach_target.h>                                  // IWYU pragma: keep
#include <hwy/highway.h>

#include "hwy_util-inl.h"

HWY_BEFORE_NAMESPACE();
namespace posformer::kernels::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

struct IdentityOp {
  template <class D, class V>
  HWY_INLINE V operator()(D, V x) const {
    return x;
  }
};
struct ReluOp {
  template <class D, class V>
  HWY_INLINE V operator()(D d, V x) const {
    return hn::Max(x, hn::Zero(d));
  }
};
struct GeluOp {
  template <class D, class V>
  HWY_INLINE V operator()(D d, V x) const {
    return gelu_vec(d, x);
  }
};
struct GeluTanhOp {
  template <class D, class V>
  HWY_INLINE V operator()(D d, V x) const {
    return gelu_tanh_vec(d, x);
  }
};
struct SiluOp {
  template <class D, class V>
  HWY_INLINE V operator()(D d, V x) const {
    return silu_vec(d, x);
  }
};
struct ErfOp {
  template <class D, class V>
  HWY_INLINE V operator()(D d, V x) const {
    return erf_vec(d, x);
  }
};

// y[i] = op(x[i] + bias[i]) for i < n; bias may be null.
template <class Op>
HWY_INLINE void map_row(const Op& op, const float* x, const float* bias, float* y, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  if (bias) {
    for (; i + N <= n; i += N) {
      hn::StoreU(op(d, hn::Add(hn::LoadU(d, x + i), hn::LoadU(d, bias + i))), d, y + i);
    }
    if (i < n) {
      const auto v = hn::Add(load_tail(d, x + i, n - i, 0.0f), load_tail(d, bias + i, n - i, 0.0f));
      store_tail(d, op(d, v), y + i, n - i);
    }
    return;
  }
  for (; i + 2 * N <= n; i += 2 * N) {
    const auto v0 = hn::LoadU(d, x + i);
    const auto v1 = hn::LoadU(d, x + i + N);
    hn::StoreU(op(d, v0), d, y + i);
    hn::StoreU(op(d, v1), d, y + i + N);
  }
  for (; i + N <= n; i += N) hn::StoreU(op(d, hn::LoadU(d, x + i)), d, y + i);
  if (i < n) store_tail(d, op(d, load_tail(d, x + i, n - i, 0.0f)), y + i, n - i);
}

template <class Op>
HWY_INLINE void map_rows(const Op& op, const float* x, const float* bias, float* y, size_t rows,
                         size_t cols) {
  for (size_t r = 0; r < rows; ++r) map_row(op, x + r * cols, bias, y + r * cols, cols);
}

// act: 0..4 = ops::Act, 5 = erf.
void act_rows_kernel(int act, const float* x, const float* bias, float* y, size_t rows,
                     size_t cols) {
  switch (act) {
    case 0:
      return map_rows(IdentityOp(), x, bias, y, rows, cols);
    case 1:
      return map_rows(ReluOp(), x, bias, y, rows, cols);
    case 2:
      return map_rows(GeluOp(), x, bias, y, rows, cols);
    case 3:
      return map_rows(GeluTanhOp(), x, bias, y, rows, cols);
    case 4:
      return map_rows(SiluOp(), x, bias, y, rows, cols);
    default:
      return map_rows(ErfOp(), x, bias, y, rows, cols);
  }
}

struct SwigluOp {
  template <class D, class V>
  HWY_INLINE V operator()(D d, V a, V b) const {
    return hn::Mul(silu_vec(d, a), b);
  }
};
struct AddOp {
  template <class D, class V>
  HWY_INLINE V operator()(D, V a, V b) const {
    return hn::Add(a, b);
  }
};

template <class Op>
HWY_INLINE void map_binary(const Op& op, const float* a, const float* b, float* y, size_t n) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) hn::StoreU(op(d, hn::LoadU(d, a + i), hn::LoadU(d, b + i)), d, y + i);
  if (i < n) {
    const auto va = load_tail(d, a + i, n - i, 0.0f), vb = load_tail(d, b + i, n - i, 0.0f);
    store_tail(d, op(d, va, vb), y + i, n - i);
  }
}

// Dropout (ops/dropout.h): element i0 + j of x kept iff bits 8..31 of
// h = fmix32(fmix32((i0 + j) * 0x9e3779b9 ^ k1) ^ k2) are >= thr; kept ones scaled.
void dropout_kernel(float* x, size_t n, uint32_t i0, uint32_t k1, uint32_t k2, uint32_t thr,
                    float scale) {
  const hn::ScalableTag<float> df;
  const hn::RebindToUnsigned<decltype(df)> du;
  const hn::RebindToSigned<decltype(df)> di;
  const size_t N = hn::Lanes(df);
  const auto fmix = [&](hn::Vec<decltype(du)> h) {
    h = hn::Xor(h, hn::ShiftRight<16>(h));
    h = hn::Mul(h, hn::Set(du, 0x85ebca6bu));
    h = hn::Xor(h, hn::ShiftRight<13>(h));
    h = hn::Mul(h, hn::Set(du, 0xc2b2ae35u));
    return hn::Xor(h, hn::ShiftRight<16>(h));
  };
  const auto golden = hn::Set(du, 0x9e3779b9u), vk1 = hn::Set(du, k1), vk2 = hn::Set(du, k2);
  const auto vthr = hn::Set(di, static_cast<int32_t>(thr));  // bits 8..31 fit an int32
  const auto vscale = hn::Set(df, scale);
  auto idx = hn::Iota(du, i0);
  const auto step = hn::Set(du, static_cast<uint32_t>(N));
  size_t i = 0;
  for (; i + N <= n; i += N, idx = hn::Add(idx, step)) {
    const auto h = fmix(hn::Xor(fmix(hn::Xor(hn::Mul(idx, golden), vk1)), vk2));
    const auto drop = hn::RebindMask(df, hn::Lt(hn::BitCast(di, hn::ShiftRight<8>(h)), vthr));
    hn::StoreU(hn::IfThenZeroElse(drop, hn::Mul(hn::LoadU(df, x + i), vscale)), df, x + i);
  }
  for (; i < n; ++i) {  // tail: the same hash, scalar
    const auto f = [](uint32_t h) {
      h ^= h >> 16, h *= 0x85ebca6bu, h ^= h >> 13, h *= 0xc2b2ae35u;
      return h ^ (h >> 16);
    };
    const uint32_t h = f(f((i0 + static_cast<uint32_t>(i)) * 0x9e3779b9u ^ k1) ^ k2);
    x[i] = (h >> 8) >= thr ? x[i] * scale : 0.0f;
  }
}

// bfloat16 bits of x[0, n) into y: round to nearest even, NaN kept quiet (ops::to_bf16_bits).
void to_bf16_kernel(const float* x, uint16_t* y, size_t n) {
  const hn::ScalableTag<float> df;
  const size_t N = hn::Lanes(df);
  size_t i = 0;
  for (; i + N <= n; i += N) store_bf16(df, hn::LoadU(df, x + i), y + i, N);
  for (; i < n; ++i) y[i] = ops::to_bf16_bits(x[i]);  // tail: the scalar definition
}

// op 0: y = silu(a) * b; op 1: y = a + b.
void binary_kernel(int op, const float* a, const float* b, float* y, size_t n) {
  if (op == 0) return map_binary(SwigluOp(), a, b, y, n);
  map_binary(AddOp(), a, b, y, n);
}

}  // namespace posformer::kernels::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace posformer::kernels::cpu {

HWY_EXPORT(act_rows_kernel);
HWY_EXPORT(binary_kernel);
HWY_EXPORT(dropout_kernel);
HWY_EXPORT(to_bf16_kernel);

namespace {
// Floats per call below which an OpenMP team costs more than it saves. Memory-bound ops
// (identity / bias add, relu, residual add) stay on one thread up to 1 MB: a team saves a few
// microseconds there on an idle machine but costs a scheduler time slice (milliseconds)
// whenever a worker has been preempted, which is frequent on a loaded 2-core machine
// (bench/RESULTS.md). Transcendental ones (GELU, SiLU, SwiGLU) are worth a team sooner.
constexpr int64_t kMemBoundThreshold = int64_t{1} << 18;
int64_t act_threshold(int act) {
  return act <= 1 ? kMemBoundThreshold : (int64_t{1} << 14);
}

void act_dispatch(int act, const float* x, const float* bias, float* y, int64_t rows,
                  int64_t cols) {
  if (rows <= 0 || cols <= 0) return;
  const bool par = use_omp(rows * cols, act_threshold(act));
  if (!bias) {  // flat: split the whole array, cache-line grain
    parallel_range(rows * cols, 16, par, [&](int64_t b, int64_t e) {
      HWY_DYNAMIC_DISPATCH(act_rows_kernel)(act, x + b, nullptr, y + b, 1, size_t(e - b));
    });
    return;
  }
  parallel_range(rows, 1, par, [&](int64_t b, int64_t e) {
    HWY_DYNAMIC_DISPATCH(act_rows_kernel)
    (act, x + b * cols, bias, y + b * cols, size_t(e - b), size_t(cols));
  });
}

void binary_dispatch(int op, const float* a, const float* b, float* y, int64_t n) {
  const bool par = use_omp(n, op == 0 ? (int64_t{1} << 14) : kMemBoundThreshold);
  parallel_range(n, 16, par, [&](int64_t lo, int64_t hi) {
    HWY_DYNAMIC_DISPATCH(binary_kernel)(op, a + lo, b + lo, y + lo, size_t(hi - lo));
  });
}
}  // namespace

static_assert(static_cast<int>(ops::Act::Identity) == 0 && static_cast<int>(ops::Act::Relu) == 1 &&
                  static_cast<int>(ops::Act::Gelu) == 2 &&
                  static_cast<int>(ops::Act::GeluTanh) == 3 &&
                  static_cast<int>(ops::Act::Silu) == 4,
              "act_rows_kernel switch assumes this order");

void act_rows(ops::Act act, const float* x, const float* bias, float* y, int64_t rows,
              int64_t cols) {
  if (act == ops::Act::Identity && !bias) {
    if (x != y && rows > 0 && cols > 0) std::memmove(y, x, size_t(rows * cols) * sizeof(float));
    return;
  }
  act_dispatch(static_cast<int>(act), x, bias, y, rows, cols);
}

void swiglu(const float* a, const float* b, float* y, int64_t n) {
  binary_dispatch(0, a, b, y, n);
}

void add_inplace(float* y, const float* x, int64_t n) {
  binary_dispatch(1, y, x, y, n);
}

void copy(const float* x, float* y, int64_t n) {
  parallel_range(n, 16, use_omp(n, kMemBoundThreshold), [&](int64_t lo, int64_t hi) {
    std::memcpy(y + lo, x + lo, static_cast<size_t>(hi - lo) * sizeof(float));
  });
}

void erf(const float* x, float* y, int64_t n) {
  act_dispatch(5, x, nullptr, y, 1, n);
}

void dropout(float* x, int64_t n, uint32_t k1, uint32_t k2, uint32_t thr, float scale) {
  // an integer hash and a multiply per element: a team pays off from 64K elements
  parallel_range(n, 16, use_omp(n, int64_t{1} << 16), [&](int64_t lo, int64_t hi) {
    HWY_DYNAMIC_DISPATCH(dropout_kernel)
    (x + lo, size_t(hi - lo), static_cast<uint32_t>(lo), k1, k2, thr, scale);
  });
}

void to_bf16_serial(const float* x, uint16_t* y, int64_t n) {
  if (n > 0) HWY_DYNAMIC_DISPATCH(to_bf16_kernel)(x, y, size_t(n));
}

void act_bf16(ops::Act act, const float* x, float* y, uint16_t* yb, int64_t n) {
  if (!yb) return act_rows(act, x, nullptr, y, 1, n);
  if (n <= 0) return;
  const int a = static_cast<int>(act);
  parallel_range(n, 16, use_omp(n, act_threshold(a)), [&](int64_t lo, int64_t hi) {
    row_blocks(lo, hi, 1, true, [&](int64_t b, int64_t e) {  // y rounded while in cache
      HWY_DYNAMIC_DISPATCH(act_rows_kernel)(a, x + b, nullptr, y + b, 1, size_t(e - b));
      HWY_DYNAMIC_DISPATCH(to_bf16_kernel)(y + b, yb + b, size_t(e - b));
    });
  });
}

void to_bf16(const float* x, int64_t ldx, int64_t rows, int64_t cols, uint16_t* y) {
  const auto f = [](const float* a, uint16_t* b, size_t n) {
    HWY_DYNAMIC_DISPATCH(to_bf16_kernel)(a, b, n);
  };
  if (ldx == cols)  // dense: one flat range
    return parallel_range(rows * cols, 32, use_omp(rows * cols, kMemBoundThreshold),
                          [&](int64_t lo, int64_t hi) { f(x + lo, y + lo, size_t(hi - lo)); });
  parallel_range(rows, 1, use_omp(rows * cols, kMemBoundThreshold), [&](int64_t lo, int64_t hi) {
    for (int64_t r = lo; r < hi; ++r) f(x + r * ldx, y + r * cols, size_t(cols));
  });
}

}  // namespace posformer::kernels::cpu
#endif  // HWY_ONCE
