// Activations: name mapping, scalar reference and the public entry points.
#include "posformer/ops/activation.h"

#include <algorithm>
#include <cmath>

#include "../kernels/cpu/kernels.h"
#include "posformer/core/error.h"

namespace posformer::ops {

Act act_from_name(const std::string& name) {
  if (name == "relu") return Act::Relu;
  if (name == "gelu") return Act::Gelu;
  if (name == "gelu_tanh") return Act::GeluTanh;
  if (name == "silu") return Act::Silu;
  throw Error(str("[act] unknown activation '", name, "' (expected relu, gelu, gelu_tanh, silu)"));
}

const char* act_name(Act a) {
  switch (a) {
    case Act::Identity:
      return "identity";
    case Act::Relu:
      return "relu";
    case Act::Gelu:
      return "gelu";
    case Act::GeluTanh:
      return "gelu_tanh";
    case Act::Silu:
      return "silu";
  }
  throw Error("[act] unknown Act value");
}

namespace {

void check_n(const char* op, int64_t n, const void* p0, const void* p1) {
  PF_CHECK(n >= 0, "[", op, "] size must be >= 0, got ", n);
  PF_CHECK(n == 0 || (p0 && p1), "[", op, "] null pointer");
}

void check_act(Act a) {
  PF_CHECK(a == Act::Identity || a == Act::Relu || a == Act::Gelu || a == Act::GeluTanh ||
               a == Act::Silu,
           "[act] unknown Act value ", static_cast<int>(a));
}

}  // namespace

namespace ref {

namespace {
double act1(Act act, double x) {
  switch (act) {
    case Act::Identity:
      return x;
    case Act::Relu:
      return x > 0 ? x : 0.0;
    // 0.5 x (1 + erf(x / sqrt 2)) written with erfc to keep the negative tail accurate
    case Act::Gelu:
      return 0.5 * x * std::erfc(-x / std::sqrt(2.0));
    // 0.5 x (1 + tanh(z)) == x / (1 + exp(-2z)): same function, no cancellation for x << 0
    case Act::GeluTanh: {
      const double z = std::sqrt(2.0 / M_PI) * (x + 0.044715 * x * x * x);
      return x / (1.0 + std::exp(-2.0 * z));
    }
    case Act::Silu:
      return x / (1.0 + std::exp(-x));
  }
  return x;
}
}  // namespace

void activation(Act act, const float* x, float* y, int64_t n) {
  check_act(act);
  check_n("activation", n, x, y);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(act1(act, x[i]));
}

void bias_act(Act act, float* y, const float* bias, int64_t rows, int64_t cols) {
  check_act(act);
  PF_CHECK(rows >= 0 && cols >= 0, "[bias_act] sizes must be >= 0, got rows=", rows,
           " cols=", cols);
  PF_CHECK(rows * cols == 0 || y, "[bias_act] null pointer");
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      float& v = y[r * cols + c];
      v = static_cast<float>(act1(act, double(v) + (bias ? double(bias[c]) : 0.0)));
    }
}

void swiglu(const float* a, const float* b, float* y, int64_t n) {
  check_n("swiglu", n, a, b);
  check_n("swiglu", n, y, y);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(act1(Act::Silu, a[i]) * double(b[i]));
}

void add_inplace(float* y, const float* x, int64_t n) {
  check_n("add_inplace", n, y, x);
  for (int64_t i = 0; i < n; ++i) y[i] = static_cast<float>(double(y[i]) + double(x[i]));
}

}  // namespace ref

void activation(Act act, const float* x, float* y, int64_t n) {
  activation(act, x, y, n, nullptr);
}

void activation(Act act, const float* x, float* y, int64_t n, uint16_t* y_bf16) {
  check_act(act);
  check_n("activation", n, x, y);
  kernels::cpu::act_bf16(act, x, y, y_bf16, n);
}

void bias_act(Act act, float* y, const float* bias, int64_t rows, int64_t cols) {
  check_act(act);
  PF_CHECK(rows >= 0 && cols >= 0, "[bias_act] sizes must be >= 0, got rows=", rows,
           " cols=", cols);
  PF_CHECK(rows * cols == 0 || y, "[bias_act] null pointer");
  kernels::cpu::act_rows(act, y, bias, y, rows, cols);
}

void swiglu(const float* a, const float* b, float* y, int64_t n) {
  check_n("swiglu", n, a, b);
  check_n("swiglu", n, y, y);
  kernels::cpu::swiglu(a, b, y, n);
}

void add_inplace(float* y, const float* x, int64_t n) {
  check_n("add_inplace", n, y, x);
  kernels::cpu::add_inplace(y, x, n);
}

void copy(const float* x, float* y, int64_t n) {
  check_n("copy", n, y, x);
  kernels::cpu::copy(x, y, n);
}

}  // namespace posformer::ops
