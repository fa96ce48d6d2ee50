// learned, sinusoidal, sinusoidal_half: P[pos] added to the token embeddings (SPEC.md section 2).
#include <vector>

#include "posenc_impl.h"

namespace posformer {

void LearnedPosition::declare(std::vector<ParamSpec>& specs) const {
  specs.push_back(
      {g_.prefix + "pos_emb.weight", {g_.max_len, g_.d_model}, Init::Normal, "position", true});
}

void LearnedPosition::embed(const ParamStore& p, float* x, const Positions& pos) const {
  if (pos.B * pos.T == 0) return;
  const auto [lo, hi] = pos.range();
  PF_CHECK(lo >= 0, "[learned] positions must be >= 0, got ", lo);
  PF_CHECK(hi < g_.max_len, "[learned] position ", hi, " is past the learned table (max_len ",
           g_.max_len, ", positions 0..", g_.max_len - 1, ")");
  const float* P = p.f32(g_.prefix + "pos_emb.weight");
  const int64_t d = g_.d_model;
  for (int64_t b = 0; b < pos.B; ++b)
    for (int64_t t = 0; t < pos.T; ++t) {
      float* row = x + (b * pos.T + t) * d;
      const float* pr = P + pos.at(b, t) * d;
      for (int64_t i = 0; i < d; ++i) row[i] += pr[i];
    }
}

void LearnedPosition::embed_backward(const float* dx, const Positions& pos,
                                     ParamStore& grads) const {
  float* dP = grads.f32(g_.prefix + "pos_emb.weight");
  const int64_t d = g_.d_model;
  for (int64_t b = 0; b < pos.B; ++b)
    for (int64_t t = 0; t < pos.T; ++t) {
      const float* row = dx + (b * pos.T + t) * d;
      float* pr = dP + pos.at(b, t) * d;
      for (int64_t i = 0; i < d; ++i) pr[i] += row[i];
    }
}

// Rows of the table are computed once per distinct run (one table for a run of positions, one
// row per token for explicit ids).
void SinusoidalPosition::embed(const ParamStore& p, float* x, const Positions& pos) const {
  const int64_t d = g_.d_model, B = pos.B, T = pos.T;
  if (B * T == 0) return;
  std::vector<float> P(static_cast<size_t>((pos.is_run() ? T : B * T) * d));
  if (pos.is_run())
    sinusoid_rows(static_cast<double>(pos.pos0), T, d, half_, P.data());
  else
    for (int64_t i = 0; i < B * T; ++i)
      sinusoid_rows(static_cast<double>(pos.at(i / T, i % T)), 1, d, half_, P.data() + i * d);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      float* row = x + (b * T + t) * d;
      const float* pr = P.data() + ((pos.is_run() ? 0 : b * T) + t) * d;
      for (int64_t i = 0; i < d; ++i) row[i] += pr[i];
    }
}

}  // namespace posformer
