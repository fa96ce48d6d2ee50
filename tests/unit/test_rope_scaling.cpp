// RoPE scalings (SPEC.md 3): frequencies against values worked out by hand, dynamic NTK equal
// to plain RoPE up to L0, the config side (refusals, round trip), and cached decoding across L0
// equal to a full forward at every step (dynamic NTK re-rotates the cached keys).
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <random>

#include "posformer/core/error.h"
#include "posformer/model/config.h"
#include "posformer/model/transformer.h"
#include "posformer/ops/rope.h"

using namespace posformer;
using ops::RopeScaling;
using ops::RopeScalingType;
using json = nlohmann::json;

namespace {
const double kPi = 3.14159265358979323846;

RopeScaling scaling(RopeScalingType t, double s, int64_t L0 = 0) {
  RopeScaling r;
  r.type = t, r.factor = s, r.original_len = L0;
  return r;
}

void expect_theta(const ops::RopeFreqs& f, const std::vector<double>& want, double mscale = 1.0) {
  ASSERT_EQ(f.theta.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(f.theta[i], want[i], 1e-12 * std::max(1.0, std::abs(want[i]))) << "i=" << i;
  EXPECT_NEAR(f.mscale, mscale, 1e-14);
}
}  // namespace

// R = 4, base 10^4: theta = [1, 1/100].
TEST(RopeScaling, LinearAndNtkByHand) {
  expect_theta(ops::rope_frequencies(4, 1e4, {}, 0), {1.0, 0.01});
  expect_theta(ops::rope_frequencies(4, 1e4, scaling(RopeScalingType::Linear, 4), 0),
               {0.25, 0.0025});
  // ntk: base' = 10^4 * 4^(4/2) = 160000, theta_1 = 160000^(-1/2) = 1/400
  expect_theta(ops::rope_frequencies(4, 1e4, scaling(RopeScalingType::Ntk, 4), 0), {1.0, 0.0025});
  // R = 6: base' = 10^4 * 8^(6/4) = 10^4 * 8^1.5; theta_i = base'^(-i/3)
  const double b = 1e4 * std::sqrt(512.0);
  expect_theta(ops::rope_frequencies(6, 1e4, scaling(RopeScalingType::Ntk, 8), 0),
               {1.0, 1.0 / std::cbrt(b), 1.0 / std::cbrt(b * b)});
}

// s = 4, L0 = 16, R = 4: s' = 4 L/16 - 3; L = 32 -> s' = 5, base' = 250000, theta_1 = 1/500;
// L = 64 -> s' = 13, theta_1 = 1/1300.
TEST(RopeScaling, DynamicNtkByHandAndPlainUpToL0) {
  const RopeScaling d = scaling(RopeScalingType::DynamicNtk, 4, 16);
  expect_theta(ops::rope_frequencies(4, 1e4, d, 32), {1.0, 1.0 / 500});
  expect_theta(ops::rope_frequencies(4, 1e4, d, 64), {1.0, 1.0 / 1300});
  for (int64_t R : {4, 16, 64, 128})
    for (int64_t L0 : {1, 16, 2048})
      for (int64_t L : {int64_t{0}, int64_t{1}, L0 - 1, L0}) {
        const RopeScaling s = scaling(RopeScalingType::DynamicNtk, 8, L0);
        EXPECT_EQ(ops::rope_frequencies(R, 1e4, s, L).theta, ops::rope_inv_freq(R, 1e4))
            << "R=" << R << " L0=" << L0 << " L=" << L;
        EXPECT_NE(ops::rope_frequencies(R, 1e4, s, L0 + 1).theta, ops::rope_inv_freq(R, 1e4));
      }
}

// R = 8, base 10^4: corr(r) = 8 ln(L0/(2 pi r)) / (2 ln 10^4) = log10(L0/(2 pi r)). L0 = 2000:
// corr(32) = log10(9.947) -> low = 0, corr(1) = log10(318.3) -> high = 3; ramp = 1 - i/3:
// i = 0 kept (ramp end), i = 3 divided by s (other end), 1 and 2 blended. s = 4:
//   theta_1 = 0.1 (1/4 * 1/3 + 2/3) = 0.075, theta_2 = 0.01 (1/4 * 2/3 + 1/3) = 0.005.
TEST(RopeScaling, YarnRampEndsByHand) {
  expect_theta(ops::rope_frequencies(8, 1e4, scaling(RopeScalingType::Yarn, 4, 2000), 0),
               {1.0, 0.075, 0.005, 0.00025}, 1 + 0.1 * std::log(4.0));
  // beta_fast 3.2, beta_slow 0.1: corr = log10(2000/(2 pi 3.2)) = 1.9977 -> low 1,
  // log10(2000/(0.2 pi)) = 3.503 -> high 4: ramp 1, 1, 2/3, 1/3 for i = 0..3
  RopeScaling y = scaling(RopeScalingType::Yarn, 2, 2000);
  y.beta_fast = 3.2, y.beta_slow = 0.1;
  expect_theta(ops::rope_frequencies(8, 1e4, y, 0),
               {1.0, 0.1, 0.01 * (0.5 / 3 + 2.0 / 3), 0.001 * (1.0 / 3 + 1.0 / 3)},
               1 + 0.1 * std::log(2.0));
  // the current length does not matter
  EXPECT_EQ(ops::rope_frequencies(8, 1e4, y, 1 << 20).theta,
            ops::rope_frequencies(8, 1e4, y, 0).theta);
}

// R = 8: lambda_i = 2 pi 10^i. L0 = 1000, factors 1 and 4: kept below 250, divided above 1000:
// lambda_2 = 628.3 blended with a = (1000 / (200 pi) - 1) / 3.
TEST(RopeScaling, Llama3BandsAndEdgesByHand) {
  const double a = (5 / kPi - 1) / 3;
  expect_theta(ops::rope_frequencies(8, 1e4, scaling(RopeScalingType::Llama3, 8, 1000), 0),
               {1.0, 0.1, 0.01 * ((1 - a) / 8 + a), 0.001 / 8});
  // high edge at lambda_1 = 20 pi = 62.83: L0 = 252 keeps it (L0/4 = 63), L0 = 251 blends it
  // with a = (251/(20 pi) - 1)/3 (just under 1: continuous at the edge)
  auto th1 = [](int64_t L0) {
    return ops::rope_frequencies(8, 1e4, scaling(RopeScalingType::Llama3, 8, L0), 0).theta[1];
  };
  EXPECT_DOUBLE_EQ(th1(252), 0.1);
  const double a1 = (251 / (20 * kPi) - 1) / 3;
  EXPECT_NEAR(th1(251), 0.1 * ((1 - a1) / 8 + a1), 1e-15);
  EXPECT_NEAR(th1(251), 0.1, 2e-3 * 0.1);
  // low edge at lambda_2 = 200 pi = 628.3: L0 = 628 divides it, L0 = 629 blends it
  auto th2 = [](int64_t L0) {
    return ops::rope_frequencies(8, 1e4, scaling(RopeScalingType::Llama3, 8, L0), 0).theta[2];
  };
  EXPECT_DOUBLE_EQ(th2(628), 0.01 / 8);
  const double a2 = (629 / (200 * kPi) - 1) / 3;
  EXPECT_NEAR(th2(629), 0.01 * ((1 - a2) / 8 + a2), 1e-15);
  EXPECT_NEAR(th2(629), 0.01 / 8, 1e-3 * 0.01);
  // other factors: low 2, high 8, L0 = 2000: kept below 250, divided above 1000 (same bands)
  RopeScaling l = scaling(RopeScalingType::Llama3, 2, 2000);
  l.low_freq_factor = 2, l.high_freq_factor = 8;
  const double b = (2000 / (200 * kPi) - 2) / 6;
  expect_theta(ops::rope_frequencies(8, 1e4, l, 0), {1.0, 0.1, 0.01 * ((1 - b) / 2 + b), 0.0005});
}

TEST(RopeScaling, FunctionRefusesBadScalings) {
  EXPECT_THROW(ops::rope_frequencies(4, 1e4, scaling(RopeScalingType::Linear, 0.5), 0), Error);
  EXPECT_THROW(ops::rope_frequencies(4, 1e4, scaling(RopeScalingType::Yarn, 2, 0), 0), Error);
  EXPECT_THROW(ops::rope_frequencies(2, 1e4, scaling(RopeScalingType::Ntk, 2), 0), Error);
  EXPECT_THROW(ops::parse_rope_scaling_type("ntk_aware", "--rope-scaling"), Error);
}

namespace {
json rope_cfg(json scaling, json extra = json::object()) {
  json j = {{"arch", "decoder"},
            {"d_model", 32},
            {"n_heads", 4},
            {"d_ff", 48},
            {"position", {{"type", "rope"}, {"scaling", scaling}}}};
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return j;
}
void expect_refused(const json& j, std::initializer_list<const char*> words) {
  try {
    parse_config(j);
    FAIL() << "config accepted: " << j.dump();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* w : words) EXPECT_NE(msg.find(w), std::string::npos) << "message: " << msg;
  }
}
}  // namespace

