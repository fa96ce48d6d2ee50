// Config parsing: defaults, round trip, and one refusal per bad-config case with a clear message.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "posformer/core/error.h"
#include "posformer/model/config.h"
#include "posformer/model/config_fields.h"
#include "posformer/model/transformer.h"
#include "test_util.h"

using namespace posformer;
using json = nlohmann::json;

namespace {
// Expects parsing `j` to throw an Error whose message contains every word in `words`.
void expect_refused(const json& j, std::initializer_list<const char*> words) {
  try {
    parse_config(j);
    FAIL() << "config accepted: " << j.dump();
  } catch (const Error& e) {
    std::string msg = e.what();
    for (const char* w : words) EXPECT_NE(msg.find(w), std::string::npos) << "message: " << msg;
  }
}
json base() {
  return json{{"arch", "decoder"}, {"d_model", 64}, {"n_heads", 4}, {"d_ff", 128}};
}
json with(json j, const std::string& k, json v) {
  j[k] = v;
  return j;
}
}  // namespace

TEST(Config, DefaultsAndRoundTrip) {
  ModelConfig c = parse_config(json::object());
  EXPECT_EQ(c.arch, Arch::Decoder);
  EXPECT_EQ(c.head_dim(), 64);
  EXPECT_EQ(c.kv_heads(), 4);
  json j = base();
  j["position"] = {{"type", "rope"}, {"layout", "half"}, {"rotary_dim", 8}, {"base", 500.0}};
  j["attention"] = {{"type", "softmax"}, {"scale", 0.5}};
  ModelConfig c2 = parse_config(j);
  ModelConfig c3 = parse_config(config_to_json(c2));
  EXPECT_EQ(config_to_json(c2), config_to_json(c3));
  EXPECT_EQ(c3.position.layout, "half");
  EXPECT_EQ(c3.position.rotary_dim, 8);
  EXPECT_DOUBLE_EQ(*c3.attention.scale, 0.5);
}

