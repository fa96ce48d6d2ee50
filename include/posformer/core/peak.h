// fp32 peak of this CPU, measured: every thread runs kChains independent FMA chains on the
// widest vectors Highway's runtime dispatch picks (AVX-512 where the CPU has it, else AVX2, ...).
// FLOPs = 2 x lanes x chains x iterations x threads; the best of `reps` timed runs is reported.
// Utilisation (MFU) figures divide by this (bench/train_bench.sh, bench/attention_bench.sh).
#pragma once
#include <cstdint>
#include <string>

namespace posformer {

struct Fp32Peak {
  double gflops = 0;  // best of the timed runs
  std::string isa;    // Highway target that ran, e.g. "AVX3" (AVX-512) or "AVX2"
  int lanes = 0;      // fp32 lanes per vector on that target
  int chains = 0;     // independent FMA chains per thread
  int threads = 0;
};

// threads <= 0: the OpenMP default (num_threads()). Runs ~0.2 s per rep on a 2-core machine.
Fp32Peak measure_fp32_peak(int threads = 0, int reps = 5);

// Chain i of the probe starts at this value: every chain distinct, so the compiler cannot fold
// them into one (which would time a single latency-bound chain).
inline float fp32_peak_chain_start(float seed, int i) {
  return seed + static_cast<float>(i) * (1.0f / 1024.0f);
}
// The bf16 dot-product peak (AVX512-BF16 `vdpbf16ps`: 2 multiply-adds per fp32 lane, 12
// independent chains per thread, counted as 4 FLOPs per lane), GFLOP/s, best of `reps`; 0 where
// the CPU lacks AVX512-BF16. The rate the bf16 attention products (AttnDesc::bf16) divide by.
double measure_bf16_dot_peak(int threads = 0, int reps = 5);

// For tests: the probe's result for one thread, `iters` steps (sum over chains and lanes of
// a <- fma(a, 0.999999, 1e-7) from fp32_peak_chain_start(seed, i)).
float fp32_peak_checksum(int64_t iters, float seed);

}  // namespace posformer
