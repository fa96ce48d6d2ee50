// Helpers shared by the unit tests: temp directories, file writing, ParamSpecs, tensor and
// error-message checks.
#pragma once
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <random>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "posformer/core/error.h"
#include "posformer/core/tensor.h"
#include "posformer/model/params.h"

namespace pf_test {

// n normal(0, sd) floats from a fixed seed.
inline std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

// n normal(0, 1) floats drawn from g (a generator shared across a test's cases).
inline std::vector<float> randv(size_t n, std::mt19937& g) {
  std::normal_distribution<float> nd;
  std::vector<float> x(n);
  for (auto& y : x) y = nd(g);
  return x;
}

// A float32 sum of products against its double value: |got - want| <= 1e-5 * (sum_k |a_k b_k|
// + 1), the fp32 accumulation error bound with margin (mag = sum_k |a_k b_k|).
inline void expect_sum_close(float got, double want, double mag, const std::string& what) {
  ASSERT_FALSE(std::isnan(got)) << what;
  ASSERT_LE(std::fabs(got - want), 1e-5 * (mag + 1)) << what << " got " << got << " want " << want;
}

// A fresh, empty directory under the system temp dir, removed at scope exit.
struct TempDir {
  std::string path;
  explicit TempDir(const std::string& prefix = "pf_test_") {
    static int counter = 0;
    path = (std::filesystem::temp_directory_path() /
            (prefix + std::to_string(::getpid()) + "_" + std::to_string(counter++)))
               .string();
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return path + "/" + name; }
};

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// A ParamSpec with every field set (keeps -Wmissing-field-initializers quiet).
inline posformer::ParamSpec spec(const std::string& name, posformer::Shape shape,
                                 bool decay = true) {
  posformer::ParamSpec s;
  s.name = name;
  s.shape = std::move(shape);
  s.decay = decay;
  return s;
}

inline bool bit_equal(const posformer::Tensor& a, const posformer::Tensor& b) {
  return a.shape() == b.shape() && a.dtype() == b.dtype() &&
         std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

// Expects f() to throw a posformer::Error whose message contains every word.
template <class F>
void expect_error(F f, std::initializer_list<const char*> words) {
  try {
    f();
    FAIL() << "no error thrown";
  } catch (const posformer::Error& e) {
    std::string msg = e.what();
    for (const char* w : words) EXPECT_NE(msg.find(w), std::string::npos) << "message: " << msg;
  }
}

}  // namespace pf_test
