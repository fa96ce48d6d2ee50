// posformer_bench: forward of a 12-layer BERT-base-shaped encoder (the peers' model in
// ../shared/peers/bert.py), the matmul share of that forward, dnnl_sgemm on the layer's exact
// linear shapes, and the non-matmul pieces of one layer. bench/run.sh runs it interleaved with
// the PyTorch and ONNX Runtime peers; bench/RESULTS.md has the numbers.
//
// Families (filter with --benchmark_filter):
//   BM_Encoder/T                 encode_embeddings(x), x [1, T, 768]; GFLOP/s as the peers count
//   BM_EncoderProfiled/T         same with the matmul profiler on: matmul share and rate
//   BM_Sgemm/M/N/K               dnnl_sgemm('N','T') = nn.Linear shape y[M,N] = x[M,K] W[N,K]^T
//                                (the layer's shapes, and 2048^3 as the machine's ceiling)
//   BM_Linear/M/N/K              ops::linear (sgemm + bias) on the same shapes
//   BM_LinearPacked/M/N/K        ops::linear_packed (weights packed once, bias fused), same shapes
//   BM_TrainLinear/M/N/K/p/dx    the training benchmark's forward (dx 0) and dx = dy W (dx 1)
//                                gemms, sgemm (p 0) or packed (p 1)
//   BM_Gelu, BM_LayerNorm, BM_AddBias, BM_Residual, BM_Attention: one layer's non-matmul work
#include <benchmark/benchmark.h>
#include <oneapi/dnnl/dnnl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <random>
#include <vector>

#include "posformer/attention/attention.h"
#include "posformer/core/runtime.h"
#include "posformer/core/tensor.h"
#include "posformer/model/config.h"
#include "posformer/model/transformer.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/matmul.h"
#include "posformer/ops/norm.h"
#include "posformer/ops/packed_linear.h"

namespace {
using namespace posformer;

constexpr int64_t kD = 768, kHeads = 12, kFF = 3072, kLayers = 12;

// FLOPs of one encoder layer at sequence length n, batch 1 (bert.py layer_flops): the linears
// (q, k, v, o, ffn) plus QK^T and PV. Softmax, GELU, norms are not counted (same as the peers).
double layer_flops(int64_t n) {
  return 2.0 * n * kD * (4 * kD + 2 * kFF) + 4.0 * n * n * kD;
}

ModelConfig bert_config() {
  ModelConfig c;
  c.arch = "encoder";
  c.d_model = kD;
  c.n_layers = kLayers;
  c.n_heads = kHeads;
  c.d_ff = kFF;
  c.activation = "gelu";  // exact (erf) GELU
  c.norm = "layernorm";
  c.norm_position = "post";
  c.norm_eps = 1e-12;
  c.bias = true;
  c.head = "none";
  c.position.type = "none";
  c.vocab_size = 8;  // no embeddings are used (encode_embeddings)
  c.max_len = 512;
  return c;
}

void fill_normal(float* p, int64_t n, uint64_t seed, float sd = 1.0f) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> dist(0.0f, sd);
  for (int64_t i = 0; i < n; ++i) p[i] = dist(g);
}

std::vector<float> randn(int64_t n, uint64_t seed, float sd = 1.0f) {
  std::vector<float> v(static_cast<size_t>(n));
  fill_normal(v.data(), n, seed, sd);
  return v;
}

void init_once() {
  static bool done = false;
  if (done) return;
  done = true;
  init_runtime();
  set_threads(2);
}

const Transformer& bert_model() {
  static std::unique_ptr<Transformer> m;
  if (!m) {
    init_once();
    m = std::make_unique<Transformer>(Transformer::random_init(bert_config(), 0));
    m->pack_weights();  // as Transformer::load does (POSFORMER_PACKED=0: sgemm, for A/B)
  }
  return *m;
}

