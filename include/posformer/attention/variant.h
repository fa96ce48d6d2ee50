// Attention as a pluggable object: the model's one extension point for how a sublayer turns
// projected queries, keys and values into its output (docs/architecture.md). Made by a registry
// from the config's `attention` object, the way position encodings are; the model calls only
// this interface and never a kernel directly.
//
//   caps()      what the variant supports: causal masks, key padding, score / value hooks of
//               relative position schemes, rotary positions applied to q and k before it, and
//               the kind of decode state it keeps. make_attention refuses, at config time, a
//               position scheme that needs something the variant lacks, naming both.
//   declare()   trainable parameters, under the stack prefix.
//   forward()   out = Attn(q, k, v) for a descriptor (attention.h); with a `saved` slot it keeps
//               what its own backward needs there (reusing the slot's memory when it can).
//   backward()  dq, dk, dv (and hook parameter gradients) from dout and what forward saved.
//   decode      start_decode() makes a per-layer state for incremental decoding; decode() appends
//               the new tokens' keys/values to it and attends over everything it holds.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "posformer/attention/attention.h"
#include "posformer/model/config.h"
#include "posformer/model/params.h"

namespace posformer {

class PositionEncoding;
struct StackGeom;

enum class DecodeKind {
  KeyValueRows,  // keeps every past key/value row (grows with the sequence): softmax
  Recurrent,     // keeps a fixed-size state per head (linear attention family)
};

struct AttentionCaps {
  bool causal = true;          // causal masks (decoder self-attention)
  bool key_padding = true;     // AttnDesc::key_len
  bool key_window = true;      // AttnDesc::key_lo / key_hi (packed documents, left padding)
  bool score_hooks = true;     // relative schemes adding score terms (ALiBi, T5, Shaw, XL, DeBERTa)
  bool value_hooks = true;     // Shaw's value term
  bool rotary_outside = true;  // RoPE rotates q and k before attention
  // The variant applies the rotary scheme itself (linear_rope: to its numerator features, in
  // self-attention); the model then leaves q and k unrotated.
  bool rotary_inside = false;
  bool residual_scores = true;  // RealFormer: pre-softmax scores carried from layer to layer
  DecodeKind decode = DecodeKind::KeyValueRows;
};

// What a forward kept for its backward; each variant defines its own.
struct AttnSaved {
  virtual ~AttnSaved() = default;
};

// Makes the score hook of a relative position scheme for the descriptor attention will really
// run (a hook reads the descriptor's sizes and positions); may return null.
using HookMaker = std::function<std::unique_ptr<ScoreHook>(const AttnDesc&)>;

// Arithmetic of one call (multiply-add = 2 FLOPs; masked query/key pairs not counted), for
// benchmarks and cost accounting. 0 = not stated.
struct AttnCost {
  double forward_flops = 0, backward_flops = 0;
};

// The cached keys of a decode state that keeps them as rows: row (b, t) of width `width` at
// k + (b * stride + t) * width, t < length(). Null k: the state keeps no key rows (recurrent).
struct KeyRowsView {
  float* k = nullptr;
  int64_t B = 0, stride = 0, width = 0;
};

// Per-layer state for incremental decoding; each variant defines its own.
class AttnDecodeState {
 public:
  virtual ~AttnDecodeState() = default;
  virtual int64_t length() const = 0;  // positions held
  virtual size_t bytes() const = 0;    // memory held
  // The key rows, for re-rotation when RoPE's frequencies change with the length (dynamic_ntk).
  virtual KeyRowsView key_rows() { return {}; }
};

class Attention {
 public:
  virtual ~Attention() = default;
  virtual std::string name() const = 0;
  virtual AttentionCaps caps() const = 0;
  virtual void declare(std::vector<ParamSpec>& specs) const {}
  // (Re)draws the non-trainable buffers it declared (ParamSpec::buffer) into p, adding or
  // replacing them, deterministically from its config and `draw` (0 at init; the training step
  // at a redraw, attention.redraw_every). The forward reads them through AttnDesc::params.
  virtual void init_buffers(ParamStore& p, uint64_t draw) const {}

  // desc: q, k, v, out, sizes, mask, positions, hook (attention.h). desc.probs is ignored: a
  // variant keeps what it needs in *saved when saved is not null.
  virtual void forward(const AttnDesc& desc, std::unique_ptr<AttnSaved>* saved) const = 0;
  // Gradients given what forward saved for the same descriptor (its out holding the forward's
  // output); dq, dk, dv are overwritten.
  virtual void backward(const AttnDesc& desc, const AttnSaved& saved, const AttnGrads& g,
                        ScoreHook* hook) const = 0;

  virtual AttnCost cost(const AttnDesc& desc) const { return {}; }
  // Bytes a training forward keeps in its AttnSaved slot for this call (cost accounting,
  // model/cost.h): softmax's row log-sum-exp [B, H, Tq], or its probabilities [B, H, Tq, Tk] on
  // the unfused path; 0 for variants that keep only sizes and recompute in backward.
  virtual uint64_t saved_bytes(const AttnDesc& desc) const { return 0; }

  // Decoding: B sequences, at most `capacity` positions.
  virtual std::unique_ptr<AttnDecodeState> start_decode(int64_t B, int64_t capacity) const = 0;
  // Memory start_decode(B, capacity) takes, without making it (memory checks, `cost`).
  virtual uint64_t decode_bytes(int64_t B, int64_t capacity) const = 0;
  // desc holds the new tokens (Tq = Tk = new rows; q_pos0 = k_pos0 = state.length()); appends
  // their keys/values to the state and writes the output of the new queries over all of it,
  // with the score hook that make_hook (may be empty) prepares for the descriptor it runs.
  virtual void decode(AttnDecodeState& state, const AttnDesc& desc,
                      const HookMaker& make_hook) const = 0;
};

// Registry: config name -> variant for one stack. Refuses an unknown type, and a position
// scheme the variant cannot serve, with a message naming both.
std::unique_ptr<Attention> make_attention(const AttentionConfig& cfg, const StackGeom& geom,
                                          const PositionEncoding& pe);

// The attention a stack runs: cfg everywhere, except the decoder of an encoder_decoder whose
// attention.type has no causal form and mixes query rows (nystrom: its query landmarks would let
// a target position see later ones through cross-attention, and decoding feeds one query at a
// time): that decoder (self- and cross-attention) runs exact softmax (docs/attention.md).
AttentionConfig stack_attention(const AttentionConfig& cfg, Arch arch, bool decoder);

}  // namespace posformer
