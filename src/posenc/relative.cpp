// Shaw, Transformer-XL and DeBERTa: relative terms computed from q and k inside attention
// (SPEC.md section 5). Per-head products go through gemm; the hook gathers by distance.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "posenc_impl.h"
#include "posformer/ops/matmul.h"

namespace posformer {
namespace {

// Per-thread scratch, reused across calls (hooks run inside the (b, h) parallel loop).
float* scratch(int slot, size_t n) {
  thread_local std::vector<float> buf[3];
  if (buf[slot].size() < n) buf[slot].resize(n);
  return buf[slot].data();
}

inline int64_t clampi(int64_t v, int64_t lo, int64_t hi) {
  return std::min(std::max(v, lo), hi);
}

// ---- Shaw: e_ij = q_i.(k_j + aK[r]) * scale, z_i = sum_j a_ij (v_j + aV[r]), r = clip(j-i,-k,k)+k
class ShawHook final : public ScoreHook {
 public:
  ShawHook(const AttnDesc& a, const float* aK, const float* aV, int64_t k, std::string nk,
           std::string nv)
      : a_(a), aK_(aK), aV_(aV), k_(k), nk_(std::move(nk)), nv_(std::move(nv)) {}
  int64_t r_of(int64_t b, int64_t t, int64_t s) const {
    return clampi(a_.k_pos(b, s) - a_.q_pos(b, t), -k_, k_) + k_;
  }
  void add_scores(int64_t b, int64_t h, const ScoreTile& tl, float* S, int64_t ldS) const override {
    const int64_t n = 2 * k_ + 1;
    float* qa = scratch(0, static_cast<size_t>(tl.rows * n));  // qa[t, r] = q_t . aK[r]
    const float* q = a_.q + (b * a_.Tq + tl.t0) * a_.ldq + h * a_.D;
    ops::gemm(false, true, tl.rows, n, a_.D, 1.0f, q, a_.ldq, aK_, a_.D, 0.0f, qa, n);
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t) {
      float* row = S + (t - tl.t0) * ldS;
      const float* qar = qa + (t - tl.t0) * n;
      for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s)
        row[s - tl.s0] += a_.scale * qar[r_of(b, t, s)];
    }
  }
  bool has_value_terms() const override { return true; }
  // out_t += sum_r w[t, r] aV[r],  w[t, r] = sum_{s: r(t,s)=r} P[t, s]
  void add_values(int64_t b, int64_t h, const ScoreTile& tl, const float* P, int64_t ldP,
                  float* out, int64_t ldo) const override {
    const int64_t n = 2 * k_ + 1;
    float* w = scratch(1, static_cast<size_t>(tl.rows * n));
    std::fill(w, w + tl.rows * n, 0.0f);
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t)
      for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s)
        w[(t - tl.t0) * n + r_of(b, t, s)] += P[(t - tl.t0) * ldP + (s - tl.s0)];
    ops::gemm(false, false, tl.rows, a_.D, n, 1.0f, w, n, aV_, a_.D, 1.0f, out + tl.t0 * ldo, ldo);
  }
  // dqa[t,r] = scale sum_{s: r(t,s)=r} dS[t,s];  dq += dqa aK;  daK += dqa^T q
  void backward_scores(int64_t b, int64_t h, const ScoreTile& tl, const float* dS, int64_t lddS,
                       float* dq, int64_t lddq, float*, int64_t) override {
    const int64_t n = 2 * k_ + 1;
    float* dqa = scratch(0, static_cast<size_t>(tl.rows * n));
    std::fill(dqa, dqa + tl.rows * n, 0.0f);
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t)
      for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s)
        dqa[(t - tl.t0) * n + r_of(b, t, s)] += a_.scale * dS[(t - tl.t0) * lddS + (s - tl.s0)];
    ops::gemm(false, false, tl.rows, a_.D, n, 1.0f, dqa, n, aK_, a_.D, 1.0f, dq + tl.t0 * lddq,
              lddq);
    const float* q = a_.q + (b * a_.Tq + tl.t0) * a_.ldq + h * a_.D;
    ops::gemm(true, false, n, a_.D, tl.rows, 1.0f, dqa, n, q, a_.ldq, 1.0f, thread_grad(0), a_.D);
  }
  // dP[t,s] += dO_t . aV[r(t,s)];  daV += W^T dO with W[t,r] = sum_{s: r(t,s)=r} P[t,s]
  void backward_values(int64_t b, int64_t h, const ScoreTile& tl, const float* P, int64_t ldP,
                       const float* dO, int64_t lddo, float* dP, int64_t lddP) override {
    const int64_t n = 2 * k_ + 1;
    const float* dOt = dO + tl.t0 * lddo;
    float* doa = scratch(0, static_cast<size_t>(tl.rows * n));
    ops::gemm(false, true, tl.rows, n, a_.D, 1.0f, dOt, lddo, aV_, a_.D, 0.0f, doa, n);
    float* w = scratch(1, static_cast<size_t>(tl.rows * n));
    std::fill(w, w + tl.rows * n, 0.0f);
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t)
      for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s) {
        const int64_t r = r_of(b, t, s);
        dP[(t - tl.t0) * lddP + (s - tl.s0)] += doa[(t - tl.t0) * n + r];
        w[(t - tl.t0) * n + r] += P[(t - tl.t0) * ldP + (s - tl.s0)];
      }
    ops::gemm(true, false, n, a_.D, tl.rows, 1.0f, w, n, dOt, lddo, 1.0f, thread_grad(1), a_.D);
  }
  void begin_backward() override {
    for (auto& v : tgrad_)
      v.assign(static_cast<size_t>(omp_get_max_threads()),
               std::vector<float>(static_cast<size_t>((2 * k_ + 1) * a_.D), 0.0f));
  }
  void finish_backward(ParamStore& grads) override {
    for (int which = 0; which < 2; ++which) {
      float* g = grads.f32(which == 0 ? nk_ : nv_);
      for (const auto& buf : tgrad_[which])
        for (size_t i = 0; i < buf.size(); ++i) g[i] += buf[i];
    }
  }

 private:
  // per-thread accumulators for daK (0) and daV (1): the tables are shared by all heads
  float* thread_grad(int which) { return tgrad_[which][omp_get_thread_num()].data(); }
  AttnDesc a_;
  const float *aK_, *aV_;  // [2k+1, D], shared by all heads
  int64_t k_;
  std::string nk_, nv_;
  std::vector<std::vector<float>> tgrad_[2];
};

