// Fused ("flash") exact softmax attention, forward and backward (attention.h): tiles of the
// score matrix are made, used and dropped; only the row log-sum-exp L is kept for backward.
//   forward  per (b, h, block of kBr query rows), over key blocks of kBc keys from the block's
//            first row's first key (key window) up to the keys its last row sees (tiles outside
//            every row's window are skipped): S = scale Q K^T (gemm), hook terms, entries outside
//            the row's window -inf, online softmax (running max m, sum l, O rescaled),
//            O += P V (gemm); out = O / l, L = m + log l.
//   backward per (b, kv head) in parallel, its heads and blocks in a fixed order (results do not
//            depend on the thread count): Di = dO . O, P = exp(S - L), dV += P^T dO,
//            dS = P (dO V^T - Di), hook, dQ += scale dS K, dK += scale dS^T Q.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../kernels/cpu/attention_kernels.h"
#include "posformer/attention/attention.h"
#include "posformer/core/error.h"
#include "posformer/ops/matmul.h"

namespace posformer {
namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Query rows per block and keys per tile: the S tile (kBr x kBc floats, 256 KB) and the block's
// O accumulator stay in L2 while K and V stream through.
constexpr int64_t kBr = 128, kBc = 512;

// vis[r]: keys of tile [s0, s0 + cols) that query row t0 + r sees; with a key window, the
// tile's keys before the row's first key are set to -inf in S (row stride ld): the softmax
// kernels give them probability 0 (a row with nothing visible yet keeps m = -inf, no NaN).
void tile_visible(const AttnDesc& a, int64_t b, int64_t t0, int64_t rows, int64_t s0, int64_t cols,
                  int64_t* vis, float* S, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r) {
    vis[r] = std::clamp<int64_t>(a.visible_keys(b, t0 + r) - s0, 0, cols);
    if (a.key_lo)
      std::fill_n(S + r * ld, std::clamp<int64_t>(a.first_key(b, t0 + r) - s0, 0, vis[r]), kNegInf);
  }
}
}  // namespace

void fused_attention_forward(const AttnDesc& a, float* lse) {
  check_attn_desc(a);
  PF_CHECK(!(a.hook && a.hook->has_value_terms()),
           "[attention] the fused kernel has no value terms (Shaw); use attention_forward");
  if (a.B == 0 || a.Tq == 0) return;
  const int64_t group = a.H / a.Hkv, BH = a.B * a.H;
  const int64_t br = std::min(kBr, a.Tq), nblk = (a.Tq + br - 1) / br, tasks = BH * nblk;
  const int64_t D = a.D;
#pragma omp parallel if (tasks > 1 && omp_get_max_threads() > 1 && !omp_in_parallel())
  {
    std::vector<float> S(static_cast<size_t>(br * kBc)), O(static_cast<size_t>(br * D));
    std::vector<float> m(static_cast<size_t>(br)), l(static_cast<size_t>(br));
    std::vector<int64_t> vis(static_cast<size_t>(br));
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      // causal: the last blocks of a head see the most keys; run them first
      const int64_t bh = task / nblk, blk = nblk - 1 - task % nblk, t0 = blk * br;
      const int64_t rows = std::min(br, a.Tq - t0);
      const int64_t b = bh / a.H, h = bh % a.H, g = h / group;
      const float* q = a.q + (b * a.Tq + t0) * a.ldq + h * D;
      const float* k = a.k + b * a.kv_rows() * a.ldk + g * D;
      const float* v = a.v + b * a.kv_rows() * a.ldv + g * D;
      float* o = a.out + (b * a.Tq + t0) * a.ldo + h * D;
      float* L = lse ? lse + bh * a.Tq + t0 : nullptr;
      // keys the block can see: from its first row's first key to its last row's end
      const int64_t kn = a.visible_keys(b, t0 + rows - 1), k0 = a.first_key(b, t0);
      std::fill_n(m.data(), rows, kNegInf);
      std::fill_n(l.data(), rows, 0.0f);
      std::fill_n(O.data(), rows * D, 0.0f);
      for (int64_t s0 = k0; s0 < kn; s0 += kBc) {
        const int64_t cols = std::min(kBc, kn - s0);
        ops::gemm(false, true, rows, cols, D, a.scale, q, a.ldq, k + s0 * a.ldk, a.ldk, 0.0f,
                  S.data(), cols);
        if (a.hook) a.hook->add_scores(b, h, ScoreTile{t0, rows, s0, cols}, S.data(), cols);
        tile_visible(a, b, t0, rows, s0, cols, vis.data(), S.data(), cols);
        kernels::cpu::flash_online_softmax(S.data(), cols, rows, cols, vis.data(), m.data(),
                                           l.data(), O.data(), D, D);
        ops::gemm(false, false, rows, D, cols, 1.0f, S.data(), cols, v + s0 * a.ldv, a.ldv, 1.0f,
                  O.data(), D);
      }
      for (int64_t r = 0; r < rows; ++r) {  // rows that see no key output 0, L = -inf
        const float inv = l[r] > 0 ? 1.0f / l[r] : 0.0f;
        for (int64_t c = 0; c < D; ++c) o[r * a.ldo + c] = O[r * D + c] * inv;
        if (L) L[r] = l[r] > 0 ? m[r] + std::log(l[r]) : kNegInf;
      }
    }
  }
}

