// Safetensors reader/writer and atomic file I/O.
#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "posformer/core/error.h"
#include "posformer/core/io.h"
#include "posformer/core/tensor.h"
#include "posformer/model/safetensors.h"

namespace posformer {
namespace {

const DType kDtypes[] = {DType::F32, DType::F16, DType::BF16, DType::F64, DType::I32, DType::I64};

std::string le64(uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
  return s;
}

// A file image: correct length prefix, the header as given, then `data`.
std::string make_file(const std::string& header, const std::string& data = "") {
  return le64(header.size()) + header + data;
}

// A tensor whose bytes follow a recognisable pattern.
Tensor patterned(Shape shape, DType dt, int seed) {
  Tensor t(std::move(shape), dt);
  auto* p = static_cast<unsigned char*>(t.raw());
  for (size_t i = 0; i < t.nbytes(); ++i) p[i] = static_cast<unsigned char>(i * 37 + seed * 11 + 1);
  return t;
}

bool same_tensor(const Tensor& a, const Tensor& b) {
  return a.dtype() == b.dtype() && a.shape() == b.shape() && a.nbytes() == b.nbytes() &&
         (a.nbytes() == 0 || std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0);
}

std::string bytes_of(const Tensor& t) {
  return std::string(static_cast<const char*>(t.raw()), t.nbytes());
}

// Parsing `file` must throw posformer::Error naming the source and containing every word.
void expect_rejected(const std::string& file, std::initializer_list<std::string> words) {
  const std::string what = "bad.safetensors";
  try {
    parse_safetensors(file.data(), file.size(), what);
    ADD_FAILURE() << "expected posformer::Error containing '" << *words.begin() << "'";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(what), std::string::npos) << "message does not name the file: " << msg;
    for (const std::string& w : words)
      EXPECT_NE(msg.find(w), std::string::npos) << "missing '" << w << "' in: " << msg;
  }
}

// One-entry header for tensor "w".
std::string entry(const std::string& dtype, const std::string& shape, const std::string& offsets) {
  return "{\"w\":{\"dtype\":" + dtype + ",\"shape\":" + shape + ",\"data_offsets\":" + offsets +
         "}}";
}

class TempDir {
 public:
  TempDir() {
    std::string tmpl = ::testing::TempDir() + "posformer_st_XXXXXX";
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    char* d = ::mkdtemp(buf.data());
    if (!d) throw Error("mkdtemp failed");
    path_ = d;
  }
  ~TempDir() { remove_tree(path_); }
  const std::string& path() const { return path_; }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  std::set<std::string> entries() const {
    std::set<std::string> out;
    if (DIR* d = ::opendir(path_.c_str())) {
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") out.insert(n);
      }
      ::closedir(d);
    }
    return out;
  }

 private:
  static void remove_tree(const std::string& p) {
    if (DIR* d = ::opendir(p.c_str())) {
      while (dirent* e = ::readdir(d)) {
        std::string n = e->d_name;
        if (n != "." && n != "..") remove_tree(p + "/" + n);
      }
      ::closedir(d);
      ::rmdir(p.c_str());
    } else {
      ::unlink(p.c_str());
    }
  }
  std::string path_;
};

// ---------------------------------------------------------------- round trips and layout

TEST(SafetensorsRoundTrip, EveryDtypeScalarAndZeroSizeWithMetadata) {
  std::map<std::string, Tensor> tensors;
  int seed = 0;
  for (DType dt : kDtypes) {
    std::string n = dtype_name(dt);
    tensors[n + ".matrix"] = patterned({2, 3}, dt, ++seed);
    tensors[n + ".scalar"] = patterned({}, dt, ++seed);
    tensors[n + ".empty"] = patterned({0, 4}, dt, ++seed);
    tensors[n + ".vec"] = patterned({5}, dt, ++seed);
  }
  std::map<std::string, std::string> meta = {{"format", "pt"},
                                             {"quote\"back\\slash", "line\nbreak\ttab"},
                                             {"unicode", "h\xC3\xA9 \xF0\x9F\x98\x80"},
                                             {"empty", ""}};
  std::string file = serialize_safetensors(tensors, meta);
  SafetensorsFile back = parse_safetensors(file.data(), file.size(), "mem");
  EXPECT_EQ(back.metadata, meta);
  ASSERT_EQ(back.tensors.size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    ASSERT_TRUE(back.tensors.count(name)) << name;
    const Tensor& u = back.tensors.at(name);
    EXPECT_TRUE(same_tensor(t, u)) << name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(u.raw()) % 64, 0u) << name;
  }
  EXPECT_EQ(back.tensors.at("F32.scalar").ndim(), 0);
  EXPECT_EQ(back.tensors.at("F32.scalar").numel(), 1);
  EXPECT_EQ(back.tensors.at("I64.empty").numel(), 0);
  // Serializing what we read reproduces the file exactly.
  EXPECT_EQ(serialize_safetensors(back.tensors, back.metadata), file);
}

