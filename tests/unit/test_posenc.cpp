// Position-encoding properties (SPEC.md 3, 5): RoPE relative identity, ALiBi slopes, T5 buckets,
// sinusoid tables; and attention fast path vs the double-precision reference for every scheme.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "posformer/attention/attention.h"
#include "posformer/model/transformer.h"
#include "posformer/ops/rope.h"
#include "posformer/posenc/position_encoding.h"
#include "test_util.h"

using namespace posformer;

namespace {
using pf_test::randn;
// Rotates one head vector x (width D, rotary width R) to position pos.
std::vector<float> rotated(std::vector<float> x, int64_t R, ops::RopeLayout layout, double pos,
                           double base) {
  auto theta = ops::rope_inv_freq(R, base);
  std::vector<float> c(R / 2), s(R / 2);
  ops::rope_tables(&pos, 1, theta, 1.0, c.data(), s.data());
  ops::rope_apply(x.data(), 1, 1, static_cast<int64_t>(x.size()), static_cast<int64_t>(x.size()), R,
                  layout, c.data(), s.data());
  return x;
}
double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}
}  // namespace

TEST(Rope, RelativeIdentityBothLayouts) {
  std::mt19937 g(7);
  std::uniform_int_distribution<int> pos(-2000, 2000);
  for (auto layout : {ops::RopeLayout::Interleaved, ops::RopeLayout::Half})
    for (int64_t D : {8, 64, 128})
      for (int64_t R : {D, D / 2}) {
        for (int trial = 0; trial < 20; ++trial) {
          auto q = randn(D, 100 + trial), k = randn(D, 200 + trial);
          int m = pos(g), n = pos(g);
          double lhs = dot(rotated(q, R, layout, m, 10000), rotated(k, R, layout, n, 10000));
          double rhs = dot(q, rotated(k, R, layout, n - m, 10000));
          EXPECT_NEAR(lhs, rhs, 2e-4 * (1 + std::fabs(rhs)))
              << "D=" << D << " R=" << R << " m=" << m << " n=" << n;
        }
      }
}

TEST(Rope, PositionZeroIsIdentityAndNormPreserved) {
  auto x = randn(64, 3);
  auto y = rotated(x, 64, ops::RopeLayout::Half, 0, 10000);
  for (size_t i = 0; i < x.size(); ++i) EXPECT_FLOAT_EQ(x[i], y[i]);
  auto z = rotated(x, 48, ops::RopeLayout::Interleaved, 12345, 10000);
  EXPECT_NEAR(dot(x, x), dot(z, z), 1e-4 * dot(x, x));
  for (int i = 48; i < 64; ++i) EXPECT_EQ(x[i], z[i]);  // partial rotary: tail passes through
}

// RopePosition keeps each thread's last sin / cos table and reuses it while the positions and
// frequencies are unchanged: calls alternating between offsets, lengths, explicit ids and two
// schemes (bases) must each equal the rotation of the head vectors one by one at their own
// positions (a stale table would rotate by the previous call's angles).
TEST(Rope, TableReuseFollowsPositionsAndFrequencies) {
  const StackGeom g{"decoder.", 1, 32, 2, 2, 16, 64, true, true};
  PositionConfig pa, pb;
  pa.type = pb.type = "rope";
  pb.base = 500;
  auto ra = make_position_encoding(pa, g), rb = make_position_encoding(pb, g);
  const int32_t ids[4] = {7, 2, 2, 40};
  struct Call {
    const PositionEncoding* pe;
    double base;
    Positions pos;
  };
  const std::vector<Call> calls = {
      {ra.get(), 10000, Positions::run(1, 4, 0)}, {ra.get(), 10000, Positions::run(1, 4, 0)},
      {ra.get(), 10000, Positions::run(1, 4, 3)}, {rb.get(), 500, Positions::run(1, 4, 3)},
      {ra.get(), 10000, Positions::run(1, 3, 3)}, {ra.get(), 10000, Positions::of(1, 4, 1, ids)},
      {ra.get(), 10000, Positions::run(1, 4, 3)}};
  for (size_t c = 0; c < calls.size(); ++c) {
    const Positions& pos = calls[c].pos;
    const int64_t T = pos.T, ld = 2 * 16;
    std::vector<float> x = randn(size_t(T * ld), uint32_t(c + 1));
    const std::vector<float> x0 = x;
    calls[c].pe->rotate(x.data(), 2, ld, pos);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < 2; ++h) {
        const std::vector<float> head(x0.begin() + t * ld + h * 16,
                                      x0.begin() + t * ld + h * 16 + 16);
        const auto want =
            rotated(head, 16, ops::RopeLayout::Interleaved, pos.at(0, t), calls[c].base);
        for (int64_t i = 0; i < 16; ++i)
          ASSERT_NEAR(x[size_t(t * ld + h * 16 + i)], want[size_t(i)], 1e-5)
              << "call " << c << " t " << t << " head " << h << " i " << i;
      }
  }
}

