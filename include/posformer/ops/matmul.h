// Matrix multiply, fp32, row-major. The fast path is oneDNN's dnnl_sgemm; ref:: is a plain loop.
//
//   gemm:   C[M,N] = alpha * op(A) op(B) + beta * C,  op(X) = X or X^T
//           A is [M,K] (lda >= K) or, when trans_a, [K,M] (lda >= M); same for B with [K,N]/[N,K].
//   linear: y[M,N] = x[M,K] W[N,K]^T + b[N]      (PyTorch nn.Linear layout, b may be null)
//
// Backward of linear (for the training issue): dx = dy W, dW += dy^T x, db += sum_rows dy.
#pragma once
#include <cstdint>

namespace posformer::ops {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void linear(const float* x, const float* W, const float* b, float* y, int64_t M, int64_t N,
            int64_t K);

namespace ref {
void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void linear(const float* x, const float* W, const float* b, float* y, int64_t M, int64_t N,
            int64_t K);
}  // namespace ref

// Matmul profiler (bench/): when enabled, gemm and linear add their FLOPs (2*M*N*K) and the
// time of the dnnl_sgemm call (bias add excluded) to process-wide atomic counters.
//  - calls made outside an OpenMP parallel region (the model's linears, which oneDNN
//    parallelises itself): wall seconds, so `seconds` is directly a share of a forward's time;
//  - calls made inside a parallel region (per-head attention gemms, one thread each):
//    counted separately, with seconds summed over threads (divide by the team size for an
//    estimate of wall time).
// Disabled (the default) it costs one relaxed atomic load per call.
struct MatmulProfile {
  int64_t calls = 0;
  double flops = 0, seconds = 0;
  int64_t inner_calls = 0;
  double inner_flops = 0, inner_thread_seconds = 0;
};
void matmul_profile_enable(bool on);
MatmulProfile matmul_profile_read_and_reset();

}  // namespace posformer::ops
