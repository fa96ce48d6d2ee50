// AdamW (Highway SIMD, runtime dispatch) and gradient utilities.
#include "posformer/train/optimizer.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <set>
#include <vector>

#include "../kernels/cpu/parallel.h"
#include "posformer/core/error.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "../src/train/optimizer.cpp"  // relative to include/
#include <hwy/foreach_target.h>                          // IWYU pragma: keep
#include <hwy/highway.h>

#ifndef POSFORMER_TRAIN_OPTIMIZER_SCALARS_
#define POSFORMER_TRAIN_OPTIMIZER_SCALARS_
namespace posformer::adamw_detail {
// Per-step fp32 scalars, rounded from double once (as PyTorch does with Python floats).
struct Scalars {
  float keep;      // 1 - lr * wd (1 when the parameter is not decayed)
  float b1, ob1;   // beta1, 1 - beta1
  float b2, ob2;   // beta2, 1 - beta2
  float bc2_sqrt;  // sqrt(1 - beta2^t)
  float eps;
  float neg_step;  // -lr / (1 - beta1^t)
};
}  // namespace posformer::adamw_detail
#endif

HWY_BEFORE_NAMESPACE();
namespace posformer::adamw_detail::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// The update in PyTorch's order: param.mul_(keep); exp_avg.mul_(b1).add_(g, alpha=ob1);
// exp_avg_sq.mul_(b2).addcmul_(g, g, value=ob2); denom = sqrt(v) / bc2_sqrt + eps;
// param.addcdiv_(m, denom, value=neg_step). The tail goes through the same vector code via
// zero-padded buffers, so every element sees identical arithmetic.
template <class D>
HWY_INLINE void update_vec(D d, float* p, float* m, float* v, const float* g, const Scalars& s) {
  const auto gv = hn::LoadU(d, g);
  const auto pv = hn::Mul(hn::LoadU(d, p), hn::Set(d, s.keep));
  const auto mv =
      hn::Add(hn::Mul(hn::LoadU(d, m), hn::Set(d, s.b1)), hn::Mul(hn::Set(d, s.ob1), gv));
  const auto vv = hn::Add(hn::Mul(hn::LoadU(d, v), hn::Set(d, s.b2)),
                          hn::Mul(hn::Mul(hn::Set(d, s.ob2), gv), gv));
  const auto denom = hn::Add(hn::Div(hn::Sqrt(vv), hn::Set(d, s.bc2_sqrt)), hn::Set(d, s.eps));
  hn::StoreU(mv, d, m);
  hn::StoreU(vv, d, v);
  hn::StoreU(hn::Add(pv, hn::Div(hn::Mul(hn::Set(d, s.neg_step), mv), denom)), d, p);
}

void adamw_kernel(float* p, float* m, float* v, const float* g, size_t n, const Scalars& s) {
  const hn::ScalableTag<float> d;
  const size_t N = hn::Lanes(d);
  size_t i = 0;
  for (; i + N <= n; i += N) update_vec(d, p + i, m + i, v + i, g + i, s);
  if (i < n) {
    HWY_ALIGN float bp[hn::MaxLanes(d)] = {}, bm[hn::MaxLanes(d)] = {};
    HWY_ALIGN float bv[hn::MaxLanes(d)] = {}, bg[hn::MaxLanes(d)] = {};
    const size_t r = n - i, bytes = r * sizeof(float);
    std::memcpy(bp, p + i, bytes);
    std::memcpy(bm, m + i, bytes);
    std::memcpy(bv, v + i, bytes);
    std::memcpy(bg, g + i, bytes);
    update_vec(d, bp, bm, bv, bg, s);
    std::memcpy(p + i, bp, bytes);
    std::memcpy(m + i, bm, bytes);
    std::memcpy(v + i, bv, bytes);
  }
}

}  // namespace posformer::adamw_detail::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace posformer {
namespace adamw_detail {
HWY_EXPORT(adamw_kernel);
}  // namespace adamw_detail

