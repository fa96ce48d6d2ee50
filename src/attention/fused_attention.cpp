// Fused ("flash") exact softmax attention, forward and backward (attention.h): tiles of the
// score matrix are made, used and dropped; only the row log-sum-exp L is kept for backward.
//   forward  per (b, h, block of kBr query rows), over key blocks of kBc keys from the tile
//            holding the block's first row's first key (key window; tiles outside every row's
//            window are skipped) up to the keys its last row sees: S = scale Q K^T, hook terms,
//            entries before a row's first key -inf, online softmax (running max m, sum l,
//            O rescaled), O += P V; out = O / l, L = m + log l.
// The tile products are the Highway micro-kernels of kernels/cpu/flash_gemm.h on K and V packed
// once per (b, kv head), or oneDNN sgemm (POSFORMER_FLASH_GEMM=0, and decoding-sized blocks);
// with AttnDesc::bf16 the forward's are the bf16 pair products of kernels/cpu/flash_bf16.h on
// K, V and each block's q packed as bf16, P rounded to bf16 in place by the online softmax.
// The backward's run on the micro-kernels too by default when there is no score hook (with a
// hook: at small T only, kSmallBackwardKeys, sgemm above). When the default puts a hook-free
// backward on sgemm (fewer than kMinPackRows query rows per kv head) a query block's diagonal
// part, the keys only some of its rows see, still runs on the micro-kernels, which skip the
// masked entries (causal T = 512: 20% of sgemm's products were masked out).
//   backward per (b, kv head) in parallel, its heads and blocks in a fixed order (results do not
//            depend on the thread count): Di = dO . O, P = exp(S - L), dV += P^T dO,
//            dS = P (dO V^T - Di), hook, dQ += scale dS K, dK += scale dS^T Q.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "../kernels/cpu/attention_kernels.h"
#include "../kernels/cpu/flash_bf16.h"
#include "../kernels/cpu/flash_gemm.h"
#include "../kernels/cpu/scratch.h"
#include "../ops/matmul_profile.h"
#include "posformer/attention/attention.h"
#include "posformer/core/error.h"
#include "posformer/ops/matmul.h"

namespace posformer {
namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Query rows per block and keys per tile: the S tile (kBr x kBc floats, 256 KB) and the block's
// O accumulator stay in L2 while K and V stream through.
constexpr int64_t kBr = 128, kBc = 512;

// vis[r]: keys of tile [s0, s0 + cols) that query row t0 + r sees.
void tile_visible(const AttnDesc& a, int64_t b, int64_t t0, int64_t rows, int64_t s0, int64_t cols,
                  int64_t* vis) {
  for (int64_t r = 0; r < rows; ++r)
    vis[r] = std::clamp<int64_t>(a.visible_keys(b, t0 + r) - s0, 0, cols);
}

// Key window (packed documents, left padding): the tile's keys before row t0 + r's first key
// are set to -inf in S (row stride ld; vis from tile_visible): the softmax kernels give them
// probability 0 (a row with nothing visible yet keeps m = -inf, no NaN).
void mask_window(const AttnDesc& a, int64_t b, int64_t t0, int64_t rows, int64_t s0,
                 const int64_t* vis, float* S, int64_t ld) {
  if (!a.key_lo) return;
  for (int64_t r = 0; r < rows; ++r)
    std::fill_n(S + r * ld, std::clamp<int64_t>(a.first_key(b, t0 + r) - s0, 0, vis[r]), kNegInf);
}

// Which tile products run on the Highway micro-kernels (the rest on oneDNN sgemm, the earlier
// kernel): POSFORMER_FLASH_GEMM=0 none, 1 the forward's, 2 forward and backward; unset (auto,
// -1): the forward's, and the backward's without a score hook (with one: when a head sees at
// most kSmallBackwardKeys keys; ALiBi and T5 training measured level either way). Since the
// tiles are 64-byte aligned the backward's micro-kernel path is level with sgemm on the Intel
// Xeon and 3-15% faster on AMD Zen 5 at T = 512-4096 (RESULTS.md section 7, 2026-12-03);
// before, it measured 6-30% slower at larger T. At ViT sizes (T = 17-33) sgemm's per-call cost
// dominates, five calls per (b, head) on 17 x 17 x 32 tiles, and the micro-kernels' backward
// took 1.7-1.9 ms against 2.1-2.9 ms (docs/attention.md). Read at each call (tests switch it).
// Blocks of fewer query rows (decoding) than kMinPackRows per kv head use sgemm: packing K and
// V would cost about as much as the products.
int flash_gemm_mode() {
  const char* e = std::getenv("POSFORMER_FLASH_GEMM");
  if (!e || !*e) return -1;
  PF_CHECK((e[0] == '0' || e[0] == '1' || e[0] == '2') && e[1] == 0,
           "[attention] POSFORMER_FLASH_GEMM must be 0, 1 or 2, got '", e, "'");
  return e[0] - '0';
}
constexpr int64_t kSmallBackwardKeys = 48;

using kernels::cpu::Scratch;
using kernels::cpu::Scratch16;
constexpr int64_t kMinPackRows = 16;
}  // namespace

