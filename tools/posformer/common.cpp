#include "common.h"

#include <cerrno>
#include <cstdlib>
#include <filesystem>

#include "posformer/core/memory.h"
#include "posformer/core/runtime.h"

namespace posformer::cli {

std::vector<int32_t> parse_token_list(const std::string& text, const std::string& what) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == ',' || text[i] == '\n' ||
                               text[i] == '\t' || text[i] == '\r'))
      ++i;
    if (i >= text.size()) break;
    size_t j = i;
    while (j < text.size() && !(text[j] == ' ' || text[j] == ',' || text[j] == '\n' ||
                                text[j] == '\t' || text[j] == '\r'))
      ++j;
    std::string tok = text.substr(i, j - i);
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(tok.c_str(), &end, 10);
    PF_CHECK(end && *end == '\0' && errno == 0 && v >= 0 && v <= 0x7fffffff, "[input] ", what,
             ": token '", tok, "' (number ", out.size(), ") is not a non-negative integer id");
    out.push_back(static_cast<int32_t>(v));
    i = j;
  }
  PF_CHECK(!out.empty(), "[input] ", what, ": no tokens given");
  return out;
}

TokenBatch parse_token_lines(const std::string& text, const std::string& what) {
  TokenBatch out;
  size_t line_no = 0, i = 0;
  while (i <= text.size()) {
    size_t j = text.find('\n', i);
    if (j == std::string::npos) j = text.size();
    ++line_no;
    const std::string line = text.substr(i, j - i);
    if (line.find_first_not_of(" \t\r,") != std::string::npos)
      out.push_back(parse_token_list(line, what + " line " + std::to_string(line_no)));
    i = j + 1;
  }
  PF_CHECK(!out.empty(), "[input] ", what, ": no token sequences (one per line)");
  return out;
}

void add_threads_option(CLI::App* app, int& threads) {
  app->add_option("--threads", threads, "worker threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
}

int64_t count_parameters(const std::vector<ParamSpec>& specs) {
  int64_t n = 0;
  for (const auto& s : specs)
    if (!s.buffer) n += shape_numel(s.shape);  // trainable only
  return n;
}

int64_t count_parameters(const ModelConfig& c) {
  return count_parameters(Transformer(c).param_specs());
}

void add_memory_options(CLI::App* app, MemoryGuard& g) {
  g.limit_option =
      app->add_option("--memory-limit", g.limit,
                      "memory the model may use, e.g. 512M or 8G (K/M/G/T = powers of 1024); "
                      "default: the smaller of MemAvailable and the cgroup memory limit");
  app->add_flag("--force", g.force,
                "go ahead even when the model needs more memory than is available");
}

uint64_t kv_cache_bytes(const ModelConfig& c, int64_t positions, size_t src_positions) {
  // self-attention: the decode state of the model's attention variant, per layer; cross-
  // attention: the encoder output's keys and values, computed once
  const Transformer m(c);
  const uint64_t self = m.attention(true)->decode_bytes(1, positions) * uint64_t(c.n_layers);
  const uint64_t cross = 2 * uint64_t(c.n_layers) * uint64_t(c.kv_heads() * c.head_dim()) *
                         sizeof(float) * src_positions;
  return self + cross;
}

ModelConfig model_dir_config(const std::string& dir) {
  PF_CHECK(std::filesystem::is_directory(dir), "[model] ", dir, " is not a model directory");
  return load_config(dir + "/config.json");
}

void check_model_memory(const std::string& cmd, const ModelConfig& c, ModelUse use,
                        const MemoryGuard& g, const std::string& model_file, uint64_t extra,
                        const std::string& extra_what) {
  std::optional<MemoryLimit> avail;
  if (!g.limit.empty() || (g.limit_option && g.limit_option->count() > 0))
    avail = MemoryLimit{parse_byte_size(g.limit, "--memory-limit"), "--memory-limit"};
  if (g.force) return;
  if (!avail) avail = available_memory();
  if (!avail) return;  // neither /proc/meminfo nor a cgroup limit readable: nothing to compare
  int64_t n = 0;       // every stored tensor: parameters and buffers (performer's features)
  const Transformer shape_only(c);  // declares, allocates nothing
  for (const auto& s : shape_only.param_specs()) n += shape_numel(s.shape);
  const double weights = 4.0 * static_cast<double>(n);
  double need = 0;
  std::string lead = "needs", what;
  switch (use) {
    case ModelUse::Create:
      need = 2 * weights;
      what = str(format_bytes(weights), " for ", n, " fp32 weights + ", format_bytes(weights),
                 " for the model file that saving builds in memory");
      break;
    case ModelUse::Load: {
      std::error_code ec;
      const uintmax_t file = model_file.empty() ? 0 : std::filesystem::file_size(model_file, ec);
      const double image = ec || model_file.empty() ? weights : static_cast<double>(file);
      need = weights + image;
      what = str(format_bytes(weights), " for ", n, " fp32 weights + ", format_bytes(image),
                 " for the model file, read whole");
      break;
    }
    case ModelUse::Train: {
      int64_t packed = 0;  // Transformer::pack_weights(true): two packed copies of each linear
      for (const auto& s : shape_only.param_specs())
        if (Transformer::packs(s)) packed += shape_numel(s.shape);
      need = 16 * static_cast<double>(n) + 8 * static_cast<double>(packed);
      lead = "needs at least";
      what = str(n, " parameters x 16 bytes for fp32 weights, gradients and two AdamW moments + ",
                 format_bytes(8.0 * static_cast<double>(packed)),
                 " for the packed copies of the linear weights; activations come on top");
      break;
    }
  }
  if (extra > 0) {
    need += static_cast<double>(extra);
    what += str(" + ", format_bytes(static_cast<double>(extra)), " for ", extra_what);
  }
  if (need <= static_cast<double>(avail->bytes)) return;
  const bool flag = avail->source == "--memory-limit";
  throw Error(str("[", cmd, "] the model ", lead, " ", format_bytes(need), " (", what, "), ",
                  format_bytes(static_cast<double>(avail->bytes)), " available (", avail->source,
                  "); use a smaller model", flag ? ", raise --memory-limit" : "",
                  ", or pass --force to try anyway"));
}

}  // namespace posformer::cli
