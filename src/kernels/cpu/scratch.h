// Per-call scratch buffers of the attention kernels: 64-byte aligned and left uninitialised.
//
// Aligned: the kernels load and store whole vectors (64 bytes on AVX-512) along the rows of
// their tiles and panels. `new float[n]` (and std::vector) gives 16-byte alignment, and a large
// block from glibc's mmap sits 16 bytes past a page boundary, so every AVX-512 access of such a
// buffer straddled two cache lines. Aligning them took 7.5% off the CPU time of the fused
// softmax forward at T = 4096 (bench/RESULTS.md section 3, 2026-12-03 "Aligned scratch").
// Uninitialised: every kernel writes an entry before reading it (a tile's masked entries are
// zeroed by the softmax kernels; packing writes whole panels and padded rows), and zeroing ~1 MB
// of tiles and panels per call cost 1-2% of a training step. Under AddressSanitizer they are
// filled with NaN, so that a read of an unwritten entry fails tests.
#pragma once
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <memory>

#include "posformer/core/error.h"

namespace posformer::kernels::cpu {

inline constexpr size_t kScratchAlign = 64;

template <typename T>
class ScratchOf {
 public:
  explicit ScratchOf(int64_t n) {
    if (n <= 0) return;
    const size_t bytes = static_cast<size_t>(n) * sizeof(T);
    p_.reset(static_cast<T*>(std::aligned_alloc(
        kScratchAlign, (bytes + kScratchAlign - 1) / kScratchAlign * kScratchAlign)));
    PF_CHECK(p_, "out of memory: ", bytes, " bytes of kernel scratch");
#if defined(__SANITIZE_ADDRESS__)
    // float NaN; bfloat16 bits 0x7FC0 (a quiet NaN)
    T poison;
    if constexpr (sizeof(T) == 2)
      poison = T{0x7FC0};
    else
      poison = std::numeric_limits<T>::quiet_NaN();
    std::fill_n(p_.get(), n, poison);
#endif
  }
  T* data() const {
    return p_.get();
  }

 private:
  struct Free {
    void operator()(T* p) const { std::free(p); }
  };
  std::unique_ptr<T, Free> p_;
};
using Scratch = ScratchOf<float>;
using Scratch16 = ScratchOf<uint16_t>;

}  // namespace posformer::kernels::cpu
