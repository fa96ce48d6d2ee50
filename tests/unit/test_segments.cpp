// Segment masks (AttnDesc::key_lo / key_hi, ForwardOptions::segments, KVCache::start): a row
// packing 2-4 documents gives, at each document's rows, what that document gives alone, in the
// forward and in every gradient; for the kernels (fused and unfused, causal or not, GQA, odd
// sizes across the fused kernel's 128-row blocks and 512-key tiles, ALiBi, T5, Shaw, XL,
// DeBERTa hooks) and for whole models (every position scheme, RoPE included, fused and
// unfused). Left padding (a pad segment first) equals the unpadded sequence. Outputs and
// gradients are NaN-poisoned before each run. Variants that cannot honour a window, windows
// that decrease and segment ids of the wrong shape are refused naming what is wrong.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "posformer/attention/attention.h"
#include "posformer/attention/variant.h"
#include "posformer/model/config.h"
#include "posformer/model/generate.h"
#include "posformer/model/transformer.h"
#include "posformer/posenc/position_encoding.h"
#include "posformer/train/trainer.h"
#include "test_util.h"

using namespace posformer;

namespace {
using pf_test::randn;
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// max |x - ref| / max(max |ref|, floor) (NaN anywhere in x: infinity)
double rel_err(const float* x, const float* ref, int64_t n, double floor = 1e-30) {
  double num = 0, den = floor;
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) return std::numeric_limits<double>::infinity();
    num = std::max(num, std::fabs(double(x[i]) - double(ref[i])));
    den = std::max(den, std::fabs(double(ref[i])));
  }
  return num / den;
}

// ---------------------------------------------------------------- kernels

struct KCase {
  int64_t H = 2, Hkv = 1, D = 16;
  std::vector<std::vector<int64_t>> docs;  // per row: document lengths (rows have equal sums)
  bool causal = true, fused = true;
  std::string hook = "none";
  std::string str() const {
    std::string s = "H=" + std::to_string(H) + " Hkv=" + std::to_string(Hkv) +
                    " D=" + std::to_string(D) + " causal=" + std::to_string(causal) +
                    " fused=" + std::to_string(fused) + " hook=" + hook + " docs=";
    for (const auto& r : docs) {
      s += "[";
      for (int64_t n : r) s += std::to_string(n) + " ";
      s += "]";
    }
    return s;
  }
};

struct KResult {
  std::vector<float> out, dq, dk, dv;
  ParamStore grads;
};

// One attention call over B rows of T tokens: q, k, v, dO rows [B*T, H*D] / [B*T, Hkv*D];
// ids/lo/hi [B*T] (empty: none).
KResult run_kernel(const KCase& c, PositionEncoding& pe, const ParamStore& ps,
                   const std::vector<ParamSpec>& specs, int64_t B, int64_t T, const float* q,
                   const float* k, const float* v, const float* dO, const std::vector<int32_t>& ids,
                   const std::vector<int32_t>& lo, const std::vector<int32_t>& hi) {
  KResult r;
  AttnDesc a;
  a.B = B, a.Tq = a.Tk = T, a.H = c.H, a.Hkv = c.Hkv, a.D = c.D;
  a.q = q, a.ldq = c.H * c.D, a.k = k, a.ldk = c.Hkv * c.D, a.v = v, a.ldv = c.Hkv * c.D;
  a.ldo = c.H * c.D, a.scale = pe.default_scale(c.D), a.causal = c.causal;
  a.self_attention = true;
  if (!ids.empty()) a.q_ids = a.k_ids = ids.data();
  if (!lo.empty()) a.key_lo = lo.data();
  if (!hi.empty()) a.key_hi = hi.data();
  r.out.assign(size_t(B * T * c.H * c.D), kNaN);
  a.out = r.out.data();
  auto hook = pe.prepare(ps, AttnInputs{0, &a});
  a.hook = hook.get();
  std::vector<float> lse, P;
  if (c.fused) {
    lse.assign(size_t(B * c.H * T), kNaN);
    fused_attention_forward(a, lse.data());
  } else {
    P.assign(size_t(B * c.H * T * T), kNaN);
    a.probs = P.data();
    attention_forward(a);
  }
  a.probs = nullptr;
  r.dq.assign(size_t(B * T * c.H * c.D), kNaN);
  r.dk.assign(size_t(B * T * c.Hkv * c.D), kNaN), r.dv.assign(size_t(B * T * c.Hkv * c.D), kNaN);
  AttnGrads g;
  g.dout = dO, g.lddo = a.ldo, g.dq = r.dq.data(), g.dk = r.dk.data(), g.dv = r.dv.data();
  auto bhook = pe.prepare(ps, AttnInputs{0, &a});
  for (const auto& sp : specs) r.grads.add(sp.name, Tensor(sp.shape));
  if (c.fused)
    fused_attention_backward(a, lse.data(), g, bhook.get());
  else
    attention_backward(a, P.data(), g, bhook.get());
  if (bhook) bhook->finish_backward(r.grads);
  return r;
}

