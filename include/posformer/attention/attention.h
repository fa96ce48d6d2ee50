// Exact softmax attention over a batch of sequences, one descriptor for every variant of bias.
//
// Layout (row-major, fp32). For batch b, query row t, head h:
//   q[(b*Tq + t)*ldq + h*D + 0..D)     H query heads
//   k[(b*Tk' + s)*ldk + g*D + 0..D)    Hkv key/value heads; query head h reads g = h / (H/Hkv)
//   v[(b*Tk' + s)*ldv + g*D + 0..D)    Tk' = kv_rows() (Tk, or a KV cache's capacity)
//   out[(b*Tq + t)*ldo + h*D + 0..D)
//
//   S[t, s] = scale * q_t . k_s  (+ hook->add_scores: ALiBi, T5, Shaw, XL, DeBERTa terms)
//   S[t, s] = -inf where masked: causal (k_pos0 + s > q_pos0 + t) or s >= key_len[b]
//   P = softmax_rows(S);   out_t = sum_s P[t, s] v_s  (+ hook->add_values: Shaw's aV term)
//
// Absolute positions of query row t and key row s are q_pos0 + t and k_pos0 + s (KV-cache
// decoding passes the cached keys with k_pos0 = 0 and the new queries at q_pos0 = cache length).
#pragma once
#include <algorithm>
#include <cstdint>

namespace posformer {

// Per-layer, per-call state of a relative position scheme (made by PositionEncoding::prepare).
// Called concurrently for different (b, h): implementations must only read shared state.
class ScoreHook {
 public:
  virtual ~ScoreHook() = default;
  // S: [Tq, Tk] row-major scores of (b, h), already multiplied by scale; add the scheme's terms.
  virtual void add_scores(int64_t b, int64_t h, float* S) const = 0;
  virtual bool has_value_terms() const { return false; }
  // P: [Tq, Tk] probabilities; out: [Tq, D] rows with stride ldo; add sum_s P[t,s] * extra(t,s).
  virtual void add_values(int64_t b, int64_t h, const float* P, float* out, int64_t ldo) const {}

  // ---- backward (training). Called concurrently for different kv-head groups: all heads of
  // one group run on one thread, so per-head slices of gradients are race-free; state shared
  // by all heads must be accumulated per thread (omp_get_thread_num) and reduced in finish.
  // Called once before the parallel loop: allocate gradient accumulators here.
  virtual void begin_backward() {}
  // dS: dL/dS [Tq, Tk] (through softmax and mask). Adds to dq (rows of head h, stride lddq),
  // dk (rows of kv head g, stride lddk) and the hook's parameter gradients.
  virtual void backward_scores(int64_t b, int64_t h, const float* dS, float* dq, int64_t lddq,
                               float* dk, int64_t lddk) {}
  // Value term (Shaw): dP[t,s] += dO_t . extra(t,s); parameter grads from P and dO.
  virtual void backward_values(int64_t b, int64_t h, const float* P, const float* dO, int64_t lddo,
                               float* dP) {}
  // After all (b, h): reduce per-thread state and add parameter gradients into `grads`
  // (same names as the parameters).
  virtual void finish_backward(class ParamStore& grads) {}
};

struct AttnDesc {
  int64_t B = 1, Tq = 0, Tk = 0, H = 1, Hkv = 1, D = 0;
  const float* q = nullptr;
  int64_t ldq = 0;
  const float* k = nullptr;
  int64_t ldk = 0;
  const float* v = nullptr;
  int64_t ldv = 0;
  float* out = nullptr;
  int64_t ldo = 0;
  float scale = 1.0f;
  bool causal = false;
  int64_t q_pos0 = 0, k_pos0 = 0;
  const int32_t* key_len = nullptr;  // [B] valid keys per sequence (key padding); null = all Tk
  int64_t kv_batch_rows = 0;         // rows between batches in k/v (a KV cache's capacity); 0 = Tk
  int64_t kv_rows() const { return kv_batch_rows ? kv_batch_rows : Tk; }
  // The mask: query row t of batch b sees keys [0, visible_keys(b, t)) (key padding, and with
  // `causal` keys at positions <= its own); the result is in [0, Tk] and never decreases in t.
  int64_t visible_keys(int64_t b, int64_t t) const {
    int64_t end = key_len ? std::clamp<int64_t>(key_len[b], 0, Tk) : Tk;
    if (causal) end = std::min(end, std::max<int64_t>(q_pos0 + t - k_pos0 + 1, 0));
    return end;
  }
  const ScoreHook* hook = nullptr;
  float* probs = nullptr;  // optional [B, H, Tq, Tk]: forward stores P here (training)
};

// Gradients of attention_forward, given the P it stored. dq [B*Tq, ldq-strided like q], dk, dv
// like k, v; all are overwritten (not accumulated). hook may be null.
struct AttnGrads {
  const float* dout = nullptr;
  int64_t lddo = 0;
  float *dq = nullptr, *dk = nullptr, *dv = nullptr;  // strides ldq, ldk, ldv of the descriptor
};
void attention_backward(const AttnDesc& a, const float* probs, const AttnGrads& g, ScoreHook* hook);

void check_attn_desc(const AttnDesc& a);  // throws Error naming the bad field

// Fast path: (b, h) pairs in parallel, scores by gemm, SIMD softmax.
void attention_forward(const AttnDesc& a);

namespace ref {
// Plain loops in double precision; the oracle for attention_forward.
void attention_forward(const AttnDesc& a);
}  // namespace ref

}  // namespace posformer
