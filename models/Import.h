//===- Import.h - build model-level tnlm IR from a config -------*- C++ -*-===//
#ifndef TNLM_MODELS_IMPORT_H
#define TNLM_MODELS_IMPORT_H

#include "mlir/IR/BuiltinOps.h"
#include "mlir/IR/OwningOpRef.h"
#include "models/ModelConfig.h"

namespace mlir::tnlm {

/// Builds a module with `@forward(ids, params...) -> logits` and
/// `@loss(ids, labels, params...) -> tensor<f32>` for `config`. Parameters carry their Hugging
/// Face names (`tnlm.param`); the module carries `tnlm.config`. Returns null (after emitting a
/// diagnostic) if the result does not verify.
mlir::OwningOpRef<mlir::ModuleOp> importModel(const ModelConfig &config, mlir::MLIRContext *context,
                                              const std::string &sourcePath);

} // namespace mlir::tnlm

#endif // TNLM_MODELS_IMPORT_H
