//===- tnlmc.cpp - the tnlm compiler driver -------------------------------===//
//
//   tnlmc CONFIG.json|MODEL.mlir [--emit=mlir|plan|cuda-source|artifact]
//         [--target=cpu|cuda:sm_90a] [--pipeline=none|infer] [--block-size=N] [--summary]
//         [--mode=infer|train] [--recompute=none|attention|full] [--dtype=bf16] [-o FILE|DIR]
//
// Reads a Hugging Face-style TransNormerLLM config (imported into model-level tnlm IR) or a
// hand-written .mlir module, and emits or summarizes it. Every flag is documented in --help
// and in README.md.
//
//===----------------------------------------------------------------------===//
#include "codegen/ArtifactWriter.h"
#include "codegen/CudaEmitter.h"
#include "codegen/KernelPlan.h"
#include "dialect/TnlmDialect.h"
#include "models/Import.h"
#include "models/ModelConfig.h"
#include "models/Summary.h"
#include "passes/Passes.h"
#include "tools/tnlmc/Executable.h"
#include "tools/tnlmc/GpuTrainScratch.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/AsmState.h"
#include "mlir/IR/MLIRContext.h"
#include "mlir/IR/Verifier.h"
#include "mlir/Parser/Parser.h"
#include "mlir/Pass/PassManager.h"
#include "mlir/Support/FileUtilities.h"
#include "mlir/Support/Timing.h"
#include "llvm/Support/CommandLine.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/InitLLVM.h"
#include "llvm/Support/Path.h"
#include "llvm/Support/SourceMgr.h"
#include "llvm/Support/ToolOutputFile.h"
#include "llvm/Support/WithColor.h"

#include <cstdlib>
#include <map>
#include <optional>

#include "tools/tnlmc/CudaCompile.h"

using namespace mlir;
namespace cl = llvm::cl;

