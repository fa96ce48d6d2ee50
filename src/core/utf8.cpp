// Streaming UTF-8 repair with U+FFFD per maximal subpart (see utf8.h).
#include "posformer/core/utf8.h"

namespace posformer {

namespace {

// Length of the sequence a start byte begins (2..4), or 0 when it cannot start one
// (continuation bytes 80..BF, the overlong starts C0 C1, and F5..FF beyond U+10FFFF).
int sequence_length(unsigned char b) {
  if (b >= 0xC2 && b <= 0xDF) return 2;
  if (b >= 0xE0 && b <= 0xEF) return 3;
  if (b >= 0xF0 && b <= 0xF4) return 4;
  return 0;
}

// Whether `b` may follow the start byte `lead` as its first continuation (Unicode Table 3-7:
// the second byte's range excludes overlongs, surrogates and code points beyond U+10FFFF).
bool second_ok(unsigned char lead, unsigned char b) {
  switch (lead) {
    case 0xE0:
      return b >= 0xA0 && b <= 0xBF;
    case 0xED:
      return b >= 0x80 && b <= 0x9F;
    case 0xF0:
      return b >= 0x90 && b <= 0xBF;
    case 0xF4:
      return b >= 0x80 && b <= 0x8F;
    default:
      return b >= 0x80 && b <= 0xBF;
  }
}

}  // namespace

void Utf8StreamDecoder::feed(std::string_view bytes, std::string& out) {
  out.reserve(out.size() + bytes.size() + 3);
  size_t i = 0;
  while (i < bytes.size()) {
    const auto b = static_cast<unsigned char>(bytes[i]);
    if (held_ == 0) {
      if (b < 0x80) {  // ASCII run
        size_t j = i + 1;
        while (j < bytes.size() && static_cast<unsigned char>(bytes[j]) < 0x80) ++j;
        out.append(bytes.data() + i, j - i);
        i = j;
        continue;
      }
      const int n = sequence_length(b);
      if (n == 0) {
        out += kReplacementChar;
      } else {
        buf_[0] = b;
        held_ = 1;
        need_ = n;
      }
      ++i;
      continue;
    }
    const bool ok = held_ == 1 ? second_ok(buf_[0], b) : (b >= 0x80 && b <= 0xBF);
    if (!ok) {
      // The held bytes are a maximal subpart: one U+FFFD; `b` is read again as a start.
      out += kReplacementChar;
      held_ = need_ = 0;
      continue;
    }
    buf_[held_++] = b;
    ++i;
    if (held_ == need_) {
      out.append(reinterpret_cast<const char*>(buf_), static_cast<size_t>(held_));
      held_ = need_ = 0;
    }
  }
}

void Utf8StreamDecoder::finish(std::string& out) {
  if (held_ > 0) out += kReplacementChar;
  held_ = need_ = 0;
}

std::string repair_utf8(std::string_view bytes) {
  Utf8StreamDecoder d;
  std::string out = d.feed(bytes);
  d.finish(out);
  return out;
}

bool is_valid_utf8(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    const auto b = static_cast<unsigned char>(bytes[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    const int n = sequence_length(b);
    if (n == 0 || i + static_cast<size_t>(n) > bytes.size() ||
        !second_ok(b, static_cast<unsigned char>(bytes[i + 1])))
      return false;
    for (int k = 2; k < n; ++k) {
      const auto c = static_cast<unsigned char>(bytes[i + k]);
      if (c < 0x80 || c > 0xBF) return false;
    }
    i += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace posformer
