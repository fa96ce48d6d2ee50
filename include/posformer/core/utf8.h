// Streaming UTF-8 repair: bytes in, valid UTF-8 out, the same however the bytes are split.
//
// Generated text arrives as bytes (byte-level tokens, SentencePiece byte-fallback pieces
// <0xE4>), so a character may be cut across tokens or not be valid UTF-8 at all.
// Utf8StreamDecoder passes well-formed characters through unchanged, holds back an incomplete
// sequence until it completes (as llama.cpp does when streaming), and replaces ill-formed bytes
// by U+FFFD, one per "maximal subpart" (Unicode 15, section 3.9, U+FFFD substitution of maximal
// subparts; what Python's bytes.decode("utf-8", "replace") and WHATWG decoders do):
//   - a byte that cannot start a character (80..BF, C0, C1, F5..FF)         -> one U+FFFD
//   - a valid start followed by a byte that cannot continue it (overlong E0 80, surrogate
//     ED A0, beyond U+10FFFF F4 90, ASCII, a new start byte): the start and the continuation
//     bytes that were still possible become one U+FFFD, and the offending byte is read afresh
//   - an incomplete sequence at the end of the input (finish())              -> one U+FFFD
// So feed(a) + feed(b) + finish() == repair_utf8(a + b) for every split, and the output never
// ends inside a character.
#pragma once
#include <string>
#include <string_view>

namespace posformer {

inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

class Utf8StreamDecoder {
 public:
  // Appends the complete characters of `bytes` (after any held bytes) to `out`; a trailing
  // incomplete but still possible sequence is held back for the next call.
  void feed(std::string_view bytes, std::string& out);
  std::string feed(std::string_view bytes) {
    std::string out;
    feed(bytes, out);
    return out;
  }
  // End of input: a held incomplete sequence becomes one U+FFFD. The decoder is then empty and
  // can be reused.
  void finish(std::string& out);
  std::string finish() {
    std::string out;
    finish(out);
    return out;
  }
  // Bytes held back (0..3).
  int pending() const { return held_; }

 private:
  unsigned char buf_[4] = {};
  int held_ = 0;  // bytes in buf_
  int need_ = 0;  // length of the sequence buf_ starts
};

// One-shot: `bytes` as valid UTF-8 (feed + finish).
std::string repair_utf8(std::string_view bytes);

// True when `bytes` is well-formed UTF-8.
bool is_valid_utf8(std::string_view bytes);

}  // namespace posformer