TEST(Config, RefusesHeadsNotDividingDModel) {
  expect_refused(with(base(), "n_heads", 5), {"n_heads", "5", "d_model", "64"});
}
TEST(Config, RefusesKvHeadsNotDividingHeads) {
  expect_refused(with(base(), "n_kv_heads", 3), {"n_kv_heads", "3"});
}
TEST(Config, RefusesOddRotaryDim) {
  expect_refused(with(base(), "position", {{"type", "rope"}, {"rotary_dim", 7}}),
                 {"rotary_dim", "7", "even"});
}
TEST(Config, RefusesRotaryDimPastHeadDim) {
  expect_refused(with(base(), "position", {{"type", "rope"}, {"rotary_dim", 32}}),
                 {"rotary_dim", "32", "16"});
}
TEST(Config, RefusesOddHeadDimForRope) {
  json j = base();
  j["d_model"] = 60;
  j["n_heads"] = 4;  // D = 15
  j["position"] = {{"type", "rope"}};
  expect_refused(j, {"rotary_dim", "15"});
}
TEST(Config, RefusesUnknownPositionType) {
  expect_refused(with(base(), "position", {{"type", "rotary"}}), {"position.type", "rotary"});
}
TEST(Config, RefusesUnknownAttentionType) {
  expect_refused(with(base(), "attention", {{"type", "flashy"}}), {"attention.type", "flashy"});
}
TEST(Config, LinearAttentionParsesAndRefusesAScale) {
  json j = with(base(), "attention", {{"type", "linear"}});
  j["position"] = {{"type", "sinusoidal"}};
  ModelConfig c = parse_config(j);
  EXPECT_EQ(c.attention.type, "linear");
  EXPECT_FALSE(c.attention.scale);
  EXPECT_EQ(config_to_json(parse_config(config_to_json(c))), config_to_json(c));
  // phi(q) . phi(k) has no scale: a set one would silently do nothing, so it is refused
  expect_refused(with(base(), "attention", {{"type", "linear"}, {"scale", 0.5}}),
                 {"attention.scale", "linear"});
  expect_refused(with(base(), "attention", {{"type", "linear"}, {"scale", 1.0}}),
                 {"attention.scale", "linear"});
}
TEST(Config, AttentionResidualParsesAndRefusesNonBooleans) {
  ModelConfig c = parse_config(with(base(), "attention", {{"residual", true}}));
  EXPECT_TRUE(c.attention.residual);
  EXPECT_EQ(config_to_json(c)["attention"]["residual"], true);
  EXPECT_EQ(config_to_json(parse_config(config_to_json(c))), config_to_json(c));
  EXPECT_FALSE(parse_config(base()).attention.residual);
  expect_refused(with(base(), "attention", {{"residual", "yes"}}), {"attention.residual"});
  expect_refused(with(base(), "attention", {{"residual", 1}}), {"attention.residual"});
  // linear attention has no scores to carry: refused when the model is built, naming both
  json j = with(base(), "attention", {{"type", "linear"}, {"residual", true}});
  j["position"] = {{"type", "none"}};
  try {
    Transformer m(parse_config(j));
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("residual"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("linear"), std::string::npos) << e.what();
  }
}
TEST(Config, RefusesUnknownArchActivationNorm) {
  expect_refused(with(base(), "arch", "encdec"), {"arch", "encdec"});
  expect_refused(with(base(), "activation", "tanh"), {"activation", "tanh"});
  expect_refused(with(base(), "norm", "batchnorm"), {"norm", "batchnorm"});
  expect_refused(with(base(), "norm_position", "middle"), {"norm_position", "middle"});
  expect_refused(with(base(), "head", "cls"), {"head", "cls"});
}
TEST(Config, RefusesNegativeAndZeroSizes) {
  expect_refused(with(base(), "d_model", -64), {"d_model", "-64"});
  expect_refused(with(base(), "n_layers", 0), {"n_layers", "0"});
  expect_refused(with(base(), "d_ff", -1), {"d_ff", "-1"});
  expect_refused(with(base(), "vocab_size", 0), {"vocab_size"});
  expect_refused(with(base(), "max_len", -5), {"max_len", "-5"});
  expect_refused(with(base(), "n_kv_heads", -2), {"n_kv_heads", "-2"});
}
TEST(Config, RefusesHugeSizes) {
  expect_refused(with(base(), "d_model", int64_t{1} << 40), {"d_model"});
  expect_refused(with(base(), "vocab_size", int64_t{1} << 40), {"vocab_size"});
}
TEST(Config, RefusesWrongJsonTypes) {
  expect_refused(with(base(), "d_model", "64"), {"d_model", "integer"});
  expect_refused(with(base(), "d_model", 64.5), {"d_model", "integer"});
  expect_refused(with(base(), "bias", 1), {"bias", "true or false"});
  expect_refused(with(base(), "position", "rope"), {"position", "object"});
  expect_refused(json::array(), {"object"});
}
TEST(Config, RefusesUnknownFields) {
  expect_refused(with(base(), "d_modle", 64), {"unknown field", "d_modle"});
  expect_refused(with(base(), "position", {{"type", "rope"}, {"bsae", 10}}), {"position.bsae"});
}
TEST(Config, RefusesParametersOfOtherSchemes) {
  expect_refused(with(base(), "position", {{"type", "alibi"}, {"base", 10000}}),
                 {"position.base", "alibi"});
  expect_refused(with(base(), "position", {{"type", "rope"}, {"num_buckets", 32}}),
                 {"num_buckets", "rope"});
}
TEST(Config, RefusesBadSchemeParameters) {
  expect_refused(with(base(), "position", {{"type", "rope"}, {"base", 0.5}}), {"base", "0.5"});
  expect_refused(with(base(), "position", {{"type", "rope"}, {"layout", "neox"}}),
                 {"layout", "neox"});
  expect_refused(with(base(), "position", {{"type", "t5"}, {"num_buckets", 31}}),
                 {"num_buckets", "31"});
  expect_refused(with(base(), "position", {{"type", "t5"}, {"max_distance", 4}}),
                 {"max_distance", "4"});
  expect_refused(with(base(), "position", {{"type", "shaw"}, {"clip", 0}}), {"clip", "0"});
  expect_refused(with(base(), "position", {{"type", "deberta"}, {"span", -3}}), {"span", "-3"});
  expect_refused(with(base(), "attention", {{"type", "softmax"}, {"scale", -1.0}}), {"scale"});
  expect_refused(with(base(), "norm_eps", 0.0), {"norm_eps"});
}
TEST(Config, EmbedScaleNumberOrSqrtD) {
  EXPECT_DOUBLE_EQ(parse_config(base()).token_embed_scale(), 1.0);
  ModelConfig c = parse_config(with(base(), "embed_scale", "sqrt_d"));
  EXPECT_TRUE(c.embed_scale_sqrt_d);
  EXPECT_DOUBLE_EQ(c.token_embed_scale(), 8.0);  // sqrt(64)
  EXPECT_EQ(config_to_json(c)["embed_scale"], "sqrt_d");
  EXPECT_EQ(config_to_json(parse_config(config_to_json(c))), config_to_json(c));
  ModelConfig c2 = parse_config(with(base(), "embed_scale", 2.5));
  EXPECT_DOUBLE_EQ(c2.token_embed_scale(), 2.5);
  EXPECT_DOUBLE_EQ(config_to_json(c2)["embed_scale"].get<double>(), 2.5);
  EXPECT_DOUBLE_EQ(parse_config(with(base(), "embed_scale", 3)).token_embed_scale(), 3.0);
}
TEST(Config, RefusesBadEmbedScale) {
  expect_refused(with(base(), "embed_scale", 0.0), {"embed_scale", "positive", "sqrt_d", "0"});
  expect_refused(with(base(), "embed_scale", 0), {"embed_scale", "0"});
  expect_refused(with(base(), "embed_scale", -2.0), {"embed_scale", "-2"});
  expect_refused(with(base(), "embed_scale", INFINITY), {"embed_scale", "inf"});
  expect_refused(with(base(), "embed_scale", "sqrt"), {"embed_scale", "\"sqrt\""});
  expect_refused(with(base(), "embed_scale", "SQRT_D"), {"embed_scale", "SQRT_D"});
  expect_refused(with(base(), "embed_scale", "8"), {"embed_scale", "\"8\""});
  expect_refused(with(base(), "embed_scale", true), {"embed_scale", "true"});
  expect_refused(with(base(), "embed_scale", nullptr), {"embed_scale", "null"});
  ModelConfig c = parse_config(base());
  c.embed_scale = std::nan("");
  try {
    validate_config(c);
    FAIL() << "NaN embed_scale accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("embed_scale"), std::string::npos) << e.what();
  }
}
TEST(Config, RefusesOddWidthForSinusoids) {
  json j = base();
  j["d_model"] = 63;
  j["n_heads"] = 3;
  j["position"] = {{"type", "sinusoidal"}};
  expect_refused(j, {"sinusoidal", "63"});
}
TEST(Config, TextParsingNamesTheSource) {
  try {
    parse_config_text("{\"d_model\": ", "cfg.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("cfg.json"), std::string::npos);
  }
  EXPECT_THROW(load_config("/nonexistent/config.json"), Error);
}

#include "posformer/core/tensor.h"

TEST(Tensor, HalfConversionsRoundTripIncludingSubnormals) {
  for (float f : {0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 3.0517578e-05f,
                  1e-6f, -7.5e-7f})
    EXPECT_NEAR(f16_to_f32(f32_to_f16(f)), f, std::fabs(f) * 1e-3 + 3e-8) << f;
  EXPECT_EQ(f16_to_f32(f32_to_f16(std::ldexp(1.0f, -15))), std::ldexp(1.0f, -15));
  EXPECT_EQ(f16_to_f32(f32_to_f16(std::ldexp(1.0f, -24))), std::ldexp(1.0f, -24));
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -26)), 0);
  EXPECT_TRUE(std::isinf(f16_to_f32(f32_to_f16(1e6f))));
  EXPECT_EQ(bf16_to_f32(f32_to_bf16(1.5f)), 1.5f);
  EXPECT_THROW(Tensor({int64_t{1} << 61}, DType::F64), Error);
}

