// Cross-entropy over logits rows (fp32), the causal-LM / MLM / seq2seq objective:
//
//   loss = (1/N) sum_{r: target[r] >= 0} ( logsumexp(z_r) - z_r[target[r]] ),  N = #targets >= 0
//   dz_r = (softmax(z_r) - onehot(target[r])) * grad_scale / N      (rows with target < 0: 0)
//
// Targets < 0 are ignored (padding, unmasked MLM positions). Returns the mean loss (double)
// and N; dlogits may alias logits. A target >= vocab is an Error naming the row.
#pragma once
#include <cstdint>

namespace posformer::ops {

struct CrossEntropy {
  double loss = 0;    // mean over counted rows (0 when none)
  int64_t count = 0;  // rows with a target
};

CrossEntropy cross_entropy(const float* logits, const int32_t* targets, int64_t rows, int64_t vocab,
                           float* dlogits, float grad_scale = 1.0f);

}  // namespace posformer::ops
