// Regularisation (docs/training.md "Regularisation"): the counter-based dropout op, label
// smoothing in the cross-entropy kernel (every Highway target, against double), the model's
// dropout (training forward only, masks keyed by the seed), random erasing and batch mixing
// (mixup / CutMix: the images, the Beta sampler, the mixed-target loss) of image batches.
// The model's dropout and label smoothing are also checked against the PyTorch twins
// (test_grad_twin.py, test_vit_twin.py cases dropout_* / smooth_*).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <vector>

#include "hwy_targets.h"
#include "posformer/model/config.h"
#include "posformer/model/transformer.h"
#include "posformer/ops/dropout.h"
#include "posformer/ops/loss.h"
#include "posformer/train/images.h"
#include "posformer/train/trainer.h"
#include "test_util.h"

using namespace posformer;

namespace {

TEST(Dropout, MaskRateScaleAndDeterminism) {
  const int64_t n = 1 << 20;
  const std::vector<float> x = pf_test::randn(n, 3);
  for (float p : {0.1f, 0.25f, 0.5f, 0.9f}) {
    SCOPED_TRACE(p);
    std::vector<float> a = x, b = x, c = x;
    ops::dropout(a.data(), n, p, 77);
    ops::dropout(b.data(), n, p, 77);
    ops::dropout(c.data(), n, p, 78);
    EXPECT_EQ(a, b);  // a pure function of (key, i)
    int64_t zeros = 0, same_as_c = 0;
    const float scale = 1.0f / (1.0f - p);
    for (int64_t i = 0; i < n; ++i) {
      if (a[i] == 0.0f) {
        ++zeros;
      } else {
        ASSERT_EQ(a[i], x[i] * scale) << i;  // kept: scaled by 1/(1-p)
      }
      same_as_c += (a[i] == 0.0f) == (c[i] == 0.0f);
    }
    // dropped fraction within 5 standard deviations of p
    const double sd = std::sqrt(double(p) * (1 - p) / double(n));
    EXPECT_NEAR(double(zeros) / double(n), p, 5 * sd);
    // another key draws an independent mask: agreement p^2 + (1-p)^2
    const double agree = double(p) * p + (1.0 - p) * (1.0 - p);
    EXPECT_NEAR(double(same_as_c) / double(n), agree, 0.01);
  }
  std::vector<float> y = x;
  ops::dropout(y.data(), n, 0.0f, 5);
  EXPECT_EQ(y, x);  // p = 0: untouched
  pf_test::expect_error([&] { ops::dropout(y.data(), n, 1.0f, 5); }, {"dropout", "[0, 1)", "1"});
  pf_test::expect_error([&] { ops::dropout(y.data(), n, -0.1f, 5); }, {"[0, 1)"});
  EXPECT_NE(ops::dropout_key(1, 0), ops::dropout_key(1, 1));
  EXPECT_NE(ops::dropout_key(1, 0), ops::dropout_key(2, 0));
}

// The i-th element's mask is the documented hash of (i, key) (ops/dropout.h), on every SIMD
// target and in every tail, independent of where the call starts: a prefix sees the same mask.
TEST(Dropout, MatchesDocumentedHash) {
  const uint64_t key = 0x1234567890abcdefull;
  const float p = 0.3f;
  const auto fmix = [](uint32_t h) {
    h ^= h >> 16, h *= 0x85ebca6bu, h ^= h >> 13, h *= 0xc2b2ae35u;
    return h ^ (h >> 16);
  };
  const uint32_t thr = static_cast<uint32_t>(std::llround(0.3 * 16777216.0));
  pf_test::for_each_target([&] {
    for (int64_t n : {1, 7, 100, 1001, 200000}) {
      SCOPED_TRACE(n);
      std::vector<float> ones(n, 1.0f);
      ops::dropout(ones.data(), n, p, key);
      for (int64_t i = 0; i < n; ++i) {
        const uint32_t h =
            fmix(fmix(uint32_t(i) * 0x9e3779b9u ^ uint32_t(key)) ^ uint32_t(key >> 32));
        ASSERT_EQ(ones[i] != 0.0f, (h >> 8) >= thr) << i;
      }
    }
  });
}

// loss = lse - (1-eps) z_t - eps mean(z), dz = k (softmax - q), against double, every target,
// with ignored rows and vector tails.
TEST(LabelSmoothing, CrossEntropyAgainstDouble) {
  pf_test::for_each_target([] {
    for (int64_t V : {3, 17, 100}) {
      const int64_t rows = 9;
      std::vector<float> z = pf_test::randn(rows * V, uint32_t(V), 3.0f);
      std::vector<int32_t> tg(rows);
      for (int64_t r = 0; r < rows; ++r) tg[r] = r == 4 ? -1 : int32_t((r * 7) % V);
      for (float eps : {0.0f, 0.1f, 0.5f}) {
        SCOPED_TRACE(V * 10 + eps);
        double loss = 0;
        int64_t count = 0;
        std::vector<double> rdz(z.size(), 0.0);
        for (int64_t r = 0; r < rows; ++r) {
          if (tg[r] < 0) continue;
          ++count;
          double mx = -1e300, sum = 0, zsum = 0;
          for (int64_t c = 0; c < V; ++c) mx = std::max(mx, double(z[r * V + c]));
          for (int64_t c = 0; c < V; ++c) sum += std::exp(z[r * V + c] - mx), zsum += z[r * V + c];
          const double lse = mx + std::log(sum);
          loss += lse - (1 - eps) * z[r * V + tg[r]] - eps * zsum / double(V);
          for (int64_t c = 0; c < V; ++c)
            rdz[r * V + c] =
                std::exp(z[r * V + c] - lse) - eps / double(V) - (c == tg[r] ? 1.0 - eps : 0.0);
        }
        for (double& v : rdz) v *= 0.5 / double(count);
        std::vector<float> dz = z;  // in place
        ops::CrossEntropy ce =
            ops::cross_entropy(z.data(), tg.data(), rows, V, dz.data(), 0.5f, eps);
        EXPECT_EQ(ce.count, count);
        EXPECT_NEAR(ce.loss, loss / double(count), 1e-6 * std::abs(loss / double(count)));
        double err = 0, mag = 1e-3;
        for (size_t i = 0; i < z.size(); ++i)
          err = std::max(err, std::abs(dz[i] - rdz[i])), mag = std::max(mag, std::abs(rdz[i]));
        EXPECT_LT(err / mag, 2e-6);
        // each row's gradient sums to 0 (softmax and q are both distributions)
        for (int64_t r = 0; r < rows; ++r) {
          double s = 0;
          for (int64_t c = 0; c < V; ++c) s += dz[r * V + c];
          EXPECT_NEAR(s, 0.0, 1e-6);
        }
      }
    }
  });
  std::vector<float> z(4, 0.0f);
  std::vector<int32_t> t{1};
  pf_test::expect_error([&] { ops::cross_entropy(z.data(), t.data(), 1, 4, nullptr, 1.0f, 1.0f); },
                        {"label smoothing", "[0, 1)"});
}

nlohmann::json tiny(double dropout) {
  nlohmann::json j = {
      {"arch", "decoder"}, {"d_model", 16},    {"n_layers", 2}, {"n_heads", 2},
      {"d_ff", 24},        {"vocab_size", 40}, {"max_len", 32}, {"position", {{"type", "rope"}}}};
  if (dropout > 0) j["dropout"] = dropout;
  return j;
}

// Dropout acts in the training forward only, keyed by the seed; evaluation and generation see
// the model without it; p = 0 changes nothing; the config field round-trips and bad values
// are refused naming it.
TEST(Dropout, ModelTrainingForwardOnly) {
  const Transformer plain = Transformer::random_init(parse_config(tiny(0)), 3);
  const Transformer drop = Transformer::random_init(parse_config(tiny(0.3)), 3);
  const TokenBatch tok{{1, 5, 9, 2, 7, 3}, {4, 4, 8, 1, 0, 6}};
  const TokenBatch tgt{{5, 9, 2, 7, 3, 1}, {4, 8, 1, 0, 6, -1}};
  auto train = [&](const Transformer& m, uint64_t seed, float eps = 0.0f) {
    ParamStore g = m.zero_grads();
    ForwardOptions fo;
    fo.dropout_seed = seed, fo.label_smoothing = eps;
    const double l = m.loss_and_grad(tok, tgt, g, fo).loss;
    return std::make_pair(l, g.f32("decoder.layers.0.ffn.w1.weight")[3]);
  };
  const auto p0 = train(plain, 1), p1 = train(plain, 2);
  EXPECT_EQ(p0, p1);  // no dropout: the seed is irrelevant
  const auto d1 = train(drop, 1), d1b = train(drop, 1), d2 = train(drop, 2);
  EXPECT_EQ(d1, d1b);  // same seed, same masks
  EXPECT_NE(d1.first, d2.first);
  EXPECT_NE(d1.first, p0.first);
  // evaluation: no dropout
  EXPECT_EQ(drop.loss(tok, tgt).loss, plain.loss(tok, tgt).loss);
  const ForwardOutput a = drop.forward(tok), b = plain.forward(tok);
  EXPECT_TRUE(pf_test::bit_equal(a.logits, b.logits));
  // label smoothing raises the loss of a confident-or-not model by eps (mean(-log p) - nll)
  EXPECT_NE(train(plain, 1, 0.2f).first, p0.first);
  // config round trip and refusals
  const ModelConfig c = parse_config(tiny(0.3));
  EXPECT_DOUBLE_EQ(c.dropout, 0.3);
  EXPECT_DOUBLE_EQ(parse_config(config_to_json(c)).dropout, 0.3);
  EXPECT_FALSE(config_to_json(parse_config(tiny(0))).contains("dropout"));
  for (double bad : {-0.1, 1.0, 2.0}) {
    nlohmann::json j = tiny(0);
    j["dropout"] = bad;
    pf_test::expect_error([&] { parse_config(j); }, {"dropout", "[0, 1)"});
  }
}

// Random erasing: off = identity; on = a rectangle of values in [0, 1) per erased image, some
// images untouched at p = 0.5; resumable from state(); bad probability refused.
TEST(ImageBatcher, RandomErasing) {
  ImageSet s;
  s.n = 40, s.C = 2, s.H = 10, s.W = 12;
  const int64_t px = s.C * s.H * s.W;
  for (int64_t i = 0; i < s.n * px; ++i) s.pixels.push_back(-1.0f - float(i % 7));  // < 0
  for (int64_t i = 0; i < s.n; ++i) s.labels.push_back(int32_t(i % 3));
  std::vector<int64_t> rows(s.n);
  for (int64_t i = 0; i < s.n; ++i) rows[i] = i;
  ImageBatcher b(s, rows, 4, Augment{0, false, 0.5});
  std::vector<int32_t> lab;
  int erased = 0, kept = 0;
  for (int batch = 0; batch < 4; ++batch) {
    Tensor t = b.next(10, lab);
    for (int64_t i = 0; i < 10; ++i) {
      const float* img = t.data<float>() + i * px;
      // the erased pixels (>= 0) form one rectangle, the same in every channel
      int64_t y0 = s.H, y1 = -1, x0 = s.W, x1 = -1, n = 0;
      for (int64_t y = 0; y < s.H; ++y)
        for (int64_t x = 0; x < s.W; ++x)
          if (img[y * s.W + x] >= 0.0f) {
            ++n, y0 = std::min(y0, y), y1 = std::max(y1, y), x0 = std::min(x0, x),
                 x1 = std::max(x1, x);
            ASSERT_LT(img[y * s.W + x], 1.0f);
            ASSERT_GE(img[(s.H + y) * s.W + x], 0.0f);  // channel 1 too
          }
      if (n == 0) {
        ++kept;
        continue;
      }
      ++erased;
      EXPECT_EQ(n, (y1 - y0 + 1) * (x1 - x0 + 1));
      const double frac = double(n) / double(s.H * s.W);
      EXPECT_GE(frac, 0.01);  // 2%-40% of the area, up to rounding of the sides
      EXPECT_LE(frac, 0.55);
    }
  }
  EXPECT_GT(erased, 8);
  EXPECT_GT(kept, 8);
  ImageBatcher r(s, rows, 4, Augment{0, false, 0.5});
  r.set_state(b.state());
  for (int i = 0; i < 3; ++i) {
    std::vector<int32_t> la, lb;
    EXPECT_TRUE(pf_test::bit_equal(b.next(7, la), r.next(7, lb)));
  }
  ImageBatcher off(s, rows, 4, Augment{});
  Tensor t = off.next(5, lab);
  for (int64_t i = 0; i < 5 * px; ++i) ASSERT_LT(t.data<float>()[i], 0.0f);
  pf_test::expect_error(
      [&] {
        ImageBatcher(s, rows, 4, Augment{0, false, 1.5});
      },
      {"erasing", "[0, 1]"});
}

// Beta(a, b) draws: mean a / (a + b) and variance ab / ((a + b)^2 (a + b + 1)) over 40,000
// draws (about 5 standard errors), all in [0, 1]; tiny shapes pile up at 0 and 1 as they
// should, without NaN;
// the same state gives the same draws; bad shapes refused.
TEST(BatchMixing, BetaSampler) {
  for (auto [a, b] : {std::pair{0.2, 0.2}, std::pair{1.0, 1.0}, std::pair{0.8, 0.8},
                      std::pair{2.0, 5.0}, std::pair{30.0, 30.0}}) {
    SCOPED_TRACE(testing::Message() << a << ", " << b);
    uint64_t st = 77;
    const int n = 40000;
    double sum = 0, sum2 = 0;
    for (int i = 0; i < n; ++i) {
      const double x = sample_beta(a, b, st);
      ASSERT_TRUE(x >= 0.0 && x <= 1.0) << x;
      sum += x, sum2 += x * x;
    }
    const double mean = sum / n, var = sum2 / n - mean * mean;
    const double m = a / (a + b), v = a * b / ((a + b) * (a + b) * (a + b + 1));
    EXPECT_NEAR(mean, m, 5 * std::sqrt(v / n));
    EXPECT_NEAR(var, v, 0.05 * v);
  }
  uint64_t st = 5;
  int edge = 0;
  for (int i = 0; i < 1000; ++i) {
    const double x = sample_beta(0.01, 0.01, st);
    ASSERT_TRUE(x >= 0.0 && x <= 1.0) << x;
    edge += x < 1e-6 || x > 1 - 1e-6;
  }
  // P(X < e) + P(X > 1 - e) ~ e^a (B(a, a) ~ 2 / a for small a): 0.871 at e = 1e-6
  EXPECT_NEAR(edge / 1000.0, std::pow(1e-6, 0.01), 0.04);
  uint64_t s1 = 9, s2 = 9;
  EXPECT_EQ(sample_beta(0.4, 0.4, s1), sample_beta(0.4, 0.4, s2));
  pf_test::expect_error([&] { sample_beta(0.0, 1.0, st); }, {"Beta", "> 0"});
}

// mixup: image i = lambda x_i + (1 - lambda) x_(n-1-i) of the unmixed batch (a batcher with the
// same seed and no mixing gives the same per-image augmentation), partners' labels reversed;
// CutMix: only one box differs, taken from the partner, lambda = 1 - box area / (H W); with
// mix_prob 0.5 some batches are left alone (lambda 1, no partners); a batcher restored from
// state() mixes identically; next() without a BatchMix is refused.
TEST(BatchMixing, MixupAndCutMixImages) {
  ImageSet s;
  s.n = 30, s.C = 2, s.H = 8, s.W = 12;
  const int64_t px = s.C * s.H * s.W;
  for (int64_t i = 0; i < s.n * px; ++i) s.pixels.push_back(float(i % 251) / 251.0f);
  for (int64_t i = 0; i < s.n; ++i) s.labels.push_back(int32_t(i % 7));
  std::vector<int64_t> rows(s.n);
  for (int64_t i = 0; i < s.n; ++i) rows[i] = i;
  const Augment base{1, true, 0.3};
  for (int kind = 0; kind < 2; ++kind) {  // 0: mixup, 1: CutMix
    SCOPED_TRACE(kind ? "cutmix" : "mixup");
    Augment mixed = base;
    (kind ? mixed.cutmix : mixed.mixup) = 1.0;
    ImageBatcher plain(s, rows, 3, base), mb(s, rows, 3, mixed);
    std::vector<float> lambdas;
    for (int batch = 0; batch < 8; ++batch) {
      std::vector<int32_t> lp, lm;
      BatchMix mix;
      const Tensor tp = plain.next(7, lp), tm = mb.next(7, lm, &mix);
      ASSERT_EQ(lp, lm);
      const int64_t n = tp.dim(0);
      ASSERT_EQ(mix.partner_labels, std::vector<int32_t>(lp.rbegin(), lp.rend()));
      EXPECT_EQ(mix.cutmix, kind == 1);
      ASSERT_GE(mix.lambda, 0.0f);
      ASSERT_LE(mix.lambda, 1.0f);
      lambdas.push_back(mix.lambda);
      const float* a = tp.data<float>();
      const float* m = tm.data<float>();
      const double lam = mix.lambda;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t j = n - 1 - i;
        int64_t differ = 0;
        for (int64_t k = 0; k < px; ++k) {
          const float own = a[i * px + k], other = a[j * px + k], got = m[i * px + k];
          if (kind == 0) {
            ASSERT_NEAR(got, lam * own + (1 - lam) * other, 1e-6);
          } else {
            ASSERT_TRUE(got == own || got == other);
            differ += got == other && other != own;
          }
        }
        if (kind == 1 && i != j) {  // the box: 1 - lambda of the area, in both channels
          int64_t box = 0;
          for (int64_t k = 0; k < px; ++k) box += m[i * px + k] == a[j * px + k];
          EXPECT_GE(box, differ);
          EXPECT_GE(double(box), (1.0 - lam) * double(px) - 0.5);
        }
      }
    }
    std::sort(lambdas.begin(), lambdas.end());
    EXPECT_LT(lambdas.front(), lambdas.back());  // a new lambda per batch
  }
  // CutMix's lambda is exactly the box it pasted: a batch of two constant images
  ImageSet two;
  two.n = 2, two.C = 1, two.H = 9, two.W = 7;
  two.pixels.assign(63, 0.0f);
  two.pixels.resize(126, 1.0f);
  two.labels = {0, 1};
  ImageBatcher cb(two, {0, 1}, 11, Augment{0, false, 0.0, 0.0, 2.0});
  for (int batch = 0; batch < 12; ++batch) {
    std::vector<int32_t> lab;
    BatchMix mix;
    const Tensor t = cb.next(2, lab, &mix);
    for (int64_t i = 0; i < 2; ++i) {
      double own = 0;
      for (int64_t k = 0; k < 63; ++k) own += t.data<float>()[i * 63 + k] == float(lab[i]);
      EXPECT_NEAR(own / 63.0, mix.lambda, 1e-6);
    }
  }
  // mix_prob 0.5: some batches unmixed; resume mixes the same way
  Augment half = base;
  half.mixup = 0.4, half.cutmix = 1.0, half.mix_prob = 0.5;
  ImageBatcher h(s, rows, 8, half);
  int unmixed = 0, cut = 0, blend = 0;
  for (int batch = 0; batch < 60; ++batch) {
    std::vector<int32_t> lab;
    BatchMix mix;
    h.next(5, lab, &mix);
    if (mix.partner_labels.empty()) {
      ++unmixed;
      EXPECT_EQ(mix.lambda, 1.0f);
    } else {
      ++(mix.cutmix ? cut : blend);
    }
  }
  EXPECT_GT(unmixed, 15);
  EXPECT_GT(cut, 7);
  EXPECT_GT(blend, 7);
  ImageBatcher r(s, rows, 8, half);
  r.set_state(h.state());
  for (int i = 0; i < 5; ++i) {
    std::vector<int32_t> la, lb;
    BatchMix ma, mr;
    EXPECT_TRUE(pf_test::bit_equal(h.next(6, la, &ma), r.next(6, lb, &mr)));
    EXPECT_EQ(ma.partner_labels, mr.partner_labels);
    EXPECT_EQ(ma.lambda, mr.lambda);
  }
  std::vector<int32_t> lab;
  pf_test::expect_error([&] { h.next(3, lab); }, {"mixing", "BatchMix"});
  pf_test::expect_error(
      [&] {
        ImageBatcher(s, rows, 4, Augment{0, false, 0.0, -1.0});
      },
      {"mixup", ">= 0"});
  pf_test::expect_error(
      [&] {
        ImageBatcher(s, rows, 4, Augment{0, false, 0.0, 1.0, 0.0, 2.0});
      },
      {"mixing probability", "[0, 1]"});
}

