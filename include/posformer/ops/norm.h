// Normalisation over the last dim (`cols`) of `rows` contiguous rows; y may alias x.
//
//   layernorm: y = (x - mean) / sqrt(var + eps) * g + b      var is the biased variance; b may be
//   null rmsnorm:   y = x / sqrt(mean(x^2) + eps) * g
//
// Backward (training issue): with xhat the normalised input and r = 1/sqrt(var+eps),
//   layernorm: dx = r * (g*dy - mean(g*dy) - xhat * mean(g*dy*xhat)),  dg = sum dy*xhat, db = sum
//   dy rmsnorm:   dx = r * (g*dy - xhat * mean(g*dy*xhat)),               dg = sum dy*xhat
#pragma once
#include <cstdint>

namespace posformer::ops {

void layernorm(const float* x, const float* g, const float* b, float* y, int64_t rows, int64_t cols,
               float eps);
void rmsnorm(const float* x, const float* g, float* y, int64_t rows, int64_t cols, float eps);
// The same, and y_bf16 = y rounded to bfloat16 bits (ops::to_bf16_bits), dense [rows, cols],
// in the same pass: the input of a bf16 matmul (y_bf16 null: plain norm).
void layernorm(const float* x, const float* g, const float* b, float* y, int64_t rows, int64_t cols,
               float eps, uint16_t* y_bf16);
void rmsnorm(const float* x, const float* g, float* y, int64_t rows, int64_t cols, float eps,
             uint16_t* y_bf16);

namespace ref {
void layernorm(const float* x, const float* g, const float* b, float* y, int64_t rows, int64_t cols,
               float eps);
void rmsnorm(const float* x, const float* g, float* y, int64_t rows, int64_t cols, float eps);
}  // namespace ref

// Backward (x is the forward input; dy the output gradient). dx is overwritten; dg, db are
// accumulated (+=). db may be null (no bias). Row statistics are recomputed from x.
void layernorm_backward(const float* x, const float* g, const float* dy, float* dx, float* dg,
                        float* db, int64_t rows, int64_t cols, float eps);
void rmsnorm_backward(const float* x, const float* g, const float* dy, float* dx, float* dg,
                      int64_t rows, int64_t cols, float eps);

}  // namespace posformer::ops
