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

/// The model-level clean-up pipeline run before lowering for inference
/// (`tnlm-infer-pipeline`): canonicalize and CSE. Later stages add fusion.
void buildInferPipeline(OpPassManager &pm);

/// Registers every tnlm pass and the named pipelines with the global registry.
void registerTnlmPassesAndPipelines();

} // namespace mlir::tnlm

#endif // TNLM_PASSES_PASSES_H
