// RoPE: q and k rotated by position (SPEC.md section 3); no parameters.
#include <vector>

#include "posenc_impl.h"

namespace posformer {

RopePosition::RopePosition(const PositionConfig& c, const StackGeom& g) : g_(g) {
  R_ = c.rotary_dim == 0 ? g.D : c.rotary_dim;
  PF_CHECK(R_ > 0 && R_ % 2 == 0 && R_ <= g.D, "[rope] rotary dim must be even and <= head dim ",
           g.D, ", got ", R_);
  layout_ = c.layout == "half" ? ops::RopeLayout::Half : ops::RopeLayout::Interleaved;
  theta_ = ops::rope_inv_freq(R_, c.base);
}

void RopePosition::rotate(float* x, int64_t n_heads, int64_t ld, const Positions& pos) const {
  apply(x, n_heads, ld, pos, 1.0f);
}

void RopePosition::rotate_backward(float* dx, int64_t n_heads, int64_t ld,
                                   const Positions& pos) const {
  apply(dx, n_heads, ld, pos, -1.0f);  // R^T: rotation by -angle
}

// A run shares one [T, R/2] table across the batch; explicit ids get one table row per token.
void RopePosition::apply(float* x, int64_t n_heads, int64_t ld, const Positions& pos,
                         float sign) const {
  const int64_t B = pos.B, T = pos.T, rows = pos.is_run() ? T : B * T;
  if (B * T == 0) return;
  PF_CHECK(pos.axes == 1, "[rope] 1-D rotary positions take one coordinate per token, got ",
           pos.axes);
  std::vector<double> p(static_cast<size_t>(rows));
  for (int64_t i = 0; i < rows; ++i) p[i] = static_cast<double>(pos.at(i / T, i % T));
  std::vector<float> cs(static_cast<size_t>(rows * R_ / 2)), sn(cs.size());
  ops::rope_tables(p.data(), rows, theta_, 1.0, cs.data(), sn.data());
  if (!pos.is_run()) {
    ops::rope_apply(x, B * T, n_heads, g_.D, ld, R_, layout_, cs.data(), sn.data(), sign);
    return;
  }
  for (int64_t b = 0; b < B; ++b)
    ops::rope_apply(x + b * T * ld, T, n_heads, g_.D, ld, R_, layout_, cs.data(), sn.data(), sign);
}

}  // namespace posformer
