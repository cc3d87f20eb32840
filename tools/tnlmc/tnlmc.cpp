//===- tnlmc.cpp - the tnlm compiler driver -------------------------------===//
//
//   tnlmc CONFIG.json|MODEL.mlir [--emit=mlir] [--summary] [--dtype=bf16] [-o FILE]
//
// Reads a Hugging Face-style TransNormerLLM config (imported into model-level tnlm IR) or a
// hand-written .mlir module, and emits or summarizes it. Every flag is documented in --help
// and in README.md.
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmDialect.h"
#include "models/Import.h"
#include "models/ModelConfig.h"
#include "models/Summary.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/WithColor.h"

using namespace mlir;
namespace cl = llvm::cl;

namespace {

cl::OptionCategory category("tnlmc options");

cl::opt<std::string> inputPath(cl::Positional, cl::Required, cl::cat(category),
                               cl::desc("<model config .json or tnlm .mlir>"));
cl::opt<std::string> outputPath("o", cl::cat(category), cl::init("-"),
                                cl::desc("Output file ('-' for stdout, the default)"),
                                cl::value_desc("file"));

enum class Emit { None, Mlir };
cl::opt<Emit> emit("emit", cl::cat(category), cl::init(Emit::None),
                   cl::desc("What to emit (default: mlir, or nothing when --summary is given)"),
                   cl::values(clEnumValN(Emit::Mlir, "mlir", "model-level tnlm IR")));
cl::opt<bool> summary("summary", cl::cat(category), cl::init(false),
                      cl::desc("Print parameters per component and in total, weight bytes per "
                               "dtype and forward FLOPs per token"));
cl::opt<std::string> dtype("dtype", cl::cat(category), cl::init(""),
                           cl::desc("Parameter dtype: f32, bf16 or f16 (default: the config's "
                                    "torch_dtype, else f32); configs only"),
                           cl::value_desc("dtype"));

void error(const llvm::Twine &message) {
  llvm::WithColor::error(llvm::errs(), "tnlmc") << message << "\n";
}

OwningOpRef<ModuleOp> loadInput(MLIRContext &context, llvm::SourceMgr &sourceMgr) {
  llvm::StringRef path = inputPath;
  if (path.ends_with(".json")) {
    tnlm::ConfigResult parsed = tnlm::loadModelConfig(inputPath);
    for (const std::string &w : parsed.warnings)
      llvm::errs() << w << "\n";
    if (!parsed.config) {
      error(parsed.error);
      return nullptr;
    }
    if (!dtype.empty()) {
      auto t = tnlm::parseDType(dtype);
      if (!t) {
        error("--dtype: unknown dtype '" + dtype + "' (expected f32, bf16 or f16)");
        return nullptr;
      }
      parsed.config->dtype = *t;
    }
    return tnlm::importModel(*parsed.config, &context, inputPath);
  }
  if (!path.ends_with(".mlir")) {
    error(inputPath + ": unknown input kind (expected a .json model config or a .mlir module)");
    return nullptr;
  }
  if (!dtype.empty()) {
    error("--dtype applies to .json configs only; a .mlir module fixes its own types");
    return nullptr;
  }
  std::string message;
  auto file = openInputFile(inputPath, &message);
  if (!file) {
    error(inputPath + ": " + message);
    return nullptr;
  }
  sourceMgr.AddNewSourceBuffer(std::move(file), llvm::SMLoc());
  return parseSourceFile<ModuleOp>(sourceMgr, &context);
}

} // namespace


int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  registerAsmPrinterCLOptions();
  registerMLIRContextCLOptions();
  registerPassManagerCLOptions();
  cl::HideUnrelatedOptions({&category, &cl::getGeneralCategory()});
  cl::ParseCommandLineOptions(
      argc, argv,
      "tnlm compiler: TransNormerLLM config or tnlm IR -> IR, summary (later: artifacts)\n\n"
      "  tnlmc models/tnl-7b.json --summary\n"
      "  tnlmc models/tiny.json --emit=mlir -o tiny.mlir\n");

  DialectRegistry registry;
  registry.insert<tnlm::TnlmDialect, func::FuncDialect>();
  MLIRContext context(registry);
  context.loadAllAvailableDialects();
  llvm::SourceMgr sourceMgr;
  SourceMgrDiagnosticHandler diagHandler(sourceMgr, &context);

  OwningOpRef<ModuleOp> module = loadInput(context, sourceMgr);
  if (!module)
    return 1;
  if (failed(verify(*module)))
    return 1;

  if (summary) {
    FailureOr<tnlm::ModelSummary> s = tnlm::summarizeModel(*module, "forward");
    if (failed(s))
      return 1;
    tnlm::printSummary(*s, *module, llvm::outs());
  }
  Emit what = emit;
  if (what == Emit::None && !summary)
    what = Emit::Mlir;
  if (what == Emit::Mlir) {
    std::string message;
    auto out = openOutputFile(outputPath, &message);
    if (!out) {
      error(outputPath + ": " + message);
      return 1;
    }
    module->print(out->os());
    out->os() << "\n";
    out->keep();
  }
  return 0;
}
