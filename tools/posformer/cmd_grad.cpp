// posformer grad: loss and every parameter's gradient for one batch, and the losses of a few
// AdamW steps on it, written to safetensors so the engine's backward can be checked from outside.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "common.h"
#include "posformer/core/io.h"
#include "posformer/core/runtime.h"
#include "posformer/model/safetensors.h"
#include "posformer/train/optimizer.h"

namespace posformer::cli {

namespace {
TokenBatch read_rows(const nlohmann::json& j, const char* key, const std::string& path) {
  PF_CHECK(j.contains(key) && j.at(key).is_array(), "[grad] ", path, ": field '", key,
           "' must be a list of token lists");
  TokenBatch b;
  for (const auto& row : j.at(key)) {
    PF_CHECK(row.is_array(), "[grad] ", path, ": '", key, "' rows must be lists of integers");
    std::vector<int32_t> r;
    for (const auto& v : row) {
      PF_CHECK(v.is_number_integer(), "[grad] ", path, ": '", key, "' holds a non-integer ",
               v.dump());
      r.push_back(v.get<int32_t>());
    }
    b.push_back(std::move(r));
  }
  return b;
}
// field: a list of integer class indices (`noun` names one in errors)
std::vector<int32_t> read_labels(const nlohmann::json& j, const char* field,
                                 const std::string& path, const char* noun) {
  PF_CHECK(j.contains(field) && j.at(field).is_array(), "[grad] ", path, ": field '", field,
           "' must be a list of class indices");
  std::vector<int32_t> out;
  for (const auto& v : j.at(field)) {
    PF_CHECK(v.is_number_integer(), "[grad] ", path, ": ", noun, " ", v.dump(),
             " is not an integer");
    out.push_back(v.get<int32_t>());
  }
  return out;
}

// images [B][C][H][W] (nested lists of numbers) -> float32 tensor
Tensor read_images(const nlohmann::json& j, const std::string& path) {
  PF_CHECK(j.contains("images") && j.at("images").is_array() && !j.at("images").empty(), "[grad] ",
           path, ": field 'images' must be a non-empty list [B][C][H][W]");
  const auto& im = j.at("images");
  const auto dim = [&](const nlohmann::json& v, const char* what) {
    PF_CHECK(v.is_array() && !v.empty(), "[grad] ", path, ": images ", what,
             " must be a non-empty list");
    return static_cast<int64_t>(v.size());
  };
  const int64_t B = dim(im, "[B]"), C = dim(im[0], "[C]"), H = dim(im[0][0], "[H]"),
                W = dim(im[0][0][0], "[W]");
  Tensor t({B, C, H, W});
  float* p = t.data<float>();
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t h = 0; h < H; ++h) {
        PF_CHECK(
            dim(im[b], "[C]") == C && dim(im[b][c], "[H]") == H && dim(im[b][c][h], "[W]") == W,
            "[grad] ", path, ": images are not all ", C, "x", H, "x", W);
        for (int64_t w = 0; w < W; ++w) {
          const auto& v = im[b][c][h][w];
          PF_CHECK(v.is_number(), "[grad] ", path, ": image value ", v.dump(), " is not a number");
          *p++ = v.get<float>();
        }
      }
  return t;
}
}  // namespace

