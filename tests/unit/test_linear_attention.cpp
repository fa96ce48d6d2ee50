// The linear-attention family (docs/attention.md), one shared harness: every variant's chunked
// forward and backward against a plain double-precision quadratic form written out here (with
// its own analytic gradients, which are checked against central finite differences), over one
// case list: variant x position scheme x causal / non-causal x key padding x GQA x offsets x
// sizes around the chunk size; the recurrent decode state against the chunked forward; thread
// count independence; the position schemes each variant refuses. A new variant adds a feature
// map to the reference (phi64, jac64) and rows to the case list.
#include <gtest/gtest.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "posformer/attention/variant.h"
#include "posformer/core/runtime.h"
#include "posformer/model/transformer.h"
#include "posformer/posenc/position_encoding.h"
#include "posformer/train/optimizer.h"
#include "test_util.h"

using namespace posformer;
using pf_test::randn;

namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

struct LCase {
  int64_t B, H, Hkv, D, Tq, Tk, q_pos0, k_pos0, pad;  // pad: extra floats per q/k/v/out row
  bool causal;
  std::vector<int32_t> key_len = {};   // empty: no padding
  std::string variant = "linear";      // attention.type
  std::string pos = "none";            // position.type (rope: with linear_cos, linear_rope)
  std::string layout = "interleaved";  // rope's
  int64_t rotary_dim = 0;              // rope's (0 = D)
  int64_t n_features = 24;             // performer's M (3 blocks of D = 8; 1.5 of D = 16)
};

std::string case_name(const LCase& c) {
  std::string s = c.variant + "_" + c.pos + (c.pos == "rope" ? "_" + c.layout : "") +
                  (c.rotary_dim ? "_R" + std::to_string(c.rotary_dim) : "") + "_" +
                  (c.causal ? "causal" : "full") + std::string("_H") + std::to_string(c.H) + "kv" +
                  std::to_string(c.Hkv) + "_D" + std::to_string(c.D) + "_Tq" +
                  std::to_string(c.Tq) + "_Tk" + std::to_string(c.Tk);
  if (c.q_pos0 || c.k_pos0) s += "_pos" + std::to_string(c.q_pos0) + "_" + std::to_string(c.k_pos0);
  if (!c.key_len.empty()) s += "_padded";
  if (c.variant == "performer") s += "_M" + std::to_string(c.n_features);
  return s;
}

void PrintTo(const LCase& c, std::ostream* os) {
  *os << case_name(c);
}

StackGeom geom_of(const LCase& c) {
  return StackGeom{"decoder.", 1, c.H * c.D, c.H, c.Hkv, c.D, 4096, true, true};
}

PositionConfig pos_config(const LCase& c) {
  PositionConfig pc;
  pc.type = c.pos, pc.layout = c.layout, pc.rotary_dim = c.rotary_dim;
  return pc;
}

// The variant with its position scheme, as the model makes them (the scheme outlives it).
struct Made {
  std::unique_ptr<PositionEncoding> pe;
  std::unique_ptr<Attention> attn;
  const Attention* operator->() const { return attn.get(); }
  const Attention& operator*() const { return *attn; }
};
Made make_variant(const LCase& c) {
  Made m;
  m.pe = make_position_encoding(pos_config(c), geom_of(c));
  AttentionConfig ac;
  ac.type = c.variant;
  ac.n_features = c.n_features, ac.seed = 5;
  m.attn = make_attention(ac, geom_of(c), *m.pe);
  return m;
}

// The variant's buffers (performer's W, drawn by the variant itself: draw 0), one store per
// shape, alive for the whole test program.
const ParamStore* buffers_of(const LCase& c) {
  static std::map<std::string, ParamStore> stores;
  const std::string key = c.variant + std::to_string(c.n_features) + "_" + std::to_string(c.D) +
                          "_" + std::to_string(c.H) + "_" + std::to_string(c.Hkv);
  auto it = stores.find(key);
  if (it == stores.end()) {
    it = stores.emplace(key, ParamStore()).first;
    make_variant(c)->init_buffers(it->second, 0);
  }
  return &it->second;
}

// Inputs of one case, in strided rows as the model lays them out.
struct Data {
  std::vector<float> q, k, v, dO;
  AttnDesc desc;
};

// RoPE outside (linear_cos with rope): the model rotates q, k before attention; the reference
// sees the same rotated inputs, so only the attention itself is compared.
Data make_data(const LCase& c, uint32_t seed) {
  Data d;
  AttnDesc& a = d.desc;
  a.B = c.B, a.H = c.H, a.Hkv = c.Hkv, a.D = c.D, a.Tq = c.Tq, a.Tk = c.Tk;
  a.ldq = a.ldo = c.H * c.D + c.pad, a.ldk = a.ldv = c.Hkv * c.D + c.pad;
  a.causal = c.causal, a.q_pos0 = c.q_pos0, a.k_pos0 = c.k_pos0;
  a.self_attention = true;
  a.params = buffers_of(c);
  a.scale = 0.125f;  // must not matter
  if (!c.key_len.empty()) a.key_len = c.key_len.data();
  // q, k with sd 1.5: both branches of elu + 1 (x > 0 and e^x) are exercised
  d.q = randn(c.B * c.Tq * a.ldq, seed, 1.5f), d.k = randn(c.B * c.Tk * a.ldk, seed + 1, 1.5f);
  d.v = randn(c.B * c.Tk * a.ldv, seed + 2), d.dO = randn(c.B * c.Tq * a.ldo, seed + 3);
  a.q = d.q.data(), a.k = d.k.data(), a.v = d.v.data();
  return d;
}

// ---- The reference: the quadratic form in double, straight from the definition.
//   wn_ts = (R_t phi(q_t)) . (R_s phi(k_s)), wd_ts = phi(q_t) . phi(k_s) for every key s row t
//   sees (R_t: rope's rotation at position t for linear_rope, the identity otherwise),
//   o_t = sum_s wn_ts v_s / sum_s wd_ts (0 when row t sees no key). Row t sees key s iff
//   s < key_len[b] and (causal) the key's position k_pos0 + s is <= the query's q_pos0 + t.
using Vec = std::vector<double>;