TEST(SafetensorsRoundTrip, ValuesSurviveThroughDisk) {
  TempDir dir;
  Tensor a({3}, DType::F32);
  a.data<float>()[0] = 1.5f;
  a.data<float>()[1] = -2.25f;
  a.data<float>()[2] = 3e38f;
  Tensor b({2}, DType::I64);
  b.data<int64_t>()[0] = INT64_MIN;
  b.data<int64_t>()[1] = INT64_MAX;
  std::string path = dir.file("model.safetensors");
  save_safetensors(path, {{"a", a}, {"b", b}}, {{"step", "7"}});
  SafetensorsFile f = load_safetensors(path);
  EXPECT_EQ(f.tensors.at("a").data<float>()[1], -2.25f);
  EXPECT_EQ(f.tensors.at("a").data<float>()[2], 3e38f);
  EXPECT_EQ(f.tensors.at("b").data<int64_t>()[0], INT64_MIN);
  EXPECT_EQ(f.tensors.at("b").data<int64_t>()[1], INT64_MAX);
  EXPECT_EQ(f.metadata.at("step"), "7");
  EXPECT_EQ(dir.entries(), std::set<std::string>{"model.safetensors"});
}

TEST(SafetensorsRoundTrip, EmptyFileAndMetadataOnly) {
  std::string empty = serialize_safetensors({});
  EXPECT_EQ(empty, le64(8) + "{}      ");
  SafetensorsFile f = parse_safetensors(empty.data(), empty.size(), "mem");
  EXPECT_TRUE(f.tensors.empty());
  EXPECT_TRUE(f.metadata.empty());

  std::string meta_only = serialize_safetensors({}, {{"k", "v"}});
  f = parse_safetensors(meta_only.data(), meta_only.size(), "mem");
  EXPECT_TRUE(f.tensors.empty());
  EXPECT_EQ(f.metadata.at("k"), "v");
}

TEST(SafetensorsLayout, LengthPrefixAlignmentAndSortedOrder) {
  std::map<std::string, Tensor> tensors = {{"c", patterned({1}, DType::F16, 1)},
                                           {"a", patterned({2}, DType::I64, 2)},
                                           {"b", patterned({3}, DType::F32, 3)},
                                           {"B", patterned({0}, DType::F64, 4)}};
  std::string file = serialize_safetensors(tensors, {{"format", "pt"}});
  ASSERT_GE(file.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(file[i]);
  ASSERT_LE(8 + n, file.size());
  EXPECT_EQ((8 + n) % 8, 0u) << "data must start at a multiple of 8";
  std::string header = file.substr(8, n);
  // Compact JSON, then only space padding.
  size_t close = header.find_last_of('}');
  EXPECT_EQ(header.find_first_not_of(' ', close + 1), std::string::npos);
  EXPECT_LT(header.size() - close - 1, 8u);
  EXPECT_EQ(header[0], '{');
  // __metadata__ first, then tensors in byte-wise sorted order ("B" < "a" < "b" < "c").
  size_t pm = header.find("\"__metadata__\""), pB = header.find("\"B\""), pa = header.find("\"a\""),
         pb = header.find("\"b\""), pc = header.find("\"c\"");
  EXPECT_EQ(pm, 1u);
  EXPECT_LT(pm, pB);
  EXPECT_LT(pB, pa);
  EXPECT_LT(pa, pb);
  EXPECT_LT(pb, pc);

  // Data offsets: contiguous in name order; the data buffer is exactly the concatenation.
  auto j = nlohmann::json::parse(header);
  EXPECT_EQ(j["B"]["data_offsets"], nlohmann::json::array({0, 0}));
  EXPECT_EQ(j["a"]["data_offsets"], nlohmann::json::array({0, 16}));
  EXPECT_EQ(j["b"]["data_offsets"], nlohmann::json::array({16, 28}));
  EXPECT_EQ(j["c"]["data_offsets"], nlohmann::json::array({28, 30}));
  EXPECT_EQ(j["a"]["dtype"], "I64");
  EXPECT_EQ(j["b"]["shape"], nlohmann::json::array({3}));
  EXPECT_EQ(j["__metadata__"]["format"], "pt");
  EXPECT_EQ(file.substr(8 + n),
            bytes_of(tensors["a"]) + bytes_of(tensors["b"]) + bytes_of(tensors["c"]));
}

// The exact bytes the reference writer produces for {"t": zeros F32 [2, 2]}: compact JSON
// with keys dtype, shape, data_offsets, padded with 7 spaces to 64 bytes ('@').
TEST(SafetensorsFormat, WriterMatchesReferenceBytes) {
  std::string header = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}       ";
  std::string expected = std::string("@\0\0\0\0\0\0\0", 8) + header + std::string(16, '\0');
  EXPECT_EQ(serialize_safetensors({{"t", Tensor({2, 2}, DType::F32)}}), expected);
}

