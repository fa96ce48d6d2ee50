// The length-extrapolation study's pieces that need no training: flag checks, the model list
// (names, refused combinations), the eval-variant hook, and the CSV / markdown writers.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "posformer/core/error.h"
#include "posformer/train/extrapolation.h"
#include "test_util.h"

using namespace posformer;
using pf_test::expect_error;

namespace {

StudySpec spec() {
  StudySpec s;
  s.config_path = "base.json";
  s.out_dir = "out";
  s.positions = {"learned", "rope"};
  s.train_len = 16;
  s.eval_lens = {16, 32, 64};
  s.eval_tokens = 256;
  return s;
}

ModelConfig base() {
  ModelConfig c;
  c.d_model = 32, c.n_heads = 2, c.n_layers = 1, c.d_ff = 64, c.max_len = 32;
  return c;
}

}  // namespace

TEST(Extrapolation, ValidateRefusesBadFlags) {
  EXPECT_NO_THROW(validate(spec()));
  auto with = [](auto edit) {
    StudySpec s = spec();
    edit(s);
    return [s] { validate(s); };
  };
  expect_error(with([](StudySpec& s) {
                 s.positions = {"rope", "ropee"};
               }),
               {"--positions", "unknown type \"ropee\"", "alibi"});
  expect_error(with([](StudySpec& s) { s.positions = {"rope", "rope"}; }), {"twice"});
  expect_error(with([](StudySpec& s) { s.attentions = {"flash"}; }), {"--attention", "flash"});
  expect_error(with([](StudySpec& s) { s.eval_lens = {32, 16}; }), {"increasing", "32 then 16"});
  expect_error(with([](StudySpec& s) { s.eval_lens = {}; }), {"--eval-lens"});
  expect_error(with([](StudySpec& s) { s.eval_tokens = 63; }), {"--eval-tokens (63)", "64"});
  expect_error(with([](StudySpec& s) { s.steps = 0; }), {"--steps", "0"});
  expect_error(with([](StudySpec& s) { s.val_fraction = 0; }), {"--val-fraction"});
  expect_error(with([](StudySpec& s) { s.train_len = 1; }), {"--train-len", "1"});
}

TEST(Extrapolation, ModelsNamesAndRefusals) {
  StudySpec s = spec();
  std::vector<StudyModel> m = study_models(s, base());
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0].name, "learned");
  EXPECT_EQ(m[1].name, "rope");
  EXPECT_EQ(m[1].cfg.position.type, "rope");
  EXPECT_TRUE(m[0].refused.empty() && m[1].refused.empty());

  // several attention variants: names carry the variant; the registry's refusal is kept
  s.positions = {"rope", "alibi"};
  s.attentions = {"softmax", "linear_rope"};
  m = study_models(s, base());
  ASSERT_EQ(m.size(), 4u);
  EXPECT_EQ(m[0].name, "rope+softmax");
  EXPECT_EQ(m[3].name, "alibi+linear_rope");
  EXPECT_EQ(m[3].cfg.attention.type, "linear_rope");
  EXPECT_TRUE(m[2].refused.empty()) << m[2].refused;
  EXPECT_NE(m[3].refused.find("attention 'linear_rope' cannot serve position 'alibi'"),
            std::string::npos)
      << m[3].refused;

  // learned needs its table to cover the training length
  s = spec();
  s.train_len = 64, s.eval_lens = {64}, s.eval_tokens = 64;
  m = study_models(s, base());
  EXPECT_NE(m[0].refused.find("max_len >= --train-len 64, the config has 32"), std::string::npos)
      << m[0].refused;
  EXPECT_TRUE(m[1].refused.empty());

  ModelConfig enc = base();
  enc.arch = Arch::Encoder;
  expect_error([&] { study_models(spec(), enc); }, {"arch decoder", "encoder"});
}

TEST(Extrapolation, EvalVariantsStartWithTheModelAsTrained) {
  ModelConfig c = base();
  c.position.type = "rope";
  const std::vector<EvalVariant> v = eval_variants(c, {});
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].name, "none");
  const std::optional<ModelConfig> at = v[0].config(c, 1024, 16);
  ASSERT_TRUE(at.has_value());
  EXPECT_EQ(config_to_json(*at), config_to_json(c));
}

