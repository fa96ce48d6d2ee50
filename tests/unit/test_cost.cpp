// The cost model (model/cost.h): parameter counts against the tensors random_init allocates for
// every arch x position scheme x attention variant of the registries; FLOPs against hand counts
// of two configs; SPEC.md 7's crossover identity; decode state; refusals.
#include <gtest/gtest.h>

#include <map>
#include <set>

#include "posformer/model/config_fields.h"
#include "posformer/model/cost.h"
#include "posformer/model/transformer.h"
#include "test_util.h"

using namespace posformer;

namespace {

ModelConfig small(Arch arch) {
  ModelConfig c;
  c.arch = arch;
  c.d_model = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 24;
  c.vocab_size = 11, c.max_len = 32;
  c.position.clip = 3, c.position.span = 4, c.position.num_buckets = 8,
  c.position.max_distance = 16;
  c.attention.n_features = 5, c.attention.n_landmarks = 4;
  // vit: 12x8 two-channel images in 4x4 patches: a 3x2 grid, 6 patches (+ CLS = 7 tokens)
  c.image_h = 12, c.image_w = 8, c.patch_size = 4, c.channels = 2, c.num_classes = 5;
  return c;
}

// Parameters of the tensors a model really allocates, per ParamSpec component (and buffers).
std::map<std::string, int64_t> allocated(const ModelConfig& c) {
  const Transformer m = Transformer::random_init(c, 3);
  std::map<std::string, std::string> comp;
  std::map<std::string, bool> buffer;
  for (const ParamSpec& s : m.param_specs()) comp[s.name] = s.component, buffer[s.name] = s.buffer;
  std::map<std::string, int64_t> n;
  for (const auto& [name, t] : m.params().all()) {
    EXPECT_TRUE(comp.count(name)) << name;
    n[buffer[name] ? "buffers" : comp[name]] += t.numel();
    if (!buffer[name]) n["total"] += t.numel();
  }
  return n;
}

}  // namespace

TEST(Cost, ParameterCountsEqualAllocatedTensorsForEveryArchPositionAndAttention) {
  int checked = 0, vit_checked = 0;
  std::set<std::string> vit_kinds;  // position schemes and attention variants a vit ran with
  for (size_t ai = 0; ai + 1 < choice_names(Arch{}).size(); ++ai)  // every arch, new ones too
    for (const auto& pos : position_config_entries())
      for (const auto& att : attention_config_entries())
        for (int variant = 0; variant < 4; ++variant) {
          ModelConfig c = small(static_cast<Arch>(ai));
          c.position.type = pos.type, c.attention.type = att.type;
          // vary the block: biases, SwiGLU, RMSNorm, post-LN, untied head, nystrom's conv,
          // RealFormer
          c.bias = variant != 1;
          if (variant == 1) c.activation = Activation::Swiglu, c.norm = Norm::RmsNorm;
          if (variant == 2) c.norm_position = NormPosition::Post, c.tie_embeddings = false;
          if (variant == 2) c.pool = Pool::Mean;  // vit: no CLS token
          if (variant == 3) c.n_kv_heads = 4, c.attention.conv_kernel = 3;
          if (variant == 3 && att.type == "softmax") c.attention.residual = true;
          try {
            Transformer probe(c);  // combinations the registries refuse are skipped
          } catch (const Error&) {
            continue;
          }
          SCOPED_TRACE(std::string(c.arch.name()) + " " + pos.type + " " + att.type + " #" +
                       std::to_string(variant));
          CostOptions o;
          o.seq_len = c.is_vit() ? 0 : 8;  // a ViT's length is its patch count
          if (c.is_vit()) ++vit_checked, vit_kinds.insert(pos.type), vit_kinds.insert(att.type);
          const ModelCost mc = model_cost(c, o);
          std::map<std::string, int64_t> got = allocated(c);
          EXPECT_EQ(mc.params.total(), got["total"]);
          EXPECT_EQ(mc.params.embedding, got["embedding"]);
          EXPECT_EQ(mc.params.position, got["position"]);
          EXPECT_EQ(mc.params.attention, got["attention"]);
          EXPECT_EQ(mc.params.ffn, got["ffn"]);
          EXPECT_EQ(mc.params.norm, got["norm"]);
          EXPECT_EQ(mc.params.head, got["head"]);
          EXPECT_EQ(mc.params.buffers, got["buffers"]);
          // SPEC.md 7: 16 bytes per trainable parameter in fp32, 20 in mixed precision
          const double P = double(got["total"]), buf = 4.0 * double(got["buffers"]);
          const MemorySplit& m = mc.memory;
          EXPECT_DOUBLE_EQ(m.weights + m.gradients + m.moments + m.master, 16 * P + buf);
          o.precision = Precision::Bf16;
          const MemorySplit mb = model_cost(c, o).memory;
          EXPECT_DOUBLE_EQ(mb.weights + mb.gradients + mb.moments + mb.master, 20 * P + buf);
          ++checked;
        }
  EXPECT_GT(checked, 150);  // most of the 3 x 10 x 6 x 4 combinations are valid
  EXPECT_GT(vit_checked, 40);
  for (const char* k : {"rope_2d", "learned_2d", "sincos_2d", "learned", "rope", "none", "softmax",
                        "linear", "linear_cos", "linear_rope", "performer", "nystrom"})
    EXPECT_TRUE(vit_kinds.count(k)) << "vit never ran with " << k;
}

