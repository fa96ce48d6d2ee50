// AdamW against a double-precision hand computation and torch.optim.AdamW, optimizer state
// round trips, the LR schedule, and the gradient utilities (norm, clipping, finiteness).
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <random>

#include "posformer/core/error.h"
#include "posformer/train/optimizer.h"
#include "posformer/train/schedule.h"
#include "test_util.h"

using namespace posformer;

using pf_test::bit_equal;
using pf_test::expect_error;
using pf_test::spec;

namespace {

Tensor make(const std::vector<float>& v, Shape shape = {}) {
  if (shape.empty()) shape = {static_cast<int64_t>(v.size())};
  Tensor t(shape);
  std::copy(v.begin(), v.end(), t.data<float>());
  return t;
}

std::vector<float> values(const Tensor& t) {
  const float* p = t.data<float>();
  return std::vector<float>(p, p + t.numel());
}

Tensor random_tensor(Shape shape, uint32_t seed, float scale = 1.0f) {
  Tensor t(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, scale);
  float* p = t.data<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = nd(rng);
  return t;
}

// The AdamW formula of the brief, entirely in double.
struct RefAdamW {
  double b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  std::vector<double> p, m, v;
  int t = 0;
  void step(const std::vector<double>& g, double lr, bool decay) {
    ++t;
    for (size_t i = 0; i < p.size(); ++i) {
      if (decay) p[i] -= lr * wd * p[i];
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      const double mhat = m[i] / (1 - std::pow(b1, t)), vhat = v[i] / (1 - std::pow(b2, t));
      p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
    }
  }
};

const std::vector<float> kP0 = {0.5f, -1.25f, 2.0f, 0.0f, 3.0f};
const std::vector<std::vector<float>> kGrads = {{0.1f, -0.2f, 0.3f, 1.0f, -4.0f},
                                                {-0.05f, 0.4f, 0.3f, -2.0f, 0.0f}};
const double kLrs[2] = {0.01, 0.02};

// Produced by /usr/bin/python3 tests/reference/adamw_check.py (torch 1.13 torch.optim.AdamW,
// betas (0.9, 0.95), eps 1e-8, weight_decay 0.1 resp. 0.0, lr 0.01 then 0.02).
const std::vector<std::vector<float>> kTorchDecay = {
    {0.489500016f, -1.23874998f, 1.98800004f, -0.0100000007f, 3.00699997f},
    {0.483153641f, -1.24353993f, 1.96402407f, -0.00271252124f, 3.01455903f}};
const std::vector<std::vector<float>> kTorchNoDecay = {
    {0.49000001f, -1.24000001f, 1.99000001f, -0.0100000007f, 3.00999999f},
    {0.484632611f, -1.24726748f, 1.97000003f, -0.00273252139f, 3.02357292f}};

}  // namespace

// ---------------------------------------------------------------------------------------------
// AdamW

TEST(AdamW, MatchesHandExampleTwoSteps) {
  std::vector<ParamSpec> specs = {spec("w", {5}, true), spec("norm.weight", {5}, false)};
  AdamW opt(specs, AdamWConfig{});
  ParamStore params, grads;
  params.add("w", make(kP0));
  params.add("norm.weight", make(kP0));
  RefAdamW ref_decay, ref_plain;
  for (RefAdamW* r : {&ref_decay, &ref_plain}) {
    r->p.assign(kP0.begin(), kP0.end());
    r->m.assign(5, 0.0);
    r->v.assign(5, 0.0);
  }
  for (int s = 0; s < 2; ++s) {
    ParamStore g;
    g.add("w", make(kGrads[s]));
    g.add("norm.weight", make(kGrads[s]));
    opt.step(params, g, kLrs[s]);
    std::vector<double> gd(kGrads[s].begin(), kGrads[s].end());
    ref_decay.step(gd, kLrs[s], true);
    ref_plain.step(gd, kLrs[s], false);
    EXPECT_EQ(opt.steps(), s + 1);
    const auto w = values(params.get("w")), n = values(params.get("norm.weight"));
    for (int i = 0; i < 5; ++i) {
      SCOPED_TRACE(testing::Message() << "step " << s + 1 << " element " << i);
      EXPECT_NEAR(w[i], ref_decay.p[i], 1e-6);
      EXPECT_NEAR(n[i], ref_plain.p[i], 1e-6);
      EXPECT_NEAR(w[i], kTorchDecay[s][i], 1e-6);
      EXPECT_NEAR(n[i], kTorchNoDecay[s][i], 1e-6);
    }
  }
  // A spot value worked by hand: element 0, step 1, with decay. m = 0.01, v = 0.0005,
  // mhat = 0.1, vhat = 0.01, update = 0.01 * 0.1 / (0.1 + 1e-8); p = 0.5 * (1 - 0.001) - that.
  EXPECT_NEAR(kTorchDecay[0][0], 0.5 * 0.999 - 0.01 * 0.1 / (0.1 + 1e-8), 1e-7);
}

