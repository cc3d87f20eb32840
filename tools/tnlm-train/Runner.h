//===- Runner.h - the executor tnlm-train drives: CPU or GPU ------------*- C++ -*-===//
//
// tnlm-train runs a train artifact's functions and reads and writes its weights and state for
// checkpoints through this interface: CpuExecutor for cpu artifacts, CudaExecutor (work in
// progress, issue 11) for cuda:sm_90a ones. Values cross as f32 host vectors (the step
// counter's int32 in its word).
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TOOLS_TNLM_TRAIN_RUNNER_H
#define TNLM_TOOLS_TNLM_TRAIN_RUNNER_H

#include "runtime/Artifact.h"
#include "runtime/CpuExecutor.h"
#include "runtime/Weights.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace tnlm::train {

class Runner {
public:
  virtual ~Runner() = default;
  virtual const Artifact &artifact() const = 0;
  /// Runs function `name` (train_step, optimizer_step, eval_loss); its outputs by name.
  virtual std::vector<std::pair<std::string, std::vector<float>>>
  run(const std::string &name, const std::vector<CpuExecutor::Input> &inputs, int64_t batch,
      int64_t seq) = 0;
  /// Per-step finite checks naming the first step with a NaN (NonFiniteError); false where
  /// the backend has none.
  virtual bool setCheckFinite(bool on) = 0;
  /// The name of the first gradient (parameter) holding a NaN or infinity, or "".
  virtual std::string nonFiniteGradient() = 0;
  virtual std::string nonFiniteParameter() = 0;
  virtual ParamValues params() = 0;
  virtual void setParams(const ParamValues &params) = 0;
  virtual std::vector<std::vector<float>> state() = 0;
  virtual void setState(const std::vector<std::vector<float>> &state) = 0;
  virtual int64_t stepCounter() = 0;
  /// The GPU's GEMM tuning (Gemm::setTuning: 0 cuBLASLt's first algorithm, 1 the fastest of
  /// its candidates, timed on the first call of each shape) and its cache file ("" none):
  /// false where the backend has no GEMMs to tune (the CPU).
  virtual bool setGemmTuning(int level, const std::string &cache) {
    (void)level, (void)cache;
    return false;
  }
  /// Where it runs, for the progress line ("16 threads", the GPU's name).
  virtual std::string device() const = 0;
};

/// The runner for `artifact` by its target; cuda artifacts need a build with the CUDA runtime
/// layer (else tnlm::Error saying so).
std::unique_ptr<Runner> makeRunner(const Artifact &artifact, ParamValues params);

} // namespace tnlm::train

#endif // TNLM_TOOLS_TNLM_TRAIN_RUNNER_H
