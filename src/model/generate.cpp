#include "posformer/model/generate.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <unordered_set>

#include "posformer/core/random.h"

namespace posformer {

void validate_sampling(const SamplingConfig& s) {
  PF_CHECK(s.max_new_tokens >= 0, "[generate] --max-new-tokens must be >= 0, got ",
           s.max_new_tokens);
  PF_CHECK(std::isfinite(s.temperature) && s.temperature >= 0,
           "[generate] --temperature must be >= 0, got ", s.temperature);
  PF_CHECK(s.top_k >= 0, "[generate] --top-k must be >= 0, got ", s.top_k);
  PF_CHECK(s.top_p > 0 && s.top_p <= 1, "[generate] --top-p must be in (0, 1], got ", s.top_p);
  PF_CHECK(std::isfinite(s.repetition_penalty) && s.repetition_penalty > 0,
           "[generate] --repetition-penalty must be > 0, got ", s.repetition_penalty);
}

int32_t sample_token(float* z, int64_t V, const std::vector<int32_t>& history,
                     const SamplingConfig& s, uint64_t& rng) {
  if (s.repetition_penalty != 1.0) {
    std::unordered_set<int32_t> seen(history.begin(), history.end());
    for (int32_t t : seen) {
      if (t < 0 || t >= V) continue;
      z[t] = z[t] > 0 ? static_cast<float>(z[t] / s.repetition_penalty)
                      : static_cast<float>(z[t] * s.repetition_penalty);
    }
  }
  if (s.temperature == 0.0) return static_cast<int32_t>(std::max_element(z, z + V) - z);
  std::vector<int32_t> idx(static_cast<size_t>(V));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return z[a] > z[b]; });
  int64_t keep = V;
  if (s.top_k > 0) keep = std::min<int64_t>(keep, s.top_k);
  std::vector<double> p(static_cast<size_t>(keep));
  const double mx = z[idx[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i) sum += p[i] = std::exp((z[idx[i]] - mx) / s.temperature);
  if (s.top_p < 1.0) {
    double acc = 0;
    int64_t n = 0;
    while (n < keep) {
      acc += p[n] / sum;
      ++n;
      if (acc >= s.top_p) break;
    }
    keep = n;
    sum = 0;
    for (int64_t i = 0; i < keep; ++i) sum += p[i];
  }
  const double u = uniform01(rng) * sum;
  double acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (u < acc) return idx[i];
  }
  return idx[keep - 1];
}

std::vector<int32_t> generate(const Transformer& model, const std::vector<int32_t>& prompt,
                              const SamplingConfig& s, const std::vector<int32_t>* src,
                              const std::function<void(int32_t)>& on_token) {
  validate_sampling(s);
  PF_CHECK(!prompt.empty(), "[generate] the prompt is empty (give at least one token)");
  const ModelConfig& c = model.config();
  PF_CHECK(c.head == Head::Lm, "[generate] the model has no LM head (head: none)");
  const int64_t V = c.vocab_size, total = static_cast<int64_t>(prompt.size()) + s.max_new_tokens;
  if (const int64_t mp = model.position(true)->max_position(); mp >= 0)
    PF_CHECK(total <= mp + 1, "[generate] prompt (", prompt.size(), " tokens) + ", s.max_new_tokens,
             " new tokens = ", total,
             " positions, past the learned position "
             "table (max_len ",
             mp + 1, "); use fewer tokens");
  TokenBatch src_b;
  if (src) src_b.push_back(*src);
  std::vector<int32_t> seq = prompt, out;
  uint64_t rng = s.seed * 0x2545f4914f6cdd1dull + 0x632be59bd9b4e019ull;
  KVCache cache;
  if (s.use_cache)
    cache = model.start_cache(1, std::max<int64_t>(total, 1), src ? &src_b : nullptr);
  std::vector<int32_t> pending = prompt;
  for (int64_t step = 0; step < s.max_new_tokens; ++step) {
    ForwardOutput r;
    if (s.use_cache) {
      r = model.forward_cached(TokenBatch{pending}, cache);
    } else {
      ForwardOptions fo;
      fo.src = src ? &src_b : nullptr;
      r = model.forward(TokenBatch{seq}, fo);
    }
    const int64_t T = r.logits.dim(1);
    float* last = r.logits.data<float>() + (T - 1) * V;
    const int32_t tok = sample_token(last, V, seq, s, rng);
    seq.push_back(tok);
    out.push_back(tok);
    if (on_token) on_token(tok);
    if (std::find(s.stop_ids.begin(), s.stop_ids.end(), tok) != s.stop_ids.end()) break;
    pending = {tok};
  }
  return out;
}