namespace {

using kernels::cpu::parallel_range;
using kernels::cpu::use_omp;

constexpr int64_t kOmpThreshold = int64_t{1} << 15;  // floats per tensor before threading
constexpr int64_t kNormBlock = 4096;                 // fixed blocks: thread-count independent

bool finite_double(double x) {
  return std::isfinite(x);
}

const float* checked_f32(const Tensor& t, const char* what, const std::string& name) {
  PF_CHECK(t.dtype() == DType::F32, "[grad] ", what, " '", name, "' must be F32, got ",
           dtype_name(t.dtype()));
  return static_cast<const float*>(t.raw());
}

// Sum of x^2 in double over one block, 8 independent accumulators summed in a fixed order.
double block_sumsq(const float* x, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += static_cast<double>(x[i + j]) * x[i + j];
  for (; i < n; ++i) acc[0] += static_cast<double>(x[i]) * x[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

double tensor_sumsq(const float* x, int64_t n) {
  const int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
  std::vector<double> part(static_cast<size_t>(blocks));
  parallel_range(blocks, 1, use_omp(n, kOmpThreshold), [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      const int64_t begin = b * kNormBlock;
      part[b] = block_sumsq(x + begin, std::min(kNormBlock, n - begin));
    }
  });
  double s = 0;
  for (double p : part) s += p;
  return s;
}

// True when no element has an all-ones exponent (NaN / Inf). Branch-free so it vectorises.
bool block_finite(const float* x, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

}  // namespace

void validate(const AdamWConfig& c) {
  PF_CHECK(finite_double(c.beta1) && c.beta1 >= 0 && c.beta1 < 1,
           "[adamw] beta1 must be in [0, 1), got ", c.beta1);
  PF_CHECK(finite_double(c.beta2) && c.beta2 >= 0 && c.beta2 < 1,
           "[adamw] beta2 must be in [0, 1), got ", c.beta2);
  PF_CHECK(finite_double(c.eps) && c.eps >= 0, "[adamw] eps must be finite and >= 0, got ", c.eps);
  PF_CHECK(finite_double(c.weight_decay) && c.weight_decay >= 0,
           "[adamw] weight_decay must be finite and >= 0, got ", c.weight_decay);
}

AdamW::AdamW(const std::vector<ParamSpec>& specs, const AdamWConfig& cfg) : cfg_(cfg) {
  validate(cfg);
  for (const ParamSpec& s : specs)  // buffers are not trained: no moments, no decay, no update
    if (!s.buffer) specs_.push_back(s);
  std::set<std::string> seen;
  for (const ParamSpec& s : specs_) {
    PF_CHECK(seen.insert(s.name).second, "[adamw] duplicate parameter '", s.name, "'");
    m_.emplace_back(s.shape, DType::F32);
    v_.emplace_back(s.shape, DType::F32);
  }
}

void AdamW::step(ParamStore& params, const ParamStore& grads, double lr) {
  PF_CHECK(std::isfinite(lr) && lr >= 0, "[adamw] lr must be finite and >= 0, got ", lr);
  // Check everything first so a bad call changes nothing.
  for (const ParamSpec& s : specs_) {
    PF_CHECK(params.has(s.name), "[adamw] parameter '", s.name, "' is missing");
    PF_CHECK(grads.has(s.name), "[adamw] gradient for '", s.name, "' is missing");
    const Tensor& p = params.get(s.name);
    const Tensor& g = grads.get(s.name);
    PF_CHECK(p.dtype() == DType::F32, "[adamw] parameter '", s.name, "' must be F32, got ",
             dtype_name(p.dtype()));
    PF_CHECK(g.dtype() == DType::F32, "[adamw] gradient for '", s.name, "' must be F32, got ",
             dtype_name(g.dtype()));
    PF_CHECK(p.shape() == s.shape, "[adamw] parameter '", s.name, "' has shape ",
             shape_str(p.shape()), ", expected ", shape_str(s.shape));
    PF_CHECK(g.shape() == s.shape, "[adamw] gradient for '", s.name, "' has shape ",
             shape_str(g.shape()), ", expected ", shape_str(s.shape));
  }

  ++steps_;
  const double t = static_cast<double>(steps_);
  const double bc1 = 1.0 - std::pow(cfg_.beta1, t);
  const double bc2 = 1.0 - std::pow(cfg_.beta2, t);
  adamw_detail::Scalars sc{};
  sc.b1 = static_cast<float>(cfg_.beta1);
  sc.ob1 = static_cast<float>(1.0 - cfg_.beta1);
  sc.b2 = static_cast<float>(cfg_.beta2);
  sc.ob2 = static_cast<float>(1.0 - cfg_.beta2);
  sc.bc2_sqrt = static_cast<float>(std::sqrt(bc2));
  sc.eps = static_cast<float>(cfg_.eps);
  sc.neg_step = static_cast<float>(-lr / bc1);
  const float keep_decay = static_cast<float>(1.0 - lr * cfg_.weight_decay);

  for (size_t k = 0; k < specs_.size(); ++k) {
    const ParamSpec& s = specs_[k];
    adamw_detail::Scalars ps = sc;
    ps.keep = s.decay ? keep_decay : 1.0f;
    float* p = params.f32(s.name);
    const float* g = grads.f32(s.name);
    float* m = m_[k].data<float>();
    float* v = v_[k].data<float>();
    const int64_t n = m_[k].numel();
    parallel_range(n, 16, use_omp(n, kOmpThreshold), [&](int64_t lo, int64_t hi) {
      HWY_DYNAMIC_DISPATCH(adamw_detail::adamw_kernel)
      (p + lo, m + lo, v + lo, g + lo, static_cast<size_t>(hi - lo), ps);
    });
  }
}

std::map<std::string, Tensor> AdamW::state_tensors() const {
  std::map<std::string, Tensor> out;
  for (size_t k = 0; k < specs_.size(); ++k) {
    out.emplace("m." + specs_[k].name, m_[k]);
    out.emplace("v." + specs_[k].name, v_[k]);
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, Tensor>& t, int64_t steps) {
  PF_CHECK(steps >= 0, "[adamw] optimizer steps must be >= 0, got ", steps);
  std::set<std::string> expected;
  for (const ParamSpec& s : specs_) {
    for (const char* prefix : {"m.", "v."}) {
      const std::string key = prefix + s.name;
      expected.insert(key);
      auto it = t.find(key);
      PF_CHECK(it != t.end(), "[adamw] optimizer state '", key, "' is missing");
      PF_CHECK(it->second.dtype() == DType::F32, "[adamw] optimizer state '", key,
               "' must be F32, got ", dtype_name(it->second.dtype()));
      PF_CHECK(it->second.shape() == s.shape, "[adamw] optimizer state '", key, "' has shape ",
               shape_str(it->second.shape()), ", expected ", shape_str(s.shape));
    }
  }
  for (const auto& [key, tensor] : t)
    PF_CHECK(expected.count(key) != 0, "[adamw] unexpected optimizer state '", key,
             "' (no such parameter, or not an AdamW state name)");
  for (size_t k = 0; k < specs_.size(); ++k) {
    m_[k] = t.at("m." + specs_[k].name).clone();
    v_[k] = t.at("v." + specs_[k].name).clone();
  }
  steps_ = steps;
}

double global_grad_norm(const ParamStore& grads) {
  double s = 0;
  for (const auto& [name, g] : grads.all())
    s += tensor_sumsq(checked_f32(g, "gradient", name), g.numel());
  return std::sqrt(s);
}

double clip_grad_norm(ParamStore& grads, double max_norm) {
  return clip_grad_norm(grads, max_norm, global_grad_norm(grads));
}

double clip_grad_norm(ParamStore& grads, double max_norm, double norm) {
  if (!(max_norm > 0) || !std::isfinite(norm)) return norm;
  const double coef = max_norm / (norm + 1e-6);
  if (coef >= 1.0) return norm;
  const float c = static_cast<float>(coef);
  for (auto& [name, g] : grads.all()) {
    float* x = g.data<float>();
    const int64_t n = g.numel();
    parallel_range(n, 16, use_omp(n, kOmpThreshold), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) x[i] *= c;
    });
  }
  return norm;
}

std::optional<double> finite_grad_norm(const ParamStore& grads) {
  // squares of floats (<= 1.2e77) summed in double cannot overflow, and NaN / Inf propagate
  // through the sum: the norm is finite exactly when every element is
  const double norm = global_grad_norm(grads);
  if (std::isfinite(norm)) return norm;
  return std::nullopt;
}

bool all_finite(const ParamStore& grads) {
  for (const auto& [name, g] : grads.all()) {
    const float* x = checked_f32(g, "gradient", name);
    const int64_t n = g.numel();
    for (int64_t b = 0; b < n; b += kNormBlock)
      if (!block_finite(x + b, std::min(kNormBlock, n - b))) return false;
  }
  return true;
}

}  // namespace posformer
#endif  // HWY_ONCE
