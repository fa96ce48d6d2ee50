// AdamW and gradient utilities.
//
// AdamW follows torch.optim.AdamW (decoupled weight decay, amsgrad=False, maximize=False) so a
// PyTorch twin agrees to ~1e-6 after many steps. For each parameter p with gradient g, at step
// t = 1, 2, ... (the step counter is shared by all parameters and advanced once per step()):
//
//   p <- p * (1 - lr * wd)                      only when the ParamSpec has decay = true
//   m <- b1 * m + (1 - b1) * g
//   v <- b2 * v + (1 - b2) * g * g
//   bc1 = 1 - b1^t,  bc2 = 1 - b2^t             (double)
//   p <- p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
//
// i.e. p -= lr * mhat / (sqrt(vhat) + eps) with mhat = m / bc1, vhat = v / bc2. Tensors and
// element arithmetic are fp32 in PyTorch's operation order; scalars (1 - lr*wd, lr/bc1,
// sqrt(bc2)) are computed in double and rounded to fp32 once, as PyTorch does. The update is
// element-wise (Highway SIMD, OpenMP over large tensors), so the result does not depend on the
// thread count. m and v start at zero and have the parameter's shape.
//
// Optimizer state for checkpoints: state_tensors() gives "m.<name>" and "v.<name>" (F32, the
// parameter's shape) for every parameter, plus steps(); load_state() takes both back. Saving
// and reloading continues bit-identically.
//
// Gradient utilities (all F32 tensors; any other dtype is an Error):
//   global_grad_norm: sqrt(sum over all tensors and elements of g^2), accumulated in double in
//     fixed-size blocks summed in order, so the value is independent of the thread count.
//   clip_grad_norm: torch.nn.utils.clip_grad_norm_ (L2): norm = global_grad_norm;
//     c = max_norm / (norm + 1e-6); when c < 1 every gradient is multiplied by c (fp32).
//     Returns the pre-clip norm. max_norm <= 0 disables clipping (norm still returned). A
//     non-finite norm is returned without touching the gradients (PyTorch would fill them with
//     NaN); callers should skip the step (see all_finite).
//   all_finite: false when any gradient element is NaN or +-Inf.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "posformer/core/tensor.h"
#include "posformer/model/params.h"

namespace posformer {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

// Throws Error unless 0 <= beta1, beta2 < 1, eps >= 0, weight_decay >= 0 (all finite).
void validate(const AdamWConfig& cfg);

class AdamW {
 public:
  // One (m, v) pair per trainable spec (buffers, ParamSpec::buffer, are skipped: never updated,
  // no state), zero-filled F32 of the spec's shape. Throws Error on duplicate
  // names or an invalid config.
  AdamW(const std::vector<ParamSpec>& specs, const AdamWConfig& cfg);

  // One optimisation step over every spec'd parameter. Everything is checked before anything
  // changes: a parameter or gradient that is missing, not F32 or of the wrong shape, or an lr
  // that is negative or non-finite, throws Error naming it and leaves params and state as they
  // were. Tensors in params / grads that have no spec are ignored (frozen).
  void step(ParamStore& params, const ParamStore& grads, double lr);

  // Number of step() calls so far (PyTorch's state["step"]).
  int64_t steps() const { return steps_; }
  const AdamWConfig& config() const { return cfg_; }
  const std::vector<ParamSpec>& specs() const { return specs_; }

  // "m.<name>" / "v.<name>" for every parameter. The tensors alias the live state: clone them to
  // keep a snapshot across step().
  std::map<std::string, Tensor> state_tensors() const;
  // Copies the tensors in (no aliasing). Requires exactly the keys state_tensors() produces,
  // each F32 of the parameter's shape, and steps >= 0; otherwise throws Error naming the key,
  // leaving the state unchanged.
  void load_state(const std::map<std::string, Tensor>& t, int64_t steps);

 private:
  std::vector<ParamSpec> specs_;
  AdamWConfig cfg_;
  std::vector<Tensor> m_, v_;  // parallel to specs_
  int64_t steps_ = 0;
};

double global_grad_norm(const ParamStore& grads);
double clip_grad_norm(ParamStore& grads, double max_norm);
// The same with the norm already computed (global_grad_norm of these gradients).
double clip_grad_norm(ParamStore& grads, double max_norm, double norm);
// global_grad_norm when every gradient element is finite, nullopt when one is NaN or +-Inf, in
// the norm's one parallel pass (it is finite exactly when the elements are: a double sum of float
// squares cannot overflow); all_finite answers the same question with a serial pass.
std::optional<double> finite_grad_norm(const ParamStore& grads);
bool all_finite(const ParamStore& grads);

}  // namespace posformer
