// The `linear` attention variant (docs/attention.md): the chunked forward and backward against a
// plain double-precision quadratic form written out here (with its own analytic gradients, which
// are checked against central finite differences), over causal / non-causal x key padding x GQA
// x sizes around the chunk size; the recurrent decode state against the chunked forward; thread
// count independence; the position schemes it refuses.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "posformer/attention/variant.h"
#include "posformer/core/runtime.h"
#include "posformer/model/transformer.h"
#include "posformer/posenc/position_encoding.h"
#include "test_util.h"

using namespace posformer;
using pf_test::randn;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct LCase {
  int64_t B, H, Hkv, D, Tq, Tk, q_pos0, k_pos0, pad;  // pad: extra floats per q/k/v/out row
  bool causal;
  std::vector<int32_t> key_len;  // empty: no padding
};

std::string case_name(const LCase& c) {
  std::string s = (c.causal ? "causal" : "full") + std::string("_H") + std::to_string(c.H) + "kv" +
                  std::to_string(c.Hkv) + "_D" + std::to_string(c.D) + "_Tq" +
                  std::to_string(c.Tq) + "_Tk" + std::to_string(c.Tk);
  if (c.q_pos0 || c.k_pos0) s += "_pos" + std::to_string(c.q_pos0) + "_" + std::to_string(c.k_pos0);
  if (!c.key_len.empty()) s += "_padded";
  return s;
}

void PrintTo(const LCase& c, std::ostream* os) {
  *os << case_name(c);
}

StackGeom geom_of(const LCase& c) {
  return StackGeom{"decoder.", 1, c.H * c.D, c.H, c.Hkv, c.D, 4096, true, true};
}

std::unique_ptr<Attention> make_linear(const StackGeom& g) {
  PositionConfig pc;
  pc.type = "none";
  auto pe = make_position_encoding(pc, g);
  AttentionConfig ac;
  ac.type = "linear";
  return make_attention(ac, g, *pe);
}

// Inputs of one case, in strided rows as the model lays them out.
struct Data {
  std::vector<float> q, k, v, dO;
  AttnDesc desc;
};

Data make_data(const LCase& c, uint32_t seed) {
  Data d;
  AttnDesc& a = d.desc;
  a.B = c.B, a.H = c.H, a.Hkv = c.Hkv, a.D = c.D, a.Tq = c.Tq, a.Tk = c.Tk;
  a.ldq = a.ldo = c.H * c.D + c.pad, a.ldk = a.ldv = c.Hkv * c.D + c.pad;
  a.causal = c.causal, a.q_pos0 = c.q_pos0, a.k_pos0 = c.k_pos0;
  a.scale = 0.125f;  // must not matter
  if (!c.key_len.empty()) a.key_len = c.key_len.data();
  // q, k with sd 1.5: both branches of elu + 1 (x > 0 and e^x) are exercised
  d.q = randn(c.B * c.Tq * a.ldq, seed, 1.5f), d.k = randn(c.B * c.Tk * a.ldk, seed + 1, 1.5f);
  d.v = randn(c.B * c.Tk * a.ldv, seed + 2), d.dO = randn(c.B * c.Tq * a.ldo, seed + 3);
  a.q = d.q.data(), a.k = d.k.data(), a.v = d.v.data();
  return d;
}

// ---- The reference: the quadratic form in double, straight from the definition.
//   w_ts = phi(q_t) . phi(k_s) for every key s row t sees, o_t = sum_s w_ts v_s / sum_s w_ts
//   (0 when row t sees no key). Row t sees key s iff s < key_len[b] and (causal) the key's
//   position k_pos0 + s is <= the query's q_pos0 + t.
double phi64(double x) {
  return x > 0 ? x + 1 : std::exp(x);
}
double dphi64(double x) {
  return x > 0 ? 1 : std::exp(x);
}