namespace {

cl::OptionCategory category("tnlmc options");

cl::opt<std::string> inputPath(cl::Positional, cl::Required, cl::cat(category),
                               cl::desc("<model config .json or tnlm .mlir>"));
cl::opt<std::string> outputPath("o", cl::cat(category), cl::init("-"),
                                cl::desc("Output file ('-' for stdout, the default)"),
                                cl::value_desc("file"));

enum class Emit { None, Mlir, Plan, CudaSource, Artifact, Executable };
cl::opt<Emit>
    emit("emit", cl::cat(category), cl::init(Emit::None),
         cl::desc("What to emit (default: artifact when -o ends in .tnlm, nothing when only "
                  "--summary is given, else mlir)"),
         cl::values(clEnumValN(Emit::Mlir, "mlir", "model-level tnlm IR"),
                    clEnumValN(Emit::Plan, "plan",
                               "kernel-level plan: one step per kernel, arena offsets"),
                    clEnumValN(Emit::CudaSource, "cuda-source",
                               "--target=cuda:sm_90a: the generated CUDA C++ and its launch "
                               "manifest, written into the directory -o names"),
                    clEnumValN(Emit::Artifact, "artifact", "compiled model (.tnlm, FlatBuffers)"),
                    clEnumValN(Emit::Executable, "executable",
                               "with --mode=recurrent: one standalone program that generates "
                               "text (the runtime with the artifact, and with --embed-weights "
                               "the weights, inside; the flags of tnlm-run --prompt)")));
cl::opt<std::string> embedWeights(
    "embed-weights", cl::cat(category), cl::init(""),
    cl::desc("With --emit=executable: put these weights (safetensors, Hugging Face names) into "
             "the executable, checked against the model's parameter table"),
    cl::value_desc("file"));
enum class Mode { Infer, Train, Recurrent };
cl::opt<Mode>
    mode("mode", cl::cat(category), cl::init(Mode::Infer), cl::desc("What the artifact runs"),
         cl::values(clEnumValN(Mode::Infer, "infer", "@forward: ids -> logits"),
                    clEnumValN(Mode::Train, "train",
                               "@train_step (forward, loss, backward, gradient accumulation), "
                               "@optimizer_step (clipping, AdamW, LR schedule) and @eval_loss, "
                               "for tnlm-train"),
                    clEnumValN(Mode::Recurrent, "recurrent",
                               "@prefill (prompts of --batch slots up to --seq tokens -> the "
                               "last position's logits and the per-layer state) and "
                               "@decode_step (one token per slot), for tnlm-run --prompt")));
cl::opt<std::string> target("target", cl::cat(category), cl::init("cpu"),
                            cl::desc("Backend the artifact is compiled for: cpu or cuda:sm_90a"),
                            cl::value_desc("target"));
cl::opt<int64_t> maxBatch("batch", cl::cat(category), cl::init(1),
                          cl::desc("Largest batch the artifact runs (buffers are planned for "
                                   "it; any smaller batch runs without recompiling)"));
cl::opt<int64_t> maxSeq("seq", cl::cat(category), cl::init(2048),
                        cl::desc("Largest sequence length the artifact runs (any shorter "
                                 "sequence runs without recompiling)"));
cl::opt<bool> summary("summary", cl::cat(category), cl::init(false),
                      cl::desc("Print parameters per component and in total, weight bytes per "
                               "dtype and forward FLOPs per token"));
enum class Pipeline { Auto, None, Infer, Train };
cl::opt<Pipeline> pipeline(
    "pipeline", cl::cat(category), cl::init(Pipeline::Auto),
    cl::desc("Model-level pass pipeline run before emitting IR or lowering to kernels "
             "(default: infer)"),
    cl::values(clEnumValN(Pipeline::None, "none", "the imported or parsed IR as it is"),
               clEnumValN(Pipeline::Infer, "infer",
                          "tnlm-infer-pipeline: fuse Lightning Attention, SGLU and add+norm, "
                          "choose tiles for --target and --seq"),
               clEnumValN(Pipeline::Train, "train",
                          "tnlm-train-pipeline: the infer pipeline, then tnlm-autodiff and "
                          "tnlm-recompute (--recompute) (default with --mode=train)")));
cl::opt<int64_t> blockSize("block-size", cl::cat(category), cl::init(0),
                           cl::desc("Lightning Attention block size of every layer with "
                                    "--pipeline=infer (default 0: the tile cost model picks it "
                                    "from the head dim, --seq and --target)"),
                           cl::value_desc("n"));
enum class Recompute { None, Attention, Full };
cl::opt<Recompute> recompute(
    "recompute", cl::cat(category), cl::init(Recompute::None),
    cl::desc("Activation checkpointing of @train_step (tnlm-recompute), with --mode=train; "
             "--summary reports the planned arena of every policy"),
    cl::values(clEnumValN(Recompute::None, "none",
                          "keep every forward value the backward reads (the default)"),
               clEnumValN(Recompute::Attention, "attention",
                          "recompute each layer's Lightning Attention output from its qkvu"),
               clEnumValN(Recompute::Full, "full",
                          "keep only the residual stream; recompute the rest of each layer "
                          "in its backward")));
const char *policyName(Recompute r) {
  return r == Recompute::Full ? "full" : r == Recompute::Attention ? "attention" : "none";
}
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

bool isCuda() { return target == "cuda:sm_90a"; }

/// TNLM_GRAD_STREAM_WINDOW=N (CUDA train artifacts, for TNLM_GRAD_STREAM=1 at run time): the
/// inputs of each weight-gradient GEMM stay live N steps past it in @train_step's arena plan
/// (keepGradWeightInputs); 0 or unset, the default: as the steps need them.
FailureOr<int64_t> gradStreamWindow() {
  const char *v = std::getenv("TNLM_GRAD_STREAM_WINDOW");
  if (!v || !*v)
    return int64_t(0);
  const std::string s(v);
  if (s.size() > 4 || s.find_first_not_of("0123456789") != std::string::npos) {
    llvm::errs() << "tnlmc: error: TNLM_GRAD_STREAM_WINDOW=" << s
                 << ": expected a number of steps from 0 (the default) to 9999\n";
    return failure();
  }
  return int64_t(std::stoll(s));
}

/// The arena plan of `p` (keeping weight-gradient inputs live longer where asked, and on CUDA
/// each gated pair's input up to its product: the executor fuses the two).
void planArena(tnlm::KernelPlan &p, int64_t window) {
  if (window > 0 && isCuda() && p.function == "train_step")
    tnlm::keepGradWeightInputs(p, window);
  if (isCuda())
    tnlm::keepGatedProductInputs(p);
  tnlm::planMemory(p);
}

/// --emit=cuda-source: DIR/<function>.cu and DIR/<function>.launches.txt.
int writeCudaSource(const std::vector<tnlm::KernelPlan> &plans, const tnlm::CudaProgram &program) {
  if (outputPath == "-") {
    error("--emit=cuda-source needs an output directory: -o DIR");
    return 1;
  }
  if (std::error_code ec = llvm::sys::fs::create_directories(outputPath)) {
    error("cannot create directory '" + outputPath + "': " + ec.message());
    return 1;
  }
  auto write = [&](const std::string &name, auto print) {
    llvm::SmallString<256> path(outputPath.getValue());
    llvm::sys::path::append(path, name);
    std::string message;
    auto file = openOutputFile(path, &message);
    if (!file) {
      error(message);
      return false;
    }
    print(file->os());
    file->keep();
    return true;
  };
  bool ok = write(program.sourceName, [&](llvm::raw_ostream &os) { os << program.source; });
  for (size_t f = 0; ok && f < plans.size(); ++f)
    ok = write(plans[f].function + ".launches.txt", [&](llvm::raw_ostream &os) {
      tnlm::printCudaManifest(plans[f], program, os, nullptr, f);
    });
  return ok ? 0 : 1;
}

/// Compiles the program with NVRTC (no GPU needed) into `image`.
bool compileCudaProgram(const tnlm::CudaProgram &program, tnlm::CudaImage &image) {
  std::vector<std::string> expressions;
  for (const tnlm::CudaKernel &k : program.kernels)
    if (!k.expression.empty())
      expressions.push_back(k.expression);
  std::map<std::string, std::string> lowered;
  std::string message;
  if (!tnlmc::compileCudaSource(program.source, program.sourceName, program.arch,
                                tnlm::cudaDeviceHeaders(), expressions, image.image, lowered,
                                message)) {
    error(message);
    return false;
  }
  for (const tnlm::CudaKernel &k : program.kernels)
    image.symbols.push_back(k.expression.empty() ? k.name : lowered[k.expression]);
  return true;
}

/// The planned @train_step arena of `module` (as imported) through tnlm-train-pipeline with
/// recompute `policy`, or failure with the first diagnostic in `why` (--summary).
FailureOr<int64_t> trainStepArena(ModuleOp module, const tnlm::InferPipelineOptions &options,
                                  llvm::StringRef policy, std::string &why) {
  ScopedDiagnosticHandler quiet(module.getContext(), [&](Diagnostic &d) {
    if (why.empty())
      why = d.str();
    return success();
  });
  PassManager pm(module.getContext());
  tnlm::buildTrainPipeline(pm, options, policy);
  if (failed(pm.run(module)))
    return failure();
  FailureOr<tnlm::KernelPlan> p =
      tnlm::lowerToKernelPlan(module, "train_step", maxBatch, maxSeq, target);
  if (failed(p))
    return failure();
  FailureOr<int64_t> window = gradStreamWindow();
  if (failed(window))
    return failure();
  planArena(*p, *window);
  return p->arenaBytes;
}

/// What one H200 gives a process (cuMemGetInfo's total there, 139.8 GiB).
constexpr int64_t kH200Bytes = int64_t(139.8 * 1024 * 1024 * 1024);

/// The persistent training state of a train artifact, by kind (--summary); returns its bytes.
/// On cuda:sm_90a the parameters add their f32 master copy and the bf16 copy the matrix
/// products read (docs/gpu-training.md).
int64_t printTrainState(const tnlm::KernelPlan &plan, bool cuda) {
  std::map<std::string, std::pair<int64_t, int64_t>> byKind; // kind -> (tensors, bytes)
  int64_t total = 0;
  for (const tnlm::PlanState &s : plan.state) {
    int64_t n = 1;
    for (int64_t d : s.shape)
      n *= d;
    byKind[s.kind].first += 1;
    byKind[s.kind].second += 4 * n;
    total += 4 * n;
  }
  int64_t params = 0;
  for (const tnlm::PlanParam &p : plan.params) {
    int64_t n = 1;
    for (int64_t d : p.shape)
      n *= d;
    params += n;
  }
  llvm::outs() << (cuda ? "training state (persistent: the parameters and their state)\n"
                        : "training state (persistent, besides the parameters)\n");
  auto line = [](const char *label, int64_t bytes, const std::string &extra) {
    llvm::outs() << llvm::formatv("  {0,-26} {1,18}  ({2:F2} MiB{3})\n", label,
                                  tnlm::withThousands(bytes), bytes / (1024.0 * 1024.0), extra);
  };
  if (cuda) {
    line("master weights (f32)", 4 * params,
         ", " + std::to_string(plan.params.size()) + " tensors");
    line("weights for GEMMs (bf16)", 2 * params, "");
    total += 6 * params;
  }
  const std::pair<const char *, const char *> names[] = {{"grad", "gradients (f32)"},
                                                         {"adam_m", "AdamW exp_avg (f32)"},
                                                         {"adam_v", "AdamW exp_avg_sq (f32)"},
                                                         {"step", "step counter (i32)"}};
  for (auto [kind, label] : names)
    if (byKind.count(kind))
      line(label, byKind[kind].second, ", " + std::to_string(byKind[kind].first) + " tensors");
  line("total", total, "");
  if (!cuda)
    llvm::outs() << "  (the CPU backend keeps parameters in f32: no separate master weights)\n";
  return total;
}

} // namespace

