// Packed-weight linears: oneDNN matmul primitive, weights reordered once into the layout the
// primitive prefers, primitives cached per thread and shape.
#include "posformer/ops/packed_linear.h"

#include <map>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "matmul_profile.h"
#include "posformer/core/error.h"

namespace posformer::ops {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

// B [rows, cols] of C = A B in the primitive's preferred layout.
struct PackedWeight::Impl {
  memory::desc desc;
  memory mem;
  int64_t rows = 0, cols = 0;
};

namespace {

dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}
dnnl::stream& stream() {  // streams are not shared between threads
  thread_local dnnl::stream s(engine());
  return s;
}

// Layout chosen for this M; the same blocked weights serve every M (a primitive is created
// for each M with the packed layout given explicitly).
constexpr int64_t kRefM = 128;

std::shared_ptr<const PackedWeight::Impl> pack_b(const float* W, int64_t rows, int64_t cols,
                                                 tag plain_tag) {
  const memory::desc plain({rows, cols}, dt::f32, plain_tag);
  const memory::desc a({kRefM, rows}, dt::f32, tag::ab), c({kRefM, cols}, dt::f32, tag::ab);
  const memory::desc any({rows, cols}, dt::f32, tag::any);
  const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, any, c), engine());
  auto impl = std::make_shared<PackedWeight::Impl>();
  impl->desc = pd.weights_desc();
  impl->mem = memory(impl->desc, engine());
  impl->rows = rows, impl->cols = cols;
  memory src(plain, engine(), const_cast<float*>(W));
  dnnl::reorder(src, impl->mem).execute(stream(), src, impl->mem);
  stream().wait();
  return impl;
}

struct Key {
  int64_t M, rows, cols, lda, ldc;
  bool bias;
  float beta;
  int act;
  bool operator<(const Key& o) const {
    return std::tie(M, rows, cols, lda, ldc, bias, beta, act) <
           std::tie(o.M, o.rows, o.cols, o.lda, o.ldc, o.bias, o.beta, o.act);
  }
};

// oneDNN's eltwise algorithm for an activation (Identity: none).
bool eltwise_of(Act act, dnnl::algorithm* alg, float* alpha) {
  *alpha = 0.0f;
  switch (act) {
    case Act::Identity:
      return false;
    case Act::Relu:
      *alg = dnnl::algorithm::eltwise_relu;
      return true;
    case Act::Gelu:
      *alg = dnnl::algorithm::eltwise_gelu_erf;
      return true;
    case Act::GeluTanh:
      *alg = dnnl::algorithm::eltwise_gelu_tanh;
      return true;
    case Act::Silu:
      *alg = dnnl::algorithm::eltwise_swish, *alpha = 1.0f;
      return true;
  }
  return false;
}

struct Prim {
  dnnl::matmul prim;
  memory::desc weights;  // the layout the primitive was created for
  bool slow = false;     // oneDNN's reference kernel (e.g. for padded row strides): not used
};

// Fallback where no fast kernel takes the packed layout (padded row strides: oneDNN 2.6 has only
// its reference matmul for those): B reordered back to plain [rows, cols], dnnl_sgemm, the bias.
void run_unpacked(const PackedWeight::Impl& w, const float* A, int64_t lda, const float* bias,
                  float beta, Act act, float* C, int64_t ldc, int64_t M) {
  std::vector<float> B(static_cast<size_t>(w.rows * w.cols));
  memory plain({{w.rows, w.cols}, dt::f32, tag::ab}, engine(), B.data());
  dnnl::reorder(w.mem, plain).execute(stream(), const_cast<memory&>(w.mem), plain);
  stream().wait();
  const dnnl_status_t st =
      dnnl_sgemm('N', 'N', M, w.cols, w.rows, 1.0f, A, lda, B.data(), w.cols, beta, C, ldc);
  PF_CHECK(st == dnnl_success, "[packed_linear] dnnl_sgemm failed with status ", int(st));
  if (bias)
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < w.cols; ++j) C[i * ldc + j] += bias[j];
  if (act != Act::Identity)
    for (int64_t i = 0; i < M; ++i) activation(act, C + i * ldc, C + i * ldc, w.cols);
}