// ---- Transformer-XL: scale * ((q_i + u).k_j + (q_i + v).(W_R r_(i-j))), r sinusoidal (half
// layout)
class XlHook final : public ScoreHook {
 public:
  XlHook(const AttnDesc& a, const float* u, const float* v, const float* WR, int64_t d,
         std::string prefix)
      : a_(a), u_(u), v_(v), d_(d), prefix_(std::move(prefix)) {
    const auto [rel_lo, rel_hi] = a.rel_range();  // rel = j - i; distances i - j
    dmin_ = -rel_hi;
    nrel_ = -rel_lo - dmin_ + 1;
    if (nrel_ < 1) nrel_ = 1;
    r_.resize(static_cast<size_t>(nrel_ * d));
    sinusoid_rows(static_cast<double>(dmin_), nrel_, d, true, r_.data());
    const int64_t HD = a.H * a.D;
    rp_.resize(static_cast<size_t>(nrel_ * HD));  // rp[n, h*D + c] = (W_R r_(dmin+n))[h*D + c]
    ops::linear(r_.data(), WR, nullptr, rp_.data(), nrel_, HD, d);
  }
  void add_scores(int64_t b, int64_t h, const ScoreTile& tl, float* S, int64_t ldS) const override {
    const int64_t D = a_.D, HD = a_.H * D;
    const int64_t g = h / (a_.H / a_.Hkv);
    const float* u = u_ + h * D;
    float* uk = scratch(0, static_cast<size_t>(tl.cols));  // uk[s] = u . k_s
    for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s) {
      const float* kr = a_.k + (b * a_.kv_rows() + s) * a_.ldk + g * D;
      float acc = 0;
      for (int64_t c = 0; c < D; ++c) acc += u[c] * kr[c];
      uk[s - tl.s0] = acc;
    }
    const float* qv = q_plus_v(b, h, tl);
    float* bd = scratch(2, static_cast<size_t>(tl.rows * nrel_));  // bd[t, n] = (q_t + v).Rp_n
    ops::gemm(false, true, tl.rows, nrel_, D, 1.0f, qv, D, rp_.data() + h * D, HD, 0.0f, bd, nrel_);
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t) {
      float* row = S + (t - tl.t0) * ldS;
      const float* bdr = bd + (t - tl.t0) * nrel_;
      for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s) {
        const int64_t dist = a_.q_pos(b, t) - a_.k_pos(b, s);
        row[s - tl.s0] += a_.scale * (uk[s - tl.s0] + bdr[dist - dmin_]);
      }
    }
  }
  // duk[s] = scale sum_t dS;  du += duk^T K;  dk += duk u.   dbd[t, dist] = scale dS[t, s];
  // dqv = dbd Rp_h -> dq, dv;  dRp_h += dbd^T (q + v)   (dW_R in finish)
  void backward_scores(int64_t b, int64_t h, const ScoreTile& tl, const float* dS, int64_t lddS,
                       float* dq, int64_t lddq, float* dk, int64_t lddk) override {
    const int64_t D = a_.D, HD = a_.H * D;
    const int64_t g = h / (a_.H / a_.Hkv);
    const float* u = u_ + h * D;
    float *du = du_.local(), *dvb = dv_.local(), *drp = drp_.local();
    for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s) {
      double acc = 0;
      for (int64_t t = 0; t < tl.rows; ++t) acc += dS[t * lddS + (s - tl.s0)];
      const float duk = a_.scale * static_cast<float>(acc);
      const float* kr = a_.k + (b * a_.kv_rows() + s) * a_.ldk + g * D;
      float* dkr = dk + s * lddk;
      for (int64_t c = 0; c < D; ++c) {
        du[h * D + c] += duk * kr[c];
        dkr[c] += duk * u[c];
      }
    }
    float* dbd = scratch(2, static_cast<size_t>(tl.rows * nrel_));
    std::fill(dbd, dbd + tl.rows * nrel_, 0.0f);
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t)
      for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s) {
        const int64_t dist = a_.q_pos(b, t) - a_.k_pos(b, s);
        dbd[(t - tl.t0) * nrel_ + dist - dmin_] += a_.scale * dS[(t - tl.t0) * lddS + (s - tl.s0)];
      }
    float* dqv = scratch(0, static_cast<size_t>(tl.rows * D));
    ops::gemm(false, false, tl.rows, D, nrel_, 1.0f, dbd, nrel_, rp_.data() + h * D, HD, 0.0f, dqv,
              D);
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t)
      for (int64_t c = 0; c < D; ++c) {
        dq[t * lddq + c] += dqv[(t - tl.t0) * D + c];
        dvb[h * D + c] += dqv[(t - tl.t0) * D + c];
      }
    const float* qv = q_plus_v(b, h, tl);
    ops::gemm(true, false, nrel_, D, tl.rows, 1.0f, dbd, nrel_, qv, D, 1.0f, drp + h * D, HD);
  }
  void finish_backward(ParamStore& grads) override {
    if (!du_.active()) return;
    const int64_t HD = a_.H * a_.D;
    du_.reduce_into(grads.f32(prefix_ + "attn.xl_u"));
    dv_.reduce_into(grads.f32(prefix_ + "attn.xl_v"));
    // dW_R[HD, d] += dRp^T [HD, nrel] r [nrel, d]
    const std::vector<float> drp = drp_.total();
    ops::gemm(true, false, HD, d_, nrel_, 1.0f, drp.data(), HD, r_.data(), d_, 1.0f,
              grads.f32(prefix_ + "attn.xl_r.weight"), d_);
  }

 private:
  void begin_backward() override {
    const size_t HD = static_cast<size_t>(a_.H * a_.D);
    du_.reset(HD);
    dv_.reset(HD);
    drp_.reset(static_cast<size_t>(nrel_) * HD);
  }
  // (q_t + v_h) for the tile's query rows, [rows, D] in scratch slot 1
  const float* q_plus_v(int64_t b, int64_t h, const ScoreTile& tl) const {
    const int64_t D = a_.D;
    const float* v = v_ + h * D;
    float* qv = scratch(1, static_cast<size_t>(tl.rows * D));
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t) {
      const float* qr = a_.q + (b * a_.Tq + t) * a_.ldq + h * D;
      for (int64_t c = 0; c < D; ++c) qv[(t - tl.t0) * D + c] = qr[c] + v[c];
    }
    return qv;
  }
  AttnDesc a_;
  const float *u_, *v_;  // [H, D]
  int64_t d_;
  std::string prefix_;  // "decoder.layers.3."
  int64_t dmin_, nrel_;
  std::vector<float> r_, rp_;
  PerThreadSums<float> du_, dv_, drp_;  // [H*D], [H*D], [nrel, H*D]
};

