// bf16 mixed-precision matmuls (ops/packed_linear.h, `train --precision bf16`):
//  - the rounding kernel against the scalar definition (round to nearest even, NaN kept) on
//    every SIMD target, special values included;
//  - forward, dx and dW against a double-precision reference computed from the bf16-rounded
//    operands, with a bound of K * 2^-24 * sum|products| (float32 sums of K terms); the same
//    results must be *far* from the unrounded reference somewhere, so a path that silently
//    stayed float32 fails;
//  - rounded rows shared between calls (Bf16Rows) change nothing;
//  - a model's loss and gradients in bf16 stay close to float32 and are deterministic.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "../../src/kernels/cpu/backward_kernels.h"
#include "../../src/kernels/cpu/kernels.h"
#include "hwy_targets.h"
#include "posformer/core/error.h"
#include "posformer/model/config.h"
#include "posformer/model/transformer.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/norm.h"
#include "posformer/ops/packed_linear.h"
#include "test_util.h"

namespace {

using namespace posformer;
using namespace posformer::ops;

float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// round to bf16 and back (the scalar definition)
float rb(float x) {
  return bf16_bits_to_float(to_bf16_bits(x));
}

TEST(Bf16, ScalarRoundingIsNearestEven) {
  EXPECT_EQ(to_bf16_bits(1.0f), 0x3f80);
  EXPECT_EQ(to_bf16_bits(bits_to_float(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(to_bf16_bits(bits_to_float(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(to_bf16_bits(bits_to_float(0x3f808001u)), 0x3f81);  // above the tie
  EXPECT_EQ(to_bf16_bits(bits_to_float(0x3f807fffu)), 0x3f80);  // below the tie
  EXPECT_EQ(to_bf16_bits(-0.0f), 0x8000);
  EXPECT_EQ(to_bf16_bits(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_EQ(to_bf16_bits(std::numeric_limits<float>::max()), 0x7f80);  // overflows to inf
  EXPECT_EQ(to_bf16_bits(bits_to_float(0x7f800001u)), 0x7fc0);  // signalling NaN -> quiet NaN
  EXPECT_TRUE(std::isnan(rb(std::nanf(""))));
  EXPECT_EQ(to_bf16_bits(bits_to_float(0x00000001u)), 0x0000);  // smallest denormal -> 0
  EXPECT_EQ(to_bf16_bits(bits_to_float(0x00018000u)), 0x0002);  // denormal tie to even
  EXPECT_EQ(rb(3.140625f), 3.140625f);                          // representable: exact
}

TEST(Bf16, KernelMatchesScalarOnEveryTarget) {
  std::vector<float> x = pf_test::randn(1000, 3);
  for (float& v : x) v *= 1e3f;
  const uint32_t special[] = {0x3f808000u, 0x3f818000u, 0x7f800000u, 0xff800000u,
                              0x7f800001u, 0xffc00000u, 0x00000001u, 0x00018000u,
                              0x80000000u, 0x7f7fffffu, 0x7f7f8000u, 0x3f807fffu};
  for (size_t i = 0; i < std::size(special); ++i) x[i * 37] = bits_to_float(special[i]);
  pf_test::for_each_target([&] {
    for (int64_t cols : {1, 7, 16, 33, 100}) {  // tails of every length, strided rows
      const int64_t rows = 9, ld = cols + 3;
      std::vector<uint16_t> y(size_t(rows * cols), 0xdead);
      kernels::cpu::to_bf16(x.data(), ld, rows, cols, y.data());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c)
          ASSERT_EQ(y[size_t(r * cols + c)], to_bf16_bits(x[size_t(r * ld + c)]))
              << "row " << r << " col " << c << " cols " << cols;
    }
    std::vector<uint16_t> y(x.size());  // dense: one flat range
    kernels::cpu::to_bf16(x.data(), 10, 100, 10, y.data());
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(y[i], to_bf16_bits(x[i])) << i;
  });
}

// The producers that round their own output (norms and activations feeding a bf16 matmul) give
// the float output of the plain op, bit for bit, and its bf16 bits, on every SIMD target; one
// team or one thread, sizes around the 8K-float blocks and the SIMD tails.
TEST(Bf16, NormsAndActivationsRoundTheirOutputInTheSamePass) {
  pf_test::for_each_target([&] {
    for (const int64_t rows : {1, 3, 65, 300, 2100})  // 2100 x 128: norms in a team too
      for (const int64_t cols : {5, 64, 128, 200}) {
        const int64_t n = rows * cols;
        const auto x = pf_test::randn(size_t(n), uint32_t(rows * 7 + cols));
        const auto g = pf_test::randn(size_t(cols), 5), b = pf_test::randn(size_t(cols), 6);
        std::vector<float> want(static_cast<size_t>(n)), got(static_cast<size_t>(n));
        std::vector<uint16_t> bits(static_cast<size_t>(n), 0xdead);
        const auto check = [&](const char* what) {
          for (int64_t i = 0; i < n; ++i) {
            ASSERT_EQ(std::memcmp(&got[size_t(i)], &want[size_t(i)], 4), 0) << what << " " << i;
            ASSERT_EQ(bits[size_t(i)], to_bf16_bits(want[size_t(i)])) << what << " " << i;
          }
        };
        layernorm(x.data(), g.data(), b.data(), want.data(), rows, cols, 1e-5f);
        layernorm(x.data(), g.data(), b.data(), got.data(), rows, cols, 1e-5f, bits.data());
        check("layernorm");
        rmsnorm(x.data(), g.data(), want.data(), rows, cols, 1e-6f);
        rmsnorm(x.data(), g.data(), got.data(), rows, cols, 1e-6f, bits.data());
        check("rmsnorm");
        for (const Act a : {Act::Gelu, Act::Relu, Act::Silu, Act::GeluTanh}) {
          activation(a, x.data(), want.data(), n);
          activation(a, x.data(), got.data(), n, bits.data());
          check(act_name(a));
        }
      }
  });
}

// The same for the backward producers of a bf16 matmul's dy: the activation's and SwiGLU's
// backward over strided rows (dx, da, db at row stride ld > cols; the bits dense).
TEST(Bf16, ActivationBackwardsRoundTheirOutputInTheSamePass) {
  pf_test::for_each_target([&] {
    for (const int64_t rows : {1, 70, 2100})
      for (const int64_t cols : {7, 128, 200}) {
        const int64_t ld = cols + 16, n = rows * ld;
        const auto a = pf_test::randn(size_t(rows * cols), uint32_t(rows + cols));
        const auto b = pf_test::randn(size_t(rows * cols), uint32_t(rows * 3 + cols));
        const auto dy = pf_test::randn(size_t(n), uint32_t(rows * 5 + cols));
        const auto same = [&](const std::vector<float>& got, const std::vector<float>& want,
                              const std::vector<uint16_t>& bits, const char* what) {
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t c = 0; c < cols; ++c) {
              const size_t i = size_t(r * ld + c);
              ASSERT_EQ(std::memcmp(&got[i], &want[i], 4), 0) << what << " " << r << "," << c;
              ASSERT_EQ(bits[size_t(r * cols + c)], to_bf16_bits(want[i])) << what;
            }
        };
        std::vector<uint16_t> b1(static_cast<size_t>(rows * cols)), b2(b1.size());
        for (const Act act : {Act::Gelu, Act::Silu}) {
          std::vector<float> want = dy, got = dy;
          kernels::cpu::act_backward_rows(act, a.data(), cols, want.data(), ld, want.data(), ld,
                                          rows, cols);
          kernels::cpu::act_backward_rows(act, a.data(), cols, got.data(), ld, got.data(), ld, rows,
                                          cols, b1.data());
          same(got, want, b1, act_name(act));
        }
        std::vector<float> da_w = dy, da_g = dy, db_w(static_cast<size_t>(n)), db_g(db_w.size());
        kernels::cpu::swiglu_backward_rows(a.data(), b.data(), cols, da_w.data(), da_w.data(), ld,
                                           db_w.data(), ld, rows, cols);
        kernels::cpu::swiglu_backward_rows(a.data(), b.data(), cols, da_g.data(), da_g.data(), ld,
                                           db_g.data(), ld, rows, cols, b1.data(), b2.data());
        same(da_g, da_w, b1, "swiglu da");
        same(db_g, db_w, b2, "swiglu db");
      }
  });
}

// Reference C[i, j] = sum_k A(i, k) B(k, j) in double from the given (already rounded or not)
// operands, and the scale sum |A(i, k) B(k, j)|.
struct Ref {
  std::vector<double> c, scale;
};
template <class FA, class FB>
Ref reference(int64_t M, int64_t N, int64_t K, const FA& A, const FB& B) {
  Ref r{std::vector<double>(size_t(M * N)), std::vector<double>(size_t(M * N))};
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      double s = 0, a = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double p = double(A(i, k)) * double(B(k, j));
        s += p, a += std::abs(p);
      }
      r.c[size_t(i * N + j)] = s, r.scale[size_t(i * N + j)] = a;
    }
  return r;
}

// the reference of beta = 1 applied to a result that already holds the product: twice it
Ref doubled(Ref r) {
  for (double& v : r.c) v *= 2;
  for (double& v : r.scale) v *= 2;
  return r;
}

// max over entries of |got - want| / scale (got at row stride ld)
double worst(const float* got, int64_t ld, const Ref& want, int64_t M, int64_t N) {
  double w = 0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      const double g = got[i * ld + j];
      EXPECT_TRUE(std::isfinite(g)) << "(" << i << ", " << j << ") unwritten";
      const size_t k = size_t(i * N + j);
      w = std::max(w, std::abs(g - want.c[k]) / std::max(1e-30, want.scale[k]));
    }
  return w;
}

double bound(int64_t K) {
  return double(K + 2) * std::ldexp(1.0, -24);
}

TEST(Bf16, LinearForwardDxAndDwMatchRoundedReference) {
  const std::string impl_note = [] {
    std::string s;
    const bool native = bf16_matmul_native(&s);
    return std::string(native ? "native " : "emulated ") + s;
  }();
  SCOPED_TRACE(impl_note);
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{37, 48, 64},
                         {128, 96, 128},
                         {5, 130, 33},
                         {300, 64, 512}}) {
    SCOPED_TRACE(testing::Message() << "M " << M << " N " << N << " K " << K);
    const auto W = pf_test::randn(size_t(N * K), uint32_t(N + K));  // [N, K]
    const auto b = pf_test::randn(size_t(N), 9);
    PackedWeight pw;
    pw.pack(W.data(), N, K, true, Precision::BF16);
    EXPECT_EQ(pw.precision(), Precision::BF16);
    // forward y = x W^T + b, x with a padded row stride
    const int64_t ldx = K + 5;
    const auto x = pf_test::randn(size_t(M * ldx), uint32_t(M));
    // linear_packed reads dense rows of K: give it a dense copy, keep the strided one for dW
    std::vector<float> xd(size_t(M * K));
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < K; ++k) xd[size_t(i * K + k)] = x[size_t(i * ldx + k)];
    std::vector<float> y(size_t(M * N), std::nanf(""));
    linear_packed(xd.data(), pw, b.data(), y.data(), M);
    Ref want = reference(
        M, N, K, [&](int64_t i, int64_t k) { return rb(xd[size_t(i * K + k)]); },
        [&](int64_t k, int64_t j) { return rb(W[size_t(j * K + k)]); });
    const Ref exact = reference(
        M, N, K, [&](int64_t i, int64_t k) { return xd[size_t(i * K + k)]; },
        [&](int64_t k, int64_t j) { return W[size_t(j * K + k)]; });
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        want.c[size_t(i * N + j)] += b[size_t(j)];
        want.scale[size_t(i * N + j)] += std::abs(b[size_t(j)]);
      }
    Ref exact_b = exact;
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) exact_b.c[size_t(i * N + j)] += b[size_t(j)];
    EXPECT_LE(worst(y.data(), N, want, M, N), bound(K)) << "forward";
    // rounding happened: far from the unrounded products (bf16 keeps 8 bits)
    EXPECT_GT(worst(y.data(), N, exact_b, M, N), 1e-4) << "forward ran unrounded";

