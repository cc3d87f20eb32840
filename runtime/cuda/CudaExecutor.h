//===- CudaExecutor.h - run a CUDA artifact's plan on the GPU ---*- C++ -*-===//
//
// The GPU counterpart of CpuExecutor: runs the steps of a cuda:sm_90a artifact's @forward with
// the artifact's kernels (its cubin, loaded once as a Module) and cuBLASLt GEMMs, all queued
// in order on the Context's stream.
//   Parameters arrive as f32 (as for the CPU backend) and are uploaded once as bf16, which is
//   what the generated kernels and the bf16 GEMMs read.
//   One device Arena holds the planned activations (arena_bytes at the planned offsets), the
//   ids, the per-step slopes, the parameters, the Lightning Attention piece-state workspace
//   (bounded by the number of SMs, see CudaExecutor.cpp) and a bf16 staging buffer for the
//   logits; nothing is allocated per call.
// Every CUDA error becomes a tnlm::Error naming the artifact and the step.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CUDA_CUDAEXECUTOR_H
#define TNLM_RUNTIME_CUDA_CUDAEXECUTOR_H

#include "runtime/Artifact.h"
#include "runtime/Weights.h"
#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/Gemm.h"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tnlm::cuda {

class CudaExecutor {
public:
  /// `artifact` must be a verified CUDA artifact (Artifact::load(path, Target::CudaSm90a))
  /// and outlive the executor; `params` are f32 in parameter-table order. Creates the
  /// context on `ordinal` unless `context` is given (then it must outlive the executor).
  CudaExecutor(const Artifact &artifact, const ParamValues &params, Context *context = nullptr,
               int ordinal = 0);
  ~CudaExecutor();
  CudaExecutor(const CudaExecutor &) = delete;
  CudaExecutor &operator=(const CudaExecutor &) = delete;

  /// Runs @forward on ids [batch, seq] (row-major, host memory) with batch ≤ max batch and
  /// seq ≤ max sequence; returns the f32 logits [batch · seq, vocab]. Throws tnlm::Error on
  /// bad shapes and on any CUDA error (naming the step).
  std::vector<float> forward(const int32_t *ids, int64_t batch, int64_t seq);

  int64_t vocabSize() const { return vocab_; }
  const Artifact &artifact() const { return artifact_; }
  Context &context() { return *context_; }
  /// When set, synchronizes after every step so that an asynchronous kernel fault is
  /// reported with the step that caused it (slower; for debugging).
  void setSynchronizeSteps(bool on) { syncSteps_ = on; }

private:
  void runStep(unsigned index, const schema::Step &step, int64_t batch, int64_t seq,
               const std::string &where);

  const Artifact &artifact_;
  std::unique_ptr<Context> ownedContext_;
  Context *context_ = nullptr;
  std::unique_ptr<Arena> arena_;
  std::unique_ptr<Module> module_;
  std::unique_ptr<Gemm> gemm_;
  CUdeviceptr activations_ = 0, ids_ = 0, workspace_ = 0, logitsStage_ = 0;
  size_t workspaceBytes_ = 0;
  std::vector<CUdeviceptr> params_;  // bf16, in parameter-table order
  std::vector<CUdeviceptr> slopes_;  // f32 per step (0 where the step has none)
  std::vector<uint16_t> hostLogits_; // bf16 staging on the host
  int64_t vocab_ = 0;
  bool syncSteps_ = false;
};

} // namespace tnlm::cuda

#endif // TNLM_RUNTIME_CUDA_CUDAEXECUTOR_H