// phi(x) of the variant and its Jacobian J[f][i] = dphi_f / dx_i (F x D, row-major).
// performer: phi_m(x) = exp(w_m . x' - |x'|^2 / 2) / sqrt(M), x' = x D^(-1/4), with the
// engine's W (its buffer) and no stabiliser (double has the range).
int64_t features64(const LCase& c) {
  if (c.variant == "performer") return c.n_features;
  return c.variant == "linear_cos" ? c.D + 1 : c.D;
}
const float* W_of(const LCase& c) {
  return c.variant == "performer" ? buffers_of(c)->f32("decoder.performer.features") : nullptr;
}
Vec phi64(const LCase& c, const float* x) {
  const int64_t D = c.D;
  Vec f(features64(c));
  if (c.variant == "performer") {
    const float* W = W_of(c);
    const double s = std::pow(double(D), -0.25);
    double x2 = 0;
    for (int64_t i = 0; i < D; ++i) x2 += s * x[i] * s * x[i];
    for (int64_t m = 0; m < c.n_features; ++m) {
      double u = 0;
      for (int64_t i = 0; i < D; ++i) u += double(W[m * D + i]) * s * x[i];
      f[m] = std::exp(u - x2 / 2) / std::sqrt(double(c.n_features));
    }
  } else if (c.variant == "linear_cos") {  // [1, x/|x|]; [1, 0..] at x = 0
    double n = 0;
    for (int64_t i = 0; i < D; ++i) n += double(x[i]) * x[i];
    n = std::sqrt(n);
    f[0] = 1;
    for (int64_t i = 0; i < D; ++i) f[i + 1] = n > 0 ? x[i] / n : 0.0;
  } else {  // elu + 1
    for (int64_t i = 0; i < D; ++i) f[i] = x[i] > 0 ? x[i] + 1.0 : std::exp(double(x[i]));
  }
  return f;
}
Vec jac64(const LCase& c, const float* x) {
  const int64_t D = c.D, F = features64(c);
  Vec J(F * D, 0.0);
  if (c.variant == "performer") {  // dphi_m/dx_i = phi_m (w_mi - x'_i) D^(-1/4)
    const Vec f = phi64(c, x);
    const float* W = W_of(c);
    const double s = std::pow(double(D), -0.25);
    for (int64_t m = 0; m < F; ++m)
      for (int64_t i = 0; i < D; ++i) J[m * D + i] = f[m] * (W[m * D + i] - s * x[i]) * s;
  } else if (c.variant == "linear_cos") {  // d(x/|x|)/dx = (I - u u^T) / |x|; 0 at x = 0
    double n = 0;
    for (int64_t i = 0; i < D; ++i) n += double(x[i]) * x[i];
    n = std::sqrt(n);
    if (n > 0)
      for (int64_t f = 0; f < D; ++f)
        for (int64_t i = 0; i < D; ++i)
          J[(f + 1) * D + i] = ((f == i ? 1.0 : 0.0) - x[f] / n * (x[i] / n)) / n;
  } else {
    for (int64_t i = 0; i < D; ++i) J[i * D + i] = x[i] > 0 ? 1.0 : std::exp(double(x[i]));
  }
  return J;
}

// rope's rotation of a D-vector at position p (sign -1: the inverse), written from SPEC.md 3:
// pairs (2i, 2i+1) (interleaved) or (i, i + R/2) (half) turn by p * base^(-2i/R), i < R/2.
Vec rot64(const LCase& c, const Vec& x, int64_t p, double sign = 1) {
  if (c.variant != "linear_rope") return x;
  const int64_t R = c.rotary_dim ? c.rotary_dim : c.D, h = R / 2;
  Vec y = x;
  for (int64_t i = 0; i < h; ++i) {
    const double th = double(p) * std::pow(10000.0, -2.0 * double(i) / double(R));
    const double cs = std::cos(th), sn = sign * std::sin(th);
    const int64_t ia = c.layout == "half" ? i : 2 * i, ib = c.layout == "half" ? i + h : 2 * i + 1;
    y[ia] = x[ia] * cs - x[ib] * sn;
    y[ib] = x[ib] * cs + x[ia] * sn;
  }
  return y;
}

