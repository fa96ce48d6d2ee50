// One harness for every attention variant, through the Attention interface the model uses
// (make_attention, forward, backward, start_decode / decode), over one case list: variant x
// position scheme x causal / key padding x GQA x head dim x T. Each variant's own kernels are
// checked against its double-precision reference in its own test file; this harness checks the
// properties every variant must have, the same way for all:
//
//   - every output row is written (outputs poisoned with NaN before each run);
//   - each sequence of a batch equals running it alone (its own key length);
//   - masked keys do not matter: keys past a sequence's length (padding), and for causal
//     attention keys after a query, can be changed without changing the output;
//   - the backward (dq, dk, dv, and a relative scheme's table) matches central finite
//     differences of the forward through the same interface;
//   - decoding step by step (a prefill chunk, then one token at a time) equals the full forward.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "posformer/attention/variant.h"
#include "posformer/model/config.h"
#include "posformer/model/params.h"
#include "posformer/posenc/position_encoding.h"

using namespace posformer;

namespace {

struct HCase {
  std::string variant, pos;
  bool causal, padding;
  int64_t H, Hkv, D, T;
};

std::string hname(const HCase& c) {
  return c.variant + "_" + c.pos + (c.causal ? "_causal" : "_full") + (c.padding ? "_pad" : "") +
         "_H" + std::to_string(c.H) + "kv" + std::to_string(c.Hkv) + "_D" + std::to_string(c.D) +
         "_T" + std::to_string(c.T);
}
void PrintTo(const HCase& c, std::ostream* os) {
  *os << hname(c);
}

std::vector<HCase> harness_cases() {
  std::vector<HCase> v;
  const std::vector<std::pair<std::string, std::vector<std::string>>> vp = {
      {"softmax", {"none", "alibi", "t5"}},
      {"linear", {"none"}},
      {"linear_cos", {"none"}},
      {"linear_rope", {"rope"}},
      {"performer", {"none"}},
      {"nystrom", {"none"}}};
  const int64_t shapes[][4] = {{4, 4, 16, 1}, {4, 2, 16, 70}, {4, 1, 12, 130}, {2, 2, 8, 7}};
  for (const auto& [var, schemes] : vp)
    for (const std::string& pos : schemes)
      for (bool causal : {false, true})
        for (bool pad : {false, true}) {
          if (var == "nystrom" && (causal || pad)) continue;  // no causal form, no key padding
          for (const auto& s : shapes) v.push_back({var, pos, causal, pad, s[0], s[1], s[2], s[3]});
        }
  return v;
}

// One variant with its position scheme, parameters and buffers, for one case.
struct Variant {
  StackGeom geom;
  std::unique_ptr<PositionEncoding> pe;
  std::unique_ptr<Attention> att;
  ParamStore params;
  std::vector<ParamSpec> specs;

