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
//
// Extrapolation scalings (SPEC.md section 3), with scale s = factor and trained length L0 =
// original_len; each one is a frequency set theta'_i (and YaRN's table scale mscale):
//
//   none         theta_i = base^(-2i/R)
//   linear       theta_i / s                                (position interpolation, m -> m/s)
//   ntk          base' = base * s^(R/(R-2))                 (R > 2)
//   dynamic_ntk  ntk with s' = s*L/L0 - (s-1), L = max(current length, L0): plain RoPE up to L0
//   yarn         corr(r) = R ln(L0/(2 pi r)) / (2 ln base), low = floor(corr(beta_fast)),
//                high = ceil(corr(beta_slow)),
//                ramp_i = 1 - clamp((i - low) / max(0.001, high - low), 0, 1),
//                theta'_i = (theta_i/s)(1 - ramp_i) + theta_i ramp_i,
//                mscale = 1 + 0.1 ln s (cos and sin scaled: the logits by mscale^2)
//   llama3       lambda_i = 2 pi / theta_i; theta_i kept where lambda_i < L0/high_freq_factor,
//                theta_i/s where lambda_i > L0/low_freq_factor, between them
//                theta'_i = (1 - a) theta_i/s + a theta_i, a = (L0/lambda_i - low)/(high - low)
//
// The current length L of a call is its largest position + 1; only dynamic_ntk reads it.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace posformer::ops {

enum class RopeLayout { Interleaved, Half };

enum class RopeScalingType { None, Linear, Ntk, DynamicNtk, Yarn, Llama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::None;
  double factor = 1.0;            // s >= 1
  int64_t original_len = 0;       // L0 (dynamic_ntk, yarn, llama3; 0 = not set)
  double beta_fast = 32.0;        // yarn: low = floor(corr(beta_fast))
  double beta_slow = 1.0;         // yarn: high = ceil(corr(beta_slow))
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  bool operator==(const RopeScaling&) const = default;
};

// "none", "linear", "ntk", "dynamic_ntk", "yarn", "llama3"
const char* rope_scaling_name(RopeScalingType t);
// Throws Error naming `what` and the valid names for an unknown name.
RopeScalingType parse_rope_scaling_type(const std::string& name, const std::string& what);
// Checks a scaling for rotary width R: factor >= 1, original_len >= 1 where used, yarn's
// beta_fast > beta_slow > 0, llama3's high_freq_factor > low_freq_factor > 0, ntk R > 2.
// Messages name `where` + the field ("position.scaling.").
void check_rope_scaling(const RopeScaling& s, int64_t R, const std::string& where);

// theta_i = base^(-2i/R), i = 0..R/2-1
std::vector<double> rope_inv_freq(int64_t R, double base);

struct RopeFreqs {
  std::vector<double> theta;  // [R/2]
  double mscale = 1.0;        // multiplies cos and sin (yarn)
};
// The frequencies of a scaling at current length cur_len (largest position + 1).
RopeFreqs rope_frequencies(int64_t R, double base, const RopeScaling& s, int64_t cur_len);
// Long-range decay bound (SPEC.md 3, seed 004) at relative distance m for n = theta.size()
// frequencies: f(m) = (1/n) sum_{j=1..n} | sum_{i=0..j-1} exp(1j m theta_i) |   (n = d/2).
double rope_decay_bound(const std::vector<double>& theta, double m);
// Whether the frequencies depend on the current length (dynamic_ntk past L0).
inline bool rope_length_dependent(const RopeScaling& s) {
  return s.type == RopeScalingType::DynamicNtk;
}
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
