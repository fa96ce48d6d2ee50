// 2-D position encodings for ViT patches (SPEC.md section 4, docs/vision.md).
//
// A ViT's tokens carry two coordinates (Positions with axes = 2): patch (row, col) of the patch
// grid, row-major, and the CLS token (-1, -1) ("no grid position"; each scheme says what it
// gets). Following SPEC 4, x = column and y = row.
//
// rope_2d: the first R dims of each head rotate (R % 4 == 0), as R/2 pairs (x[2j], x[2j+1])
// with angle a_j; theta_i = base^(-2i/(R/2)) = base^(-4i/R), i = 0..R/4-1:
//
//   axial_split:        a_j = x theta_j        j <  R/4     first half by x   [xxxx|yyyy|pass]
//                       a_j = y theta_(j-R/4)  j >= R/4     second half by y
//   axial_interleaved:  a_(2i) = x theta_i, a_(2i+1) = y theta_i              [xyxy..|pass]
//                       (4-dim blocks [x-pair, y-pair], the seed's matrix diag(R_x, R_y))
//
// so R_(x,y) is block-diagonal and <R_(x1,y1) q, R_(x2,y2) k> depends on (x2-x1, y2-y1) only.
// The CLS token: cls_position "origin" rotates it by (0,0), "none" leaves it unrotated; as
// R_(0,0) = I the two are the same rotation (kept as a named choice, docs/vision.md).
//
// position.scaling (ops/rope.h's RoPE scalings, SPEC.md 3) applies per axis a in {y (row),
// x (col)}: each axis has its trained grid length L0_a (the config's grid_h / grid_w), its current
// grid length G_a (largest position on that axis + 1, over the call) and its own factor s_a:
// given (position.scaling.factor: one number for both axes, or [row, col]) or by default
// s_a = max(1, G_a / L0_a). The R/4 frequencies of the axis and its table scale are
//
//   theta_a, mscale_a = ops::rope_frequencies(R/2, base, {type, s_a, L0_a, type's fields}, G_a)
//
// (R/2: the axis's rotary width, as theta_i = base^(-2i/(R/2)) above), and the pairs of axis a
// (its half in axial_split, its pair of each 4-dim block in axial_interleaved) use
// mscale_a cos(p_a theta_a,i), mscale_a sin(p_a theta_a,i). So
//   linear       theta_a / s_a: position interpolation per axis, R_(x,y) -> R_(x/s_x, y/s_y)
//   ntk, yarn, llama3 per axis with L0_a; yarn's mscale per axis (logits of the x pairs scaled by
//                mscale_x^2, of the y pairs by mscale_y^2)
//   dynamic_ntk  s'_a = s_a G_a/L0_a - (s_a - 1) when G_a > L0_a (plain up to L0_a), with s_a = 1
//                by default (the grid already enters through G_a; a default of G_a/L0_a would
//                count it twice). A ViT sees its whole grid in one call (no cache), so at the
//                default factor dynamic_ntk equals ntk at the default factor; they differ for a
//                given factor.
// The score still depends on (x2-x1, y2-y1) only: the frequencies are constants of the call,
// the positions are data (backward: the same tables with -sin). The CLS token: "origin" gets
// what patch (0, 0) gets (angle 0: under yarn the scale mscale_a), "none" is left untouched.
//
// sincos_2d (MAE / timm): n = d/4, w_i = 10000^(-i/n);
//   P[(y,x)] = [sin(x w_0..n-1) | cos(x w_0..n-1) | sin(y w_0..n-1) | cos(y w_0..n-1)]
// (column first, as MAE's meshgrid(w, h)); the CLS token gets zeros.
//
// learned_2d: table [cls + gh*gw, d] (row 0 = CLS when the model has one, then the grid
// row-major); for another grid (gh', gw') the grid part, seen as [gh, gw, d], is resized with
// bicubic (A = -0.75) or bilinear interpolation, align_corners=False, as
// torch.nn.functional.interpolate / timm's resample_abs_pos_embed (for upsizing; no antialias
// when downsizing); the CLS row is kept as is. Gradients flow back through the resize.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

#include "posformer/ops/rope.h"

namespace posformer {

// Angles a_j (j < R/2) of rope_2d at (x, y), unscaled.
std::vector<double> rope_2d_angles(int64_t R, double base, bool interleaved, double x, double y);

// The frequencies of rope_2d's two axes under a scaling (above): R/4 each, with their table
// scales and the factors used. factor: {row, col}, 0 = the default; L0: trained grid {gh, gw};
// cur: current grid {gh, gw}.
struct Rope2dFreqs {
  ops::RopeFreqs y, x;
  double factor_y = 1.0, factor_x = 1.0;
};
Rope2dFreqs rope_2d_frequencies(int64_t R, double base, const ops::RopeScaling& s,
                                std::array<double, 2> factor, std::array<int64_t, 2> L0,
                                std::array<int64_t, 2> cur);
// One table row (R/2 pairs, rope_apply's interleaved pair order) at (x, y) with per-axis
// frequencies: cos[j] = mscale cos(a_j), sin[j] = mscale sin(a_j), a_j as rope_2d_angles.
void rope_2d_table_row(bool interleaved, const Rope2dFreqs& f, double x, double y, float* cos,
                       float* sin);

// One sincos_2d row (width d, d % 4 == 0) at (x, y).
void sincos_2d_row(int64_t d, double x, double y, float* out);

// Interpolation taps of one axis: output coordinate o reads inputs idx[o*n + a] with weights
// w[o*n + a], a < n (n = 2 bilinear, 4 bicubic), torch's align_corners=False convention.
struct AxisTaps {
  int64_t n = 0;
  std::vector<int64_t> idx;
  std::vector<double> w;
};
AxisTaps interp_taps(int64_t in, int64_t out, bool bicubic);

// out [gh, gw, d] = resize of src [gh0, gw0, d]; the adjoint adds into dsrc.
void resize_grid(const float* src, int64_t gh0, int64_t gw0, int64_t d, int64_t gh, int64_t gw,
                 bool bicubic, float* out);
void resize_grid_backward(const float* dout, int64_t gh0, int64_t gw0, int64_t d, int64_t gh,
                          int64_t gw, bool bicubic, float* dsrc);

}  // namespace posformer
