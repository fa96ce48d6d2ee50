// The Transformer: encoder, decoder or encoder-decoder, built from a ModelConfig (SPEC.md 1).
//
//   x = s E[tokens] (+ P[pos] for absolute schemes), s = embed_scale       [B, T, d]
//   per layer, pre-LN:  x = x + Attn(N1(x));  (dec-in-enc-dec: x = x + Cross(Nc(x), enc));
//                       x = x + FFN(N2(x));   final norm Nf at the end of the stack
//   per layer, post-LN: x = N1(x + Attn(x));  (x = Nc(x + Cross(x, enc)));  x = N2(x + FFN(x))
//   FFN = W2 act(W1 x + b1) + b2, or SwiGLU W2 (silu(W1 x) * W3 x)
//   logits = x E^T (tied: E itself, not s E) or x W_head^T                [B, T, vocab]
//
// Weights live in a ParamStore under the names of docs/checkpoint-format.md.
#pragma once
#include <cstdint>
#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "posformer/attention/variant.h"
#include "posformer/model/config.h"
#include "posformer/model/params.h"
#include "posformer/ops/packed_linear.h"
#include "posformer/posenc/position_encoding.h"

namespace posformer {

struct StackTape;
struct StackCall;
struct StackGradCall;
struct SubTape;
using TokenBatch = std::vector<std::vector<int32_t>>;  // [B][T], equal lengths

// Where one stack call's tokens sit and which keys exist: positions [B, T] (a run, or ids; see
// core/positions.h) and the valid rows per sequence of the stack's own tokens and of the encoder
// output its cross-attention reads (right padding; null = all).
struct StackInput {
  Positions pos;
  const int32_t* len = nullptr;
  const int32_t* enc_len = nullptr;
  // Self-attention key windows [B, T] (AttnDesc::key_lo / key_hi): row t of sequence b sees keys
  // [key_lo, key_hi) only (packed documents; left padding). Null = no window.
  const int32_t* key_lo = nullptr;
  const int32_t* key_hi = nullptr;
  // Decoding a left-padded batch: pos holds ids that are per-sequence shifts of the rows
  // (id = row - first real row, clamped at 0 on pad rows), row0 is the row of the first token
  // (the cache length). Relative score terms then read rows (k_id - q_id = k_row - q_row on
  // every unmasked pair); embed and rotate read the ids.
  bool shifted_ids = false;
  int64_t row0 = 0;
  // Training with ModelConfig::dropout > 0: the step's dropout seed (ForwardOptions).
  uint64_t dropout_seed = 0;
};

// Storage behind a StackInput's ids and windows.
struct StackIds {
  PositionIds pos;
  std::vector<int32_t> lo, hi;
};

struct ForwardOptions {
  int64_t pos_offset = 0;           // position of the first decoder (or encoder-only) token
  const TokenBatch* src = nullptr;  // encoder tokens for encoder_decoder models
  bool want_logits = true;
  // Positions as data (docs/architecture.md): position ids [B][T] of the decoder (or
  // encoder-only) tokens, replacing pos_offset + t; e.g. several documents packed in one row,
  // each restarting at 0. Null = consecutive from pos_offset. Absolute, rotary and relative
  // schemes all read them.
  const TokenBatch* positions = nullptr;
  // Right padding: sequence b has lengths[b] valid tokens (0..T); keys at rows >= lengths[b]
  // are masked in every attention, so each sequence's valid rows equal running it alone. Rows
  // past the length are computed but mean nothing (give them target -1). Null = all T valid.
  const std::vector<int32_t>* lengths = nullptr;
  const std::vector<int32_t>* src_lengths = nullptr;  // the same for `src` (encoder_decoder)
  // Segment ids [B][T] (sequence packing, docs/architecture.md): a document is a run of equal
  // ids, and ids never decrease along a row. Every self-attention (encoder, decoder; not
  // cross-attention) lets a token see only the keys of its own document (a key window,
  // AttnDesc::key_lo / key_hi), so each document's rows equal running it alone. Without
  // `positions` (pos_offset 0) each document's positions restart at 0 at its first token.
  // Left padding is a row whose pad tokens form the first segment. Null = one document per row.
  const TokenBatch* segments = nullptr;
  const TokenBatch* src_segments = nullptr;  // the same for `src` (encoder_decoder's encoder)
  // Training only (loss_and_grad, classify_loss_and_grad; docs/training.md "Regularisation"):
  // the seed of this step's dropout masks (ModelConfig::dropout > 0; ops/dropout.h) and the
  // label smoothing of the loss (ops/loss.h; 0 = one-hot targets).
  uint64_t dropout_seed = 0;
  float label_smoothing = 0.0f;
  // Mixed targets (mixup / CutMix, train/images.h; classify_loss_and_grad only): with
  // mix_labels (one per image) the loss targets mix_lambda q(labels) + (1 - mix_lambda)
  // q(mix_labels), q the (smoothed) one-hot distribution; mix_lambda in [0, 1].
  const std::vector<int32_t>* mix_labels = nullptr;
  float mix_lambda = 1.0f;
};

struct ForwardOutput {
  Tensor hidden;  // [B, T, d] final hidden states (after the final norm for pre-LN)
  Tensor logits;  // [B, T, vocab] when the model has an LM head and want_logits
};

// Decoding state: each decoder layer's self-attention state, made and owned by the attention
// variant (softmax: the keys/values after RoPE of every position, 2 * layers * n_kv_heads * D *
// capacity * 4 bytes per sequence, SPEC.md 7), and the cross-attention keys/values of the
// encoder output (computed once).
struct KVCache {
  int64_t B = 0, capacity = 0, len = 0;  // len = positions already decoded
  // Left-padded batch (batched generation): start[b] = sequence b's first real row; its keys
  // before it are masked (a key window) and its positions are row - start[b]. Empty = all 0.
  std::vector<int32_t> start;
  std::vector<std::unique_ptr<AttnDecodeState>> self;  // per layer
  std::vector<Tensor> ck, cv;                          // per layer [B, Ts, Hkv*D] (encoder_decoder)
  Tensor enc;                                          // encoder output [B, Ts, d]
  int64_t Ts = 0;
  size_t bytes() const;
};

class Transformer {
 public:
  explicit Transformer(const ModelConfig& cfg);  // declares parameters, allocates none

