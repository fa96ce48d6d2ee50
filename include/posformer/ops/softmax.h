// Row softmax, in place, over `rows` rows of `cols` contiguous floats (row stride ld >= cols):
//
//   y[r, j] = exp(x[r, j] - max_j x[r, :]) / sum_j exp(x[r, j] - max_j x[r, :])
//
// -inf entries (masked keys) give exactly 0. A row that is entirely -inf gives all zeros
// (a fully masked query attends to nothing) instead of NaN.
// Backward: dx = y * (dy - sum_j dy_j y_j).
#pragma once
#include <cstdint>

namespace posformer::ops {

void softmax_rows(float* x, int64_t rows, int64_t cols, int64_t ld);

namespace ref {
void softmax_rows(float* x, int64_t rows, int64_t cols, int64_t ld);
}

}  // namespace posformer::ops
