// The linear-attention family (SPEC.md 6, docs/attention.md): sim(q, k) = phi(q) . phi(k) for a
// feature map phi (feature_map.h: elu + 1 for `linear`, [1, x/|x|] for `linear_cos`), with F
// features per row. `linear_rope` adds RoPE to the numerator only (Su): the numerator features
// are the rotated An = R_t phi(q_t), Cn = R_s phi(k_s) (rotation at the row's absolute
// position, by the model's `rope` scheme), the denominator ones the plain Ad = phi(q), Cd = phi(k).
// Per query row t of head h (kv head g = h / (H/Hkv)) over the keys it sees, s < e_t =
// AttnDesc::visible_keys(b, t) (causal mask by positions, key padding):
//
//   o_t = An_t^T S_t / (Ad_t . z_t),   S_t = sum_{s<e_t} Cn_s v_s^T [F, D],   z_t = sum Cd_s [F]
//
// (An = Ad, Cn = Cd without rotation). A row that sees no key outputs 0 (as softmax does).
// attention.scale does not apply.
//
// Chunked form (forward and backward, causal or not): the query rows go in chunks of kChunk.
// For a chunk [t0, t0+n), every row sees keys [0, ef) with ef = e_(t0), carried in a running
// state (S, z) that is advanced key block by key block; the keys [ef, el), el = e_(t0+n-1), are
// seen by some rows only and go through the masked quadratic form
//   Pn = (An Cn_p^T) * mask, Pd = (Ad Cd_p^T) * mask,  num = An S + Pn Vp,  den = Ad z + Pd 1
// (Pd = Pn without rotation). Non-causal: ef = el = the key count, so every row reads the state
// alone. Work is O(T F D + T kChunk F) per head, memory O(F D + kChunk^2 + kChunk F) per thread.
//
// Backward, with dN_t = dO_t / den_t, dd_t = -(dO_t . o_t) / den_t:
//   dAn_t = S_t dN_t,  dAd_t = dd_t z_t                (prefix state: a forward scan)
//   dCn_s = R_s v_s, dCd_s = r_s, dV_s = R_s^T Cn_s,  R_s = sum_{t sees s} An_t dN_t^T,
//   r_s = sum Ad_t dd_t                                 (suffix state: a reverse scan over chunks)
//   the partly seen keys of each chunk through the quadratic form (dPn = (dN Vp^T) * mask,
//   dPd = dd * mask), then dphi(q) = dAd + R_t^T dAn (the inverse rotation), likewise for k,
//   and dq = J_phi(q)^T dphi(q), dk = J_phi(k)^T dphi(k) (FeatureMap::backward).
// Nothing is kept from the forward: the backward recomputes the chunk states (the same O(T F D)
// work). Each (b, h) (forward) or (b, kv head) (backward, decode state) is one task; every sum
// inside a task runs in a fixed order, so results do not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "feature_map.h"
#include "posformer/attention/attention.h"
#include "posformer/core/error.h"
#include "posformer/ops/matmul.h"
#include "posformer/posenc/position_encoding.h"
#include "variants.h"