// The encoder overwrites x, so every iteration restores the input (outside the timing).
void run_encoder(benchmark::State& state, bool profile) {
  const Transformer& m = bert_model();
  const int64_t T = state.range(0);
  const std::vector<float> x0 = randn(T * kD, 1);
  Tensor x({1, T, kD});
  auto reset = [&] { std::copy(x0.begin(), x0.end(), x.data<float>()); };
  reset();
  m.encode_embeddings(x);  // warm-up: workspace, page faults, oneDNN's kernel setup
  ops::matmul_profile_read_and_reset();
  ops::matmul_profile_enable(profile);
  double fwd_seconds = 0;
  for (auto _ : state) {
    state.PauseTiming();
    reset();
    state.ResumeTiming();
    const auto t0 = std::chrono::steady_clock::now();
    m.encode_embeddings(x);
    fwd_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    benchmark::DoNotOptimize(x.data<float>());
    benchmark::ClobberMemory();
  }
  ops::matmul_profile_enable(false);
  const double fl = kLayers * layer_flops(T);
  state.counters["GFLOP/s"] =
      benchmark::Counter(fl * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
  if (!profile) return;
  const ops::MatmulProfile p = ops::matmul_profile_read_and_reset();
  const double n = static_cast<double>(state.iterations());
  const double threads = num_threads();
  // linears: wall time (called outside parallel regions, oneDNN uses both threads)
  state.counters["lin_ms"] = p.seconds / n * 1e3;
  state.counters["lin_GFLOPs"] = p.seconds > 0 ? p.flops / p.seconds * 1e-9 : 0.0;
  state.counters["lin_share_%"] = 100.0 * p.seconds / fwd_seconds;
  // attention QK^T / PV: per-head single-thread gemms inside the heads' parallel loop; their
  // summed thread time / team size estimates their wall time
  state.counters["attn_mm_ms"] = p.inner_thread_seconds / threads / n * 1e3;
  state.counters["attn_mm_GFLOPs"] =
      p.inner_thread_seconds > 0 ? p.inner_flops / (p.inner_thread_seconds / threads) * 1e-9 : 0.0;
  const double mm = p.seconds + p.inner_thread_seconds / threads;
  state.counters["mm_share_%"] = 100.0 * mm / fwd_seconds;
  state.counters["non_mm_ms"] = (fwd_seconds - mm) / n * 1e3;
  state.counters["mm_calls"] = static_cast<double>(p.calls + p.inner_calls) / n;
}

void BM_Encoder(benchmark::State& state) {
  run_encoder(state, false);
}
void BM_EncoderProfiled(benchmark::State& state) {
  run_encoder(state, true);
}

// dnnl_sgemm on the nn.Linear shape: y[M,N] = x[M,K] W[N,K]^T (what ops::linear calls).
void BM_Sgemm(benchmark::State& state) {
  init_once();
  const int64_t M = state.range(0), N = state.range(1), K = state.range(2);
  const std::vector<float> x = randn(M * K, 2), W = randn(N * K, 3, 0.02f);
  std::vector<float> y(static_cast<size_t>(M * N));
  for (auto _ : state) {
    const dnnl_status_t st =
        dnnl_sgemm('N', 'T', M, N, K, 1.0f, x.data(), K, W.data(), K, 0.0f, y.data(), N);
    if (st != dnnl_success) state.SkipWithError("dnnl_sgemm failed");
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * M * N * K * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ops::linear (sgemm + bias pass) on the same shapes.
void BM_Linear(benchmark::State& state) {
  init_once();
  const int64_t M = state.range(0), N = state.range(1), K = state.range(2);
  const std::vector<float> x = randn(M * K, 2), W = randn(N * K, 3, 0.02f), b = randn(N, 4);
  std::vector<float> y(static_cast<size_t>(M * N));
  for (auto _ : state) {
    ops::linear(x.data(), W.data(), b.data(), y.data(), M, N, K);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * M * N * K * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ops::linear_packed (weights packed once, bias fused) on the same shapes.
void BM_LinearPacked(benchmark::State& state) {
  init_once();
  const int64_t M = state.range(0), N = state.range(1), K = state.range(2);
  const std::vector<float> x = randn(M * K, 2), W = randn(N * K, 3, 0.02f), b = randn(N, 4);
  std::vector<float> y(static_cast<size_t>(M * N));
  ops::PackedWeight pw;
  pw.pack(W.data(), N, K, false);
  for (auto _ : state) {
    ops::linear_packed(x.data(), pw, b.data(), y.data(), M);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * M * N * K * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// The training benchmark's gemms (bench/train_bench.sh: d 256, d_ff 1024, B*T 2048, V 260):
// forward y = x W^T and dx = dy W, sgemm (arg 3 = 0) or packed (1).
void BM_TrainLinear(benchmark::State& state) {
  init_once();
  const int64_t M = state.range(0), N = state.range(1), K = state.range(2);
  const bool packed = state.range(3) != 0, dx = state.range(4) != 0;
  const std::vector<float> x = randn(M * (dx ? N : K), 2), W = randn(N * K, 3, 0.02f);
  std::vector<float> y(static_cast<size_t>(M * (dx ? K : N)));
  ops::PackedWeight pw;
  pw.pack(W.data(), N, K, true);
  for (auto _ : state) {
    if (dx && packed) ops::linear_dx_packed(x.data(), N, pw, 0.0f, y.data(), K, M);
    if (dx && !packed)
      ops::gemm(false, false, M, K, N, 1.0f, x.data(), N, W.data(), K, 0.0f, y.data(), K);
    if (!dx && packed) ops::linear_packed(x.data(), pw, nullptr, y.data(), M);
    if (!dx && !packed) ops::linear(x.data(), W.data(), nullptr, y.data(), M, N, K);
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * M * N * K * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- one layer's non-matmul work (what the encoder does between its matmuls)
// Exact GELU over the FFN activations [T, 3072], out of place from fixed N(0, 1) inputs. (Applied
// in place, repeated calls shrink the negative half towards 0 until it is denormal, ~12x slower
// per element on x86: the 1978 us of issue 11 was that artefact, not the kernel.)
void BM_Gelu(benchmark::State& state) {
  init_once();
  const int64_t n = state.range(0) * kFF;
  const std::vector<float> x = randn(n, 5);
  std::vector<float> y(static_cast<size_t>(n));
  for (auto _ : state) {
    ops::activation(ops::Act::Gelu, x.data(), y.data(), n);
    benchmark::ClobberMemory();
  }
}

void BM_AddBias(benchmark::State& state) {  // bias pass after a linear, [T, N]
  init_once();
  const int64_t T = state.range(0), N = state.range(1);
  std::vector<float> y = randn(T * N, 6);
  const std::vector<float> b = randn(N, 7, 1e-3f);
  for (auto _ : state) {
    ops::bias_act(ops::Act::Identity, y.data(), b.data(), T, N);
    benchmark::ClobberMemory();
  }
}

void BM_LayerNorm(benchmark::State& state) {  // post-LN on [T, 768]
  init_once();
  const int64_t T = state.range(0);
  std::vector<float> x = randn(T * kD, 8);
  const std::vector<float> g(kD, 1.0f), b(kD, 0.0f);
  for (auto _ : state) {
    ops::layernorm(x.data(), g.data(), b.data(), x.data(), T, kD, 1e-12f);
    benchmark::ClobberMemory();
  }
}

void BM_Residual(benchmark::State& state) {  // x += f(x) on [T, 768]
  init_once();
  const int64_t T = state.range(0);
  std::vector<float> x = randn(T * kD, 9);
  const std::vector<float> f = randn(T * kD, 10, 1e-3f);
  for (auto _ : state) {
    ops::add_inplace(x.data(), f.data(), T * kD);
    benchmark::ClobberMemory();
  }
}

// Attention core of one layer (QK^T, softmax, PV for 12 heads); GFLOP/s counts the two matmuls.
void BM_Attention(benchmark::State& state) {
  init_once();
  const int64_t T = state.range(0), D = kD / kHeads;
  const std::vector<float> q = randn(T * kD, 11, 0.5f), k = randn(T * kD, 12, 0.5f),
                           v = randn(T * kD, 13);
  std::vector<float> out(static_cast<size_t>(T * kD));
  AttnDesc a;
  a.B = 1, a.Tq = T, a.Tk = T, a.H = kHeads, a.Hkv = kHeads, a.D = D;
  a.q = q.data(), a.k = k.data(), a.v = v.data(), a.out = out.data();
  a.ldq = a.ldk = a.ldv = a.ldo = kD;
  a.scale = 1.0f / 8.0f;
  for (auto _ : state) {
    attention_forward(a);
    benchmark::ClobberMemory();
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(4.0 * T * T * kD * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void linear_shapes(benchmark::internal::Benchmark* b) {
  b->Args({2048, 2048, 2048});  // the ceiling: a large square sgemm, as in the peers' README
  for (int64_t T : {128, 512})
    for (auto [N, K] :
         std::vector<std::pair<int64_t, int64_t>>{{3 * kD, kD}, {kD, kD}, {kFF, kD}, {kD, kFF}})
      b->Args({T, N, K});
}

BENCHMARK(BM_Encoder)
    ->Arg(128)
    ->Arg(512)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();
BENCHMARK(BM_EncoderProfiled)
    ->Arg(128)
    ->Arg(512)
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();
BENCHMARK(BM_Sgemm)
    ->Apply(linear_shapes)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();
BENCHMARK(BM_Linear)
    ->Apply(linear_shapes)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();
BENCHMARK(BM_LinearPacked)
    ->Apply(linear_shapes)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();
BENCHMARK(BM_TrainLinear)
    ->ArgsProduct({{2048}, {768, 256, 1024}, {256}, {0, 1}, {0, 1}})
    ->ArgsProduct({{2048}, {256}, {1024}, {0, 1}, {0, 1}})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();
BENCHMARK(BM_Attention)
    ->Arg(128)
    ->Arg(512)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();
BENCHMARK(BM_Gelu)
    ->Arg(128)
    ->Arg(512)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();
BENCHMARK(BM_AddBias)
    ->Args({128, kD})
    ->Args({128, kFF})
    ->Args({512, kD})
    ->Args({512, kFF})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();
BENCHMARK(BM_LayerNorm)
    ->Arg(128)
    ->Arg(512)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();
BENCHMARK(BM_Residual)
    ->Arg(128)
    ->Arg(512)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime()
    ->MeasureProcessCPUTime();

}  // namespace

int main(int argc, char** argv) {
  // Same OpenMP wait policy as the posformer CLI (tools/posformer/main.cpp, core/runtime.h).
  // POSFORMER_NO_REEXEC=1 with OMP_WAIT_POLICY unset times libgomp's default (spin, then sleep).
  if (set_wait_policy_env()) execv("/proc/self/exe", argv);  // on failure, carry on
  init_once();
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::AddCustomContext("posformer_threads", std::to_string(num_threads()));
  benchmark::AddCustomContext("cpu_features", cpu_features());
  const char* wp = std::getenv("OMP_WAIT_POLICY");
  benchmark::AddCustomContext("OMP_WAIT_POLICY", wp ? wp : "(libgomp default)");
  benchmark::AddCustomContext("wait_policy", wait_policy_description());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
