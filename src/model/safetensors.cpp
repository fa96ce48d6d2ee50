#include "posformer/model/safetensors.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string_view>
#include <vector>

#include "posformer/core/io.h"

namespace posformer {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; big-endian hosts would need byte swapping");

namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxFileBytes = uint64_t{64} << 30;  // 64 GiB
constexpr int kMaxJsonDepth = 32;                       // a valid header needs 3 levels

struct Entry {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t begin, end;
};

// Dtypes of the safetensors spec that we recognise but cannot hold in a Tensor.
constexpr const char* kUnsupportedDtypes[] = {
    "BOOL",    "U8",      "I8", "I16",     "U16",     "U32", "U64",         "F8_E4M3",
    "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64", "F8_E4M3FNUZ", "F8_E5M2FNUZ"};
constexpr DType kAllDtypes[] = {DType::F32, DType::F16, DType::BF16,
                                DType::F64, DType::I32, DType::I64};

// Offset of the first byte that is not part of valid UTF-8 (no overlongs, no surrogates,
// nothing above U+10FFFF), or npos when all of s is valid.
size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    unsigned char c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;  // overlong
      if (c == 0xED) hi = 0x9F;  // surrogates
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;  // overlong
      if (c == 0xF4) hi = 0x8F;  // > U+10FFFF
    } else {
      return i;
    }
    if (n - i < len) return i;
    if (p[i + 1] < lo || p[i + 1] > hi) return i;
    for (size_t k = 2; k < len; ++k)
      if (p[i + k] < 0x80 || p[i + k] > 0xBF) return i;
    i += len;
  }
  return std::string_view::npos;
}

// JSON text for messages, cut short so a hostile header cannot blow up an error string.
std::string brief(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

// A tensor name or key for messages, cut short the same way.
std::string brief(const std::string& name) {
  return name.size() > 200 ? name.substr(0, 197) + "..." : name;
}

std::string kind_of(const json& v) {
  if (v.is_number_float()) return "non-integer (or out of range) number";
  return v.type_name();
}

// A non-negative JSON integer, else nullopt.
std::optional<uint64_t> as_index(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) {
    int64_t x = v.get<int64_t>();
    if (x >= 0) return static_cast<uint64_t>(x);
  }
  return std::nullopt;
}

std::optional<DType> dtype_from_name(const std::string& s) {
  for (DType dt : kAllDtypes)
    if (s == dtype_name(dt)) return dt;
  return std::nullopt;
}

class Parser {
 public:
  Parser(const void* data, size_t size, const std::string& what)
      : p_(static_cast<const unsigned char*>(data)), size_(size), what_(what) {}

  SafetensorsFile run() {
    PF_CHECK(size_ >= 8, prefix(), "file is ", size_,
             " bytes, too short for the 8-byte header length");
    uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | p_[i];
    PF_CHECK(n <= kSafetensorsMaxHeaderBytes, prefix(), "header length ", n,
             " exceeds the limit of ", kSafetensorsMaxHeaderBytes, " bytes");
    PF_CHECK(n <= size_ - 8, prefix(), "header length ", n, " runs past the end of the file (",
             size_, " bytes, so at most ", size_ - 8, " bytes of header)");
    std::string_view header(reinterpret_cast<const char*>(p_ + 8), static_cast<size_t>(n));
    data_ = p_ + 8 + n;
    data_size_ = size_ - 8 - n;

    size_t bad = find_invalid_utf8(header);
    PF_CHECK(bad == std::string_view::npos, prefix(), "header is not valid UTF-8 (bad byte 0x",
             hex_byte(static_cast<unsigned char>(header[bad])), " at header offset ", bad, ")");

    // nlohmann stops at a NUL byte as if the input ended there; JSON never allows a raw NUL.
    size_t nul = header.find('\0');
    PF_CHECK(nul == std::string_view::npos, prefix(),
             "header is not valid JSON: NUL byte at header offset ", nul);
    json root = parse_json(header);
    PF_CHECK(root.is_object(), prefix(), "header is not a JSON object (got ", kind_of(root), ")");

    SafetensorsFile out;
    std::vector<Entry> entries;
    for (auto& [key, value] : root.items()) {
      if (key == "__metadata__") {
        out.metadata = parse_metadata(value);
      } else {
        entries.push_back(parse_entry(key, value));
      }
    }
    check_tiling(entries);

    // Everything is validated and sizes are bounded by the file: now allocate and copy.
    for (const Entry& e : entries) {
      Tensor t(e.shape, e.dtype);
      if (e.end > e.begin) std::memcpy(t.raw(), data_ + e.begin, e.end - e.begin);
      out.tensors.emplace(e.name, std::move(t));
    }
    return out;
  }

