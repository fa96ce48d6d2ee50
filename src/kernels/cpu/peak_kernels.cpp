// fp32 FMA peak loop (Highway, runtime dispatch: the widest vectors the CPU has).
#include <omp.h>

#include <chrono>
#include <cstddef>
#include <cstdint>

#include "posformer/core/peak.h"
#include "posformer/core/runtime.h"

#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "../src/kernels/cpu/peak_kernels.cpp"  // relative to include/
#include <hwy/foreach_target.h>                                   // IWYU pragma: keep
#include <hwy/highway.h>

HWY_BEFORE_NAMESPACE();
namespace posformer::kernels::cpu::HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

constexpr int kChains = 12;  // > FMA latency (4) x FMA ports (2): keeps both pipes full

// Runs kChains independent a = a * m + c chains for `iters` steps; returns a value that
// depends on every chain (so nothing is optimised away); reports the vector width, the chain
// count and this target's name. Chain i starts at seed + i / 1024 (fp32_peak_chain_start):
// chains that started equal would be one value to the compiler, which then runs a single
// latency-bound chain (before 2026-12-01 GCC did exactly that, and the probe reported 12 FMAs
// per FMA latency, 1.5x the two-port peak of the CPUs measured).
float fma_chains(int64_t iters, float seed, int* lanes, int* chains, const char** isa) {
  const hn::ScalableTag<float> d;
  *lanes = static_cast<int>(hn::Lanes(d));
  *chains = kChains;
  *isa = hwy::TargetName(HWY_TARGET);
  const auto m = hn::Set(d, 0.999999f), c = hn::Set(d, 1e-7f);
  auto start = [&](int i) { return hn::Set(d, fp32_peak_chain_start(seed, i)); };
  auto a0 = start(0), a1 = start(1), a2 = start(2), a3 = start(3), a4 = start(4);
  auto a5 = start(5), a6 = start(6), a7 = start(7), a8 = start(8), a9 = start(9);
  auto a10 = start(10), a11 = start(11);
  for (int64_t i = 0; i < iters; ++i) {
    a0 = hn::MulAdd(a0, m, c), a1 = hn::MulAdd(a1, m, c), a2 = hn::MulAdd(a2, m, c);
    a3 = hn::MulAdd(a3, m, c), a4 = hn::MulAdd(a4, m, c), a5 = hn::MulAdd(a5, m, c);
    a6 = hn::MulAdd(a6, m, c), a7 = hn::MulAdd(a7, m, c), a8 = hn::MulAdd(a8, m, c);
    a9 = hn::MulAdd(a9, m, c), a10 = hn::MulAdd(a10, m, c), a11 = hn::MulAdd(a11, m, c);
  }
  const auto s = hn::Add(hn::Add(hn::Add(a0, a1), hn::Add(a2, a3)),
                         hn::Add(hn::Add(hn::Add(a4, a5), hn::Add(a6, a7)),
                                 hn::Add(hn::Add(a8, a9), hn::Add(a10, a11))));
  return hn::GetLane(hn::SumOfLanes(d, s));
}

}  // namespace posformer::kernels::cpu::HWY_NAMESPACE
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace posformer {
namespace kernels::cpu {
HWY_EXPORT(fma_chains);
}  // namespace kernels::cpu

float fp32_peak_checksum(int64_t iters, float seed) {
  int lanes = 0, chains = 0;
  const char* isa = "";
  return HWY_DYNAMIC_DISPATCH(kernels::cpu::fma_chains)(iters, seed, &lanes, &chains, &isa);
}

Fp32Peak measure_fp32_peak(int threads, int reps) {
  if (threads <= 0) threads = num_threads();
  if (reps < 1) reps = 1;
  Fp32Peak p;
  p.threads = threads;
  const int64_t iters = 20000000;  // x 12 chains x 16 lanes x 2 = 7.7 GFLOP per thread (AVX-512)
  float sink = 0;
  for (int rep = 0; rep < reps; ++rep) {
    int lanes = 0, chains = 0;
    const char* isa = "";
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
    {
      int l = 0, c = 0;
      const char* name = "";
      sink += HWY_DYNAMIC_DISPATCH(kernels::cpu::fma_chains)(iters, 1.0f + 1e-3f * float(rep), &l,
                                                             &c, &name);
#pragma omp master
      lanes = l, chains = c, isa = name;
    }
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    p.lanes = lanes, p.chains = chains, p.isa = isa;
    const double gf = 2.0 * lanes * chains * double(iters) * threads / dt * 1e-9;
    if (gf > p.gflops) p.gflops = gf;
  }
  if (sink == 12345.0f) p.gflops += 0;  // keeps the chains' results alive
  return p;
}

}  // namespace posformer
#endif  // HWY_ONCE
