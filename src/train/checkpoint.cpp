// Crash-safe training checkpoints: temp dir + fsync + rename + COMPLETE marker, FNV-1a checksums.
#include "posformer/train/checkpoint.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <optional>
#include <string_view>
#include <system_error>
#include <utility>

#include "posformer/core/error.h"
#include "posformer/core/io.h"
#include "posformer/model/safetensors.h"

namespace posformer {

namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kFormat = "posformer-train-checkpoint";
constexpr int kFormatVersion = 1;
constexpr const char* kModelFile = "model.safetensors";
constexpr const char* kOptFile = "optimizer.safetensors";
constexpr const char* kStateFile = "state.json";
constexpr const char* kMarker = "COMPLETE";
constexpr size_t kMaxTensorFileBytes = size_t{64} << 30;
constexpr size_t kMaxJsonBytes = size_t{256} << 20;

std::string hex64(uint64_t h) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

std::string join(const std::string& dir, const std::string& name) {
  return dir + "/" + name;
}

// Runs an io-layer call and re-tags its "[io] ..." error as a "[checkpoint] ..." one.
template <class F>
void checkpoint_io(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    std::string_view msg = e.what();
    constexpr std::string_view kIoTag = "[io] ";
    if (msg.substr(0, kIoTag.size()) == kIoTag) msg.remove_prefix(kIoTag.size());
    throw Error(str("[checkpoint] ", msg));
  }
}

// Creates `path` (which must not exist), writes all bytes, fsyncs and closes it.
void write_synced(const std::string& path, const std::string& data) {
  checkpoint_io([&] { write_file_durable(path, data); });
}

void fsync_dir(const std::string& dir) {
  checkpoint_io([&] { fsync_directory(dir); });
}

std::string parent_of(const std::string& path) {
  fs::path p = fs::path(path).parent_path();
  return p.empty() ? "." : p.string();
}

// mkdir -p that makes each created directory durable by fsyncing its parent.
void make_dirs(const std::string& dir) {
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0) {
    PF_CHECK(S_ISDIR(st.st_mode), "[checkpoint] '", dir, "' exists and is not a directory");
    return;
  }
  const std::string parent = parent_of(dir);
  if (parent != dir) make_dirs(parent);
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) {
    int e = errno;
    throw Error(str("[checkpoint] cannot create directory '", dir, "': ", std::strerror(e)));
  }
  fsync_dir(parent);
}

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%09lld", static_cast<long long>(step));
  return buf;
}

