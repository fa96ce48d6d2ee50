// Counter-based random numbers shared by init, data sampling, masking and generation: one
// splitmix64 sequence per use, so every random stream is reproducible from a 64-bit state that
// checkpoints can store.
#pragma once
#include <cstdint>

namespace posformer {

// Advances s and returns the next splitmix64 output.
inline uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// The next draw of s as a double uniform in [0, 1): its top 53 bits times 2^-53.
inline double uniform01(uint64_t& s) {
  return static_cast<double>(splitmix64(s) >> 11) * 0x1.0p-53;
}

}  // namespace posformer
