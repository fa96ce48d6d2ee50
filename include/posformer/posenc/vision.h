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
#include <cstdint>
#include <vector>

namespace posformer {

// Angles a_j (j < R/2) of rope_2d at (x, y).
std::vector<double> rope_2d_angles(int64_t R, double base, bool interleaved, double x, double y);

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