// "step-<digits>" -> step; anything else (temp, trash, other files) -> nullopt.
std::optional<int64_t> parse_step_dir_name(const std::string& name) {
  if (name.rfind("step-", 0) != 0) return std::nullopt;
  const std::string digits = name.substr(5);
  if (digits.empty() || digits.size() > 18) return std::nullopt;
  int64_t v = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

bool is_scratch_name(const std::string& name) {
  return name.rfind("step-", 0) == 0 &&
         (name.find(".tmp.") != std::string::npos || name.find(".trash.") != std::string::npos);
}

bool is_regular_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// Streams a file through FNV-1a; returns (size, hash).
std::pair<uint64_t, uint64_t> digest_file(const std::string& path) {
  uint64_t size = 0, h = 0xcbf29ce484222325ull;
  read_file_chunks(path, [&](const char* data, size_t n) {
    h = fnv1a64(data, n, h);
    size += n;
  });
  return {size, h};
}

json file_record(const std::string& bytes) {
  return json{{"bytes", bytes.size()}, {"fnv1a64", hex64(fnv1a64(bytes.data(), bytes.size()))}};
}

// Compares (size, hash) with a {"bytes", "fnv1a64"} record; throws Error (no prefix) on mismatch.
void check_record(const json& rec, const std::string& file, uint64_t size, uint64_t hash) {
  if (!rec.is_object() || !rec.contains("bytes") || !rec["bytes"].is_number_unsigned() ||
      !rec.contains("fnv1a64") || !rec["fnv1a64"].is_string())
    throw Error(str("malformed checksum record for ", file));
  const uint64_t want = rec["bytes"].get<uint64_t>();
  if (size != want)
    throw Error(str(file, " is ", size < want ? "truncated" : "longer than written", ": expected ",
                    want, " bytes, found ", size));
  const std::string got = hex64(hash), expect = rec["fnv1a64"].get<std::string>();
  if (got != expect)
    throw Error(
        str(file, " is corrupt: checksum mismatch (fnv1a64 expected ", expect, ", got ", got, ")"));
}

json parse_json(const std::string& bytes, const std::string& file) {
  json j = json::parse(bytes, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) throw Error(str(file, " is not a JSON object"));
  return j;
}

// COMPLETE -> verified state.json. Throws Error (message without the directory prefix).
json read_verified_state(const std::string& dir) {
  const std::string marker_path = join(dir, kMarker);
  if (!is_regular_file(marker_path)) throw Error("no COMPLETE marker (the save was interrupted)");
  json marker = parse_json(read_file(marker_path, kMaxJsonBytes), kMarker);
  if (!marker.contains(kStateFile)) throw Error("COMPLETE has no state.json record");
  const std::string state_path = join(dir, kStateFile);
  if (!is_regular_file(state_path)) throw Error("state.json is missing");
  const std::string bytes = read_file(state_path, kMaxJsonBytes);
  check_record(marker[kStateFile], kStateFile, bytes.size(), fnv1a64(bytes.data(), bytes.size()));
  json state = parse_json(bytes, kStateFile);
  if (!state.contains("format") || state["format"] != kFormat)
    throw Error(str("state.json is not a ", kFormat, " file"));
  if (!state.contains("format_version") || state["format_version"] != kFormatVersion)
    throw Error(str("state.json has unsupported format_version ",
                    state.value("format_version", json()).dump(), " (expected ", kFormatVersion,
                    ")"));
  if (!state.contains("files") || !state["files"].is_object())
    throw Error("state.json has no files object");
  for (const char* f : {kModelFile, kOptFile})
    if (!state["files"].contains(f)) throw Error(str("state.json has no record for ", f));
  return state;
}

template <class T>
T field(const json& j, const char* key) {
  if (!j.contains(key)) throw Error(str("state.json lacks '", key, "'"));
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    throw Error(str("state.json field '", key, "' has the wrong type: ", j[key].dump()));
  }
}

void check_step_matches(const std::string& dir, const json& state) {
  auto named = parse_step_dir_name(fs::path(dir).filename().string());
  const int64_t step = field<int64_t>(state, "step");
  if (named && *named != step)
    throw Error(str("directory name says step ", *named, " but state.json says ", step));
}

// Full verification without keeping the data (used by latest_checkpoint).
void verify_checkpoint(const std::string& dir) {
  json state = read_verified_state(dir);
  check_step_matches(dir, state);
  for (const char* f : {kModelFile, kOptFile}) {
    const std::string path = join(dir, f);
    if (!is_regular_file(path)) throw Error(str(f, " is missing"));
    auto [size, hash] = digest_file(path);
    check_record(state["files"][f], f, size, hash);
  }
}

// Moves a directory to a .trash. name (atomic), then deletes it; problems become warnings.
void delete_dir(const std::string& ck_dir, const std::string& name,
                std::vector<std::string>& problems) {
  std::string victim = join(ck_dir, name);
  if (!is_scratch_name(name)) {
    const std::string trash = join(ck_dir, name + ".trash." + std::to_string(::getpid()));
    std::error_code ec;
    fs::remove_all(trash, ec);
    if (::rename(victim.c_str(), trash.c_str()) != 0) {
      int e = errno;
      problems.push_back(str("cannot move '", victim, "' aside for deletion: ", std::strerror(e)));
      return;
    }
    victim = trash;
  }
  std::error_code ec;
  fs::remove_all(victim, ec);
  if (ec) problems.push_back(str("cannot delete '", victim, "': ", ec.message()));
}

