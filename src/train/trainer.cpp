#include "posformer/train/trainer.h"

#include <fcntl.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "posformer/core/io.h"
#include "posformer/core/random.h"
#include "posformer/core/runtime.h"
#include "posformer/model/transformer.h"
#include "posformer/train/checkpoint.h"
#include "posformer/train/data.h"
#include "posformer/train/images.h"
#include "posformer/train/optimizer.h"
#include "posformer/train/schedule.h"
#include "posformer/train/tokenizer.h"

namespace posformer {
using json = nlohmann::json;
namespace fs = std::filesystem;

json options_to_json(const TrainOptions& o) {
  return json{{"config_path", o.config_path},
              {"data", o.data},
              {"out_dir", o.out_dir},
              {"tokenizer_dir", o.tokenizer_dir},
              {"objective", o.objective},
              {"steps", o.steps},
              {"batch", o.batch},
              {"seq_len", o.seq_len},
              {"accum", o.accum},
              {"lr", o.lr},
              {"min_lr_ratio", o.min_lr_ratio},
              {"warmup", o.warmup},
              {"decay", o.decay},
              {"weight_decay", o.weight_decay},
              {"beta1", o.beta1},
              {"beta2", o.beta2},
              {"eps", o.eps},
              {"clip", o.clip},
              {"seed", o.seed},
              {"eval_every", o.eval_every},
              {"eval_windows", o.eval_windows},
              {"ckpt_every", o.ckpt_every},
              {"keep_last", o.keep_last},
              {"val_fraction", o.val_fraction},
              {"on_nonfinite", o.on_nonfinite},
              {"threads", o.threads},
              {"max_images", o.max_images},
              {"crop_pad", o.crop_pad},
              {"flip", o.flip},
              {"erase", o.erase},
              {"mixup", o.mixup},
              {"cutmix", o.cutmix},
              {"mix_prob", o.mix_prob},
              {"label_smoothing", o.label_smoothing},
              {"pack_documents", o.pack_documents},
              {"precision", o.precision},
              {"accum_parallel", o.accum_parallel}};
}

TrainOptions options_from_json(const json& j) {
  TrainOptions o;
  try {
    o.config_path = j.at("config_path");
    o.data = j.at("data").get<std::vector<std::string>>();
    o.out_dir = j.at("out_dir");
    o.tokenizer_dir = j.at("tokenizer_dir");
    o.objective = j.at("objective");
    o.steps = j.at("steps"), o.batch = j.at("batch"), o.seq_len = j.at("seq_len");
    o.accum = j.at("accum"), o.lr = j.at("lr"), o.min_lr_ratio = j.at("min_lr_ratio");
    o.warmup = j.at("warmup"), o.decay = j.at("decay"), o.weight_decay = j.at("weight_decay");
    o.beta1 = j.at("beta1"), o.beta2 = j.at("beta2"), o.eps = j.at("eps"), o.clip = j.at("clip");
    o.seed = j.at("seed"), o.eval_every = j.at("eval_every"), o.eval_windows = j.at("eval_windows");
    o.ckpt_every = j.at("ckpt_every"), o.keep_last = j.at("keep_last");
    o.val_fraction = j.at("val_fraction"), o.on_nonfinite = j.at("on_nonfinite");
    o.threads = j.at("threads");
    o.max_images = j.value("max_images", int64_t{0}), o.crop_pad = j.value("crop_pad", int64_t{0});
    o.flip = j.value("flip", false);
    o.erase = j.value("erase", 0.0), o.label_smoothing = j.value("label_smoothing", 0.0);
    o.mixup = j.value("mixup", 0.0), o.cutmix = j.value("cutmix", 0.0);
    o.mix_prob = j.value("mix_prob", 1.0);
    o.pack_documents = j.value("pack_documents", false);  // runs from before the option: off
    o.precision = j.value("precision", std::string("f32"));
    o.accum_parallel = j.value("accum_parallel", false);
  } catch (const json::exception& e) {
    throw Error(str("[train] stored training options are malformed: ", e.what()));
  }
  return o;
}

void validate(const TrainOptions& o) {
  PF_CHECK(!o.data.empty(), "[train] give training text with --data FILE... (or --data default)");
  PF_CHECK(!o.out_dir.empty(), "[train] --out DIR is required");
  PF_CHECK(o.steps >= 1, "[train] --steps must be >= 1, got ", o.steps);
  PF_CHECK(o.batch >= 1 && o.batch <= 4096, "[train] --batch must be in [1, 4096], got ", o.batch);
  PF_CHECK(o.seq_len >= 2 && o.seq_len <= (1 << 20), "[train] --seq-len must be in [2, 2^20], got ",
           o.seq_len);
  PF_CHECK(o.accum >= 1, "[train] --accum must be >= 1, got ", o.accum);
  PF_CHECK(!o.accum_parallel || o.accum >= 2,
           "[train] --accum-parallel runs the --accum micro-batches of a step side by side: give "
           "--accum 2 or more (e.g. --batch 64 --accum 2 for 128 per step), got --accum ",
           o.accum);
  PF_CHECK(o.label_smoothing >= 0 && o.label_smoothing < 1,
           "[train] --label-smoothing must be in [0, 1), got ", o.label_smoothing);
  ops::parse_precision(o.precision, "[train] --precision");
  PF_CHECK(o.erase >= 0 && o.erase <= 1, "[train] --erase must be in [0, 1], got ", o.erase);
  PF_CHECK(std::isfinite(o.mixup) && o.mixup >= 0, "[train] --mixup must be >= 0 (0 = off), got ",
           o.mixup);
  PF_CHECK(std::isfinite(o.cutmix) && o.cutmix >= 0,
           "[train] --cutmix must be >= 0 (0 = off), got ", o.cutmix);
  PF_CHECK(o.mix_prob >= 0 && o.mix_prob <= 1, "[train] --mix-prob must be in [0, 1], got ",
           o.mix_prob);
  PF_CHECK(o.clip >= 0 && std::isfinite(o.clip), "[train] --clip must be >= 0 (0 = off), got ",
           o.clip);
  PF_CHECK(o.eval_every >= 0 && o.ckpt_every >= 0,
           "[train] --eval-every and --ckpt-every must be >= 0");
  PF_CHECK(o.eval_windows >= 1, "[train] --eval-windows must be >= 1, got ", o.eval_windows);
  PF_CHECK(o.keep_last >= 1, "[train] --keep-last must be >= 1, got ", o.keep_last);
  PF_CHECK(o.on_nonfinite == "skip" || o.on_nonfinite == "stop",
           "[train] --on-nonfinite must be skip or stop, got ", o.on_nonfinite);
  if (o.objective != "auto") {  // a name of Objective, parsed once more when training starts
    try {
      Choice<Objective>::parse(o.objective);
    } catch (const Error&) {
      throw Error(str("[train] --objective must be auto, clm, mlm, seq2seq or classify, got ",
                      o.objective));
    }
  }
  ScheduleConfig s{o.lr, o.warmup, o.steps, o.decay, o.min_lr_ratio};
  validate(s);
  validate(AdamWConfig{o.beta1, o.beta2, o.eps, o.weight_decay});
}

namespace {

Choice<Objective> objective_for(const TrainOptions& o, const ModelConfig& c) {
  const Choice<Objective> obj =
      o.objective == "auto" ? default_objective(c.arch) : Choice<Objective>::parse(o.objective);
  const Choice<Arch> need = obj == Objective::Mlm        ? Arch::Encoder
                            : obj == Objective::Clm      ? Arch::Decoder
                            : obj == Objective::Classify ? Arch::Vit
                                                         : Arch::EncoderDecoder;
  PF_CHECK(c.arch == need, "[train] objective ", obj, " needs an ", need, " model, the config has ",
           c.arch);
  return obj;
}

struct Batch {
  TokenBatch in, tgt, src;
};

// One batch for the objective from B windows (inputs/targets of length L, row-major).
Batch make_batch(Objective obj, const std::vector<int32_t>& inputs,
                 const std::vector<int32_t>& targets, int64_t B, int64_t L, const Tokenizer& tok,
                 int64_t vocab, uint64_t& rng) {
  Batch b;
  for (int64_t r = 0; r < B; ++r) {
    std::vector<int32_t> in(inputs.begin() + r * L, inputs.begin() + (r + 1) * L);
    std::vector<int32_t> tg(targets.begin() + r * L, targets.begin() + (r + 1) * L);
    if (obj == Objective::Clm) {
      b.in.push_back(std::move(in));
      b.tgt.push_back(std::move(tg));
    } else if (obj == Objective::Mlm) {  // BERT masking: 15% chosen; 80% mask, 10% random, 10% keep
      std::vector<int32_t> t(static_cast<size_t>(L), -1);
      for (int64_t i = 0; i < L; ++i) {
        const double u = uniform01(rng);
        if (u >= 0.15) continue;
        t[i] = in[i];
        const double v = uniform01(rng);
        if (v < 0.8)
          in[i] = tok.mask_id();
        else if (v < 0.9)
          in[i] = static_cast<int32_t>(splitmix64(rng) %
                                       static_cast<uint64_t>(std::min<int64_t>(vocab, 256)));
      }
      b.in.push_back(std::move(in));
      b.tgt.push_back(std::move(t));
    } else {  // seq2seq: window w of L+1 tokens; encoder reads w[0..h), decoder predicts w[h..]
      std::vector<int32_t> w = in;
      w.push_back(tg.back());
      const int64_t h = (L + 1) / 2;
      b.src.emplace_back(w.begin(), w.begin() + h);
      std::vector<int32_t> din{tok.bos_id()};
      din.insert(din.end(), w.begin() + h, w.end() - 1);
      b.in.push_back(std::move(din));
      b.tgt.emplace_back(w.begin() + h, w.end());
    }
  }
  return b;
}

// Input positions each stack sees for windows of L + 1 tokens (make_batch): clm and mlm feed L
// tokens; seq2seq feeds the encoder the first h = (L+1)/2 and the decoder <bos> plus the next
// L - h (L + 1 - h in all).
std::vector<std::pair<std::string, int64_t>> input_positions(Objective obj, int64_t L) {
  if (obj == Objective::Seq2seq) {
    const int64_t h = (L + 1) / 2;
    return {{"encoder", h}, {"decoder", L + 1 - h}};
  }
  return {{obj == Objective::Clm ? "decoder" : "encoder", L}};
}

// Longest --seq-len whose inputs fit `positions` positions in every stack.
int64_t max_seq_len(Objective obj, int64_t positions) {
  return obj == Objective::Seq2seq ? 2 * positions - 1 : positions;
}

std::string hex64(uint64_t v) {
  char buf[20];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

class MetricsLog {
 public:
  explicit MetricsLog(const std::string& path) : path_(path) {}
  // Keeps only records with step <= keep_step (a resumed run rewrites what followed).
  void truncate_after(int64_t keep_step) {
    std::ifstream in(path_);
    std::string line, kept;
    while (std::getline(in, line)) {
      try {
        json j = json::parse(line);
        if (j.value("step", int64_t{0}) <= keep_step) kept += line + "\n";
      } catch (const json::exception&) {
        // a torn last line from a crash: drop it
      }
    }
    atomic_write_file(path_, kept);
  }
  void append(const json& j) {
    const std::string line = j.dump() + "\n";
    const int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    PF_CHECK(fd >= 0, "[train] cannot open ", path_, " for appending");
    const ssize_t w = ::write(fd, line.data(), line.size());
    ::close(fd);
    PF_CHECK(w == static_cast<ssize_t>(line.size()), "[train] short write to ", path_);
  }

 private:
  std::string path_;
};

}  // namespace

std::string fmt_duration(double s) {
  char buf[32];
  if (s < 0 || !std::isfinite(s)) return "?";
  const long t = static_cast<long>(s + 0.5);
  if (t >= 3600)
    std::snprintf(buf, sizeof buf, "%ldh%02ldm", t / 3600, (t / 60) % 60);
  else
    std::snprintf(buf, sizeof buf, "%ldm%02lds", t / 60, t % 60);
  return buf;
}

std::vector<std::vector<int32_t>> document_segments(const std::vector<std::vector<int32_t>>& in,
                                                    int32_t eos) {
  std::vector<std::vector<int32_t>> seg;
  for (const auto& row : in) {
    seg.emplace_back(row.size());
    int32_t id = 0;
    for (size_t t = 0; t < row.size(); ++t) {
      seg.back()[t] = id;
      if (row[t] == eos) ++id;
    }
  }
  return seg;
}

Objective default_objective(Arch arch) {
  switch (arch) {
    case Arch::Encoder:
      return Objective::Mlm;
    case Arch::Decoder:
      return Objective::Clm;
    case Arch::EncoderDecoder:
      return Objective::Seq2seq;
    case Arch::Vit:
      return Objective::Classify;
  }
  return Objective::Clm;
}

// Loss, perplexity and bits per byte of `model` over `windows` (objective-aware).
Evaluation evaluate_windows(
    const Transformer& model, Objective obj,
    const std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>>& windows,
    const Tokenizer& tok, bool pack_documents) {
  PF_CHECK(!pack_documents || obj == Objective::Clm || obj == Objective::Mlm,
           "[train] --pack-documents is for the clm and mlm objectives, not ",
           Choice<Objective>(obj).name());
  std::vector<double> bytes_of(static_cast<size_t>(tok.vocab_size()));
  for (int64_t t = 0; t < tok.vocab_size(); ++t)
    bytes_of[t] = static_cast<double>(tok.decode({static_cast<int32_t>(t)}).size());
  double nats = 0, bytes = 0;
  int64_t count = 0;
  uint64_t rng = 12345;  // fixed masking for MLM evaluation
  for (const auto& [in, tg] : windows) {
    const int64_t L = static_cast<int64_t>(in.size());
    if (obj == Objective::Seq2seq && L < 2) continue;
    Batch b = make_batch(obj, in, tg, 1, L, tok, model.config().vocab_size, rng);
    ForwardOptions fo;
    if (obj == Objective::Seq2seq) fo.src = &b.src;
    const TokenBatch seg =
        pack_documents ? document_segments(TokenBatch{in}, tok.eos_id()) : TokenBatch{};
    if (pack_documents) fo.segments = &seg;  // from the unmasked window (mlm masks <eos> too)
    Transformer::Loss l = model.loss(b.in, b.tgt, fo);
    nats += l.loss * static_cast<double>(l.count);
    count += l.count;
    for (int32_t t : b.tgt[0])
      if (t >= 0 && t < tok.vocab_size()) bytes += bytes_of[t];
  }
  Evaluation e;
  e.tokens = count;
  if (count > 0) {
    e.loss = nats / count;
    e.ppl = std::exp(e.loss);
    e.bpb = bytes > 0 ? nats / std::log(2.0) / bytes : 0;
  }
  return e;
}

ClassifyEval evaluate_images(const Transformer& model, const ImageSet& set,
                             const std::vector<int64_t>& rows, int64_t batch, bool flip_tta) {
  const int64_t K = model.config().num_classes;
  ClassifyEval e;
  e.confusion.assign(static_cast<size_t>(K * K), 0);
  double nats = 0;
  std::vector<int32_t> labels;
  std::vector<double> prob(static_cast<size_t>(K));
  // softmax of a logits row, added into prob with weight w
  const auto add_softmax = [&](const float* z, double w) {
    const double m = *std::max_element(z, z + K);
    double s = 0;
    for (int64_t k = 0; k < K; ++k) s += std::exp(double(z[k]) - m);
    for (int64_t k = 0; k < K; ++k) prob[k] += w * std::exp(double(z[k]) - m) / s;
  };
  for (size_t i0 = 0; i0 < rows.size(); i0 += static_cast<size_t>(batch)) {
    const std::vector<int64_t> part(rows.begin() + i0,
                                    rows.begin() + std::min(rows.size(), i0 + batch));
    Tensor images = set.gather(part, &labels);
    const Tensor logits = model.classify(images);
    Tensor flipped_logits;
    if (flip_tta) {  // the same images mirrored left-right
      const int64_t C = images.dim(1), H = images.dim(2), W = images.dim(3);
      float* p = images.data<float>();
      for (int64_t r = 0; r < images.dim(0) * C * H; ++r) std::reverse(p + r * W, p + (r + 1) * W);
      flipped_logits = model.classify(images);
    }
    for (size_t b = 0; b < part.size(); ++b) {
      PF_CHECK(labels[b] >= 0 && labels[b] < K, "[eval] label ", labels[b], " outside [0, ", K,
               ")");
      std::fill(prob.begin(), prob.end(), 0.0);
      add_softmax(logits.data<float>() + b * K, flip_tta ? 0.5 : 1.0);
      if (flip_tta) add_softmax(flipped_logits.data<float>() + b * K, 0.5);
      const int64_t pred = std::max_element(prob.begin(), prob.end()) - prob.begin();
      nats -= std::log(std::max(prob[labels[b]], 1e-300));
      ++e.confusion[labels[b] * K + pred];
    }
  }
  e.count = static_cast<int64_t>(rows.size());
  int64_t right = 0;
  for (int64_t k = 0; k < K; ++k) {
    int64_t n = 0;
    for (int64_t p = 0; p < K; ++p) n += e.confusion[k * K + p];
    right += e.confusion[k * K + k];
    e.class_accuracy.push_back(n ? double(e.confusion[k * K + k]) / double(n) : 0.0);
  }
  if (e.count) e.loss = nats / double(e.count), e.accuracy = double(right) / double(e.count);
  return e;
}

namespace {

// Everything a run holds between steps: the model and its optimizer, the data and its sampler,
// the RNG and counters a checkpoint saves (exact resume), and the metrics log.
struct Run {
  TrainOptions o;
  std::string dir;
  ModelConfig cfg;
  std::unique_ptr<Tokenizer> tok;
  Choice<Objective> obj;
  Transformer model;
  Corpus corpus;
  std::optional<WindowSampler> sampler;  // text objectives
  std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> val_windows;
  AdamW opt;
  MetricsLog metrics;
  uint64_t rng = 0;
  int64_t step = 0, skipped = 0, tokens_seen = 0;  // classify: tokens_seen counts images
  // classify (arch vit): the images, their split, the training batcher
  ImageSet images = {};
  ImageSplit split = {};
  std::unique_ptr<ImageBatcher> batcher = {};
  std::vector<ParamStore> micro_grads = {};  // --accum-parallel: one gradient buffer each
  bool vit() const { return obj == Objective::Classify; }
};

// A classify run: images (--data specs, all of the model's size), split, batcher.
std::unique_ptr<Run> open_vit_run(const TrainOptions& o, const ModelConfig& cfg,
                                  std::unique_ptr<Tokenizer> tok) {
  PF_CHECK(o.data.size() == 1,
           "[train] arch vit takes one --data spec (fashion-mnist, "
           "idx:IMAGES,LABELS or png:DIR,LABELS), got ",
           o.data.size());
  ImageSet images = load_image_data(o.data[0], cfg.channels, o.max_images);
  PF_CHECK(images.H == cfg.image_h && images.W == cfg.image_w, "[train] the images are ", images.H,
           "x", images.W, ", the config's image_size is ", cfg.image_h, "x", cfg.image_w);
  PF_CHECK(images.num_classes() <= cfg.num_classes, "[train] the data has label ",
           images.num_classes() - 1, ", the config's num_classes is ", cfg.num_classes);
  Transformer model = Transformer::random_init(cfg, o.seed);
  AdamW opt(model.param_specs(), AdamWConfig{o.beta1, o.beta2, o.eps, o.weight_decay});
  auto run = std::unique_ptr<Run>(new Run{o,
                                          o.out_dir,
                                          cfg,
                                          std::move(tok),
                                          Objective::Classify,
                                          std::move(model),
                                          {},
                                          std::nullopt,
                                          {},
                                          std::move(opt),
                                          MetricsLog(o.out_dir + "/metrics.jsonl")});
  run->images = std::move(images);
  run->split = split_images(run->images.n, o.val_fraction, o.seed);
  run->batcher = std::make_unique<ImageBatcher>(
      run->images, run->split.train, o.seed,
      Augment{o.crop_pad, o.flip, o.erase, o.mixup, o.cutmix, o.mix_prob});
  return run;
}

// The config and tokenizer of a new run (from the options) or of the run being resumed; checks
// that they fit each other and the objective's sequence length.
std::unique_ptr<Run> open_run(const TrainOptions& o, const std::string& resume_ckpt) {
  const std::string dir = o.out_dir;
  ModelConfig cfg = load_config(resume_ckpt.empty() ? o.config_path : dir + "/config.json");
  std::unique_ptr<Tokenizer> tok =
      resume_ckpt.empty() && !o.tokenizer_dir.empty()
          ? load_tokenizer(o.tokenizer_dir)
          : (resume_ckpt.empty() ? make_byte_tokenizer() : load_tokenizer(dir));
  const Choice<Objective> obj = objective_for(o, cfg);
  if (obj == Objective::Classify) return open_vit_run(o, cfg, std::move(tok));
  PF_CHECK(cfg.vocab_size >= tok->vocab_size(), "[train] the config's vocab_size (", cfg.vocab_size,
           ") is smaller than the tokenizer's vocabulary (", tok->vocab_size(), ")");
  PF_CHECK(cfg.head == Head::Lm, "[train] training needs an LM head (config head: lm)");
  const int64_t L = o.seq_len;
  Transformer model = Transformer::random_init(cfg, o.seed);
  if (o.pack_documents) {  // refused before any data is read
    PF_CHECK(obj == Objective::Clm || obj == Objective::Mlm,
             "[train] --pack-documents is for the clm and mlm objectives, not ", obj,
             " (its windows are split between encoder and decoder)");
    const Attention& at = *model.attention(obj == Objective::Clm);
    PF_CHECK(at.caps().key_window, "[train] --pack-documents masks attention across documents; ",
             "attention '", at.name(), "' takes no segment mask (use softmax)");
  }
  // Windows hold L + 1 tokens, but the last one is only ever a target: count input positions.
  for (const auto& [stack, n] : input_positions(obj, L)) {
    const int64_t mp = model.position(stack == "decoder")->max_position();
    PF_CHECK(mp < 0 || n <= mp + 1, "[train] --seq-len ", L, " feeds ", n, " positions to the ",
             stack, " (", obj, " objective) but its position table has max_len ", mp + 1,
             " (positions 0..", mp, "); use --seq-len <= ", max_seq_len(obj, mp + 1));
  }
  std::vector<std::string> files = o.data;
  if (files.size() == 1 && files[0] == "default") files = default_corpus_files();
  Corpus corpus = load_corpus(files, *tok, o.val_fraction, o.seed);
  WindowSampler sampler(corpus.train_docs, L, o.seed);
  AdamW opt(model.param_specs(), AdamWConfig{o.beta1, o.beta2, o.eps, o.weight_decay});
  auto run = std::unique_ptr<Run>(new Run{o,
                                          dir,
                                          cfg,
                                          std::move(tok),
                                          obj,
                                          std::move(model),
                                          std::move(corpus),
                                          std::move(sampler),
                                          {},
                                          std::move(opt),
                                          MetricsLog(dir + "/metrics.jsonl")});
  run->rng = o.seed ^ 0x5deece66dull;
  if (run->corpus.val_tokens >= 2)
    run->val_windows = eval_windows(run->corpus.val_docs, L, o.eval_windows);
  else if (o.progress)
    std::fprintf(stderr,
                 "train: note: no validation documents (the data has too few documents); "
                 "validation is skipped\n");
  return run;
}

// A new run writes its directory (model, tokenizer, options, empty metrics); a resumed one
// restores the weights, optimizer, data position, RNG and counters of its checkpoint.
void start_or_resume(Run& r, const std::string& resume_ckpt) {
  if (resume_ckpt.empty()) {
    std::error_code ec;
    fs::create_directories(r.dir, ec);
    PF_CHECK(!ec, "[train] cannot create ", r.dir, ": ", ec.message());
    PF_CHECK(latest_checkpoint(r.dir).empty(), "[train] ", r.dir,
             " already holds a training run; continue it with --resume ", r.dir,
             " or choose another --out");
    r.model.save(r.dir);
    r.tok->save(r.dir);
    atomic_write_file(r.dir + "/train.json", options_to_json(r.o).dump(2) + "\n");
    atomic_write_file(r.dir + "/metrics.jsonl", "");
    return;
  }
  LoadedCheckpoint ck = load_checkpoint(resume_ckpt);
  r.model.set_weights(ck.params, resume_ckpt + "/model.safetensors");
  r.opt.load_state(ck.optimizer, ck.optimizer_steps);
  r.step = ck.state.step;
  if (r.vit())
    r.batcher->set_state(ck.state.data_state);
  else
    r.sampler->set_state(ck.state.data_state);
  r.rng = std::stoull(ck.state.rng_state, nullptr, 16);
  r.skipped = ck.state.extra.value("skipped", int64_t{0});
  r.tokens_seen = ck.state.extra.value("tokens_seen", int64_t{0});
  r.metrics.truncate_after(r.step);
}

void save_run_checkpoint(Run& r) {
  TrainState st;
  st.step = r.step;
  st.rng_state = hex64(r.rng);
  st.data_state = r.vit() ? r.batcher->state() : r.sampler->state();
  st.extra = {
      {"skipped", r.skipped}, {"tokens_seen", r.tokens_seen}, {"options", options_to_json(r.o)}};
  std::vector<std::string> warnings;
  save_checkpoint(r.dir, st, r.model.params(), r.opt, static_cast<int>(r.o.keep_last), &warnings);
  r.model.save(r.dir);  // the run directory is always a loadable model directory
  for (const auto& w : warnings) std::fprintf(stderr, "train: warning: %s\n", w.c_str());
}

// dropout masks keyed by (seed, step, micro-batch): a resumed run draws the same ones
void regularise(const Run& r, ForwardOptions& fo, int64_t a) {
  const TrainOptions& o = r.o;
  uint64_t s =
      o.seed ^ 0x6a09e667f3bcc909ull ^
      (static_cast<uint64_t>(r.step) * static_cast<uint64_t>(o.accum) + static_cast<uint64_t>(a)) *
          0x9e3779b97f4a7c15ull;
  fo.dropout_seed = splitmix64(s);
  fo.label_smoothing = static_cast<float>(o.label_smoothing);
}

// Documents of a packed text micro-batch (they end at <eos> in the unmasked windows).
TokenBatch packed_segments(const Run& r, const std::vector<int32_t>& inputs) {
  TokenBatch raw;
  for (int64_t i = 0; i < r.o.batch; ++i)
    raw.emplace_back(inputs.begin() + i * r.o.seq_len, inputs.begin() + (i + 1) * r.o.seq_len);
  return document_segments(raw, r.tok->eos_id());
}

// One micro-batch's inputs and forward options (the options point into it: it does not move
// once drawn).
struct MicroBatch {
  Tensor images;                        // classify
  BatchMix mix;                         // classify: mixup / CutMix partners
  std::vector<int32_t> inputs, labels;  // labels: classify's classes or the text targets
  Batch batch;                          // text objectives
  TokenBatch segments;                  // --pack-documents
  ForwardOptions fo;
};

// Draws micro-batch a of this step from the run's data streams (in micro-batch order: the
// batcher, sampler and MLM masks are sequential).
void draw_micro_batch(Run& r, int64_t a, MicroBatch& m) {
  const TrainOptions& o = r.o;
  regularise(r, m.fo, a);
  if (r.vit()) {
    m.images = r.batcher->next(o.batch, m.labels, &m.mix);
    if (!m.mix.partner_labels.empty())
      m.fo.mix_labels = &m.mix.partner_labels, m.fo.mix_lambda = m.mix.lambda;
    r.tokens_seen += m.images.dim(0);
    return;
  }
  r.sampler->next_batch(o.batch, m.inputs, m.labels);
  m.batch =
      make_batch(r.obj, m.inputs, m.labels, o.batch, o.seq_len, *r.tok, r.cfg.vocab_size, r.rng);
  if (r.obj == Objective::Seq2seq) m.fo.src = &m.batch.src;
  if (o.pack_documents) m.segments = packed_segments(r, m.inputs), m.fo.segments = &m.segments;
}

// Forward + backward of one micro-batch, its gradient scaled by 1/accum and added to grads.
double run_micro_batch(const Run& r, const MicroBatch& m, ParamStore& grads) {
  const float scale = 1.0f / static_cast<float>(r.o.accum);
  return r.vit()
             ? r.model.classify_loss_and_grad(m.images, m.labels, grads, scale, nullptr, m.fo).loss
             : r.model.loss_and_grad(m.batch.in, m.batch.tgt, grads, m.fo, scale).loss;
}

// --accum-parallel: the step's micro-batches are drawn in order (the same data, masks and mixing
// as the serial loop), then run side by side, one per thread, each into its own gradient buffer
// (the ops inside see an active parallel region and stay on their thread); grads = the buffers
// summed in micro-batch order, element by element, so the result does not depend on the threads.
double accumulate_side_by_side(Run& r, ParamStore& grads) {
  const int64_t A = r.o.accum;
  while (static_cast<int64_t>(r.micro_grads.size()) < A)
    r.micro_grads.push_back(r.model.zero_grads());
  std::vector<MicroBatch> mbs(static_cast<size_t>(A));
  for (int64_t a = 0; a < A; ++a) draw_micro_batch(r, a, mbs[a]);
  std::vector<double> losses(static_cast<size_t>(A), 0.0);
  std::exception_ptr failed;
  const int nt = static_cast<int>(std::min<int64_t>(A, omp_get_max_threads()));
#pragma omp parallel for schedule(static, 1) num_threads(nt)
  for (int64_t a = 0; a < A; ++a) {
    try {
      ParamStore& g = r.micro_grads[static_cast<size_t>(a)];
      for (auto& [name, t] : g.all()) std::memset(t.raw(), 0, t.nbytes());
      losses[a] = run_micro_batch(r, mbs[a], g);
    } catch (...) {
#pragma omp critical(posformer_accum_error)
      if (!failed) failed = std::current_exception();
    }
  }
  if (failed) std::rethrow_exception(failed);
  for (auto& [name, t] : grads.all()) {
    float* dst = t.data<float>();
    std::vector<const float*> src(static_cast<size_t>(A));
    for (int64_t a = 0; a < A; ++a) src[a] = r.micro_grads[a].f32(name);
    const int64_t n = t.numel();
#pragma omp parallel for schedule(static) if (n >= (int64_t{1} << 16))
    for (int64_t i = 0; i < n; ++i) {
      float acc = src[0][i];
      for (int64_t a = 1; a < A; ++a) acc += src[a][i];
      dst[i] = acc;
    }
  }
  double loss_sum = 0;
  for (int64_t a = 0; a < A; ++a) loss_sum += losses[a] / static_cast<double>(A);
  return loss_sum;
}

// Forward + backward of --accum micro-batches into grads (zeroed by the caller); the mean loss.
double accumulate_gradients(Run& r, ParamStore& grads) {
  // weights packed for the gemms (forward and dx); params() after the last update dropped them
  if (!r.model.weights_packed()) r.model.pack_weights(true);
  if (r.o.accum_parallel) return accumulate_side_by_side(r, grads);
  double loss_sum = 0;
  for (int64_t a = 0; a < r.o.accum; ++a) {
    MicroBatch m;
    draw_micro_batch(r, a, m);
    loss_sum += run_micro_batch(r, m, grads) / static_cast<double>(r.o.accum);
  }
  return loss_sum;
}

// Clips and applies the update when loss and gradients are finite; otherwise counts a skipped
// step or stops (--on-nonfinite). Returns the gradient norm (0 when skipped).
double apply_update(Run& r, ParamStore& grads, double loss, double lr) {
  const TrainOptions& o = r.o;
  // the norm's parallel pass decides finiteness (all_finite alone was a serial pass over every
  // gradient each step, the other thread waiting)
  const std::optional<double> norm = std::isfinite(loss) ? finite_grad_norm(grads) : std::nullopt;
  if (norm) {
    const double gnorm = o.clip > 0 ? clip_grad_norm(grads, o.clip, *norm) : *norm;
    r.opt.step(r.model.params(), grads, lr);
    return gnorm;
  }
  ++r.skipped;
  // the step being taken, counted from 1 like the progress line and metrics.jsonl (r.step counts
  // the steps done; it said "step 1" for the second step)
  const int64_t step = r.step + 1;
  PF_CHECK(o.on_nonfinite == "skip", "[train] non-finite loss or gradient at step ", step,
           " (loss ", loss, "); stopping as --on-nonfinite stop asks. Lower --lr or set --clip.");
  std::fprintf(stderr,
               "\ntrain: non-finite loss or gradient at step %lld, update skipped (%lld so far)\n",
               (long long)step, (long long)r.skipped);
  return 0;
}

// Validation loss, perplexity and bits per byte into the metrics (and on stderr).
void evaluate_run(Run& r, TrainResult& res, bool tty) {
  if (r.vit()) {
    if (r.split.val.empty()) return;
    const ClassifyEval e = evaluate_images(r.model, r.images, r.split.val, 64);
    res.val_loss = e.loss;
    r.metrics.append({{"step", r.step},
                      {"val_loss", e.loss},
                      {"val_acc", e.accuracy},
                      {"val_class_acc", e.class_accuracy}});
    if (r.o.progress)
      std::fprintf(stderr, "%sstep %lld  val loss %.4f  accuracy %.2f%% (%lld images)\n",
                   tty ? "\n" : "", (long long)r.step, e.loss, 100.0 * e.accuracy,
                   (long long)e.count);
    return;
  }
  if (r.val_windows.empty()) return;
  Evaluation e = evaluate_windows(r.model, r.obj, r.val_windows, *r.tok, r.o.pack_documents);
  res.val_loss = e.loss;
  r.metrics.append(
      {{"step", r.step}, {"val_loss", e.loss}, {"val_ppl", e.ppl}, {"val_bpb", e.bpb}});
  if (r.o.progress)
    std::fprintf(stderr, "%sstep %lld  val loss %.4f  ppl %.2f  bits/byte %.3f\n", tty ? "\n" : "",
                 (long long)r.step, e.loss, e.ppl, e.bpb);
}

TrainResult run_training(TrainOptions o, const std::string& resume_ckpt,
                         const std::atomic<bool>* stop) {
  validate(o);
  set_threads(o.threads);
  std::unique_ptr<Run> run = open_run(o, resume_ckpt);
  Run& r = *run;
  start_or_resume(r, resume_ckpt);
  r.model.set_matmul_precision(ops::parse_precision(o.precision, "[train] --precision"));
  const int64_t L = o.seq_len;
  const ScheduleConfig sched{o.lr, o.warmup, o.steps, o.decay, o.min_lr_ratio};
  const bool tty = o.progress && isatty(STDERR_FILENO);
  const int64_t print_every = std::max<int64_t>(1, o.steps / 20);
  if (o.progress)
    std::fprintf(
        stderr,
        r.vit() ? "train: %s %s model, %s objective, %lld train / %lld val images, batch %lld "
                  "(%lld px) x accum %lld, %d threads, %s matmuls, steps %lld..%lld\n"
                : "train: %s %s model, %s objective, %lld train / %lld val tokens, batch %lld x "
                  "%lld x "
                  "accum %lld, %d threads, %s matmuls, steps %lld..%lld\n",
        r.cfg.arch.name(), r.cfg.position.type.c_str(), r.obj.name(),
        (long long)(r.vit() ? static_cast<int64_t>(r.split.train.size()) : r.corpus.train_tokens),
        (long long)(r.vit() ? static_cast<int64_t>(r.split.val.size()) : r.corpus.val_tokens),
        (long long)o.batch, (long long)(r.vit() ? r.cfg.image_h : L), (long long)o.accum,
        num_threads(), o.precision.c_str(), (long long)r.step, (long long)o.steps);
  if (o.progress && o.precision == "bf16" && !ops::bf16_matmul_native())
    std::fprintf(stderr,
                 "train: note: oneDNN has no bf16 matmul kernel on this CPU; the bf16 products go "
                 "through the fp32 gemm (same results, no speed-up)\n");

  TrainResult res;
  auto t_start = std::chrono::steady_clock::now();
  int64_t tokens_this_run = 0;
  const int64_t first_step = r.step;
  ParamStore grads = r.model.zero_grads();  // allocated once, zeroed in place every step
  bool grads_dirty = false;
  while (r.step < o.steps) {
    if ((stop && stop->load()) || (o.stop_after >= 0 && r.step - first_step >= o.stop_after)) {
      res.interrupted = true;
      break;
    }
    // performer: fresh random features every redraw_every steps, drawn from (seed, step), so a
    // resumed run (its checkpoint holds the features in use) continues exactly
    const int64_t redraw = r.model.config().attention.redraw_every;
    if (redraw > 0 && r.step > 0 && r.step % redraw == 0)
      r.model.redraw_buffers(static_cast<uint64_t>(r.step));
    const double lr = lr_at(r.step, sched);
    if (grads_dirty)
      for (auto& [name, g] : grads.all()) std::memset(g.raw(), 0, g.nbytes());
    grads_dirty = true;
    const int64_t before = r.tokens_seen;  // classify: images counted by accumulate_gradients
    const double loss = accumulate_gradients(r, grads);
    const double gnorm = apply_update(r, grads, loss, lr);
    const int64_t step_tokens = r.vit() ? r.tokens_seen - before : o.accum * o.batch * L;
    ++r.step;
    if (!r.vit()) r.tokens_seen += step_tokens;
    tokens_this_run += step_tokens;
    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    const double tps = tokens_this_run / std::max(elapsed, 1e-9);
    res.last_loss = loss;
    res.tokens_per_s = tps;
    res.images = r.vit();
    r.metrics.append({{"step", r.step},
                      {"loss", loss},  // NaN/inf are written as null
                      {"lr", lr},
                      {"grad_norm", gnorm},
                      {r.vit() ? "images_per_s" : "tokens_per_s", tps},
                      {"tokens", r.tokens_seen},
                      {"skipped", r.skipped}});
    if (o.progress && (tty || r.step % print_every == 0 || r.step == o.steps)) {
      const double eta = (o.steps - r.step) * (elapsed / std::max<int64_t>(1, r.step - first_step));
      std::fprintf(stderr, "%sstep %lld/%lld  loss %.4f  lr %.2e  %.0f %s  ETA %s%s",
                   tty ? "\r" : "", (long long)r.step, (long long)o.steps, loss, lr, tps,
                   r.vit() ? "img/s" : "tok/s", fmt_duration(eta).c_str(), tty ? "   " : "\n");
      std::fflush(stderr);
    }
    const bool last = r.step == o.steps;
    if ((o.eval_every > 0 && r.step % o.eval_every == 0) || last) evaluate_run(r, res, tty);
    if ((o.ckpt_every > 0 && r.step % o.ckpt_every == 0) || last) save_run_checkpoint(r);
  }
  if (res.interrupted) {
    save_run_checkpoint(r);
    if (o.progress)
      std::fprintf(stderr,
                   "\ntrain: stopped at step %lld; checkpoint saved, continue with --resume %s\n",
                   (long long)r.step, r.dir.c_str());
  } else if (o.progress && tty) {
    std::fprintf(stderr, "\n");
  }
  res.steps_done = r.step;
  res.skipped = r.skipped;
  return res;
}

}  // namespace

TrainResult train(const TrainOptions& opts, const std::atomic<bool>* stop) {
  return run_training(opts, "", stop);
}

TrainResult resume(const std::string& run_dir, int64_t steps_override, int threads, bool progress,
                   const std::atomic<bool>* stop, int64_t stop_after, int pack_documents,
                   const std::string& precision) {
  std::vector<std::string> warnings;
  remove_scratch(run_dir, &warnings);
  for (const auto& w : warnings) std::fprintf(stderr, "resume: %s\n", w.c_str());
  warnings.clear();
  const std::string ck = latest_checkpoint(run_dir, &warnings);
  for (const auto& w : warnings) std::fprintf(stderr, "resume: skipping %s\n", w.c_str());
  PF_CHECK(!ck.empty(), "[train] no complete checkpoint in ", run_dir,
           "/checkpoints to resume from");
  LoadedCheckpoint lc = load_checkpoint(ck);
  PF_CHECK(lc.state.extra.contains("options"), "[train] checkpoint ", ck,
           " has no training options");
  TrainOptions o = options_from_json(lc.state.extra.at("options"));
  o.out_dir = run_dir;
  PF_CHECK(pack_documents < 0 || (pack_documents != 0) == o.pack_documents,
           "[train] --pack-documents ", pack_documents ? "on" : "off", " differs from the run in ",
           run_dir, " (started with it ", o.pack_documents ? "on" : "off",
           "); a run keeps its setting: drop --pack-documents or start a new run");
  PF_CHECK(precision.empty() || precision == o.precision, "[train] --precision ", precision,
           " differs from the run in ", run_dir, " (started with ", o.precision,
           "); a run keeps its precision: drop --precision or start a new run");
  if (steps_override > 0) o.steps = steps_override;
  if (threads > 0) o.threads = threads;
  o.progress = progress;
  o.stop_after = stop_after;
  return run_training(o, ck, stop);
}

}  // namespace posformer
