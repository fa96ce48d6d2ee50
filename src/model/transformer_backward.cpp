// Training: forward with a tape, cross-entropy, and the backward walk through every layer.
// Each backward line repeats the forward line it differentiates.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <utility>
#include <vector>

#include "../kernels/cpu/backward_kernels.h"
#include "posformer/attention/attention.h"
#include "posformer/model/transformer.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/loss.h"
#include "posformer/ops/matmul.h"
#include "posformer/ops/norm.h"
#include "tape.h"

namespace posformer {

namespace {
std::string lname(const std::string& prefix, int64_t l, const std::string& rest) {
  return prefix + "layers." + std::to_string(l) + "." + rest;
}
}  // namespace

ParamStore Transformer::zero_grads() const {
  ParamStore g;
  for (const ParamSpec& s : specs_)
    if (!s.buffer) g.add(s.name, Tensor(s.shape));  // buffers have no gradient
  return g;
}

namespace {

// dnnl_sgemm (2.6, AVX2) is slow when a non-transposed B operand, or a transposed A operand, is
// cache-line aligned with a row stride that is a multiple of 4 KB (1024 floats): the FFN-width
// activations [B*T, d_ff] at d_ff = 1024 run at ~12 instead of 21-25 FLOP/cycle on one Zen 3
// core. Such operands are given a padded row stride: the backward's own buffers are allocated
// padded (padded_ld), a tape activation is copied into a padded scratch first (~1/10 of the
// gemm's time).
int64_t padded_ld(int64_t cols) {
  return cols >= 1024 && cols % 1024 == 0 ? cols + 16 : cols;
}

// dW[N, K] += dy[M, N]^T x[M, K] (row strides lddy, ldx). For N >= 2K it forms dW^T = x^T dy
// [K, N] in a scratch buffer and adds its transpose: dy^T with a long row stride is the slow
// transposed-A case above.
void weight_grad(const float* dy, int64_t lddy, const float* x, int64_t ldx, float* dW, int64_t M,
                 int64_t N, int64_t K) {
  thread_local std::vector<float> tmp, padded;
  auto pad_b = [&](const float* b, int64_t ld, int64_t cols) -> std::pair<const float*, int64_t> {
    if (padded_ld(ld) == ld) return {b, ld};
    const int64_t ldp = padded_ld(ld);
    if (padded.size() < static_cast<size_t>(M * ldp)) padded.resize(static_cast<size_t>(M * ldp));
    kernels::cpu::copy_rows(b, ld, padded.data(), ldp, M, cols);
    return {padded.data(), ldp};
  };
  if (N < 2 * K) {
    const auto [xb, ldxb] = pad_b(x, ldx, K);
    return ops::gemm(true, false, N, K, M, 1.0f, dy, lddy, xb, ldxb, 1.0f, dW, K);
  }
  if (tmp.size() < static_cast<size_t>(N * K)) tmp.resize(static_cast<size_t>(N * K));
  float* t = tmp.data();
  const auto [dyb, lddyb] = pad_b(dy, lddy, N);
  ops::gemm(true, false, K, N, M, 1.0f, x, ldx, dyb, lddyb, 0.0f, t, N);
  constexpr int64_t kB = 32;  // transpose-add in tiles that stay in L1
  for (int64_t n0 = 0; n0 < N; n0 += kB)
    for (int64_t k0 = 0; k0 < K; k0 += kB) {
      const int64_t n1 = std::min(N, n0 + kB), k1 = std::min(K, k0 + kB);
      for (int64_t n = n0; n < n1; ++n)
        for (int64_t k = k0; k < k1; ++k) dW[n * K + k] += t[k * N + n];
    }
}

// Runs f() and g() at the same time on a team of two (each single-threaded: oneDNN does not
// nest), or one after the other.
template <class F, class G>
void concurrently(bool par, const F& f, const G& g) {
  if (!par) {
    f();
    g();
    return;
  }
#pragma omp parallel num_threads(2)
  {
    if (omp_get_thread_num() == 0)
      f();
    else
      g();
  }
}

// Two threads: the weight gradient and dx of a linear are independent gemms of the same size,
// so they run side by side, each whole on one thread, instead of each split over both.
bool split_linear_backward(int64_t M, int64_t N, int64_t K) {
  static const bool on = [] {
    const char* e = std::getenv("POSFORMER_LB_SPLIT");
    return !e || e[0] != '0';
  }();
  return on && omp_get_max_threads() == 2 && !omp_in_parallel() && M * N * K >= (int64_t{1} << 20);
}

// y[M, N] = x[M, K] W^T + b:  dW += dy^T x,  db += colsum dy,  dx = dy W (beta 0: overwrite,
// 1: add). ldx, lddy, lddx: row strides of x, dy, dx.
void linear_backward(const ParamStore& params,
                     const std::map<std::string, ops::PackedWeight>& packed, ParamStore& grads,
                     const std::string& n, const float* x, int64_t ldx, const float* dy,
                     int64_t lddy, float* dx, int64_t lddx, int64_t M, int64_t N, int64_t K,
                     float beta, const ops::Bf16Rows* xb = nullptr,
                     const ops::Bf16Rows* dyb_in = nullptr) {
  float* dW = grads.f32(n + ".weight");
  float* db = grads.has(n + ".bias") ? grads.f32(n + ".bias") : nullptr;
  const float* W = params.f32(n + ".weight");
  // dx = dy W from the packed weight (dense strides only: oneDNN 2.6 is slow on padded ones;
  // always with bf16 weights, whose rounding every path must share)
  const auto pit = packed.find(n + ".weight");
  const ops::PackedWeight* pk = pit != packed.end() ? &pit->second : nullptr;
  const bool bf16 = pk && pk->precision() == ops::Precision::BF16;
  const ops::PackedWeight* pw =
      pk && pk->has_backward() && ((lddy == N && lddx == K) || bf16) ? pk : nullptr;
  PF_CHECK(!bf16 || pw, "[linear backward] ", n, ": bf16 weights packed without the backward");
  // bf16: dy rounded once for dW and dx, x once unless the caller did (both threads here)
  // (addresses taken here: inside the lambdas a thread_local names the running thread's copy)
  thread_local ops::Bf16Rows dyr, xr;
  const ops::Bf16Rows* dyb = nullptr;
  if (bf16) {
    if (dyb_in && dyb_in->holds(dy, lddy, M, N))
      dyb = dyb_in;  // rounded by its producer
    else
      dyr.round(dy, lddy, M, N), dyb = &dyr;
    if (!xb || !xb->holds(x, ldx, M, K)) xr.round(x, ldx, M, K), xb = &xr;
  }
  concurrently(
      dx && split_linear_backward(M, N, K),
      [&] {
        if (bf16)
          return ops::linear_dw(dy, lddy, x, ldx, 1.0f, dW, M, N, K, ops::Precision::BF16, dyb, xb);
        weight_grad(dy, lddy, x, ldx, dW, M, N, K);
      },
      [&] {
        if (dx && pw) ops::linear_dx_packed(dy, lddy, *pw, beta, dx, lddx, M, dyb);
        if (dx && !pw) ops::gemm(false, false, M, K, N, 1.0f, dy, lddy, W, K, beta, dx, lddx);
        if (db) kernels::cpu::bias_grad(dy, lddy, db, M, N);  // here: weight_grad has more to do
      });
}

}  // namespace

// N(x): dx = N'(x)^T dout (overwrite), and the gradients of the norm's weight (and bias)
void Transformer::norm_backward(StackGradCall& c, const std::string& n, const float* x_in,
                                const float* dout, float* dx) const {
  const int64_t BT = c.tape.B * c.tape.T, d = cfg_.d_model;
  const float eps = static_cast<float>(cfg_.norm_eps);
  if (cfg_.norm == Norm::LayerNorm)
    ops::layernorm_backward(x_in, params_.f32(n + ".weight"), dout, dx, c.grads.f32(n + ".weight"),
                            c.grads.f32(n + ".bias"), BT, d, eps);
  else
    ops::rmsnorm_backward(x_in, params_.f32(n + ".weight"), dout, dx, c.grads.f32(n + ".weight"),
                          BT, d, eps);
}

// Backward of attention_sublayer: dout [BT, d] -> dhin [BT, d] (overwrite); cross-attention
// adds the key/value inputs' gradient into c.d_enc.
void Transformer::attention_sublayer_backward(const Stack& st, StackGradCall& c, int64_t l,
                                              bool self, const SubTape& sp, const float* dout,
                                              float* dhin) const {
  const Geometry g = geometry();
  const int64_t B = c.tape.B, T = c.tape.T, d = g.d, BT = B * T;
  const int64_t Tk = self ? T : c.tape.Ts;
  const std::string a = lname(st.prefix, l, self ? "attn" : "cross_attn");
  ParamStore& grads = c.grads;
  // out = att Wo^T + bo
  linear_backward(params_, packed_, grads, a + ".o", sp.att.data<float>(), g.HD, dout, d, c.datt,
                  g.HD, BT, d, g.HD, 0.0f, &sp.attb);
  AttnDesc desc = attn_desc(st, self, c.tape.in, Tk);
  desc.q = sp.q.data<float>(), desc.k = sp.k.data<float>(), desc.v = sp.v.data<float>();
  desc.params = &params_, desc.param_prefix = a + ".";
  // the forward's output (the fused softmax backward reads it)
  desc.out = const_cast<float*>(sp.att.data<float>());
  std::unique_ptr<ScoreHook> hook;
  if (self) hook = st.pe->prepare(params_, AttnInputs{l, &desc});
  if (self && cfg_.attention.residual) {  // dS_l += dS_(l+1); record dS_l for layer l-1
    Tensor &cur = c.dcarried[l % 2], &next = c.dcarried[(l + 1) % 2];
    const Shape shape{B, g.H, T, T};
    if (cur.shape() != shape) cur = Tensor(shape);
    std::fill_n(cur.data<float>(), cur.numel(), 0.0f);  // blocks skip masked keys: keep them 0
    const float* in = l + 1 < cfg_.n_layers ? next.data<float>() : nullptr;
    hook = chain_hooks(std::move(hook),
                       std::make_unique<ResidualScoresHook>(desc, in, cur.data<float>()));
  }
  desc.hook = hook.get();
  AttnGrads ag;
  ag.dout = c.datt, ag.lddo = g.HD, ag.dq = c.dq, ag.dk = c.dk, ag.dv = c.dv;
  ag.param_grads = &grads;
  st.attn->backward(desc, *sp.saved, ag, hook.get());
  if (hook) hook->finish_backward(grads);
  if (self && st.pe->rotary() && !st.attn->caps().rotary_inside) {  // rotated after projection
    st.pe->rotate_backward(c.dq, g.H, g.HD, c.tape.in.pos);
    st.pe->rotate_backward(c.dk, g.Hkv, g.KD, c.tape.in.pos);
  }
  const float* kv_in = self ? sp.h.data<float>() : c.enc;
  float* dkv_in = self ? dhin : c.d_enc;
  // q, k, v read h (self): rounded to bf16 once for their three weight gradients
  const ops::Bf16Rows* hb = sp.hb.holds(sp.h.data<float>(), d, BT, d)
                                ? &sp.hb
                                : shared_bf16_input(a + ".q", sp.h.data<float>(), BT, d);
  linear_backward(params_, packed_, grads, a + ".q", sp.h.data<float>(), d, c.dq, g.HD, dhin, d, BT,
                  g.HD, d, 0.0f, hb);
  linear_backward(params_, packed_, grads, a + ".k", kv_in, d, c.dk, g.KD, dkv_in, d, B * Tk, g.KD,
                  d, 1.0f, hb);
  linear_backward(params_, packed_, grads, a + ".v", kv_in, d, c.dv, g.KD, dkv_in, d, B * Tk, g.KD,
                  d, 1.0f, hb);
}

// Backward of ffn_sublayer: dout [BT, d] -> dhin [BT, d] (overwrite).
void Transformer::ffn_sublayer_backward(const Stack& st, StackGradCall& c, int64_t l,
                                        const SubTape& sp, const float* dout, float* dhin) const {
  const Geometry g = geometry();
  const int64_t BT = c.tape.B * c.tape.T, d = g.d, ldf = c.ldf;
  const std::string w1 = lname(st.prefix, l, "ffn.w1"), w3 = lname(st.prefix, l, "ffn.w3");
  float *df1 = c.df1, *df3 = c.df3;
  // out = fa W2^T + b2
  linear_backward(params_, packed_, c.grads, lname(st.prefix, l, "ffn.w2"), sp.fa.data<float>(),
                  g.F, dout, d, df1, ldf, BT, d, g.F, 0.0f, &sp.fab);
  // bf16: df1 (and df3) rounded by the activation's backward for the dx and dW of w1 (and w3)
  thread_local ops::Bf16Rows df1b, df3b;
  if (g.swiglu) {  // fa = silu(f1) * f3
    const bool b16 = bf16_weight(w1) && bf16_weight(w3);
    kernels::cpu::swiglu_backward_rows(sp.f1.data<float>(), sp.f3.data<float>(), g.F, df1, df1, ldf,
                                       df3, ldf, BT, g.F,
                                       b16 ? df1b.prepare(df1, ldf, BT, g.F) : nullptr,
                                       b16 ? df3b.prepare(df3, ldf, BT, g.F) : nullptr);
    const ops::Bf16Rows* hb = sp.hb.holds(sp.h.data<float>(), d, BT, d)  // w1, w3 read h
                                  ? &sp.hb
                                  : shared_bf16_input(w1, sp.h.data<float>(), BT, d);
    linear_backward(params_, packed_, c.grads, w3, sp.h.data<float>(), d, df3, ldf, dhin, d, BT,
                    g.F, d, 0.0f, hb, b16 ? &df3b : nullptr);
    linear_backward(params_, packed_, c.grads, w1, sp.h.data<float>(), d, df1, ldf, dhin, d, BT,
                    g.F, d, 1.0f, hb, b16 ? &df1b : nullptr);
  } else {  // fa = act(f1)
    const bool b16 = bf16_weight(w1);
    kernels::cpu::act_backward_rows(g.act, sp.f1.data<float>(), g.F, df1, ldf, df1, ldf, BT, g.F,
                                    b16 ? df1b.prepare(df1, ldf, BT, g.F) : nullptr);
    linear_backward(params_, packed_, c.grads, w1, sp.h.data<float>(), d, df1, ldf, dhin, d, BT,
                    g.F, d, 0.0f, &sp.hb, b16 ? &df1b : nullptr);
  }
}

// Backward of residual_sublayer, in place on dx [BT, d].
void Transformer::residual_sublayer_backward(const Stack& st, StackGradCall& c, int64_t l, int sub,
                                             float* dx) const {
  const int64_t BT = c.tape.B * c.tape.T, d = cfg_.d_model;
  const SubTape& sp = c.tape.layers[l][sub];
  const std::string nn = lname(st.prefix, l, kSublayerNorms[sub]);
  auto f_back = [&](const float* dout, float* dhin) {
    if (sub == 2)
      ffn_sublayer_backward(st, c, l, sp, dout, dhin);
    else
      attention_sublayer_backward(st, c, l, sub == 0, sp, dout, dhin);
  };
  // dropout on f's output (training, ModelConfig::dropout): its gradient gets the same mask
  const float p = static_cast<float>(cfg_.dropout);
  auto masked = [&](const float* g) -> const float* {
    if (p == 0.0f) return g;
    ops::copy(g, c.ddrop, BT * d);
    ops::dropout(c.ddrop, BT * d, p, dropout_key(st.prefix, c.tape.in.dropout_seed, l, sub));
    return c.ddrop;
  };
  if (geometry().pre) {  // x_out = x + f(N(x)):  dx += N'^T f'^T dx_out
    f_back(masked(dx), c.dh);
    norm_backward(c, nn, sp.norm_in.data<float>(), c.dh, c.dy);
    ops::add_inplace(dx, c.dy, BT * d);
  } else {  // x_out = N(x + f(x)):  dy = N'^T dx_out;  dx = dy + f'^T dy
    norm_backward(c, nn, sp.norm_in.data<float>(), dx, c.dy);
    f_back(masked(c.dy), c.dh);
    ops::copy(c.dy, dx, BT * d);
    ops::add_inplace(dx, c.dh, BT * d);
  }
}

void Transformer::backward_stack(const Stack& st, const StackTape& tape, float* dx,
                                 const float* enc, float* d_enc, ParamStore& grads) const {
  const Geometry g = geometry();
  const int64_t B = tape.B, T = tape.T, Ts = tape.Ts, d = g.d, BT = B * T;
  // Gradient buffers, kept per thread and stack between calls (every one is fully written
  // before it is read, so stale contents from the previous step never leak).
  thread_local BackwardBuffers bufs_enc, bufs_dec;
  BackwardBuffers& wb = st.prefix == "encoder." ? bufs_enc : bufs_dec;
  StackGradCall c{tape, grads, enc, d_enc};
  c.dh = wb.get(wb.dh, {BT, d}), c.dy = wb.get(wb.dy, {BT, d}), c.dq = wb.get(wb.dq, {BT, g.HD});
  c.datt = wb.get(wb.datt, {BT, g.HD});
  c.dk = wb.get(wb.dk, {B * std::max(T, Ts), g.KD});
  c.dv = wb.get(wb.dv, {B * std::max(T, Ts), g.KD});
  c.ldf = padded_ld(g.F);
  c.df1 = wb.get(wb.df1, {BT, c.ldf});
  c.df3 = wb.get(wb.df3, {g.swiglu ? BT : 0, c.ldf});
  c.ddrop = wb.get(wb.ddrop, {cfg_.dropout > 0 ? BT : 0, d});
  if (g.pre) {  // x_final = N(x_L)
    ops::copy(dx, c.dy, BT * d);
    norm_backward(c, st.prefix + "final_norm", tape.final_in.data<float>(), c.dy, dx);
  }
  for (int64_t l = cfg_.n_layers - 1; l >= 0; --l)
    for (int sub = 2; sub >= 0; --sub)
      if (sub != 1 || st.cross) residual_sublayer_backward(st, c, l, sub, dx);
  if (cfg_.dropout > 0)  // the input embeddings' dropout (run_stack)
    ops::dropout(dx, BT * d, static_cast<float>(cfg_.dropout),
                 dropout_key(st.prefix, tape.in.dropout_seed, 0, 3));
}

void Transformer::embed_backward(const Stack& st, const TokenBatch& tokens, const Positions& pos,
                                 const float* dx, ParamStore& grads) const {
  const int64_t B = static_cast<int64_t>(tokens.size()), T = tokens[0].size(), d = cfg_.d_model;
  float* dE = grads.f32("embed.weight");
  // x = E[token] * s (+ P): dE[token] += s * dx; the position table gets dx unscaled.
  const float s = static_cast<float>(cfg_.token_embed_scale());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      const float* row = dx + (b * T + t) * d;
      float* er = dE + static_cast<int64_t>(tokens[b][t]) * d;
      if (s == 1.0f)
        for (int64_t i = 0; i < d; ++i) er[i] += row[i];
      else
        for (int64_t i = 0; i < d; ++i) er[i] += s * row[i];
    }
  st.pe->embed_backward(dx, pos, grads);
}

