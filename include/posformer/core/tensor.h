// Tensor: a dense, row-major (C-contiguous) n-d array that knows its dtype.
//
//   shape [d0, d1, ..., dn-1], element (i0..in-1) at offset sum_k ik * prod_{l>k} dl
//
// Storage is shared (copies alias; clone() deep-copies) and 64-byte aligned. Compute kernels
// work in F32; F16/BF16 exist for storage and exchange (to(DType) converts, round-to-nearest-
// even). Ops dispatch on dtype and refuse the ones they do not implement with a clear error.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "posformer/core/error.h"

namespace posformer {

enum class DType : uint8_t { F32, F16, BF16, F64, I32, I64 };

size_t dtype_size(DType dt);
const char* dtype_name(
    DType dt);  // safetensors spelling: "F32", "F16", "BF16", "F64", "I32", "I64"

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);  // "[2, 3]"
// Number of elements; throws Error if a dim is negative or the product overflows int64.
int64_t shape_numel(const Shape& s);

template <class T>
struct dtype_of;
template <>
struct dtype_of<float> {
  static constexpr DType value = DType::F32;
};
template <>
struct dtype_of<double> {
  static constexpr DType value = DType::F64;
};
template <>
struct dtype_of<int32_t> {
  static constexpr DType value = DType::I32;
};
template <>
struct dtype_of<int64_t> {
  static constexpr DType value = DType::I64;
};

class Tensor {
 public:
  Tensor() = default;
  // Zero-filled tensor of the given shape and dtype.
  explicit Tensor(Shape shape, DType dtype = DType::F32);

  const Shape& shape() const { return shape_; }
  int ndim() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const;  // negative i counts from the end
  int64_t numel() const { return numel_; }
  size_t nbytes() const { return static_cast<size_t>(numel_) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  bool defined() const { return storage_ != nullptr || numel_ == 0; }

  void* raw() { return storage_.get(); }
  const void* raw() const { return storage_.get(); }
  template <class T>
  T* data() {
    check_dtype(dtype_of<T>::value);
    return static_cast<T*>(raw());
  }
  template <class T>
  const T* data() const {
    check_dtype(dtype_of<T>::value);
    return static_cast<const T*>(raw());
  }

  Tensor reshape(Shape s) const;  // same storage, same numel
  Tensor clone() const;
  Tensor to(DType dt) const;  // converted copy (or alias when dt == dtype())
  void fill(float v);         // F32 only

 private:
  void check_dtype(DType want) const;
  Shape shape_;
  int64_t numel_ = 0;
  DType dtype_ = DType::F32;
  std::shared_ptr<std::byte> storage_;
};

// fp16 / bf16 <-> fp32 scalar conversions (IEEE binary16, bfloat16; round to nearest even).
uint16_t f32_to_f16(float f);
float f16_to_f32(uint16_t h);
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t b);

}  // namespace posformer
