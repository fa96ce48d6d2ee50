#include "posformer/model/config.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "posformer/core/error.h"
#include "posformer/core/io.h"

namespace posformer {
using json = nlohmann::json;

namespace {

constexpr int64_t kMaxDim = 1 << 20;  // refuse absurd sizes before any allocation

void refuse_unknown(const json& j, const std::set<std::string>& known, const std::string& where) {
  for (auto it = j.begin(); it != j.end(); ++it)
    PF_CHECK(known.count(it.key()), "[config] unknown field '", where, it.key(), "'");
}

int64_t get_int(const json& j, const char* key, int64_t def, const std::string& where) {
  if (!j.contains(key)) return def;
  const json& v = j.at(key);
  PF_CHECK(v.is_number_integer(), "[config] field '", where, key, "' must be an integer, got ",
           v.dump());
  return v.get<int64_t>();
}

double get_num(const json& j, const char* key, double def, const std::string& where) {
  if (!j.contains(key)) return def;
  const json& v = j.at(key);
  PF_CHECK(v.is_number(), "[config] field '", where, key, "' must be a number, got ", v.dump());
  return v.get<double>();
}

bool get_bool(const json& j, const char* key, bool def, const std::string& where) {
  if (!j.contains(key)) return def;
  const json& v = j.at(key);
  PF_CHECK(v.is_boolean(), "[config] field '", where, key, "' must be true or false, got ",
           v.dump());
  return v.get<bool>();
}

std::string get_choice(const json& j, const char* key, const std::string& def,
                       const std::set<std::string>& allowed, const std::string& where) {
  if (!j.contains(key)) return def;
  const json& v = j.at(key);
  PF_CHECK(v.is_string(), "[config] field '", where, key, "' must be a string, got ", v.dump());
  std::string s = v.get<std::string>();
  if (!allowed.count(s)) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    throw Error(str("[config] field '", where, key, "' has unknown value \"", s,
                    "\" (expected one of: ", list, ")"));
  }
  return s;
}

void check_range(int64_t v, int64_t lo, int64_t hi, const char* field) {
  PF_CHECK(v >= lo && v <= hi, "[config] field '", field, "' must be in [", lo, ", ", hi, "], got ",
           v);
}

}  // namespace