// A hand-crafted file in the official layout: unpadded header (60 bytes, '<'), as in the
// reference implementation's documentation, with I32 values 1..4.
TEST(SafetensorsFormat, ReadsHandCraftedReferenceFile) {
  std::string file = std::string("<\0\0\0\0\0\0\0", 8) +
                     "{\"test\":{\"dtype\":\"I32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}" +
                     std::string("\x01\0\0\0\x02\0\0\0\x03\0\0\0\xff\xff\xff\xff", 16);
  SafetensorsFile f = parse_safetensors(file.data(), file.size(), "reference");
  ASSERT_EQ(f.tensors.size(), 1u);
  const Tensor& t = f.tensors.at("test");
  EXPECT_EQ(t.dtype(), DType::I32);
  EXPECT_EQ(t.shape(), (Shape{2, 2}));
  EXPECT_EQ(t.data<int32_t>()[0], 1);
  EXPECT_EQ(t.data<int32_t>()[2], 3);
  EXPECT_EQ(t.data<int32_t>()[3], -1);
  EXPECT_TRUE(f.metadata.empty());
}

// Pretty-printed header with metadata, a BF16 and an F16 tensor stored in non-name order and a
// zero-size tensor between them: all valid.
TEST(SafetensorsFormat, ReadsHandCraftedFileWithMetadataAndWhitespace) {
  std::string header =
      "{\n  \"__metadata__\": {\"format\": \"pt\"},\n"
      "  \"z\": {\"dtype\": \"BF16\", \"shape\": [2], \"data_offsets\": [0, 4]},\n"
      "  \"e\": {\"shape\": [0, 3], \"dtype\": \"F64\", \"data_offsets\": [4, 4]},\n"
      "  \"a\": {\"dtype\": \"F16\", \"shape\": [1, 1], \"data_offsets\": [4, 6], \"x\": 1}\n}  ";
  // BF16 1.0 = 0x3F80, -2.0 = 0xC000; F16 1.0 = 0x3C00.
  std::string data("\x80\x3f\x00\xc0\x00\x3c", 6);
  std::string file = make_file(header, data);
  SafetensorsFile f = parse_safetensors(file.data(), file.size(), "hand");
  EXPECT_EQ(f.metadata, (std::map<std::string, std::string>{{"format", "pt"}}));
  ASSERT_EQ(f.tensors.size(), 3u);
  const Tensor& z = f.tensors.at("z");
  EXPECT_EQ(z.dtype(), DType::BF16);
  EXPECT_EQ(z.to(DType::F32).data<float>()[0], 1.0f);
  EXPECT_EQ(z.to(DType::F32).data<float>()[1], -2.0f);
  EXPECT_EQ(f.tensors.at("e").shape(), (Shape{0, 3}));
  EXPECT_EQ(f.tensors.at("a").dtype(), DType::F16);
  EXPECT_EQ(f.tensors.at("a").to(DType::F32).data<float>()[0], 1.0f);
}