  static Transformer random_init(const ModelConfig& cfg, uint64_t seed);
  static Transformer load(const std::string& dir);  // config.json + model.safetensors
  void save(const std::string& dir) const;          // crash-safe (temp file, fsync, rename)
  // Checks names, shapes, dtypes against the declared parameters; converts F16/BF16 to F32.
  void set_weights(const std::map<std::string, Tensor>& tensors, const std::string& what);

  const ModelConfig& config() const { return cfg_; }
  const std::vector<ParamSpec>& param_specs() const { return specs_; }
  // Non-const access may change weights, so it drops the packed copies (pack_weights).
  ParamStore& params() {
    packed_.clear();
    return params_;
  }
  // Linear weights packed once for the GEMM kernel (ops/packed_linear.h): every attention and
  // FFN linear (q, k, v, o, w1, w2, w3), with `backward` also in the layout of dx = dy W. The
  // forward, decoding and loss_and_grad paths then use them. They are snapshots: params(),
  // set_weights and redraw_buffers drop them, so pack again after changing weights (the trainer
  // packs before each step, i.e. after each optimizer update). POSFORMER_PACKED=0 disables.
  void pack_weights(bool backward = false);
  // Precision of the packed linears (ops/packed_linear.h): BF16 rounds their weights and inputs
  // to bfloat16 and sums in float32 (forward, dx and dW; `train --precision bf16`); it packs
  // even under POSFORMER_PACKED=0. Takes effect at the next pack_weights.
  void set_matmul_precision(ops::Precision p) {
    precision_ = p;
    packed_.clear();
  }
  ops::Precision matmul_precision() const { return precision_; }
  // Inference in bf16 (`generate` / `eval --precision bf16`): forward calls without a tape
  // (inference, evaluation, a decode cache's prefill) run softmax attention's fused forward with
  // bf16 products (AttnDesc::bf16: q, k, v and P rounded, fp32 sums; decoding steps of a few rows
  // stay fp32); calls that keep a tape for backward (training) always use fp32 attention.
  void set_attention_bf16(bool on) { attention_bf16_ = on; }
  bool attention_bf16() const { return attention_bf16_; }
  static bool packs(const ParamSpec& s);  // whether pack_weights packs this parameter
  bool weights_packed() const { return !packed_.empty(); }
  // Redraws the attention variants' non-trainable buffers (ParamSpec::buffer: performer's random
  // features) from their config seed and `draw` (0 = the draw of random_init; the trainer passes
  // the step at attention.redraw_every).
  void redraw_buffers(uint64_t draw);
  const ParamStore& params() const { return params_; }
  const PositionEncoding* position(bool decoder) const {
    return decoder ? dec_pe_.get() : enc_pe_.get();
  }
  const Attention* attention(bool decoder) const {
    return decoder ? dec_attn_.get() : enc_attn_.get();
  }

