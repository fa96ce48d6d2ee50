// Times the fused attention forward's online-softmax step (flash_online_softmax,
// attention_kernels.h) on one 128 x 512 score tile (the kernel's kBr x kBc, 256 KB, in L2) with
// D = 64, in natural units (exp, the path with score hooks) and in log2 units (2^, the fp32
// forward without hooks), alternating the two within one process: per form, the median and
// best of 21 batches of 40 calls, in microseconds per tile (the tile is refilled from a saved
// copy before each call; that copy's time is timed alone and subtracted). Built against a
// release build's library (bench/RESULTS.md section 3, 2026-12-03, has the run):
//   g++ -O2 -std=c++20 -fopenmp -Iinclude -Isrc bench/tools/flash_softmax_time.cpp \
//       -o /tmp/flash_softmax_time build/libposformer.a -ldnnl -lhwy -lz -lpng
//   /tmp/flash_softmax_time
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "kernels/cpu/attention_kernels.h"

namespace {
constexpr int64_t kRows = 128, kCols = 512, kD = 64, kCalls = 40;

struct Tile {
  std::vector<float> S0, S, m, l, O;
  std::vector<int64_t> vis;
  explicit Tile(std::mt19937& g)
      : S0(kRows * kCols), S(kRows * kCols), m(kRows), l(kRows), O(kRows * kD), vis(kRows, kCols) {
    std::normal_distribution<float> nd(0.0f, 3.0f);
    for (float& x : S0) x = nd(g);
  }
  // one key block after a first one: m finite, so the rescale branch is the real one's
  void run(bool base2, bool softmax) {
    std::copy(S0.begin(), S0.end(), S.begin());
    if (!softmax) return;
    std::fill(m.begin(), m.end(), 4.0f);
    std::fill(l.begin(), l.end(), 100.0f);
    posformer::kernels::cpu::flash_online_softmax(S.data(), kCols, kRows, kCols, vis.data(),
                                                  m.data(), l.data(), O.data(), kD, kD, nullptr, 0,
                                                  base2);
  }
};

double batch_us(Tile& t, int form) {  // form 0: copy only, 1: exp, 2: 2^
  const auto t0 = std::chrono::steady_clock::now();
  for (int64_t c = 0; c < kCalls; ++c) t.run(form == 2, form != 0);
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
         kCalls;
}
}  // namespace

int main() {
  std::mt19937 g(1);
  Tile t(g);
  std::vector<double> us[3];
  for (int batch = 0; batch < 21; ++batch)
    for (int form = 0; form < 3; ++form) us[form].push_back(batch_us(t, form));
  for (auto& v : us) std::sort(v.begin(), v.end());
  const double copy = us[0][us[0].size() / 2];
  std::printf("tile copy alone: median %.1f us (subtracted below)\n", copy);
  const char* names[3] = {"", "exp (natural units)", "2^ (log2 units)"};
  for (int form = 1; form < 3; ++form)
    std::printf("online softmax 128 x 512, %s: median %.1f us, best %.1f us per tile\n",
                names[form], us[form][us[form].size() / 2] - copy,
                us[form].front() - us[0].front());
}
