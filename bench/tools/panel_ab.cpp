// One packed-linear shape through panel_gemm and through oneDNN's matmul, interleaved call batch
// by call batch (30 rounds of ~20 ms each, kernel A, kernel B, A, B, ...), so that a noisy host
// slows both alike: the medians and bests per kernel, GFLOP/s. The weights rotate through
// ROT_MB megabytes (default 64) of packed copies, so each call's weight comes from L3 or DRAM as
// inside a 12-layer forward. bench/RESULTS.md section 1. Built against a release build:
//   g++ -O2 -std=c++20 -fopenmp -Iinclude bench/tools/panel_ab.cpp -o /tmp/panel_ab \
//       build/libposformer.a -ldnnl -lhwy -lz -lpng
//   GOMP_SPINCOUNT=100000 /tmp/panel_ab 128 3072 768 gelu
// Usage: panel_ab M N K [fwd|gelu|acc|dx]: y[M, N] = x W^T + b (fwd), with GELU fused (gelu),
// y += x W^T + b (acc), or dx[M, K] = dy[M, N] W (dx).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "posformer/core/runtime.h"
#include "posformer/ops/packed_linear.h"

int main(int argc, char** argv) {
  using namespace posformer;
  if (argc < 4) {
    std::fprintf(stderr, "usage: panel_ab M N K [fwd|gelu|acc|dx]\n");
    return 2;
  }
  const int64_t M = std::atoll(argv[1]), N = std::atoll(argv[2]), K = std::atoll(argv[3]);
  const std::string mode = argc > 4 ? argv[4] : "fwd";
  if (M < 1 || N < 1 || K < 1 || M * N > (int64_t{1} << 28) || M * K > (int64_t{1} << 28) ||
      N * K > (int64_t{1} << 28) ||
      (mode != "fwd" && mode != "gelu" && mode != "acc" && mode != "dx")) {
    std::fprintf(stderr,
                 "panel_ab: M N K must be >= 1 (products <= 2^28) and the mode one of "
                 "fwd gelu acc dx\n");
    return 2;
  }
  const char* rot_env = std::getenv("ROT_MB");
  const double rot = (rot_env ? std::atof(rot_env) : 64.0) * 1e6;
  init_runtime();
  set_threads(2);
  const bool dx = mode == "dx";
  const int nw = std::max(4, static_cast<int>(rot / (4.0 * static_cast<double>(N * K))));
  std::vector<ops::PackedWeight> packed(static_cast<size_t>(nw));
  std::mt19937 g(1);
  std::vector<float> w(static_cast<size_t>(N * K)), b(static_cast<size_t>(N), 0.1f);
  for (auto& p : packed) {
    for (auto& x : w) x = static_cast<float>(g() % 1000) * 1e-3f;
    p.pack(w.data(), N, K, dx);
  }
  const size_t io = static_cast<size_t>(M * std::max(N, K));
  std::vector<float> x(io, 0.5f), y(io, 0.0f);
  const double flop = 2.0 * static_cast<double>(M * N * K);
  const int calls = std::max(2, static_cast<int>(0.02 * 200e9 / flop));  // ~20 ms at 200 GFLOP/s
  const char* names[2] = {"oneDNN", "panel_gemm"};
  std::vector<double> rate[2];
  for (int round = 0; round < 30; ++round)
    for (int v = 0; v < 2; ++v) {
      setenv("POSFORMER_PANEL_GEMM", v ? "1" : "0", 1);
      const auto t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < calls; ++i) {
        const ops::PackedWeight& pw = packed[static_cast<size_t>(i % nw)];
        if (dx)
          ops::linear_dx_packed(x.data(), N, pw, 0.0f, y.data(), K, M);
        else
          ops::linear_packed(x.data(), pw, b.data(), y.data(), M,
                             {mode == "gelu" ? ops::Act::Gelu : ops::Act::Identity, mode == "acc"});
      }
      const std::chrono::duration<double> s = std::chrono::steady_clock::now() - t0;
      rate[v].push_back(flop * calls / s.count() * 1e-9);
    }
  if (M > 256)  // kPanelMaxRows in src/ops/packed_linear.cpp
    std::printf("M > 256: both rows run oneDNN's matmul (the pair shows the host's noise)\n");
  for (int v = 0; v < 2; ++v) {
    std::sort(rate[v].begin(), rate[v].end());
    std::printf("%ld x %ld x %ld %-4s %-10s median %.1f best %.1f GFLOP/s (weights %d x %.1f MB)\n",
                static_cast<long>(M), static_cast<long>(N), static_cast<long>(K), mode.c_str(),
                names[v], rate[v][rate[v].size() / 2], rate[v].back(), nw,
                4e-6 * static_cast<double>(N * K));
  }
}