// The mixed-target loss: loss and every gradient equal lambda (the run on the batch's labels) +
// (1 - lambda) (the run on the partners' labels), with label smoothing; lambda 1 is the plain
// loss; bad partner labels and weights refused.
TEST(BatchMixing, MixedTargetLossIsTheWeightedSum) {
  const nlohmann::json j = {{"arch", "vit"},    {"image_size", {8, 8}},
                            {"patch_size", 4},  {"channels", 1},
                            {"num_classes", 4}, {"d_model", 16},
                            {"n_layers", 1},    {"n_heads", 2},
                            {"d_ff", 16},       {"position", {{"type", "rope_2d"}}}};
  const Transformer m = Transformer::random_init(parse_config(j), 3);
  Tensor img({3, 1, 8, 8});
  const std::vector<float> px = pf_test::randn(3 * 64, 5);
  std::copy(px.begin(), px.end(), img.data<float>());
  const std::vector<int32_t> la = {0, 2, 3}, lb = {3, 2, 1};
  const float lam = 0.3f;
  ForwardOptions fa, fb, fm;
  fa.label_smoothing = fb.label_smoothing = fm.label_smoothing = 0.1f;
  fm.mix_labels = &lb, fm.mix_lambda = lam;
  ParamStore ga = m.zero_grads(), gb = m.zero_grads(), gm = m.zero_grads();
  const double loss_a = m.classify_loss_and_grad(img, la, ga, 1.0f, nullptr, fa).loss;
  const double loss_b = m.classify_loss_and_grad(img, lb, gb, 1.0f, nullptr, fb).loss;
  const double loss_m = m.classify_loss_and_grad(img, la, gm, 1.0f, nullptr, fm).loss;
  EXPECT_NEAR(loss_m, lam * loss_a + (1 - lam) * loss_b, 1e-6);
  for (const auto& spec : m.param_specs()) {
    const float* a = ga.f32(spec.name);
    const float* b = gb.f32(spec.name);
    const float* g = gm.f32(spec.name);
    double mx = 0, err = 0;
    for (int64_t i = 0; i < shape_numel(spec.shape); ++i) {
      const double want = lam * double(a[i]) + (1 - lam) * double(b[i]);
      mx = std::max(mx, std::abs(want)), err = std::max(err, std::abs(double(g[i]) - want));
    }
    EXPECT_LE(err, 1e-5 * std::max(mx, 1e-3)) << spec.name;
  }
  ForwardOptions f1 = fa;
  f1.mix_labels = &lb, f1.mix_lambda = 1.0f;
  ParamStore g1 = m.zero_grads();
  EXPECT_NEAR(m.classify_loss_and_grad(img, la, g1, 1.0f, nullptr, f1).loss, loss_a, 1e-9);
  const std::vector<int32_t> bad = {0, 4, 1}, shortl = {0};
  ForwardOptions fbad = fa;
  fbad.mix_labels = &bad;
  pf_test::expect_error([&] { m.classify_loss_and_grad(img, la, g1, 1.0f, nullptr, fbad); },
                        {"mixed-in label 4", "[0, 4)"});
  fbad.mix_labels = &shortl;
  pf_test::expect_error([&] { m.classify_loss_and_grad(img, la, g1, 1.0f, nullptr, fbad); },
                        {"1 mixed-in labels", "3 images"});
  fbad.mix_labels = &lb, fbad.mix_lambda = 1.5f;
  pf_test::expect_error([&] { m.classify_loss_and_grad(img, la, g1, 1.0f, nullptr, fbad); },
                        {"mixing weight", "[0, 1]"});
}

