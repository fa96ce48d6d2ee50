// KV-cache decoding gives exactly the tokens of recomputing the whole sequence each step.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "posformer/model/generate.h"

using namespace posformer;

namespace {
Transformer make_model(const std::string& arch, const std::string& pos, int64_t kv = 0,
                       const std::string& attention = "softmax", int64_t max_len = 64,
                       bool residual = false) {
  ModelConfig c;
  c.attention.type = attention;
  c.arch = arch, c.d_model = 32, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = kv, c.d_ff = 48;
  c.vocab_size = 40, c.max_len = max_len;
  c.position.type = pos;
  c.attention.residual = residual;
  c.position.clip = 4, c.position.span = 6, c.position.num_buckets = 8,
  c.position.max_distance = 24;
  Transformer m = Transformer::random_init(c, 7);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& [name, t] : m.params().all()) {  // larger weights: peaked, position-sensitive logits
    if (name.find("norm") != std::string::npos) continue;
    float* p = t.data<float>();
    const float sd = t.ndim() == 2 ? 2.0f / std::sqrt(float(t.dim(1))) : 0.8f;
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = sd * nd(rng);
  }
  return m;
}
}  // namespace

class CachedGreedy : public ::testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(CachedGreedy, EqualsFullRecompute) {
  const auto& [arch, pos] = GetParam();
  Transformer m = make_model(arch, pos, pos == "rope" ? 2 : 0);
  std::vector<int32_t> prompt = {3, 14, 15, 9, 26}, src = {5, 3, 5, 8, 9, 7, 9};
  SamplingConfig s;
  s.temperature = 0, s.max_new_tokens = 24;
  const std::vector<int32_t>* sp = arch == "encoder_decoder" ? &src : nullptr;
  auto with_cache = generate(m, prompt, s, sp);
  s.use_cache = false;
  auto recompute = generate(m, prompt, s, sp);
  EXPECT_EQ(with_cache, recompute);
  ASSERT_EQ(with_cache.size(), 24u);
  // the sequence is not trivially constant (random enc-dec models may lock onto one token;
  // their per-step logits are checked in LogitsMatchFullForwardAtEveryStep)
  if (arch == "decoder") {
    EXPECT_GT(std::set<int32_t>(with_cache.begin(), with_cache.end()).size(), 1u);
  }
}

INSTANTIATE_TEST_SUITE_P(
    All, CachedGreedy,
    ::testing::Combine(::testing::Values("decoder", "encoder_decoder"),
                       ::testing::Values("none", "learned", "sinusoidal", "sinusoidal_half", "rope",
                                         "alibi", "t5", "shaw", "xl", "deberta")),
    [](const auto& i) { return std::get<0>(i.param) + "_" + std::get<1>(i.param); });

TEST(CachedDecoding, LogitsMatchFullForwardAtEveryStep) {
  // also RealFormer (attention.residual): the new rows carry their scores through the layers
  for (const char* arch : {"decoder", "encoder_decoder"})
    for (bool residual : {false, true}) {
      SCOPED_TRACE(std::string(arch) + (residual ? " residual" : ""));
      Transformer m =
          make_model(arch, arch[0] == 'd' ? "t5" : "deberta", 0, "softmax", 64, residual);
      std::vector<int32_t> seq = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
      TokenBatch src{{4, 8, 15, 16, 23}};
      ForwardOptions fo;
      if (arch[0] == 'e') fo.src = &src;
      auto full = m.forward(TokenBatch{seq}, fo);
      KVCache c = m.start_cache(1, 16, fo.src);
      auto first = m.forward_cached(TokenBatch{{1, 2, 3, 4}}, c);  // chunked prefill
      for (int64_t t = 0; t < 4; ++t)
        for (int64_t v = 0; v < 40; ++v)
          EXPECT_NEAR(first.logits.data<float>()[t * 40 + v], full.logits.data<float>()[t * 40 + v],
                      1e-4);
      for (int64_t t = 4; t < 10; ++t) {
        auto r = m.forward_cached(TokenBatch{{seq[t]}}, c);
        for (int64_t v = 0; v < 40; ++v)
          EXPECT_NEAR(r.logits.data<float>()[v], full.logits.data<float>()[t * 40 + v], 1e-4) << t;
      }
      EXPECT_EQ(c.len, 10);
      EXPECT_THROW(m.forward_cached(TokenBatch{std::vector<int32_t>(7, 1)}, c),
                   Error);  // over capacity
    }
}

TEST(Generate, LearnedPositionsRefusePastMaxLen) {
  Transformer m = make_model("decoder", "learned");
  SamplingConfig s;
  s.max_new_tokens = 60;
  try {
    generate(m, {1, 2, 3, 4, 5}, s);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_len"), std::string::npos) << e.what();
  }
}