    // shared rounded rows give the same bits
    Bf16Rows xb;
    xb.round(xd.data(), K, M, K);
    std::vector<float> y2(size_t(M * N), std::nanf(""));
    linear_packed(xd.data(), pw, b.data(), y2.data(), M, {}, &xb);
    EXPECT_EQ(std::memcmp(y.data(), y2.data(), y.size() * 4), 0);

    // dx = dy W, beta 0 and 1, padded dx stride
    const auto dy = pf_test::randn(size_t(M * N), uint32_t(M * 3 + 1));
    const int64_t lddx = K + 3;
    std::vector<float> dx(size_t(M * lddx), std::nanf(""));
    linear_dx_packed(dy.data(), N, pw, 0.0f, dx.data(), lddx, M);
    const Ref wdx = reference(
        M, K, N, [&](int64_t i, int64_t j) { return rb(dy[size_t(i * N + j)]); },
        [&](int64_t j, int64_t k) { return rb(W[size_t(j * K + k)]); });
    EXPECT_LE(worst(dx.data(), lddx, wdx, M, K), bound(N)) << "dx";
    std::vector<float> dx1 = dx;
    linear_dx_packed(dy.data(), N, pw, 1.0f, dx1.data(), lddx, M);  // dx1 = 2 dy W
    EXPECT_LE(worst(dx1.data(), lddx, doubled(wdx), M, K), bound(N)) << "dx beta 1";

