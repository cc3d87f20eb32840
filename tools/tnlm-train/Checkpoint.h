//===- Checkpoint.h - the run folder of tnlm-train --------------*- C++ -*-===//
//
// A run folder (--out) holds:
//   run.json                 what was run: artifact, model, every option (resume reads it)
//   metrics.jsonl            one JSON object per optimizer step and per evaluation
//   loss.png                 the loss curve (gnuplot), redrawn after each eval and at the end
//   model.safetensors        the weights of the newest checkpoint, Hugging Face names, f32
//   checkpoint-<step>/       model.safetensors (weights, f32) and state.safetensors (AdamW
//                            moments, step counter; trainer position as metadata)
// A checkpoint is written into checkpoint-<step>.tmp/ (every file written to a temporary
// name, flushed with fsync, renamed), then the folder is renamed into place: a crash at any
// moment leaves the previous checkpoints intact and no half-written one under a final name.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TOOLS_TNLM_TRAIN_CHECKPOINT_H
#define TNLM_TOOLS_TNLM_TRAIN_CHECKPOINT_H

#include "tools/tnlm-train/Runner.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace tnlm::train {

/// What a checkpoint carries besides weights and optimizer state.
struct TrainerState {
  int64_t step = 0;    // completed optimizer steps
  int64_t tokens = 0;  // training tokens consumed
  double elapsed = 0;  // seconds of training so far
  nlohmann::json data; // the data loader's position (DataLoader::state)
};

class RunFolder {
public:
  /// A new run in `path`: the folder is created if missing; it must not hold another run
  /// (run.json with a checkpoint) or other files, else tnlm::Error naming it (nothing is
  /// touched). A run that stopped before its first checkpoint is started again in place.
  static RunFolder create(const std::string &path, const nlohmann::json &run);
  /// An existing run (--resume): needs run.json.
  static RunFolder open(const std::string &path);

  const std::string &path() const { return path_; }
  const nlohmann::json &run() const { return run_; }
  std::string file(const std::string &name) const { return path_ + "/" + name; }

  /// Rewrites run.json (resume records the options given then).
  void updateRun(const nlohmann::json &run);

  /// Steps of the complete checkpoints, oldest first.
  std::vector<int64_t> checkpoints() const;
  /// Writes checkpoint-<state.step> (see the file comment), updates model.safetensors and
  /// keeps the `keep` newest checkpoints (0: all).
  std::string save(Runner &exec, const TrainerState &state, int64_t keep) const;
  /// Loads the newest checkpoint into exec (weights, moments, step counter); returns the
  /// trainer state. Throws tnlm::Error naming the file if it is missing, truncated, of another
  /// model (names, shapes) or otherwise inconsistent.
  TrainerState load(Runner &exec) const;

  /// Appends one line to metrics.jsonl (flushed).
  void appendMetrics(const nlohmann::json &line) const;
  /// The metrics lines up to and including `step` (resume drops what came after the
  /// checkpoint, and rewrites the file so).
  std::vector<nlohmann::json> metricsUpTo(int64_t step) const;

private:
  std::string path_;
  nlohmann::json run_;
};

} // namespace tnlm::train

#endif // TNLM_TOOLS_TNLM_TRAIN_CHECKPOINT_H
