// Element-wise activations, fp32. y may alias x.
//
//   relu(x)      = max(x, 0)
//   gelu(x)      = 0.5 x (1 + erf(x / sqrt(2)))                       exact (BERT, PyTorch default)
//   gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))   (GPT-2)
//   silu(x)      = x / (1 + exp(-x))
//   swiglu:      y = silu(a) * b                                      (LLaMA FFN gate)
//
// bias_act fuses the bias of the preceding linear: y[r, c] = act(y[r, c] + bias[c]) (bias may be
// null).
#pragma once
#include <cstdint>
#include <string>

namespace posformer::ops {

enum class Act { Identity, Relu, Gelu, GeluTanh, Silu };
Act act_from_name(
    const std::string& name);  // "relu" | "gelu" | "gelu_tanh" | "silu"; throws otherwise
const char* act_name(Act a);

void activation(Act act, const float* x, float* y, int64_t n);
// The same, and y_bf16[i] = y[i] rounded to bfloat16 bits (ops::to_bf16_bits) in the same pass:
// the input of a bf16 matmul (y_bf16 null: plain activation).
void activation(Act act, const float* x, float* y, int64_t n, uint16_t* y_bf16);
void bias_act(Act act, float* y, const float* bias, int64_t rows, int64_t cols);
void swiglu(const float* a, const float* b, float* y, int64_t n);
// y[i] += x[i]   (residual add)
void add_inplace(float* y, const float* x, int64_t n);
// y[i] = x[i] (the residual stream kept for backward): split between the threads when large
void copy(const float* x, float* y, int64_t n);

namespace ref {
void activation(Act act, const float* x, float* y, int64_t n);
void bias_act(Act act, float* y, const float* bias, int64_t rows, int64_t cols);
void swiglu(const float* a, const float* b, float* y, int64_t n);
void add_inplace(float* y, const float* x, int64_t n);
}  // namespace ref

// Backward: x is the forward INPUT (pre-activation); dx = dy * act'(x) (dx may alias dy).
void activation_backward(Act act, const float* x, const float* dy, float* dx, int64_t n);
// swiglu y = silu(a) * b: da = dy * b * silu'(a), db = dy * silu(a)  (da/db may alias dy? no)
void swiglu_backward(const float* a, const float* b, const float* dy, float* da, float* db,
                     int64_t n);
// db[c] += sum_r dy[r, c]
void bias_grad(const float* dy, float* db, int64_t rows, int64_t cols);

}  // namespace posformer::ops
