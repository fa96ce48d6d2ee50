// posformer: command-line entry point. Each subcommand lives in its own cmd_*.cpp.
#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "common.h"
#include "posformer/core/runtime.h"

using namespace posformer;

int main(int argc, char** argv) {
  // OpenMP wait policy (posformer/core/runtime.h: POSFORMER_WAIT_POLICY, else the measured
  // default). libgomp reads it once at load time, so set it and re-execute once, unless the
  // user chose a policy through OMP_WAIT_POLICY / GOMP_SPINCOUNT or asked for thread binding
  // (the re-executed process would inherit the one-CPU mask libgomp gave this thread).
  try {
    if (set_wait_policy_env()) execv("/proc/self/exe", argv);  // on failure, carry on
  } catch (const std::exception& e) {
    std::cerr << "posformer: error: " << e.what() << "\n";
    return 1;
  }
  init_runtime();
  CLI::App app{"posformer: Transformer engine for position encodings and attention variants"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "posformer 0.1.0");
  std::vector<cli::Command> cmds = {
      cli::add_init(app),    cli::add_info(app),          cli::add_forward(app),
      cli::add_train(app),   cli::add_eval(app),          cli::add_generate(app),
      cli::add_plot(app),    cli::add_tokenizer(app),     cli::add_grad(app),
      cli::add_bench(app),   cli::add_cost(app),          cli::add_extrapolate(app),
      cli::add_predict(app), cli::add_vit_resolution(app)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (auto& c : cmds)
      if (c.app->parsed()) return c.run();
  } catch (const std::exception& e) {
    std::cerr << "posformer: error: " << e.what() << "\n";
    return 1;
  }
  return 1;
}