    // dW = dy^T x (strided x), beta 0 then 1
    std::vector<float> dW(size_t(N * K), std::nanf(""));
    linear_dw(dy.data(), N, x.data(), ldx, 0.0f, dW.data(), M, N, K, Precision::BF16);
    const Ref wdw = reference(
        N, K, M, [&](int64_t j, int64_t i) { return rb(dy[size_t(i * N + j)]); },
        [&](int64_t i, int64_t k) { return rb(x[size_t(i * ldx + k)]); });
    const Ref edw = reference(
        N, K, M, [&](int64_t j, int64_t i) { return dy[size_t(i * N + j)]; },
        [&](int64_t i, int64_t k) { return x[size_t(i * ldx + k)]; });
    EXPECT_LE(worst(dW.data(), K, wdw, N, K), bound(M)) << "dW";
    EXPECT_GT(worst(dW.data(), K, edw, N, K), 1e-4) << "dW ran unrounded";
    std::vector<float> dW1 = dW;
    linear_dw(dy.data(), N, x.data(), ldx, 1.0f, dW1.data(), M, N, K, Precision::BF16);
    EXPECT_LE(worst(dW1.data(), K, doubled(wdw), N, K), bound(M)) << "dW beta 1";
    // F32 dW: the unrounded reference
    std::vector<float> dWf(size_t(N * K), std::nanf(""));
    linear_dw(dy.data(), N, x.data(), ldx, 0.0f, dWf.data(), M, N, K, Precision::F32);
    EXPECT_LE(worst(dWf.data(), K, edw, N, K), bound(M)) << "dW f32";
  }
}

