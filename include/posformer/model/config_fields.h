// A position scheme's or attention variant's own config fields, owned by its registry entry
// (posenc/registry.cpp, attention/registry.cpp): how each field is read from JSON, checked and
// written back. parse_config, validate_config and config_to_json only loop over the entry of the
// configured type, so a new scheme or variant adds its fields in one place.
//
//   position: {"type": "t5", "num_buckets": 32}      t5's entry owns num_buckets, max_distance
//   attention: {"type": "performer", "n_features": 64} performer's entry owns n_features, ...
//
// A field of another type's entry is refused naming the field and the type; unknown keys are
// refused by name.
#pragma once
#include <cmath>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "posformer/core/error.h"
#include "posformer/model/config.h"

namespace posformer {

template <class Cfg>
struct ConfigField {
  std::string name;
  // v: the field's JSON value; where: "position." or "attention.". Throws naming where + name.
  std::function<void(const nlohmann::json& v, const std::string& where, Cfg& c)> parse;
  std::function<void(const Cfg& c, const std::string& where)> check;  // range, parity ...
  std::function<nlohmann::json(const Cfg& c)> write;
};

// One registry entry's config side: its type name, its fields, and checks that involve the
// whole model (head dim, d_model parity).
template <class Cfg>
struct ConfigEntry {
  std::string type;
  std::vector<ConfigField<Cfg>> fields;
  std::function<void(const ModelConfig& c)> check_model;  // may be empty
};

// An integer field in [lo, hi] (and, with even, even).
template <class Cfg>
ConfigField<Cfg> int_field(const char* name, int64_t Cfg::*m, int64_t lo, int64_t hi,
                           bool even = false) {
  ConfigField<Cfg> f;
  f.name = name;
  f.parse = [m, name](const nlohmann::json& v, const std::string& where, Cfg& c) {
    PF_CHECK(v.is_number_integer(), "[config] field '", where, name, "' must be an integer, got ",
             v.dump());
    c.*m = v.get<int64_t>();
  };
  f.check = [m, name, lo, hi, even](const Cfg& c, const std::string& where) {
    PF_CHECK(c.*m >= lo && c.*m <= hi, "[config] field '", where, name, "' must be in [", lo, ", ",
             hi, "], got ", c.*m);
    PF_CHECK(!even || c.*m % 2 == 0, "[config] field '", where, name, "' must be even, got ", c.*m);
  };
  f.write = [m](const Cfg& c) { return nlohmann::json(c.*m); };
  return f;
}

// A finite number greater than `above`.
template <class Cfg>
ConfigField<Cfg> num_field(const char* name, double Cfg::*m, double above) {
  ConfigField<Cfg> f;
  f.name = name;
  f.parse = [m, name](const nlohmann::json& v, const std::string& where, Cfg& c) {
    PF_CHECK(v.is_number(), "[config] field '", where, name, "' must be a number, got ", v.dump());
    c.*m = v.get<double>();
  };
  f.check = [m, name, above](const Cfg& c, const std::string& where) {
    PF_CHECK(std::isfinite(c.*m) && c.*m > above, "[config] field '", where, name,
             "' must be a number > ", above, ", got ", c.*m);
  };
  f.write = [m](const Cfg& c) { return nlohmann::json(c.*m); };
  return f;
}

// One of a set of names.
template <class Cfg>
ConfigField<Cfg> choice_field(const char* name, std::string Cfg::*m,
                              std::initializer_list<const char*> allowed) {
  ConfigField<Cfg> f;
  f.name = name;
  std::set<std::string> names(allowed.begin(), allowed.end());
  f.parse = [m, name, names](const nlohmann::json& v, const std::string& where, Cfg& c) {
    PF_CHECK(v.is_string(), "[config] field '", where, name, "' must be a string, got ", v.dump());
    c.*m = v.get<std::string>();
  };
  f.check = [m, name, names](const Cfg& c, const std::string& where) {
    if (names.count(c.*m)) return;
    std::string list;
    for (const auto& a : names) list += (list.empty() ? "" : ", ") + a;
    throw Error(str("[config] field '", where, name, "' has unknown value \"", c.*m,
                    "\" (expected one of: ", list, ")"));
  };
  f.write = [m](const Cfg& c) { return nlohmann::json(c.*m); };
  return f;
}

// The registries' config sides, in registration order (posenc/registry.cpp,
// attention/registry.cpp).
const std::vector<ConfigEntry<PositionConfig>>& position_config_entries();
const std::vector<ConfigEntry<AttentionConfig>>& attention_config_entries();

}  // namespace posformer
