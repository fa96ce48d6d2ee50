#include "posformer/model/transformer.h"

#include <sys/stat.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "posformer/attention/attention.h"
#include "posformer/core/io.h"
#include "posformer/model/safetensors.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/matmul.h"
#include "posformer/ops/norm.h"
#include "tape.h"

namespace posformer {

namespace {
std::string lname(const std::string& prefix, int64_t l, const std::string& rest) {
  return prefix + "layers." + std::to_string(l) + "." + rest;
}
// Segment ids [B][T] -> each row's document [lo, hi) (the key window); with `restart`, position
// ids t - lo (each document from 0) into pos.
void segment_windows(const TokenBatch* seg, int64_t B, int64_t T, bool restart, StackIds& ids,
                     StackInput& in, const char* what) {
  if (!seg) return;
  PF_CHECK(static_cast<int64_t>(seg->size()) == B, "[input] ", seg->size(), " rows of ", what,
           " for ", B, " sequences");
  ids.lo.resize(static_cast<size_t>(B * T)), ids.hi.resize(static_cast<size_t>(B * T));
  if (restart) {
    ids.pos.B = B, ids.pos.T = T, ids.pos.axes = 1;
    ids.pos.ids.resize(static_cast<size_t>(B * T));
  }
  for (int64_t b = 0; b < B; ++b) {
    const std::vector<int32_t>& s = (*seg)[b];
    PF_CHECK(static_cast<int64_t>(s.size()) == T, "[input] ", what, " row ", b, " has ", s.size(),
             " entries for ", T, " tokens");
    int64_t t0 = 0;
    for (int64_t t = 1; t <= T; ++t) {
      if (t < T) {
        PF_CHECK(s[t] >= s[t - 1], "[input] ", what, " must not decrease along a row (a document ",
                 "is one run of equal ids): ", s[t - 1], " then ", s[t], " at (", b, ", ", t, ")");
        if (s[t] == s[t - 1]) continue;
      }
      for (int64_t r = t0; r < t; ++r) {
        ids.lo[b * T + r] = static_cast<int32_t>(t0), ids.hi[b * T + r] = static_cast<int32_t>(t);
        if (restart) ids.pos.ids[b * T + r] = static_cast<int32_t>(r - t0);
      }
      t0 = t;
    }
  }
  in.key_lo = ids.lo.data(), in.key_hi = ids.hi.data();
  if (restart) in.pos = ids.pos.view();
}
}  // namespace

void check_tokens(const TokenBatch& tokens, int64_t vocab, const std::string& what) {
  PF_CHECK(!tokens.empty(), "[input] ", what, ": no sequences given");
  const size_t T = tokens[0].size();
  PF_CHECK(T > 0, "[input] ", what, ": empty token sequence");
  for (size_t b = 0; b < tokens.size(); ++b) {
    PF_CHECK(tokens[b].size() == T, "[input] ", what, ": sequence ", b, " has ", tokens[b].size(),
             " tokens, sequence 0 has ", T, " (a batch needs equal lengths)");
    for (size_t t = 0; t < T; ++t)
      PF_CHECK(tokens[b][t] >= 0 && tokens[b][t] < vocab, "[input] ", what, ": token ",
               tokens[b][t], " at position ", t, " is outside the vocabulary [0, ", vocab, ")");
  }
}

Transformer::Transformer(const ModelConfig& cfg) : cfg_(cfg) {
  validate_config(cfg_);
  const int64_t d = cfg_.d_model, V = cfg_.vocab_size;
  if (cfg_.is_vit()) {  // patch embedding (timm's Conv2d weight flattened) and CLS token
    const int64_t p = cfg_.patch_size;
    specs_.push_back(
        {"patch_embed.weight", {d, cfg_.channels * p * p}, Init::Normal, "embedding", true});
    if (cfg_.bias) specs_.push_back({"patch_embed.bias", {d}, Init::Zeros, "embedding", false});
    if (cfg_.cls_token()) specs_.push_back({"cls_token", {d}, Init::Normal, "embedding", false});
  } else {
    specs_.push_back({"embed.weight", {V, d}, Init::Normal, "embedding", true});
  }
  auto geom = [&](const std::string& prefix, bool causal) {
    StackGeom g{prefix,          cfg_.n_layers, d,      cfg_.n_heads, cfg_.kv_heads(),
                cfg_.head_dim(), cfg_.max_len,  causal, cfg_.bias};
    if (cfg_.is_vit()) g.grid_h = cfg_.grid_h(), g.grid_w = cfg_.grid_w(), g.cls = cfg_.cls_token();
    return g;
  };
  if (cfg_.has_encoder()) {
    const StackGeom eg = geom("encoder.", false);
    enc_pe_ = make_position_encoding(cfg_.position, eg);
    enc_attn_ = make_attention(cfg_.attention, eg, *enc_pe_);
    declare_stack("encoder.", false, *enc_pe_, *enc_attn_);
  }
  if (cfg_.has_decoder()) {
    const StackGeom dg = geom("decoder.", true);
    dec_pe_ = make_position_encoding(cfg_.position, dg);
    dec_attn_ = make_attention(stack_attention(cfg_.attention, cfg_.arch, true), dg, *dec_pe_);
    declare_stack("decoder.", cfg_.arch == Arch::EncoderDecoder, *dec_pe_, *dec_attn_);
  }
  if (cfg_.is_vit()) {
    specs_.push_back({"head.weight", {cfg_.num_classes, d}, Init::Normal, "head", true});
    if (cfg_.bias) specs_.push_back({"head.bias", {cfg_.num_classes}, Init::Zeros, "head", false});
  } else if (cfg_.head == Head::Lm && !cfg_.tie_embeddings)
    specs_.push_back({"lm_head.weight", {V, d}, Init::Normal, "head", true});
}

void Transformer::declare_stack(const std::string& prefix, bool cross, const PositionEncoding& pe,
                                const Attention& attn) {
  const int64_t d = cfg_.d_model, HD = cfg_.n_heads * cfg_.head_dim(),
                KD = cfg_.kv_heads() * cfg_.head_dim(), F = cfg_.d_ff;
  const bool ln = cfg_.norm == Norm::LayerNorm;
  auto norm = [&](const std::string& n) {
    specs_.push_back({n + ".weight", {d}, Init::Ones, "norm", false});
    if (ln) specs_.push_back({n + ".bias", {d}, Init::Zeros, "norm", false});
  };
  auto lin = [&](const std::string& n, int64_t out, int64_t in, const char* comp) {
    specs_.push_back({n + ".weight", {out, in}, Init::Normal, comp, true});
    if (cfg_.bias) specs_.push_back({n + ".bias", {out}, Init::Zeros, comp, false});
  };
  pe.declare(specs_);
  attn.declare(specs_);
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    norm(lname(prefix, l, "attn_norm"));
    for (const std::string& a : cross ? std::vector<std::string>{"attn", "cross_attn"}
                                      : std::vector<std::string>{"attn"}) {
      if (a == "cross_attn") norm(lname(prefix, l, "cross_norm"));
      lin(lname(prefix, l, a + ".q"), HD, d, "attention");
      lin(lname(prefix, l, a + ".k"), KD, d, "attention");
      lin(lname(prefix, l, a + ".v"), KD, d, "attention");
      lin(lname(prefix, l, a + ".o"), d, HD, "attention");
    }
    norm(lname(prefix, l, "ffn_norm"));
    lin(lname(prefix, l, "ffn.w1"), F, d, "ffn");
    lin(lname(prefix, l, "ffn.w2"), d, F, "ffn");
    if (cfg_.activation == Activation::Swiglu) lin(lname(prefix, l, "ffn.w3"), F, d, "ffn");
  }
  if (cfg_.norm_position == NormPosition::Pre) norm(prefix + "final_norm");
}

