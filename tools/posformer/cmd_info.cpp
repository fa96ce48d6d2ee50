// posformer info: parameter counts per component and in total.
#include <cstdio>
#include <iostream>
#include <map>

#include "common.h"

namespace posformer::cli {

Command add_info(CLI::App& root) {
  auto* app =
      root.add_subcommand("info", "show a model's config and parameter counts per component");
  auto dir = std::make_shared<std::string>();
  auto mem = std::make_shared<MemoryGuard>();
  app->add_option("DIR", *dir, "model directory")->required();
  add_memory_options(app, *mem);
  return {app, [=]() {
            check_model_memory("info", model_dir_config(*dir), ModelUse::Load, *mem,
                               *dir + "/model.safetensors");
            Transformer m = Transformer::load(*dir);
            const ModelConfig& c = m.config();
            std::printf("model      %s\n", dir->c_str());
            std::printf(
                "arch       %s, %lld layers%s, d_model %lld, %lld heads (%lld kv), d_ff %lld\n",
                c.arch.name(), (long long)c.n_layers,
                c.arch == Arch::EncoderDecoder ? " per stack" : "", (long long)c.d_model,
                (long long)c.n_heads, (long long)c.kv_heads(), (long long)c.d_ff);
            if (c.is_vit())  // no tokens: no vocabulary
              std::printf("block      %s-%s, %s, bias %s, max_len %lld\n", c.norm_position.name(),
                          c.norm.name(), c.activation.name(), c.bias ? "yes" : "no",
                          (long long)c.max_len);
            else
              std::printf("block      %s-%s, %s, bias %s, vocab %lld, max_len %lld\n",
                          c.norm_position.name(), c.norm.name(), c.activation.name(),
                          c.bias ? "yes" : "no", (long long)c.vocab_size, (long long)c.max_len);
            if (c.is_vit())
              std::printf(
                  "images     %lldx%lld, %lld channels, patch %lld (%lldx%lld grid), pool %s, "
                  "%lld classes\n",
                  (long long)c.image_h, (long long)c.image_w, (long long)c.channels,
                  (long long)c.patch_size, (long long)c.grid_h(), (long long)c.grid_w(),
                  c.pool.name(), (long long)c.num_classes);
            std::printf("position   %s", c.position.type.c_str());
            if (c.position.scaling.type != ops::RopeScalingType::None)
              std::printf(", scaling %s", rope_scaling_label(c).c_str());
            if (c.embed_scale_sqrt_d || c.embed_scale != 1.0)
              std::printf(", token embeddings x %.4g%s", c.token_embed_scale(),
                          c.embed_scale_sqrt_d ? " (sqrt_d)" : "");
            std::printf("\nattention  %s%s", m.attention(c.has_decoder())->name().c_str(),
                        c.attention.residual ? ", residual (RealFormer)" : "");
            if (c.attention.scale) std::printf(", scale %g", *c.attention.scale);
            if (c.attention.type == "performer")
              std::printf(", %lld features, seed %lld, redraw every %lld",
                          (long long)c.attention.n_features, (long long)c.attention.seed,
                          (long long)c.attention.redraw_every);
            std::printf("\n");
            std::map<std::string, int64_t> per;
            for (const auto& s : m.param_specs())
              if (!s.buffer) per[s.component] += shape_numel(s.shape);
            const int64_t total = count_parameters(m.param_specs());
            std::printf("\n%-12s %14s %8s\n", "component", "parameters", "share");
            for (const char* k : {"embedding", "position", "attention", "ffn", "norm", "head"}) {
              if (!per.count(k)) continue;
              std::printf("%-12s %14lld %7.2f%%\n", k, (long long)per[k], 100.0 * per[k] / total);
            }
            std::printf("%-12s %14lld\n", "total", (long long)total);
            std::printf("fp32 size  %.2f MiB\n", total * 4.0 / (1 << 20));
            for (const auto& s : m.param_specs())  // non-trainable, saved with the weights
              if (s.buffer)
                std::printf("buffer     %s %s (not trained)\n", s.name.c_str(),
                            shape_str(s.shape).c_str());
            return 0;
          }};
}

}  // namespace posformer::cli
