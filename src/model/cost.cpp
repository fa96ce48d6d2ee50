// The cost model of model/cost.h: counts from the config and the attention registry (each
// variant's cost, saved bytes and decode state), no weight allocated.
#include "posformer/model/cost.h"

#include <algorithm>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "posformer/core/error.h"
#include "posformer/model/transformer.h"

namespace posformer {

namespace {

// One stack as a step runs it: T rows per sequence; a decoder of an encoder_decoder also
// cross-attends over Ts encoder rows. The one place an arch maps to its stacks.
struct StackShape {
  bool decoder;   // which of the model's stacks (its attention and position objects)
  int64_t T, Ts;  // Ts = cross-attention source rows (0: none)
  bool causal;
};
std::vector<StackShape> stacks_of(const ModelConfig& c, int64_t T, int64_t Ts) {
  switch (c.arch) {
    case Arch::Encoder:
      return {{false, T, 0, false}};
    case Arch::Decoder:
      return {{true, T, 0, true}};
    case Arch::EncoderDecoder:
      return {{false, Ts, 0, false}, {true, T, Ts, true}};
    case Arch::Vit:
      return {{false, T, 0, false}};
  }
  return {};
}

// Extra score-term FLOPs of a relative scheme per visible (query, key) pair and head (cost.h).
double score_term_flops(const std::string& position, int64_t D) {
  if (position == "alibi" || position == "t5") return 1;
  if (position == "xl") return 2.0 * double(D);
  if (position == "shaw" || position == "deberta") return 4.0 * double(D);
  return 0;
}
bool adds_to_embedding(const std::string& position) {
  return position == "learned" || position == "sinusoidal" || position == "sinusoidal_half" ||
         position == "learned_2d" || position == "sincos_2d";
}

// A ViT's step in images: Np patches of K = C p p pixels per image (cost.h).
struct VitShape {
  int64_t Np = 0, K = 0, cls = 0;
};
VitShape vit_shape(const ModelConfig& c, int64_t T) {
  const int64_t cls = c.cls_token() ? 1 : 0;
  return {T - cls, c.channels * c.patch_size * c.patch_size, cls};
}

// The backward's padded row stride of FFN-width buffers (transformer_backward.cpp padded_ld).
int64_t padded_ld(int64_t cols) {
  return cols >= 1024 && cols % 1024 == 0 ? cols + 16 : cols;
}

AttnDesc shape_desc(const ModelConfig& c, int64_t B, int64_t Tq, int64_t Tk, bool causal,
                    bool self) {
  AttnDesc a;
  a.B = B, a.Tq = Tq, a.Tk = Tk, a.H = c.n_heads, a.Hkv = c.kv_heads(), a.D = c.head_dim();
  a.ldq = a.ldo = a.H * a.D, a.ldk = a.ldv = a.Hkv * a.D;
  a.causal = causal, a.self_attention = self;
  return a;
}

// Visible (query, key) pairs of a (causal) T x Tk call, per sequence.
double pairs(int64_t T, int64_t Tk, bool causal) {
  if (!causal) return double(T) * double(Tk);
  double n = 0;  // query t sees min(t + 1, Tk) keys
  const int64_t full = std::min(T, Tk);
  n += double(full) * double(full + 1) / 2;
  if (T > Tk) n += double(T - Tk) * double(Tk);
  return n;
}

struct Flops {
  FlopSplit fwd, bwd;
};

// Forward and backward FLOPs of one step (model/cost.h's conventions).
Flops step_flops(const ModelConfig& c, const Transformer& m, int64_t B, int64_t T, int64_t Ts) {
  const double d = double(c.d_model), HD = double(c.n_heads * c.head_dim()),
               KD = double(c.kv_heads() * c.head_dim()), F = double(c.d_ff),
               V = double(c.vocab_size), L = double(c.n_layers);
  const bool swiglu = c.activation == Activation::Swiglu, ln = c.norm == Norm::LayerNorm;
  const bool pre = c.norm_position == NormPosition::Pre;
  const double norm_el = ln ? 7 : 4;
  double act_el = 1;
  switch (c.activation) {
    case Activation::Relu:
      act_el = 1;
      break;
    case Activation::Gelu:
    case Activation::GeluTanh:
      act_el = 8;
      break;
    case Activation::Swiglu:
      act_el = 5;
      break;
  }
  Flops f;
  int64_t main_rows = 0;
  for (const StackShape& s : stacks_of(c, T, Ts)) {
    const double N = double(B * s.T), Ns = double(B * s.Ts);
    const Attention& attn = *m.attention(s.decoder);
    const PositionEncoding& pe = *m.position(s.decoder);
    main_rows = B * s.T;                // the last stack is the main one
    const int subs = s.Ts > 0 ? 2 : 1;  // attention sublayers per layer
    // projections: q, o over N rows; k, v over the key rows
    double proj = 2 * N * d * (2 * HD + 2 * KD);
    if (s.Ts > 0) proj += 2 * N * d * 2 * HD + 2 * Ns * d * 2 * KD;
    f.fwd.projections += L * proj;
    f.fwd.ffn += L * 2 * N * d * F * (swiglu ? 3 : 2);
    // attention: the variant's count (self, and cross) plus relative score terms (self only)
    const AttnCost self = attn.cost(shape_desc(c, B, s.T, s.T, s.causal, true));
    const double terms = score_term_flops(pe.name(), c.head_dim()) * double(c.n_heads) * double(B) *
                         pairs(s.T, s.T, s.causal);
    double qf = self.forward_flops + terms, qb = self.backward_flops + 2 * terms;
    if (s.Ts > 0) {
      const AttnCost cross = attn.cost(shape_desc(c, B, s.T, s.Ts, false, false));
      qf += cross.forward_flops, qb += cross.backward_flops;
    }
    f.fwd.attention += L * qf;
    f.bwd.attention += L * qb;
    // rest: norms, residual adds, biases, activation, RoPE
    double rest = double(subs + 1) * N * d * (norm_el + 1);
    if (c.bias) {
      rest += N * (HD + 2 * KD + d) + N * (F * (swiglu ? 2 : 1) + d);
      if (s.Ts > 0) rest += N * (HD + d) + Ns * 2 * KD;
    }
    rest += N * F * act_el;
    if (pe.rotary() && !attn.caps().rotary_inside) {
      const int64_t R = c.position.rotary_dim == 0 ? c.head_dim() : c.position.rotary_dim;
      rest += 3 * N * double(R) * double(c.n_heads + c.kv_heads());
    }
    f.fwd.rest += L * rest + (pre ? N * d * norm_el : 0);
    // embeddings: scaled lookup, absolute positions added
    if (!c.is_vit() && c.token_embed_scale() != 1.0) f.fwd.embed_head += N * d;
    if (adds_to_embedding(pe.name())) f.fwd.embed_head += N * d;
  }
  const double Nm = double(main_rows);
  // backward: matmuls 2x the forward, elementwise 2x; cross-entropy 5 per logit
  f.bwd.projections = 2 * f.fwd.projections;
  f.bwd.ffn = 2 * f.fwd.ffn;
  f.bwd.rest = 2 * f.fwd.rest;
  if (c.is_vit()) {  // patch embedding, mean pooling, classification head (cost.h)
    const VitShape v = vit_shape(c, T);
    const double Np = double(B * v.Np), n = double(c.num_classes), Bi = double(B);
    const double patch = 2 * Np * double(v.K) * d;
    double elem = (c.bias ? Np * d + Bi * n : 0) + (v.cls ? 0 : Nm * d);
    f.fwd.embed_head += patch + 2 * Bi * d * n + elem;
    // the pixels need no gradient: the patch matmul's backward is its dW alone
    f.bwd.embed_head = 2 * f.fwd.embed_head - patch + 5 * Bi * n;
    return f;
  }
  const double head = 2 * Nm * d * V;
  f.fwd.embed_head += c.head == Head::Lm ? head : 0;
  f.bwd.embed_head = 2 * f.fwd.embed_head + (c.head == Head::Lm ? 5 * Nm * V : 0);
  return f;
}

FlopSplit add(const FlopSplit& a, const FlopSplit& b) {
  return {a.projections + b.projections, a.ffn + b.ffn, a.attention + b.attention,
          a.embed_head + b.embed_head, a.rest + b.rest};
}

// Activations kept by the tape, and the step's other buffers, in elements (saved: bytes).
struct ActMemory {
  double tape_elems = 0, saved_bytes = 0, work_elems = 0;
};
ActMemory activation_memory(const ModelConfig& c, const Transformer& m, int64_t B, int64_t T,
                            int64_t Ts) {
  const double d = double(c.d_model), HD = double(c.n_heads * c.head_dim()),
               KD = double(c.kv_heads() * c.head_dim()), F = double(c.d_ff),
               V = double(c.vocab_size), L = double(c.n_layers);
  const bool swiglu = c.activation == Activation::Swiglu;
  const bool pre = c.norm_position == NormPosition::Pre;
  ActMemory a;
  double scratch = 0, padded = 0;  // weight_grad's thread_local buffers: the largest call
  auto weight_grad = [&](double M, double N, double K, bool x_ld_pad, bool dy_ld_pad) {
    // dW [N, K]: N >= 2K forms the transpose in a scratch [K, N]; padded copies of operands
    // whose row stride is a multiple of 4 KB
    if (N >= 2 * K) {
      scratch = std::max(scratch, N * K);
      if (dy_ld_pad) padded = std::max(padded, M * double(padded_ld(int64_t(N))));
    } else if (x_ld_pad) {
      padded = std::max(padded, M * double(padded_ld(int64_t(K))));
    }
  };
  const bool f_pad = padded_ld(c.d_ff) != c.d_ff;
  int64_t main_rows = 0;
  for (const StackShape& s : stacks_of(c, T, Ts)) {
    const double N = double(B * s.T), Ns = double(B * s.Ts), Nkv = double(B * std::max(s.T, s.Ts));
    const Attention& attn = *m.attention(s.decoder);
    main_rows = B * s.T;
    const int subs = s.Ts > 0 ? 2 : 1;
    // per attention sublayer: norm_in, h, out [N, d]; q, att [N, HD]; k, v [Nkv, KD]
    a.tape_elems += L * subs * (3 * N * d + 2 * N * HD + 2 * Nkv * KD);
    a.saved_bytes += L * double(attn.saved_bytes(shape_desc(c, B, s.T, s.T, s.causal, true)));
    if (s.Ts > 0)
      a.saved_bytes += L * double(attn.saved_bytes(shape_desc(c, B, s.T, s.Ts, false, false)));
    // FFN sublayer: norm_in, h, out [N, d]; f1, fa (, f3) [N, F]
    a.tape_elems += L * (3 * N * d + N * F * (swiglu ? 3 : 2));
    if (pre) a.tape_elems += N * d;  // final norm input
    // backward buffers kept per stack: dh, dy [N, d], dq, datt [N, HD], dk, dv [Nkv, KD],
    // df1 (, df3) [N, ldf]; with dropout a sublayer's masked output gradient [N, d]
    a.work_elems += (c.dropout > 0 ? 3 : 2) * N * d + 2 * N * HD + 2 * Nkv * KD +
                    N * double(padded_ld(c.d_ff)) * (swiglu ? 2 : 1);
    // RealFormer: the carried score gradients of two layers [B, H, T, T] in backward
    if (c.attention.residual) a.work_elems += 2 * double(B * c.n_heads) * double(s.T) * double(s.T);
    // weight gradients of the stack's linears (M rows, N outputs, K inputs)
    weight_grad(N, HD, d, false, false);
    weight_grad(std::max(N, Ns), KD, d, false, false);
    weight_grad(N, d, HD, false, false);
    weight_grad(N, F, d, false, false);  // dy = df1 has the padded stride already
    weight_grad(N, d, F, f_pad, false);  // x = fa [N, F]
  }
  const double Nm = double(main_rows);
  // embeddings of the main stack [N, d] (and the encoder output and its gradient)
  a.work_elems += Nm * d;
  if (c.arch == Arch::EncoderDecoder) a.work_elems += 2 * double(B * Ts) * d;
  if (c.is_vit()) {
    // classify_loss_and_grad: the image batch and its patches [B Np, K], the stack input's
    // gradient [B T, d], pooled and its gradient [B, d], the logits [B, n]
    const VitShape v = vit_shape(c, T);
    a.work_elems += 2 * double(B * v.Np) * double(v.K) + Nm * d + 2 * double(B) * d +
                    double(B) * double(c.num_classes);
  } else if (c.head == Head::Lm) {  // logits [N, V] and their input gradient [N, d]
    a.work_elems += Nm * V + Nm * d;
    const bool v_pad = padded_ld(c.vocab_size) != c.vocab_size;
    weight_grad(Nm, V, d, false, v_pad);
  }
  a.work_elems += scratch + padded;
  return a;
}

// Forward attention FLOPs vs the rest, B = 1, at length T.
struct Split {
  double quad, layers, all;
};
Split forward_split(const ModelConfig& c, const Transformer& m, int64_t T) {
  const FlopSplit f = step_flops(c, m, 1, T, T).fwd;
  return {f.attention, f.projections + f.ffn, f.total() - f.attention};
}

// Smallest T in [1, 2^24] with pred(T) true, assuming it stays true above; nullopt when never.
// Doubling first: the softmax count walks every query row, so large T are visited last.
template <class P>
std::optional<int64_t> first_true(const P& pred) {
  constexpr int64_t kMax = int64_t{1} << 24;
  int64_t hi = 1;
  while (hi < kMax && !pred(hi)) hi *= 2;
  if (!pred(hi)) return std::nullopt;
  int64_t lo = hi / 2;  // pred(lo) false (or lo = 0), pred(hi) true
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    (pred(mid) ? hi : lo) = mid;
  }
  return hi;
}

}  // namespace