// Config A: decoder, pre-LN LayerNorm, GELU, biases, RoPE, causal softmax, B = 2, T = 32.
TEST(Cost, FlopsEqualHandCountDecoderSoftmaxRope) {
  ModelConfig c;
  c.arch = Arch::Decoder;
  c.d_model = 64, c.n_layers = 2, c.n_heads = 4, c.d_ff = 256, c.vocab_size = 100, c.max_len = 64;
  c.position.type = "rope";
  CostOptions o;
  o.seq_len = 32, o.batch = 2;
  const ModelCost mc = model_cost(c, o);
  // N = 64 rows, d = 64, H = Hkv = 4, D = 16, F = 256, V = 100, L = 2
  const double N = 64, L = 2;
  const double proj = L * 2 * N * 64 * (64 + 64 + 64 + 64);  // q, k, v, o: 2 N d d each
  const double ffn = L * 2 * N * 64 * 256 * 2;
  const double pairs = 2 * (32.0 * 33 / 2);                             // causal, per sequence x 2
  const double att_f = L * pairs * 4 * 64, att_b = L * pairs * 8 * 64;  // 4 / 8 H D per pair
  const double head = 2 * N * 64 * 100;
  const double rest = L * (2 * N * 64 * 8             // 2 LayerNorms (7) + residual adds (1)
                           + N * (64 * 4 + 256 + 64)  // biases: q k v o, w1, w2
                           + N * 256 * 8              // GELU
                           + 3 * N * 16 * 8)          // RoPE on q and k: 8 heads x 16
                      + N * 64 * 7;                   // final norm
  EXPECT_DOUBLE_EQ(mc.forward.projections, proj);
  EXPECT_DOUBLE_EQ(mc.forward.ffn, ffn);
  EXPECT_DOUBLE_EQ(mc.forward.attention, att_f);
  EXPECT_DOUBLE_EQ(mc.forward.embed_head, head);
  EXPECT_DOUBLE_EQ(mc.forward.rest, rest);
  EXPECT_DOUBLE_EQ(mc.training.projections, 3 * proj);
  EXPECT_DOUBLE_EQ(mc.training.ffn, 3 * ffn);
  EXPECT_DOUBLE_EQ(mc.training.attention, att_f + att_b);
  EXPECT_DOUBLE_EQ(mc.training.embed_head, 3 * head + 5 * N * 100);
  EXPECT_DOUBLE_EQ(mc.training.rest, 3 * rest);
  EXPECT_EQ(mc.tokens, 64);
  EXPECT_DOUBLE_EQ(mc.kv_bytes_per_token, 2 * 2 * 4 * 16 * 4.0);  // 2 L Hkv D fp32
  EXPECT_EQ(mc.recurrent_state_bytes, 0);
}

