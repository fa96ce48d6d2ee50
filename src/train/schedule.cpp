// Warmup + decay learning-rate schedule.
#include "posformer/train/schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "posformer/core/error.h"

namespace posformer {

void validate(const ScheduleConfig& s) {
  PF_CHECK(std::isfinite(s.lr) && s.lr > 0, "[schedule] lr must be finite and > 0, got ", s.lr);
  PF_CHECK(s.warmup_steps >= 0, "[schedule] warmup_steps must be >= 0, got ", s.warmup_steps);
  PF_CHECK(s.total_steps >= 1, "[schedule] total_steps must be >= 1, got ", s.total_steps);
  PF_CHECK(s.warmup_steps <= s.total_steps, "[schedule] warmup_steps (", s.warmup_steps,
           ") must not exceed total_steps (", s.total_steps, ")");
  PF_CHECK(s.decay == "cosine" || s.decay == "linear" || s.decay == "constant",
           "[schedule] unknown decay '", s.decay, "' (expected cosine, linear or constant)");
  PF_CHECK(s.min_lr_ratio >= 0 && s.min_lr_ratio <= 1,
           "[schedule] min_lr_ratio must be in [0, 1], got ", s.min_lr_ratio);
}

double lr_at(int64_t step, const ScheduleConfig& s) {
  validate(s);
  PF_CHECK(step >= 0, "[schedule] step must be >= 0, got ", step);
  if (step < s.warmup_steps)
    return s.lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  if (s.decay == "constant") return s.lr;
  const int64_t decay_steps = s.total_steps - s.warmup_steps;
  double progress = 1.0;
  if (decay_steps > 0)
    progress = std::clamp(
        static_cast<double>(step - s.warmup_steps) / static_cast<double>(decay_steps), 0.0, 1.0);
  const double r = s.min_lr_ratio;
  if (s.decay == "linear") return s.lr * (r + (1.0 - r) * (1.0 - progress));
  return s.lr * (r + 0.5 * (1.0 - r) * (1.0 + std::cos(std::numbers::pi * progress)));
}

}  // namespace posformer