// Closed sets of names are parsed once into enums (core/choice.h): names round-trip in
// enumerator order, and an unknown name is refused naming the field and every allowed name.
TEST(Config, ChoicesParseOnceAndNameEveryAllowedValue) {
  for (Arch a : {Arch::Encoder, Arch::Decoder, Arch::EncoderDecoder})
    EXPECT_EQ(Choice<Arch>::parse(Choice<Arch>(a).name()), a);
  for (Activation a :
       {Activation::Relu, Activation::Gelu, Activation::GeluTanh, Activation::Swiglu})
    EXPECT_EQ(Choice<Activation>::parse(Choice<Activation>(a).name()), a);
  EXPECT_STREQ(Choice<NormPosition>(NormPosition::Post).name(), "post");
  EXPECT_STREQ(Choice<Head>("none").name(), "none");
  ModelConfig c;
  c.arch = "encoder_decoder";  // assigning a name parses it
  EXPECT_EQ(c.arch, Arch::EncoderDecoder);
  EXPECT_TRUE(c.has_encoder() && c.has_decoder());
  pf_test::expect_error([] { (void)Choice<Norm>("batchnorm"); },
                        {"[norm]", "layernorm, rmsnorm", "\"batchnorm\""});
  pf_test::expect_error([] { parse_config_text(R"({"activation": "tanh"})", "t"); },
                        {"activation", "relu", "gelu", "gelu_tanh", "swiglu", "tanh"});
  EXPECT_EQ(
      config_to_json(parse_config_text(R"({"norm": "rmsnorm", "head": "none"})", "t")).at("norm"),
      "rmsnorm");
}

