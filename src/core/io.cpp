#include "posformer/core/io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <vector>

#include "posformer/core/error.h"

namespace posformer {

namespace {

// Largest single read()/write() request; Linux caps one call near 2 GiB anyway.
constexpr size_t kMaxIoChunk = size_t{1} << 30;
// Buffer size of read_file_chunks.
constexpr size_t kStreamChunk = size_t{1} << 20;

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

// Creates `file` (which must not exist), writes all n bytes, fsyncs and closes it. On failure
// removes it and throws "[io] cannot write '<target>': <step> failed: <strerror>", where
// `target` is the path being written: `file` itself, or the path a temp `file` will replace.
void write_new_file(const std::string& file, const void* data, size_t n,
                    const std::string& target) {
  auto error = [&](const std::string& step, int err) {
    return Error(str("[io] cannot write '", target, "': ", step, " failed: ", errno_text(err)));
  };
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    int err = errno;  // nothing was created (or it existed already), so nothing to remove
    throw error(file == target ? std::string("creating it") : "creating temp file '" + file + "'",
                err);
  }
  FdGuard guard(fd);
  auto fail = [&](const std::string& step, int err) {
    ::unlink(file.c_str());
    return error(step, err);
  };
  if (int err = write_all(fd, static_cast<const char*>(data), n)) throw fail("write", err);
  if (::fsync(fd) != 0) {
    int err = errno;
    throw fail("fsync", err);
  }
  if (int err = guard.close_now()) throw fail("close", err);
}

// fsyncs the directory `dir`; errors read "[io] <lead>cannot open directory ..." or
// "[io] <lead>fsync of directory ... failed".
void fsync_dir(const std::string& dir, const std::string& lead) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw Error(
        str("[io] ", lead, "cannot open directory '", dir, "' to fsync it: ", errno_text(err)));
  }
  FdGuard guard(fd);
  // EINVAL: this file system does not support fsync on directories; nothing more can be done.
  if (::fsync(fd) != 0 && errno != EINVAL) {
    int err = errno;
    throw Error(str("[io] ", lead, "fsync of directory '", dir, "' failed: ", errno_text(err)));
  }
}

int open_for_reading(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    throw Error(str("[io] cannot open '", path, "' for reading: ", errno_text(err)));
  }
  return fd;
}

// One read() of up to `want` bytes, retried on EINTR; returns the byte count (0 at EOF).
size_t read_some(int fd, char* dst, size_t want, const std::string& path) {
  for (;;) {
    ssize_t r = ::read(fd, dst, std::min(want, kMaxIoChunk));
    if (r >= 0) return static_cast<size_t>(r);
    int err = errno;
    if (err != EINTR) throw Error(str("[io] error reading '", path, "': ", errno_text(err)));
  }
}

}  // namespace

void write_file_durable(const std::string& path, const void* data, size_t n) {
  PF_CHECK(!path.empty(), "[io] write_file_durable: empty path");
  write_new_file(path, data, n, path);
}

void write_file_durable(const std::string& path, const std::string& data) {
  write_file_durable(path, data.data(), data.size());
}

void fsync_directory(const std::string& dir) {
  fsync_dir(dir, "");
}

void atomic_write_file(const std::string& path, const void* data, size_t n) {
  PF_CHECK(!path.empty(), "[io] atomic_write_file: empty path");
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  ::unlink(tmp.c_str());  // a stale temp left by a crashed process that had our pid
  write_new_file(tmp, data, n, path);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw Error(
        str("[io] cannot write '", path, "': rename from '", tmp, "' failed: ", errno_text(err)));
  }
  // Make the rename itself durable.
  fsync_dir(parent_dir(path), str("wrote '", path, "' but "));
}

void atomic_write_file(const std::string& path, const std::string& data) {
  atomic_write_file(path, data.data(), data.size());
}

std::string read_file(const std::string& path, size_t max_bytes) {
  FdGuard guard(open_for_reading(path));
  const int fd = guard.get();
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
    size_t want = into_out ? out.size() - got : sizeof(chunk);
    size_t r = read_some(fd, dst, want, path);
    if (r == 0) break;
    if (!into_out) {
      if (got + r > max_bytes) throw too_large(got + r);
      out.append(chunk, r);
    }
    got += r;
  }
  out.resize(got);  // the file may have shrunk while we read it
  return out;
}

void read_file_chunks(const std::string& path,
                      const std::function<void(const char* data, size_t n)>& on_chunk) {
  FdGuard guard(open_for_reading(path));
  std::vector<char> buf(kStreamChunk);
  while (size_t r = read_some(guard.get(), buf.data(), buf.size(), path)) on_chunk(buf.data(), r);
}

}  // namespace posformer
