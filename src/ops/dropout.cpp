#include "posformer/ops/dropout.h"

#include <cmath>

#include "posformer/core/error.h"
#include "posformer/core/random.h"

namespace posformer::ops {

namespace {
inline uint64_t mix(uint64_t z) {  // splitmix64's output function
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
}  // namespace

void dropout(float* x, int64_t n, float p, uint64_t key) {
  PF_CHECK(p >= 0.0f && p < 1.0f, "[dropout] probability must be in [0, 1), got ", p);
  if (p == 0.0f || n <= 0) return;
  const uint64_t thr = static_cast<uint64_t>(std::llround(static_cast<double>(p) * 16777216.0));
  const float scale = static_cast<float>(1.0 / (1.0 - static_cast<double>(p)));
  constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ull;
#pragma omp parallel for schedule(static) if (n >= (int64_t{1} << 16))
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t u = mix(key + static_cast<uint64_t>(i + 1) * kGolden) >> 40;
    x[i] = u >= thr ? x[i] * scale : 0.0f;
  }
}

uint64_t dropout_key(uint64_t seed, uint64_t site) {
  uint64_t s = seed ^ (site * 0xd1b54a32d192ed03ull);
  return splitmix64(s);
}

}  // namespace posformer::ops
