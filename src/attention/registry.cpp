// The attention registry and the exact softmax variant (kernels: softmax_attention*.cpp);
// the other variants live in their own files (variants.h).
#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "posformer/attention/variant.h"
#include "posformer/core/error.h"
#include "posformer/model/config_fields.h"
#include "posformer/posenc/position_encoding.h"
#include "variants.h"

namespace posformer {
namespace {

// Softmax keeps, for its backward, the rows' log-sum-exp L [B, H, Tq] (fused kernel) or, on the
// unfused path (hooks with value terms: Shaw), the probabilities P [B, H, Tq, Tk].
struct SoftmaxSaved final : AttnSaved {
  bool fused = true;
  Tensor lse, probs;
};

// Every past key/value row of one layer: [B, capacity, Hkv*D] each.
class KeyValueRows final : public AttnDecodeState {
 public:
  KeyValueRows(int64_t B, int64_t capacity, int64_t width)
      : k({B, capacity, width}), v({B, capacity, width}) {}
  int64_t length() const override { return len; }
  size_t bytes() const override { return k.nbytes() + v.nbytes(); }
  KeyRowsView key_rows() override { return {k.data<float>(), k.dim(0), k.dim(1), k.dim(2)}; }
  Tensor k, v;
  int64_t len = 0;
};

class SoftmaxAttention final : public Attention {
 public:
  // POSFORMER_ATTN_UNFUSED=1 keeps every call on the unfused kernels (benchmarks compare both).
  // XL and DeBERTa score terms cost O(T^2 D) themselves: the fused backward would compute them a
  // second time (measured 15-45% slower backward at T = 1024), so they keep the unfused path.
  SoftmaxAttention(const StackGeom& g, bool residual, const PositionEncoding& pe)
      : g_(g),
        residual_(residual),
        costly_scores_(pe.name() == "xl" || pe.name() == "deberta"),
        value_terms_(pe.adds_values()) {
    const char* e = std::getenv("POSFORMER_ATTN_UNFUSED");
    unfused_ = e && std::strcmp(e, "1") == 0;
  }
  std::string name() const override { return "softmax"; }
  AttentionCaps caps() const override { return {}; }  // everything, decoding by K/V rows

  // The fused kernel serves every hook without value terms (Shaw's value term needs P). Its
  // backward recomputes the scores through the backward's hook, so training with RealFormer's
  // carried scores (whose backward hook carries gradients, not the forward's scores) keeps P.
  bool fused(const ScoreHook* hook, bool training) const {
    return !unfused_ && !(hook && hook->has_value_terms()) &&
           !((residual_ || costly_scores_) && training);
  }

  void forward(const AttnDesc& desc, std::unique_ptr<AttnSaved>* saved) const override {
    AttnDesc a = desc;
    a.probs = nullptr;
    const bool fuse = fused(a.hook, saved != nullptr);
    SoftmaxSaved* sv = nullptr;
    if (saved) {
      if (!dynamic_cast<SoftmaxSaved*>(saved->get())) *saved = std::make_unique<SoftmaxSaved>();
      sv = static_cast<SoftmaxSaved*>(saved->get());
      sv->fused = fuse;
      Tensor& keep = fuse ? sv->lse : sv->probs;
      (fuse ? sv->probs : sv->lse) = Tensor();
      const Shape shape = fuse ? Shape{a.B, a.H, a.Tq} : Shape{a.B, a.H, a.Tq, a.Tk};
      if (keep.shape() != shape) keep = Tensor(shape);  // reused step after step
    }
    if (fuse) {
      fused_attention_forward(a, sv ? sv->lse.data<float>() : nullptr);
    } else {
      if (sv) a.probs = sv->probs.data<float>();
      attention_forward(a);
    }
  }

  void backward(const AttnDesc& desc, const AttnSaved& saved, const AttnGrads& g,
                ScoreHook* hook) const override {
    const auto* s = dynamic_cast<const SoftmaxSaved*>(&saved);
    PF_CHECK(s, "[attention] softmax backward without the state of its forward");
    if (s->fused) {
      PF_CHECK(s->lse.shape() == (Shape{desc.B, desc.H, desc.Tq}),
               "[attention] softmax backward: the saved log-sum-exp does not match the call");
      fused_attention_backward(desc, s->lse.data<float>(), g, hook);
      return;
    }
    PF_CHECK(s->probs.shape() == (Shape{desc.B, desc.H, desc.Tq, desc.Tk}),
             "[attention] softmax backward without the probabilities of its forward");
    attention_backward(desc, s->probs.data<float>(), g, hook);
  }

