// Crash-safe training checkpoints.
//
// On-disk layout (one trainer process writes a run directory at a time):
//
//   RUN_DIR/checkpoints/
//     step-000000123/              final name: "step-" + step, zero-padded to at least 9 digits
//       model.safetensors          the ParamStore (tensor names as in docs/checkpoint-format.md)
//       optimizer.safetensors      AdamW state: "m.<param>", "v.<param>" (F32)
//       state.json                 {"format": "posformer-train-checkpoint", "format_version": 1,
//                                   "step", "optimizer_steps", "optimizer": {type, beta1, beta2,
//                                   eps, weight_decay}, "rng_state", "data_state", "extra",
//                                   "files": {"model.safetensors": {"bytes": N,
//                                   "fnv1a64": "<16 hex digits>"}, "optimizer.safetensors": ...}}
//       COMPLETE                   written last: {"format", "step", "state.json": {"bytes",
//                                   "fnv1a64"}}
//     step-000000123.tmp.<pid>/    a save in progress (or killed): never read, pruned
//     step-000000123.trash.<pid>/  a checkpoint being deleted or replaced: never read, pruned
//
// The checksum is 64-bit FNV-1a over the file's bytes (offset basis 0xcbf29ce484222325, prime
// 0x100000001b3). COMPLETE covers state.json, state.json covers the two tensor files, so one
// verified chain says every byte is what the saver wrote.
//
// save_checkpoint, in order:
//   1. serialise everything in memory (errors here touch nothing on disk);
//   2. create RUN_DIR/checkpoints (fsync the parents of created directories);
//   3. write the three files into step-N.tmp.<pid>/, fsync each, fsync the temp directory;
//   4. move an existing step-N/ (a re-save of the same step) aside to step-N.trash.<pid>/;
//   5. rename step-N.tmp.<pid>/ to step-N/, fsync checkpoints/;
//   6. write COMPLETE with atomic_write_file (temp file, fsync, rename, fsync step-N/);
//   7. prune: delete stale .tmp./.trash. directories and final directories without COMPLETE,
//      then keep only the `keep_last` highest-step directories that have COMPLETE (keep_last
//      <= 0 keeps all); the checkpoint just written is never deleted. Deletion renames to
//      .trash. first, so a half-deleted directory never carries a final name.
// A kill -9 (or power loss) at any moment therefore leaves every earlier complete checkpoint
// intact, and the new one either complete or ignored. Problems while pruning do not fail the
// save: they are appended to `warnings` (or printed to stderr when warnings is null).
//
// latest_checkpoint: the highest-step step-N/ directory that has COMPLETE and whose checksums
// (and sizes) verify; "" when there is none. Others are skipped with a reason in `warnings`.
// It reads every byte of the candidates it checks.
//
// remove_scratch: deletes the .tmp./.trash. directories that killed saves or prunes left in
// RUN_DIR/checkpoints (only one trainer may use a run directory at a time); problems become
// `warnings`. Resuming calls it first, so a run killed after its last complete checkpoint,
// in the middle of pruning, is left clean even when nothing remains to train.
//
// load_checkpoint: reads and verifies one checkpoint directory (COMPLETE present, sizes and
// checksums match, state.json well formed, safetensors parse) and throws Error naming the
// directory, the file and the problem (missing marker, truncated, checksum mismatch, ...).
#pragma once
#include <cstdint>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "posformer/core/tensor.h"
#include "posformer/model/params.h"
#include "posformer/train/optimizer.h"

namespace posformer {

struct TrainState {
  int64_t step = 0;        // training steps completed
  std::string rng_state;   // opaque text (must be valid UTF-8; hex-encode binary state)
  std::string data_state;  // opaque text, e.g. the data loader position
  nlohmann::json extra = nlohmann::json::object();  // anything else (config, counters, ...)
};

// Writes RUN_DIR/checkpoints/step-<st.step>/ as described above and returns its path.
std::string save_checkpoint(const std::string& run_dir, const TrainState& st,
                            const ParamStore& params, const AdamW& opt, int keep_last,
                            std::vector<std::string>* warnings = nullptr);

std::string latest_checkpoint(const std::string& run_dir,
                              std::vector<std::string>* warnings = nullptr);

void remove_scratch(const std::string& run_dir, std::vector<std::string>* warnings = nullptr);

struct LoadedCheckpoint {
  TrainState state;
  std::map<std::string, Tensor> params;     // model.safetensors
  std::map<std::string, Tensor> optimizer;  // optimizer.safetensors, for AdamW::load_state
  int64_t optimizer_steps = 0;
};

LoadedCheckpoint load_checkpoint(const std::string& ckpt_dir);

// 64-bit FNV-1a of n bytes (continuing from h for streamed input).
uint64_t fnv1a64(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull);

}  // namespace posformer