Command add_grad(CLI::App& root) {
  auto* app = root.add_subcommand(
      "grad", "loss and gradients for one batch (+ losses of N AdamW steps), to safetensors");
  struct Opts {
    std::string dir, batch, out;
    int64_t steps = 1;
    double lr = 1e-3;
    uint64_t dropout_seed = 0;
    float label_smoothing = 0.0f, mix_lambda = 1.0f;
    AdamWConfig adam;
    int threads = 0;
    MemoryGuard mem;
  };
  auto o = std::make_shared<Opts>();
  app->add_option("DIR", o->dir, "model directory")->required();
  app->add_option(
         "--batch", o->batch,
         "JSON file {\"tokens\": [[...]], \"targets\": [[...]] (-1 = ignore), \"src\": [[...]]}; "
         "arch vit: {\"images\": [B][C][H][W], \"labels\": [B], optional \"mix_labels\": [B]} "
         "(also writes logits [B, K])")
      ->required();
  app->add_option("--out", o->out, "output: grad.<param> tensors and losses [steps] (F64)")
      ->required();
  app->add_option("--steps", o->steps, "AdamW steps on the batch (losses recorded before each)")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}));
  app->add_option("--lr", o->lr, "AdamW learning rate (constant)");
  app->add_option("--weight-decay", o->adam.weight_decay, "AdamW weight decay");
  app->add_option("--beta1", o->adam.beta1, "AdamW beta1");
  app->add_option("--beta2", o->adam.beta2, "AdamW beta2");
  app->add_option("--eps", o->adam.eps, "AdamW epsilon");
  app->add_option("--dropout-seed", o->dropout_seed,
                  "seed of the dropout masks when the config has 'dropout' > 0 (the same masks "
                  "on every step; docs/training.md)");
  app->add_option("--label-smoothing", o->label_smoothing,
                  "label smoothing of the loss, in [0, 1)");
  app->add_option("--mix-lambda", o->mix_lambda,
                  "arch vit with \"mix_labels\" in the batch: targets lambda q(labels) + "
                  "(1 - lambda) q(mix_labels) (mixup / CutMix; docs/training.md)");
  add_threads_option(app, o->threads);
  add_memory_options(app, o->mem);
  return {app, [=]() {
            set_threads(o->threads);
            check_model_memory("grad", model_dir_config(o->dir), ModelUse::Train, o->mem);
            Transformer m = Transformer::load(o->dir);
            nlohmann::json j;
            try {
              j = nlohmann::json::parse(read_file(o->batch, 1 << 28));
            } catch (const nlohmann::json::exception& e) {
              throw Error(str("[grad] ", o->batch, " is not valid JSON: ", e.what()));
            }
            const bool vit = m.config().is_vit();
            Tensor images;
            std::vector<int32_t> labels, mix_labels;
            TokenBatch tokens, targets;
            if (vit) {  // {"images": [B][C][H][W], "labels": [B]}
              images = read_images(j, o->batch);
              labels = read_labels(j, "labels", o->batch, "label");
              if (j.contains("mix_labels"))  // mixup / CutMix partners
                mix_labels = read_labels(j, "mix_labels", o->batch, "mixed-in label");
            } else {
              tokens = read_rows(j, "tokens", o->batch);
              targets = read_rows(j, "targets", o->batch);
            }
            TokenBatch src, seg;
            ForwardOptions fo;
            fo.dropout_seed = o->dropout_seed, fo.label_smoothing = o->label_smoothing;
            PF_CHECK(vit || (mix_labels.empty() && !app->count("--mix-lambda")), "[grad] ",
                     "'mix_labels' and --mix-lambda are for arch vit (image classification)");
            PF_CHECK(!app->count("--mix-lambda") || !mix_labels.empty(), "[grad] --mix-lambda ",
                     "needs 'mix_labels' in ", o->batch);
            if (!mix_labels.empty()) fo.mix_labels = &mix_labels, fo.mix_lambda = o->mix_lambda;
            if (j.contains("src")) {
              src = read_rows(j, "src", o->batch);
              fo.src = &src;
            }
            if (j.contains("segments")) {  // packed documents: [B][T] ids, equal runs
              seg = read_rows(j, "segments", o->batch);
              fo.segments = &seg;
            }
            AdamW opt(m.param_specs(), o->adam);
            std::map<std::string, Tensor> out;
            Tensor losses({o->steps}, DType::F64);
            for (int64_t s = 0; s < o->steps; ++s) {
              ParamStore g = m.zero_grads();
              Tensor logits;
              Transformer::Loss l =
                  vit ? m.classify_loss_and_grad(images, labels, g, 1.0f, &logits, fo)
                      : m.loss_and_grad(tokens, targets, g, fo);
              if (s == 0 && vit) out.emplace("logits", logits);
              losses.data<double>()[s] = l.loss;
              if (s == 0)
                for (auto& [name, t] : g.all()) out.emplace("grad." + name, t);
              opt.step(m.params(), g, o->lr);
            }
            out.emplace("losses", losses);
            save_safetensors(o->out, out);
            std::printf("loss %.8f", losses.data<double>()[0]);
            if (o->steps > 1)
              std::printf(" ... %.8f after %lld AdamW steps", losses.data<double>()[o->steps - 1],
                          (long long)o->steps - 1);
            std::printf(" -> %s\n", o->out.c_str());
            return 0;
          }};
}

}  // namespace posformer::cli
