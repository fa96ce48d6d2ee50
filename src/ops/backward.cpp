// Backward passes of the element-wise and normalisation ops, and the cross-entropy loss.
// The arithmetic lives in SIMD kernels (src/kernels/cpu/backward_kernels.cpp): fp32 with the
// fast exp / erfc of hwy_util-inl.h; reductions over rows in fixed blocks, summed in double in
// block order, so the results do not depend on the thread count.
#include <vector>

#include "../kernels/cpu/backward_kernels.h"
#include "posformer/core/error.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/loss.h"
#include "posformer/ops/norm.h"

namespace posformer::ops {

void layernorm_backward(const float* x, const float* g, const float* dy, float* dx, float* dg,
                        float* db, int64_t rows, int64_t cols, float eps) {
  kernels::cpu::layernorm_backward(x, g, dy, dx, dg, db, rows, cols, eps);
}

void rmsnorm_backward(const float* x, const float* g, const float* dy, float* dx, float* dg,
                      int64_t rows, int64_t cols, float eps) {
  kernels::cpu::rmsnorm_backward(x, g, dy, dx, dg, rows, cols, eps);
}

void activation_backward(Act act, const float* x, const float* dy, float* dx, int64_t n) {
  kernels::cpu::act_backward(act, x, dy, dx, n);
}

void swiglu_backward(const float* a, const float* b, const float* dy, float* da, float* db,
                     int64_t n) {
  kernels::cpu::swiglu_backward(a, b, dy, da, db, n);
}

void bias_grad(const float* dy, float* db, int64_t rows, int64_t cols) {
  kernels::cpu::bias_grad(dy, cols, db, rows, cols);
}

CrossEntropy cross_entropy(const float* logits, const int32_t* targets, int64_t rows, int64_t vocab,
                           float* dlogits, float grad_scale, float label_smoothing) {
  PF_CHECK(label_smoothing >= 0.0f && label_smoothing < 1.0f,
           "[cross_entropy] label smoothing must be in [0, 1), got ", label_smoothing);
  CrossEntropy ce;
  for (int64_t r = 0; r < rows; ++r) {
    PF_CHECK(targets[r] < vocab, "[cross_entropy] target ", targets[r], " at row ", r,
             " is outside the vocabulary [0, ", vocab, ")");
    if (targets[r] >= 0) ++ce.count;
  }
  const double inv = ce.count ? 1.0 / static_cast<double>(ce.count) : 0.0;
  std::vector<double> row_loss(static_cast<size_t>(rows));
  kernels::cpu::cross_entropy_rows(logits, targets, rows, vocab, dlogits, grad_scale * inv,
                                   row_loss.data(), label_smoothing);
  double total = 0;  // in row order: independent of the thread count
  for (double l : row_loss) total += l;
  ce.loss = total * inv;
  return ce;
}

}  // namespace posformer::ops
