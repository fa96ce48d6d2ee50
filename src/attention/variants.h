// Internal: the attention variants the registry (registry.cpp) can make, one factory each.
#pragma once
#include <memory>

#include "posformer/attention/variant.h"
#include "posformer/posenc/position_encoding.h"

namespace posformer {

// `linear` (linear_attention.cpp): phi(q) . phi(k) with phi = elu + 1, chunked prefix sums
// when causal, a recurrent decode state.
std::unique_ptr<Attention> make_linear_attention(const StackGeom& geom);
// `linear_cos`: phi(x) = [1, x/|x|] (sim = 1 + cos), the same machinery; takes RoPE outside.
std::unique_ptr<Attention> make_linear_cos_attention(const StackGeom& geom);
// `linear_rope`: elu + 1 with the stack's `rope` rotation applied inside, to the numerator
// features only (Su); refuses any other position scheme. Keeps a reference to pe.
std::unique_ptr<Attention> make_linear_rope_attention(const StackGeom& geom,
                                                      const PositionEncoding& pe);

// `performer` (FAVOR+): positive orthogonal random features approximating softmax's
// exp(q . k / sqrt(D)); W [n_features, D] is a non-trainable buffer drawn from seed.
std::unique_ptr<Attention> make_performer_attention(const StackGeom& geom, int64_t n_features,
                                                    uint64_t seed);

// `nystrom` (nystrom_attention.cpp): landmark (Nystrom) approximation of softmax, non-causal,
// attention.n_landmarks / pinv_iterations / conv_kernel; no decode state.
std::unique_ptr<Attention> make_nystrom_attention(const AttentionConfig& cfg,
                                                  const StackGeom& geom);

}  // namespace posformer