// ---- DeBERTa: scale * (Qc_i.Kr[d(i,j)] + Kc_j.Qr[d(j,i)]), d(i,j) = clip(i-j, -k, k-1) + k
class DebertaHook final : public ScoreHook {
 public:
  DebertaHook(const AttnDesc& a, const float* rel, const float* Wq, const float* bq,
              const float* Wk, const float* bk, int64_t k, int64_t d, std::string rel_name,
              std::string layer_prefix)
      : a_(a),
        k_(k),
        d_(d),
        rel_(rel),
        wq_(Wq),
        wk_(Wk),
        rel_name_(std::move(rel_name)),
        lp_(std::move(layer_prefix)) {
    const int64_t HD = a.H * a.D;
    qr_.resize(static_cast<size_t>(2 * k * HD));
    kr_.resize(qr_.size());
    ops::linear(rel, Wq, bq, qr_.data(), 2 * k, HD, d);
    ops::linear(rel, Wk, bk, kr_.data(), 2 * k, HD, d);
  }
  int64_t delta(int64_t i, int64_t j) const { return clampi(i - j, -k_, k_ - 1) + k_; }
  void add_scores(int64_t b, int64_t h, const ScoreTile& tl, float* S, int64_t ldS) const override {
    const int64_t D = a_.D, HD = a_.H * D, n = 2 * k_;
    const int64_t g = h / (a_.H / a_.Hkv);
    float* c2p = scratch(0, static_cast<size_t>(tl.rows * n));  // c2p[t, r] = q_t . Kr_h[r]
    float* p2c = scratch(1, static_cast<size_t>(tl.cols * n));  // p2c[s, r] = k_s . Qr_h[r]
    ops::gemm(false, true, tl.rows, n, D, 1.0f, a_.q + (b * a_.Tq + tl.t0) * a_.ldq + h * D, a_.ldq,
              kr_.data() + h * D, HD, 0.0f, c2p, n);
    ops::gemm(false, true, tl.cols, n, D, 1.0f, a_.k + (b * a_.kv_rows() + tl.s0) * a_.ldk + g * D,
              a_.ldk, qr_.data() + h * D, HD, 0.0f, p2c, n);
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t) {
      const int64_t i = a_.q_pos(b, t);
      for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s) {
        const int64_t j = a_.k_pos(b, s);
        S[(t - tl.t0) * ldS + (s - tl.s0)] +=
            a_.scale * (c2p[(t - tl.t0) * n + delta(i, j)] + p2c[(s - tl.s0) * n + delta(j, i)]);
      }
    }
  }
  // dc2p[t, d(i,j)] += scale dS;  dq += dc2p Kr_h;  dKr_h += dc2p^T q_h
  // dp2c[s, d(j,i)] += scale dS;  dk += dp2c Qr_h;  dQr_h += dp2c^T k_g
  void backward_scores(int64_t b, int64_t h, const ScoreTile& tl, const float* dS, int64_t lddS,
                       float* dq, int64_t lddq, float* dk, int64_t lddk) override {
    const int64_t D = a_.D, HD = a_.H * D, n = 2 * k_;
    const int64_t g = h / (a_.H / a_.Hkv);
    float* dc2p = scratch(0, static_cast<size_t>(tl.rows * n));
    float* dp2c = scratch(1, static_cast<size_t>(tl.cols * n));
    std::fill(dc2p, dc2p + tl.rows * n, 0.0f);
    std::fill(dp2c, dp2c + tl.cols * n, 0.0f);
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t) {
      const int64_t i = a_.q_pos(b, t);
      for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s) {
        const int64_t j = a_.k_pos(b, s);
        const float gs = a_.scale * dS[(t - tl.t0) * lddS + (s - tl.s0)];
        dc2p[(t - tl.t0) * n + delta(i, j)] += gs;
        dp2c[(s - tl.s0) * n + delta(j, i)] += gs;
      }
    }
    const float* q = a_.q + (b * a_.Tq + tl.t0) * a_.ldq + h * D;
    const float* k = a_.k + (b * a_.kv_rows() + tl.s0) * a_.ldk + g * D;
    ops::gemm(false, false, tl.rows, D, n, 1.0f, dc2p, n, kr_.data() + h * D, HD, 1.0f,
              dq + tl.t0 * lddq, lddq);
    ops::gemm(true, false, n, D, tl.rows, 1.0f, dc2p, n, q, a_.ldq, 1.0f, dkr_.local() + h * D, HD);
    ops::gemm(false, false, tl.cols, D, n, 1.0f, dp2c, n, qr_.data() + h * D, HD, 1.0f,
              dk + tl.s0 * lddk, lddk);
    ops::gemm(true, false, n, D, tl.cols, 1.0f, dp2c, n, k, a_.ldk, 1.0f, dqr_.local() + h * D, HD);
  }
  // Kr = P Wk^T + bk: dWk += dKr^T P, dbk += colsum dKr, dP += dKr Wk (same for Qr)
  void finish_backward(ParamStore& grads) override {
    if (!dkr_.active()) return;
    const int64_t HD = a_.H * a_.D, n = 2 * k_;
    float* drel = grads.f32(rel_name_);
    for (int which = 0; which < 2; ++which) {
      const std::vector<float> dx = which == 0 ? dqr_.total() : dkr_.total();
      const std::string w = lp_ + (which == 0 ? "attn.pos_q" : "attn.pos_k");
      ops::gemm(true, false, HD, d_, n, 1.0f, dx.data(), HD, rel_, d_, 1.0f,
                grads.f32(w + ".weight"), d_);
      if (grads.has(w + ".bias")) {
        float* gb = grads.f32(w + ".bias");
        for (int64_t r = 0; r < n; ++r)
          for (int64_t c = 0; c < HD; ++c) gb[c] += dx[r * HD + c];
      }
      ops::gemm(false, false, n, d_, HD, 1.0f, dx.data(), HD, which == 0 ? wq_ : wk_, d_, 1.0f,
                drel, d_);
    }
  }

 private:
  void begin_backward() override {
    dqr_.reset(qr_.size());
    dkr_.reset(kr_.size());
  }
  AttnDesc a_;
  int64_t k_, d_;
  const float *rel_, *wq_, *wk_;
  std::string rel_name_, lp_;
  std::vector<float> qr_, kr_;      // [2k, H*D]
  PerThreadSums<float> dqr_, dkr_;  // their gradients
};

}  // namespace

