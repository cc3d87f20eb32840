//===- Summary.h - parameters, bytes and FLOPs of a model -------*- C++ -*-===//
#ifndef TNLM_MODELS_SUMMARY_H
#define TNLM_MODELS_SUMMARY_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace mlir::tnlm {

struct ModelSummary {
  std::string function;                                    // summarized function, "forward"
  std::vector<std::pair<std::string, int64_t>> components; // parameter count per component
  int64_t totalParams = 0;
  std::map<std::string, int64_t> bytesPerDType; // weight bytes by element type
  bool tiedLmHead = false;
  // Forward FLOPs per token (multiply-add = 2 FLOPs): projections (linear, SGLU, lm head)
  // and attention in its recurrent form (4·H·dk·dv per layer), independent of the sequence.
  int64_t projectionFlopsPerToken = 0;
  int64_t attentionFlopsPerToken = 0;
  int64_t flopsPerToken() const { return projectionFlopsPerToken + attentionFlopsPerToken; }
};

/// Summarizes `function` of `module` (parameters from tnlm.param arguments, FLOPs from its
/// ops). Fails if the function does not exist.
mlir::FailureOr<ModelSummary> summarizeModel(mlir::ModuleOp module,
                                             llvm::StringRef function = "forward");

void printSummary(const ModelSummary &summary, mlir::ModuleOp module, llvm::raw_ostream &os);

/// 6836719616 → "6,836,719,616".
std::string withThousands(int64_t value);

} // namespace mlir::tnlm

#endif // TNLM_MODELS_SUMMARY_H