TEST(Sampling, TopKTopPTemperatureAndPenalty) {
  std::vector<float> z = {1.0f, 3.0f, 2.0f, 0.5f};
  SamplingConfig s;
  uint64_t rng = 1;
  s.temperature = 0;
  EXPECT_EQ(sample_token(std::vector<float>(z).data(), 4, {}, s, rng), 1);
  s.repetition_penalty = 10.0;  // token 1 was seen: 3/10 < 2
  EXPECT_EQ(sample_token(std::vector<float>(z).data(), 4, {1}, s, rng), 2);
  s.repetition_penalty = 1.0, s.temperature = 1.0, s.top_k = 1;
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(sample_token(std::vector<float>(z).data(), 4, {}, s, rng), 1);
  s.top_k = 0, s.top_p = 0.5;  // p(1) = 0.63 > 0.5: nucleus is {1}
  for (int i = 0; i < 20; ++i)
    EXPECT_EQ(sample_token(std::vector<float>(z).data(), 4, {}, s, rng), 1);
  s.top_p = 1.0;  // full distribution: frequencies follow softmax
  std::vector<int> counts(4);
  for (int i = 0; i < 20000; ++i)
    counts[sample_token(std::vector<float>(z).data(), 4, {}, s, rng)]++;
  double Z = std::exp(1.0) + std::exp(3.0) + std::exp(2.0) + std::exp(0.5);
  EXPECT_NEAR(counts[1] / 20000.0, std::exp(3.0) / Z, 0.02);
  EXPECT_NEAR(counts[3] / 20000.0, std::exp(0.5) / Z, 0.01);
  s.top_p = 1.5;
  EXPECT_THROW(validate_sampling(s), Error);
}

// The decode state belongs to the attention variant: softmax keeps every key/value row, and
// the cache accounts for exactly that memory (SPEC.md 7: 2 * layers * Hkv * D * capacity * 4).
TEST(CachedDecoding, SoftmaxStateHoldsKeyValueRows) {
  Transformer m = make_model("decoder", "rope", 2);
  ASSERT_NE(m.attention(true), nullptr);
  EXPECT_EQ(m.attention(true)->name(), "softmax");
  EXPECT_EQ(m.attention(true)->caps().decode, DecodeKind::KeyValueRows);
  KVCache c = m.start_cache(3, 20);
  ASSERT_EQ(c.self.size(), 2u);
  const int64_t KD = 2 * (32 / 4);
  EXPECT_EQ(c.bytes(), size_t(2 * 2 * KD * 20 * 3) * sizeof(float));
  EXPECT_EQ(m.attention(true)->decode_bytes(3, 20) * 2, c.bytes());
  m.forward_cached({{1, 2, 3}, {4, 5, 6}, {7, 8, 9}}, c);
  m.forward_cached({{1}, {2}, {3}}, c);
  for (const auto& s : c.self) EXPECT_EQ(s->length(), 4);
  EXPECT_EQ(c.len, 4);
  // past the state's capacity: refused, naming the sizes
  try {
    m.forward_cached(TokenBatch(3, std::vector<int32_t>(17, 1)), c);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("20 positions"), std::string::npos) << e.what();
  }
}

TEST(AttentionRegistry, UnknownTypeIsNamed) {
  PositionConfig pc;
  pc.type = "rope";
  const StackGeom g{"decoder.", 1, 32, 4, 4, 8, 64, true, true};
  auto pe = make_position_encoding(pc, g);
  AttentionConfig ac;
  ac.type = "linear_typo";
  try {
    make_attention(ac, g, *pe);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear_typo"), std::string::npos) << e.what();
  }
  ac.type = "softmax";
  EXPECT_EQ(make_attention(ac, g, *pe)->name(), "softmax");
}

// The linear family decodes through its recurrent state (S, z per kv head): generation with the
// state equals recomputing the whole sequence each step, for every scheme each variant serves,
// with grouped-query heads, in decoders and encoder-decoders (cross-attention: non-causal).
class LinearCachedGreedy
    : public ::testing::TestWithParam<std::tuple<std::string, std::string, std::string, int64_t>> {
};

TEST_P(LinearCachedGreedy, EqualsFullRecompute) {
  const auto& [variant, arch, pos, kv] = GetParam();
  Transformer m = make_model(arch, pos, kv, variant);
  ASSERT_EQ(m.attention(true)->caps().decode, DecodeKind::Recurrent);
  std::vector<int32_t> prompt = {3, 14, 15, 9, 26}, src = {5, 3, 5, 8, 9, 7, 9};
  const std::vector<int32_t>* sp = arch == "encoder_decoder" ? &src : nullptr;
  // greedy, and sampled: a random linear-attention model tends to lock onto one token when
  // greedy (its attention outputs are running averages), sampling makes the sequences vary
  for (double temperature : {0.0, 1.0}) {
    SamplingConfig s;
    s.temperature = temperature, s.max_new_tokens = 24, s.seed = 11;
    auto with_cache = generate(m, prompt, s, sp);
    s.use_cache = false;
    auto recompute = generate(m, prompt, s, sp);
    EXPECT_EQ(with_cache, recompute) << "temperature " << temperature;
    ASSERT_EQ(with_cache.size(), 24u);
    if (temperature > 0) {
      EXPECT_GT(std::set<int32_t>(with_cache.begin(), with_cache.end()).size(), 4u);
    }
  }
}

