// Position encodings plug into the model through one small interface with explicit hooks
// (SPEC.md sections 2, 3, 5; docs/positional-encodings.md):
//
//   embed(x)      absolute schemes add P[pos] to the token embeddings      learned, sinusoidal*
//   rotate(x)     rotary schemes rotate q and k in place                    rope
//   prepare(...)  relative schemes return a ScoreHook that adds score      alibi, t5, shaw, xl,
//                 terms (and Shaw's value term) inside attention            deberta
//
// One instance per stack (encoder or decoder); `causal` says which kind of stack it serves.
// Parameters are declared as ParamSpecs under the stack prefix ("encoder." / "decoder.") and
// looked up by name in the ParamStore at each call.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "posformer/attention/attention.h"
#include "posformer/core/positions.h"
#include "posformer/model/config.h"
#include "posformer/model/params.h"

namespace posformer {

struct StackGeom {
  std::string prefix;  // "encoder." or "decoder."
  int64_t n_layers, d_model, H, Hkv, D, max_len;
  bool causal;
  bool bias;  // linear layers carry biases
  // arch vit: the patch grid of the configured image size, and whether a CLS token leads
  int64_t grid_h = 0, grid_w = 0;
  bool cls = false;
};

// Inputs a relative scheme may read when preparing a layer's hook.
struct AttnInputs {
  int64_t layer;
  const AttnDesc* desc;  // q, k, v, sizes, positions, scale
};

class PositionEncoding {
 public:
  virtual ~PositionEncoding() = default;
  virtual std::string name() const = 0;
  virtual void declare(std::vector<ParamSpec>& specs) const {}
  // x: [B, T, d_model] with B, T those of `pos`; adds P[pos.at(b, t)] to row (b, t).
  virtual void embed(const ParamStore& p, float* x, const Positions& pos) const {}
  // Backward of embed: adds dL/dP into grads (learned table); dx [B, T, d].
  virtual void embed_backward(const float* dx, const Positions& pos, ParamStore& grads) const {}
  virtual bool rotary() const { return false; }
  // x: [B, T] rows of stride ld holding n_heads heads of D; row (b, t) rotated by the angles
  // of position pos.at(b, t).
  virtual void rotate(float* x, int64_t n_heads, int64_t ld, const Positions& pos) const {}
  // Backward of rotate: the inverse rotation (R^T = rotation with -sin), in place on gradients.
  virtual void rotate_backward(float* dx, int64_t n_heads, int64_t ld, const Positions& pos) const {
  }
  // Rotary frequencies that change with the current length (RoPE with dynamic_ntk scaling; the
  // current length of a call is its largest position + 1).
  virtual bool length_dependent() const { return false; }
  // Rows x rotated as by rotate() at current length from_len become rotated as at to_len, in
  // place (decoding re-rotates the cached keys when the length changes the frequencies).
  virtual void rerotate(float* x, int64_t n_heads, int64_t ld, const Positions& pos,
                        int64_t from_len, int64_t to_len) const {}
  // Score terms read the descriptor's positions (AttnDesc::q_pos, k_pos).
  virtual std::unique_ptr<ScoreHook> prepare(const ParamStore& p, const AttnInputs& in) const {
    return nullptr;
  }
  // What the scheme needs from attention (make_attention checks it against the variant's caps):
  // score terms (prepare returns a hook), and value terms on top of them (Shaw).
  virtual bool adds_scores() const { return false; }
  virtual bool adds_values() const { return false; }
  // Score scale when attention.scale is not set.
  virtual float default_scale(int64_t D) const;
  // Coordinates per token it reads: 1 (a sequence) or 2 (ViT patches: (row, col), the CLS token
  // at (-1, -1), see 2-D schemes in posenc/vision.cpp).
  virtual int64_t axes() const { return 1; }
  // Largest position the scheme can encode (learned: max_len - 1), or -1 for unlimited.
  virtual int64_t max_position() const { return -1; }
};

// Registry: config name -> scheme. Throws Error for an unknown type.
std::unique_ptr<PositionEncoding> make_position_encoding(const PositionConfig& cfg,
                                                         const StackGeom& geom);

// Helpers shared by schemes, tests and docs (SPEC.md formulas).
std::vector<double> alibi_slopes(int64_t H);
int64_t t5_bucket(int64_t rel, bool bidirectional, int64_t num_buckets, int64_t max_distance);
// Sinusoidal table rows for positions pos0..pos0+T-1, width d; half=false: interleaved
// (P[k,2i]=sin, P[k,2i+1]=cos), half=true: [sin ... | cos ...].
void sinusoid_rows(double pos0, int64_t T, int64_t d, bool half, float* out);

}  // namespace posformer
