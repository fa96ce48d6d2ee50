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

void RopePosition::rotate(float* x, int64_t B, int64_t T, int64_t n_heads, int64_t ld,
                          int64_t pos0) const {
  apply(x, B, T, n_heads, ld, pos0, 1.0f);
}

void RopePosition::rotate_backward(float* dx, int64_t B, int64_t T, int64_t n_heads, int64_t ld,
                                   int64_t pos0) const {
  apply(dx, B, T, n_heads, ld, pos0, -1.0f);  // R^T: rotation by -angle
}

void RopePosition::apply(float* x, int64_t B, int64_t T, int64_t n_heads, int64_t ld, int64_t pos0,
                         float sign) const {
  if (T == 0) return;
  std::vector<double> pos(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t) pos[t] = static_cast<double>(pos0 + t);
  std::vector<float> cs(static_cast<size_t>(T * R_ / 2)), sn(cs.size());
  ops::rope_tables(pos.data(), T, theta_, 1.0, cs.data(), sn.data());
  for (int64_t b = 0; b < B; ++b)
    ops::rope_apply(x + b * T * ld, T, n_heads, g_.D, ld, R_, layout_, cs.data(), sn.data(), sign);
}

}  // namespace posformer