auto linear_case_name = [](const auto& i) {
  return std::get<0>(i.param) + "_" + std::get<1>(i.param) + "_" + std::get<2>(i.param) + "_kv" +
         std::to_string(std::get<3>(i.param));
};
INSTANTIATE_TEST_SUITE_P(
    All, LinearCachedGreedy,
    ::testing::Combine(::testing::Values("linear"), ::testing::Values("decoder", "encoder_decoder"),
                       ::testing::Values("none", "learned", "sinusoidal", "sinusoidal_half"),
                       ::testing::Values(int64_t{0}, int64_t{2}, int64_t{1})),
    linear_case_name);
INSTANTIATE_TEST_SUITE_P(Cos, LinearCachedGreedy,
                         ::testing::Combine(::testing::Values("linear_cos"),
                                            ::testing::Values("decoder", "encoder_decoder"),
                                            ::testing::Values("rope", "learned"),
                                            ::testing::Values(int64_t{0}, int64_t{1})),
                         linear_case_name);
INSTANTIATE_TEST_SUITE_P(Rope, LinearCachedGreedy,
                         ::testing::Combine(::testing::Values("linear_rope"),
                                            ::testing::Values("decoder", "encoder_decoder"),
                                            ::testing::Values("rope"),
                                            ::testing::Values(int64_t{0}, int64_t{2}, int64_t{1})),
                         linear_case_name);

// The logits of every step, with a prefill longer than the kernel's 64-row chunk and then one
// token at a time, equal the full forward's.
TEST(CachedDecoding, LinearLogitsMatchFullForwardAtEveryStep) {
  for (const auto& [variant, pos] :
       {std::pair{"linear", "sinusoidal"}, {"linear_cos", "rope"}, {"linear_rope", "rope"}})
    for (const char* arch : {"decoder", "encoder_decoder"}) {
      SCOPED_TRACE(variant);
      Transformer m = make_model(arch, pos, 2, variant, 256);
      std::vector<int32_t> seq;
      for (int32_t t = 0; t < 100; ++t) seq.push_back((t * 7 + 3) % 40);
      TokenBatch src{{4, 8, 15, 16, 23, 42 % 40, 1, 2, 3}};
      ForwardOptions fo;
      if (arch[0] == 'e') fo.src = &src;
      auto full = m.forward(TokenBatch{seq}, fo);
      KVCache c = m.start_cache(1, 120, fo.src);
      const int64_t prefill = 70;
      auto first =
          m.forward_cached(TokenBatch{std::vector<int32_t>(seq.begin(), seq.begin() + prefill)}, c);
      double worst = 0;
      for (int64_t t = 0; t < prefill; ++t)
        for (int64_t v = 0; v < 40; ++v)
          worst = std::max(worst, double(std::fabs(first.logits.data<float>()[t * 40 + v] -
                                                   full.logits.data<float>()[t * 40 + v])));
      for (int64_t t = prefill; t < 100; ++t) {
        auto r = m.forward_cached(TokenBatch{{seq[t]}}, c);
        for (int64_t v = 0; v < 40; ++v)
          worst = std::max(worst, double(std::fabs(r.logits.data<float>()[v] -
                                                   full.logits.data<float>()[t * 40 + v])));
      }
      EXPECT_LT(worst, 1e-4) << arch;
      EXPECT_EQ(c.len, 100);
      for (const auto& s : c.self) EXPECT_EQ(s->length(), 100);
    }
}

// The recurrent state's memory is fixed: S [D, D] + z [D] per kv head and layer, whatever the
// capacity (softmax's K/V rows grow with it).
TEST(CachedDecoding, LinearStateHasFixedSize) {
  Transformer m = make_model("decoder", "none", 2, "linear");
  const int64_t D = 32 / 4, layers = 2, Hkv = 2;
  const size_t per_seq = size_t(layers * Hkv * (D * D + D)) * sizeof(float);
  for (int64_t cap : {1, 20, 5000}) {
    KVCache c = m.start_cache(3, cap);
    EXPECT_EQ(c.bytes(), 3 * per_seq) << cap;
    EXPECT_EQ(m.attention(true)->decode_bytes(3, cap) * layers, 3 * per_seq) << cap;
  }
  KVCache c = m.start_cache(3, 20);
  m.forward_cached({{1, 2, 3}, {4, 5, 6}, {7, 8, 9}}, c);
  m.forward_cached({{1}, {2}, {3}}, c);
  EXPECT_EQ(c.bytes(), 3 * per_seq);
  for (const auto& s : c.self) EXPECT_EQ(s->length(), 4);
}
