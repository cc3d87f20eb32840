//===- ParamTable.h - the parameter table derived from IR -------*- C++ -*-===//
//
// Parameters are function arguments marked `tnlm.param = "<HF name>"`; this is the one place
// that turns them into a table (the summary, the param-table pass and later the artifact
// writer all read it).
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_PASSES_PARAMTABLE_H
#define TNLM_PASSES_PARAMTABLE_H

#include "mlir/IR/BuiltinOps.h"

#include <cstdint>
#include <string>
#include <vector>

namespace mlir::tnlm {

struct ParamInfo {
  std::string name;           // Hugging Face state-dict name
  std::vector<int64_t> shape; // static
  std::string dtype;          // "f32", "bf16" or "f16"
  int64_t numElements = 0;
  int64_t bytesPerElement = 0;
  unsigned argIndex = 0;

  std::string shapeString() const; // e.g. "[4096x1024]"
};

struct FunctionParams {
  std::string function;
  std::vector<ParamInfo> params; // in argument order
  int64_t totalElements() const;
};

/// Every function of `module` that has at least one `tnlm.param` argument, in order.
std::vector<FunctionParams> collectParams(ModuleOp module);

/// Short dtype name of a float element type ("f32", "bf16", "f16"; otherwise the MLIR spelling).
std::string dtypeName(Type elementType);

} // namespace mlir::tnlm

#endif // TNLM_PASSES_PARAMTABLE_H
