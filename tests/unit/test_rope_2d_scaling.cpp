// rope_2d under position.scaling, per axis (posenc/vision.h, SPEC.md 3 and 4): frequencies of
// each axis worked out by hand for every scaling type, factor 1 = unscaled, linear = position
// interpolation per axis, the (dx, dy) relative property and the adjoint backward under every
// scaling, and the config side (refusals naming the field, round trip).
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "posformer/model/config.h"
#include "posformer/model/transformer.h"
#include "posformer/ops/rope.h"
#include "posformer/posenc/position_encoding.h"
#include "posformer/posenc/vision.h"
#include "test_util.h"

using namespace posformer;
using ops::RopeScaling;
using ops::RopeScalingType;
using json = nlohmann::json;

namespace {
const double kPi = 3.14159265358979323846;
const RopeScalingType kTypes[] = {RopeScalingType::Linear, RopeScalingType::Ntk,
                                  RopeScalingType::DynamicNtk, RopeScalingType::Yarn,
                                  RopeScalingType::Llama3};

RopeScaling of(RopeScalingType t) {
  RopeScaling s;
  s.type = t;
  return s;
}

void expect_axis(const ops::RopeFreqs& f, const std::vector<double>& want, double mscale,
                 const std::string& what) {
  ASSERT_EQ(f.theta.size(), want.size()) << what;
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(f.theta[i], want[i], 1e-13 * std::max(1.0, std::abs(want[i])))
        << what << " i=" << i;
  EXPECT_NEAR(f.mscale, mscale, 1e-14) << what;
}

// R = 8 (R/2 = 4 per axis), base 10^4: theta = [1, 1/100] on each axis. Trained grid 2 x 64
// (rows x cols), current grid 4 x 96: default factors s_y = 2, s_x = 1.5.
Rope2dFreqs freqs(RopeScalingType t, std::array<double, 2> factor = {0, 0},
                  const RopeScaling* custom = nullptr) {
  return rope_2d_frequencies(8, 1e4, custom ? *custom : of(t), factor, {2, 64}, {4, 96});
}

StackGeom geom(int64_t D, int64_t gh, int64_t gw) {
  StackGeom g{"encoder.", 1, D, 1, 1, D, 64, false, true};
  g.grid_h = gh, g.grid_w = gw, g.cls = true;
  return g;
}

PositionConfig rope2d_cfg(const std::string& layout, RopeScalingType t,
                          std::array<double, 2> factor = {0, 0}, int64_t R = 0) {
  PositionConfig pc;
  pc.type = "rope_2d", pc.axial_layout = layout, pc.rotary_dim = R;
  pc.scaling.type = t;
  pc.axis_factor = factor;
  return pc;
}

// Rows x [n, D] rotated in one call at positions (row, col) of ids (n pairs).
std::vector<float> rotate(const PositionEncoding& pe, std::vector<float> x, int64_t D,
                          const std::vector<int32_t>& ids, bool backward = false) {
  const int64_t n = static_cast<int64_t>(ids.size() / 2);
  const Positions pos = Positions::of(1, n, 2, ids.data());
  if (backward)
    pe.rotate_backward(x.data(), 1, D, pos);
  else
    pe.rotate(x.data(), 1, D, pos);
  return x;
}

double dot(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}
}  // namespace

