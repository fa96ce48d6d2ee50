#include "posformer/model/config.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <set>

#include "posformer/core/error.h"
#include "posformer/core/io.h"
#include "posformer/model/config_fields.h"

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

// The entry of cfg.type (the registry refuses unknown types when the model is built; a config
// made in code is checked here too).
template <class Cfg>
const ConfigEntry<Cfg>& entry_of(const std::vector<ConfigEntry<Cfg>>& entries, const Cfg& cfg,
                                 const char* what) {
  for (const auto& e : entries)
    if (e.type == cfg.type) return e;
  std::string list;
  for (const auto& e : entries) list += (list.empty() ? "" : ", ") + e.type;
  throw Error(str("[config] field '", what, ".type' has unknown value \"", cfg.type,
                  "\" (expected one of: ", list, ")"));
}

template <class Cfg>
void check_entry(const std::vector<ConfigEntry<Cfg>>& entries, const Cfg& cfg,
                 const std::string& where, const ModelConfig& model) {
  const ConfigEntry<Cfg>& e = entry_of(entries, cfg, where.substr(0, where.size() - 1).c_str());
  for (const auto& f : e.fields) f.check(cfg, where);
  if (e.check_model) e.check_model(model);
}

// {"type": ..., its own fields}: the type first, then only the fields its entry owns; a field
// another entry owns is refused naming both, an unknown key by name.
template <class Cfg>
void parse_entry(const std::vector<ConfigEntry<Cfg>>& entries, const json& j,
                 const std::string& where, const char* what, Cfg& cfg) {
  std::set<std::string> types;
  for (const auto& e : entries) types.insert(e.type);
  cfg.type = get_choice(j, "type", cfg.type, types, where);
  const ConfigEntry<Cfg>& mine = entry_of(entries, cfg, what);
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "type") continue;
    const auto owns = [&](const ConfigEntry<Cfg>& e) {
      return std::any_of(e.fields.begin(), e.fields.end(),
                         [&](const auto& f) { return f.name == it.key(); });
    };
    if (owns(mine)) continue;
    std::string owners;
    for (const auto& e : entries)
      if (owns(e)) owners += (owners.empty() ? "" : ", ") + e.type;
    PF_CHECK(!owners.empty(), "[config] unknown field '", where, it.key(), "'");
    throw Error(str("[config] field '", where, it.key(), "' does not apply to ", what, " type \"",
                    cfg.type, "\" (it belongs to ", owners, ")"));
  }
  for (const auto& f : mine.fields)
    if (j.contains(f.name)) f.parse(j.at(f.name), where, cfg);
}

template <class Cfg>
json write_entry(const std::vector<ConfigEntry<Cfg>>& entries, const Cfg& cfg) {
  json out = {{"type", cfg.type}};
  for (const auto& f : entry_of(entries, cfg, "").fields) out[f.name] = f.write(cfg);
  return out;
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
  PF_CHECK(c.dropout >= 0 && c.dropout < 1, "[config] field 'dropout' must be in [0, 1), got ",
           c.dropout);
  PF_CHECK(c.norm_eps > 0 && std::isfinite(c.norm_eps),
           "[config] field 'norm_eps' must be > 0, got ", c.norm_eps);
  if (c.is_vit()) {
    check_range(c.image_h, 1, 1 << 16, "image_size[0] (height)");
    check_range(c.image_w, 1, 1 << 16, "image_size[1] (width)");
    check_range(c.patch_size, 1, 1 << 12, "patch_size");
    check_range(c.channels, 1, 64, "channels");
    check_range(c.num_classes, 2, 1 << 20, "num_classes");
    PF_CHECK(c.image_h % c.patch_size == 0 && c.image_w % c.patch_size == 0,
             "[config] image_size [", c.image_h, ", ", c.image_w,
             "] must be a multiple of patch_size ", c.patch_size, " in both dimensions");
  }
  check_entry(position_config_entries(), c.position, "position.", c);
  if (!c.embed_scale_sqrt_d)
    PF_CHECK(std::isfinite(c.embed_scale) && c.embed_scale > 0,
             "[config] field 'embed_scale' must be a positive number or \"sqrt_d\", got ",
             c.embed_scale);
  if (c.attention.scale)
    PF_CHECK(std::isfinite(*c.attention.scale) && *c.attention.scale > 0,
             "[config] attention.scale must be a positive number, got ", *c.attention.scale);
  check_entry(attention_config_entries(), c.attention, "attention.", c);
  if (c.head == Head::Lm && c.tie_embeddings) {
    // tied head: logits = h E^T; nothing else to check
  }
}

