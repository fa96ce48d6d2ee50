// Rotary position embedding (SPEC.md section 3), in place on rows of heads.
//
// Input x: T rows (stride `ld` floats); each row holds `n_heads` heads of `D` floats
// (head h at x[t*ld + h*D]). Only the first R dims of each head rotate (R even, R <= D);
// dims >= R pass through. Tables cos/sin are [T, R/2]: cos[t, i] = cos(pos_t * theta_i).
//
//   interleaved (RoFormer, GPT-J, llama.cpp "normal"): pairs (x[2i], x[2i+1])   [cscs..cs|pass]
//   half        (GPT-NeoX, HF LLaMA rotate_half):       pairs (x[i], x[i+R/2])   [cc..ss..|pass]
//
//   y_a = x_a cos - x_b sin,   y_b = x_b cos + x_a sin   for each pair (a, b)
//
// Backward: the rotation is orthogonal, dx = R^T dy = the same rotation with -sin (sign = -1).
#pragma once
#include <cstdint>
#include <vector>

namespace posformer::ops {

enum class RopeLayout { Interleaved, Half };

// theta_i = base^(-2i/R), i = 0..R/2-1
std::vector<double> rope_inv_freq(int64_t R, double base);
// cos/sin tables [T, R/2] for positions pos[t] and frequencies theta (size R/2); `mscale`
// multiplies both (YaRN attention scaling; 1 otherwise). Computed in double, stored as float.
void rope_tables(const double* pos, int64_t T, const std::vector<double>& theta, double mscale,
                 float* cos_out, float* sin_out);

void rope_apply(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t ld, int64_t R,
                RopeLayout layout, const float* cos, const float* sin, float sign = 1.0f);

namespace ref {
void rope_apply(float* x, int64_t T, int64_t n_heads, int64_t D, int64_t ld, int64_t R,
                RopeLayout layout, const float* cos, const float* sin, float sign = 1.0f);
}

}  // namespace posformer::ops
