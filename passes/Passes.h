//===- Passes.h - tnlm passes and pipelines ---------------------*- C++ -*-===//
#ifndef TNLM_PASSES_PASSES_H
#define TNLM_PASSES_PASSES_H

#include "dialect/TnlmDialect.h"
#include "mlir/IR/BuiltinOps.h"
#include "mlir/Pass/Pass.h"
#include "mlir/Pass/PassManager.h"

#include <memory>

namespace mlir::tnlm {

#define GEN_PASS_DECL
#include "passes/Passes.h.inc"

#define GEN_PASS_REGISTRATION
#include "passes/Passes.h.inc"

/// Options of `tnlm-infer-pipeline`; tnlmc fills them from --target, --seq, --block-size.
/// (ModelPipelineOptions: the options every model pipeline takes, CRTP over
/// PassPipelineOptions as MLIR's own.)
template <typename Derived> struct ModelPipelineOptions : public PassPipelineOptions<Derived> {
  template <typename T> using Option = typename PassPipelineOptions<Derived>::template Option<T>;
  Option<std::string> target{*this, "target",
                             llvm::cl::desc("Target of the tile cost model: cpu or cuda:sm_90a"),
                             llvm::cl::init("cpu")};
  Option<int64_t> maxSeq{*this, "max-seq",
                         llvm::cl::desc("Longest sequence the compiled model runs"),
                         llvm::cl::init(2048)};
  Option<int64_t> blockSize{
      *this, "block-size",
      llvm::cl::desc("Lightning Attention block size for every layer (0: cost model)"),
      llvm::cl::init(0)};
};
struct InferPipelineOptions : public ModelPipelineOptions<InferPipelineOptions> {};

/// The model-level pipeline run before lowering for inference (`tnlm-infer-pipeline`), in
/// order: canonicalize, CSE, tnlm-fuse-lightning-attention, tnlm-fuse-sglu,
/// tnlm-fuse-add-norm, tnlm-choose-tiles, canonicalize, CSE (docs/passes.md).
void buildInferPipeline(OpPassManager &pm, const InferPipelineOptions &options);
void buildInferPipeline(OpPassManager &pm);

/// The pipeline for recurrent inference: the infer pipeline, then tnlm-recurrent with
/// `maxBatch` state slots (@prefill, @decode_step).
void buildRecurrentPipeline(OpPassManager &pm, const InferPipelineOptions &options,
                            int64_t maxBatch);

/// Options of `tnlm-train-pipeline`: those of the infer pipeline and the activation
/// checkpointing policy; tnlmc fills them from --target, --seq, --block-size, --recompute.
struct TrainPipelineOptions : public ModelPipelineOptions<TrainPipelineOptions> {
  Option<std::string> recompute{
      *this, "recompute",
      llvm::cl::desc("What @train_step recomputes in the backward (tnlm-recompute): none, "
                     "attention or full"),
      llvm::cl::init("none")};
};

/// The pipeline for training (`tnlm-train-pipeline`): the infer pipeline, then tnlm-autodiff,
/// canonicalize and tnlm-recompute with `recompute` (none, attention or full; no CSE after
/// it, which would merge the recomputed ops back into the forward).
void buildTrainPipeline(OpPassManager &pm, const InferPipelineOptions &options,
                        llvm::StringRef recompute = "none");
void buildTrainPipeline(OpPassManager &pm, const TrainPipelineOptions &options);

/// Registers every tnlm pass and the named pipelines with the global registry.
void registerTnlmPassesAndPipelines();

} // namespace mlir::tnlm

#endif // TNLM_PASSES_PASSES_H
