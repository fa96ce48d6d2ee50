// Cross-entropy over logits rows (fp32), the causal-LM / MLM / seq2seq objective:
//
//   loss = (1/N) sum_{r: target[r] >= 0} ( logsumexp(z_r) - z_r[target[r]] ),  N = #targets >= 0
//   dz_r = (softmax(z_r) - onehot(target[r])) * grad_scale / N      (rows with target < 0: 0)
//
// Targets < 0 are ignored (padding, unmasked MLM positions). Returns the mean loss (double)
// and N; dlogits may alias logits. A target >= vocab is an Error naming the row.
//
// Label smoothing eps in [0, 1) (torch.nn.functional.cross_entropy's label_smoothing): the
// target distribution is q = (1 - eps) onehot + eps / V, so a row's loss is
// logsumexp(z) - (1 - eps) z[target] - eps mean(z) and dz = (softmax(z) - q) * grad_scale / N.
#pragma once
#include <cstdint>

namespace posformer::ops {

struct CrossEntropy {
  double loss = 0;    // mean over counted rows (0 when none)
  int64_t count = 0;  // rows with a target
};

CrossEntropy cross_entropy(const float* logits, const int32_t* targets, int64_t rows, int64_t vocab,
                           float* dlogits, float grad_scale = 1.0f, float label_smoothing = 0.0f);

}  // namespace posformer::ops