struct Ref {
  std::vector<double> out, dq, dk, dv;  // laid out like the engine's buffers (same strides)
  // the largest sum of |terms| of one element of dq, dk: the scale of a gradient that cancels to
  // (near) 0, as dq and dk do when a row sees a single key (its output is that key's value)
  double dq_terms = 0, dk_terms = 0;
};

bool ref_sees(const LCase& c, int64_t b, int64_t t, int64_t s) {
  if (!c.key_len.empty() && s >= c.key_len[b]) return false;
  return !c.causal || c.k_pos0 + s <= c.q_pos0 + t;
}

Ref reference(const LCase& c, const Data& d) {
  const AttnDesc& a = d.desc;
  const int64_t D = c.D, group = c.H / c.Hkv;
  Ref r;
  r.out.assign(d.dO.size(), 0.0), r.dq.assign(d.q.size(), 0.0);
  r.dk.assign(d.k.size(), 0.0), r.dv.assign(d.v.size(), 0.0);
  std::vector<double> dq_abs(d.q.size(), 0.0), dk_abs(d.k.size(), 0.0);
  std::vector<double> w(c.Tk), A(D), o(D);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.H; ++h) {
      const int64_t g = h / group;
      auto qi = [&](int64_t t) { return (b * c.Tq + t) * a.ldq + h * D; };
      auto ki = [&](int64_t s) { return (b * c.Tk + s) * a.ldk + g * D; };
      auto vi = [&](int64_t s) { return (b * c.Tk + s) * a.ldv + g * D; };
      for (int64_t t = 0; t < c.Tq; ++t) {
        for (int64_t i = 0; i < D; ++i) A[i] = phi64(d.q[qi(t) + i]);
        double den = 0;
        std::fill(o.begin(), o.end(), 0.0);
        for (int64_t s = 0; s < c.Tk; ++s) {
          w[s] = 0;
          if (!ref_sees(c, b, t, s)) continue;
          for (int64_t i = 0; i < D; ++i) w[s] += A[i] * phi64(d.k[ki(s) + i]);
          den += w[s];
          for (int64_t i = 0; i < D; ++i) o[i] += w[s] * d.v[vi(s) + i];
        }
        if (den == 0) continue;  // sees no key: output and gradients 0
        for (int64_t i = 0; i < D; ++i) o[i] /= den;
        const double* op = o.data();
        const float* G = d.dO.data() + (b * c.Tq + t) * a.ldo + h * D;
        for (int64_t i = 0; i < D; ++i) r.out[(b * c.Tq + t) * a.ldo + h * D + i] = op[i];
        double go = 0;
        for (int64_t i = 0; i < D; ++i) go += G[i] * op[i];
        // dL/dw_ts = (G . v_s - G . o) / den; w_ts = A . phi(k_s)
        for (int64_t s = 0; s < c.Tk; ++s) {
          if (!ref_sees(c, b, t, s)) continue;
          double gv = 0;
          for (int64_t i = 0; i < D; ++i) gv += G[i] * d.v[vi(s) + i];
          const double dw = (gv - go) / den, dw_abs = (std::abs(gv) + std::abs(go)) / den;
          for (int64_t i = 0; i < D; ++i) {
            const double kk = d.k[ki(s) + i], dq_part = phi64(kk) * dphi64(d.q[qi(t) + i]);
            r.dq[qi(t) + i] += dw * dq_part;
            r.dk[ki(s) + i] += dw * A[i] * dphi64(kk);
            r.dv[vi(s) + i] += w[s] / den * G[i];
            dq_abs[qi(t) + i] += dw_abs * dq_part;
            dk_abs[ki(s) + i] += dw_abs * A[i] * dphi64(kk);
          }
        }
      }
    }
  r.dq_terms = *std::max_element(dq_abs.begin(), dq_abs.end());
  r.dk_terms = *std::max_element(dk_abs.begin(), dk_abs.end());
  return r;
}

