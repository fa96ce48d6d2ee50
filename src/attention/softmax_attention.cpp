// Exact softmax attention: fast path (gemm + SIMD softmax per (b, h)) and the double-precision
// reference. Both call the same ScoreHook, so relative schemes are checked by the twin tests.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../kernels/cpu/scratch.h"
#include "posformer/attention/attention.h"
#include "posformer/core/error.h"
#include "posformer/ops/matmul.h"
#include "posformer/ops/softmax.h"

namespace posformer {

void check_attn_desc(const AttnDesc& a) {
  PF_CHECK(a.B >= 0 && a.Tq >= 0 && a.Tk >= 0, "[attention] negative size B=", a.B, " Tq=", a.Tq,
           " Tk=", a.Tk);
  PF_CHECK(a.H >= 1 && a.Hkv >= 1 && a.H % a.Hkv == 0, "[attention] kv heads (", a.Hkv,
           ") must divide heads (", a.H, ")");
  PF_CHECK(a.D >= 1, "[attention] head dim must be >= 1, got ", a.D);
  PF_CHECK(a.ldq >= a.H * a.D && a.ldo >= a.H * a.D, "[attention] q/out row stride too small");
  PF_CHECK(a.ldk >= a.Hkv * a.D && a.ldv >= a.Hkv * a.D, "[attention] k/v row stride too small");
  PF_CHECK(std::isfinite(a.scale), "[attention] scale must be finite");
  // the kernels bound a block of rows by its first row's lo and last row's end
  for (const int32_t* w : {a.key_lo, a.key_hi})
    if (w)
      for (int64_t b = 0; b < a.B; ++b)
        for (int64_t t = 1; t < a.Tq; ++t)
          PF_CHECK(w[b * a.Tq + t] >= w[b * a.Tq + t - 1], "[attention] key window ",
                   w == a.key_lo ? "key_lo" : "key_hi", " decreases at (", b, ", ", t,
                   "): ", w[b * a.Tq + t - 1], " then ", w[b * a.Tq + t]);
}

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// Mask keys that query row t must not see: causal (key position after the query), padding and
// the key window. S holds query rows t0 .. t0+rows-1 and key columns 0 .. kn-1 (row stride kn).
void apply_mask(const AttnDesc& a, int64_t b, int64_t t0, int64_t rows, int64_t kn, float* S) {
  for (int64_t t = 0; t < rows; ++t) {
    float* row = S + t * kn;
    const int64_t end = std::min(a.visible_keys(b, t0 + t), kn);
    std::fill(row, row + std::min(a.first_key(b, t0 + t), end), kNegInf);
    for (int64_t s = end; s < kn; ++s) row[s] = kNegInf;
  }
}
void apply_mask(const AttnDesc& a, int64_t b, float* S) {
  apply_mask(a, b, 0, a.Tq, a.Tk, S);
}
}  // namespace

// Scores of one task live in a per-thread buffer of at most this many floats (256 KB, within
// L2): query rows are processed in blocks so QK^T, softmax and PV reuse the block in cache, and
// blocks are separate tasks. Hooks (relative schemes) see the same tiles.
constexpr int64_t kScoreBlockFloats = int64_t{1} << 16;

