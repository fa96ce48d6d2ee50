// Available memory: /proc/meminfo and cgroup limits (see memory.h).
#include "posformer/core/memory.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "posformer/core/error.h"

namespace posformer {

namespace {

// Small /proc and /sys files; nullopt when missing or unreadable.
std::optional<std::string> read_small(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return std::nullopt;
  std::ostringstream os;
  os << f.rdbuf();
  if (f.bad()) return std::nullopt;
  return os.str();
}

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// Decimal digits only -> value; nullopt on anything else or overflow.
std::optional<uint64_t> parse_u64(const std::string& s) {
  if (s.empty()) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    if (__builtin_mul_overflow(v, uint64_t{10}, &v) ||
        __builtin_add_overflow(v, uint64_t(c - '0'), &v))
      return std::nullopt;
  }
  return v;
}

// The limit file of `dir` and each ancestor up to `root` (inclusive); the smallest set limit.
std::optional<uint64_t> smallest_limit(const std::filesystem::path& root, const std::string& cg,
                                       const char* file) {
  std::optional<uint64_t> best;
  std::filesystem::path rel = std::filesystem::path(cg).relative_path();
  while (true) {
    if (auto text = read_small((root / rel / file).string()))
      if (auto v = parse_cgroup_limit(*text); v && (!best || *v < *best)) best = v;
    if (rel.empty()) break;
    rel = rel.parent_path();
  }
  return best;
}

}  // namespace

uint64_t parse_byte_size(const std::string& text, const std::string& what) {
  const std::string hint =
      str("; give bytes with an optional K, M, G or T suffix (powers of 1024), e.g. ", what, " 1G");
  const std::string s = trim(text);
  size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  const std::string num = s.substr(0, i);
  std::string unit = trim(s.substr(i));
  PF_CHECK(!num.empty() && num.find_first_not_of("0123456789.") == std::string::npos &&
               std::count(num.begin(), num.end(), '.') <= 1 && num != ".",
           "[memory] ", what, ": '", text, "' is not a size", hint);
  for (char& c : unit) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  int shift = -1;
  if (unit.empty() || unit == "B") shift = 0;
  const char* units = "KMGT";
  for (int k = 0; k < 4; ++k) {
    const std::string u(1, units[k]);
    if (unit == u || unit == u + "B" || unit == u + "IB") shift = 10 * (k + 1);
  }
  PF_CHECK(shift >= 0, "[memory] ", what, ": unknown unit '", s.substr(i), "' in '", text, "'",
           hint);
  const long double v = std::strtold(num.c_str(), nullptr) * std::ldexp(1.0L, shift);
  PF_CHECK(v >= 1.0L, "[memory] ", what, ": '", text, "' is less than one byte", hint);
  PF_CHECK(v < std::ldexp(1.0L, 64), "[memory] ", what, ": '", text,
           "' is too large (2^64 bytes or more)");
  return static_cast<uint64_t>(v);
}

std::string format_bytes(double bytes) {
  if (bytes < 1024) return str(static_cast<long long>(std::llround(bytes)), " bytes");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  bytes /= 1024;
  while (bytes >= 1024 && u < 5) bytes /= 1024, ++u;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.1f %s", bytes, units[u]);
  return buf;
}

std::optional<uint64_t> parse_meminfo_available(const std::string& meminfo) {
  std::istringstream is(meminfo);
  std::string line;
  while (std::getline(is, line)) {
    if (line.rfind("MemAvailable:", 0) != 0) continue;
    std::istringstream ls(line.substr(13));
    std::string num, unit;
    ls >> num >> unit;
    auto v = parse_u64(num);
    if (!v) return std::nullopt;
    if (unit.empty()) return v;  // bytes (the field is always in kB, but be literal)
    if (unit != "kB") return std::nullopt;
    uint64_t bytes = 0;
    if (__builtin_mul_overflow(*v, uint64_t{1024}, &bytes)) return std::nullopt;
    return bytes;
  }
  return std::nullopt;
}

std::optional<uint64_t> parse_cgroup_limit(const std::string& text) {
  const std::string s = trim(text);
  if (s == "max") return std::nullopt;
  auto v = parse_u64(s);
  if (!v || *v >= (uint64_t{1} << 62)) return std::nullopt;
  return v;
}

CgroupPaths parse_proc_cgroup(const std::string& text) {
  CgroupPaths p;
  std::istringstream is(text);
  std::string line;
  while (std::getline(is, line)) {
    const size_t a = line.find(':');
    if (a == std::string::npos) continue;
    const size_t b = line.find(':', a + 1);
    if (b == std::string::npos) continue;
    const std::string id = line.substr(0, a), ctrls = line.substr(a + 1, b - a - 1),
                      path = line.substr(b + 1);
    if (id == "0" && ctrls.empty()) {
      p.v2 = path;
      continue;
    }
    std::istringstream cs(ctrls);
    std::string c;
    while (std::getline(cs, c, ','))
      if (c == "memory") p.v1 = path;
  }
  return p;
}

std::optional<MemoryLimit> cgroup_memory_limit(const std::string& cgroup_root,
                                               const std::string& proc_cgroup) {
  const CgroupPaths p = parse_proc_cgroup(proc_cgroup);
  std::optional<MemoryLimit> best;
  auto consider = [&](std::optional<uint64_t> v, const char* source) {
    if (v && (!best || *v < best->bytes)) best = MemoryLimit{*v, source};
  };
  const std::filesystem::path root(cgroup_root);
  if (!p.v2.empty()) consider(smallest_limit(root, p.v2, "memory.max"), "cgroup memory.max");
  if (!p.v1.empty())
    consider(smallest_limit(root / "memory", p.v1, "memory.limit_in_bytes"),
             "cgroup memory.limit_in_bytes");
  return best;
}

std::optional<MemoryLimit> available_memory(const std::string& proc,
                                            const std::string& cgroup_root) {
  std::optional<MemoryLimit> best;
  if (auto m = read_small(proc + "/meminfo"))
    if (auto v = parse_meminfo_available(*m)) best = MemoryLimit{*v, "MemAvailable"};
  if (auto cg = read_small(proc + "/self/cgroup"))
    if (auto lim = cgroup_memory_limit(cgroup_root, *cg);
        lim && (!best || lim->bytes < best->bytes))
      best = lim;
  return best;
}

}  // namespace posformer