  explicit Variant(const HCase& c)
      : geom{"h.", 1, c.H * c.D, c.H, c.Hkv, c.D, 4096, c.causal, false} {
    PositionConfig pc;
    pc.type = c.pos;
    pc.num_buckets = 8, pc.max_distance = 40;
    pe = make_position_encoding(pc, geom);
    AttentionConfig ac;
    ac.type = c.variant;
    ac.n_features = 48, ac.n_landmarks = 8, ac.pinv_iterations = 6;
    att = make_attention(ac, geom, *pe);
    pe->declare(specs);
    att->declare(specs);
    std::mt19937 rng(5);
    std::normal_distribution<float> nd(0.0f, 0.5f);
    for (const ParamSpec& s : specs) {
      if (s.buffer) continue;
      Tensor t(s.shape);
      for (int64_t i = 0; i < t.numel(); ++i) t.data<float>()[i] = nd(rng);
      params.add(s.name, std::move(t));
    }
    att->init_buffers(params, 0);
  }
  std::unique_ptr<ScoreHook> hook(const AttnDesc& d) const {
    return pe->prepare(params, AttnInputs{0, &d});
  }
};

// q, k, v of B sequences of T rows (self-attention), and the descriptor over them.
struct Batch {
  int64_t B, T;
  std::vector<float> q, k, v, out;
  std::vector<int32_t> len;
  Batch(const HCase& c, int64_t B_, uint32_t seed) : B(B_), T(c.T) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    q.resize(size_t(B * T * c.H * c.D)), out.resize(q.size());
    k.resize(size_t(B * T * c.Hkv * c.D)), v.resize(k.size());
    for (auto* x : {&q, &k, &v})
      for (float& e : *x) e = nd(rng);
    for (int64_t b = 0; b < B; ++b)  // padding: lengths T, T-2, ..., at least 1
      len.push_back(static_cast<int32_t>(std::max<int64_t>(1, T - 2 * b)));
  }
  AttnDesc desc(const HCase& c, const Variant& s) {
    AttnDesc a;
    a.B = B, a.Tq = a.Tk = T, a.H = c.H, a.Hkv = c.Hkv, a.D = c.D;
    a.ldq = a.ldo = c.H * c.D, a.ldk = a.ldv = c.Hkv * c.D;
    a.q = q.data(), a.k = k.data(), a.v = v.data(), a.out = out.data();
    a.scale = s.pe->default_scale(c.D);
    a.causal = c.causal;
    a.key_len = c.padding ? len.data() : nullptr;
    a.self_attention = true;
    a.params = &s.params;
    a.param_prefix = "h.layers.0.attn.";
    return a;
  }
};

// Forward into b.out (poisoned first); returns what the variant saved.
std::unique_ptr<AttnSaved> run_forward(const HCase& c, const Variant& s, Batch& b) {
  std::fill(b.out.begin(), b.out.end(), std::numeric_limits<float>::quiet_NaN());
  AttnDesc a = b.desc(c, s);
  std::unique_ptr<ScoreHook> hook = s.hook(a);
  a.hook = hook.get();
  std::unique_ptr<AttnSaved> saved;
  s.att->forward(a, &saved);
  return saved;
}

double max_abs(const float* x, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(x[i])));
  return m;
}

// One thread: the harness checks each variant's maths, not its threading (each variant's own
// tests check thread-count independence), and a second thread's start-up costs more than these
// small cases.
class AttentionHarness : public ::testing::TestWithParam<HCase> {
 protected:
  void SetUp() override {
    saved_threads_ = omp_get_max_threads();
    omp_set_num_threads(1);
  }
  void TearDown() override { omp_set_num_threads(saved_threads_); }

 private:
  int saved_threads_ = 1;
};
// Each property over the cases it is about.
class AttentionMasks : public AttentionHarness {};     // something is masked
class AttentionBackward : public AttentionHarness {};  // finite differences: T <= 70
class AttentionDecoding : public AttentionHarness {};  // causal, unpadded

template <class Pred>
std::vector<HCase> cases_where(Pred keep) {
  std::vector<HCase> v;
  for (const HCase& c : harness_cases())
    if (keep(c)) v.push_back(c);
  return v;
}

TEST_P(AttentionHarness, WritesEveryRowAndEachSequenceEqualsItselfAlone) {
  const HCase c = GetParam();
  Variant s(c);
  Batch b(c, 3, 11);
  run_forward(c, s, b);
  const int64_t W = c.H * c.D;
  for (size_t i = 0; i < b.out.size(); ++i)
    ASSERT_TRUE(std::isfinite(b.out[i])) << "out[" << i << "]";
  const double scale = max_abs(b.out.data(), int64_t(b.out.size()));
  for (int64_t seq = 0; seq < b.B; ++seq) {
    Batch one(c, 1, 11);
    const int64_t KW = c.Hkv * c.D;
    std::copy_n(b.q.begin() + seq * c.T * W, c.T * W, one.q.begin());
    std::copy_n(b.k.begin() + seq * c.T * KW, c.T * KW, one.k.begin());
    std::copy_n(b.v.begin() + seq * c.T * KW, c.T * KW, one.v.begin());
    one.len[0] = b.len[seq];
    run_forward(c, s, one);
    for (int64_t i = 0; i < c.T * W; ++i)
      ASSERT_NEAR(one.out[i], b.out[seq * c.T * W + i], 2e-5 * scale)
          << "sequence " << seq << " row " << i / W;
  }
}

