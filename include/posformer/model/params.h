// Named parameters. Every weight is addressable by its checkpoint name
// (docs/checkpoint-format.md); modules declare what they need as ParamSpecs and look tensors up
// by name, so init, load-time validation, info and (later) optimizers share one list.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "posformer/core/tensor.h"

namespace posformer {

enum class Init { Normal, Zeros, Ones };

struct ParamSpec {
  std::string name;  // e.g. "decoder.layers.0.attn.q.weight"
  Shape shape;
  Init init = Init::Normal;
  std::string component;  // "embedding" | "position" | "attention" | "ffn" | "norm" | "head"
  bool decay = true;      // AdamW weight decay applies (false for norms, biases)
  // A non-trainable buffer (performer's random features): saved and loaded with the weights
  // (model files, checkpoints) and listed by `info`, but it has no gradient, no optimizer state
  // and no weight decay; its owner fills it (Attention::init_buffers), not init_param.
  bool buffer = false;
};

class ParamStore {
 public:
  void add(const std::string& name, Tensor t);
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  Tensor& get(const std::string& name);  // throws Error naming the missing tensor
  const Tensor& get(const std::string& name) const;
  float* f32(const std::string& name) { return get(name).data<float>(); }
  const float* f32(const std::string& name) const { return get(name).data<float>(); }
  // nullptr when absent (optional biases)
  const float* f32_or_null(const std::string& name) const;
  const std::map<std::string, Tensor>& all() const { return tensors_; }
  std::map<std::string, Tensor>& all() { return tensors_; }

 private:
  std::map<std::string, Tensor> tensors_;
};

// Deterministic initialisation: N(0, std) from a counter-based generator seeded by (seed, name),
// so a tensor's initial values do not depend on which other tensors exist.
Tensor init_param(const ParamSpec& spec, uint64_t seed, float std = 0.02f);

}  // namespace posformer
