//===- LowerRecurrent.cpp - recurrent inference ops → kernel steps --------===//
//
// tnlm.lightning_prefill, tnlm.lightning_decode and tnlm.gather_last (tnlm-recurrent) become
// one step each (tnlm.fbs). The per-layer state is a State operand [max_batch·H·dk, dv]
// written in place (its new value is a tnlm.updates result); lengths and positions are i32
// inputs with one entry per slot.
//
//===----------------------------------------------------------------------===//
#include "codegen/Lowering.h"

#include "dialect/TnlmOps.h"

namespace mlir::tnlm::detail {

namespace {
template <typename Op> constexpr bool isPrefill = std::is_same_v<Op, LightningPrefillOp>;
} // namespace

template <typename Op>
static LogicalResult lowerMixer(Op op, KernelPlan &plan, bool cuda,
                                llvm::function_ref<FailureOr<PlanOperand>(Value)> useAny,
                                llvm::function_ref<FailureOr<PlanOperand>(Value)> useActivation,
                                llvm::function_ref<FailureOr<PlanOperand>(Value, int64_t)> result,
                                llvm::function_ref<PlanOperand(int64_t)> workspace,
                                llvm::function_ref<PlanStep &()> addStep,
                                llvm::DenseMap<Value, PlanOperand> &values) {
  FailureOr<PlanOperand> qkvu = useActivation(op.getQkvu());
  FailureOr<PlanOperand> state = useAny(op.getState());
  FailureOr<PlanOperand> slots = useAny(op->getOperand(2));
  if (failed(qkvu) || failed(state) || failed(slots))
    return failure();
  if (state->kind != OperandKind::State)
    return op.emitError() << "the recurrent state must be a tnlm.state argument";
  std::vector<PlanOperand> inputs = {*qkvu, *state, *slots};
  if (Value theta = op.getTheta()) {
    FailureOr<PlanOperand> t = useAny(theta);
    if (failed(t))
      return failure();
    if (t->kind != OperandKind::Param)
      return op.emitError() << "LRPE theta must be a parameter (a tnlm.param argument)";
    inputs.push_back(*t);
  }
  const int64_t heads = op.getHeads(), dh = op.getHeadDim();
  const bool lrpe = static_cast<bool>(op.getTheta()), silu = op.getActivation() == "silu";
  FailureOr<PlanOperand> y = result(op.getResult(), heads * dh);
  FailureOr<PlanOperand> newState = result(op.getNewState(), dh);
  if (failed(y) || failed(newState))
    return failure();
  if (!newState->sameStorage(*state))
    return op.emitError() << "the new state must be returned as the update of its state "
                             "argument (written in place)";
  std::vector<PlanOperand> outputs = {*y, *newState};
  std::vector<int64_t> attrs;
  if constexpr (isPrefill<Op>) {
    const int64_t block = op.getBlockSizeAttr().getInt();
    if (block <= 0)
      return op.emitError() << "the Lightning Attention block size is not chosen; run "
                               "tnlm-choose-tiles";
    if (lrpe || (silu && !cuda))
      outputs.push_back(workspace(2 * heads * op.getKeyDim()));
    attrs = {heads, dh, block, lrpe ? 1 : 0, silu ? 1 : 0};
  } else {
    attrs = {heads, dh, lrpe ? 1 : 0, silu ? 1 : 0};
  }
  PlanStep &s = addStep();
  s.inputs = std::move(inputs);
  s.outputs = outputs;
  s.i64Attrs = std::move(attrs);
  s.f32Attrs = {op.getEps().convertToFloat()};
  s.slopes.assign(op.getSlopes().begin(), op.getSlopes().end());
  values[op.getResult()] = *y;
  values[op.getNewState()] = *newState;
  return success();
}

LogicalResult Lowering::lowerRecurrent(Operation &op, bool &handled) {
  handled = true;
  auto useAny = [&](Value v) { return use(&op, v); };
  auto useAct = [&](Value v) { return useActivation(&op, v); };
  auto result = [&](Value r, int64_t cols) { return resultOperand(&op, r, cols); };
  // The prologue's q', k': f32 on the CPU; on CUDA only LRPE layers need them (bf16 planes
  // [q cos | k cos | q sin | k sin], the forward's layout); SiLU runs in place in qkvu.
  auto workspace = [&](int64_t cols) {
    return cuda ? newBuffer(cols, plan.steps.size()) : newWorkspace(cols, plan.steps.size());
  };
  if (auto p = llvm::dyn_cast<LightningPrefillOp>(op))
    return lowerMixer(
        p, plan, cuda, useAny, useAct, result, workspace,
        [&]() -> PlanStep & { return addStep(KernelKind::LightningPrefill, &op); }, values);
  if (auto d = llvm::dyn_cast<LightningDecodeOp>(op))
    return lowerMixer(
        d, plan, cuda, useAny, useAct, result, workspace,
        [&]() -> PlanStep & { return addStep(KernelKind::LightningDecode, &op); }, values);
  if (auto g = llvm::dyn_cast<GatherLastOp>(op)) {
    FailureOr<PlanOperand> x = useActivation(&op, g.getInput());
    FailureOr<PlanOperand> lengths = use(&op, g.getLengths());
    if (failed(x) || failed(lengths))
      return failure();
    PlanOperand y = newBatchBuffer(x->cols, plan.steps.size());
    PlanStep &s = addStep(KernelKind::GatherLast, &op);
    s.inputs = {*x, *lengths};
    s.outputs = {y};
    values[g.getResult()] = y;
    return success();
  }
  handled = false;
  return success();
}

} // namespace mlir::tnlm::detail
