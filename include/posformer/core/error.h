// Errors: every bad input becomes a posformer::Error whose message names the op or field and
// the offending value, e.g. "[rope] rotary dim must be even, got 7". Never abort, never UB.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace posformer {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg) : std::runtime_error(msg) {}
};

// str("a", 1, "b") -> "a1b"
template <class... Args>
std::string str(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace posformer

// PF_CHECK(cond, "[op] what, got ", value): throws posformer::Error when cond is false.
#define PF_CHECK(cond, ...)                                               \
  do {                                                                    \
    if (!(cond)) throw ::posformer::Error(::posformer::str(__VA_ARGS__)); \
  } while (0)
