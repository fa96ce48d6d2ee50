// Exact softmax attention over a batch of sequences, one descriptor for every variant of bias.
//
// Layout (row-major, fp32). For batch b, query row t, head h:
//   q[(b*Tq + t)*ldq + h*D + 0..D)     H query heads
//   k[(b*Tk' + s)*ldk + g*D + 0..D)    Hkv key/value heads; query head h reads g = h / (H/Hkv)
//   v[(b*Tk' + s)*ldv + g*D + 0..D)    Tk' = kv_rows() (Tk, or a KV cache's capacity)
//   out[(b*Tq + t)*ldo + h*D + 0..D)
//
//   S[t, s] = scale * q_t . k_s  (+ hook->add_scores: ALiBi, T5, Shaw, XL, DeBERTa terms)
//   S[t, s] = -inf where masked: causal (k_pos0 + s > q_pos0 + t) or s >= key_len[b], or s
//             outside the row's key window [key_lo[b, t], key_hi[b, t]) when one is given
//   P = softmax_rows(S);   out_t = sum_s P[t, s] v_s  (+ hook->add_values: Shaw's aV term)
//
// Row order: query row t and key row s are rows q_pos0 + t and k_pos0 + s of the sequence
// (KV-cache decoding passes the cached keys with k_pos0 = 0 and the new queries at q_pos0 =
// cache length); the causal mask compares these. Positions (what relative schemes read) are the
// same numbers unless the descriptor carries position ids (q_ids, k_ids): packed sequences and
// left-padded batches, whose positions are not their row numbers.
#pragma once
#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace posformer {

// A rectangle of one (b, h) score matrix: query rows t0 .. t0+rows-1, key columns s0 ..
// s0+cols-1. Tile buffers (S, P, dS, dP) hold it row-major with their own row stride ld:
// element (t, s) at [(t - t0) * ld + (s - s0)]. Kernels choose the tiles (blocks of query rows
// over the keys they can see); a hook must give the same result for any tiling.
struct ScoreTile {
  int64_t t0 = 0, rows = 0, s0 = 0, cols = 0;
};

// Per-layer, per-call state of a relative position scheme (made by PositionEncoding::prepare),
// or of any other term added inside attention. Forward methods are called concurrently for
// different (b, h) and tiles: implementations must only read shared state.
// Row pointers that are not tile buffers (out, dO, dq, dk) point at row 0 of sequence b and
// head h (or its kv head), with the given stride: a hook indexes them by absolute row t or s.
class ScoreHook {
 public:
  virtual ~ScoreHook() = default;
  // S: a tile of (b, h)'s scores, already multiplied by scale; add the scheme's terms.
  virtual void add_scores(int64_t b, int64_t h, const ScoreTile& tile, float* S,
                          int64_t ldS) const = 0;
  virtual bool has_value_terms() const { return false; }
  // P: a tile of probabilities (zero at masked keys); out rows t0..: add sum_s P[t,s] extra(t,s).
  virtual void add_values(int64_t b, int64_t h, const ScoreTile& tile, const float* P, int64_t ldP,
                          float* out, int64_t ldo) const {}

  // ---- backward (training). Called concurrently for different kv-head groups: all heads of
  // one group run on one thread, so per-head slices of gradients are race-free; state shared
  // by all heads must be accumulated per thread (omp_get_thread_num) and reduced in finish.
  // Called once before the parallel loop: allocate gradient accumulators here.
  virtual void begin_backward() {}
  // Before dS is consumed: a hook may add to it (terms whose gradient arrives from elsewhere,
  // such as scores carried to the next layer). dS: a tile of dL/dS, through softmax and mask.
  virtual void adjust_dscores(int64_t b, int64_t h, const ScoreTile& tile, float* dS,
                              int64_t lddS) {}
  // dS: a tile of dL/dS. Adds to dq (rows of head h, stride lddq), dk (rows of kv head g,
  // stride lddk) and the hook's parameter gradients.
  virtual void backward_scores(int64_t b, int64_t h, const ScoreTile& tile, const float* dS,
                               int64_t lddS, float* dq, int64_t lddq, float* dk, int64_t lddk) {}
  // Value term (Shaw): dP[t,s] += dO_t . extra(t,s) over the tile; parameter grads from P, dO.
  virtual void backward_values(int64_t b, int64_t h, const ScoreTile& tile, const float* P,
                               int64_t ldP, const float* dO, int64_t lddo, float* dP,
                               int64_t lddP) {}
  // After all (b, h): reduce per-thread state and add parameter gradients into `grads`
  // (same names as the parameters).
  virtual void finish_backward(class ParamStore& grads) {}
};