TEST(Alibi, SlopesMatchSpecFormula) {
  for (int64_t H = 1; H <= 16; ++H) {
    auto m = alibi_slopes(H);
    ASSERT_EQ(static_cast<int64_t>(m.size()), H);
    const double n = std::exp2(std::floor(std::log2(static_cast<double>(H))));
    for (int64_t h = 0; h < H; ++h) {
      double want =
          h < n ? std::exp2(-8.0 * (h + 1) / n) : std::exp2(-4.0 * (2.0 * (h - n) + 1) / n);
      EXPECT_DOUBLE_EQ(m[h], want) << "H=" << H << " h=" << h;
    }
  }
  // the paper's 8-head slopes: 1/2, 1/4, ..., 1/256
  auto m8 = alibi_slopes(8);
  for (int h = 0; h < 8; ++h) EXPECT_DOUBLE_EQ(m8[h], 1.0 / (2 << h));
}

TEST(T5, BucketsMatchSpecFormulaBothDirections) {
  for (int64_t nbk : {32, 64})
    for (int64_t maxd : {128, 256})
      for (bool bidi : {true, false})
        for (int64_t rel = -300; rel <= 300; ++rel) {
          // SPEC: rel = j - i; bidirectional: nb = num_buckets/2, offset = (rel > 0) * nb, n =
          // |rel|; causal: nb = num_buckets, offset 0, n = max(-rel, 0).
          long nb = bidi ? nbk / 2 : nbk, offset = bidi && rel > 0 ? nb : 0;
          long n = bidi ? std::labs(rel) : std::max<long>(-rel, 0);
          long max_exact = nb / 2, want;
          if (n < max_exact) {
            want = offset + n;
          } else {
            long large = max_exact + static_cast<long>(std::floor(
                                         std::log(double(n) / max_exact) /
                                         std::log(double(maxd) / max_exact) * (nb - max_exact)));
            want = offset + std::min(large, nb - 1);
          }
          ASSERT_EQ(t5_bucket(rel, bidi, nbk, maxd), want) << "rel=" << rel << " bidi=" << bidi;
          ASSERT_GE(want, 0);
          ASSERT_LT(want, nbk);
        }
  // spot values of HF T5 (32 buckets, 128): bidirectional rel=+1 -> 17, rel=-1 -> 1, rel=-200 -> 15
  EXPECT_EQ(t5_bucket(1, true, 32, 128), 17);
  EXPECT_EQ(t5_bucket(-1, true, 32, 128), 1);
  EXPECT_EQ(t5_bucket(-200, true, 32, 128), 15);
  EXPECT_EQ(t5_bucket(5, false, 32, 128), 0);  // causal: future keys collapse to bucket 0
}

