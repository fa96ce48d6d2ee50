// Row softmax: scalar reference and the public entry point.
#include "posformer/ops/softmax.h"

#include <cmath>
#include <limits>

#include "../kernels/cpu/kernels.h"
#include "posformer/core/error.h"

namespace posformer::ops {

namespace {
void check_softmax(const float* x, int64_t rows, int64_t cols, int64_t ld) {
  PF_CHECK(rows >= 0 && cols >= 0, "[softmax] sizes must be >= 0, got rows=", rows, " cols=", cols);
  PF_CHECK(ld >= cols, "[softmax] row stride ld must be >= cols, got ld=", ld, " cols=", cols);
  PF_CHECK(rows * cols == 0 || x, "[softmax] null pointer");
}
}  // namespace

namespace ref {

void softmax_rows(float* x, int64_t rows, int64_t cols, int64_t ld) {
  check_softmax(x, rows, cols, ld);
  const float ninf = -std::numeric_limits<float>::infinity();
  for (int64_t r = 0; r < rows; ++r) {
    float* row = x + r * ld;
    float mx = ninf;
    for (int64_t j = 0; j < cols; ++j) mx = std::max(mx, row[j]);
    if (mx == ninf) {  // fully masked: all zeros
      for (int64_t j = 0; j < cols; ++j) row[j] = 0.0f;
      continue;
    }
    double sum = 0.0;
    for (int64_t j = 0; j < cols; ++j) sum += std::exp(double(row[j]) - double(mx));
    for (int64_t j = 0; j < cols; ++j)
      row[j] = static_cast<float>(std::exp(double(row[j]) - double(mx)) / sum);
  }
}

}  // namespace ref

void softmax_rows(float* x, int64_t rows, int64_t cols, int64_t ld) {
  check_softmax(x, rows, cols, ld);
  kernels::cpu::softmax_rows(x, rows, cols, ld);
}

}  // namespace posformer::ops
