// POSFORMER_WAIT_POLICY -> the libgomp environment (core/runtime.h), and its bad values.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "posformer/core/error.h"
#include "posformer/core/runtime.h"

namespace {

using namespace posformer;

// Clears the variables the policy reads or writes; restores them at scope exit.
struct EnvGuard {
  static constexpr int kN = 8;
  const char* names[kN] = {
      "POSFORMER_WAIT_POLICY", "POSFORMER_NO_REEXEC", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
      "POSFORMER_WAIT_AUTO",   "OMP_PROC_BIND",       "OMP_PLACES",      "GOMP_CPU_AFFINITY"};
  std::string saved[kN];
  bool had[kN] = {};
  EnvGuard() {
    for (int i = 0; i < kN; ++i) {
      const char* v = std::getenv(names[i]);
      had[i] = v != nullptr;
      if (v) saved[i] = v;
      unsetenv(names[i]);
    }
  }
  ~EnvGuard() {
    for (int i = 0; i < kN; ++i) {
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
    EXPECT_TRUE(set_wait_policy_env());  // unset: the default, auto
    EXPECT_EQ(std::string(kDefaultWaitPolicy), "auto");
    // auto picked one of its two policies and says which and why
    const bool spin = env("GOMP_SPINCOUNT") == "100000",
               passive = env("OMP_WAIT_POLICY") == "PASSIVE";
    EXPECT_NE(spin, passive);
    EXPECT_NE(env("POSFORMER_WAIT_AUTO").find(spin ? "auto: spin=100000" : "auto: passive"),
              std::string::npos);
    EXPECT_NE(wait_policy_description().find("[auto: "), std::string::npos);
    EXPECT_EQ(env("POSFORMER_NO_REEXEC"), "1");
    EXPECT_FALSE(set_wait_policy_env());  // the re-executed process changes nothing
  }
  {
    EnvGuard g;
    setenv("POSFORMER_WAIT_POLICY", "passive", 1);
    EXPECT_TRUE(set_wait_policy_env());
    EXPECT_EQ(env("OMP_WAIT_POLICY"), "PASSIVE");
    EXPECT_EQ(env("POSFORMER_WAIT_AUTO"), "(unset)");
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

// Thread binding requested: no re-exec (it would inherit the initial thread's one-CPU mask that
// libgomp set when it loaded), nothing set; OMP_PROC_BIND=false binds nothing and changes nothing.
TEST(WaitPolicy, LeftAloneWhenThreadsAreBound) {
  for (const auto& [name, value] :
       {std::pair{"OMP_PROC_BIND", "true"}, std::pair{"OMP_PROC_BIND", "close"},
        std::pair{"OMP_PLACES", "cores"}, std::pair{"GOMP_CPU_AFFINITY", "0-1"}}) {
    EnvGuard g;
    setenv("POSFORMER_WAIT_POLICY", "active", 1);
    setenv(name, value, 1);
    EXPECT_FALSE(set_wait_policy_env()) << name << "=" << value;
    EXPECT_EQ(env("OMP_WAIT_POLICY"), "(unset)") << name;
    EXPECT_EQ(env("POSFORMER_NO_REEXEC"), "(unset)") << name;
  }
  EnvGuard g;
  setenv("POSFORMER_WAIT_POLICY", "active", 1);
  setenv("OMP_PROC_BIND", "false", 1);
  EXPECT_TRUE(set_wait_policy_env());
  EXPECT_EQ(env("OMP_WAIT_POLICY"), "ACTIVE");
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

// auto's rule: spin only when the other runnable tasks leave a CPU for each thread.
TEST(WaitPolicy, AutoRuleAndProcStat) {
  EXPECT_EQ(auto_wait_policy(0, 2, 2), "spin=100000");
  EXPECT_EQ(auto_wait_policy(0.2, 2, 2), "spin=100000");  // a blip in 1 of 5 samples
  EXPECT_EQ(auto_wait_policy(0.4, 2, 2), "passive");
  EXPECT_EQ(auto_wait_policy(1, 2, 2), "passive");  // a compile job on the other CPU
  EXPECT_EQ(auto_wait_policy(6, 16, 8), "spin=100000");
  EXPECT_EQ(auto_wait_policy(9, 16, 8), "passive");
  EXPECT_EQ(auto_wait_policy(-1, 2, 2), "passive");  // /proc/stat unreadable
  EXPECT_EQ(procs_running("cpu  1 2 3\nctxt 5\nprocs_running 3\nprocs_blocked 0\n"), 3);
  EXPECT_EQ(procs_running("cpu  1 2 3\n"), -1);
  EXPECT_EQ(procs_running("procs_running x\n"), -1);
  std::ifstream f("/proc/stat");
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_GE(procs_running(ss.str()), 1);  // this process is running
}

}  // namespace
