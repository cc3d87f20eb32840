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
#include "llvm/Support/CommandLine.h"

int main(int argc, char **argv) {
  // libLLVM.so's static initializers register hundreds of backend options (AArch64, AMDGPU…)
  // in the general category, where MLIR's are too: hide everything registered before main
  // (except --help and --version). MlirOptMain registers the options worth showing after
  // this: its own (-o, --split-input-file, --verify-diagnostics, the passes and pipelines
  // with their options…) and MLIR's (--mlir-print-ir-after-all, --mlir-timing, …).
  llvm::cl::HideUnrelatedOptions(llvm::ArrayRef<const llvm::cl::OptionCategory *>());
  mlir::tnlm::registerTnlmPassesAndPipelines();
  mlir::registerCanonicalizerPass();
  mlir::registerCSEPass();
  mlir::registerSymbolDCEPass();

  mlir::DialectRegistry registry;
  registry.insert<mlir::tnlm::TnlmDialect, mlir::func::FuncDialect>();
  return mlir::asMainReturnCode(
      mlir::MlirOptMain(argc, argv, "tnlm optimizer driver (TransNormerLLM IR)\n", registry));
}
