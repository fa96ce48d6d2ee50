// Tokenizers: byte round trips, specials, tokenizer.json save/load/refusal, SentencePiece
// training on a small generated corpus.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "posformer/core/error.h"
#include "posformer/core/io.h"
#include "posformer/core/utf8.h"
#include "posformer/train/tokenizer.h"
#include "test_util.h"

using namespace posformer;
namespace fs = std::filesystem;

using pf_test::TempDir;
using pf_test::write_text;

namespace {

// Deterministic pseudo-random sentences over a small syllable set, plus some Chinese.
std::string generated_corpus(int n_docs) {
  const char* syl[] = {"ka", "lo", "mi", "ne", "su", "ta", "ri",  "po",  "ve",
                       "zu", "an", "el", "or", "ix", "um", "qua", "the", "ing"};
  const char* zh[] = {"春", "风", "花", "月", "山", "水", "，", "。"};
  uint64_t x = 42;
  auto next = [&]() {
    x = x * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<uint32_t>(x >> 33);
  };
  std::string s;
  for (int d = 0; d < n_docs; ++d) {
    const int lines = 1 + next() % 3;
    for (int l = 0; l < lines; ++l) {
      const int words = 3 + next() % 8;
      for (int w = 0; w < words; ++w) {
        if (w) s += ' ';
        const int k = 1 + next() % 3;
        for (int i = 0; i < k; ++i) s += syl[next() % 18];
      }
      if (d % 5 == 0)
        for (int i = 0; i < 6; ++i) s += zh[next() % 8];
      s += ".\n";
    }
    s += "%\n";
  }
  return s;
}

void expect_error_contains(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
    ADD_FAILURE() << "expected an Error containing '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

}  // namespace

TEST(TokenizerByte, RoundTripAnyBytes) {
  auto t = make_byte_tokenizer();
  EXPECT_EQ(t->type(), "byte");
  const std::string ascii = "Hello, world!\n\ttabs";
  const std::string chinese = "床前明月光，疑是地上霜。";
  std::string invalid = "ok \xff\xfe\xc3 bad \x80 end";
  invalid.push_back('\0');
  invalid += "after nul";
  for (const std::string& s : {ascii, chinese, invalid, std::string()}) {
    const auto ids = t->encode(s);
    ASSERT_EQ(ids.size(), s.size());
    for (size_t i = 0; i < s.size(); ++i) EXPECT_EQ(ids[i], static_cast<unsigned char>(s[i]));
    EXPECT_EQ(t->decode(ids), s);
  }
  // Chinese characters are 3 UTF-8 bytes each.
  EXPECT_EQ(t->encode("月").size(), 3u);
  EXPECT_EQ(t->encode("\xff")[0], 255);
}

TEST(TokenizerByte, Specials) {
  auto t = make_byte_tokenizer();
  EXPECT_EQ(t->vocab_size(), 260);
  EXPECT_EQ(t->pad_id(), 256);
  EXPECT_EQ(t->bos_id(), 257);
  EXPECT_EQ(t->eos_id(), 258);
  EXPECT_EQ(t->mask_id(), 259);
  EXPECT_EQ(t->decode({257, 'a', 256, 'b', 259, 258}), "ab");
  expect_error_contains([&] { t->decode({'a', 260}); }, "260");
  expect_error_contains([&] { t->decode({-1}); }, "-1");
}

TEST(TokenizerByte, DecodeBytesIsRawAndStreamsThroughTheUtf8Decoder) {
  auto t = make_byte_tokenizer();
  // "月" cut after its first byte, then a stray continuation byte
  const std::vector<int32_t> ids = {'a', 0xE6, 257, 0x9C, 0x88, 0x88, 258};
  EXPECT_EQ(t->decode_bytes(ids), "a\xE6\x9C\x88\x88");
  Utf8StreamDecoder d;
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) d.feed(t->decode_bytes({ids[i]}), out);
  d.finish(out);
  EXPECT_EQ(out, "a\xE6\x9C\x88\xEF\xBF\xBD");  // a 月 U+FFFD
}

TEST(TokenizerByte, SaveLoad) {
  TempDir d;
  // No tokenizer.json: the byte tokenizer is the default.
  auto t0 = load_tokenizer(d.path);
  EXPECT_EQ(t0->type(), "byte");
  const std::string sub = d.file("model");
  make_byte_tokenizer()->save(sub);  // creates the directory
  ASSERT_TRUE(fs::exists(sub + "/tokenizer.json"));
  auto t = load_tokenizer(sub);
  EXPECT_EQ(t->type(), "byte");
  EXPECT_EQ(t->vocab_size(), 260);
  EXPECT_EQ(t->decode(t->encode("xyz 月")), "xyz 月");
  // No temp files left behind.
  for (const auto& e : fs::directory_iterator(sub))
    EXPECT_EQ(e.path().filename().string().find(".tmp"), std::string::npos);
}

