// Documents, corpus split, training window sampler and evaluation windows.
#include "posformer/train/data.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "posformer/core/error.h"
#include "posformer/core/io.h"
#include "posformer/core/random.h"

namespace posformer {

namespace {

constexpr size_t kMaxFileBytes = size_t{1} << 31;

uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}

// FNV-1a over bytes, finished with a splitmix64 round so nearby inputs spread out.
uint64_t hash_bytes(uint64_t seed, const void* data, size_t n) {
  uint64_t h = 0xCBF29CE484222325ull ^ seed;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001B3ull;
  uint64_t s = h ^ (static_cast<uint64_t>(n) * 0x9E3779B97F4A7C15ull);
  return splitmix64(s);
}

// Uniform in [0, 1) with 53 bits, from the seed and the document's bytes.
double doc_u(uint64_t seed, const std::string& text) {
  uint64_t s = seed;
  uint64_t h = hash_bytes(splitmix64(s), text.data(), text.size());
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

bool is_blank(const std::string& s, size_t b, size_t e) {
  for (size_t i = b; i < e; ++i)
    if (s[i] != ' ' && s[i] != '\t' && s[i] != '\f' && s[i] != '\v' && s[i] != '\r') return false;
  return true;
}

// Removes ANSI escapes and backspace overstrikes, turns "\r\n" into "\n".
std::string clean_text(const std::string& in) {
  std::string out;
  out.reserve(in.size());
  const size_t n = in.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(in[i]);
    if (c == 0x1B) {
      ++i;
      if (i >= n) break;
      const unsigned char k = static_cast<unsigned char>(in[i]);
      if (k == '[') {  // CSI: parameters and intermediates, then one final byte 0x40..0x7E
        ++i;
        while (i < n && static_cast<unsigned char>(in[i]) >= 0x20 &&
               static_cast<unsigned char>(in[i]) <= 0x3F)
          ++i;
        if (i < n && static_cast<unsigned char>(in[i]) >= 0x40 &&
            static_cast<unsigned char>(in[i]) <= 0x7E)
          ++i;
      } else if (k == ']') {  // OSC: up to BEL or ESC backslash
        ++i;
        while (i < n && in[i] != '\a' && !(in[i] == 0x1B && i + 1 < n && in[i + 1] == '\\')) ++i;
        if (i < n) i += in[i] == '\a' ? 1 : 2;
      } else {  // nF / Fp / Fe / Fs: intermediates 0x20..0x2F, then one final 0x30..0x7E
        while (i < n && static_cast<unsigned char>(in[i]) >= 0x20 &&
               static_cast<unsigned char>(in[i]) <= 0x2F)
          ++i;
        if (i < n && static_cast<unsigned char>(in[i]) >= 0x30 &&
            static_cast<unsigned char>(in[i]) <= 0x7E)
          ++i;
      }
      continue;
    }
    if (c == '\b') {  // overstrike: drop the previous character (whole UTF-8 sequence)
      if (!out.empty() && out.back() != '\n') {
        size_t j = out.size() - 1;
        while (j > 0 && (static_cast<unsigned char>(out[j]) & 0xC0) == 0x80 && out.size() - j < 4 &&
               out[j - 1] != '\n')
          --j;
        if (static_cast<unsigned char>(out[j]) < 0xC0) j = out.size() - 1;  // not a lead byte
        out.resize(j);
      }
      ++i;
      continue;
    }
    if (c == '\r' && i + 1 < n && in[i + 1] == '\n') {
      ++i;
      continue;
    }
    out.push_back(static_cast<char>(c));
    ++i;
  }
  return out;
}

// Appends the document made of lines [b, e) of `s` (leading blank lines and trailing
// whitespace removed), unless it is empty.
void add_doc(std::vector<std::string>& docs, const std::string& s, size_t b, size_t e) {
  // Skip leading blank lines.
  while (b < e) {
    size_t nl = s.find('\n', b);
    if (nl == std::string::npos || nl >= e) nl = e;
    if (!is_blank(s, b, nl)) break;
    b = nl + 1;
  }
  while (e > b && (s[e - 1] == ' ' || s[e - 1] == '\t' || s[e - 1] == '\n' || s[e - 1] == '\r' ||
                   s[e - 1] == '\f' || s[e - 1] == '\v'))
    --e;
  if (e > b) docs.emplace_back(s, b, e - b);
}

std::string file_name(const std::filesystem::path& p) {
  return p.filename().string();
}

bool ends_with(const std::string& s, const std::string& suf) {
  return s.size() >= suf.size() && s.compare(s.size() - suf.size(), suf.size(), suf) == 0;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

uint64_t parse_hex64(const std::string& s, size_t pos) {
  uint64_t v = 0;
  for (size_t i = pos; i < pos + 16; ++i) {
    const char c = s[i];
    int d = (c >= '0' && c <= '9')   ? c - '0'
            : (c >= 'a' && c <= 'f') ? c - 'a' + 10
            : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                                     : -1;
    PF_CHECK(d >= 0, "[data] sampler state: bad hex digit '", c, "'");
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  return v;
}

std::vector<int32_t> concat(const std::vector<std::vector<int32_t>>& docs) {
  size_t n = 0;
  for (const auto& d : docs) n += d.size();
  std::vector<int32_t> s;
  s.reserve(n);
  for (const auto& d : docs) s.insert(s.end(), d.begin(), d.end());
  return s;
}

}  // namespace

std::vector<std::string> split_documents(const std::string& text, const std::string& path) {
  const std::string s = clean_text(text);
  // Line boundaries.
  std::vector<std::pair<size_t, size_t>> lines;
  bool fortune = false;
  for (size_t i = 0; i <= s.size();) {
    size_t nl = s.find('\n', i);
    if (nl == std::string::npos) nl = s.size();
    if (nl > i || nl < s.size()) lines.emplace_back(i, nl);
    if (nl - i == 1 && s[i] == '%') fortune = true;
    i = nl + 1;
  }
  std::vector<std::string> docs;
  size_t start = 0;  // byte offset where the current document begins
  for (const auto& [b, e] : lines) {
    const bool sep = fortune ? (e - b == 1 && s[b] == '%') : is_blank(s, b, e);
    if (sep) {
      if (b > start) add_doc(docs, s, start, b);
      start = std::min(e + 1, s.size());
    }
  }
  if (s.size() > start) add_doc(docs, s, start, s.size());
  (void)path;
  return docs;
}

std::vector<std::string> default_corpus_files(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::vector<std::string> names;
  if (fs::is_directory(dir, ec)) {
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = file_name(it->path());
      if (name.empty() || name[0] == '.' || ends_with(name, ".dat")) continue;
      std::error_code e2;
      if (!fs::is_regular_file(it->path(), e2)) continue;  // follows symlinks; skips off/
      if (!fs::exists(it->path().string() + ".dat", e2)) continue;
      if (name == "chinese" || name == "chinese.u8") continue;
      if (ends_with(name, ".u8") && fs::exists(dir + "/" + name.substr(0, name.size() - 3), e2))
        continue;
      names.push_back(name);
    }
  }
  std::sort(names.begin(), names.end());
  std::vector<std::string> out;
  std::set<std::string> seen;
  for (const auto& name : names) {
    const std::string p = dir + "/" + name;
    std::error_code e2;
    const fs::path canon = fs::canonical(p, e2);
    if (!seen.insert(e2 ? p : canon.string()).second) continue;
    out.push_back(p);
  }
  PF_CHECK(!out.empty(), "[data] no fortune files found in '", dir,
           "': install the Debian packages 'fortunes' and 'fortunes-zh' (apt-get install "
           "fortunes fortunes-zh) or pass your own text files");
  return out;
}

Corpus load_corpus(const std::vector<std::string>& files, const Tokenizer& tok, double val_fraction,
                   uint64_t split_seed) {
  PF_CHECK(std::isfinite(val_fraction) && val_fraction >= 0.0 && val_fraction <= 0.5,
           "[data] val_fraction must be in [0, 0.5], got ", val_fraction);
  PF_CHECK(!files.empty(), "[data] no corpus files given");
  struct Doc {
    std::string text;
    double u;
  };
  std::vector<Doc> docs;
  for (const auto& f : files) {
    const auto parts = split_documents(read_file(f, kMaxFileBytes), f);
    PF_CHECK(!parts.empty(), "[data] '", f, "' contains no documents (empty file?)");
    for (const auto& t : parts) docs.push_back({t, doc_u(split_seed, t)});
  }
  std::vector<char> is_val(docs.size(), 0);
  size_t n_val = 0;
  for (size_t i = 0; i < docs.size(); ++i)
    if (docs[i].u < val_fraction) is_val[i] = 1, ++n_val;
  // Train is never empty; val gets a document when there are >= 2 and val_fraction > 0. Every
  // copy of a text moves together so the sides stay disjoint.
  auto move_text = [&](size_t pick, char to_val) {
    for (size_t i = 0; i < docs.size(); ++i)
      if (is_val[i] != to_val && docs[i].text == docs[pick].text) {
        is_val[i] = to_val;
        if (to_val)
          ++n_val;
        else
          --n_val;
      }
  };
  if (!docs.empty() && n_val == docs.size()) {
    size_t pick = 0;
    for (size_t i = 1; i < docs.size(); ++i)
      if (docs[i].u > docs[pick].u) pick = i;
    move_text(pick, 0);
  }
  if (docs.size() >= 2 && val_fraction > 0.0 && n_val == 0) {
    size_t pick = 0;
    for (size_t i = 1; i < docs.size(); ++i)
      if (docs[i].u < docs[pick].u) pick = i;
    move_text(pick, 1);
    if (n_val == docs.size()) move_text(pick, 0);  // all documents share one text
  }
  Corpus c;
  for (size_t i = 0; i < docs.size(); ++i) {
    std::vector<int32_t> ids = tok.encode(docs[i].text);
    ids.push_back(tok.eos_id());
    const auto n_tok = static_cast<int64_t>(ids.size());
    const auto n_bytes = static_cast<int64_t>(docs[i].text.size());
    if (is_val[i]) {
      c.val_docs.push_back(std::move(ids));
      c.val_tokens += n_tok;
      c.val_bytes += n_bytes;
    } else {
      c.train_docs.push_back(std::move(ids));
      c.train_tokens += n_tok;
      c.train_bytes += n_bytes;
    }
  }
  PF_CHECK(c.train_tokens > 0, "[data] corpus has no training tokens");
  return c;
}

// ---------------------------------------------------------------------------------------------
// WindowSampler

WindowSampler::WindowSampler(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len,
                             uint64_t seed)
    : stream_(concat(docs)), seq_len_(seq_len) {
  PF_CHECK(seq_len >= 1, "[data] seq_len must be >= 1, got ", seq_len);
  PF_CHECK(stream_tokens() >= seq_len + 1, "[data] seq_len ", seq_len, " needs at least ",
           seq_len + 1, " training tokens, the training stream has ", stream_tokens());
  stream_hash_ = hash_bytes(0, stream_.data(), stream_.size() * sizeof(int32_t));
  uint64_t s = seed;
  for (auto& r : rng_) r = splitmix64(s);
}

uint64_t WindowSampler::next_u64() {
  // xoshiro256**
  const uint64_t result = rotl(rng_[1] * 5, 7) * 9;
  const uint64_t t = rng_[1] << 17;
  rng_[2] ^= rng_[0];
  rng_[3] ^= rng_[1];
  rng_[1] ^= rng_[2];
  rng_[0] ^= rng_[3];
  rng_[2] ^= t;
  rng_[3] = rotl(rng_[3], 45);
  return result;
}

uint64_t WindowSampler::uniform(uint64_t bound) {
  // Rejection sampling: accept r >= 2^64 mod bound so r % bound is unbiased.
  const uint64_t threshold = (0 - bound) % bound;
  for (;;) {
    const uint64_t r = next_u64();
    if (r >= threshold) return r % bound;
  }
}

void WindowSampler::next_batch(int64_t B, std::vector<int32_t>& inputs,
                               std::vector<int32_t>& targets) {
  PF_CHECK(B >= 1, "[data] batch size must be >= 1, got ", B);
  const auto L = static_cast<size_t>(seq_len_);
  inputs.resize(static_cast<size_t>(B) * L);
  targets.resize(static_cast<size_t>(B) * L);
  const uint64_t starts = static_cast<uint64_t>(stream_.size()) - L;  // >= 1
  for (int64_t b = 0; b < B; ++b) {
    const size_t s = static_cast<size_t>(uniform(starts));
    std::copy_n(stream_.begin() + s, L, inputs.begin() + b * L);
    std::copy_n(stream_.begin() + s + 1, L, targets.begin() + b * L);
  }
  windows_ += B;
  ++batches_;
}

std::string WindowSampler::state() const {
  nlohmann::json j = {{"v", 1},
                      {"rng", hex64(rng_[0]) + hex64(rng_[1]) + hex64(rng_[2]) + hex64(rng_[3])},
                      {"windows", windows_},
                      {"batches", batches_},
                      {"seq_len", seq_len_},
                      {"stream_tokens", stream_tokens()},
                      {"stream_hash", hex64(stream_hash_)}};
  return j.dump();
}

void WindowSampler::set_state(const std::string& s) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(s);
  } catch (const nlohmann::json::exception& e) {
    throw Error(str("[data] sampler state: malformed JSON: ", e.what()));
  }
  auto int_field = [&](const char* key) -> int64_t {
    PF_CHECK(j.is_object() && j.contains(key) && j[key].is_number_integer(),
             "[data] sampler state: field '", key, "' missing or not an integer");
    return j[key].get<int64_t>();
  };
  auto str_field = [&](const char* key, size_t len) -> std::string {
    PF_CHECK(j.is_object() && j.contains(key) && j[key].is_string(),
             "[data] sampler state: field '", key, "' missing or not a string");
    std::string v = j[key].get<std::string>();
    PF_CHECK(v.size() == len, "[data] sampler state: field '", key, "' must have ", len,
             " hex digits, got ", v.size());
    return v;
  };
  PF_CHECK(int_field("v") == 1, "[data] sampler state: unsupported version ", j["v"].dump());
  const int64_t L = int_field("seq_len"), n = int_field("stream_tokens");
  const int64_t windows = int_field("windows"), batches = int_field("batches");
  const std::string rng = str_field("rng", 64), hash = str_field("stream_hash", 16);
  PF_CHECK(L == seq_len_, "[data] sampler state was taken with seq_len ", L, ", this sampler has ",
           seq_len_);
  PF_CHECK(n == stream_tokens() && parse_hex64(hash, 0) == stream_hash_,
           "[data] sampler state was taken on a different training stream (", n, " tokens, hash ",
           hash, "; this one has ", stream_tokens(), " tokens, hash ", hex64(stream_hash_), ")");
  PF_CHECK(windows >= 0 && batches >= 0, "[data] sampler state: negative counters");
  uint64_t r[4];
  for (int k = 0; k < 4; ++k) r[k] = parse_hex64(rng, 16 * k);
  PF_CHECK(r[0] | r[1] | r[2] | r[3], "[data] sampler state: all-zero RNG state");
  std::copy_n(r, 4, rng_);
  windows_ = windows;
  batches_ = batches;
}

// ---------------------------------------------------------------------------------------------
// Evaluation windows

std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> eval_windows(
    const std::vector<std::vector<int32_t>>& docs, int64_t seq_len, int64_t max_windows) {
  PF_CHECK(seq_len >= 1, "[data] seq_len must be >= 1, got ", seq_len);
  const std::vector<int32_t> s = concat(docs);
  PF_CHECK(s.size() >= 2, "[data] evaluation needs at least 2 tokens, got ", s.size());
  std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> out;
  const auto L = static_cast<size_t>(seq_len);
  for (size_t st = 0; st + 1 < s.size(); st += L) {
    if (max_windows > 0 && static_cast<int64_t>(out.size()) >= max_windows) break;
    const size_t len = std::min(L, s.size() - 1 - st);
    out.emplace_back(std::vector<int32_t>(s.begin() + st, s.begin() + st + len),
                     std::vector<int32_t>(s.begin() + st + 1, s.begin() + st + 1 + len));
  }
  return out;
}

}  // namespace posformer