Transformer Transformer::random_init(const ModelConfig& cfg, uint64_t seed) {
  Transformer m(cfg);
  for (const ParamSpec& s : m.specs_)
    if (!s.buffer) m.params_.add(s.name, init_param(s, seed));
  m.redraw_buffers(0);
  return m;
}

void Transformer::redraw_buffers(uint64_t draw) {
  packed_.clear();
  if (enc_attn_) enc_attn_->init_buffers(params_, draw);
  if (dec_attn_) dec_attn_->init_buffers(params_, draw);
}

void Transformer::set_weights(const std::map<std::string, Tensor>& tensors,
                              const std::string& what) {
  packed_.clear();
  ParamStore store;
  for (const ParamSpec& s : specs_) {
    auto it = tensors.find(s.name);
    PF_CHECK(it != tensors.end(), "[checkpoint] ", what, ": tensor '", s.name,
             "' required by the config is missing");
    const Tensor& t = it->second;
    PF_CHECK(t.shape() == s.shape, "[checkpoint] ", what, ": tensor '", s.name, "' has shape ",
             shape_str(t.shape()), ", the config needs ", shape_str(s.shape));
    PF_CHECK(t.dtype() == DType::F32 || t.dtype() == DType::F16 || t.dtype() == DType::BF16 ||
                 t.dtype() == DType::F64,
             "[checkpoint] ", what, ": tensor '", s.name, "' has dtype ", dtype_name(t.dtype()),
             ", expected a floating type");
    store.add(s.name, t.to(DType::F32));
  }
  if (tensors.size() != specs_.size()) {
    for (const auto& [name, t] : tensors) {
      bool known = false;
      for (const ParamSpec& s : specs_) known = known || s.name == name;
      PF_CHECK(known, "[checkpoint] ", what, ": tensor '", name,
               "' is not used by this config (checkpoint from a different config?)");
    }
  }
  params_ = std::move(store);
}

Transformer Transformer::load(const std::string& dir) {
  const std::string cfg_path = dir + "/config.json";
  PF_CHECK(std::filesystem::is_directory(dir), "[model] ", dir, " is not a model directory");
  Transformer m(load_config(cfg_path));
  const std::string wpath = dir + "/model.safetensors";
  {
    SafetensorsFile f = load_safetensors(wpath);
    m.set_weights(f.tensors, wpath);
  }                  // the file image is freed before the packed copies are made
  m.pack_weights();  // inference layout; the trainer repacks with the backward layout
  return m;
}

void Transformer::save(const std::string& dir) const {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  PF_CHECK(!ec, "[model] cannot create directory ", dir, ": ", ec.message());
  atomic_write_file(dir + "/config.json", config_to_json(cfg_).dump(2) + "\n");
  save_safetensors(dir + "/model.safetensors", params_.all(),
                   {{"format", "posformer"}, {"posformer_version", "0.1.0"}});
}

