// posformer tokenizer: train a tokenizer into a directory, encode and decode with one.
#include <chrono>
#include <cstdio>
#include <iostream>

#include "common.h"
#include "posformer/core/io.h"
#include "posformer/train/data.h"
#include "posformer/train/tokenizer.h"

namespace posformer::cli {

namespace {

struct TokOpts {
  std::vector<std::string> data;
  int64_t vocab_size = 0;
  std::string out, type = "unigram", dir, text, text_file, ids;
};

// "--data default" expands to the default fortune corpus.
std::vector<std::string> expand_data(const std::vector<std::string>& data) {
  std::vector<std::string> files;
  for (const auto& d : data) {
    if (d == "default") {
      for (auto& f : default_corpus_files()) files.push_back(std::move(f));
    } else {
      files.push_back(d);
    }
  }
  return files;
}

void print_info(const Tokenizer& t) {
  std::printf("type %s, vocab %lld, pad %d, bos %d, eos %d, mask %d\n", t.type().c_str(),
              (long long)t.vocab_size(), t.pad_id(), t.bos_id(), t.eos_id(), t.mask_id());
}

int run_train(const TokOpts& o) {
  if (o.type == "byte") {
    auto t = make_byte_tokenizer();
    t->save(o.out);
    std::printf("wrote byte tokenizer to %s: ", o.out.c_str());
    print_info(*t);
    return 0;
  }
  PF_CHECK(!o.data.empty(), "[tokenizer] train: --data is required for --type ", o.type);
  PF_CHECK(o.vocab_size > 0, "[tokenizer] train: --vocab-size is required for --type ", o.type);
  const auto files = expand_data(o.data);
  const auto t0 = std::chrono::steady_clock::now();
  auto t = train_sentencepiece(files, o.vocab_size, o.out, o.type);
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // Compression on the training documents.
  int64_t bytes = 0, tokens = 0, docs = 0;
  for (const auto& f : files) {
    for (const auto& d : split_documents(read_file(f, size_t{1} << 31), f)) {
      bytes += static_cast<int64_t>(d.size());
      tokens += static_cast<int64_t>(t->encode(d).size());
      ++docs;
    }
  }
  std::printf(
      "trained sentencepiece %s tokenizer in %.1f s on %zu files (%lld documents, %lld "
      "bytes -> %lld tokens, %.2f bytes/token) -> %s\n",
      o.type.c_str(), secs, files.size(), (long long)docs, (long long)bytes, (long long)tokens,
      tokens ? double(bytes) / double(tokens) : 0.0, o.out.c_str());
  print_info(*t);
  return 0;
}

}  // namespace

Command add_tokenizer(CLI::App& root) {
  auto* app = root.add_subcommand("tokenizer", "train a tokenizer, or encode/decode with one");
  app->require_subcommand(1);
  auto o = std::make_shared<TokOpts>();

  auto* train = app->add_subcommand(
      "train", "train a SentencePiece tokenizer (or write the byte one) into a directory");
  train->add_option("--data", o->data,
                    "text files (fortune '%' format or blank-line separated documents); "
                    "'default' = the fortune corpus (see docs/data.md)");
  train->add_option("--vocab-size", o->vocab_size, "number of pieces (>= 262)");
  train->add_option("--out", o->out, "output directory (tokenizer.json + tokenizer.model)")
      ->required();
  train->add_option("--type", o->type, "unigram (default), bpe, or byte (no training)")
      ->check(CLI::IsMember({"unigram", "bpe", "byte"}));

  auto* enc = app->add_subcommand("encode", "print the token ids of a text");
  enc->add_option("DIR", o->dir, "model or tokenizer directory (no tokenizer.json: bytes)")
      ->required();
  auto* text_opt = enc->add_option("--text", o->text, "text to encode");
  auto* file_opt = enc->add_option("--file", o->text_file, "file whose bytes to encode");
  text_opt->excludes(file_opt);

  auto* dec = app->add_subcommand("decode", "print the text of token ids (specials skipped)");
  dec->add_option("DIR", o->dir, "model or tokenizer directory")->required();
  dec->add_option("--ids", o->ids, "ids separated by spaces or commas")->required();

  auto* info = app->add_subcommand("info", "show a directory's tokenizer");
  info->add_option("DIR", o->dir, "model or tokenizer directory")->required();

  return {app, [=]() {
            if (train->parsed()) return run_train(*o);
            if (enc->parsed()) {
              PF_CHECK(text_opt->count() || file_opt->count(),
                       "[tokenizer] encode: give --text or --file");
              auto t = load_tokenizer(o->dir);
              const std::string s =
                  file_opt->count() ? read_file(o->text_file, size_t{1} << 30) : o->text;
              const auto ids = t->encode(s);
              for (size_t i = 0; i < ids.size(); ++i) std::printf(i ? " %d" : "%d", ids[i]);
              std::printf("\n");
              return 0;
            }
            if (dec->parsed()) {
              auto t = load_tokenizer(o->dir);
              const std::string s = t->decode(parse_token_list(o->ids, "--ids"));
              std::fwrite(s.data(), 1, s.size(), stdout);
              std::printf("\n");
              return 0;
            }
            print_info(*load_tokenizer(o->dir));
            return 0;
          }};
}

}  // namespace posformer::cli
