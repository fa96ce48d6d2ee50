// posformer forward: run the model on one token sequence, or a batch of sequences of different
// lengths (right-padded, with key padding), and write hidden states and logits.
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
      "run a forward pass; write `hidden` [T, d] and `logits` [T, vocab] to safetensors "
      "(--batch-file: [B, T, d], [B, T, vocab] and `lengths` [B])");
  struct Opts {
    std::string dir, tokens, tokens_file, batch_file, src, src_file, out, segments;
    int64_t pos_offset = 0;
    int threads = 0;
    MemoryGuard mem;
  };
  auto o = std::make_shared<Opts>();
  app->add_option("DIR", o->dir, "model directory")->required();
  auto* t1 = app->add_option("--tokens", o->tokens, "token ids, e.g. \"1 2 3\"");
  auto* t2 =
      app->add_option("--tokens-file", o->tokens_file, "file of whitespace-separated token ids");
  auto* t3 = app->add_option("--batch-file", o->batch_file,
                             "file of token sequences, one per line: run as one batch, "
                             "right-padded to the longest with key padding (each sequence's "
                             "rows equal running it alone)");
  t1->excludes(t2);
  t3->excludes(t1)->excludes(t2);
  app->add_option("--src", o->src, "encoder token ids (encoder_decoder models)");
  app->add_option("--src-file", o->src_file, "file of encoder token ids");
  app->add_option("--segments", o->segments,
                  "document ids of the tokens (--tokens / --tokens-file), e.g. \"0 0 0 1 1\": "
                  "packed documents, each from position 0 and attending only to itself");
  app->add_option("--pos-offset", o->pos_offset, "position of the first token (default 0)")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  app->add_option("--out", o->out, "output .safetensors file")->required();
  add_threads_option(app, o->threads);
  add_memory_options(app, o->mem);
  return {app, [=]() {
            set_threads(o->threads);
            const bool inline_tokens = app->count("--tokens") > 0;
            const bool batch = app->count("--batch-file") > 0;
            PF_CHECK(inline_tokens || batch || app->count("--tokens-file") > 0,
                     "[forward] no input tokens: give --tokens \"1 2 3\", "
                     "--tokens-file FILE or --batch-file FILE");
            TokenBatch toks;
            std::vector<int32_t> lengths;
            ForwardOptions fo;
            if (batch) {
              toks = parse_token_lines(read_file(o->batch_file, 1 << 28), "--batch-file");
              for (const auto& row : toks) lengths.push_back(static_cast<int32_t>(row.size()));
              const size_t T = *std::max_element(lengths.begin(), lengths.end());
              for (auto& row : toks) row.resize(T, 0);  // pad id 0: masked as a key, never read
              fo.lengths = &lengths;
            } else {
              std::string text = inline_tokens ? o->tokens : read_file(o->tokens_file, 1 << 28);
              toks.push_back(parse_token_list(text, inline_tokens ? "--tokens" : "--tokens-file"));
            }
            TokenBatch src, seg;
            fo.pos_offset = o->pos_offset;
            if (!o->segments.empty()) {
              PF_CHECK(!batch, "[forward] --segments goes with --tokens or --tokens-file");
              seg.push_back(parse_token_list(o->segments, "--segments"));
              fo.segments = &seg;
            }
            if (!o->src.empty() || !o->src_file.empty()) {
              PF_CHECK(!batch, "[forward] --batch-file takes no --src (one source for a batch)");
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
            const int64_t B = r.hidden.dim(0), T = r.hidden.dim(1), d = r.hidden.dim(2);
            std::map<std::string, Tensor> out;
            if (batch) {
              out.emplace("hidden", r.hidden);
              if (r.logits.numel()) out.emplace("logits", r.logits);
              Tensor len({B}, DType::I32);
              std::copy(lengths.begin(), lengths.end(), len.data<int32_t>());
              out.emplace("lengths", std::move(len));
            } else {
              out.emplace("hidden", r.hidden.reshape({T, d}));
              if (r.logits.numel()) out.emplace("logits", r.logits.reshape({T, r.logits.dim(2)}));
            }
            save_safetensors(o->out, out, {{"model", o->dir}});
            double mean = 0, sq = 0, n = 0;  // over valid rows only
            const float* hp = r.hidden.data<float>();
            for (int64_t b = 0; b < B; ++b)
              for (int64_t i = 0; i < (batch ? lengths[b] : T) * d; ++i, ++n)
                mean += hp[b * T * d + i], sq += double(hp[b * T * d + i]) * hp[b * T * d + i];
            mean /= n;
            std::printf(
                "forward: %s in %.2f ms (%d threads); hidden [%s%lld, %lld] mean %+.4f std %.4f",
                batch ? ("B=" + std::to_string(B) + " T<=" + std::to_string(T)).c_str()
                      : ("T=" + std::to_string(T)).c_str(),
                ms, num_threads(), batch ? (std::to_string(B) + ", ").c_str() : "", (long long)T,
                (long long)d, mean, std::sqrt(std::max(0.0, sq / n - mean * mean)));
            if (r.logits.numel() && !batch) {
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