TEST(RopeScalingConfig, RefusalsNameTheField) {
  expect_refused(rope_cfg("yarn"), {"position.scaling", "object"});
  expect_refused(rope_cfg({{"factor", 2}}), {"position.scaling.type"});
  expect_refused(rope_cfg({{"type", "ntk_aware"}}), {"position.scaling.type", "ntk_aware", "yarn"});
  expect_refused(rope_cfg({{"type", "linear"}, {"factor", 0.5}}),
                 {"position.scaling.factor", ">= 1", "0.5"});
  expect_refused(rope_cfg({{"type", "linear"}, {"factor", "4"}}),
                 {"position.scaling.factor", "number"});
  expect_refused(rope_cfg({{"type", "yarn"}, {"factor", 4}}),
                 {"position.scaling.original_len", "required", "yarn"});
  expect_refused(rope_cfg({{"type", "dynamic_ntk"}, {"factor", 4}, {"original_len", 1.5}}),
                 {"position.scaling.original_len", "integer"});
  expect_refused(rope_cfg({{"type", "linear"}, {"factor", 4}, {"beta_fast", 16}}),
                 {"position.scaling.beta_fast", "linear", "yarn"});
  expect_refused(
      rope_cfg({{"type", "yarn"}, {"factor", 4}, {"original_len", 64}, {"high_freq_factor", 4}}),
      {"position.scaling.high_freq_factor", "llama3"});
  expect_refused(rope_cfg({{"type", "linear"}, {"factr", 4}}), {"position.scaling.factr"});
  expect_refused(
      rope_cfg({{"type", "yarn"}, {"factor", 4}, {"original_len", 64}, {"beta_fast", 0.5}}),
      {"beta_fast", "beta_slow"});
  expect_refused(rope_cfg({{"type", "llama3"},
                           {"factor", 4},
                           {"original_len", 64},
                           {"low_freq_factor", 4},
                           {"high_freq_factor", 2}}),
                 {"high_freq_factor", "low_freq_factor"});
  json two = rope_cfg({{"type", "ntk"}, {"factor", 4}});
  two["position"]["rotary_dim"] = 2;
  expect_refused(two, {"ntk", "rotary dim > 2"});
  expect_refused({{"position", {{"type", "alibi"}, {"scaling", {{"type", "linear"}}}}}},
                 {"position.scaling", "alibi", "rope"});
  // linear_rope rotates block by block: refused with dynamic_ntk, naming both
  json lr = rope_cfg({{"type", "dynamic_ntk"}, {"factor", 2}, {"original_len", 8}},
                     {{"attention", {{"type", "linear_rope"}}}});
  try {
    Transformer m(parse_config(lr));
    FAIL() << "linear_rope with dynamic_ntk accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear_rope"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("dynamic_ntk"), std::string::npos) << e.what();
  }
}

