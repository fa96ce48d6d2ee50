// Linear weights packed once into the GEMM kernel's preferred (blocked) layout, so a call does
// not repack W as dnnl_sgemm does on every call (issue 11). oneDNN's matmul primitive with
// weights in format `any` picks the layout; primitives are cached per (shape, strides, beta).
//
//   PackedWeight::pack(W, N, K, backward): W [N, K] row-major (nn.Linear), copied into
//     - the forward layout:  B = W^T [K, N] for y = x W^T (+ b);
//     - with `backward`, also B = W [N, K] for dx = dy W.
//   linear_packed:     y[M, N] = x[M, K] W^T + b[N]   (b may be null; bias fused in the kernel)
//     with an epilogue fused into the GEMM (issue 11: no extra pass over y):
//       act:         y = act(x W^T + b)   (oneDNN eltwise post-op: gelu = gelu_erf, gelu_tanh,
//                    relu, silu = swish(1); ~1e-7 absolute error from its erf / exp)
//       accumulate:  y += x W^T + b       (residual add: oneDNN sum post-op)
//   linear_dx_packed:  dx[M, K] = dy[M, N] W + beta dx (beta 0 or 1; row strides lddy, lddx)
//
// The packed copy is a snapshot: whoever changes W must pack again (Transformer::pack_weights;
// the trainer repacks after each optimizer step). Results equal ops::linear / ops::gemm up to
// summation order (tests/unit/test_packed_linear.cpp: 1e-6 relative).
//
// Precision::BF16 (mixed precision, `train --precision bf16`): the packed copy holds W rounded to
// bfloat16 (round to nearest even), each call rounds its input rows (x, or dy) to bfloat16 the
// same way, and the products are summed in float32 into a float32 result: on CPUs with AMX or
// AVX512-BF16 oneDNN runs them on those units (~5x the fp32 rate on a Sapphire Rapids core).
// Where oneDNN has no bf16 kernel (AVX2-only CPUs) the same rounded operands go through the fp32
// gemm instead: identical semantics, no speed-up (bf16_matmul_native() says which). The
// master weights, the gradients, and everything outside these matmuls stay float32.
// linear_dw computes the weight gradient dW (+)= dy^T x with the same rounding of dy and x.
#pragma once
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "posformer/ops/activation.h"

namespace posformer::ops {

enum class Precision { F32, BF16 };
const char* precision_name(Precision p);                                   // "f32", "bf16"
Precision parse_precision(const std::string& s, const std::string& what);  // clear error if bad
// Whether oneDNN has a native (non-emulated) bf16 matmul kernel on this CPU, and its name.
bool bf16_matmul_native(std::string* impl = nullptr);
// bfloat16 bits of x, round to nearest even (NaN stays NaN): the rounding every bf16 path uses.
inline uint16_t to_bf16_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}

// Rows of a float matrix rounded to bfloat16 once, for several bf16 calls that read the same
// input (q, k and v of one sublayer; dy for both dx and dW). A call uses it when it holds exactly
// the call's (pointer, rows, cols, row stride); the caller keeps it fresh (round again after
// the floats change).
struct Bf16Rows {
  std::vector<uint16_t> bits;  // dense [rows, cols]
  const float* src = nullptr;
  int64_t rows = 0, cols = 0, ld = 0;
  void round(const float* A, int64_t ld, int64_t rows, int64_t cols);
  // Room for the (dense) bits of A [rows, cols], row stride ld, that A's producer writes itself
  // in the same pass (ops::layernorm / ops::activation with a bf16 output); then it holds A.
  uint16_t* prepare(const float* A, int64_t ld, int64_t rows, int64_t cols);
  void clear() { src = nullptr, rows = cols = ld = 0; }
  bool holds(const float* A, int64_t ld_, int64_t rows_, int64_t cols_) const {
    return A == src && ld_ == ld && rows_ == rows && cols_ == cols;
  }
};

struct LinearEpilogue {
  Act act = Act::Identity;
  bool accumulate = false;  // y += ... (with act Identity only)
};

class PackedWeight;
// One product of linear_packed_group: y [M, W.N()] = x W^T + b (b may be null).
struct PackedLinearJob {
  const PackedWeight* W;
  const float* b;
  float* y;
};

class PackedWeight {
 public:
  // Packs W [N, K]; packing again with the same sizes, precision and passes refills the same
  // memory (unless a copy of this PackedWeight shares it).
  void pack(const float* W, int64_t N, int64_t K, bool backward, Precision p = Precision::F32);
  Precision precision() const { return prec_; }
  bool has_forward() const { return fwd_ != nullptr; }
  bool has_backward() const { return bwd_ != nullptr; }
  int64_t N() const { return N_; }
  int64_t K() const { return K_; }
  struct Impl;  // oneDNN memory + its descriptor (src/ops/packed_linear.cpp)

 private:
  friend void linear_packed(const float*, const PackedWeight&, const float*, float*, int64_t,
                            LinearEpilogue, const Bf16Rows*);
  friend void linear_packed_group(const float*, int64_t, const PackedLinearJob*, int64_t,
                                  const Bf16Rows*);
  friend void linear_dx_packed(const float*, int64_t, const PackedWeight&, float, float*, int64_t,
                               int64_t, const Bf16Rows*);
  std::shared_ptr<Impl> fwd_, bwd_;
  int64_t N_ = 0, K_ = 0;
  Precision prec_ = Precision::F32;
};

// xb / dyb (optional, bf16 weights only): x / dy already rounded (used when it holds them).
void linear_packed(const float* x, const PackedWeight& W, const float* b, float* y, int64_t M,
                   LinearEpilogue ep = {}, const Bf16Rows* xb = nullptr);
void linear_dx_packed(const float* dy, int64_t lddy, const PackedWeight& W, float beta, float* dx,
                      int64_t lddx, int64_t M, const Bf16Rows* dyb = nullptr);
// Several linears of the same x [M, K] (q, k and v of a self-attention sublayer; every W with
// K() == K): where the f32 panel kernel runs them (kernels/cpu/panel_gemm.h: f32 weights in its
// panels, M <= 256, AVX-512F) one panel_gemm_group call, which splits all their panels between
// the threads at once (one thread team instead of n, each thread's prefetch running on into the
// next weight); otherwise one linear_packed per job. The results are those of the separate calls,
// bit for bit.
void linear_packed_group(const float* x, int64_t M, const PackedLinearJob* jobs, int64_t n,
                         const Bf16Rows* xb = nullptr);

// dW[N, K] = beta dW + dy[M, N]^T x[M, K] (beta 0 or 1; row strides lddy, ldx; dW dense). F32:
// dnnl_sgemm; BF16: dy and x rounded to bfloat16, float32 sums (see above).
void linear_dw(const float* dy, int64_t lddy, const float* x, int64_t ldx, float beta, float* dW,
               int64_t M, int64_t N, int64_t K, Precision p, const Bf16Rows* dyb = nullptr,
               const Bf16Rows* xb = nullptr);

}  // namespace posformer::ops
