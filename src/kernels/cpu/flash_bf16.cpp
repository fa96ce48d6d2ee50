// bfloat16 tile products of the fused attention; flash_bf16.h has the maths and layouts.
// Two implementations of each product: AVX512-BF16 intrinsics (vdpbf16ps) compiled for that
// target alone and chosen at run time, and a portable loop for every other CPU.
#include "flash_bf16.h"

#if defined(__x86_64__)
// GCC 12's AVX-512 headers give unmasked intrinsics an undefined pass-through (`__Y = __Y`),
// which -Wmaybe-uninitialized reports once they are inlined; the state at the headers' lines
// is the one that counts, so it is set before they are included.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>
#endif

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "attention_kernels.h"  // flash_online_update
#include "exp_avx512.h"
#include "kernels.h"  // to_bf16_serial
#include "posformer/core/error.h"
#include "posformer/core/peak.h"
#include "posformer/core/runtime.h"
#include "posformer/ops/packed_linear.h"  // to_bf16_bits, bf16_bits_to_float

namespace posformer::kernels::cpu {
namespace {
constexpr int64_t kPanel = 16;  // keys per K panel, columns per V vector (16 float lanes)

inline int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}
inline float bf(uint16_t b) {
  return ops::bf16_bits_to_float(b);
}

// ---- portable loops (any CPU): the same operands, float32 sums, one multiply-add at a time ----

void nt_portable(int64_t M, int64_t ncols, int64_t D, float alpha, const uint16_t* A, int64_t lda,
                 const uint16_t* Bp, float* C, int64_t ldc, const int64_t* lim) {
  const int64_t Dh = flash_bf16_pairs(D);
  for (int64_t m = 0; m < M; ++m) {
    const int64_t n = round_up(lim ? std::min(ncols, lim[m]) : ncols, kPanel);
    const uint16_t* a = A + m * lda;
    for (int64_t c = 0; c < n; ++c) {
      const uint16_t* b = Bp + (c / kPanel) * Dh * 2 * kPanel + (c % kPanel) * 2;
      float s = 0.0f;
      for (int64_t j = 0; j < Dh; ++j) {
        s = std::fma(bf(a[2 * j]), bf(b[j * 2 * kPanel]), s);
        s = std::fma(bf(a[2 * j + 1]), bf(b[j * 2 * kPanel + 1]), s);
      }
      C[m * ldc + c] = alpha * s;
    }
  }
}

void acc_portable(int64_t M, int64_t Dp, int64_t K, const uint16_t* A, int64_t lda,
                  const uint16_t* Vp, float* C, int64_t ldc, const int64_t* k_hi) {
  for (int64_t m = 0; m < M; ++m) {
    const int64_t pairs = (std::min(K, k_hi ? k_hi[m] : K) + 1) / 2;
    const uint16_t* a = A + m * lda;
    float* c = C + m * ldc;
    for (int64_t p = 0; p < pairs; ++p) {
      const float a0 = bf(a[2 * p]), a1 = bf(a[2 * p + 1]);
      const uint16_t* v = Vp + p * 2 * Dp;
      for (int64_t j = 0; j < Dp; ++j)
        c[j] = std::fma(a1, bf(v[2 * j + 1]), std::fma(a0, bf(v[2 * j]), c[j]));
    }
  }
}

// ---- AVX512-BF16 ----
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")
#define POSFORMER_HAVE_BF16_KERNELS 1

// Horizontal sum and max (GCC 12's _mm512_reduce_* trip -Wmaybe-uninitialized in its headers).
inline float hsum(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s = 0;
  for (float x : t) s += x;
  return s;
}
inline float hmax(__m512 v) {
  alignas(64) float t[16];
  _mm512_store_ps(t, v);
  float s = t[0];
  for (float x : t) s = std::max(s, x);
  return s;
}

inline __m512bh pair_bcast(const uint16_t* p) {  // one (even, odd) pair to every lane
  int32_t w;
  std::memcpy(&w, p, sizeof w);
  return (__m512bh)_mm512_set1_epi32(w);
}

// MR rows x NV vectors (16 keys each): ap[i] the rows' A, bp[v] the vectors' panels.
template <int MR, int NV>
__attribute__((noinline)) void nt_block(int64_t Dh, float alpha, const uint16_t* const* ap,
                                        const uint16_t* const* bp, float* C, int64_t ldc,
                                        int64_t mvalid) {
  __m512 acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t j = 0; j < Dh; ++j) {
    __m512bh b[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(bp[v] + j * 2 * kPanel);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = pair_bcast(ap[i] + 2 * j);
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], a, b[v]);
    }
  }
  const __m512 va = _mm512_set1_ps(alpha);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if (i >= mvalid) break;
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v)
      _mm512_storeu_ps(C + i * ldc + v * kPanel, _mm512_mul_ps(acc[i][v], va));
  }
}

