// arch vit: patch embedding, CLS token, the encoder stack, pooling and the classification head,
// forward and backward (model/transformer.h, docs/vision.md).
#include <cmath>
#include <vector>

#include "posformer/model/transformer.h"
#include "posformer/ops/activation.h"
#include "posformer/ops/loss.h"
#include "posformer/ops/matmul.h"
#include "tape.h"

namespace posformer {

namespace {
struct ImageGeom {
  int64_t B, C, H, W, p, gh, gw, N, K;  // K = C*p*p
};

ImageGeom check_images(const ModelConfig& c, const Tensor& images) {
  PF_CHECK(c.is_vit(), "[model] images need arch vit, this model is arch ", c.arch);
  PF_CHECK(images.ndim() == 4 && images.dtype() == DType::F32,
           "[input] images must be float32 [B, C, H, W], got ", shape_str(images.shape()));
  const int64_t B = images.dim(0), C = images.dim(1), H = images.dim(2), W = images.dim(3),
                p = c.patch_size;
  PF_CHECK(B >= 1, "[input] no images given");
  PF_CHECK(C == c.channels, "[input] images have ", C, " channels, the model takes ", c.channels);
  PF_CHECK(H >= p && W >= p && H % p == 0 && W % p == 0, "[input] image size ", H, "x", W,
           " must be a positive multiple of patch_size ", p, " in both dimensions");
  return {B, C, H, W, p, H / p, W / p, (H / p) * (W / p), C * p * p};
}
}  // namespace

Tensor Transformer::vit_embed(const Tensor& images, PositionIds& ids, StackInput& in,
                              Tensor& patches) const {
  const ImageGeom g = check_images(cfg_, images);
  const int64_t d = cfg_.d_model, cls = cfg_.cls_token() ? 1 : 0, T = cls + g.N;
  if (const int64_t mp = enc_pe_->max_position(); mp >= 0)
    PF_CHECK(T - 1 <= mp, "[input] ", T, " tokens (", g.gh, "x", g.gw,
             " patches) exceed the learned position table (max_len ", mp + 1, ")");
  // patches [B*N, C*p*p]: patch (r, c) row r*gw + c holds pixels (ch, i, j), ch-major
  if (patches.shape() != Shape{g.B * g.N, g.K}) patches = Tensor({g.B * g.N, g.K});
  float* P = patches.data<float>();
  const float* img = images.data<float>();
  for (int64_t b = 0; b < g.B; ++b)
    for (int64_t r = 0; r < g.gh; ++r)
      for (int64_t c = 0; c < g.gw; ++c) {
        float* row = P + ((b * g.gh + r) * g.gw + c) * g.K;
        for (int64_t ch = 0; ch < g.C; ++ch)
          for (int64_t i = 0; i < g.p; ++i) {
            const float* src = img + ((b * g.C + ch) * g.H + r * g.p + i) * g.W + c * g.p;
            std::copy_n(src, g.p, row + (ch * g.p + i) * g.p);
          }
      }
  // one linear over all B*N patches (per-image calls cost ~B times the gemm's call overhead)
  Tensor x({g.B, T, d});
  float* xp = x.data<float>();
  const float* Wpe = params_.f32("patch_embed.weight");
  const float* bpe = params_.f32_or_null("patch_embed.bias");
  if (!cls) {
    ops::linear(P, Wpe, bpe, xp, g.B * g.N, d, g.K);
  } else {
    Tensor emb({g.B * g.N, d});
    ops::linear(P, Wpe, bpe, emb.data<float>(), g.B * g.N, d, g.K);
    for (int64_t b = 0; b < g.B; ++b) {
      std::copy_n(params_.f32("cls_token"), d, xp + b * T * d);
      std::copy_n(emb.data<float>() + b * g.N * d, g.N * d, xp + (b * T + 1) * d);
    }
  }
  // positions: (row, col) for 2-D schemes (CLS at (-1, -1)), else the flattened order 0..T-1
  in = StackInput{Positions::run(g.B, T, 0)};
  if (enc_pe_->axes() == 2) {
    ids.B = g.B, ids.T = T, ids.axes = 2;
    ids.ids.resize(static_cast<size_t>(g.B * T * 2));
    for (int64_t b = 0; b < g.B; ++b)
      for (int64_t t = 0; t < T; ++t) {
        const int64_t n = t - cls;
        int32_t* id = &ids.ids[(b * T + t) * 2];
        id[0] = n < 0 ? -1 : static_cast<int32_t>(n / g.gw);
        id[1] = n < 0 ? -1 : static_cast<int32_t>(n % g.gw);
      }
    in.pos = ids.view();
  }
  enc_pe_->embed(params_, xp, in.pos);
  return x;
}

void Transformer::vit_head(const float* x, int64_t B, int64_t T, float* pooled,
                           float* logits) const {
  const int64_t d = cfg_.d_model, cls = cfg_.cls_token() ? 1 : 0;
  for (int64_t b = 0; b < B; ++b) {
    float* pb = pooled + b * d;
    if (cls) {
      std::copy_n(x + b * T * d, d, pb);
      continue;
    }
    std::vector<double> acc(static_cast<size_t>(d), 0.0);  // mean over the patch rows
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < d; ++i) acc[i] += x[(b * T + t) * d + i];
    for (int64_t i = 0; i < d; ++i) pb[i] = static_cast<float>(acc[i] / static_cast<double>(T));
  }
  ops::linear(pooled, params_.f32("head.weight"), params_.f32_or_null("head.bias"), logits, B,
              cfg_.num_classes, d);
}

