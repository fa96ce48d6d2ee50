// File I/O helpers with clear errors.
//
// atomic_write_file: crash-safe replacement of a whole file. The bytes go to
// `path + ".tmp.<pid>"` in the same directory, the temp file is fsync'ed, renamed over `path`,
// and the directory is fsync'ed, so after a crash `path` holds either the old or the new
// content, never a mix. On failure the temp file is removed and a posformer::Error naming the
// path and the system error (strerror) is thrown. Two threads of one process must not write the
// same path at the same time (they would share the temp name).
//
// read_file: the whole file as bytes; throws posformer::Error naming the path when it is
// missing, unreadable, a directory, or larger than max_bytes.
#pragma once
#include <cstddef>
#include <string>

namespace posformer {

void atomic_write_file(const std::string& path, const void* data, size_t n);
void atomic_write_file(const std::string& path, const std::string& data);

std::string read_file(const std::string& path, size_t max_bytes);

}  // namespace posformer