constexpr int kNtMR = 8, kNtNV = 3;  // 24 accumulators + 3 panels of 32 registers

void nt_native(int64_t M, int64_t ncols, int64_t D, float alpha, const uint16_t* A, int64_t lda,
               const uint16_t* Bp, float* C, int64_t ldc, const int64_t* lim) {
  const int64_t Dh = flash_bf16_pairs(D), pstride = Dh * 2 * kPanel;
  for (int64_t m0 = 0; m0 < M; m0 += kNtMR) {
    const int64_t mvalid = std::min<int64_t>(kNtMR, M - m0);
    int64_t n = ncols;
    if (lim) {
      int64_t mx = 0;
      for (int64_t i = 0; i < mvalid; ++i) mx = std::max(mx, lim[m0 + i]);
      n = std::min(n, mx);
    }
    if (n <= 0) continue;
    const uint16_t* ap[kNtMR];  // rows past M repeat the last one; their results are not stored
    for (int64_t i = 0; i < kNtMR; ++i) ap[i] = A + std::min(m0 + i, M - 1) * lda;
    const int64_t nvec = (n + kPanel - 1) / kPanel;
    const uint16_t* bp[kNtNV];
    for (int64_t v0 = 0; v0 < nvec; v0 += kNtNV) {
      const int64_t nv = std::min<int64_t>(kNtNV, nvec - v0);
      for (int64_t v = 0; v < nv; ++v) bp[v] = Bp + (v0 + v) * pstride;
      float* c = C + m0 * ldc + v0 * kPanel;
      if (nv == 3)
        nt_block<kNtMR, 3>(Dh, alpha, ap, bp, c, ldc, mvalid);
      else if (nv == 2)
        nt_block<kNtMR, 2>(Dh, alpha, ap, bp, c, ldc, mvalid);
      else
        nt_block<kNtMR, 1>(Dh, alpha, ap, bp, c, ldc, mvalid);
    }
  }
}

// C rows ci[i] (MR of them) += pairs [0, np) of A rows ap[i] times NV vectors of V pairs at B.
template <int MR, int NV>
__attribute__((noinline)) void acc_block(int64_t np, const uint16_t* const* ap, const uint16_t* B,
                                         int64_t ldb, float* const* ci, int64_t mvalid) {
  __m512 acc[MR][NV];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_setzero_ps();
  for (int64_t p = 0; p < np; ++p) {
    __m512bh b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(B + p * ldb + v * 2 * kPanel);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = pair_bcast(ap[i] + 2 * p);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], a, b[v]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    if (i >= mvalid) break;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* c = ci[i] + v * kPanel;
      _mm512_storeu_ps(c, _mm512_add_ps(acc[i][v], _mm512_loadu_ps(c)));
    }
  }
}

constexpr int kAccMR = 6, kAccNV = 4;  // 24 accumulators + 4 vectors of V

