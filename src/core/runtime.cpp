#include "posformer/core/runtime.h"

#include <malloc.h>
#include <omp.h>

#include <thread>

#include "posformer/core/error.h"

namespace posformer {

void init_runtime() {
  static bool done = false;
  if (done) return;
  done = true;
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 0x7fffffff);
}

void set_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  omp_set_num_threads(n);
}

int num_threads() {
  return omp_get_max_threads();
}

std::string cpu_features() {
  std::string s;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) s += "SSE4.2 ";
  if (__builtin_cpu_supports("avx2")) s += "AVX2 ";
  if (__builtin_cpu_supports("fma")) s += "FMA ";
  if (__builtin_cpu_supports("avx512f")) s += "AVX512F ";
  if (__builtin_cpu_supports("avx512bf16")) s += "AVX512_BF16 ";
  if (!s.empty()) s.pop_back();
  return s;
}

}  // namespace posformer