TEST(SafetensorsWriter, RejectsReservedNameMissingStorageAndBadUtf8) {
  EXPECT_THROW(serialize_safetensors({{"__metadata__", Tensor({1})}}), Error);
  EXPECT_THROW(serialize_safetensors({{"w", Tensor()}}), Error);
  EXPECT_THROW(serialize_safetensors({{"bad\xff", Tensor({1})}}), Error);
  EXPECT_THROW(serialize_safetensors({}, {{"k", "\xc0\xaf"}}), Error);
}

TEST(SafetensorsLoad, MissingFileNamesIt) {
  TempDir dir;
  std::string path = dir.file("nope.safetensors");
  try {
    load_safetensors(path);
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("No such file"), std::string::npos) << e.what();
  }
}

TEST(SafetensorsLoad, MalformedFileOnDiskNamesThePath) {
  TempDir dir;
  std::string path = dir.file("broken.safetensors");
  atomic_write_file(path, make_file("{\"w\":[]}"));
  try {
    load_safetensors(path);
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("'w'"), std::string::npos) << e.what();
  }
}

// ---------------------------------------------------------------- malformed files, one per case

TEST(SafetensorsMalformed, FileShorterThan8Bytes) {
  expect_rejected("", {"too short"});
  expect_rejected(std::string("\x02\0\0\0\0\0\0", 7), {"7 bytes", "too short"});
}

TEST(SafetensorsMalformed, HeaderLengthOverLimit) {
  expect_rejected(le64(100'000'001) + "{}", {"header length", "100000001", "limit"});
  expect_rejected(le64(UINT64_MAX) + "{}", {"header length", "limit"});
}

TEST(SafetensorsMalformed, HeaderLengthPastEndOfFile) {
  expect_rejected(le64(100) + "{\"a\":1}", {"header length", "100", "past the end"});
  expect_rejected(le64(3) + "{}", {"header length", "past the end"});
}

TEST(SafetensorsMalformed, HeaderNotUtf8) {
  expect_rejected(make_file("{\"w\xff\":1}"), {"UTF-8"});
  expect_rejected(make_file("{\"\xc0\xaf\":1}"), {"UTF-8"});          // overlong '/'
  expect_rejected(make_file("{\"\xed\xa0\x80\":1}"), {"UTF-8"});      // surrogate
  expect_rejected(make_file("{\"\xf4\x90\x80\x80\":1}"), {"UTF-8"});  // > U+10FFFF
  expect_rejected(make_file("{}\xe2\x82"), {"UTF-8"});                // truncated sequence
}

TEST(SafetensorsMalformed, HeaderNotJson) {
  expect_rejected(make_file("{\"w\":"), {"not valid JSON"});
  expect_rejected(make_file(""), {"not valid JSON"});
  expect_rejected(make_file("{} {}"), {"not valid JSON"});
  expect_rejected(make_file(std::string("{}\0", 3)), {"not valid JSON"});
  // Content hidden after a NUL must not be silently ignored.
  expect_rejected(make_file(std::string("{}\0{\"w\":1}", 11)), {"not valid JSON", "NUL"});
}

TEST(SafetensorsMalformed, HeaderNotObject) {
  expect_rejected(make_file("[1,2]"), {"not a JSON object", "array"});
  expect_rejected(make_file("\"w\""), {"not a JSON object", "string"});
}

TEST(SafetensorsMalformed, HeaderNestedTooDeeply) {
  expect_rejected(make_file("{\"w\":" + std::string(100000, '[')), {"nested"});
}

TEST(SafetensorsMalformed, EntryNotObject) {
  expect_rejected(make_file("{\"w\":[0,4]}"), {"'w'", "JSON object", "array"});
  expect_rejected(make_file("{\"w\":null}"), {"'w'", "JSON object", "null"});
}

TEST(SafetensorsMalformed, EntryLacksDtype) {
  expect_rejected(make_file("{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", std::string(4, 'x')),
                  {"'w'", "lacks", "dtype"});
}

