// Dropout with counter-based masks (docs/training.md, "Regularisation"): element i of a call
// keyed `key` (k1 = its low 32 bits, k2 = its high 32 bits) is kept iff
//
//   fmix32(h) = murmur3's finaliser: h ^= h >> 16; h *= 0x85ebca6b; h ^= h >> 13;
//               h *= 0xc2b2ae35; h ^= h >> 16                           (32-bit arithmetic)
//   u_i = fmix32(fmix32(i * 0x9e3779b9 ^ k1) ^ k2) >> 8                 (u_i in [0, 2^24))
//   keep_i = u_i >= round(p 2^24)
//
// and a kept element is scaled by 1 / (1 - p) (inverted dropout), so the expectation is
// unchanged and evaluation needs no rescaling. The mask is a pure function of (key, i): the
// backward applies the same map to the gradient (dropout is linear in x, and its own adjoint)
// by calling dropout() again with the same key, so no mask is stored, and a run resumed from a
// checkpoint draws the same masks as an uninterrupted one. 32-bit operations vectorise on every
// SIMD target (Highway); i < 2^32 per call.
#pragma once
#include <cstdint>

namespace posformer::ops {

// x[i] = keep_i ? x[i] / (1 - p) : 0 for i < n, in place. p in [0, 1); p = 0 leaves x as is.
void dropout(float* x, int64_t n, float p, uint64_t key);

// The key of one dropout site: a step's seed mixed with the site's number (which stack, layer
// and sublayer), so different sites draw independent masks (one splitmix64 draw from the state
// seed ^ site * 0xd1b54a32d192ed03).
uint64_t dropout_key(uint64_t seed, uint64_t site);

}  // namespace posformer::ops