TEST(AdamW, MatchesTorchOverTwelveSteps) {
  // Expected values from /usr/bin/python3 tests/reference/adamw_check.py ("12 steps"), which runs
  // torch.optim.AdamW on the same inputs; also checked against the double reference.
  const std::vector<float> torch_p = {-0.306436837f, -0.217488661f, -0.115442507f, -0.0110800751f,
                                      0.0949791446f, 0.217665717f,  0.316230536f};
  AdamW opt({spec("w", {7})}, AdamWConfig{});
  ParamStore params;
  std::vector<float> p0(7);
  for (int i = 0; i < 7; ++i) p0[i] = static_cast<float>(0.1 * i - 0.3);
  params.add("w", make(p0));
  RefAdamW ref;
  ref.p.assign(p0.begin(), p0.end());
  ref.m.assign(7, 0.0);
  ref.v.assign(7, 0.0);
  for (int s = 0; s < 12; ++s) {
    std::vector<float> g(7);
    for (int i = 0; i < 7; ++i) g[i] = static_cast<float>(std::sin(0.7 * i + 1.3 * s) * 0.5);
    ParamStore grads;
    grads.add("w", make(g));
    const double lr = 1e-2 / (1 + s);
    opt.step(params, grads, lr);
    ref.step(std::vector<double>(g.begin(), g.end()), lr, true);
  }
  const auto w = values(params.get("w"));
  for (int i = 0; i < 7; ++i) {
    EXPECT_NEAR(w[i], torch_p[i], 1e-6) << "element " << i;
    EXPECT_NEAR(w[i], ref.p[i], 1e-6) << "element " << i;
  }
}

TEST(AdamW, DecayFlagRespected) {
  // Zero gradients: the Adam term is exactly 0, so only decoupled decay moves p.
  std::vector<ParamSpec> specs = {spec("a.weight", {3}), spec("a.bias", {3}, false)};
  AdamWConfig cfg;
  cfg.weight_decay = 0.5;
  AdamW opt(specs, cfg);
  ParamStore params, grads;
  params.add("a.weight", make({1.0f, -2.0f, 4.0f}));
  params.add("a.bias", make({1.0f, -2.0f, 4.0f}));
  grads.add("a.weight", Tensor(Shape{3}));
  grads.add("a.bias", Tensor(Shape{3}));
  opt.step(params, grads, 0.1);
  const float keep = static_cast<float>(1.0 - 0.1 * 0.5);
  EXPECT_EQ(values(params.get("a.weight")),
            (std::vector<float>{1.0f * keep, -2.0f * keep, 4.0f * keep}));
  EXPECT_EQ(values(params.get("a.bias")), (std::vector<float>{1.0f, -2.0f, 4.0f}));
}

TEST(AdamW, ZeroWeightDecayLeavesDecayedParamsToAdam) {
  std::vector<ParamSpec> specs = {spec("w", {5})};
  AdamWConfig cfg;
  cfg.weight_decay = 0.0;
  AdamW opt(specs, cfg);
  ParamStore params;
  params.add("w", make(kP0));
  for (int s = 0; s < 2; ++s) {
    ParamStore g;
    g.add("w", make(kGrads[s]));
    opt.step(params, g, kLrs[s]);
  }
  const auto w = values(params.get("w"));
  for (int i = 0; i < 5; ++i) EXPECT_NEAR(w[i], kTorchNoDecay[1][i], 1e-6);
}