Tensor Transformer::embed(const Stack& st, const TokenBatch& tokens, const Positions& pos) const {
  const int64_t B = static_cast<int64_t>(tokens.size()), T = tokens[0].size(), d = cfg_.d_model;
  Tensor x({B, T, d});
  float* xp = x.data<float>();
  const float* E = params_.f32("embed.weight");
  const float s = static_cast<float>(cfg_.token_embed_scale());  // embed_scale (1 = a copy)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const float* er = E + static_cast<int64_t>(tokens[b][t]) * d;
      float* row = xp + (b * T + t) * d;
      if (s == 1.0f)
        std::copy_n(er, d, row);
      else
        for (int64_t i = 0; i < d; ++i) row[i] = er[i] * s;
    }
  st.pe->embed(params_, xp, pos);
  return x;
}

Transformer::Geometry Transformer::geometry() const {
  const ModelConfig& c = cfg_;
  Geometry g;
  g.d = c.d_model, g.H = c.n_heads, g.Hkv = c.kv_heads(), g.D = c.head_dim();
  g.HD = g.H * g.D, g.KD = g.Hkv * g.D, g.F = c.d_ff;
  g.pre = c.norm_position == NormPosition::Pre, g.ln = c.norm == Norm::LayerNorm;
  g.swiglu = c.activation == Activation::Swiglu;
  switch (c.activation) {  // the op applied to W1 x + b1 (SwiGLU: its own op, silu(a) * b)
    case Activation::Relu:
      g.act = ops::Act::Relu;
      break;
    case Activation::Gelu:
      g.act = ops::Act::Gelu;
      break;
    case Activation::GeluTanh:
      g.act = ops::Act::GeluTanh;
      break;
    case Activation::Swiglu:
      g.act = ops::Act::Identity;
      break;
  }
  return g;
}

void Transformer::norm_fwd(const std::string& n, const float* in, float* out, int64_t rows,
                           uint16_t* out_bf16) const {
  if (cfg_.norm == Norm::LayerNorm)
    ops::layernorm(in, params_.f32(n + ".weight"), params_.f32(n + ".bias"), out, rows,
                   cfg_.d_model, static_cast<float>(cfg_.norm_eps), out_bf16);
  else
    ops::rmsnorm(in, params_.f32(n + ".weight"), out, rows, cfg_.d_model,
                 static_cast<float>(cfg_.norm_eps), out_bf16);
}

bool Transformer::bf16_weight(const std::string& n) const {
  const auto it = packed_.find(n + ".weight");
  return it != packed_.end() && it->second.precision() == ops::Precision::BF16;
}

const ops::Bf16Rows* Transformer::shared_bf16_input(const std::string& n, const float* in,
                                                    int64_t M, int64_t K) const {
  const auto it = packed_.find(n + ".weight");
  if (it == packed_.end() || it->second.precision() != ops::Precision::BF16) return nullptr;
  thread_local ops::Bf16Rows rows;
  rows.round(in, K, M, K);
  return &rows;
}

void Transformer::lin_fwd(const std::string& n, const float* in, float* out, int64_t M, int64_t N,
                          int64_t K, ops::LinearEpilogue ep, const ops::Bf16Rows* xb) const {
  const float* b = params_.f32_or_null(n + ".bias");
  const auto it = packed_.find(n + ".weight");
  if (it != packed_.end() && it->second.N() == N && it->second.K() == K)
    return ops::linear_packed(in, it->second, b, out, M, ep, xb);
  const float* W = params_.f32(n + ".weight");
  if (ep.accumulate) {
    ops::gemm(false, true, M, N, K, 1.0f, in, K, W, K, 1.0f, out, N);
    if (b) ops::bias_act(ops::Act::Identity, out, b, M, N);
    return;
  }
  ops::linear(in, W, b, out, M, N, K);
  if (ep.act != ops::Act::Identity) ops::activation(ep.act, out, out, M * N);
}

bool Transformer::lin_fwd_group(std::initializer_list<GroupOut> outs, const float* in, int64_t M,
                                int64_t K, const ops::Bf16Rows* xb) const {
  std::vector<ops::PackedLinearJob> jobs;
  for (const GroupOut& o : outs) {
    const auto it = packed_.find(o.name + ".weight");
    if (it == packed_.end() || it->second.N() != o.N || it->second.K() != K) return false;
    jobs.push_back({&it->second, params_.f32_or_null(o.name + ".bias"), o.out});
  }
  ops::linear_packed_group(in, M, jobs.data(), static_cast<int64_t>(jobs.size()), xb);
  return true;
}