void prune(const std::string& ck_dir, const std::string& keep_name, int keep_last,
           std::vector<std::string>& problems) {
  std::vector<std::pair<int64_t, std::string>> complete;
  std::vector<std::string> doomed;
  std::error_code ec;
  for (fs::directory_iterator it(ck_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (!is_directory(it->path().string())) continue;
    if (is_scratch_name(name)) {
      doomed.push_back(name);
    } else if (auto step = parse_step_dir_name(name)) {
      if (is_regular_file(join(it->path().string(), kMarker)))
        complete.emplace_back(*step, name);
      else if (name != keep_name)
        doomed.push_back(name);
    }
  }
  if (ec) {
    problems.push_back(str("cannot list '", ck_dir, "' for pruning: ", ec.message()));
    return;
  }
  if (keep_last > 0) {
    std::sort(complete.begin(), complete.end(), std::greater<>());
    for (size_t i = static_cast<size_t>(keep_last); i < complete.size(); ++i)
      if (complete[i].second != keep_name) doomed.push_back(complete[i].second);
  }
  for (const std::string& name : doomed) delete_dir(ck_dir, name, problems);
}

std::string serialize_json(const json& j, const char* what) {
  try {
    return j.dump(2) + "\n";
  } catch (const json::exception& e) {
    throw Error(str("[checkpoint] cannot serialise ", what, ": ", e.what(),
                    " (rng_state, data_state and strings in extra must be valid UTF-8)"));
  }
}

}  // namespace

uint64_t fnv1a64(const void* data, size_t n, uint64_t h) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string save_checkpoint(const std::string& run_dir, const TrainState& st,
                            const ParamStore& params, const AdamW& opt, int keep_last,
                            std::vector<std::string>* warnings) {
  PF_CHECK(!run_dir.empty(), "[checkpoint] run directory is empty");
  PF_CHECK(st.step >= 0, "[checkpoint] step must be >= 0, got ", st.step);

  // 1. Everything in memory first.
  const std::string model =
      serialize_safetensors(params.all(), {{"step", std::to_string(st.step)}});
  const std::string optim = serialize_safetensors(
      opt.state_tensors(), {{"optimizer", "adamw"}, {"steps", std::to_string(opt.steps())}});
  const AdamWConfig& oc = opt.config();
  json state = {{"format", kFormat},
                {"format_version", kFormatVersion},
                {"step", st.step},
                {"optimizer_steps", opt.steps()},
                {"optimizer",
                 {{"type", "adamw"},
                  {"beta1", oc.beta1},
                  {"beta2", oc.beta2},
                  {"eps", oc.eps},
                  {"weight_decay", oc.weight_decay}}},
                {"rng_state", st.rng_state},
                {"data_state", st.data_state},
                {"extra", st.extra},
                {"files", {{kModelFile, file_record(model)}, {kOptFile, file_record(optim)}}}};
  const std::string state_bytes = serialize_json(state, "state.json");
  const std::string marker = serialize_json(
      json{{"format", kFormat}, {"step", st.step}, {kStateFile, file_record(state_bytes)}},
      "COMPLETE");

  // 2. Directories.
  const std::string ck_dir = join(run_dir, "checkpoints");
  make_dirs(ck_dir);
  const std::string name = step_dir_name(st.step);
  const std::string pid = std::to_string(::getpid());
  const std::string final_dir = join(ck_dir, name);
  const std::string tmp_dir = join(ck_dir, name + ".tmp." + pid);
  const std::string trash_dir = join(ck_dir, name + ".trash." + pid);

  // 3. Temp directory with the three files.
  std::error_code ec;
  fs::remove_all(tmp_dir, ec);
  if (::mkdir(tmp_dir.c_str(), 0755) != 0) {
    int e = errno;
    throw Error(str("[checkpoint] cannot create '", tmp_dir, "': ", std::strerror(e)));
  }
  bool moved_old = false;
  try {
    write_synced(join(tmp_dir, kModelFile), model);
    write_synced(join(tmp_dir, kOptFile), optim);
    write_synced(join(tmp_dir, kStateFile), state_bytes);
    fsync_dir(tmp_dir);
    // 4. A re-save of the same step replaces the old directory.
    if (is_directory(final_dir)) {
      fs::remove_all(trash_dir, ec);
      if (::rename(final_dir.c_str(), trash_dir.c_str()) != 0) {
        int e = errno;
        throw Error(
            str("[checkpoint] cannot move existing '", final_dir, "' aside: ", std::strerror(e)));
      }
      moved_old = true;
    }
    // 5. Publish under the final name.
    if (::rename(tmp_dir.c_str(), final_dir.c_str()) != 0) {
      int e = errno;
      throw Error(str("[checkpoint] cannot rename '", tmp_dir, "' to '", final_dir,
                      "': ", std::strerror(e)));
    }
  } catch (...) {
    fs::remove_all(tmp_dir, ec);
    if (moved_old) ::rename(trash_dir.c_str(), final_dir.c_str());
    throw;
  }
  fsync_dir(ck_dir);
  // 6. The marker makes it count.
  atomic_write_file(join(final_dir, kMarker), marker);

  // 7. Prune; failures here are reported, not thrown.
  std::vector<std::string> problems;
  prune(ck_dir, name, keep_last, problems);
  for (std::string& p : problems) {
    if (warnings)
      warnings->push_back("[checkpoint] " + p);
    else
      std::cerr << "[checkpoint] warning: " << p << "\n";
  }
  return final_dir;
}

