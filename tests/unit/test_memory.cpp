// Available memory: size parsing and formatting, /proc/meminfo and cgroup (v1, v2) parsing, and
// the cgroup walk over a crafted directory tree.
#include <gtest/gtest.h>

#include <filesystem>

#include "posformer/core/error.h"
#include "posformer/core/memory.h"
#include "test_util.h"

using namespace posformer;
using pf_test::TempDir;
using pf_test::write_text;

namespace {

void expect_size_error(const std::string& text, const std::string& needle) {
  try {
    parse_byte_size(text, "--memory-limit");
    ADD_FAILURE() << "'" << text << "' was accepted";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("--memory-limit"), std::string::npos) << m;
    EXPECT_NE(m.find(needle), std::string::npos) << m;
  }
}

}  // namespace

TEST(Memory, ParseByteSize) {
  EXPECT_EQ(parse_byte_size("123", "x"), 123u);
  EXPECT_EQ(parse_byte_size("1K", "x"), 1024u);
  EXPECT_EQ(parse_byte_size("64k", "x"), 65536u);
  EXPECT_EQ(parse_byte_size("512M", "x"), 512ull << 20);
  EXPECT_EQ(parse_byte_size("1G", "x"), 1ull << 30);
  EXPECT_EQ(parse_byte_size("1g", "x"), 1ull << 30);
  EXPECT_EQ(parse_byte_size("2GiB", "x"), 2ull << 30);
  EXPECT_EQ(parse_byte_size("2GB", "x"), 2ull << 30);
  EXPECT_EQ(parse_byte_size(" 3 T ", "x"), 3ull << 40);
  EXPECT_EQ(parse_byte_size("1.5G", "x"), 3ull << 29);
  EXPECT_EQ(parse_byte_size("100B", "x"), 100u);
  EXPECT_EQ(parse_byte_size("16777215T", "x"), 16777215ull << 40);
}

TEST(Memory, ParseByteSizeRefusesWithTheFlagName) {
  expect_size_error("", "is not a size");
  expect_size_error("G", "is not a size");
  expect_size_error("-1G", "is not a size");
  expect_size_error("1..5G", "is not a size");
  expect_size_error(".", "is not a size");
  expect_size_error("abc", "is not a size");
  expect_size_error("1X", "unknown unit 'X'");
  expect_size_error("1GG", "unknown unit");
  expect_size_error("1e9", "unknown unit");
  expect_size_error("0", "less than one byte");
  expect_size_error("0.1", "less than one byte");
  expect_size_error("16777216T", "too large");
  expect_size_error("99999999999999999999999", "too large");
}

TEST(Memory, FormatBytes) {
  EXPECT_EQ(format_bytes(0), "0 bytes");
  EXPECT_EQ(format_bytes(1023), "1023 bytes");
  EXPECT_EQ(format_bytes(1536), "1.5 KiB");
  EXPECT_EQ(format_bytes(160.0 * (1ull << 30)), "160.0 GiB");
  EXPECT_EQ(format_bytes(24.0 * (1ull << 30)), "24.0 GiB");
  EXPECT_EQ(format_bytes(3.0 * (1ull << 40)), "3.0 TiB");
}

TEST(Memory, Meminfo) {
  const std::string m =
      "MemTotal:       24731708 kB\nMemFree:         1000000 kB\n"
      "MemAvailable:   23784988 kB\nBuffers:          123 kB\n";
  EXPECT_EQ(parse_meminfo_available(m), std::optional<uint64_t>(23784988ull * 1024));
  EXPECT_EQ(parse_meminfo_available("MemTotal: 1 kB\n"), std::nullopt);  // pre-3.14 kernels
  EXPECT_EQ(parse_meminfo_available("MemAvailable: lots kB\n"), std::nullopt);
  EXPECT_EQ(parse_meminfo_available("MemAvailable: 5 MB\n"), std::nullopt);
  EXPECT_EQ(parse_meminfo_available(""), std::nullopt);
}