// Config B: encoder_decoder, post-LN RMSNorm, SwiGLU, no biases, GQA 4/2, untied head, linear
// attention (elu + 1: F = D features), encoder 24 tokens, decoder 16, B = 1.
TEST(Cost, FlopsEqualHandCountEncoderDecoderLinearGqa) {
  ModelConfig c;
  c.arch = Arch::EncoderDecoder;
  c.d_model = 32, c.n_layers = 3, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 48;
  c.vocab_size = 50, c.max_len = 64, c.bias = false, c.tie_embeddings = false;
  c.activation = Activation::Swiglu, c.norm = Norm::RmsNorm, c.norm_position = NormPosition::Post;
  c.attention.type = "linear";
  CostOptions o;
  o.seq_len = 16, o.src_len = 24;
  const ModelCost mc = model_cost(c, o);
  // d = 32, HD = 32, KD = 16, D = 8, F = 48, L = 3; Ne = 24 encoder rows, Nd = 16 decoder rows
  const double L = 3, Ne = 24, Nd = 16;
  const double proj = L * (2 * Ne * 32 * (32 + 16 + 16 + 32)               // encoder self
                           + 2 * Nd * 32 * (32 + 16 + 16 + 32)             // decoder self
                           + 2 * Nd * 32 * (32 + 32) + 2 * Ne * 32 * 32);  // cross: q, o; k, v
  const double ffn = L * 2 * (Ne + Nd) * 32 * 48 * 3;
  // linear: 2 F (D + 1) per head for every query and key row; F = D = 8, H = 4
  const double per_row = 2 * 8 * 9 * 4;
  const double att_f = L * per_row * ((24 + 24) + (16 + 16) + (16 + 24));
  const double head = 2 * Nd * 32 * 50;
  const double rest = L * (2 * Ne * 32 * 5 + 3 * Nd * 32 * 5  // RMSNorm (4) + residual add (1)
                           + (Ne + Nd) * 48 * 5);             // SwiGLU
  EXPECT_DOUBLE_EQ(mc.forward.projections, proj);
  EXPECT_DOUBLE_EQ(mc.forward.ffn, ffn);
  EXPECT_DOUBLE_EQ(mc.forward.attention, att_f);
  EXPECT_DOUBLE_EQ(mc.forward.embed_head, head);
  EXPECT_DOUBLE_EQ(mc.forward.rest, rest);
  EXPECT_DOUBLE_EQ(mc.training.attention, 3 * att_f);  // backward: twice the forward
  EXPECT_DOUBLE_EQ(mc.training.total(), 3 * (proj + ffn + head + rest) + 3 * att_f + 5 * Nd * 50);
  EXPECT_EQ(mc.tokens, 16);
  // decoding: a recurrent state S [F, D] + z [F] per kv head and layer; cross K/V per source row
  EXPECT_EQ(mc.kv_bytes_per_token, 0);
  EXPECT_DOUBLE_EQ(mc.recurrent_state_bytes, 3 * 2 * (8 * 8 + 8) * 4.0);
  EXPECT_DOUBLE_EQ(mc.cross_kv_bytes_per_src_token, 2 * 3 * 16 * 4.0);
  EXPECT_FALSE(mc.crossover_T.has_value());  // linear attention never overtakes
}

