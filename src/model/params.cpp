#include "posformer/model/params.h"

#include <cmath>

#include "posformer/core/random.h"

namespace posformer {

void ParamStore::add(const std::string& name, Tensor t) {
  PF_CHECK(!tensors_.count(name), "[params] duplicate parameter ", name);
  tensors_.emplace(name, std::move(t));
}

Tensor& ParamStore::get(const std::string& name) {
  auto it = tensors_.find(name);
  PF_CHECK(it != tensors_.end(), "[params] missing parameter ", name);
  return it->second;
}

const Tensor& ParamStore::get(const std::string& name) const {
  auto it = tensors_.find(name);
  PF_CHECK(it != tensors_.end(), "[params] missing parameter ", name);
  return it->second;
}

const float* ParamStore::f32_or_null(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : it->second.data<float>();
}

namespace {
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}
}  // namespace

Tensor init_param(const ParamSpec& spec, uint64_t seed, float std) {
  Tensor t(spec.shape, DType::F32);
  float* p = t.data<float>();
  const int64_t n = t.numel();
  if (spec.init == Init::Zeros) return t;
  if (spec.init == Init::Ones) {
    t.fill(1.0f);
    return t;
  }
  uint64_t state = seed * 0x9e3779b97f4a7c15ull ^ fnv1a(spec.name);
  const double two_pi = 6.283185307179586;
  for (int64_t i = 0; i < n; i += 2) {  // Box-Muller, two normals per pair of uniforms
    double u1 = (static_cast<double>(splitmix64(state) >> 11) + 1.0) * 0x1.0p-53;
    double u2 = uniform01(state);
    double r = std::sqrt(-2.0 * std::log(u1));
    p[i] = static_cast<float>(std * r * std::cos(two_pi * u2));
    if (i + 1 < n) p[i + 1] = static_cast<float>(std * r * std::sin(two_pi * u2));
  }
  return t;
}

}  // namespace posformer