void ShawPosition::declare(std::vector<ParamSpec>& specs) const {
  for (int64_t l = 0; l < g_.n_layers; ++l) {
    specs.push_back({layer_name(g_, l, "attn.shaw_k"),
                     {2 * c_.clip + 1, g_.D},
                     Init::Normal,
                     "position",
                     true});
    specs.push_back({layer_name(g_, l, "attn.shaw_v"),
                     {2 * c_.clip + 1, g_.D},
                     Init::Normal,
                     "position",
                     true});
  }
}

std::unique_ptr<ScoreHook> ShawPosition::prepare(const ParamStore& p, const AttnInputs& in) const {
  const std::string nk = layer_name(g_, in.layer, "attn.shaw_k"),
                    nv = layer_name(g_, in.layer, "attn.shaw_v");
  return std::make_unique<ShawHook>(*in.desc, p.f32(nk), p.f32(nv), c_.clip, nk, nv);
}

void XlPosition::declare(std::vector<ParamSpec>& specs) const {
  for (int64_t l = 0; l < g_.n_layers; ++l) {
    specs.push_back({layer_name(g_, l, "attn.xl_u"), {g_.H, g_.D}, Init::Normal, "position", true});
    specs.push_back({layer_name(g_, l, "attn.xl_v"), {g_.H, g_.D}, Init::Normal, "position", true});
    specs.push_back({layer_name(g_, l, "attn.xl_r.weight"),
                     {g_.H * g_.D, g_.d_model},
                     Init::Normal,
                     "position",
                     true});
  }
}

