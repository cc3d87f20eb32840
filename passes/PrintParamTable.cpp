//===- PrintParamTable.cpp - list tnlm.param arguments --------------------===//
#include "passes/ParamTable.h"
#include "passes/Passes.h"

#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/ToolOutputFile.h"

namespace mlir::tnlm {
#define GEN_PASS_DEF_PRINTPARAMTABLE
#include "passes/Passes.h.inc"
} // namespace mlir::tnlm

namespace mlir::tnlm {
namespace {

struct PrintParamTablePass : impl::PrintParamTableBase<PrintParamTablePass> {
  using Base::Base;
  void runOnOperation() override {
    std::string error;
    auto file = openOutputFile(output, &error);
    if (!file) {
      getOperation().emitError() << "tnlm-print-param-table: " << error;
      return signalPassFailure();
    }
    llvm::raw_ostream &os = file->os();
    for (const FunctionParams &fn : collectParams(getOperation())) {
      os << "parameters of @" << fn.function << ": " << fn.params.size() << "\n";
      for (const ParamInfo &p : fn.params)
        os << llvm::formatv("  {0,-56} {1,-16} {2,-5} {3,14}\n", p.name, p.shapeString(),
                            p.dtype, p.numElements);
      os << llvm::formatv("  {0,-56} {1,-16} {2,-5} {3,14}\n", "total", "", "",
                          fn.totalElements());
    }
    file->keep();
    markAllAnalysesPreserved();
  }
};

} // namespace
} // namespace mlir::tnlm