void acc_native(int64_t M, int64_t Dp, int64_t K, const uint16_t* A, int64_t lda,
                const uint16_t* Vp, float* C, int64_t ldc, const int64_t* k_hi) {
  const int64_t nvec = Dp / kPanel;
  for (int64_t m0 = 0; m0 < M; m0 += kAccMR) {
    const int64_t mvalid = std::min<int64_t>(kAccMR, M - m0);
    int64_t k1 = 0;
    for (int64_t i = 0; i < mvalid; ++i) k1 = std::max(k1, k_hi ? k_hi[m0 + i] : K);
    const int64_t np = (std::min(k1, K) + 1) / 2;
    if (np <= 0) continue;
    const uint16_t* ap[kAccMR];  // rows past M repeat the last one; their results are not stored
    float* ci[kAccMR];
    for (int64_t v0 = 0; v0 < nvec; v0 += kAccNV) {
      for (int64_t i = 0; i < kAccMR; ++i) {
        const int64_t m = std::min(m0 + i, M - 1);
        ap[i] = A + m * lda;
        ci[i] = C + m * ldc + v0 * kPanel;
      }
      const int64_t nv = std::min<int64_t>(kAccNV, nvec - v0);
      const uint16_t* b = Vp + v0 * 2 * kPanel;
      if (nv == 4)
        acc_block<kAccMR, 4>(np, ap, b, 2 * Dp, ci, mvalid);
      else if (nv == 3)
        acc_block<kAccMR, 3>(np, ap, b, 2 * Dp, ci, mvalid);
      else if (nv == 2)
        acc_block<kAccMR, 2>(np, ap, b, 2 * Dp, ci, mvalid);
      else
        acc_block<kAccMR, 1>(np, ap, b, 2 * Dp, ci, mvalid);
    }
  }
}

// flash_online_softmax's step with P to bf16 in place (attention_kernels.h), on AVX512-BF16:
// the exponentials of exp_avx512.h and vcvtneps2bf16 (round to nearest even) for the rounding.
void softmax_native(float* S, int64_t ldS, int64_t rows, int64_t cols, const int64_t* vis, float* m,
                    float* l, float* O, int64_t ldO, int64_t D) {
  const float ninf = -std::numeric_limits<float>::infinity();
  const int64_t pcols = cols + cols % 2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x = S + r * ldS;
    uint16_t* pb = reinterpret_cast<uint16_t*>(S) + r * 2 * ldS;
    const int64_t n = vis[r];
    __m512 vm = _mm512_set1_ps(ninf);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) vm = _mm512_max_ps(vm, _mm512_loadu_ps(x + i));
    if (i < n)
      vm = _mm512_max_ps(vm, _mm512_mask_loadu_ps(vm, (__mmask16)((1u << (n - i)) - 1), x + i));
    const float mx = std::max(m[r], hmax(vm));
    if (mx == ninf) {  // nothing visible so far: probabilities 0, state unchanged
      std::memset(pb, 0, static_cast<size_t>(pcols) * sizeof(uint16_t));
      continue;
    }
    const __m512 vmx = _mm512_set1_ps(mx);
    __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
    i = 0;
    for (; i + 32 <= n; i += 32) {  // loads of x[i, i + 32) before the stores to pb[i, i + 32)
      const __m512 e0 = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), vmx));
      const __m512 e1 = exp_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16), vmx));
      _mm512_storeu_si512(pb + i, (__m512i)_mm512_cvtne2ps_pbh(e1, e0));
      s0 = _mm512_add_ps(s0, e0);
      s1 = _mm512_add_ps(s1, e1);
    }
    for (; i < n; i += 16) {
      const __mmask16 k = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
      const __m512 e =
          _mm512_maskz_mov_ps(k, exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), vmx)));
      _mm256_mask_storeu_epi16(pb + i, k, (__m256i)_mm512_cvtneps_pbh(e));
      s0 = _mm512_add_ps(s0, e);
    }
    if (n < pcols) std::memset(pb + n, 0, static_cast<size_t>(pcols - n) * sizeof(uint16_t));
    const float sum = hsum(_mm512_add_ps(s0, s1));
    float alpha;
    if (flash_online_update(m[r], l[r], mx, sum, &alpha)) {  // the max grew: rescale O's row
      float* o = O + r * ldO;
      for (int64_t c = 0; c < D; ++c) o[c] *= alpha;
    }
  }
}