TEST(Bf16, BadInputsAreRefusedByName) {
  pf_test::expect_error([] { parse_precision("fp16", "[train] --precision"); },
                        {"--precision", "f32 or bf16", "fp16"});
  EXPECT_EQ(parse_precision("bf16", "x"), Precision::BF16);
  EXPECT_EQ(parse_precision("f32", "x"), Precision::F32);
  std::vector<float> a(16), w(16);
  pf_test::expect_error(
      [&] { linear_dw(a.data(), 2, w.data(), 4, 0.5f, w.data(), 2, 4, 4, Precision::BF16); },
      {"linear_dw", "beta"});
  pf_test::expect_error(
      [&] { linear_dw(a.data(), 2, w.data(), 4, 0.0f, w.data(), 2, 4, 4, Precision::BF16); },
      {"linear_dw", "lddy"});
}

// A model with bf16 matmuls: deterministic, loss and gradients within bf16's reach of float32
// (relative 2e-2), and not equal to them (the rounding is in effect in forward and backward).
// Three models: a GELU decoder (q, k, v sharing one rounded input) and a SwiGLU encoder-decoder
// (w1 and w3 sharing one; cross-attention's k, v reading the encoder output instead), both with
// pre-norm (the norm rounds its output, the tape keeps it for the weight gradients), and a
// post-norm RMSNorm decoder (sublayers read the residual stream, rounded by the linears).
TEST(Bf16, ModelLossAndGradientsNearFloat32) {
  const nlohmann::json dec = {
      {"arch", "decoder"}, {"d_model", 64},    {"n_layers", 2}, {"n_heads", 4},
      {"d_ff", 128},       {"vocab_size", 50}, {"max_len", 32}, {"position", {{"type", "rope"}}}};
  nlohmann::json encdec = dec, post = dec;
  encdec["arch"] = "encoder_decoder", encdec["activation"] = "swiglu";
  post["norm_position"] = "post", post["norm"] = "rmsnorm";  // f reads x: no norm-rounded input
  for (const nlohmann::json& j : {dec, encdec, post}) {
    const bool cross = j["arch"] == "encoder_decoder";
    SCOPED_TRACE(j.dump());
    Transformer m = Transformer::random_init(parse_config(j), 11);
    TokenBatch tok, tgt, src;
    std::mt19937 rng(5);
    for (int b = 0; b < 3; ++b) {
      std::vector<int32_t> t(17);
      for (auto& v : t) v = int32_t(rng() % 50);
      tok.push_back(std::vector<int32_t>(t.begin(), t.end() - 1));
      tgt.push_back(std::vector<int32_t>(t.begin() + 1, t.end()));
      src.push_back(std::vector<int32_t>(t.begin() + 3, t.end()));  // 14 source tokens
    }
    ForwardOptions fo;
    if (cross) fo.src = &src;
    auto run = [&](Precision p) {
      m.set_matmul_precision(p);
      m.pack_weights(true);
      ParamStore g = m.zero_grads();
      const double l = m.loss_and_grad(tok, tgt, g, fo).loss;
      return std::make_pair(l, g);
    };
    const auto [lf, gf] = run(Precision::F32);
    const auto [lb, gb] = run(Precision::BF16);
    const auto [lb2, gb2] = run(Precision::BF16);
    EXPECT_EQ(lb, lb2);
    EXPECT_NE(lb, lf);
    EXPECT_NEAR(lb, lf, 2e-2 * std::abs(lf));
    std::vector<std::string> names = {"decoder.layers.0.attn.q.weight",
                                      "decoder.layers.1.ffn.w1.weight",
                                      "decoder.layers.0.ffn.w2.weight", "embed.weight"};
    if (cross)
      for (const char* n :
           {"decoder.layers.0.cross_attn.k.weight", "decoder.layers.1.ffn.w3.weight",
            "encoder.layers.0.attn.v.weight", "encoder.layers.1.ffn.w3.weight"})
        names.push_back(n);
    for (const std::string& n : names) {
      SCOPED_TRACE(n);
      const Tensor &a = gf.get(n), &b = gb.get(n), &b2 = gb2.get(n);
      EXPECT_TRUE(pf_test::bit_equal(b, b2));
      double num = 0, den = 0;
      for (int64_t i = 0; i < a.numel(); ++i) {
        const double d = double(b.data<float>()[i]) - a.data<float>()[i];
        num += d * d, den += double(a.data<float>()[i]) * a.data<float>()[i];
      }
      EXPECT_GT(num, 0.0);
      EXPECT_LT(std::sqrt(num / den), 2e-2);
    }
  }
}

}  // namespace
