#include "posformer/core/tensor.h"

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace posformer {

size_t dtype_size(DType dt) {
  switch (dt) {
    case DType::F32:
      return 4;
    case DType::F16:
      return 2;
    case DType::BF16:
      return 2;
    case DType::F64:
      return 8;
    case DType::I32:
      return 4;
    case DType::I64:
      return 8;
  }
  throw Error("[tensor] unknown dtype");
}

const char* dtype_name(DType dt) {
  switch (dt) {
    case DType::F32:
      return "F32";
    case DType::F16:
      return "F16";
    case DType::BF16:
      return "BF16";
    case DType::F64:
      return "F64";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
  }
  return "?";
}

std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    PF_CHECK(d >= 0, "[tensor] negative dimension in shape ", shape_str(s));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      throw Error(str("[tensor] element count of shape ", shape_str(s), " overflows"));
    n *= d;
  }
  return n;
}

Tensor::Tensor(Shape shape, DType dtype) : shape_(std::move(shape)), dtype_(dtype) {
  numel_ = shape_numel(shape_);
  PF_CHECK(numel_ <= static_cast<int64_t>((size_t{1} << 46) / dtype_size(dtype)), "[tensor] shape ",
           shape_str(shape_), " of ", dtype_name(dtype), " is too large to allocate");
  size_t bytes = nbytes();
  size_t alloc = ((bytes + 63) / 64) * 64;
  if (alloc == 0) alloc = 64;
  void* p = std::aligned_alloc(64, alloc);
  if (!p)
    throw Error(str("[tensor] out of memory allocating ", bytes, " bytes for ", shape_str(shape_)));
  std::memset(p, 0, alloc);
  storage_ =
      std::shared_ptr<std::byte>(static_cast<std::byte*>(p), [](std::byte* q) { std::free(q); });
}

int64_t Tensor::dim(int i) const {
  int n = ndim();
  int j = i < 0 ? i + n : i;
  PF_CHECK(j >= 0 && j < n, "[tensor] dim index ", i, " out of range for shape ",
           shape_str(shape_));
  return shape_[j];
}

void Tensor::check_dtype(DType want) const {
  PF_CHECK(want == dtype_, "[tensor] expected dtype ", dtype_name(want), ", tensor has ",
           dtype_name(dtype_));
}

Tensor Tensor::reshape(Shape s) const {
  PF_CHECK(shape_numel(s) == numel_, "[tensor] cannot reshape ", shape_str(shape_), " to ",
           shape_str(s));
  Tensor t = *this;
  t.shape_ = std::move(s);
  return t;
}

Tensor Tensor::clone() const {
  Tensor t(shape_, dtype_);
  if (nbytes()) std::memcpy(t.raw(), raw(), nbytes());
  return t;
}

void Tensor::fill(float v) {
  float* p = data<float>();
  for (int64_t i = 0; i < numel_; ++i) p[i] = v;
}

namespace {
double get_as_double(const Tensor& t, int64_t i) {
  const void* p = t.raw();
  switch (t.dtype()) {
    case DType::F32:
      return static_cast<const float*>(p)[i];
    case DType::F16:
      return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::BF16:
      return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F64:
      return static_cast<const double*>(p)[i];
    case DType::I32:
      return static_cast<const int32_t*>(p)[i];
    case DType::I64:
      return static_cast<double>(static_cast<const int64_t*>(p)[i]);
  }
  return 0;
}
void set_from_double(Tensor& t, int64_t i, double v) {
  void* p = t.raw();
  switch (t.dtype()) {
    case DType::F32:
      static_cast<float*>(p)[i] = static_cast<float>(v);
      break;
    case DType::F16:
      static_cast<uint16_t*>(p)[i] = f32_to_f16(static_cast<float>(v));
      break;
    case DType::BF16:
      static_cast<uint16_t*>(p)[i] = f32_to_bf16(static_cast<float>(v));
      break;
    case DType::F64:
      static_cast<double*>(p)[i] = v;
      break;
    case DType::I32:
      static_cast<int32_t*>(p)[i] = static_cast<int32_t>(v);
      break;
    case DType::I64:
      static_cast<int64_t*>(p)[i] = static_cast<int64_t>(v);
      break;
  }
}
}  // namespace

Tensor Tensor::to(DType dt) const {
  if (dt == dtype_) return *this;
  Tensor t(shape_, dt);
  for (int64_t i = 0; i < numel_; ++i) set_from_double(t, i, get_as_double(*this, i));
  return t;
}

uint16_t f32_to_bf16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((x >> 16) | 0x40);  // NaN stays NaN
  uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

float bf16_to_f32(uint16_t b) {
  uint32_t x = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

uint16_t f32_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (absx >= 0x477ff000u) {                                             // overflow -> inf
    // values that round to >= 65520 become inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (absx < 0x38800000u) {                                      // subnormal half (or zero)
    if (absx < 0x33000000u) return static_cast<uint16_t>(sign);  // < 2^-25 rounds to 0
    uint32_t mant = (absx & 0x007fffffu) | 0x00800000u;
    int e = static_cast<int>(absx >> 23);  // biased f32 exponent
    int shift = 126 - e;  // value = mant * 2^(e-150); half subnormal unit 2^-24, shift in [14, 24]
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t e = ((absx >> 23) - 127 + 15);
  uint32_t mant = absx & 0x007fffffu;
  uint32_t h = (e << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // may carry into exponent: correct
  return static_cast<uint16_t>(sign | h);
}

float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1fu;
  uint32_t m = h & 0x3ffu;
  uint32_t x;
  if (e == 0) {
    if (m == 0) {
      x = sign;
    } else {  // subnormal
      float f = std::ldexp(static_cast<float>(m), -24);
      std::memcpy(&x, &f, 4);
      x |= sign;
    }
  } else if (e == 31) {
    x = sign | 0x7f800000u | (m << 13);
  } else {
    x = sign | ((e - 15 + 127) << 23) | (m << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

}  // namespace posformer
