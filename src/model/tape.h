// Activations a training forward keeps for backward (private to src/model).
#pragma once
#include <array>
#include <memory>
#include <vector>

#include "posformer/model/transformer.h"
#include "posformer/ops/activation.h"

namespace posformer {

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
};

// Sizes used by forward and backward: d = d_model, HD = H*D query width, KD = Hkv*D.
struct Transformer::Geometry {
  int64_t d, H, Hkv, D, HD, KD, F;
  bool pre, ln, swiglu;
  ops::Act act;
};

struct StackTape {
  std::vector<std::array<SubTape, 3>> layers;  // [layer][0 self, 1 cross, 2 ffn]
  Tensor final_in;                             // input of the final norm (pre-LN)
  int64_t B = 0, T = 0, Ts = 0, pos0 = 0;
};

}  // namespace posformer
