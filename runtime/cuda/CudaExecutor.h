//===- CudaExecutor.h - run a CUDA artifact's plan on the GPU ---*- C++ -*-===//
//
// The GPU counterpart of CpuExecutor: runs the steps of a cuda:sm_90a artifact's @forward with
// the artifact's kernels (its cubin, loaded once as a Module) and cuBLASLt GEMMs, all queued
// in order on the Context's stream.
//   Parameters arrive as f32 (as for the CPU backend) and are uploaded once as bf16, which is
//   what the generated kernels and the bf16 GEMMs read (LRPE's θ stays f32).
//   One device Arena holds the planned activations (arena_bytes at the planned offsets, the
//   f32 logits among them), the ids, the per-step slopes, the parameters and the Lightning
//   Attention piece-state workspace (bounded by the number of SMs, see CudaExecutor.cpp);
//   nothing is allocated per call.
//   The forward of each call shape (batch, seq) is captured once as a CUDA graph and replayed.
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
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
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
  /// bad shapes and on any CUDA error (naming the step). Same as enqueue() then logits().
  std::vector<float> forward(const int32_t *ids, int64_t batch, int64_t seq);

  /// Queues @forward on the context's stream and returns without waiting for it: checks the
  /// ids, uploads them, then replays the CUDA graph of the whole forward for this (batch,
  /// seq), capturing it on the first call of that shape (or, with graphs off, launches the
  /// steps one by one). `ids` must stay valid until the stream has run the upload (the next
  /// logits() or Context::synchronize()).
  void enqueue(const int32_t *ids, int64_t batch, int64_t seq);
  /// Waits for the forward queued last and returns its f32 logits [batch · seq, vocab]
  /// (batch and seq as given to enqueue; anything else is an error).
  std::vector<float> logits(int64_t batch, int64_t seq);

  /// GPU time of each step of one forward (CUDA events around every step, steps launched one
  /// by one, no graph), after the same checks as enqueue(); for finding where time goes.
  struct StepTime {
    unsigned index;
    std::string name, kind;
    double ms;
  };
  std::vector<StepTime> profileSteps(const int32_t *ids, int64_t batch, int64_t seq);

  /// CUDA-graph replay of the forward (default on). Off: every call launches each step.
  void setUseGraphs(bool on) { useGraphs_ = on; }
  /// Number of forward graphs captured so far (one per (batch, seq) called; a shape whose
  /// capture fails runs step by step instead).
  size_t graphCount() const { return graphs_.size(); }

  int64_t vocabSize() const { return vocab_; }
  const Artifact &artifact() const { return artifact_; }
  Context &context() { return *context_; }
  /// When set, synchronizes after every step so that an asynchronous kernel fault is
  /// reported with the step that caused it (slower; for debugging; implies no graphs).
  void setSynchronizeSteps(bool on) { syncSteps_ = on; }

private:
  void runStep(unsigned index, const schema::Step &step, int64_t batch, int64_t seq,
               const std::string &where);
  void runLightning(unsigned index, const schema::Step &step, int64_t batch, int64_t seq,
                    const std::string &where);
  /// Queues every step of @forward; `afterStep(i)`, when given, runs after step i is queued.
  void runSteps(int64_t batch, int64_t seq, const std::function<void(unsigned)> &afterStep = {});
  void uploadIds(const int32_t *ids, int64_t batch, int64_t seq);
  CUdeviceptr operand(const schema::Operand *o, const std::string &where) const;
  Kernel &kernel(const schema::KernelLaunch *launch, const std::string &where);

  const Artifact &artifact_;
  std::unique_ptr<Context> ownedContext_;
  Context *context_ = nullptr;
  std::unique_ptr<Arena> arena_;
  std::unique_ptr<Module> module_;
  std::unique_ptr<Gemm> gemm_;
  CUdeviceptr activations_ = 0, ids_ = 0, workspace_ = 0;
  size_t workspaceBytes_ = 0, logitsOffset_ = 0; // the f32 logits: activations_ + offset
  std::vector<CUdeviceptr> params_; // in parameter-table order: bf16, or f32 where f32Param_
  std::vector<bool> f32Param_;      // LRPE θ (read as f32 by the prologue)
  std::vector<CUdeviceptr> slopes_; // f32 per step (0 where the step has none)
  int64_t vocab_ = 0;
  bool syncSteps_ = false;
  bool useGraphs_ = true;
  std::map<std::pair<int64_t, int64_t>, Graph> graphs_; // (batch, seq) -> the captured forward
  std::set<std::pair<int64_t, int64_t>> eagerOnly_;     // shapes whose capture failed
  std::pair<int64_t, int64_t> lastCall_{0, 0};          // the shape enqueued last
};

} // namespace tnlm::cuda

#endif // TNLM_RUNTIME_CUDA_CUDAEXECUTOR_H
