// Packed-weight linears: oneDNN matmul primitive, weights reordered once into the layout the
// primitive prefers, primitives cached per thread and shape.
#include "posformer/ops/packed_linear.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <oneapi/dnnl/dnnl.hpp>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "../kernels/cpu/kernels.h"
#include "../kernels/cpu/panel_gemm.h"
#include "matmul_profile.h"
#include "posformer/core/error.h"
#include "posformer/ops/matmul.h"

namespace posformer::ops {

using dnnl::memory;
using tag = memory::format_tag;
using dt = memory::data_type;

// Memory for a packed weight. From 2 MiB up: mapped 2 MiB-aligned and, where the kernel allows
// transparent huge pages on request (`madvise` mode, Debian's default), advised to use them, so
// that a gemm streaming a weight from L3/DRAM walks one page table entry per 2 MiB instead of one
// per 4 KiB (POSFORMER_HUGEPAGES=0 turns the advice off, for A/B runs). Smaller weights, which
// could not fill a huge page, come from the heap (64-byte aligned) as before.
class WeightMemory {
 public:
  explicit WeightMemory(size_t bytes);
  ~WeightMemory() {
    if (mapped_)
      munmap(ptr_, len_);
    else
      std::free(ptr_);
  }
  WeightMemory(const WeightMemory&) = delete;
  WeightMemory& operator=(const WeightMemory&) = delete;
  void* data() const { return ptr_; }

 private:
  void* ptr_ = nullptr;
  size_t len_ = 0;  // of the mapping (mapped_), else unused
  bool mapped_ = false;
};

// B [rows, cols] of C = A B in the primitive's preferred layout.
struct PackedWeight::Impl {
  memory::desc desc;
  std::unique_ptr<WeightMemory> buf;  // mem's storage
  memory mem;
  int64_t rows = 0, cols = 0;
  dt wdt = dt::f32;  // f32, or bf16 (Precision::BF16: inputs rounded to bf16 too)
  // f32 in 64-column panels (oneDNN's BA16a64b, kernels/cpu/panel_gemm.h): the panel stride in
  // floats, which panel_gemm reads in place; 0 for any other layout
  int64_t pstride = 0;
  // refilling (the trainer repacks after every step): W's plain layout, the reorder into desc,
  // the rounded copy of W (bf16)
  memory::desc src;
  dnnl::reorder reorder;
  std::vector<uint16_t> wb;
};

namespace {
constexpr size_t kHuge = size_t{2} << 20;
// An on/off environment switch: unset or empty -> true, "1" -> true, "0" -> false, anything
// else refused by name. Read at each call (tests switch them).
bool env_switch(const char* name) {
  const char* e = std::getenv(name);
  if (!e || !*e) return true;
  PF_CHECK((e[0] == '0' || e[0] == '1') && e[1] == 0, "[packed_linear] ", name,
           " must be 0 or 1, got '", e, "'");
  return e[0] == '1';
}
// POSFORMER_HUGEPAGES: unset or 1 advise huge pages, 0 not
bool hugepages_wanted() {
  return env_switch("POSFORMER_HUGEPAGES");
}

// Rows up to which panel_gemm runs the f32 packed linears. Measured on the Intel Xeon (model
// 207, bench/RESULTS.md section 1, 2026-12-02), one weight after another from a 64 MB rotation,
// medians of 30 interleaved batches: against oneDNN's matmul +4% at M = 1, +16% at 16, +10-11%
// on the BERT T = 128 shapes, +4% at 256; M = 512 level and M = 2048 (training) 3-12% slower.
constexpr int64_t kPanelMaxRows = 256;

// POSFORMER_PANEL_GEMM: unset or 1 run f32 packed weights through panel_gemm where the CPU has
// AVX-512F, the layout is its panels and M <= kPanelMaxRows; 0 always through oneDNN's matmul
bool panel_gemm_wanted() {
  return env_switch("POSFORMER_PANEL_GEMM");
}

// The panel stride (floats) when desc is rows x cols f32 in 64-column panels of K-blocks of 16
// rows (BA16a64b: element (k, n) at (n / 64) * stride + k * 64 + n % 64), else 0.
int64_t panel_stride(const dnnl::memory::desc& desc) {
  const dnnl_memory_desc_t& d = desc.data;
  if (d.ndims != 2 || d.data_type != dnnl_f32 || d.format_kind != dnnl_blocked || d.offset0 != 0)
    return 0;
  const auto& b = d.format_desc.blocking;
  if (b.inner_nblks != 2 || b.inner_idxs[0] != 0 || b.inner_blks[0] != 16 || b.inner_idxs[1] != 1 ||
      b.inner_blks[1] != kernels::cpu::kPanelCols || b.strides[0] != 1024)
    return 0;
  const int64_t kp = (d.dims[0] + 15) / 16 * 16;
  return b.strides[1] >= kp * kernels::cpu::kPanelCols ? b.strides[1] : 0;
}
}  // namespace

WeightMemory::WeightMemory(size_t bytes) {
  const bool advise = hugepages_wanted();
  bytes = std::max<size_t>(bytes, 1);
  if (bytes < kHuge) {
    ptr_ = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!ptr_)
      throw Error(str("[packed_linear] cannot allocate ", bytes, " bytes for a packed weight"));
    return;
  }
  const size_t page = 4096;
  bytes = (bytes + page - 1) / page * page;
  // map bytes + 2 MiB and keep the 2 MiB-aligned part (the slack is unmapped again)
  const size_t len = bytes + kHuge;
  void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED)
    throw Error(str("[packed_linear] cannot map ", bytes, " bytes for a packed weight"));
  const auto b = reinterpret_cast<uintptr_t>(m);
  const uintptr_t a = (b + kHuge - 1) / kHuge * kHuge;
  if (a > b) munmap(m, a - b);
  const size_t tail = len - (a - b) - bytes;
  if (tail) munmap(reinterpret_cast<void*>(a + bytes), tail);
  ptr_ = reinterpret_cast<void*>(a);
  len_ = bytes;
  mapped_ = true;
  // only whole 2 MiB extents can be huge pages; the advice is a hint (EINVAL where THP is off)
  const size_t whole = bytes / kHuge * kHuge;
  if (advise) (void)madvise(ptr_, whole, MADV_HUGEPAGE);
}

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

