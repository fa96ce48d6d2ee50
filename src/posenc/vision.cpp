// rope_2d, sincos_2d, learned_2d: ViT patch positions (posenc/vision.h, SPEC.md section 4).
#include "posformer/posenc/vision.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>

#include "posenc_impl.h"

namespace posformer {

std::vector<double> rope_2d_angles(int64_t R, double base, bool interleaved, double x, double y) {
  const int64_t q = R / 4;
  std::vector<double> a(static_cast<size_t>(R / 2));
  for (int64_t i = 0; i < q; ++i) {
    const double th = std::pow(base, -2.0 * static_cast<double>(i) / static_cast<double>(R / 2));
    if (interleaved)
      a[2 * i] = x * th, a[2 * i + 1] = y * th;
    else
      a[i] = x * th, a[q + i] = y * th;
  }
  return a;
}

Rope2dFreqs rope_2d_frequencies(int64_t R, double base, const ops::RopeScaling& s,
                                std::array<double, 2> factor, std::array<int64_t, 2> L0,
                                std::array<int64_t, 2> cur) {
  PF_CHECK(R > 0 && R % 4 == 0, "[rope_2d] rotary dim must be a multiple of 4, got ", R);
  Rope2dFreqs f;
  double* used[2] = {&f.factor_y, &f.factor_x};
  ops::RopeFreqs* out[2] = {&f.y, &f.x};
  for (int a = 0; a < 2; ++a) {
    ops::RopeScaling sa = s;
    if (s.type != ops::RopeScalingType::None) {
      PF_CHECK(L0[a] >= 1, "[rope_2d] the trained grid must be >= 1 on each axis, got ", L0[a]);
      const double grid = std::max(1.0, static_cast<double>(cur[a]) / static_cast<double>(L0[a]));
      const bool dynamic = s.type == ops::RopeScalingType::DynamicNtk;
      sa.factor = factor[a] > 0 ? factor[a] : dynamic ? 1.0 : grid;
      sa.original_len = L0[a];
    }
    *used[a] = sa.type == ops::RopeScalingType::None ? 1.0 : sa.factor;
    *out[a] = ops::rope_frequencies(R / 2, base, sa, cur[a]);
  }
  return f;
}

void rope_2d_table_row(bool interleaved, const Rope2dFreqs& f, double x, double y, float* cos,
                       float* sin) {
  const size_t q = f.x.theta.size();
  for (size_t i = 0; i < q; ++i) {
    const double ax = x * f.x.theta[i], ay = y * f.y.theta[i];
    const size_t jx = interleaved ? 2 * i : i, jy = interleaved ? 2 * i + 1 : q + i;
    cos[jx] = static_cast<float>(f.x.mscale * std::cos(ax));
    sin[jx] = static_cast<float>(f.x.mscale * std::sin(ax));
    cos[jy] = static_cast<float>(f.y.mscale * std::cos(ay));
    sin[jy] = static_cast<float>(f.y.mscale * std::sin(ay));
  }
}

void sincos_2d_row(int64_t d, double x, double y, float* out) {
  const int64_t n = d / 4;
  for (int64_t i = 0; i < n; ++i) {
    const double w = std::pow(10000.0, -static_cast<double>(i) / static_cast<double>(n));
    out[i] = static_cast<float>(std::sin(x * w)), out[n + i] = static_cast<float>(std::cos(x * w));
    out[2 * n + i] = static_cast<float>(std::sin(y * w));
    out[3 * n + i] = static_cast<float>(std::cos(y * w));
  }
}

AxisTaps interp_taps(int64_t in, int64_t out, bool bicubic) {
  AxisTaps t;
  t.n = bicubic ? 4 : 2;
  t.idx.resize(static_cast<size_t>(out * t.n));
  t.w.resize(t.idx.size());
  const double scale = static_cast<double>(in) / static_cast<double>(out);
  for (int64_t o = 0; o < out; ++o) {
    double src = scale * (static_cast<double>(o) + 0.5) - 0.5;  // align_corners=False
    int64_t* ix = &t.idx[o * t.n];
    double* w = &t.w[o * t.n];
    if (!bicubic) {
      src = std::max(src, 0.0);
      const int64_t i0 = static_cast<int64_t>(src);
      const double l = src - static_cast<double>(i0);
      ix[0] = i0, ix[1] = std::min(i0 + 1, in - 1), w[0] = 1.0 - l, w[1] = l;
      continue;
    }
    const double f = std::floor(src), s = src - f, A = -0.75;  // cubic convolution, as torch
    const auto near = [A](double x) { return ((A + 2) * x - (A + 3)) * x * x + 1; };
    const auto far = [A](double x) { return ((A * x - 5 * A) * x + 8 * A) * x - 4 * A; };
    const double cw[4] = {far(s + 1), near(s), near(1 - s), far(2 - s)};
    for (int64_t a = 0; a < 4; ++a) {
      ix[a] = std::clamp(static_cast<int64_t>(f) - 1 + a, int64_t{0}, in - 1);
      w[a] = cw[a];
    }
  }
  return t;
}

void resize_grid(const float* src, int64_t gh0, int64_t gw0, int64_t d, int64_t gh, int64_t gw,
                 bool bicubic, float* out) {
  const AxisTaps ty = interp_taps(gh0, gh, bicubic), tx = interp_taps(gw0, gw, bicubic);
  std::vector<double> acc(static_cast<size_t>(d));
  for (int64_t y = 0; y < gh; ++y)
    for (int64_t x = 0; x < gw; ++x) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t a = 0; a < ty.n; ++a)
        for (int64_t b = 0; b < tx.n; ++b) {
          const double w = ty.w[y * ty.n + a] * tx.w[x * tx.n + b];
          const float* s = src + (ty.idx[y * ty.n + a] * gw0 + tx.idx[x * tx.n + b]) * d;
          for (int64_t i = 0; i < d; ++i) acc[i] += w * s[i];
        }
      for (int64_t i = 0; i < d; ++i) out[(y * gw + x) * d + i] = static_cast<float>(acc[i]);
    }
}