TEST(Rope2dScaling, PerAxisFrequenciesByHand) {
  // none: plain on both axes, factor 1
  Rope2dFreqs f = freqs(RopeScalingType::None);
  expect_axis(f.y, {1.0, 0.01}, 1.0, "none y");
  expect_axis(f.x, {1.0, 0.01}, 1.0, "none x");
  EXPECT_EQ(f.factor_y, 1.0);
  EXPECT_EQ(f.factor_x, 1.0);
  // linear: theta / s_a with the default s = new / trained grid per axis (4/2, 96/64)
  f = freqs(RopeScalingType::Linear);
  EXPECT_EQ(f.factor_y, 2.0);
  EXPECT_EQ(f.factor_x, 1.5);
  expect_axis(f.y, {0.5, 0.005}, 1.0, "linear y");
  expect_axis(f.x, {1 / 1.5, 0.01 / 1.5}, 1.0, "linear x");
  // a given factor per axis [row, col]
  f = freqs(RopeScalingType::Linear, {3.0, 1.25});
  expect_axis(f.y, {1 / 3.0, 0.01 / 3}, 1.0, "linear [3, 1.25] y");
  expect_axis(f.x, {0.8, 0.008}, 1.0, "linear [3, 1.25] x");
  // ntk, R/2 = 4: base' = 10^4 s^(4/2), theta_1 = base'^(-1/2) = 0.01 / s
  f = freqs(RopeScalingType::Ntk);
  expect_axis(f.y, {1.0, 0.005}, 1.0, "ntk y");
  expect_axis(f.x, {1.0, 0.01 / 1.5}, 1.0, "ntk x");
  // dynamic_ntk, default factor 1: s' = G/L0 per axis (2 and 1.5) = ntk at the default factor
  f = freqs(RopeScalingType::DynamicNtk);
  EXPECT_EQ(f.factor_y, 1.0);
  expect_axis(f.y, {1.0, 0.005}, 1.0, "dynamic_ntk y");
  expect_axis(f.x, {1.0, 0.01 / 1.5}, 1.0, "dynamic_ntk x");
  // given factor 2: s'_y = 2*4/2 - 1 = 3, s'_x = 2*96/64 - 1 = 2
  f = freqs(RopeScalingType::DynamicNtk, {2, 2});
  expect_axis(f.y, {1.0, 0.01 / 3}, 1.0, "dynamic_ntk s=2 y");
  expect_axis(f.x, {1.0, 0.005}, 1.0, "dynamic_ntk s=2 x");
  // yarn, R/2 = 4: corr(r) = 4 ln(L0/(2 pi r)) / (2 ln 10^4).
  //   y (L0 = 2):  corr(32) = -1.001 -> low = -2, corr(1) = -0.249 -> high = 0: ramp 0, all / 2
  //   x (L0 = 64): corr(32) = -0.249 -> low = -1, corr(1) = 0.504 -> high = 1:
  //                ramp_0 = 1 - 1/2 = 1/2, ramp_1 = 0
  const double cy32 = 4 * std::log(2 / (2 * kPi * 32)) / (2 * std::log(1e4));
  const double cx1 = 4 * std::log(64 / (2 * kPi)) / (2 * std::log(1e4));
  ASSERT_NEAR(cy32, -1.0012, 1e-4);
  ASSERT_NEAR(cx1, 0.5040, 1e-4);
  f = freqs(RopeScalingType::Yarn);
  expect_axis(f.y, {0.5, 0.005}, 1 + 0.1 * std::log(2.0), "yarn y");
  expect_axis(f.x, {0.5 / 1.5 + 0.5, 0.01 / 1.5}, 1 + 0.1 * std::log(1.5), "yarn x");
  // llama3 (low 1, high 4): lambda = [2 pi, 200 pi].
  //   y (L0 = 2): both wavelengths > 2: divided;  x (L0 = 64): 2 pi < 16 kept, 200 pi > 64 divided
  f = freqs(RopeScalingType::Llama3);
  expect_axis(f.y, {0.5, 0.005}, 1.0, "llama3 y");
  expect_axis(f.x, {1.0, 0.01 / 1.5}, 1.0, "llama3 x");
  // a grid no larger than the trained one: default factor 1 (never below), plain frequencies
  for (RopeScalingType t : kTypes) {
    const Rope2dFreqs g = rope_2d_frequencies(8, 1e4, of(t), {0, 0}, {4, 6}, {3, 6});
    EXPECT_EQ(g.factor_y, 1.0);
    expect_axis(g.y, {1.0, 0.01}, 1.0, ops::rope_scaling_name(t));
    expect_axis(g.x, {1.0, 0.01}, 1.0, ops::rope_scaling_name(t));
  }
}

// The rows of rope_apply's table: the x pair of block i at 2i (interleaved) or i (split), the y
// pair at 2i+1 or R/4 + i; each axis's table scale on its own pairs.
TEST(Rope2dScaling, TableRowPutsEachAxisOnItsPairs) {
  const Rope2dFreqs f = freqs(RopeScalingType::Yarn);
  for (bool inter : {false, true}) {
    float c[4], s[4];
    rope_2d_table_row(inter, f, 5.0, 3.0, c, s);
    for (int i = 0; i < 2; ++i) {
      const int jx = inter ? 2 * i : i, jy = inter ? 2 * i + 1 : 2 + i;
      EXPECT_NEAR(c[jx], f.x.mscale * std::cos(5.0 * f.x.theta[i]), 1e-6);
      EXPECT_NEAR(s[jx], f.x.mscale * std::sin(5.0 * f.x.theta[i]), 1e-6);
      EXPECT_NEAR(c[jy], f.y.mscale * std::cos(3.0 * f.y.theta[i]), 1e-6);
      EXPECT_NEAR(s[jy], f.y.mscale * std::sin(3.0 * f.y.theta[i]), 1e-6);
    }
  }
}