namespace posformer {

// ---- feature maps

namespace {

class Elu1Features final : public FeatureMap {
 public:
  int64_t features(int64_t D) const override { return D; }
  void forward(const float* x, int64_t ld, int64_t n, int64_t D, const MapArgs&,
               float* out) const override {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < D; ++c) {
        const float v = x[r * ld + c];
        out[r * D + c] = v > 0.0f ? v + 1.0f : std::exp(v);
      }
  }
  void backward(const float* x, int64_t ld, int64_t n, int64_t D, const MapArgs&, const float* g,
                float* dx, int64_t lddx) const override {
    for (int64_t r = 0; r < n; ++r)
      for (int64_t c = 0; c < D; ++c) {
        const float v = x[r * ld + c];
        dx[r * lddx + c] = g[r * D + c] * (v > 0.0f ? 1.0f : std::exp(v));
      }
  }
};

// |x| in double: no underflow of the squares, so only x = 0 exactly has no direction.
double inv_norm(const float* x, int64_t D) {
  double s = 0;
  for (int64_t c = 0; c < D; ++c) s += double(x[c]) * double(x[c]);
  return s > 0 ? 1.0 / std::sqrt(s) : 0.0;
}

class CosineFeatures final : public FeatureMap {
 public:
  int64_t features(int64_t D) const override { return D + 1; }
  void forward(const float* x, int64_t ld, int64_t n, int64_t D, const MapArgs&,
               float* out) const override {
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = x + r * ld;
      float* o = out + r * (D + 1);
      const double inv = inv_norm(xr, D);  // 0 at x = 0: phi(0) = [1, 0, ..]
      o[0] = 1.0f;
      for (int64_t c = 0; c < D; ++c) o[c + 1] = static_cast<float>(xr[c] * inv);
    }
  }
  // d(x/|x|) = (I - u u^T) / |x|: dx = (g - u (u . g)) / |x|; 0 at x = 0
  void backward(const float* x, int64_t ld, int64_t n, int64_t D, const MapArgs&, const float* g,
                float* dx, int64_t lddx) const override {
    for (int64_t r = 0; r < n; ++r) {
      const float* xr = x + r * ld;
      const float* gr = g + r * (D + 1) + 1;
      const double inv = inv_norm(xr, D);
      double ug = 0;
      for (int64_t c = 0; c < D; ++c) ug += xr[c] * inv * gr[c];
      for (int64_t c = 0; c < D; ++c)
        dx[r * lddx + c] = static_cast<float>((gr[c] - xr[c] * inv * ug) * inv);
    }
  }
};

}  // namespace

std::unique_ptr<FeatureMap> make_elu1_features() {
  return std::make_unique<Elu1Features>();
}
std::unique_ptr<FeatureMap> make_cosine_features() {
  return std::make_unique<CosineFeatures>();
}

