#include "posformer/core/io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "posformer/core/error.h"

namespace posformer {

namespace {

// Largest single read()/write() request; Linux caps one call near 2 GiB anyway.
constexpr size_t kMaxIoChunk = size_t{1} << 30;

std::string errno_text(int err) {
  return std::strerror(err);
}

// Closes the descriptor on scope exit unless released.
class FdGuard {
 public:
  explicit FdGuard(int fd) : fd_(fd) {}
  ~FdGuard() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }
  // Closes now and returns close()'s errno (0 on success).
  int close_now() {
    int fd = fd_;
    fd_ = -1;
    return ::close(fd) == 0 ? 0 : errno;
  }

 private:
  int fd_;
};

std::string parent_dir(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// Writes all n bytes; returns 0 or the errno of the failing write.
int write_all(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, std::min(n, kMaxIoChunk));
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (w == 0) return EIO;  // should not happen for regular files
    p += w;
    n -= static_cast<size_t>(w);
  }
  return 0;
}

}  // namespace

void atomic_write_file(const std::string& path, const void* data, size_t n) {
  PF_CHECK(!path.empty(), "[io] atomic_write_file: empty path");
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  auto fail = [&](const std::string& step, int err) -> Error {
    ::unlink(tmp.c_str());
    return Error(str("[io] cannot write '", path, "': ", step, ": ", errno_text(err)));
  };

  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    int err = errno;  // nothing was created, so there is nothing to remove
    throw Error(str("[io] cannot write '", path, "': creating temp file '", tmp,
                    "' failed: ", errno_text(err)));
  }
  FdGuard guard(fd);
  if (int err = write_all(fd, static_cast<const char*>(data), n)) throw fail("write failed", err);
  if (::fsync(fd) != 0) {
    int err = errno;
    throw fail("fsync failed", err);
  }
  if (int err = guard.close_now()) throw fail("close failed", err);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    throw fail("rename from '" + tmp + "' failed", err);
  }

  // Make the rename itself durable.
  const std::string dir = parent_dir(path);
  int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0) {
    int err = errno;
    throw Error(str("[io] wrote '", path, "' but cannot open its directory '", dir,
                    "' to fsync it: ", errno_text(err)));
  }
  FdGuard dguard(dfd);
  // EINVAL: this file system does not support fsync on directories; nothing more can be done.
  if (::fsync(dfd) != 0 && errno != EINVAL) {
    int err = errno;
    throw Error(str("[io] wrote '", path, "' but fsync of its directory '", dir,
                    "' failed: ", errno_text(err)));
  }
}

void atomic_write_file(const std::string& path, const std::string& data) {
  atomic_write_file(path, data.data(), data.size());
}

std::string read_file(const std::string& path, size_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw Error(str("[io] cannot open '", path, "' for reading: ", errno_text(err)));
  }
  FdGuard guard(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    throw Error(str("[io] cannot stat '", path, "': ", errno_text(err)));
  }
  PF_CHECK(!S_ISDIR(st.st_mode), "[io] cannot read '", path, "': it is a directory");
  auto too_large = [&](uint64_t size) {
    return Error(str("[io] cannot read '", path, "': it is ", size,
                     " bytes, larger than the limit of ", max_bytes, " bytes"));
  };

  std::string out;
  if (S_ISREG(st.st_mode) && st.st_size > 0) {
    if (static_cast<uint64_t>(st.st_size) > max_bytes) throw too_large(st.st_size);
    out.resize(static_cast<size_t>(st.st_size));
  }
  // Fill the presized buffer, then keep reading in small chunks in case the file grew (or has
  // no size, like a pipe) until EOF, enforcing the limit as we go.
  size_t got = 0;
  char chunk[64 * 1024];
  for (;;) {
    bool into_out = got < out.size();
    char* dst = into_out ? out.data() + got : chunk;
    size_t want = into_out ? std::min(out.size() - got, kMaxIoChunk) : sizeof(chunk);
    ssize_t r = ::read(fd, dst, want);
    if (r < 0) {
      int err = errno;
      if (err == EINTR) continue;
      throw Error(str("[io] error reading '", path, "': ", errno_text(err)));
    }
    if (r == 0) break;
    if (!into_out) {
      if (got + static_cast<size_t>(r) > max_bytes) throw too_large(got + static_cast<size_t>(r));
      out.append(chunk, static_cast<size_t>(r));
    }
    got += static_cast<size_t>(r);
  }
  out.resize(got);  // the file may have shrunk while we read it
  return out;
}

}  // namespace posformer