// 12 chains of acc <- acc + a.b (pairs), iters steps; returns a sum that keeps them alive.
__attribute__((noinline)) float dot_chains(int64_t iters, float seed) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_ps(seed + float(i) * (1.0f / 1024.0f));
  __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80);        // 1.0
  const __m512bh b = (__m512bh)_mm512_set1_epi16(0x3380);  // 2^-24
  for (int64_t it = 0; it < iters; ++it) {
#pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    asm volatile("" : "+v"(a));  // a is not loop-invariant to the compiler
  }
  __m512 s = acc[0];
  for (int i = 1; i < 12; ++i) s = _mm512_add_ps(s, acc[i]);
  return hsum(s);
}

#pragma GCC pop_options
#endif

bool native_available() {
#if defined(POSFORMER_HAVE_BF16_KERNELS)
  static const bool cpu = __builtin_cpu_supports("avx512bf16") != 0;
  return cpu;
#else
  return false;
#endif
}
}  // namespace

bool flash_bf16_native() {
  // read at each call (tests switch it); anything but 0 or 1 is refused
  const char* e = std::getenv("POSFORMER_BF16_NATIVE");
  if (e && *e) {
    PF_CHECK((e[0] == '0' || e[0] == '1') && e[1] == 0,
             "[attention] POSFORMER_BF16_NATIVE must be 0 or 1, got '", e, "'");
    if (e[0] == '0') return false;
  }
  return native_available();
}

// The packings round each source row with the vectorised to_bf16_serial (into a stack buffer
// where the layout interleaves rows) and then place the 16-bit values.
constexpr int64_t kMaxRow = 512;  // a row buffer's entries; wider rows go in pieces

void flash_bf16_pack_rows(const float* src, int64_t ld, int64_t n, int64_t D, int64_t ldd,
                          uint16_t* dst) {
  for (int64_t r = 0; r < n; ++r) {
    uint16_t* o = dst + r * ldd;
    to_bf16_serial(src + r * ld, o, D);
    std::fill(o + D, o + ldd, uint16_t{0});
  }
}

void flash_bf16_pack_panels(const float* src, int64_t ld, int64_t n, int64_t D, uint16_t* dst) {
  const int64_t Dh = flash_bf16_pairs(D), pstride = Dh * 2 * kPanel;
  uint16_t row[kMaxRow];
  // whole panels of an even D that fits the stack tile: the 16 keys' rows rounded into a
  // contiguous [16, D] tile, then each pair's 16 key words (32 bits: d, d + 1) written as one
  // contiguous 64-byte row of the panel, reading the tile across its rows (as flash_pack_panels
  // does for fp32), instead of stores 64 bytes apart per key: 4096 keys x D 64 from a fused qkv
  // buffer in 235-279 us against 850-1059 (medians; bench/tools/bf16_pack_time.cpp, RESULTS.md
  // section 3, Xeon model 207, 2026-12-03; the same bits)
  constexpr int64_t kTileD = 128;  // the widest D through the tile (4 KB on the stack)
  alignas(64) uint16_t tile[kPanel * kTileD];
  const bool tiled = D % 2 == 0 && D <= kTileD;
  for (int64_t c0 = 0; c0 < n; c0 += kPanel) {
    uint16_t* p = dst + (c0 / kPanel) * pstride;
    const int64_t w = std::min(kPanel, n - c0);
    if (tiled && w == kPanel) {
      for (int64_t i = 0; i < kPanel; ++i) to_bf16_serial(src + (c0 + i) * ld, tile + i * D, D);
      for (int64_t j = 0; j < D / 2; ++j) {
        uint32_t word[kPanel];
#pragma GCC unroll 16
        for (int64_t i = 0; i < kPanel; ++i) std::memcpy(&word[i], tile + i * D + 2 * j, 4);
        std::memcpy(p + j * 2 * kPanel, word, sizeof(word));
      }
      continue;
    }
    if (w < kPanel || D % 2) std::fill(p, p + pstride, uint16_t{0});
    for (int64_t i = 0; i < w; ++i)
      for (int64_t d0 = 0; d0 < D; d0 += kMaxRow) {  // d0 even: pairs stay whole
        const int64_t nd = std::min(kMaxRow, D - d0);
        to_bf16_serial(src + (c0 + i) * ld + d0, row, nd);
        uint16_t* q = p + (d0 / 2) * 2 * kPanel + i * 2;
        for (int64_t d = 0; d + 1 < nd; d += 2) {
          q[(d / 2) * 2 * kPanel] = row[d];
          q[(d / 2) * 2 * kPanel + 1] = row[d + 1];
        }
        if (nd % 2) q[(nd / 2) * 2 * kPanel] = row[nd - 1];
      }
  }
}