TEST(Sinusoid, LayoutsFollowSpec) {
  const int64_t d = 16;
  std::vector<float> a(3 * d), b(3 * d);
  sinusoid_rows(5, 3, d, false, a.data());
  sinusoid_rows(5, 3, d, true, b.data());
  for (int64_t t = 0; t < 3; ++t)
    for (int64_t i = 0; i < d / 2; ++i) {
      double w = std::pow(10000.0, -2.0 * i / d), k = 5 + t;
      EXPECT_NEAR(a[t * d + 2 * i], std::sin(k * w), 1e-6);
      EXPECT_NEAR(a[t * d + 2 * i + 1], std::cos(k * w), 1e-6);
      EXPECT_NEAR(b[t * d + i], std::sin(k * w), 1e-6);
      EXPECT_NEAR(b[t * d + d / 2 + i], std::cos(k * w), 1e-6);
    }
}

// Attention fast path vs reference, with each relative scheme's hook, GQA, masks and offsets.
class AttentionSchemes : public ::testing::TestWithParam<std::string> {};

TEST_P(AttentionSchemes, FastMatchesReference) {
  const std::string type = GetParam();
  for (bool causal : {false, true})
    for (auto [Tq, Tk, qpos, kpos] : std::vector<std::array<int64_t, 4>>{
             {1, 1, 0, 0},
             {7, 7, 0, 0},
             {5, 5, 13, 13},
             {3, 9, 6, 0},
             {33, 33, 2, 2},
             {300, 300, 4, 4}}) {  // 300: several query blocks, hooks see tiles
      const int64_t B = 2, H = 4, Hkv = 2, D = 8, d = 32;
      PositionConfig pc;
      pc.type = type;
      pc.clip = 3;
      pc.span = 4;
      pc.num_buckets = 8;
      pc.max_distance = 20;
      StackGeom g{"decoder.", 1, d, H, Hkv, D, 1024, causal, true};
      auto pe = make_position_encoding(pc, g);
      std::vector<ParamSpec> specs;
      pe->declare(specs);
      ParamStore ps;
      for (auto& s : specs) {
        s.init = Init::Normal;
        ps.add(s.name, init_param(s, 5, 0.5f));
      }
      auto q = randn(B * Tq * H * D, 1), k = randn(B * Tk * Hkv * D, 2),
           v = randn(B * Tk * Hkv * D, 3);
      std::vector<float> o1(B * Tq * H * D), o2(o1.size());
      std::vector<int32_t> klen = {static_cast<int32_t>(Tk),
                                   static_cast<int32_t>(std::max<int64_t>(1, Tk - 2))};
      AttnDesc a;
      a.B = B, a.Tq = Tq, a.Tk = Tk, a.H = H, a.Hkv = Hkv, a.D = D;
      a.q = q.data(), a.ldq = H * D, a.k = k.data(), a.ldk = Hkv * D, a.v = v.data(),
      a.ldv = Hkv * D;
      a.ldo = H * D, a.scale = pe->default_scale(D), a.causal = causal, a.q_pos0 = qpos,
      a.k_pos0 = kpos;
      a.key_len = klen.data();
      auto hook = pe->prepare(ps, AttnInputs{0, &a});
      a.hook = hook.get();
      a.out = o1.data();
      attention_forward(a);
      a.out = o2.data();
      ref::attention_forward(a);
      for (size_t i = 0; i < o1.size(); ++i)
        ASSERT_NEAR(o1[i], o2[i], 1e-4 * (1 + std::fabs(o2[i])))
            << type << " causal=" << causal << " Tq=" << Tq << " Tk=" << Tk << " i=" << i;
    }
}

INSTANTIATE_TEST_SUITE_P(All, AttentionSchemes,
                         ::testing::Values("none", "alibi", "t5", "shaw", "xl", "deberta"));

// A hook gives the same scores, values and gradients whatever tiles the kernel cuts the
// (b, h) matrix into (attention.h: ScoreTile), and a HookChain adds its hooks' terms.
class HookTiling : public ::testing::TestWithParam<std::string> {};