ModelCost model_cost(const ModelConfig& cfg, const CostOptions& opt) {
  validate_config(cfg);
  PF_CHECK(opt.optimizer == "adamw", "[cost] --optimizer must be adamw (the optimizer posformer ",
           "trains with), got \"", opt.optimizer, "\"");
  PF_CHECK(opt.batch >= 1, "[cost] --batch must be >= 1, got ", opt.batch);
  PF_CHECK(opt.seq_len >= 0, "[cost] --seq-len must be >= 1, got ", opt.seq_len);
  PF_CHECK(opt.src_len >= 0, "[cost] --src-len must be >= 1, got ", opt.src_len);
  PF_CHECK(opt.src_len == 0 || cfg.arch == Arch::EncoderDecoder,
           "[cost] --src-len is only for encoder_decoder models (this one is ", cfg.arch, ")");
  PF_CHECK((opt.image_h == 0 && opt.image_w == 0) || cfg.is_vit(),
           "[cost] --image-size is only for arch vit (this one is ", cfg.arch, ")");
  PF_CHECK(opt.seq_len == 0 || !cfg.is_vit(),
           "[cost] --seq-len does not apply to arch vit: its length is the patch count of the "
           "image (+1 CLS token); give --image-size instead (default the config's image_size ",
           cfg.image_h, "x", cfg.image_w, ")");
  ModelCost r;
  r.config = cfg;
  r.options = opt;
  int64_t T = opt.seq_len > 0 ? opt.seq_len : cfg.max_len;
  if (cfg.is_vit()) {
    const int64_t h = opt.image_h > 0 ? opt.image_h : cfg.image_h,
                  w = opt.image_w > 0 ? opt.image_w : cfg.image_w, p = cfg.patch_size;
    PF_CHECK(opt.image_h >= 0 && opt.image_w >= 0 && h % p == 0 && w % p == 0,
             "[cost] --image-size ", h, "x", w, " must be a positive multiple of patch_size ", p,
             " in both dimensions");
    r.options.image_h = h, r.options.image_w = w;
    T = (cfg.cls_token() ? 1 : 0) + (h / p) * (w / p);
  }
  const int64_t Ts = opt.src_len > 0 ? opt.src_len : T;
  r.options.seq_len = T, r.options.src_len = cfg.arch == Arch::EncoderDecoder ? Ts : 0;
  const int64_t B = opt.batch;
  const Transformer m(cfg);  // declares its parameters and makes its stacks; allocates nothing
  for (const StackShape& s : stacks_of(cfg, T, Ts)) {
    const int64_t mp = m.position(s.decoder)->max_position();
    if (cfg.is_vit())
      PF_CHECK(mp < 0 || s.T <= mp + 1, "[cost] --image-size ", r.options.image_h, "x",
               r.options.image_w, ": ", s.T, " tokens exceed the learned position table (max_len ",
               mp + 1, ")");
    else
      PF_CHECK(mp < 0 || s.T <= mp + 1, "[cost] --", s.decoder ? "seq-len " : "src-len ", s.T,
               " exceeds the learned position table (max_len ", mp + 1, ")");
  }
  r.attention = m.attention(cfg.has_decoder())->name();
  if (cfg.arch == Arch::EncoderDecoder && m.attention(false)->name() != r.attention)
    r.attention = m.attention(false)->name() + " (encoder), " + r.attention + " (decoder)";

  // ---- parameters: the core counted from the shapes; the position scheme's and the attention
  // variant's own parameters as their registry entries declare them
  ParamCounts& p = r.params;
  const int64_t d = cfg.d_model, V = cfg.vocab_size, L = cfg.n_layers, F = cfg.d_ff;
  const int64_t HD = cfg.n_heads * cfg.head_dim(), KD = cfg.kv_heads() * cfg.head_dim();
  const int64_t nrm = cfg.norm == Norm::LayerNorm ? 2 * d : d;
  const int64_t bias = cfg.bias ? 1 : 0;
  if (cfg.is_vit()) {  // patch embedding (+ bias), CLS token; classification head (+ bias)
    const int64_t n = cfg.num_classes;
    p.embedding =
        d * cfg.channels * cfg.patch_size * cfg.patch_size + bias * d + (cfg.cls_token() ? d : 0);
    p.head = n * d + bias * n;
  } else {
    p.embedding = V * d;
    if (cfg.head == Head::Lm && !cfg.tie_embeddings) p.head = V * d;
  }
  for (const StackShape& s : stacks_of(cfg, T, Ts)) {
    const int64_t subs = s.Ts > 0 ? 2 : 1;
    p.attention += L * subs * (2 * d * HD + 2 * d * KD + bias * (HD + 2 * KD + d));
    const int64_t mats = cfg.activation == Activation::Swiglu ? 3 : 2;
    p.ffn += L * (mats * d * F + bias * ((mats - 1) * F + d));
    p.norm += L * (subs + 1) * nrm + (cfg.norm_position == NormPosition::Pre ? nrm : 0);
    std::vector<ParamSpec> own;
    m.position(s.decoder)->declare(own);
    m.attention(s.decoder)->declare(own);
    for (const ParamSpec& sp : own) {
      const int64_t n = shape_numel(sp.shape);
      if (sp.buffer)
        p.buffers += n;
      else if (sp.component == "position")
        p.position += n;
      else if (sp.component == "attention")
        p.attention += n;
      else
        throw Error(str("[cost] parameter '", sp.name, "' of component '", sp.component,
                        "' is not counted by the cost model"));
    }
  }

  // ---- FLOPs
  const Flops fl = step_flops(cfg, m, B, T, Ts);
  r.forward = fl.fwd;
  r.training = add(fl.fwd, fl.bwd);
  r.tokens = B * stacks_of(cfg, T, Ts).back().T;

  // ---- memory
  const double P = double(p.total()), buf = double(p.buffers);
  const bool bf16 = opt.precision == Precision::Bf16;
  MemorySplit& mem = r.memory;
  mem.weights = (bf16 ? 2 : 4) * P + 4 * buf;
  mem.gradients = (bf16 ? 2 + 4 : 4) * P;
  mem.moments = 8 * P;
  mem.master = bf16 ? 4 * P : 0;
  const ActMemory act = activation_memory(cfg, m, B, T, Ts);
  const double el = bf16 ? 2 : 4;
  mem.activations = el * act.tape_elems + act.saved_bytes * (el / 4);
  mem.workspace = el * act.work_elems;
  if (const char* env = std::getenv("POSFORMER_PACKED"); !env || env[0] != '0')
    for (const ParamSpec& s : m.param_specs())
      if (Transformer::packs(s)) mem.packed += 8.0 * double(shape_numel(s.shape));

  // ---- decoding
  if (cfg.has_decoder()) {
    const Attention& a = *m.attention(true);
    if (a.caps().decode == DecodeKind::KeyValueRows)
      r.kv_bytes_per_token = double(a.decode_bytes(1, 1)) * double(L);
    else
      r.recurrent_state_bytes = double(a.decode_bytes(1, 1)) * double(L);
    if (cfg.arch == Arch::EncoderDecoder)
      r.cross_kv_bytes_per_src_token = 2.0 * double(L) * double(KD) * sizeof(float);
  }

  // ---- where the attention part overtakes the rest (B = 1; learned tables do not limit it)
  ModelConfig unlimited = cfg;
  unlimited.max_len = int64_t{1} << 24;
  const Transformer mu(unlimited);
  r.crossover_T = first_true([&](int64_t t) {
    const Split s = forward_split(unlimited, mu, t);
    return s.quad > s.layers;
  });
  r.crossover_all_T = first_true([&](int64_t t) {
    const Split s = forward_split(unlimited, mu, t);
    return s.quad > s.all;
  });
  return r;
}