// Config C: vit, pre-LN LayerNorm, GELU, biases, sincos_2d, softmax, pool cls; 2 images of
// 3 x 16 x 8 in 4x4 patches: 4x2 = 8 patches of K = 48 pixels, T = 9 with the CLS token.
TEST(Cost, FlopsEqualHandCountVit) {
  ModelConfig c;
  c.arch = Arch::Vit;
  c.d_model = 32, c.n_layers = 2, c.n_heads = 4, c.d_ff = 64, c.max_len = 64;
  c.image_h = 16, c.image_w = 8, c.patch_size = 4, c.channels = 3, c.num_classes = 10;
  c.position.type = "sincos_2d";
  CostOptions o;
  o.batch = 2;
  const ModelCost mc = model_cost(c, o);
  // N = 18 rows (16 patch rows + 2 CLS), d = 32, H = Hkv = 4, D = 8, F = 64, n = 10, L = 2
  const double N = 18, Np = 16, L = 2;
  EXPECT_EQ(mc.options.seq_len, 9);
  EXPECT_EQ(mc.tokens, 18);
  EXPECT_EQ(mc.params.embedding, 32 * 48 + 32 + 32);  // patch W, b, CLS
  EXPECT_EQ(mc.params.head, 10 * 32 + 10);
  EXPECT_EQ(mc.params.position, 0);  // sincos_2d is fixed
  const double proj = L * 2 * N * 32 * (4 * 32);
  const double ffn = L * 2 * N * 32 * 64 * 2;
  const double pairs = 2 * 9.0 * 9;  // non-causal, per image x 2
  const double att_f = L * pairs * 4 * 32, att_b = L * pairs * 8 * 32;
  const double patch = 2 * Np * 48 * 32;
  const double embed_head = patch + Np * 32              // patch embedding and its bias
                            + N * 32                     // sincos_2d added
                            + 2 * 2 * 32 * 10 + 2 * 10;  // head on the 2 pooled CLS rows, bias
  const double rest = L * (2 * N * 32 * 8 + N * (32 * 4 + 64 + 32) + N * 64 * 8) + N * 32 * 7;
  EXPECT_DOUBLE_EQ(mc.forward.projections, proj);
  EXPECT_DOUBLE_EQ(mc.forward.ffn, ffn);
  EXPECT_DOUBLE_EQ(mc.forward.attention, att_f);
  EXPECT_DOUBLE_EQ(mc.forward.embed_head, embed_head);
  EXPECT_DOUBLE_EQ(mc.forward.rest, rest);
  EXPECT_DOUBLE_EQ(mc.training.attention, att_f + att_b);
  // backward: 2x, but the patch matmul only its dW (pixels need no gradient); cross-entropy
  EXPECT_DOUBLE_EQ(mc.training.embed_head, 3 * embed_head - patch + 5 * 2 * 10);
  EXPECT_DOUBLE_EQ(mc.training.rest, 3 * rest);
  EXPECT_EQ(mc.kv_bytes_per_token, 0);
  EXPECT_EQ(mc.recurrent_state_bytes, 0);
  // pool mean: no CLS row (T = 8), the mean adds 1 per element of [B T, d], no CLS parameter
  c.pool = Pool::Mean;
  const ModelCost mm = model_cost(c, o);
  const double Nm = 16;
  EXPECT_EQ(mm.options.seq_len, 8);
  EXPECT_EQ(mm.params.embedding, 32 * 48 + 32);
  EXPECT_DOUBLE_EQ(mm.forward.embed_head,
                   patch + Np * 32 + Nm * 32 + Nm * 32 + 2 * 2 * 32 * 10 + 2 * 10);
  // --image-size 8x8 (2x2 patches, T = 4) replaces the config's
  o.image_h = 8, o.image_w = 8;
  const ModelCost ms = model_cost(c, o);
  EXPECT_EQ(ms.options.seq_len, 4);
  EXPECT_EQ(ms.tokens, 8);
  EXPECT_DOUBLE_EQ(ms.forward.projections, L * 2 * 8 * 32 * (4 * 32));
}

// A ViT runs the encoder stack: its tape equals an encoder's at the same T; its workspace holds
// the images and patches, the stack input's gradient, pooled (and gradient) and the logits where
// a head-less encoder holds only its embeddings.
TEST(Cost, VitMemoryIsTheEncoderStackPlusTheImagePath) {
  ModelConfig v = small(Arch::Vit);
  v.position.type = "none";
  CostOptions o;
  o.batch = 3;
  const ModelCost mv = model_cost(v, o);  // T = 7
  ModelConfig e = v;
  e.arch = Arch::Encoder, e.head = Head::None;
  CostOptions oe = o;
  oe.seq_len = 7;
  const ModelCost me = model_cost(e, oe);
  EXPECT_DOUBLE_EQ(mv.memory.activations, me.memory.activations);
  const double B = 3, T = 7, Np = 6, K = 2 * 4 * 4, d = 16, n = 5;
  EXPECT_DOUBLE_EQ(mv.memory.workspace - me.memory.workspace,
                   4 * (2 * B * Np * K + B * T * d + 2 * B * d + B * n));
}

// SPEC.md 7: 4 T d (scores and weighted sum per token) > 24 d^2 (the layer's matmuls at
// d_ff = 4d, no biases): T > 6d non-causal; causal sees (T+1)/2 keys on average: T >= 12d.
// Training keeps every attention / FFN linear weight packed twice (forward and dx layouts):
// 8 bytes per weight of q, k, v, o (self and cross) and w1, w2, w3; not the embedding or head.
TEST(Cost, PackedWeightCopiesAreEightBytesPerLinearWeight) {
  ModelConfig c;
  c.arch = Arch::EncoderDecoder;
  c.d_model = 32, c.n_layers = 3, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 48;
  c.vocab_size = 50, c.max_len = 64, c.activation = Activation::Swiglu;
  CostOptions o;
  o.seq_len = 16;
  const ModelCost mc = model_cost(c, o);
  // per layer: q, o 32x32; k, v 16x32; w1, w3 48x32, w2 32x48; the decoder has cross-attention
  const double attn = 2 * 32 * 32 + 2 * 16 * 32, ffn = 3 * 48 * 32;
  EXPECT_DOUBLE_EQ(mc.memory.packed, 8 * (3 * (attn + ffn) + 3 * (2 * attn + ffn)));
  const MemorySplit& m = mc.memory;
  EXPECT_DOUBLE_EQ(m.total(), m.weights + m.gradients + m.moments + m.master + m.activations +
                                  m.workspace + m.packed);
}