namespace {

constexpr int64_t kChunk = 64;  // query rows per chunk, keys per state-update block

// What one call runs with: the map, F, its arguments (performer's W), and (linear_rope,
// self-attention) the rotation.
struct Family {
  const FeatureMap* map = nullptr;
  const PositionEncoding* rot = nullptr;  // null: An = Ad, Cn = Cd
  int64_t F = 0;
  MapArgs margs;
  bool split() const { return rot != nullptr; }
  MapArgs args(bool query) const {
    MapArgs m = margs;
    m.query = query;
    return m;
  }
  // d [n, F] = phi(rows); with rotation also nr [n, F] = rotated at the rows' positions
  void feats(const float* x, int64_t ld, int64_t n, int64_t D, const Positions& pos, bool query,
             float* d, float* nr) const {
    map->forward(x, ld, n, D, args(query), d);
    if (!rot) return;
    std::copy_n(d, n * F, nr);
    rot->rotate(nr, 1, F, pos);
  }
};

// Per-thread buffers, sized for F features and head dim D.
struct Work {
  Work(int64_t F, int64_t D, bool split)
      : S(F * D),
        z(F),
        R(F * D),
        r(F),
        A(kChunk * F),
        Cp(kChunk * F),
        Kb(kChunk * F),
        dA(kChunk * F),
        num(kChunk * D),
        dN(kChunk * D),
        P(kChunk * kChunk),
        dP(kChunk * kChunk),
        den(kChunk),
        dd(kChunk) {
    if (split) {
      An.resize(kChunk * F), Cpn.resize(kChunk * F), Kbn.resize(kChunk * F);
      dAn.resize(kChunk * F), Pd.resize(kChunk * kChunk);
    }
  }
  std::vector<float> S, z, R, r;             // prefix state; suffix state (backward)
  std::vector<float> A, Cp, Kb, dA;          // [kChunk, F]: Ad, Cd of the partial keys, a key block
  std::vector<float> num, dN;                // [kChunk, D]
  std::vector<float> P, dP;                  // [kChunk, kChunk]: Pn (= Pd unsplit), its gradient
  std::vector<float> den, dd;                // [kChunk]
  std::vector<float> An, Cpn, Kbn, dAn, Pd;  // the rotated (numerator) ones, split only
  std::vector<float> inv_all, dd_all;        // backward: per query row of the head
  std::vector<int64_t> ef_all;               // backward: ef of each chunk
  std::vector<float> dC, dCn;                // backward: dL/dCd, dL/dCn [Tk, F] of the kv head
  // the numerator's buffers: the rotated ones when split, else the shared ones
  float* an() { return An.empty() ? A.data() : An.data(); }
  float* cpn() { return Cpn.empty() ? Cp.data() : Cpn.data(); }
  float* kbn() { return Kbn.empty() ? Kb.data() : Kbn.data(); }
};

// Rows of sequence b: query row t of head h, key/value row s of kv head g.
struct Rows {
  const AttnDesc& a;
  int64_t b;
  // Positions of n query rows from t / key rows from s (the descriptor's ids, or its row run).
  Positions qpos(int64_t t, int64_t n) const {
    return rows_pos(a.q_ids, b * a.Tq + t, a.q_pos0 + t, n);
  }
  Positions kpos(int64_t s, int64_t n) const {
    return rows_pos(a.k_ids, b * a.kv_rows() + s, a.k_pos0 + s, n);
  }
  static Positions rows_pos(const int32_t* ids, int64_t at, int64_t run0, int64_t n) {
    return ids ? Positions::of(1, n, 1, ids + at) : Positions::run(1, n, run0);
  }
  const float* q(int64_t t, int64_t h) const { return a.q + (b * a.Tq + t) * a.ldq + h * a.D; }
  const float* k(int64_t s, int64_t g) const {
    return a.k + (b * a.kv_rows() + s) * a.ldk + g * a.D;
  }
  const float* v(int64_t s, int64_t g) const {
    return a.v + (b * a.kv_rows() + s) * a.ldv + g * a.D;
  }
};

// S += Cn^T V, z += colsum Cd over keys [from, to) of kv head g, in blocks of kChunk.
void advance(const Family& fm, const Rows& x, int64_t g, int64_t from, int64_t to, float* S,
             float* z, Work& w) {
  const int64_t D = x.a.D, F = fm.F;
  for (int64_t s0 = from; s0 < to; s0 += kChunk) {
    const int64_t nb = std::min(kChunk, to - s0);
    fm.feats(x.k(s0, g), x.a.ldk, nb, D, x.kpos(s0, nb), false, w.Kb.data(), w.kbn());
    ops::gemm(true, false, F, D, nb, 1.0f, w.kbn(), F, x.v(s0, g), x.a.ldv, 1.0f, S, D);
    for (int64_t r = 0; r < nb; ++r)
      for (int64_t c = 0; c < F; ++c) z[c] += w.Kb[r * F + c];
  }
}

// masked P [n, m] = X Y^T, row t keeping its first vis_t columns; returns nothing.
void masked_scores(const AttnDesc& a, int64_t b, int64_t t0, int64_t ef, int64_t n, int64_t m,
                   int64_t F, const float* X, const float* Y, float* P) {
  ops::gemm(false, true, n, m, F, 1.0f, X, F, Y, F, 0.0f, P, m);
  for (int64_t t = 0; t < n; ++t) {
    float* row = P + t * m;
    std::fill(row + (a.visible_keys(b, t0 + t) - ef), row + m, 0.0f);
  }
}

// One query chunk [t0, t0+n) of head h: the keys every row sees, [0, ef), are added to the
// state (w.S, w.z; *acc keys of the descriptor are in it already), then w.A = Ad (w.An = An),
// the unnormalised outputs w.num [n, D] and normalisers w.den [n]; the partly seen keys [ef, el)
// leave w.Cp = Cd_p (w.Cpn) [m, F] and the masked w.P = Pn (w.Pd) [n, m]. Returns m = el - ef.
int64_t scan_chunk(const Family& fm, const Rows& x, int64_t h, int64_t t0, int64_t n, int64_t* acc,
                   Work& w, int64_t* ef_out) {
  const AttnDesc& a = x.a;
  const int64_t D = a.D, F = fm.F, g = h / (a.H / a.Hkv), b = x.b;
  // visible_keys never decreases in t and grows by at most 1 per row: ef >= *acc, m < n
  const int64_t ef = a.visible_keys(b, t0), el = a.visible_keys(b, t0 + n - 1), m = el - ef;
  advance(fm, x, g, *acc, ef, w.S.data(), w.z.data(), w);
  *acc = ef;
  fm.feats(x.q(t0, h), a.ldq, n, D, x.qpos(t0, n), true, w.A.data(), w.an());
  ops::gemm(false, false, n, D, F, 1.0f, w.an(), F, w.S.data(), D, 0.0f, w.num.data(), D);
  for (int64_t t = 0; t < n; ++t) {
    float s = 0.0f;
    for (int64_t c = 0; c < F; ++c) s += w.A[t * F + c] * w.z[c];
    w.den[t] = s;
  }
  if (m > 0) {
    fm.feats(x.k(ef, g), a.ldk, m, D, x.kpos(ef, m), false, w.Cp.data(), w.cpn());
    masked_scores(a, b, t0, ef, n, m, F, w.an(), w.cpn(), w.P.data());
    const float* Pd = w.P.data();
    if (fm.split()) {
      masked_scores(a, b, t0, ef, n, m, F, w.A.data(), w.Cp.data(), w.Pd.data());
      Pd = w.Pd.data();
    }
    for (int64_t t = 0; t < n; ++t) {
      float s = 0.0f;
      for (int64_t j = 0; j < m; ++j) s += Pd[t * m + j];
      w.den[t] += s;
    }
    ops::gemm(false, false, n, D, m, 1.0f, w.P.data(), m, x.v(ef, g), a.ldv, 1.0f, w.num.data(), D);
  }
  if (ef_out) *ef_out = ef;
  return m;
}

// Does query row t see anything: a key of the descriptor, or (decoding) the state it started from.
bool sees(const AttnDesc& a, int64_t b, int64_t t, bool prior) {
  return prior || a.visible_keys(b, t) > 0;
}

// The forward of one (b, h), starting from the state (w.S, w.z) of `prior` keys seen by every row.
void head_forward(const Family& fm, const AttnDesc& a, int64_t b, int64_t h, bool prior, Work& w) {
  const Rows x{a, b};
  const int64_t D = a.D;
  int64_t acc = 0;
  for (int64_t t0 = 0; t0 < a.Tq; t0 += kChunk) {
    const int64_t n = std::min(kChunk, a.Tq - t0);
    scan_chunk(fm, x, h, t0, n, &acc, w, nullptr);
    for (int64_t t = 0; t < n; ++t) {
      float* o = a.out + (b * a.Tq + t0 + t) * a.ldo + h * D;
      const float inv = sees(a, b, t0 + t, prior) ? 1.0f / w.den[t] : 0.0f;
      for (int64_t c = 0; c < D; ++c) o[c] = w.num[t * D + c] * inv;
    }
  }
}

// Runs f(task) for task in [0, n) over the OpenMP team, each thread with its own Work.
template <class Fn>
void parallel_tasks(const Family& fm, int64_t n, int64_t D, const Fn& f) {
#pragma omp parallel if (n > 1 && omp_get_max_threads() > 1 && !omp_in_parallel())
  {
    Work w(fm.F, D, fm.split());
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < n; ++task) f(task, w);
  }
}

