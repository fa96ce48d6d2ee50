// POSFORMER_WAIT_POLICY -> the libgomp environment (core/runtime.h), and its bad values.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "posformer/core/error.h"
#include "posformer/core/runtime.h"

namespace {

using namespace posformer;

// Clears the variables the policy reads or writes; restores them at scope exit.
struct EnvGuard {
  const char* names[4] = {"POSFORMER_WAIT_POLICY", "POSFORMER_NO_REEXEC", "OMP_WAIT_POLICY",
                          "GOMP_SPINCOUNT"};
  std::string saved[4];
  bool had[4] = {};
  EnvGuard() {
    for (int i = 0; i < 4; ++i) {
      const char* v = std::getenv(names[i]);
      had[i] = v != nullptr;
      if (v) saved[i] = v;
      unsetenv(names[i]);
    }
  }
  ~EnvGuard() {
    for (int i = 0; i < 4; ++i) {
      if (had[i])
        setenv(names[i], saved[i].c_str(), 1);
      else
        unsetenv(names[i]);
    }
  }
};

std::string env(const char* n) {
  const char* v = std::getenv(n);
  return v ? v : "(unset)";
}

TEST(WaitPolicy, MapsEachValueOnce) {
  {
    EnvGuard g;
    EXPECT_TRUE(set_wait_policy_env());  // unset: the default
    EXPECT_EQ(env("OMP_WAIT_POLICY"),
              std::string(kDefaultWaitPolicy) == "passive" ? "PASSIVE" : env("OMP_WAIT_POLICY"));
    EXPECT_EQ(env("POSFORMER_NO_REEXEC"), "1");
    EXPECT_FALSE(set_wait_policy_env());  // the re-executed process changes nothing
  }
  {
    EnvGuard g;
    setenv("POSFORMER_WAIT_POLICY", "spin=12345", 1);
    EXPECT_TRUE(set_wait_policy_env());
    EXPECT_EQ(env("GOMP_SPINCOUNT"), "12345");
    EXPECT_EQ(env("OMP_WAIT_POLICY"), "(unset)");
    EXPECT_NE(wait_policy_description().find("GOMP_SPINCOUNT=12345"), std::string::npos);
  }
  {
    EnvGuard g;
    setenv("POSFORMER_WAIT_POLICY", "active", 1);
    EXPECT_TRUE(set_wait_policy_env());
    EXPECT_EQ(env("OMP_WAIT_POLICY"), "ACTIVE");
  }
  {
    EnvGuard g;
    setenv("POSFORMER_WAIT_POLICY", "default", 1);
    EXPECT_FALSE(set_wait_policy_env());
    EXPECT_EQ(env("OMP_WAIT_POLICY"), "(unset)");
    EXPECT_EQ(env("GOMP_SPINCOUNT"), "(unset)");
  }
  {
    EnvGuard g;  // the user's own libgomp settings win
    setenv("POSFORMER_WAIT_POLICY", "active", 1);
    setenv("GOMP_SPINCOUNT", "7", 1);
    EXPECT_FALSE(set_wait_policy_env());
    EXPECT_EQ(env("OMP_WAIT_POLICY"), "(unset)");
  }
}

TEST(WaitPolicy, BadValuesAreNamed) {
  for (const char* bad : {"spin", "spin=", "spin=-1", "spin=1e5", "Passive", "fast"}) {
    EnvGuard g;
    setenv("POSFORMER_WAIT_POLICY", bad, 1);
    try {
      set_wait_policy_env();
      ADD_FAILURE() << bad << ": no throw";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(std::string("'") + bad + "'"), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("POSFORMER_WAIT_POLICY"), std::string::npos);
    }
    EXPECT_EQ(env("POSFORMER_NO_REEXEC"), "(unset)") << bad;
  }
}

}  // namespace