void resize_grid_backward(const float* dout, int64_t gh0, int64_t gw0, int64_t d, int64_t gh,
                          int64_t gw, bool bicubic, float* dsrc) {
  const AxisTaps ty = interp_taps(gh0, gh, bicubic), tx = interp_taps(gw0, gw, bicubic);
  std::vector<double> acc(static_cast<size_t>(gh0 * gw0 * d), 0.0);
  for (int64_t y = 0; y < gh; ++y)
    for (int64_t x = 0; x < gw; ++x)
      for (int64_t a = 0; a < ty.n; ++a)
        for (int64_t b = 0; b < tx.n; ++b) {
          const double w = ty.w[y * ty.n + a] * tx.w[x * tx.n + b];
          double* s = acc.data() + (ty.idx[y * ty.n + a] * gw0 + tx.idx[x * tx.n + b]) * d;
          const float* g = dout + (y * gw + x) * d;
          for (int64_t i = 0; i < d; ++i) s[i] += w * g[i];
        }
  for (size_t i = 0; i < acc.size(); ++i) dsrc[i] += static_cast<float>(acc[i]);
}

namespace {

// The patch grid of 2-D positions: rows/cols 0..gh-1 / 0..gw-1; CLS tokens at (-1, -1).
struct Grid {
  int64_t gh, gw;
};
Grid grid_of(const Positions& pos, const char* who) {
  PF_CHECK(pos.axes == 2, "[", who,
           "] 2-D positions need two coordinates (row, col) per token, got ", pos.axes,
           " (arch vit gives them)");
  PF_CHECK(pos.ids, "[", who, "] 2-D positions must be explicit ids");
  int64_t gh = 0, gw = 0;
  for (int64_t i = 0; i < pos.B * pos.T; ++i) {
    const int64_t r = pos.ids[2 * i], c = pos.ids[2 * i + 1];
    const bool cls = r == -1 && c == -1;
    PF_CHECK(cls || (r >= 0 && c >= 0), "[", who, "] patch position (", r, ", ", c,
             ") is negative (only the CLS token sits at (-1, -1))");
    gh = std::max(gh, r + 1), gw = std::max(gw, c + 1);
  }
  return {gh, gw};
}

class Rope2dPosition final : public PositionEncoding {
 public:
  Rope2dPosition(const PositionConfig& c, const StackGeom& g)
      : g_(g),
        R_(c.rotary_dim == 0 ? g.D : c.rotary_dim),
        base_(c.base),
        interleaved_(c.axial_layout == "axial_interleaved"),
        cls_rotated_(c.cls_position != "none"),
        scaling_(c.scaling),
        factor_(c.axis_factor) {
    PF_CHECK(R_ > 0 && R_ % 4 == 0 && R_ <= g.D,
             "[rope_2d] rotary dim must be a multiple of 4 and <= head dim ", g.D, ", got ", R_);
  }
  std::string name() const override { return "rope_2d"; }
  bool rotary() const override { return true; }
  int64_t axes() const override { return 2; }
  void rotate(float* x, int64_t n_heads, int64_t ld, const Positions& pos) const override {
    apply(x, n_heads, ld, pos, 1.0f);
  }
  void rotate_backward(float* dx, int64_t n_heads, int64_t ld,
                       const Positions& pos) const override {
    apply(dx, n_heads, ld, pos, -1.0f);  // (mscale R)^T = mscale R with -sin
  }