void family_forward(const Family& fm, const AttnDesc& a) {
  if (a.B == 0 || a.Tq == 0) return;
  parallel_tasks(fm, a.B * a.H, a.D, [&](int64_t bh, Work& w) {
    std::fill(w.S.begin(), w.S.end(), 0.0f);
    std::fill(w.z.begin(), w.z.end(), 0.0f);
    head_forward(fm, a, bh / a.H, bh % a.H, false, w);
  });
}

// dq, dk, dv (overwritten) of one (b, kv head g): the heads of the group one after the other.
void group_backward(const Family& fm, const AttnDesc& a, const AttnGrads& gr, int64_t b, int64_t g,
                    Work& w) {
  const Rows x{a, b};
  const int64_t D = a.D, F = fm.F, group = a.H / a.Hkv, nchunks = (a.Tq + kChunk - 1) / kChunk;
  const bool split = fm.split();
  float* dv0 = gr.dv + b * a.kv_rows() * a.ldv + g * D;  // value row s at dv0 + s * ldv
  for (int64_t s = 0; s < a.Tk; ++s) std::fill_n(dv0 + s * a.ldv, D, 0.0f);
  // dL/dCd (and dL/dCn) per key row, [Tk, F]; mapped back to dk at the end
  w.dC.assign(static_cast<size_t>(a.Tk * F), 0.0f);
  if (split) w.dCn.assign(static_cast<size_t>(a.Tk * F), 0.0f);
  float* dC = w.dC.data();
  float* dCn = split ? w.dCn.data() : dC;
  float* dAn = split ? w.dAn.data() : w.dA.data();
  w.inv_all.resize(static_cast<size_t>(a.Tq));
  w.dd_all.resize(static_cast<size_t>(a.Tq));
  w.ef_all.resize(static_cast<size_t>(nchunks));
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    const float* dO = gr.dout + b * a.Tq * gr.lddo + h * D;  // query row t at dO + t * lddo
    float* dq = gr.dq + b * a.Tq * a.ldq + h * D;
    // Forward scan: dq, and the partly seen keys' share of dk, dv.
    std::fill(w.S.begin(), w.S.end(), 0.0f);
    std::fill(w.z.begin(), w.z.end(), 0.0f);
    int64_t acc = 0;
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t t0 = c * kChunk, n = std::min(kChunk, a.Tq - t0);
      int64_t ef = 0;
      const int64_t m = scan_chunk(fm, x, h, t0, n, &acc, w, &ef);
      w.ef_all[c] = ef;
      for (int64_t t = 0; t < n; ++t) {
        const float inv = sees(a, b, t0 + t, false) ? 1.0f / w.den[t] : 0.0f;
        const float* go = dO + (t0 + t) * gr.lddo;
        float dot = 0.0f;
        for (int64_t i = 0; i < D; ++i) {
          w.dN[t * D + i] = go[i] * inv;
          dot += go[i] * (w.num[t * D + i] * inv);
        }
        w.dd[t] = -dot * inv;
        w.inv_all[t0 + t] = inv, w.dd_all[t0 + t] = w.dd[t];
      }
      // dAn = dN S^T (+ dPn Cn_p), dAd = dd z^T (+ dPd Cd_p); unsplit both go to dA
      ops::gemm(false, true, n, F, D, 1.0f, w.dN.data(), D, w.S.data(), D, 0.0f, dAn, F);
      if (split) std::fill_n(w.dA.data(), n * F, 0.0f);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t i = 0; i < F; ++i) w.dA[t * F + i] += w.dd[t] * w.z[i];
      if (m > 0) {
        ops::gemm(false, true, n, m, D, 1.0f, w.dN.data(), D, x.v(ef, g), a.ldv, 0.0f, w.dP.data(),
                  m);
        // dPn = dN Vp^T masked; unsplit dP = dPn + dd (the denominator's share) masked
        for (int64_t t = 0; t < n; ++t) {
          float* row = w.dP.data() + t * m;
          const int64_t vis = a.visible_keys(b, t0 + t) - ef;
          const float add = split ? 0.0f : w.dd[t];
          for (int64_t j = 0; j < m; ++j) row[j] = j < vis ? row[j] + add : 0.0f;
        }
        ops::gemm(false, false, n, F, m, 1.0f, w.dP.data(), m, w.cpn(), F, 1.0f, dAn, F);
        ops::gemm(true, false, m, F, n, 1.0f, w.dP.data(), m, w.an(), F, 1.0f, dCn + ef * F, F);
        ops::gemm(true, false, m, D, n, 1.0f, w.P.data(), m, w.dN.data(), D, 1.0f, dv0 + ef * a.ldv,
                  a.ldv);
        if (split) {  // dPd = dd masked: dAd_t += dd_t sum_{j < vis} Cd_j, dCd_j += sum dd_t Ad_t
          for (int64_t t = 0; t < n; ++t) {
            const int64_t vis = a.visible_keys(b, t0 + t) - ef;
            for (int64_t j = 0; j < vis; ++j)
              for (int64_t i = 0; i < F; ++i) {
                w.dA[t * F + i] += w.dd[t] * w.Cp[j * F + i];
                dC[(ef + j) * F + i] += w.dd[t] * w.A[t * F + i];
              }
          }
        }
      }
      if (split) {  // dphi(q) = dAd + R_t^T dAn
        fm.rot->rotate_backward(dAn, 1, F, x.qpos(t0, n));
        for (int64_t i = 0; i < n * F; ++i) w.dA[i] += dAn[i];
      }
      fm.map->backward(x.q(t0, h), a.ldq, n, D, fm.args(true), w.dA.data(), dq + t0 * a.ldq, a.ldq);
    }
    // Reverse scan: (R, r) over the rows of chunks after c reach keys [ef_c, ef_(c+1)), which
    // every one of those rows sees and no earlier row sees entirely.
    std::fill(w.R.begin(), w.R.end(), 0.0f);
    std::fill(w.r.begin(), w.r.end(), 0.0f);
    auto apply_suffix = [&](int64_t lo, int64_t hi) {
      for (int64_t s0 = lo; s0 < hi; s0 += kChunk) {
        const int64_t nb = std::min(kChunk, hi - s0);
        fm.feats(x.k(s0, g), a.ldk, nb, D, x.kpos(s0, nb), false, w.Kb.data(), w.kbn());
        ops::gemm(false, true, nb, F, D, 1.0f, x.v(s0, g), a.ldv, w.R.data(), D, 1.0f, dCn + s0 * F,
                  F);
        for (int64_t s = 0; s < nb; ++s)
          for (int64_t i = 0; i < F; ++i) dC[(s0 + s) * F + i] += w.r[i];
        ops::gemm(false, false, nb, D, F, 1.0f, w.kbn(), F, w.R.data(), D, 1.0f, dv0 + s0 * a.ldv,
                  a.ldv);
      }
    };
    for (int64_t c = nchunks - 1; c >= 0; --c) {
      const int64_t t0 = c * kChunk, n = std::min(kChunk, a.Tq - t0);
      if (c + 1 < nchunks) apply_suffix(w.ef_all[c], w.ef_all[c + 1]);
      fm.feats(x.q(t0, h), a.ldq, n, D, x.qpos(t0, n), true, w.A.data(), w.an());
      for (int64_t t = 0; t < n; ++t) {
        const float* go = dO + (t0 + t) * gr.lddo;
        for (int64_t i = 0; i < D; ++i) w.dN[t * D + i] = go[i] * w.inv_all[t0 + t];
      }
      ops::gemm(true, false, F, D, n, 1.0f, w.an(), F, w.dN.data(), D, 1.0f, w.R.data(), D);
      for (int64_t t = 0; t < n; ++t)
        for (int64_t i = 0; i < F; ++i) w.r[i] += w.A[t * F + i] * w.dd_all[t0 + t];
    }
    if (nchunks > 0) apply_suffix(0, w.ef_all[0]);
  }
  if (split) {  // dphi(k) = dCd + R_s^T dCn
    fm.rot->rotate_backward(dCn, 1, F, x.kpos(0, a.Tk));
    for (int64_t i = 0; i < a.Tk * F; ++i) dC[i] += dCn[i];
  }
  fm.map->backward(x.k(0, g), a.ldk, a.Tk, D, fm.args(false), dC,
                   gr.dk + b * a.kv_rows() * a.ldk + g * D, a.ldk);
}