// Several hooks applied one after the other (a relative scheme plus carried scores, say).
class HookChain final : public ScoreHook {
 public:
  explicit HookChain(std::vector<std::unique_ptr<ScoreHook>> hooks) : hooks_(std::move(hooks)) {}
  void add_scores(int64_t b, int64_t h, const ScoreTile& t, float* S, int64_t ldS) const override {
    for (const auto& k : hooks_) k->add_scores(b, h, t, S, ldS);
  }
  bool has_value_terms() const override {
    return std::any_of(hooks_.begin(), hooks_.end(),
                       [](const auto& k) { return k->has_value_terms(); });
  }
  void add_values(int64_t b, int64_t h, const ScoreTile& t, const float* P, int64_t ldP, float* out,
                  int64_t ldo) const override {
    for (const auto& k : hooks_)
      if (k->has_value_terms()) k->add_values(b, h, t, P, ldP, out, ldo);
  }
  void begin_backward() override {
    for (const auto& k : hooks_) k->begin_backward();
  }
  void adjust_dscores(int64_t b, int64_t h, const ScoreTile& t, float* dS, int64_t lddS) override {
    for (const auto& k : hooks_) k->adjust_dscores(b, h, t, dS, lddS);
  }
  void backward_scores(int64_t b, int64_t h, const ScoreTile& t, const float* dS, int64_t lddS,
                       float* dq, int64_t lddq, float* dk, int64_t lddk) override {
    for (const auto& k : hooks_) k->backward_scores(b, h, t, dS, lddS, dq, lddq, dk, lddk);
  }
  void backward_values(int64_t b, int64_t h, const ScoreTile& t, const float* P, int64_t ldP,
                       const float* dO, int64_t lddo, float* dP, int64_t lddP) override {
    for (const auto& k : hooks_)
      if (k->has_value_terms()) k->backward_values(b, h, t, P, ldP, dO, lddo, dP, lddP);
  }
  void finish_backward(class ParamStore& grads) override {
    for (const auto& k : hooks_) k->finish_backward(grads);
  }

 private:
  std::vector<std::unique_ptr<ScoreHook>> hooks_;
};

// a then b (either may be null).
std::unique_ptr<ScoreHook> chain_hooks(std::unique_ptr<ScoreHook> a, std::unique_ptr<ScoreHook> b);

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
  // Key window per query row (segment masks): row t of batch b sees only keys s with
  // key_lo[b*Tq + t] <= s < key_hi[b*Tq + t], on top of the causal mask and key padding; null =
  // no bound on that side. Uses:
  //   packed documents  a row holds documents [s_0, s_1), [s_1, s_2), ...; a query in [s_i,
  //                     s_(i+1)) gets lo = s_i and hi = s_(i+1) (causal: hi may be left null);
  //                     each document then attends exactly as it would alone.
  //   left padding      sequence b's first real row p_b: lo = p_b for every row (pad rows then
  //                     see no key: causal end t+1 <= p_b; their output is 0 and means nothing).
  // Both bounds must be non-decreasing in t (true for the two uses above): kernels take a block
  // of rows' key range from its first row's lo and its last row's end, and skip key tiles
  // outside it. Variants that cannot honour a window (caps().key_window false) refuse it.
  const int32_t* key_lo = nullptr;  // [B, Tq]
  const int32_t* key_hi = nullptr;  // [B, Tq]
  bool has_window() const { return key_lo || key_hi; }
  // The mask: query row t of batch b sees keys [first_key(b, t), visible_keys(b, t)) (key
  // padding, with `causal` keys at positions <= its own, and the key window); visible_keys is in
  // [0, Tk] and never decreases in t; first_key is in [0, visible_keys] and never decreases in t
  // when key_lo does not.
  int64_t visible_keys(int64_t b, int64_t t) const {
    int64_t end = key_len ? std::clamp<int64_t>(key_len[b], 0, Tk) : Tk;
    if (causal) end = std::min(end, std::max<int64_t>(q_pos0 + t - k_pos0 + 1, 0));
    if (key_hi) end = std::min(end, std::max<int64_t>(key_hi[b * Tq + t], 0));
    return end;
  }
  int64_t first_key(int64_t b, int64_t t) const {
    return key_lo ? std::clamp<int64_t>(key_lo[b * Tq + t], 0, visible_keys(b, t)) : 0;
  }
  // Position ids of the rows, for score terms (relative schemes): q_ids [B, Tq], k_ids
  // [B, kv_rows()]; null = the row numbers q_pos0 + t, k_pos0 + s.
  const int32_t* q_ids = nullptr;
  const int32_t* k_ids = nullptr;
  int64_t q_pos(int64_t b, int64_t t) const { return q_ids ? q_ids[b * Tq + t] : q_pos0 + t; }
  int64_t k_pos(int64_t b, int64_t s) const {
    return k_ids ? k_ids[b * kv_rows() + s] : k_pos0 + s;
  }
  // Smallest and largest key-minus-query distance k_pos - q_pos over every (b, t, s): the span
  // of tables indexed by distance ({0, 0} when Tq or Tk is 0).
  std::pair<int64_t, int64_t> rel_range() const {
    if (B * Tq == 0 || Tk == 0) return {0, 0};
    int64_t qlo = q_pos0, qhi = q_pos0 + Tq - 1, klo = k_pos0, khi = k_pos0 + Tk - 1;
    if (q_ids)
      qlo = *std::min_element(q_ids, q_ids + B * Tq),
      qhi = *std::max_element(q_ids, q_ids + B * Tq);
    if (k_ids) {
      klo = k_ids[0], khi = k_ids[0];
      for (int64_t b = 0; b < B; ++b)
        for (int64_t s = 0; s < Tk; ++s)
          klo = std::min<int64_t>(klo, k_ids[b * kv_rows() + s]),
          khi = std::max<int64_t>(khi, k_ids[b * kv_rows() + s]);
    }
    return {klo - qhi, khi - qlo};
  }
  const ScoreHook* hook = nullptr;
  // Self-attention (keys at the queries' sequence positions, where the position scheme applies);
  // false for cross-attention. A variant that rotates inside (caps().rotary_inside) reads it.
  bool self_attention = false;
  float* probs = nullptr;  // optional [B, H, Tq, Tk]: forward stores P here (training)
  // bfloat16 products (softmax's fused forward only): q, k, v and the probabilities P rounded to
  // bfloat16, the sums in float32 (kernels/cpu/flash_bf16.h: AVX512-BF16 where the CPU has it,
  // a portable loop elsewhere); softmax, the running max and sum, L and the output stay float32.
  // Decoding-sized calls (fewer than 16 query rows per kv head) run in float32. The fused
  // backward refuses it (it recomputes P in float32); the unfused path ignores it.
  bool bf16 = false;
  // The model's weights and buffers, for variants with their own: buffers (performer's random
  // features) and per-sublayer weights named param_prefix + "..." (nystrom's convolution;
  // param_prefix like "encoder.layers.0.attn."); null where a variant needs none.
  const class ParamStore* params = nullptr;
  std::string param_prefix;
};

