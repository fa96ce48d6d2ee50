// Transformer::pack_weights: the packed-weight linears give the unpacked model's logits and
// gradients (1e-6 relative), including after an optimizer step changed the weights and they
// were packed again; params() drops stale packs.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>

#include "posformer/model/transformer.h"
#include "posformer/train/optimizer.h"

using namespace posformer;

namespace {

ModelConfig config(const std::string& arch, const std::string& act) {
  ModelConfig c;
  c.arch = arch, c.d_model = 48, c.n_layers = 2, c.n_heads = 4, c.d_ff = 96;
  c.activation = act;
  c.vocab_size = 50, c.max_len = 64, c.bias = true;
  c.position.type = "rope";
  return c;
}

TokenBatch tokens(int64_t B, int64_t T, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> u(0, 49);
  TokenBatch t(static_cast<size_t>(B), std::vector<int32_t>(static_cast<size_t>(T)));
  for (auto& row : t)
    for (auto& x : row) x = u(rng);
  return t;
}

// ||a - b|| / ||b||
double rel(const float* a, const float* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_TRUE(std::isfinite(a[i])) << i;
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]), den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// Logits and every gradient of `packed` equal those of `plain` (same weights, not packed).
void expect_same(const Transformer& packed, const Transformer& plain, const std::string& what) {
  const TokenBatch in = tokens(2, 19, 1), tgt = tokens(2, 19, 2), src = tokens(2, 11, 3);
  ForwardOptions fo;
  if (plain.config().arch == Arch::EncoderDecoder) fo.src = &src;
  const ForwardOutput a = packed.forward(in, fo), b = plain.forward(in, fo);
  EXPECT_LE(rel(a.logits.data<float>(), b.logits.data<float>(), b.logits.numel()), 1e-6) << what;
  ParamStore ga = packed.zero_grads(), gb = plain.zero_grads();
  const auto la = packed.loss_and_grad(in, tgt, ga, fo), lb = plain.loss_and_grad(in, tgt, gb, fo);
  EXPECT_NEAR(la.loss, lb.loss, 1e-6 * std::abs(lb.loss)) << what;
  for (const auto& [name, t] : gb.all())
    EXPECT_LE(rel(ga.f32(name), t.data<float>(), t.numel()), 1e-6) << what << " grad " << name;
}

class PackedModel : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(PackedModel, EqualsUnpackedBeforeAndAfterAnOptimizerStep) {
  const auto [arch, act] = GetParam();
  const ModelConfig c = config(arch, act);
  Transformer packed = Transformer::random_init(c, 3), plain = Transformer::random_init(c, 3);
  packed.pack_weights(true);
  ASSERT_TRUE(packed.weights_packed());
  expect_same(packed, plain, "fresh");

  // one AdamW step on both (params() drops the packs), then pack again
  AdamW opt_a(packed.param_specs(), {});
  AdamW opt_b(plain.param_specs(), {});
  const TokenBatch in = tokens(2, 19, 5), tgt = tokens(2, 19, 6), src = tokens(2, 11, 7);
  ForwardOptions fo;
  if (c.arch == Arch::EncoderDecoder) fo.src = &src;
  ParamStore ga = packed.zero_grads(), gb = plain.zero_grads();
  packed.loss_and_grad(in, tgt, ga, fo);
  plain.loss_and_grad(in, tgt, gb, fo);
  opt_a.step(packed.params(), ga, 1e-2);
  opt_b.step(plain.params(), gb, 1e-2);
  EXPECT_FALSE(packed.weights_packed());  // stale snapshots are never used
  packed.pack_weights(true);
  expect_same(packed, plain, "after a step");
}

INSTANTIATE_TEST_SUITE_P(Configs, PackedModel,
                         ::testing::Values(std::make_tuple("decoder", "gelu"),
                                           std::make_tuple("decoder", "swiglu"),
                                           std::make_tuple("encoder_decoder", "relu")));

TEST(PackedModelLoad, EncoderForwardPacked) {
  ModelConfig c = config("encoder", "gelu");
  c.head = "none";
  Transformer packed = Transformer::random_init(c, 9), plain = Transformer::random_init(c, 9);
  packed.pack_weights();
  Tensor x({2, 17, 48}), y({2, 17, 48});
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t i = 0; i < x.numel(); ++i) x.data<float>()[i] = y.data<float>()[i] = nd(rng);
  packed.encode_embeddings(x);
  plain.encode_embeddings(y);
  EXPECT_LE(rel(x.data<float>(), y.data<float>(), x.numel()), 1e-6);
}

// set_attention_bf16 (generate / eval --precision bf16): forward calls without a tape run
// softmax attention with bf16 products, close to float32 but not equal (the path is taken);
// loss_and_grad keeps a tape and stays float32, bit for bit.
TEST(Bf16Attention, InferenceCloseToFp32TrainingUnchanged) {
  for (const char* arch : {"decoder", "encoder_decoder"}) {
    SCOPED_TRACE(arch);
    ModelConfig c = config(arch, "gelu");
    Transformer bf = Transformer::random_init(c, 9), fp = Transformer::random_init(c, 9);
    bf.set_attention_bf16(true);
    const TokenBatch in = tokens(2, 40, 1), tgt = tokens(2, 40, 2), src = tokens(2, 33, 3);
    ForwardOptions fo;
    if (c.arch == Arch::EncoderDecoder) fo.src = &src;
    const ForwardOutput a = bf.forward(in, fo), b = fp.forward(in, fo);
    const double r = rel(a.logits.data<float>(), b.logits.data<float>(), b.logits.numel());
    EXPECT_LE(r, 2e-2);
    EXPECT_GT(r, 1e-6);  // bf16 products were used
    ParamStore ga = bf.zero_grads(), gb = fp.zero_grads();
    const auto la = bf.loss_and_grad(in, tgt, ga, fo), lb = fp.loss_and_grad(in, tgt, gb, fo);
    EXPECT_EQ(la.loss, lb.loss);
    for (const auto& [name, t] : gb.all())
      EXPECT_EQ(rel(ga.f32(name), t.data<float>(), t.numel()), 0.0) << name;
  }
}

}  // namespace