// max |x - ref| / max(max |ref|, floor) over the used columns (col % ld < width); the unused
// columns (row padding) must still hold the poison (NaN): nothing may write there.
double rel_err(const std::vector<float>& x, const std::vector<double>& ref, int64_t ld,
               int64_t width, bool* padding_written, double floor = 1e-3) {
  double num = 0, den = floor;
  for (size_t i = 0; i < x.size(); ++i) {
    if (int64_t(i) % ld >= width) {
      if (!std::isnan(x[i])) *padding_written = true;
      continue;
    }
    const double e = std::abs(double(x[i]) - ref[i]);
    num = std::isnan(e) ? std::numeric_limits<double>::infinity() : std::max(num, e);
    den = std::max(den, std::abs(ref[i]));
  }
  return num / den;
}

struct Errors {
  double out = 0, dq = 0, dk = 0, dv = 0;
};

// The engine's forward and backward (through the Attention interface, NaN-poisoned outputs).
struct Engine {
  std::vector<float> out, dq, dk, dv;
};
Engine run_engine(const Attention& attn, Data& d) {
  Engine e;
  AttnDesc a = d.desc;
  e.out.assign(d.dO.size(), kNaN);
  a.out = e.out.data();
  std::unique_ptr<AttnSaved> saved;
  attn.forward(a, &saved);
  e.dq.assign(d.q.size(), kNaN), e.dk.assign(d.k.size(), kNaN), e.dv.assign(d.v.size(), kNaN);
  AttnGrads g;
  g.dout = d.dO.data(), g.lddo = a.ldo, g.dq = e.dq.data(), g.dk = e.dk.data(), g.dv = e.dv.data();
  attn.backward(a, *saved, g, nullptr);
  return e;
}

Errors g_worst;  // over every case, for the summary line

void check_case(const LCase& c, uint32_t seed) {
  SCOPED_TRACE(case_name(c));
  auto attn = make_linear(geom_of(c));
  Data d = make_data(c, seed);
  const Engine e = run_engine(*attn, d);
  const Ref r = reference(c, d);
  const AttnDesc& a = d.desc;
  bool pad_out = false, pad_grad = false;
  Errors er;
  er.out = rel_err(e.out, r.out, a.ldo, c.H * c.D, &pad_out);
  // a gradient that cancels to 0 is measured against a tenth of its terms' size
  er.dq = rel_err(e.dq, r.dq, a.ldq, c.H * c.D, &pad_grad, std::max(1e-3, 0.1 * r.dq_terms));
  er.dk = rel_err(e.dk, r.dk, a.ldk, c.Hkv * c.D, &pad_grad, std::max(1e-3, 0.1 * r.dk_terms));
  er.dv = rel_err(e.dv, r.dv, a.ldv, c.Hkv * c.D, &pad_grad);
  EXPECT_LT(er.out, 1e-5);
  EXPECT_LT(er.dq, 2e-5);
  EXPECT_LT(er.dk, 2e-5);
  EXPECT_LT(er.dv, 2e-5);
  EXPECT_FALSE(pad_out) << "the forward wrote into the row padding";
  EXPECT_FALSE(pad_grad) << "the backward wrote into the row padding";
  g_worst.out = std::max(g_worst.out, er.out), g_worst.dq = std::max(g_worst.dq, er.dq);
  g_worst.dk = std::max(g_worst.dk, er.dk), g_worst.dv = std::max(g_worst.dv, er.dv);
}

std::vector<LCase> grid() {
  std::vector<LCase> v;
  for (bool causal : {false, true})
    for (bool padded : {false, true})
      for (int64_t Hkv : {4, 2, 1})
        for (int64_t T : {1, 7, 63, 64, 65, 130})
          for (int64_t D : {8, 16}) {
            LCase c{2, 4, Hkv, D, T, T, 0, 0, (D == 8 ? 3 : 0), causal, {}};
            // batch 1 keeps 2/3 of its keys (none at T = 1: rows that see nothing)
            if (padded) c.key_len = {int32_t(T), int32_t(T * 2 / 3)};
            v.push_back(c);
          }
  return v;
}

}  // namespace

