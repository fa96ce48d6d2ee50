// posformer generate: sample text from a model with a KV cache; several prompts
// (--prompts-file) as one left-padded batch.
#include <algorithm>
#include <cstdio>
#include <fstream>

#include "common.h"
#include "posformer/core/runtime.h"
#include "posformer/core/utf8.h"
#include "posformer/model/generate.h"
#include "posformer/ops/packed_linear.h"
#include "posformer/train/tokenizer.h"

namespace posformer::cli {

namespace {
// --prompts-file: one left-padded batch (generate_batch); prints, prompt by prompt, what
// --prompt would print.
int generate_prompts_file(const std::string& dir, const std::string& file, const ModelConfig& c,
                          const Tokenizer& tok, const SamplingConfig& s, const MemoryGuard& mem,
                          const RopeOverride& rope, const std::string& precision) {
  PF_CHECK(c.arch == Arch::Decoder, "[generate] --prompts-file is for decoder models; ", dir,
           " is ", c.arch);
  std::ifstream f(file, std::ios::binary);
  PF_CHECK(f, "[generate] cannot read --prompts-file ", file);
  std::vector<std::string> texts;
  for (std::string line; std::getline(f, line);) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (!line.empty()) texts.push_back(line);
  }
  PF_CHECK(!texts.empty(), "[generate] --prompts-file ", file, " holds no prompts (one per line)");
  std::vector<std::vector<int32_t>> prompts;
  int64_t longest = 0;
  for (const std::string& t : texts) {
    prompts.push_back(tok.encode(t));
    for (int32_t id : prompts.back())
      PF_CHECK(id < c.vocab_size, "[generate] prompt token ", id,
               " outside the model's vocabulary");
    longest = std::max<int64_t>(longest, prompts.back().size());
  }
  const int64_t positions = longest + s.max_new_tokens;
  const uint64_t kv = s.use_cache ? kv_cache_bytes(c, positions, 0) * prompts.size() : 0;
  check_model_memory("generate", c, ModelUse::Load, mem, dir + "/model.safetensors", kv,
                     str("the KV cache of ", prompts.size(), " x ", positions, " positions"));
  Transformer m = load_model(dir, rope, "generate");
  apply_inference_precision(m, precision, "generate");
  const auto outs = generate_batch(m, prompts, s);
  for (size_t i = 0; i < prompts.size(); ++i) {  // as the --prompt path decodes its text
    std::vector<int32_t> seq = prompts[i];
    const size_t fed = tok.decode_bytes(seq).size();
    seq.insert(seq.end(), outs[i].begin(), outs[i].end());
    Utf8StreamDecoder utf8;
    std::string text;
    utf8.feed(texts[i], text);
    const std::string bytes = tok.decode_bytes(seq);
    if (bytes.size() > fed) utf8.feed(std::string_view(bytes).substr(fed), text);
    utf8.finish(text);
    text += "\n";
    std::fwrite(text.data(), 1, text.size(), stdout);
  }
  std::fflush(stdout);
  return 0;
}
}  // namespace

