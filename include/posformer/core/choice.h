// A closed set of names parsed once into an enum (config fields such as `arch`, `norm`,
// `activation`, `head`, training objectives).
//
//   Choice<Arch> a = "decoder";     parses; an unknown name throws Error "[arch] must be one of
//                                   encoder, decoder, encoder_decoder; got ..."
//   a == Arch::Decoder, switch (a)  compare / switch on the enum
//   a.name(), os << a               the config spelling
//
// Comparing a Choice with a string does not compile, so no string compare of a parsed field can
// hide in the code; a new enumerator is found by the compiler in every switch.
//
// Each enum E provides `constexpr auto choice_names(E)` returning {field name, names...} (an
// std::array of const char*, names in enumerator order, enumerators 0..N-1), found by ADL.
#pragma once
#include <cstddef>
#include <ostream>
#include <string>
#include <string_view>

#include "posformer/core/error.h"

namespace posformer {

template <class E>
class Choice {
 public:
  constexpr Choice(E v = E{}) : v_(v) {}  // NOLINT: implicit on purpose
  Choice(const char* name) : v_(parse(name)) {}
  Choice(const std::string& name) : v_(parse(name)) {}
  constexpr operator E() const { return v_; }
  constexpr bool operator==(E e) const { return v_ == e; }
  constexpr bool operator==(Choice o) const { return v_ == o.v_; }
  bool operator==(const char*) const = delete;
  bool operator==(const std::string&) const = delete;

  const char* name() const { return names()[static_cast<size_t>(v_) + 1]; }
  static const char* field() { return names()[0]; }

  // The enumerator spelled `s`; throws "[config] 'arch' must be one of encoder, decoder, ...".
  static E parse(std::string_view s) {
    const auto n = names();
    for (size_t i = 1; i < n.size(); ++i)
      if (s == n[i]) return static_cast<E>(i - 1);
    std::string all;
    for (size_t i = 1; i < n.size(); ++i) all += (i > 1 ? ", " : "") + std::string(n[i]);
    throw Error(str("[", field(), "] must be one of ", all, "; got \"", s, "\""));
  }

 private:
  static constexpr auto names() { return choice_names(E{}); }
  E v_;
};

template <class E>
std::ostream& operator<<(std::ostream& os, Choice<E> c) {
  return os << c.name();
}

}  // namespace posformer