int main(int argc, char **argv) {
  llvm::InitLLVM init(argc, argv);
  // libLLVM.so's static initializers register hundreds of backend options (AArch64, AMDGPU…)
  // in the general category, so hiding by category would keep them along with MLIR's: hide
  // everything registered so far but tnlmc's own (and --help, --version), then register the
  // MLIR options (--mlir-print-ir-after-all, --mlir-print-debuginfo, --mlir-timing, …).
  cl::HideUnrelatedOptions(category);
  registerAsmPrinterCLOptions();
  registerMLIRContextCLOptions();
  registerPassManagerCLOptions();
  registerDefaultTimingManagerCLOptions();
  cl::ParseCommandLineOptions(
      argc, argv,
      "tnlm compiler: TransNormerLLM config or tnlm IR -> IR, kernel plan, artifact\n\n"
      "  tnlmc models/tnl-7b.json --summary\n"
      "  tnlmc models/tiny.json --emit=mlir -o tiny.mlir\n"
      "  tnlmc models/tiny.json --mode=infer --target=cpu --batch=4 --seq=256 -o tiny.tnlm\n"
      "  tnlmc models/tiny.json --pipeline=infer --emit=mlir --mlir-print-ir-after-all\n"
      "  tnlmc models/tnl-7b.json --mode=train --recompute=full --summary\n"
      "  tnlmc models/tnl-1b.json --target=cuda:sm_90a --emit=cuda-source -o gen/\n");

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

  if (target != "cpu" && !isCuda()) {
    error("--target=" + target +
          ": unknown or not yet supported target (supported: cpu, cuda:sm_90a)");
    return 1;
  }
  // Rows (batch x seq) index 32-bit BLAS/CUDA sizes; the runtime refuses more.
  if (maxBatch >= 1 && maxSeq >= 1 && maxBatch > ((int64_t(1) << 31) - 1) / maxSeq) {
    error("--batch x --seq = " + std::to_string(maxBatch) + " x " + std::to_string(maxSeq) +
          " exceeds 2^31 - 1 rows");
    return 1;
  }
  if (maxBatch < 1 || maxSeq < 1) {
    error("--batch and --seq must be positive, got " + std::to_string(maxBatch) + " and " +
          std::to_string(maxSeq));
    return 1;
  }
  llvm::StringRef out = outputPath;
  Emit what = emit;
  if (what == Emit::None)
    what = out.ends_with(".tnlm") ? Emit::Artifact : summary ? Emit::None : Emit::Mlir;
  if (what == Emit::CudaSource && !isCuda()) {
    error("--emit=cuda-source needs --target=cuda:sm_90a");
    return 1;
  }
  if (what == Emit::Executable && mode != Mode::Recurrent) {
    error("--emit=executable generates text: compile with --mode=recurrent");
    return 1;
  }
  if (!embedWeights.empty() && what != Emit::Executable) {
    error("--embed-weights applies to --emit=executable");
    return 1;
  }
  if ((what == Emit::Artifact || what == Emit::Executable) && outputPath == "-") {
    error(what == Emit::Executable ? "--emit=executable needs an output file: -o NAME"
                                   : "--emit=artifact needs an output file: -o model.tnlm");
    return 1;
  }
  // Everything tnlmc emits has been through the pipeline unless --pipeline=none asks for the
  // IR as imported or parsed.
  bool train = mode == Mode::Train;
  Pipeline stages =
      pipeline == Pipeline::Auto ? (train ? Pipeline::Train : Pipeline::Infer) : pipeline;
  if (train && stages == Pipeline::Infer) {
    error("--mode=train needs --pipeline=train (the default) or --pipeline=none on a module "
          "that already has @train_step");
    return 1;
  }
  if (!train && stages == Pipeline::Train) {
    error("--pipeline=train builds training functions: use it with --mode=train");
    return 1;
  }
  const bool recurrentMode = mode == Mode::Recurrent;
  if (recurrentMode && stages == Pipeline::Train) {
    error("--pipeline=train builds training functions: use it with --mode=train");
    return 1;
  }
  if (recompute.getNumOccurrences() && stages != Pipeline::Train) {
    error("--recompute applies with --mode=train and --pipeline=train (the default there)");
    return 1;
  }
  if (blockSize < 0 || (blockSize.getNumOccurrences() && stages == Pipeline::None)) {
    error("--block-size must be >= 0 and applies with --pipeline=infer or train only");
    return 1;
  }
  // The summary's parameter and FLOP counts do not depend on the pipeline; the planned arena
  // below does. --mlir-print-ir-after-all shows each stage of the pipeline on stderr.
  DefaultTimingManager timing;
  applyDefaultTimingManagerCLOptions(timing);
  TimingScope timingRoot = timing.getRootScope();
  tnlm::InferPipelineOptions options;
  options.target = target;
  options.maxSeq = maxSeq;
  options.blockSize = blockSize;
  // A train summary compares the recompute policies: each other one compiles a copy of the
  // module as imported.
  OwningOpRef<ModuleOp> imported;
  if (summary && stages == Pipeline::Train)
    imported = module->clone();
  if (stages != Pipeline::None) {
    PassManager pm(&context);
    if (failed(applyPassManagerCLOptions(pm)))
      return 1;
    pm.enableTiming(timingRoot);
    if (stages == Pipeline::Train)
      tnlm::buildTrainPipeline(pm, options, policyName(recompute));
    else if (recurrentMode)
      tnlm::buildRecurrentPipeline(pm, options, maxBatch);
    else
      tnlm::buildInferPipeline(pm, options);
    if (failed(pm.run(*module)))
      return 1;
  }
  std::vector<std::string> functions = {"forward"};
  if (train)
    functions = {"train_step", "optimizer_step", "eval_loss"};
  if (recurrentMode)
    functions = {"prefill", "decode_step"};
  const bool lowering = what == Emit::Plan || what == Emit::Artifact || what == Emit::CudaSource ||
                        what == Emit::Executable;
  for (const std::string &f : functions)
    if (lowering && !module->lookupSymbol<func::FuncOp>(f)) {
      error(inputPath + ": the module has no @" + f + " to compile for --mode=" +
            (train           ? "train"
             : recurrentMode ? "recurrent"
                             : "infer") +
            (stages == Pipeline::None ? " (--pipeline=none compiles the module as it is: drop "
                                        "it to run the mode's pipeline)"
                                      : ""));
      return 1;
    }

  // The kernel plan serves the summary (planned arena) and the plan/artifact outputs.
  std::optional<tnlm::KernelPlan> plan; // the first function's
  std::vector<tnlm::KernelPlan> plans;
  std::string planError;
  TimingScope lowerTiming = timingRoot.nest("lower to kernels, plan memory");
  if (summary || lowering) {
    bool needed = what != Emit::None;
    // For a summary alone the plan is optional: a module that cannot be lowered still gets
    // its parameter and FLOP counts, and the reason instead of the arena size.
    std::optional<ScopedDiagnosticHandler> quiet;
    if (!needed)
      quiet.emplace(&context, [&](Diagnostic &d) {
        if (planError.empty())
          planError = d.str();
        return success();
      });
    FailureOr<std::vector<tnlm::KernelPlan>> lowered =
        tnlm::lowerFunctions(*module, functions, maxBatch, maxSeq, target);
    if (failed(lowered)) {
      if (needed)
        return 1;
    } else {
      FailureOr<int64_t> window = gradStreamWindow();
      if (failed(window))
        return 1;
      for (tnlm::KernelPlan &p : *lowered)
        planArena(p, *window);
      plans = std::move(*lowered);
      plan = plans.front();
    }
  }
  lowerTiming.stop();

  if (summary) {
    FailureOr<tnlm::ModelSummary> s = tnlm::summarizeModel(*module, "forward");
    if (failed(s))
      return 1;
    tnlm::printSummary(*s, *module, llvm::outs());
    llvm::outs() << "activation memory (" << target << ", batch " << maxBatch << ", seq " << maxSeq
                 << ")\n";
    if (plan) {
      for (const tnlm::KernelPlan &p : plans)
        llvm::outs() << llvm::formatv(
            "  {0,-26} {1,18}  ({2:F2} MiB, {3} kernel steps, {4} "
            "buffers)\n",
            train ? "@" + p.function + " arena peak" : std::string("planned arena peak"),
            tnlm::withThousands(p.arenaBytes), p.arenaBytes / (1024.0 * 1024.0), p.steps.size(),
            p.buffers.size());
      std::vector<std::pair<Recompute, int64_t>> policyArenas; // @train_step's, by policy
      if (train && imported) {
        TimingScope policyTiming = timingRoot.nest("summary: the other recompute policies");
        llvm::outs() << "@train_step arena per --recompute policy (this artifact: "
                     << policyName(recompute) << ")\n";
        for (Recompute r : {Recompute::None, Recompute::Attention, Recompute::Full}) {
          std::string why;
          FailureOr<int64_t> bytes = plans.front().arenaBytes;
          if (r != recompute) {
            OwningOpRef<ModuleOp> copy = imported->clone();
            bytes = trainStepArena(*copy, options, policyName(r), why);
          }
          if (failed(bytes)) {
            llvm::outs() << "  " << policyName(r) << ": not planned: " << why << "\n";
            continue;
          }
          policyArenas.push_back({r, *bytes});
          llvm::outs() << llvm::formatv("  {0,-26} {1,18}  ({2:F2} MiB){3}\n", policyName(r),
                                        tnlm::withThousands(*bytes), *bytes / (1024.0 * 1024.0),
                                        r == recompute ? "  <- chosen" : "");
        }
      }
      if (train) {
        const int64_t state = printTrainState(plans.front(), isCuda());
        if (isCuda()) {
          int64_t arena = 0;
          for (const tnlm::KernelPlan &p : plans)
            arena = std::max(arena, p.arenaBytes);
          // + the executor's train scratch (the loss's logit gradients, ...) + cuBLASLt's
          // workspace
          const tnlm::GpuTrainScratchBytes scratch =
              tnlm::gpuTrainScratch(plans, int64_t(maxBatch) * int64_t(maxSeq), int64_t(maxSeq));
          llvm::outs() << llvm::formatv(
              "train scratch (GPU)              {0,18}  ({1:F2} MiB: the gated backward's "
              "products {2:F2} MiB",
              tnlm::withThousands(int64_t(scratch.total)), scratch.total / (1024.0 * 1024.0),
              scratch.gated / (1024.0 * 1024.0));
          if (scratch.lmHeadChunkRows > 0)
            llvm::outs() << llvm::formatv(", the lm head loss's chunk of {0} rows {1:F2} MiB",
                                          scratch.lmHeadChunkRows,
                                          scratch.lmHead / (1024.0 * 1024.0));
          if (scratch.keptLaStates > 0)
            llvm::outs() << llvm::formatv(", the kept Lightning states {0:F2} MiB",
                                          scratch.keptLaStates / (1024.0 * 1024.0));
          llvm::outs() << ")\n";
          const int64_t fixed = state + int64_t(scratch.total) + (32 << 20);
          const int64_t need = fixed + arena;
          const bool fits = need <= kH200Bytes;
          std::string advice;
          if (!fits && fixed > kH200Bytes) {
            advice = "; the training state alone needs more than one GPU (it has to be sharded)";
          } else if (!fits) {
            advice = "; no --recompute policy fits at this --batch and --seq: lower them";
            int64_t others = 0; // the arenas of the functions besides @train_step
            for (size_t i = 1; i < plans.size(); ++i)
              others = std::max(others, plans[i].arenaBytes);
            for (auto [r, bytes] : policyArenas) {
              const int64_t withR = fixed + std::max(bytes, others);
              if (r != recompute && withR <= kH200Bytes) {
                advice = llvm::formatv("; --recompute={0} would ({1:F2} GiB)", policyName(r),
                                       withR / (1024.0 * 1024.0 * 1024.0));
                break;
              }
            }
          }
          llvm::outs() << llvm::formatv(
              "one GPU: {0} bytes ({1:F2} GiB: the state, the largest arena, the train scratch, "
              "32 MiB for cuBLASLt): {2} an H200 (139.8 GiB){3}\n",
              tnlm::withThousands(need), need / (1024.0 * 1024.0 * 1024.0),
              fits ? "fits" : "does NOT fit", advice);
        } else {
          // The CPU executor's chunk of the lm head loss's f32 logits (heap, beside the arena).
          const tnlm::GpuTrainScratchBytes scratch =
              tnlm::gpuTrainScratch(plans, int64_t(maxBatch) * int64_t(maxSeq), int64_t(maxSeq));
          if (scratch.lmHeadChunkRows > 0) {
            const int64_t bytes = scratch.lmHead / 6 * 4; // f32 logits, dz in place
            llvm::outs() << llvm::formatv(
                "lm head loss chunk (CPU heap)    {0,18}  ({1:F2} MiB: {2} rows of f32 logits; "
                "the [tokens, V] logits are never whole)\n",
                tnlm::withThousands(bytes), bytes / (1024.0 * 1024.0), scratch.lmHeadChunkRows);
          }
        }
      }
    } else {
      llvm::outs() << "  not planned: " << planError << "\n";
    }
  }

  if (what == Emit::None)
    return 0;

  std::optional<tnlm::CudaProgram> program;
  if (isCuda() &&
      (what == Emit::Artifact || what == Emit::CudaSource || what == Emit::Executable)) {
    FailureOr<tnlm::CudaProgram> emitted = tnlm::emitCudaProgram(plans, module->getLoc());
    if (failed(emitted))
      return 1;
    program = std::move(*emitted);
    if (what == Emit::CudaSource)
      return writeCudaSource(plans, *program);
  }

  tnlm::CudaImage image;
  if (program && !compileCudaProgram(*program, image))
    return 1;
  if (what == Emit::Executable) {
    std::vector<std::pair<std::string, std::vector<int64_t>>> params;
    for (const tnlm::PlanParam &p : plans.front().params)
      params.push_back({p.name, p.shape});
    llvm::SmallString<256> runner(llvm::sys::path::parent_path(
        llvm::sys::fs::getMainExecutable(argv[0], reinterpret_cast<void *>(&writeCudaSource))));
    llvm::sys::path::append(runner, "tnlm-exe-runner");
    std::string err = tnlmc::writeExecutable(outputPath,
                                             tnlm::serializeArtifact(*module, plans, target,
                                                                     program ? &*program : nullptr,
                                                                     program ? &image : nullptr),
                                             runner.str().str(), embedWeights, params);
    if (!err.empty()) {
      error(err);
      return 1;
    }
    return 0;
  }
  if (what == Emit::Artifact) {
    std::vector<uint8_t> bytes = tnlm::serializeArtifact(
        *module, plans, target, program ? &*program : nullptr, program ? &image : nullptr);
    std::string err = tnlm::writeFileAtomically(outputPath, bytes);
    if (!err.empty()) {
      error(err);
      return 1;
    }
    return 0;
  }
  std::string message;
  auto file = openOutputFile(outputPath, &message);
  if (!file) {
    error(outputPath + ": " + message);
    return 1;
  }
  if (what == Emit::Plan)
    for (const tnlm::KernelPlan &p : plans)
      tnlm::printPlan(p, file->os());
  else
    module->print(file->os());
  file->os() << "\n";
  file->keep();
  return 0;
}
