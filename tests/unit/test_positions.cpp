// Positions as data (core/positions.h, ForwardOptions::positions / lengths): explicit position
// ids equal the run they spell out; relative schemes are invariant to shifting every id, absolute
// ones are not; right-padded batches with lengths equal each sequence run alone, in the forward
// and in every gradient; bad ids and lengths are refused naming what is wrong.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "posformer/model/transformer.h"
#include "test_util.h"

using namespace posformer;

namespace {

struct Case {
  std::string arch, pos, attn = "softmax";
};

std::string case_name(const Case& c) {
  return c.arch + "_" + c.pos + (c.attn == "softmax" ? "" : "_" + c.attn);
}

void PrintTo(const Case& c, std::ostream* os) {
  *os << case_name(c);
}

bool relative(const std::string& pos) {
  return pos != "learned" && pos != "sinusoidal" && pos != "sinusoidal_half";
}

// A small model with weights large enough that positions matter.
Transformer make_model(const Case& cs) {
  ModelConfig c;
  c.arch = cs.arch, c.d_model = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 24;
  c.vocab_size = 19, c.max_len = 40;
  c.position.type = cs.pos;
  c.attention.type = cs.attn;
  c.position.clip = 3, c.position.span = 4, c.position.num_buckets = 8,
  c.position.max_distance = 20;
  Transformer m = Transformer::random_init(c, 5);
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (auto& [name, t] : m.params().all()) {
    if (name.find("norm") != std::string::npos) continue;
    float* p = t.data<float>();
    const float sd = t.ndim() == 2 ? 1.0f / std::sqrt(float(t.dim(1))) : 0.3f;
    for (int64_t i = 0; i < t.numel(); ++i) p[i] = sd * nd(rng);
  }
  return m;
}

TokenBatch random_tokens(int64_t B, int64_t T, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> ti(0, 18);
  TokenBatch tok(B, std::vector<int32_t>(T));
  for (auto& row : tok)
    for (auto& x : row) x = ti(rng);
  return tok;
}

// max |a - b| / max(max |b|, floor): the floor keeps gradients that are zero in exact arithmetic
// (a key bias under softmax) from dividing rounding noise by rounding noise.
double max_rel_diff(const float* a, const float* b, int64_t n, double floor = 1e-30) {
  double num = 0, den = floor;
  for (int64_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(double(a[i]) - double(b[i])));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return num / den;
}

std::vector<Case> all_cases() {
  std::vector<Case> v;
  for (const char* arch : {"decoder", "encoder", "encoder_decoder"})
    for (const char* pos : {"none", "learned", "sinusoidal", "sinusoidal_half", "rope", "alibi",
                            "t5", "shaw", "xl", "deberta"})
      v.push_back({arch, pos});
  for (const char* arch : {"decoder", "encoder"})
    for (const char* pos : {"none", "learned", "sinusoidal"}) v.push_back({arch, pos, "linear"});
  return v;
}

// Each check runs over the cases it is about (no skipped instances).
template <class Pred>
std::vector<Case> cases_where(Pred keep) {
  std::vector<Case> v;
  for (const Case& c : all_cases())
    if (keep(c)) v.push_back(c);
  return v;
}

class PositionsTest : public ::testing::TestWithParam<Case> {};
class PositionShift : public ::testing::TestWithParam<Case> {};
class PaddedGradients : public ::testing::TestWithParam<Case> {};
class IdGradients : public ::testing::TestWithParam<Case> {};

// ids [b][t] = offset + t spell out the run from `offset`: the same forward, bit for bit up to
// the order of float operations (1e-6).
TEST_P(PositionsTest, ExplicitIdsEqualTheRun) {
  const Case cs = GetParam();
  Transformer m = make_model(cs);
  const int64_t B = 2, T = 7, offset = 3;
  TokenBatch tok = random_tokens(B, T, 1), src = random_tokens(B, 6, 2);
  ForwardOptions run;
  run.pos_offset = offset;
  if (cs.arch == "encoder_decoder") run.src = &src;
  TokenBatch ids(B, std::vector<int32_t>(T));
  for (auto& row : ids)
    for (int64_t t = 0; t < T; ++t) row[t] = static_cast<int32_t>(offset + t);
  ForwardOptions exp = run;
  exp.pos_offset = 0, exp.positions = &ids;
  const Tensor a = m.forward(tok, run).hidden, b = m.forward(tok, exp).hidden;
  EXPECT_LT(max_rel_diff(b.data<float>(), a.data<float>(), a.numel()), 1e-6);
}

// Shifting every id by 9 leaves a relative scheme's output unchanged (it sees only j - i; RoPE:
// rotations by the same extra angle cancel in q.k), and changes an absolute scheme's.
TEST_P(PositionShift, InvariantOnlyForRelativeSchemes) {
  const Case cs = GetParam();
  Transformer m = make_model(cs);
  const int64_t B = 2, T = 6;
  TokenBatch tok = random_tokens(B, T, 3);
  TokenBatch ids(B, std::vector<int32_t>(T)), shifted = ids;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t)
      ids[b][t] = static_cast<int32_t>(b * 2 + t), shifted[b][t] = ids[b][t] + 9;
  ForwardOptions o1, o2;
  o1.positions = &ids, o2.positions = &shifted;
  const Tensor a = m.forward(tok, o1).hidden, b = m.forward(tok, o2).hidden;
  const double d = max_rel_diff(b.data<float>(), a.data<float>(), a.numel());
  if (relative(cs.pos))
    EXPECT_LT(d, 2e-5) << "a relative scheme saw absolute positions";
  else
    EXPECT_GT(d, 1e-3) << "an absolute scheme ignored the ids";
}