void check_packed_kernel(const KCase& c, uint32_t seed) {
  SCOPED_TRACE(c.str());
  const int64_t B = static_cast<int64_t>(c.docs.size());
  const int64_t T = std::accumulate(c.docs[0].begin(), c.docs[0].end(), int64_t{0});
  const int64_t HD = c.H * c.D, KD = c.Hkv * c.D;
  PositionConfig pc;
  pc.type = c.hook, pc.num_buckets = 8, pc.max_distance = 20, pc.span = 4, pc.clip = 3;
  StackGeom geo{"decoder.", 1, HD, c.H, c.Hkv, c.D, 1 << 20, c.causal, true};
  auto pe = make_position_encoding(pc, geo);
  std::vector<ParamSpec> specs;
  ParamStore ps;
  pe->declare(specs);
  for (auto& s : specs) {
    s.init = Init::Normal;
    ps.add(s.name, init_param(s, seed, 0.5f));
  }
  const auto q = randn(B * T * HD, seed + 1), k = randn(B * T * KD, seed + 2),
             v = randn(B * T * KD, seed + 3), dO = randn(B * T * HD, seed + 4);
  std::vector<int32_t> ids(size_t(B * T)), lo(ids.size()), hi(ids.size());
  for (int64_t b = 0; b < B; ++b) {
    int64_t t0 = 0;
    for (int64_t n : c.docs[b]) {
      for (int64_t t = t0; t < t0 + n; ++t)
        ids[b * T + t] = int32_t(t - t0), lo[b * T + t] = int32_t(t0),
                    hi[b * T + t] = int32_t(t0 + n);
      t0 += n;
    }
    ASSERT_EQ(t0, T) << "rows of equal length";
  }
  const KResult packed =
      run_kernel(c, *pe, ps, specs, B, T, q.data(), k.data(), v.data(), dO.data(), ids, lo, hi);
  ParamStore sum;
  for (const auto& sp : specs) sum.add(sp.name, Tensor(sp.shape));
  double gq = 0, gk = 0;
  for (float x : packed.dq) gq = std::max(gq, std::fabs(double(x)));
  for (float x : packed.dk) gk = std::max(gk, std::fabs(double(x)));
  for (int64_t b = 0; b < B; ++b) {
    int64_t t0 = 0;
    for (int64_t n : c.docs[b]) {
      SCOPED_TRACE("row " + std::to_string(b) + " document at " + std::to_string(t0));
      const int64_t r0 = b * T + t0;
      const KResult alone =
          run_kernel(c, *pe, ps, specs, 1, n, q.data() + r0 * HD, k.data() + r0 * KD,
                     v.data() + r0 * KD, dO.data() + r0 * HD, {}, {}, {});
      EXPECT_LE(rel_err(packed.out.data() + r0 * HD, alone.out.data(), n * HD), 2e-6) << "out";
      if (n == 1) {  // one key: dS = P (dP - Di) with P = 1 is 0 in exact arithmetic, so are
                     // dq and dk (the fused kernel's recomputed P leaves ~1e-7 of the scale)
        for (int64_t i = 0; i < HD; ++i)
          EXPECT_LE(std::fabs(packed.dq[r0 * HD + i]), 1e-5 * gq) << "dq of a 1-token document";
        for (int64_t i = 0; i < KD; ++i)
          EXPECT_LE(std::fabs(packed.dk[r0 * KD + i]), 1e-5 * gk) << "dk of a 1-token document";
      } else {
        EXPECT_LE(rel_err(packed.dq.data() + r0 * HD, alone.dq.data(), n * HD), 1e-5) << "dq";
        EXPECT_LE(rel_err(packed.dk.data() + r0 * KD, alone.dk.data(), n * KD), 1e-5) << "dk";
      }
      EXPECT_LE(rel_err(packed.dv.data() + r0 * KD, alone.dv.data(), n * KD), 1e-5) << "dv";
      for (const auto& sp : specs) {
        float* s = sum.f32(sp.name);
        const float* x = alone.grads.f32(sp.name);
        for (int64_t i = 0; i < sum.get(sp.name).numel(); ++i) s[i] += x[i];
      }
      t0 += n;
    }
  }
  for (const auto& sp : specs) {  // a scheme's parameter gradient: the documents' sum
    const int64_t n = sum.get(sp.name).numel();
    EXPECT_LE(rel_err(packed.grads.f32(sp.name), sum.f32(sp.name), n, 0.1), 1e-4) << sp.name;
  }
}

