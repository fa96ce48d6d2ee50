// Process-wide runtime settings the engine handles itself (see shared/peers/README.md):
//  - threads: one OpenMP pool shared by oneDNN and our kernels (set_threads);
//  - allocator: large activation buffers are kept in the heap instead of being mmapped afresh
//    (and page-faulted) on every call: mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=max).
// CPU features are detected at run time by Highway's dispatch and oneDNN, never by model name.
#pragma once
#include <string>

namespace posformer {

void init_runtime();

// OpenMP wait policy (libgomp reads it once, at load time). Before anything else, the posformer
// programs call this and, when it returns true, re-execute themselves so libgomp sees it:
//   POSFORMER_WAIT_POLICY = passive (OMP_WAIT_POLICY=PASSIVE: idle workers sleep at once),
//     active (spin), spin=N (GOMP_SPINCOUNT=N: spin N iterations, then sleep), default
//     (libgomp's own: spin 300000, then sleep), auto; unset: kDefaultWaitPolicy ("auto").
//   auto: spin=100000 when the CPUs are free for this process's threads (other runnable tasks,
//     /proc/stat procs_running minus this process, mean of 5 samples 1 ms apart, + threads
//     <= CPUs + 0.25), else passive: spinning pays 4-18% on an idle machine and costs 1.5-4.8x
//     when other jobs want the CPUs (bench/RESULTS.md section 4). The choice and its reason are
//     in POSFORMER_WAIT_AUTO and wait_policy_description().
// Nothing is changed (false) when the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT, when
// POSFORMER_NO_REEXEC is set (the re-executed process), or for `default`; nor when the user asked
// libgomp to bind threads (OMP_PROC_BIND other than false, OMP_PLACES, GOMP_CPU_AFFINITY): libgomp
// pins the initial thread to its first place when it loads, and a re-executed process would
// inherit that one-CPU mask, all its threads on one CPU. Throws Error naming a
// bad value. bench/wait_policy.sh measures the policies; bench/RESULTS.md has the numbers.
extern const char* const kDefaultWaitPolicy;
bool set_wait_policy_env();
// auto's rule: the policy for `others_running` other runnable tasks (< 0: unknown -> passive).
std::string auto_wait_policy(double others_running, int cpus, int threads);
// procs_running from the text of /proc/stat (-1 when absent or malformed).
int procs_running(const std::string& proc_stat);
std::string wait_policy_description();  // e.g. "OMP_WAIT_POLICY=PASSIVE" as this process runs
void set_threads(int n);                // n <= 0: all cores
int num_threads();
std::string cpu_features();  // e.g. "AVX2 FMA AVX512F ..." as detected at run time

}  // namespace posformer
