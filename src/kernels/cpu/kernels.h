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
// Vectorised erf (max abs error ~1e-7); exposed for tests, GELU uses erfc directly.
void erf(const float* x, float* y, int64_t n);

void softmax_rows(float* x, int64_t rows, int64_t cols, int64_t ld);

void layernorm(const float* x, const float* g, const float* b, float* y, int64_t rows, int64_t cols,
               float eps);
void rmsnorm(const float* x, const float* g, float* y, int64_t rows, int64_t cols, float eps);

void rope_apply(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t ld, int64_t R,
                bool interleaved, const float* cos, const float* sin, float sign);

}  // namespace posformer::kernels::cpu