TEST(RopeScalingConfig, RoundTripWritesEveryField) {
  const json y = {{"type", "yarn"},
                  {"factor", 4.0},
                  {"original_len", 64},
                  {"beta_fast", 16.0},
                  {"beta_slow", 2.0}};
  ModelConfig c = parse_config(rope_cfg(y));
  EXPECT_EQ(c.position.scaling.type, RopeScalingType::Yarn);
  EXPECT_EQ(config_to_json(c)["position"]["scaling"], y);
  EXPECT_EQ(parse_config(config_to_json(c)).position.scaling, c.position.scaling);
  // defaults of llama3's own fields are written back
  ModelConfig l = parse_config(rope_cfg({{"type", "llama3"}, {"factor", 8}, {"original_len", 64}}));
  EXPECT_EQ(config_to_json(l)["position"]["scaling"]["low_freq_factor"], 1.0);
  EXPECT_EQ(config_to_json(l)["position"]["scaling"]["high_freq_factor"], 4.0);
  EXPECT_EQ(config_to_json(parse_config(rope_cfg({{"type", "none"}})))["position"]["scaling"],
            json({{"type", "none"}}));
}

namespace {
Transformer scaled_model(const std::string& layout, int64_t kv, const json& scaling,
                         int64_t n_layers) {
  json j = rope_cfg(scaling, {{"n_layers", n_layers}, {"vocab_size", 40}, {"max_len", 64}});
  j["n_kv_heads"] = kv;
  j["position"]["layout"] = layout;
  Transformer m = Transformer::random_init(parse_config(j), 7);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& [name, t] : m.params().all()) {  // larger weights: position-sensitive logits
    if (name.find("norm") != std::string::npos) continue;
    float* p = t.data<float>();
    const float sd = t.ndim() == 2 ? 2.0f / std::sqrt(float(t.dim(1))) : 0.8f;
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = sd * nd(rng);
  }
  return m;
}

