// Byte and SentencePiece tokenizers, tokenizer.json loading and SentencePiece training.
#include "posformer/train/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>
#include <thread>
#include <unordered_map>

#include "posformer/core/error.h"
#include "posformer/core/io.h"
#include "posformer/train/data.h"

#ifdef POSFORMER_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

// Not in the installed headers, exported by libsentencepiece: the log threshold behind LOG().
namespace sentencepiece::logging {
int GetMinLogLevel();
void SetMinLogLevel(int v);
}  // namespace sentencepiece::logging
#endif

namespace posformer {

namespace {

using json = nlohmann::json;

constexpr const char* kJsonName = "tokenizer.json";
constexpr const char* kModelName = "tokenizer.model";
constexpr size_t kMaxJsonBytes = size_t{1} << 20;
constexpr size_t kMaxModelBytes = size_t{1} << 30;
constexpr size_t kMaxTextBytes = size_t{1} << 31;

// SentencePiece special ids (fixed at training time).
constexpr int32_t kSpPad = 0, kSpUnk = 1, kSpBos = 2, kSpEos = 3, kSpMask = 4;
constexpr int64_t kSpMinVocab = 256 + 5 + 1;

void make_dir(const std::string& dir) {
  PF_CHECK(!dir.empty(), "[tokenizer] save: empty directory name");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  PF_CHECK(!ec, "[tokenizer] cannot create directory '", dir, "': ", ec.message());
}

std::string dump_json(const json& j) {
  return j.dump(2) + "\n";
}

// Throws when an optional integer field is present and differs from `want`.
void check_field(const json& j, const std::string& path, const char* key, int64_t want) {
  if (!j.contains(key)) return;
  const json& v = j.at(key);
  PF_CHECK(v.is_number_integer(), "[tokenizer] '", path, "': field '", key,
           "' must be an integer, got ", v.dump());
  PF_CHECK(v.get<int64_t>() == want, "[tokenizer] '", path, "': field '", key, "' is ",
           v.get<int64_t>(), " but the tokenizer has ", want);
}

void check_ids(const Tokenizer& t, const json& j, const std::string& path) {
  check_field(j, path, "vocab_size", t.vocab_size());
  check_field(j, path, "pad_id", t.pad_id());
  check_field(j, path, "bos_id", t.bos_id());
  check_field(j, path, "eos_id", t.eos_id());
  check_field(j, path, "mask_id", t.mask_id());
}

// ---------------------------------------------------------------------------------------------
// Byte tokenizer

class ByteTokenizer final : public Tokenizer {
 public:
  static constexpr int32_t kPad = 256, kBos = 257, kEos = 258, kMask = 259, kVocab = 260;

  std::string type() const override { return "byte"; }
  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int32_t> ids(text.size());
    for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    out.reserve(ids.size());
    for (int32_t id : ids) {
      PF_CHECK(id >= 0 && id < kVocab, "[tokenizer] byte decode: id ", id, " out of range [0, ",
               kVocab, ")");
      if (id < 256) out.push_back(static_cast<char>(static_cast<unsigned char>(id)));
    }
    return out;
  }
  std::string decode_bytes(const std::vector<int32_t>& ids) const override { return decode(ids); }
  int64_t vocab_size() const override { return kVocab; }
  int32_t pad_id() const override { return kPad; }
  int32_t bos_id() const override { return kBos; }
  int32_t eos_id() const override { return kEos; }
  int32_t mask_id() const override { return kMask; }
  void save(const std::string& dir) const override {
    make_dir(dir);
    json j = {{"type", "byte"}, {"vocab_size", kVocab}, {"pad_id", kPad},
              {"bos_id", kBos}, {"eos_id", kEos},       {"mask_id", kMask}};
    atomic_write_file(dir + "/" + kJsonName, dump_json(j));
  }
};

// ---------------------------------------------------------------------------------------------
// SentencePiece tokenizer

#ifdef POSFORMER_HAVE_SENTENCEPIECE

class SpTokenizer final : public Tokenizer {
 public:
  // `what` names the source in error messages.
  SpTokenizer(std::string serialized, std::string model_type, const std::string& what)
      : model_(std::move(serialized)), model_type_(std::move(model_type)) {
    auto st = sp_.LoadFromSerializedProto(model_);
    PF_CHECK(st.ok(), "[tokenizer] cannot load sentencepiece model '", what, "': ", st.ToString());
    vocab_ = sp_.GetPieceSize();
    mask_ = sp_.PieceToId("<mask>");
    PF_CHECK(sp_.pad_id() >= 0 && sp_.bos_id() >= 0 && sp_.eos_id() >= 0,
             "[tokenizer] sentencepiece model '", what, "' lacks a pad, bos or eos id (pad ",
             sp_.pad_id(), ", bos ", sp_.bos_id(), ", eos ", sp_.eos_id(), ")");
    PF_CHECK(mask_ >= 0 && mask_ != sp_.unk_id(), "[tokenizer] sentencepiece model '", what,
             "' has no <mask> piece");
  }

