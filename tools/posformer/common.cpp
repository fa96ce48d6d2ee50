#include "common.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "posformer/attention/attention.h"
#include "posformer/core/memory.h"
#include "posformer/core/runtime.h"
#include "posformer/model/safetensors.h"
#include "posformer/ops/packed_linear.h"
#include "posformer/posenc/vision.h"

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

double proc_status_bytes(const std::string& field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(field + ":", 0) == 0) {
      std::istringstream in(line.substr(field.size() + 1));
      double kb = -1;
      in >> kb;
      return kb < 0 ? -1 : kb * 1024.0;
    }
  return -1;
}

bool reset_peak_rss() {
  std::ofstream f("/proc/self/clear_refs");
  if (!f) return false;
  f << "5";
  return static_cast<bool>(f.flush());
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
                 " for the packed copies of the linear weights");
      break;
    }
  }
  if (extra > 0) {
    need += static_cast<double>(extra);
    what += str(" + ", format_bytes(static_cast<double>(extra)), " for ", extra_what);
  }
  if (use == ModelUse::Train) what += "; activations come on top";
  if (need <= static_cast<double>(avail->bytes)) return;
  const bool flag = avail->source == "--memory-limit";
  throw Error(str("[", cmd, "] the model ", lead, " ", format_bytes(need), " (", what, "), ",
                  format_bytes(static_cast<double>(avail->bytes)), " available (", avail->source,
                  "); use a smaller model", flag ? ", raise --memory-limit" : "",
                  ", or pass --force to try anyway"));
}

void add_precision_option(CLI::App* app, std::string& precision) {
  app->add_option("--precision", precision,
                  "f32 (default) or bf16: the attention and FFN linears on bfloat16-rounded "
                  "weights and inputs, and softmax attention's products on bf16 q, k, v and P, "
                  "all with float32 sums (AVX512-BF16 / AMX where present; docs/cli.md)");
}

void apply_inference_precision(Transformer& m, const std::string& precision,
                               const std::string& cmd) {
  const ops::Precision p = ops::parse_precision(precision, "[" + cmd + "] --precision");
  if (p == ops::Precision::F32) return;
  m.set_matmul_precision(p);
  m.pack_weights();
  m.set_attention_bf16(true);
  if (!ops::bf16_matmul_native())
    std::fprintf(stderr,
                 "%s: note: oneDNN has no bf16 matmul kernel on this CPU; the linears' bf16 "
                 "products go through the fp32 gemm (same results, no speed-up)\n",
                 cmd.c_str());
  if (!attention_bf16_native())
    std::fprintf(stderr,
                 "%s: note: this CPU has no AVX512-BF16; attention's bf16 products run a "
                 "portable loop (same results, slower than --precision f32)\n",
                 cmd.c_str());
}

void add_rope_scaling_options(CLI::App* app, RopeOverride& o) {
  o.opts = {
      app->add_option("--rope-scaling", o.type,
                      "RoPE scaling at inference (SPEC 3): none, linear, ntk, dynamic_ntk, yarn, "
                      "llama3; replaces the model's position.scaling"),
      app->add_option("--rope-factor", o.factor, "RoPE scaling factor s >= 1 (default 1)"),
      app->add_option("--rope-original-len", o.original_len,
                      "trained length L0 (dynamic_ntk, yarn, llama3; default: the model's own)"),
      app->add_option("--rope-beta-fast", o.beta_fast, "yarn: low = floor(corr(beta_fast)) (32)"),
      app->add_option("--rope-beta-slow", o.beta_slow, "yarn: high = ceil(corr(beta_slow)) (1)"),
      app->add_option("--rope-low-freq-factor", o.low_freq_factor, "llama3: low_freq_factor (1)"),
      app->add_option("--rope-high-freq-factor", o.high_freq_factor,
                      "llama3: high_freq_factor (4)"),
  };
}