// C[M, cols] (+)= A[M, rows] B (+ bias); B in w's packed layout.
void run(const PackedWeight::Impl& w, const float* A, int64_t lda, const float* bias, float beta,
         Act act, float* C, int64_t ldc, int64_t M) {
  if (M == 0 || w.cols == 0) return;
  thread_local std::map<Key, Prim> cache;
  const Key key{M, w.rows, w.cols, lda, ldc, bias != nullptr, beta, static_cast<int>(act)};
  auto it = cache.find(key);
  if (it == cache.end() || it->second.weights != w.desc) {
    const memory::desc a({M, w.rows}, dt::f32, memory::dims{lda, 1});
    const memory::desc c({M, w.cols}, dt::f32, memory::dims{ldc, 1});
    const memory::desc bd({1, w.cols}, dt::f32, tag::ab);
    dnnl::primitive_attr attr;
    dnnl::post_ops po;
    if (beta != 0.0f) po.append_sum(beta);
    dnnl::algorithm alg;
    float alpha = 0.0f;
    if (eltwise_of(act, &alg, &alpha)) po.append_eltwise(1.0f, alg, alpha, 0.0f);
    attr.set_post_ops(po);
    const dnnl::matmul::desc md =
        bias ? dnnl::matmul::desc(a, w.desc, bd, c) : dnnl::matmul::desc(a, w.desc, c);
    try {
      const dnnl::matmul::primitive_desc pd(md, attr, engine());
      const bool slow = std::string(pd.impl_info_str()).find("ref") != std::string::npos;
      it = cache.insert_or_assign(key, Prim{dnnl::matmul(pd), w.desc, slow}).first;
    } catch (const dnnl::error&) {  // no kernel takes this layout at this M
      it = cache.insert_or_assign(key, Prim{dnnl::matmul(), w.desc, true}).first;
    }
  }
  if (it->second.slow) return run_unpacked(w, A, lda, bias, beta, act, C, ldc, M);
  const memory::desc a({M, w.rows}, dt::f32, memory::dims{lda, 1});
  const memory::desc c({M, w.cols}, dt::f32, memory::dims{ldc, 1});
  memory am(a, engine(), const_cast<float*>(A)), cm(c, engine(), C);
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, w.mem}, {DNNL_ARG_DST, cm}};
  if (bias)
    args.emplace(DNNL_ARG_BIAS,
                 memory({{1, w.cols}, dt::f32, tag::ab}, engine(), const_cast<float*>(bias)));
  const bool prof = detail::matmul_profiling();
  const double t0 = prof ? detail::matmul_now_s() : 0.0;
  it->second.prim.execute(stream(), args);
  stream().wait();
  if (prof) detail::matmul_profile_record(M, w.cols, w.rows, detail::matmul_now_s() - t0);
}

}  // namespace

void PackedWeight::pack(const float* W, int64_t N, int64_t K, bool backward) {
  PF_CHECK(N >= 1 && K >= 1, "[packed_linear] weight sizes must be >= 1, got N=", N, " K=", K);
  PF_CHECK(W, "[packed_linear] W is null");
  N_ = N, K_ = K;
  fwd_ = pack_b(W, K, N, tag::ba);  // B = W^T [K, N]: W [N, K] row-major read transposed
  bwd_ = backward ? pack_b(W, N, K, tag::ab) : nullptr;  // B = W [N, K]
}

void linear_packed(const float* x, const PackedWeight& W, const float* b, float* y, int64_t M,
                   LinearEpilogue ep) {
  PF_CHECK(W.has_forward(), "[linear_packed] weight is not packed");
  PF_CHECK(M >= 0, "[linear_packed] M must be >= 0, got ", M);
  PF_CHECK(M == 0 || (x && y), "[linear_packed] x or y is null");
  PF_CHECK(!ep.accumulate || ep.act == Act::Identity,
           "[linear_packed] accumulate takes no activation, got ", act_name(ep.act));
  run(*W.fwd_, x, W.K(), b, ep.accumulate ? 1.0f : 0.0f, ep.act, y, W.N(), M);
}

void linear_dx_packed(const float* dy, int64_t lddy, const PackedWeight& W, float beta, float* dx,
                      int64_t lddx, int64_t M) {
  PF_CHECK(W.has_backward(), "[linear_dx_packed] weight is not packed for the backward");
  PF_CHECK(M >= 0, "[linear_dx_packed] M must be >= 0, got ", M);
  PF_CHECK(beta == 0.0f || beta == 1.0f, "[linear_dx_packed] beta must be 0 or 1, got ", beta);
  PF_CHECK(lddy >= W.N() && lddx >= W.K(), "[linear_dx_packed] row strides lddy ", lddy,
           " (>= ", W.N(), ") or lddx ", lddx, " (>= ", W.K(), ") too small");
  PF_CHECK(M == 0 || (dy && dx), "[linear_dx_packed] dy or dx is null");
  run(*W.bwd_, dy, lddy, nullptr, beta, Act::Identity, dx, lddx, M);
}

}  // namespace posformer::ops
