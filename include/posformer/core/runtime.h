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
//     (libgomp's own: spin 300000, then sleep); unset: kDefaultWaitPolicy.
// Nothing is changed (false) when the user set OMP_WAIT_POLICY or GOMP_SPINCOUNT, when
// POSFORMER_NO_REEXEC is set (the re-executed process), or for `default`. Throws Error naming a
// bad value. bench/wait_policy.sh measures the policies; bench/RESULTS.md has the numbers.
extern const char* const kDefaultWaitPolicy;
bool set_wait_policy_env();
std::string wait_policy_description();  // e.g. "OMP_WAIT_POLICY=PASSIVE" as this process runs
void set_threads(int n);                // n <= 0: all cores
int num_threads();
std::string cpu_features();  // e.g. "AVX2 FMA AVX512F ..." as detected at run time

}  // namespace posformer