// rows x cols floats (row stride ld) rounded to bfloat16 into a thread-local dense buffer.
const uint16_t* round_bf16(const float* A, int64_t ld, int64_t rows, int64_t cols, int slot) {
  thread_local Bf16Rows buf[3];
  buf[slot].round(A, ld, rows, cols);
  return buf[slot].bits.data();
}

// dense bfloat16 [rows, cols] widened to float32 (exact) into a thread-local buffer.
const float* widen_bf16(const uint16_t* A, int64_t rows, int64_t cols, int slot) {
  thread_local std::vector<float> buf[2];
  std::vector<float>& b = buf[slot];
  if (b.size() < static_cast<size_t>(rows * cols)) b.resize(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows * cols; ++i) b[static_cast<size_t>(i)] = bf16_bits_to_float(A[i]);
  return b.data();
}

// W (rows x cols in plain_tag's reading of W's [N, K] row-major memory) into impl's packed
// memory; bf16: rounded by posformer's own kernel (the documented rounding), then laid out.
void fill(PackedWeight::Impl& impl, const float* W, tag plain_tag) {
  const void* src = W;
  if (impl.wdt == dt::bf16) {
    const int64_t wr = plain_tag == tag::ab ? impl.rows : impl.cols;  // W's memory is [wr, wc]
    const int64_t wc = plain_tag == tag::ab ? impl.cols : impl.rows;
    impl.wb.resize(static_cast<size_t>(impl.rows * impl.cols));
    kernels::cpu::to_bf16(W, wc, wr, wc, impl.wb.data());
    src = impl.wb.data();
  }
  memory s(impl.src, engine(), const_cast<void*>(src));
  impl.reorder.execute(stream(), s, impl.mem);
  stream().wait();
}

