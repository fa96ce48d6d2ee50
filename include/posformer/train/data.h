// Text data pipeline: files -> documents -> token streams -> training windows.
//
// Documents (split_documents), all byte-level so any bytes (invalid UTF-8 included) pass:
//   1. ANSI escape sequences are removed (CSI "ESC [ ... final", OSC "ESC ] ... BEL|ESC \",
//      other two-byte "ESC x"); backspace overstrikes ("_\bx", "___\b\b\band") keep only the
//      overstriking characters; "\r\n" becomes "\n".
//   2. Fortune format (the text has at least one line that is exactly "%"): each entry between
//      "%" lines is a document. Otherwise documents are separated by one or more blank
//      (empty or whitespace-only) lines.
//   3. Each document loses its leading blank lines and trailing whitespace; empty documents
//      are dropped. Inner text (indentation, single newlines) is kept.
//
// Corpus (load_corpus): every document goes WHOLE to train or val: val when
// u(split_seed, text) < val_fraction, u a 53-bit uniform from a 64-bit hash of the seed and
// the document's bytes. The split is deterministic, never splits a document, and identical
// texts always land on the same side. Train always keeps at least one document; when there
// are >= 2 documents (not all the same text) and val_fraction > 0, val gets at least one. Each
// document's tokens are tok.encode(text) followed by tok.eos_id(). *_bytes count the documents'
// text bytes.
//
// Sampling: the train documents are concatenated (in order) into one stream of N tokens.
// WindowSampler draws window starts uniformly from [0, N - L - 1] with its own xoshiro256**
// generator (seeded through splitmix64), so results are identical across platforms and
// compilers; inputs = stream[s, s+L), targets = stream[s+1, s+L+1). state() is a compact JSON
//   {"v":1,"rng":"<64 hex digits>","windows":W,"batches":K,"seq_len":L,"stream_tokens":N,
//    "stream_hash":"<16 hex digits>"}
// and set_state() continues exactly where state() was taken; it refuses a state taken with a
// different seq_len or train stream.
//
// Evaluation (eval_windows): the documents are concatenated into one stream and cut into
// consecutive non-overlapping windows starting at 0, L, 2L, ...; inputs = stream[s, s+L),
// targets = stream[s+1, s+L+1). The last window is KEPT SHORTER (length 1..L) so every token
// after the first is predicted exactly once. max_windows > 0 keeps only the first max_windows
// windows; max_windows <= 0 keeps all.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "posformer/train/tokenizer.h"

namespace posformer {

// Where the Debian packages "fortunes" and "fortunes-zh" put their files.
inline constexpr const char* kFortuneDir = "/usr/share/games/fortunes";

struct Corpus {
  std::vector<std::vector<int32_t>> train_docs, val_docs;
  int64_t train_tokens = 0, val_tokens = 0, train_bytes = 0, val_bytes = 0;
};

// Text -> documents (see above). `path` only appears in error messages and never decides the
// format.
std::vector<std::string> split_documents(const std::string& text, const std::string& path);

// The default training corpus: the English fortune files plus the Chinese tang300 (Tang
// poems) and song100 (Song ci) in `dir`, sorted by name. A file counts when NAME.dat (the
// strfile index) sits next to it; *.dat indexes, *.u8 twins (symlinks or copies of NAME),
// the large mixed Chinese "chinese" file, hidden files and subdirectories (e.g. the offensive
// "off/") are skipped, and files resolving to the same target are listed once. Throws an
// Error telling to install fortunes / fortunes-zh when nothing is found.
std::vector<std::string> default_corpus_files(const std::string& dir = kFortuneDir);

// Reads, splits and tokenizes `files`. Errors: no files, a missing/unreadable file, a file
// with no documents, val_fraction outside [0, 0.5].
Corpus load_corpus(const std::vector<std::string>& files, const Tokenizer& tok, double val_fraction,
                   uint64_t split_seed);

class WindowSampler {
 public:
  // Errors: seq_len < 1, fewer than seq_len + 1 tokens in the stream.
  WindowSampler(const std::vector<std::vector<int32_t>>& docs, int64_t seq_len, uint64_t seed);

  // B windows; inputs and targets are resized to B * seq_len (row-major [B, L]).
  void next_batch(int64_t B, std::vector<int32_t>& inputs, std::vector<int32_t>& targets);

  std::string state() const;
  void set_state(const std::string& s);

  int64_t stream_tokens() const { return static_cast<int64_t>(stream_.size()); }
  int64_t seq_len() const { return seq_len_; }
  int64_t windows_drawn() const { return windows_; }
  int64_t batches_drawn() const { return batches_; }

 private:
  uint64_t next_u64();
  uint64_t uniform(uint64_t bound);  // in [0, bound), unbiased

  std::vector<int32_t> stream_;
  int64_t seq_len_;
  uint64_t stream_hash_;
  uint64_t rng_[4];
  int64_t windows_ = 0, batches_ = 0;
};

std::vector<std::pair<std::vector<int32_t>, std::vector<int32_t>>> eval_windows(
    const std::vector<std::vector<int32_t>>& docs, int64_t seq_len, int64_t max_windows);

}  // namespace posformer