// Each position scheme and attention variant owns its fields (model/config_fields.h): another
// entry's field is refused naming the owner, an unknown key by name, and only the configured
// type's fields are written back; every registered type parses and round-trips.
TEST(Config, SchemesAndVariantsOwnTheirFields) {
  expect_refused(with(base(), "position", {{"type", "rope"}, {"clip", 4}}),
                 {"position.clip", "does not apply to position type \"rope\"", "belongs to shaw"});
  expect_refused(with(base(), "attention", {{"type", "linear"}, {"n_features", 4}}),
                 {"attention.n_features", "\"linear\"", "belongs to performer"});
  expect_refused(with(base(), "position", {{"type", "t5"}, {"buckets", 4}}),
                 {"unknown field 'position.buckets'"});
  expect_refused(with(base(), "position", {{"type", "t5"}, {"num_buckets", 7}}),
                 {"position.num_buckets", "even", "7"});
  expect_refused(with(base(), "position", {{"type", "rope"}, {"base", 0.5}}),
                 {"position.base", "> 1", "0.5"});
  expect_refused(with(base(), "position", {{"type", "rope"}, {"layout", "spiral"}}),
                 {"position.layout", "spiral", "half", "interleaved"});
  for (const auto& e : position_config_entries()) {
    json j = with(base(), "position", {{"type", e.type}});
    if (e.type.size() > 3 && e.type.substr(e.type.size() - 3) == "_2d")  // patch positions
      j["arch"] = "vit", j["image_size"] = 8, j["patch_size"] = 4, j.erase("vocab_size");
    ModelConfig c = parse_config(j);
    const json back = config_to_json(c)["position"];
    EXPECT_EQ(back.size(), e.fields.size() + 1) << e.type << ": " << back.dump();
    EXPECT_EQ(config_to_json(parse_config(config_to_json(c))), config_to_json(c)) << e.type;
  }
  for (const auto& e : attention_config_entries()) {
    json j = with(base(), "attention", {{"type", e.type}});
    j["arch"] = "encoder";  // nystrom serves encoders
    j["position"] = {{"type", e.type == "linear_rope" ? "rope" : "none"}};
    ModelConfig c = parse_config(j);
    EXPECT_EQ(config_to_json(c)["attention"].size(), e.fields.size() + 1) << e.type;
    EXPECT_EQ(config_to_json(parse_config(config_to_json(c))), config_to_json(c)) << e.type;
    Transformer m(c);  // the registry makes every type it parses
  }
}