  std::string type() const override { return "sentencepiece"; }
  const std::string& model_type() const { return model_type_; }

  std::vector<int32_t> encode(const std::string& text) const override {
    std::vector<int> ids;
    auto st = sp_.Encode(text, &ids);
    PF_CHECK(st.ok(), "[tokenizer] sentencepiece encode failed: ", st.ToString());
    return std::vector<int32_t>(ids.begin(), ids.end());
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string out;
    auto st = sp_.Decode(kept(ids), &out);
    PF_CHECK(st.ok(), "[tokenizer] sentencepiece decode failed: ", st.ToString());
    return out;
  }
  // SentencePiece's per-piece surfaces (which depend only on the pieces before them: the
  // dummy-prefix space is dropped from the first one) for ordinary pieces, the raw byte for
  // byte-fallback pieces <0xNN>.
  std::string decode_bytes(const std::vector<int32_t>& ids) const override {
    const std::vector<int> keep = kept(ids);
    sentencepiece::ImmutableSentencePieceText spt;
    auto st = sp_.Decode(keep, spt.mutable_proto());
    PF_CHECK(st.ok(), "[tokenizer] sentencepiece decode failed: ", st.ToString());
    PF_CHECK(spt.pieces_size() == keep.size(), "[tokenizer] sentencepiece decode gave ",
             spt.pieces_size(), " pieces for ", keep.size(), " ids");
    std::string out;
    for (size_t i = 0; i < keep.size(); ++i) {
      if (sp_.IsByte(keep[i])) {
        const std::string& piece = sp_.IdToPiece(keep[i]);  // "<0xE4>"
        PF_CHECK(piece.size() == 6 && piece.compare(0, 3, "<0x") == 0 && piece[5] == '>',
                 "[tokenizer] sentencepiece byte piece ", keep[i], " is '", piece,
                 "', expected <0xNN>");
        out.push_back(static_cast<char>(std::stoi(piece.substr(3, 2), nullptr, 16)));
      } else {
        out += spt.pieces(static_cast<int>(i)).surface();
      }
    }
    return out;
  }
  int64_t vocab_size() const override { return vocab_; }
  int32_t pad_id() const override { return sp_.pad_id(); }
  int32_t bos_id() const override { return sp_.bos_id(); }
  int32_t eos_id() const override { return sp_.eos_id(); }
  int32_t mask_id() const override { return mask_; }
  int32_t unk_id() const { return sp_.unk_id(); }

  void save(const std::string& dir) const override {
    make_dir(dir);
    // The model first: tokenizer.json is what makes the directory a sentencepiece one.
    atomic_write_file(dir + "/" + kModelName, model_);
    json j = {{"type", "sentencepiece"}, {"model", kModelName}, {"model_type", model_type_},
              {"vocab_size", vocab_},    {"pad_id", pad_id()},  {"unk_id", unk_id()},
              {"bos_id", bos_id()},      {"eos_id", eos_id()},  {"mask_id", mask_}};
    atomic_write_file(dir + "/" + kJsonName, dump_json(j));
  }

