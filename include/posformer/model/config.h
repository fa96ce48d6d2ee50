// Model configuration: the JSON a user writes (docs/config.md documents every field).
// parse_config validates every field and throws posformer::Error naming field and value.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>

#include "posformer/core/choice.h"
#include "posformer/ops/rope.h"

namespace posformer {

// Closed sets of names, parsed once (core/choice.h); names in enumerator order.
// Vit: an encoder over image patches with a classification head (docs/vision.md).
enum class Arch { Encoder, Decoder, EncoderDecoder, Vit };
constexpr auto choice_names(Arch) {
  return std::array<const char*, 5>{"arch", "encoder", "decoder", "encoder_decoder", "vit"};
}
// ViT pooling of the final hidden states: the CLS token's row, or the mean of the patch rows.
enum class Pool { Cls, Mean };
constexpr auto choice_names(Pool) {
  return std::array<const char*, 3>{"pool", "cls", "mean"};
}
enum class Activation { Relu, Gelu, GeluTanh, Swiglu };
constexpr auto choice_names(Activation) {
  return std::array<const char*, 5>{"activation", "relu", "gelu", "gelu_tanh", "swiglu"};
}
enum class Norm { LayerNorm, RmsNorm };
constexpr auto choice_names(Norm) {
  return std::array<const char*, 3>{"norm", "layernorm", "rmsnorm"};
}
enum class NormPosition { Pre, Post };
constexpr auto choice_names(NormPosition) {
  return std::array<const char*, 3>{"norm_position", "pre", "post"};
}
enum class Head { Lm, None };
constexpr auto choice_names(Head) {
  return std::array<const char*, 3>{"head", "lm", "none"};
}

struct PositionConfig {
  std::string type =
      "none";  // none|learned|sinusoidal|sinusoidal_half|rope|alibi|t5|shaw|xl|deberta
  // rope
  std::string layout = "interleaved";  // interleaved | half
  int64_t rotary_dim = 0;              // 0 = head dim
  double base = 10000.0;
  ops::RopeScaling scaling;  // position.scaling {type, factor, original_len, ...} (ops/rope.h)
  // t5
  int64_t num_buckets = 32;
  int64_t max_distance = 128;
  // shaw: relative distance clipped to [-clip, clip]; deberta: span k, distances in [-k, k-1]
  int64_t clip = 16;
  int64_t span = 64;
  // rope_2d (SPEC.md 4): axial_split | axial_interleaved; the CLS token at (0,0) ("origin") or
  // not rotated ("none"). rotary_dim and base as rope's (R must be a multiple of 4).
  std::string axial_layout = "axial_split";
  std::string cls_position = "origin";
  // rope_2d's position.scaling applies per axis (posenc/vision.h): `scaling` holds the type and
  // its own fields (scaling.factor and scaling.original_len are unused), axis_factor the factor
  // per axis {row, col}; 0 = from the grid (current over trained grid on that axis, at least 1;
  // dynamic_ntk: 1)
  std::array<double, 2> axis_factor = {0.0, 0.0};
  // learned_2d: how the table is resized for another patch grid (bicubic | bilinear)
  std::string interpolation = "bicubic";
};

struct AttentionConfig {
  std::string type = "softmax";  // softmax | linear | linear_cos | linear_rope | performer
  std::optional<double> scale;   // default: 1/sqrt(D) (deberta: 1/sqrt(3D)); refused for linear
  // RealFormer: each self-attention layer's pre-softmax scores are added to the next layer's
  bool residual = false;
  // performer (FAVOR+): M random features per head; the seed of their draw; redraw them every N
  // training steps (0 = never), deterministically from (seed, step)
  int64_t n_features = 256;
  int64_t seed = 0;
  int64_t redraw_every = 0;
  // nystrom (docs/attention.md): landmarks M, Newton-Schulz iterations of the pseudo-inverse,
  // depthwise convolution over V added to the output (kernel size, odd; 0 = off)
  int64_t n_landmarks = 64;
  int64_t pinv_iterations = 6;
  int64_t conv_kernel = 0;
};

struct ModelConfig {
  Choice<Arch> arch = Arch::Decoder;
  int64_t d_model = 256;
  int64_t n_layers = 4;  // per stack (encoder and decoder each)
  int64_t n_heads = 4;
  int64_t n_kv_heads = 0;  // 0 = n_heads
  int64_t d_ff = 1024;
  Choice<Activation> activation = Activation::Gelu;
  Choice<Norm> norm = Norm::LayerNorm;
  Choice<NormPosition> norm_position = NormPosition::Pre;
  double norm_eps = 1e-5;
  // Residual dropout (training only; docs/training.md "Regularisation"): each sublayer's output
  // (attention after its output projection, the FFN after w2) and the stack's input embeddings
  // are dropped with this probability in loss_and_grad / classify_loss_and_grad. 0 = none.
  double dropout = 0.0;
  bool bias = true;
  int64_t vocab_size = 260;
  int64_t max_len = 1024;
  bool tie_embeddings = true;
  // Token embedding multiplier: the input lookup is E[token] * token_embed_scale(), before the
  // absolute position is added (Vaswani et al.: sqrt(d_model)). A tied LM head still uses E
  // unscaled. embed_scale_sqrt_d: the config said "sqrt_d" (written back as such).
  double embed_scale = 1.0;
  bool embed_scale_sqrt_d = false;
  Choice<Head> head = Head::Lm;
  PositionConfig position;
  AttentionConfig attention;
  // arch vit only (docs/vision.md): images [channels, image_h, image_w] cut into patch_size^2
  // patches, a grid of grid_h() x grid_w() tokens (+ a CLS token with pool cls)
  int64_t image_h = 224, image_w = 224;
  int64_t patch_size = 16;
  int64_t channels = 3;
  Choice<Pool> pool = Pool::Cls;
  int64_t num_classes = 1000;

  int64_t head_dim() const { return d_model / n_heads; }
  double token_embed_scale() const {
    return embed_scale_sqrt_d ? std::sqrt(static_cast<double>(d_model)) : embed_scale;
  }
  int64_t kv_heads() const { return n_kv_heads > 0 ? n_kv_heads : n_heads; }
  bool has_encoder() const { return arch != Arch::Decoder; }
  bool has_decoder() const { return arch == Arch::Decoder || arch == Arch::EncoderDecoder; }
  bool is_vit() const { return arch == Arch::Vit; }
  int64_t grid_h() const { return image_h / patch_size; }
  int64_t grid_w() const { return image_w / patch_size; }
  bool cls_token() const { return is_vit() && pool == Pool::Cls; }
};

// Parse and validate. Unknown keys are refused (typos must not silently fall back to defaults).
ModelConfig parse_config(const nlohmann::json& j);
ModelConfig parse_config_text(const std::string& text, const std::string& what);
ModelConfig load_config(const std::string& path);
nlohmann::json config_to_json(const ModelConfig& c);
// Re-checks every constraint (used after parsing and before building a model).
void validate_config(const ModelConfig& c);

}  // namespace posformer