double dot64(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

struct Ref {
  std::vector<double> out, dq, dk, dv;  // laid out like the engine's buffers (same strides)
  // the largest sum of |terms| of one element of dq, dk: the scale of a gradient that cancels to
  // (near) 0, as dq and dk do when a row sees a single key (its output is that key's value)
  double dq_terms = 0, dk_terms = 0;
};

bool ref_sees(const LCase& c, int64_t b, int64_t t, int64_t s) {
  if (!c.key_len.empty() && s >= c.key_len[b]) return false;
  return !c.causal || c.k_pos0 + s <= c.q_pos0 + t;
}

Ref reference(const LCase& c, const Data& d) {
  const AttnDesc& a = d.desc;
  const int64_t D = c.D, F = features64(c), group = c.H / c.Hkv;
  Ref r;
  r.out.assign(d.dO.size(), 0.0), r.dq.assign(d.q.size(), 0.0);
  r.dk.assign(d.k.size(), 0.0), r.dv.assign(d.v.size(), 0.0);
  std::vector<double> dq_abs(d.q.size(), 0.0), dk_abs(d.k.size(), 0.0);
  // dL/dphi (and its |terms|) per query row of one head / key row of one kv head
  std::vector<Vec> dA, dA_abs, dC(c.B * c.Tk, Vec(F)), dC_abs(c.B * c.Tk, Vec(F));
  std::vector<double> wn(c.Tk), wd(c.Tk);
  std::vector<double> o(D);
  auto qi = [&](int64_t b, int64_t t, int64_t h) { return (b * c.Tq + t) * a.ldq + h * D; };
  auto ki = [&](int64_t b, int64_t s, int64_t g) { return (b * c.Tk + s) * a.ldk + g * D; };
  auto vi = [&](int64_t b, int64_t s, int64_t g) { return (b * c.Tk + s) * a.ldv + g * D; };
  // J^T g into out (and |J|^T |g| into out_abs)
  auto back = [&](const float* x, const Vec& g, const Vec& gabs, double* out, double* out_abs) {
    const Vec J = jac64(c, x);
    for (int64_t i = 0; i < D; ++i)
      for (int64_t f = 0; f < F; ++f) {
        out[i] += J[f * D + i] * g[f];
        out_abs[i] += std::abs(J[f * D + i]) * gabs[f];
      }
  };
  for (int64_t g = 0; g < c.Hkv; ++g) {
    for (auto& x : dC) std::fill(x.begin(), x.end(), 0.0);
    for (auto& x : dC_abs) std::fill(x.begin(), x.end(), 0.0);
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = g * group; h < (g + 1) * group; ++h) {
        std::vector<Vec> Cd(c.Tk), Cn(c.Tk);
        for (int64_t s = 0; s < c.Tk; ++s) {
          Cd[s] = phi64(c, d.k.data() + ki(b, s, g));
          Cn[s] = rot64(c, Cd[s], c.k_pos0 + s);
        }
        for (int64_t t = 0; t < c.Tq; ++t) {
          const Vec Ad = phi64(c, d.q.data() + qi(b, t, h)), An = rot64(c, Ad, c.q_pos0 + t);
          double den = 0;
          std::fill(o.begin(), o.end(), 0.0);
          for (int64_t s = 0; s < c.Tk; ++s) {
            wn[s] = wd[s] = 0;
            if (!ref_sees(c, b, t, s)) continue;
            wn[s] = dot64(An, Cn[s]), wd[s] = dot64(Ad, Cd[s]);
            den += wd[s];
            for (int64_t i = 0; i < D; ++i) o[i] += wn[s] * d.v[vi(b, s, g) + i];
          }
          if (den == 0) continue;  // sees no key: output and gradients 0
          for (int64_t i = 0; i < D; ++i) o[i] /= den;
          const float* G = d.dO.data() + (b * c.Tq + t) * a.ldo + h * D;
          for (int64_t i = 0; i < D; ++i) r.out[(b * c.Tq + t) * a.ldo + h * D + i] = o[i];
          double go = 0;
          for (int64_t i = 0; i < D; ++i) go += G[i] * o[i];
          // dL/dwn_ts = G . v_s / den, dL/dwd_ts = -G . o / den
          Vec dAn(F, 0.0), dAd(F, 0.0), dAn_abs(F, 0.0), dAd_abs(F, 0.0);
          for (int64_t s = 0; s < c.Tk; ++s) {
            if (!ref_sees(c, b, t, s)) continue;
            double gv = 0;
            for (int64_t i = 0; i < D; ++i) gv += G[i] * d.v[vi(b, s, g) + i];
            const double dwn = gv / den, dwd = -go / den;
            Vec dCn(F), dCn_abs(F);
            for (int64_t f = 0; f < F; ++f) {
              dAn[f] += dwn * Cn[s][f], dAd[f] += dwd * Cd[s][f];
              dAn_abs[f] += std::abs(dwn * Cn[s][f]), dAd_abs[f] += std::abs(dwd * Cd[s][f]);
              dCn[f] = dwn * An[f], dCn_abs[f] = std::abs(dwn * An[f]);
            }
            const Vec dCd = rot64(c, dCn, c.k_pos0 + s, -1);  // R_s^T
            for (int64_t f = 0; f < F; ++f) {
              dC[b * c.Tk + s][f] += dCd[f] + dwd * Ad[f];
              dC_abs[b * c.Tk + s][f] += std::abs(dCn_abs[f]) + std::abs(dwd * Ad[f]);
            }
            for (int64_t i = 0; i < D; ++i) r.dv[vi(b, s, g) + i] += wn[s] / den * G[i];
          }
          const Vec dAr = rot64(c, dAn, c.q_pos0 + t, -1);
          Vec dAq(F), dAq_abs(F);
          for (int64_t f = 0; f < F; ++f)
            dAq[f] = dAr[f] + dAd[f], dAq_abs[f] = dAn_abs[f] + dAd_abs[f];
          back(d.q.data() + qi(b, t, h), dAq, dAq_abs, r.dq.data() + qi(b, t, h),
               dq_abs.data() + qi(b, t, h));
        }
      }
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t s = 0; s < c.Tk; ++s)
        back(d.k.data() + ki(b, s, g), dC[b * c.Tk + s], dC_abs[b * c.Tk + s],
             r.dk.data() + ki(b, s, g), dk_abs.data() + ki(b, s, g));
  }
  r.dq_terms = *std::max_element(dq_abs.begin(), dq_abs.end());
  r.dk_terms = *std::max_element(dk_abs.begin(), dk_abs.end());
  return r;
}

// max |x - ref| / max(max |ref|, floor) over the used columns (col % ld < width); the unused
// columns (row padding) must still hold the poison (NaN): nothing may write there.
double rel_err(const std::vector<float>& x, const std::vector<double>& ref, int64_t ld,
               int64_t width, bool* padding_written, double floor = 1e-3) {
  double num = 0, den = floor;
  for (size_t i = 0; i < x.size(); ++i) {
    if (int64_t(i) % ld >= width) {
      if (!std::isnan(x[i])) *padding_written = true;
      continue;
    }
    const double e = std::abs(double(x[i]) - ref[i]);
    num = std::isnan(e) ? std::numeric_limits<double>::infinity() : std::max(num, e);
    den = std::max(den, std::abs(ref[i]));
  }
  return num / den;
}

struct Errors {
  double out = 0, dq = 0, dk = 0, dv = 0;
};

// The engine's forward and backward (through the Attention interface, NaN-poisoned outputs).
struct Engine {
  std::vector<float> out, dq, dk, dv;
};
Engine run_engine(const Attention& attn, Data& d) {
  Engine e;
  AttnDesc a = d.desc;
  e.out.assign(d.dO.size(), kNaN);
  a.out = e.out.data();
  std::unique_ptr<AttnSaved> saved;
  attn.forward(a, &saved);
  e.dq.assign(d.q.size(), kNaN), e.dk.assign(d.k.size(), kNaN), e.dv.assign(d.v.size(), kNaN);
  AttnGrads g;
  g.dout = d.dO.data(), g.lddo = a.ldo, g.dq = e.dq.data(), g.dk = e.dk.data(), g.dv = e.dv.data();
  attn.backward(a, *saved, g, nullptr);
  return e;
}

Errors g_worst;  // over every case, for the summary line

// zero_rows: q and k rows set to exactly 0 (linear_cos's phi(0) = [1, 0, ..], gradient 0)
void check_case(const LCase& c, uint32_t seed, bool zero_rows = false) {
  SCOPED_TRACE(case_name(c));
  auto attn = make_variant(c);
  Data d = make_data(c, seed);
  if (zero_rows) {
    for (int64_t r = 0; r < c.B * c.Tq; r += 3) std::fill_n(d.q.data() + r * d.desc.ldq, c.D, 0.0f);
    for (int64_t r = 1; r < c.B * c.Tk; r += 4) std::fill_n(d.k.data() + r * d.desc.ldk, c.D, 0.0f);
  }
  const Engine e = run_engine(*attn, d);
  const Ref r = reference(c, d);
  const AttnDesc& a = d.desc;
  bool pad_out = false, pad_grad = false;
  Errors er;
  er.out = rel_err(e.out, r.out, a.ldo, c.H * c.D, &pad_out);
  // a gradient that cancels to 0 is measured against a tenth of its terms' size
  er.dq = rel_err(e.dq, r.dq, a.ldq, c.H * c.D, &pad_grad, std::max(1e-3, 0.1 * r.dq_terms));
  er.dk = rel_err(e.dk, r.dk, a.ldk, c.Hkv * c.D, &pad_grad, std::max(1e-3, 0.1 * r.dk_terms));
  er.dv = rel_err(e.dv, r.dv, a.ldv, c.Hkv * c.D, &pad_grad);
  EXPECT_LT(er.out, 1e-5);
  EXPECT_LT(er.dq, 2e-5);
  EXPECT_LT(er.dk, 2e-5);
  EXPECT_LT(er.dv, 2e-5);
  EXPECT_FALSE(pad_out) << "the forward wrote into the row padding";
  EXPECT_FALSE(pad_grad) << "the backward wrote into the row padding";
  g_worst.out = std::max(g_worst.out, er.out), g_worst.dq = std::max(g_worst.dq, er.dq);
  g_worst.dk = std::max(g_worst.dk, er.dk), g_worst.dv = std::max(g_worst.dv, er.dv);
}

