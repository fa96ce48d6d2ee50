// Safetensors reader and writer (https://huggingface.co/docs/safetensors).
//
// File layout:
//
//   [8 bytes]  N, little-endian u64: length of the JSON header
//   [N bytes]  UTF-8 JSON object, may be padded at the end with spaces (0x20):
//                {"__metadata__": {"key": "value", ...},            (optional, str -> str)
//                 "name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
//                 ...}
//   [rest]     data buffer; each tensor's bytes are [begin, end) relative to its start,
//              row-major (C order), little-endian.
//
// Writer: __metadata__ first (omitted when empty), then tensors in sorted name order stored
// contiguously in that order; the header is padded with spaces so the data buffer starts at a
// multiple of 8 bytes. Supported dtypes: F32, F16, BF16, F64, I32, I64.
//
// Reader: validates everything before allocating tensor memory and throws posformer::Error
// naming the source (`what`), the problem and, where relevant, the tensor. Rejected: files
// shorter than 8 bytes; N > 100,000,000 or past the end of the file; a header that is not valid
// UTF-8, not valid JSON, not a JSON object, or has duplicate keys; entries that are not objects,
// lack dtype/shape/data_offsets or have wrong JSON types (shape: array of non-negative integers;
// data_offsets: two non-negative integers with begin <= end); unknown or unsupported dtypes;
// element-count or byte-size overflow; byte size != end - begin; byte ranges that, sorted by
// begin, do not tile the data buffer exactly (overlap, gap, past the end, trailing bytes);
// a __metadata__ that is not a string -> string object. Zero-size tensors (begin == end) are
// fine. Unknown extra keys inside a tensor entry are ignored, as the reference reader does.
#pragma once
#include <cstddef>
#include <map>
#include <string>

#include "posformer/core/tensor.h"

namespace posformer {

struct SafetensorsFile {
  std::map<std::string, Tensor> tensors;        // name -> tensor (dtype as stored)
  std::map<std::string, std::string> metadata;  // the "__metadata__" string -> string map
};

// Largest accepted header length N (same limit as the reference implementation).
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100'000'000;

// Reads and parses a whole file (files up to 64 GiB).
SafetensorsFile load_safetensors(const std::string& path);
// Parses an in-memory file image; `what` names the source in error messages.
SafetensorsFile parse_safetensors(const void* data, size_t size, const std::string& what);

// The file image; throws Error for a tensor named "__metadata__", a tensor without storage, or
// a name / metadata string that is not valid UTF-8.
std::string serialize_safetensors(const std::map<std::string, Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata = {});
// serialize_safetensors + atomic_write_file.
void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

}  // namespace posformer
