// Hooks that belong to attention rather than to a position scheme: chains and RealFormer's
// carried scores (attention.h).
#include <algorithm>

#include "posformer/attention/attention.h"

namespace posformer {

std::unique_ptr<ScoreHook> chain_hooks(std::unique_ptr<ScoreHook> a, std::unique_ptr<ScoreHook> b) {
  if (!a) return b;
  if (!b) return a;
  std::vector<std::unique_ptr<ScoreHook>> v;
  v.push_back(std::move(a));
  v.push_back(std::move(b));
  return std::make_unique<HookChain>(std::move(v));
}

void ResidualScoresHook::carry(int64_t b, int64_t h, const ScoreTile& t, float* X,
                               int64_t ld) const {
  const int64_t off = (b * a_.H + h) * a_.Tq * a_.Tk;  // (b, h)'s [Tq, Tk] matrix
  for (int64_t r = 0; r < t.rows; ++r) {
    float* x = X + r * ld;
    const int64_t row = off + (t.t0 + r) * a_.Tk + t.s0;
    if (in_)
      for (int64_t s = 0; s < t.cols; ++s) x[s] += in_[row + s];
    std::copy_n(x, t.cols, out_ + row);
  }
}

}  // namespace posformer
