//===- tnlm-opt.cpp - mlir-opt for the tnlm dialect -----------------------===//
//
// Registers exactly what tnlm IR uses: the builtin, func and tnlm dialects, the tnlm passes
// and pipelines, and the generic canonicalize/CSE passes they are built from.
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmDialect.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/DialectRegistry.h"
#include "mlir/Tools/mlir-opt/MlirOptMain.h"
#include "mlir/Transforms/Passes.h"

int main(int argc, char **argv) {
  mlir::tnlm::registerTnlmPassesAndPipelines();
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
  mlir::registerSymbolDCEPass();

  mlir::DialectRegistry registry;
  registry.insert<mlir::tnlm::TnlmDialect, mlir::func::FuncDialect>();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "tnlm optimizer driver (TransNormerLLM IR)\n", registry));
}
