// Training checkpoints: round trip, pruning, skipping incomplete / corrupt / temp directories,
// and survival of kill -9 at random moments during saves.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <random>
#include <thread>

#include "posformer/core/error.h"
#include "posformer/train/checkpoint.h"
#include "test_util.h"

using namespace posformer;
namespace fs = std::filesystem;

using pf_test::bit_equal;
using pf_test::expect_error;
using pf_test::spec;

namespace {

class CheckpointTest : public testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "pf_ckpt_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    root_ = tmpl;
    run_ = root_ + "/run";
  }
  void TearDown() override { fs::remove_all(root_); }

  std::string root_, run_;
};

std::vector<ParamSpec> specs(int64_t n = 37) {
  return {spec("embed.weight", {n, 3}), spec("final_norm.weight", {3}, false)};
}

// Params and optimizer state whose every value is derived from `step`.
ParamStore params_for(int64_t step, int64_t n = 37) {
  ParamStore p;
  for (const ParamSpec& s : specs(n)) {
    Tensor t(s.shape);
    float* d = t.data<float>();
    for (int64_t i = 0; i < t.numel(); ++i) d[i] = static_cast<float>(step) + 0.001f * i;
    p.add(s.name, t);
  }
  return p;
}

void set_opt_state(AdamW& opt, int64_t step) {
  std::map<std::string, Tensor> st;
  for (const auto& [name, t] : opt.state_tensors()) {
    Tensor c(t.shape());
    c.fill(name[0] == 'm' ? static_cast<float>(step) : static_cast<float>(2 * step));
    st.emplace(name, c);
  }
  opt.load_state(st, step);
}

TrainState state_for(int64_t step) {
  TrainState st;
  st.step = step;
  st.rng_state = "mt19937 " + std::to_string(step * 7);
  st.data_state = "pos=" + std::to_string(step * 100);
  st.extra = {{"step", step}, {"config", {{"lr", 3e-4}, {"name", "tiny"}}}};
  return st;
}

std::string save(const std::string& run, int64_t step, int keep_last,
                 std::vector<std::string>* warnings = nullptr, int64_t n = 37) {
  AdamW opt(specs(n), AdamWConfig{});
  set_opt_state(opt, step);
  return save_checkpoint(run, state_for(step), params_for(step, n), opt, keep_last, warnings);
}

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

bool any_contains(const std::vector<std::string>& v, std::initializer_list<const char*> words) {
  for (const std::string& s : v) {
    bool all = true;
    for (const char* w : words) all = all && s.find(w) != std::string::npos;
    if (all) return true;
  }
  return false;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += x + "\n";
  return s;
}

// Checks that `dir` holds exactly the checkpoint save(step) wrote.
void expect_checkpoint_of(const std::string& dir, int64_t step, int64_t n = 37) {
  LoadedCheckpoint ck = load_checkpoint(dir);
  EXPECT_EQ(ck.state.step, step);
  EXPECT_EQ(ck.optimizer_steps, step);
  EXPECT_EQ(ck.state.rng_state, state_for(step).rng_state);
  EXPECT_EQ(ck.state.data_state, state_for(step).data_state);
  EXPECT_EQ(ck.state.extra, state_for(step).extra);
  ParamStore want = params_for(step, n);
  ASSERT_EQ(ck.params.size(), want.all().size());
  for (const auto& [name, t] : want.all()) EXPECT_TRUE(bit_equal(ck.params.at(name), t)) << name;
  AdamW opt(specs(n), AdamWConfig{});
  opt.load_state(ck.optimizer, ck.optimizer_steps);
  AdamW ref(specs(n), AdamWConfig{});
  set_opt_state(ref, step);
  for (const auto& [name, t] : ref.state_tensors())
    EXPECT_TRUE(bit_equal(opt.state_tensors().at(name), t)) << name;
}

void flip_byte(const std::string& path, std::streamoff pos_from_end) {
  std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(-pos_from_end, std::ios::end);
  char c;
  f.get(c);
  f.seekp(-pos_from_end, std::ios::end);
  f.put(static_cast<char>(c ^ 0x10));
}

}  // namespace

