// posformer train: train a model (new run or --resume), with Ctrl-C / SIGTERM saving cleanly.
#include <algorithm>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "common.h"
#include "posformer/core/io.h"
#include "posformer/train/trainer.h"

namespace posformer::cli {

namespace {
std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) {
  g_stop.store(true);
}
// The memory guard of a training run: weights, gradients and AdamW's moments, plus one more
// gradient buffer per micro-batch with --accum-parallel.
void guard_training_memory(const ModelConfig& c, const TrainOptions& o, const MemoryGuard& mem) {
  const uint64_t buffers = o.accum_parallel && o.accum > 0 ? static_cast<uint64_t>(o.accum) : 0;
  check_model_memory("train", c, ModelUse::Train, mem, "",
                     buffers * static_cast<uint64_t>(count_parameters(c)) * sizeof(float),
                     str("--accum-parallel's ", buffers, " gradient buffers"));
}
}  // namespace

Command add_train(CLI::App& root) {
  auto* app = root.add_subcommand(
      "train", "train a model: new run (--config, --data, --out) or --resume DIR");
  auto o = std::make_shared<TrainOptions>();
  auto resume_dir = std::make_shared<std::string>();
  auto quiet = std::make_shared<bool>(false);
  auto mem = std::make_shared<MemoryGuard>();
  app->add_option("--config", o->config_path, "model config JSON (new runs)");
  app->add_option("--data", o->data,
                  "training text files, or 'default' (Debian fortunes + Tang/Song poems); arch "
                  "vit: fashion-mnist | idx:IMAGES,LABELS | png:DIR,LABELS (docs/vision.md)");
  app->add_option("--max-images", o->max_images, "arch vit: keep the first N images (0 = all)");
  app->add_option("--crop-pad", o->crop_pad,
                  "arch vit: random crop after padding N zero pixels per side (0 = off)");
  app->add_flag("--flip", o->flip, "arch vit: random horizontal flips");
  app->add_option("--erase", o->erase,
                  "arch vit: random erasing probability (a random rectangle of noise; 0 = off)");
  app->add_option("--mixup", o->mixup,
                  "arch vit: mixup alpha: blend each batch with itself reversed, lambda ~ "
                  "Beta(alpha, alpha), targets mixed alike (0 = off; docs/training.md)");
  app->add_option("--cutmix", o->cutmix,
                  "arch vit: CutMix alpha: paste a box of the reversed batch's images, targets "
                  "mixed by its area (0 = off; with --mixup: half the mixed batches each)");
  app->add_option("--mix-prob", o->mix_prob,
                  "arch vit: probability that a batch is mixed (--mixup / --cutmix), in [0, 1]");
  app->add_option("--label-smoothing", o->label_smoothing,
                  "label smoothing of the training loss, in [0, 1) (validation is reported "
                  "without it); dropout is the model config's 'dropout'");
  app->add_flag("--pack-documents", o->pack_documents,
                "clm, mlm: each document in a window restarts its positions at 0 and attends only "
                "to itself (documents end at <eos>); validation the same way");
  app->add_option("--precision", o->precision,
                  "f32 | bf16: matmuls of the attention and FFN linears in bfloat16 with float32 "
                  "sums (AMX / AVX512-BF16 units; weights, gradients, optimizer stay float32)");
  app->add_option("--out", o->out_dir, "run directory (model, checkpoints, metrics.jsonl)");
  app->add_option(
      "--resume", *resume_dir,
      "continue the run in DIR from its newest complete checkpoint, with the options it "
      "was started with (only --steps, --threads, --quiet, memory options may be given)");
  app->add_option("--tokenizer", o->tokenizer_dir,
                  "use the tokenizer in DIR (default: byte-level)");
  app->add_option("--objective", o->objective,
                  "auto | clm | mlm | seq2seq | classify (auto: from the arch)");
  app->add_option("--steps", o->steps, "optimizer steps in total (with --resume: new total)");
  app->add_option("--batch", o->batch, "sequences per micro-batch");
  app->add_option("--seq-len", o->seq_len, "training sequence length");
  app->add_option("--accum", o->accum, "micro-batches accumulated per step");
  app->add_flag("--accum-parallel", o->accum_parallel,
                "run the --accum micro-batches side by side, one per thread, each into its own "
                "gradient buffer (for small models whose ops split badly over threads; "
                "docs/training.md)");
  app->add_option("--lr", o->lr, "peak learning rate");
  app->add_option("--min-lr-ratio", o->min_lr_ratio, "final lr as a fraction of --lr");
  app->add_option("--warmup", o->warmup, "linear warmup steps (default: min(100, steps/10))");
  app->add_option("--decay", o->decay, "cosine | linear | constant");
  app->add_option("--weight-decay", o->weight_decay,
                  "AdamW decoupled weight decay (not on norms, biases)");
  app->add_option("--beta1", o->beta1, "AdamW beta1");
  app->add_option("--beta2", o->beta2, "AdamW beta2");
  app->add_option("--clip", o->clip, "global gradient-norm clip (0 = off)");
  app->add_option("--seed", o->seed, "seed for init, data split, windows and masking");
  app->add_option("--eval-every", o->eval_every, "validation every N steps (0 = only at the end)");
  app->add_option("--eval-windows", o->eval_windows, "validation windows per evaluation");
  app->add_option("--ckpt-every", o->ckpt_every, "checkpoint every N steps (0 = only at the end)");
  app->add_option("--keep-last", o->keep_last, "complete checkpoints kept");
  app->add_option("--val-fraction", o->val_fraction, "share of documents held out for validation");
  app->add_option("--on-nonfinite", o->on_nonfinite, "skip (skip the update and count it) | stop");
  app->add_option("--stop-after", o->stop_after,
                  "stop (as if interrupted) after N steps of this run")
      ->group("");  // testing aid, hidden from --help
  app->add_flag("--quiet", *quiet, "no progress output");
  add_threads_option(app, o->threads);
  add_memory_options(app, *mem);
  return {app, [=]() {
            std::signal(SIGINT, on_signal);
            std::signal(SIGTERM, on_signal);
            o->progress = !*quiet;
            TrainResult r;
            if (!resume_dir->empty()) {
              PF_CHECK(o->config_path.empty() && o->data.empty(),
                       "[train] --resume continues a run with its own config and data; drop "
                       "--config/--data");
              // Every other training option (lr, batch, augmentation, seed ...) is the run's
              // own, stored with it: one given here would be ignored, so it is refused instead.
              static const std::set<std::string> on_resume = {
                  "--resume",    "--steps",          "--threads",      "--quiet", "--stop-after",
                  "--precision", "--pack-documents", "--memory-limit", "--force", "--help"};
              for (const CLI::Option* opt : app->get_options())
                if (opt->count() > 0 && !on_resume.count(opt->get_name()))
                  throw Error(str("[train] ", opt->get_name(),
                                  " cannot change when a run is resumed: --resume continues ",
                                  *resume_dir, " with the options it was started with (",
                                  *resume_dir, "/train.json); drop ", opt->get_name(),
                                  " or start a new run (--out)"));
              // Guard the run's config when it has one; resume() names what else is missing.
              const std::string cfg = *resume_dir + "/config.json";
              if (std::filesystem::is_regular_file(cfg)) {
                TrainOptions stored;  // its --accum-parallel buffers, when train.json says so
                try {
                  stored = options_from_json(nlohmann::json::parse(
                      read_file(*resume_dir + "/train.json", size_t{1} << 20)));
                } catch (const std::exception&) {  // resume() names a missing or bad train.json
                }
                guard_training_memory(load_config(cfg), stored, *mem);
              }
              r = resume(*resume_dir, app->count("--steps") ? o->steps : 0, o->threads, o->progress,
                         &g_stop, o->stop_after,
                         app->count("--pack-documents") ? int(o->pack_documents) : -1,
                         app->count("--precision") ? o->precision : std::string());
            } else {
              PF_CHECK(!o->config_path.empty(),
                       "[train] a new run needs --config CFG (or --resume DIR)");
              guard_training_memory(load_config(o->config_path), *o, *mem);
              if (!app->count("--warmup")) o->warmup = std::min<int64_t>(100, o->steps / 10);
              r = train(*o, &g_stop);
            }
            std::printf("steps %lld, last loss %.4f, validation loss %s, %.0f %s, %lld skipped%s\n",
                        (long long)r.steps_done, r.last_loss,
                        r.val_loss >= 0 ? std::to_string(r.val_loss).c_str() : "n/a",
                        r.tokens_per_s, r.images ? "images/s" : "tokens/s", (long long)r.skipped,
                        r.interrupted ? " (interrupted; checkpoint saved)" : "");
            return r.interrupted && g_stop.load() ? 130 : 0;
          }};
}

}  // namespace posformer::cli