namespace {
void check_targets(const TokenBatch& tokens, const TokenBatch& targets, int64_t vocab) {
  PF_CHECK(targets.size() == tokens.size(), "[loss] ", targets.size(), " target rows for ",
           tokens.size(), " input rows");
  for (size_t b = 0; b < targets.size(); ++b) {
    PF_CHECK(targets[b].size() == tokens[b].size(), "[loss] target row ", b, " has ",
             targets[b].size(), " entries, input has ", tokens[b].size());
    for (int32_t t : targets[b])
      PF_CHECK(t >= -1 && t < vocab, "[loss] target ", t, " outside [-1, ", vocab, ")");
  }
}
}  // namespace

Transformer::Loss Transformer::loss_and_grad(const TokenBatch& tokens, const TokenBatch& targets,
                                             ParamStore& grads, const ForwardOptions& opt,
                                             float grad_scale) const {
  PF_CHECK(!cfg_.is_vit(), "[train] an arch vit model trains on images (classify_loss_and_grad)");
  PF_CHECK(cfg_.head == Head::Lm, "[train] the model has no LM head (head: none)");
  check_tokens(tokens, cfg_.vocab_size,
               cfg_.arch == Arch::Encoder ? "encoder tokens" : "decoder tokens");
  check_targets(tokens, targets, cfg_.vocab_size);
  const int64_t B = tokens.size(), T = tokens[0].size(), d = cfg_.d_model, V = cfg_.vocab_size;
  const bool encdec = cfg_.arch == Arch::EncoderDecoder;
  // ---- forward with tapes
  const Stack enc_st = encoder_stack(), dec_st = decoder_stack();
  // Tapes and the logits / gradient buffers are kept per thread between calls: a training loop
  // then reuses the same memory every step instead of allocating (and zero-filling) it anew.
  thread_local StackTape enc_tape, dec_tape;
  thread_local BackwardBuffers head_bufs;
  Tensor enc_out, x;
  int64_t Ts = 0;
  const TokenBatch* src = opt.src;
  StackInput enc_in;
  StackIds src_ids;
  PF_CHECK(!opt.src_segments || encdec,
           "[input] source segment ids are only for encoder_decoder models");
  if (encdec) {
    PF_CHECK(src != nullptr, "[input] an encoder_decoder model needs source tokens");
    PF_CHECK(static_cast<int64_t>(src->size()) == B, "[input] ", src->size(),
             " source sequences for ", B, " target sequences");
    check_tokens(*src, cfg_.vocab_size, "encoder tokens");
    Ts = (*src)[0].size();
    enc_in = encoder_input(*src, opt, src_ids);
    enc_in.dropout_seed = opt.dropout_seed;
    enc_out = embed(enc_st, *src, enc_in.pos);
    run_stack(enc_st, enc_out.data<float>(), enc_in, nullptr, 0, &enc_tape);
  } else {
    PF_CHECK(src == nullptr, "[input] source tokens are only for encoder_decoder models");
  }
  const Stack& main_st = cfg_.arch == Arch::Encoder ? enc_st : dec_st;
  StackTape& main_tape = cfg_.arch == Arch::Encoder ? enc_tape : dec_tape;
  StackIds ids;
  StackInput in = main_input(tokens, opt, ids);
  in.dropout_seed = opt.dropout_seed;
  x = embed(main_st, tokens, in.pos);
  run_stack(main_st, x.data<float>(), in, encdec ? enc_out.data<float>() : nullptr, Ts, &main_tape);
  // ---- logits and loss: z = h W^T
  const std::string head = cfg_.tie_embeddings ? "embed.weight" : "lm_head.weight";
  Tensor& logits = head_bufs.dh;  // [B*T, V], overwritten below
  BackwardBuffers::get(logits, {B * T, V});
  ops::linear(x.data<float>(), params_.f32(head), nullptr, logits.data<float>(), B * T, V, d);
  std::vector<int32_t> flat(static_cast<size_t>(B * T));
  for (int64_t b = 0; b < B; ++b)
    std::copy(targets[b].begin(), targets[b].end(), flat.begin() + b * T);
  ops::CrossEntropy ce = ops::cross_entropy(logits.data<float>(), flat.data(), B * T, V,
                                            logits.data<float>(), grad_scale, opt.label_smoothing);
  // ---- backward: dh = dz W, dW += dz^T h
  Tensor& dx = head_bufs.dy;  // [B*T, d], overwritten by the gemm
  BackwardBuffers::get(dx, {B * T, d});
  concurrently(
      split_linear_backward(B * T, V, d),
      [&] {
        weight_grad(logits.data<float>(), V, x.data<float>(), d, grads.f32(head), B * T, V, d);
      },
      [&] {
        ops::gemm(false, false, B * T, d, V, 1.0f, logits.data<float>(), V, params_.f32(head), d,
                  0.0f, dx.data<float>(), d);
      });
  Tensor d_enc(encdec ? Shape{B * Ts, d} : Shape{0});
  backward_stack(main_st, main_tape, dx.data<float>(), encdec ? enc_out.data<float>() : nullptr,
                 encdec ? d_enc.data<float>() : nullptr, grads);
  embed_backward(main_st, tokens, in.pos, dx.data<float>(), grads);
  if (encdec) {
    backward_stack(enc_st, enc_tape, d_enc.data<float>(), nullptr, nullptr, grads);
    embed_backward(enc_st, *src, enc_in.pos, d_enc.data<float>(), grads);
  }
  return {ce.loss, ce.count};
}

Transformer::Loss Transformer::loss(const TokenBatch& tokens, const TokenBatch& targets,
                                    const ForwardOptions& opt) const {
  PF_CHECK(cfg_.head == Head::Lm, "[eval] the model has no LM head (head: none)");
  check_targets(tokens, targets, cfg_.vocab_size);
  ForwardOutput out = forward(tokens, opt);
  const int64_t B = tokens.size(), T = tokens[0].size();
  std::vector<int32_t> flat(static_cast<size_t>(B * T));
  for (int64_t b = 0; b < B; ++b)
    std::copy(targets[b].begin(), targets[b].end(), flat.begin() + b * T);
  ops::CrossEntropy ce = ops::cross_entropy(out.logits.data<float>(), flat.data(), B * T,
                                            cfg_.vocab_size, nullptr, 1.0f, opt.label_smoothing);
  return {ce.loss, ce.count};
}

}  // namespace posformer
