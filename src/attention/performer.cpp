// Performer's FAVOR+ feature map and the draw of its random features (feature_map.h).
#include <cmath>
#include <vector>

#include "feature_map.h"
#include "posformer/core/error.h"
#include "posformer/core/random.h"
#include "posformer/ops/matmul.h"

namespace posformer {

namespace {

uint64_t fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Standard normals by Box-Muller from one splitmix64 stream.
struct Normals {
  uint64_t state;
  bool have = false;
  double spare = 0;
  double next() {
    if (have) {
      have = false;
      return spare;
    }
    const double u1 = (static_cast<double>(splitmix64(state) >> 11) + 1.0) * 0x1.0p-53;
    const double u2 = uniform01(state);
    const double r = std::sqrt(-2.0 * std::log(u1)), a = 6.283185307179586 * u2;
    spare = r * std::sin(a), have = true;
    return r * std::cos(a);
  }
};

class FavorFeatures final : public FeatureMap {
 public:
  explicit FavorFeatures(int64_t M) : M_(M) {}
  int64_t features(int64_t) const override { return M_; }

  // U = X' W^T by gemm, then per row the exponent with its stabiliser
  void forward(const float* x, int64_t ld, int64_t n, int64_t D, const MapArgs& m,
               float* out) const override {
    PF_CHECK(m.W, "[attention] performer features without W");
    const float s = static_cast<float>(std::pow(double(D), -0.25));
    const float norm = static_cast<float>(1.0 / std::sqrt(double(M_)));
    if (n == 0) return;
    ops::gemm(false, true, n, M_, D, s, x, ld, m.W, D, 0.0f, out, M_);
    for (int64_t r = 0; r < n; ++r) {
      float* u = out + r * M_;
      float c;
      if (m.query) {  // c_q + |x'|^2/2 = max_m u_m
        c = u[0];
        for (int64_t j = 1; j < M_; ++j) c = std::max(c, u[j]);
      } else {
        double x2 = 0;
        for (int64_t i = 0; i < D; ++i) x2 += double(x[r * ld + i]) * x[r * ld + i];
        c = static_cast<float>(x2 * s * s / 2) + m.key_shift;
      }
      for (int64_t j = 0; j < M_; ++j) u[j] = std::exp(u[j] - c) * norm;
    }
  }

  // dphi_m/dx = phi_m (w_m - x') D^(-1/4) (c constant): dx = s (G W - rowsum(G) x'), G = g * phi
  void backward(const float* x, int64_t ld, int64_t n, int64_t D, const MapArgs& m, const float* g,
                float* dx, int64_t lddx) const override {
    if (n == 0) return;
    const float s = static_cast<float>(std::pow(double(D), -0.25));
    std::vector<float> G(static_cast<size_t>(n * M_));
    forward(x, ld, n, D, m, G.data());
    std::vector<float> sum(static_cast<size_t>(n), 0.0f);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t j = 0; j < M_; ++j) {
        G[r * M_ + j] *= g[r * M_ + j];
        sum[r] += G[r * M_ + j];
      }
    ops::gemm(false, false, n, D, M_, s, G.data(), M_, m.W, D, 0.0f, dx, lddx);
    for (int64_t r = 0; r < n; ++r)
      for (int64_t i = 0; i < D; ++i) dx[r * lddx + i] -= s * sum[r] * (s * x[r * ld + i]);
  }

 private:
  int64_t M_;
};

}  // namespace

std::unique_ptr<FeatureMap> make_favor_features(int64_t n_features) {
  return std::make_unique<FavorFeatures>(n_features);
}

Tensor draw_favor_features(int64_t M, int64_t D, uint64_t seed, const std::string& stream,
                           uint64_t draw) {
  PF_CHECK(M >= 1 && D >= 1, "[attention] performer: bad feature shape ", M, " x ", D);
  Normals nd{seed * 0x9e3779b97f4a7c15ull ^ fnv1a(stream) ^ (draw * 0xd1b54a32d192ed03ull)};
  Tensor W({M, D}, DType::F32);
  float* w = W.data<float>();
  std::vector<double> Q(static_cast<size_t>(D * D));
  for (int64_t b0 = 0; b0 < M; b0 += D) {
    for (double& e : Q) e = nd.next();
    for (int64_t i = 0; i < D; ++i) {  // modified Gram-Schmidt over the rows
      double* qi = Q.data() + i * D;
      for (int64_t j = 0; j < i; ++j) {
        const double* qj = Q.data() + j * D;
        double d = 0;
        for (int64_t c = 0; c < D; ++c) d += qi[c] * qj[c];
        for (int64_t c = 0; c < D; ++c) qi[c] -= d * qj[c];
      }
      double nn = 0;
      for (int64_t c = 0; c < D; ++c) nn += qi[c] * qi[c];
      nn = std::sqrt(nn);
      for (int64_t c = 0; c < D; ++c) qi[c] /= nn;
    }
    for (int64_t i = 0; i < D && b0 + i < M; ++i) {
      double chi = 0;  // the norm of a fresh Gaussian D-vector
      for (int64_t c = 0; c < D; ++c) {
        const double e = nd.next();
        chi += e * e;
      }
      chi = std::sqrt(chi);
      for (int64_t c = 0; c < D; ++c) w[(b0 + i) * D + c] = static_cast<float>(chi * Q[i * D + c]);
    }
  }
  return W;
}

float favor_key_shift(const float* W, int64_t M, int64_t D) {
  double best = 0;
  for (int64_t m = 0; m < M; ++m) {
    double s = 0;
    for (int64_t c = 0; c < D; ++c) s += double(W[m * D + c]) * W[m * D + c];
    best = std::max(best, s / 2);
  }
  return static_cast<float>(best);
}

}  // namespace posformer
