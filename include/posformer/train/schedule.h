// Learning-rate schedule: linear warmup, then cosine / linear / constant decay.
//
// step is 0-based (the step about to be taken), W = warmup_steps, T = total_steps,
// r = min_lr_ratio:
//
//   step < W:   lr * (step + 1) / W                     (reaches lr at step W - 1)
//   step >= W:  progress = clamp((step - W) / (T - W), 0, 1)   (1 when T == W)
//     cosine:   lr * (r + 0.5 * (1 - r) * (1 + cos(pi * progress)))
//     linear:   lr * (r + (1 - r) * (1 - progress))
//     constant: lr                                      (r is ignored)
//
// So step W gives lr, step T (and later) gives lr * r; the last step of a T-step run, T - 1,
// is one decay step short of the minimum, as in HF's cosine schedule and nanoGPT.
#pragma once
#include <cstdint>
#include <string>

namespace posformer {

struct ScheduleConfig {
  double lr = 3e-4;
  int64_t warmup_steps = 0;
  int64_t total_steps = 1;
  std::string decay = "cosine";  // cosine | linear | constant
  double min_lr_ratio = 0.1;
};

// Throws Error naming the field: lr <= 0 or non-finite, warmup_steps < 0, total_steps < 1,
// warmup_steps > total_steps, unknown decay, min_lr_ratio outside [0, 1] (or NaN).
void validate(const ScheduleConfig& s);

// The learning rate for 0-based `step` (validates s; step < 0 is an Error).
double lr_at(int64_t step, const ScheduleConfig& s);

}  // namespace posformer