// The variants with the position schemes they serve inside attention (absolute schemes act
// before attention and look like `none` here; linear_cos with rope sees rotated q, k from the
// model, which the harness's random q, k stand for).
struct VariantRow {
  const char* variant;
  const char* pos;
};
void PrintTo(const VariantRow& v, std::ostream* os) {
  *os << v.variant << "/" << v.pos;
}
const VariantRow kVariants[] = {{"linear", "none"},
                                {"linear_cos", "none"},
                                {"linear_cos", "rope"},
                                {"linear_rope", "rope"},
                                {"performer", "none"}};

std::vector<LCase> grid() {
  std::vector<LCase> v;
  for (const VariantRow& vr : kVariants)
    for (bool causal : {false, true})
      for (bool padded : {false, true})
        for (int64_t Hkv : {4, 2, 1})
          for (int64_t T : {1, 7, 63, 64, 65, 130})
            for (int64_t D : {8, 16}) {
              LCase c{2, 4, Hkv, D, T, T, 0, 0, (D == 8 ? 3 : 0), causal, {}, vr.variant, vr.pos};
              // linear_cos with rope outside is linear_cos to the kernel: a few rows suffice;
              // the other new variants take every GQA shape at two sizes, GQA 2 at all (the
              // machinery they share with `linear` runs its full grid)
              const std::string var = vr.variant, pos = vr.pos;
              if (var == "linear_cos" && pos == "rope" && (Hkv != 2 || D != 8)) continue;
              if (var != "linear" && Hkv != 2 && T != 7 && T != 65) continue;
              // batch 1 keeps 2/3 of its keys (none at T = 1: rows that see nothing)
              if (padded) c.key_len = {int32_t(T), int32_t(T * 2 / 3)};
              v.push_back(c);
            }
  return v;
}

// Descriptors the model does not make in training but the kernel accepts: queries at other
// positions than the keys (after a cache; rows that see no key), cross-attention shapes; for
// linear_rope the rotations at those offsets, the half layout and a partial rotary dim.
std::vector<LCase> shapes() {
  std::vector<LCase> v;
  for (const VariantRow& vr : kVariants) {
    for (LCase c : {LCase{2, 4, 1, 8, 100, 160, 60, 0, 5, true, {160, 90}},
                    LCase{1, 2, 2, 8, 130, 130, 0, 70, 0, true, {}},
                    LCase{2, 4, 2, 16, 7, 130, 0, 0, 2, false, {130, 17}},
                    LCase{2, 3, 3, 8, 130, 7, 0, 0, 0, false, {5, 0}},
                    LCase{1, 4, 2, 16, 200, 200, 3, 3, 0, true, {}}}) {
      c.variant = vr.variant, c.pos = vr.pos;
      v.push_back(c);
    }
  }
  for (const char* layout : {"interleaved", "half"})
    for (int64_t R : {0, 4}) {
      LCase c{2, 4, 2, 8, 70, 70, 1000, 1000, 1, true, {70, 33}, "linear_rope", "rope", layout, R};
      v.push_back(c);
      c.causal = false, c.q_pos0 = 5, c.k_pos0 = 123;
      v.push_back(c);
    }
  return v;
}

}  // namespace

class LinearFastVsReference : public ::testing::TestWithParam<LCase> {
 protected:
  static void TearDownTestSuite() {
    std::printf(
        "[linear attention] worst relative error vs the double reference: out %.2e  "
        "dq %.2e  dk %.2e  dv %.2e\n",
        g_worst.out, g_worst.dq, g_worst.dk, g_worst.dv);
  }
};

TEST_P(LinearFastVsReference, ForwardAndBackward) {
  check_case(GetParam(), 17);
}

INSTANTIATE_TEST_SUITE_P(Grid, LinearFastVsReference, ::testing::ValuesIn(grid()),
                         [](const ::testing::TestParamInfo<LCase>& i) {
                           return case_name(i.param) + "_" + std::to_string(i.index);
                         });

INSTANTIATE_TEST_SUITE_P(Shapes, LinearFastVsReference, ::testing::ValuesIn(shapes()),
                         [](const ::testing::TestParamInfo<LCase>& i) {
                           return case_name(i.param) + "_" + std::to_string(i.index);
                         });

// linear_cos at |x| = 0: rows of q and k exactly zero take phi = [1, 0, ..] (similarity 1 with
// everything) and a zero gradient, in the engine as in the reference.
TEST(LinearCos, ZeroRowsHaveUnitSimilarityAndNoGradient) {
  for (bool causal : {true, false}) {
    const LCase c{2, 4, 2, 8, 70, 70, 0, 0, 1, causal, {70, 50}, "linear_cos", "none"};
    check_case(c, 23, true);
  }
  // directly: a zero query row against keys k1, k2 weighs them equally (mean of the values)
  const LCase c{1, 1, 1, 4, 1, 2, 0, 0, 0, false, {}, "linear_cos", "none"};
  auto attn = make_variant(c);
  Data d = make_data(c, 3);
  std::fill(d.q.begin(), d.q.end(), 0.0f);
  const Engine e = run_engine(*attn, d);
  for (int64_t i = 0; i < 4; ++i) {
    EXPECT_NEAR(e.out[i], 0.5 * (d.v[i] + d.v[4 + i]), 1e-6);
    EXPECT_EQ(e.dq[i], 0.0f);
  }
}

