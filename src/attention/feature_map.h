// Internal: the feature maps of the linear-attention family (linear_attention.cpp). A feature
// map sends one head row x [D] to F non-negative features phi(x) [F]; the family's attention is
//
//   o_t = sum_s (phi(q_t) . phi(k_s)) v_s / sum_s (phi(q_t) . phi(k_s))      (visible keys s)
//
// computed by one chunked causal / non-causal / recurrent-decode machinery for every map.
//
//   elu1    phi(x) = elu(x) + 1 (x + 1 for x > 0, e^x otherwise), F = D          (`linear`)
//   cosine  phi(x) = [1, x / |x|], F = D + 1: phi(q) . phi(k) = 1 + cos(q, k)    (`linear_cos`)
//           at |x| = 0 the direction is undefined: phi(0) = [1, 0, .., 0] (the row weighs
//           every key / every query equally, similarity 1) and its gradient is 0.
//   favor   Performer's FAVOR+ positive random features (`performer`), F = M = n_features:
//           x' = x D^(-1/4),  phi(x)_m = exp(w_m . x' - |x'|^2 / 2 - c) / sqrt(M),
//           W [M, D] a non-trainable buffer (draw_favor_features);
//           E_W[phi(q) . phi(k)] = exp(q . k / sqrt(D)) e^(-c_q - c_k). The stabiliser c
//           cancels exactly in the ratio: queries: c_q = max_m (w_m . q') - |q'|^2 / 2 per row
//           (features <= 1/sqrt(M)); keys: one constant c_k = max_m |w_m|^2 / 2 (>= every
//           key's exponent, as w . k' - |k'|^2 / 2 <= |w|^2 / 2), the same for every key,
//           position and decode step, so the causal, chunked and recurrent paths agree.
//           Gradients take c as the constant it is to the output (the output does not depend
//           on it).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "posformer/core/tensor.h"

namespace posformer {

// Per-call inputs of a map: favor's random features (null for the others), and whether the
// rows are queries (favor's stabiliser differs).
struct MapArgs {
  const float* W = nullptr;  // [F, D]
  float key_shift = 0.0f;    // favor's c_k
  bool query = false;
};

class FeatureMap {
 public:
  virtual ~FeatureMap() = default;
  virtual int64_t features(int64_t D) const = 0;  // F
  // out[r * F + f] = phi(x_r)_f for rows r < n, x_r = x + r * ld (D floats).
  virtual void forward(const float* x, int64_t ld, int64_t n, int64_t D, const MapArgs& m,
                       float* out) const = 0;
  // dx_r = J_phi(x_r)^T g_r, g_r = g + r * F; written (not added) to dx + r * lddx.
  virtual void backward(const float* x, int64_t ld, int64_t n, int64_t D, const MapArgs& m,
                        const float* g, float* dx, int64_t lddx) const = 0;
};

std::unique_ptr<FeatureMap> make_elu1_features();
std::unique_ptr<FeatureMap> make_cosine_features();
std::unique_ptr<FeatureMap> make_favor_features(int64_t n_features);

// FAVOR+'s W [M, D]: blocks of D orthonormal rows (modified Gram-Schmidt, in double, of a D x D
// Gaussian matrix: the Q of its QR), the last block cut to M mod D rows, each row rescaled by
// the norm of an independent Gaussian D-vector (chi with D degrees of freedom), so each row is
// marginally N(0, I_D) and rows are orthogonal within a block. Deterministic in (seed, stream,
// draw): stream names the stack ("encoder." / "decoder."), draw is 0 at init and the training
// step at a redraw.
Tensor draw_favor_features(int64_t M, int64_t D, uint64_t seed, const std::string& stream,
                           uint64_t draw);
// c_k = max_m |w_m|^2 / 2
float favor_key_shift(const float* W, int64_t M, int64_t D);

}  // namespace posformer