TEST(SegmentKernels, EachDocumentEqualsItsRunAlone) {
  // documents cross the fused kernel's 128-row blocks and 512-key tiles (rows of 600)
  const std::vector<std::vector<std::vector<int64_t>>> layouts = {
      {{3, 4}},          {{1, 5, 2, 9}, {9, 1, 1, 6}},
      {{17, 40, 7}},     {{100, 29, 1}, {130}},
      {{127, 2, 70, 1}}, {{520, 80}},
  };
  const std::vector<std::string> hooks = {"none", "alibi", "t5", "xl", "deberta", "shaw"};
  uint32_t seed = 10;
  int n = 0;
  for (size_t i = 0; i < layouts.size(); ++i)
    for (bool causal : {true, false})
      for (bool fused : {true, false}) {
        KCase c;
        c.docs = layouts[i];
        c.causal = causal, c.fused = fused;
        c.hook = hooks[(i * 4 + causal * 2 + fused) % hooks.size()];
        if (c.hook == "shaw") c.fused = false;  // the fused kernel has no value terms
        c.H = (i % 2) ? 4 : 2, c.Hkv = (i % 3 == 1) ? 2 : 1, c.D = (i % 2) ? 8 : 12;
        if (i == layouts.size() - 1) c.hook = causal ? "alibi" : "t5", c.H = 1;  // keep it fast
        check_packed_kernel(c, seed += 10);
        ++n;
      }
  EXPECT_EQ(n, 24);
}

// The fused kernel without a hook (the default backward splits each query block's keys into
// those all its rows see, on sgemm, and the diagonal part, on the micro-kernels): documents that
// start and end inside a block's diagonal, causal and not, head dims off the vector width.
TEST(SegmentKernels, FusedWithoutHookEachDocumentEqualsItsRunAlone) {
  const std::vector<std::vector<std::vector<int64_t>>> layouts = {
      {{100, 29, 1}, {130}}, {{127, 2, 70, 1}, {50, 60, 90}}, {{520, 80}}};
  uint32_t seed = 700;
  for (size_t i = 0; i < layouts.size(); ++i)
    for (bool causal : {true, false}) {
      KCase c;
      c.docs = layouts[i];
      c.causal = causal, c.fused = true, c.hook = "none";
      c.H = 2, c.Hkv = i == 1 ? 1 : 2, c.D = i == 2 ? 16 : 12;
      check_packed_kernel(c, seed += 10);
    }
}

