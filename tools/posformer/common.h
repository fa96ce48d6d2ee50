// Shared helpers for the posformer CLI subcommands (one file per subcommand).
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "posformer/model/transformer.h"

namespace posformer::cli {

struct Command {
  CLI::App* app;
  std::function<int()> run;
};

Command add_init(CLI::App& root);
Command add_info(CLI::App& root);
Command add_forward(CLI::App& root);
Command add_tokenizer(CLI::App& root);
Command add_train(CLI::App& root);
Command add_eval(CLI::App& root);
Command add_generate(CLI::App& root);
Command add_plot(CLI::App& root);
Command add_grad(CLI::App& root);

// "1 2 3" (spaces, commas or newlines) -> ids; throws Error naming the bad token.
std::vector<int32_t> parse_token_list(const std::string& text, const std::string& what);
void add_threads_option(CLI::App* app, int& threads);

}  // namespace posformer::cli