  ForwardOutput forward(const TokenBatch& tokens, const ForwardOptions& opt = {}) const;

  // Incremental decoding. start_cache encodes `src` for encoder_decoder models.
  KVCache start_cache(int64_t B, int64_t capacity, const TokenBatch* src = nullptr) const;
  // Runs new tokens [B][Tn] at positions cache.len.. (keys see every cached position), appends
  // their keys/values and returns hidden states / logits of the new tokens only.
  ForwardOutput forward_cached(const TokenBatch& tokens, KVCache& cache) const;

  // Training step core: forward with saved activations, mean cross-entropy of the logits
  // against `targets` ([B][T], -1 = ignored), and backward. Gradients are ADDED into `grads`
  // (names/shapes as the parameters; see zero_grads), multiplied by grad_scale (use
  // 1/accumulation_steps). Needs an LM head.
  struct Loss {
    double loss = 0;    // mean over counted targets
    int64_t count = 0;  // targets counted
  };
  Loss loss_and_grad(const TokenBatch& tokens, const TokenBatch& targets, ParamStore& grads,
                     const ForwardOptions& opt = {}, float grad_scale = 1.0f) const;
  // Forward-only loss (evaluation).
  Loss loss(const TokenBatch& tokens, const TokenBatch& targets,
            const ForwardOptions& opt = {}) const;
  ParamStore zero_grads() const;
  // Encoder stack alone: [B, Ts, d]; segments as ForwardOptions::segments (packed sources).
  Tensor encode(const TokenBatch& src, int64_t pos_offset = 0,
                const TokenBatch* segments = nullptr) const;
  // ---- arch vit (docs/vision.md): images [B, C, H, W] (float; H and W multiples of
  // patch_size; a size other than image_size grows or shrinks the patch grid, which the 2-D
  // schemes, sincos_2d and resized learned_2d, follow). Per image:
  //   patches  P [N, C*p*p], row (r*gw + c) = pixels (ch, i, j) of patch (r, c), ch-major
  //            (timm's Conv2d weight [d, C, p, p] flattened is the embedding weight)
  //   x = [cls_token;] P W_pe^T + b_pe     (+ absolute position, 2-D or over the flat order)
  //   encoder stack (non-causal), final norm for pre-LN;  pooled = x[CLS] or mean of patch rows
  //   logits = pooled W_head^T + b_head                                      [num_classes]
  Tensor classify(const Tensor& images) const;  // logits [B, num_classes]
  // Mean cross-entropy of the logits against labels [B] (each in [0, num_classes)) and its
  // backward: gradients ADDED into grads times grad_scale. logits (if given) receives [B, K].
  Loss classify_loss_and_grad(const Tensor& images, const std::vector<int32_t>& labels,
                              ParamStore& grads, float grad_scale = 1.0f, Tensor* logits = nullptr,
                              const ForwardOptions& opt = {}) const;
  // Encoder stack on given input embeddings x [B, T, d] (no token embedding, so no
  // embed_scale; absolute positions are added), in place.
  void encode_embeddings(Tensor& x, int64_t pos_offset = 0) const;

 private:
  struct Stack {
    std::string prefix;
    bool causal, cross;
    const PositionEncoding* pe;
    const Attention* attn;
  };
  Stack encoder_stack() const { return {"encoder.", false, false, enc_pe_.get(), enc_attn_.get()}; }
  Stack decoder_stack() const {
    return {"decoder.", true, cfg_.arch == Arch::EncoderDecoder, dec_pe_.get(), dec_attn_.get()};
  }
  struct Geometry;
  Geometry geometry() const;

