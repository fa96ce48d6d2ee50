// Times flash_bf16_pack_panels (K into the bf16 attention forward's panels, flash_bf16.h) on
// 4096 keys x D 64 read from a fused q/k/v buffer (row stride 3 x 768, one head's 64 columns,
// the head rotating through 12), the median of 15 batches of 200 calls, in microseconds per call,
// and a checksum of the packed bits (equal across builds that pack the same way). Built against a
// release build's library (bench/RESULTS.md section 3, 2026-12-03, has the before / after run):
//   g++ -O2 -std=c++20 -fopenmp -Iinclude -Isrc bench/tools/bf16_pack_time.cpp \
//       -o /tmp/bf16_pack_time build/libposformer.a -ldnnl -lhwy -lz -lpng
//   /tmp/bf16_pack_time
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "kernels/cpu/flash_bf16.h"

int main() {
  using posformer::kernels::cpu::flash_bf16_pack_panels;
  constexpr int64_t n = 4096, D = 64, ld = 3 * 768, heads = 12, calls = 200;
  std::vector<float> src(static_cast<size_t>(n * ld));
  std::mt19937 g(1);
  std::normal_distribution<float> nd;
  for (float& x : src) x = nd(g);
  std::vector<uint16_t> dst(static_cast<size_t>(n * D));
  std::vector<double> us;
  for (int batch = 0; batch < 15; ++batch) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int64_t c = 0; c < calls; ++c)
      flash_bf16_pack_panels(src.data() + (c % heads) * D, ld, n, D, dst.data());
    us.push_back(
        std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() /
        calls);
  }
  std::sort(us.begin(), us.end());
  uint64_t sum = 0;
  for (uint16_t v : dst) sum = sum * 1000003u + v;
  std::printf("flash_bf16_pack_panels 4096 x 64: median %.1f us, best %.1f us; checksum %016llx\n",
              us[us.size() / 2], us.front(), static_cast<unsigned long long>(sum));
}