TEST(Extrapolation, RopeModelsAreScoredUnderEachScalingStretchedToTheLength) {
  ModelConfig c = base();
  c.position.type = "rope";
  const std::vector<EvalVariant> v = eval_variants(c, {"linear", "yarn", "dynamic_ntk"});
  ASSERT_EQ(v.size(), 4u);
  EXPECT_EQ(v[1].name, "rope:linear");
  EXPECT_EQ(v[2].name, "rope:yarn");
  EXPECT_EQ(v[3].name, "rope:dynamic_ntk");
  // factor L / train_len past the training length, 1 up to it; original length = train_len
  std::optional<ModelConfig> at = v[1].config(c, 1024, 16);
  ASSERT_TRUE(at.has_value());
  EXPECT_EQ(at->position.scaling.type, ops::RopeScalingType::Linear);
  EXPECT_DOUBLE_EQ(at->position.scaling.factor, 64.0);
  EXPECT_EQ(at->position.scaling.original_len, 16);
  at = v[2].config(c, 8, 16);
  ASSERT_TRUE(at.has_value());
  EXPECT_EQ(at->position.scaling.type, ops::RopeScalingType::Yarn);
  EXPECT_DOUBLE_EQ(at->position.scaling.factor, 1.0);
  validate_config(*at);
  // dynamic NTK keeps factor 1: its frequencies follow the window length by themselves
  at = v[3].config(c, 1024, 16);
  ASSERT_TRUE(at.has_value());
  EXPECT_DOUBLE_EQ(at->position.scaling.factor, 1.0);
  validate_config(*at);
  // other schemes, and a model trained with a scaling, are scored as trained only
  ModelConfig alibi = base();
  alibi.position.type = "alibi";
  EXPECT_EQ(eval_variants(alibi, {"linear"}).size(), 1u);
  ModelConfig scaled = c;
  scaled.position.scaling.type = ops::RopeScalingType::Linear;
  scaled.position.scaling.factor = 2;
  EXPECT_EQ(eval_variants(scaled, {"linear"}).size(), 1u);
  // bad names are refused naming the flag
  StudySpec s = spec();
  s.rope_scalings = {"bogus"};
  expect_error([&] { validate(s); }, {"--rope-scalings", "bogus"});
  s.rope_scalings = {"ntk", "ntk"};
  expect_error([&] { validate(s); }, {"--rope-scalings", "twice"});
}

TEST(Extrapolation, CsvAndMarkdown) {
  StudySpec s = spec();
  StudyResult r;
  r.held_out_tokens = 256;
  auto row = [](const std::string& m, int64_t L, double ppl, const std::string& status = "ok") {
    StudyRow x;
    x.model = m, x.position = m, x.attention = "softmax", x.variant = "none", x.status = status;
    x.train_len = 16, x.eval_len = L;
    if (status == "ok") x.ppl = ppl, x.loss = std::log(ppl), x.bpb = 1.5, x.windows = 256 / L;
    x.tokens = x.windows * L;
    return x;
  };
  r.rows = {row("learned", 16, 4.0),
            row("learned", 32, 6.0),
            row("learned", 64, 0, "n/a: learned table ends at max_len 32"),
            row("rope", 16, 5.0),
            row("rope", 32, 5.5),
            row("rope", 64, 7.5)};
  StudyRow sk;
  sk.model = sk.position = "alibi", sk.attention = "softmax", sk.variant = "none";
  sk.train_len = 16, sk.status = "skipped: [config] no, not this";
  r.rows.push_back(sk);
  r.notes = {"a note"};
  const std::string csv = results_csv(r.rows);
  EXPECT_EQ(csv,
            "model,position,attention,variant,train_len,eval_len,status,loss,ppl,bits_per_byte,"
            "windows,tokens\n"
            "learned,learned,softmax,none,16,16,ok,1.386294,4.000000,1.500000,16,256\n"
            "learned,learned,softmax,none,16,32,ok,1.791759,6.000000,1.500000,8,256\n"
            "learned,learned,softmax,none,16,64,n/a: learned table ends at max_len 32,,,,0,0\n"
            "rope,rope,softmax,none,16,16,ok,1.609438,5.000000,1.500000,16,256\n"
            "rope,rope,softmax,none,16,32,ok,1.704748,5.500000,1.500000,8,256\n"
            "rope,rope,softmax,none,16,64,ok,2.014903,7.500000,1.500000,4,256\n"
            "alibi,alibi,softmax,none,16,,skipped: [config] no  not this,,,,0,0\n");
  const std::string md = results_markdown(s, r);
  EXPECT_NE(md.find("| model | 16 (train) | 32 | 64 |\n|---|---:|---:|---:|\n"
                    "| learned | 4.000 | 6.000 | n/a |\n"
                    "| rope | 5.000 | 5.500 | 7.500 |\n"
                    "| alibi | skipped | skipped | skipped |\n"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("| learned | 1.00 | 1.50 | n/a |\n| rope | 1.00 | 1.10 | 1.50 |\n"),
            std::string::npos)
      << md;
  EXPECT_NE(md.find("same first 256 tokens"), std::string::npos) << md;
  EXPECT_NE(md.find("- a note\n"), std::string::npos) << md;

  // rows survive the manifest round trip
  for (const StudyRow& x : r.rows) {
    const StudyRow y = row_from_json(row_to_json(x));
    EXPECT_EQ(row_to_json(y), row_to_json(x));
  }
}