ModelConfig parse_config(const json& j) {
  PF_CHECK(j.is_object(), "[config] top level must be a JSON object, got ", j.type_name());
  refuse_unknown(
      j, {"arch",       "d_model",    "n_layers",       "n_heads",     "n_kv_heads", "d_ff",
          "activation", "norm",       "norm_position",  "norm_eps",    "bias",       "vocab_size",
          "dropout",    "max_len",    "tie_embeddings", "embed_scale", "head",       "position",
          "attention",  "image_size", "patch_size",     "channels",    "pool",       "num_classes"},
      "");
  ModelConfig c;
  c.arch =
      get_choice(j, "arch", c.arch.name(), {"encoder", "decoder", "encoder_decoder", "vit"}, "");
  // image fields belong to vit; token fields to the text archs
  for (const char* k : {"image_size", "patch_size", "channels", "pool", "num_classes"})
    PF_CHECK(c.is_vit() || !j.contains(k), "[config] field '", k,
             "' applies to arch vit only, got arch ", c.arch);
  for (const char* k : {"vocab_size", "tie_embeddings", "embed_scale", "head"})
    PF_CHECK(!c.is_vit() || !j.contains(k), "[config] field '", k,
             "' does not apply to arch vit (images are patch-embedded and classified)");
  if (j.contains("image_size")) {  // [height, width] or one int for a square
    const json& v = j.at("image_size");
    const bool pair =
        v.is_array() && v.size() == 2 && v[0].is_number_integer() && v[1].is_number_integer();
    PF_CHECK(v.is_number_integer() || pair,
             "[config] field 'image_size' must be an integer or [height, width], got ", v.dump());
    c.image_h = pair ? v[0].get<int64_t>() : v.get<int64_t>();
    c.image_w = pair ? v[1].get<int64_t>() : v.get<int64_t>();
  }
  c.patch_size = get_int(j, "patch_size", c.patch_size, "");
  c.channels = get_int(j, "channels", c.channels, "");
  c.pool = get_choice(j, "pool", c.pool.name(), {"cls", "mean"}, "");
  c.num_classes = get_int(j, "num_classes", c.num_classes, "");
  if (c.is_vit()) c.head = Head::None, c.tie_embeddings = false;
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
  c.dropout = get_num(j, "dropout", c.dropout, "");
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
    parse_entry(position_config_entries(), p, "position.", "position", c.position);
  }
  if (j.contains("attention")) {
    const json& a = j.at("attention");
    PF_CHECK(a.is_object(),
             "[config] field 'attention' must be an object like {\"type\": \"softmax\"}, got ",
             a.dump());
    // fields every variant reads (the variant's caps decide whether it can honour them)
    if (a.contains("scale") && !a.at("scale").is_null())
      c.attention.scale = get_num(a, "scale", 0.0, "attention.");
    c.attention.residual = get_bool(a, "residual", false, "attention.");
    json own = a;
    own.erase("scale"), own.erase("residual");
    parse_entry(attention_config_entries(), own, "attention.", "attention", c.attention);
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
  json p = write_entry(position_config_entries(), c.position);
  json a = write_entry(attention_config_entries(), c.attention);
  if (c.attention.scale) a["scale"] = *c.attention.scale;
  if (c.attention.residual) a["residual"] = true;
  // nlohmann::json objects are key-sorted, so the order of insertion does not matter
  json j{{"arch", c.arch.name()},
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
         {"max_len", c.max_len},
         {"position", p},
         {"attention", a}};
  if (c.dropout > 0) j["dropout"] = c.dropout;  // written only when used (older files stay equal)
  if (c.is_vit()) {
    j["image_size"] = {c.image_h, c.image_w};
    j["patch_size"] = c.patch_size;
    j["channels"] = c.channels;
    j["pool"] = c.pool.name();
    j["num_classes"] = c.num_classes;
  } else {
    j["vocab_size"] = c.vocab_size;
    j["tie_embeddings"] = c.tie_embeddings;
    j["embed_scale"] = c.embed_scale_sqrt_d ? json("sqrt_d") : json(c.embed_scale);
    j["head"] = c.head.name();
  }
  return j;
}

}  // namespace posformer