nlohmann::json cost_to_json(const ModelCost& c) {
  using json = nlohmann::json;
  const double tok = double(c.tokens);
  auto flops = [&](const FlopSplit& f) {
    json j;
    const std::pair<const char*, double> parts[] = {
        {"projections", f.projections}, {"ffn", f.ffn},   {"attention", f.attention},
        {"embed_head", f.embed_head},   {"rest", f.rest}, {"total", f.total()}};
    for (const auto& [k, v] : parts) j[k] = {{"per_step", v}, {"per_token", v / tok}};
    return j;
  };
  json j;
  j["config"] = config_to_json(c.config);
  j["seq_len"] = c.options.seq_len;
  if (c.config.arch == Arch::EncoderDecoder) j["src_len"] = c.options.src_len;
  j["batch"] = c.options.batch;
  if (c.config.is_vit()) {
    j["images"] = c.options.batch;
    j["image_size"] = {c.options.image_h, c.options.image_w};
  }
  j["precision"] = c.options.precision.name();
  j["optimizer"] = c.options.optimizer;
  j["attention"] = c.attention;
  j["tokens_per_step"] = c.tokens;
  j["parameters"] = {{"embedding", c.params.embedding}, {"position", c.params.position},
                     {"attention", c.params.attention}, {"ffn", c.params.ffn},
                     {"norm", c.params.norm},           {"head", c.params.head},
                     {"total", c.params.total()},       {"buffers", c.params.buffers}};
  j["forward_flops"] = flops(c.forward);
  j["training_flops"] = flops(c.training);
  const MemorySplit& m = c.memory;
  j["training_memory_bytes"] = {{"weights", m.weights},         {"gradients", m.gradients},
                                {"adamw_moments", m.moments},   {"master_copy", m.master},
                                {"activations", m.activations}, {"workspace", m.workspace},
                                {"packed_weights", m.packed},   {"total", m.total()}};
  if (c.config.is_vit())
    j["decode"] = {{"applicable", false},
                   {"why", "arch vit classifies images; it does not generate"}};
  else
    j["decode"] = {{"applicable", c.config.has_decoder()},
                   {"kv_cache_bytes_per_token", c.kv_bytes_per_token},
                   {"recurrent_state_bytes", c.recurrent_state_bytes},
                   {"cross_kv_bytes_per_source_token", c.cross_kv_bytes_per_src_token}};
  auto opt = [](const std::optional<int64_t>& v) { return v ? json(*v) : json(nullptr); };
  j["attention_overtakes"] = {{"layer_matmuls_at_T", opt(c.crossover_T)},
                              {"everything_else_at_T", opt(c.crossover_all_T)}};
  return j;
}

}  // namespace posformer