 private:
  std::string prefix() const { return "[safetensors] " + what_ + ": "; }
  std::string tprefix(const std::string& name) const {
    return prefix() + "tensor '" + brief(name) + "': ";
  }
  static std::string hex_byte(unsigned char c) {
    const char* d = "0123456789abcdef";
    return {d[c >> 4], d[c & 15]};
  }

  // Parses the header, rejecting duplicate keys (nlohmann would keep the last silently) and
  // absurd nesting (each level costs memory).
  json parse_json(std::string_view header) {
    std::vector<std::set<std::string>> keys;  // keys seen in each open object
    auto cb = [&](int depth, json::parse_event_t event, json& parsed) {
      switch (event) {
        case json::parse_event_t::object_start:
        case json::parse_event_t::array_start:
          PF_CHECK(depth < kMaxJsonDepth, prefix(), "header JSON is nested more than ",
                   kMaxJsonDepth, " levels deep");
          if (event == json::parse_event_t::object_start) keys.emplace_back();
          break;
        case json::parse_event_t::object_end:
          keys.pop_back();
          break;
        case json::parse_event_t::key: {
          const std::string& k = parsed.get_ref<const std::string&>();
          if (!keys.back().insert(k).second) {
            if (keys.size() == 1 && k != "__metadata__")
              throw Error(str(prefix(), "duplicate tensor name '", brief(k), "' in header"));
            throw Error(str(prefix(), "duplicate key '", brief(k), "' in header"));
          }
          break;
        }
        default:
          break;
      }
      return true;
    };
    try {
      return json::parse(header.begin(), header.end(), cb);
    } catch (const json::exception& e) {
      throw Error(str(prefix(), "header is not valid JSON: ", e.what()));
    }
  }

  std::map<std::string, std::string> parse_metadata(const json& v) {
    PF_CHECK(v.is_object(), prefix(), "__metadata__ must be a JSON object of strings, got ",
             kind_of(v));
    std::map<std::string, std::string> m;
    for (auto& [k, val] : v.items()) {
      PF_CHECK(val.is_string(), prefix(), "__metadata__ value of '", brief(k),
               "' must be a string, got ", kind_of(val), " ", brief(val));
      m.emplace(k, val.get<std::string>());
    }
    return m;
  }

  Entry parse_entry(const std::string& name, const json& v) {
    const std::string tp = tprefix(name);
    PF_CHECK(v.is_object(), tp, "entry must be a JSON object, got ", kind_of(v));
    for (const char* field : {"dtype", "shape", "data_offsets"})
      PF_CHECK(v.contains(field), tp, "entry lacks \"", field, "\"");
    Entry e;
    e.name = name;

    const json& dt = v["dtype"];
    PF_CHECK(dt.is_string(), tp, "dtype must be a string, got ", kind_of(dt));
    const std::string& dts = dt.get_ref<const std::string&>();
    auto parsed = dtype_from_name(dts);
    if (!parsed) {
      bool known =
          std::find_if(std::begin(kUnsupportedDtypes), std::end(kUnsupportedDtypes),
                       [&](const char* s) { return dts == s; }) != std::end(kUnsupportedDtypes);
      throw Error(str(tp, known ? "unsupported" : "unknown", " dtype '", dts,
                      "' (supported: F32, F16, BF16, F64, I32, I64)"));
    }
    e.dtype = *parsed;

    const json& sh = v["shape"];
    PF_CHECK(sh.is_array(), tp, "shape must be an array, got ", kind_of(sh));
    uint64_t numel = 1;
    bool overflow = false;
    for (const json& d : sh) {
      auto dim = as_index(d);
      PF_CHECK(dim.has_value(), tp, "shape dims must be non-negative integers, got ", kind_of(d),
               " ", brief(d), " in shape ", brief(sh));
      // Checked in order like the reference reader: any prefix product overflowing is rejected.
      overflow = overflow || *dim > uint64_t(std::numeric_limits<int64_t>::max()) ||
                 __builtin_mul_overflow(numel, *dim, &numel) ||
                 numel > uint64_t(std::numeric_limits<int64_t>::max());
      if (!overflow) e.shape.push_back(static_cast<int64_t>(*dim));
    }
    PF_CHECK(!overflow, tp, "element count of shape ", brief(sh), " overflows");
    uint64_t nbytes = 0;
    PF_CHECK(!__builtin_mul_overflow(numel, uint64_t(dtype_size(e.dtype)), &nbytes), tp,
             "byte size of shape ", brief(sh), " x ", dts, " overflows");

    const json& off = v["data_offsets"];
    PF_CHECK(off.is_array() && off.size() == 2, tp,
             "data_offsets must be an array of 2 integers, got ", brief(off));
    auto b = as_index(off[0]), en = as_index(off[1]);
    PF_CHECK(b && en, tp, "data_offsets must be 2 non-negative integers, got ", brief(off));
    e.begin = *b;
    e.end = *en;
    PF_CHECK(e.begin <= e.end, tp, "data_offsets begin ", e.begin, " > end ", e.end);
    PF_CHECK(e.end - e.begin == nbytes, tp, "shape ", shape_str(e.shape), " x ", dts, " needs ",
             nbytes, " bytes but data_offsets [", e.begin, ", ", e.end, "] span ", e.end - e.begin,
             " bytes");
    PF_CHECK(e.end <= data_size_, tp, "data_offsets [", e.begin, ", ", e.end,
             "] run past the end of the data buffer (", data_size_, " bytes)");
    return e;
  }