// The oracle itself: its analytic gradients against central differences of its forward
// (double, h = 1e-6), on every element of small cases.
TEST(LinearReference, GradientsMatchFiniteDifferences) {
  std::vector<LCase> cases;
  for (const VariantRow& vr : kVariants)
    for (LCase c : {LCase{1, 2, 1, 4, 6, 6, 0, 0, 0, true, {}},
                    LCase{2, 2, 2, 4, 5, 7, 0, 0, 1, false, {7, 3}},
                    LCase{1, 4, 2, 4, 4, 9, 5, 0, 0, true, {}}}) {
      c.variant = vr.variant, c.pos = vr.pos;
      if (c.variant != "linear_rope") c.D = 3 + (c.Tq & 1);  // odd D for the others
      cases.push_back(c);
    }
  cases.push_back({1, 2, 1, 6, 5, 5, 40, 40, 0, true, {}, "linear_rope", "rope", "half", 4});
  for (const LCase& c : cases) {
    SCOPED_TRACE(case_name(c));
    Data d = make_data(c, 5);
    const Ref r = reference(c, d);
    const AttnDesc& a = d.desc;
    auto loss = [&]() {  // L = sum dO . out, in double
      const Ref x = reference(c, d);
      double l = 0;
      for (size_t i = 0; i < x.out.size(); ++i) l += double(d.dO[i]) * x.out[i];
      return l;
    };
    // step the float inputs by +-h and divide by the step they really took
    double worst = 0;
    auto check = [&](std::vector<float>& x, const std::vector<double>& g, int64_t ld, int64_t w) {
      for (size_t i = 0; i < x.size(); ++i) {
        // phi is not twice differentiable at 0: keep the stencil on one side of the kink
        if (int64_t(i) % ld >= w || std::abs(x[i]) < 2e-3f) continue;
        const float old = x[i];
        const float h = 1e-3f;
        x[i] = old + h;
        const double lp = loss();
        x[i] = old - h;
        const double lm = loss();
        x[i] = old;
        const double fd = (lp - lm) / (double(old + h) - double(old - h));
        worst = std::max(worst, std::abs(fd - g[i]) / std::max(1.0, std::abs(fd)));
      }
    };
    check(d.q, r.dq, a.ldq, c.H * c.D);
    check(d.k, r.dk, a.ldk, c.Hkv * c.D);
    check(d.v, r.dv, a.ldv, c.Hkv * c.D);
    EXPECT_LT(worst, 1e-5);
  }
}

// The same results with 1 and 2 threads, bit for bit: every sum runs in a fixed order.
TEST(LinearAttention, ThreadCountDoesNotChangeResults) {
  const int before = num_threads();
  std::vector<LCase> cases;
  for (const VariantRow& vr : kVariants)
    for (LCase c : {LCase{1, 1, 1, 16, 200, 200, 0, 0, 0, true, {}},
                    LCase{2, 4, 2, 16, 130, 130, 0, 0, 0, true, {130, 70}},
                    LCase{2, 4, 1, 8, 65, 65, 0, 0, 0, false, {65, 30}}}) {
      c.variant = vr.variant, c.pos = vr.pos;
      cases.push_back(c);
    }
  for (const LCase& c : cases) {
    SCOPED_TRACE(case_name(c));
    auto attn = make_variant(c);
    Data d = make_data(c, 9);
    set_threads(1);
    const Engine one = run_engine(*attn, d);
    set_threads(2);
    const Engine two = run_engine(*attn, d);
    auto same = [](const std::vector<float>& x, const std::vector<float>& y) {
      return std::memcmp(x.data(), y.data(), x.size() * sizeof(float)) == 0;
    };
    EXPECT_TRUE(same(one.out, two.out));
    EXPECT_TRUE(same(one.dq, two.dq));
    EXPECT_TRUE(same(one.dk, two.dk));
    EXPECT_TRUE(same(one.dv, two.dv));
  }
  set_threads(before);
}

namespace {
// Decodes the causal sequence of `d` block by block (sizes `blocks`, summing to T) through a
// recurrent state; returns the outputs laid out as the forward's.
// Rows 0.. of `d` go in at positions pos0 + their row.
std::vector<float> decode_blocks(const Attention& attn, const Data& d, const LCase& c,
                                 const std::vector<int64_t>& blocks, AttnDecodeState& st,
                                 int64_t pos0 = 0) {
  const AttnDesc& full = d.desc;
  std::vector<float> out(d.dO.size(), kNaN);
  int64_t t0 = 0;
  for (int64_t n : blocks) {
    // the block's rows of every sequence, contiguous: [B, n, width]
    auto gather = [&](const std::vector<float>& x, int64_t ld) {
      std::vector<float> y(c.B * n * ld);
      for (int64_t b = 0; b < c.B; ++b)
        std::copy_n(x.data() + (b * c.Tq + t0) * ld, n * ld, y.data() + b * n * ld);
      return y;
    };
    std::vector<float> q = gather(d.q, full.ldq), k = gather(d.k, full.ldk),
                       v = gather(d.v, full.ldv), o(c.B * n * full.ldo, kNaN);
    AttnDesc a = full;
    a.Tq = a.Tk = n, a.q_pos0 = a.k_pos0 = pos0 + t0, a.causal = true, a.key_len = nullptr;
    a.q = q.data(), a.k = k.data(), a.v = v.data(), a.out = o.data();
    attn.decode(st, a, HookMaker{});
    for (int64_t b = 0; b < c.B; ++b)
      std::copy_n(o.data() + b * n * full.ldo, n * full.ldo,
                  out.data() + (b * c.Tq + t0) * full.ldo);
    t0 += n;
  }
  return out;
}
}  // namespace

// (b) The chunked training forward equals the recurrent decoding path, token by token and in
// blocks that cut the chunks anywhere.
class LinearDecoding : public ::testing::TestWithParam<VariantRow> {};
TEST_P(LinearDecoding, RecurrentDecodingEqualsChunkedForward) {
  const LCase c{2, 4, 2, 16, 150, 150, 0, 0, 0, true, {}, GetParam().variant, GetParam().pos};
  auto attn = make_variant(c);
  ASSERT_EQ(attn->caps().decode, DecodeKind::Recurrent);
  Data d = make_data(c, 21);
  std::vector<float> full(d.dO.size(), kNaN);
  AttnDesc a = d.desc;
  a.out = full.data();
  attn->forward(a, nullptr);
  const std::vector<std::vector<int64_t>> plans = {
      std::vector<int64_t>(150, 1), {5, 64, 1, 60, 20}, {150}, {63, 2, 65, 20}};
  double worst = 0;
  for (const auto& plan : plans) {
    auto st = attn->start_decode(c.B, 160);
    const std::vector<float> dec = decode_blocks(*attn, d, c, plan, *st);
    EXPECT_EQ(st->length(), 150);
    double err = 0;
    for (size_t i = 0; i < full.size(); ++i) {
      const double e = std::abs(double(dec[i]) - full[i]);
      err = std::isnan(e) ? std::numeric_limits<double>::infinity() : std::max(err, e);
    }
    EXPECT_LT(err, 1e-5) << "plan of " << plan.size() << " blocks";
    worst = std::max(worst, err);
  }
  std::printf("[%s attention] recurrent decoding vs chunked forward: max abs diff %.2e\n",
              c.variant.c_str(), worst);
}
INSTANTIATE_TEST_SUITE_P(Variants, LinearDecoding, ::testing::ValuesIn(kVariants),
                         [](const ::testing::TestParamInfo<VariantRow>& i) {
                           return std::string(i.param.variant) + "_" + i.param.pos;
                         });