void validate_config(const ModelConfig& c) {
  check_range(c.d_model, 1, kMaxDim, "d_model");
  check_range(c.n_layers, 1, 1024, "n_layers");
  check_range(c.n_heads, 1, 4096, "n_heads");
  check_range(c.n_kv_heads, 0, 4096, "n_kv_heads");
  check_range(c.d_ff, 1, 4 * kMaxDim, "d_ff");
  check_range(c.vocab_size, 1, 1 << 24, "vocab_size");
  check_range(c.max_len, 1, 1 << 24, "max_len");
  PF_CHECK(c.d_model % c.n_heads == 0, "[config] n_heads (", c.n_heads, ") must divide d_model (",
           c.d_model, ")");
  PF_CHECK(c.n_heads % c.kv_heads() == 0, "[config] n_kv_heads (", c.kv_heads(),
           ") must divide n_heads (", c.n_heads, ")");
  PF_CHECK(c.norm_eps > 0 && std::isfinite(c.norm_eps),
           "[config] field 'norm_eps' must be > 0, got ", c.norm_eps);
  const PositionConfig& p = c.position;
  const int64_t D = c.head_dim();
  if (p.type == "rope") {
    int64_t R = p.rotary_dim == 0 ? D : p.rotary_dim;
    PF_CHECK(R > 0 && R % 2 == 0, "[config] position.rotary_dim must be even and > 0, got ", R,
             p.rotary_dim == 0 ? " (the head dim d_model/n_heads)" : "");
    PF_CHECK(R <= D, "[config] position.rotary_dim (", R, ") must not exceed the head dim (", D,
             ")");
    PF_CHECK(p.base > 1 && std::isfinite(p.base), "[config] position.base must be > 1, got ",
             p.base);
  }
  if (p.type == "sinusoidal" || p.type == "sinusoidal_half")
    PF_CHECK(c.d_model % 2 == 0, "[config] position.type ", p.type, " needs an even d_model, got ",
             c.d_model);
  if (p.type == "xl")
    PF_CHECK(c.d_model % 2 == 0, "[config] position.type xl needs an even d_model, got ",
             c.d_model);
  if (p.type == "t5") {
    check_range(p.num_buckets, 2, 1 << 16, "position.num_buckets");
    PF_CHECK(p.num_buckets % 2 == 0, "[config] position.num_buckets must be even, got ",
             p.num_buckets);
    int64_t min_dist = p.num_buckets / 2;  // causal max_exact; bidirectional needs > num_buckets/4
    PF_CHECK(p.max_distance > min_dist, "[config] position.max_distance (", p.max_distance,
             ") must exceed num_buckets/2 (", min_dist, ")");
  }
  if (p.type == "shaw") check_range(p.clip, 1, 1 << 16, "position.clip");
  if (p.type == "deberta") check_range(p.span, 1, 1 << 16, "position.span");
  if (!c.embed_scale_sqrt_d)
    PF_CHECK(std::isfinite(c.embed_scale) && c.embed_scale > 0,
             "[config] field 'embed_scale' must be a positive number or \"sqrt_d\", got ",
             c.embed_scale);
  if (c.attention.scale)
    PF_CHECK(std::isfinite(*c.attention.scale) && *c.attention.scale > 0,
             "[config] attention.scale must be a positive number, got ", *c.attention.scale);
  // linear attention has no scores to scale: a scale would silently do nothing, so it is refused
  const bool linear_family = c.attention.type == "linear" || c.attention.type == "linear_cos" ||
                             c.attention.type == "linear_rope" || c.attention.type == "performer";
  check_range(c.attention.n_features, 1, 1 << 16, "attention.n_features");
  check_range(c.attention.seed, 0, int64_t{1} << 53, "attention.seed");
  check_range(c.attention.redraw_every, 0, int64_t{1} << 53, "attention.redraw_every");
  PF_CHECK(!(c.attention.scale && linear_family), "[config] attention.scale does not apply to ",
           "attention type \"", c.attention.type,
           "\" (phi(q) . phi(k) has no score scale); remove it");
  if (c.attention.type == "nystrom") {
    check_range(c.attention.n_landmarks, 1, 1 << 16, "attention.n_landmarks");
    check_range(c.attention.pinv_iterations, 0, 1000, "attention.pinv_iterations");
    check_range(c.attention.conv_kernel, 0, 1 << 16, "attention.conv_kernel");
    PF_CHECK(c.attention.conv_kernel % 2 == 1 || c.attention.conv_kernel == 0,
             "[config] attention.conv_kernel must be 0 (off) or odd (centred on the row), got ",
             c.attention.conv_kernel);
  }
  if (c.head == Head::Lm && c.tie_embeddings) {
    // tied head: logits = h E^T; nothing else to check
  }
}