// arch vit: image fields validated with their names; text fields refused; 2-D schemes need vit;
// variants that cannot serve a scheme are refused naming both.
TEST(Config, VitFields) {
  const json vit = {
      {"arch", "vit"},     {"image_size", {28, 28}}, {"patch_size", 7}, {"channels", 1},
      {"num_classes", 10}, {"d_model", 64},          {"n_heads", 4},    {"d_ff", 128}};
  ModelConfig c = parse_config(vit);
  EXPECT_EQ(c.grid_h(), 4);
  EXPECT_EQ(c.grid_w(), 4);
  EXPECT_TRUE(c.cls_token());
  EXPECT_EQ(config_to_json(parse_config(config_to_json(c))), config_to_json(c));
  EXPECT_EQ(parse_config(with(vit, "image_size", 14)).image_w, 14);
  expect_refused(with(vit, "patch_size", 5), {"image_size", "28", "multiple of patch_size 5"});
  expect_refused(with(vit, "image_size", {28}), {"image_size", "[height, width]"});
  expect_refused(with(vit, "num_classes", 1), {"num_classes", "[2,", "1"});
  expect_refused(with(vit, "channels", 0), {"channels", "0"});
  expect_refused(with(vit, "pool", "max"), {"pool", "max", "cls", "mean"});
  expect_refused(with(vit, "vocab_size", 100), {"vocab_size", "does not apply to arch vit"});
  expect_refused(with(base(), "patch_size", 4), {"patch_size", "arch vit only", "decoder"});
  expect_refused(with(base(), "position", {{"type", "rope_2d"}}),
                 {"rope_2d", "needs arch vit", "decoder"});
  expect_refused(with(vit, "position", {{"type", "rope_2d"}, {"layout", "half"}}),
                 {"position.layout", "half", "axial_interleaved", "axial_split"});
  expect_refused(with(vit, "position", {{"type", "rope_2d"}, {"rotary_dim", 6}}),
                 {"rotary_dim", "multiple of 4", "6"});
  expect_refused(with(vit, "position", {{"type", "learned_2d"}, {"interpolation", "nearest"}}),
                 {"interpolation", "nearest", "bicubic", "bilinear"});
  expect_refused(
      with(with(with(vit, "d_model", 66), "n_heads", 2), "position", {{"type", "sincos_2d"}}),
      {"sincos_2d", "d_model % 4", "66"});
  // a variant that cannot serve a scheme: refused when the model is built, naming both
  json lr = with(vit, "position", {{"type", "rope_2d"}});
  lr["attention"] = {{"type", "linear_rope"}};
  try {
    Transformer m(parse_config(lr));
    ADD_FAILURE() << "linear_rope with rope_2d was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("linear_rope"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("rope_2d"), std::string::npos) << e.what();
  }
  for (const char* pos : {"rope_2d", "learned_2d", "sincos_2d", "none", "learned", "rope", "t5"})
    for (const char* att : {"softmax", "linear", "linear_cos", "performer", "nystrom"}) {
      json j = with(vit, "position", {{"type", pos}});
      j["attention"] = {{"type", att}};
      try {
        Transformer m(parse_config(j));  // builds, or refuses naming the variant
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(att), std::string::npos) << e.what();
      }
    }
}
