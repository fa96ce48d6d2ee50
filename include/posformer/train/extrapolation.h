// The length-extrapolation study (posformer extrapolate, docs/extrapolation.md): one causal LM
// per (position encoding, attention variant), all from one base config with the same data,
// seed, steps, batch and learning rate, trained at train_len; then each model's perplexity on
// the same held-out tokens cut into windows of every eval length.
//
// Held-out data: the validation split of the training corpus (load_corpus with the study's
// val_fraction and seed, the split the trainer holds out). Of its concatenated stream
// (documents joined, each ending in <eos>) the first N = min(eval_tokens, val_tokens - 1) tokens
// are scored at every length L as floor(N / L) non-overlapping windows of L inputs (the ALiBi
// paper's non-overlapping evaluation): every length sees the same prefix of the same text,
// floor(N / L) * L targets. A length with no whole window is "n/a (held-out data too short)".
//
// Directory (--out DIR):
//   study.json        the training spec (base config, train_len, steps, batch, warmup, lr, seed,
//                     data, val_fraction); a rerun with a different one is refused, naming the
//                     fields. The model list and eval settings may change between runs.
//   manifest.json     one entry per finished model: training summary, the eval spec it was
//                     evaluated under, and its result rows; rewritten atomically after each model
//   configs/NAME.json the model config of each study model
//   models/NAME/      each model's training run (trainer.h layout, crash-safe checkpoints)
//   results.csv, results.md, extrapolation.png (the CLI writes the last two from the rows)
//
// Resume: a model in the manifest is not retrained (and not re-evaluated unless the eval spec
// changed); an unfinished model continues from its newest complete checkpoint; a model with no
// checkpoint yet starts over.
#pragma once
#include <atomic>
#include <cstdint>
#include <functional>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <vector>

#include "posformer/model/config.h"

namespace posformer {

struct StudySpec {
  std::string config_path;  // base model config (decoder); position.type and attention.type
                            // are replaced per model
  std::vector<std::string> positions;              // position types
  std::vector<std::string> attentions{"softmax"};  // attention types
  int64_t train_len = 128;
  std::vector<int64_t> eval_lens{128, 256, 512, 1024, 2048};
  int64_t steps = 1000, batch = 16, warmup = -1;  // warmup -1: min(100, steps / 10)
  double lr = 1e-3;
  uint64_t seed = 0;
  std::vector<std::string> data{"default"};
  double val_fraction = 0.05;
  int64_t eval_tokens = 16384;  // held-out tokens scored at every length
  // RoPE models are also scored under each of these scalings (eval_variants); empty: none
  std::vector<std::string> rope_scalings{"linear", "ntk", "yarn", "llama3"};
  int64_t ckpt_every = 0;  // 0: steps / 10, clamped to [1, 100]
  int threads = 0;
  std::string out_dir;
  bool progress = true;
};

// Checks the flags (names exist in the registries, lengths, budget); throws Error naming them.
void validate(const StudySpec& s);

// One model of the study: NAME is the position type, or "position+attention" when the study
// has several attention variants or a non-softmax one. `refused` holds the registry's message
// when the combination cannot be built (it is skipped and shown as such in the table).
struct StudyModel {
  std::string name, position, attention;
  ModelConfig cfg;
  std::string refused;
};
std::vector<StudyModel> study_models(const StudySpec& s, const ModelConfig& base);

// Eval-time variants of a trained model, each evaluated at every length: "none" (the model as
// trained) is always first. A RoPE model trained without a scaling gets one more variant per
// name in `rope_scalings` ("rope:yarn", ...): the trained weights under position.scaling =
// {type, factor max(1, L / train_len), original_len train_len} at length L, i.e. each scaling
// stretched to exactly the length scored (dynamic_ntk: factor 1, its frequencies follow the
// window length). `config` returns nullopt where the variant does not apply at L (then "n/a").
struct EvalVariant {
  std::string name;
  std::function<std::optional<ModelConfig>(const ModelConfig& trained, int64_t L,
                                           int64_t train_len)>
      config;
};
std::vector<EvalVariant> eval_variants(const ModelConfig& trained,
                                       const std::vector<std::string>& rope_scalings);

// One result: a model under one eval variant at one length. status "ok", or "n/a: why"
// (learned table too short, held-out data too short) or "skipped: why" (refused combination);
// the numbers are 0 unless ok.
struct StudyRow {
  std::string model, position, attention, variant, status = "ok";
  int64_t train_len = 0, eval_len = 0, windows = 0, tokens = 0;
  double loss = 0, ppl = 0, bpb = 0;
};
nlohmann::json row_to_json(const StudyRow& r);
StudyRow row_from_json(const nlohmann::json& j);

struct StudyResult {
  std::vector<StudyRow> rows;        // models in study order, then variants, then lengths
  std::vector<std::string> notes;    // data shortfalls, skipped models, re-evaluations
  std::vector<std::string> trained;  // models trained (or finished) by this call
  std::vector<std::string> reused;   // models taken from the manifest
  int64_t held_out_tokens = 0;       // N above
  bool interrupted = false;
};

// Runs (or resumes) the study in s.out_dir. `stop` is polled during training (the trainer
// saves a checkpoint) and between evaluations; a stopped study returns interrupted = true with
// the rows of the models finished so far.
StudyResult run_study(const StudySpec& s, const std::atomic<bool>* stop = nullptr);

// results.csv: header
//   model,position,attention,variant,train_len,eval_len,status,loss,ppl,bits_per_byte,windows,tokens
std::string results_csv(const std::vector<StudyRow>& rows);
// results.md: a perplexity table (one row per model and variant, one column per length, the
// train length marked), the per-length ratio to the train-length perplexity, and the notes.
std::string results_markdown(const StudySpec& s, const StudyResult& r);

}  // namespace posformer