void attention_forward(const AttnDesc& a) {
  check_attn_desc(a);
  if (a.B == 0 || a.Tq == 0) return;
  const int64_t group = a.H / a.Hkv, BH = a.B * a.H, Tk1 = std::max<int64_t>(a.Tk, 1);
  const int64_t rows_per_block = std::min(a.Tq, std::max<int64_t>(kScoreBlockFloats / Tk1, 16));
  const int64_t nblk = (a.Tq + rows_per_block - 1) / rows_per_block, tasks = BH * nblk;
  const bool values = a.hook && a.hook->has_value_terms();
#pragma omp parallel if (tasks > 1 && omp_get_max_threads() > 1 && !omp_in_parallel())
  {
    const kernels::cpu::Scratch S(rows_per_block * Tk1);  // 64-byte aligned, written by the gemm
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t bh = task / nblk, t0 = task % nblk * rows_per_block;
      const int64_t rows = std::min(rows_per_block, a.Tq - t0);
      const int64_t b = bh / a.H, h = bh % a.H, g = h / group;
      const float* q = a.q + (b * a.Tq + t0) * a.ldq + h * a.D;
      const float* k = a.k + b * a.kv_rows() * a.ldk + g * a.D;
      const float* v = a.v + b * a.kv_rows() * a.ldv + g * a.D;
      float* o = a.out + (b * a.Tq + t0) * a.ldo + h * a.D;
      float* probs = a.probs ? a.probs + (bh * a.Tq + t0) * a.Tk : nullptr;
      // Keys this block can see: padding and (causal) the last row's position bound them; the
      // columns past `kn` are masked for every row, so they are skipped (probability 0).
      const int64_t kn = a.visible_keys(b, t0 + rows - 1);
      if (kn == 0) {  // every key masked: the rows attend to nothing
        for (int64_t t = 0; t < rows; ++t) std::fill_n(o + t * a.ldo, a.D, 0.0f);
        if (probs) std::fill_n(probs, rows * a.Tk, 0.0f);
        continue;
      }
      const ScoreTile tile{t0, rows, 0, kn};
      float* Sp = S.data();
      ops::gemm(false, true, rows, kn, a.D, a.scale, q, a.ldq, k, a.ldk, 0.0f, Sp, kn);
      if (a.hook) a.hook->add_scores(b, h, tile, Sp, kn);
      apply_mask(a, b, t0, rows, kn, Sp);
      ops::softmax_rows(Sp, rows, kn, kn);
      if (probs)
        for (int64_t t = 0; t < rows; ++t) {
          std::copy_n(Sp + t * kn, kn, probs + t * a.Tk);
          std::fill(probs + t * a.Tk + kn, probs + (t + 1) * a.Tk, 0.0f);
        }
      ops::gemm(false, false, rows, a.D, kn, 1.0f, Sp, kn, v, a.ldv, 0.0f, o, a.ldo);
      if (values) a.hook->add_values(b, h, tile, Sp, kn, o - t0 * a.ldo, a.ldo);
    }
  }
}

namespace ref {

void attention_forward(const AttnDesc& a) {
  check_attn_desc(a);
  const int64_t group = a.H / a.Hkv;
  std::vector<float> S(static_cast<size_t>(a.Tq * std::max<int64_t>(a.Tk, 1)));
  for (int64_t b = 0; b < a.B; ++b)
    for (int64_t h = 0; h < a.H; ++h) {
      const int64_t g = h / group;
      for (int64_t t = 0; t < a.Tq; ++t)
        for (int64_t s = 0; s < a.Tk; ++s) {
          double acc = 0;
          for (int64_t c = 0; c < a.D; ++c)
            acc += static_cast<double>(a.q[(b * a.Tq + t) * a.ldq + h * a.D + c]) *
                   a.k[(b * a.kv_rows() + s) * a.ldk + g * a.D + c];
          S[t * a.Tk + s] = static_cast<float>(a.scale * acc);
        }
      const ScoreTile whole{0, a.Tq, 0, a.Tk};
      if (a.hook) a.hook->add_scores(b, h, whole, S.data(), a.Tk);
      apply_mask(a, b, S.data());
      for (int64_t t = 0; t < a.Tq; ++t) {
        float* row = S.data() + t * a.Tk;
        double mx = -std::numeric_limits<double>::infinity();
        for (int64_t s = 0; s < a.Tk; ++s) mx = std::max(mx, static_cast<double>(row[s]));
        double sum = 0;
        for (int64_t s = 0; s < a.Tk; ++s)
          sum += std::isinf(row[s]) && row[s] < 0 ? 0.0 : std::exp(row[s] - mx);
        for (int64_t s = 0; s < a.Tk; ++s)
          row[s] = (sum == 0 || (std::isinf(row[s]) && row[s] < 0))
                       ? 0.0f
                       : static_cast<float>(std::exp(row[s] - mx) / sum);
        for (int64_t c = 0; c < a.D; ++c) {
          double acc = 0;
          for (int64_t s = 0; s < a.Tk; ++s)
            acc += static_cast<double>(row[s]) * a.v[(b * a.kv_rows() + s) * a.ldv + g * a.D + c];
          a.out[(b * a.Tq + t) * a.ldo + h * a.D + c] = static_cast<float>(acc);
        }
      }
      if (a.hook && a.hook->has_value_terms())
        a.hook->add_values(b, h, whole, S.data(), a.Tk, a.out + b * a.Tq * a.ldo + h * a.D, a.ldo);
    }
}

}  // namespace ref
}  // namespace posformer
