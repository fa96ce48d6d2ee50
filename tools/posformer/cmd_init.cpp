// posformer init: a randomly initialised model directory from a config.
#include <iostream>

#include "common.h"

namespace posformer::cli {

Command add_init(CLI::App& root) {
  auto* app = root.add_subcommand(
      "init", "create a randomly initialised model (config.json + model.safetensors)");
  auto cfg = std::make_shared<std::string>();
  auto out = std::make_shared<std::string>();
  auto seed = std::make_shared<uint64_t>(0);
  auto mem = std::make_shared<MemoryGuard>();
  app->add_option("--config", *cfg, "model config JSON (see docs/config.md)")->required();
  app->add_option("--out", *out, "output model directory (created if missing)")->required();
  app->add_option("--seed", *seed, "initialisation seed (weights N(0, 0.02), norms 1, biases 0)");
  add_memory_options(app, *mem);
  return {app, [=]() {
            ModelConfig c = load_config(*cfg);
            check_model_memory("init", c, ModelUse::Create, *mem);
            Transformer m = Transformer::random_init(c, *seed);
            m.save(*out);
            const int64_t n = count_parameters(m.param_specs());
            std::cout << "initialised " << c.arch << " model (" << c.position.type << ", " << n
                      << " parameters) in " << *out << "\n";
            return 0;
          }};
}

}  // namespace posformer::cli