// Left padding: sequence b's first p_b rows are pads, key_lo = p_b on every row. Real rows equal
// the sequence alone; pad rows see no key and output exactly 0 (no NaN from exp(-inf + inf)).
TEST(SegmentKernels, LeftPaddingEqualsTheSequenceAlone) {
  for (bool fused : {true, false}) {
    KCase c;
    c.fused = fused, c.hook = "alibi", c.H = 4, c.Hkv = 2, c.D = 8;
    const std::vector<int64_t> pad = {0, 3, 131};
    const int64_t B = 3, T = 140, HD = c.H * c.D, KD = c.Hkv * c.D;
    SCOPED_TRACE(c.str());
    PositionConfig pc;
    pc.type = "alibi";
    StackGeom geo{"decoder.", 1, HD, c.H, c.Hkv, c.D, 1 << 20, true, true};
    auto pe = make_position_encoding(pc, geo);
    std::vector<ParamSpec> specs;
    ParamStore ps;
    const auto q = randn(B * T * HD, 1), k = randn(B * T * KD, 2), v = randn(B * T * KD, 3),
               dO = randn(B * T * HD, 4);
    std::vector<int32_t> ids(size_t(B * T)), lo(ids.size());
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < T; ++t)
        ids[b * T + t] = int32_t(std::max<int64_t>(t - pad[b], 0)), lo[b * T + t] = int32_t(pad[b]);
    const KResult r =
        run_kernel(c, *pe, ps, specs, B, T, q.data(), k.data(), v.data(), dO.data(), ids, lo, {});
    for (int64_t b = 0; b < B; ++b) {
      const int64_t r0 = b * T + pad[b], n = T - pad[b];
      const KResult alone =
          run_kernel(c, *pe, ps, specs, 1, n, q.data() + r0 * HD, k.data() + r0 * KD,
                     v.data() + r0 * KD, dO.data() + r0 * HD, {}, {}, {});
      EXPECT_LE(rel_err(r.out.data() + r0 * HD, alone.out.data(), n * HD), 2e-6) << "b=" << b;
      EXPECT_LE(rel_err(r.dq.data() + r0 * HD, alone.dq.data(), n * HD), 1e-5) << "b=" << b;
      EXPECT_LE(rel_err(r.dk.data() + r0 * KD, alone.dk.data(), n * KD), 1e-5) << "b=" << b;
      EXPECT_LE(rel_err(r.dv.data() + r0 * KD, alone.dv.data(), n * KD), 1e-5) << "b=" << b;
      for (int64_t i = 0; i < pad[b] * HD; ++i) {
        ASSERT_EQ(r.out[b * T * HD + i], 0.0f) << "pad row output, b=" << b;
        ASSERT_EQ(r.dq[b * T * HD + i], 0.0f) << "pad row dq, b=" << b;
      }
      for (int64_t i = 0; i < pad[b] * KD; ++i)  // pad keys are seen by no query
        ASSERT_EQ(r.dk[b * T * KD + i], 0.0f) << "pad key dk, b=" << b;
    }
  }
}

TEST(SegmentKernels, DecreasingWindowIsRefused) {
  std::vector<float> x(4 * 8, 1.0f), out(4 * 8);
  std::vector<int32_t> lo = {0, 2, 1, 3};
  AttnDesc a;
  a.B = 1, a.Tq = a.Tk = 4, a.D = 8, a.q = a.k = a.v = x.data(), a.out = out.data();
  a.ldq = a.ldk = a.ldv = a.ldo = 8, a.key_lo = lo.data();
  pf_test::expect_error([&] { attention_forward(a); },
                        {"key window key_lo decreases at (0, 2)", "2 then 1"});
}

// ---------------------------------------------------------------- models

struct MCase {
  std::string arch, pos;
  bool fused = true;
};
std::string mcase_name(const MCase& c) {
  return c.arch + "_" + c.pos + (c.fused ? "" : "_unfused");
}
void PrintTo(const MCase& c, std::ostream* os) {
  *os << mcase_name(c);
}

