// The training loop: objectives, AdamW with warmup + decay, clipping, accumulation,
// non-finite handling, validation, metrics, crash-safe checkpoints and exact resume.
//
// Objectives (chosen by the model's arch unless set):
//   clm     (decoder):          inputs w[0..L), targets w[1..L]  (random windows of L+1 tokens)
//   mlm     (encoder):          15% of positions chosen; of those 80% -> <mask>, 10% -> random
//                               token, 10% kept; loss on the chosen positions only
//   seq2seq (encoder_decoder):  the encoder reads the first half of a window, the decoder
//                               predicts the second half with teacher forcing from <bos>
//
// Run directory (--out): config.json, model.safetensors (latest weights, written at the end and
// at every checkpoint), tokenizer.json, train.json (the options), metrics.jsonl (one JSON line
// per step and per evaluation), checkpoints/step-N/ (see checkpoint.h).
#pragma once
#include <array>
#include <atomic>
#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "posformer/model/config.h"

namespace posformer {

struct TrainOptions {
  std::string config_path;        // model config (new runs)
  std::vector<std::string> data;  // text files; {"default"} = Debian fortunes + Tang/Song poems
  std::string out_dir;
  std::string tokenizer_dir;       // copy this tokenizer (default: byte-level)
  std::string objective = "auto";  // auto | clm | mlm | seq2seq
  int64_t steps = 1000, batch = 8, seq_len = 256, accum = 1;
  double lr = 3e-4, min_lr_ratio = 0.1;
  int64_t warmup = 100;
  std::string decay = "cosine";
  double weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, clip = 1.0;
  uint64_t seed = 0;
  int64_t eval_every = 100, eval_windows = 32, ckpt_every = 100, keep_last = 3;
  double val_fraction = 0.05;
  std::string on_nonfinite = "skip";  // skip (count and continue) | stop
  int threads = 0;
  bool progress = true;     // live progress line on stderr
  int64_t stop_after = -1;  // testing: stop (as if interrupted) after this many steps
  // arch vit (classify objective, docs/vision.md): data specs are "fashion-mnist" (Debian's
  // dataset-fashion-mnist, training set; also "default"), "idx:IMAGES,LABELS",
  // "png:DIR,LABELS"; max_images > 0 keeps the first N images; augmentation: random crop with
  // crop_pad pixels of zero padding, random horizontal flip.
  int64_t max_images = 0, crop_pad = 0;
  bool flip = false;
  double erase = 0;  // arch vit: random erasing probability (Augment::erase)
  // arch vit: batch mixing (Augment::mixup / cutmix / mix_prob): Beta alphas (0 = off) and the
  // probability that a batch is mixed
  double mixup = 0, cutmix = 0, mix_prob = 1.0;
  // Regularisation (docs/training.md): label smoothing of the training loss (validation is
  // reported without it). Dropout is the model config's `dropout`; its masks are keyed by
  // (seed, step, micro-batch), so a resumed run draws the same ones.
  double label_smoothing = 0;
  // Sequence packing (clm, mlm): a window holds pieces of several documents (each ends with
  // <eos>); with this on, each document's positions restart at 0 at its first token (the token
  // after an <eos>) and its tokens attend only to its own (document_segments,
  // ForwardOptions::segments). Validation windows are cut the same way. Part of the run: a
  // resume keeps it and refuses a different setting.
  bool pack_documents = false;
  // Precision of the attention and FFN matmuls (ops/packed_linear.h): "f32", or "bf16" (weights
  // and inputs rounded to bfloat16, float32 sums; AMX / AVX512-BF16 units where the CPU has
  // them; master weights, gradients, optimizer and everything else stay float32). Part of the
  // run: a resume keeps it and refuses a different setting.
  std::string precision = "f32";
  // Micro-batches side by side (docs/training.md "Parallel micro-batches"): the --accum
  // micro-batches of a step run concurrently, one per thread, each single-threaded into its own
  // gradient buffer; the buffers are summed in micro-batch order. For models whose ops are too
  // small to split well over threads (the Fashion-MNIST ViT). Results do not depend on the
  // thread count; they differ from the serial accumulation by rounding only. Costs one gradient
  // buffer per micro-batch. Part of the run (a resume keeps it).
  bool accum_parallel = false;
};

// Segment ids of training windows: seg[b][t] = the number of `eos` tokens in in[b][0..t), so a
// new document starts after each <eos> (which belongs to the document it ends).
std::vector<std::vector<int32_t>> document_segments(const std::vector<std::vector<int32_t>>& in,
                                                    int32_t eos);

class Transformer;
class Tokenizer;

// Loss (nats/token), perplexity and bits per byte over windows (inputs, targets) of token ids;
// `objective` as above (mlm masks with a fixed seed, so evaluations are comparable).
struct Evaluation {
  double loss = 0, ppl = 0, bpb = 0;
  int64_t tokens = 0;
};
// Training objectives: causal LM (decoder), masked LM (encoder), sequence to sequence
// (encoder_decoder); TrainOptions::objective "auto" picks the arch's.
// classify (vit): cross-entropy of the image's class; evaluation reports accuracy and
// per-class accuracy.
enum class Objective { Clm, Mlm, Seq2seq, Classify };
constexpr auto choice_names(Objective) {
  return std::array<const char*, 5>{"objective", "clm", "mlm", "seq2seq", "classify"};
}
// pack_documents: as TrainOptions::pack_documents (clm, mlm).
Evaluation evaluate_windows(
    const Transformer& model, Objective objective,
    const std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>>& windows,
    const Tokenizer& tok, bool pack_documents = false);
Objective default_objective(Arch arch);

// classify: mean cross-entropy, accuracy, per-class accuracy (recall) and the confusion matrix
// [true class][predicted class] of `model` over images `rows` of `set`, `batch` at a time.
// flip_tta: test-time augmentation, the prediction is the mean of the softmax of each image and
// of its left-right mirror (loss: -log of that mean at the label).
struct ImageSet;
struct ClassifyEval {
  double loss = 0, accuracy = 0;
  int64_t count = 0;
  std::vector<double> class_accuracy;  // [K]; 0 for a class with no image
  std::vector<int64_t> confusion;      // [K * K]
};
ClassifyEval evaluate_images(const Transformer& model, const ImageSet& set,
                             const std::vector<int64_t>& rows, int64_t batch,
                             bool flip_tta = false);

nlohmann::json options_to_json(const TrainOptions& o);
TrainOptions options_from_json(const nlohmann::json& j);
void validate(const TrainOptions& o);

struct TrainResult {
  int64_t steps_done = 0, skipped = 0;
  double last_loss = 0, val_loss = -1, tokens_per_s = 0;  // arch vit: images per second
  bool interrupted = false;
  bool images = false;  // arch vit: tokens_per_s counts images
};

// New run (resume_dir empty) or exact continuation of RUN_DIR's newest complete checkpoint
// (`steps_override` > 0 changes the total). `stop` is polled each step (Ctrl-C / SIGTERM):
// the run saves a checkpoint and returns with interrupted = true.
// A duration for progress lines: "4m05s", "1h02m"; "?" when negative or not finite.
std::string fmt_duration(double seconds);

TrainResult train(const TrainOptions& opts, const std::atomic<bool>* stop = nullptr);
// pack_documents: -1 = as the run was started; 0 / 1 = what the caller asks for, refused (naming
// --pack-documents) when the run was started otherwise.
// precision: "" keeps the run's, anything else must equal it.
TrainResult resume(const std::string& run_dir, int64_t steps_override, int threads, bool progress,
                   const std::atomic<bool>* stop = nullptr, int64_t stop_after = -1,
                   int pack_documents = -1, const std::string& precision = "");

}  // namespace posformer