std::vector<std::vector<int32_t>> generate_batch(const Transformer& model,
                                                 const std::vector<std::vector<int32_t>>& prompts,
                                                 const SamplingConfig& s) {
  validate_sampling(s);
  PF_CHECK(!prompts.empty(), "[generate] no prompts given");
  const ModelConfig& c = model.config();
  PF_CHECK(c.head == Head::Lm, "[generate] the model has no LM head (head: none)");
  PF_CHECK(c.arch == Arch::Decoder, "[generate] batched prompts are for decoder models; this is ",
           c.arch, " (generate its prompts one by one)");
  const int64_t B = static_cast<int64_t>(prompts.size()), V = c.vocab_size;
  int64_t P = 0;
  for (int64_t b = 0; b < B; ++b) {
    PF_CHECK(!prompts[b].empty(), "[generate] prompt ", b, " is empty (give at least one token)");
    P = std::max<int64_t>(P, static_cast<int64_t>(prompts[b].size()));
  }
  // each sequence's positions run to len_b + max_new_tokens - 1 <= P + max_new_tokens - 1
  if (const int64_t mp = model.position(true)->max_position(); mp >= 0)
    PF_CHECK(P + s.max_new_tokens <= mp + 1, "[generate] the longest prompt (", P, " tokens) + ",
             s.max_new_tokens, " new tokens = ", P + s.max_new_tokens,
             " positions, past the learned position table (max_len ", mp + 1,
             "); use fewer tokens");
  const AttentionCaps caps = model.attention(true)->caps();
  PF_CHECK(caps.key_window, "[generate] attention '", model.attention(true)->name(),
           "' takes no key window: a left-padded batch is refused (generate its prompts one by "
           "one, or use softmax)");
  std::vector<int32_t> start(static_cast<size_t>(B));
  TokenBatch rows(static_cast<size_t>(B), std::vector<int32_t>(static_cast<size_t>(P), 0));
  TokenBatch seg(static_cast<size_t>(B), std::vector<int32_t>(static_cast<size_t>(P), 1));
  for (int64_t b = 0; b < B; ++b) {
    start[b] = static_cast<int32_t>(P - static_cast<int64_t>(prompts[b].size()));
    std::copy(prompts[b].begin(), prompts[b].end(), rows[b].begin() + start[b]);
    std::fill_n(seg[b].begin(), start[b], 0);  // the pad segment, masked from the prompt
  }
  std::vector<uint64_t> rng(static_cast<size_t>(B), s.seed * 0x2545f4914f6cdd1dull +
                                                        0x632be59bd9b4e019ull);  // as generate()
  std::vector<std::vector<int32_t>> hist = prompts, out(static_cast<size_t>(B));
  std::vector<bool> done(static_cast<size_t>(B), false);
  KVCache cache;
  if (s.use_cache) {
    cache = model.start_cache(B, std::max<int64_t>(P + s.max_new_tokens, 1));
    cache.start = start;
  }
  TokenBatch pending = rows;
  for (int64_t step = 0; step < s.max_new_tokens; ++step) {
    ForwardOutput r;
    if (s.use_cache) {
      r = model.forward_cached(pending, cache);
    } else {
      ForwardOptions fo;
      fo.segments = &seg;  // positions restart at each sequence's first real token
      r = model.forward(rows, fo);
    }
    const int64_t T = r.logits.dim(1);
    bool all_done = true;
    for (int64_t b = 0; b < B; ++b) {
      int32_t tok = hist[b].back();  // a finished sequence is fed its last token (ignored)
      if (!done[b]) {
        float* last = r.logits.data<float>() + (b * T + T - 1) * V;
        tok = sample_token(last, V, hist[b], s, rng[b]);
        hist[b].push_back(tok), out[b].push_back(tok);
        if (std::find(s.stop_ids.begin(), s.stop_ids.end(), tok) != s.stop_ids.end())
          done[b] = true;
      }
      all_done = all_done && done[b];
      pending[b] = {tok};
      rows[b].push_back(tok), seg[b].push_back(1);
    }
    if (all_done) break;
  }
  return out;
}

}  // namespace posformer