std::shared_ptr<PackedWeight::Impl> pack_b(const float* W, int64_t rows, int64_t cols,
                                           tag plain_tag, dt wdt) {
  const memory::desc a({kRefM, rows}, wdt, tag::ab), c({kRefM, cols}, dt::f32, tag::ab);
  const memory::desc any({rows, cols}, wdt, tag::any);
  auto impl = std::make_shared<PackedWeight::Impl>();
  try {
    const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, any, c), engine());
    impl->desc = pd.weights_desc();
  } catch (const dnnl::error&) {  // no bf16 matmul on this CPU: plain layout, emulated in run()
    impl->desc = memory::desc({rows, cols}, wdt, tag::ab);
  }
  impl->buf = std::make_unique<WeightMemory>(impl->desc.get_size());
  impl->mem = memory(impl->desc, engine(), impl->buf->data());
  impl->rows = rows, impl->cols = cols, impl->wdt = wdt;
  impl->pstride = panel_stride(impl->desc);
  impl->src = memory::desc({rows, cols}, wdt, plain_tag);
  impl->reorder =
      dnnl::reorder(dnnl::reorder::primitive_desc(engine(), impl->src, engine(), impl->desc));
  fill(*impl, W, plain_tag);
  return impl;
}

struct Key {
  int64_t M, rows, cols, lda, ldc;
  bool bias;
  float beta;
  int act, wdt;
  bool operator<(const Key& o) const {
    return std::tie(M, rows, cols, lda, ldc, bias, beta, act, wdt) <
           std::tie(o.M, o.rows, o.cols, o.lda, o.ldc, o.bias, o.beta, o.act, o.wdt);
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

// C[M, cols] (+)= A[M, rows] B (+ bias); B in w's packed layout. With bf16 weights, A is
// rounded to bf16 first (dense rows) and the products summed in f32.
void run(const PackedWeight::Impl& w, const float* A_f32, int64_t lda_f32, const float* bias,
         float beta, Act act, float* C, int64_t ldc, int64_t M, const Bf16Rows* ab) {
  if (M == 0 || w.cols == 0) return;
  const bool bf = w.wdt == dt::bf16;
  const void* A = A_f32;
  int64_t lda = lda_f32;
  if (bf) {
    const bool have = ab && ab->holds(A_f32, lda_f32, M, w.rows);
    A = have ? ab->bits.data() : round_bf16(A_f32, lda_f32, M, w.rows, 0);
    lda = w.rows;
  }
  if (panel_gemm_wanted() && !bf && M <= kPanelMaxRows && w.pstride &&
      kernels::cpu::panel_gemm_available()) {
    const kernels::cpu::PanelPost post =
        act == Act::Identity ? nullptr : +[](void* ctx, float* row, int64_t n) {
          activation(*static_cast<const Act*>(ctx), row, row, n);
        };
    return detail::matmul_timed(M, w.cols, w.rows, [&] {
      kernels::cpu::panel_gemm(M, w.cols, w.rows, A_f32, lda_f32,
                               static_cast<const float*>(w.buf->data()), w.pstride, bias, beta, C,
                               ldc, post, &act);
    });
  }
  thread_local std::map<Key, Prim> cache;
  const Key key{M,         w.rows, w.cols, lda, ldc, bias != nullptr, beta, static_cast<int>(act),
                bf ? 1 : 0};
  auto it = cache.find(key);
  if (it == cache.end() || it->second.weights != w.desc) {
    const memory::desc a({M, w.rows}, w.wdt, memory::dims{lda, 1});
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
  if (it->second.slow) {
    if (bf)  // the rounded operands through the fp32 gemm: the same products, no bf16 units
      return run_unpacked(w, widen_bf16(static_cast<const uint16_t*>(A), M, w.rows, 0), w.rows,
                          bias, beta, act, C, ldc, M);
    return run_unpacked(w, A_f32, lda_f32, bias, beta, act, C, ldc, M);
  }
  const memory::desc a({M, w.rows}, w.wdt, memory::dims{lda, 1});
  const memory::desc c({M, w.cols}, dt::f32, memory::dims{ldc, 1});
  memory am(a, engine(), const_cast<void*>(A)), cm(c, engine(), C);
  std::unordered_map<int, memory> args = {
      {DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, w.mem}, {DNNL_ARG_DST, cm}};
  if (bias)
    args.emplace(DNNL_ARG_BIAS,
                 memory({{1, w.cols}, dt::f32, tag::ab}, engine(), const_cast<float*>(bias)));
  detail::matmul_timed(M, w.cols, w.rows, [&] {
    it->second.prim.execute(stream(), args);
    stream().wait();
  });
}

}  // namespace

const char* precision_name(Precision p) {
  return p == Precision::BF16 ? "bf16" : "f32";
}

Precision parse_precision(const std::string& s, const std::string& what) {
  if (s == "f32" || s == "fp32") return Precision::F32;
  if (s == "bf16") return Precision::BF16;
  throw Error(str(what, " must be f32 or bf16, got '", s, "'"));
}

bool bf16_matmul_native(std::string* impl) {
  static const std::string name = [] {
    try {
      const memory::desc a({128, 128}, dt::bf16, tag::ab), b({128, 128}, dt::bf16, tag::any),
          c({128, 128}, dt::f32, tag::ab);
      return std::string(
          dnnl::matmul::primitive_desc(dnnl::matmul::desc(a, b, c), engine()).impl_info_str());
    } catch (const dnnl::error&) {
      return std::string("none");
    }
  }();
  if (impl) *impl = name;
  return name != "none" && name.find("ref") == std::string::npos;
}

namespace {
struct DwKey {
  int64_t M, N, K;
  float beta;
  bool operator<(const DwKey& o) const {
    return std::tie(M, N, K, beta) < std::tie(o.M, o.N, o.K, o.beta);
  }
};
}  // namespace

void linear_dw(const float* dy, int64_t lddy, const float* x, int64_t ldx, float beta, float* dW,
               int64_t M, int64_t N, int64_t K, Precision p, const Bf16Rows* dyr,
               const Bf16Rows* xr) {
  PF_CHECK(M >= 0 && N >= 1 && K >= 1, "[linear_dw] bad sizes M=", M, " N=", N, " K=", K);
  PF_CHECK(beta == 0.0f || beta == 1.0f, "[linear_dw] beta must be 0 or 1, got ", beta);
  PF_CHECK(lddy >= N && ldx >= K, "[linear_dw] row strides lddy ", lddy, " (>= ", N, ") or ldx ",
           ldx, " (>= ", K, ") too small");
  if (p == Precision::F32 || M == 0) {
    if (M == 0) {
      if (beta == 0.0f) std::fill(dW, dW + N * K, 0.0f);
      return;
    }
    return gemm(true, false, N, K, M, 1.0f, dy, lddy, x, ldx, beta, dW, K);
  }
  const uint16_t* dyb =
      dyr && dyr->holds(dy, lddy, M, N) ? dyr->bits.data() : round_bf16(dy, lddy, M, N, 1);
  const uint16_t* xb =
      xr && xr->holds(x, ldx, M, K) ? xr->bits.data() : round_bf16(x, ldx, M, K, 2);
  thread_local std::map<DwKey, Prim> cache;
  const DwKey key{M, N, K, beta};
  auto it = cache.find(key);
  if (it == cache.end()) {
    // src dy^T [N, M] read through dy's dense [M, N] rows; weights x [M, K]; dst dW [N, K]
    const memory::desc a({N, M}, dt::bf16, memory::dims{1, N});
    const memory::desc b({M, K}, dt::bf16, memory::dims{K, 1});
    const memory::desc c({N, K}, dt::f32, memory::dims{K, 1});
    dnnl::primitive_attr attr;
    dnnl::post_ops po;
    if (beta != 0.0f) po.append_sum(beta);
    attr.set_post_ops(po);
    try {
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, engine());
      const bool slow = std::string(pd.impl_info_str()).find("ref") != std::string::npos;
      it = cache.insert_or_assign(key, Prim{dnnl::matmul(pd), b, slow}).first;
    } catch (const dnnl::error&) {
      it = cache.insert_or_assign(key, Prim{dnnl::matmul(), b, true}).first;
    }
  }
  if (it->second.slow)  // the rounded operands through the fp32 gemm (no bf16 kernel)
    return gemm(true, false, N, K, M, 1.0f, widen_bf16(dyb, M, N, 0), N, widen_bf16(xb, M, K, 1), K,
                beta, dW, K);
  memory am({{N, M}, dt::bf16, memory::dims{1, N}}, engine(), const_cast<uint16_t*>(dyb));
  memory bm({{M, K}, dt::bf16, memory::dims{K, 1}}, engine(), const_cast<uint16_t*>(xb));
  memory cm({{N, K}, dt::f32, memory::dims{K, 1}}, engine(), dW);
  detail::matmul_timed(N, K, M, [&] {
    it->second.prim.execute(stream(),
                            {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
    stream().wait();
  });
}

void PackedWeight::pack(const float* W, int64_t N, int64_t K, bool backward, Precision p) {
  PF_CHECK(N >= 1 && K >= 1, "[packed_linear] weight sizes must be >= 1, got N=", N, " K=", K);
  PF_CHECK(W, "[packed_linear] W is null");
  // the same sizes, precision and passes, and no other PackedWeight sharing the memory (copies
  // share it): refilled in place, without a new layout query, allocation or reorder primitive
  const bool same = fwd_ && N == N_ && K == K_ && p == prec_ && backward == (bwd_ != nullptr) &&
                    fwd_.use_count() == 1 && (!bwd_ || bwd_.use_count() == 1);
  if (same) {
    fill(*fwd_, W, tag::ba);
    if (bwd_) fill(*bwd_, W, tag::ab);
    return;
  }
  N_ = N, K_ = K, prec_ = p;
  const dt wdt = p == Precision::BF16 ? dt::bf16 : dt::f32;
  fwd_ = pack_b(W, K, N, tag::ba, wdt);  // B = W^T [K, N]: W [N, K] row-major read transposed
  bwd_ = backward ? pack_b(W, N, K, tag::ab, wdt) : nullptr;  // B = W [N, K]
}

void Bf16Rows::round(const float* A, int64_t ld_, int64_t rows_, int64_t cols_) {
  uint16_t* b = prepare(A, ld_, rows_, cols_);
  if (rows_ * cols_ > 0) kernels::cpu::to_bf16(A, ld_, rows_, cols_, b);
}

uint16_t* Bf16Rows::prepare(const float* A, int64_t ld_, int64_t rows_, int64_t cols_) {
  PF_CHECK(rows_ >= 0 && cols_ >= 0 && ld_ >= cols_, "[bf16] bad sizes rows=", rows_,
           " cols=", cols_, " ld=", ld_);
  if (bits.size() < static_cast<size_t>(rows_ * cols_))
    bits.resize(static_cast<size_t>(rows_ * cols_));
  src = A, ld = ld_, rows = rows_, cols = cols_;
  return bits.data();
}

void linear_packed(const float* x, const PackedWeight& W, const float* b, float* y, int64_t M,
                   LinearEpilogue ep, const Bf16Rows* xb) {
  PF_CHECK(W.has_forward(), "[linear_packed] weight is not packed");
  PF_CHECK(M >= 0, "[linear_packed] M must be >= 0, got ", M);
  PF_CHECK(M == 0 || (x && y), "[linear_packed] x or y is null");
  PF_CHECK(!ep.accumulate || ep.act == Act::Identity,
           "[linear_packed] accumulate takes no activation, got ", act_name(ep.act));
  run(*W.fwd_, x, W.K(), b, ep.accumulate ? 1.0f : 0.0f, ep.act, y, W.N(), M, xb);
}

void linear_packed_group(const float* x, int64_t M, const PackedLinearJob* jobs, int64_t n,
                         const Bf16Rows* xb) {
  PF_CHECK(n >= 0 && (n == 0 || jobs), "[linear_packed_group] no jobs");
  PF_CHECK(M >= 0, "[linear_packed_group] M must be >= 0, got ", M);
  for (int64_t j = 0; j < n; ++j) {
    PF_CHECK(jobs[j].W && jobs[j].W->has_forward(), "[linear_packed_group] job ", j,
             ": weight is not packed");
    PF_CHECK(jobs[j].W->K() == jobs[0].W->K(), "[linear_packed_group] job ", j, " has K ",
             jobs[j].W->K(), ", job 0 has ", jobs[0].W->K(), ": the jobs share x");
    PF_CHECK(M == 0 || (x && jobs[j].y), "[linear_packed_group] x or job ", j, "'s y is null");
  }
  if (n == 0 || M == 0) return;
  bool panel = panel_gemm_wanted() && M <= kPanelMaxRows && kernels::cpu::panel_gemm_available();
  for (int64_t j = 0; j < n && panel; ++j) {
    const PackedWeight::Impl& w = *jobs[j].W->fwd_;
    panel = w.wdt == dt::f32 && w.pstride && w.cols > 0;
  }
  if (!panel) {
    for (int64_t j = 0; j < n; ++j) linear_packed(x, *jobs[j].W, jobs[j].b, jobs[j].y, M, {}, xb);
    return;
  }
  std::vector<kernels::cpu::PanelJob> pj(static_cast<size_t>(n));
  int64_t cols = 0;
  for (int64_t j = 0; j < n; ++j) {
    const PackedWeight::Impl& w = *jobs[j].W->fwd_;
    pj[static_cast<size_t>(j)] = {static_cast<const float*>(w.buf->data()),
                                  w.pstride,
                                  w.cols,
                                  jobs[j].b,
                                  0.0f,
                                  jobs[j].y,
                                  w.cols,
                                  nullptr,
                                  nullptr};
    cols += w.cols;
  }
  const int64_t K = jobs[0].W->K();
  detail::matmul_timed(M, cols, K,
                       [&] { kernels::cpu::panel_gemm_group(M, K, x, K, pj.data(), n); });
}

void linear_dx_packed(const float* dy, int64_t lddy, const PackedWeight& W, float beta, float* dx,
                      int64_t lddx, int64_t M, const Bf16Rows* dyb) {
  PF_CHECK(W.has_backward(), "[linear_dx_packed] weight is not packed for the backward");
  PF_CHECK(M >= 0, "[linear_dx_packed] M must be >= 0, got ", M);
  PF_CHECK(beta == 0.0f || beta == 1.0f, "[linear_dx_packed] beta must be 0 or 1, got ", beta);
  PF_CHECK(lddy >= W.N() && lddx >= W.K(), "[linear_dx_packed] row strides lddy ", lddy,
           " (>= ", W.N(), ") or lddx ", lddx, " (>= ", W.K(), ") too small");
  PF_CHECK(M == 0 || (dy && dx), "[linear_dx_packed] dy or dx is null");
  run(*W.bwd_, dy, lddy, nullptr, beta, Act::Identity, dx, lddx, M, dyb);
}

}  // namespace posformer::ops