void fused_attention_backward(const AttnDesc& a, const float* lse, const AttnGrads& g,
                              ScoreHook* hook) {
  check_attn_desc(a);
  PF_CHECK(lse && a.out && g.dout && g.dq && g.dk && g.dv,
           "[attention] fused backward needs L, the forward's output (desc.out), dout, dq, dk, dv");
  PF_CHECK(!(hook && hook->has_value_terms()),
           "[attention] the fused kernel has no value terms (Shaw); use attention_backward");
  const int64_t group = a.H / a.Hkv, BG = a.B * a.Hkv, D = a.D;
  if (a.Tq == 0 || a.Tk == 0) {
    for (int64_t r = 0; r < a.B * a.Tq; ++r) std::fill_n(g.dq + r * a.ldq, a.H * D, 0.0f);
    for (int64_t r = 0; r < a.B * a.Tk; ++r) {
      std::fill_n(g.dk + r * a.ldk, a.Hkv * D, 0.0f);
      std::fill_n(g.dv + r * a.ldv, a.Hkv * D, 0.0f);
    }
    return;
  }
  if (hook) hook->begin_backward();
  const int64_t br = std::min(kBr, a.Tq);
#pragma omp parallel if (BG > 1 && omp_get_max_threads() > 1 && !omp_in_parallel())
  {
    std::vector<float> S(static_cast<size_t>(br * kBc)), dP(static_cast<size_t>(br * kBc));
    std::vector<float> Di(static_cast<size_t>(br));
    std::vector<int64_t> vis(static_cast<size_t>(br));
#pragma omp for schedule(static, 1)  // static: per-thread hook gradient sums are reproducible
    for (int64_t bg = 0; bg < BG; ++bg) {
      const int64_t b = bg / a.Hkv, kvh = bg % a.Hkv;
      const float* k = a.k + b * a.kv_rows() * a.ldk + kvh * D;
      const float* v = a.v + b * a.kv_rows() * a.ldv + kvh * D;
      float* dk = g.dk + b * a.kv_rows() * a.ldk + kvh * D;
      float* dv = g.dv + b * a.kv_rows() * a.ldv + kvh * D;
      for (int64_t s = 0; s < a.Tk; ++s) {  // this (b, kv head)'s slices belong to it alone
        std::fill_n(dk + s * a.ldk, D, 0.0f);
        std::fill_n(dv + s * a.ldv, D, 0.0f);
      }
      for (int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
        const float* q = a.q + b * a.Tq * a.ldq + h * D;
        const float* o = a.out + b * a.Tq * a.ldo + h * D;
        const float* dO = g.dout + b * a.Tq * g.lddo + h * D;
        const float* L = lse + (b * a.H + h) * a.Tq;
        float* dq = g.dq + b * a.Tq * a.ldq + h * D;
        for (int64_t t0 = 0; t0 < a.Tq; t0 += br) {
          const int64_t rows = std::min(br, a.Tq - t0);
          const int64_t e = a.visible_keys(b, t0 + rows - 1), k0 = a.first_key(b, t0);
          for (int64_t t = t0; t < t0 + rows; ++t) std::fill_n(dq + t * a.ldq, D, 0.0f);
          if (e <= k0) continue;  // no visible key: P rows are 0, so is dq
          kernels::cpu::rowdot(dO + t0 * g.lddo, g.lddo, o + t0 * a.ldo, a.ldo, rows, D, Di.data());
          for (int64_t s0 = k0; s0 < e; s0 += kBc) {
            const int64_t cols = std::min(kBc, e - s0);
            const ScoreTile tile{t0, rows, s0, cols};
            ops::gemm(false, true, rows, cols, D, a.scale, q + t0 * a.ldq, a.ldq, k + s0 * a.ldk,
                      a.ldk, 0.0f, S.data(), cols);
            if (hook) hook->add_scores(b, h, tile, S.data(), cols);
            ops::gemm(false, true, rows, cols, D, 1.0f, dO + t0 * g.lddo, g.lddo, v + s0 * a.ldv,
                      a.ldv, 0.0f, dP.data(), cols);
            tile_visible(a, b, t0, rows, s0, cols, vis.data(), S.data(), cols);
            kernels::cpu::flash_dscores(S.data(), cols, dP.data(), cols, rows, cols, vis.data(),
                                        L + t0, Di.data());  // S -> P, dP -> dS
            ops::gemm(true, false, cols, D, rows, 1.0f, S.data(), cols, dO + t0 * g.lddo, g.lddo,
                      1.0f, dv + s0 * a.ldv, a.ldv);
            if (hook) hook->adjust_dscores(b, h, tile, dP.data(), cols);
            ops::gemm(false, false, rows, D, cols, a.scale, dP.data(), cols, k + s0 * a.ldk, a.ldk,
                      1.0f, dq + t0 * a.ldq, a.ldq);
            ops::gemm(true, false, cols, D, rows, a.scale, dP.data(), cols, q + t0 * a.ldq, a.ldq,
                      1.0f, dk + s0 * a.ldk, a.ldk);
            if (hook) hook->backward_scores(b, h, tile, dP.data(), cols, dq, a.ldq, dk, a.ldk);
          }
        }
      }
    }
  }
}

}  // namespace posformer
