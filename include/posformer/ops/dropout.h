// Dropout with counter-based masks (docs/training.md, "Regularisation"): element i of a call
// keyed `key` is kept iff
//
//   u_i = splitmix64 output of the state key + i * 0x9e3779b97f4a7c15 (the i-th draw of a
//         splitmix64 stream started at key), top 24 bits          (u_i in [0, 2^24))
//   keep_i = u_i >= round(p 2^24)
//
// and a kept element is scaled by 1 / (1 - p) (inverted dropout), so the expectation is
// unchanged and evaluation needs no rescaling. The mask is a pure function of (key, i): the
// backward applies the same map to the gradient (dropout is linear in x, and its own adjoint)
// by calling dropout() again with the same key, so no mask is stored, and a run resumed from a
// checkpoint draws the same masks as an uninterrupted one.
#pragma once
#include <cstdint>

namespace posformer::ops {

// x[i] = keep_i ? x[i] / (1 - p) : 0 for i < n, in place. p in [0, 1); p = 0 leaves x as is.
void dropout(float* x, int64_t n, float p, uint64_t key);

// The key of one dropout site: a step's seed mixed with the site's number (which stack, layer
// and sublayer), so different sites draw independent masks.
uint64_t dropout_key(uint64_t seed, uint64_t site);

}  // namespace posformer::ops
