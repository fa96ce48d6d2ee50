// Process-wide runtime settings the engine handles itself (see shared/peers/README.md):
//  - threads: one OpenMP pool shared by oneDNN and our kernels (set_threads);
//  - allocator: large activation buffers are kept in the heap instead of being mmapped afresh
//    (and page-faulted) on every call: mallopt(M_MMAP_MAX=0, M_TRIM_THRESHOLD=max).
// CPU features are detected at run time by Highway's dispatch and oneDNN, never by model name.
#pragma once
#include <string>

namespace posformer {

void init_runtime();
void set_threads(int n);  // n <= 0: all cores
int num_threads();
std::string cpu_features();  // e.g. "AVX2 FMA AVX512F ..." as detected at run time

}  // namespace posformer
