// Activations a training forward keeps for backward (private to src/model).
#pragma once
#include <array>
#include <memory>
#include <string>
#include <vector>

#include "posformer/model/transformer.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/dropout.h"
#include "posformer/ops/packed_linear.h"

namespace posformer {

// The dropout key of one site of a stack's training forward (ModelConfig::dropout): layer l's
// sublayer sub (0 self-attention, 1 cross-attention, 2 FFN), or sub 3 = the input embeddings.
inline uint64_t dropout_key(const std::string& prefix, uint64_t seed, int64_t l, int sub) {
  const uint64_t stack = prefix == "encoder." ? 0 : 1;
  return ops::dropout_key(
      seed, (stack << 32 | static_cast<uint64_t>(l)) * 4 + static_cast<uint64_t>(sub));
}

// One sublayer (self-attention, cross-attention or FFN); also the inference workspace.
struct SubTape {
  Tensor norm_in;                    // input of the sublayer's norm (pre: x; post: x + f(x))
  Tensor h;                          // input of f (pre: N(x); post: x)
  Tensor q, k, v;                    // projections after RoPE                 [B*T, HD], [B*Tk, KD]
  std::unique_ptr<AttnSaved> saved;  // what the attention variant keeps for its backward
  Tensor att;                        // concatenated heads before o-projection  [B*T, HD]
  Tensor f1, f3;                     // FFN pre-activations (w1 x + b1, w3 x + b3)  [B*T, F]
  Tensor fa;                         // FFN activation, input of w2             [B*T, F]
  Tensor out;                        // f(h)                                     [B*T, d]
  // bf16 training: h, att and fa as the forward's bf16 matmuls read them (rounded once, by
  // their producer where it can), reused by the weight gradients (linear_backward checks holds)
  ops::Bf16Rows hb, attb, fab;
};

// Sizes used by forward and backward: d = d_model, HD = H*D query width, KD = Hkv*D.
struct Transformer::Geometry {
  int64_t d, H, Hkv, D, HD, KD, F;
  bool pre, ln, swiglu;
  ops::Act act;
};

// Norm of each sublayer: self-attention, cross-attention, FFN.
inline constexpr const char* kSublayerNorms[3] = {"attn_norm", "cross_norm", "ffn_norm"};
// The first linear of the attention sublayers (self, cross): their query projection.
inline constexpr const char* kSublayerAttn[2] = {"attn.q", "cross_attn.q"};

struct StackTape;

// One forward call of a stack: sizes, positions, the encoder output (cross-attention), the tape
// (training) or decode cache, and the inference workspace shared by every layer.
struct StackCall {
  int64_t B, T, Ts;
  StackInput in;     // positions, key lengths
  const float* enc;  // [B*Ts, d] or null
  StackTape* tape;
  KVCache* cache;
  SubTape ws;
  Tensor carried[2];  // attention.residual: pre-softmax scores of layers l-1 and l [B,H,T,Tk]
  // A sublayer buffer: kept in `keep` (training; reallocated only when the shape changes), else
  // the workspace (grown as needed).
  float* buf(Tensor SubTape::*field, SubTape* keep, const Shape& shape);
};

struct StackTape {
  std::vector<std::array<SubTape, 3>> layers;  // [layer][0 self, 1 cross, 2 ffn]
  Tensor final_in;                             // input of the final norm (pre-LN)
  int64_t B = 0, T = 0, Ts = 0;
  StackInput in;  // views into the caller's ids / lengths: valid until backward returns
};

// Gradient buffers of a stack's backward (kept per thread between steps).
struct BackwardBuffers {
  Tensor dh, dy, dq, datt, dk, dv, df1, df3, ddrop;
  static float* get(Tensor& t, const Shape& shape) {
    if (t.shape() != shape) t = Tensor(shape);
    return t.data<float>();
  }
};

// One backward call of a stack: its tape, the gradients, the encoder output and its gradient
// (cross-attention), and the scratch gradients every sublayer overwrites.
struct StackGradCall {
  const StackTape& tape;
  ParamStore& grads;
  const float* enc;                      // [B*Ts, d] or null
  float* d_enc;                          // [B*Ts, d] accumulated, or null
  float *dh = nullptr, *dy = nullptr;    // [BT, d]
  float *dq = nullptr, *datt = nullptr;  // [BT, HD]
  float *dk = nullptr, *dv = nullptr;    // [B*max(T, Ts), KD]
  float *df1 = nullptr, *df3 = nullptr;  // [BT, ldf]
  int64_t ldf = 0;                       // FFN gradients' row stride (padded)
  float* ddrop = nullptr;                // [BT, d] a sublayer's output gradient under dropout
  Tensor dcarried[2] = {};  // attention.residual: dL/dS of layers l+1 and l [B, H, T, T]
};

}  // namespace posformer
