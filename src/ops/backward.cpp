// Backward passes of the element-wise and normalisation ops, and the cross-entropy loss.
// Plain loops (the compiler vectorises them); statistics in double for accuracy.
#include <omp.h>

#include <cmath>
#include <vector>

#include "posformer/core/error.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/loss.h"
#include "posformer/ops/norm.h"

namespace posformer::ops {

namespace {
int pick_threads(int64_t work) {
  return (work > (1 << 15) && !omp_in_parallel()) ? omp_get_max_threads() : 1;
}
}  // namespace

void layernorm_backward(const float* x, const float* g, const float* dy, float* dx, float* dg,
                        float* db, int64_t rows, int64_t cols, float eps) {
  const int nt = pick_threads(rows * cols);
  std::vector<std::vector<double>> dg_t(nt, std::vector<double>(cols)), db_t(nt, std::vector<double>(cols));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int tid = omp_get_thread_num();
    const float* xr = x + r * cols;
    const float* dyr = dy + r * cols;
    double mean = 0, var = 0;
    for (int64_t c = 0; c < cols; ++c) mean += xr[c];
    mean /= cols;
    for (int64_t c = 0; c < cols; ++c) var += (xr[c] - mean) * (xr[c] - mean);
    var /= cols;
    const double rstd = 1.0 / std::sqrt(var + eps);
    double m1 = 0, m2 = 0;  // mean(g dy), mean(g dy xhat)
    for (int64_t c = 0; c < cols; ++c) {
      const double xh = (xr[c] - mean) * rstd, gdy = double(g[c]) * dyr[c];
      m1 += gdy;
      m2 += gdy * xh;
      dg_t[tid][c] += dyr[c] * xh;
      db_t[tid][c] += dyr[c];
    }
    m1 /= cols;
    m2 /= cols;
    float* dxr = dx + r * cols;
    for (int64_t c = 0; c < cols; ++c) {
      const double xh = (xr[c] - mean) * rstd;
      dxr[c] = static_cast<float>(rstd * (double(g[c]) * dyr[c] - m1 - xh * m2));
    }
  }
  for (int t = 0; t < nt; ++t)
    for (int64_t c = 0; c < cols; ++c) {
      dg[c] += static_cast<float>(dg_t[t][c]);
      if (db) db[c] += static_cast<float>(db_t[t][c]);
    }
}

void rmsnorm_backward(const float* x, const float* g, const float* dy, float* dx, float* dg,
                      int64_t rows, int64_t cols, float eps) {
  const int nt = pick_threads(rows * cols);
  std::vector<std::vector<double>> dg_t(nt, std::vector<double>(cols));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const int tid = omp_get_thread_num();
    const float* xr = x + r * cols;
    const float* dyr = dy + r * cols;
    double ms = 0;
    for (int64_t c = 0; c < cols; ++c) ms += double(xr[c]) * xr[c];
    const double rstd = 1.0 / std::sqrt(ms / cols + eps);
    double m2 = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const double xh = xr[c] * rstd;
      m2 += double(g[c]) * dyr[c] * xh;
      dg_t[tid][c] += dyr[c] * xh;
    }
    m2 /= cols;
    float* dxr = dx + r * cols;
    for (int64_t c = 0; c < cols; ++c)
      dxr[c] = static_cast<float>(rstd * (double(g[c]) * dyr[c] - xr[c] * rstd * m2));
  }
  for (int t = 0; t < nt; ++t)
    for (int64_t c = 0; c < cols; ++c) dg[c] += static_cast<float>(dg_t[t][c]);
}

namespace {
inline float act_grad(Act act, float x) {
  switch (act) {
    case Act::Identity: return 1.0f;
    case Act::Relu: return x > 0.0f ? 1.0f : 0.0f;
    case Act::Gelu: {  // Phi(x) + x phi(x)
      const double xd = x;
      const double cdf = 0.5 * (1.0 + std::erf(xd * 0.7071067811865476));
      const double pdf = 0.3989422804014327 * std::exp(-0.5 * xd * xd);
      return static_cast<float>(cdf + xd * pdf);
    }
    case Act::GeluTanh: {
      const double xd = x, k = 0.7978845608028654, u = k * (xd + 0.044715 * xd * xd * xd);
      const double t = std::tanh(u);
      return static_cast<float>(0.5 * (1.0 + t) +
                                0.5 * xd * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * xd * xd));
    }
    case Act::Silu: {
      const double s = 1.0 / (1.0 + std::exp(-double(x)));
      return static_cast<float>(s * (1.0 + x * (1.0 - s)));
    }
  }
  return 1.0f;
}
}  // namespace

void activation_backward(Act act, const float* x, const float* dy, float* dx, int64_t n) {
#pragma omp parallel for num_threads(pick_threads(n)) schedule(static)
  for (int64_t i = 0; i < n; ++i) dx[i] = dy[i] * act_grad(act, x[i]);
}

void swiglu_backward(const float* a, const float* b, const float* dy, float* da, float* db,
                     int64_t n) {
#pragma omp parallel for num_threads(pick_threads(n)) schedule(static)
  for (int64_t i = 0; i < n; ++i) {
    const double s = 1.0 / (1.0 + std::exp(-double(a[i])));
    const double silu = a[i] * s, g = dy[i];
    const double dsilu = s * (1.0 + a[i] * (1.0 - s));
    const float bi = b[i];
    da[i] = static_cast<float>(g * bi * dsilu);
    db[i] = static_cast<float>(g * silu);
  }
}

void bias_grad(const float* dy, float* db, int64_t rows, int64_t cols) {
  std::vector<double> acc(static_cast<size_t>(cols), 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) acc[c] += dy[r * cols + c];
  for (int64_t c = 0; c < cols; ++c) db[c] += static_cast<float>(acc[c]);
}

CrossEntropy cross_entropy(const float* logits, const int32_t* targets, int64_t rows,
                           int64_t vocab, float* dlogits, float grad_scale) {
  CrossEntropy ce;
  for (int64_t r = 0; r < rows; ++r) {
    PF_CHECK(targets[r] < vocab, "[cross_entropy] target ", targets[r], " at row ", r,
             " is outside the vocabulary [0, ", vocab, ")");
    if (targets[r] >= 0) ++ce.count;
  }
  const double inv = ce.count ? 1.0 / static_cast<double>(ce.count) : 0.0;
  double total = 0;
#pragma omp parallel for num_threads(pick_threads(rows * vocab)) reduction(+ : total) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float* z = logits + r * vocab;
    float* dz = dlogits ? dlogits + r * vocab : nullptr;
    if (targets[r] < 0) {
      if (dz)
        for (int64_t c = 0; c < vocab; ++c) dz[c] = 0.0f;
      continue;
    }
    double mx = z[0];
    for (int64_t c = 1; c < vocab; ++c) mx = std::max(mx, double(z[c]));
    double sum = 0;
    for (int64_t c = 0; c < vocab; ++c) sum += std::exp(z[c] - mx);
    const double lse = mx + std::log(sum);
    total += lse - z[targets[r]];
    if (dz) {
      const double k = grad_scale * inv;
      for (int64_t c = 0; c < vocab; ++c)
        dz[c] = static_cast<float>(k * (std::exp(z[c] - lse) - (c == targets[r] ? 1.0 : 0.0)));
    }
  }
  ce.loss = total * inv;
  return ce;
}

}  // namespace posformer::ops
