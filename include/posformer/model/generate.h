// Autoregressive generation with a KV cache, and the sampling rules users expect:
//   logits -> repetition penalty (CTRL: divide positive / multiply negative logits of tokens
//   already present by `repetition_penalty`) -> / temperature -> top-k -> top-p (nucleus: the
//   smallest set of most likely tokens whose probability sum reaches top_p) -> sample.
// temperature 0 is greedy (argmax, ties to the lowest id).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "posformer/model/transformer.h"

namespace posformer {

struct SamplingConfig {
  int64_t max_new_tokens = 128;
  double temperature = 1.0;
  int64_t top_k = 0;   // 0 = off
  double top_p = 1.0;  // 1 = off
  double repetition_penalty = 1.0;
  uint64_t seed = 0;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
  bool use_cache = true;          // false: recompute the whole sequence each step (testing)
};

void validate_sampling(const SamplingConfig& s);

// Picks the next token from one row of logits [V] (modified in place). `history` is used by
// the repetition penalty; `rng_state` advances.
int32_t sample_token(float* logits, int64_t V, const std::vector<int32_t>& history,
                     const SamplingConfig& s, uint64_t& rng_state);

// Generates after `prompt` (decoder tokens; non-empty). `src` for encoder_decoder models.
// on_token(id) is called as each token is produced (streaming). Returns the new tokens.
std::vector<int32_t> generate(const Transformer& model, const std::vector<int32_t>& prompt,
                              const SamplingConfig& s, const std::vector<int32_t>* src = nullptr,
                              const std::function<void(int32_t)>& on_token = nullptr);

// Generates after several prompts as one batch (decoder models; each prompt non-empty): the
// prompts are left-padded to the longest, P = max length, so sequence b's first real row is
// p_b = P - len_b. Its positions start at 0 there and its queries see keys from p_b on only
// (KVCache::start; without the cache, a pad segment first, ForwardOptions::segments). Each
// sequence samples with its own generator seeded as generate() seeds it, and stops at its own
// stop id (the others go on). So each returned row equals generate(prompt_b) alone, greedy or
// sampled, up to fp32 rounding of the batched arithmetic (which can only flip a near-tie).
std::vector<std::vector<int32_t>> generate_batch(const Transformer& model,
                                                 const std::vector<std::vector<int32_t>>& prompts,
                                                 const SamplingConfig& s);

}  // namespace posformer