class LinearFastVsReference : public ::testing::TestWithParam<LCase> {
 protected:
  static void TearDownTestSuite() {
    std::printf(
        "[linear attention] worst relative error vs the double reference: out %.2e  "
        "dq %.2e  dk %.2e  dv %.2e\n",
        g_worst.out, g_worst.dq, g_worst.dk, g_worst.dv);
  }
};

TEST_P(LinearFastVsReference, ForwardAndBackward) {
  check_case(GetParam(), 17);
}

INSTANTIATE_TEST_SUITE_P(Grid, LinearFastVsReference, ::testing::ValuesIn(grid()),
                         [](const ::testing::TestParamInfo<LCase>& i) {
                           return case_name(i.param) + "_" + std::to_string(i.index);
                         });

// Descriptors the model does not make in training but the kernel accepts: queries at other
// positions than the keys (after a cache; rows that see no key), cross-attention shapes.
INSTANTIATE_TEST_SUITE_P(Shapes, LinearFastVsReference,
                         ::testing::Values(LCase{2, 4, 1, 8, 100, 160, 60, 0, 5, true, {160, 90}},
                                           LCase{1, 2, 2, 8, 130, 130, 0, 70, 0, true, {}},
                                           LCase{2, 4, 2, 16, 7, 130, 0, 0, 2, false, {130, 17}},
                                           LCase{2, 3, 3, 8, 130, 7, 0, 0, 0, false, {5, 0}},
                                           LCase{1, 4, 2, 16, 200, 200, 3, 3, 0, true, {}}),
                         [](const ::testing::TestParamInfo<LCase>& i) {
                           return case_name(i.param) + "_" + std::to_string(i.index);
                         });

// The oracle itself: its analytic gradients against central differences of its forward
// (double, h = 1e-6), on every element of small cases.
TEST(LinearReference, GradientsMatchFiniteDifferences) {
  for (const LCase& c :
       {LCase{1, 2, 1, 4, 6, 6, 0, 0, 0, true, {}}, LCase{2, 2, 2, 4, 5, 7, 0, 0, 1, false, {7, 3}},
        LCase{1, 4, 2, 3, 4, 9, 5, 0, 0, true, {}}}) {
    SCOPED_TRACE(case_name(c));
    Data d = make_data(c, 5);
    const Ref r = reference(c, d);
    const AttnDesc& a = d.desc;
    auto loss = [&]() {  // L = sum dO . out, in double
      const Ref x = reference(c, d);
      double l = 0;
      for (size_t i = 0; i < x.out.size(); ++i) l += double(d.dO[i]) * x.out[i];
      return l;
    };
    // step the float inputs by +-h and divide by the step they really took
    double worst = 0;
    auto check = [&](std::vector<float>& x, const std::vector<double>& g, int64_t ld, int64_t w) {
      for (size_t i = 0; i < x.size(); ++i) {
        // phi is not twice differentiable at 0: keep the stencil on one side of the kink
        if (int64_t(i) % ld >= w || std::abs(x[i]) < 2e-3f) continue;
        const float old = x[i];
        const float h = 1e-3f;
        x[i] = old + h;
        const double lp = loss();
        x[i] = old - h;
        const double lm = loss();
        x[i] = old;
        const double fd = (lp - lm) / (double(old + h) - double(old - h));
        worst = std::max(worst, std::abs(fd - g[i]) / std::max(1.0, std::abs(fd)));
      }
    };
    check(d.q, r.dq, a.ldq, c.H * c.D);
    check(d.k, r.dk, a.ldk, c.Hkv * c.D);
    check(d.v, r.dv, a.ldv, c.Hkv * c.D);
    EXPECT_LT(worst, 1e-5);
  }
}