// Right padding: sequences of lengths 4, 7, 5 in one [3, 7] batch give, at their valid rows,
// what each gives alone; encoder_decoder sources padded too.
TEST_P(PositionsTest, PaddedBatchEqualsEachSequenceAlone) {
  const Case cs = GetParam();
  Transformer m = make_model(cs);
  const std::vector<int32_t> len{4, 7, 5}, slen{6, 3, 5};
  const int64_t B = 3, T = 7, Ts = 6, d = 16;
  TokenBatch tok = random_tokens(B, T, 4), src = random_tokens(B, Ts, 5);
  ForwardOptions opt;
  opt.lengths = &len;
  if (cs.arch == "encoder_decoder") opt.src = &src, opt.src_lengths = &slen;
  const Tensor all = m.forward(tok, opt).hidden;
  for (int64_t b = 0; b < B; ++b) {
    TokenBatch one{std::vector<int32_t>(tok[b].begin(), tok[b].begin() + len[b])};
    TokenBatch one_src{std::vector<int32_t>(src[b].begin(), src[b].begin() + slen[b])};
    ForwardOptions o1;
    if (cs.arch == "encoder_decoder") o1.src = &one_src;
    const Tensor alone = m.forward(one, o1).hidden;
    EXPECT_LT(max_rel_diff(all.data<float>() + b * T * d, alone.data<float>(), len[b] * d), 2e-6)
        << "sequence " << b;
  }
}

// The gradient of the padded batch's mean loss (targets -1 on padding) equals the sum of each
// sequence's gradient weighted by its share of the counted targets.
TEST_P(PaddedGradients, EqualEachSequenceAlone) {
  const Case cs = GetParam();
  Transformer m = make_model(cs);
  const std::vector<int32_t> len{3, 6}, slen{5, 2};
  const int64_t B = 2, T = 6, Ts = 5;
  TokenBatch tok = random_tokens(B, T, 6), tgt = random_tokens(B, T, 7),
             src = random_tokens(B, Ts, 8);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = len[b]; t < T; ++t) tgt[b][t] = -1;
  ForwardOptions opt;
  opt.lengths = &len;
  if (cs.arch == "encoder_decoder") opt.src = &src, opt.src_lengths = &slen;
  ParamStore g_all = m.zero_grads(), g_sep = m.zero_grads();
  const auto total = m.loss_and_grad(tok, tgt, g_all, opt);
  double loss_sep = 0;
  for (int64_t b = 0; b < B; ++b) {
    TokenBatch one{std::vector<int32_t>(tok[b].begin(), tok[b].begin() + len[b])};
    TokenBatch one_t{std::vector<int32_t>(tgt[b].begin(), tgt[b].begin() + len[b])};
    TokenBatch one_src{std::vector<int32_t>(src[b].begin(), src[b].begin() + slen[b])};
    ForwardOptions o1;
    if (cs.arch == "encoder_decoder") o1.src = &one_src;
    const float w = static_cast<float>(len[b]) / static_cast<float>(total.count);
    const auto part = m.loss_and_grad(one, one_t, g_sep, o1, w);
    loss_sep += part.loss * w;
  }
  EXPECT_NEAR(total.loss, loss_sep, 1e-5 * std::fabs(loss_sep));
  double gmax = 0;
  for (const auto& [name, t] : g_sep.all())
    for (int64_t i = 0; i < t.numel(); ++i)
      gmax = std::max(gmax, std::fabs(double(t.data<float>()[i])));
  for (const auto& [name, t] : g_all.all()) {
    const Tensor& s = g_sep.all().at(name);
    // fp32 sums in another order (the gemm shapes differ): measured up to 4.4e-5
    EXPECT_LT(max_rel_diff(t.data<float>(), s.data<float>(), t.numel(), 1e-3 * gmax), 1e-4) << name;
  }
}