bool attention_bf16_native() {
  return kernels::cpu::flash_bf16_native();
}

void fused_attention_forward(const AttnDesc& a, float* lse) {
  check_attn_desc(a);
  PF_CHECK(!(a.hook && a.hook->has_value_terms()),
           "[attention] the fused kernel has no value terms (Shaw); use attention_forward");
  if (a.B == 0 || a.Tq == 0) return;
  const int64_t group = a.H / a.Hkv, BG = a.B * a.Hkv, D = a.D;
  const int64_t br = std::min(kBr, a.Tq), nblk = (a.Tq + br - 1) / br, per_bg = group * nblk;
  const int mode = flash_gemm_mode();
  // bf16 (AttnDesc::bf16): the micro-kernel structure with bfloat16 operands; decoding-sized
  // blocks (fewer than kMinPackRows query rows per kv head) stay fp32 on sgemm, as below:
  // packing K and V would cost as much as the products
  const bool bf = a.bf16 && a.Tq * group >= kMinPackRows;
  const bool native = bf && kernels::cpu::flash_bf16_native();
  const bool fast = bf || (mode != 0 && a.Tq * group >= kMinPackRows);
  const int64_t Dp = fast ? kernels::cpu::flash_round_up(D) : D;  // O accumulator row stride
  const int64_t Dh2 = 2 * kernels::cpu::flash_bf16_pairs(D);      // a bf16 q / k row
  // fp32 micro-kernels without score hooks: the scores in log2 units. Each block's q is copied
  // scaled by scale * log2(e), so the nt product stores its sums as they are and the online
  // softmax takes 2^ (9 instructions a vector on AVX-512 against exp's 12); the row's
  // log-sum-exp goes back to natural units at the end. Hooks add biases in natural units, so
  // with a hook (and on the bf16 and sgemm paths) the scores stay as they were.
  const bool log2u = fast && !bf && !a.hook;
  const float qscale = a.scale * static_cast<float>(1.4426950408889634);  // scale * log2(e)
  const bool par = BG * per_bg > 1 && omp_get_max_threads() > 1 && !omp_in_parallel();
  // fast: K (panels) and V (rows padded to Dp) packed once per (b, kv head) for all its heads and
  // query blocks; enough pairs per round to give every thread work
  const int64_t nthr = par ? omp_get_max_threads() : 1;
  // (32 tasks per thread per round: a causal head's blocks differ up to nblk-fold in cost, and
  // each round ends in a barrier, so few tasks per round left threads idle at T = 1024)
  const int64_t round = fast ? std::min(BG, (32 * nthr + per_bg - 1) / per_bg) : BG;
  // fp32: K panels and V rows; bf16: K panels and V key pairs (flash_bf16.h)
  const int64_t kp_size = kernels::cpu::flash_round_up(a.Tk) * (bf ? Dh2 : D);
  const int64_t vp_size = (bf ? (a.Tk + 1) / 2 * 2 : a.Tk) * Dp;
  const Scratch Kp(fast && !bf ? round * kp_size : 0), Vp(fast && !bf ? round * vp_size : 0);
  const Scratch16 Kb(bf ? round * kp_size : 0), Vb(bf ? round * vp_size : 0);
  constexpr int64_t kPackChunk = 256;  // keys per packing task
  const int64_t pack_chunks = (a.Tk + kPackChunk - 1) / kPackChunk;
#pragma omp parallel if (par)
  {
    // tiles: at most kBc keys (and no more than the keys there are)
    const int64_t tc = std::min(kBc, kernels::cpu::flash_round_up(a.Tk));
    const Scratch S(br * tc), O(br * Dp);
    const Scratch16 Qb(bf ? br * Dh2 : 0);  // the block's q
    const Scratch Qs(log2u ? br * D : 0);   // the block's q times qscale (log2u)
    std::vector<float> m(static_cast<size_t>(br)), l(static_cast<size_t>(br));
    std::vector<int64_t> vis(static_cast<size_t>(br));
    for (int64_t bg0 = 0; bg0 < BG; bg0 += round) {
      const int64_t nr = std::min(round, BG - bg0);
      if (fast) {
#pragma omp for schedule(static)
        for (int64_t j = 0; j < nr * pack_chunks; ++j) {
          const int64_t bg = bg0 + j / pack_chunks, b = bg / a.Hkv, g = bg % a.Hkv;
          const int64_t c0 = j % pack_chunks * kPackChunk;
          const int64_t n = std::min(kPackChunk, a.visible_keys(b, a.Tq - 1) - c0);
          if (n <= 0) continue;
          const int64_t row = b * a.kv_rows() + c0;
          if (bf) {  // c0 is a multiple of 16 and 2: whole panels and pairs
            kernels::cpu::flash_bf16_pack_panels(
                a.k + row * a.ldk + g * D, a.ldk, n, D,
                Kb.data() + (j / pack_chunks) * kp_size + c0 * Dh2);
            kernels::cpu::flash_bf16_pack_pairs(a.v + row * a.ldv + g * D, a.ldv, n, D, Dp,
                                                Vb.data() + (j / pack_chunks) * vp_size + c0 * Dp);
            continue;
          }
          kernels::cpu::flash_pack_panels(a.k + row * a.ldk + g * D, a.ldk, n, D,
                                          Kp.data() + (j / pack_chunks) * kp_size + c0 * D);
          kernels::cpu::flash_pack_rows(a.v + row * a.ldv + g * D, a.ldv, n, D, Dp,
                                        Vp.data() + (j / pack_chunks) * vp_size + c0 * Dp);
        }
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t task = 0; task < nr * per_bg; ++task) {
        // causal: the last blocks of a head see the most keys; run them first
        const int64_t slot = task / per_bg, bg = bg0 + slot, hb = task % per_bg;
        const int64_t blk = nblk - 1 - hb % nblk, t0 = blk * br, rows = std::min(br, a.Tq - t0);
        const int64_t b = bg / a.Hkv, g = bg % a.Hkv, h = g * group + hb / nblk, bh = b * a.H + h;
        const float* q = a.q + (b * a.Tq + t0) * a.ldq + h * D;
        const float* k = a.k + b * a.kv_rows() * a.ldk + g * D;
        const float* v = a.v + b * a.kv_rows() * a.ldv + g * D;
        const float* kp = fast && !bf ? Kp.data() + slot * kp_size : nullptr;
        const float* vp = fast && !bf ? Vp.data() + slot * vp_size : nullptr;
        const uint16_t* kb = bf ? Kb.data() + slot * kp_size : nullptr;
        const uint16_t* vb = bf ? Vb.data() + slot * vp_size : nullptr;
        if (bf) kernels::cpu::flash_bf16_pack_rows(q, a.ldq, rows, D, Dh2, Qb.data());
        if (log2u)
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < D; ++c) Qs.data()[r * D + c] = q[r * a.ldq + c] * qscale;
        float* o = a.out + (b * a.Tq + t0) * a.ldo + h * D;
        float* L = lse ? lse + bh * a.Tq + t0 : nullptr;
        // keys the block can see: from its first row's first key to its last row's end; tiles
        // stay on the kBc grid (the packed K panels are indexed by key)
        const int64_t kn = a.visible_keys(b, t0 + rows - 1), k0 = a.first_key(b, t0);
        std::fill_n(m.data(), rows, kNegInf);
        std::fill_n(l.data(), rows, 0.0f);
        std::fill_n(O.data(), rows * Dp, 0.0f);
        for (int64_t s0 = k0 - k0 % kBc; s0 < kn; s0 += kBc) {
          const int64_t cols = std::min(kBc, kn - s0);
          const int64_t ldS = fast ? kernels::cpu::flash_round_up(cols) : cols;
          // the mask first: without hooks the products skip what rows cannot see
          tile_visible(a, b, t0, rows, s0, cols, vis.data());
          // the matmul profiler (ops/matmul.h) counts the micro-kernel products as the inner
          // (per-thread) gemms oneDNN's would have been, at their nominal rows x cols x D
          const bool prof = fast && ops::detail::matmul_profiling();
          double tp = prof ? ops::detail::matmul_now_s() : 0.0;
          if (bf)
            kernels::cpu::flash_bf16_nt(rows, cols, D, a.scale, Qb.data(), Dh2, kb + s0 * Dh2,
                                        S.data(), ldS, a.hook ? nullptr : vis.data(), native);
          else if (log2u)
            kernels::cpu::flash_gemm_nt(rows, cols, D, 1.0f, Qs.data(), D, kp + s0 * D, S.data(),
                                        ldS, vis.data());
          else if (fast)  // with a hook (log2u otherwise), which may read or change every entry
            kernels::cpu::flash_gemm_nt(rows, cols, D, a.scale, q, a.ldq, kp + s0 * D, S.data(),
                                        ldS, nullptr);
          else
            ops::gemm(false, true, rows, cols, D, a.scale, q, a.ldq, k + s0 * a.ldk, a.ldk, 0.0f,
                      S.data(), ldS);
          if (prof)
            ops::detail::matmul_profile_record(rows, cols, D, ops::detail::matmul_now_s() - tp);
          if (a.hook) a.hook->add_scores(b, h, ScoreTile{t0, rows, s0, cols}, S.data(), ldS);
          mask_window(a, b, t0, rows, s0, vis.data(), S.data(), ldS);
          // bf16: P as bf16 in place, in the first half of each S row (row stride 2 ldS in
          // uint16; each store lands on entries already read, in L1), an odd tile's pad entry 0
          // (pairs read it)
          uint16_t* Pb = bf ? reinterpret_cast<uint16_t*>(S.data()) : nullptr;
          if (!(bf &&
                kernels::cpu::flash_bf16_softmax(S.data(), ldS, rows, cols, vis.data(), m.data(),
                                                 l.data(), O.data(), Dp, D, native)))
            kernels::cpu::flash_online_softmax(S.data(), ldS, rows, cols, vis.data(), m.data(),
                                               l.data(), O.data(), Dp, D, Pb, 2 * ldS, log2u);
          if (prof) tp = ops::detail::matmul_now_s();
          if (bf) {
            kernels::cpu::flash_bf16_acc(rows, Dp, cols, Pb, 2 * ldS, vb + s0 * Dp, O.data(), Dp,
                                         vis.data(), native);
          } else if (fast)
            kernels::cpu::flash_gemm_acc(rows, D, cols, 1.0f, S.data(), ldS, 1, vp + s0 * Dp, Dp,
                                         O.data(), Dp, nullptr, vis.data());
          else
            ops::gemm(false, false, rows, D, cols, 1.0f, S.data(), ldS, v + s0 * a.ldv, a.ldv, 1.0f,
                      O.data(), Dp);
          if (prof)
            ops::detail::matmul_profile_record(rows, D, cols, ops::detail::matmul_now_s() - tp);
        }
        for (int64_t r = 0; r < rows; ++r) {  // rows that see no key output 0, L = -inf
          const float inv = l[r] > 0 ? 1.0f / l[r] : 0.0f;
          for (int64_t c = 0; c < D; ++c) o[r * a.ldo + c] = O.data()[r * Dp + c] * inv;
          if (L && l[r] > 0)
            L[r] = log2u ? static_cast<float>((double(m[r]) + std::log2(double(l[r]))) *
                                              0.69314718055994531)
                         : m[r] + std::log(l[r]);
          else if (L)
            L[r] = kNegInf;
        }
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
  PF_CHECK(!a.bf16,
           "[attention] the fused backward runs in float32 (it recomputes P); bf16 products "
           "(AttnDesc::bf16) are for forward-only calls");
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
  const int mode = flash_gemm_mode();
  const bool fast = (mode == 2 || (mode == -1 && (!hook || a.Tk <= kSmallBackwardKeys))) &&
                    a.Tq * group >= kMinPackRows;
  // sgemm path, auto mode, no hook (blocks of fewer than kMinPackRows rows per kv head): a
  // block's keys seen by only some of its rows (the causal diagonal) run on the micro-kernels,
  // which skip the masked entries; sgemm would compute the whole square (at causal T = 512,
  // 128-row blocks: 20% of the products masked out)
  const bool split_diag = !fast && mode == -1 && !hook;
  // fast: per thread, this (b, kv head)'s K and V in panels (S = Q K^T, dP = dO V^T), and K,
  // the block's Q and dO as rows padded to Dp (the acc products' B) unless D is already padded;
  // split_diag: the same for one tile's diagonal part only (at most kBc keys)
  const int64_t Dp = kernels::cpu::flash_round_up(D);
  const int64_t kn = fast ? a.Tk : split_diag ? std::min(a.Tk, kBc) : 0;
  const int64_t kpan = kernels::cpu::flash_round_up(kn) * D, kr_size = Dp == D ? 0 : kn * Dp;
  const bool pad_qdo = (fast || split_diag) && Dp != D;
#pragma omp parallel if (BG > 1 && omp_get_max_threads() > 1 && !omp_in_parallel())
  {
    // tiles: at most kBc keys (and no more than the keys there are)
    const int64_t tc = std::min(kBc, kernels::cpu::flash_round_up(a.Tk));
    const Scratch S(br * tc), dP(br * tc);
    std::vector<float> Di(static_cast<size_t>(br));
    std::vector<int64_t> vis(static_cast<size_t>(br)), klo(static_cast<size_t>(tc));
    const Scratch Kp(kpan), Vp(kpan), Kr(kr_size);
    const Scratch Qr(pad_qdo ? br * Dp : 0), dOr(pad_qdo ? br * Dp : 0);
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
      if (fast) {
        const int64_t n = a.visible_keys(b, a.Tq - 1);
        kernels::cpu::flash_pack_panels(k, a.ldk, n, D, Kp.data());
        kernels::cpu::flash_pack_panels(v, a.ldv, n, D, Vp.data());
        if (Dp != D) kernels::cpu::flash_pack_rows(k, a.ldk, n, D, Dp, Kr.data());
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
          const float* qb = q + t0 * a.ldq;  // the block's Q and dO rows as the acc products' B
          const float* dob = dO + t0 * g.lddo;
          int64_t ldqb = a.ldq, lddob = g.lddo;
          if (pad_qdo) {
            kernels::cpu::flash_pack_rows(qb, a.ldq, rows, D, Dp, Qr.data());
            kernels::cpu::flash_pack_rows(dob, g.lddo, rows, D, Dp, dOr.data());
            qb = Qr.data();
            dob = dOr.data();
            ldqb = lddob = Dp;
          }
          // keys [s0, s0 + cols) of the block: the five products on the micro-kernels (kp, vp:
          // the keys' panels from s0; kr, ldkr: their rows) or on sgemm
          const auto products = [&](int64_t s0, int64_t cols, bool micro, const float* kp,
                                    const float* vp, const float* kr, int64_t ldkr) {
            const int64_t ldS = micro ? kernels::cpu::flash_round_up(cols) : cols;
            const ScoreTile tile{t0, rows, s0, cols};
            // the mask first: the products skip what rows cannot see (P, dS are 0 there) unless
            // a hook reads or changes those entries
            tile_visible(a, b, t0, rows, s0, cols, vis.data());
            const int64_t* lim = hook ? nullptr : vis.data();
            if (micro)
              kernels::cpu::flash_gemm_nt(rows, cols, D, a.scale, q + t0 * a.ldq, a.ldq, kp,
                                          S.data(), ldS, lim);
            else
              ops::gemm(false, true, rows, cols, D, a.scale, q + t0 * a.ldq, a.ldq, k + s0 * a.ldk,
                        a.ldk, 0.0f, S.data(), ldS);
            if (hook) hook->add_scores(b, h, tile, S.data(), ldS);
            if (micro)
              kernels::cpu::flash_gemm_nt(rows, cols, D, 1.0f, dO + t0 * g.lddo, g.lddo, vp,
                                          dP.data(), ldS, vis.data());
            else
              ops::gemm(false, true, rows, cols, D, 1.0f, dO + t0 * g.lddo, g.lddo, v + s0 * a.ldv,
                        a.ldv, 0.0f, dP.data(), ldS);
            mask_window(a, b, t0, rows, s0, vis.data(), S.data(), ldS);
            kernels::cpu::flash_dscores(S.data(), ldS, dP.data(), ldS, rows, cols, vis.data(),
                                        L + t0, Di.data());  // S -> P, dP -> dS
            if (micro) {  // klo[c]: the first row that sees key c (rows: none)
              int64_t c = 0;
              for (int64_t r = 0; r < rows; ++r)
                for (; c < vis[r]; ++c) klo[c] = r;
              for (; c < cols; ++c) klo[c] = rows;
              kernels::cpu::flash_gemm_acc(cols, D, rows, 1.0f, S.data(), 1, ldS, dob, lddob,
                                           dv + s0 * a.ldv, a.ldv, klo.data(), nullptr);
            } else {
              ops::gemm(true, false, cols, D, rows, 1.0f, S.data(), ldS, dO + t0 * g.lddo, g.lddo,
                        1.0f, dv + s0 * a.ldv, a.ldv);
            }
            if (hook) hook->adjust_dscores(b, h, tile, dP.data(), ldS);
            if (micro) {
              kernels::cpu::flash_gemm_acc(rows, D, cols, a.scale, dP.data(), ldS, 1, kr, ldkr,
                                           dq + t0 * a.ldq, a.ldq, nullptr, lim);
              kernels::cpu::flash_gemm_acc(cols, D, rows, a.scale, dP.data(), 1, ldS, qb, ldqb,
                                           dk + s0 * a.ldk, a.ldk, hook ? nullptr : klo.data(),
                                           nullptr);
            } else {
              ops::gemm(false, false, rows, D, cols, a.scale, dP.data(), ldS, k + s0 * a.ldk, a.ldk,
                        1.0f, dq + t0 * a.ldq, a.ldq);
              ops::gemm(true, false, cols, D, rows, a.scale, dP.data(), ldS, q + t0 * a.ldq, a.ldq,
                        1.0f, dk + s0 * a.ldk, a.ldk);
            }
            if (hook) hook->backward_scores(b, h, tile, dP.data(), ldS, dq, a.ldq, dk, a.ldk);
          };
          for (int64_t s0 = k0 - k0 % kBc; s0 < e; s0 += kBc) {
            const int64_t cols = std::min(kBc, e - s0);
            if (fast) {
              products(s0, cols, true, Kp.data() + s0 * D, Vp.data() + s0 * D,
                       Dp == D ? k + s0 * a.ldk : Kr.data() + s0 * Dp, Dp == D ? a.ldk : Dp);
              continue;
            }
            // split_diag: keys [s0, s0 + full) are seen by every row of the block (visible_keys
            // never decreases in t), the rest, from a panel boundary, by some: the micro-kernels
            const int64_t seen = std::clamp<int64_t>(a.visible_keys(b, t0) - s0, 0, cols);
            const int64_t full = !split_diag || seen == cols
                                     ? cols
                                     : seen / kernels::cpu::kFlashPanel * kernels::cpu::kFlashPanel;
            if (full > 0) products(s0, full, false, nullptr, nullptr, nullptr, 0);
            const int64_t d0 = s0 + full, dn = cols - full;
            if (dn <= 0) continue;
            kernels::cpu::flash_pack_panels(k + d0 * a.ldk, a.ldk, dn, D, Kp.data());
            kernels::cpu::flash_pack_panels(v + d0 * a.ldv, a.ldv, dn, D, Vp.data());
            const float* kr = k + d0 * a.ldk;
            int64_t ldkr = a.ldk;
            if (Dp != D) {
              kernels::cpu::flash_pack_rows(kr, a.ldk, dn, D, Dp, Kr.data());
              kr = Kr.data();
              ldkr = Dp;
            }
            products(d0, dn, true, Kp.data(), Vp.data(), kr, ldkr);
          }
        }
      }
    }
  }
}

}  // namespace posformer
