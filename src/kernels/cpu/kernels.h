// Internal fp32 CPU kernels: Highway SIMD with runtime dispatch, OpenMP over rows.
// Callers (src/ops) validate arguments; these assume sizes >= 0 and valid pointers.
#pragma once
#include <cstdint>

#include "posformer/ops/activation.h"

namespace posformer::kernels::cpu {

// y = act(x (+ bias[c])) over rows x cols contiguous floats; bias may be null; y may alias x.
void act_rows(ops::Act act, const float* x, const float* bias, float* y, int64_t rows,
              int64_t cols);
void swiglu(const float* a, const float* b, float* y, int64_t n);
void add_inplace(float* y, const float* x, int64_t n);
// y[i] = x[i], split between the threads from kMemBoundThreshold floats on
void copy(const float* x, float* y, int64_t n);
// Vectorised erf (max abs error ~1e-7); exposed for tests, GELU uses erfc directly.
void erf(const float* x, float* y, int64_t n);
// Dropout masks of ops/dropout.h in place on x[0, n) (n < 2^32): element i kept (times scale)
// iff bits 8..31 of fmix32(fmix32(i * 0x9e3779b9 ^ k1) ^ k2) are >= thr.
void dropout(float* x, int64_t n, uint32_t k1, uint32_t k2, uint32_t thr, float scale);

// rows x cols of x (row stride ldx) as bfloat16 bits into dense y [rows, cols]: round to nearest
// even, NaN kept (ops::to_bf16_bits); every SIMD target.
void to_bf16(const float* x, int64_t ldx, int64_t rows, int64_t cols, uint16_t* y);
// The same rounding of x[0, n) on the calling thread (inside another kernel's parallel slice).
void to_bf16_serial(const float* x, uint16_t* y, int64_t n);
// y = act(x) on x[0, n) and, when yb is not null, yb = y rounded to bfloat16 bits in the same
// pass over cache-sized blocks (the input of a bf16 matmul, written while y is still in cache).
void act_bf16(ops::Act act, const float* x, float* y, uint16_t* yb, int64_t n);

void softmax_rows(float* x, int64_t rows, int64_t cols, int64_t ld);

// yb (optional): y rounded to bfloat16 bits as well, row block by row block while in cache.
void layernorm(const float* x, const float* g, const float* b, float* y, int64_t rows, int64_t cols,
               float eps, uint16_t* yb = nullptr);
void rmsnorm(const float* x, const float* g, float* y, int64_t rows, int64_t cols, float eps,
             uint16_t* yb = nullptr);

void rope_apply(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t ld, int64_t R,
                bool interleaved, const float* cos, const float* sin, float sign);

}  // namespace posformer::kernels::cpu
