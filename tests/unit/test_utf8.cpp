// Streaming UTF-8 repair: crafted byte streams (expected outputs checked against Python's
// bytes.decode("utf-8", "replace")), fed in every possible split.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "posformer/core/utf8.h"

using namespace posformer;

namespace {

#define R "\xEF\xBF\xBD"  // U+FFFD

struct Case {
  std::string in, want;
};

// want = in.decode("utf-8", "replace").encode() in Python 3.11.
const std::vector<Case>& cases() {
  static const std::vector<Case> c = {
      {"", ""},
      {"abc", "abc"},
      {std::string("\x00\x7f", 2), std::string("\x00\x7f", 2)},
      {"h\xC3\xA9llo \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x99\x82",
       "h\xC3\xA9llo \xE4\xB8\x96\xE7\x95\x8C \xF0\x9F\x99\x82"},
      {"\xEF\xBF\xBD", R},                       // U+FFFD itself is valid
      {"\xEE\x80\x80", "\xEE\x80\x80"},          // private use
      {"\xED\x9F\xBF", "\xED\x9F\xBF"},          // U+D7FF, last before surrogates
      {"\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF"},  // U+10FFFF
      {"\xF3\xBF\xBF\xBF", "\xF3\xBF\xBF\xBF"},  // U+FFFFF
      {"\x80", R},                               // lone continuation
      {"\xBF\x80", R R},                         // two continuations
      {"\xC0\xAF", R R},                         // overlong '/'
      {"\xC1\xBF", R R},                         // overlong
      {"\xE0\x80\xAF", R R R},                   // overlong 3-byte
      {"\xE0\x9F\xBF", R R R},                   // overlong 3-byte
      {"\xF0\x80\x80\xAF", R R R R},             // overlong 4-byte
      {"\xF0\x8F\xBF\xBF", R R R R},             // overlong 4-byte
      {"\xED\xA0\x80", R R R},                   // surrogate U+D800
      {"\xED\xBF\xBF", R R R},                   // surrogate U+DFFF
      {"\xF4\x90\x80\x80", R R R R},             // U+110000
      {"\xF5\x80\x80\x80", R R R R},             // start byte beyond U+10FFFF
      {"\xF8\x88\x80\x80\x80", R R R R R},       // old 5-byte form
      {"\xFF\xFE", R R},                         // never in UTF-8
      {"\xE4", R},                               // truncated at the end
      {"\xE4\xB8", R},                           // truncated: one U+FFFD
      {"\xF0\x9F\x99", R},                       // truncated 4-byte
      {"\xC2", R},                               // truncated 2-byte
      {"a\xE4\xB8"
       "b",
       "a" R "b"},  // cut by ASCII
      {"\xC2"
       "A",
       R "A"},                                         // cut by ASCII
      {"\xE4\xB8\xE4\xB8\xAD", R "\xE4\xB8\xAD"},      // cut by a new start
      {"\xF0\x9F\x99\x82\xF0", "\xF0\x9F\x99\x82" R},  // complete, then truncated
      {"\xE1\x80"
       "A\x80",
       R "A" R},
      {"\xF1\x80\x80\xE1\x80\xC2"
       "A",
       R R R "A"},
      // Unicode 15, Table 3-8 (U+FFFD for maximal subparts): a F1 80 80 E1 80 C2 b 80 c 80 BF d
      {"a\xF1\x80\x80\xE1\x80\xC2"
       "b\x80"
       "c\x80\xBF"
       "d",
       "a" R R R "b" R "c" R R "d"},
      // the demo's Tang poem prompt, its last character cut
      {"\xE3\x80\x8A\xE9\x9D\x99\xE5\xA4\x9C\xE6\x80\x9D\xE3\x80\x8B\xE5\xBA\x8A\xE5\x89\x8D"
       "\xE6\x98\x8E\xE6\x9C\x88\xE5\x85\n",
       "\xE3\x80\x8A\xE9\x9D\x99\xE5\xA4\x9C\xE6\x80\x9D\xE3\x80\x8B\xE5\xBA\x8A\xE5\x89\x8D"
       "\xE6\x98\x8E\xE6\x9C\x88" R "\n"},
  };
  return c;
}

#undef R

std::string hex(const std::string& s) {
  static const char* d = "0123456789ABCDEF";
  std::string o;
  for (unsigned char c : s) o += {d[c >> 4], d[c & 15], ' '};
  return o;
}

// Feeds `in` cut at the given positions (sorted) and finishes.
std::string feed_split(const std::string& in, const std::vector<size_t>& cuts) {
  Utf8StreamDecoder d;
  std::string out;
  size_t prev = 0;
  for (size_t c : cuts) {
    d.feed(std::string_view(in).substr(prev, c - prev), out);
    EXPECT_TRUE(is_valid_utf8(out)) << "output invalid after a cut at " << c << " of " << hex(in);
    prev = c;
  }
  d.feed(std::string_view(in).substr(prev), out);
  d.finish(out);
  EXPECT_EQ(d.pending(), 0);
  return out;
}

}  // namespace

