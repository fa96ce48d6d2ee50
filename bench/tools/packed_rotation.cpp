// posformer's packed linear (ops::linear_packed) on BERT-base's T = 128 shapes, y[128, N] =
// x W^T + b: the same weight on every call (it stays in the cores' L2 caches, as in the per-shape
// rows of bench/run.sh) against a rotation through ~64 MB of weights (each call's weight comes
// from L3, as inside the 12-layer forward), each through panel_gemm (the default on AVX-512)
// and oneDNN's matmul (POSFORMER_PANEL_GEMM=0), alternating. bench/RESULTS.md section 1. Built
// against the library of a release build:
//   g++ -O2 -std=c++20 -fopenmp -Iinclude bench/tools/packed_rotation.cpp -o /tmp/packed_rotation \
//       build/libposformer.a -ldnnl -lhwy -lz -lpng
//   GOMP_SPINCOUNT=100000 /tmp/packed_rotation
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <utility>
#include <vector>

#include "posformer/core/runtime.h"
#include "posformer/ops/packed_linear.h"

// Usage: packed_rotation [M] (rows, default 128: BERT-base at T = 128)
int main(int argc, char** argv) {
  using namespace posformer;
  init_runtime();
  set_threads(2);
  const int64_t M = argc > 1 ? std::atoll(argv[1]) : 128;
  if (M < 1 || M > 65536) {
    std::fprintf(stderr, "packed_rotation: M must be 1..65536, got '%s'\n", argv[1]);
    return 2;
  }
  std::vector<std::pair<int64_t, int64_t>> shapes = {{768, 768}, {3072, 768}, {768, 3072}};
  if (argc > 3) shapes = {{std::atoll(argv[2]), std::atoll(argv[3])}};
  for (auto [N, K] : shapes) {
    const int nw = std::max(4, static_cast<int>(64e6 / (4.0 * static_cast<double>(N * K))));
    std::vector<ops::PackedWeight> packed(static_cast<size_t>(nw));
    std::mt19937 g(1);
    std::vector<float> w(static_cast<size_t>(N * K)), b(static_cast<size_t>(N), 0.1f);
    for (auto& p : packed) {
      for (auto& x : w) x = static_cast<float>(g() % 1000) * 1e-3f;
      p.pack(w.data(), N, K, false);
    }
    std::vector<float> x(static_cast<size_t>(M * K), 0.5f), y(static_cast<size_t>(M * N));
    for (int pass = 0; pass < 8; ++pass) {
      const int rotate = (pass / 2) % 2, panel = pass % 2;
      setenv("POSFORMER_PANEL_GEMM", panel ? "1" : "0", 1);
      double best = 1e9;
      for (int rep = 0; rep < 7; ++rep) {
        const int calls = 2 * nw;
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < calls; ++i)
          ops::linear_packed(x.data(), packed[static_cast<size_t>(rotate ? i % nw : 0)], b.data(),
                             y.data(), M);
        const std::chrono::duration<double> s = std::chrono::steady_clock::now() - t0;
        best = std::min(best, s.count() / calls);
      }
      std::printf(
          "%ld x %ld x %ld, %s, %s: %.1f GFLOP/s\n", static_cast<long>(M), static_cast<long>(N),
          static_cast<long>(K), rotate ? "weights rotating (L3)" : "one weight (L2)   ",
          panel ? "panel_gemm" : "oneDNN    ", 2.0 * static_cast<double>(M * N * K) / best * 1e-9);
    }
  }
}