// The backward keeps nothing from the forward but the sizes it ran with.
struct LinearSaved final : AttnSaved {
  int64_t B = 0, H = 0, Tq = 0, Tk = 0;
};

// Per (sequence, kv head): S [F, D] and z [F] over every position decoded so far.
class RecurrentState final : public AttnDecodeState {
 public:
  RecurrentState(int64_t B, int64_t Hkv, int64_t F, int64_t D, int64_t capacity)
      : S({B, Hkv, F, D}), z({B, Hkv, F}), capacity(capacity) {}
  int64_t length() const override { return len; }
  size_t bytes() const override { return S.nbytes() + z.nbytes(); }
  Tensor S, z;
  int64_t capacity, len = 0;
};

class LinearFamilyAttention final : public Attention {
 public:
  // rope: the stack's rotary scheme (linear_rope), applied inside to the numerator features of
  // self-attention; null for the others.
  LinearFamilyAttention(std::string name, const StackGeom& g, std::unique_ptr<FeatureMap> map,
                        const PositionEncoding* rope)
      : name_(std::move(name)), g_(g), map_(std::move(map)), rope_(rope) {}
  // performer: W [M, D] is the buffer `<prefix>performer.features`, drawn from seed
  void set_favor(int64_t M, uint64_t seed) {
    favor_M_ = M, favor_seed_ = seed, buffer_ = g_.prefix + "performer.features";
  }
  std::string name() const override { return name_; }

