// Runs a test body once per compiled Highway target the CPU supports (AVX-512, AVX2, SSE4 ...),
// restoring normal dispatch afterwards. fn() or fn(target name).
#pragma once
#include <gtest/gtest.h>
#include <hwy/targets.h>

#include <string>
#include <type_traits>

namespace pf_test {

template <class F>
void for_each_target(const F& fn) {
  const auto targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  for (int64_t t : targets) {
    SCOPED_TRACE(hwy::TargetName(t));
    hwy::SetSupportedTargetsForTest(t);
    if constexpr (std::is_invocable_v<const F&, std::string>)
      fn(std::string(hwy::TargetName(t)));
    else
      fn();
  }
  hwy::SetSupportedTargetsForTest(0);
}

}  // namespace pf_test
