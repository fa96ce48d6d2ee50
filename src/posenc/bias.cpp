// ALiBi and T5 relative bias: a per-head scalar added to each score (SPEC.md section 5).
#include <cmath>
#include <tuple>
#include <vector>

#include "posenc_impl.h"

namespace posformer {
namespace {

class AlibiHook final : public ScoreHook {
 public:
  AlibiHook(const AttnDesc& a, const std::vector<double>& slopes) : a_(a), slopes_(slopes) {}
  // S[t,s] += -m_h |i - j|, or -m_h (i - j) in a causal stack; i, j absolute positions.
  void add_scores(int64_t b, int64_t h, const ScoreTile& tl, float* S, int64_t ldS) const override {
    const double m = slopes_[h];
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t) {
      const int64_t i = a_.q_pos(b, t);
      float* row = S + (t - tl.t0) * ldS;
      for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s) {
        const int64_t dist = i - a_.k_pos(b, s);
        const double off =
            a_.causal ? static_cast<double>(dist) : std::fabs(static_cast<double>(dist));
        row[s - tl.s0] += static_cast<float>(-m * off);
      }
    }
  }

 private:
  AttnDesc a_;
  const std::vector<double>& slopes_;
};

class T5Hook final : public ScoreHook {
 public:
  T5Hook(const AttnDesc& a, const float* table, const PositionConfig& c, bool bidirectional,
         std::string name)
      : a_(a), table_(table), name_(std::move(name)), nb_(c.num_buckets) {
    int64_t rel_max;
    std::tie(rel_min_, rel_max) = a.rel_range();  // rel = j - i (key minus query)
    bucket_.resize(static_cast<size_t>(std::max<int64_t>(rel_max - rel_min_ + 1, 0)));
    for (size_t r = 0; r < bucket_.size(); ++r)
      bucket_[r] = t5_bucket(rel_min_ + static_cast<int64_t>(r), bidirectional, c.num_buckets,
                             c.max_distance);
  }
  void add_scores(int64_t b, int64_t h, const ScoreTile& tl, float* S, int64_t ldS) const override {
    const int64_t H = a_.H;
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t) {
      float* row = S + (t - tl.t0) * ldS;
      const int64_t base = -a_.q_pos(b, t) - rel_min_;
      for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s)
        row[s - tl.s0] += table_[bucket_[base + a_.k_pos(b, s)] * H + h];
    }
  }
  void begin_backward() override { dtab_.reset(static_cast<size_t>(nb_ * a_.H)); }
  // d table[bucket(j - i), h] += dS[t, s] (each thread into its own copy)
  void backward_scores(int64_t b, int64_t h, const ScoreTile& tl, const float* dS, int64_t lddS,
                       float*, int64_t, float*, int64_t) override {
    double* dtab = dtab_.local();
    for (int64_t t = tl.t0; t < tl.t0 + tl.rows; ++t) {
      const float* row = dS + (t - tl.t0) * lddS;
      const int64_t base = -a_.q_pos(b, t) - rel_min_;
      for (int64_t s = tl.s0; s < tl.s0 + tl.cols; ++s)
        dtab[bucket_[base + a_.k_pos(b, s)] * a_.H + h] += row[s - tl.s0];
    }
  }
  void finish_backward(ParamStore& grads) override {
    if (!dtab_.active()) return;
    const std::vector<double> sum = dtab_.total();
    float* g = grads.f32(name_);
    for (size_t i = 0; i < sum.size(); ++i) g[i] += static_cast<float>(sum[i]);
  }

 private:
  AttnDesc a_;
  const float* table_;  // [num_buckets, H]
  std::string name_;
  int64_t nb_;
  PerThreadSums<double> dtab_;
  int64_t rel_min_;
  std::vector<int64_t> bucket_;
};

}  // namespace

std::unique_ptr<ScoreHook> AlibiPosition::prepare(const ParamStore&, const AttnInputs& in) const {
  return std::make_unique<AlibiHook>(*in.desc, slopes_);
}

void T5Position::declare(std::vector<ParamSpec>& specs) const {
  specs.push_back(
      {g_.prefix + "rel_bias.weight", {c_.num_buckets, g_.H}, Init::Normal, "position", true});
}

std::unique_ptr<ScoreHook> T5Position::prepare(const ParamStore& p, const AttnInputs& in) const {
  // one table shared by every layer of the stack (T5 keeps it in layer 0)
  const std::string name = g_.prefix + "rel_bias.weight";
  return std::make_unique<T5Hook>(*in.desc, p.f32(name), c_, !g_.causal, name);
}

}  // namespace posformer