 private:
  // ids without pad/bos/eos/mask, range-checked
  std::vector<int> kept(const std::vector<int32_t>& ids) const {
    std::vector<int> keep;
    keep.reserve(ids.size());
    for (int32_t id : ids) {
      PF_CHECK(id >= 0 && id < vocab_, "[tokenizer] sentencepiece decode: id ", id,
               " out of range [0, ", vocab_, ")");
      if (id == pad_id() || id == bos_id() || id == eos_id() || id == mask_) continue;
      keep.push_back(id);
    }
    return keep;
  }

  sentencepiece::SentencePieceProcessor sp_;
  std::string model_, model_type_;
  int64_t vocab_ = 0;
  int32_t mask_ = -1;
};

// Feeds in-memory sentences to the trainer.
class VectorIterator final : public sentencepiece::SentenceIterator {
 public:
  explicit VectorIterator(const std::vector<std::string>& v) : v_(v) {}
  bool done() const override { return i_ >= v_.size(); }
  void Next() override { ++i_; }
  const std::string& value() const override { return v_[i_]; }
  sentencepiece::util::Status status() const override { return {}; }

 private:
  const std::vector<std::string>& v_;
  size_t i_ = 0;
};

// Silences SentencePiece's LOG(INFO/WARNING) for the lifetime of the guard.
class QuietLogs {
 public:
  QuietLogs() : old_(sentencepiece::logging::GetMinLogLevel()) {
    sentencepiece::logging::SetMinLogLevel(2);
  }
  ~QuietLogs() { sentencepiece::logging::SetMinLogLevel(old_); }
  QuietLogs(const QuietLogs&) = delete;
  QuietLogs& operator=(const QuietLogs&) = delete;

 private:
  int old_;
};

#endif  // POSFORMER_HAVE_SENTENCEPIECE

[[noreturn, maybe_unused]] void no_sentencepiece(const std::string& what) {
  throw Error(str("[tokenizer] ", what,
                  ": this build has no SentencePiece support (install libsentencepiece-dev and "
                  "reconfigure)"));
}

}  // namespace

Tokenizer::~Tokenizer() = default;

bool have_sentencepiece() {
#ifdef POSFORMER_HAVE_SENTENCEPIECE
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Tokenizer> make_byte_tokenizer() {
  return std::make_unique<ByteTokenizer>();
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  const std::string path = dir + "/" + kJsonName;
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    PF_CHECK(!ec, "[tokenizer] cannot access '", path, "': ", ec.message());
    PF_CHECK(std::filesystem::is_directory(dir, ec), "[tokenizer] '", dir, "' is not a directory");
    return make_byte_tokenizer();
  }
  json j;
  try {
    j = json::parse(read_file(path, kMaxJsonBytes));
  } catch (const json::exception& e) {
    throw Error(str("[tokenizer] '", path, "': malformed JSON: ", e.what()));
  }
  PF_CHECK(j.is_object(), "[tokenizer] '", path, "': expected a JSON object, got ", j.type_name());
  PF_CHECK(j.contains("type"), "[tokenizer] '", path, "': missing field 'type'");
  PF_CHECK(j["type"].is_string(), "[tokenizer] '", path, "': field 'type' must be a string, got ",
           j["type"].dump());
  const std::string type = j["type"].get<std::string>();
  if (type == "byte") {
    auto t = make_byte_tokenizer();
    check_ids(*t, j, path);
    return t;
  }
  PF_CHECK(type == "sentencepiece", "[tokenizer] '", path, "': field 'type' is '", type,
           "', expected 'byte' or 'sentencepiece'");
  PF_CHECK(j.contains("model") && j["model"].is_string(), "[tokenizer] '", path,
           "': field 'model' (the model file name) missing or not a string");
  const std::string model = j["model"].get<std::string>();
  PF_CHECK(!model.empty() && model.find('/') == std::string::npos && model != "." && model != "..",
           "[tokenizer] '", path,
           "': field 'model' must be a file name inside the directory, got '", model, "'");
  std::string model_type = "unigram";
  if (j.contains("model_type")) {
    PF_CHECK(j["model_type"].is_string(), "[tokenizer] '", path,
             "': field 'model_type' must be a string");
    model_type = j["model_type"].get<std::string>();
  }
#ifdef POSFORMER_HAVE_SENTENCEPIECE
  const std::string model_path = dir + "/" + model;
  auto t =
      std::make_unique<SpTokenizer>(read_file(model_path, kMaxModelBytes), model_type, model_path);
  check_ids(*t, j, path);
  check_field(j, path, "unk_id", t->unk_id());
  return t;
#else
  no_sentencepiece(str("loading '", path, "'"));
#endif
}

