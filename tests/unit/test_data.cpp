// Data pipeline: document splitting, corpus split, window sampler, evaluation windows and the
// default fortune corpus.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "posformer/core/error.h"
#include "posformer/train/data.h"
#include "test_util.h"

using namespace posformer;
namespace fs = std::filesystem;

using pf_test::TempDir;
using pf_test::write_text;

namespace {

// n distinct fortune entries, some multi-line, some Chinese, one with a non-UTF-8 byte.
std::string fortune_file(int n, int offset = 0) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    const int k = i + offset;
    s += "Entry number " + std::to_string(k) + " says hello.";
    if (k % 3 == 0) s += "\n  indented second line of " + std::to_string(k);
    if (k % 7 == 0) s += "\n春眠不觉晓，处处闻啼鸟。";
    if (k % 11 == 0) s += " raw\xff byte";
    s += "\n%\n";
  }
  return s;
}

std::vector<int32_t> stream_of(const std::vector<std::vector<int32_t>>& docs) {
  std::vector<int32_t> s;
  for (const auto& d : docs) s.insert(s.end(), d.begin(), d.end());
  return s;
}

std::vector<std::vector<int32_t>> numbered_docs(int n_docs, int len) {
  // Token values are unique positions so a window pins down its start.
  std::vector<std::vector<int32_t>> docs(n_docs);
  int32_t v = 0;
  for (auto& d : docs)
    for (int i = 0; i < len; ++i) d.push_back(v++);
  return docs;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// split_documents

TEST(DataSplit, FortuneFormat) {
  const std::string text =
      "First fortune.\n  second line kept\n%\n\nSecond one\n\nwith a blank line inside.\n%\n%\n"
      "Last, no trailing separator";
  const auto docs = split_documents(text, "f");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0], "First fortune.\n  second line kept");
  EXPECT_EQ(docs[1], "Second one\n\nwith a blank line inside.");
  EXPECT_EQ(docs[2], "Last, no trailing separator");
  // A leading "%" and only separators.
  EXPECT_EQ(split_documents("%\nA\n%\n", "f"), std::vector<std::string>{"A"});
  EXPECT_TRUE(split_documents("%\n%\n\n%\n", "f").empty());
  // "%" inside a line is text, "%%" is not a separator.
  EXPECT_EQ(split_documents("100% sure\n%%\nmore\n%\nB", "f"),
            (std::vector<std::string>{"100% sure\n%%\nmore", "B"}));
}

TEST(DataSplit, BlankLineFormat) {
  const std::string text =
      "\n\nPara one\nline two\n\n\n   \t\nPara two\r\nwindows line\r\n\n  last";
  const auto docs = split_documents(text, "plain.txt");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0], "Para one\nline two");
  EXPECT_EQ(docs[1], "Para two\nwindows line");
  EXPECT_EQ(docs[2], "  last");
  EXPECT_TRUE(split_documents("", "e").empty());
  EXPECT_TRUE(split_documents("\n \n\t\n", "e").empty());
  EXPECT_EQ(split_documents("single", "e"), std::vector<std::string>{"single"});
}

TEST(DataSplit, AnsiAndOverstrikeStripped) {
  const std::string text =
      "\x1b[32m《静夜思》\x1b[m\n\x1b[33m作者：李白\x1b[m\n床前明月光\n%\n"
      "It's a *__\b\bUN*lucky week, _\bI said\n\x1b]0;title\a\x1b(Bplain\n%\n"
      "\x1b[1;31mred\x1b[0m and \x1b[38;5;208morange\x1b[0m";
  const auto docs = split_documents(text, "f");
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0], "《静夜思》\n作者：李白\n床前明月光");
  EXPECT_EQ(docs[1], "It's a *UN*lucky week, I said\nplain");
  EXPECT_EQ(docs[2], "red and orange");
  // Overstriking a multi-byte character removes the whole character.
  EXPECT_EQ(split_documents("月\b光", "f"), std::vector<std::string>{"光"});
  for (const auto& d : docs) EXPECT_EQ(d.find('\x1b'), std::string::npos);
}

TEST(DataSplit, NonUtf8BytesKept) {
  std::string text = "bad \xff\xfe bytes\n%\n\xc3 alone";
  const auto docs = split_documents(text, "f");
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0], "bad \xff\xfe bytes");
  EXPECT_EQ(docs[1], "\xc3 alone");
}

// ---------------------------------------------------------------------------------------------
// load_corpus