TEST(SafetensorsMalformed, EntryLacksShape) {
  expect_rejected(
      make_file("{\"w\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", std::string(4, 'x')),
      {"'w'", "lacks", "shape"});
}

TEST(SafetensorsMalformed, EntryLacksDataOffsets) {
  expect_rejected(make_file("{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", std::string(4, 'x')),
                  {"'w'", "lacks", "data_offsets"});
}

TEST(SafetensorsMalformed, DtypeNotString) {
  expect_rejected(make_file(entry("4", "[1]", "[0,4]"), std::string(4, 'x')),
                  {"'w'", "dtype must be a string"});
}

TEST(SafetensorsMalformed, ShapeNotArray) {
  expect_rejected(make_file(entry("\"F32\"", "4", "[0,16]"), std::string(16, 'x')),
                  {"'w'", "shape must be an array"});
}

TEST(SafetensorsMalformed, NegativeShapeDim) {
  expect_rejected(make_file(entry("\"F32\"", "[-4]", "[0,16]"), std::string(16, 'x')),
                  {"'w'", "non-negative", "-4"});
}

TEST(SafetensorsMalformed, NonIntegerShapeDim) {
  std::string data(16, 'x');
  expect_rejected(make_file(entry("\"F32\"", "[4.0]", "[0,16]"), data), {"'w'", "non-integer"});
  expect_rejected(make_file(entry("\"F32\"", "[2.5]", "[0,16]"), data), {"'w'", "non-integer"});
  expect_rejected(make_file(entry("\"F32\"", "[\"4\"]", "[0,16]"), data), {"'w'", "string"});
  expect_rejected(make_file(entry("\"F32\"", "[[4]]", "[0,16]"), data), {"'w'", "array"});
  expect_rejected(make_file(entry("\"F32\"", "[true]", "[0,16]"), data), {"'w'", "boolean"});
}

TEST(SafetensorsMalformed, DataOffsetsNotTwoIntegers) {
  std::string data(4, 'x');
  expect_rejected(make_file(entry("\"F32\"", "[1]", "[4]"), data), {"'w'", "data_offsets", "2"});
  expect_rejected(make_file(entry("\"F32\"", "[1]", "[0,4,4]"), data), {"'w'", "data_offsets"});
  expect_rejected(make_file(entry("\"F32\"", "[1]", "{}"), data), {"'w'", "data_offsets"});
  expect_rejected(make_file(entry("\"F32\"", "[1]", "[0,4.0]"), data), {"'w'", "data_offsets"});
  expect_rejected(make_file(entry("\"F32\"", "[1]", "[\"0\",4]"), data), {"'w'", "data_offsets"});
}

TEST(SafetensorsMalformed, NegativeDataOffset) {
  expect_rejected(make_file(entry("\"F32\"", "[1]", "[-4,0]"), std::string(4, 'x')),
                  {"'w'", "data_offsets", "non-negative"});
}

TEST(SafetensorsMalformed, DataOffsetsBeginAfterEnd) {
  expect_rejected(make_file(entry("\"F32\"", "[1]", "[8,4]"), std::string(8, 'x')),
                  {"'w'", "begin 8 > end 4"});
}

TEST(SafetensorsMalformed, UnknownDtype) {
  expect_rejected(make_file(entry("\"F128\"", "[1]", "[0,16]"), std::string(16, 'x')),
                  {"'w'", "unknown dtype 'F128'"});
  expect_rejected(make_file(entry("\"f32\"", "[1]", "[0,4]"), std::string(4, 'x')),
                  {"'w'", "unknown dtype 'f32'"});
}

TEST(SafetensorsMalformed, UnsupportedDtype) {
  expect_rejected(make_file(entry("\"BOOL\"", "[4]", "[0,4]"), std::string(4, 'x')),
                  {"'w'", "unsupported dtype 'BOOL'"});
  expect_rejected(make_file(entry("\"U8\"", "[4]", "[0,4]"), std::string(4, 'x')),
                  {"'w'", "unsupported dtype 'U8'"});
}