TEST(Memory, CgroupLimitFile) {
  EXPECT_EQ(parse_cgroup_limit("max\n"), std::nullopt);
  EXPECT_EQ(parse_cgroup_limit("9223372036854771712\n"), std::nullopt);  // v1 "unlimited"
  EXPECT_EQ(parse_cgroup_limit("1073741824\n"), std::optional<uint64_t>(1ull << 30));
  EXPECT_EQ(parse_cgroup_limit(""), std::nullopt);
  EXPECT_EQ(parse_cgroup_limit("12abc"), std::nullopt);
}

TEST(Memory, ProcSelfCgroup) {
  const auto v1 =
      parse_proc_cgroup("9:name=systemd:/\n4:memory:/process_api/abc\n3:cpu,cpuacct:/x\n0::/\n");
  EXPECT_EQ(v1.v1, "/process_api/abc");
  EXPECT_EQ(v1.v2, "/");
  const auto v2 = parse_proc_cgroup("0::/user.slice/session-2.scope\n");
  EXPECT_EQ(v2.v2, "/user.slice/session-2.scope");
  EXPECT_EQ(v2.v1, "");
  EXPECT_EQ(parse_proc_cgroup("5:cpu,memory,blkio:/a/b\n").v1, "/a/b");
  EXPECT_EQ(parse_proc_cgroup("garbage\n").v2, "");
}

TEST(Memory, CgroupWalkTakesTheSmallestLimitUpToTheRoot) {
  TempDir d;
  namespace fs = std::filesystem;
  // v2: the process's own cgroup is unlimited, its parent has 2 GiB, the grandparent 4 GiB.
  fs::create_directories(d.file("a/b/c"));
  write_text(d.file("a/memory.max"), "4294967296\n");
  write_text(d.file("a/b/memory.max"), "2147483648\n");
  write_text(d.file("a/b/c/memory.max"), "max\n");
  auto lim = cgroup_memory_limit(d.path, "0::/a/b/c\n");
  ASSERT_TRUE(lim);
  EXPECT_EQ(lim->bytes, 2ull << 30);
  EXPECT_EQ(lim->source, "cgroup memory.max");
  // a cgroup below the listed ones inherits their limits; one outside has none
  lim = cgroup_memory_limit(d.path, "0::/a/b/c/missing\n");
  ASSERT_TRUE(lim);
  EXPECT_EQ(lim->bytes, 2ull << 30);
  EXPECT_FALSE(cgroup_memory_limit(d.path, "0::/elsewhere\n"));
  // v1 (memory controller under memory/), a path that does not exist below the mount (a
  // container's own cgroup mounted as the root): the root's limit applies.
  fs::create_directories(d.file("memory"));
  write_text(d.file("memory/memory.limit_in_bytes"), "1073741824\n");
  lim = cgroup_memory_limit(d.path, "4:memory:/docker/123\n");
  ASSERT_TRUE(lim);
  EXPECT_EQ(lim->bytes, 1ull << 30);
  EXPECT_EQ(lim->source, "cgroup memory.limit_in_bytes");
}

TEST(Memory, AvailableIsTheSmallerOfMeminfoAndCgroup) {
  TempDir proc, cg;
  std::filesystem::create_directories(proc.file("self"));
  write_text(proc.file("meminfo"), "MemAvailable:    2097152 kB\n");  // 2 GiB
  write_text(proc.file("self/cgroup"), "0::/job\n");
  auto a = available_memory(proc.path, cg.path);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->bytes, 2ull << 30);
  EXPECT_EQ(a->source, "MemAvailable");
  std::filesystem::create_directories(cg.file("job"));
  write_text(cg.file("job/memory.max"), "536870912\n");  // 512 MiB
  a = available_memory(proc.path, cg.path);
  ASSERT_TRUE(a);
  EXPECT_EQ(a->bytes, 512ull << 20);
  EXPECT_EQ(a->source, "cgroup memory.max");
  TempDir empty;
  EXPECT_FALSE(available_memory(empty.path, empty.path));
  // this machine: something readable, and no more than the machine has
  auto here = available_memory();
  ASSERT_TRUE(here);
  EXPECT_GT(here->bytes, 0u);
}
