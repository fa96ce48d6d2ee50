#include "posformer/core/runtime.h"

#include <malloc.h>
#include <omp.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>

#include "posformer/core/error.h"

namespace posformer {

void init_runtime() {
  static bool done = false;
  if (done) return;
  done = true;
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, 0x7fffffff);
}

const char* const kDefaultWaitPolicy = "auto";
const char* const kAutoSpin = "spin=100000";

int procs_running(const std::string& proc_stat) {
  std::istringstream in(proc_stat);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("procs_running ", 0) == 0) {
      try {
        return std::stoi(line.substr(14));
      } catch (const std::exception&) {
        return -1;
      }
    }
  return -1;
}

std::string auto_wait_policy(double others_running, int cpus, int threads) {
  if (others_running < 0 || cpus <= 0) return "passive";  // unknown: the safe choice
  return others_running + threads <= cpus + 0.25 ? kAutoSpin : "passive";
}

namespace {
// Other runnable tasks right now: procs_running of /proc/stat (this process counts 1), the mean
// of 5 samples 1 ms apart; -1 when /proc/stat cannot be read.
double others_running_now() {
  double sum = 0;
  for (int i = 0; i < 5; ++i) {
    std::ifstream f("/proc/stat");
    std::stringstream ss;
    ss << f.rdbuf();
    const int n = procs_running(ss.str());
    if (n < 1) return -1;
    sum += n - 1;
    if (i < 4) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return sum / 5;
}
}  // namespace

// True when the user asked libgomp to bind threads (OMP_PROC_BIND other than false, OMP_PLACES,
// GOMP_CPU_AFFINITY). libgomp has then already pinned this process's initial thread to the first
// place when it loaded, and a re-executed process would inherit that one-CPU mask: every thread
// of the new process on one CPU (training at 0.5-0.6x its speed on the 2-vCPU Xeon, 2026-12-03).
static bool binding_requested() {
  const char* b = std::getenv("OMP_PROC_BIND");
  const bool bind = b && *b && std::string(b) != "false" && std::string(b) != "FALSE";
  const char* pl = std::getenv("OMP_PLACES");
  const char* ga = std::getenv("GOMP_CPU_AFFINITY");
  return bind || (pl && *pl) || (ga && *ga);
}

bool set_wait_policy_env() {
  if (std::getenv("POSFORMER_NO_REEXEC") || std::getenv("OMP_WAIT_POLICY") ||
      std::getenv("GOMP_SPINCOUNT") || binding_requested())
    return false;
  const char* e = std::getenv("POSFORMER_WAIT_POLICY");
  std::string v = e ? e : kDefaultWaitPolicy;
  if (v == "auto") {  // spin briefly only when the cores are free for this process's threads
    const double others = others_running_now();
    const int cpus = static_cast<int>(std::thread::hardware_concurrency());
    v = auto_wait_policy(others, cpus, cpus);
    setenv("POSFORMER_WAIT_AUTO",
           str("auto: ", v, " (",
               others < 0 ? std::string("load unknown") : str(others, " other runnable tasks"),
               ", ", cpus, " CPUs)")
               .c_str(),
           1);
  }
  const char *name = nullptr, *value = nullptr;
  std::string spins;
  if (v == "passive") {
    name = "OMP_WAIT_POLICY", value = "PASSIVE";
  } else if (v == "active") {
    name = "OMP_WAIT_POLICY", value = "ACTIVE";
  } else if (v == "default") {
    return false;
  } else if (v.rfind("spin=", 0) == 0 && v.size() > 5 && v.size() <= 16 &&
             v.find_first_not_of("0123456789", 5) == std::string::npos) {
    spins = v.substr(5);
    name = "GOMP_SPINCOUNT", value = spins.c_str();
  } else {
    throw Error(str("[runtime] POSFORMER_WAIT_POLICY must be auto, passive, active, default or ",
                    "spin=N (N a count of spins), got '", v, "'"));
  }
  setenv(name, value, 1);
  setenv("POSFORMER_NO_REEXEC", "1", 1);
  return true;
}

std::string wait_policy_description() {
  const char* w = std::getenv("OMP_WAIT_POLICY");
  const char* s = std::getenv("GOMP_SPINCOUNT");
  const char* a = std::getenv("POSFORMER_WAIT_AUTO");
  if (!w && !s) return "libgomp default (spin 300000, then sleep)";
  std::string d;
  if (w) d += str("OMP_WAIT_POLICY=", w);
  if (s) d += str(d.empty() ? "" : " ", "GOMP_SPINCOUNT=", s);
  if (a) d += str(" [", a, "]");
  return d;
}

void set_threads(int n) {
  if (n <= 0) n = static_cast<int>(std::thread::hardware_concurrency());
  if (n <= 0) n = 1;
  omp_set_num_threads(n);
}

int num_threads() {
  return omp_get_max_threads();
}

std::string cpu_features() {
  std::string s;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("sse4.2")) s += "SSE4.2 ";
  if (__builtin_cpu_supports("avx2")) s += "AVX2 ";
  if (__builtin_cpu_supports("fma")) s += "FMA ";
  if (__builtin_cpu_supports("avx512f")) s += "AVX512F ";
  if (__builtin_cpu_supports("avx512bf16")) s += "AVX512_BF16 ";
  if (!s.empty()) s.pop_back();
  return s;
}

}  // namespace posformer
