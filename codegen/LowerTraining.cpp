//===- LowerTraining.cpp - backward and optimizer ops → kernel steps ------===//
//
// The ops tnlm-autodiff builds (TnlmGradOps.td) become one step each (tnlm.fbs documents every
// kernel's operands). Parameter-shaped values (weight gradients, state) are fixed-row
// operands; a result that updates a parameter or state (tnlm.updates) is written in place.
//
//===----------------------------------------------------------------------===//
#include "codegen/Lowering.h"

#include "dialect/TnlmOps.h"

#include <cstdlib>
#include <string>

namespace mlir::tnlm::detail {

namespace {
// Columns per row of the fused Lightning backward's workspace (runtime/cpu/Backward.h,
// fusedAttentionGradWorkspaceCols): q', k', dq', dk' (H·dk each) and O, dO (H·dh each).
int64_t lightningGradWorkspaceCols(int64_t heads, int64_t dh, bool lrpe) {
  int64_t dk = lrpe ? 2 * dh : dh;
  return 4 * heads * dk + 2 * heads * dh;
}
} // namespace

LogicalResult Lowering::fixedBinary(Operation *op, KernelKind kind) {
  FailureOr<PlanOperand> a = use(op, op->getOperand(0));
  FailureOr<PlanOperand> b = use(op, op->getOperand(1));
  if (failed(a) || failed(b))
    return failure();
  for (const PlanOperand *o : {&*a, &*b})
    if (o->rows == kRowsPerCall || o->kind == OperandKind::Input)
      return op->emitError() << "operands of a parameter-shaped " << op->getName()
                             << " must be parameter-shaped";
  FailureOr<PlanOperand> y = resultOperand(op, op->getResult(0), a->cols);
  if (failed(y))
    return failure();
  PlanStep &s = addStep(kind, op);
  s.inputs = {*a, *b};
  s.outputs = {*y};
  values[op->getResult(0)] = *y;
  return success();
}

LogicalResult Lowering::lightningAttentionGrad(LightningAttentionGradOp la) {
  Operation *op = la.getOperation();
  if (la.getOffset())
    return la.emitError() << "a runtime position offset is not supported in training";
  int64_t block = la.getBlockSizeAttr().getInt();
  if (block <= 0)
    return la.emitError() << "the Lightning Attention block size is not chosen; run "
                             "tnlm-choose-tiles before tnlm-autodiff";
  FailureOr<std::vector<PlanOperand>> qkvuTheta = qkvuAndTheta(op, la.getQkvu(), la.getTheta());
  FailureOr<PlanOperand> dy = useActivation(op, la.getGrad());
  if (failed(qkvuTheta) || failed(dy))
    return failure();
  std::vector<PlanOperand> inputs = std::move(*qkvuTheta);
  inputs.push_back(*dy);
  int64_t heads = la.getHeads(), dh = la.getHeadDim();
  bool lrpe = static_cast<bool>(la.getTheta()), silu = la.getActivation() == "silu";
  int64_t step = plan.steps.size();
  // CUDA, a plain layer: the forward step of this qkvu kept φ(q), φ(k) and O in its workspace
  // (lightningKept), which becomes the third input, and the step needs no workspace of its
  // own (the reference kernels, TNLM_LA_BWD_REFERENCE, recompute them instead).
  // TNLM_LA_KEEP_O=0 (when tnlmc runs, for comparisons): the backward recomputes them as
  // before (its own workspace, the pack and a fourth pass).
  const char *reference = std::getenv("TNLM_LA_BWD_REFERENCE");
  const char *keep = std::getenv("TNLM_LA_KEEP_O");
  const bool referenceKernels =
      (reference && std::string(reference) != "0") || (keep && std::string(keep) == "0");
  auto kept = lightningKept.find(la.getQkvu());
  const bool fromForward = cuda && silu && !lrpe && !referenceKernels &&
                           kept != lightningKept.end() && kept->second.heads == heads &&
                           kept->second.dh == dh;
  if (fromForward) {
    PlanBuffer &b = plan.buffers[kept->second.workspace.index];
    b.lastStep = std::max(b.lastStep, step);
    inputs.push_back(kept->second.workspace);
  }
  FailureOr<PlanOperand> dqkvu = resultOperand(op, la.getQkvuGrad(), 4 * heads * dh);
  if (failed(dqkvu))
    return failure();
  std::vector<PlanOperand> outputs = {*dqkvu};
  if (lrpe) {
    FailureOr<PlanOperand> dtheta = resultOperand(op, la.getThetaGrad(), dh);
    if (failed(dtheta))
      return failure();
    outputs.push_back(*dtheta);
    values[la.getThetaGrad()] = *dtheta;
  }
  if (!fromForward)
    outputs.push_back(newWorkspace(lightningGradWorkspaceCols(heads, dh, lrpe), step));
  PlanStep &s = addStep(KernelKind::LightningAttentionGrad, op);
  s.inputs = std::move(inputs);
  s.outputs = outputs;
  s.i64Attrs = {heads, dh, block, lrpe ? 1 : 0, silu ? 1 : 0, /*position offset*/ 0};
  s.f32Attrs = {la.getEps().convertToFloat()};
  s.slopes.assign(la.getSlopes().begin(), la.getSlopes().end());
  values[la.getQkvuGrad()] = *dqkvu;
  return success();
}

void Lowering::findLmHeadFusions(func::FuncOp fn) {
  // TNLM_LM_HEAD_FUSE=0 (when tnlmc runs; for tests of the separate steps' kernels): the lm
  // head and its cross entropy stay separate steps, their [tokens, V] logits whole in memory.
  if (const char *fuse = std::getenv("TNLM_LM_HEAD_FUSE"); fuse && std::string(fuse) == "0")
    return;
  for (Operation &op : fn.getBody().front()) {
    auto head = llvm::dyn_cast<LmHeadOp>(op);
    if (!head)
      continue;
    LmHeadFusion f{head, {}, {}, {}, {}};
    bool other = false;
    for (Operation *u : head.getResult().getUsers()) {
      if (auto ce = llvm::dyn_cast<CrossEntropyOp>(u); ce && !f.loss)
        f.loss = ce;
      else if (auto g = llvm::dyn_cast<CrossEntropyGradOp>(u); g && !f.grad)
        f.grad = g;
      else
        other = true;
    }
    if (other || !f.loss || f.loss.getLogits() != head.getResult())
      continue;
    std::vector<Operation *> group = {head, f.loss};
    if (f.grad) {
      if (f.grad.getLogits() != head.getResult() || f.grad.getLabels() != f.loss.getLabels() ||
          f.grad.getIgnoreIndexAttr().getInt() != f.loss.getIgnoreIndexAttr().getInt())
        continue;
      for (Operation *u : f.grad.getResult().getUsers()) {
        auto dx = llvm::dyn_cast<LinearInputGradOp>(u);
        auto dw = llvm::dyn_cast<LinearWeightGradOp>(u);
        if (dx && !f.dx && dx.getGrad() == f.grad.getResult() && dx.getWeight() == head.getWeight())
          f.dx = dx;
        else if (dw && !f.dw && dw.getGrad() == f.grad.getResult() &&
                 dw.getInput() == head.getInput())
          f.dw = dw;
        else
          other = true;
      }
      if (other || !f.dx || !f.dw)
        continue;
      group.insert(group.end(), {f.grad, f.dx, f.dw});
    }
    // The fused step goes where the group's last op is; what the others compute must not be
    // read before it (the loss, dx and dW exist only from there on).
    Operation *last = group.front();
    for (Operation *g : group)
      if (last->isBeforeInBlock(g))
        last = g;
    bool early = false;
    for (Operation *g : group)
      for (Operation *u : g->getUsers())
        early = early || (!llvm::is_contained(group, u) && u->isBeforeInBlock(last));
    if (early)
      continue;
    lmHeadAt[last] = f;
    for (Operation *g : group)
      if (g != last)
        fusedAway.insert(g);
  }
}

LogicalResult Lowering::lowerLmHeadLoss(LmHeadFusion f) {
  Operation *op = f.head.getOperation();
  FailureOr<PlanOperand> h = useActivation(op, f.head.getInput());
  FailureOr<PlanOperand> w = useParam(op, f.head.getWeight(), "the lm head's weight");
  FailureOr<PlanOperand> labels = use(op, f.loss.getLabels());
  if (failed(h) || failed(w) || failed(labels))
    return failure();
  if (h->rows != kRowsPerCall)
    return op->emitError() << "the fused lm head loss reads one row per position";
  std::vector<PlanOperand> inputs = {*h, *w, *labels};
  if (f.grad) {
    FailureOr<PlanOperand> dloss = use(op, f.grad.getLossGrad());
    if (failed(dloss))
      return failure();
    inputs.push_back(*dloss);
  }
  std::vector<std::pair<Value, int64_t>> results = {{f.loss.getResult(), 1}};
  if (f.grad)
    results.insert(results.end(),
                   {{f.dx.getResult(), lastDim(f.dx.getResult())}, {f.dw.getResult(), h->cols}});
  std::vector<PlanOperand> outputs;
  for (auto [r, cols] : results) {
    FailureOr<PlanOperand> y = resultOperand(op, r, cols);
    if (failed(y))
      return failure();
    outputs.push_back(*y);
    values[r] = *y;
  }
  PlanStep &s = addStep(KernelKind::LmHeadLoss, op);
  s.inputs = std::move(inputs);
  s.outputs = std::move(outputs);
  s.i64Attrs = {f.loss.getIgnoreIndexAttr().getInt()};
  return success();
}

LogicalResult Lowering::lowerTraining(Operation &op, bool &handled) {
  handled = true;
  // One step with the given inputs and one output per result of `op`.
  auto step = [&](KernelKind kind, std::vector<Value> ins, std::vector<int64_t> cols,
                  std::vector<float> f32 = {}, std::vector<int64_t> i64 = {}) -> LogicalResult {
    std::vector<PlanOperand> inputs;
    for (Value v : ins) {
      FailureOr<PlanOperand> o = use(&op, v);
      if (failed(o))
        return failure();
      inputs.push_back(*o);
    }
    std::vector<PlanOperand> outputs;
    for (auto [r, c] : llvm::zip(op.getResults(), cols)) {
      FailureOr<PlanOperand> y = resultOperand(&op, r, c);
      if (failed(y))
        return failure();
      outputs.push_back(*y);
      values[r] = *y;
    }
    PlanStep &s = addStep(kind, &op);
    s.inputs = std::move(inputs);
    s.outputs = std::move(outputs);
    s.f32Attrs = std::move(f32);
    s.i64Attrs = std::move(i64);
    return success();
  };
  auto cols = [](Value v) { return lastDim(v); };

  // On CUDA the logits the loss reads are f32 (the lm head's GEMM writes them so; the
  // executor's chunked loss computes them per chunk of rows, docs/gpu-training.md).
  auto f32Logits = [&](LogicalResult stepped) {
    if (succeeded(stepped) && cuda) {
      const PlanOperand &z = plan.steps.back().inputs[0];
      if (z.kind == OperandKind::Arena && z.dtype != "f32")
        setF32(z.index);
    }
    return stepped;
  };
  if (auto ce = llvm::dyn_cast<CrossEntropyOp>(op))
    return f32Logits(step(KernelKind::CrossEntropy, {ce.getLogits(), ce.getLabels()}, {1}, {},
                          {ce.getIgnoreIndexAttr().getInt()}));
  if (auto g = llvm::dyn_cast<CrossEntropyGradOp>(op))
    return f32Logits(step(KernelKind::CrossEntropyGrad,
                          {g.getLogits(), g.getLabels(), g.getLossGrad()}, {cols(g.getLogits())},
                          {}, {g.getIgnoreIndexAttr().getInt()}));
  if (auto g = llvm::dyn_cast<LinearInputGradOp>(op)) {
    if (failed(useParam(&op, g.getWeight(), "the weight of a projection")))
      return failure();
    return step(KernelKind::LinearGradInput, {g.getGrad(), g.getWeight()}, {cols(g.getResult())});
  }
  if (auto g = llvm::dyn_cast<LinearWeightGradOp>(op))
    return step(KernelKind::LinearGradWeight, {g.getGrad(), g.getInput()}, {cols(g.getResult())});
  if (auto g = llvm::dyn_cast<SrmsNormGradOp>(op))
    return step(KernelKind::SrmsNormGrad, {g.getInput(), g.getGrad()}, {cols(g.getInput())},
                {g.getEps().convertToFloat()});
  if (auto g = llvm::dyn_cast<AddSrmsNormGradOp>(op)) {
    std::vector<Value> ins = {g.getSum(), g.getGrad()};
    if (g.getSumGrad())
      ins.push_back(g.getSumGrad());
    return step(KernelKind::AddSrmsNormGrad, ins, {cols(g.getSum())},
                {g.getEps().convertToFloat()});
  }
  if (auto g = llvm::dyn_cast<SiluGradOp>(op))
    return step(KernelKind::SiluGrad, {g.getInput(), g.getGrad()}, {cols(g.getInput())});
  if (auto g = llvm::dyn_cast<LrpeGradOp>(op)) {
    if (g.getOffset())
      return op.emitError() << "a runtime position offset is not supported in training";
    auto xt = llvm::cast<RankedTensorType>(g.getInput().getType());
    int64_t heads = xt.getDimSize(2), dh = xt.getDimSize(3);
    if (failed(useParam(&op, g.getTheta(), "LRPE theta")))
      return failure();
    return step(KernelKind::LrpeGrad, {g.getInput(), g.getTheta(), g.getGrad()}, {heads * dh, dh},
                {}, {heads, dh, 0});
  }
  if (auto g = llvm::dyn_cast<DecayLinearAttentionGradOp>(op)) {
    auto qt = llvm::cast<RankedTensorType>(g.getQ().getType());
    auto vt = llvm::cast<RankedTensorType>(g.getV().getType());
    int64_t heads = qt.getDimSize(2), dk = qt.getDimSize(3), dv = vt.getDimSize(3);
    if (failed(step(KernelKind::DecayAttentionGrad, {g.getQ(), g.getK(), g.getV(), g.getGrad()},
                    {heads * dk, heads * dk, heads * dv}, {}, {heads, dk, dv, 0})))
      return failure();
    plan.steps.back().slopes.assign(g.getSlopes().begin(), g.getSlopes().end());
    return success();
  }
  if (auto g = llvm::dyn_cast<LightningAttentionGradOp>(op))
    return lightningAttentionGrad(g);
  if (auto g = llvm::dyn_cast<GatedLinearGradOp>(op)) {
    if (failed(useParam(&op, g.getW1(), "W1")) || failed(useParam(&op, g.getW2(), "W2")))
      return failure();
    if (failed(step(KernelKind::GatedLinearGrad, {g.getInput(), g.getW1(), g.getW2(), g.getGrad()},
                    {cols(g.getInput()), cols(g.getW1()), cols(g.getW2())})))
      return failure();
    // CUDA: the forward's a and b (kept live until here) instead of two GEMMs recomputing them.
    auto saved =
        gatedProducts.find({g.getInput().getAsOpaquePointer(), g.getW1().getAsOpaquePointer()});
    if (cuda && saved != gatedProducts.end()) {
      const int64_t here = static_cast<int64_t>(plan.steps.size()) - 1;
      for (const PlanOperand &p : {saved->second.first, saved->second.second}) {
        plan.buffers[p.index].lastStep = std::max(plan.buffers[p.index].lastStep, here);
        plan.steps.back().inputs.push_back(p);
      }
    }
    return success();
  }
  if (auto g = llvm::dyn_cast<EmbeddingGradOp>(op))
    return step(KernelKind::EmbeddingGrad, {g.getIds(), g.getGrad()}, {cols(g.getResult())},
                {g.getScale().convertToFloat()},
                {g.getPaddingIdxAttr() ? g.getPaddingIdxAttr().getInt() : int64_t(-1)});
  if (auto c = llvm::dyn_cast<ConcatOp>(op)) {
    std::vector<Value> ins(c.getInputs().begin(), c.getInputs().end());
    return step(KernelKind::Concat, ins, {cols(c.getResult())});
  }
  if (auto f = llvm::dyn_cast<FillOp>(op)) {
    float value = f.getValue().convertToFloat();
    auto it = updates.find(f.getResult());
    if (it == updates.end())
      return step(KernelKind::Fill, {}, {cols(f.getResult())}, {value});
    for (const PlanOperand &target : it->second) { // one fill per state it zeroes
      PlanStep &s = addStep(KernelKind::Fill, &op);
      s.outputs = {target};
      s.f32Attrs = {value};
    }
    values[f.getResult()] = it->second.front();
    return success();
  }
  if (auto n = llvm::dyn_cast<GlobalNormOp>(op)) {
    std::vector<Value> ins = {n.getHparams()};
    ins.insert(ins.end(), n.getGrads().begin(), n.getGrads().end());
    return step(KernelKind::GlobalNorm, ins, {1});
  }
  if (auto l = llvm::dyn_cast<LrScheduleOp>(op))
    return step(KernelKind::LrSchedule, {l.getStep(), l.getHparams()}, {1});
  if (auto c = llvm::dyn_cast<ClipScaleOp>(op))
    return step(KernelKind::ClipScale, {c.getNorm(), c.getHparams()}, {1});
  if (auto a = llvm::dyn_cast<AdamWOp>(op)) {
    std::vector<PlanOperand> inputs;
    for (Value v : op.getOperands()) {
      FailureOr<PlanOperand> o = use(&op, v);
      if (failed(o))
        return failure();
      inputs.push_back(*o);
    }
    if (inputs[0].kind != OperandKind::Param || inputs[2].kind != OperandKind::State ||
        inputs[3].kind != OperandKind::State)
      return op.emitError() << "AdamW updates a parameter and its moments in place: they must "
                               "be parameter and state arguments";
    PlanStep &s = addStep(KernelKind::AdamW, &op);
    s.inputs = inputs;
    s.outputs = {inputs[0], inputs[2], inputs[3]};
    s.i64Attrs = {a.getWeightDecay() ? 1 : 0};
    values[a.getNewParam()] = inputs[0];
    values[a.getNewExpAvg()] = inputs[2];
    values[a.getNewExpAvgSq()] = inputs[3];
    return success();
  }
  if (auto inc = llvm::dyn_cast<IncrementOp>(op)) {
    FailureOr<PlanOperand> s = use(&op, inc.getStep());
    if (failed(s))
      return failure();
    if (s->kind != OperandKind::State)
      return op.emitError() << "the step counter must be a state argument";
    PlanStep &st = addStep(KernelKind::Increment, &op);
    st.inputs = {*s};
    st.outputs = {*s};
    values[inc.getResult()] = *s;
    return success();
  }
  handled = false;
  return success();
}

} // namespace mlir::tnlm::detail