 private:
  // The cos/sin rows of one patch grid: row 0 the CLS token, row 1 + r*gw + c patch (r, c).
  struct GridTable {
    int64_t gh = -1, gw = -1;
    std::vector<float> cs, sn;  // [1 + gh*gw, R/2]
  };
  // The frequencies follow from the grid (scalings per axis), so the table is a function of the
  // grid alone: built once per grid size and kept (every layer's q and k, forward and backward,
  // of every step at that size reuse it; this was ~10% of a small ViT's training step).
  std::shared_ptr<const GridTable> table_for(const Grid& grid) const {
    std::lock_guard<std::mutex> lock(mu_);
    if (cache_ && cache_->gh == grid.gh && cache_->gw == grid.gw) return cache_;
    const Rope2dFreqs f = rope_2d_frequencies(R_, base_, scaling_, factor_, {g_.grid_h, g_.grid_w},
                                              {grid.gh, grid.gw});
    auto t = std::make_shared<GridTable>();
    const int64_t P = R_ / 2, rows = 1 + grid.gh * grid.gw;
    t->gh = grid.gh, t->gw = grid.gw;
    t->cs.resize(static_cast<size_t>(rows * P)), t->sn.resize(t->cs.size());
    for (int64_t i = 0; i < rows; ++i) {
      const int64_t r = i == 0 ? -1 : (i - 1) / grid.gw, c = i == 0 ? -1 : (i - 1) % grid.gw;
      if (r >= 0 || cls_rotated_) {  // CLS "origin": what patch (0, 0) gets
        rope_2d_table_row(interleaved_, f, r < 0 ? 0.0 : double(c), r < 0 ? 0.0 : double(r),
                          &t->cs[i * P], &t->sn[i * P]);
      } else {  // CLS "none": the identity
        std::fill_n(&t->cs[i * P], P, 1.0f);
        std::fill_n(&t->sn[i * P], P, 0.0f);
      }
    }
    cache_ = t;
    return t;
  }
  // One cos/sin row per token, gathered from the grid's table: every call holds whole images
  // (the stacks rotate q and k of the batch at once; linear_rope, which rotates block by block,
  // refuses 2-D positions), so the grid is the image's.
  void apply(float* x, int64_t n_heads, int64_t ld, const Positions& pos, float sign) const {
    const int64_t BT = pos.B * pos.T, P = R_ / 2;
    if (BT == 0) return;
    const Grid grid = grid_of(pos, "rope_2d");
    const std::shared_ptr<const GridTable> t = table_for(grid);
    std::vector<float> cs(static_cast<size_t>(BT * P)), sn(cs.size());
    for (int64_t i = 0; i < BT; ++i) {
      const int64_t r = pos.ids[2 * i], c = pos.ids[2 * i + 1];
      const int64_t row = r < 0 ? 0 : 1 + r * grid.gw + c;
      std::copy_n(&t->cs[row * P], P, &cs[i * P]);
      std::copy_n(&t->sn[row * P], P, &sn[i * P]);
    }
    ops::rope_apply(x, BT, n_heads, g_.D, ld, R_, ops::RopeLayout::Interleaved, cs.data(),
                    sn.data(), sign);
  }
  mutable std::mutex mu_;
  mutable std::shared_ptr<const GridTable> cache_;
  StackGeom g_;
  int64_t R_;
  double base_;
  bool interleaved_, cls_rotated_;
  ops::RopeScaling scaling_;
  std::array<double, 2> factor_;
};

class Sincos2dPosition final : public PositionEncoding {
 public:
  explicit Sincos2dPosition(const StackGeom& g) : g_(g) {}
  std::string name() const override { return "sincos_2d"; }
  int64_t axes() const override { return 2; }
  void embed(const ParamStore&, float* x, const Positions& pos) const override {
    grid_of(pos, "sincos_2d");
    const int64_t d = g_.d_model;
    std::vector<float> row(static_cast<size_t>(d));
    for (int64_t i = 0; i < pos.B * pos.T; ++i) {
      const int64_t r = pos.ids[2 * i], c = pos.ids[2 * i + 1];
      if (r < 0) continue;  // CLS: zeros
      sincos_2d_row(d, double(c), double(r), row.data());
      for (int64_t k = 0; k < d; ++k) x[i * d + k] += row[k];
    }
  }

