//===- Pipelines.cpp - named tnlm pass pipelines --------------------------===//
#include "passes/Passes.h"

#include "mlir/Pass/PassRegistry.h"
#include "mlir/Transforms/Passes.h"

using namespace mlir;

void mlir::tnlm::buildInferPipeline(OpPassManager &pm) {
  pm.addPass(createCanonicalizerPass());
  pm.addPass(createCSEPass());
}

void mlir::tnlm::registerTnlmPassesAndPipelines() {
  registerTnlmPasses();
  PassPipelineRegistration<>("tnlm-infer-pipeline",
                             "Model-level clean-up for inference: canonicalize, CSE",
                             buildInferPipeline);
}