TEST_F(CheckpointTest, RoundTrip) {
  EXPECT_EQ(latest_checkpoint(run_), "");  // nothing yet (run dir does not even exist)
  const std::string dir = save(run_, 123, 3);
  EXPECT_EQ(dir, run_ + "/checkpoints/step-000000123");
  EXPECT_EQ(entries(dir), (std::vector<std::string>{"COMPLETE", "model.safetensors",
                                                    "optimizer.safetensors", "state.json"}));
  std::vector<std::string> warnings;
  EXPECT_EQ(latest_checkpoint(run_, &warnings), dir);
  EXPECT_TRUE(warnings.empty()) << joined(warnings);
  expect_checkpoint_of(dir, 123);
}

TEST_F(CheckpointTest, ResumedOptimizerContinuesBitIdentically) {
  std::vector<ParamSpec> sp = specs();
  ParamStore pa = params_for(0), grads;
  for (const ParamSpec& s : sp) {
    Tensor g(s.shape);
    g.fill(0.25f);
    grads.add(s.name, g);
  }
  AdamW a(sp, AdamWConfig{});
  for (int i = 0; i < 3; ++i) a.step(pa, grads, 1e-2);
  TrainState st;
  st.step = 3;
  const std::string dir = save_checkpoint(run_, st, pa, a, 2);
  LoadedCheckpoint ck = load_checkpoint(dir);
  ParamStore pb;
  for (auto& [name, t] : ck.params) pb.add(name, t);
  AdamW b(sp, AdamWConfig{});
  b.load_state(ck.optimizer, ck.optimizer_steps);
  for (int i = 0; i < 3; ++i) {
    a.step(pa, grads, 1e-2);
    b.step(pb, grads, 1e-2);
  }
  for (const ParamSpec& s : sp) EXPECT_TRUE(bit_equal(pa.get(s.name), pb.get(s.name)));
}

TEST_F(CheckpointTest, KeepLastPrunesOldest) {
  for (int64_t s = 1; s <= 5; ++s) save(run_, s * 10, 2);
  EXPECT_EQ(entries(run_ + "/checkpoints"),
            (std::vector<std::string>{"step-000000040", "step-000000050"}));
  EXPECT_EQ(latest_checkpoint(run_), run_ + "/checkpoints/step-000000050");
}

TEST_F(CheckpointTest, KeepLastZeroKeepsAll) {
  for (int64_t s = 1; s <= 4; ++s) save(run_, s, 0);
  EXPECT_EQ(entries(run_ + "/checkpoints").size(), 4u);
}

TEST_F(CheckpointTest, ResaveOfSameStepReplaces) {
  save(run_, 5, 3);
  save(run_, 6, 3);
  const std::string dir = save(run_, 5, 3);  // e.g. re-run after resuming from 4
  EXPECT_EQ(entries(run_ + "/checkpoints"),
            (std::vector<std::string>{"step-000000005", "step-000000006"}));
  expect_checkpoint_of(dir, 5);
}

TEST_F(CheckpointTest, JustWrittenIsNeverPruned) {
  // Resuming from 10 because 20 was corrupt: with keep_last 1 the new 15 must survive.
  save(run_, 10, 5);
  const std::string d20 = save(run_, 20, 5);
  flip_byte(d20 + "/model.safetensors", 1);
  const std::string d15 = save(run_, 15, 1);
  EXPECT_TRUE(fs::exists(d15));
  EXPECT_FALSE(fs::exists(run_ + "/checkpoints/step-000000010"));
  std::vector<std::string> warnings;
  EXPECT_EQ(latest_checkpoint(run_, &warnings), d15);
  EXPECT_TRUE(any_contains(warnings, {"step-000000020", "checksum"})) << joined(warnings);
}