// The same results with 1 and 2 threads, bit for bit: every sum runs in a fixed order.
TEST(LinearAttention, ThreadCountDoesNotChangeResults) {
  const int before = num_threads();
  for (const LCase& c : {LCase{1, 1, 1, 16, 200, 200, 0, 0, 0, true, {}},
                         LCase{2, 4, 2, 16, 130, 130, 0, 0, 0, true, {130, 70}},
                         LCase{2, 4, 1, 8, 65, 65, 0, 0, 0, false, {65, 30}}}) {
    SCOPED_TRACE(case_name(c));
    auto attn = make_linear(geom_of(c));
    Data d = make_data(c, 9);
    set_threads(1);
    const Engine one = run_engine(*attn, d);
    set_threads(2);
    const Engine two = run_engine(*attn, d);
    auto same = [](const std::vector<float>& x, const std::vector<float>& y) {
      return std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
    };
    EXPECT_TRUE(same(one.out, two.out));
    EXPECT_TRUE(same(one.dq, two.dq));
    EXPECT_TRUE(same(one.dk, two.dk));
    EXPECT_TRUE(same(one.dv, two.dv));
  }
  set_threads(before);
}

namespace {
// Decodes the causal sequence of `d` block by block (sizes `blocks`, summing to T) through a
// recurrent state; returns the outputs laid out as the forward's.
// Rows 0.. of `d` go in at positions pos0 + their row.
std::vector<float> decode_blocks(const Attention& attn, const Data& d, const LCase& c,
                                 const std::vector<int64_t>& blocks, AttnDecodeState& st,
                                 int64_t pos0 = 0) {
  const AttnDesc& full = d.desc;
  std::vector<float> out(d.dO.size(), kNaN);
  int64_t t0 = 0;
  for (int64_t n : blocks) {
    // the block's rows of every sequence, contiguous: [B, n, width]
    auto gather = [&](const std::vector<float>& x, int64_t ld) {
      std::vector<float> y(c.B * n * ld);
      for (int64_t b = 0; b < c.B; ++b)
        std::copy_n(x.data() + (b * c.Tq + t0) * ld, n * ld, y.data() + b * n * ld);
      return y;
    };
    std::vector<float> q = gather(d.q, full.ldq), k = gather(d.k, full.ldk),
                       v = gather(d.v, full.ldv), o(c.B * n * full.ldo, kNaN);
    AttnDesc a = full;
    a.Tq = a.Tk = n, a.q_pos0 = a.k_pos0 = pos0 + t0, a.causal = true, a.key_len = nullptr;
    a.q = q.data(), a.k = k.data(), a.v = v.data(), a.out = o.data();
    attn.decode(st, a, HookMaker{});
    for (int64_t b = 0; b < c.B; ++b)
      std::copy_n(o.data() + b * n * full.ldo, n * full.ldo,
                  out.data() + (b * c.Tq + t0) * full.ldo);
    t0 += n;
  }
  return out;
}
}  // namespace

// (b) The chunked training forward equals the recurrent decoding path, token by token and in
// blocks that cut the chunks anywhere.
TEST(LinearAttention, RecurrentDecodingEqualsChunkedForward) {
  const LCase c{2, 4, 2, 16, 150, 150, 0, 0, 0, true, {}};
  auto attn = make_linear(geom_of(c));
  ASSERT_EQ(attn->caps().decode, DecodeKind::Recurrent);
  Data d = make_data(c, 21);
  std::vector<float> full(d.dO.size(), kNaN);
  AttnDesc a = d.desc;
  a.out = full.data();
  attn->forward(a, nullptr);
  const std::vector<std::vector<int64_t>> plans = {
      std::vector<int64_t>(150, 1), {5, 64, 1, 60, 20}, {150}, {63, 2, 65, 20}};
  double worst = 0;
  for (const auto& plan : plans) {
    auto st = attn->start_decode(c.B, 160);
    const std::vector<float> dec = decode_blocks(*attn, d, c, plan, *st);
    EXPECT_EQ(st->length(), 150);
    double err = 0;
    for (size_t i = 0; i < full.size(); ++i) {
      const double e = std::abs(double(dec[i]) - full[i]);
      err = std::isnan(e) ? std::numeric_limits<double>::infinity() : std::max(err, e);
    }
    EXPECT_LT(err, 1e-5) << "plan of " << plan.size() << " blocks";
    worst = std::max(worst, err);
  }
  std::printf("[linear attention] recurrent decoding vs chunked forward: max abs diff %.2e\n",
              worst);
}

