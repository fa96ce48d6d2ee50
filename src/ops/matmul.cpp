// GEMM / linear: oneDNN sgemm fast path and a plain-loop reference.
#include "posformer/ops/matmul.h"

#include <omp.h>
#include <oneapi/dnnl/dnnl.h>

#include <algorithm>
#include <atomic>
#include <chrono>

#include "../kernels/cpu/kernels.h"
#include "matmul_profile.h"
#include "posformer/core/error.h"

namespace posformer::ops {

namespace {

void check_gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, const float* A,
                int64_t lda, const float* B, int64_t ldb, const float* C, int64_t ldc) {
  PF_CHECK(M >= 0 && N >= 0 && K >= 0, "[gemm] sizes must be >= 0, got M=", M, " N=", N, " K=", K);
  const int64_t a_cols = trans_a ? M : K, b_cols = trans_b ? K : N;
  PF_CHECK(lda >= std::max<int64_t>(1, a_cols),
           "[gemm] lda must be >= ", std::max<int64_t>(1, a_cols), ", got ", lda);
  PF_CHECK(ldb >= std::max<int64_t>(1, b_cols),
           "[gemm] ldb must be >= ", std::max<int64_t>(1, b_cols), ", got ", ldb);
  PF_CHECK(ldc >= std::max<int64_t>(1, N), "[gemm] ldc must be >= ", std::max<int64_t>(1, N),
           ", got ", ldc);
  PF_CHECK(M * N == 0 || C, "[gemm] C is null");
  PF_CHECK(M * N * K == 0 || (A && B), "[gemm] A or B is null");
}

void check_linear(const float* x, const float* W, const float* y, int64_t M, int64_t N, int64_t K) {
  PF_CHECK(M >= 0 && N >= 0 && K >= 0, "[linear] sizes must be >= 0, got M=", M, " N=", N,
           " K=", K);
  PF_CHECK(M * N == 0 || y, "[linear] y is null");
  PF_CHECK(M * N * K == 0 || (x && W), "[linear] x or W is null");
}

// C = beta * C for K == 0 (beta == 0 clears, so NaN/garbage in C never leaks through).
void scale_c(int64_t M, int64_t N, float beta, float* C, int64_t ldc) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
}

// ---- profiler (see matmul.h)
std::atomic<bool> g_prof_on{false};
std::atomic<int64_t> g_calls{0}, g_inner_calls{0};
std::atomic<double> g_flops{0}, g_seconds{0}, g_inner_flops{0}, g_inner_seconds{0};

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void record(int64_t M, int64_t N, int64_t K, double dt) {
  const double fl = 2.0 * double(M) * double(N) * double(K);
  if (omp_in_parallel()) {
    g_inner_calls.fetch_add(1, std::memory_order_relaxed);
    g_inner_flops.fetch_add(fl, std::memory_order_relaxed);
    g_inner_seconds.fetch_add(dt, std::memory_order_relaxed);
  } else {
    g_calls.fetch_add(1, std::memory_order_relaxed);
    g_flops.fetch_add(fl, std::memory_order_relaxed);
    g_seconds.fetch_add(dt, std::memory_order_relaxed);
  }
}

// Runs f() (a dnnl_sgemm call); when profiling, records its time and 2*M*N*K FLOPs.
template <class F>
dnnl_status_t timed_sgemm(int64_t M, int64_t N, int64_t K, const F& f) {
  if (!g_prof_on.load(std::memory_order_relaxed)) return f();
  const double t0 = now_s();
  const dnnl_status_t st = f();
  record(M, N, K, now_s() - t0);
  return st;
}

}  // namespace

namespace detail {
bool matmul_profiling() {
  return g_prof_on.load(std::memory_order_relaxed);
}
void matmul_profile_record(int64_t M, int64_t N, int64_t K, double seconds) {
  record(M, N, K, seconds);
}
double matmul_now_s() {
  return now_s();
}
}  // namespace detail

void matmul_profile_enable(bool on) {
  g_prof_on.store(on, std::memory_order_relaxed);
}

MatmulProfile matmul_profile_read_and_reset() {
  MatmulProfile p;
  p.calls = g_calls.exchange(0);
  p.flops = g_flops.exchange(0);
  p.seconds = g_seconds.exchange(0);
  p.inner_calls = g_inner_calls.exchange(0);
  p.inner_flops = g_inner_flops.exchange(0);
  p.inner_thread_seconds = g_inner_seconds.exchange(0);
  return p;
}

namespace ref {

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  check_gemm(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double acc = 0.0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = trans_a ? A[k * lda + i] : A[i * lda + k];
        const double b = trans_b ? B[j * ldb + k] : B[k * ldb + j];
        acc += a * b;
      }
      const double c =
          beta == 0.0f ? 0.0 : double(beta) * C[i * ldc + j];  // BLAS: beta 0 ignores C
      C[i * ldc + j] = static_cast<float>(double(alpha) * acc + c);
    }
}

void linear(const float* x, const float* W, const float* b, float* y, int64_t M, int64_t N,
            int64_t K) {
  check_linear(x, W, y, M, N, K);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double acc = b ? double(b[j]) : 0.0;
      for (int64_t k = 0; k < K; ++k) acc += double(x[i * K + k]) * W[j * K + k];
      y[i * N + j] = static_cast<float>(acc);
    }
}

}  // namespace ref

void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  check_gemm(trans_a, trans_b, M, N, K, A, lda, B, ldb, C, ldc);
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) return scale_c(M, N, beta, C, ldc);
  const dnnl_status_t st = timed_sgemm(M, N, K, [&] {
    return dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb,
                      beta, C, ldc);
  });
  PF_CHECK(st == dnnl_success, "[gemm] dnnl_sgemm failed with status ", static_cast<int>(st),
           " (M=", M, " N=", N, " K=", K, ")");
}

void linear(const float* x, const float* W, const float* b, float* y, int64_t M, int64_t N,
            int64_t K) {
  check_linear(x, W, y, M, N, K);
  if (M == 0 || N == 0) return;
  if (K == 0) {
    scale_c(M, N, 0.0f, y, N);
  } else {
    const dnnl_status_t st = timed_sgemm(
        M, N, K, [&] { return dnnl_sgemm('N', 'T', M, N, K, 1.0f, x, K, W, K, 0.0f, y, N); });
    PF_CHECK(st == dnnl_success, "[linear] dnnl_sgemm failed with status ", static_cast<int>(st),
             " (M=", M, " N=", N, " K=", K, ")");
  }
  if (b) kernels::cpu::act_rows(Act::Identity, y, b, y, M, N);
}

}  // namespace posformer::ops
