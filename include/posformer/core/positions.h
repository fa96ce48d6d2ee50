// Positions as data: where each token of a batch sits, for position encodings (embed, rotate)
// and the score terms of relative schemes.
//
//   token t of sequence b (b < B, t < T) has coordinates at(b, t, 0..axes-1)
//
//   run:       ids == nullptr, one axis, at(b, t) = pos0 + t        (an ordinary sequence, or
//              the new tokens of a decoding step at pos0 = tokens already decoded)
//   explicit:  ids [B, T, axes] int32, owned by the caller            (sequences restarting at 0
//              inside a packed row, left-padded batches, 2-D patch coordinates (row, col))
//
// A view: it never owns the ids. PositionIds below owns a set and hands out views.
#pragma once
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

namespace posformer {

struct Positions {
  int64_t B = 0, T = 0, axes = 1, pos0 = 0;
  const int32_t* ids = nullptr;  // [B, T, axes] or null (a run from pos0)

  static Positions run(int64_t B, int64_t T, int64_t pos0) { return {B, T, 1, pos0, nullptr}; }
  static Positions of(int64_t B, int64_t T, int64_t axes, const int32_t* ids) {
    return {B, T, axes, 0, ids};
  }
  bool is_run() const { return ids == nullptr; }
  int64_t at(int64_t b, int64_t t, int64_t axis = 0) const {
    return ids ? ids[(b * T + t) * axes + axis] : pos0 + t;
  }
  // Smallest / largest coordinate on an axis over every token ({0, -1} when there is none).
  std::pair<int64_t, int64_t> range(int64_t axis = 0) const {
    if (B * T == 0) return {0, -1};
    if (!ids) return {pos0, pos0 + T - 1};
    int64_t lo = std::numeric_limits<int64_t>::max(), hi = std::numeric_limits<int64_t>::min();
    for (int64_t i = 0; i < B * T; ++i) {
      const int64_t v = ids[i * axes + axis];
      lo = std::min(lo, v), hi = std::max(hi, v);
    }
    return {lo, hi};
  }
};

// Owned position ids [B, T, axes] (see Positions).
struct PositionIds {
  int64_t B = 0, T = 0, axes = 1;
  std::vector<int32_t> ids;
  Positions view() const { return Positions::of(B, T, axes, ids.data()); }
};

}  // namespace posformer