  void declare(std::vector<ParamSpec>& specs) const override {
    if (buffer_.empty()) return;
    ParamSpec s;
    s.name = buffer_, s.shape = {favor_M_, g_.D}, s.init = Init::Zeros, s.component = "attention";
    s.decay = false, s.buffer = true;
    specs.push_back(s);
  }
  void init_buffers(ParamStore& p, uint64_t draw) const override {
    if (buffer_.empty()) return;
    Tensor W = draw_favor_features(favor_M_, g_.D, favor_seed_, g_.prefix, draw);
    if (p.has(buffer_))
      p.get(buffer_) = std::move(W);
    else
      p.add(buffer_, std::move(W));
  }
  AttentionCaps caps() const override {
    AttentionCaps c;
    c.score_hooks = c.value_hooks = false;  // no score matrix for relative terms to act on
    // RoPE outside breaks elu + 1's positivity (linear_rope rotates inside instead); the cosine
    // map sees only directions and norms, which rotations keep: 1 + cos(R q, R k) >= 0 still
    // Performer approximates softmax of whatever q, k it gets: RoPE outside is RoPE-softmax's
    c.rotary_outside = name_ == "linear_cos" || name_ == "performer";
    c.rotary_inside = rope_ != nullptr;
    c.decode = DecodeKind::Recurrent;
    c.residual_scores = false;  // no score matrix to carry (RealFormer)
    // a window needs the state restarted at each document start inside the chunked causal form
    // (and one state per window for the non-causal sums): not implemented, refused
    c.key_window = false;
    return c;
  }

