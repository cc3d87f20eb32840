//===- CpuExecutor.h - run an artifact's plan on the CPU --------*- C++ -*-===//
#ifndef TNLM_RUNTIME_CPUEXECUTOR_H
#define TNLM_RUNTIME_CPUEXECUTOR_H

#include "runtime/Artifact.h"
#include "runtime/Error.h"
#include "runtime/Weights.h"

#include <cstdint>
#include <string>
#include <vector>

namespace tnlm {

/// Executes the functions of an artifact with the CPU kernels over one arena allocated once
/// (the largest arena_bytes of its functions). Parameters are f32, in parameter-table order;
/// train artifacts also hold their state (gradients, AdamW moments, step counter), zeroed at
/// construction and kept between calls.
class CpuExecutor {
public:
  CpuExecutor(const Artifact &artifact, ParamValues params);

  /// Runs @forward on ids [batch, seq] (row-major) with batch ≤ max batch and seq ≤ max
  /// sequence; returns logits [batch · seq, vocab]. Throws tnlm::Error on bad shapes or ids.
  std::vector<float> forward(const int32_t *ids, int64_t batch, int64_t seq);

  /// One per-call input of a function, by the name in the artifact (ids, labels: int32
  /// [batch · seq]; hparams: f32 [HyperParam.Count]).
  struct Input {
    std::string name;
    const void *data;
  };

  /// Runs function `name` for a call of batch × seq; returns its outputs by name (scalars
  /// as one value, logits as [batch · seq, vocab]). Throws tnlm::Error on a missing input,
  /// a bad shape or bad ids/labels.
  std::vector<std::pair<std::string, std::vector<float>>>
  run(const std::string &name, const std::vector<Input> &inputs, int64_t batch, int64_t seq);

  /// With checks on, every step's outputs are scanned after it runs (and the parameters and
  /// state before the first step): the first non-finite value throws NonFiniteError naming
  /// the step (or tensor) and the function. For finding where a NaN starts; slow.
  void setCheckFinite(bool on) { checkFinite_ = on; }

  int64_t vocabSize() const { return vocab_; }
  const Artifact &artifact() const { return artifact_; }
  ParamValues &params() { return params_; }
  const ParamValues &params() const { return params_; }

  /// Persistent state in state-table order, stored as 32-bit words (f32; the step counter
  /// is an int32 in its word).
  std::vector<std::vector<float>> &state() { return state_; }
  const std::vector<std::vector<float>> &state() const { return state_; }
  /// Index of the state named `name`, or -1.
  int64_t stateIndex(const std::string &name) const;
  /// The step counter (completed optimizer steps); 0 for artifacts without one.
  int64_t stepCounter() const;
  void setStepCounter(int64_t step);
  /// Rows per chunk of the lm head loss steps (lm_head_loss); 0: TrainScratch.h's (~1 GiB of
  /// logits per chunk). For tests of the chunking.
  void setLmHeadChunkRows(int64_t rows) { lmHeadChunkRows_ = rows; }

private:
  struct Call;
  void runStep(const schema::Step &s, Call &call);
  bool runTrainingStep(const schema::Step &s, Call &call); // CpuTrainSteps.cpp

  const Artifact &artifact_;
  ParamValues params_;
  std::vector<std::vector<float>> state_;
  std::vector<float> arena_;
  std::vector<float> lmHeadChunk_; // lm_head_loss: one chunk of logits (and their gradients)
  int64_t lmHeadChunkRows_ = 0;
  int64_t vocab_ = 0;
  bool checkFinite_ = false;
};

/// The learning rate of optimizer step index `step` (0-based: the completed steps) for the
/// hyperparameter vector `hparams` (f32 [HyperParam.Count]): linear warmup, then constant or
/// cosine down to the minimum (tnlm.lr_schedule, docs/model.md), in f64.
double learningRate(int64_t step, const float *hparams);

/// A NaN or infinity found by CpuExecutor's finite checks.
class NonFiniteError : public Error {
public:
  NonFiniteError(const std::string &message, std::string where)
      : Error(message), where_(std::move(where)) {}
  /// The step name (Hugging Face module) or tensor name.
  const std::string &where() const { return where_; }

private:
  std::string where_;
};

} // namespace tnlm

#endif // TNLM_RUNTIME_CPUEXECUTOR_H
