// RoPE: q and k rotated by position (SPEC.md section 3); no parameters.
#include <vector>

#include "posenc_impl.h"

namespace posformer {

RopePosition::RopePosition(const PositionConfig& c, const StackGeom& g) : g_(g) {
  R_ = c.rotary_dim == 0 ? g.D : c.rotary_dim;
  PF_CHECK(R_ > 0 && R_ % 2 == 0 && R_ <= g.D, "[rope] rotary dim must be even and <= head dim ",
           g.D, ", got ", R_);
  layout_ = c.layout == "half" ? ops::RopeLayout::Half : ops::RopeLayout::Interleaved;
  base_ = c.base, scaling_ = c.scaling;
  freqs_ = ops::rope_frequencies(R_, base_, scaling_, 0);  // every length (dynamic: up to L0)
}

ops::RopeFreqs RopePosition::frequencies(int64_t cur_len) const {
  if (!length_dependent() || cur_len <= scaling_.original_len) return freqs_;
  return ops::rope_frequencies(R_, base_, scaling_, cur_len);
}

// Cached rows rotated at angles p theta(from) turn into p theta(to) by a further rotation by
// p (theta(to) - theta(from)), scaled by mscale(to) / mscale(from).
void RopePosition::rerotate(float* x, int64_t n_heads, int64_t ld, const Positions& pos,
                            int64_t from_len, int64_t to_len) const {
  const ops::RopeFreqs a = frequencies(from_len), b = frequencies(to_len);
  if (a.theta == b.theta && a.mscale == b.mscale) return;
  ops::RopeFreqs d = b;
  for (size_t i = 0; i < d.theta.size(); ++i) d.theta[i] -= a.theta[i];
  d.mscale = b.mscale / a.mscale;
  apply(x, n_heads, ld, pos, 1.0f, d);
}

// The current length of a call: its largest position + 1 (dynamic_ntk's L).
static int64_t current_length(const Positions& pos) {
  return pos.range().second + 1;
}

void RopePosition::rotate(float* x, int64_t n_heads, int64_t ld, const Positions& pos) const {
  apply(x, n_heads, ld, pos, 1.0f, frequencies(current_length(pos)));
}

// y = mscale R x, so dx = mscale R^T dy: the same tables with -sin.
void RopePosition::rotate_backward(float* dx, int64_t n_heads, int64_t ld,
                                   const Positions& pos) const {
  apply(dx, n_heads, ld, pos, -1.0f, frequencies(current_length(pos)));
}

// A run shares one [T, R/2] table across the batch; explicit ids get one table row per token.
void RopePosition::apply(float* x, int64_t n_heads, int64_t ld, const Positions& pos, float sign,
                         const ops::RopeFreqs& f) const {
  const int64_t B = pos.B, T = pos.T, rows = pos.is_run() ? T : B * T;
  if (B * T == 0) return;
  PF_CHECK(pos.axes == 1, "[rope] 1-D rotary positions take one coordinate per token, got ",
           pos.axes);
  // The table is a function of (positions, theta, mscale) alone. A training step rotates q and
  // k forward and backward in every layer with the same ones (16 tables of T x R/2 sin and cos
  // per step for a 4-layer model), so each thread keeps its last table and reuses it when all
  // three are equal.
  struct Table {
    std::vector<double> p, theta;
    double mscale = 0;
    std::vector<float> cs, sn;
  };
  thread_local Table tab;
  std::vector<double>& p = tab.p;
  bool same =
      static_cast<int64_t>(p.size()) == rows && tab.theta == f.theta && tab.mscale == f.mscale;
  if (same)
    for (int64_t i = 0; i < rows && same; ++i)
      same = p[i] == static_cast<double>(pos.at(i / T, i % T));
  if (!same) {
    p.resize(static_cast<size_t>(rows));
    for (int64_t i = 0; i < rows; ++i) p[i] = static_cast<double>(pos.at(i / T, i % T));
    tab.theta = f.theta, tab.mscale = f.mscale;
    tab.cs.resize(static_cast<size_t>(rows * R_ / 2)), tab.sn.resize(tab.cs.size());
    ops::rope_tables(p.data(), rows, f.theta, f.mscale, tab.cs.data(), tab.sn.data());
  }
  const std::vector<float>& cs = tab.cs;
  const std::vector<float>& sn = tab.sn;
  if (!pos.is_run()) {
    ops::rope_apply(x, B * T, n_heads, g_.D, ld, R_, layout_, cs.data(), sn.data(), sign);
    return;
  }
  for (int64_t b = 0; b < B; ++b)
    ops::rope_apply(x + b * T * ld, T, n_heads, g_.D, ld, R_, layout_, cs.data(), sn.data(), sign);
}

}  // namespace posformer