std::string latest_checkpoint(const std::string& run_dir, std::vector<std::string>* warnings) {
  const std::string ck_dir = join(run_dir, "checkpoints");
  if (!is_directory(ck_dir)) return "";
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (fs::directory_iterator it(ck_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (auto step = parse_step_dir_name(name); step && is_directory(it->path().string()))
      found.emplace_back(*step, name);
  }
  PF_CHECK(!ec, "[checkpoint] cannot list '", ck_dir, "': ", ec.message());
  std::sort(found.begin(), found.end(), std::greater<>());
  for (const auto& [step, name] : found) {
    const std::string dir = join(ck_dir, name);
    try {
      verify_checkpoint(dir);
      return dir;
    } catch (const Error& e) {
      if (warnings) warnings->push_back(str("[checkpoint] skipped '", dir, "': ", e.what()));
    }
  }
  return "";
}

void remove_scratch(const std::string& run_dir, std::vector<std::string>* warnings) {
  const std::string ck_dir = join(run_dir, "checkpoints");
  if (!is_directory(ck_dir)) return;
  std::vector<std::string> names, problems;
  std::error_code ec;
  for (fs::directory_iterator it(ck_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (is_scratch_name(name) && is_directory(it->path().string())) names.push_back(name);
  }
  if (ec) problems.push_back(str("cannot list '", ck_dir, "': ", ec.message()));
  for (const std::string& name : names) delete_dir(ck_dir, name, problems);
  for (const std::string& p : problems) {
    if (warnings)
      warnings->push_back(p);
    else
      std::fprintf(stderr, "warning: [checkpoint] %s\n", p.c_str());
  }
}

LoadedCheckpoint load_checkpoint(const std::string& ckpt_dir) {
  try {
    PF_CHECK(is_directory(ckpt_dir), "not a directory");
    json state = read_verified_state(ckpt_dir);
    check_step_matches(ckpt_dir, state);
    LoadedCheckpoint out;
    std::string bytes[2];
    const char* files[2] = {kModelFile, kOptFile};
    for (int i = 0; i < 2; ++i) {
      const std::string path = join(ckpt_dir, files[i]);
      if (!is_regular_file(path)) throw Error(str(files[i], " is missing"));
      bytes[i] = read_file(path, kMaxTensorFileBytes);
      check_record(state["files"][files[i]], files[i], bytes[i].size(),
                   fnv1a64(bytes[i].data(), bytes[i].size()));
    }
    out.params = parse_safetensors(bytes[0].data(), bytes[0].size(), kModelFile).tensors;
    out.optimizer = parse_safetensors(bytes[1].data(), bytes[1].size(), kOptFile).tensors;
    out.state.step = field<int64_t>(state, "step");
    out.state.rng_state = field<std::string>(state, "rng_state");
    out.state.data_state = field<std::string>(state, "data_state");
    out.state.extra = state.contains("extra") ? state["extra"] : json::object();
    out.optimizer_steps = field<int64_t>(state, "optimizer_steps");
    PF_CHECK(out.state.step >= 0 && out.optimizer_steps >= 0,
             "negative step or optimizer_steps in state.json");
    return out;
  } catch (const Error& e) {
    throw Error(str("[checkpoint] cannot load '", ckpt_dir, "': ", e.what()));
  }
}

}  // namespace posformer