class Rope2dScalingLayouts : public ::testing::TestWithParam<const char*> {};

// Factor 1 is the unscaled rotation: the default factor at the trained grid for every type, and
// a given factor 1 at a larger grid for every type but dynamic_ntk (whose factor-1 form grows
// with the grid past the trained one).
TEST_P(Rope2dScalingLayouts, FactorOneIsUnscaled) {
  const std::string layout = GetParam();
  const int64_t D = 16;
  const std::vector<float> x = pf_test::randn(4 * D, 7);
  const std::vector<int32_t> trained = {-1, -1, 0, 1, 2, 3, 1, 2};  // CLS + patches, grid 3 x 4
  const std::vector<int32_t> larger = {-1, -1, 0, 1, 5, 7, 4, 2};   // grid 6 x 8
  const auto plain =
      make_position_encoding(rope2d_cfg(layout, RopeScalingType::None), geom(D, 3, 4));
  for (RopeScalingType t : kTypes) {
    const auto at_default = make_position_encoding(rope2d_cfg(layout, t), geom(D, 3, 4));
    const auto at_one = make_position_encoding(rope2d_cfg(layout, t, {1, 1}), geom(D, 3, 4));
    const std::vector<float> a = rotate(*at_default, x, D, trained),
                             b = rotate(*plain, x, D, trained);
    for (size_t i = 0; i < x.size(); ++i)
      EXPECT_NEAR(a[i], b[i], 1e-6) << ops::rope_scaling_name(t) << " default factor, dim " << i;
    if (t == RopeScalingType::DynamicNtk) continue;
    const std::vector<float> c = rotate(*at_one, x, D, larger), d = rotate(*plain, x, D, larger);
    for (size_t i = 0; i < x.size(); ++i)
      EXPECT_NEAR(c[i], d[i], 1e-6) << ops::rope_scaling_name(t) << " factor 1, dim " << i;
  }
  // and scaling does change the rotation past the trained grid (the test can fail)
  const auto lin =
      make_position_encoding(rope2d_cfg(layout, RopeScalingType::Linear), geom(D, 3, 4));
  const std::vector<float> e = rotate(*lin, x, D, larger), p = rotate(*plain, x, D, larger);
  double diff = 0;
  for (size_t i = 0; i < x.size(); ++i) diff = std::max(diff, double(std::abs(e[i] - p[i])));
  EXPECT_GT(diff, 1e-2);
}

// linear at factors (s_y, s_x) is position interpolation: rope_2d at (x / s_x, y / s_y), the
// unscaled angles (rope_2d_angles) at fractional positions.
TEST_P(Rope2dScalingLayouts, LinearIsPositionInterpolationPerAxis) {
  const std::string layout = GetParam();
  const bool inter = layout == "axial_interleaved";
  const int64_t D = 20, R = 16;  // partial rotary: dims >= 16 pass through
  const std::vector<int32_t> ids = {0, 0, 3, 1, 5, 9, 2, 11};  // grid 6 x 12 over trained 4 x 5
  const int64_t n = static_cast<int64_t>(ids.size() / 2);
  const std::vector<float> x = pf_test::randn(n * D, 8);
  for (std::array<double, 2> factor : {std::array<double, 2>{0, 0}, {2.5, 1.25}}) {
    const auto pe = make_position_encoding(rope2d_cfg(layout, RopeScalingType::Linear, factor, R),
                                           geom(D, 4, 5));
    const double sy = factor[0] > 0 ? factor[0] : 6.0 / 4,
                 sx = factor[1] > 0 ? factor[1] : 12.0 / 5;
    const std::vector<float> got = rotate(*pe, x, D, ids);
    std::vector<float> cs(static_cast<size_t>(n * R / 2)), sn(cs.size()), want = x;
    for (int64_t t = 0; t < n; ++t) {
      const std::vector<double> a =
          rope_2d_angles(R, 1e4, inter, ids[2 * t + 1] / sx, ids[2 * t] / sy);
      for (int64_t j = 0; j < R / 2; ++j)
        cs[t * R / 2 + j] = float(std::cos(a[j])), sn[t * R / 2 + j] = float(std::sin(a[j]));
    }
    ops::ref::rope_apply(want.data(), n, 1, D, D, R, ops::RopeLayout::Interleaved, cs.data(),
                         sn.data());
    for (size_t i = 0; i < x.size(); ++i)
      EXPECT_NEAR(got[i], want[i], 2e-6)
          << "factor " << factor[0] << "," << factor[1] << " i " << i;
  }
}