// The state is S [D, D] and z [D] per (sequence, kv head), whatever the capacity; decoding past
// the capacity is refused.
TEST(LinearAttention, DecodeStateHasFixedSize) {
  const LCase c{3, 4, 2, 8, 4, 4, 0, 0, 0, true, {}};
  auto attn = make_linear(geom_of(c));
  const uint64_t want = 3 * 2 * (8 * 8 + 8) * sizeof(float);
  EXPECT_EQ(attn->decode_bytes(3, 20), want);
  EXPECT_EQ(attn->decode_bytes(3, 1 << 20), want);
  auto st = attn->start_decode(3, 20);
  EXPECT_EQ(st->bytes(), want);
  EXPECT_EQ(attn->start_decode(3, 100000)->bytes(), want);
  const LCase c20{3, 4, 2, 8, 20, 20, 0, 0, 0, true, {}};
  Data d = make_data(c20, 3);
  decode_blocks(*attn, d, c20, {4, 16}, *st);
  EXPECT_EQ(st->length(), 20);
  EXPECT_EQ(st->bytes(), want);
  pf_test::expect_error([&] { decode_blocks(*attn, d, c20, {1}, *st, 20); }, {"20 positions"});
  pf_test::expect_error([&] { decode_blocks(*attn, d, c20, {1}, *st, 3); },
                        {"from position 3", "holding 20"});
}

// (d) Schemes whose terms live in the score matrix, and RoPE, are refused when the model is
// built, naming both; absolute schemes are served.
TEST(AttentionRegistry, LinearRefusesRelativeSchemesAndRope) {
  for (bool causal : {true, false}) {
    const StackGeom g{causal ? "decoder." : "encoder.", 1, 32, 4, 4, 8, 64, causal, true};
    AttentionConfig ac;
    ac.type = "linear";
    for (const char* pos : {"rope", "alibi", "t5", "shaw", "xl", "deberta"}) {
      PositionConfig pc;
      pc.type = pos;
      auto pe = make_position_encoding(pc, g);
      pf_test::expect_error([&] { make_attention(ac, g, *pe); }, {"'linear'", pos, "supports no"});
    }
    for (const char* pos : {"none", "learned", "sinusoidal", "sinusoidal_half"}) {
      PositionConfig pc;
      pc.type = pos;
      auto pe = make_position_encoding(pc, g);
      EXPECT_EQ(make_attention(ac, g, *pe)->name(), "linear") << pos;
    }
  }
  // through the whole model, as `posformer init` builds it
  ModelConfig mc;
  mc.d_model = 32, mc.n_heads = 4, mc.d_ff = 32, mc.n_layers = 1, mc.vocab_size = 20;
  mc.attention.type = "linear";
  for (const char* pos : {"rope", "alibi", "t5"}) {
    mc.position.type = pos;
    pf_test::expect_error([&] { Transformer m(mc); }, {"linear", pos});
  }
}

TEST(AttentionRegistry, LinearRefusesResidualScores) {
  PositionConfig pc;
  pc.type = "none";
  const StackGeom g{"decoder.", 1, 32, 4, 4, 8, 64, true, true};
  auto pe = make_position_encoding(pc, g);
  AttentionConfig ac;
  ac.type = "linear";
  ac.residual = true;
  try {
    make_attention(ac, g, *pe);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("residual"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("linear"), std::string::npos) << e.what();
  }
}