std::unique_ptr<ScoreHook> XlPosition::prepare(const ParamStore& p, const AttnInputs& in) const {
  return std::make_unique<XlHook>(*in.desc, p.f32(layer_name(g_, in.layer, "attn.xl_u")),
                                  p.f32(layer_name(g_, in.layer, "attn.xl_v")),
                                  p.f32(layer_name(g_, in.layer, "attn.xl_r.weight")), g_.d_model,
                                  layer_name(g_, in.layer, ""));
}

void DebertaPosition::declare(std::vector<ParamSpec>& specs) const {
  specs.push_back(
      {g_.prefix + "rel_emb.weight", {2 * c_.span, g_.d_model}, Init::Normal, "position", true});
  for (int64_t l = 0; l < g_.n_layers; ++l) {
    for (const char* w : {"attn.pos_q", "attn.pos_k"}) {
      specs.push_back({layer_name(g_, l, std::string(w) + ".weight"),
                       {g_.H * g_.D, g_.d_model},
                       Init::Normal,
                       "position",
                       true});
      if (g_.bias)
        specs.push_back({layer_name(g_, l, std::string(w) + ".bias"),
                         {g_.H * g_.D},
                         Init::Zeros,
                         "position",
                         false});
    }
  }
}

std::unique_ptr<ScoreHook> DebertaPosition::prepare(const ParamStore& p,
                                                    const AttnInputs& in) const {
  const int64_t l = in.layer;
  return std::make_unique<DebertaHook>(
      *in.desc, p.f32(g_.prefix + "rel_emb.weight"), p.f32(layer_name(g_, l, "attn.pos_q.weight")),
      p.f32_or_null(layer_name(g_, l, "attn.pos_q.bias")),
      p.f32(layer_name(g_, l, "attn.pos_k.weight")),
      p.f32_or_null(layer_name(g_, l, "attn.pos_k.bias")), c_.span, g_.d_model,
      g_.prefix + "rel_emb.weight", layer_name(g_, l, ""));
}

float DebertaPosition::default_scale(int64_t D) const {
  return static_cast<float>(1.0 / std::sqrt(3.0 * static_cast<double>(D)));
}

}  // namespace posformer