TEST(TokenizerLoad, MissingDirectoryRefused) {
  TempDir d;
  EXPECT_THROW(load_tokenizer(d.file("does_not_exist")), Error);
}

TEST(TokenizerLoad, MalformedRefused) {
  TempDir d;
  const std::string js = d.file("tokenizer.json");
  auto expect_refused = [&](const std::string& body, const std::string& needle) {
    write_text(js, body);
    expect_error_contains([&] { load_tokenizer(d.path); }, needle);
    expect_error_contains([&] { load_tokenizer(d.path); }, "tokenizer.json");
  };
  expect_refused("{not json", "malformed JSON");
  expect_refused("[1, 2]", "JSON object");
  expect_refused("{}", "'type'");
  expect_refused(R"({"type": 3})", "'type'");
  expect_refused(R"({"type": "wordpiece"})", "wordpiece");
  expect_refused(R"({"type": "byte", "vocab_size": 300})", "vocab_size");
  expect_refused(R"({"type": "byte", "eos_id": "x"})", "eos_id");
  expect_refused(R"({"type": "sentencepiece"})", "'model'");
  expect_refused(R"({"type": "sentencepiece", "model": "../x.model"})", "'model'");
  if (have_sentencepiece()) {
    // Model file missing, then present but garbage.
    write_text(js, R"({"type": "sentencepiece", "model": "tokenizer.model"})");
    expect_error_contains([&] { load_tokenizer(d.path); }, "tokenizer.model");
    write_text(d.file("tokenizer.model"), "definitely not a protobuf \xff\xff\xff");
    expect_error_contains([&] { load_tokenizer(d.path); }, "tokenizer.model");
  }
}

class TokenizerSentencePiece : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!have_sentencepiece()) GTEST_SKIP() << "built without SentencePiece";
    corpus_ = dir_.file("corpus.txt");
    write_text(corpus_, generated_corpus(400));
  }
  TempDir dir_;
  std::string corpus_;
};

TEST_F(TokenizerSentencePiece, UnigramTrainRoundTripAndLoad) {
  const std::string out = dir_.file("spm");
  auto t = train_sentencepiece({corpus_}, 320, out, "unigram");
  EXPECT_EQ(t->type(), "sentencepiece");
  EXPECT_EQ(t->vocab_size(), 320);
  EXPECT_EQ(t->pad_id(), 0);
  EXPECT_EQ(t->bos_id(), 2);
  EXPECT_EQ(t->eos_id(), 3);
  EXPECT_EQ(t->mask_id(), 4);
  ASSERT_TRUE(fs::exists(out + "/tokenizer.json"));
  ASSERT_TRUE(fs::exists(out + "/tokenizer.model"));

  const std::vector<std::string> texts = {
      "kalomi nesu tari.", "  two  spaces and\ttab\nnew line\n\n", "春风花月，山水。",
      "unseen WORDS with Digits 12345 and émoji 🙂", "床前明月光"};
  for (const auto& s : texts) {
    const auto ids = t->encode(s);
    for (int32_t id : ids) {
      EXPECT_GE(id, 0);
      EXPECT_LT(id, t->vocab_size());
      EXPECT_NE(id, 1) << "byte fallback should avoid <unk> for: " << s;
    }
    EXPECT_EQ(t->decode(ids), s);
  }
  // Frequent training text compresses better than bytes.
  EXPECT_LE(t->encode("kalomi nesu tari").size(), 12u);  // 16 bytes
  // Specials are skipped when decoding.
  auto ids = t->encode("kalo");
  ids.insert(ids.begin(), t->bos_id());
  ids.push_back(t->mask_id());
  ids.push_back(t->eos_id());
  ids.push_back(t->pad_id());
  EXPECT_EQ(t->decode(ids), "kalo");
  EXPECT_THROW(t->decode({static_cast<int32_t>(t->vocab_size())}), Error);

  auto loaded = load_tokenizer(out);
  EXPECT_EQ(loaded->type(), "sentencepiece");
  EXPECT_EQ(loaded->vocab_size(), 320);
  for (const auto& s : texts) EXPECT_EQ(loaded->encode(s), t->encode(s));
  // Save into another directory and load again.
  loaded->save(dir_.file("copy"));
  EXPECT_EQ(load_tokenizer(dir_.file("copy"))->encode(texts[0]), t->encode(texts[0]));
}

