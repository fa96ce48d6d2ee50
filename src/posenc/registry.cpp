#include <algorithm>
#include <array>
#include <cmath>
#include <functional>

#include "posenc_impl.h"
#include "posformer/model/config_fields.h"

namespace posformer {

float PositionEncoding::default_scale(int64_t D) const {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
}

namespace {
// d_model must be even for sinusoid tables (pairs of sin, cos).
void even_d_model(const ModelConfig& c) {
  PF_CHECK(c.d_model % 2 == 0, "[config] position.type ", c.position.type,
           " needs an even d_model, got ", c.d_model);
}

// position.scaling: {"type": ..., "factor": s, "original_len": L0, + the type's own fields}
// (ops/rope.h). Written back with every field of its type; {"type": "none"} when unset.
ConfigField<PositionConfig> rope_scaling_field() {
  using ops::RopeScalingType;
  ConfigField<PositionConfig> f;
  f.name = "scaling";
  f.parse = [](const nlohmann::json& v, const std::string& where, PositionConfig& c) {
    const std::string w = where + "scaling.";
    PF_CHECK(v.is_object(), "[config] field '", where,
             "scaling' must be an object like {\"type\": \"yarn\", \"factor\": 4, "
             "\"original_len\": 2048}, got ",
             v.dump());
    ops::RopeScaling s;
    PF_CHECK(v.contains("type") && v.at("type").is_string(), "[config] field '", w,
             "type' must be a string (none, linear, ntk, dynamic_ntk, yarn, llama3)");
    s.type = ops::parse_rope_scaling_type(v.at("type").get<std::string>(),
                                          str("[config] field '", w, "type'"));
    auto num = [&](const char* k, double& out) {
      if (!v.contains(k)) return;
      PF_CHECK(v.at(k).is_number(), "[config] field '", w, k, "' must be a number, got ",
               v.at(k).dump());
      out = v.at(k).get<double>();
    };
    for (auto it = v.begin(); it != v.end(); ++it) {
      const std::string& k = it.key();
      const bool yarn = k == "beta_fast" || k == "beta_slow";
      const bool llama3 = k == "low_freq_factor" || k == "high_freq_factor";
      PF_CHECK(k == "type" || k == "factor" || k == "original_len" || yarn || llama3,
               "[config] unknown field '", w, k, "'");
      PF_CHECK((!yarn || s.type == RopeScalingType::Yarn) &&
                   (!llama3 || s.type == RopeScalingType::Llama3),
               "[config] field '", w, k, "' does not apply to scaling type \"",
               ops::rope_scaling_name(s.type), "\" (it belongs to ", yarn ? "yarn" : "llama3", ")");
    }
    num("factor", s.factor);
    if (v.contains("original_len")) {
      PF_CHECK(v.at("original_len").is_number_integer(), "[config] field '", w,
               "original_len' must be an integer, got ", v.at("original_len").dump());
      s.original_len = v.at("original_len").get<int64_t>();
    }
    num("beta_fast", s.beta_fast), num("beta_slow", s.beta_slow);
    num("low_freq_factor", s.low_freq_factor), num("high_freq_factor", s.high_freq_factor);
    c.scaling = s;
  };
  f.check = [](const PositionConfig&, const std::string&) {};  // needs R: checked per model
  f.write = [](const PositionConfig& c) {
    const ops::RopeScaling& s = c.scaling;
    nlohmann::json j = {{"type", ops::rope_scaling_name(s.type)}};
    if (s.type == RopeScalingType::None) return j;
    j["factor"] = s.factor, j["original_len"] = s.original_len;
    if (s.type == RopeScalingType::Yarn) j["beta_fast"] = s.beta_fast, j["beta_slow"] = s.beta_slow;
    if (s.type == RopeScalingType::Llama3)
      j["low_freq_factor"] = s.low_freq_factor, j["high_freq_factor"] = s.high_freq_factor;
    return j;
  };
  return f;
}

// rope_2d's position.scaling: as rope's, applied per axis (posenc/vision.h), with "factor" one
// number (both axes), [row, col] or "auto" (the default: current over trained grid per axis);
// "original_len" is refused (each axis's L0 is the config's patch grid). Written back with the
// factor as "auto", one number, or [row, col].
ConfigField<PositionConfig> rope_2d_scaling_field() {
  ConfigField<PositionConfig> f = rope_scaling_field();
  const auto parse_1d = f.parse;
  f.parse = [parse_1d](const nlohmann::json& v, const std::string& where, PositionConfig& c) {
    const std::string w = where + "scaling.";
    PF_CHECK(!v.is_object() || !v.contains("original_len"), "[config] field '", w,
             "original_len' does not apply to rope_2d: each axis's trained length is the "
             "config's patch grid (image_h/patch_size rows, image_w/patch_size columns)");
    nlohmann::json one = v;
    std::array<double, 2> fa = {0.0, 0.0};
    if (v.is_object() && v.contains("factor")) {
      const nlohmann::json& fv = v.at("factor");
      const bool pair = fv.is_array() && fv.size() == 2 && fv[0].is_number() && fv[1].is_number();
      PF_CHECK(fv.is_number() || pair || fv == "auto", "[config] field '", w,
               "factor' of rope_2d must be a number (both axes), [row, col] or \"auto\", got ",
               fv.dump());
      if (fv.is_number()) fa = {fv.get<double>(), fv.get<double>()};
      if (pair) fa = {fv[0].get<double>(), fv[1].get<double>()};
      for (double x : fa)
        PF_CHECK(fv == "auto" || (std::isfinite(x) && x >= 1.0), "[config] field '", w,
                 "factor' must be >= 1 on each axis, got ", fv.dump());
      one.erase("factor");
    }
    parse_1d(one, where, c);
    c.axis_factor = fa;
  };
  f.write = [](const PositionConfig& c) {
    nlohmann::json j = {{"type", ops::rope_scaling_name(c.scaling.type)}};
    if (c.scaling.type == ops::RopeScalingType::None) return j;
    const auto& fa = c.axis_factor;
    j["factor"] = fa[0] == 0 && fa[1] == 0 ? nlohmann::json("auto")
                  : fa[0] == fa[1]         ? nlohmann::json(fa[0])
                                           : nlohmann::json::array({fa[0], fa[1]});
    const ops::RopeScaling& s = c.scaling;
    if (s.type == ops::RopeScalingType::Yarn)
      j["beta_fast"] = s.beta_fast, j["beta_slow"] = s.beta_slow;
    if (s.type == ops::RopeScalingType::Llama3)
      j["low_freq_factor"] = s.low_freq_factor, j["high_freq_factor"] = s.high_freq_factor;
    return j;
  };
  return f;
}

// rope_2d's scaling per axis: the type's fields checked at the rotary width of one axis (R/2)
// with that axis's trained grid as L0.
void check_rope_2d_scaling(const ModelConfig& c, int64_t R) {
  const PositionConfig& p = c.position;
  if (p.scaling.type == ops::RopeScalingType::None) return;
  const char* name = ops::rope_scaling_name(p.scaling.type);
  const bool ntk = p.scaling.type == ops::RopeScalingType::Ntk ||
                   p.scaling.type == ops::RopeScalingType::DynamicNtk;
  PF_CHECK(!ntk || R / 2 > 2, "[config] position.scaling type \"", name,
           "\" of rope_2d needs a rotary width per axis (rotary_dim/2) > 2, got ", R / 2);
  const int64_t L0[2] = {c.grid_h(), c.grid_w()};
  for (int a = 0; a < 2; ++a) {
    ops::RopeScaling s = p.scaling;
    s.factor = p.axis_factor[a] != 0 ? p.axis_factor[a] : 1.0;  // 0 = from the grid
    s.original_len = std::max<int64_t>(L0[a], 1);
    ops::check_rope_scaling(s, R / 2, "position.scaling.");
  }
}

// 2-D schemes read patch (row, col) positions, which only arch vit gives.
void needs_vit(const ModelConfig& c) {
  PF_CHECK(c.is_vit(), "[config] position.type ", c.position.type,
           " encodes 2-D patch positions and needs arch vit, got arch ", c.arch);
}

struct Scheme {
  ConfigEntry<PositionConfig> config;
  std::function<std::unique_ptr<PositionEncoding>(const PositionConfig&, const StackGeom&)> make;
};

// The registry: each scheme's name, its own config fields and checks, and its factory.
const std::vector<Scheme>& schemes() {
  using P = PositionConfig;
  static const std::vector<Scheme> s = {
      {{"none", {}, {}}, [](const P&, const StackGeom&) { return std::make_unique<NoPosition>(); }},
      {{"learned", {}, {}},
       [](const P&, const StackGeom& g) { return std::make_unique<LearnedPosition>(g); }},
      {{"sinusoidal", {}, even_d_model},
       [](const P&, const StackGeom& g) { return std::make_unique<SinusoidalPosition>(g, false); }},
      {{"sinusoidal_half", {}, even_d_model},
       [](const P&, const StackGeom& g) { return std::make_unique<SinusoidalPosition>(g, true); }},
      {{"rope",
        {choice_field("layout", &P::layout, {"interleaved", "half"}),
         int_field("rotary_dim", &P::rotary_dim, 0, int64_t{1} << 20),
         num_field("base", &P::base, 1.0), rope_scaling_field()},
        [](const ModelConfig& c) {
          const int64_t D = c.head_dim(), rd = c.position.rotary_dim, R = rd == 0 ? D : rd;
          PF_CHECK(R > 0 && R % 2 == 0, "[config] position.rotary_dim must be even and > 0, got ",
                   R, rd == 0 ? " (the head dim d_model/n_heads)" : "");
          PF_CHECK(R <= D, "[config] position.rotary_dim (", R, ") must not exceed the head dim (",
                   D, ")");
          ops::check_rope_scaling(c.position.scaling, R, "position.scaling.");
        }},
       [](const P& c, const StackGeom& g) { return std::make_unique<RopePosition>(c, g); }},
      {{"alibi", {}, {}},
       [](const P&, const StackGeom& g) { return std::make_unique<AlibiPosition>(g); }},
      {{"t5",
        {int_field("num_buckets", &P::num_buckets, 2, 1 << 16, /*even=*/true),
         int_field("max_distance", &P::max_distance, 1, int64_t{1} << 30)},
        [](const ModelConfig& c) {
          const PositionConfig& p = c.position;
          const int64_t min_dist = p.num_buckets / 2;  // causal max_exact
          PF_CHECK(p.max_distance > min_dist, "[config] position.max_distance (", p.max_distance,
                   ") must exceed num_buckets/2 (", min_dist, ")");
        }},
       [](const P& c, const StackGeom& g) { return std::make_unique<T5Position>(c, g); }},
      {{"shaw", {int_field("clip", &P::clip, 1, 1 << 16)}, {}},
       [](const P& c, const StackGeom& g) { return std::make_unique<ShawPosition>(c, g); }},
      {{"xl", {}, even_d_model},
       [](const P&, const StackGeom& g) { return std::make_unique<XlPosition>(g); }},
      {{"deberta", {int_field("span", &P::span, 1, 1 << 16)}, {}},
       [](const P& c, const StackGeom& g) { return std::make_unique<DebertaPosition>(c, g); }},
      {{"rope_2d",
        {choice_field("layout", &P::axial_layout, {"axial_split", "axial_interleaved"}),
         choice_field("cls_position", &P::cls_position, {"origin", "none"}),
         int_field("rotary_dim", &P::rotary_dim, 0, int64_t{1} << 20),
         num_field("base", &P::base, 1.0), rope_2d_scaling_field()},
        [](const ModelConfig& c) {
          needs_vit(c);
          const int64_t D = c.head_dim(), rd = c.position.rotary_dim, R = rd == 0 ? D : rd;
          PF_CHECK(R > 0 && R % 4 == 0 && R <= D,
                   "[config] position.rotary_dim of rope_2d must be a multiple of 4 (two axes of "
                   "pairs) and <= the head dim (",
                   D, "), got ", R, rd == 0 ? " (the head dim d_model/n_heads)" : "");
          check_rope_2d_scaling(c, R);
        }},
       [](const P& c, const StackGeom& g) { return make_rope_2d(c, g); }},
      {{"sincos_2d",
        {},
        [](const ModelConfig& c) {
          needs_vit(c);
          PF_CHECK(c.d_model % 4 == 0,
                   "[config] position.type sincos_2d needs d_model % 4 == 0 "
                   "(sin and cos of two axes), got ",
                   c.d_model);
        }},
       [](const P&, const StackGeom& g) { return make_sincos_2d(g); }},
      {{"learned_2d",
        {choice_field("interpolation", &P::interpolation, {"bicubic", "bilinear"})},
        needs_vit},
       [](const P& c, const StackGeom& g) { return make_learned_2d(c, g); }},
  };
  return s;
}
}  // namespace

const std::vector<ConfigEntry<PositionConfig>>& position_config_entries() {
  static const std::vector<ConfigEntry<PositionConfig>> e = [] {
    std::vector<ConfigEntry<PositionConfig>> v;
    for (const Scheme& s : schemes()) v.push_back(s.config);
    return v;
  }();
  return e;
}

std::unique_ptr<PositionEncoding> make_position_encoding(const PositionConfig& cfg,
                                                         const StackGeom& geom) {
  for (const Scheme& s : schemes())
    if (s.config.type == cfg.type) return s.make(cfg, geom);
  throw Error(str("[position] unknown position type \"", cfg.type, "\""));
}

std::vector<double> alibi_slopes(int64_t H) {
  PF_CHECK(H >= 1, "[alibi] number of heads must be >= 1, got ", H);
  int64_t n = 1;
  while (n * 2 <= H) n *= 2;  // n = 2^floor(log2 H)
  std::vector<double> m(H);
  for (int64_t h = 0; h < H; ++h) {
    if (h < n)
      m[h] = std::pow(2.0, -8.0 * static_cast<double>(h + 1) / static_cast<double>(n));
    else
      m[h] = std::pow(2.0, -4.0 * static_cast<double>(2 * (h - n) + 1) / static_cast<double>(n));
  }
  return m;
}

int64_t t5_bucket(int64_t rel, bool bidirectional, int64_t num_buckets, int64_t max_distance) {
  int64_t nb = num_buckets, offset = 0, n;
  if (bidirectional) {
    nb = num_buckets / 2;
    offset = rel > 0 ? nb : 0;
    n = rel < 0 ? -rel : rel;
  } else {
    n = rel < 0 ? -rel : 0;
  }
  const int64_t max_exact = nb / 2;
  if (n < max_exact) return offset + n;
  double v = std::log(static_cast<double>(n) / max_exact) /
             std::log(static_cast<double>(max_distance) / max_exact) *
             static_cast<double>(nb - max_exact);
  int64_t large = max_exact + static_cast<int64_t>(std::floor(v));
  return offset + std::min(large, nb - 1);
}

void sinusoid_rows(double pos0, int64_t T, int64_t d, bool half, float* out) {
  const int64_t n = d / 2;
  for (int64_t t = 0; t < T; ++t) {
    const double k = pos0 + static_cast<double>(t);
    float* row = out + t * d;
    for (int64_t i = 0; i < n; ++i) {
      const double w = std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(d));
      const double s = std::sin(k * w), c = std::cos(k * w);
      if (half) {
        row[i] = static_cast<float>(s);
        row[n + i] = static_cast<float>(c);
      } else {
        row[2 * i] = static_cast<float>(s);
        row[2 * i + 1] = static_cast<float>(c);
      }
    }
  }
}

}  // namespace posformer
