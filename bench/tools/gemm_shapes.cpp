// dnnl_sgemm rates on the training step's gemm shapes (bench/RESULTS.md, section 2), on 1 and 2
// OpenMP threads, plus the weight-gradient shapes with a padded row stride. Standalone:
//   g++ -O2 -fopenmp bench/tools/gemm_shapes.cpp -o /tmp/gemm_shapes -ldnnl
//   OMP_WAIT_POLICY=PASSIVE /tmp/gemm_shapes
#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <chrono>
#include <cstdio>
#include <vector>

namespace {
// Best of 17 timed calls (after 3 warm-up calls) of C[M,N] = op(A) op(B), GFLOP/s.
double rate(char ta, char tb, int M, int N, int K, int lda, int ldb) {
  const size_t a_rows = ta == 'N' ? M : K, b_rows = tb == 'N' ? K : N;
  std::vector<float> a(a_rows * lda, 0.5f), b(b_rows * ldb, 0.25f), c(size_t(M) * N, 0.f);
  double best = 1e30;
  for (int r = 0; r < 20; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    dnnl_sgemm(ta, tb, M, N, K, 1.f, a.data(), lda, b.data(), ldb, 0.f, c.data(), N);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (r >= 3 && dt < best) best = dt;
  }
  return 2.0 * M * N * K / best / 1e9;
}
}  // namespace

int main() {
  struct Shape {
    const char* what;
    char ta, tb;
    int M, N, K, pad;
  };
  const Shape shapes[] = {
      {"forward x W^T (q, k, v, o)", 'N', 'T', 2048, 256, 256, 0},
      {"forward w1", 'N', 'T', 2048, 1024, 256, 0},
      {"forward w2", 'N', 'T', 2048, 256, 1024, 0},
      {"input gradient dy W", 'N', 'N', 2048, 256, 256, 0},
      {"weight gradient 256 x 256", 'T', 'N', 256, 256, 2048, 0},
      {"weight gradient w1", 'T', 'N', 1024, 256, 2048, 0},
      {"weight gradient w2", 'T', 'N', 256, 1024, 2048, 0},
      {"weight gradient w1, lda padded +16", 'T', 'N', 1024, 256, 2048, 16},
      {"weight gradient w2, ldb padded +16", 'T', 'N', 256, 1024, 2048, 16},
      {"square", 'N', 'N', 2048, 2048, 2048, 0},
  };
  for (int threads : {1, 2}) {
    omp_set_num_threads(threads);
    for (const Shape& s : shapes) {
      int lda = s.ta == 'N' ? s.K : s.M, ldb = s.tb == 'N' ? s.N : s.K;
      if (s.pad && s.M > s.N) lda += s.pad;
      if (s.pad && s.M <= s.N) ldb += s.pad;
      std::printf("threads %d  %-36s %c%c  M %5d  N %5d  K %5d  lda %5d  ldb %5d  %6.1f GFLOP/s\n",
                  threads, s.what, s.ta, s.tb, s.M, s.N, s.K, lda, ldb,
                  rate(s.ta, s.tb, s.M, s.N, s.K, lda, ldb));
    }
  }
}