// Under every scaling, <R(x1,y1) q, R(x2,y2) k> depends on (x2-x1, y2-y1) only (the grid of the
// call, which sets the frequencies, fixed by a token at its far corner), and rotate_backward is
// the adjoint: <rotate(a), b> = <a, rotate_backward(b)>.
TEST_P(Rope2dScalingLayouts, RelativeAndAdjointUnderScaling) {
  const std::string layout = GetParam();
  const int64_t D = 16;
  const std::vector<float> q = pf_test::randn(D, 5), k = pf_test::randn(D, 6);
  for (RopeScalingType t : kTypes) {
    const auto pe = make_position_encoding(rope2d_cfg(layout, t), geom(D, 2, 3));
    // tokens: q at (y1, x1), k at (y2, x2), the corner (7, 9): grid 8 x 10 over trained 2 x 3
    auto score = [&](int32_t y1, int32_t x1, int32_t y2, int32_t x2) {
      std::vector<float> rows(3 * D, 0.0f);
      std::copy(q.begin(), q.end(), rows.begin());
      std::copy(k.begin(), k.end(), rows.begin() + D);
      const std::vector<float> r = rotate(*pe, rows, D, {y1, x1, y2, x2, 7, 9});
      return dot(r.data(), r.data() + D, D);
    };
    const double s0 = score(1, 2, 3, 7);
    for (auto [dy, dx] : std::vector<std::pair<int, int>>{{0, 2}, {4, 0}, {3, 1}, {-1, -2}}) {
      const double s = score(1 + dy, 2 + dx, 3 + dy, 7 + dx);
      EXPECT_NEAR(s, s0, 1e-4 * std::abs(s0) + 1e-5)
          << ops::rope_scaling_name(t) << " shift " << dy << "," << dx;
    }
    EXPECT_GT(std::abs(score(1, 2, 4, 7) - s0), 1e-4) << ops::rope_scaling_name(t) << " row";
    EXPECT_GT(std::abs(score(1, 2, 3, 8) - s0), 1e-4) << ops::rope_scaling_name(t) << " col";
    // adjoint, with the CLS token and a patch
    const std::vector<int32_t> ids = {-1, -1, 2, 5, 7, 9};
    const std::vector<float> a = pf_test::randn(3 * D, 9), b = pf_test::randn(3 * D, 10);
    const std::vector<float> ra = rotate(*pe, a, D, ids), rb = rotate(*pe, b, D, ids, true);
    const double lhs = dot(ra.data(), b.data(), 3 * D), rhs = dot(a.data(), rb.data(), 3 * D);
    EXPECT_NEAR(lhs, rhs, 1e-5 * std::abs(lhs) + 1e-5) << ops::rope_scaling_name(t);
  }
}

INSTANTIATE_TEST_SUITE_P(Layouts, Rope2dScalingLayouts,
                         ::testing::Values("axial_split", "axial_interleaved"));

// The CLS token: "origin" gets what patch (0, 0) gets (under yarn the table scale of each axis),
// "none" is not touched.
TEST(Rope2dScaling, ClsOriginGetsPatchZeroNoneUntouched) {
  const int64_t D = 8;
  const std::vector<float> x = pf_test::randn(2 * D, 3);
  const std::vector<int32_t> ids = {-1, -1, 5, 7};  // grid 6 x 8 over trained 2 x 2
  PositionConfig pc = rope2d_cfg("axial_split", RopeScalingType::Yarn);
  const std::vector<float> origin = rotate(*make_position_encoding(pc, geom(D, 2, 2)), x, D, ids);
  pc.cls_position = "none";
  const std::vector<float> none = rotate(*make_position_encoding(pc, geom(D, 2, 2)), x, D, ids);
  const double my = 1 + 0.1 * std::log(3.0), mx = 1 + 0.1 * std::log(4.0);
  for (int64_t i = 0; i < D; ++i) {
    EXPECT_NEAR(origin[i], (i < D / 2 ? mx : my) * x[i], 1e-6) << i;  // x half first (split)
    EXPECT_EQ(none[i], x[i]) << i;
    EXPECT_EQ(origin[D + i], none[D + i]) << i;  // patches alike
  }
}