// RealFormer's residual attention (SPEC.md 6): S_l = scale q k^T (+ position terms) + S_(l-1).
// Forward (add_scores): adds the previous layer's scores `in` to the tile, then records the
// tile's total into `out` (put it last in a chain, so it records every term; masks come after
// hooks, so the recorded scores are unmasked). Backward (adjust_dscores): S_(l+1) contains S_l,
// so dS_l gets dS_(l+1) (`in`) added, and the total is recorded into `out` for layer l-1.
// in, out: [B, H, Tq, Tk] of the descriptor; in may be null (first / last layer).
class ResidualScoresHook final : public ScoreHook {
 public:
  ResidualScoresHook(const AttnDesc& a, const float* in, float* out) : a_(a), in_(in), out_(out) {}
  void add_scores(int64_t b, int64_t h, const ScoreTile& t, float* S, int64_t ldS) const override {
    carry(b, h, t, S, ldS);
  }
  void adjust_dscores(int64_t b, int64_t h, const ScoreTile& t, float* dS, int64_t lddS) override {
    carry(b, h, t, dS, lddS);
  }

 private:
  void carry(int64_t b, int64_t h, const ScoreTile& t, float* X, int64_t ld) const;
  AttnDesc a_;
  const float* in_;
  float* out_;
};

// Gradients of attention_forward, given the P it stored. dq [B*Tq, ldq-strided like q], dk, dv
// like k, v; all are overwritten (not accumulated). hook may be null.
struct AttnGrads {
  const float* dout = nullptr;
  int64_t lddo = 0;
  float *dq = nullptr, *dk = nullptr, *dv = nullptr;  // strides ldq, ldk, ldv of the descriptor
  class ParamStore* param_grads = nullptr;  // a variant's weights' gradients are added here
};
void attention_backward(const AttnDesc& a, const float* probs, const AttnGrads& g, ScoreHook* hook);
// Whether AttnDesc::bf16 products run on AVX512-BF16 here (false: the portable loop, slow;
// POSFORMER_BF16_NATIVE=0 forces it).
bool attention_bf16_native();

void check_attn_desc(const AttnDesc& a);  // throws Error naming the bad field

// Fast path: (b, h) pairs in parallel, scores by gemm, SIMD softmax.
void attention_forward(const AttnDesc& a);

// Fused ("flash") kernel: tiles of kBr query rows x kBc keys (fused_attention.cpp) are made,
// used and dropped, memory O(T) per thread. Forward computes the rows' softmax online (running
// max and sum, output rescaled) and, when lse is not null, stores each row's log-sum-exp
// L[b, h, t] = log sum_s exp(S[t, s]) into lse [B, H, Tq] (-inf for rows that see no key;
// their output is 0). Backward recomputes P = exp(S - L) tile by tile from q, k and L, with
// Di = rowsum(dO * out): `a.out` must hold this forward's output, and the backward's hook must
// add the forward's score terms in add_scores (position schemes do; the model's backward
// ResidualScoresHook does not: it carries gradients, so RealFormer training keeps P). Hooks
// get the same tile calls as in attention_forward / attention_backward; hooks with value terms
// (Shaw) are refused (they use the unfused path). a.probs is ignored.
void fused_attention_forward(const AttnDesc& a, float* lse);
void fused_attention_backward(const AttnDesc& a, const float* lse, const AttnGrads& g,
                              ScoreHook* hook);

namespace ref {
// Plain loops in double precision; the oracle for attention_forward.
void attention_forward(const AttnDesc& a);
}  // namespace ref

}  // namespace posformer