TEST_F(TokenizerSentencePiece, DecodeBytesKeepsByteFallbackRawAndIsPrefixStable) {
  auto t = train_sentencepiece({corpus_}, 320, dir_.file("spm"), "unigram");
  // Characters not in the training text go through byte-fallback pieces <0xNN>.
  const std::string s = "kalo \xE5\xBA\x8A\xE5\x89\x8D mine \xF0\x9F\x99\x82 su";  // 床前 🙂
  const auto ids = t->encode(s);
  EXPECT_EQ(t->decode_bytes(ids), s);
  EXPECT_EQ(t->decode(ids), s);
  // Every prefix: decode_bytes(prefix) is a prefix of the whole, and repairing it gives valid
  // UTF-8; SentencePiece's own decode of a prefix cut inside a character differs (U+FFFD).
  const std::string whole = t->decode_bytes(ids);
  bool cut_inside = false;
  for (size_t n = 0; n <= ids.size(); ++n) {
    const std::vector<int32_t> pre(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(n));
    const std::string b = t->decode_bytes(pre);
    EXPECT_EQ(whole.compare(0, b.size(), b), 0) << "prefix of " << n << " ids";
    EXPECT_TRUE(is_valid_utf8(repair_utf8(b)));
    cut_inside = cut_inside || !is_valid_utf8(b);
  }
  EXPECT_TRUE(cut_inside) << "no prefix ends inside a byte-fallback character";
  // 床 without its last byte piece: raw bytes, one U+FFFD after repair (SentencePiece gives
  // one per byte).
  std::vector<int32_t> zh = t->encode("\xE5\xBA\x8A");
  zh.pop_back();
  const std::string cut = t->decode_bytes(zh);
  EXPECT_FALSE(is_valid_utf8(cut));
  EXPECT_EQ(repair_utf8(cut), cut.substr(0, cut.size() - 2) + "\xEF\xBF\xBD");
  // Streaming token by token (each token's new bytes) equals repairing the whole at once, also
  // for a scrambled order that cuts characters.
  std::vector<int32_t> gen(ids.rbegin(), ids.rend());
  gen.insert(gen.end(), zh.begin(), zh.end());
  Utf8StreamDecoder d;
  std::string out;
  std::vector<int32_t> seq;
  std::string prev;
  for (int32_t id : gen) {
    seq.push_back(id);
    const std::string b = t->decode_bytes(seq);
    ASSERT_EQ(b.compare(0, prev.size(), prev), 0) << "decode_bytes is not prefix-stable";
    d.feed(std::string_view(b).substr(prev.size()), out);
    prev = b;
  }
  d.finish(out);
  EXPECT_EQ(out, repair_utf8(t->decode_bytes(gen)));
  EXPECT_TRUE(is_valid_utf8(out));
  // Specials are skipped, out-of-range ids refused, as in decode.
  EXPECT_EQ(t->decode_bytes({t->bos_id(), ids[0], t->eos_id()}), t->decode({ids[0]}));
  EXPECT_THROW(t->decode_bytes({static_cast<int32_t>(t->vocab_size())}), Error);
}

TEST_F(TokenizerSentencePiece, BpeTrainsAndIsDeterministic) {
  auto a = train_sentencepiece({corpus_}, 300, dir_.file("a"), "bpe");
  auto b = train_sentencepiece({corpus_}, 300, dir_.file("b"), "bpe");
  EXPECT_EQ(a->vocab_size(), 300);
  const std::string s = "rikapo zuvequa theing 月光";
  EXPECT_EQ(a->decode(a->encode(s)), s);
  EXPECT_EQ(a->encode(s), b->encode(s));
  EXPECT_EQ(read_file(dir_.file("a") + "/tokenizer.model", 1 << 24),
            read_file(dir_.file("b") + "/tokenizer.model", 1 << 24));
}

TEST_F(TokenizerSentencePiece, BadArgumentsRefused) {
  const std::string out = dir_.file("bad");
  expect_error_contains([&] { train_sentencepiece({corpus_}, 100, out); }, "at least");
  expect_error_contains([&] { train_sentencepiece({corpus_}, 50000, out); }, "50000");
  expect_error_contains([&] { train_sentencepiece({corpus_}, 320, out, "wordpiece"); },
                        "wordpiece");
  expect_error_contains([&] { train_sentencepiece({}, 320, out); }, "no input files");
  expect_error_contains([&] { train_sentencepiece({dir_.file("missing.txt")}, 320, out); },
                        "missing.txt");
  write_text(dir_.file("empty.txt"), "\n\n%\n");
  expect_error_contains([&] { train_sentencepiece({dir_.file("empty.txt")}, 320, out); },
                        "empty.txt");
  EXPECT_FALSE(fs::exists(out + "/tokenizer.json"));
}
