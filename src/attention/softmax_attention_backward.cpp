// Backward of exact softmax attention (per kv-head group in parallel, heads of a group serial):
//   dV_g += P^T dO_h;  dP = dO_h V_g^T (+ hook value term);  dS = P * (dP - rowsum(dP * P))
//   dQ_h = scale dS K_g (+ hook);  dK_g += scale dS^T Q_h (+ hook)
#include <omp.h>

#include <algorithm>
#include <vector>

#include "posformer/attention/attention.h"
#include "posformer/core/error.h"
#include "posformer/ops/matmul.h"

namespace posformer {

void attention_backward(const AttnDesc& a, const float* probs, const AttnGrads& g,
                        ScoreHook* hook) {
  check_attn_desc(a);
  PF_CHECK(probs && g.dout && g.dq && g.dk && g.dv, "[attention] backward needs P, dout, dq, dk, dv");
  const int64_t group = a.H / a.Hkv, BG = a.B * a.Hkv;
  for (int64_t r = 0; r < a.B * a.Tq; ++r) std::fill_n(g.dq + r * a.ldq, a.H * a.D, 0.0f);
  for (int64_t r = 0; r < a.B * a.Tk; ++r) {
    std::fill_n(g.dk + r * a.ldk, a.Hkv * a.D, 0.0f);
    std::fill_n(g.dv + r * a.ldv, a.Hkv * a.D, 0.0f);
  }
  if (a.Tq == 0 || a.Tk == 0) return;
  if (hook) hook->begin_backward();
#pragma omp parallel if (BG > 1 && omp_get_max_threads() > 1 && !omp_in_parallel())
  {
    std::vector<float> dP(static_cast<size_t>(a.Tq * a.Tk));
#pragma omp for schedule(static, 1)  // static: per-thread gradient sums are reproducible
    for (int64_t bg = 0; bg < BG; ++bg) {
      const int64_t b = bg / a.Hkv, kvh = bg % a.Hkv;
      const float* k = a.k + b * a.kv_rows() * a.ldk + kvh * a.D;
      const float* v = a.v + b * a.kv_rows() * a.ldv + kvh * a.D;
      float* dk = g.dk + b * a.kv_rows() * a.ldk + kvh * a.D;
      float* dv = g.dv + b * a.kv_rows() * a.ldv + kvh * a.D;
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        const float* P = probs + (b * a.H + h) * a.Tq * a.Tk;
        const float* q = a.q + b * a.Tq * a.ldq + h * a.D;
        const float* dO = g.dout + b * a.Tq * g.lddo + h * a.D;
        float* dq = g.dq + b * a.Tq * a.ldq + h * a.D;
        ops::gemm(true, false, a.Tk, a.D, a.Tq, 1.0f, P, a.Tk, dO, g.lddo, 1.0f, dv, a.ldv);
        ops::gemm(false, true, a.Tq, a.Tk, a.D, 1.0f, dO, g.lddo, v, a.ldv, 0.0f, dP.data(), a.Tk);
        if (hook && hook->has_value_terms()) hook->backward_values(b, h, P, dO, g.lddo, dP.data());
        for (int64_t t = 0; t < a.Tq; ++t) {  // dS = P * (dP - <dP, P>), in place in dP
          const float* pr = P + t * a.Tk;
          float* dr = dP.data() + t * a.Tk;
          double dot = 0;
          for (int64_t s = 0; s < a.Tk; ++s) dot += static_cast<double>(pr[s]) * dr[s];
          const float fd = static_cast<float>(dot);
          for (int64_t s = 0; s < a.Tk; ++s) dr[s] = pr[s] * (dr[s] - fd);
        }
        ops::gemm(false, false, a.Tq, a.D, a.Tk, a.scale, dP.data(), a.Tk, k, a.ldk, 0.0f, dq, a.ldq);
        ops::gemm(true, false, a.Tk, a.D, a.Tq, a.scale, dP.data(), a.Tk, q, a.ldq, 1.0f, dk, a.ldk);
        if (hook) hook->backward_scores(b, h, dP.data(), dq, a.ldq, dk, a.ldk);
      }
    }
  }
}

}  // namespace posformer