TEST_P(AttentionMasks, MaskedKeysDoNotMatter) {
  const HCase c = GetParam();
  Variant s(c);
  Batch b(c, 2, 12);
  run_forward(c, s, b);
  const std::vector<float> ref = b.out;
  const int64_t W = c.H * c.D, KW = c.Hkv * c.D, split = c.T / 2;
  // change every key/value row a masked position could hide: past the length (padding), and
  // (causal) past row `split`, whose earlier queries must not see them
  for (int64_t seq = 0; seq < b.B; ++seq)
    for (int64_t t = 0; t < c.T; ++t) {
      const bool hidden = (c.padding && t >= b.len[seq]) || (c.causal && t > split);
      if (!hidden) continue;
      for (int64_t i = 0; i < KW; ++i) {
        b.k[(seq * c.T + t) * KW + i] += 3.0f;
        b.v[(seq * c.T + t) * KW + i] -= 2.0f;
      }
    }
  run_forward(c, s, b);
  const double scale = max_abs(ref.data(), int64_t(ref.size()));
  for (int64_t seq = 0; seq < b.B; ++seq) {
    const int64_t rows = c.causal ? std::min(split + 1, c.T) : c.T;
    for (int64_t i = 0; i < rows * W; ++i)
      ASSERT_NEAR(b.out[seq * c.T * W + i], ref[seq * c.T * W + i], 1e-5 * scale)
          << "sequence " << seq << " row " << i / W;
  }
}

TEST_P(AttentionBackward, MatchesFiniteDifferences) {
  const HCase c = GetParam();
  Variant s(c);
  Batch b(c, 2, 13);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> w(b.out.size());  // L = sum(out * w)
  for (float& e : w) e = nd(rng);
  auto loss = [&]() {
    run_forward(c, s, b);
    double l = 0;
    for (size_t i = 0; i < w.size(); ++i) l += double(b.out[i]) * w[i];
    return l;
  };
  std::unique_ptr<AttnSaved> saved = run_forward(c, s, b);
  std::vector<float> dq(b.q.size()), dk(b.k.size()), dv(b.v.size());
  AttnDesc a = b.desc(c, s);
  std::unique_ptr<ScoreHook> hook = s.hook(a);
  a.hook = hook.get();
  ParamStore grads;
  for (const ParamSpec& sp : s.specs)
    if (!sp.buffer) grads.add(sp.name, Tensor(sp.shape));
  AttnGrads g;
  g.dout = w.data(), g.lddo = c.H * c.D, g.dq = dq.data(), g.dk = dk.data(), g.dv = dv.data();
  g.param_grads = &grads;
  s.att->backward(a, *saved, g, hook.get());
  if (hook) hook->finish_backward(grads);
  std::uniform_int_distribution<size_t> pick(0, 1 << 30);
  auto check = [&](std::vector<float>& x, const float* grad, const char* what, size_t n) {
    for (int rep = 0; rep < 6; ++rep) {
      const size_t i = pick(rng) % n;
      const float x0 = x[i], h = 1e-2f;
      x[i] = x0 + h;
      const double lp = loss();
      x[i] = x0 - h;
      const double lm = loss();
      x[i] = x0;
      const double fd = (lp - lm) / (2.0 * h);
      EXPECT_NEAR(grad[i], fd, 2e-3 + 1e-2 * std::fabs(fd)) << what << "[" << i << "]";
    }
  };
  check(b.q, dq.data(), "dq", b.q.size());
  check(b.k, dk.data(), "dk", b.k.size());
  check(b.v, dv.data(), "dv", b.v.size());
  for (const ParamSpec& sp : s.specs) {  // a scheme's table (t5), a variant's own weights
    if (sp.buffer) continue;
    Tensor& p = s.params.get(sp.name);
    std::vector<float> x(p.data<float>(), p.data<float>() + p.numel());
    for (int rep = 0; rep < 3; ++rep) {
      const size_t i = pick(rng) % x.size();
      const float x0 = p.data<float>()[i], h = 1e-2f;
      p.data<float>()[i] = x0 + h;
      const double lp = loss();
      p.data<float>()[i] = x0 - h;
      const double lm = loss();
      p.data<float>()[i] = x0;
      const double fd = (lp - lm) / (2.0 * h);
      EXPECT_NEAR(grads.f32(sp.name)[i], fd, 2e-3 + 1e-2 * std::fabs(fd))
          << sp.name << "[" << i << "]";
    }
  }
}