// The state is S [D, D] and z [D] per (sequence, kv head), whatever the capacity; decoding past
// the capacity is refused.
TEST_P(LinearDecoding, DecodeStateHasFixedSize) {
  const LCase c{3, 4, 2, 8, 4, 4, 0, 0, 0, true, {}, GetParam().variant, GetParam().pos};
  auto attn = make_variant(c);
  const uint64_t F = features64(c), want = 3 * 2 * (F * 8 + F) * sizeof(float);
  EXPECT_EQ(attn->decode_bytes(3, 20), want);
  EXPECT_EQ(attn->decode_bytes(3, 1 << 20), want);
  auto st = attn->start_decode(3, 20);
  EXPECT_EQ(st->bytes(), want);
  EXPECT_EQ(attn->start_decode(3, 100000)->bytes(), want);
  LCase c20 = c;
  c20.Tq = c20.Tk = 20;
  Data d = make_data(c20, 3);
  decode_blocks(*attn, d, c20, {4, 16}, *st);
  EXPECT_EQ(st->length(), 20);
  EXPECT_EQ(st->bytes(), want);
  pf_test::expect_error([&] { decode_blocks(*attn, d, c20, {1}, *st, 20); }, {"20 positions"});
  pf_test::expect_error([&] { decode_blocks(*attn, d, c20, {1}, *st, 3); },
                        {"from position 3", "holding 20"});
}

// (d) Schemes whose terms live in the score matrix, and RoPE, are refused when the model is
// built, naming both; absolute schemes are served.
TEST(AttentionRegistry, LinearRefusesRelativeSchemesAndRope) {
  for (bool causal : {true, false}) {
    const StackGeom g{causal ? "decoder." : "encoder.", 1, 32, 4, 4, 8, 64, causal, true};
    AttentionConfig ac;
    ac.type = "linear";
    for (const char* pos : {"rope", "alibi", "t5", "shaw", "xl", "deberta"}) {
      PositionConfig pc;
      pc.type = pos;
      auto pe = make_position_encoding(pc, g);
      pf_test::expect_error([&] { make_attention(ac, g, *pe); }, {"'linear'", pos, "supports no"});
    }
    for (const char* pos : {"none", "learned", "sinusoidal", "sinusoidal_half"}) {
      PositionConfig pc;
      pc.type = pos;
      auto pe = make_position_encoding(pc, g);
      EXPECT_EQ(make_attention(ac, g, *pe)->name(), "linear") << pos;
    }
  }
  // through the whole model, as `posformer init` builds it
  ModelConfig mc;
  mc.d_model = 32, mc.n_heads = 4, mc.d_ff = 32, mc.n_layers = 1, mc.vocab_size = 20;
  mc.attention.type = "linear";
  for (const char* pos : {"rope", "alibi", "t5"}) {
    mc.position.type = pos;
    pf_test::expect_error([&] { Transformer m(mc); }, {"linear", pos});
  }
}

TEST(AttentionRegistry, LinearRefusesResidualScores) {
  PositionConfig pc;
  pc.type = "none";
  const StackGeom g{"decoder.", 1, 32, 4, 4, 8, 64, true, true};
  auto pe = make_position_encoding(pc, g);
  AttentionConfig ac;
  ac.type = "linear";
  ac.residual = true;
  try {
    make_attention(ac, g, *pe);
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("residual"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("linear"), std::string::npos) << e.what();
  }
}

// linear_cos serves RoPE applied outside (rotations keep the norms and the cosine) and the
// absolute schemes; it refuses the relative ones and RealFormer, naming both.
TEST(AttentionRegistry, LinearCosServesRopeAndRefusesRelativeSchemes) {
  for (bool causal : {true, false}) {
    const StackGeom g{causal ? "decoder." : "encoder.", 1, 32, 4, 4, 8, 64, causal, true};
    AttentionConfig ac;
    ac.type = "linear_cos";
    for (const char* pos : {"alibi", "t5", "shaw", "xl", "deberta"}) {
      PositionConfig pc;
      pc.type = pos;
      auto pe = make_position_encoding(pc, g);
      pf_test::expect_error([&] { make_attention(ac, g, *pe); },
                            {"'linear_cos'", pos, "supports no"});
    }
    for (const char* pos : {"none", "learned", "sinusoidal", "sinusoidal_half", "rope"}) {
      PositionConfig pc;
      pc.type = pos;
      auto pe = make_position_encoding(pc, g);
      auto a = make_attention(ac, g, *pe);
      EXPECT_EQ(a->name(), "linear_cos") << pos;
      EXPECT_FALSE(a->caps().rotary_inside);
    }
    PositionConfig pc;
    pc.type = "none";
    auto pe = make_position_encoding(pc, g);
    ac.residual = true;
    pf_test::expect_error([&] { make_attention(ac, g, *pe); }, {"residual", "linear_cos"});
  }
}

// linear_rope needs position 'rope' (it applies its rotation inside); every other scheme is
// refused naming both: the absolute ones too, since without rope it would just be 'linear'.
TEST(AttentionRegistry, LinearRopeNeedsRope) {
  for (bool causal : {true, false}) {
    const StackGeom g{causal ? "decoder." : "encoder.", 1, 32, 4, 4, 8, 64, causal, true};
    AttentionConfig ac;
    ac.type = "linear_rope";
    for (const char* pos : {"none", "learned", "sinusoidal", "sinusoidal_half", "alibi", "t5",
                            "shaw", "xl", "deberta"}) {
      PositionConfig pc;
      pc.type = pos;
      auto pe = make_position_encoding(pc, g);
      pf_test::expect_error([&] { make_attention(ac, g, *pe); }, {"'linear_rope'", pos, "rope"});
    }
    PositionConfig pc;
    pc.type = "rope";
    auto pe = make_position_encoding(pc, g);
    auto a = make_attention(ac, g, *pe);
    EXPECT_EQ(a->name(), "linear_rope");
    EXPECT_TRUE(a->caps().rotary_inside);
    EXPECT_FALSE(a->caps().rotary_outside);
  }
  ModelConfig mc;
  mc.d_model = 32, mc.n_heads = 4, mc.d_ff = 32, mc.n_layers = 1, mc.vocab_size = 20;
  mc.attention.type = "linear_rope";
  for (const char* pos : {"none", "learned", "alibi"}) {
    mc.position.type = pos;
    pf_test::expect_error([&] { Transformer m(mc); }, {"linear_rope", pos});
  }
}

