// posformer generate: sample text from a model with a KV cache.
#include <cstdio>

#include "common.h"
#include "posformer/core/runtime.h"
#include "posformer/model/generate.h"
#include "posformer/train/tokenizer.h"

namespace posformer::cli {

Command add_generate(CLI::App& root) {
  auto* app = root.add_subcommand("generate", "generate text after a prompt (KV-cache decoding)");
  struct Opts {
    std::string dir, prompt, src;
    SamplingConfig s;
    bool stream = false, no_cache = false;
    int threads = 0;
  };
  auto o = std::make_shared<Opts>();
  o->s.temperature = 0.8;
  app->add_option("DIR", o->dir, "model directory (with its tokenizer)")->required();
  app->add_option("--prompt", o->prompt, "text to continue (empty: start from <bos>)");
  app->add_option("--src", o->src, "source text for encoder_decoder models");
  app->add_option("--max-new-tokens", o->s.max_new_tokens,
                  "tokens to generate (stops early at <eos>)");
  app->add_option("--temperature", o->s.temperature,
                  "softmax temperature; 0 = greedy (default 0.8)");
  app->add_option("--top-k", o->s.top_k, "sample from the k most likely tokens (0 = off)");
  app->add_option("--top-p", o->s.top_p, "nucleus sampling threshold in (0, 1] (1 = off)");
  app->add_option("--repetition-penalty", o->s.repetition_penalty,
                  "penalise tokens already present (> 1)");
  app->add_option("--seed", o->s.seed, "sampling seed");
  app->add_flag("--stream", o->stream, "print tokens as they are generated");
  app->add_flag("--no-cache", o->no_cache,
                "recompute the whole sequence each step (slow; for checking)");
  add_threads_option(app, o->threads);
  return {app, [=]() {
            set_threads(o->threads);
            Transformer m = Transformer::load(o->dir);
            auto tok = load_tokenizer(o->dir);
            SamplingConfig s = o->s;
            s.use_cache = !o->no_cache;
            s.stop_ids = {tok->eos_id()};
            validate_sampling(s);
            std::vector<int32_t> prompt = tok->encode(o->prompt);
            if (prompt.empty()) prompt = {tok->bos_id()};
            std::vector<int32_t> src;
            if (m.config().arch == "encoder_decoder") {
              src = tok->encode(o->src);
              PF_CHECK(!src.empty(), "[generate] an encoder_decoder model needs --src TEXT");
              prompt.insert(prompt.begin(), tok->bos_id());
            } else {
              PF_CHECK(o->src.empty(), "[generate] --src is only for encoder_decoder models");
            }
            for (int32_t t : prompt)
              PF_CHECK(t < m.config().vocab_size, "[generate] prompt token ", t,
                       " outside the model's vocabulary");
            std::vector<int32_t> produced;
            std::string shown;
            auto on_token = [&](int32_t t) {
              if (!o->stream) return;
              produced.push_back(t);
              const std::string text = tok->decode(produced);
              if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
                std::fwrite(text.data() + shown.size(), 1, text.size() - shown.size(), stdout);
                std::fflush(stdout);
                shown = text;
              }
            };
            std::fwrite(o->prompt.data(), 1, o->prompt.size(), stdout);
            std::vector<int32_t> out =
                generate(m, prompt, s, src.empty() ? nullptr : &src, on_token);
            if (!o->stream) {
              const std::string text = tok->decode(out);
              std::fwrite(text.data(), 1, text.size(), stdout);
            } else {
              const std::string text = tok->decode(out);  // whatever the incremental view held back
              if (text.size() > shown.size())
                std::fwrite(text.data() + shown.size(), 1, text.size() - shown.size(), stdout);
            }
            std::printf("\n");
            return 0;
          }};
}

}  // namespace posformer::cli
