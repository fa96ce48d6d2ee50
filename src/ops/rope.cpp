// Rotary position embedding: tables, scalar reference and the public entry point.
#include "posformer/ops/rope.h"

#include <omp.h>

#include <algorithm>
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

const char* rope_scaling_name(RopeScalingType t) {
  switch (t) {
    case RopeScalingType::None:
      return "none";
    case RopeScalingType::Linear:
      return "linear";
    case RopeScalingType::Ntk:
      return "ntk";
    case RopeScalingType::DynamicNtk:
      return "dynamic_ntk";
    case RopeScalingType::Yarn:
      return "yarn";
    case RopeScalingType::Llama3:
      return "llama3";
  }
  return "?";
}

RopeScalingType parse_rope_scaling_type(const std::string& name, const std::string& what) {
  for (auto t : {RopeScalingType::None, RopeScalingType::Linear, RopeScalingType::Ntk,
                 RopeScalingType::DynamicNtk, RopeScalingType::Yarn, RopeScalingType::Llama3})
    if (name == rope_scaling_name(t)) return t;
  throw Error(str(what, " has unknown value \"", name,
                  "\" (expected one of: none, linear, ntk, dynamic_ntk, yarn, llama3)"));
}

void check_rope_scaling(const RopeScaling& s, int64_t R, const std::string& where) {
  using T = RopeScalingType;
  if (s.type == T::None) return;
  const char* name = rope_scaling_name(s.type);
  PF_CHECK(std::isfinite(s.factor) && s.factor >= 1.0, "[config] field '", where,
           "factor' must be a number >= 1, got ", s.factor);
  const bool needs_len = s.type == T::DynamicNtk || s.type == T::Yarn || s.type == T::Llama3;
  PF_CHECK(s.original_len >= 0 && s.original_len <= (int64_t{1} << 30), "[config] field '", where,
           "original_len' must be in [1, 2^30], got ", s.original_len);
  PF_CHECK(!needs_len || s.original_len >= 1, "[config] field '", where,
           "original_len' (the trained length L0) is required by scaling type \"", name, "\"");
  PF_CHECK((s.type != T::Ntk && s.type != T::DynamicNtk) || R > 2, "[config] scaling type \"", name,
           "\" needs a rotary dim > 2 (base * s^(R/(R-2))), got ", R);
  if (s.type == T::Yarn)
    PF_CHECK(std::isfinite(s.beta_fast) && std::isfinite(s.beta_slow) && s.beta_slow > 0 &&
                 s.beta_fast > s.beta_slow,
             "[config] fields '", where, "beta_fast' and '", where,
             "beta_slow' must satisfy beta_fast > beta_slow > 0, got ", s.beta_fast, " and ",
             s.beta_slow);
  if (s.type == T::Llama3)
    PF_CHECK(std::isfinite(s.low_freq_factor) && std::isfinite(s.high_freq_factor) &&
                 s.low_freq_factor > 0 && s.high_freq_factor > s.low_freq_factor,
             "[config] fields '", where, "low_freq_factor' and '", where,
             "high_freq_factor' must satisfy high_freq_factor > low_freq_factor > 0, got ",
             s.low_freq_factor, " and ", s.high_freq_factor);
}

RopeFreqs rope_frequencies(int64_t R, double base, const RopeScaling& s, int64_t cur_len) {
  using T = RopeScalingType;
  check_rope_scaling(s, R, "scaling.");
  RopeFreqs f;
  const double sc = s.factor, Rd = static_cast<double>(R), L0 = static_cast<double>(s.original_len);
  switch (s.type) {
    case T::None:
      f.theta = rope_inv_freq(R, base);
      break;
    case T::Linear:  // m -> m/s
      f.theta = rope_inv_freq(R, base);
      for (double& t : f.theta) t /= sc;
      break;
    case T::Ntk:
      f.theta = rope_inv_freq(R, base * std::pow(sc, Rd / (Rd - 2)));
      break;
    case T::DynamicNtk: {
      const double L = std::max(static_cast<double>(cur_len), L0);
      const double s2 = sc * L / L0 - (sc - 1);  // 1 up to L0
      f.theta = rope_inv_freq(R, base * std::pow(s2, Rd / (Rd - 2)));
      break;
    }
    case T::Yarn: {
      f.theta = rope_inv_freq(R, base);
      const double pi = 3.14159265358979323846;
      auto corr = [&](double r) { return Rd * std::log(L0 / (2 * pi * r)) / (2 * std::log(base)); };
      const double low = std::floor(corr(s.beta_fast)), high = std::ceil(corr(s.beta_slow));
      for (size_t i = 0; i < f.theta.size(); ++i) {
        const double x = (static_cast<double>(i) - low) / std::max(0.001, high - low);
        const double ramp = 1 - std::clamp(x, 0.0, 1.0);
        f.theta[i] = f.theta[i] / sc * (1 - ramp) + f.theta[i] * ramp;
      }
      f.mscale = 1 + 0.1 * std::log(sc);
      break;
    }
    case T::Llama3: {
      f.theta = rope_inv_freq(R, base);
      const double pi = 3.14159265358979323846, lo = s.low_freq_factor, hi = s.high_freq_factor;
      for (double& t : f.theta) {
        const double lambda = 2 * pi / t;
        if (lambda < L0 / hi) continue;  // high frequencies kept
        if (lambda > L0 / lo) {
          t /= sc;  // low frequencies interpolated
          continue;
        }
        const double a = (L0 / lambda - lo) / (hi - lo);
        t = (1 - a) * t / sc + a * t;
      }
      break;
    }
  }
  return f;
}

double rope_decay_bound(const std::vector<double>& theta, double m) {
  PF_CHECK(!theta.empty(), "[rope] decay bound needs at least one frequency");
  double re = 0, im = 0, total = 0;  // running partial sum S_j and sum of |S_j|
  for (double t : theta) {
    re += std::cos(m * t), im += std::sin(m * t);
    total += std::hypot(re, im);
  }
  return total / static_cast<double>(theta.size());
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
