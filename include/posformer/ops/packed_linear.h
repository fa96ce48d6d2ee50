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
#pragma once
#include <cstdint>
#include <memory>

#include "posformer/ops/activation.h"

namespace posformer::ops {

struct LinearEpilogue {
  Act act = Act::Identity;
  bool accumulate = false;  // y += ... (with act Identity only)
};

class PackedWeight {
 public:
  void pack(const float* W, int64_t N, int64_t K, bool backward);
  bool has_forward() const { return fwd_ != nullptr; }
  bool has_backward() const { return bwd_ != nullptr; }
  int64_t N() const { return N_; }
  int64_t K() const { return K_; }
  struct Impl;  // oneDNN memory + its descriptor (src/ops/packed_linear.cpp)

 private:
  friend void linear_packed(const float*, const PackedWeight&, const float*, float*, int64_t,
                            LinearEpilogue);
  friend void linear_dx_packed(const float*, int64_t, const PackedWeight&, float, float*, int64_t,
                               int64_t);
  std::shared_ptr<const Impl> fwd_, bwd_;
  int64_t N_ = 0, K_ = 0;
};

void linear_packed(const float* x, const PackedWeight& W, const float* b, float* y, int64_t M,
                   LinearEpilogue ep = {});
void linear_dx_packed(const float* dy, int64_t lddy, const PackedWeight& W, float beta, float* dx,
                      int64_t lddx, int64_t M);

}  // namespace posformer::ops