  std::unique_ptr<AttnDecodeState> start_decode(int64_t B, int64_t capacity) const override {
    return std::make_unique<KeyValueRows>(B, capacity, g_.Hkv * g_.D);
  }

  // Per visible (query, key) pair and head: q.k and p v, 2 D multiply-adds forward; backward
  // dV, dP, dQ, dK: 4 D (the fused kernel's recomputed q.k, one more D, is not counted).
  AttnCost cost(const AttnDesc& a) const override {
    double pairs = 0;
    for (int64_t b = 0; b < a.B; ++b)
      for (int64_t t = 0; t < a.Tq; ++t)
        pairs += static_cast<double>(a.visible_keys(b, t) - a.first_key(b, t));
    const double per = 2.0 * static_cast<double>(a.H * a.D) * pairs;
    return {2 * per, 4 * per};
  }

  // Training keeps L [B, H, Tq] on the fused path, P [B, H, Tq, Tk] on the unfused one (as
  // fused() decides: self-attention with value terms; every call of an XL, DeBERTa or RealFormer
  // stack; POSFORMER_ATTN_UNFUSED).
  uint64_t saved_bytes(const AttnDesc& a) const override {
    const bool probs =
        unfused_ || (a.self_attention && value_terms_) || residual_ || costly_scores_;
    return uint64_t(a.B * a.H * a.Tq) * uint64_t(probs ? a.Tk : 1) * sizeof(float);
  }

  uint64_t decode_bytes(int64_t B, int64_t capacity) const override {
    return 2 * uint64_t(B) * uint64_t(capacity) * uint64_t(g_.Hkv * g_.D) * sizeof(float);
  }

  void decode(AttnDecodeState& state, const AttnDesc& desc,
              const HookMaker& make_hook) const override {
    auto& st = dynamic_cast<KeyValueRows&>(state);
    const int64_t W = g_.Hkv * g_.D, cap = st.k.dim(1);
    PF_CHECK(desc.B == st.k.dim(0), "[attention] decoding a batch of ", desc.B, " with a state of ",
             st.k.dim(0));
    PF_CHECK(desc.q_pos0 == st.len, "[attention] decoding from position ", desc.q_pos0,
             " with a state holding ", st.len);
    PF_CHECK(st.len + desc.Tq <= cap, "[attention] the decode state holds ", cap, " positions; ",
             st.len, " used, ", desc.Tq, " more requested");
    float *K = st.k.data<float>(), *V = st.v.data<float>();
    for (int64_t b = 0; b < desc.B; ++b)
      for (int64_t t = 0; t < desc.Tq; ++t) {
        const int64_t row = b * cap + st.len + t;
        std::copy_n(desc.k + (b * desc.Tk + t) * desc.ldk, W, K + row * W);
        std::copy_n(desc.v + (b * desc.Tk + t) * desc.ldv, W, V + row * W);
      }
    AttnDesc a = desc;  // the new queries over every cached key (positions 0 .. len + Tq - 1)
    a.k = K, a.v = V, a.ldk = a.ldv = W;
    a.Tk = st.len + desc.Tq, a.kv_batch_rows = cap, a.k_pos0 = 0, a.probs = nullptr;
    std::unique_ptr<ScoreHook> hook = make_hook ? make_hook(a) : nullptr;
    a.hook = hook.get();
    if (fused(a.hook, false))
      fused_attention_forward(a, nullptr);
    else
      attention_forward(a);
    st.len += desc.Tq;
  }

