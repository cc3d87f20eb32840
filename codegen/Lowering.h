//===- Lowering.h - the model-level → kernel-plan lowering (private) -*- C++ -*-===//
//
// One Lowering per function: values map to plan operands (arena buffers, views of them,
// parameters, inputs, state); each op appends steps. LowerToKernels.cpp lowers the forward
// ops and the function boundary, LowerTraining.cpp the backward and optimizer ops.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_CODEGEN_LOWERING_H
#define TNLM_CODEGEN_LOWERING_H

#include "codegen/KernelPlan.h"
#include "dialect/TnlmOps.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"

#include <map>
#include <utility>

namespace mlir::tnlm::detail {

std::string locName(Location loc);
int64_t lastDim(Value v);

class Lowering {
public:
  Lowering(KernelPlan &plan, StringRef target)
      : plan(plan), cuda(target != "cpu"), actDtype(cuda ? "bf16" : "f32") {}

  LogicalResult run(func::FuncOp fn);

private:
  KernelPlan &plan;
  bool cuda;            // CUDA target: bf16 activations, gated pairs as two Linear steps
  std::string actDtype; // dtype of activation buffers
  llvm::DenseMap<Value, PlanOperand> values;
  /// CUDA train plans: a = x·W1ᵀ and b = x·W2ᵀ of each gated projection's forward (its two
  /// GEMMs' outputs), by (x, W1), for its gated_linear_grad to read instead of recomputing.
  std::map<std::pair<void *, void *>, std::pair<PlanOperand, PlanOperand>> gatedProducts;
  /// CUDA train plans: the workspace of the newest plain (SiLU, no LRPE) Lightning Attention
  /// step of each qkvu value, which keeps φ(q), φ(k) and O (columns [0, 3D)) for the layer's
  /// backward to read instead of recomputing them; with its heads and head dim.
  struct LightningKept {
    PlanOperand workspace;
    int64_t heads, dh;
  };
  llvm::DenseMap<Value, LightningKept> lightningKept;
  // Results that are the new value of a parameter or state (tnlm.updates): where they live.
  llvm::DenseMap<Value, SmallVector<PlanOperand, 1>> updates;
  /// CUDA train plans: an lm head whose logits only its cross entropy (and that loss's
  /// gradient, whose result only the head's two backward products) read, lowered as one
  /// lm_head_loss step (findLmHeadFusions). Without `grad` (@eval_loss), the loss alone.
  struct LmHeadFusion {
    LmHeadOp head;
    CrossEntropyOp loss;
    CrossEntropyGradOp grad;
    LinearInputGradOp dx;
    LinearWeightGradOp dw;
  };
  llvm::DenseMap<Operation *, LmHeadFusion> lmHeadAt; // the op where the fused step goes
  llvm::DenseSet<Operation *> fusedAway;              // the group's other ops (no steps)

  LogicalResult bindArguments(func::FuncOp fn);
  LogicalResult checkDims(Operation *where, RankedTensorType type);
  PlanOperand newBuffer(int64_t cols, int64_t step);
  // An f32 scratch buffer of `cols` per call row, whatever the activation dtype.
  PlanOperand newWorkspace(int64_t cols, int64_t step);
  // A buffer of one row per slot (kRowsPerBatch), planned for the max batch.
  PlanOperand newBatchBuffer(int64_t cols, int64_t step);
  // A buffer of a static shape: [numel / last, last] (rank 0: [1, 1]), f32 or i32.
  PlanOperand newFixedBuffer(RankedTensorType type, int64_t step);
  // Where result `r` of the next step goes: its update target, or a new buffer (static
  // shapes: fixed rows; otherwise `cols` columns per call row).
  FailureOr<PlanOperand> resultOperand(Operation *op, Value r, int64_t cols);
  FailureOr<PlanOperand> use(Operation *op, Value v);
  FailureOr<PlanOperand> useParam(Operation *op, Value v, const char *what);
  FailureOr<PlanOperand> useActivation(Operation *op, Value v);
  /// The inputs every Lightning Attention step starts with: qkvu, then LRPE's θ when given.
  FailureOr<std::vector<PlanOperand>> qkvuAndTheta(Operation *op, Value qkvu, Value theta);
  PlanOperand emit(KernelKind kind, std::string name, std::vector<PlanOperand> inputs,
                   int64_t cols);
  void setF32(int64_t id);
  PlanStep &addStep(KernelKind kind, Operation *op);
  LogicalResult unary(Operation *op, KernelKind kind, std::vector<float> f32Attrs = {});
  LogicalResult binary(Operation *op, KernelKind kind);
  LogicalResult linear(Operation *op, Value x, Value w, Value result);
  LogicalResult lightningAttention(LightningAttentionOp la);
  LogicalResult lowerReturn(func::ReturnOp ret, func::FuncOp fn);
  LogicalResult lower(Operation &op);
  // LowerTraining.cpp: backward and optimizer ops; failure() with a diagnostic, or
  // std::nullopt-like `handled = false` when `op` is none of them.
  LogicalResult lowerTraining(Operation &op, bool &handled);
  LogicalResult fixedBinary(Operation *op, KernelKind kind);
  LogicalResult lightningAttentionGrad(LightningAttentionGradOp op);
  void findLmHeadFusions(func::FuncOp fn);
  LogicalResult lowerLmHeadLoss(LmHeadFusion f);
  // LowerTraining.cpp as well: tnlm.lightning_prefill / lightning_decode / gather_last.
  LogicalResult lowerRecurrent(Operation &op, bool &handled);
};

} // namespace mlir::tnlm::detail

#endif // TNLM_CODEGEN_LOWERING_H
