// Internal: the attention variants the registry (registry.cpp) can make, one factory each.
#pragma once
#include <memory>

#include "posformer/attention/variant.h"

namespace posformer {

// `linear` (linear_attention.cpp): phi(q) . phi(k) with phi = elu + 1, chunked prefix sums
// when causal, a recurrent decode state.
std::unique_ptr<Attention> make_linear_attention(const StackGeom& geom);

// `nystrom` (nystrom_attention.cpp): landmark (Nystrom) approximation of softmax, non-causal,
// attention.n_landmarks / pinv_iterations / conv_kernel; no decode state.
std::unique_ptr<Attention> make_nystrom_attention(const AttentionConfig& cfg,
                                                  const StackGeom& geom);

}  // namespace posformer