TEST(AdamW, StateReloadContinuesBitIdentically) {
  // Sizes: an odd one (SIMD tail), a 2-D one, one large enough for OpenMP.
  std::vector<ParamSpec> specs = {spec("emb.weight", {7, 13}), spec("big.weight", {300, 257}),
                                  spec("norm.weight", {13}, false)};
  auto grads_at = [&](int s) {
    ParamStore g;
    uint32_t k = 100;
    for (const auto& sp : specs) g.add(sp.name, random_tensor(sp.shape, 1000 * s + k++, 0.1f));
    return g;
  };
  ParamStore pa;
  uint32_t k = 1;
  for (const auto& sp : specs) pa.add(sp.name, random_tensor(sp.shape, k++));
  AdamW a(specs, AdamWConfig{});
  for (int s = 0; s < 3; ++s) a.step(pa, grads_at(s), 1e-3 * (s + 1));

  // Snapshot (cloned: state_tensors aliases the live state) and a second optimizer from it.
  std::map<std::string, Tensor> snap;
  for (const auto& [name, t] : a.state_tensors()) snap.emplace(name, t.clone());
  EXPECT_EQ(snap.size(), 6u);
  EXPECT_TRUE(snap.count("m.big.weight") && snap.count("v.norm.weight"));
  ParamStore pb;
  for (const auto& [name, t] : pa.all()) pb.add(name, t.clone());
  AdamW b(specs, AdamWConfig{});
  b.load_state(snap, a.steps());
  EXPECT_EQ(b.steps(), 3);

  for (int s = 3; s < 7; ++s) {
    ParamStore g = grads_at(s);
    a.step(pa, g, 1e-3);
    b.step(pb, g, 1e-3);
  }
  for (const auto& sp : specs) EXPECT_TRUE(bit_equal(pa.get(sp.name), pb.get(sp.name))) << sp.name;
  const auto sa = a.state_tensors(), sb = b.state_tensors();
  for (const auto& [name, t] : sa) EXPECT_TRUE(bit_equal(t, sb.at(name))) << name;
  // load_state copied: b's state does not alias the snapshot.
  EXPECT_FALSE(bit_equal(sb.at("m.big.weight"), snap.at("m.big.weight")));
}

TEST(AdamW, ResultIndependentOfThreadCount) {
  std::vector<ParamSpec> specs = {spec("w", {1 << 17})};
  ParamStore p1, p2, g;
  p1.add("w", random_tensor({1 << 17}, 5));
  p2.add("w", p1.get("w").clone());
  g.add("w", random_tensor({1 << 17}, 6));
  AdamW o1(specs, AdamWConfig{}), o2(specs, AdamWConfig{});
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  o1.step(p1, g, 1e-2);
  omp_set_num_threads(std::max(2, saved));
  o2.step(p2, g, 1e-2);
  omp_set_num_threads(saved);
  EXPECT_TRUE(bit_equal(p1.get("w"), p2.get("w")));
}

TEST(AdamW, MissingOrMisshapedGradThrowsAndChangesNothing) {
  std::vector<ParamSpec> specs = {spec("a", {2}), spec("b", {3})};
  AdamW opt(specs, AdamWConfig{});
  ParamStore params, grads;
  params.add("a", make({1, 2}));
  params.add("b", make({3, 4, 5}));
  grads.add("a", make({1, 1}));
  expect_error([&] { opt.step(params, grads, 0.1); }, {"gradient", "'b'", "missing"});
  grads.add("b", make({1, 1}));
  expect_error([&] { opt.step(params, grads, 0.1); }, {"'b'", "[2]", "[3]"});
  EXPECT_EQ(opt.steps(), 0);
  EXPECT_EQ(values(params.get("a")), (std::vector<float>{1, 2}));
  ParamStore p2;
  p2.add("a", make({1, 2}));
  expect_error([&] { opt.step(p2, grads, 0.1); }, {"parameter", "'b'", "missing"});
  ParamStore g3;
  g3.add("a", make({1, 1}));
  g3.add("b", Tensor(Shape{3}, DType::F64));
  expect_error([&] { opt.step(params, g3, 0.1); }, {"'b'", "F32", "F64"});
  expect_error([&] { opt.step(params, grads, std::nan("")); }, {"lr"});
}