std::unique_ptr<Tokenizer> train_sentencepiece(const std::vector<std::string>& files,
                                               int64_t vocab_size, const std::string& out_dir,
                                               const std::string& model_type) {
  PF_CHECK(model_type == "unigram" || model_type == "bpe",
           "[tokenizer] sentencepiece model type must be 'unigram' or 'bpe', got '", model_type,
           "'");
  PF_CHECK(vocab_size >= kSpMinVocab, "[tokenizer] sentencepiece vocab size must be at least ",
           kSpMinVocab, " (256 byte pieces + <pad> <unk> <bos> <eos> <mask> + 1), got ",
           vocab_size);
  PF_CHECK(vocab_size <= (int64_t{1} << 24), "[tokenizer] sentencepiece vocab size ", vocab_size,
           " is too large (max ", int64_t{1} << 24, ")");
  PF_CHECK(!files.empty(), "[tokenizer] train: no input files");
  PF_CHECK(!out_dir.empty(), "[tokenizer] train: empty output directory");
#ifdef POSFORMER_HAVE_SENTENCEPIECE
  // One sentence per non-empty line of every document.
  std::vector<std::string> lines;
  for (const auto& f : files) {
    const auto docs = split_documents(read_file(f, kMaxTextBytes), f);
    PF_CHECK(!docs.empty(), "[tokenizer] train: '", f, "' contains no text");
    for (const auto& d : docs) {
      size_t i = 0;
      while (i <= d.size()) {
        size_t j = d.find('\n', i);
        if (j == std::string::npos) j = d.size();
        if (j > i) lines.emplace_back(d, i, j - i);
        i = j + 1;
      }
    }
  }
  const unsigned hw = std::max(1u, std::thread::hardware_concurrency());
  std::unordered_map<std::string, std::string> args = {
      {"model_type", model_type},
      {"vocab_size", std::to_string(vocab_size)},
      {"byte_fallback", "true"},
      {"pad_id", std::to_string(kSpPad)},
      {"unk_id", std::to_string(kSpUnk)},
      {"bos_id", std::to_string(kSpBos)},
      {"eos_id", std::to_string(kSpEos)},
      {"pad_piece", "<pad>"},
      {"unk_piece", "<unk>"},
      {"bos_piece", "<bos>"},
      {"eos_piece", "<eos>"},
      {"user_defined_symbols", "<mask>"},
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"character_coverage", "0.9995"},
      {"input_sentence_size", "2000000"},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", "16384"},
      {"num_threads", std::to_string(std::min(16u, hw))},
  };
  std::string serialized;
  {
    QuietLogs quiet;
    sentencepiece::SetRandomGeneratorSeed(12345);
    VectorIterator it(lines);
    auto st = sentencepiece::SentencePieceTrainer::Train(args, &it, &serialized);
    PF_CHECK(st.ok(), "[tokenizer] sentencepiece ", model_type, " training with vocab size ",
             vocab_size, " failed: ", st.message());
  }
  auto tok = std::make_unique<SpTokenizer>(std::move(serialized), model_type, "<trained>");
  PF_CHECK(tok->pad_id() == kSpPad && tok->unk_id() == kSpUnk && tok->bos_id() == kSpBos &&
               tok->eos_id() == kSpEos && tok->mask_id() == kSpMask,
           "[tokenizer] trained sentencepiece model has unexpected special ids");
  tok->save(out_dir);
  return tok;
#else
  no_sentencepiece("train");
#endif
}

}  // namespace posformer
