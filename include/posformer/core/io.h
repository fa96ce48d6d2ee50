// File I/O helpers with clear errors. Every failure throws a posformer::Error naming the path
// and the system error (strerror).
//
// atomic_write_file: crash-safe replacement of a whole file. The bytes go to
// `path + ".tmp.<pid>"` in the same directory (via write_file_durable), are renamed over `path`,
// and the directory is fsync'ed, so after a crash `path` holds either the old or the new
// content, never a mix. On failure the temp file is removed. Two threads of one process must
// not write the same path at the same time (they would share the temp name).
//
// write_file_durable: creates a NEW file (fails if `path` exists), writes all bytes, fsyncs
// and closes it. On failure the half-written file is removed. The directory entry is not made
// durable; call fsync_directory on the parent for that.
//
// fsync_directory: makes the entries of `dir` (creations, renames) durable. A file system that
// cannot fsync directories (EINVAL) is tolerated.
//
// read_file: the whole file as bytes; throws when it is missing, unreadable, a directory, or
// larger than max_bytes.
//
// read_file_chunks: streams the file to `on_chunk` in pieces of at most 1 MiB, for files too
// large to hold in memory at once.
#pragma once
#include <cstddef>
#include <functional>
#include <string>

namespace posformer {

void atomic_write_file(const std::string& path, const void* data, size_t n);
void atomic_write_file(const std::string& path, const std::string& data);

void write_file_durable(const std::string& path, const void* data, size_t n);
void write_file_durable(const std::string& path, const std::string& data);

void fsync_directory(const std::string& dir);

std::string read_file(const std::string& path, size_t max_bytes);

void read_file_chunks(const std::string& path,
                      const std::function<void(const char* data, size_t n)>& on_chunk);

}  // namespace posformer