void flash_bf16_pack_pairs(const float* src, int64_t ld, int64_t n, int64_t D, int64_t Dp,
                           uint16_t* dst) {
  uint16_t r0[kMaxRow], r1[kMaxRow];
  for (int64_t s0 = 0; s0 < n; s0 += 2) {
    uint16_t* p = dst + (s0 / 2) * 2 * Dp;
    const bool two = s0 + 1 < n;
    for (int64_t c0 = 0; c0 < Dp; c0 += kMaxRow) {
      const int64_t nc = std::clamp<int64_t>(D - c0, 0, kMaxRow);  // real columns here
      if (nc > 0) to_bf16_serial(src + s0 * ld + c0, r0, nc);
      if (nc > 0 && two) to_bf16_serial(src + (s0 + 1) * ld + c0, r1, nc);
      const int64_t end = std::min(Dp - c0, kMaxRow);
      for (int64_t c = 0; c < end; ++c) {
        p[(c0 + c) * 2] = c < nc ? r0[c] : uint16_t{0};
        p[(c0 + c) * 2 + 1] = c < nc && two ? r1[c] : uint16_t{0};
      }
    }
  }
}

void flash_bf16_nt(int64_t M, int64_t ncols, int64_t D, float alpha, const uint16_t* A, int64_t lda,
                   const uint16_t* Bp, float* C, int64_t ldc, const int64_t* lim, bool native) {
#if defined(POSFORMER_HAVE_BF16_KERNELS)
  if (native && native_available()) return nt_native(M, ncols, D, alpha, A, lda, Bp, C, ldc, lim);
#else
  (void)native;
#endif
  nt_portable(M, ncols, D, alpha, A, lda, Bp, C, ldc, lim);
}

bool flash_bf16_softmax(float* S, int64_t ldS, int64_t rows, int64_t cols, const int64_t* vis,
                        float* m, float* l, float* O, int64_t ldO, int64_t D, bool native) {
#if defined(POSFORMER_HAVE_BF16_KERNELS)
  if (native && native_available()) {
    softmax_native(S, ldS, rows, cols, vis, m, l, O, ldO, D);
    return true;
  }
#else
  (void)S, (void)ldS, (void)rows, (void)cols, (void)vis, (void)m, (void)l, (void)O, (void)ldO;
  (void)D, (void)native;
#endif
  return false;
}

void flash_bf16_acc(int64_t M, int64_t Dp, int64_t K, const uint16_t* A, int64_t lda,
                    const uint16_t* Vp, float* C, int64_t ldc, const int64_t* k_hi, bool native) {
#if defined(POSFORMER_HAVE_BF16_KERNELS)
  if (native && native_available()) return acc_native(M, Dp, K, A, lda, Vp, C, ldc, k_hi);
#else
  (void)native;
#endif
  acc_portable(M, Dp, K, A, lda, Vp, C, ldc, k_hi);
}

}  // namespace posformer::kernels::cpu

namespace posformer {

double measure_bf16_dot_peak(int threads, int reps) {
#if defined(POSFORMER_HAVE_BF16_KERNELS)
  if (!kernels::cpu::native_available()) return 0;
  if (threads <= 0) threads = num_threads();
  const int64_t iters = 10000000;  // x 12 chains x 16 lanes x 4 = 7.7 GFLOP per thread
  double best = 0;
  float sink = 0;
  for (int rep = 0; rep < std::max(reps, 1); ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    sink += kernels::cpu::dot_chains(iters, 1.0f + 1e-3f * float(rep));
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, 4.0 * 16 * 12 * double(iters) * threads / dt * 1e-9);
  }
  if (sink == 12345.0f) best += 0;  // keeps the chains' results alive
  return best;
#else
  (void)threads, (void)reps;
  return 0;
#endif
}

}  // namespace posformer
