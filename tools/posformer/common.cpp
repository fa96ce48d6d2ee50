#include "common.h"

#include <cerrno>
#include <cstdlib>

#include "posformer/core/runtime.h"

namespace posformer::cli {

std::vector<int32_t> parse_token_list(const std::string& text, const std::string& what) {
  std::vector<int32_t> out;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && (text[i] == ' ' || text[i] == ',' || text[i] == '\n' ||
                               text[i] == '\t' || text[i] == '\r'))
      ++i;
    if (i >= text.size()) break;
    size_t j = i;
    while (j < text.size() && !(text[j] == ' ' || text[j] == ',' || text[j] == '\n' ||
                                text[j] == '\t' || text[j] == '\r'))
      ++j;
    std::string tok = text.substr(i, j - i);
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(tok.c_str(), &end, 10);
    PF_CHECK(end && *end == '\0' && errno == 0 && v >= 0 && v <= 0x7fffffff, "[input] ", what,
             ": token '", tok, "' (number ", out.size(), ") is not a non-negative integer id");
    out.push_back(static_cast<int32_t>(v));
    i = j;
  }
  PF_CHECK(!out.empty(), "[input] ", what, ": no tokens given");
  return out;
}

void add_threads_option(CLI::App* app, int& threads) {
  app->add_option("--threads", threads, "worker threads (default: all cores)")
      ->check(CLI::Range(0, 1024));
}

}  // namespace posformer::cli
