#include "posformer/ops/dropout.h"

#include <cmath>

#include "../kernels/cpu/kernels.h"
#include "posformer/core/error.h"
#include "posformer/core/random.h"

namespace posformer::ops {

void dropout(float* x, int64_t n, float p, uint64_t key) {
  PF_CHECK(p >= 0.0f && p < 1.0f, "[dropout] probability must be in [0, 1), got ", p);
  PF_CHECK(n < (int64_t{1} << 32), "[dropout] ", n, " elements in one call (at most 2^32 - 1)");
  if (p == 0.0f || n <= 0) return;
  const auto thr = static_cast<uint32_t>(std::llround(static_cast<double>(p) * 16777216.0));
  const auto scale = static_cast<float>(1.0 / (1.0 - static_cast<double>(p)));
  kernels::cpu::dropout(x, n, static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32), thr,
                        scale);
}

uint64_t dropout_key(uint64_t seed, uint64_t site) {
  uint64_t s = seed ^ (site * 0xd1b54a32d192ed03ull);
  return splitmix64(s);
}

}  // namespace posformer::ops