TEST_P(AttentionDecoding, StepByStepEqualsTheFullForward) {
  const HCase c = GetParam();
  Variant s(c);
  Batch b(c, 2, 14);
  run_forward(c, s, b);
  const std::vector<float> full = b.out;
  const int64_t W = c.H * c.D, KW = c.Hkv * c.D;
  std::unique_ptr<AttnDecodeState> st = s.att->start_decode(b.B, c.T);
  const int64_t prefill = c.T / 3;  // a chunk first, then one token at a time
  std::vector<float> out(b.out.size(), std::numeric_limits<float>::quiet_NaN());
  for (int64_t t0 = 0; t0 < c.T;) {
    const int64_t n = t0 == 0 && prefill > 0 ? prefill : 1;
    std::vector<float> q(size_t(b.B * n * W)), k(size_t(b.B * n * KW)), v(k.size()),
        o(q.size(), std::numeric_limits<float>::quiet_NaN());
    for (int64_t seq = 0; seq < b.B; ++seq) {
      std::copy_n(b.q.begin() + (seq * c.T + t0) * W, n * W, q.begin() + seq * n * W);
      std::copy_n(b.k.begin() + (seq * c.T + t0) * KW, n * KW, k.begin() + seq * n * KW);
      std::copy_n(b.v.begin() + (seq * c.T + t0) * KW, n * KW, v.begin() + seq * n * KW);
    }
    AttnDesc a = b.desc(c, s);
    a.Tq = a.Tk = n, a.q_pos0 = a.k_pos0 = t0, a.key_len = nullptr;
    a.q = q.data(), a.k = k.data(), a.v = v.data(), a.out = o.data();
    s.att->decode(*st, a, [&](const AttnDesc& d) { return s.hook(d); });
    for (int64_t seq = 0; seq < b.B; ++seq)
      std::copy_n(o.begin() + seq * n * W, n * W, out.begin() + (seq * c.T + t0) * W);
    t0 += n;
  }
  EXPECT_EQ(st->length(), c.T);
  const double scale = max_abs(full.data(), int64_t(full.size()));
  for (size_t i = 0; i < out.size(); ++i)
    ASSERT_NEAR(out[i], full[i], 2e-5 * scale) << "row " << i / W;
}

const auto kName = [](const auto& info) { return hname(info.param); };
INSTANTIATE_TEST_SUITE_P(Variants, AttentionHarness, ::testing::ValuesIn(harness_cases()), kName);
INSTANTIATE_TEST_SUITE_P(
    Variants, AttentionMasks,
    ::testing::ValuesIn(cases_where([](const HCase& c) { return c.causal || c.padding; })), kName);
INSTANTIATE_TEST_SUITE_P(Variants, AttentionBackward,
                         ::testing::ValuesIn(cases_where([](const HCase& c) { return c.T <= 70; })),
                         kName);
INSTANTIATE_TEST_SUITE_P(
    Variants, AttentionDecoding,
    ::testing::ValuesIn(cases_where([](const HCase& c) { return c.causal && !c.padding; })), kName);

}  // namespace