 private:
  StackGeom g_;
};

class Learned2dPosition final : public PositionEncoding {
 public:
  Learned2dPosition(const PositionConfig& c, const StackGeom& g)
      : g_(g), bicubic_(c.interpolation == "bicubic") {}
  std::string name() const override { return "learned_2d"; }
  int64_t axes() const override { return 2; }
  void declare(std::vector<ParamSpec>& specs) const override {
    specs.push_back({table(), {rows(), g_.d_model}, Init::Normal, "position", true});
  }
  void embed(const ParamStore& p, float* x, const Positions& pos) const override {
    const Grid grid = grid_of(pos, "learned_2d");
    const float* P = p.f32(table());
    std::vector<float> resized;
    const float* G = grid_table(P, grid, resized);
    const int64_t d = g_.d_model;
    for (int64_t i = 0; i < pos.B * pos.T; ++i) {
      const float* pr = row_of(P, G, grid, pos.ids[2 * i], pos.ids[2 * i + 1]);
      for (int64_t k = 0; k < d; ++k) x[i * d + k] += pr[k];
    }
  }
  void embed_backward(const float* dx, const Positions& pos, ParamStore& grads) const override {
    const Grid grid = grid_of(pos, "learned_2d");
    const int64_t d = g_.d_model, off = g_.cls ? d : 0;
    float* dP = grads.f32(table());
    const bool same = grid.gh == g_.grid_h && grid.gw == g_.grid_w;
    std::vector<float> dG(same ? 0 : static_cast<size_t>(grid.gh * grid.gw * d), 0.0f);
    for (int64_t i = 0; i < pos.B * pos.T; ++i) {
      const int64_t r = pos.ids[2 * i], c = pos.ids[2 * i + 1];
      float* dr = r < 0  ? dP
                  : same ? dP + off + (r * g_.grid_w + c) * d
                         : dG.data() + (r * grid.gw + c) * d;
      for (int64_t k = 0; k < d; ++k) dr[k] += dx[i * d + k];
    }
    if (!same)
      resize_grid_backward(dG.data(), g_.grid_h, g_.grid_w, d, grid.gh, grid.gw, bicubic_,
                           dP + off);
  }

 private:
  std::string table() const { return g_.prefix + "pos_emb.weight"; }
  int64_t rows() const { return (g_.cls ? 1 : 0) + g_.grid_h * g_.grid_w; }
  // The grid part of the table at the current grid (resized when it differs from the config's).
  const float* grid_table(const float* P, const Grid& grid, std::vector<float>& resized) const {
    const float* G = P + (g_.cls ? g_.d_model : 0);
    if (grid.gh == g_.grid_h && grid.gw == g_.grid_w) return G;
    resized.resize(static_cast<size_t>(grid.gh * grid.gw * g_.d_model));
    resize_grid(G, g_.grid_h, g_.grid_w, g_.d_model, grid.gh, grid.gw, bicubic_, resized.data());
    return resized.data();
  }
  const float* row_of(const float* P, const float* G, const Grid& grid, int64_t r,
                      int64_t c) const {
    if (r >= 0) return G + (r * grid.gw + c) * g_.d_model;
    PF_CHECK(g_.cls, "[learned_2d] a CLS token (-1, -1) but the model has pool mean (no CLS row)");
    return P;
  }
  StackGeom g_;
  bool bicubic_;
};

}  // namespace

std::unique_ptr<PositionEncoding> make_rope_2d(const PositionConfig& c, const StackGeom& g) {
  return std::make_unique<Rope2dPosition>(c, g);
}
std::unique_ptr<PositionEncoding> make_sincos_2d(const StackGeom& g) {
  return std::make_unique<Sincos2dPosition>(g);
}
std::unique_ptr<PositionEncoding> make_learned_2d(const PositionConfig& c, const StackGeom& g) {
  return std::make_unique<Learned2dPosition>(c, g);
}

}  // namespace posformer