TEST(SafetensorsMalformed, ByteSizeDoesNotMatchOffsets) {
  expect_rejected(make_file(entry("\"F32\"", "[4]", "[0,8]"), std::string(8, 'x')),
                  {"'w'", "needs 16 bytes", "span 8 bytes"});
  expect_rejected(make_file(entry("\"F16\"", "[]", "[0,0]")), {"'w'", "needs 2 bytes"});
}

// Dims large enough to exhaust memory but not to overflow: rejected before any allocation.
TEST(SafetensorsMalformed, HugeShapeIsNotAllocated) {
  expect_rejected(
      make_file(entry("\"F32\"", "[1099511627776,1024]", "[0,16]"), std::string(16, 'x')),
      {"'w'", "needs 4503599627370496 bytes"});
}

TEST(SafetensorsMalformed, ElementCountOverflow) {
  expect_rejected(make_file(entry("\"F32\"", "[4294967296,4294967296]", "[0,0]")),
                  {"'w'", "overflows"});
  expect_rejected(make_file(entry("\"F32\"", "[18446744073709551615]", "[0,0]")),
                  {"'w'", "overflows"});
  // Rejected in order even when a later zero dim would make the true product 0.
  expect_rejected(make_file(entry("\"I64\"", "[4294967296,4294967296,0]", "[0,0]")),
                  {"'w'", "overflows"});
}

TEST(SafetensorsMalformed, ByteSizeOverflow) {
  // 2^61 elements fit int64, but 2^61 * 8 bytes wraps to 0 in 64 bits.
  expect_rejected(make_file(entry("\"F64\"", "[2305843009213693952]", "[0,0]")),
                  {"'w'", "byte size", "overflows"});
}

TEST(SafetensorsMalformed, OverlappingTensors) {
  std::string h =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}";
  expect_rejected(make_file(h, std::string(12, 'x')), {"'a'", "'b'", "overlap"});
  // Two tensors sharing the same bytes.
  std::string same =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"b\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
  expect_rejected(make_file(same, std::string(8, 'x')), {"overlap"});
}

TEST(SafetensorsMalformed, ZeroSizeTensorInsideAnother) {
  std::string h =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
      "\"z\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}";
  expect_rejected(make_file(h, std::string(8, 'x')), {"'z'", "overlap"});
}

TEST(SafetensorsMalformed, GapBetweenTensors) {
  std::string h =
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
  expect_rejected(make_file(h, std::string(12, 'x')), {"gap", "4 unused bytes", "'b'"});
}

TEST(SafetensorsMalformed, GapBeforeFirstTensor) {
  expect_rejected(make_file(entry("\"F32\"", "[1]", "[4,8]"), std::string(8, 'x')),
                  {"gap", "offset 0", "'w'"});
}

TEST(SafetensorsMalformed, OffsetsPastEndOfData) {
  expect_rejected(make_file(entry("\"F32\"", "[4]", "[0,16]"), std::string(8, 'x')),
                  {"'w'", "past the end", "8 bytes"});
  // A zero-size tensor placed beyond the data is out of bounds too.
  expect_rejected(make_file(entry("\"F32\"", "[0]", "[64,64]")), {"'w'", "past the end"});
  // Offsets near 2^64 must not wrap around.
  expect_rejected(make_file(entry("\"F32\"", "[0]", "[18446744073709551615,18446744073709551615]")),
                  {"'w'", "past the end"});
}

TEST(SafetensorsMalformed, TrailingBytesAfterLastTensor) {
  expect_rejected(make_file(entry("\"F32\"", "[1]", "[0,4]"), std::string(8, 'x')),
                  {"4 trailing bytes"});
  expect_rejected(make_file("{}", std::string(3, 'x')), {"3 trailing bytes"});
}

TEST(SafetensorsMalformed, DuplicateTensorName) {
  std::string h =
      "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
      "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
  expect_rejected(make_file(h, std::string(8, 'x')), {"duplicate tensor name 'w'"});
}

TEST(SafetensorsMalformed, DuplicateKeyInsideEntry) {
  std::string h =
      "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
  expect_rejected(make_file(h, std::string(4, 'x')), {"duplicate key 'dtype'"});
}

TEST(SafetensorsMalformed, DuplicateMetadata) {
  expect_rejected(make_file("{\"__metadata__\":{},\"__metadata__\":{}}"),
                  {"duplicate key '__metadata__'"});
  expect_rejected(make_file("{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}"), {"duplicate key 'k'"});
}

