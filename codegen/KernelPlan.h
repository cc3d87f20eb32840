//===- KernelPlan.h - the kernel-level form of a model function -*- C++ -*-===//
//
// Kernel level: one step per kernel launch, every activation an explicit buffer in one arena.
// Activations are 2-D row-major matrices [rows = batch · seq, cols]; split, split_heads and
// merge_heads become views (column offset + row stride) of the buffer they read, so they cost
// no launch and no copy. Buffer sizes are planned for max_batch × max_seq; a call with a
// smaller batch or sequence uses a prefix of each buffer with the same row stride.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_CODEGEN_KERNELPLAN_H
#define TNLM_CODEGEN_KERNELPLAN_H

#include "mlir/IR/BuiltinOps.h"
#include "llvm/Support/raw_ostream.h"

#include <cstdint>
#include <string>
#include <vector>

namespace mlir::tnlm {

enum class KernelKind {
  Embedding,
  SrmsNorm,
  Linear,
  Silu,
  Mul,
  Add,
  Lrpe,
  DecayAttention,
  CrossEntropy,
  LightningAttention, // tnlm.lightning_attention
  AddSrmsNorm,        // tnlm.add_srms_norm
  GatedLinear,        // tnlm.gated_linear
  // Backward (tnlm-autodiff), in the order of runtime/schema/tnlm.fbs.
  LinearGradInput,
  LinearGradWeight,
  SrmsNormGrad,
  AddSrmsNormGrad,
  SiluGrad,
  LrpeGrad,
  DecayAttentionGrad,
  LightningAttentionGrad,
  GatedLinearGrad,
  EmbeddingGrad,
  CrossEntropyGrad,
  Concat,
  Fill,
  // Optimizer.
  GlobalNorm,
  LrSchedule,
  ClipScale,
  AdamW,
  Increment,
  // Recurrent inference.
  LightningPrefill,
  LightningDecode,
  GatherLast,
  // CUDA train plans: the lm head fused with its cross entropy (and backward), in chunks of rows.
  LmHeadLoss
};
const char *kernelName(KernelKind kind);

enum class OperandKind { Arena, Param, Input, State };

/// A 2-D view [rows, cols] with row stride `ld` (elements) and a column offset into its base.
/// rows = kRowsPerCall: the call's batch · seq rows; otherwise a fixed count (parameter-shaped
/// gradients and state, scalars as [1, 1]).
constexpr int64_t kRowsPerCall = -1;
/// rows = kRowsPerBatch: one row per slot of the call (batch rows; the prefill's last
/// positions).
constexpr int64_t kRowsPerBatch = -2;
struct PlanOperand {
  OperandKind kind = OperandKind::Arena;
  int64_t index = 0; // buffer id (Arena), param index (Param), function input (Input), state
  int64_t colOffset = 0;
  int64_t cols = 0;
  int64_t ld = 0;
  std::string dtype = "f32"; // "f32", "bf16", "f16", "i32"
  int64_t rows = kRowsPerCall;

