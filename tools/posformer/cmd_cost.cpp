// posformer cost: parameters, FLOPs, training memory and decode state of a config
// (model/cost.h, docs/cost.md). --measure N runs N real training steps (loss_and_grad and an
// AdamW step, as the trainer's step loop; arch vit: classify_loss_and_grad on random images) and
// reports the measured peak memory growth and the
// median step time next to the prediction.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <tuple>

#include "common.h"
#include "posformer/core/memory.h"
#include "posformer/core/runtime.h"
#include "posformer/model/cost.h"
#include "posformer/train/optimizer.h"

namespace posformer::cli {
namespace {

struct CostArgs {
  std::string config, precision = "fp32", image_size;
  CostOptions opt;
  bool json = false;
  int64_t measure = 0;
  int threads = 0;
};

std::string flops_str(double f) {
  const char* unit[] = {"", "K", "M", "G", "T", "P"};
  int i = 0;
  while (f >= 1000 && i < 5) f /= 1000, ++i;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.3g %s", f, unit[i]);
  return buf;
}

void print_table(const ModelCost& c, const std::string& path) {
  const ModelConfig& m = c.config;
  std::printf("config     %s\n", path.c_str());
  std::printf("model      %s, %lld layers%s, d_model %lld, %lld heads (%lld kv), d_ff %lld, %s\n",
              m.arch.name(), (long long)m.n_layers,
              m.arch == Arch::EncoderDecoder ? " per stack" : "", (long long)m.d_model,
              (long long)m.n_heads, (long long)m.kv_heads(), (long long)m.d_ff,
              m.activation.name());
  std::printf("           position %s, attention %s%s\n", m.position.type.c_str(),
              c.attention.c_str(), m.attention.residual ? " (residual)" : "");
  if (m.is_vit()) {
    const int64_t p = m.patch_size, gh = c.options.image_h / p, gw = c.options.image_w / p;
    std::printf("step       batch %lld images of %lldx%lld (%lldx%lld patches%s = %lld tokens)",
                (long long)c.options.batch, (long long)c.options.image_h,
                (long long)c.options.image_w, (long long)gh, (long long)gw,
                m.cls_token() ? " + CLS" : "", (long long)c.options.seq_len);
  } else {
    std::printf("step       batch %lld x seq-len %lld", (long long)c.options.batch,
                (long long)c.options.seq_len);
  }
  if (m.arch == Arch::EncoderDecoder)
    std::printf(" (encoder src-len %lld)", (long long)c.options.src_len);
  std::printf(", %s, %s\n", c.options.precision.name(), c.options.optimizer.c_str());

  const ParamCounts& p = c.params;
  std::printf("\n%-22s %16s %8s\n", "parameters", "count", "share");
  const std::pair<const char*, int64_t> pc[] = {
      {"embedding", p.embedding}, {"position", p.position},
      {"attention", p.attention}, {"ffn", p.ffn},
      {"norm", p.norm},           {"head", p.head}};
  for (const auto& [k, v] : pc)
    if (v > 0) std::printf("  %-20s %16lld %7.2f%%\n", k, (long long)v, 100.0 * v / p.total());
  std::printf("  %-20s %16lld\n", "total", (long long)p.total());
  if (p.buffers > 0) std::printf("  %-20s %16lld (not trained)\n", "buffers", (long long)p.buffers);

  const double tok = double(c.tokens);
  std::printf("\n%-22s %14s %14s %8s\n", "FLOPs per token", "forward", "training", "share");
  const std::pair<const char*, double FlopSplit::*> parts[] = {
      {"projections (QKV/O)", &FlopSplit::projections},
      {"ffn", &FlopSplit::ffn},
      {"attention (quadratic)", &FlopSplit::attention},
      {"embeddings/head", &FlopSplit::embed_head},
      {"rest (norms, act...)", &FlopSplit::rest}};
  for (const auto& [k, f] : parts)
    std::printf("  %-20s %14s %14s %7.2f%%\n", k, flops_str(c.forward.*f / tok).c_str(),
                flops_str(c.training.*f / tok).c_str(), 100.0 * c.training.*f / c.training.total());
  std::printf("  %-20s %14s %14s\n", "total", flops_str(c.forward.total() / tok).c_str(),
              flops_str(c.training.total() / tok).c_str());
  std::printf("  %-20s %14s %14s   (%lld tokens)\n", "per step",
              flops_str(c.forward.total()).c_str(), flops_str(c.training.total()).c_str(),
              (long long)c.tokens);

  const MemorySplit& mm = c.memory;
  const double P = double(p.total());
  std::printf("\n%-22s %14s %12s\n", "training memory", "bytes", "per param");
  const std::pair<const char*, double> mem[] = {{"weights", mm.weights},
                                                {"gradients", mm.gradients},
                                                {"adamw moments", mm.moments},
                                                {"master copy (fp32)", mm.master},
                                                {"activations (tape)", mm.activations},
                                                {"workspace", mm.workspace},
                                                {"packed weights", mm.packed}};
  for (const auto& [k, v] : mem) {
    if (v == 0 &&
        (std::string(k).rfind("master", 0) == 0 || std::string(k).rfind("packed", 0) == 0))
      continue;
    std::printf("  %-20s %14s", k, format_bytes(v).c_str());
    if (std::string(k) != "activations (tape)" && std::string(k) != "workspace")
      std::printf(" %12.1f", v / P);
    std::printf("\n");
  }
  std::printf("  %-20s %14s %12.1f   (%.1f for the parameter state)\n", "total",
              format_bytes(mm.total()).c_str(), mm.total() / P,
              (mm.weights + mm.gradients + mm.moments + mm.master) / P);

  std::printf("\ndecoding\n");
  if (m.is_vit())
    std::printf("  not applicable (arch vit classifies images; it does not generate)\n");
  else if (!m.has_decoder())
    std::printf("  no decoder (encoder models do not generate)\n");
  else if (c.kv_bytes_per_token > 0)
    std::printf("  KV cache             %14s per token and sequence\n",
                format_bytes(c.kv_bytes_per_token).c_str());
  else
    std::printf("  recurrent state      %14s per sequence, whatever the length\n",
                format_bytes(c.recurrent_state_bytes).c_str());
  if (c.cross_kv_bytes_per_src_token > 0)
    std::printf("  cross-attention K/V  %14s per source token\n",
                format_bytes(c.cross_kv_bytes_per_src_token).c_str());

  auto at = [](const std::optional<int64_t>& t) {
    return t ? "T = " + std::to_string(*t) : std::string("never (T <= 2^24)");
  };
  std::printf("\nattention (quadratic part) overtakes, batch 1, forward:\n");
  std::printf(
      "  the layers' matmuls (projections + ffn)  at %s   (SPEC 7: T > 6d = %lld non-causal "
      "softmax at d_ff = 4d)\n",
      at(c.crossover_T).c_str(), (long long)(6 * m.d_model));
  std::printf("  everything else                          at %s\n", at(c.crossover_all_T).c_str());
}

nlohmann::json finish_measure(const ModelCost& c, int64_t steps, std::vector<double> secs,
                              bool reset, double rss0);

// A ViT's steps: classify_loss_and_grad on random images (made after the baseline: the
// prediction counts the image batch) and an AdamW step.
std::vector<double> measure_vit(const ModelCost& c, int64_t steps, Transformer& m,
                                ParamStore& grads, AdamW& opt) {
  const ModelConfig& cfg = c.config;
  std::mt19937 rng(1234);
  std::uniform_real_distribution<float> px(0.0f, 1.0f);
  std::uniform_int_distribution<int32_t> cls(0, static_cast<int32_t>(cfg.num_classes - 1));
  Tensor images({c.options.batch, cfg.channels, c.options.image_h, c.options.image_w});
  std::generate_n(images.data<float>(), images.numel(), [&] { return px(rng); });
  std::vector<int32_t> labels(static_cast<size_t>(c.options.batch));
  for (auto& l : labels) l = cls(rng);
  std::vector<double> secs;
  for (int64_t s = 0; s < steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& [name, g] : grads.all()) std::fill_n(g.data<float>(), g.numel(), 0.0f);
    if (!m.weights_packed()) m.pack_weights(true);  // as the trainer does before each step
    m.classify_loss_and_grad(images, labels, grads);
    opt.step(m.params(), grads, 1e-4);
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return secs;
}

// Warms up oneDNN and the thread pool on a tiny ViT (two by two patches), as `bench` does.
void warm_up_vit(const ModelConfig& cfg) {
  ModelConfig tiny = cfg;
  tiny.d_model = tiny.n_heads * 4, tiny.n_layers = 1, tiny.d_ff = 4, tiny.max_len = 8;
  tiny.image_h = tiny.image_w = 2 * cfg.patch_size, tiny.position.rotary_dim = 0;
  tiny.attention.n_features = 2, tiny.attention.n_landmarks = 2;
  const Transformer t = Transformer::random_init(tiny, 0);
  ParamStore g = t.zero_grads();
  Tensor img({1, tiny.channels, tiny.image_h, tiny.image_w});
  std::fill_n(img.data<float>(), img.numel(), 0.5f);
  t.classify_loss_and_grad(img, {0}, g);
}

// Median and fastest seconds per step and peak memory growth of `steps` training steps on random
// tokens (arch vit: random images).
nlohmann::json measure(const ModelCost& c, int64_t steps) {
  const ModelConfig& cfg = c.config;
  if (cfg.is_vit()) {
    warm_up_vit(cfg);
    const bool reset = reset_peak_rss();
    const double rss0 = proc_status_bytes("VmRSS");
    Transformer m = Transformer::random_init(cfg, 0);
    ParamStore grads = m.zero_grads();
    AdamW opt(m.param_specs(), AdamWConfig{});
    std::vector<double> secs = measure_vit(c, steps, m, grads, opt);
    return finish_measure(c, steps, secs, reset, rss0);
  }
  const int64_t B = c.options.batch, T = c.options.seq_len, Ts = c.options.src_len;
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(cfg.vocab_size - 1));
  auto batch = [&](int64_t n) {
    TokenBatch b(static_cast<size_t>(B), std::vector<int32_t>(static_cast<size_t>(n)));
    for (auto& row : b)
      for (auto& t : row) t = tok(rng);
    return b;
  };
  const TokenBatch in = batch(T), tgt = batch(T), src = Ts > 0 ? batch(Ts) : TokenBatch{};
  ForwardOptions fo;
  if (cfg.arch == Arch::EncoderDecoder) fo.src = &src;
  {  // warm up oneDNN and the thread pool on a tiny model, as `bench` does
    ModelConfig tiny = cfg;
    tiny.d_model = tiny.n_heads * 2, tiny.n_layers = 1, tiny.d_ff = 4, tiny.vocab_size = 8;
    tiny.max_len = 8, tiny.position.rotary_dim = 0, tiny.attention.n_features = 2;
    tiny.attention.n_landmarks = 2;
    const Transformer t = Transformer::random_init(tiny, 0);
    ParamStore g = t.zero_grads();
    TokenBatch x(1, std::vector<int32_t>(4, 1));
    ForwardOptions tf;
    if (cfg.arch == Arch::EncoderDecoder) tf.src = &x;
    t.loss_and_grad(x, x, g, tf);
  }
  const bool reset = reset_peak_rss();
  const double rss0 = proc_status_bytes("VmRSS");
  Transformer m = Transformer::random_init(cfg, 0);
  ParamStore grads = m.zero_grads();
  AdamW opt(m.param_specs(), AdamWConfig{});
  std::vector<double> secs;
  for (int64_t s = 0; s < steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    for (auto& [name, g] : grads.all()) std::fill_n(g.data<float>(), g.numel(), 0.0f);
    if (!m.weights_packed()) m.pack_weights(true);  // as the trainer does before each step
    m.loss_and_grad(in, tgt, grads, fo);
    opt.step(m.params(), grads, 1e-4);
    secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return finish_measure(c, steps, secs, reset, rss0);
}

nlohmann::json finish_measure(const ModelCost& c, int64_t steps, std::vector<double> secs,
                              bool reset, double rss0) {
  const double hwm = proc_status_bytes("VmHWM");
  nlohmann::json r;
  if (secs.size() > 1) secs.erase(secs.begin());  // the first step allocates
  std::sort(secs.begin(), secs.end());
  r["steps"] = steps;
  r["threads"] = num_threads();
  r["step_seconds_median"] = secs[secs.size() / 2];
  r["step_seconds_min"] = secs.front();
  r["peak_rss_growth_bytes"] =
      reset && rss0 >= 0 && hwm >= 0 ? nlohmann::json(hwm - rss0) : nlohmann::json(nullptr);
  r["predicted_bytes"] = c.memory.total();
  return r;
}

}  // namespace

Command add_cost(CLI::App& root) {
  auto* app = root.add_subcommand(
      "cost",
      "parameters, FLOPs per token, training memory and KV cache of a config (docs/cost.md)");
  auto a = std::make_shared<CostArgs>();
  app->add_option("--config", a->config, "model config JSON")->required();
  app->add_option("--seq-len", a->opt.seq_len, "tokens per sequence T (default: max_len)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  app->add_option("--image-size", a->image_size,
                  "arch vit: image size HxW or one number for a square (default: the config's "
                  "image_size); T is its patch count (+1 CLS)");
  app->add_option("--src-len", a->opt.src_len,
                  "encoder tokens per sequence of an encoder_decoder (default: --seq-len)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 24));
  app->add_option("--batch", a->opt.batch, "sequences (arch vit: images) per step (default 1)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  app->add_option("--precision", a->precision,
                  "fp32 (16 bytes per parameter) or bf16 (mixed precision, 20)");
  app->add_option("--optimizer", a->opt.optimizer, "adamw (the only one posformer trains with)");
  app->add_flag("--json", a->json, "print JSON instead of the table");
  app->add_option("--measure", a->measure,
                  "also run this many training steps on random tokens and report the measured "
                  "peak memory growth and median step time (docs/cost.md)")
      ->check(CLI::Range(int64_t{1}, int64_t{1000}));
  add_threads_option(app, a->threads);
  return {app, [a]() {
            a->opt.precision = Choice<Precision>(a->precision);
            if (!a->image_size.empty())
              std::tie(a->opt.image_h, a->opt.image_w) = parse_image_size(a->image_size, "cost");
            const ModelCost c = model_cost(load_config(a->config), a->opt);
            nlohmann::json meas;
            if (a->measure > 0) {
              PF_CHECK(c.options.precision == Precision::Fp32,
                       "[cost] --measure trains with fp32 storage (train --precision bf16 rounds "
                       "only the matmul operands; cost's bf16 is SPEC 7's full-bf16 formula); "
                       "drop --precision bf16");
              PF_CHECK(c.config.head == Head::Lm || c.config.is_vit(),
                       "[cost] --measure trains: the model needs an LM head");
              set_threads(a->threads);
              meas = measure(c, a->measure);
            }
            if (a->json) {
              nlohmann::json j = cost_to_json(c);
              if (!meas.is_null()) j["measured"] = meas;
              std::cout << j.dump(2) << "\n";
              return 0;
            }
            print_table(c, a->config);
            if (!meas.is_null()) {
              const double got = meas["peak_rss_growth_bytes"].is_null()
                                     ? -1
                                     : meas["peak_rss_growth_bytes"].get<double>();
              std::printf("\nmeasured   %lld training steps, %d threads: median %.4f s/step\n",
                          (long long)a->measure, num_threads(),
                          meas["step_seconds_median"].get<double>());
              if (got >= 0)
                std::printf("           peak memory growth %s, predicted %s (%+.1f%%)\n",
                            format_bytes(got).c_str(), format_bytes(c.memory.total()).c_str(),
                            100.0 * (c.memory.total() - got) / got);
              else
                std::printf("           peak memory not measurable (/proc/self/clear_refs)\n");
            }
            return 0;
          }};
}

}  // namespace posformer::cli
