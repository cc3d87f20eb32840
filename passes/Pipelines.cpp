//===- Pipelines.cpp - named tnlm pass pipelines --------------------------===//
#include "passes/Passes.h"

#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

// Clean-up first, so the fusion patterns see one op per value (CSE merges duplicates that
// would otherwise count as extra uses); fusions before tiling, which sizes the fused ops;
// a last clean-up removes what the rewrites left dead.
void mlir::tnlm::buildInferPipeline(OpPassManager &pm, const InferPipelineOptions &options) {
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
  pm.addPass(createFuseLightningAttention());
  pm.addPass(createFuseSglu());
  pm.addPass(createFuseAddNorm());
  ChooseTilesOptions tiles;
  tiles.target = options.target;
  tiles.maxSeq = options.maxSeq;
  tiles.blockSize = options.blockSize;
  pm.addPass(createChooseTiles(tiles));
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
}

// Training differentiates the fused, tiled forward: the fused ops have fused backward ops.
// No CSE after autodiff: the recompute pass duplicates forward ops on purpose. Recompute
// runs last, after the clean-up, so nothing merges its clones back.
void mlir::tnlm::buildTrainPipeline(OpPassManager &pm, const InferPipelineOptions &options,
                                    StringRef recompute) {
  buildInferPipeline(pm, options);
  pm.addPass(createAutodiff());
  pm.addPass(createCanonicalizerPass());
  RecomputeOptions checkpointing;
  checkpointing.policy = recompute.str();
  pm.addPass(createRecompute(checkpointing));
}

void mlir::tnlm::buildTrainPipeline(OpPassManager &pm, const TrainPipelineOptions &options) {
  InferPipelineOptions infer;
  infer.target = options.target.getValue();
  infer.maxSeq = options.maxSeq.getValue();
  infer.blockSize = options.blockSize.getValue();
  buildTrainPipeline(pm, infer, options.recompute.getValue());
}

// Recurrent inference: the fused, tiled forward, then @prefill and @decode_step from it.
void mlir::tnlm::buildRecurrentPipeline(OpPassManager &pm, const InferPipelineOptions &options,
                                        int64_t maxBatch) {
  buildInferPipeline(pm, options);
  RecurrentOptions recurrent;
  recurrent.maxBatch = maxBatch;
  pm.addPass(createRecurrent(recurrent));
}

void mlir::tnlm::buildInferPipeline(OpPassManager &pm) {
  buildInferPipeline(pm, InferPipelineOptions());
}

void mlir::tnlm::registerTnlmPassesAndPipelines() {
  registerTnlmPasses();
  PassPipelineRegistration<InferPipelineOptions>(
      "tnlm-infer-pipeline",
      "Model-level pipeline for inference: canonicalize, CSE, fuse Lightning Attention, SGLU "
      "and add+norm, choose tiles, canonicalize, CSE",
      [](OpPassManager &pm, const InferPipelineOptions &options) {
        buildInferPipeline(pm, options);
      });
  PassPipelineRegistration<TrainPipelineOptions>(
      "tnlm-train-pipeline",
      "Model-level pipeline for training: tnlm-infer-pipeline, then tnlm-autodiff "
      "(@train_step, @optimizer_step, @eval_loss), canonicalize and tnlm-recompute",
      [](OpPassManager &pm, const TrainPipelineOptions &options) {
        buildTrainPipeline(pm, options);
      });
}
