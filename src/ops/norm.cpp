// LayerNorm / RMSNorm: scalar reference and the public entry points.
#include "posformer/ops/norm.h"

#include <cmath>

#include "../kernels/cpu/kernels.h"
#include "posformer/core/error.h"

namespace posformer::ops {

namespace {
void check_norm(const char* op, const float* x, const float* g, const float* y, int64_t rows,
                int64_t cols, float eps) {
  PF_CHECK(rows >= 0 && cols >= 0, "[", op, "] sizes must be >= 0, got rows=", rows,
           " cols=", cols);
  PF_CHECK(eps >= 0.0f, "[", op, "] eps must be >= 0, got ", eps);
  PF_CHECK(rows * cols == 0 || (x && g && y), "[", op, "] null pointer (x, gamma or y)");
}
}  // namespace

namespace ref {

void layernorm(const float* x, const float* g, const float* b, float* y, int64_t rows, int64_t cols,
               float eps) {
  check_norm("layernorm", x, g, y, rows, cols, eps);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    double mean = 0.0, var = 0.0;
    for (int64_t j = 0; j < cols; ++j) mean += xr[j];
    mean /= double(cols);
    for (int64_t j = 0; j < cols; ++j) var += (xr[j] - mean) * (xr[j] - mean);
    var /= double(cols);
    const double rstd = 1.0 / std::sqrt(var + double(eps));
    for (int64_t j = 0; j < cols; ++j)
      yr[j] = static_cast<float>((xr[j] - mean) * rstd * g[j] + (b ? double(b[j]) : 0.0));
  }
}

void rmsnorm(const float* x, const float* g, float* y, int64_t rows, int64_t cols, float eps) {
  check_norm("rmsnorm", x, g, y, rows, cols, eps);
  for (int64_t r = 0; r < rows; ++r) {
    const float* xr = x + r * cols;
    float* yr = y + r * cols;
    double ms = 0.0;
    for (int64_t j = 0; j < cols; ++j) ms += double(xr[j]) * xr[j];
    const double rstd = 1.0 / std::sqrt(ms / double(cols) + double(eps));
    for (int64_t j = 0; j < cols; ++j) yr[j] = static_cast<float>(xr[j] * rstd * g[j]);
  }
}

}  // namespace ref

void layernorm(const float* x, const float* g, const float* b, float* y, int64_t rows, int64_t cols,
               float eps) {
  layernorm(x, g, b, y, rows, cols, eps, nullptr);
}

void rmsnorm(const float* x, const float* g, float* y, int64_t rows, int64_t cols, float eps) {
  rmsnorm(x, g, y, rows, cols, eps, nullptr);
}

void layernorm(const float* x, const float* g, const float* b, float* y, int64_t rows, int64_t cols,
               float eps, uint16_t* y_bf16) {
  check_norm("layernorm", x, g, y, rows, cols, eps);
  kernels::cpu::layernorm(x, g, b, y, rows, cols, eps, y_bf16);
}

void rmsnorm(const float* x, const float* g, float* y, int64_t rows, int64_t cols, float eps,
             uint16_t* y_bf16) {
  check_norm("rmsnorm", x, g, y, rows, cols, eps);
  kernels::cpu::rmsnorm(x, g, y, rows, cols, eps, y_bf16);
}

}  // namespace posformer::ops