  // The state products per (b, head): each key adds Cn [v | 1]^T (2 F (D + 1)), each query
  // reads An^T [S | z] (2 F (D + 1)); backward about twice that. The chunk-local quadratic
  // parts of the causal form are not counted (they are the implementation's, not the method's).
  AttnCost cost(const AttnDesc& a) const override {
    const double F = double(map_->features(a.D));
    const double per = 2.0 * F * double(a.D + 1) * double(a.B * a.H);
    const double f = per * double(a.Tq + a.Tk);
    return {f, 2 * f};
  }

  void forward(const AttnDesc& desc, std::unique_ptr<AttnSaved>* saved) const override {
    check(desc, nullptr);
    family_forward(family(desc), desc);
    if (saved) {
      if (!dynamic_cast<LinearSaved*>(saved->get())) *saved = std::make_unique<LinearSaved>();
      auto& s = static_cast<LinearSaved&>(**saved);
      s.B = desc.B, s.H = desc.H, s.Tq = desc.Tq, s.Tk = desc.Tk;
    }
  }

  void backward(const AttnDesc& desc, const AttnSaved& saved, const AttnGrads& g,
                ScoreHook* hook) const override {
    const auto* s = dynamic_cast<const LinearSaved*>(&saved);
    PF_CHECK(s && s->B == desc.B && s->H == desc.H && s->Tq == desc.Tq && s->Tk == desc.Tk,
             "[attention] ", name_, " backward without a forward of the same shape");
    check(desc, hook);
    PF_CHECK(g.dout && g.dq && g.dk && g.dv, "[attention] backward needs dout, dq, dk, dv");
    const Family fm = family(desc);
    parallel_tasks(fm, desc.B * desc.Hkv, desc.D, [&](int64_t bg, Work& w) {
      group_backward(fm, desc, g, bg / desc.Hkv, bg % desc.Hkv, w);
    });
  }

  std::unique_ptr<AttnDecodeState> start_decode(int64_t B, int64_t capacity) const override {
    return std::make_unique<RecurrentState>(B, g_.Hkv, map_->features(g_.D), g_.D, capacity);
  }

  uint64_t decode_bytes(int64_t B, int64_t /*capacity*/) const override {
    const int64_t F = map_->features(g_.D);
    return uint64_t(B) * uint64_t(g_.Hkv) * uint64_t(F * g_.D + F) * sizeof(float);
  }