// A small model with weights large enough that positions and masks matter. The softmax
// variant reads POSFORMER_ATTN_UNFUSED when it is made.
Transformer make_model(const MCase& cs, const std::string& attn = "softmax") {
  ModelConfig c;
  c.arch = cs.arch, c.d_model = 16, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.d_ff = 24;
  c.vocab_size = 19, c.max_len = 40;
  c.position.type = cs.pos;
  c.attention.type = attn;
  c.position.clip = 3, c.position.span = 4, c.position.num_buckets = 8,
  c.position.max_distance = 20;
  if (!cs.fused) setenv("POSFORMER_ATTN_UNFUSED", "1", 1);
  Transformer m = Transformer::random_init(c, 5);
  unsetenv("POSFORMER_ATTN_UNFUSED");
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

std::vector<int32_t> slice(const std::vector<int32_t>& v, int64_t t0, int64_t n) {
  return {v.begin() + t0, v.begin() + t0 + n};
}

// Two rows of 11 tokens: documents of 3, 6, 2 and of 4, 4, 1, 2 (1-token documents included).
const std::vector<std::vector<int64_t>> kDocs = {{3, 6, 2}, {4, 4, 1, 2}};
constexpr int64_t kT = 11;

TokenBatch segments_of(const std::vector<std::vector<int64_t>>& docs) {
  TokenBatch seg;
  for (const auto& row : docs) {
    seg.emplace_back();
    int32_t id = 0;
    for (int64_t n : row) seg.back().insert(seg.back().end(), size_t(n), id++);
  }
  return seg;
}

class SegmentModel : public ::testing::TestWithParam<MCase> {};

// Forward: each document's hidden rows equal the document run alone (positions from 0).
TEST_P(SegmentModel, ForwardEqualsEachDocumentAlone) {
  const MCase cs = GetParam();
  Transformer m = make_model(cs);
  const int64_t B = 2, d = 16, Ts = 5;
  TokenBatch tok = random_tokens(B, kT, 1), src = random_tokens(B, Ts, 2);
  const TokenBatch seg = segments_of(kDocs);
  ForwardOptions opt;
  opt.segments = &seg;
  if (cs.arch == "encoder_decoder") opt.src = &src;
  const Tensor all = m.forward(tok, opt).hidden;
  for (int64_t b = 0; b < B; ++b) {
    int64_t t0 = 0;
    for (int64_t n : kDocs[b]) {
      TokenBatch one{slice(tok[b], t0, n)}, one_src{src[b]};
      ForwardOptions o1;
      if (cs.arch == "encoder_decoder") o1.src = &one_src;
      const Tensor alone = m.forward(one, o1).hidden;
      EXPECT_LT(rel_err(all.data<float>() + (b * kT + t0) * d, alone.data<float>(), n * d), 2e-6)
          << "row " << b << " document at " << t0;
      t0 += n;
    }
  }
}

// Gradients: the packed batch's mean loss gradient equals the documents' gradients weighted by
// their share of the counted targets.
TEST_P(SegmentModel, GradientsEqualEachDocumentAlone) {
  const MCase cs = GetParam();
  Transformer m = make_model(cs);
  const int64_t B = 2, Ts = 5;
  TokenBatch tok = random_tokens(B, kT, 3), tgt = random_tokens(B, kT, 4),
             src = random_tokens(B, Ts, 5);
  const TokenBatch seg = segments_of(kDocs);
  ForwardOptions opt;
  opt.segments = &seg;
  if (cs.arch == "encoder_decoder") opt.src = &src;
  ParamStore g_all = m.zero_grads(), g_sep = m.zero_grads();
  for (auto* g : {&g_all, &g_sep})  // poisoned, then zeroed through the API that tests use
    for (auto& [name, t] : g->all()) std::fill_n(t.data<float>(), t.numel(), 0.0f);
  const auto total = m.loss_and_grad(tok, tgt, g_all, opt);
  ASSERT_EQ(total.count, B * kT);
  double loss_sep = 0;
  for (int64_t b = 0; b < B; ++b) {
    int64_t t0 = 0;
    for (int64_t n : kDocs[b]) {
      TokenBatch one{slice(tok[b], t0, n)}, one_t{slice(tgt[b], t0, n)}, one_src{src[b]};
      ForwardOptions o1;
      if (cs.arch == "encoder_decoder") o1.src = &one_src;
      const float w = float(n) / float(total.count);
      loss_sep += m.loss_and_grad(one, one_t, g_sep, o1, w).loss * w;
      t0 += n;
    }
  }
  EXPECT_NEAR(total.loss, loss_sep, 1e-5 * std::fabs(loss_sep));
  double gmax = 0;
  for (const auto& [name, t] : g_sep.all())
    for (int64_t i = 0; i < t.numel(); ++i)
      gmax = std::max(gmax, std::fabs(double(t.data<float>()[i])));
  for (const auto& [name, t] : g_all.all()) {
    const Tensor& s = g_sep.all().at(name);
    // without rotation q . b_k shifts a whole score row, which softmax ignores: b_k's exact
    // gradient is 0 there and both sides are rounding noise, so it gets a larger floor
    const bool kbias = name.size() > 7 && name.compare(name.size() - 7, 7, ".k.bias") == 0;
    EXPECT_LT(rel_err(t.data<float>(), s.data<float>(), t.numel(), (kbias ? 1e-2 : 1e-3) * gmax),
              1e-4)
        << name;
  }
}

std::vector<MCase> model_cases() {
  std::vector<MCase> v;
  for (const char* arch : {"decoder", "encoder", "encoder_decoder"})
    for (const char* pos :
         {"none", "learned", "sinusoidal", "rope", "alibi", "t5", "shaw", "xl", "deberta"})
      v.push_back({arch, pos, true});
  for (const char* arch : {"decoder", "encoder"})
    for (const char* pos : {"learned", "rope", "alibi", "t5"}) v.push_back({arch, pos, false});
  return v;
}
INSTANTIATE_TEST_SUITE_P(All, SegmentModel, ::testing::ValuesIn(model_cases()),
                         [](const auto& info) { return mcase_name(info.param); });

// An encoder_decoder's packed sources (src_segments): each source document alone.
TEST(Segments, PackedSourcesEqualEachSourceAlone) {
  Transformer m = make_model({"encoder_decoder", "t5"});
  TokenBatch src = random_tokens(1, 9, 6);
  const TokenBatch sseg{{0, 0, 0, 0, 1, 1, 1, 1, 1}};
  const Tensor packed = m.encode(src, 0, &sseg);
  TokenBatch a{slice(src[0], 0, 4)}, b{slice(src[0], 4, 5)};
  const Tensor ea = m.encode(a), eb = m.encode(b);
  EXPECT_LT(rel_err(packed.data<float>(), ea.data<float>(), 4 * 16), 2e-6);
  EXPECT_LT(rel_err(packed.data<float>() + 4 * 16, eb.data<float>(), 5 * 16), 2e-6);
}

// Left-padded batched decoding through the KV cache: each sequence's logits at every step
// equal its cache-free forward alone (positions from its first real token).
TEST(Segments, LeftPaddedCachedDecodingEqualsEachSequenceAlone) {
  for (const char* pos : {"learned", "rope", "alibi", "t5", "xl"}) {
    SCOPED_TRACE(pos);
    Transformer m = make_model({"decoder", pos});
    const std::vector<std::vector<int32_t>> prompts = {{3, 4, 5, 6, 7}, {8}, {9, 10, 11}};
    const int64_t B = 3, P = 5, V = 19, steps = 4;
    TokenBatch padded(B, std::vector<int32_t>(P, 0));
    KVCache cache = m.start_cache(B, P + steps);
    cache.start.resize(B);
    for (int64_t b = 0; b < B; ++b) {
      cache.start[b] = int32_t(P - prompts[b].size());
      std::copy(prompts[b].begin(), prompts[b].end(), padded[b].begin() + cache.start[b]);
    }
    std::vector<std::vector<int32_t>> seqs = prompts;
    TokenBatch pending = padded;
    for (int64_t step = 0; step < steps; ++step) {
      const Tensor logits = m.forward_cached(pending, cache).logits;
      const int64_t Tn = logits.dim(1);
      TokenBatch next(B);
      for (int64_t b = 0; b < B; ++b) {
        const Tensor solo = m.forward(TokenBatch{seqs[b]}).logits;
        const int64_t Ts = solo.dim(1);
        EXPECT_LT(rel_err(logits.data<float>() + (b * Tn + Tn - 1) * V,
                          solo.data<float>() + (Ts - 1) * V, V),
                  1e-5)
            << "step " << step << " sequence " << b;
        const int32_t tok = int32_t((step * 7 + b * 5 + 1) % V);  // any next token
        seqs[b].push_back(tok), next[b] = {tok};
      }
      pending = next;
    }
  }
}

// generate_batch: greedy and same-seed sampling, each prompt equal to generate() alone.
TEST(Segments, BatchedGenerationEqualsEachPromptAlone) {
  Transformer m = make_model({"decoder", "rope"});
  const std::vector<std::vector<int32_t>> prompts = {{3, 4, 5, 6, 7, 1}, {8}, {9, 10, 11}};
  for (double temp : {0.0, 0.9})
    for (bool cache : {true, false}) {
      SamplingConfig s;
      s.max_new_tokens = 6, s.temperature = temp, s.seed = 11, s.use_cache = cache;
      s.stop_ids = {2};  // a sequence may stop early while the others go on
      const auto batch = generate_batch(m, prompts, s);
      ASSERT_EQ(batch.size(), prompts.size());
      for (size_t i = 0; i < prompts.size(); ++i)
        EXPECT_EQ(batch[i], generate(m, prompts[i], s))
            << "prompt " << i << " temperature " << temp << " cache " << cache;
    }
}

// Training windows: a new document starts after each <eos> (the <eos> ends its own).
TEST(Segments, DocumentSegmentsOfTrainingWindows) {
  const int32_t eos = 2;
  const TokenBatch in{{5, 2, 7, 7, 2, 2, 9}, {2, 4, 4}, {4, 4, 4}};
  const TokenBatch want{{0, 0, 1, 1, 1, 2, 3}, {0, 1, 1}, {0, 0, 0}};
  EXPECT_EQ(document_segments(in, eos), want);
}

TEST(Segments, BadInputIsRefused) {
  Transformer m = make_model({"decoder", "learned"});
  TokenBatch tok = random_tokens(2, 4, 13);
  TokenBatch one_row{{0, 0, 1, 1}}, short_row{{0, 0, 1, 1}, {0, 1}},
      decreasing{{0, 0, 1, 1}, {0, 1, 0, 1}};
  ForwardOptions o;
  o.segments = &one_row;
  pf_test::expect_error([&] { m.forward(tok, o); }, {"1 rows of segment ids", "2 sequences"});
  o.segments = &short_row;
  pf_test::expect_error([&] { m.forward(tok, o); }, {"segment ids row 1", "2 entries", "4 tokens"});
  o.segments = &decreasing;
  pf_test::expect_error([&] { m.forward(tok, o); },
                        {"segment ids must not decrease", "1 then 0", "(1, 2)"});
  TokenBatch ok{{0, 0, 1, 1}, {0, 0, 0, 0}};
  o.segments = &ok, o.pos_offset = 3;
  pf_test::expect_error([&] { m.forward(tok, o); }, {"segments", "position offset"});
  ForwardOptions s;
  s.src_segments = &ok;
  pf_test::expect_error([&] { m.forward(tok, s); }, {"source segment ids", "encoder_decoder"});
  for (const char* attn : {"linear", "performer"}) {
    Transformer lin = make_model({"decoder", "none"}, attn);
    const std::string named = std::string("attention '") + attn + "'";
    ForwardOptions lo;
    lo.segments = &ok;
    pf_test::expect_error([&] { lin.forward(tok, lo); }, {named.c_str(), "segment mask"});
    SamplingConfig sc;
    sc.max_new_tokens = 2;
    pf_test::expect_error(
        [&] {
          generate_batch(lin, {{1, 2}, {3}}, sc);
        },
        {named.c_str(), "left-padded"});
  }
  Transformer enc = make_model({"encoder", "none"}, "nystrom");
  ForwardOptions no;
  no.segments = &ok;
  pf_test::expect_error([&] { enc.forward(tok, no); }, {"attention 'nystrom'", "segment mask"});
  SamplingConfig sc;
  pf_test::expect_error([&] { generate_batch(m, {}, sc); }, {"no prompts"});
  pf_test::expect_error([&] { generate_batch(m, {{1, 2}, {}}, sc); }, {"prompt 1 is empty"});
}

}  // namespace