Command add_generate(CLI::App& root) {
  auto* app = root.add_subcommand("generate", "generate text after a prompt (KV-cache decoding)");
  struct Opts {
    std::string dir, prompt, src, prompts_file;
    SamplingConfig s;
    bool stream = false, no_cache = false;
    int threads = 0;
    MemoryGuard mem;
    RopeOverride rope;
    std::string precision = "f32";
  };
  auto o = std::make_shared<Opts>();
  o->s.temperature = 0.8;
  app->add_option("DIR", o->dir, "model directory (with its tokenizer)")->required();
  app->add_option("--prompt", o->prompt, "text to continue (empty: start from <bos>)");
  app->add_option("--src", o->src, "source text for encoder_decoder models");
  app->add_option("--prompts-file", o->prompts_file,
                  "decoder models: one prompt per line (empty lines skipped), decoded as one "
                  "left-padded batch; prints, prompt by prompt, what --prompt would print");
  app->add_option("--max-new-tokens", o->s.max_new_tokens,
                  "tokens to generate (stops early at <eos>)");
  app->add_option("--temperature", o->s.temperature,
                  "softmax temperature; 0 = greedy (default 0.8)");
  app->add_option("--top-k", o->s.top_k, "sample from the k most likely tokens (0 = off)");
  app->add_option("--top-p", o->s.top_p, "nucleus sampling threshold in (0, 1] (1 = off)");
  app->add_option("--repetition-penalty", o->s.repetition_penalty,
                  "penalise tokens already present (> 1)");
  app->add_option("--seed", o->s.seed, "sampling seed");
  app->add_flag("--stream", o->stream,
                "print tokens as they are generated (output as without it: valid UTF-8, a cut "
                "character held until complete, malformed bytes as U+FFFD)");
  app->add_flag("--no-cache", o->no_cache,
                "recompute the whole sequence each step (slow; for checking)");
  add_threads_option(app, o->threads);
  add_memory_options(app, o->mem);
  add_rope_scaling_options(app, o->rope);
  add_precision_option(app, o->precision);
  return {app, [=]() {
            set_threads(o->threads);
            ops::parse_precision(o->precision, "[generate] --precision");  // refused early
            ModelConfig c = model_dir_config(o->dir);
            apply_rope_override(c, o->rope, "generate");  // refused early, before loading
            auto tok = load_tokenizer(o->dir);
            SamplingConfig s = o->s;
            s.use_cache = !o->no_cache;
            s.stop_ids = {tok->eos_id()};
            validate_sampling(s);
            if (!o->prompts_file.empty()) {
              PF_CHECK(o->prompt.empty() && o->src.empty() && !o->stream,
                       "[generate] --prompts-file takes no --prompt, --src or --stream");
              return generate_prompts_file(o->dir, o->prompts_file, c, *tok, s, o->mem, o->rope,
                                           o->precision);
            }
            std::vector<int32_t> prompt = tok->encode(o->prompt);
            if (prompt.empty()) prompt = {tok->bos_id()};
            std::vector<int32_t> src;
            if (c.arch == Arch::EncoderDecoder) {
              src = tok->encode(o->src);
              PF_CHECK(!src.empty(), "[generate] an encoder_decoder model needs --src TEXT");
              prompt.insert(prompt.begin(), tok->bos_id());
            } else {
              PF_CHECK(o->src.empty(), "[generate] --src is only for encoder_decoder models");
            }
            for (int32_t t : prompt)
              PF_CHECK(t < c.vocab_size, "[generate] prompt token ", t,
                       " outside the model's vocabulary");
            const int64_t positions = static_cast<int64_t>(prompt.size()) + s.max_new_tokens;
            const uint64_t kv = s.use_cache ? kv_cache_bytes(c, positions, src.size()) : 0;
            check_model_memory("generate", c, ModelUse::Load, o->mem, o->dir + "/model.safetensors",
                               kv, str("the KV cache of ", positions, " positions"));
            Transformer m = load_model(o->dir, o->rope, "generate");
            apply_inference_precision(m, o->precision, "generate");

            // The prompt as typed, then the new tokens' bytes, through one UTF-8 decoder: a
            // character cut across tokens is held until it completes, malformed bytes become
            // U+FFFD (docs/cli.md). Streamed or not, the output is the same. The new tokens are
            // decoded after the prompt's tokens so that their text is what it is in context
            // (SentencePiece drops the leading space of the first piece only).
            Utf8StreamDecoder utf8;
            std::string text;
            utf8.feed(o->prompt, text);
            auto flush = [&]() {
              std::fwrite(text.data(), 1, text.size(), stdout);
              std::fflush(stdout);
              text.clear();
            };
            std::vector<int32_t> seq = prompt;
            size_t fed = tok->decode_bytes(seq).size();  // bytes of seq's text already fed
            auto feed_new = [&]() {
              const std::string bytes = tok->decode_bytes(seq);
              if (bytes.size() > fed) utf8.feed(std::string_view(bytes).substr(fed), text);
              fed = std::max(fed, bytes.size());
            };
            if (o->stream) flush();
            auto on_token = [&](int32_t t) {
              if (!o->stream) return;
              seq.push_back(t);
              feed_new();
              flush();
            };
            std::vector<int32_t> out =
                generate(m, prompt, s, src.empty() ? nullptr : &src, on_token);
            if (!o->stream) {
              seq.insert(seq.end(), out.begin(), out.end());
              feed_new();
            }
            utf8.finish(text);
            text += "\n";
            flush();
            return 0;
          }};
}

}  // namespace posformer::cli