TEST(Utf8, OneShotMatchesPythonReplace) {
  for (const Case& c : cases()) {
    const std::string got = repair_utf8(c.in);
    EXPECT_EQ(hex(got), hex(c.want)) << "input " << hex(c.in);
    EXPECT_TRUE(is_valid_utf8(got)) << hex(c.in);
    EXPECT_EQ(is_valid_utf8(c.in), c.in == c.want) << hex(c.in);
  }
}

TEST(Utf8, EverySplitGivesTheOneShotOutput) {
  for (const Case& c : cases()) {
    const size_t n = c.in.size();
    std::vector<size_t> all;  // byte by byte
    for (size_t i = 1; i < n; ++i) all.push_back(i);
    EXPECT_EQ(hex(feed_split(c.in, all)), hex(c.want)) << "byte by byte: " << hex(c.in);
    // every single and every pair of split points (empty pieces included)
    for (size_t i = 0; i <= n; ++i)
      for (size_t j = i; j <= n; ++j)
        EXPECT_EQ(hex(feed_split(c.in, {i, j})), hex(c.want))
            << "cuts at " << i << ", " << j << ": " << hex(c.in);
  }
}

TEST(Utf8, AllCraftedInputsConcatenatedInEverySplit) {
  // Neighbouring cases interact (a held start byte meets the next case's bytes), so the whole
  // stream is also decoded once and then in every two-piece split.
  std::string in;
  for (const Case& c : cases()) in += c.in;
  const std::string want = repair_utf8(in);
  EXPECT_TRUE(is_valid_utf8(want));
  for (size_t i = 0; i <= in.size(); ++i) EXPECT_EQ(feed_split(in, {i}), want) << "cut at " << i;
  std::vector<size_t> all;
  for (size_t i = 1; i < in.size(); ++i) all.push_back(i);
  EXPECT_EQ(feed_split(in, all), want);
}

TEST(Utf8, HoldsAnIncompleteCharacterUntilItCompletes) {
  Utf8StreamDecoder d;
  EXPECT_EQ(d.feed("ab\xE4"), "ab");
  EXPECT_EQ(d.pending(), 1);
  EXPECT_EQ(d.feed("\xB8"), "");
  EXPECT_EQ(d.pending(), 2);
  EXPECT_EQ(d.feed("\xAD"), "\xE4\xB8\xAD");
  EXPECT_EQ(d.pending(), 0);
  EXPECT_EQ(d.feed("\xF0\x9F"), "");
  EXPECT_EQ(d.finish(), "\xEF\xBF\xBD");  // flushed as the replacement at the end
  EXPECT_EQ(d.finish(), "");
  EXPECT_EQ(d.feed("x"), "x");  // reusable after finish
}

TEST(Utf8, RandomBytesAlwaysGiveValidOutputInAnySplit) {
  uint64_t x = 7;
  auto next = [&]() {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(x >> 33);
  };
  for (int trial = 0; trial < 200; ++trial) {
    std::string in(1 + next() % 40, '\0');
    // biased to the interesting range: continuation and start bytes
    for (char& ch : in)
      ch = static_cast<char>(next() % 4 == 0 ? next() % 256 : 0x80 + next() % 0x78);
    const std::string want = repair_utf8(in);
    ASSERT_TRUE(is_valid_utf8(want)) << hex(in);
    if (is_valid_utf8(in)) {
      EXPECT_EQ(want, in);
    }
    std::vector<size_t> cuts;
    for (size_t i = 1; i < in.size(); ++i)
      if (next() % 3 == 0) cuts.push_back(i);
    EXPECT_EQ(hex(feed_split(in, cuts)), hex(want)) << hex(in);
  }
}