TEST(DataCorpus, SplitDeterministicDisjointComplete) {
  TempDir d;
  write_text(d.file("a"), fortune_file(600));
  write_text(d.file("b.txt"), "Plain para one.\n\nPlain para two.\n\n\nPlain para three.\n");
  auto tok = make_byte_tokenizer();
  const std::vector<std::string> files = {d.file("a"), d.file("b.txt")};
  const Corpus c1 = load_corpus(files, *tok, 0.1, 7);
  const Corpus c2 = load_corpus(files, *tok, 0.1, 7);
  const Corpus c3 = load_corpus(files, *tok, 0.1, 8);
  EXPECT_EQ(c1.train_docs, c2.train_docs);
  EXPECT_EQ(c1.val_docs, c2.val_docs);
  EXPECT_NE(c1.val_docs, c3.val_docs);

  std::vector<std::string> all;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    for (auto& doc : split_documents(text, f)) all.push_back(doc);
  }
  ASSERT_EQ(all.size(), 603u);
  std::multiset<std::string> train, val;
  int64_t tokens = 0, bytes = 0;
  for (const auto& ids : c1.train_docs) {
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids.back(), tok->eos_id());
    train.insert(tok->decode(ids));
    tokens += static_cast<int64_t>(ids.size());
    bytes += static_cast<int64_t>(ids.size()) - 1;
  }
  EXPECT_EQ(tokens, c1.train_tokens);
  EXPECT_EQ(bytes, c1.train_bytes);
  tokens = bytes = 0;
  for (const auto& ids : c1.val_docs) {
    EXPECT_EQ(ids.back(), tok->eos_id());
    val.insert(tok->decode(ids));
    tokens += static_cast<int64_t>(ids.size());
    bytes += static_cast<int64_t>(ids.size()) - 1;
  }
  EXPECT_EQ(tokens, c1.val_tokens);
  EXPECT_EQ(bytes, c1.val_bytes);
  for (const auto& v : val) EXPECT_EQ(train.count(v), 0u) << v;
  std::multiset<std::string> both = train;
  both.insert(val.begin(), val.end());
  EXPECT_EQ(both, std::multiset<std::string>(all.begin(), all.end()));
  // Roughly 10% in val (binomial sd ~ 7.4 docs).
  EXPECT_GT(val.size(), 30u);
  EXPECT_LT(val.size(), 95u);

  // The split of a document depends only on its text: adding files keeps earlier assignments.
  write_text(d.file("c"), fortune_file(50, 10000));
  const Corpus c4 = load_corpus({d.file("a"), d.file("b.txt"), d.file("c")}, *tok, 0.1, 7);
  std::set<std::vector<int32_t>> v4(c4.val_docs.begin(), c4.val_docs.end());
  for (const auto& v : c1.val_docs) EXPECT_TRUE(v4.count(v));
}

TEST(DataCorpus, ValFractionEdgesAndMinimumVal) {
  TempDir d;
  write_text(d.file("two"), "alpha\n%\nbeta\n");
  write_text(d.file("one"), "only doc\n");
  auto tok = make_byte_tokenizer();
  const Corpus none = load_corpus({d.file("two")}, *tok, 0.0, 1);
  EXPECT_EQ(none.train_docs.size(), 2u);
  EXPECT_TRUE(none.val_docs.empty());
  EXPECT_EQ(none.val_tokens, 0);
  for (uint64_t seed = 0; seed < 20; ++seed) {
    const Corpus c = load_corpus({d.file("two")}, *tok, 1e-6, seed);
    EXPECT_EQ(c.train_docs.size(), 1u);
    EXPECT_EQ(c.val_docs.size(), 1u);
    const Corpus h = load_corpus({d.file("two")}, *tok, 0.5, seed);
    EXPECT_EQ(h.train_docs.size() + h.val_docs.size(), 2u);
    EXPECT_GE(h.train_docs.size(), 1u);
    EXPECT_GE(h.val_docs.size(), 1u);
  }
  const Corpus single = load_corpus({d.file("one")}, *tok, 0.5, 3);
  EXPECT_EQ(single.train_docs.size(), 1u);
  EXPECT_EQ(single.train_bytes, 8);
  EXPECT_EQ(single.train_tokens, 9);  // + eos
}