  // The new queries over the state (every earlier position) and the new keys; then the new
  // keys join the state. No score hook: make_attention refused every scheme that has one.
  void decode(AttnDecodeState& state, const AttnDesc& desc,
              const HookMaker& /*make_hook*/) const override {
    auto& st = dynamic_cast<RecurrentState&>(state);
    check(desc, nullptr);
    const int64_t D = g_.D, Hkv = g_.Hkv, F = map_->features(D);
    PF_CHECK(desc.B == st.S.dim(0) && desc.Hkv == Hkv && desc.D == D,
             "[attention] decoding a batch of ", desc.B, " with a state of ", st.S.dim(0));
    PF_CHECK(desc.q_pos0 == st.len && desc.k_pos0 == st.len && desc.Tq == desc.Tk,
             "[attention] decoding from position ", desc.q_pos0, " with a state holding ", st.len);
    PF_CHECK(st.len + desc.Tq <= st.capacity, "[attention] the decode state holds ", st.capacity,
             " positions; ", st.len, " used, ", desc.Tq, " more requested");
    PF_CHECK(!desc.key_len, "[attention] decoding takes no key padding");
    if (desc.B == 0 || desc.Tq == 0) return;
    float *S = st.S.data<float>(), *z = st.z.data<float>();
    const int64_t group = desc.H / Hkv;
    const Family fm = family(desc);
    parallel_tasks(fm, desc.B * desc.H, D, [&](int64_t bh, Work& w) {
      const int64_t b = bh / desc.H, h = bh % desc.H, bg = b * Hkv + h / group;
      std::copy_n(S + bg * F * D, F * D, w.S.data());
      std::copy_n(z + bg * F, F, w.z.data());
      head_forward(fm, desc, b, h, st.len > 0, w);
    });
    parallel_tasks(fm, desc.B * Hkv, D, [&](int64_t bg, Work& w) {
      advance(fm, Rows{desc, bg / Hkv}, bg % Hkv, 0, desc.Tk, S + bg * F * D, z + bg * F, w);
    });
    st.len += desc.Tq;
  }

 private:
  // The rotation applies to self-attention only (cross-attention has no positions to rotate by).
  Family family(const AttnDesc& desc) const {
    Family fm;
    fm.map = map_.get(), fm.F = map_->features(desc.D);
    fm.rot = desc.self_attention ? rope_ : nullptr;
    if (!buffer_.empty()) {
      PF_CHECK(desc.params && desc.params->has(buffer_), "[attention] ", name_,
               " needs its random features '", buffer_, "' (AttnDesc::params)");
      const Tensor& W = desc.params->get(buffer_);
      PF_CHECK(W.shape() == (Shape{favor_M_, g_.D}) && desc.D == g_.D, "[attention] ", buffer_,
               " has shape ", shape_str(W.shape()), ", expected [", favor_M_, ", ", g_.D, "]");
      fm.margs.W = W.data<float>();
      fm.margs.key_shift = favor_key_shift(fm.margs.W, favor_M_, g_.D);
    }
    return fm;
  }
  void check(const AttnDesc& a, const ScoreHook* hook) const {
    check_attn_desc(a);
    PF_CHECK(!a.hook && !hook, "[attention] ", name_,
             " attention takes no score hook (relative positions)");
    PF_CHECK(!a.has_window(), "[attention] ", name_,
             " attention takes no key window (segment masks of packed documents or left padding)");
  }

  std::string name_;
  StackGeom g_;
  std::unique_ptr<FeatureMap> map_;
  const PositionEncoding* rope_;
  int64_t favor_M_ = 0;
  uint64_t favor_seed_ = 0;
  std::string buffer_;  // performer's W, empty for the others
};

}  // namespace

std::unique_ptr<Attention> make_linear_attention(const StackGeom& geom) {
  return std::make_unique<LinearFamilyAttention>("linear", geom, make_elu1_features(), nullptr);
}

std::unique_ptr<Attention> make_linear_cos_attention(const StackGeom& geom) {
  return std::make_unique<LinearFamilyAttention>("linear_cos", geom, make_cosine_features(),
                                                 nullptr);
}

std::unique_ptr<Attention> make_linear_rope_attention(const StackGeom& geom,
                                                      const PositionEncoding& pe) {
  PF_CHECK(pe.rotary(), "[config] attention 'linear_rope' cannot serve position '", pe.name(),
           "': it applies the rotation of position 'rope' inside (without rope it is 'linear')");
  // it rotates its features block by block: a length-dependent rotation would differ per block
  PF_CHECK(!pe.length_dependent(),
           "[config] attention 'linear_rope' cannot serve position.scaling dynamic_ntk (its "
           "frequencies follow the current length); use another scaling or attention");
  return std::make_unique<LinearFamilyAttention>("linear_rope", geom, make_elu1_features(), &pe);
}

std::unique_ptr<Attention> make_performer_attention(const StackGeom& geom, int64_t n_features,
                                                    uint64_t seed) {
  auto a = std::make_unique<LinearFamilyAttention>("performer", geom,
                                                   make_favor_features(n_features), nullptr);
  a->set_favor(n_features, seed);
  return a;
}

}  // namespace posformer