TEST(AdamW, LoadStateValidates) {
  std::vector<ParamSpec> specs = {spec("a", {2})};
  AdamW opt(specs, AdamWConfig{});
  std::map<std::string, Tensor> ok = {{"m.a", make({1, 2})}, {"v.a", make({3, 4})}};
  auto with = [&](const std::string& k, Tensor t) {
    auto s = ok;
    s[k] = t;
    return s;
  };
  expect_error([&] { opt.load_state({{"m.a", make({1, 2})}}, 1); }, {"v.a", "missing"});
  expect_error([&] { opt.load_state(with("v.a", make({1, 2, 3})), 1); }, {"v.a", "[3]", "[2]"});
  expect_error([&] { opt.load_state(with("m.zzz", make({1})), 1); }, {"m.zzz", "unexpected"});
  expect_error([&] { opt.load_state(with("m.a", Tensor(Shape{2}, DType::F16)), 1); },
               {"m.a", "F32"});
  expect_error([&] { opt.load_state(ok, -1); }, {"steps", "-1"});
  EXPECT_EQ(opt.steps(), 0);
  opt.load_state(ok, 4);
  EXPECT_EQ(opt.steps(), 4);
  EXPECT_EQ(values(opt.state_tensors().at("v.a")), (std::vector<float>{3, 4}));
}

TEST(AdamW, ConfigValidation) {
  std::vector<ParamSpec> specs = {spec("a", {2})};
  AdamWConfig c;
  c.beta1 = 1.0;
  expect_error([&] { AdamW o(specs, c); }, {"beta1", "1"});
  c = AdamWConfig{};
  c.beta2 = -0.1;
  expect_error([&] { AdamW o(specs, c); }, {"beta2"});
  c = AdamWConfig{};
  c.eps = -1;
  expect_error([&] { AdamW o(specs, c); }, {"eps"});
  c = AdamWConfig{};
  c.weight_decay = std::numeric_limits<double>::infinity();
  expect_error([&] { AdamW o(specs, c); }, {"weight_decay"});
  expect_error(
      [&] {
        AdamW o({spec("a", {2}), spec("a", {2})}, AdamWConfig{});
      },
      {"duplicate", "'a'"});
}

// ---------------------------------------------------------------------------------------------
// Schedule

TEST(Schedule, CosineKeySteps) {
  ScheduleConfig s{1e-3, 10, 110, "cosine", 0.1};
  EXPECT_DOUBLE_EQ(lr_at(0, s), 1e-4);  // lr / warmup
  EXPECT_DOUBLE_EQ(lr_at(4, s), 5e-4);
  EXPECT_DOUBLE_EQ(lr_at(9, s), 1e-3);   // end of warmup
  EXPECT_DOUBLE_EQ(lr_at(10, s), 1e-3);  // decay starts at full lr
  EXPECT_NEAR(lr_at(35, s), 1e-3 * (0.1 + 0.45 * (1 + std::cos(M_PI / 4))), 1e-15);
  EXPECT_NEAR(lr_at(60, s), 0.55e-3, 1e-15);  // halfway
  EXPECT_NEAR(lr_at(109, s), 1e-3 * (0.1 + 0.45 * (1 + std::cos(M_PI * 0.99))), 1e-15);
  EXPECT_NEAR(lr_at(110, s), 1e-4, 1e-15);   // end
  EXPECT_NEAR(lr_at(1000, s), 1e-4, 1e-15);  // clamped
}