TEST(DataCorpus, Errors) {
  TempDir d;
  write_text(d.file("ok"), "text\n%\nmore\n");
  write_text(d.file("empty"), "");
  write_text(d.file("blank"), "\n\n%\n  \n");
  auto tok = make_byte_tokenizer();
  EXPECT_THROW(load_corpus({}, *tok, 0.1, 0), Error);
  try {
    load_corpus({d.file("ok"), d.file("missing")}, *tok, 0.1, 0);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("missing"), std::string::npos) << e.what();
  }
  for (const char* f : {"empty", "blank"}) {
    try {
      load_corpus({d.file(f)}, *tok, 0.1, 0);
      ADD_FAILURE() << f;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("no documents"), std::string::npos) << e.what();
    }
  }
  for (double v : {-0.1, 0.51, 1.0, std::nan("")}) {
    try {
      load_corpus({d.file("ok")}, *tok, v, 0);
      ADD_FAILURE() << v;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("val_fraction"), std::string::npos) << e.what();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// WindowSampler

TEST(DataSampler, WindowsAreShiftedSubstrings) {
  const auto docs = numbered_docs(5, 37);  // stream 0..184
  const int64_t L = 16, B = 8;
  WindowSampler s(docs, L, 123);
  EXPECT_EQ(s.stream_tokens(), 185);
  const auto stream = stream_of(docs);
  std::vector<int32_t> in, tg;
  std::set<int32_t> starts;
  for (int it = 0; it < 200; ++it) {
    s.next_batch(B, in, tg);
    ASSERT_EQ(in.size(), static_cast<size_t>(B * L));
    ASSERT_EQ(tg.size(), static_cast<size_t>(B * L));
    for (int64_t b = 0; b < B; ++b) {
      const int32_t st = in[b * L];
      ASSERT_GE(st, 0);
      ASSERT_LE(st + L + 1, static_cast<int64_t>(stream.size()));
      starts.insert(st);
      for (int64_t i = 0; i < L; ++i) {
        EXPECT_EQ(in[b * L + i], stream[st + i]);
        EXPECT_EQ(tg[b * L + i], stream[st + i + 1]);
      }
    }
  }
  // Every valid start (0 .. N-L-1) shows up, including both ends.
  EXPECT_EQ(starts.size(), stream.size() - L);
  EXPECT_EQ(s.windows_drawn(), 200 * B);
  EXPECT_EQ(s.batches_drawn(), 200);
}

TEST(DataSampler, DeterministicAndResumable) {
  const auto docs = numbered_docs(3, 1000);
  std::vector<int32_t> a_in, a_tg, b_in, b_tg;
  WindowSampler a(docs, 32, 99), b(docs, 32, 99), c(docs, 32, 100);
  a.next_batch(4, a_in, a_tg);
  b.next_batch(4, b_in, b_tg);
  EXPECT_EQ(a_in, b_in);
  EXPECT_EQ(a_tg, b_tg);
  std::vector<int32_t> c_in, c_tg;
  c.next_batch(4, c_in, c_tg);
  EXPECT_NE(a_in, c_in);

  // Take a state mid-run, draw more, then resume a fresh sampler from the state.
  for (int i = 0; i < 5; ++i) a.next_batch(3, a_in, a_tg);
  const std::string st = a.state();
  EXPECT_LT(st.size(), 300u);
  std::vector<std::vector<int32_t>> expect_in, expect_tg;
  for (int i = 0; i < 10; ++i) {
    a.next_batch(1 + i % 4, a_in, a_tg);
    expect_in.push_back(a_in);
    expect_tg.push_back(a_tg);
  }
  WindowSampler r(docs, 32, 12345);  // the seed is overridden by the state
  r.set_state(st);
  EXPECT_EQ(r.state(), st);
  EXPECT_EQ(r.windows_drawn(), 4 + 15);
  for (int i = 0; i < 10; ++i) {
    r.next_batch(1 + i % 4, b_in, b_tg);
    EXPECT_EQ(b_in, expect_in[i]);
    EXPECT_EQ(b_tg, expect_tg[i]);
  }
  EXPECT_EQ(r.state(), a.state());
}

TEST(DataSampler, Errors) {
  const auto docs = numbered_docs(2, 10);  // 20 tokens
  EXPECT_THROW(WindowSampler(docs, 0, 1), Error);
  EXPECT_THROW(WindowSampler(docs, 20, 1), Error);  // needs 21 tokens
  EXPECT_NO_THROW(WindowSampler(docs, 19, 1));
  EXPECT_THROW(WindowSampler({}, 1, 1), Error);
  WindowSampler s(docs, 8, 1);
  std::vector<int32_t> in, tg;
  EXPECT_THROW(s.next_batch(0, in, tg), Error);
  const std::string st = s.state();
  WindowSampler other_len(docs, 9, 1);
  EXPECT_THROW(other_len.set_state(st), Error);
  auto docs2 = docs;
  docs2[1][3] = 999;
  WindowSampler other_stream(docs2, 8, 1);
  EXPECT_THROW(other_stream.set_state(st), Error);
  EXPECT_THROW(s.set_state("{"), Error);
  EXPECT_THROW(s.set_state("{}"), Error);
  EXPECT_THROW(s.set_state(R"({"v":1})"), Error);
  // A failed set_state leaves the sampler unchanged.
  EXPECT_EQ(s.state(), st);
}

// ---------------------------------------------------------------------------------------------
// eval_windows

TEST(DataEval, SequentialWindowsLastShorter) {
  const auto docs = numbered_docs(2, 13);  // stream 0..25, 25 targets
  const auto w = eval_windows(docs, 10, 0);
  ASSERT_EQ(w.size(), 3u);
  EXPECT_EQ(w[0].first.size(), 10u);
  EXPECT_EQ(w[1].first.size(), 10u);
  EXPECT_EQ(w[2].first.size(), 5u);
  int32_t expect = 0;
  for (const auto& [in, tg] : w) {
    ASSERT_EQ(in.size(), tg.size());
    for (size_t i = 0; i < in.size(); ++i) {
      EXPECT_EQ(in[i], expect);
      EXPECT_EQ(tg[i], expect + 1);
      ++expect;
    }
  }
  EXPECT_EQ(expect, 25);
  EXPECT_EQ(eval_windows(docs, 10, 2).size(), 2u);
  EXPECT_EQ(eval_windows(docs, 5, 0).size(), 5u);  // exactly 25 targets, no partial window
  EXPECT_EQ(eval_windows(docs, 100, 0).size(), 1u);
  EXPECT_THROW(eval_windows(docs, 0, 0), Error);
  EXPECT_THROW(eval_windows({{1}}, 4, 0), Error);
}

// ---------------------------------------------------------------------------------------------
// Default corpus

TEST(DataDefault, FindsFortuneFiles) {
  std::error_code ec;
  if (!fs::exists(std::string(kFortuneDir) + "/fortunes", ec))
    GTEST_SKIP() << "Debian package 'fortunes' is not installed";
  const auto files = default_corpus_files();
  ASSERT_FALSE(files.empty());
  std::set<std::string> names, targets;
  for (const auto& f : files) {
    const std::string name = fs::path(f).filename().string();
    names.insert(name);
    EXPECT_FALSE(name.size() > 4 && name.substr(name.size() - 4) == ".dat") << f;
    EXPECT_FALSE(name.size() > 3 && name.substr(name.size() - 3) == ".u8") << f;
    EXPECT_NE(name, "chinese");
    EXPECT_TRUE(targets.insert(fs::canonical(f).string()).second) << "duplicate " << f;
  }
  EXPECT_TRUE(names.count("fortunes"));
  if (fs::exists(std::string(kFortuneDir) + "/tang300")) {
    EXPECT_TRUE(names.count("tang300"));
    EXPECT_TRUE(names.count("song100"));
  }
  EXPECT_TRUE(std::is_sorted(files.begin(), files.end()));

  // The whole corpus loads; print its size for the record.
  auto tok = make_byte_tokenizer();
  const Corpus c = load_corpus(files, *tok, 0.05, 0);
  EXPECT_GT(c.train_bytes, 1000000);
  EXPECT_GT(c.val_docs.size(), 0u);
  std::printf(
      "default corpus: %zu files, train %zu docs / %lld bytes / %lld byte tokens, val %zu "
      "docs / %lld bytes\n",
      files.size(), c.train_docs.size(), (long long)c.train_bytes, (long long)c.train_tokens,
      c.val_docs.size(), (long long)c.val_bytes);
  for (const auto& d : c.train_docs)
    ASSERT_EQ(std::find(d.begin(), d.end(), 0x1b), d.end()) << "ANSI escape left in corpus";
}

TEST(DataDefault, SelectionRulesOnFakeDir) {
  TempDir d;
  for (const char* f : {"alpha", "beta", "chinese", "tang300", "only.u8"}) {
    write_text(d.file(f), "x\n%\ny\n");
    write_text(d.file(std::string(f) + ".dat"), "\x02\x00");
  }
  write_text(d.file("notes"), "no index, not a fortune file\n");
  fs::create_symlink("alpha", d.file("alpha.u8"));
  fs::create_symlink("beta", d.file("gamma"));  // same text under another name
  write_text(d.file("gamma.dat"), "\x02");
  fs::create_directories(d.file("off"));
  write_text(d.file("off/rude"), "no\n");
  write_text(d.file("off/rude.dat"), "\x02");
  write_text(d.file(".hidden"), "h\n");
  write_text(d.file(".hidden.dat"), "\x02");
  const auto files = default_corpus_files(d.path);
  std::vector<std::string> names;
  for (const auto& f : files) names.push_back(fs::path(f).filename().string());
  EXPECT_EQ(names, (std::vector<std::string>{"alpha", "beta", "only.u8", "tang300"}));

  TempDir empty;
  try {
    default_corpus_files(empty.path);
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("fortunes-zh"), std::string::npos) << e.what();
  }
  EXPECT_THROW(default_corpus_files(d.file("nope")), Error);
}