Tensor Transformer::classify(const Tensor& images) const {
  PositionIds ids;
  StackInput in;
  Tensor patches;
  Tensor x = vit_embed(images, ids, in, patches);
  const int64_t B = x.dim(0), T = x.dim(1);
  run_stack(encoder_stack(), x.data<float>(), in, nullptr, 0, nullptr);
  Tensor pooled({B, cfg_.d_model}), logits({B, cfg_.num_classes});
  vit_head(x.data<float>(), B, T, pooled.data<float>(), logits.data<float>());
  return logits;
}

Transformer::Loss Transformer::classify_loss_and_grad(const Tensor& images,
                                                      const std::vector<int32_t>& labels,
                                                      ParamStore& grads, float grad_scale,
                                                      Tensor* logits_out,
                                                      const ForwardOptions& opt) const {
  const ImageGeom ig = check_images(cfg_, images);
  const int64_t B = ig.B, K = cfg_.num_classes, d = cfg_.d_model;
  PF_CHECK(static_cast<int64_t>(labels.size()) == B, "[loss] ", labels.size(), " labels for ", B,
           " images");
  for (size_t b = 0; b < labels.size(); ++b)
    PF_CHECK(labels[b] >= 0 && labels[b] < K, "[loss] label ", labels[b], " of image ", b,
             " outside [0, ", K, ")");
  thread_local StackTape tape;
  thread_local Tensor patches;
  PositionIds ids;
  StackInput in;
  const Stack st = encoder_stack();
  Tensor x = vit_embed(images, ids, in, patches);
  in.dropout_seed = opt.dropout_seed;
  const int64_t T = x.dim(1), cls = cfg_.cls_token() ? 1 : 0;
  run_stack(st, x.data<float>(), in, nullptr, 0, &tape);
  Tensor pooled({B, d}), logits({B, K});
  vit_head(x.data<float>(), B, T, pooled.data<float>(), logits.data<float>());
  if (logits_out) {  // a copy: the gradient overwrites logits below
    *logits_out = Tensor({B, K});
    std::copy_n(logits.data<float>(), B * K, logits_out->data<float>());
  }
  double loss = 0;
  int64_t count = 0;
  if (opt.mix_labels) {  // mixup / CutMix: the loss and dz are linear in the target distribution
    const std::vector<int32_t>& mixl = *opt.mix_labels;
    const float lam = opt.mix_lambda;
    PF_CHECK(static_cast<int64_t>(mixl.size()) == B, "[loss] ", mixl.size(),
             " mixed-in labels for ", B, " images");
    PF_CHECK(lam >= 0.0f && lam <= 1.0f, "[loss] mixing weight ", lam, " outside [0, 1]");
    for (size_t b = 0; b < mixl.size(); ++b)
      PF_CHECK(mixl[b] >= 0 && mixl[b] < K, "[loss] mixed-in label ", mixl[b], " of image ", b,
               " outside [0, ", K, ")");
    Tensor zb = logits.clone();
    const ops::CrossEntropy a =
        ops::cross_entropy(logits.data<float>(), labels.data(), B, K, logits.data<float>(),
                           grad_scale * lam, opt.label_smoothing);
    const ops::CrossEntropy c =
        ops::cross_entropy(zb.data<float>(), mixl.data(), B, K, zb.data<float>(),
                           grad_scale * (1.0f - lam), opt.label_smoothing);
    float* dz = logits.data<float>();
    const float* dzb = zb.data<float>();
    for (int64_t i = 0; i < B * K; ++i) dz[i] += dzb[i];
    loss = static_cast<double>(lam) * a.loss + (1.0 - static_cast<double>(lam)) * c.loss;
    count = a.count;
  } else {
    const ops::CrossEntropy ce =
        ops::cross_entropy(logits.data<float>(), labels.data(), B, K, logits.data<float>(),
                           grad_scale, opt.label_smoothing);
    loss = ce.loss, count = ce.count;
  }
  const float* dz = logits.data<float>();  // [B, K]
  // logits = pooled W^T + b:  dW += dz^T pooled, db += sum_b dz, dpooled = dz W
  ops::gemm(true, false, K, d, B, 1.0f, dz, K, pooled.data<float>(), d, 1.0f,
            grads.f32("head.weight"), d);
  if (cfg_.bias) {
    float* db = grads.f32("head.bias");
    for (int64_t b = 0; b < B; ++b)
      for (int64_t k = 0; k < K; ++k) db[k] += dz[b * K + k];
  }
  Tensor dpooled({B, d});
  ops::gemm(false, false, B, d, K, 1.0f, dz, K, params_.f32("head.weight"), d, 0.0f,
            dpooled.data<float>(), d);
  // pooled = x[b, 0] (cls) or mean_t x[b, t]: dx rows
  Tensor dx({B, T, d});  // zeros
  float* dxp = dx.data<float>();
  const int64_t pooled_rows = cls ? 1 : T;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < pooled_rows; ++t)
      for (int64_t i = 0; i < d; ++i)
        dxp[(b * T + t) * d + i] = dpooled.data<float>()[b * d + i] / float(pooled_rows);
  backward_stack(st, tape, dxp, nullptr, nullptr, grads);
  enc_pe_->embed_backward(dxp, in.pos, grads);
  // x[b, cls + n] = P[b, n] W_pe^T + b_pe (+ cls_token in row 0): one gemm over all B*N patch
  // rows (gathered without the CLS rows when there are any)
  float* dWp = grads.f32("patch_embed.weight");
  Tensor dpatch;
  const float* dxr = dxp;
  if (cls) {
    dpatch = Tensor({B * ig.N, d});
    float* dc = grads.f32("cls_token");
    for (int64_t b = 0; b < B; ++b) {
      std::copy_n(dxp + (b * T + 1) * d, ig.N * d, dpatch.data<float>() + b * ig.N * d);
      for (int64_t i = 0; i < d; ++i) dc[i] += dxp[b * T * d + i];
    }
    dxr = dpatch.data<float>();
  }
  ops::gemm(true, false, d, ig.K, B * ig.N, 1.0f, dxr, d, patches.data<float>(), ig.K, 1.0f, dWp,
            ig.K);
  if (cfg_.bias) ops::bias_grad(dxr, grads.f32("patch_embed.bias"), B * ig.N, d);
  return {loss, count};
}

}  // namespace posformer