TEST_P(HookTiling, AnyTilingEqualsWholeMatrix) {
  const std::string type = GetParam();
  const int64_t B = 2, H = 4, Hkv = 2, D = 8, d = 32, Tq = 23, Tk = 29;
  PositionConfig pc;
  pc.type = type, pc.clip = 3, pc.span = 4, pc.num_buckets = 8, pc.max_distance = 20;
  StackGeom g{"decoder.", 1, d, H, Hkv, D, 1024, false, true};
  auto pe = make_position_encoding(pc, g);
  std::vector<ParamSpec> specs;
  pe->declare(specs);
  ParamStore ps;
  for (auto& s : specs) {
    s.init = Init::Normal;
    ps.add(s.name, init_param(s, 5, 0.5f));
  }
  auto q = randn(B * Tq * H * D, 1), k = randn(B * Tk * Hkv * D, 2);
  AttnDesc a;
  a.B = B, a.Tq = Tq, a.Tk = Tk, a.H = H, a.Hkv = Hkv, a.D = D, a.q = q.data(), a.ldq = H * D;
  a.k = k.data(), a.ldk = Hkv * D, a.ldo = H * D, a.scale = 0.3f, a.q_pos0 = 6, a.k_pos0 = 2;
  auto whole_hook = pe->prepare(ps, AttnInputs{0, &a}),
       tiled_hook = pe->prepare(ps, AttnInputs{0, &a});
  ASSERT_TRUE(whole_hook);
  const ScoreTile whole{0, Tq, 0, Tk};
  // tiles: rows cut at 0, 5, 16, Tq; columns at 0, 1, 12, 20, Tk
  std::vector<ScoreTile> tiles;
  const std::vector<int64_t> rc = {0, 5, 16, Tq}, cc = {0, 1, 12, 20, Tk};
  for (size_t i = 0; i + 1 < rc.size(); ++i)
    for (size_t j = 0; j + 1 < cc.size(); ++j)
      tiles.push_back({rc[i], rc[i + 1] - rc[i], cc[j], cc[j + 1] - cc[j]});
  auto P = randn(Tq * Tk, 7), dS = randn(Tq * Tk, 8), dO = randn(Tq * H * D, 9);
  ParamStore g_whole, g_tiled;
  for (auto& s : specs) g_whole.add(s.name, Tensor(s.shape)), g_tiled.add(s.name, Tensor(s.shape));
  whole_hook->begin_backward();
  tiled_hook->begin_backward();
  const int64_t b = 1;
  for (int64_t h : {0, 3}) {
    std::vector<float> S1(Tq * Tk, 0.5f), S2 = S1, tile(Tq * Tk);
    whole_hook->add_scores(b, h, whole, S1.data(), Tk);
    for (const ScoreTile& t : tiles) {  // through a tile buffer with its own stride
      const int64_t ld = t.cols + 3;
      for (int64_t r = 0; r < t.rows; ++r)
        for (int64_t c = 0; c < t.cols; ++c) tile[r * ld + c] = S2[(t.t0 + r) * Tk + t.s0 + c];
      tiled_hook->add_scores(b, h, t, tile.data(), ld);
      for (int64_t r = 0; r < t.rows; ++r)
        for (int64_t c = 0; c < t.cols; ++c) S2[(t.t0 + r) * Tk + t.s0 + c] = tile[r * ld + c];
    }
    for (size_t i = 0; i < S1.size(); ++i) ASSERT_NEAR(S1[i], S2[i], 1e-5) << type << " i=" << i;
    // gradients: dq, dk (and dP for value terms) and the parameter gradients
    std::vector<float> dq1(Tq * H * D), dq2(dq1.size()), dk1(Tk * Hkv * D), dk2(dk1.size());
    std::vector<float> dP1(Tq * Tk), dP2(dP1.size());
    const int64_t oq = h * D, ok = (h / (H / Hkv)) * D;
    whole_hook->backward_scores(b, h, whole, dS.data(), Tk, dq1.data() + oq, H * D, dk1.data() + ok,
                                Hkv * D);
    for (const ScoreTile& t : tiles)
      tiled_hook->backward_scores(b, h, t, dS.data() + t.t0 * Tk + t.s0, Tk, dq2.data() + oq, H * D,
                                  dk2.data() + ok, Hkv * D);
    for (size_t i = 0; i < dq1.size(); ++i)
      ASSERT_NEAR(dq1[i], dq2[i], 1e-4) << type << " dq " << i;
    for (size_t i = 0; i < dk1.size(); ++i)
      ASSERT_NEAR(dk1[i], dk2[i], 1e-4) << type << " dk " << i;
    if (whole_hook->has_value_terms()) {
      std::vector<float> o1(Tq * H * D, 0.25f), o2 = o1;
      whole_hook->add_values(b, h, whole, P.data(), Tk, o1.data() + oq, H * D);
      whole_hook->backward_values(b, h, whole, P.data(), Tk, dO.data() + oq, H * D, dP1.data(), Tk);
      for (const ScoreTile& t : tiles) {
        tiled_hook->add_values(b, h, t, P.data() + t.t0 * Tk + t.s0, Tk, o2.data() + oq, H * D);
        tiled_hook->backward_values(b, h, t, P.data() + t.t0 * Tk + t.s0, Tk, dO.data() + oq, H * D,
                                    dP2.data() + t.t0 * Tk + t.s0, Tk);
      }
      for (size_t i = 0; i < o1.size(); ++i)
        ASSERT_NEAR(o1[i], o2[i], 1e-4) << type << " out " << i;
      for (size_t i = 0; i < dP1.size(); ++i)
        ASSERT_NEAR(dP1[i], dP2[i], 1e-4) << type << " dP " << i;
    }
  }
  whole_hook->finish_backward(g_whole);
  tiled_hook->finish_backward(g_tiled);
  for (const auto& s : specs) {
    const float *x = g_whole.f32(s.name), *y = g_tiled.f32(s.name);
    double norm = 0;
    for (int64_t i = 0; i < shape_numel(s.shape); ++i) norm += double(x[i]) * x[i];
    EXPECT_GT(norm, 0) << s.name << " got no gradient";
    for (int64_t i = 0; i < shape_numel(s.shape); ++i)
      ASSERT_NEAR(x[i], y[i], 1e-4 * (1 + std::fabs(x[i]))) << type << " " << s.name << " " << i;
  }

  // a chain of this hook and ALiBi adds both terms
  PositionConfig ac;
  ac.type = "alibi";
  auto alibi = make_position_encoding(ac, g);
  auto chain =
      chain_hooks(pe->prepare(ps, AttnInputs{0, &a}), alibi->prepare(ps, AttnInputs{0, &a}));
  auto ah = alibi->prepare(ps, AttnInputs{0, &a});
  std::vector<float> Sc(Tq * Tk, 0.0f), Sa(Tq * Tk, 0.0f), Sb(Tq * Tk, 0.0f);
  chain->add_scores(0, 2, whole, Sc.data(), Tk);
  whole_hook->add_scores(0, 2, whole, Sa.data(), Tk);
  ah->add_scores(0, 2, whole, Sb.data(), Tk);
  for (size_t i = 0; i < Sc.size(); ++i) ASSERT_NEAR(Sc[i], Sa[i] + Sb[i], 1e-5);
  EXPECT_EQ(chain->has_value_terms(), whole_hook->has_value_terms());
}

