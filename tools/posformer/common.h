// Shared helpers for the posformer CLI subcommands (one file per subcommand).
#pragma once
#include <CLI/CLI.hpp>
#include <string>

#include "posformer/model/transformer.h"
#include "posformer/train/images.h"

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
Command add_bench(CLI::App& root);
Command add_cost(CLI::App& root);
Command add_extrapolate(CLI::App& root);
Command add_predict(CLI::App& root);
Command add_vit_resolution(CLI::App& root);

// "1 2 3" (spaces, commas or newlines) -> ids; throws Error naming the bad token.
std::vector<int32_t> parse_token_list(const std::string& text, const std::string& what);
// One sequence per non-blank line (ids separated by spaces or commas); names the bad line.
TokenBatch parse_token_lines(const std::string& text, const std::string& what);
void add_threads_option(CLI::App* app, int& threads);

// kB fields of /proc/self/status ("VmRSS", "VmHWM"), in bytes; -1 when unreadable.
double proc_status_bytes(const std::string& field);
// Resets VmHWM to the current resident size (Linux >= 4.0); false when not allowed.
bool reset_peak_rss();

// Parameters of a model: the sum over its ParamSpecs, the list init, load and info share. The
// config overload declares the model without allocating a weight.
int64_t count_parameters(const std::vector<ParamSpec>& specs);
int64_t count_parameters(const ModelConfig& c);

// The memory guard of the commands that create or load a model's weights (init, info, forward,
// eval, generate, train, grad): before allocating, the memory the model needs is compared with
// what is available (--memory-limit, else the smaller of MemAvailable and the cgroup limit;
// posformer/core/memory.h), and the command is refused with both figures unless --force.
struct MemoryGuard {
  std::string limit;  // --memory-limit text
  bool force = false;
  const CLI::Option* limit_option = nullptr;  // set by add_memory_options: was --memory-limit given
};
void add_memory_options(CLI::App* app, MemoryGuard& g);

enum class ModelUse {
  Create,  // init: fp32 weights + the file image that saving builds (4 + 4 bytes per parameter)
  Load,    // forward, eval, generate, info: fp32 weights + the model file, read whole
  Train,   // train, grad: weights, gradients and two AdamW moments (16 bytes per parameter)
};
// Throws Error "[cmd] the model needs X (what), Y available (source); ..." when the model of
// `c` does not fit. `model_file` (Load) is the safetensors file whose size is counted; `extra`
// bytes described by `extra_what` (e.g. a KV cache) are added.
void check_model_memory(const std::string& cmd, const ModelConfig& c, ModelUse use,
                        const MemoryGuard& g, const std::string& model_file = "",
                        uint64_t extra = 0, const std::string& extra_what = "");
// Decoding memory of one sequence: the attention variant's decode state of every decoder layer
// for `positions` positions (softmax: keys and values, SPEC.md 7), and the cross-attention keys
// and values of `src_positions` encoder positions.
uint64_t kv_cache_bytes(const ModelConfig& c, int64_t positions, size_t src_positions);

// The config of a model directory (DIR/config.json), with Transformer::load's message when DIR
// is not a directory; for the guard before Transformer::load(dir) allocates the weights.
ModelConfig model_dir_config(const std::string& dir);

// Eval/generate override of a RoPE model's position.scaling (SPEC.md 3): --rope-scaling TYPE
// --rope-factor s --rope-original-len L0 [--rope-beta-fast --rope-beta-slow
// --rope-low-freq-factor --rope-high-freq-factor]. The flags describe the whole scaling (unset
// fields take their defaults; original_len defaults to the model's own when it has one).
struct RopeOverride {
  std::string type;
  double factor = 1.0, beta_fast = 32.0, beta_slow = 1.0, low_freq_factor = 1.0,
         high_freq_factor = 4.0;
  int64_t original_len = 0;
  std::vector<CLI::Option*> opts;  // [type, factor, original_len, beta_fast, ...]
};
void add_rope_scaling_options(CLI::App* app, RopeOverride& o);
// Applies the flags given to cfg; refuses them for a model without RoPE and checks the result
// (errors name the flag and the field). Returns whether a flag was given.
// arch vit with position rope_2d: --rope-scaling TYPE scales each axis (posenc/vision.h); the
// factor is --rope-factor on both axes, by default the new grid over the trained one per axis;
// --rope-original-len is refused (L0 per axis = the trained patch grid). Other arch vit models
// refuse the flags.
bool apply_rope_override(ModelConfig& cfg, const RopeOverride& o, const std::string& cmd);
// "yarn s=2 L0=64" (rope), "yarn s=auto" / "yarn s=2" / "yarn s=2x1.5" (rope_2d), "none".
std::string rope_scaling_label(const ModelConfig& c);
// --image-size HxW or N (a square) -> {H, W}; errors name `cmd` and the text.
std::pair<int64_t, int64_t> parse_image_size(const std::string& v, const std::string& cmd);
// Every image of `set` resized to h x w, bilinear with align_corners=False (as
// torch.nn.functional.interpolate), one channel plane at a time.
ImageSet resize_images(const ImageSet& set, int64_t h, int64_t w);
// Transformer::load(dir) with the override applied to its config.
Transformer load_model(const std::string& dir, const RopeOverride& o, const std::string& cmd);

// --precision f32|bf16 of the inference commands (generate, eval): bf16 runs the attention and
// FFN linears on bfloat16-rounded weights and inputs (as train --precision bf16) and softmax
// attention's fused forward with bf16 products (AttnDesc::bf16), sums in fp32.
void add_precision_option(CLI::App* app, std::string& precision);
// Applies it to a loaded model (repacks the linears for bf16); errors name `cmd`.
void apply_inference_precision(Transformer& m, const std::string& precision,
                               const std::string& cmd);

// posformer eval on an arch vit model (cmd_predict.cpp): accuracy, per-class accuracy and the
// confusion matrix (text, CSV and a matplotlib PNG).
// image_size: "" (the data's own) or --image-size HxW / N (images resized, bilinear); rope: the
// --rope-* override (rope_2d models only); flip_tta: --tta flip (evaluate_images); precision:
// --precision (apply_inference_precision).
int eval_vit(const std::string& dir, const std::string& data, int64_t max_images,
             const std::string& confusion_png, const std::string& python,
             const std::string& image_size, const RopeOverride& rope, bool flip_tta = false,
             const std::string& precision = "f32");

}  // namespace posformer::cli
