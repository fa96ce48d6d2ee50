// Cost model of a config (SPEC.md 7, docs/cost.md): parameters, FLOPs, training memory, decode
// state, and the sequence length where attention's quadratic part overtakes the rest.
//
// Sizes: B sequences of T tokens per stack (encoder_decoder: the encoder reads Ts = src_len, the
// decoder T); N = B T rows of a stack; d = d_model, H heads, Hkv kv heads, D = d / H, HD = H D,
// KD = Hkv D, F = d_ff, V = vocab, L = n_layers per stack. A multiply-add is 2 FLOPs.
//
// Forward FLOPs of one step, per stack and layer (split as the table shows):
//   projections  self: 2 N d (2 HD + 2 KD); cross: 2 N d (2 HD) + 2 Ns d (2 KD)
//   ffn          2 N d F (2, SwiGLU 3)
//   attention    the variant's own count (Attention::cost: softmax 4 H D per visible query/key
//                pair, causal = T(T+1)/2 pairs; linear family 2 F (D+1) per head and row of q and
//                k; performer F = n_features; nystrom its landmarks and iterations), plus the score
//                terms of relative schemes per visible pair and head (alibi, t5: 1; xl: 2 D;
//                shaw, deberta: 4 D)
//   embed/head   logits 2 N d V (the token lookup is free); the scaled lookup and absolute
//                position add 1 per element
//   rest         per element: LayerNorm 7 / RMSNorm 4 per norm, residual add 1, bias 1, activation
//                (relu 1, gelu 8, gelu_tanh 8, swiglu 5), RoPE 3 per rotated q/k element
// Training = forward + backward: the matmuls 3x the forward (dX and dW), the attention part the
// variant's backward count (softmax 4 H D per pair; its fused kernel also recomputes q.k, 1/3
// more, not counted), the rest 3x, plus cross-entropy 5 per logit. Per token = / (B T) of the
// main stack (the decoder, or the encoder of an encoder model).
//
// Training memory (bytes): fp32 4 (weights) + 4 (gradients) + 8 (AdamW m, v) = 16 per parameter;
// bf16 mixed precision 2 + (2 + 4 fp32 gradient copy) + 8 + 4 (fp32 master) = 20 (SPEC.md 7;
// posformer itself trains in fp32). Non-trainable buffers (performer's features) count as
// weights only. Activations: what the tape keeps per layer (src/model/tape.h), per sublayer
// norm_in, h, out [N, d]; attention q, att [N, HD], k, v [B max(T, Ts), KD] and what the variant
// saves (Attention::saved_bytes: the fused softmax's log-sum-exp [B, H, T], the unfused path's
// probabilities [B, H, T, Tk], nothing for the linear family and nystrom); FFN f1, fa (, f3)
// [N, F]; the final norm's input [N, d] (pre-LN). Workspace: what a training step holds besides
// (embeddings [N, d], logits [N, V], the backward's gradient buffers, the weight-gradient scratch,
// RealFormer's carried score gradients 2 [B, H, T, T]). Peak = the sum (all live in backward).
//
// arch vit (docs/vision.md): B images of C x Hi x Wi, patch p: Np = (Hi/p)(Wi/p) patches, K = C p
// p, T = Np (+1 CLS with pool cls) rows of the one non-causal encoder stack (the config's
// image_size unless CostOptions overrides it; there is no --seq-len), n = num_classes. Parameters:
// the patch embedding d K (+ d bias) and CLS token d under "embedding", the 2-D schemes' own tables
// under "position" (their registry declare), the classification head n d (+ n) under "head"; no
// token embedding or LM head. embed/head FLOPs: patch embedding 2 B Np K d (+ B Np d bias),
// absolute position add 1 per element, mean pooling 1 per element of [B T, d], head 2 B d n (+ B
// n); its backward: 2x that, less the patch embedding's input gradient (the pixels need none: dW
// only, 1x), plus cross-entropy 5 per logit. Workspace adds what classify_loss_and_grad holds: the
// image batch and its patch matrix [B Np, K] (each B Np K), the embeddings and their gradient [B T,
// d], pooled and its gradient [B, d], the logits [B, n]. No decode state: a ViT does not generate.
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "posformer/model/config.h"

namespace posformer {

enum class Precision { Fp32, Bf16 };
constexpr auto choice_names(Precision) {
  return std::array<const char*, 3>{"precision", "fp32", "bf16"};
}

struct CostOptions {
  int64_t seq_len = 0;  // T (0 = the config's max_len)
  int64_t src_len = 0;  // encoder length of an encoder_decoder (0 = seq_len)
  int64_t batch = 1;    // sequences (arch vit: images)
  int64_t image_h = 0;  // arch vit: image size (0 = the config's image_size)
  int64_t image_w = 0;
  Choice<Precision> precision = Precision::Fp32;
  std::string optimizer = "adamw";  // the only one posformer trains with
};

// FLOPs of one step over the whole batch.
struct FlopSplit {
  double projections = 0, ffn = 0, attention = 0, embed_head = 0, rest = 0;
  double total() const { return projections + ffn + attention + embed_head + rest; }
};

// Trainable parameters per component (ParamSpec::component) and buffers (not trained).
struct ParamCounts {
  int64_t embedding = 0, position = 0, attention = 0, ffn = 0, norm = 0, head = 0;
  int64_t buffers = 0;
  int64_t total() const { return embedding + position + attention + ffn + norm + head; }
};

// Training memory in bytes.
// `packed`: the fp32 copies of the attention / FFN linear weights that training keeps in the GEMM
// kernel's layout (Transformer::pack_weights(true): a forward and a dx layout, 8 bytes per
// linear weight; 0 with POSFORMER_PACKED=0); SPEC.md 7's 16 / 20 bytes per parameter are the
// parameter state without them.
struct MemorySplit {
  double weights = 0, gradients = 0, moments = 0, master = 0, activations = 0, workspace = 0,
         packed = 0;
  double total() const {
    return weights + gradients + moments + master + activations + workspace + packed;
  }
};

struct ModelCost {
  ModelConfig config;
  CostOptions options;    // with seq_len / src_len (vit: seq_len = T, image size) resolved
  std::string attention;  // the variant's name (encoder_decoder nystrom: both stacks')
  ParamCounts params;
  int64_t tokens = 0;  // B T of the main stack: per-token figures divide by it
  FlopSplit forward, training;
  MemorySplit memory;
  // Decoding (decoder models; not applicable to arch vit, which classifies): bytes per position of
  // the self-attention key/value rows (softmax: 2 L Hkv D 4), or the fixed recurrent state per
  // sequence (linear family); the cross-attention keys/values per source position
  // (encoder_decoder).
  double kv_bytes_per_token = 0, recurrent_state_bytes = 0, cross_kv_bytes_per_src_token = 0;
  // Smallest T (B = 1) where the attention part of the forward exceeds the layers' matmuls
  // (projections + FFN; SPEC.md 7's T > 6d at d_ff = 4d non-causal), and where it exceeds every
  // other forward FLOP; nullopt when it does not happen up to 2^24.
  std::optional<int64_t> crossover_T, crossover_all_T;
};

// Throws Error naming the bad option (seq_len beyond a learned table, batch < 1, optimizer,
// --seq-len for a vit, an image size that is not a multiple of the patch).
ModelCost model_cost(const ModelConfig& cfg, const CostOptions& opt);
nlohmann::json cost_to_json(const ModelCost& c);

}  // namespace posformer