TEST_F(CheckpointTest, IncompleteIsSkippedAndPruned) {
  const std::string d1 = save(run_, 1, 5);
  const std::string d2 = save(run_, 2, 5);
  fs::remove(d2 + "/COMPLETE");  // as if killed between the rename and the marker
  std::vector<std::string> warnings;
  EXPECT_EQ(latest_checkpoint(run_, &warnings), d1);
  EXPECT_TRUE(any_contains(warnings, {"step-000000002", "COMPLETE"})) << joined(warnings);
  expect_error([&] { load_checkpoint(d2); }, {"step-000000002", "COMPLETE"});
  save(run_, 3, 5);
  EXPECT_FALSE(fs::exists(d2));  // incomplete directories are garbage
  EXPECT_TRUE(fs::exists(d1));
}

TEST_F(CheckpointTest, TruncatedModelDetected) {
  const std::string d1 = save(run_, 1, 5);
  const std::string d2 = save(run_, 2, 5);
  const std::string model = d2 + "/model.safetensors";
  fs::resize_file(model, fs::file_size(model) / 2);
  std::vector<std::string> warnings;
  EXPECT_EQ(latest_checkpoint(run_, &warnings), d1);
  EXPECT_TRUE(any_contains(warnings, {"step-000000002", "model.safetensors", "truncated"}))
      << joined(warnings);
  expect_error([&] { load_checkpoint(d2); }, {"step-000000002", "model.safetensors", "truncated"});
}

TEST_F(CheckpointTest, FlippedByteDetected) {
  const std::string d1 = save(run_, 1, 5);
  const std::string d2 = save(run_, 2, 5);
  flip_byte(d2 + "/optimizer.safetensors", 5);  // inside the tensor data
  std::vector<std::string> warnings;
  EXPECT_EQ(latest_checkpoint(run_, &warnings), d1);
  EXPECT_TRUE(any_contains(warnings, {"optimizer.safetensors", "checksum"})) << joined(warnings);
  expect_error([&] { load_checkpoint(d2); }, {"optimizer.safetensors", "checksum mismatch"});
}

TEST_F(CheckpointTest, CorruptStateJsonDetected) {
  const std::string d1 = save(run_, 1, 5);
  const std::string d2 = save(run_, 2, 5);
  flip_byte(d2 + "/state.json", 10);
  std::vector<std::string> warnings;
  EXPECT_EQ(latest_checkpoint(run_, &warnings), d1);
  EXPECT_TRUE(any_contains(warnings, {"state.json", "checksum"})) << joined(warnings);
  fs::remove(d1 + "/optimizer.safetensors");
  warnings.clear();
  EXPECT_EQ(latest_checkpoint(run_, &warnings), "");
  EXPECT_TRUE(any_contains(warnings, {"step-000000001", "optimizer.safetensors", "missing"}))
      << joined(warnings);
}

TEST_F(CheckpointTest, StaleTempDirsIgnoredThenRemoved) {
  const std::string d1 = save(run_, 1, 5);
  // A complete-looking temp dir of a killed save, and a half-deleted trash dir.
  const std::string ck = run_ + "/checkpoints";
  fs::copy(d1, ck + "/step-000000009.tmp.999999");
  fs::create_directory(ck + "/step-000000008.trash.999999");
  std::ofstream(ck + "/step-000000008.trash.999999/model.safetensors") << "junk";
  std::vector<std::string> warnings;
  EXPECT_EQ(latest_checkpoint(run_, &warnings), d1);
  EXPECT_TRUE(warnings.empty()) << joined(warnings);
  save(run_, 2, 5);
  EXPECT_EQ(entries(ck), (std::vector<std::string>{"step-000000001", "step-000000002"}));
}

TEST_F(CheckpointTest, RemoveScratchDeletesOnlyTempAndTrashDirs) {
  const std::string d1 = save(run_, 1, 5);
  const std::string ck = run_ + "/checkpoints";
  fs::copy(d1, ck + "/step-000000009.tmp.999999");
  fs::create_directory(ck + "/step-000000001.trash.999999");
  std::ofstream(ck + "/step-000000001.trash.999999/model.safetensors") << "junk";
  fs::create_directory(ck + "/notes");  // not ours: left alone
  std::vector<std::string> warnings;
  remove_scratch(run_, &warnings);
  EXPECT_TRUE(warnings.empty()) << joined(warnings);
  EXPECT_EQ(entries(ck), (std::vector<std::string>{"notes", "step-000000001"}));
  expect_checkpoint_of(d1, 1);
  remove_scratch(run_ + "/no-such-run", &warnings);  // nothing there: nothing to do
  EXPECT_TRUE(warnings.empty()) << joined(warnings);
}

