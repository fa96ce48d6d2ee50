// learned, sinusoidal, sinusoidal_half: P[pos] added to the token embeddings (SPEC.md section 2).
#include <vector>

#include "posenc_impl.h"

namespace posformer {

void LearnedPosition::declare(std::vector<ParamSpec>& specs) const {
  specs.push_back(
      {g_.prefix + "pos_emb.weight", {g_.max_len, g_.d_model}, Init::Normal, "position", true});
}

void LearnedPosition::embed(const ParamStore& p, float* x, int64_t B, int64_t T,
                            int64_t pos0) const {
  if (T == 0) return;
  PF_CHECK(pos0 >= 0, "[learned] positions must be >= 0, got ", pos0);
  PF_CHECK(pos0 + T <= g_.max_len, "[learned] position ", pos0 + T - 1,
           " is past the learned table (max_len ", g_.max_len, ", positions 0..", g_.max_len - 1,
           ")");
  const float* P = p.f32(g_.prefix + "pos_emb.weight");
  const int64_t d = g_.d_model;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      float* row = x + (b * T + t) * d;
      const float* pr = P + (pos0 + t) * d;
      for (int64_t i = 0; i < d; ++i) row[i] += pr[i];
    }
}

void LearnedPosition::embed_backward(const float* dx, int64_t B, int64_t T, int64_t pos0,
                                     ParamStore& grads) const {
  float* dP = grads.f32(g_.prefix + "pos_emb.weight");
  const int64_t d = g_.d_model;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const float* row = dx + (b * T + t) * d;
      float* pr = dP + (pos0 + t) * d;
      for (int64_t i = 0; i < d; ++i) pr[i] += row[i];
    }
}

void SinusoidalPosition::embed(const ParamStore& p, float* x, int64_t B, int64_t T,
                               int64_t pos0) const {
  const int64_t d = g_.d_model;
  std::vector<float> P(static_cast<size_t>(T * d));
  sinusoid_rows(static_cast<double>(pos0), T, d, half_, P.data());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      float* row = x + (b * T + t) * d;
      const float* pr = P.data() + t * d;
      for (int64_t i = 0; i < d; ++i) row[i] += pr[i];
    }
}

}  // namespace posformer