// Decodes seq in chunks (prefill of 4, a chunk of 5 across L0 = 6, then one token at a time) and
// returns, per chunk, max |cached - full| / max(1, max |full|) over its logits, where full is a
// forward over tokens 0 .. end of the chunk (current length = end + 1).
std::vector<double> cached_vs_full(const Transformer& m) {
  const std::vector<int32_t> seq = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18};
  KVCache c = m.start_cache(1, 32);
  std::vector<double> err;
  int64_t t0 = 0;
  for (int64_t n : {4, 5, 1, 1, 1, 1, 1, 1, 1, 1, 1}) {
    auto r = m.forward_cached(
        TokenBatch{std::vector<int32_t>(seq.begin() + t0, seq.begin() + t0 + n)}, c);
    auto full = m.forward(TokenBatch{std::vector<int32_t>(seq.begin(), seq.begin() + t0 + n)});
    double worst = 0, scale = 1;
    for (int64_t t = 0; t < n; ++t)
      for (int64_t v = 0; v < 40; ++v) {
        const float a = r.logits.data<float>()[t * 40 + v];
        const float b = full.logits.data<float>()[(t0 + t) * 40 + v];
        worst = std::max(worst, double(std::abs(a - b)));
        scale = std::max(scale, double(std::abs(b)));
      }
    err.push_back(worst / scale);
    t0 += n;
  }
  return err;
}
}  // namespace

// Dynamic NTK re-rotates the cached keys to each step's frequencies: with one layer (the keys and
// values of past tokens are then functions of their embeddings only) cached decoding equals a full
// forward at every step across L0. Deeper layers' cached rows come from hidden states computed at
// the length each token was decoded at (docs/positional-encodings.md): equal up to L0 only.
TEST(RopeScalingDecode, DynamicNtkCachedEqualsFullForwardAcrossL0) {
  const json dyn = {{"type", "dynamic_ntk"}, {"factor", 4}, {"original_len", 6}};
  for (const char* layout : {"interleaved", "half"})
    for (int64_t kv : {0, 2}) {
      SCOPED_TRACE(std::string(layout) + " kv=" + std::to_string(kv));
      const std::vector<double> one = cached_vs_full(scaled_model(layout, kv, dyn, 1));
      for (size_t i = 0; i < one.size(); ++i) EXPECT_LE(one[i], 1e-5) << "chunk " << i;
      const std::vector<double> two = cached_vs_full(scaled_model(layout, kv, dyn, 2));
      EXPECT_LE(two[0], 1e-5);  // tokens 0..3: below L0
    }
}

// Static scalings (YaRN's mscale included) decode exactly as a full forward, any depth.
TEST(RopeScalingDecode, StaticScalingsCachedEqualsFullForward) {
  const json scalings[] = {
      {{"type", "linear"}, {"factor", 4}},
      {{"type", "ntk"}, {"factor", 4}},
      {{"type", "yarn"}, {"factor", 4}, {"original_len", 6}},
      {{"type", "llama3"}, {"factor", 4}, {"original_len", 6}},
  };
  for (const json& sc : scalings)
    for (const char* layout : {"interleaved", "half"}) {
      SCOPED_TRACE(sc.dump() + " " + layout);
      const std::vector<double> e = cached_vs_full(scaled_model(layout, 2, sc, 2));
      for (size_t i = 0; i < e.size(); ++i) EXPECT_LE(e[i], 1e-5) << "chunk " << i;
    }
}
TEST(RopeScalingDecode, RecurrentStatePastL0Refused) {
  json j = rope_cfg({{"type", "dynamic_ntk"}, {"factor", 2}, {"original_len", 8}},
                    {{"attention", {{"type", "performer"}, {"n_features", 8}}}});
  Transformer m = Transformer::random_init(parse_config(j), 1);
  EXPECT_NO_THROW(m.start_cache(1, 8));  // up to L0 the frequencies never change
  try {
    m.start_cache(1, 9);
    FAIL() << "performer decoding past L0 with dynamic_ntk accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("dynamic_ntk"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("performer"), std::string::npos) << e.what();
  }
}