// RealFormer's carried scores: the forward adds the previous layer's scores and records the
// total; the backward adds the next layer's dS and records the total; any tiling, same result.
TEST(ResidualScores, CarriesScoresAndGradients) {
  const int64_t B = 2, H = 3, Tq = 9, Tk = 11;
  AttnDesc a;
  a.B = B, a.Tq = Tq, a.Tk = Tk, a.H = H;
  const int64_t n = B * H * Tq * Tk;
  auto prev = randn(n, 1), S0 = randn(Tq * Tk, 2);
  std::vector<float> out(n, -7.0f);
  ResidualScoresHook hk(a, prev.data(), out.data());
  const int64_t b = 1, h = 2, off = (b * H + h) * Tq * Tk;
  std::vector<float> S = S0;
  for (const ScoreTile& t : {ScoreTile{0, 4, 0, 5}, ScoreTile{0, 4, 5, 6}, ScoreTile{4, 5, 0, Tk}})
    hk.add_scores(b, h, t, S.data() + t.t0 * Tk + t.s0, Tk);
  for (int64_t i = 0; i < Tq * Tk; ++i) {
    ASSERT_FLOAT_EQ(S[i], S0[i] + prev[off + i]);
    ASSERT_FLOAT_EQ(out[off + i], S[i]);
  }
  EXPECT_EQ(out[0], -7.0f);  // other (b, h) untouched
  std::vector<float> dS = S0;
  ResidualScoresHook first(a, nullptr, out.data());  // the top layer: nothing carried back yet
  first.adjust_dscores(b, h, ScoreTile{0, Tq, 0, Tk}, dS.data(), Tk);
  for (int64_t i = 0; i < Tq * Tk; ++i) ASSERT_FLOAT_EQ(out[off + i], S0[i]);
}

