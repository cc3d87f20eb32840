//===- CpuExecutor.h - run an artifact's plan on the CPU --------*- C++ -*-===//
#ifndef TNLM_RUNTIME_CPUEXECUTOR_H
#define TNLM_RUNTIME_CPUEXECUTOR_H

#include "runtime/Artifact.h"
#include "runtime/Weights.h"

#include <cstdint>
#include <vector>

namespace tnlm {

/// Executes the steps of an artifact function with the CPU kernels over one arena allocated
/// once (arena_bytes of the plan). Parameters are f32, in parameter-table order.
class CpuExecutor {
public:
  CpuExecutor(const Artifact &artifact, ParamValues params);

  /// Runs @forward on ids [batch, seq] (row-major) with batch ≤ max batch and seq ≤ max
  /// sequence; returns logits [batch · seq, vocab]. Throws tnlm::Error on bad shapes or ids.
  std::vector<float> forward(const int32_t *ids, int64_t batch, int64_t seq);

  int64_t vocabSize() const { return vocab_; }
  const Artifact &artifact() const { return artifact_; }

private:
  const Artifact &artifact_;
  ParamValues params_;
  std::vector<float> arena_;
  int64_t vocab_ = 0;
};

} // namespace tnlm

#endif // TNLM_RUNTIME_CPUEXECUTOR_H
