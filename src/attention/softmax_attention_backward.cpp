// Backward of exact softmax attention (per kv-head group in parallel, heads of a group serial):
//   dV_g += P^T dO_h;  dP = dO_h V_g^T (+ hook value term);  dS = P * (dP - rowsum(dP * P))
//   dQ_h = scale dS K_g (+ hook);  dK_g += scale dS^T Q_h (+ hook)
// The work is done per block of query rows over only the keys the block can see (causal mask,
// key padding, key window): P is exactly 0 elsewhere, so dS is too and those keys contribute
// nothing. A hook (relative schemes) gets each block as a tile.
#include <omp.h>

#include <algorithm>
#include <vector>

#include "../kernels/cpu/backward_kernels.h"
#include "posformer/attention/attention.h"
#include "posformer/core/error.h"
#include "posformer/ops/matmul.h"

namespace posformer {

namespace {
// Query rows per block in the masked path: smaller blocks skip more of the causal triangle
// (T = 256: 64 -> 62% of the full work, 32 -> 56%) but make smaller gemms.
constexpr int64_t kQueryBlock = 64;
}  // namespace

void attention_backward(const AttnDesc& a, const float* probs, const AttnGrads& g,
                        ScoreHook* hook) {
  check_attn_desc(a);
  PF_CHECK(probs && g.dout && g.dq && g.dk && g.dv,
           "[attention] backward needs P, dout, dq, dk, dv");
  const int64_t group = a.H / a.Hkv, BG = a.B * a.Hkv;
  if (a.Tq == 0 || a.Tk == 0) {
    for (int64_t r = 0; r < a.B * a.Tq; ++r) std::fill_n(g.dq + r * a.ldq, a.H * a.D, 0.0f);
    for (int64_t r = 0; r < a.B * a.Tk; ++r) {
      std::fill_n(g.dk + r * a.ldk, a.Hkv * a.D, 0.0f);
      std::fill_n(g.dv + r * a.ldv, a.Hkv * a.D, 0.0f);
    }
    return;
  }
  if (hook) hook->begin_backward();
  const int64_t qb = std::min(kQueryBlock, a.Tq);
#pragma omp parallel if (BG > 1 && omp_get_max_threads() > 1 && !omp_in_parallel())
  {
    std::vector<float> dP(static_cast<size_t>(qb * a.Tk));
#pragma omp for schedule(static, 1)  // static: per-thread gradient sums are reproducible
    for (int64_t bg = 0; bg < BG; ++bg) {
      const int64_t b = bg / a.Hkv, kvh = bg % a.Hkv;
      const float* k = a.k + b * a.kv_rows() * a.ldk + kvh * a.D;
      const float* v = a.v + b * a.kv_rows() * a.ldv + kvh * a.D;
      float* dk = g.dk + b * a.kv_rows() * a.ldk + kvh * a.D;
      float* dv = g.dv + b * a.kv_rows() * a.ldv + kvh * a.D;
      // this (b, kv head)'s slices of dk, dv (and below dq) belong to this iteration alone
      for (int64_t s = 0; s < a.Tk; ++s) {
        std::fill_n(dk + s * a.ldk, a.D, 0.0f);
        std::fill_n(dv + s * a.ldv, a.D, 0.0f);
      }
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        const float* P = probs + (b * a.H + h) * a.Tq * a.Tk;
        const float* q = a.q + b * a.Tq * a.ldq + h * a.D;
        const float* dO = g.dout + b * a.Tq * g.lddo + h * a.D;
        float* dq = g.dq + b * a.Tq * a.ldq + h * a.D;
        for (int64_t t0 = 0; t0 < a.Tq; t0 += qb) {
          const int64_t n = std::min(qb, a.Tq - t0);
          // keys the block sees: from its first row's first key (key window) to its last row's
          // end; P is 0 outside, so the tile [k0, k0 + e) covers every nonzero term
          const int64_t k0 = a.first_key(b, t0), e = a.visible_keys(b, t0 + n - 1) - k0;
          const float* Pb = P + t0 * a.Tk + k0;
          if (e <= 0) {  // no visible key: P rows are 0, so is dq
            for (int64_t t = t0; t < t0 + n; ++t) std::fill_n(dq + t * a.ldq, a.D, 0.0f);
            continue;
          }
          const ScoreTile tile{t0, n, k0, e};
          const float *kb = k + k0 * a.ldk, *vb = v + k0 * a.ldv;
          float *dkb = dk + k0 * a.ldk, *dvb = dv + k0 * a.ldv;
          ops::gemm(true, false, e, a.D, n, 1.0f, Pb, a.Tk, dO + t0 * g.lddo, g.lddo, 1.0f, dvb,
                    a.ldv);
          ops::gemm(false, true, n, e, a.D, 1.0f, dO + t0 * g.lddo, g.lddo, vb, a.ldv, 0.0f,
                    dP.data(), e);
          if (hook && hook->has_value_terms())
            hook->backward_values(b, h, tile, Pb, a.Tk, dO, g.lddo, dP.data(), e);
          kernels::cpu::softmax_backward_rows(Pb, a.Tk, dP.data(), e, n, e);  // dP -> dS
          if (hook) hook->adjust_dscores(b, h, tile, dP.data(), e);
          ops::gemm(false, false, n, a.D, e, a.scale, dP.data(), e, kb, a.ldk, 0.0f,
                    dq + t0 * a.ldq, a.ldq);
          ops::gemm(true, false, e, a.D, n, a.scale, dP.data(), e, q + t0 * a.ldq, a.ldq, 1.0f, dkb,
                    a.ldk);
          if (hook) hook->backward_scores(b, h, tile, dP.data(), e, dq, a.ldq, dk, a.ldk);
        }
      }
    }
  }
}

}  // namespace posformer
