// 2-D position encodings (SPEC.md section 4, posenc/vision.h) and the ViT's input checks.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "posformer/model/transformer.h"
#include "posformer/posenc/position_encoding.h"
#include "posformer/posenc/vision.h"
#include "test_util.h"

using namespace posformer;

namespace {
using pf_test::randn;

StackGeom head_geom(int64_t D) {
  StackGeom g{"encoder.", 1, D, 1, 1, D, 64, false, true};
  g.grid_h = 4, g.grid_w = 4, g.cls = true;
  return g;
}

// rope_2d rotation of one head vector x (width D) at patch (row, col); (-1, -1) = CLS.
std::vector<float> rope2d(std::vector<float> x, const std::string& layout, int64_t R, double base,
                          int32_t row, int32_t col, const std::string& cls = "origin") {
  PositionConfig pc;
  pc.type = "rope_2d", pc.axial_layout = layout, pc.rotary_dim = R, pc.base = base;
  pc.cls_position = cls;
  const int64_t D = static_cast<int64_t>(x.size());
  auto pe = make_position_encoding(pc, head_geom(D));
  const int32_t ids[2] = {row, col};
  pe->rotate(x.data(), 1, D, Positions::of(1, 1, 2, ids));
  return x;
}

double dot(const std::vector<float>& a, const std::vector<float>& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

// SPEC 4's matrix written out: 2x2 rotation blocks on the dims each layout assigns to x / y.
std::vector<double> spec_matrix_times(const std::vector<float>& q, const std::string& layout,
                                      int64_t R, double base, double x, double y) {
  const int64_t D = static_cast<int64_t>(q.size());
  std::vector<double> M(static_cast<size_t>(D * D), 0.0);
  for (int64_t i = 0; i < D; ++i) M[i * D + i] = 1.0;  // dims >= R pass through
  auto block = [&](int64_t a, double ang) {            // rotation on dims (a, a+1)
    M[a * D + a] = std::cos(ang), M[a * D + a + 1] = -std::sin(ang);
    M[(a + 1) * D + a] = std::sin(ang), M[(a + 1) * D + a + 1] = std::cos(ang);
  };
  for (int64_t i = 0; i < R / 4; ++i) {
    const double th = std::pow(base, -2.0 * double(i) / double(R / 2));
    if (layout == "axial_interleaved") {  // [x-pair, y-pair] per 4-dim block
      block(4 * i, x * th);
      block(4 * i + 2, y * th);
    } else {  // first half by x, second half by y
      block(2 * i, x * th);
      block(R / 2 + 2 * i, y * th);
    }
  }
  std::vector<double> out(static_cast<size_t>(D), 0.0);
  for (int64_t r = 0; r < D; ++r)
    for (int64_t c = 0; c < D; ++c) out[r] += M[r * D + c] * q[c];
  return out;
}
}  // namespace

class Rope2dLayouts : public ::testing::TestWithParam<const char*> {};

TEST_P(Rope2dLayouts, MatchesSpecMatrix) {
  const std::string layout = GetParam();
  for (int64_t R : {4, 8, 12}) {
    const std::vector<float> q = randn(12, 3);
    for (auto [row, col] : std::vector<std::pair<int, int>>{{0, 0}, {2, 5}, {7, 1}, {13, 9}}) {
      const std::vector<float> got = rope2d(q, layout, R, 100.0, row, col);
      const std::vector<double> want = spec_matrix_times(q, layout, R, 100.0, col, row);
      for (size_t i = 0; i < q.size(); ++i)
        EXPECT_NEAR(got[i], want[i], 1e-5)
            << layout << " R " << R << " (" << row << "," << col << ") dim " << i;
    }
  }
}

// <R(x1,y1) q, R(x2,y2) k> depends on (x2-x1, y2-y1) only; moving one position changes it.
TEST_P(Rope2dLayouts, ScoreDependsOnlyOnOffset) {
  const std::string layout = GetParam();
  const std::vector<float> q = randn(16, 5), k = randn(16, 6);
  const double s0 = dot(rope2d(q, layout, 16, 10000.0, 1, 2), rope2d(k, layout, 16, 10000.0, 3, 7));
  for (auto [dy, dx] : std::vector<std::pair<int, int>>{{0, 5}, {4, 0}, {6, 11}, {20, 3}}) {
    const double s = dot(rope2d(q, layout, 16, 10000.0, 1 + dy, 2 + dx),
                         rope2d(k, layout, 16, 10000.0, 3 + dy, 7 + dx));
    EXPECT_NEAR(s, s0, 1e-4 * std::abs(s0) + 1e-4) << layout << " shift " << dy << "," << dx;
  }
  // not a constant: the row offset and the column offset each change the score
  EXPECT_GT(
      std::abs(dot(rope2d(q, layout, 16, 10000.0, 1, 2), rope2d(k, layout, 16, 10000.0, 4, 7)) -
               s0),
      1e-3);
  EXPECT_GT(
      std::abs(dot(rope2d(q, layout, 16, 10000.0, 1, 2), rope2d(k, layout, 16, 10000.0, 3, 8)) -
               s0),
      1e-3);
  // rotate_backward is the inverse rotation
  PositionConfig pc;
  pc.type = "rope_2d", pc.axial_layout = layout;
  auto pe = make_position_encoding(pc, head_geom(16));
  const int32_t ids[2] = {3, 5};
  std::vector<float> x = q;
  pe->rotate(x.data(), 1, 16, Positions::of(1, 1, 2, ids));
  pe->rotate_backward(x.data(), 1, 16, Positions::of(1, 1, 2, ids));
  for (size_t i = 0; i < q.size(); ++i) EXPECT_NEAR(x[i], q[i], 1e-6);
}

INSTANTIATE_TEST_SUITE_P(Layouts, Rope2dLayouts,
                         ::testing::Values("axial_split", "axial_interleaved"));

// The CLS token (-1, -1) is not rotated, for both cls_position choices (R(0,0) = I).
TEST(Rope2d, ClsUnrotatedAndBadPositionsRefused) {
  const std::vector<float> q = randn(8, 9);
  for (const char* cls : {"origin", "none"}) {
    const std::vector<float> y = rope2d(q, "axial_split", 8, 10000.0, -1, -1, cls);
    for (size_t i = 0; i < q.size(); ++i) EXPECT_EQ(y[i], q[i]) << cls;
  }
  pf_test::expect_error([&] { rope2d(q, "axial_split", 8, 10000.0, -1, 3); },
                        {"rope_2d", "(-1, 3)", "negative"});
  PositionConfig pc;
  pc.type = "rope_2d";
  auto pe = make_position_encoding(pc, head_geom(8));
  std::vector<float> x = q;
  pf_test::expect_error([&] { pe->rotate(x.data(), 1, 8, Positions::run(1, 1, 0)); },
                        {"rope_2d", "two coordinates", "1"});
}

// sincos_2d: [sin(x w) | cos(x w) | sin(y w) | cos(y w)], w_i = 10000^(-i/(d/4)), x = column.
TEST(Sincos2d, RowFollowsMaeLayout) {
  const int64_t d = 16, n = d / 4;
  std::vector<float> row(d);
  sincos_2d_row(d, 3.0, 5.0, row.data());
  for (int64_t i = 0; i < n; ++i) {
    const double w = std::pow(10000.0, -double(i) / double(n));
    EXPECT_NEAR(row[i], std::sin(3.0 * w), 1e-6);
    EXPECT_NEAR(row[n + i], std::cos(3.0 * w), 1e-6);
    EXPECT_NEAR(row[2 * n + i], std::sin(5.0 * w), 1e-6);
    EXPECT_NEAR(row[3 * n + i], std::cos(5.0 * w), 1e-6);
  }
}

// Resize taps: the identity at the same size, weights summing to 1 (constants kept), and the
// backward is the adjoint of the forward (<A a, b> = <a, A^T b>).
TEST(ResizeGrid, IdentityPartitionOfUnityAndAdjoint) {
  for (bool bicubic : {false, true}) {
    const std::vector<float> a = randn(3 * 4 * 5, 21);
    std::vector<float> same(a.size());
    resize_grid(a.data(), 3, 4, 5, 3, 4, bicubic, same.data());
    for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(same[i], a[i], 1e-6) << bicubic;
    for (auto [in, out] : std::vector<std::pair<int, int>>{{4, 7}, {7, 4}, {2, 9}, {5, 5}}) {
      const AxisTaps t = interp_taps(in, out, bicubic);
      for (int64_t o = 0; o < out; ++o) {
        double s = 0;
        for (int64_t j = 0; j < t.n; ++j) {
          s += t.w[o * t.n + j];
          EXPECT_GE(t.idx[o * t.n + j], 0);
          EXPECT_LT(t.idx[o * t.n + j], in);
        }
        EXPECT_NEAR(s, 1.0, 1e-12);
      }
    }
    const int64_t gh0 = 3, gw0 = 4, gh = 5, gw = 7, d = 2;
    const std::vector<float> b = randn(gh * gw * d, 22);
    std::vector<float> Aa(b.size()), Atb(static_cast<size_t>(gh0 * gw0 * d), 0.0f);
    std::vector<float> a2(a.begin(), a.begin() + gh0 * gw0 * d);
    resize_grid(a2.data(), gh0, gw0, d, gh, gw, bicubic, Aa.data());
    resize_grid_backward(b.data(), gh0, gw0, d, gh, gw, bicubic, Atb.data());
    EXPECT_NEAR(dot(Aa, b), dot(a2, Atb), 1e-4) << bicubic;
  }
}

// ViT inputs: wrong channels, a size that is not a multiple of the patch, labels out of range.
TEST(Vit, BadImagesAndLabelsRefused) {
  const nlohmann::json j = {{"arch", "vit"},    {"image_size", {8, 8}},
                            {"patch_size", 4},  {"channels", 1},
                            {"num_classes", 3}, {"d_model", 16},
                            {"n_layers", 1},    {"n_heads", 2},
                            {"d_ff", 16},       {"position", {{"type", "learned_2d"}}}};
  const Transformer m = Transformer::random_init(parse_config(j), 1);
  pf_test::expect_error([&] { m.classify(Tensor({1, 2, 8, 8})); }, {"2 channels", "takes 1"});
  pf_test::expect_error(
      [&] {
        m.classify(Tensor({1, 1, 8, 6}));
      },
      {"8x6", "multiple of patch_size 4"});
  ParamStore g = m.zero_grads();
  pf_test::expect_error(
      [&] {
        m.classify_loss_and_grad(Tensor({2, 1, 8, 8}), {0, 3}, g);
      },
      {"label 3", "[0, 3)"});
  pf_test::expect_error([&] { m.forward({{1, 2}}); }, {"vit", "images"});
  // an image classified alone equals its row in a batch (no leak across images)
  Tensor batch({3, 1, 12, 8});
  const std::vector<float> px = randn(3 * 12 * 8, 4);
  std::copy(px.begin(), px.end(), batch.data<float>());
  Tensor one({1, 1, 12, 8});
  std::copy_n(px.begin() + 12 * 8, 12 * 8, one.data<float>());
  const Tensor lb = m.classify(batch), l1 = m.classify(one);
  for (int64_t k = 0; k < 3; ++k) EXPECT_NEAR(lb.data<float>()[3 + k], l1.data<float>()[k], 1e-5);
}