// The trainer's flags: out-of-range values are refused naming the flag; the run's options
// round-trip through train.json (a resume keeps them).
// GCC 12 reports a false -Wrestrict in std::string's inlined assignment here (GCC bug 105329)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wrestrict"
TEST(TrainOptions, RegularisationFlags) {
  TrainOptions o;
  o.data.emplace_back("default");
  o.out_dir.assign("x");
  validate(o);
  o.label_smoothing = 1.0;
  pf_test::expect_error([&] { validate(o); }, {"--label-smoothing", "[0, 1)"});
  o.label_smoothing = 0.1, o.erase = 1.5;
  pf_test::expect_error([&] { validate(o); }, {"--erase", "[0, 1]"});
  o.erase = 0.25;
  validate(o);
  o.mixup = -0.5;
  pf_test::expect_error([&] { validate(o); }, {"--mixup", ">= 0"});
  o.mixup = 0.8, o.cutmix = std::nan("");
  pf_test::expect_error([&] { validate(o); }, {"--cutmix", ">= 0"});
  o.cutmix = 1.0, o.mix_prob = 1.5;
  pf_test::expect_error([&] { validate(o); }, {"--mix-prob", "[0, 1]"});
  o.mix_prob = 0.5;
  validate(o);
  const TrainOptions r = options_from_json(options_to_json(o));
  EXPECT_EQ(r.label_smoothing, 0.1);
  EXPECT_EQ(r.erase, 0.25);
  EXPECT_EQ(r.mixup, 0.8);
  EXPECT_EQ(r.cutmix, 1.0);
  EXPECT_EQ(r.mix_prob, 0.5);
  // runs stored before the mixing options read as no mixing
  nlohmann::json old = options_to_json(o);
  old.erase("mixup"), old.erase("cutmix"), old.erase("mix_prob");
  const TrainOptions r0 = options_from_json(old);
  EXPECT_EQ(r0.mixup, 0.0);
  EXPECT_EQ(r0.cutmix, 0.0);
  EXPECT_EQ(r0.mix_prob, 1.0);
}
#pragma GCC diagnostic pop