 private:
  StackGeom g_;
  bool residual_ = false, costly_scores_ = false, value_terms_ = false;
  bool unfused_ = false;
};

}  // namespace

namespace {
// The linear family has no scores to scale: a set scale would silently do nothing.
void no_scale(const ModelConfig& c) {
  PF_CHECK(!c.attention.scale, "[config] attention.scale does not apply to attention type \"",
           c.attention.type, "\" (phi(q) . phi(k) has no score scale); remove it");
}

struct Variant {
  ConfigEntry<AttentionConfig> config;
  std::function<std::unique_ptr<Attention>(const AttentionConfig&, const StackGeom&,
                                           const PositionEncoding&)>
      make;
};

// The registry: each variant's name, its own config fields and checks, and its factory.
const std::vector<Variant>& variants() {
  using A = AttentionConfig;
  using PE = PositionEncoding;
  static const std::vector<Variant> v = {
      {{"softmax", {}, {}},
       [](const A& c, const StackGeom& g, const PE& pe) {
         return std::make_unique<SoftmaxAttention>(g, c.residual, pe);
       }},
      {{"linear", {}, no_scale},
       [](const A&, const StackGeom& g, const PE&) { return make_linear_attention(g); }},
      {{"linear_cos", {}, no_scale},
       [](const A&, const StackGeom& g, const PE&) { return make_linear_cos_attention(g); }},
      {{"linear_rope", {}, no_scale},
       [](const A&, const StackGeom& g, const PE& pe) {
         return make_linear_rope_attention(g, pe);
       }},
      {{"performer",
        {int_field("n_features", &A::n_features, 1, 1 << 16),
         int_field("seed", &A::seed, 0, int64_t{1} << 53),
         int_field("redraw_every", &A::redraw_every, 0, int64_t{1} << 53)},
        no_scale},
       [](const A& c, const StackGeom& g, const PE&) {
         return make_performer_attention(g, c.n_features, static_cast<uint64_t>(c.seed));
       }},
      {{"nystrom",
        {int_field("n_landmarks", &A::n_landmarks, 1, 1 << 16),
         int_field("pinv_iterations", &A::pinv_iterations, 0, 1000),
         int_field("conv_kernel", &A::conv_kernel, 0, 1 << 16)},
        [](const ModelConfig& c) {
          PF_CHECK(c.attention.conv_kernel % 2 == 1 || c.attention.conv_kernel == 0,
                   "[config] attention.conv_kernel must be 0 (off) or odd (centred on the row), "
                   "got ",
                   c.attention.conv_kernel);
        }},
       [](const A& c, const StackGeom& g, const PE&) { return make_nystrom_attention(c, g); }},
  };
  return v;
}
}  // namespace

const std::vector<ConfigEntry<AttentionConfig>>& attention_config_entries() {
  static const std::vector<ConfigEntry<AttentionConfig>> e = [] {
    std::vector<ConfigEntry<AttentionConfig>> out;
    for (const Variant& x : variants()) out.push_back(x.config);
    return out;
  }();
  return e;
}

std::unique_ptr<Attention> make_attention(const AttentionConfig& cfg, const StackGeom& geom,
                                          const PositionEncoding& pe) {
  std::unique_ptr<Attention> a;
  for (const Variant& x : variants())
    if (x.config.type == cfg.type) a = x.make(cfg, geom, pe);
  if (!a) throw Error(str("[attention] unknown attention type \"", cfg.type, "\""));
  const AttentionCaps c = a->caps();
  auto refuse = [&](const char* what) {
    throw Error(str("[config] attention '", cfg.type, "' cannot serve position '", pe.name(),
                    "': it supports no ", what));
  };
  if (geom.causal && !c.causal)
    throw Error(str("[config] attention '", cfg.type,
                    "' cannot serve the decoder self-attention: it has no causal mask (use it in ",
                    "an encoder, or the encoder of an encoder_decoder)"));
  if (pe.adds_scores() && !c.score_hooks) refuse("relative score terms");
  if (pe.adds_values() && !c.value_hooks) refuse("relative value terms");
  if (pe.rotary() && !c.rotary_outside && !c.rotary_inside)
    refuse("rotary positions applied to q and k");
  if (pe.axes() != 1 && c.rotary_inside) refuse("2-D positions (it rotates inside, in 1-D)");
  if (cfg.residual && !c.residual_scores)
    throw Error(
        str("[config] attention.residual (RealFormer) needs a score matrix to carry; "
            "attention '",
            cfg.type, "' has none"));
  return a;
}

AttentionConfig stack_attention(const AttentionConfig& cfg, Arch arch, bool decoder) {
  if (!decoder || arch != Arch::EncoderDecoder || cfg.type != "nystrom") return cfg;
  AttentionConfig d = cfg;  // nystrom serves the encoder; the decoder runs exact softmax
  d.type = "softmax";
  return d;
}

}  // namespace posformer
