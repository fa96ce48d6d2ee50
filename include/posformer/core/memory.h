// How much memory this process may use, so that commands can refuse a model that cannot fit
// before allocating it (instead of failing after a minute, or being ended by the OOM killer).
//
// available_memory() is the smaller of
//   - MemAvailable of /proc/meminfo (what the kernel can hand out without swapping), and
//   - the cgroup memory limit of this process: cgroup v2 memory.max, cgroup v1
//     memory.limit_in_bytes, of the process's cgroup and every ancestor up to the mount root
//     ("max", or v1's near-2^63 "unlimited", means no limit).
// The parsers are separate functions so they can be tested on crafted text.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

namespace posformer {

// "1G", "512M", "64k", "1.5T", "1GiB", "123456" -> bytes. Suffixes K, M, G, T (any case,
// optionally followed by "iB" or "B") are powers of 1024; no suffix means bytes. The value must
// be positive and below 2^64. Throws Error naming `what` (e.g. "--memory-limit") otherwise.
uint64_t parse_byte_size(const std::string& text, const std::string& what);

// 123 -> "123 bytes", 1536 -> "1.5 KiB", 171798691840 -> "160.0 GiB".
std::string format_bytes(double bytes);

// MemAvailable of /proc/meminfo text, in bytes; nullopt when absent or malformed.
std::optional<uint64_t> parse_meminfo_available(const std::string& meminfo);

// A cgroup limit file (memory.max or memory.limit_in_bytes): bytes, or nullopt for no limit
// ("max", values >= 2^62 as cgroup v1 writes for unlimited) or malformed text.
std::optional<uint64_t> parse_cgroup_limit(const std::string& text);

// The memory cgroup paths of /proc/self/cgroup text: v2 is the "0::PATH" line, v1 the line
// whose controller list holds "memory". Empty when absent.
struct CgroupPaths {
  std::string v2, v1;
};
CgroupPaths parse_proc_cgroup(const std::string& text);

struct MemoryLimit {
  uint64_t bytes = 0;
  std::string source;  // "MemAvailable", "cgroup memory.max", "cgroup memory.limit_in_bytes"
};

// The smallest cgroup memory limit of the process's cgroup and its ancestors; nullopt when none
// is set. `cgroup_root` is where the hierarchies are mounted (v2 at the root, v1 under
// "memory/"); `proc_cgroup` the text of /proc/self/cgroup.
std::optional<MemoryLimit> cgroup_memory_limit(const std::string& cgroup_root,
                                               const std::string& proc_cgroup);

// min(MemAvailable, cgroup limit) of this process; nullopt when neither can be read.
// `proc` and `cgroup_root` are for tests.
std::optional<MemoryLimit> available_memory(const std::string& proc = "/proc",
                                            const std::string& cgroup_root = "/sys/fs/cgroup");

}  // namespace posformer