INSTANTIATE_TEST_SUITE_P(All, HookTiling, ::testing::Values("t5", "shaw", "xl", "deberta"));

TEST(Attention, RejectsBadDescriptors) {
  AttnDesc a;
  a.B = 1, a.Tq = 1, a.Tk = 1, a.H = 4, a.Hkv = 3, a.D = 8, a.ldq = a.ldo = 32, a.ldk = a.ldv = 24;
  EXPECT_THROW(attention_forward(a), Error);
  a.Hkv = 2, a.ldk = a.ldv = 8;  // stride smaller than Hkv * D
  EXPECT_THROW(attention_forward(a), Error);
}

TEST(Attention, FullyMaskedQueryGivesZerosNotNaN) {
  // causal with keys entirely in the future of the query
  const int64_t D = 4;
  auto q = randn(D, 1), k = randn(2 * D, 2), v = randn(2 * D, 3);
  std::vector<float> o(D, 7.0f);
  AttnDesc a;
  a.Tq = 1, a.Tk = 2, a.D = D, a.q = q.data(), a.ldq = D, a.k = k.data(), a.ldk = D;
  a.v = v.data(), a.ldv = D, a.out = o.data(), a.ldo = D, a.causal = true, a.q_pos0 = 0,
  a.k_pos0 = 1;
  attention_forward(a);
  for (float x : o) EXPECT_EQ(x, 0.0f);
}

TEST(Model, LearnedRefusesPastMaxLen) {
  ModelConfig c;
  c.d_model = 16, c.n_heads = 2, c.n_layers = 1, c.d_ff = 16, c.vocab_size = 10, c.max_len = 8;
  c.position.type = "learned";
  Transformer m = Transformer::random_init(c, 1);
  TokenBatch ok{{1, 2, 3}};
  ForwardOptions fo;
  fo.pos_offset = 5;
  EXPECT_NO_THROW(m.forward(ok, fo));
  fo.pos_offset = 6;
  try {
    m.forward(ok, fo);
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max_len"), std::string::npos) << e.what();
  }
  EXPECT_THROW(m.forward(TokenBatch{{1, 10}}), Error);      // token outside vocab
  EXPECT_THROW(m.forward(TokenBatch{{1, 2}, {1}}), Error);  // ragged batch
}