TEST(SafetensorsMalformed, MetadataNotObject) {
  expect_rejected(make_file("{\"__metadata__\":[\"a\",\"b\"]}"), {"__metadata__", "array"});
  expect_rejected(make_file("{\"__metadata__\":\"format=pt\"}"), {"__metadata__", "string"});
}

TEST(SafetensorsMalformed, MetadataValueNotString) {
  expect_rejected(make_file("{\"__metadata__\":{\"step\":7}}"),
                  {"__metadata__", "'step'", "must be a string"});
  expect_rejected(make_file("{\"__metadata__\":{\"nested\":{\"a\":\"b\"}}}"),
                  {"__metadata__", "'nested'", "object"});
}

// ---------------------------------------------------------------- atomic I/O

TEST(AtomicIO, WriteReplacesContentAndLeavesNoTempFile) {
  TempDir dir;
  std::string path = dir.file("out.bin");
  atomic_write_file(path, std::string("first version"));
  EXPECT_EQ(read_file(path, 1 << 20), "first version");
  std::string binary("a\0b\xff", 4);
  atomic_write_file(path, binary.data(), binary.size());
  EXPECT_EQ(read_file(path, 1 << 20), binary);
  atomic_write_file(path, std::string());
  EXPECT_EQ(read_file(path, 1 << 20), "");
  EXPECT_EQ(dir.entries(), std::set<std::string>{"out.bin"});
}

TEST(AtomicIO, LargeWrite) {
  TempDir dir;
  std::string path = dir.file("big.bin");
  std::string data(5 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 131 + (i >> 13));
  atomic_write_file(path, data);
  EXPECT_EQ(read_file(path, data.size()), data);
}

TEST(AtomicIO, WriteIntoMissingDirectoryThrows) {
  TempDir dir;
  std::string path = dir.file("no/such/dir/out.bin");
  try {
    atomic_write_file(path, std::string("x"));
    FAIL() << "expected Error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("No such file or directory"), std::string::npos) << msg;
  }
  EXPECT_TRUE(dir.entries().empty());
}

// Renaming a file over a directory fails: the temp file must be cleaned up.
TEST(AtomicIO, FailedRenameRemovesTempFile) {
  TempDir dir;
  std::string target = dir.file("target");
  ASSERT_EQ(::mkdir(target.c_str(), 0755), 0);
  atomic_write_file(target + "/keep", std::string("x"));  // non-empty directory
  try {
    atomic_write_file(target, std::string("data"));
    FAIL() << "expected Error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(target), std::string::npos) << msg;
    EXPECT_NE(msg.find("rename"), std::string::npos) << msg;
  }
  EXPECT_EQ(dir.entries(), std::set<std::string>{"target"});
}

TEST(AtomicIO, ReadMissingFileNamesIt) {
  TempDir dir;
  std::string path = dir.file("missing.txt");
  try {
    read_file(path, 100);
    FAIL() << "expected Error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("No such file or directory"), std::string::npos) << msg;
  }
}

TEST(AtomicIO, ReadFileLargerThanLimitThrows) {
  TempDir dir;
  std::string path = dir.file("f.txt");
  atomic_write_file(path, std::string(100, 'x'));
  EXPECT_EQ(read_file(path, 100).size(), 100u);
  try {
    read_file(path, 99);
    FAIL() << "expected Error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find("larger than the limit of 99"), std::string::npos) << msg;
  }
}

TEST(AtomicIO, ReadDirectoryThrows) {
  TempDir dir;
  try {
    read_file(dir.path(), 100);
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("directory"), std::string::npos) << e.what();
  }
}

// Files that report size 0 (like /proc entries) are read to EOF, still under the limit.
TEST(AtomicIO, ReadFileWithoutKnownSize) {
  struct stat st {};
  if (::stat("/proc/self/status", &st) != 0) GTEST_SKIP() << "no /proc";
  std::string s = read_file("/proc/self/status", 1 << 20);
  EXPECT_NE(s.find("Name:"), std::string::npos);
  EXPECT_THROW(read_file("/proc/self/status", 10), Error);
}

}  // namespace
}  // namespace posformer