bool apply_rope_override(ModelConfig& cfg, const RopeOverride& o, const std::string& cmd) {
  bool any = false;
  for (const CLI::Option* op : o.opts) any = any || op->count() > 0;
  if (!any) return false;
  PF_CHECK(o.opts[0]->count() > 0, "[", cmd,
           "] --rope-factor / --rope-original-len / --rope-beta-* / --rope-*-freq-factor need "
           "--rope-scaling TYPE");
  const bool rope_2d = cfg.position.type == "rope_2d";
  PF_CHECK(!cfg.is_vit() || rope_2d, "[", cmd,
           "] --rope-scaling applies to arch vit models with position rope_2d only (scaled per "
           "axis); this model's position type is '",
           cfg.position.type, "'");
  PF_CHECK(cfg.position.type == "rope" || rope_2d, "[", cmd,
           "] --rope-scaling applies to RoPE models only; this model's position type is '",
           cfg.position.type, "'");
  PF_CHECK(!rope_2d || o.opts[2]->count() == 0, "[", cmd,
           "] --rope-original-len does not apply to rope_2d: each axis's trained length is the "
           "model's patch grid (",
           cfg.grid_h(), " x ", cfg.grid_w(), ")");
  ops::RopeScaling s;
  s.type = ops::parse_rope_scaling_type(o.type, str("[", cmd, "] --rope-scaling"));
  const bool yarn = s.type == ops::RopeScalingType::Yarn,
             llama3 = s.type == ops::RopeScalingType::Llama3;
  const char* own[] = {"--rope-beta-fast", "--rope-beta-slow", "--rope-low-freq-factor",
                       "--rope-high-freq-factor"};
  for (int i = 0; i < 4; ++i)
    PF_CHECK(o.opts[3 + i]->count() == 0 || (i < 2 ? yarn : llama3), "[", cmd, "] ", own[i],
             " applies to --rope-scaling ", i < 2 ? "yarn" : "llama3", ", not ", o.type);
  s.beta_fast = o.beta_fast, s.beta_slow = o.beta_slow;
  s.low_freq_factor = o.low_freq_factor, s.high_freq_factor = o.high_freq_factor;
  if (rope_2d) {  // factor on both axes; default: new over trained grid per axis
    const double f = o.opts[1]->count() ? o.factor : 0.0;
    PF_CHECK(!o.opts[1]->count() || (std::isfinite(f) && f >= 1.0), "[", cmd,
             "] --rope-factor must be >= 1, got ", f);
    cfg.position.axis_factor = {f, f};
  } else {
    s.factor = o.factor;
    s.original_len = o.opts[2]->count() ? o.original_len : cfg.position.scaling.original_len;
  }
  cfg.position.scaling = s;
  try {
    validate_config(cfg);
  } catch (const Error& e) {
    throw Error(str("[", cmd, "] the --rope-* flags give a bad scaling: ", e.what()));
  }
  return true;
}

std::string rope_scaling_label(const ModelConfig& c) {
  const PositionConfig& p = c.position;
  if (p.scaling.type == ops::RopeScalingType::None) return "none";
  std::string s = ops::rope_scaling_name(p.scaling.type);
  if (p.type != "rope_2d") return str(s, " s=", p.scaling.factor, " L0=", p.scaling.original_len);
  const auto& f = p.axis_factor;
  if (f[0] == 0 && f[1] == 0) return s + " s=auto";
  return f[0] == f[1] ? str(s, " s=", f[0]) : str(s, " s=", f[0], "x", f[1]);
}

std::pair<int64_t, int64_t> parse_image_size(const std::string& v, const std::string& cmd) {
  const size_t x = v.find('x');
  auto num = [&](const std::string& t) {
    size_t used = 0;
    int64_t n = 0;
    try {
      n = std::stoll(t, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    PF_CHECK(used > 0 && used == t.size() && n >= 1 && n <= (1 << 16), "[", cmd,
             "] --image-size must be HxW or one number in [1, 65536], got \"", v, "\"");
    return n;
  };
  const int64_t h = num(v.substr(0, x));
  return {h, x == std::string::npos ? h : num(v.substr(x + 1))};
}

ImageSet resize_images(const ImageSet& set, int64_t h, int64_t w) {
  if (h == set.H && w == set.W) return set;
  ImageSet out = set;
  out.H = h, out.W = w;
  out.pixels.assign(static_cast<size_t>(set.n * set.C * h * w), 0.0f);
  for (int64_t i = 0; i < set.n * set.C; ++i)
    resize_grid(set.pixels.data() + i * set.H * set.W, set.H, set.W, 1, h, w, false,
                out.pixels.data() + i * h * w);
  return out;
}

Transformer load_model(const std::string& dir, const RopeOverride& o, const std::string& cmd) {
  ModelConfig cfg = model_dir_config(dir);
  if (!apply_rope_override(cfg, o, cmd)) return Transformer::load(dir);
  Transformer m(cfg);
  const std::string wpath = dir + "/model.safetensors";
  m.set_weights(load_safetensors(wpath).tensors, wpath);
  return m;
}

}  // namespace posformer::cli