// Cross-attention (AttnDesc::self_attention false) has no positions to rotate by: linear_rope
// there is plain linear attention.
TEST(LinearRope, CrossAttentionIsPlainLinear) {
  LCase c{2, 4, 2, 8, 30, 50, 7, 0, 0, false, {50, 20}, "linear_rope", "rope"};
  auto rope = make_variant(c);
  LCase l = c;
  l.variant = "linear", l.pos = "none";
  auto lin = make_variant(l);
  Data d = make_data(c, 31);
  d.desc.self_attention = false;
  const Engine a = run_engine(*rope, d), b = run_engine(*lin, d);
  EXPECT_EQ(0, std::memcmp(a.out.data(), b.out.data(), a.out.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(a.dq.data(), b.dq.data(), a.dq.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(a.dk.data(), b.dk.data(), a.dk.size() * sizeof(float)));
  // and self-attention really rotates
  d.desc.self_attention = true;
  const Engine r = run_engine(*rope, d);
  EXPECT_NE(0, std::memcmp(r.out.data(), b.out.data(), r.out.size() * sizeof(float)));
}

// ---- performer (FAVOR+): its random features, its approximation of softmax, its buffer.

namespace {
ModelConfig performer_config(int64_t M, const std::string& arch = "decoder") {
  ModelConfig mc;
  mc.arch = arch;
  mc.d_model = 32, mc.n_heads = 4, mc.d_ff = 32, mc.n_layers = 2, mc.vocab_size = 20;
  mc.max_len = 64;
  mc.attention.type = "performer", mc.attention.n_features = M, mc.attention.seed = 9;
  return mc;
}
}  // namespace

// W: rows orthogonal within each block of D, norms chi(D)-distributed (mean |w|^2 = D), the same
// for the same (seed, draw) and different otherwise.
TEST(Performer, FeaturesAreBlockOrthogonalAndDeterministic) {
  const int64_t D = 8, M = 20;  // blocks of 8, 8, 4 rows
  Transformer m = Transformer::random_init(performer_config(M), 1);
  const Tensor& W = m.params().get("decoder.performer.features");
  ASSERT_EQ(W.shape(), (Shape{M, D}));
  const float* w = W.data<float>();
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < i; ++j) {
      if (i / D != j / D) continue;
      double d = 0, ni = 0, nj = 0;
      for (int64_t c = 0; c < D; ++c)
        d += double(w[i * D + c]) * w[j * D + c], ni += double(w[i * D + c]) * w[i * D + c],
            nj += double(w[j * D + c]) * w[j * D + c];
      EXPECT_LT(std::abs(d) / std::sqrt(ni * nj), 1e-6) << i << " " << j;
    }
  // mean squared norm over many rows ~ D (chi^2 with D dof: sd sqrt(2D) per row)
  Transformer big = Transformer::random_init(performer_config(4096), 1);
  const float* wb = big.params().f32("decoder.performer.features");
  double mean = 0;
  for (int64_t i = 0; i < 4096 * D; ++i) mean += double(wb[i]) * wb[i];
  mean /= 4096;
  EXPECT_NEAR(mean, double(D), 0.25);  // 5 standard errors (sqrt(16 / 4096) = 0.0625)
  // the model seed does not matter, attention.seed and the draw do
  Transformer again = Transformer::random_init(performer_config(M), 2);
  EXPECT_EQ(0, std::memcmp(w, again.params().f32("decoder.performer.features"), W.nbytes()));
  ModelConfig other = performer_config(M);
  other.attention.seed = 10;
  Transformer o = Transformer::random_init(other, 1);
  EXPECT_NE(0, std::memcmp(w, o.params().f32("decoder.performer.features"), W.nbytes()));
  again.redraw_buffers(7);
  const std::vector<float> w7(again.params().f32("decoder.performer.features"),
                              again.params().f32("decoder.performer.features") + M * D);
  EXPECT_NE(0, std::memcmp(w, w7.data(), W.nbytes()));
  again.redraw_buffers(7);
  EXPECT_EQ(0,
            std::memcmp(w7.data(), again.params().f32("decoder.performer.features"), W.nbytes()));
  again.redraw_buffers(0);
  EXPECT_EQ(0, std::memcmp(w, again.params().f32("decoder.performer.features"), W.nbytes()));
}

// The approximation of exact softmax attention (double, scale 1/sqrt(D)) improves as
// n_features grows: mean abs error over several draws, causal and not.
TEST(Performer, ApproximationErrorFallsWithFeatures) {
  for (bool causal : {false, true}) {
    std::vector<double> errs;
    for (int64_t M : {4, 16, 64, 256, 1024}) {
      double err = 0;
      int64_t count = 0;
      for (uint32_t draw = 0; draw < 4; ++draw) {
        LCase c{1, 2, 2, 8, 40, 40, 0, 0, 0, causal, {}, "performer", "none"};
        c.n_features = M;
        Made made = make_variant(c);
        ParamStore store;
        made->init_buffers(store, draw);
        Data d = make_data(c, 41);
        for (float& x : d.q) x *= 0.5f;  // sd 0.75: a moderately peaked softmax
        for (float& x : d.k) x *= 0.5f;
        d.desc.params = &store;
        std::vector<float> out(d.dO.size(), kNaN);
        AttnDesc a = d.desc;
        a.out = out.data();
        made->forward(a, nullptr);
        for (int64_t h = 0; h < c.H; ++h)
          for (int64_t t = 0; t < c.Tq; ++t) {  // exact softmax of this row
            const int64_t e = causal ? t + 1 : c.Tk;
            std::vector<double> p(e);
            double mx = -1e300, z = 0;
            for (int64_t s = 0; s < e; ++s) {
              double dot = 0;
              for (int64_t i = 0; i < c.D; ++i)
                dot += double(d.q[t * a.ldq + h * c.D + i]) * d.k[s * a.ldk + h * c.D + i];
              p[s] = dot / std::sqrt(double(c.D)), mx = std::max(mx, p[s]);
            }
            for (double& x : p) z += (x = std::exp(x - mx));
            for (int64_t i = 0; i < c.D; ++i) {
              double o = 0;
              for (int64_t s = 0; s < e; ++s) o += p[s] / z * d.v[s * a.ldv + h * c.D + i];
              err += std::abs(o - out[t * a.ldo + h * c.D + i]), ++count;
            }
          }
      }
      errs.push_back(err / double(count));
    }
    std::printf(
        "[performer] %s mean |error| vs softmax at M = 4, 16, 64, 256, 1024: %.4f %.4f "
        "%.4f %.4f %.4f\n",
        causal ? "causal" : "full", errs[0], errs[1], errs[2], errs[3], errs[4]);
    for (size_t i = 1; i < errs.size(); ++i) EXPECT_LT(errs[i], errs[i - 1]) << i;
    EXPECT_LT(errs.back(), errs.front() / 4);  // Monte Carlo: ~1/sqrt(M) once M is large
  }
}

// W is a buffer: in the specs (flagged) and the store, saved and loaded with the model; no
// gradient, no optimizer state, never changed by AdamW (no decay either).
TEST(Performer, FeaturesAreANonTrainableBuffer) {
  Transformer m = Transformer::random_init(performer_config(12, "encoder_decoder"), 3);
  int64_t buffers = 0;
  for (const ParamSpec& s : m.param_specs())
    if (s.buffer) {
      ++buffers;
      EXPECT_TRUE(m.params().has(s.name)) << s.name;
      EXPECT_FALSE(s.decay);
    }
  EXPECT_EQ(buffers, 2);  // one per stack
  const Tensor We = m.params().get("encoder.performer.features").clone();
  const Tensor Wd = m.params().get("decoder.performer.features").clone();
  // the stacks draw their own
  EXPECT_NE(0, std::memcmp(We.data<float>(), Wd.data<float>(), We.nbytes()));
  ParamStore grads = m.zero_grads();
  EXPECT_FALSE(grads.has("decoder.performer.features"));
  TokenBatch src{{1, 2, 3, 4, 5}}, tok{{3, 4, 5, 6}}, tgt{{4, 5, 6, 7}};
  ForwardOptions fo;
  fo.src = &src;
  m.loss_and_grad(tok, tgt, grads, fo);
  AdamW opt(m.param_specs(), AdamWConfig{0.9, 0.95, 1e-8, 0.5});
  for (int i = 0; i < 3; ++i) opt.step(m.params(), grads, 1e-2);
  for (const auto& [name, t] : opt.state_tensors())
    EXPECT_EQ(name.find("performer"), std::string::npos) << name;
  EXPECT_EQ(
      0, std::memcmp(We.data<float>(), m.params().f32("encoder.performer.features"), We.nbytes()));
  EXPECT_EQ(
      0, std::memcmp(Wd.data<float>(), m.params().f32("decoder.performer.features"), Wd.nbytes()));
  // a changed W survives save and load
  m.redraw_buffers(5);
  pf_test::TempDir dir;
  m.save(dir.path);
  Transformer l = Transformer::load(dir.path);
  for (const char* n : {"encoder.performer.features", "decoder.performer.features"})
    EXPECT_EQ(0, std::memcmp(m.params().f32(n), l.params().f32(n), m.params().get(n).nbytes()));
  EXPECT_NE(
      0, std::memcmp(Wd.data<float>(), l.params().f32("decoder.performer.features"), Wd.nbytes()));
  auto a = m.forward(tok, fo), b = l.forward(tok, fo);
  EXPECT_EQ(0, std::memcmp(a.logits.data<float>(), b.logits.data<float>(), a.logits.nbytes()));
}

// attention.n_features / seed / redraw_every: parsed, validated naming the field, written back,
// and refused for other attention types.
TEST(Performer, ConfigFields) {
  auto cfg = [](const std::string& att) {
    return "{\"d_model\": 32, \"n_heads\": 4, \"attention\": " + att + "}";
  };
  ModelConfig c = parse_config_text(
      cfg("{\"type\": \"performer\", \"n_features\": 48, \"seed\": 3, \"redraw_every\": 100}"),
      "t");
  EXPECT_EQ(c.attention.n_features, 48);
  EXPECT_EQ(c.attention.seed, 3);
  EXPECT_EQ(c.attention.redraw_every, 100);
  const ModelConfig back = parse_config(config_to_json(c));
  EXPECT_EQ(back.attention.n_features, 48);
  EXPECT_EQ(back.attention.seed, 3);
  EXPECT_EQ(back.attention.redraw_every, 100);
  pf_test::expect_error(
      [&] { parse_config_text(cfg("{\"type\": \"performer\", \"n_features\": 0}"), "t"); },
      {"attention.n_features", "0"});
  pf_test::expect_error(
      [&] { parse_config_text(cfg("{\"type\": \"performer\", \"seed\": -1}"), "t"); },
      {"attention.seed"});
  pf_test::expect_error(
      [&] { parse_config_text(cfg("{\"type\": \"performer\", \"redraw_every\": -2}"), "t"); },
      {"attention.redraw_every"});
  pf_test::expect_error(
      [&] { parse_config_text(cfg("{\"type\": \"performer\", \"scale\": 0.5}"), "t"); },
      {"attention.scale", "performer"});
  for (const char* f : {"n_features", "seed", "redraw_every"})
    pf_test::expect_error(
        [&] {
          parse_config_text(cfg(std::string("{\"type\": \"linear\", \"") + f + "\": 4}"), "t");
        },
        {f, "performer", "linear"});
}

// Performer approximates softmax of the q, k it is given: RoPE outside and the absolute schemes
// are served; relative score terms and RealFormer are refused naming both.
TEST(AttentionRegistry, PerformerServesRopeAndRefusesRelativeSchemes) {
  ModelConfig mc = performer_config(8);
  for (const char* pos : {"none", "learned", "sinusoidal", "rope"}) {
    mc.position.type = pos;
    Transformer m(mc);
    EXPECT_EQ(m.attention(true)->name(), "performer");
  }
  for (const char* pos : {"alibi", "t5", "shaw", "xl", "deberta"}) {
    mc.position.type = pos;
    pf_test::expect_error([&] { Transformer m(mc); }, {"'performer'", pos});
  }
  mc.position.type = "none";
  mc.attention.residual = true;
  pf_test::expect_error([&] { Transformer m(mc); }, {"residual", "performer"});
}