ModelConfig parse_config(const json& j) {
  PF_CHECK(j.is_object(), "[config] top level must be a JSON object, got ", j.type_name());
  refuse_unknown(j,
                 {"arch", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "activation",
                  "norm", "norm_position", "norm_eps", "bias", "vocab_size", "max_len",
                  "tie_embeddings", "embed_scale", "head", "position", "attention"},
                 "");
  ModelConfig c;
  c.arch = get_choice(j, "arch", c.arch.name(), {"encoder", "decoder", "encoder_decoder"}, "");
  c.d_model = get_int(j, "d_model", c.d_model, "");
  c.n_layers = get_int(j, "n_layers", c.n_layers, "");
  c.n_heads = get_int(j, "n_heads", c.n_heads, "");
  c.n_kv_heads = get_int(j, "n_kv_heads", c.n_kv_heads, "");
  c.d_ff = get_int(j, "d_ff", c.d_ff, "");
  c.activation =
      get_choice(j, "activation", c.activation.name(), {"relu", "gelu", "gelu_tanh", "swiglu"}, "");
  c.norm = get_choice(j, "norm", c.norm.name(), {"layernorm", "rmsnorm"}, "");
  c.norm_position = get_choice(j, "norm_position", c.norm_position.name(), {"pre", "post"}, "");
  c.norm_eps = get_num(j, "norm_eps", c.norm_eps, "");
  c.bias = get_bool(j, "bias", c.bias, "");
  c.vocab_size = get_int(j, "vocab_size", c.vocab_size, "");
  c.max_len = get_int(j, "max_len", c.max_len, "");
  c.tie_embeddings = get_bool(j, "tie_embeddings", c.tie_embeddings, "");
  if (j.contains("embed_scale")) {
    const json& v = j.at("embed_scale");
    if (v.is_string()) {
      PF_CHECK(v.get<std::string>() == "sqrt_d",
               "[config] field 'embed_scale' must be a positive number or \"sqrt_d\", got ",
               v.dump());
      c.embed_scale_sqrt_d = true;
    } else {
      PF_CHECK(v.is_number(),
               "[config] field 'embed_scale' must be a positive number or \"sqrt_d\", got ",
               v.dump());
      c.embed_scale = v.get<double>();
    }
  }
  c.head = get_choice(j, "head", c.head.name(), {"lm", "none"}, "");
  if (j.contains("position")) {
    const json& p = j.at("position");
    PF_CHECK(p.is_object(),
             "[config] field 'position' must be an object like {\"type\": \"rope\"}, got ",
             p.dump());
    refuse_unknown(
        p, {"type", "layout", "rotary_dim", "base", "num_buckets", "max_distance", "clip", "span"},
        "position.");
    PositionConfig& pc = c.position;
    pc.type = get_choice(p, "type", pc.type,
                         {"none", "learned", "sinusoidal", "sinusoidal_half", "rope", "alibi", "t5",
                          "shaw", "xl", "deberta"},
                         "position.");
    // scheme parameters are only accepted by the scheme that uses them
    auto only = [&](const char* key, std::set<std::string> types) {
      PF_CHECK(!p.contains(key) || types.count(pc.type), "[config] field 'position.", key,
               "' does not apply to position type \"", pc.type, "\"");
    };
    only("layout", {"rope"});
    only("rotary_dim", {"rope"});
    only("base", {"rope"});
    only("num_buckets", {"t5"});
    only("max_distance", {"t5"});
    only("clip", {"shaw"});
    only("span", {"deberta"});
    pc.layout = get_choice(p, "layout", pc.layout, {"interleaved", "half"}, "position.");
    pc.rotary_dim = get_int(p, "rotary_dim", pc.rotary_dim, "position.");
    PF_CHECK(pc.rotary_dim >= 0, "[config] field 'position.rotary_dim' must be >= 0, got ",
             pc.rotary_dim);
    pc.base = get_num(p, "base", pc.base, "position.");
    pc.num_buckets = get_int(p, "num_buckets", pc.num_buckets, "position.");
    pc.max_distance = get_int(p, "max_distance", pc.max_distance, "position.");
    pc.clip = get_int(p, "clip", pc.clip, "position.");
    pc.span = get_int(p, "span", pc.span, "position.");
  }
  if (j.contains("attention")) {
    const json& a = j.at("attention");
    PF_CHECK(a.is_object(),
             "[config] field 'attention' must be an object like {\"type\": \"softmax\"}, got ",
             a.dump());
    refuse_unknown(a,
                   {"type", "scale", "residual", "n_features", "seed", "redraw_every",
                    "n_landmarks", "pinv_iterations", "conv_kernel"},
                   "attention.");
    c.attention.type = get_choice(
        a, "type", c.attention.type,
        {"softmax", "linear", "linear_cos", "linear_rope", "performer", "nystrom"}, "attention.");
    if (a.contains("scale") && !a.at("scale").is_null())
      c.attention.scale = get_num(a, "scale", 0.0, "attention.");
    c.attention.residual = get_bool(a, "residual", false, "attention.");
    for (const char* f : {"n_features", "seed", "redraw_every"})
      PF_CHECK(!a.contains(f) || c.attention.type == "performer", "[config] attention.", f,
               " applies to attention type \"performer\" only, not \"", c.attention.type, "\"");
    c.attention.n_features = get_int(a, "n_features", c.attention.n_features, "attention.");
    c.attention.seed = get_int(a, "seed", c.attention.seed, "attention.");
    c.attention.redraw_every = get_int(a, "redraw_every", c.attention.redraw_every, "attention.");
    for (const char* f : {"n_landmarks", "pinv_iterations", "conv_kernel"})  // nystrom's own
      PF_CHECK(!a.contains(f) || c.attention.type == "nystrom", "[config] field 'attention.", f,
               "' applies to attention type \"nystrom\" only, not \"", c.attention.type, "\"");
    auto& ac = c.attention;
    ac.n_landmarks = get_int(a, "n_landmarks", ac.n_landmarks, "attention.");
    ac.pinv_iterations = get_int(a, "pinv_iterations", ac.pinv_iterations, "attention.");
    ac.conv_kernel = get_int(a, "conv_kernel", ac.conv_kernel, "attention.");
  }
  validate_config(c);
  return c;
}