// Explicit ids repeat (two documents packed in one row, each from 0): the gradient equals the
// run's where the ids spell the run, and the learned table's gradient piles up on repeated ids.
TEST_P(IdGradients, EqualTheRun) {
  const Case cs = GetParam();
  Transformer m = make_model(cs);
  const int64_t B = 2, T = 6;
  TokenBatch tok = random_tokens(B, T, 9), tgt = random_tokens(B, T, 10);
  TokenBatch ids(B, std::vector<int32_t>(T));
  for (auto& row : ids)
    for (int64_t t = 0; t < T; ++t) row[t] = static_cast<int32_t>(2 + t);
  ForwardOptions run, exp;
  run.pos_offset = 2, exp.positions = &ids;
  ParamStore g1 = m.zero_grads(), g2 = m.zero_grads();
  m.loss_and_grad(tok, tgt, g1, run);
  m.loss_and_grad(tok, tgt, g2, exp);
  double gmax = 0;
  for (const auto& [name, t] : g1.all())
    for (int64_t i = 0; i < t.numel(); ++i)
      gmax = std::max(gmax, std::fabs(double(t.data<float>()[i])));
  for (const auto& [name, t] : g1.all())
    EXPECT_LT(
        max_rel_diff(g2.all().at(name).data<float>(), t.data<float>(), t.numel(), 1e-3 * gmax),
        1e-6)
        << name;
}

const auto kName = [](const auto& info) { return case_name(info.param); };
INSTANTIATE_TEST_SUITE_P(All, PositionsTest, ::testing::ValuesIn(all_cases()), kName);
// one arch suffices for the shift
INSTANTIATE_TEST_SUITE_P(All, PositionShift, ::testing::ValuesIn(cases_where([](const Case& c) {
                           return c.arch == "encoder";
                         })),
                         kName);
// the forward test covers xl, deberta and sinusoidal_half; keep the suite fast
INSTANTIATE_TEST_SUITE_P(All, PaddedGradients, ::testing::ValuesIn(cases_where([](const Case& c) {
                           return c.pos != "xl" && c.pos != "deberta" && c.pos != "sinusoidal_half";
                         })),
                         kName);
INSTANTIATE_TEST_SUITE_P(All, IdGradients, ::testing::ValuesIn(cases_where([](const Case& c) {
                           return c.arch != "encoder_decoder" && c.attn == "softmax";
                         })),
                         kName);

TEST(Positions, LearnedTableGradientPilesUpOnRepeatedIds) {
  Transformer m = make_model({"encoder", "learned"});
  TokenBatch tok = random_tokens(1, 6, 11), tgt = random_tokens(1, 6, 12);
  TokenBatch packed{{0, 1, 2, 0, 1, 2}};  // two documents of 3 packed in one row
  ForwardOptions o;
  o.positions = &packed;
  ParamStore g = m.zero_grads();
  m.loss_and_grad(tok, tgt, g, o);
  const float* dP = g.f32("encoder.pos_emb.weight");
  for (int64_t r = 3; r < 40; ++r)
    for (int64_t i = 0; i < 16; ++i) ASSERT_EQ(dP[r * 16 + i], 0.0f) << "row " << r;
  double n0 = 0;
  for (int64_t i = 0; i < 16; ++i) n0 += std::fabs(dP[i]);
  EXPECT_GT(n0, 0.0);
}

TEST(Positions, BadIdsAndLengthsAreRefused) {
  Transformer m = make_model({"decoder", "learned"});
  TokenBatch tok = random_tokens(2, 4, 13);
  TokenBatch short_row{{0, 1, 2, 3}, {0, 1}}, neg{{0, 1, 2, 3}, {0, -1, 2, 3}},
      one_row{{0, 1, 2, 3}}, too_far{{0, 1, 2, 3}, {0, 1, 2, 40}};
  std::vector<int32_t> len3{4, 4, 4}, len_bad{4, 5}, len_neg{-1, 2};
  auto fwd = [&](ForwardOptions o) { m.forward(tok, o); };
  ForwardOptions o;
  o.positions = &short_row;
  pf_test::expect_error([&] { fwd(o); }, {"position ids row 1", "2 entries", "4 tokens"});
  o.positions = &neg;
  pf_test::expect_error([&] { fwd(o); }, {"position id -1", "(1, 1)", "negative"});
  o.positions = &one_row;
  pf_test::expect_error([&] { fwd(o); }, {"1 rows of position ids", "2 sequences"});
  o.positions = &too_far;
  pf_test::expect_error([&] { fwd(o); }, {"[learned]", "position 40", "max_len 40"});
  ForwardOptions both;
  TokenBatch ok{{0, 1, 2, 3}, {0, 1, 2, 3}};
  both.positions = &ok, both.pos_offset = 2;
  pf_test::expect_error([&] { fwd(both); }, {"position ids or a position offset"});
  ForwardOptions l;
  l.lengths = &len3;
  pf_test::expect_error([&] { fwd(l); }, {"3 lengths", "batch of 2"});
  l.lengths = &len_bad;
  pf_test::expect_error([&] { fwd(l); }, {"lengths[1] = 5", "[0, 4]"});
  l.lengths = &len_neg;
  pf_test::expect_error([&] { fwd(l); }, {"lengths[0] = -1"});
  ForwardOptions sl;
  sl.src_lengths = &len3;
  pf_test::expect_error([&] { fwd(sl); }, {"source lengths", "encoder_decoder"});
}

}  // namespace