bool Transformer::packs(const ParamSpec& s) {
  // names *.attn.{q,k,v,o}.weight, *.cross_attn.{q,k,v,o}.weight, *.ffn.w{1,2,3}.weight (plain
  // string tests: GCC 12 warns inside <regex> under ASan, and this runs per parameter)
  if (s.buffer || s.shape.size() != 2) return false;
  const std::string& n = s.name;
  auto ends = [&](const std::string& tail) {
    return n.size() > tail.size() && n.compare(n.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const char* sub : {".attn.", ".cross_attn."})
    for (const char* w : {"q", "k", "v", "o"})
      if (ends(std::string(sub) + w + ".weight")) return true;
  for (const char* w : {"w1", "w2", "w3"})
    if (ends(std::string(".ffn.") + w + ".weight")) return true;
  return false;
}

void Transformer::pack_weights(bool backward) {
  // entries stay: a weight packed again with the same sizes and precision refills its memory
  const char* env = std::getenv("POSFORMER_PACKED");
  if (env && env[0] == '0' && precision_ == ops::Precision::F32) return packed_.clear();
  for (const ParamSpec& s : specs_)
    if (packs(s))
      packed_[s.name].pack(params_.f32(s.name), s.shape[0], s.shape[1], backward, precision_);
}

AttnDesc Transformer::attn_desc(const Stack& st, bool self, const StackInput& in,
                                int64_t Tk) const {
  const Geometry g = geometry();
  AttnDesc desc;
  desc.B = in.pos.B, desc.Tq = in.pos.T, desc.Tk = Tk, desc.H = g.H, desc.Hkv = g.Hkv, desc.D = g.D;
  desc.ldq = g.HD, desc.ldk = g.KD, desc.ldv = g.KD, desc.ldo = g.HD;
  desc.causal = self && st.causal;
  // rows: a run starts at pos0 (decoding: the rows already cached); ids are positions only
  const int64_t row0 = in.pos.is_run() ? in.pos.pos0 : in.row0;
  desc.q_pos0 = row0, desc.k_pos0 = self ? row0 : 0;
  if (self && !in.pos.is_run() && in.pos.axes == 1 && !in.shifted_ids)
    desc.q_ids = desc.k_ids = in.pos.ids;
  desc.key_len = self ? in.len : in.enc_len;
  if (self) desc.key_lo = in.key_lo, desc.key_hi = in.key_hi;  // documents; left padding
  desc.self_attention = self;
  desc.params = &params_;
  const float default_scale =
      self ? st.pe->default_scale(g.D) : static_cast<float>(1.0 / std::sqrt(double(g.D)));
  desc.scale = cfg_.attention.scale ? static_cast<float>(*cfg_.attention.scale) : default_scale;
  return desc;
}

float* StackCall::buf(Tensor SubTape::*field, SubTape* keep, const Shape& shape) {
  Tensor& t = keep ? keep->*field : ws.*field;
  if (keep ? t.shape() != shape : t.numel() < shape_numel(shape)) t = Tensor(shape);
  return t.data<float>();
}

// out[BT, d] = o-projection of attention over `in`: self-attention (keys from `in`, rotary and
// relative positions, causal in a decoder, the decode state when decoding) or cross-attention
// (keys from the encoder output, computed once per decode cache).
void Transformer::attention_sublayer(const Stack& st, StackCall& c, int64_t l, bool self,
                                     const float* in, float* out, SubTape* keep, bool acc) const {
  const Geometry g = geometry();
  const int64_t B = c.B, T = c.T, Ts = c.Ts, d = g.d, BT = B * T, Tkv = std::max(T, Ts);
  const std::string a = lname(st.prefix, l, self ? "attn" : "cross_attn");
  const float* kv_in = self ? in : c.enc;
  const int64_t Tk = self ? T : Ts;
  float* q = c.buf(&SubTape::q, keep, {BT, g.HD});
  float* k = c.buf(&SubTape::k, keep, {B * Tkv, g.KD});
  float* v = c.buf(&SubTape::v, keep, {B * Tkv, g.KD});
  float* att = c.buf(&SubTape::att, keep, {BT, g.HD});
  KVCache* cache = c.cache;
  // q, k, v read `in`: rounded once (by the norm when training, kept in the tape)
  const ops::Bf16Rows* inb =
      keep && keep->hb.holds(in, d, BT, d) ? &keep->hb : shared_bf16_input(a + ".q", in, BT, d);
  const bool cached_cross = cache && !self && cache->ck[l].numel() > 0;
  // self-attention: q, k and v of the same rows in one call where the weights allow it
  const bool grouped =
      self && lin_fwd_group({{a + ".q", q, g.HD}, {a + ".k", k, g.KD}, {a + ".v", v, g.KD}}, in, BT,
                            d, inb);
  if (!grouped) {
    lin_fwd(a + ".q", in, q, BT, g.HD, d, {}, inb);
    if (!cached_cross) {
      lin_fwd(a + ".k", kv_in, k, B * Tk, g.KD, d, {}, inb);
      lin_fwd(a + ".v", kv_in, v, B * Tk, g.KD, d, {}, inb);
    }
  }
  if (self && st.pe->rotary() && !st.attn->caps().rotary_inside) {
    st.pe->rotate(q, g.H, g.HD, c.in.pos);
    st.pe->rotate(k, g.Hkv, g.KD, c.in.pos);
  }
  AttnDesc desc = attn_desc(st, self, c.in, Tk);
  desc.q = q, desc.k = k, desc.v = v, desc.out = att;
  desc.params = &params_, desc.param_prefix = a + ".";  // a variant's own weights (nystrom conv)
  desc.bf16 = attention_bf16_ && !keep;                 // bf16 inference; training stays fp32
  // Relative schemes add score terms in self-attention only; with attention.residual
  // (RealFormer) layer l adds layer l-1's pre-softmax scores and records its own for layer l+1.
  const HookMaker make_hook = [&](const AttnDesc& ad) -> std::unique_ptr<ScoreHook> {
    if (!self) return nullptr;
    std::unique_ptr<ScoreHook> hook = st.pe->prepare(params_, AttnInputs{l, &ad});
    if (!cfg_.attention.residual) return hook;
    Tensor &cur = c.carried[l % 2], &prev = c.carried[(l + 1) % 2];
    const Shape shape{ad.B, ad.H, ad.Tq, ad.Tk};
    if (cur.shape() != shape) cur = Tensor(shape);
    const float* in = l > 0 ? prev.data<float>() : nullptr;
    return chain_hooks(std::move(hook),
                       std::make_unique<ResidualScoresHook>(ad, in, cur.data<float>()));
  };
  if (cache && self && st.pe->rotary() && st.pe->length_dependent())
    rerotate_cached_keys(st, *cache->self[l], c.in.pos);
  if (cache && self) {  // the variant appends the new keys/values to its state, attends over all
    st.attn->decode(*cache->self[l], desc, make_hook);
  } else {
    if (cache) {  // cross-attention: encoder keys/values computed once per cache
      if (!cached_cross) {
        cache->ck[l] = Tensor({B, Ts, g.KD}), cache->cv[l] = Tensor({B, Ts, g.KD});
        std::copy_n(k, B * Ts * g.KD, cache->ck[l].data<float>());
        std::copy_n(v, B * Ts * g.KD, cache->cv[l].data<float>());
      }
      desc.k = cache->ck[l].data<float>(), desc.v = cache->cv[l].data<float>();
    }
    std::unique_ptr<ScoreHook> hook = make_hook(desc);
    desc.hook = hook.get();
    st.attn->forward(desc, keep ? &keep->saved : nullptr);
  }
  const ops::Bf16Rows* attb = nullptr;  // training in bf16: kept for the o weight's gradient
  if (keep && bf16_weight(a + ".o")) keep->attb.round(att, g.HD, BT, g.HD), attb = &keep->attb;
  lin_fwd(a + ".o", att, out, BT, d, g.HD, {ops::Act::Identity, acc}, attb);
}

// Dynamic NTK: the frequencies follow the current length, so the keys cached at an earlier
// length (rotated by its frequencies) are re-rotated to those of this call's length.
void Transformer::rerotate_cached_keys(const Stack& st, AttnDecodeState& state,
                                       const Positions& pos) const {
  const int64_t len = state.length(), to_len = pos.range().second + 1;
  if (len == 0) return;
  const KeyRowsView kr = state.key_rows();
  PF_CHECK(kr.k, "[generate] position.scaling dynamic_ntk needs decode states with key rows");
  for (int64_t b = 0; b < kr.B; ++b)
    st.pe->rerotate(kr.k + b * kr.stride * kr.width, cfg_.kv_heads(), kr.width,
                    Positions::run(1, len, 0), len, to_len);
}

// out[BT, d] = W2 act(W1 in + b1) + b2, or W2 (silu(W1 in + b1) * (W3 in + b3)) + b2 (SwiGLU).
void Transformer::ffn_sublayer(const Stack& st, StackCall& c, int64_t l, const float* in,
                               float* out, SubTape* keep, bool acc) const {
  const Geometry g = geometry();
  const int64_t BT = c.B * c.T, d = g.d;
  const std::string w1 = lname(st.prefix, l, "ffn.w1"), w3 = lname(st.prefix, l, "ffn.w3");
  float* f1 = c.buf(&SubTape::f1, keep, {BT, g.F});
  float* fa = keep ? c.buf(&SubTape::fa, keep, {BT, g.F}) : f1;  // in place when inferring
  // inference on packed weights: bias + activation in the W1 gemm's epilogue
  const bool fuse_act = !keep && !g.swiglu && weights_packed();
  // w1 (and w3) read `in`: rounded once (by the norm when training, kept in the tape)
  const ops::Bf16Rows* inb = keep && keep->hb.holds(in, d, BT, d) ? &keep->hb
                             : g.swiglu                           ? shared_bf16_input(w1, in, BT, d)
                                                                  : nullptr;
  lin_fwd(w1, in, f1, BT, g.F, d, {fuse_act ? g.act : ops::Act::Identity, false}, inb);
  const std::string w2 = lname(st.prefix, l, "ffn.w2");
  // training in bf16: fa rounded once (by the activation) for w2 and its weight gradient
  ops::Bf16Rows* fab = keep && bf16_weight(w2) ? &keep->fab : nullptr;
  if (g.swiglu) {
    float* f3 = c.buf(&SubTape::f3, keep, {BT, g.F});
    lin_fwd(w3, in, f3, BT, g.F, d, {}, inb);
    ops::swiglu(f1, f3, fa, BT * g.F);
    if (fab) fab->round(fa, g.F, BT, g.F);
  } else if (!fuse_act) {
    ops::activation(g.act, f1, fa, BT * g.F, fab ? fab->prepare(fa, g.F, BT, g.F) : nullptr);
  }
  lin_fwd(w2, fa, out, BT, d, g.F, {ops::Act::Identity, acc}, fab);
}

// One residual sublayer of layer l in place on x [BT, d]: pre-LN x = x + f(N(x)), post-LN
// x = N(x + f(x)); f is self-attention (sub 0), cross-attention (1) or the FFN (2).
void Transformer::residual_sublayer(const Stack& st, StackCall& c, int64_t l, int sub,
                                    float* x) const {
  const Geometry g = geometry();
  const int64_t BT = c.B * c.T, d = g.d;
  SubTape* keep = c.tape ? &c.tape->layers[l][sub] : nullptr;
  const std::string nn = lname(st.prefix, l, kSublayerNorms[sub]);
  float* h = c.buf(&SubTape::h, keep, {BT, d});
  if (keep) keep->hb.clear(), keep->attb.clear(), keep->fab.clear();  // refilled below if bf16
  // inference on packed weights: the residual add fused into the sublayer's last gemm (x += ...;
  // its input is never x itself, so reading x earlier in f is safe)
  const bool acc = !keep && weights_packed();
  float* out = acc ? x : c.buf(&SubTape::out, keep, {BT, d});
  auto f = [&](const float* in) {
    if (sub == 2)
      ffn_sublayer(st, c, l, in, out, keep, acc);
    else
      attention_sublayer(st, c, l, sub == 0, in, out, keep, acc);
  };
  // training with dropout: f's output is dropped before the residual add (the tape keeps the
  // undropped `out`; nothing reads it back)
  auto drop = [&] {
    if (keep && cfg_.dropout > 0)
      ops::dropout(out, BT * d, static_cast<float>(cfg_.dropout),
                   dropout_key(st.prefix, c.in.dropout_seed, l, sub));
  };
  if (g.pre) {  // x = x + f(N(x))
    if (keep) ops::copy(x, c.buf(&SubTape::norm_in, keep, {BT, d}), BT * d);
    // training in bf16: h also rounded by the norm, for f's first linears and their gradients
    const std::string first = lname(st.prefix, l, sub == 2 ? "ffn.w1" : kSublayerAttn[sub]);
    norm_fwd(nn, x, h, BT, keep && bf16_weight(first) ? keep->hb.prepare(h, d, BT, d) : nullptr);
    f(h);
    drop();
    if (!acc) ops::add_inplace(x, out, BT * d);
  } else {  // x = N(x + f(x))
    if (keep) ops::copy(x, h, BT * d);
    f(x);
    drop();
    if (!acc) ops::add_inplace(x, out, BT * d);
    if (keep) ops::copy(x, c.buf(&SubTape::norm_in, keep, {BT, d}), BT * d);
    norm_fwd(nn, x, x, BT);
  }
}

void Transformer::run_stack(const Stack& st, float* x, const StackInput& in, const float* enc,
                            int64_t Ts, StackTape* tape, KVCache* cache) const {
  const int64_t B = in.pos.B, T = in.pos.T;
  PF_CHECK(!(in.len || (st.cross && in.enc_len)) || st.attn->caps().key_padding,
           "[input] attention '", st.attn->name(), "' takes no key padding (sequence lengths)");
  PF_CHECK(!(in.key_lo || in.key_hi) || st.attn->caps().key_window, "[input] attention '",
           st.attn->name(),
           "' takes no segment mask (packed documents, left-padded batches): use softmax");
  // Inference reuses one workspace for every layer; training keeps each layer's activations.
  // A tape's tensors are reused when their shapes match (loss_and_grad passes the same tape on
  // every step): every kept buffer is fully overwritten before it is read.
  StackCall c{B, T, Ts, in, enc, tape, cache, {}, {}};
  if (tape) {
    tape->layers.resize(static_cast<size_t>(cfg_.n_layers));
    tape->B = B, tape->T = T, tape->Ts = Ts, tape->in = in;
    if (cfg_.dropout > 0)  // training: the input embeddings (token + position) are dropped
      ops::dropout(x, B * T * cfg_.d_model, static_cast<float>(cfg_.dropout),
                   dropout_key(st.prefix, in.dropout_seed, 0, 3));
  }
  for (int64_t l = 0; l < cfg_.n_layers; ++l)
    for (int sub = 0; sub < 3; ++sub)  // 0 self-attention, 1 cross-attention, 2 FFN
      if (sub != 1 || st.cross) residual_sublayer(st, c, l, sub, x);
  if (geometry().pre) {
    const int64_t BT = B * T, d = cfg_.d_model;
    if (tape) {
      if (tape->final_in.shape() != Shape{BT, d}) tape->final_in = Tensor({BT, d});
      ops::copy(x, tape->final_in.data<float>(), BT * d);
    }
    norm_fwd(st.prefix + "final_norm", x, x, BT);
  }
}

Tensor Transformer::encode(const TokenBatch& src, int64_t pos_offset,
                           const TokenBatch* segments) const {
  PF_CHECK(!cfg_.is_vit(), "[model] an arch vit model takes images (classify), not tokens");
  PF_CHECK(cfg_.has_encoder(), "[model] this ", cfg_.arch, " model has no encoder");
  check_tokens(src, cfg_.vocab_size, "encoder tokens");
  PF_CHECK(pos_offset >= 0, "[input] position offset must be >= 0, got ", pos_offset);
  PF_CHECK(!segments || pos_offset == 0,
           "[input] segments restart each document's positions at 0: give no position offset");
  const Stack st = encoder_stack();
  StackInput in{Positions::run(src.size(), src[0].size(), pos_offset)};
  StackIds ids;
  segment_windows(segments, in.pos.B, in.pos.T, true, ids, in, "segment ids");
  Tensor x = embed(st, src, in.pos);
  run_stack(st, x.data<float>(), in, nullptr, 0, nullptr);
  return x;
}

void Transformer::encode_embeddings(Tensor& x, int64_t pos_offset) const {
  PF_CHECK(cfg_.has_encoder(), "[model] this ", cfg_.arch, " model has no encoder");
  PF_CHECK(x.ndim() == 3 && x.dim(2) == cfg_.d_model, "[model] encoder input must be [B, T, ",
           cfg_.d_model, "], got ", shape_str(x.shape()));
  const Stack st = encoder_stack();
  const StackInput in{Positions::run(x.dim(0), x.dim(1), pos_offset)};
  st.pe->embed(params_, x.data<float>(), in.pos);
  run_stack(st, x.data<float>(), in, nullptr, 0, nullptr);
}

size_t KVCache::bytes() const {
  size_t n = enc.nbytes();
  for (const auto& s : self) n += s->bytes();
  for (const auto* vec : {&ck, &cv})
    for (const Tensor& t : *vec) n += t.nbytes();
  return n;
}

KVCache Transformer::start_cache(int64_t B, int64_t capacity, const TokenBatch* src) const {
  PF_CHECK(cfg_.has_decoder(), "[generate] an encoder model has no decoder to generate with");
  PF_CHECK(B >= 1 && capacity >= 1, "[generate] cache needs B >= 1 and capacity >= 1, got B=", B,
           " capacity=", capacity);
  if (const int64_t mp = dec_pe_->max_position(); mp >= 0)
    PF_CHECK(capacity <= mp + 1, "[generate] ", capacity,
             " positions requested but the learned "
             "position table has max_len ",
             mp + 1);
  // dynamic NTK past L0 re-rotates every cached key: a recurrent state has none to re-rotate
  if (dec_pe_->length_dependent() && capacity > cfg_.position.scaling.original_len) {
    const AttentionCaps caps = dec_attn_->caps();
    PF_CHECK(caps.decode == DecodeKind::KeyValueRows && !caps.rotary_inside,
             "[generate] position.scaling dynamic_ntk changes the rotation of every cached key "
             "past original_len (",
             cfg_.position.scaling.original_len, "); attention '", dec_attn_->name(),
             "' keeps a recurrent state that cannot be re-rotated: decode at most ",
             cfg_.position.scaling.original_len,
             " positions, or use softmax attention or another scaling");
  }
  // the variant's state (softmax: K/V rows that grow with capacity; linear: fixed), 64 GiB at most
  const double state = static_cast<double>(dec_attn_->decode_bytes(B, capacity)) *
                       static_cast<double>(cfg_.n_layers);
  PF_CHECK(state <= static_cast<double>(int64_t{1} << 36), "[generate] the decode state of ",
           capacity, " positions x ", B, " sequences would take ", state / (1 << 30),
           " GiB (limit 64 GiB)");
  KVCache c;
  c.B = B, c.capacity = capacity;
  for (int64_t l = 0; l < cfg_.n_layers; ++l) {
    c.self.push_back(dec_attn_->start_decode(B, capacity));
    c.ck.emplace_back(Shape{0});
    c.cv.emplace_back(Shape{0});
  }
  if (cfg_.arch == Arch::EncoderDecoder) {
    PF_CHECK(src && static_cast<int64_t>(src->size()) == B,
             "[generate] an encoder_decoder model needs B source sequences (--src)");
    c.enc = encode(*src, 0);
    c.Ts = c.enc.dim(1);
  } else {
    PF_CHECK(src == nullptr, "[generate] --src is only for encoder_decoder models");
  }
  return c;
}

ForwardOutput Transformer::forward_cached(const TokenBatch& tokens, KVCache& cache) const {
  check_tokens(tokens, cfg_.vocab_size, "decoder tokens");
  const int64_t B = tokens.size(), T = tokens[0].size();
  PF_CHECK(B == cache.B, "[generate] batch of ", B, " for a cache of ", cache.B);
  PF_CHECK(cache.len + T <= cache.capacity, "[generate] the KV cache holds ", cache.capacity,
           " positions; ", cache.len, " used, ", T, " more requested");
  const Stack st = decoder_stack();
  StackInput in{Positions::run(B, T, cache.len)};
  StackIds ids;
  if (!cache.start.empty()) {  // left-padded batch: positions from each first real row
    PF_CHECK(static_cast<int64_t>(cache.start.size()) == B, "[generate] ", cache.start.size(),
             " sequence starts for a cache of ", B);
    PF_CHECK(!st.pe->length_dependent(),
             "[generate] position.scaling dynamic_ntk re-rotates the "
             "cached keys by one length for every sequence: a left-padded batch is refused "
             "(generate its prompts one by one)");
    PF_CHECK(st.attn->caps().key_window, "[generate] attention '", st.attn->name(),
             "' takes no key window: a left-padded batch is refused (generate its prompts one by "
             "one, or use softmax)");
    ids.pos.B = B, ids.pos.T = T, ids.pos.axes = 1;
    ids.pos.ids.resize(static_cast<size_t>(B * T)), ids.lo.resize(static_cast<size_t>(B * T));
    for (int64_t b = 0; b < B; ++b) {
      PF_CHECK(cache.start[b] >= 0 && cache.start[b] < cache.capacity, "[generate] start[", b,
               "] = ", cache.start[b], " outside [0, ", cache.capacity, ")");
      for (int64_t t = 0; t < T; ++t) {
        ids.pos.ids[b * T + t] =
            static_cast<int32_t>(std::max<int64_t>(cache.len + t - cache.start[b], 0));
        ids.lo[b * T + t] = cache.start[b];
      }
    }
    in.pos = ids.pos.view(), in.key_lo = ids.lo.data();
    in.shifted_ids = true, in.row0 = cache.len;
  }
  Tensor x = embed(st, tokens, in.pos);
  run_stack(st, x.data<float>(), in, cache.Ts ? cache.enc.data<float>() : nullptr, cache.Ts,
            nullptr, &cache);
  cache.len += T;
  return head_output(std::move(x), true);
}

ForwardOutput Transformer::head_output(Tensor hidden, bool want_logits) const {
  ForwardOutput out;
  out.hidden = std::move(hidden);
  if (cfg_.head == Head::Lm && want_logits) {
    const int64_t B = out.hidden.dim(0), T = out.hidden.dim(1), V = cfg_.vocab_size;
    out.logits = Tensor({B, T, V});
    const float* W = params_.f32(cfg_.tie_embeddings ? "embed.weight" : "lm_head.weight");
    ops::linear(out.hidden.data<float>(), W, nullptr, out.logits.data<float>(), B * T, V,
                cfg_.d_model);
  }
  return out;
}

namespace {
// lengths: one per sequence, each in [0, T].
const int32_t* checked_lengths(const std::vector<int32_t>* len, int64_t B, int64_t T,
                               const char* what) {
  if (!len) return nullptr;
  PF_CHECK(static_cast<int64_t>(len->size()) == B, "[input] ", len->size(), " ", what,
           " for a batch of ", B, " sequences");
  for (size_t b = 0; b < len->size(); ++b)
    PF_CHECK((*len)[b] >= 0 && (*len)[b] <= T, "[input] ", what, "[", b, "] = ", (*len)[b],
             " outside [0, ", T, "]");
  return len->data();
}
}  // namespace

StackInput Transformer::main_input(const TokenBatch& tokens, const ForwardOptions& opt,
                                   StackIds& sid) const {
  PF_CHECK(opt.pos_offset >= 0, "[input] position offset must be >= 0, got ", opt.pos_offset);
  const int64_t B = tokens.size(), T = tokens[0].size();
  StackInput in{Positions::run(B, T, opt.pos_offset)};
  PositionIds& ids = sid.pos;
  if (opt.segments)
    PF_CHECK(opt.positions || opt.pos_offset == 0,
             "[input] segments restart each document's positions at 0: give no position offset "
             "(or explicit position ids)");
  segment_windows(opt.segments, B, T, !opt.positions, sid, in, "segment ids");
  if (opt.positions) {
    PF_CHECK(opt.pos_offset == 0, "[input] give position ids or a position offset, not both");
    const TokenBatch& p = *opt.positions;
    PF_CHECK(static_cast<int64_t>(p.size()) == B, "[input] ", p.size(),
             " rows of position ids for ", B, " sequences");
    ids.B = B, ids.T = T, ids.axes = 1;
    ids.ids.resize(static_cast<size_t>(B * T));
    for (int64_t b = 0; b < B; ++b) {
      PF_CHECK(static_cast<int64_t>(p[b].size()) == T, "[input] position ids row ", b, " has ",
               p[b].size(), " entries for ", T, " tokens");
      for (int64_t t = 0; t < T; ++t) {
        PF_CHECK(p[b][t] >= 0, "[input] position id ", p[b][t], " at (", b, ", ", t,
                 ") is negative");
        ids.ids[b * T + t] = p[b][t];
      }
    }
    in.pos = ids.view();
  }
  in.len = checked_lengths(opt.lengths, B, T, "lengths");
  if (cfg_.arch == Arch::EncoderDecoder && opt.src)
    in.enc_len = checked_lengths(opt.src_lengths, B, (*opt.src)[0].size(), "source lengths");
  else
    PF_CHECK(!opt.src_lengths, "[input] source lengths are only for encoder_decoder models");
  return in;
}

StackInput Transformer::encoder_input(const TokenBatch& src, const ForwardOptions& opt,
                                      StackIds& ids) const {
  const int64_t B = src.size(), Ts = src[0].size();
  StackInput in{Positions::run(B, Ts, 0)};
  in.len = checked_lengths(opt.src_lengths, B, Ts, "source lengths");
  segment_windows(opt.src_segments, B, Ts, true, ids, in, "source segment ids");
  return in;
}

ForwardOutput Transformer::forward(const TokenBatch& tokens, const ForwardOptions& opt) const {
  PF_CHECK(!cfg_.is_vit(), "[model] an arch vit model takes images (classify), not tokens");
  ForwardOutput out;
  StackIds ids, src_ids;
  PF_CHECK(!opt.src_segments || cfg_.arch == Arch::EncoderDecoder,
           "[input] source segment ids are only for encoder_decoder models");
  if (cfg_.arch == Arch::Encoder) {
    PF_CHECK(opt.src == nullptr, "[input] --src is only for encoder_decoder models");
    PF_CHECK(cfg_.has_encoder(), "[model] this ", cfg_.arch, " model has no encoder");
    check_tokens(tokens, cfg_.vocab_size, "encoder tokens");
    const StackInput in = main_input(tokens, opt, ids);
    const Stack st = encoder_stack();
    out.hidden = embed(st, tokens, in.pos);
    run_stack(st, out.hidden.data<float>(), in, nullptr, 0, nullptr);
  } else {
    check_tokens(tokens, cfg_.vocab_size, "decoder tokens");
    const int64_t B = tokens.size();
    Tensor enc;
    int64_t Ts = 0;
    if (cfg_.arch == Arch::EncoderDecoder) {
      PF_CHECK(opt.src != nullptr, "[input] an encoder_decoder model needs source tokens (--src)");
      PF_CHECK(static_cast<int64_t>(opt.src->size()) == B, "[input] ", opt.src->size(),
               " source sequences for ", B, " target sequences");
      check_tokens(*opt.src, cfg_.vocab_size, "encoder tokens");
      const Stack es = encoder_stack();
      const StackInput ein = encoder_input(*opt.src, opt, src_ids);
      enc = embed(es, *opt.src, ein.pos);
      run_stack(es, enc.data<float>(), ein, nullptr, 0, nullptr);
      Ts = enc.dim(1);
    } else {
      PF_CHECK(opt.src == nullptr, "[input] --src is only for encoder_decoder models");
    }
    const StackInput in = main_input(tokens, opt, ids);
    const Stack st = decoder_stack();
    out.hidden = embed(st, tokens, in.pos);
    run_stack(st, out.hidden.data<float>(), in, enc.numel() ? enc.data<float>() : nullptr, Ts,
              nullptr);
  }
  return head_output(std::move(out.hidden), opt.want_logits);
}

}  // namespace posformer