TEST(Cost, QuadraticPartOvertakesAtSixD) {
  ModelConfig c = small(Arch::Encoder);
  c.d_model = 64, c.n_heads = 4, c.n_kv_heads = 0, c.d_ff = 256, c.position.type = "none";
  const ModelCost enc = model_cost(c, CostOptions{});
  ASSERT_TRUE(enc.crossover_T.has_value());
  EXPECT_EQ(*enc.crossover_T, 6 * 64 + 1);
  c.arch = Arch::Decoder;
  const ModelCost dec = model_cost(c, CostOptions{});
  ASSERT_TRUE(dec.crossover_T.has_value());
  EXPECT_EQ(*dec.crossover_T, 12 * 64);
  ASSERT_TRUE(dec.crossover_all_T.has_value());
  EXPECT_GT(*dec.crossover_all_T, *dec.crossover_T);  // the head and norms come on top
}

// The tape's activations: the fused softmax keeps the row log-sum-exp, the unfused path (Shaw)
// the probabilities [B, H, T, T], the linear family nothing.
TEST(Cost, ActivationsFollowWhatTheVariantKeeps) {
  ModelConfig c = small(Arch::Encoder);
  c.n_kv_heads = 0, c.max_len = 256, c.position.type = "none";
  CostOptions o;
  o.seq_len = 128, o.batch = 2;
  const double fused = model_cost(c, o).memory.activations;
  c.attention.type = "linear";
  const double linear = model_cost(c, o).memory.activations;
  EXPECT_DOUBLE_EQ(fused - linear, 2.0 * 2 * 4 * 128 * 4);  // L x [B, H, T] floats
  c.attention.type = "softmax", c.position.type = "shaw";
  const double probs = model_cost(c, o).memory.activations;
  EXPECT_DOUBLE_EQ(probs - linear, 2.0 * 2 * 4 * 128 * 128 * 4);  // L x [B, H, T, T]
}

TEST(Cost, RefusesBadOptionsNamingThem) {
  ModelConfig c = small(Arch::Decoder);
  c.position.type = "learned";
  CostOptions o;
  o.optimizer = "sgd";
  pf_test::expect_error([&] { model_cost(c, o); }, {"--optimizer must be adamw"});
  o = {};
  o.batch = 0;
  pf_test::expect_error([&] { model_cost(c, o); }, {"--batch must be >= 1, got 0"});
  o = {};
  o.seq_len = 33;
  pf_test::expect_error([&] { model_cost(c, o); }, {"exceeds the learned position table"});
  o = {};
  o.src_len = 8;
  pf_test::expect_error([&] { model_cost(c, o); }, {"--src-len is only for encoder_decoder"});
  o = {};
  o.image_h = 8;
  pf_test::expect_error([&] { model_cost(c, o); }, {"--image-size is only for arch vit"});
  ModelConfig v = small(Arch::Vit);
  o = {};
  o.seq_len = 8;
  pf_test::expect_error([&] { model_cost(v, o); },
                        {"--seq-len does not apply to arch vit", "--image-size", "12x8"});
  o = {};
  o.image_h = 10, o.image_w = 8;
  pf_test::expect_error([&] { model_cost(v, o); },
                        {"--image-size 10x8 must be a positive multiple of patch_size 4"});
  v.position.type = "learned";  // 1-D table of max_len 32: 64x12 images are 48 + 1 tokens
  o = {};
  o.image_h = 64, o.image_w = 12;
  pf_test::expect_error([&] { model_cost(v, o); },
                        {"--image-size 64x12: 49 tokens exceed the learned position table"});
  c.d_model = 15;  // not divisible by the heads: the config's own check
  pf_test::expect_error([&] { model_cost(c, CostOptions{}); }, {"d_model"});
}