TEST(Schedule, LinearKeySteps) {
  ScheduleConfig s{2e-3, 4, 104, "linear", 0.25};
  EXPECT_DOUBLE_EQ(lr_at(0, s), 5e-4);
  EXPECT_DOUBLE_EQ(lr_at(3, s), 2e-3);
  EXPECT_DOUBLE_EQ(lr_at(4, s), 2e-3);
  EXPECT_NEAR(lr_at(29, s), 2e-3 * (0.25 + 0.75 * 0.75), 1e-15);
  EXPECT_NEAR(lr_at(54, s), 2e-3 * 0.625, 1e-15);
  EXPECT_NEAR(lr_at(104, s), 5e-4, 1e-15);
  EXPECT_NEAR(lr_at(500, s), 5e-4, 1e-15);
}

TEST(Schedule, ConstantKeySteps) {
  ScheduleConfig s{1e-2, 5, 50, "constant", 0.1};
  EXPECT_DOUBLE_EQ(lr_at(0, s), 2e-3);
  EXPECT_DOUBLE_EQ(lr_at(4, s), 1e-2);
  EXPECT_DOUBLE_EQ(lr_at(5, s), 1e-2);
  EXPECT_DOUBLE_EQ(lr_at(27, s), 1e-2);
  EXPECT_DOUBLE_EQ(lr_at(50, s), 1e-2);
}

TEST(Schedule, EdgeCases) {
  ScheduleConfig no_warmup{1.0, 0, 10, "cosine", 0.0};
  EXPECT_DOUBLE_EQ(lr_at(0, no_warmup), 1.0);
  EXPECT_NEAR(lr_at(5, no_warmup), 0.5, 1e-15);
  EXPECT_NEAR(lr_at(10, no_warmup), 0.0, 1e-15);
  ScheduleConfig all_warmup{1.0, 10, 10, "linear", 0.5};
  EXPECT_DOUBLE_EQ(lr_at(9, all_warmup), 1.0);
  EXPECT_DOUBLE_EQ(lr_at(10, all_warmup), 0.5);
  ScheduleConfig one_step{3.0, 0, 1, "cosine", 0.1};
  EXPECT_DOUBLE_EQ(lr_at(0, one_step), 3.0);
  expect_error([&] { lr_at(-1, no_warmup); }, {"step", "-1"});
}

TEST(Schedule, ValidationErrors) {
  auto bad = [](auto mutate, std::initializer_list<const char*> words) {
    ScheduleConfig s{1e-3, 10, 100, "cosine", 0.1};
    mutate(s);
    expect_error([&] { validate(s); }, words);
    expect_error([&] { lr_at(0, s); }, words);
  };
  bad([](ScheduleConfig& s) { s.lr = 0; }, {"lr", "0"});
  bad([](ScheduleConfig& s) { s.lr = -1; }, {"lr", "-1"});
  bad([](ScheduleConfig& s) { s.lr = std::nan(""); }, {"lr"});
  bad([](ScheduleConfig& s) { s.lr = INFINITY; }, {"lr", "inf"});
  bad([](ScheduleConfig& s) { s.warmup_steps = -2; }, {"warmup_steps", "-2"});
  bad([](ScheduleConfig& s) { s.total_steps = 0; }, {"total_steps", "0"});
  bad([](ScheduleConfig& s) { s.warmup_steps = 101; }, {"warmup_steps", "101", "100"});
  bad([](ScheduleConfig& s) { s.decay = "exp"; }, {"decay", "exp", "cosine"});
  bad([](ScheduleConfig& s) { s.min_lr_ratio = 1.5; }, {"min_lr_ratio", "1.5"});
  bad([](ScheduleConfig& s) { s.min_lr_ratio = -0.1; }, {"min_lr_ratio"});
  bad([](ScheduleConfig& s) { s.min_lr_ratio = std::nan(""); }, {"min_lr_ratio"});
  EXPECT_NO_THROW(validate(ScheduleConfig{}));
}

// ---------------------------------------------------------------------------------------------
// Gradient utilities

TEST(GradUtil, ClipMatchesHandComputation) {
  ParamStore g;
  g.add("a", make({3, 4}));
  g.add("b", make({12}, {1, 1}));
  EXPECT_DOUBLE_EQ(global_grad_norm(g), 13.0);  // sqrt(9 + 16 + 144)
  const double norm = clip_grad_norm(g, 6.5);
  EXPECT_DOUBLE_EQ(norm, 13.0);  // the pre-clip norm
  const float c = static_cast<float>(6.5 / (13.0 + 1e-6));
  EXPECT_EQ(values(g.get("a")), (std::vector<float>{3 * c, 4 * c}));
  EXPECT_EQ(values(g.get("b")), (std::vector<float>{12 * c}));
  EXPECT_NEAR(global_grad_norm(g), 6.5, 1e-5);
}