  // Sorted by begin, the byte ranges must cover [0, data_size) exactly once.
  void check_tiling(std::vector<Entry>& entries) {
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    uint64_t pos = 0;
    const Entry* prev = nullptr;
    for (const Entry& e : entries) {
      if (e.begin < pos) {
        throw Error(str(prefix(), "tensors '", brief(prev->name), "' [", prev->begin, ", ",
                        prev->end, ") and '", brief(e.name), "' [", e.begin, ", ", e.end,
                        ") overlap"));
      }
      if (e.begin > pos) {
        throw Error(str(prefix(), "gap of ", e.begin - pos, " unused bytes at data offset ", pos,
                        " before tensor '", brief(e.name), "' [", e.begin, ", ", e.end, ")"));
      }
      pos = e.end;
      prev = &e;
    }
    PF_CHECK(pos == data_size_, prefix(), data_size_ - pos,
             " trailing bytes after the last tensor (tensors end at data offset ", pos,
             ", the data buffer is ", data_size_, " bytes)");
  }

  const unsigned char* p_;
  size_t size_;
  const std::string& what_;
  const unsigned char* data_ = nullptr;
  uint64_t data_size_ = 0;
};

std::string quote(const std::string& s) {
  return json(s).dump();
}

void check_utf8(const std::string& s, const std::string& role) {
  PF_CHECK(find_invalid_utf8(s) == std::string_view::npos, "[safetensors] ", role,
           " is not valid UTF-8");
}

}  // namespace

SafetensorsFile parse_safetensors(const void* data, size_t size, const std::string& what) {
  return Parser(data, size, what).run();
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::string bytes = read_file(path, kMaxFileBytes);
  return parse_safetensors(bytes.data(), bytes.size(), path);
}

std::string serialize_safetensors(const std::map<std::string, Tensor>& tensors,
                                  const std::map<std::string, std::string>& metadata) {
  std::string header = "{";
  if (!metadata.empty()) {
    header += "\"__metadata__\":{";
    bool first = true;
    for (const auto& [k, v] : metadata) {
      check_utf8(k, "metadata key");
      check_utf8(v, "metadata value of '" + k + "'");
      if (!first) header += ',';
      header += quote(k);
      header += ':';
      header += quote(v);
      first = false;
    }
    header += "}";
  }
  // std::map iterates in sorted (byte-wise) name order; data goes in the same order.
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    PF_CHECK(name != "__metadata__", "[safetensors] a tensor cannot be named \"__metadata__\"");
    check_utf8(name, "tensor name");
    PF_CHECK(t.raw() != nullptr, "[safetensors] tensor '", name, "' has no storage");
    uint64_t nbytes = 0;
    PF_CHECK(
        !__builtin_mul_overflow(uint64_t(t.numel()), uint64_t(dtype_size(t.dtype())), &nbytes) &&
            nbytes == t.nbytes(),
        "[safetensors] tensor '", name, "' of shape ", shape_str(t.shape()),
        " has a byte size that overflows");
    if (header.size() > 1) header += ",";
    header += quote(name);
    header += str(":{\"dtype\":\"", dtype_name(t.dtype()), "\",\"shape\":[");
    for (size_t i = 0; i < t.shape().size(); ++i) {
      if (i) header += ',';
      header += std::to_string(t.shape()[i]);
    }
    header += str("],\"data_offsets\":[", offset, ",", offset + nbytes, "]}");
    offset += nbytes;
  }
  header += "}";
  header.append((8 - header.size() % 8) % 8, ' ');  // data starts at a multiple of 8

  std::string out;
  out.reserve(8 + header.size() + offset);
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
  out += header;
  for (const auto& [name, t] : tensors) out.append(static_cast<const char*>(t.raw()), t.nbytes());
  return out;
}

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  atomic_write_file(path, serialize_safetensors(tensors, metadata));
}

}  // namespace posformer