namespace {
json vit_cfg(json scaling, json pos_extra = json::object(), json extra = json::object()) {
  json pos = {{"type", "rope_2d"}, {"scaling", scaling}};
  for (auto it = pos_extra.begin(); it != pos_extra.end(); ++it) pos[it.key()] = it.value();
  json j = {{"arch", "vit"},    {"image_size", json::array({8, 12})},
            {"patch_size", 4},  {"channels", 1},
            {"num_classes", 3}, {"d_model", 32},
            {"n_heads", 2},     {"n_layers", 1},
            {"d_ff", 16},       {"position", pos}};
  for (auto it = extra.begin(); it != extra.end(); ++it) j[it.key()] = it.value();
  return j;
}
void expect_refused(const json& j, std::initializer_list<const char*> words) {
  try {
    Transformer m(parse_config(j));
    FAIL() << "config accepted: " << j.dump();
  } catch (const Error& e) {
    const std::string msg = e.what();
    for (const char* w : words) EXPECT_NE(msg.find(w), std::string::npos) << "message: " << msg;
  }
}
}  // namespace

TEST(Rope2dScalingConfig, RefusalsNameTheField) {
  expect_refused(vit_cfg({{"type", "linear"}, {"factor", 0.5}}),
                 {"position.scaling.factor", ">= 1"});
  expect_refused(vit_cfg({{"type", "linear"}, {"factor", {2, 0.5}}}),
                 {"position.scaling.factor", ">= 1", "0.5"});
  expect_refused(vit_cfg({{"type", "linear"}, {"factor", {2}}}),
                 {"position.scaling.factor", "[row, col]"});
  expect_refused(vit_cfg({{"type", "linear"}, {"factor", "big"}}),
                 {"position.scaling.factor", "auto"});
  expect_refused(vit_cfg({{"type", "yarn"}, {"original_len", 4}}),
                 {"position.scaling.original_len", "rope_2d", "patch grid"});
  expect_refused(vit_cfg({{"type", "ntk_aware"}}), {"position.scaling.type", "ntk_aware"});
  expect_refused(vit_cfg({{"type", "yarn"}, {"beta_fast", 0.5}}), {"beta_fast", "beta_slow"});
  expect_refused(vit_cfg({{"type", "linear"}, {"beta_fast", 16}}),
                 {"position.scaling.beta_fast", "yarn"});
  expect_refused(vit_cfg({{"type", "llama3"}, {"low_freq_factor", 4}, {"high_freq_factor", 2}}),
                 {"high_freq_factor", "low_freq_factor"});
  expect_refused(vit_cfg({{"type", "ntk"}}, {{"rotary_dim", 4}}),
                 {"ntk", "rope_2d", "rotary_dim/2", "2"});
}

TEST(Rope2dScalingConfig, RoundTrip) {
  for (const json& factor : {json("auto"), json(2.0), json::array({3.0, 1.5})}) {
    const json y = {{"type", "yarn"}, {"factor", factor}, {"beta_fast", 16.0}, {"beta_slow", 2.0}};
    const ModelConfig c = parse_config(vit_cfg(y));
    EXPECT_EQ(c.position.scaling.type, RopeScalingType::Yarn);
    EXPECT_EQ(config_to_json(c)["position"]["scaling"], y) << factor.dump();
    const ModelConfig back = parse_config(config_to_json(c));
    EXPECT_EQ(back.position.scaling, c.position.scaling);
    EXPECT_EQ(back.position.axis_factor, c.position.axis_factor);
  }
  // no factor = "auto" = {0, 0}; no scaling = {"type": "none"}
  EXPECT_EQ(parse_config(vit_cfg({{"type", "ntk"}})).position.axis_factor,
            (std::array<double, 2>{0, 0}));
  EXPECT_EQ(config_to_json(parse_config(vit_cfg({{"type", "ntk"}})))["position"]["scaling"],
            json({{"type", "ntk"}, {"factor", "auto"}}));
  json plain = vit_cfg({});
  plain["position"].erase("scaling");
  EXPECT_EQ(config_to_json(parse_config(plain))["position"]["scaling"], json({{"type", "none"}}));
}