// eval --tta flip: the prediction is the mean of the softmax of an image and of its mirror
// (checked against the two classify() calls written out here); left-right symmetric images
// score exactly as without it.
TEST(Evaluate, FlipTestTimeAugmentation) {
  const nlohmann::json j = {{"arch", "vit"},    {"image_size", {4, 6}},
                            {"patch_size", 2},  {"channels", 2},
                            {"num_classes", 3}, {"d_model", 16},
                            {"n_layers", 1},    {"n_heads", 2},
                            {"d_ff", 16},       {"position", {{"type", "rope_2d"}}}};
  const Transformer m = Transformer::random_init(parse_config(j), 7);
  ImageSet s;
  s.n = 9, s.C = 2, s.H = 4, s.W = 6;
  const std::vector<float> px = pf_test::randn(size_t(s.n * 48), 5);
  s.pixels = px;
  for (int64_t i = 0; i < s.n; ++i) s.labels.push_back(int32_t(i % 3));
  std::vector<int64_t> rows(s.n);
  for (int64_t i = 0; i < s.n; ++i) rows[i] = i;
  const ClassifyEval plain = evaluate_images(m, s, rows, 4),
                     tta = evaluate_images(m, s, rows, 4, true);
  // by hand: both views, softmax averaged
  std::vector<int32_t> lab;
  Tensor a = s.gather(rows, &lab), b = s.gather(rows, &lab);
  for (int64_t r = 0; r < s.n * s.C * s.H; ++r)
    std::reverse(b.data<float>() + r * s.W, b.data<float>() + (r + 1) * s.W);
  const Tensor za = m.classify(a), zb = m.classify(b);
  double nats = 0;
  int64_t right = 0;
  for (int64_t i = 0; i < s.n; ++i) {
    double p[3] = {0, 0, 0};
    for (const Tensor* z : {&za, &zb}) {
      const float* r = z->data<float>() + i * 3;
      const double mx = std::max({r[0], r[1], r[2]});
      const double den = std::exp(r[0] - mx) + std::exp(r[1] - mx) + std::exp(r[2] - mx);
      for (int k = 0; k < 3; ++k) p[k] += 0.5 * std::exp(r[k] - mx) / den;
    }
    nats -= std::log(p[lab[i]]);
    right += (std::max_element(p, p + 3) - p) == lab[i];
  }
  EXPECT_NEAR(tta.loss, nats / double(s.n), 1e-6);  // batches of 4 vs 9: float rounding
  EXPECT_DOUBLE_EQ(tta.accuracy, double(right) / double(s.n));
  EXPECT_NE(tta.loss, plain.loss);
  // mirror-symmetric images: the mirror is the image itself
  for (int64_t r = 0; r < s.n * s.C * s.H; ++r)
    for (int64_t x = 0; x < s.W / 2; ++x) s.pixels[r * s.W + s.W - 1 - x] = s.pixels[r * s.W + x];
  const ClassifyEval ps = evaluate_images(m, s, rows, 4), ts = evaluate_images(m, s, rows, 4, true);
  EXPECT_NEAR(ts.loss, ps.loss, 1e-9);
  EXPECT_EQ(ts.confusion, ps.confusion);
}

}  // namespace
