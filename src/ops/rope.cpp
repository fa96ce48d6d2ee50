// Rotary position embedding: tables, scalar reference and the public entry point.
#include "posformer/ops/rope.h"

#include <omp.h>

#include <cmath>

#include "../kernels/cpu/kernels.h"
#include "posformer/core/error.h"

namespace posformer::ops {

namespace {
void check_rotary_dim(int64_t R) {
  PF_CHECK(R > 0 && R % 2 == 0, "[rope] rotary dim must be even, got ", R);
}

void check_rope(const float* x, int64_t T, int64_t n_heads, int64_t D, int64_t ld, int64_t R,
                RopeLayout layout, const float* cos, const float* sin) {
  check_rotary_dim(R);
  PF_CHECK(R <= D, "[rope] rotary dim must be <= head dim ", D, ", got ", R);
  PF_CHECK(T >= 0 && n_heads >= 0, "[rope] sizes must be >= 0, got T=", T, " n_heads=", n_heads);
  PF_CHECK(ld >= n_heads * D, "[rope] row stride ld must be >= n_heads*D = ", n_heads * D, ", got ",
           ld);
  PF_CHECK(layout == RopeLayout::Interleaved || layout == RopeLayout::Half,
           "[rope] unknown layout ", static_cast<int>(layout));
  PF_CHECK(T * n_heads == 0 || (x && cos && sin), "[rope] null pointer (x, cos or sin)");
}
}  // namespace

std::vector<double> rope_inv_freq(int64_t R, double base) {
  check_rotary_dim(R);
  PF_CHECK(base > 0.0, "[rope] base must be > 0, got ", base);
  std::vector<double> theta(static_cast<size_t>(R / 2));
  for (int64_t i = 0; i < R / 2; ++i) theta[i] = std::pow(base, -2.0 * double(i) / double(R));
  return theta;
}

void rope_tables(const double* pos, int64_t T, const std::vector<double>& theta, double mscale,
                 float* cos_out, float* sin_out) {
  PF_CHECK(T >= 0, "[rope] table length T must be >= 0, got ", T);
  const int64_t h = static_cast<int64_t>(theta.size());
  PF_CHECK(T * h == 0 || (pos && cos_out && sin_out), "[rope] null pointer (pos, cos or sin)");
#pragma omp parallel for schedule(static) if (T * h >= 16384 && !omp_in_parallel())
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < h; ++i) {
      const double a = pos[t] * theta[i];
      cos_out[t * h + i] = static_cast<float>(mscale * std::cos(a));
      sin_out[t * h + i] = static_cast<float>(mscale * std::sin(a));
    }
}

namespace ref {

void rope_apply(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t ld, int64_t R,
                RopeLayout layout, const float* cos, const float* sin, float sign) {
  check_rope(x, T, n_heads, D, ld, R, layout, cos, sin);
  const int64_t h = R / 2;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t hd = 0; hd < n_heads; ++hd) {
      float* v = x + t * ld + hd * D;
      for (int64_t i = 0; i < h; ++i) {
        const int64_t a = layout == RopeLayout::Interleaved ? 2 * i : i;
        const int64_t b = layout == RopeLayout::Interleaved ? 2 * i + 1 : i + h;
        const double c = cos[t * h + i], s = double(sign) * sin[t * h + i];
        const double xa = v[a], xb = v[b];
        v[a] = static_cast<float>(xa * c - xb * s);
        v[b] = static_cast<float>(xb * c + xa * s);
      }
    }
}

}  // namespace ref

void rope_apply(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t ld, int64_t R,
                RopeLayout layout, const float* cos, const float* sin, float sign) {
  check_rope(x, T, n_heads, D, ld, R, layout, cos, sin);
  kernels::cpu::rope_apply(x, T, n_heads, D, ld, R, layout == RopeLayout::Interleaved, cos, sin,
                           sign);
}

}  // namespace posformer::ops