TEST(GradUtil, NoClipBelowMaxOrWhenDisabled) {
  ParamStore g;
  g.add("a", make({3, 4}));
  EXPECT_DOUBLE_EQ(clip_grad_norm(g, 10.0), 5.0);
  EXPECT_EQ(values(g.get("a")), (std::vector<float>{3, 4}));
  EXPECT_DOUBLE_EQ(clip_grad_norm(g, 0.0), 5.0);
  EXPECT_DOUBLE_EQ(clip_grad_norm(g, -1.0), 5.0);
  EXPECT_EQ(values(g.get("a")), (std::vector<float>{3, 4}));
  ParamStore nan;
  nan.add("a", make({NAN, 1}));
  EXPECT_TRUE(std::isnan(clip_grad_norm(nan, 1.0)));
  EXPECT_EQ(nan.get("a").data<float>()[1], 1.0f);  // untouched
}

TEST(GradUtil, GlobalNormLargeTensorsAndThreadIndependence) {
  ParamStore g;
  g.add("x", random_tensor({1000, 333}, 7));
  g.add("y", random_tensor({17}, 8));
  double ref = 0;
  for (const auto& [name, t] : g.all())
    for (float v : values(t)) ref += static_cast<double>(v) * v;
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const double n1 = global_grad_norm(g);
  omp_set_num_threads(std::max(2, saved));
  const double n2 = global_grad_norm(g);
  omp_set_num_threads(saved);
  EXPECT_NEAR(n1, std::sqrt(ref), 1e-9 * std::sqrt(ref));
  EXPECT_EQ(n1, n2);
  ParamStore empty;
  EXPECT_EQ(global_grad_norm(empty), 0.0);
}

TEST(GradUtil, AllFiniteDetectsNanAndInf) {
  ParamStore ok;
  ok.add("a", make({0.0f, -0.0f, std::numeric_limits<float>::max(),
                    std::numeric_limits<float>::denorm_min(), -1e30f}));
  ok.add("big", random_tensor({100000}, 3));
  EXPECT_TRUE(all_finite(ok));
  // finite_grad_norm: the norm for finite gradients (float max squared stays inside double's
  // range), nullopt as soon as one element is not finite
  const std::optional<double> n = finite_grad_norm(ok);
  ASSERT_TRUE(n.has_value());
  EXPECT_EQ(*n, global_grad_norm(ok));
  EXPECT_TRUE(std::isfinite(*n));
  ParamStore maxed;
  Tensor m = random_tensor({5000}, 4);
  std::fill_n(m.data<float>(), 5000, std::numeric_limits<float>::max());
  maxed.add("m", m);
  ASSERT_TRUE(finite_grad_norm(maxed).has_value());
  EXPECT_NEAR(*finite_grad_norm(maxed), std::numeric_limits<float>::max() * std::sqrt(5000.0),
              1e-9 * std::numeric_limits<float>::max() * std::sqrt(5000.0));
  for (float bad : {NAN, INFINITY, -INFINITY}) {
    for (int64_t pos : {int64_t{0}, int64_t{4095}, int64_t{4096}, int64_t{99999}}) {
      ParamStore g;
      g.add("a", make({1, 2, 3}));
      Tensor big = random_tensor({100000}, 3);
      big.data<float>()[pos] = bad;
      g.add("big", big);
      EXPECT_FALSE(all_finite(g)) << bad << " at " << pos;
      EXPECT_FALSE(finite_grad_norm(g).has_value()) << bad << " at " << pos;
    }
  }
  ParamStore f64;
  f64.add("d", Tensor(Shape{2}, DType::F64));
  expect_error([&] { all_finite(f64); }, {"'d'", "F32"});
  expect_error([&] { global_grad_norm(f64); }, {"'d'", "F32"});
}
