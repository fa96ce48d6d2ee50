// posformer forward: run the model on one token sequence, write hidden states and logits.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>

#include "common.h"
#include "posformer/core/io.h"
#include "posformer/core/runtime.h"
#include "posformer/model/safetensors.h"

namespace posformer::cli {

Command add_forward(CLI::App& root) {
  auto* app = root.add_subcommand(
      "forward",
      "run a forward pass; write `hidden` [T, d] and `logits` [T, vocab] to safetensors");
  struct Opts {
    std::string dir, tokens, tokens_file, src, src_file, out;
    int64_t pos_offset = 0;
    int threads = 0;
    MemoryGuard mem;
  };
  auto o = std::make_shared<Opts>();
  app->add_option("DIR", o->dir, "model directory")->required();
  auto* t1 = app->add_option("--tokens", o->tokens, "token ids, e.g. \"1 2 3\"");
  auto* t2 =
      app->add_option("--tokens-file", o->tokens_file, "file of whitespace-separated token ids");
  t1->excludes(t2);
  app->add_option("--src", o->src, "encoder token ids (encoder_decoder models)");
  app->add_option("--src-file", o->src_file, "file of encoder token ids");
  app->add_option("--pos-offset", o->pos_offset, "position of the first token (default 0)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  app->add_option("--out", o->out, "output .safetensors file")->required();
  add_threads_option(app, o->threads);
  add_memory_options(app, o->mem);
  return {app, [=]() {
            set_threads(o->threads);
            const bool inline_tokens = app->count("--tokens") > 0;
            PF_CHECK(inline_tokens || app->count("--tokens-file") > 0,
                     "[forward] no input tokens: give --tokens \"1 2 3\" or "
                     "--tokens-file FILE");
            std::string text = inline_tokens ? o->tokens : read_file(o->tokens_file, 1 << 28);
            TokenBatch toks{parse_token_list(text, inline_tokens ? "--tokens" : "--tokens-file")};
            TokenBatch src;
            ForwardOptions fo;
            fo.pos_offset = o->pos_offset;
            if (!o->src.empty() || !o->src_file.empty()) {
              std::string s = o->src.empty() ? read_file(o->src_file, 1 << 28) : o->src;
              src.push_back(parse_token_list(s, "--src"));
              fo.src = &src;
            }
            check_model_memory("forward", model_dir_config(o->dir), ModelUse::Load, o->mem,
                               o->dir + "/model.safetensors");
            Transformer m = Transformer::load(o->dir);
            auto t0 = std::chrono::steady_clock::now();
            ForwardOutput r = m.forward(toks, fo);
            double ms =
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                    .count();
            const int64_t T = r.hidden.dim(1), d = r.hidden.dim(2);
            std::map<std::string, Tensor> out{{"hidden", r.hidden.reshape({T, d})}};
            if (r.logits.numel()) out.emplace("logits", r.logits.reshape({T, r.logits.dim(2)}));
            save_safetensors(o->out, out, {{"model", o->dir}});
            double mean = 0, sq = 0;
            const float* hp = r.hidden.data<float>();
            for (int64_t i = 0; i < T * d; ++i) mean += hp[i], sq += double(hp[i]) * hp[i];
            mean /= double(T * d);
            std::printf(
                "forward: T=%lld in %.2f ms (%d threads); hidden [%lld, %lld] mean %+.4f std %.4f",
                (long long)T, ms, num_threads(), (long long)T, (long long)d, mean,
                std::sqrt(std::max(0.0, sq / double(T * d) - mean * mean)));
            if (r.logits.numel()) {
              const int64_t V = r.logits.dim(2);
              const float* last = r.logits.data<float>() + (T - 1) * V;
              int64_t best = std::max_element(last, last + V) - last;
              std::printf("; next-token argmax %lld", (long long)best);
            }
            std::printf(" -> %s\n", o->out.c_str());
            return 0;
          }};
}

}  // namespace posformer::cli
