// Whole-model backward vs central finite differences of the loss, for every position encoding
// x arch and block variant. fp32 engine, so the step and tolerance are sized for fp32 noise;
// the exact (1e-4) check of every gradient is the PyTorch twin in tests/e2e/test_grad_twin.py.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "posformer/model/transformer.h"

using namespace posformer;

namespace {

struct Case {
  std::string arch, pos, act = "gelu", norm = "layernorm", norm_pos = "pre";
  bool bias = true, tie = true;
  int64_t kv = 0;
  bool sqrt_d = false;  // embed_scale "sqrt_d"
  double escale = 1.0;  // embed_scale as a number (integers only: the value is in the name)
  std::string attn = "softmax";
};

std::string case_name(const Case& c);
void PrintTo(const Case& c, std::ostream* os);

std::string case_name(const Case& c) {
  return c.arch + "_" + c.pos + "_" + c.act + "_" + c.norm + "_" + c.norm_pos +
         (c.bias ? "" : "_nobias") + (c.tie ? "" : "_untied") + (c.kv ? "_gqa" : "") +
         (c.sqrt_d ? "_escale_sqrtd" : "") +
         (c.escale != 1.0 ? "_escale" + std::to_string(static_cast<int>(c.escale)) : "") +
         (c.attn == "softmax" ? "" : "_" + c.attn);
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << case_name(c);
}

void run_gradcheck(const Case& cs) {
  ModelConfig c;
  c.arch = cs.arch, c.d_model = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = cs.kv,
  c.d_ff = 24;
  c.activation = cs.act, c.norm = cs.norm, c.norm_position = cs.norm_pos, c.bias = cs.bias;
  c.tie_embeddings = cs.tie, c.vocab_size = 23, c.max_len = 32;
  c.embed_scale_sqrt_d = cs.sqrt_d, c.embed_scale = cs.escale;
  c.position.type = cs.pos;
  c.attention.type = cs.attn;
  c.position.clip = 3, c.position.span = 4, c.position.num_buckets = 8,
  c.position.max_distance = 20;
  Transformer m = Transformer::random_init(c, 3);
  // larger weights than the 0.02 init so attention and position terms matter
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& [name, t] : m.params().all()) {
    float* p = t.data<float>();
    const bool is_norm = name.find("norm") != std::string::npos;
    const float sd = is_norm ? 0.2f : (t.ndim() == 2 ? 1.0f / std::sqrt(float(t.dim(1))) : 0.3f);
    for (int64_t i = 0; i < t.numel(); ++i)
      p[i] = (is_norm && name.find(".weight") != std::string::npos ? 1.0f : 0.0f) + sd * nd(rng);
  }
  const int64_t B = 2, T = 5;
  TokenBatch tok(B), tgt(B), src(B);
  std::uniform_int_distribution<int> ti(0, 22);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      tok[b].push_back(ti(rng));
      tgt[b].push_back(t == 2 && b == 1 ? -1 : ti(rng));
      src[b].push_back(ti(rng));
    }
  src[1].push_back(3), src[0].push_back(4);  // Ts = 6 != T
  ForwardOptions fo;
  fo.pos_offset = cs.arch == "encoder_decoder" ? 3 : 2;
  if (cs.arch == "encoder_decoder") fo.src = &src;
  ParamStore grads = m.zero_grads();
  auto l0 = m.loss_and_grad(tok, tgt, grads, fo);
  // the training forward's loss equals the inference forward's
  EXPECT_NEAR(l0.loss, m.loss(tok, tgt, fo).loss, 1e-5);
  std::mt19937 pick(5);
  for (auto& [name, t] : m.params().all()) {
    float* p = t.data<float>();
    const float* g = grads.f32(name);
    std::uniform_int_distribution<int64_t> idx(0, t.numel() - 1);
    // two random elements; for the token embedding also two in rows the batch uses (a random
    // element often sits in a row no token reads, where the gradient is trivially 0)
    std::vector<int64_t> at{idx(pick), idx(pick)};
    if (name == "embed.weight") {
      std::uniform_int_distribution<int64_t> col(0, c.d_model - 1);
      at.push_back(tok[0][1] * c.d_model + col(pick));
      at.push_back((cs.arch == "encoder_decoder" ? src[1][0] : tok[1][3]) * c.d_model + col(pick));
    }
    for (const int64_t i : at) {
      const float old = p[i], h = 2e-3f;
      p[i] = old + h;
      const double lp = m.loss(tok, tgt, fo).loss;
      p[i] = old - h;
      const double lm = m.loss(tok, tgt, fo).loss;
      p[i] = old;
      const double fd = (lp - lm) / (2.0 * h);
      EXPECT_NEAR(g[i], fd, 2e-3 + 2e-2 * std::fabs(fd))
          << case_name(cs) << " " << name << "[" << i << "]";
    }
  }
}

}  // namespace

class GradCheck : public ::testing::TestWithParam<Case> {};
TEST_P(GradCheck, MatchesFiniteDifferences) {
  run_gradcheck(GetParam());
}

std::vector<Case> all_cases() {
  std::vector<Case> v;
  for (std::string arch : {"encoder", "decoder", "encoder_decoder"})
    for (std::string pos : {"none", "learned", "sinusoidal", "sinusoidal_half", "rope", "alibi",
                            "t5", "shaw", "xl", "deberta"})
      v.push_back({arch, pos});
  v.push_back({"decoder", "rope", "swiglu", "rmsnorm", "pre", false, false, 2});
  v.push_back({"decoder", "t5", "relu", "layernorm", "post", true, false, 0});
  v.push_back({"encoder", "shaw", "gelu_tanh", "rmsnorm", "post", false, true, 2});
  v.push_back({"encoder_decoder", "deberta", "swiglu", "layernorm", "post", true, false, 2});
  v.push_back({"decoder", "xl", "gelu", "rmsnorm", "pre", true, true, 2});
  // embed_scale: the token embedding gradient carries the scale, the tied head's does not
  v.push_back({"decoder", "sinusoidal", "gelu", "layernorm", "pre", true, true, 0, true});
  v.push_back({"encoder", "learned", "gelu", "layernorm", "post", true, true, 0, true});
  v.push_back(
      {"encoder_decoder", "learned", "gelu", "layernorm", "pre", true, false, 0, false, 3.0});
  v.push_back(
      {"encoder_decoder", "sinusoidal_half", "gelu_tanh", "rmsnorm", "pre", true, true, 0, true});
  // linear attention (absolute schemes only: it refuses relative ones and RoPE)
  for (std::string arch : {"encoder", "decoder", "encoder_decoder"})
    for (std::string pos : {"none", "learned", "sinusoidal"})
      v.push_back({arch, pos, "gelu", "layernorm", "pre", true, true, 0, false, 1.0, "linear"});
  v.push_back({"decoder", "sinusoidal_half", "swiglu", "rmsnorm", "post", false, false, 2, false,
               1.0, "linear"});
  v.push_back({"encoder_decoder", "learned", "relu", "layernorm", "post", true, false, 1, false,
               1.0, "linear"});
  return v;
}

INSTANTIATE_TEST_SUITE_P(All, GradCheck, ::testing::ValuesIn(all_cases()),
                         [](const ::testing::TestParamInfo<Case>& i) {
                           return case_name(i.param);
                         });
