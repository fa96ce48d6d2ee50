// posformer eval: loss, perplexity and bits per byte at one or more sequence lengths.
#include <cstdio>

#include "common.h"
#include "posformer/core/runtime.h"
#include "posformer/ops/packed_linear.h"
#include "posformer/train/data.h"
#include "posformer/train/tokenizer.h"
#include "posformer/train/trainer.h"

namespace posformer::cli {

Command add_eval(CLI::App& root) {
  auto* app = root.add_subcommand(
      "eval", "loss, perplexity and bits per byte of a model on text, per sequence length");
  struct Opts {
    std::string dir;
    std::vector<std::string> data;
    std::vector<int64_t> lens{256};
    int64_t max_windows = 64;
    int threads = 0;
    MemoryGuard mem;
    RopeOverride rope;
    int64_t max_images = 0;
    std::string confusion, python = "/usr/bin/python3", image_size, tta = "none";
    bool pack = false;
    std::string precision = "f32";
  };
  auto o = std::make_shared<Opts>();
  app->add_option("DIR", o->dir, "model directory (with its tokenizer)")->required();
  app->add_option("--data", o->data, "text files, or 'default' (the default corpus)")->required();
  app->add_option("--seq-len", o->lens,
                  "one or more sequence lengths, e.g. --seq-len 128 512 2048");
  app->add_option("--max-windows", o->max_windows, "windows evaluated per length")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  app->add_option("--max-images", o->max_images, "arch vit: the first N images (0 = all)");
  app->add_option("--confusion", o->confusion,
                  "arch vit: confusion matrix PNG (default DIR/confusion.png; CSV beside it)");
  app->add_option("--python", o->python, "arch vit: python interpreter with matplotlib");
  app->add_flag("--pack-documents", o->pack,
                "each document in a window restarts its positions at 0 and attends only to "
                "itself (as train --pack-documents)");
  app->add_option("--image-size", o->image_size,
                  "arch vit: resize the images to HxW or N x N (bilinear) before scoring");
  app->add_option("--tta", o->tta,
                  "arch vit: test-time augmentation: none, or flip (mean of the softmax of each "
                  "image and its left-right mirror)")
      ->check(CLI::IsMember({"none", "flip"}));
  add_threads_option(app, o->threads);
  add_memory_options(app, o->mem);
  add_rope_scaling_options(app, o->rope);
  add_precision_option(app, o->precision);
  return {app, [=]() {
            set_threads(o->threads);
            ops::parse_precision(o->precision, "[eval] --precision");  // refused early
            check_model_memory("eval", model_dir_config(o->dir), ModelUse::Load, o->mem,
                               o->dir + "/model.safetensors");
            if (model_dir_config(o->dir).is_vit()) {
              PF_CHECK(o->data.size() == 1, "[eval] arch vit takes one --data spec, got ",
                       o->data.size());
              return eval_vit(o->dir, o->data[0], o->max_images,
                              o->confusion.empty() ? o->dir + "/confusion.png" : o->confusion,
                              o->python, o->image_size, o->rope, o->tta == "flip", o->precision);
            }
            PF_CHECK(o->image_size.empty(), "[eval] --image-size applies to arch vit models");
            PF_CHECK(o->tta == "none", "[eval] --tta applies to arch vit models");
            Transformer m = load_model(o->dir, o->rope, "eval");
            apply_inference_precision(m, o->precision, "eval");
            const Attention& at = *m.attention(m.config().has_decoder());
            PF_CHECK(!o->pack || at.caps().key_window, "[eval] --pack-documents masks attention ",
                     "across documents; attention '", at.name(), "' takes no segment mask");
            auto tok = load_tokenizer(o->dir);
            PF_CHECK(m.config().vocab_size >= tok->vocab_size(), "[eval] tokenizer vocabulary (",
                     tok->vocab_size(), ") exceeds the model's vocab_size (", m.config().vocab_size,
                     ")");
            std::vector<std::string> files = o->data;
            if (files.size() == 1 && files[0] == "default") files = default_corpus_files();
            Corpus c = load_corpus(files, *tok, 0.0, 0);
            const Choice<Objective> obj = default_objective(m.config().arch);
            const int64_t max_pos = m.position(m.config().has_decoder())->max_position();
            std::printf("%-10s %10s %12s %10s %10s  (%s, %s objective)\n", "seq_len", "loss",
                        "perplexity", "bits/byte", "tokens", o->dir.c_str(), obj.name());
            for (int64_t L : o->lens) {
              PF_CHECK(L >= 1, "[eval] --seq-len must be >= 1, got ", L);
              if (max_pos >= 0 && L > max_pos + 1) {
                std::printf(
                    "%-10lld %s\n", (long long)L,
                    str("not supported: learned positions end at max_len ", max_pos + 1).c_str());
                continue;
              }
              auto windows = eval_windows(c.train_docs, L, o->max_windows);
              Evaluation e = evaluate_windows(m, obj, windows, *tok, o->pack);
              std::printf("%-10lld %10.4f %12.3f %10.4f %10lld\n", (long long)L, e.loss, e.ppl,
                          e.bpb, (long long)e.tokens);
            }
            return 0;
          }};
}

}  // namespace posformer::cli
