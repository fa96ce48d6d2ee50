// Tokenizers: text <-> token ids, stored in a model directory.
//
// DIR/tokenizer.json selects the tokenizer; when it is missing, the byte tokenizer is used.
//
//   {"type": "byte", "vocab_size": 260, "pad_id": 256, "bos_id": 257, "eos_id": 258,
//    "mask_id": 259}
//   {"type": "sentencepiece", "model": "tokenizer.model", "model_type": "unigram",
//    "vocab_size": 512, "pad_id": 0, "unk_id": 1, "bos_id": 2, "eos_id": 3, "mask_id": 4}
//
// Only "type" (and "model" for sentencepiece, a file name inside DIR) is required; the other
// fields are informational and, when present, must agree with the tokenizer (a mismatch is an
// error naming the file and the field).
//
// Byte tokenizer: ids 0..255 are the raw bytes of the text (any bytes, invalid UTF-8
// included, so encoding never fails and decode(encode(s)) == s for every s); 256 = <pad>,
// 257 = <bos>, 258 = <eos>, 259 = <mask>; vocab_size 260.
//
// SentencePiece tokenizer (unigram or BPE), trained with byte_fallback so every valid UTF-8
// text encodes without <unk>. Fixed ids: 0 <pad>, 1 <unk>, 2 <bos>, 3 <eos>, 4 <mask> (a
// user-defined symbol, so the literal text "<mask>" encodes to it). Normalisation is the
// identity and whitespace is kept as-is, so decode(encode(s)) == s for valid UTF-8 s; invalid
// UTF-8 bytes are replaced by U+FFFD when encoding. Training sees the documents of the files
// (see split_documents in data.h: ANSI escapes stripped, fortune "%" lines removed), one
// sentence per non-empty line; newlines encode through byte fallback.
//
// encode() adds no special tokens; decode() skips pad/bos/eos/mask and throws on ids outside
// [0, vocab_size).
//
// decode_bytes() is decode() without any UTF-8 repair: byte tokens (ids 0..255 of the byte
// tokenizer, SentencePiece byte-fallback pieces such as <0xE4>) give their raw bytes, so the
// result may be invalid UTF-8 or end inside a character (SentencePiece's own decode turns each
// stray fallback byte into U+FFFD). It is prefix-stable: decode_bytes(a) is a prefix of
// decode_bytes(a + b), so generated text can be streamed through a Utf8StreamDecoder
// (posformer/core/utf8.h) and comes out the same as the whole sequence repaired at once.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace posformer {

class Tokenizer {
 public:
  virtual ~Tokenizer();
  virtual std::string type() const = 0;  // "byte" or "sentencepiece"
  virtual std::vector<int32_t> encode(const std::string& text) const = 0;
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual std::string decode_bytes(const std::vector<int32_t>& ids) const = 0;
  virtual int64_t vocab_size() const = 0;
  virtual int32_t pad_id() const = 0;
  virtual int32_t bos_id() const = 0;
  virtual int32_t eos_id() const = 0;
  virtual int32_t mask_id() const = 0;
  // Writes DIR/tokenizer.json (and DIR/tokenizer.model for sentencepiece), each file replaced
  // atomically; creates DIR if missing.
  virtual void save(const std::string& dir) const = 0;
};

std::unique_ptr<Tokenizer> make_byte_tokenizer();

// Loads the tokenizer of a model directory (byte tokenizer when DIR/tokenizer.json is absent).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);

// Trains a SentencePiece model (model_type "unigram" or "bpe") of vocab_size pieces on the
// documents of `files`, saves it into out_dir (tokenizer.json + tokenizer.model) and returns
// it. vocab_size must be at least 262 (256 byte pieces + 5 specials + 1) and at most what the
// data supports (SentencePiece's own limit is reported otherwise). Training is deterministic
// and quiet (SentencePiece logging is silenced while it runs).
std::unique_ptr<Tokenizer> train_sentencepiece(const std::vector<std::string>& files,
                                               int64_t vocab_size, const std::string& out_dir,
                                               const std::string& model_type = "unigram");

// True when this build links SentencePiece (train_sentencepiece / loading such models work).
bool have_sentencepiece();

}  // namespace posformer
