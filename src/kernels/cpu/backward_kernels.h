// Internal fp32 CPU kernels for the training backward pass (Highway SIMD, runtime dispatch,
// OpenMP over fixed slices). Callers (src/ops/backward.cpp, src/attention) validate arguments.
//
// Determinism: every reduction across rows (norm weight/bias gradients, bias gradients, the
// loss) is taken over FIXED blocks of rows and the block partials are summed in block order,
// so results do not depend on the thread count or on scheduling.
#pragma once
#include <cstdint>

#include "posformer/ops/activation.h"

namespace posformer::kernels::cpu {

// dx = dy * act'(x) over n floats; dx may alias dy.
void act_backward(ops::Act act, const float* x, const float* dy, float* dx, int64_t n);
// Same over rows x cols, each operand with its own row stride (ld*); dxb (optional): dx rounded
// to bfloat16 bits as well, dense [rows, cols], in the same pass (a bf16 matmul's dy).
void act_backward_rows(ops::Act act, const float* x, int64_t ldx, const float* dy, int64_t lddy,
                       float* dx, int64_t lddx, int64_t rows, int64_t cols,
                       uint16_t* dxb = nullptr);
// y = silu(a) * b:  da = dy * b * silu'(a),  db = dy * silu(a); da may alias dy.
void swiglu_backward(const float* a, const float* b, const float* dy, float* da, float* db,
                     int64_t n);
// Same over rows: a, b with row stride ldab; dy, da with ld; db with lddb. dab, dbb (optional,
// together): da and db rounded to bfloat16 bits as well, dense [rows, cols], in the same pass.
void swiglu_backward_rows(const float* a, const float* b, int64_t ldab, const float* dy, float* da,
                          int64_t ld, float* db, int64_t lddb, int64_t rows, int64_t cols,
                          uint16_t* dab = nullptr, uint16_t* dbb = nullptr);
// Row statistics recomputed from x; dx overwritten (may alias dy); dg (and db when not null)
// accumulated (+=).
void layernorm_backward(const float* x, const float* g, const float* dy, float* dx, float* dg,
                        float* db, int64_t rows, int64_t cols, float eps);
void rmsnorm_backward(const float* x, const float* g, const float* dy, float* dx, float* dg,
                      int64_t rows, int64_t cols, float eps);
// db[c] += sum_r dy[r, c]  (dy rows ld floats apart)
void bias_grad(const float* dy, int64_t ld, float* db, int64_t rows, int64_t cols);
// dst rows = src rows (cols floats each), OpenMP over rows for large copies.
void copy_rows(const float* src, int64_t lds, float* dst, int64_t ldd, int64_t rows, int64_t cols);
// Per row r with target t = targets[r] >= 0 and the smoothed target distribution
// q = (1 - eps) onehot(t) + eps / cols (eps = 0: one-hot):
//   loss[r] = logsumexp(z_r) - sum_c q_c z_r[c],  dz_r = (softmax(z_r) - q) * k  (dz not null);
// rows with t < 0: loss 0, dz_r = 0. dz may alias z. Targets must be < cols (checked by the
// caller).
void cross_entropy_rows(const float* z, const int32_t* targets, int64_t rows, int64_t cols,
                        float* dz, double k, double* loss, double eps = 0.0);
// Softmax backward in place for attention, rows of a [rows, cols] block with row stride ld:
// dP[t, s] = P[t, s] * (dP[t, s] - sum_s' P[t, s'] dP[t, s']) over s < cols. Single-threaded.
void softmax_backward_rows(const float* P, int64_t ldp, float* dP, int64_t lddp, int64_t rows,
                           int64_t cols);

}  // namespace posformer::kernels::cpu
