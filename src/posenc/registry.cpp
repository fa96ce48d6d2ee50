#include <cmath>

#include "posenc_impl.h"

namespace posformer {

float PositionEncoding::default_scale(int64_t D) const {
  return static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
}

std::unique_ptr<PositionEncoding> make_position_encoding(const PositionConfig& cfg,
                                                         const StackGeom& geom) {
  const std::string& t = cfg.type;
  if (t == "none") return std::make_unique<NoPosition>();
  if (t == "learned") return std::make_unique<LearnedPosition>(geom);
  if (t == "sinusoidal") return std::make_unique<SinusoidalPosition>(geom, false);
  if (t == "sinusoidal_half") return std::make_unique<SinusoidalPosition>(geom, true);
  if (t == "rope") return std::make_unique<RopePosition>(cfg, geom);
  if (t == "alibi") return std::make_unique<AlibiPosition>(geom);
  if (t == "t5") return std::make_unique<T5Position>(cfg, geom);
  if (t == "shaw") return std::make_unique<ShawPosition>(cfg, geom);
  if (t == "xl") return std::make_unique<XlPosition>(geom);
  if (t == "deberta") return std::make_unique<DebertaPosition>(cfg, geom);
  throw Error(str("[position] unknown position type \"", t, "\""));
}

std::vector<double> alibi_slopes(int64_t H) {
  PF_CHECK(H >= 1, "[alibi] number of heads must be >= 1, got ", H);
  int64_t n = 1;
  while (n * 2 <= H) n *= 2;  // n = 2^floor(log2 H)
  std::vector<double> m(H);
  for (int64_t h = 0; h < H; ++h) {
    if (h < n)
      m[h] = std::pow(2.0, -8.0 * static_cast<double>(h + 1) / static_cast<double>(n));
    else
      m[h] = std::pow(2.0, -4.0 * static_cast<double>(2 * (h - n) + 1) / static_cast<double>(n));
  }
  return m;
}

int64_t t5_bucket(int64_t rel, bool bidirectional, int64_t num_buckets, int64_t max_distance) {
  int64_t nb = num_buckets, offset = 0, n;
  if (bidirectional) {
    nb = num_buckets / 2;
    offset = rel > 0 ? nb : 0;
    n = rel < 0 ? -rel : rel;
  } else {
    n = rel < 0 ? -rel : 0;
  }
  const int64_t max_exact = nb / 2;
  if (n < max_exact) return offset + n;
  double v = std::log(static_cast<double>(n) / max_exact) /
             std::log(static_cast<double>(max_distance) / max_exact) *
             static_cast<double>(nb - max_exact);
  int64_t large = max_exact + static_cast<int64_t>(std::floor(v));
  return offset + std::min(large, nb - 1);
}

void sinusoid_rows(double pos0, int64_t T, int64_t d, bool half, float* out) {
  const int64_t n = d / 2;
  for (int64_t t = 0; t < T; ++t) {
    const double k = pos0 + static_cast<double>(t);
    float* row = out + t * d;
    for (int64_t i = 0; i < n; ++i) {
      const double w = std::pow(10000.0, -2.0 * static_cast<double>(i) / static_cast<double>(d));
      const double s = std::sin(k * w), c = std::cos(k * w);
      if (half) {
        row[i] = static_cast<float>(s);
        row[n + i] = static_cast<float>(c);
      } else {
        row[2 * i] = static_cast<float>(s);
        row[2 * i + 1] = static_cast<float>(c);
      }
    }
  }
}

}  // namespace posformer
