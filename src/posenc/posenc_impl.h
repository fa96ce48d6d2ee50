// Concrete position encodings (one .cpp each); see include/posformer/posenc/position_encoding.h.
#pragma once
#include <omp.h>

#include <vector>

#include "posformer/ops/rope.h"
#include "posformer/posenc/position_encoding.h"

namespace posformer {

// Gradient sums of a score hook. A hook's backward runs inside attention_backward's parallel
// loop over (batch, kv head), so one head's slice of a shared table is reached by several
// threads (one per batch row): each thread sums into its own copy (made on first use), and
// reduce() adds the copies in thread order (the loop is statically scheduled: reproducible).
template <class T>
class PerThreadSums {
 public:
  void reset(size_t n) {
    n_ = n;
    bufs_.assign(static_cast<size_t>(omp_get_max_threads()), {});
  }
  bool active() const { return !bufs_.empty(); }
  T* local() {
    std::vector<T>& b = bufs_.at(static_cast<size_t>(omp_get_thread_num()));
    if (b.empty()) b.assign(n_, T(0));
    return b.data();
  }
  // out[i] += sum over threads of their copies' [i]
  template <class U>
  void reduce_into(U* out) const {
    for (const auto& b : bufs_)
      for (size_t i = 0; i < b.size(); ++i) out[i] += static_cast<U>(b[i]);
  }
  std::vector<T> total() const {
    std::vector<T> t(n_, T(0));
    reduce_into(t.data());
    return t;
  }

 private:
  size_t n_ = 0;
  std::vector<std::vector<T>> bufs_;
};

inline std::string layer_name(const StackGeom& g, int64_t l, const std::string& rest) {
  return g.prefix + "layers." + std::to_string(l) + "." + rest;
}

// 2-D schemes for ViT patches (vision.cpp, posenc/vision.h).
std::unique_ptr<PositionEncoding> make_rope_2d(const PositionConfig& c, const StackGeom& g);
std::unique_ptr<PositionEncoding> make_sincos_2d(const StackGeom& g);
std::unique_ptr<PositionEncoding> make_learned_2d(const PositionConfig& c, const StackGeom& g);

class NoPosition final : public PositionEncoding {
 public:
  std::string name() const override { return "none"; }
};

class LearnedPosition final : public PositionEncoding {
 public:
  explicit LearnedPosition(const StackGeom& g) : g_(g) {}
  std::string name() const override { return "learned"; }
  void declare(std::vector<ParamSpec>& specs) const override;
  void embed(const ParamStore& p, float* x, const Positions& pos) const override;
  void embed_backward(const float* dx, const Positions& pos, ParamStore& grads) const override;
  int64_t max_position() const override { return g_.max_len - 1; }

 private:
  StackGeom g_;
};

class SinusoidalPosition final : public PositionEncoding {
 public:
  SinusoidalPosition(const StackGeom& g, bool half) : g_(g), half_(half) {}
  std::string name() const override { return half_ ? "sinusoidal_half" : "sinusoidal"; }
  void embed(const ParamStore& p, float* x, const Positions& pos) const override;

 private:
  StackGeom g_;
  bool half_;
};

class RopePosition final : public PositionEncoding {
 public:
  RopePosition(const PositionConfig& c, const StackGeom& g);
  std::string name() const override { return "rope"; }
  bool rotary() const override { return true; }
  void rotate(float* x, int64_t n_heads, int64_t ld, const Positions& pos) const override;
  void rotate_backward(float* dx, int64_t n_heads, int64_t ld, const Positions& pos) const override;
  bool length_dependent() const override { return ops::rope_length_dependent(scaling_); }
  void rerotate(float* x, int64_t n_heads, int64_t ld, const Positions& pos, int64_t from_len,
                int64_t to_len) const override;
  // The frequencies (and table scale) at current length cur_len (largest position + 1).
  ops::RopeFreqs frequencies(int64_t cur_len) const;

 private:
  void apply(float* x, int64_t n_heads, int64_t ld, const Positions& pos, float sign,
             const ops::RopeFreqs& f) const;
  StackGeom g_;
  int64_t R_;
  ops::RopeLayout layout_;
  double base_ = 10000.0;
  ops::RopeScaling scaling_;
  ops::RopeFreqs freqs_;  // at lengths <= L0 (every length unless length_dependent)
};

class AlibiPosition final : public PositionEncoding {
 public:
  explicit AlibiPosition(const StackGeom& g) : g_(g), slopes_(alibi_slopes(g.H)) {}
  std::string name() const override { return "alibi"; }
  std::unique_ptr<ScoreHook> prepare(const ParamStore& p, const AttnInputs& in) const override;
  bool adds_scores() const override { return true; }

 private:
  StackGeom g_;
  std::vector<double> slopes_;
};

class T5Position final : public PositionEncoding {
 public:
  T5Position(const PositionConfig& c, const StackGeom& g) : c_(c), g_(g) {}
  std::string name() const override { return "t5"; }
  void declare(std::vector<ParamSpec>& specs) const override;
  std::unique_ptr<ScoreHook> prepare(const ParamStore& p, const AttnInputs& in) const override;
  bool adds_scores() const override { return true; }

 private:
  PositionConfig c_;
  StackGeom g_;
};

class ShawPosition final : public PositionEncoding {
 public:
  ShawPosition(const PositionConfig& c, const StackGeom& g) : c_(c), g_(g) {}
  std::string name() const override { return "shaw"; }
  bool adds_values() const override { return true; }
  void declare(std::vector<ParamSpec>& specs) const override;
  std::unique_ptr<ScoreHook> prepare(const ParamStore& p, const AttnInputs& in) const override;
  bool adds_scores() const override { return true; }

 private:
  PositionConfig c_;
  StackGeom g_;
};

class XlPosition final : public PositionEncoding {
 public:
  explicit XlPosition(const StackGeom& g) : g_(g) {}
  std::string name() const override { return "xl"; }
  void declare(std::vector<ParamSpec>& specs) const override;
  std::unique_ptr<ScoreHook> prepare(const ParamStore& p, const AttnInputs& in) const override;
  bool adds_scores() const override { return true; }

 private:
  StackGeom g_;
};

class DebertaPosition final : public PositionEncoding {
 public:
  DebertaPosition(const PositionConfig& c, const StackGeom& g) : c_(c), g_(g) {}
  std::string name() const override { return "deberta"; }
  void declare(std::vector<ParamSpec>& specs) const override;
  std::unique_ptr<ScoreHook> prepare(const ParamStore& p, const AttnInputs& in) const override;
  bool adds_scores() const override { return true; }
  float default_scale(int64_t D) const override;

 private:
  PositionConfig c_;
  StackGeom g_;
};

}  // namespace posformer