  void declare_stack(const std::string& prefix, bool cross, const PositionEncoding& pe,
                     const Attention& attn);
  // x: [B*T, d] in, out in place. enc: [B*Ts, d] for cross-attention (or null). With a tape,
  // every layer's activations are kept for backward.
  void run_stack(const Stack& st, float* x, const StackInput& in, const float* enc, int64_t Ts,
                 StackTape* tape, KVCache* cache = nullptr) const;
  // The stack input of a forward's main stack (decoder, or encoder-only) / encoder, from the
  // options; position ids are converted into `ids`.
  StackInput main_input(const TokenBatch& tokens, const ForwardOptions& opt, StackIds& ids) const;
  StackInput encoder_input(const TokenBatch& src, const ForwardOptions& opt, StackIds& ids) const;
  // The stack's parts (transformer.cpp) and their backward (transformer_backward.cpp).
  void residual_sublayer(const Stack& st, StackCall& c, int64_t l, int sub, float* x) const;
  void rerotate_cached_keys(const Stack& st, AttnDecodeState& state, const Positions& pos) const;
  // acc: out += f(in) (the residual add fused into the last linear) instead of out = f(in)
  void attention_sublayer(const Stack& st, StackCall& c, int64_t l, bool self, const float* in,
                          float* out, SubTape* keep, bool acc = false) const;
  void ffn_sublayer(const Stack& st, StackCall& c, int64_t l, const float* in, float* out,
                    SubTape* keep, bool acc = false) const;
  void residual_sublayer_backward(const Stack& st, StackGradCall& c, int64_t l, int sub,
                                  float* dx) const;
  void attention_sublayer_backward(const Stack& st, StackGradCall& c, int64_t l, bool self,
                                   const SubTape& sp, const float* dout, float* dhin) const;
  void ffn_sublayer_backward(const Stack& st, StackGradCall& c, int64_t l, const SubTape& sp,
                             const float* dout, float* dhin) const;
  void norm_backward(StackGradCall& c, const std::string& n, const float* x_in, const float* dout,
                     float* dx) const;
  ForwardOutput head_output(Tensor hidden, bool want_logits) const;
  // dx: [B*T, d] gradient at the stack output in, gradient at the stack input out (in place).
  // d_enc: [B*Ts, d] accumulates the gradient w.r.t. the encoder output (cross-attention).
  void backward_stack(const Stack& st, const StackTape& tape, float* dx, const float* enc,
                      float* d_enc, ParamStore& grads) const;
  Tensor embed(const Stack& st, const TokenBatch& tokens, const Positions& pos) const;
  void embed_backward(const Stack& st, const TokenBatch& tokens, const Positions& pos,
                      const float* dx, ParamStore& grads) const;
  // out_bf16 (optional): out rounded to bf16 bits too, dense [rows, d], in the same pass
  void norm_fwd(const std::string& n, const float* in, float* out, int64_t rows,
                uint16_t* out_bf16 = nullptr) const;
  bool bf16_weight(const std::string& n) const;  // weight n packed in bf16
  // out = in W^T + b, with an epilogue (act, or out += ...) fused when the weight is packed
  // (xb: `in` already rounded to bf16, for bf16 weights; see shared_bf16_input)
  void lin_fwd(const std::string& n, const float* in, float* out, int64_t M, int64_t N, int64_t K,
               ops::LinearEpilogue ep = {}, const ops::Bf16Rows* xb = nullptr) const;
  // Several lin_fwd of the same `in` without epilogue in one ops::linear_packed_group call
  // (q, k and v), when every weight is packed at [N, K]; false (nothing done) otherwise.
  struct GroupOut {
    std::string name;
    float* out;
    int64_t N;
  };
  bool lin_fwd_group(std::initializer_list<GroupOut> outs, const float* in, int64_t M, int64_t K,
                     const ops::Bf16Rows* xb) const;
  // When weight n is packed in bf16: `in` [M, K] rounded once (a per-thread buffer, valid until
  // the next call on this thread) for the linears that share it; else null.
  const ops::Bf16Rows* shared_bf16_input(const std::string& n, const float* in, int64_t M,
                                         int64_t K) const;
  AttnDesc attn_desc(const Stack& st, bool self, const StackInput& in, int64_t Tk) const;
  // vit: patch-embedded tokens [B, T, d] with positions added; fills ids (2-D schemes) and the
  // flattened patches [B*N, C*p*p] (kept for the embedding's weight gradient).
  Tensor vit_embed(const Tensor& images, PositionIds& ids, StackInput& in, Tensor& patches) const;
  // vit: logits [B, K] from the final hidden states x [B, T, d] (pooled into `pooled` [B, d]).
  void vit_head(const float* x, int64_t B, int64_t T, float* pooled, float* logits) const;

  ModelConfig cfg_;
  std::vector<ParamSpec> specs_;
  ParamStore params_;
  std::map<std::string, ops::PackedWeight> packed_;  // by weight name (pack_weights)
  ops::Precision precision_ = ops::Precision::F32;
  bool attention_bf16_ = false;
  std::unique_ptr<PositionEncoding> enc_pe_, dec_pe_;
  std::unique_ptr<Attention> enc_attn_, dec_attn_;
};

// Validates a token batch: non-empty equal-length rows, ids in [0, vocab). `what` names the input.
void check_tokens(const TokenBatch& tokens, int64_t vocab, const std::string& what);

}  // namespace posformer