ModelConfig parse_config_text(const std::string& text, const std::string& what) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw Error(str("[config] ", what, " is not valid JSON: ", e.what()));
  }
  try {
    return parse_config(j);
  } catch (const Error& e) {
    throw Error(str(e.what(), " (in ", what, ")"));
  }
}

ModelConfig load_config(const std::string& path) {
  return parse_config_text(read_file(path, 1 << 20), path);
}

json config_to_json(const ModelConfig& c) {
  json p = {{"type", c.position.type}};
  const auto& pc = c.position;
  if (pc.type == "rope") {
    p["layout"] = pc.layout;
    p["rotary_dim"] = pc.rotary_dim;
    p["base"] = pc.base;
  } else if (pc.type == "t5") {
    p["num_buckets"] = pc.num_buckets;
    p["max_distance"] = pc.max_distance;
  } else if (pc.type == "shaw") {
    p["clip"] = pc.clip;
  } else if (pc.type == "deberta") {
    p["span"] = pc.span;
  }
  json a = {{"type", c.attention.type}};
  if (c.attention.scale) a["scale"] = *c.attention.scale;
  if (c.attention.residual) a["residual"] = true;
  if (c.attention.type == "performer") {
    a["n_features"] = c.attention.n_features;
    a["seed"] = c.attention.seed;
    a["redraw_every"] = c.attention.redraw_every;
  }
  if (c.attention.type == "nystrom") {
    a["n_landmarks"] = c.attention.n_landmarks;
    a["pinv_iterations"] = c.attention.pinv_iterations;
    a["conv_kernel"] = c.attention.conv_kernel;
  }
  return json{{"arch", c.arch.name()},
              {"d_model", c.d_model},
              {"n_layers", c.n_layers},
              {"n_heads", c.n_heads},
              {"n_kv_heads", c.kv_heads()},
              {"d_ff", c.d_ff},
              {"activation", c.activation.name()},
              {"norm", c.norm.name()},
              {"norm_position", c.norm_position.name()},
              {"norm_eps", c.norm_eps},
              {"bias", c.bias},
              {"vocab_size", c.vocab_size},
              {"max_len", c.max_len},
              {"tie_embeddings", c.tie_embeddings},
              {"embed_scale", c.embed_scale_sqrt_d ? json("sqrt_d") : json(c.embed_scale)},
              {"head", c.head.name()},
              {"position", p},
              {"attention", a}};
}

}  // namespace posformer