  bool sameStorage(const PlanOperand &o) const { return kind == o.kind && index == o.index; }
};

struct PlanStep {
  KernelKind kind;
  std::string name; // from the op's location (Hugging Face module name)
  std::vector<PlanOperand> inputs, outputs;
  std::vector<float> f32Attrs;
  std::vector<int64_t> i64Attrs;
  std::vector<float> slopes;
  /// CUDA @decode_step, a linear or gated_linear whose input is the normalized output of the
  /// step before it (markDecodeFusions): the small-batch GEMV computes that norm itself and the
  /// step before it does not run (1 srms_norm, 2 add_srms_norm, 3 the gated norm of a
  /// lightning_decode); 0 = none.
  int64_t gemvPrologue = 0;
  /// CUDA @decode_step, the qkvu linear whose output only the lightning_decode right after it
  /// reads as its q, k, v, u (markDecodeFusions): that step's i64Attrs (heads, dh, lrpe, silu),
  /// for the launch that runs both (rec::gemv_decode); empty = none.
  std::vector<int64_t> decodeFusion;
};

struct PlanBuffer {
  int64_t cols = 0;                    // row-proportional buffers (activations): [rows, cols]
  std::string dtype = "f32";           // element type of every operand that views this buffer
  int64_t bytesPerRow = 0;             // cols × the element size of dtype
  int64_t fixedBytes = 0;              // scalars (loss)
  int64_t firstStep = 0, lastStep = 0; // live interval, inclusive
  int64_t offset = -1;                 // arena byte offset, set by the memory planner
  int64_t bytes(int64_t rows) const { return bytesPerRow * rows + fixedBytes; }
};

struct PlanParam {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape;
};

/// Persistent state besides the parameters (train artifacts): gradients, AdamW moments, the
/// step counter. `kind` is the schema's StateKind name ("grad", "adam_m", "adam_v", "step").
struct PlanState {
  std::string name; // "grad/<param>", "adam_m/<param>", "adam_v/<param>", "step"
  std::string kind;
  std::string dtype; // "f32" or "i32"
  std::vector<int64_t> shape;
  std::string param; // the parameter it belongs to, or ""
};

struct PlanIO {
  std::string name;
  std::string dtype;
  std::vector<int64_t> shape; // kDimBatch / kDimSeq for per-call dims
  int64_t buffer = -1;        // outputs: the buffer holding the result
};

constexpr int64_t kDimBatch = -1, kDimSeq = -2;

struct KernelPlan {
  std::string function;
  int64_t maxBatch = 1, maxSeq = 1;
  std::vector<PlanParam> params;
  std::vector<PlanState> state;
  std::vector<PlanIO> inputs, outputs;
  std::vector<PlanStep> steps;
  std::vector<PlanBuffer> buffers;
  int64_t arenaBytes = 0; // planned peak, set by the memory planner

  int64_t maxRows() const { return maxBatch * maxSeq; }
};

/// CUDA @decode_step: sets gemvPrologue on each linear/gated_linear that reads the normalized
/// output of the step right before it (srms_norm, add_srms_norm, lightning_decode's gated
/// norm) and nothing else reads, and keeps that step's operands live through the GEMV's step.
/// lowerToKernelPlan calls it (before memory planning).
void markDecodeFusions(KernelPlan &plan);

/// Bytes per element of a plan dtype ("f32", "bf16", "f16", "i32").
int64_t dtypeBytes(llvm::StringRef dtype);

/// Lowers `function` of a model-level module to a kernel plan for `target`: "cpu" (f32
/// activations) or "cuda:sm_90a" (bf16 activations, f32 logits; gated_linear becomes two GEMMs
/// and a product, since cuBLASLt has no product epilogue). Emits a diagnostic and fails on ops
/// or forms it cannot lower.
FailureOr<KernelPlan> lowerToKernelPlan(ModuleOp module, llvm::StringRef function, int64_t maxBatch,
                                        int64_t maxSeq, llvm::StringRef target = "cpu");

/// Lowers several functions of one module into plans that share one parameter table and one
/// state table (the first plan's params, the union of the state in order of appearance), so
/// their operands index the same artifact tables.
FailureOr<std::vector<KernelPlan>> lowerFunctions(ModuleOp module,
                                                  llvm::ArrayRef<std::string> functions,
                                                  int64_t maxBatch, int64_t maxSeq,
                                                  llvm::StringRef target = "cpu");

/// Liveness-based static planning of all buffers into one arena (greedy by size, first fit).
/// Sets every buffer's offset and the plan's arenaBytes.
void planMemory(KernelPlan &plan);
/// Keeps the arena inputs of every LinearGradWeight step live `window` steps past it (before
/// planMemory), so that a CUDA executor running those GEMMs on a second stream
/// (TNLM_GRAD_STREAM=1) finds the next steps writing elsewhere and need not wait for them
/// (tnlmc: TNLM_GRAD_STREAM_WINDOW=N).
void keepGradWeightInputs(KernelPlan &plan, int64_t window);

/// Keeps the input x of a gated pair's GEMMs live up to the pair's product step (before
/// planMemory): a CUDA executor runs the pair and the product as one kernel (SGLU's forward
/// fused, codegen/cuda/GemmSm90.cuh), whose product stores must not land on x while other
/// tiles still read it.
void keepGatedProductInputs(KernelPlan &plan);

/// Sum of the bytes of buffers live at the busiest step: a lower bound on any arena.
int64_t peakLiveBytes(const KernelPlan &plan);

/// Human-readable kernel-level form (`tnlmc --emit=plan`).
void printPlan(const KernelPlan &plan, llvm::raw_ostream &os);

} // namespace mlir::tnlm

#endif // TNLM_CODEGEN_KERNELPLAN_H