TEST_F(CheckpointTest, BadInputsRefusedBeforeTouchingDisk) {
  AdamW opt(specs(), AdamWConfig{});
  TrainState st = state_for(1);
  st.rng_state = std::string("\xff\xfe", 2);
  expect_error([&] { save_checkpoint(run_, st, params_for(1), opt, 2); }, {"UTF-8"});
  st = state_for(1);
  st.step = -1;
  expect_error([&] { save_checkpoint(run_, st, params_for(1), opt, 2); }, {"step", "-1"});
  EXPECT_FALSE(fs::exists(run_));
  expect_error([&] { load_checkpoint(root_ + "/nope"); }, {"nope", "not a directory"});
}

// A child process saves checkpoint after checkpoint (keep_last 2) and is killed with SIGKILL at
// a random moment; every time, the newest complete checkpoint must load and hold exactly what
// was saved for its step, and progress must never go backwards.
TEST_F(CheckpointTest, SurvivesKillNineAtRandomMoments) {
  constexpr int64_t kN = 6000;  // ~72 KB model + ~144 KB optimizer per checkpoint
  // Kill delays span a few save durations (fsync speed varies a lot between disks).
  int64_t save_us = 1000;
  for (int i = 0; i < 3; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    save(root_ + "/calibrate", i + 1, 1, nullptr, kN);
    auto us =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0)
            .count();
    save_us = std::max<int64_t>(save_us, us);
  }
  std::mt19937 rng(12345);
  std::uniform_int_distribution<int64_t> delay_us(0, 4 * save_us);
  int64_t last_step = 0;
  int killed_mid_run = 0, mid_write = 0;
  for (int trial = 0; trial < 24; ++trial) {
    pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      // Child: no gtest, no OpenMP regions (tensors are below the threading threshold).
      try {
        int64_t step = 1;
        std::string latest = latest_checkpoint(run_);
        if (!latest.empty()) step = load_checkpoint(latest).state.step + 1;
        for (;; ++step) save(run_, step, 2, nullptr, kN);
      } catch (...) {
        ::_exit(3);
      }
    }
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us(rng)));
    ::kill(pid, SIGKILL);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status)) << "child exited early, status " << status;
    killed_mid_run += WTERMSIG(status) == SIGKILL;

    if (fs::exists(run_ + "/checkpoints"))
      for (const std::string& name : entries(run_ + "/checkpoints"))
        mid_write += name.find(".tmp.") != std::string::npos;
    std::vector<std::string> warnings;
    const std::string latest = latest_checkpoint(run_, &warnings);
    if (latest.empty()) {
      EXPECT_EQ(last_step, 0) << "lost every checkpoint after trial " << trial;
      continue;
    }
    LoadedCheckpoint ck = load_checkpoint(latest);
    EXPECT_GE(ck.state.step, last_step) << "went backwards in trial " << trial;
    last_step = ck.state.step;
    expect_checkpoint_of(latest, last_step, kN);
  }
  EXPECT_EQ(killed_mid_run, 24);
  std::cout << "[ info     ] " << mid_write << " of 24 kills left a half-written temp dir; "
            << "reached step " << last_step << " (one save takes ~" << save_us / 1000 << " ms)\n";
  EXPECT_GT(last_step, 0);

  // The next ordinary save cleans up whatever the kills left behind.
  save(run_, last_step + 1, 2, nullptr, kN);
  for (const std::string& name : entries(run_ + "/checkpoints")) {
    EXPECT_EQ(name.find(".tmp."), std::string::npos) << name;
    EXPECT_EQ(name.find(".trash."), std::string::npos) << name;
  }
  EXPECT_LE(entries(run_ + "/checkpoints").size(), 2u);
  expect_checkpoint_of(latest_checkpoint(run_), last_step + 1, kN);
}
