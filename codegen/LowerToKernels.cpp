//===- LowerToKernels.cpp - model-level tnlm IR → kernel plan -------------===//
#include "codegen/KernelPlan.h"
#include "codegen/Lowering.h"

#include "dialect/TnlmOps.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "passes/ParamTable.h"
#include "llvm/ADT/DenseMap.h"

namespace mlir::tnlm {

const char *kernelName(KernelKind kind) {
  switch (kind) {
  case KernelKind::Embedding:
    return "embedding";
  case KernelKind::SrmsNorm:
    return "srms_norm";
  case KernelKind::Linear:
    return "linear";
  case KernelKind::Silu:
    return "silu";
  case KernelKind::Mul:
    return "mul";
  case KernelKind::Add:
    return "add";
  case KernelKind::Lrpe:
    return "lrpe";
  case KernelKind::DecayAttention:
    return "decay_attention";
  case KernelKind::CrossEntropy:
    return "cross_entropy";
  case KernelKind::LightningAttention:
    return "lightning_attention";
  case KernelKind::AddSrmsNorm:
    return "add_srms_norm";
  case KernelKind::GatedLinear:
    return "gated_linear";
  case KernelKind::LinearGradInput:
    return "linear_grad_input";
  case KernelKind::LinearGradWeight:
    return "linear_grad_weight";
  case KernelKind::SrmsNormGrad:
    return "srms_norm_grad";
  case KernelKind::AddSrmsNormGrad:
    return "add_srms_norm_grad";
  case KernelKind::SiluGrad:
    return "silu_grad";
  case KernelKind::LrpeGrad:
    return "lrpe_grad";
  case KernelKind::DecayAttentionGrad:
    return "decay_attention_grad";
  case KernelKind::LightningAttentionGrad:
    return "lightning_attention_grad";
  case KernelKind::GatedLinearGrad:
    return "gated_linear_grad";
  case KernelKind::EmbeddingGrad:
    return "embedding_grad";
  case KernelKind::CrossEntropyGrad:
    return "cross_entropy_grad";
  case KernelKind::Concat:
    return "concat";
  case KernelKind::Fill:
    return "fill";
  case KernelKind::GlobalNorm:
    return "global_norm";
  case KernelKind::LrSchedule:
    return "lr_schedule";
  case KernelKind::ClipScale:
    return "clip_scale";
  case KernelKind::AdamW:
    return "adamw";
  case KernelKind::Increment:
    return "increment";
  case KernelKind::LightningPrefill:
    return "lightning_prefill";
  case KernelKind::LightningDecode:
    return "lightning_decode";
  case KernelKind::GatherLast:
    return "gather_last";
  case KernelKind::LmHeadLoss:
    return "lm_head_loss";
  }
  return "?";
}

int64_t dtypeBytes(StringRef dtype) { return dtype == "bf16" || dtype == "f16" ? 2 : 4; }

namespace detail {

std::string locName(Location loc) {
  if (auto name = llvm::dyn_cast<NameLoc>(loc))
    return name.getName().str();
  std::string s;
  llvm::raw_string_ostream os(s);
  loc.print(os);
  return s;
}

int64_t lastDim(Value v) {
  auto type = llvm::cast<RankedTensorType>(v.getType());
  return type.getRank() == 0 ? 1 : type.getShape().back();
}

namespace {

// [rows, cols] of a statically shaped tensor: the last dim is the columns (rank 0: 1 x 1).
std::pair<int64_t, int64_t> fixedShape(RankedTensorType type) {
  if (type.getRank() == 0)
    return {1, 1};
  int64_t cols = type.getShape().back();
  return {cols ? type.getNumElements() / cols : 0, cols};
}

// The whole [rows, cols] view of parameter or state `index` of a static tensor type.
PlanOperand fixedOperand(OperandKind kind, size_t index, const std::string &dtype,
                         RankedTensorType type) {
  auto [rows, cols] = fixedShape(type);
  return PlanOperand{kind, static_cast<int64_t>(index), 0, cols, cols, dtype, rows};
}

std::string stateKind(StringRef name) {
  for (const char *k : {"grad", "adam_m", "adam_v"})
    if (name.starts_with(std::string(k) + "/"))
      return k;
  if (name.starts_with("state/"))
    return "recurrent";
  return name == "step" ? "step" : "";
}

} // namespace

LogicalResult Lowering::bindArguments(func::FuncOp fn) {
  for (BlockArgument arg : fn.getArguments()) {
    unsigned i = arg.getArgNumber();
    auto type = llvm::dyn_cast<RankedTensorType>(arg.getType());
    if (!type)
      return fn.emitError() << "argument #" << i << " must be a ranked tensor to be compiled";
    if (auto name = fn.getArgAttrOfType<StringAttr>(i, TnlmDialect::getParamAttrName())) {
      PlanParam p{name.str(), dtypeName(type.getElementType()),
                  std::vector<int64_t>(type.getShape().begin(), type.getShape().end())};
      values[arg] = fixedOperand(OperandKind::Param, plan.params.size(), p.dtype, type);
      plan.params.push_back(std::move(p));
      continue;
    }
    if (auto name = fn.getArgAttrOfType<StringAttr>(i, TnlmDialect::getStateAttrName())) {
      std::string kind = stateKind(name.getValue());
      bool counter = kind == "step", recurrent = kind == "recurrent";
      if (kind.empty() || !type.hasStaticShape() ||
          (counter ? !type.getElementType().isInteger(32) : !type.getElementType().isF32()))
        return fn.emitError() << "state argument '" << name.getValue()
                              << "' must be a static f32 tensor named grad/, adam_m/, "
                                 "adam_v/<param> or state/<layer>, or the i32 counter 'step'";
      if (recurrent && (type.getRank() != 4 || type.getDimSize(0) != plan.maxBatch))
        return fn.emitError() << "recurrent state '" << name.getValue()
                              << "' must be [max batch = " << plan.maxBatch << ", H, dk, dv], got "
                              << type;
      PlanState st{name.str(), kind, counter ? "i32" : "f32",
                   std::vector<int64_t>(type.getShape().begin(), type.getShape().end()),
                   counter || recurrent ? "" : name.getValue().split('/').second.str()};
      values[arg] = fixedOperand(OperandKind::State, plan.state.size(), st.dtype, type);
      plan.state.push_back(std::move(st));
      continue;
    }
    auto input = fn.getArgAttrOfType<StringAttr>(i, TnlmDialect::getInputAttrName());
    std::string name = input ? input.str() : "ids";
    if (name == "hparams") {
      if (type.getRank() != 1 || !type.hasStaticShape() || !type.getElementType().isF32())
        return fn.emitError() << "input 'hparams' must be a static 1-D f32 tensor, got " << type;
      values[arg] = PlanOperand{OperandKind::Input,
                                static_cast<int64_t>(plan.inputs.size()),
                                0,
                                type.getDimSize(0),
                                type.getDimSize(0),
                                "f32",
                                1};
      plan.inputs.push_back(PlanIO{name, "f32", {type.getDimSize(0)}, -1});
      continue;
    }
    if (name == "lengths" || name == "positions") {
      if (type.getRank() != 1 || !type.getElementType().isInteger(32))
        return fn.emitError() << "input '" << name << "' must be i32 [batch], got " << type;
      values[arg] =
          PlanOperand{OperandKind::Input, static_cast<int64_t>(plan.inputs.size()), 0, 1, 1, "i32",
                      kRowsPerBatch};
      plan.inputs.push_back(PlanIO{name, "i32", {kDimBatch}, -1});
      continue;
    }
    if (type.getRank() != 2 || !type.getElementType().isInteger(32))
      return fn.emitError() << "input #" << i << " must be i32 token ids [batch, seq], got "
                            << type;
    if (failed(checkDims(fn, type)))
      return failure();
    values[arg] =
        PlanOperand{OperandKind::Input, static_cast<int64_t>(plan.inputs.size()), 0, 1, 1, "i32"};
    plan.inputs.push_back(PlanIO{name, "i32", {kDimBatch, kDimSeq}, -1});
  }
  return success();
}

LogicalResult Lowering::run(func::FuncOp fn) {
  if (failed(bindArguments(fn)))
    return failure();
  // Where the results that update a parameter or state must be written.
  auto ret = llvm::cast<func::ReturnOp>(fn.getBody().front().getTerminator());
  for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
    auto name = fn.getResultAttrOfType<StringAttr>(i, TnlmDialect::getUpdatesAttrName());
    if (!name)
      continue;
    for (BlockArgument arg : fn.getArguments())
      for (StringRef attr : {TnlmDialect::getParamAttrName(), TnlmDialect::getStateAttrName()})
        if (fn.getArgAttrOfType<StringAttr>(arg.getArgNumber(), attr) == name && v != Value(arg))
          updates[v].push_back(values[arg]);
  }
  // Accumulation chains (state + a + b …, tnlm-autodiff's gradient updates): every add of
  // the chain writes the state in place when each partial sum has no other use.
  SmallVector<std::pair<Value, PlanOperand>> chains;
  for (auto &[v, targets] : updates)
    if (targets.size() == 1)
      chains.push_back({v, targets.front()});
  for (auto [v, target] : chains) {
    Value x = v;
    while (auto add = x.getDefiningOp<AddOp>()) {
      Value lhs = add.getLhs();
      if (!lhs.getDefiningOp<AddOp>() || !lhs.hasOneUse() || updates.count(lhs))
        break;
      updates[lhs].push_back(target);
      x = lhs;
    }
  }
  findLmHeadFusions(fn);
  for (Operation &op : fn.getBody().front()) {
    if (fusedAway.contains(&op))
      continue;
    auto fused = lmHeadAt.find(&op);
    if (failed(fused != lmHeadAt.end() ? lowerLmHeadLoss(fused->second) : lower(op)))
      return failure();
  }
  return success();
}

LogicalResult Lowering::checkDims(Operation *where, RankedTensorType type) {
  auto check = [&](int64_t dim, int64_t max, const char *what) -> LogicalResult {
    if (!ShapedType::isDynamic(dim) && dim != max)
      return where->emitError() << what << " dimension " << dim << " of " << type
                                << " differs from the compiled maximum " << max
                                << "; leave it dynamic ('?') or compile with that size";
    return success();
  };
  if (type.getRank() >= 2)
    return failure(failed(check(type.getDimSize(0), plan.maxBatch, "batch")) ||
                   failed(check(type.getDimSize(1), plan.maxSeq, "sequence")));
  return success();
}

PlanOperand Lowering::newBuffer(int64_t cols, int64_t step) {
  PlanBuffer b;
  b.cols = cols;
  b.dtype = actDtype;
  b.bytesPerRow = cols * dtypeBytes(actDtype);
  b.firstStep = b.lastStep = step;
  plan.buffers.push_back(b);
  return PlanOperand{
      OperandKind::Arena, static_cast<int64_t>(plan.buffers.size() - 1), 0, cols, cols, actDtype};
}

FailureOr<std::vector<PlanOperand>> Lowering::qkvuAndTheta(Operation *op, Value qkvu, Value theta) {
  FailureOr<PlanOperand> x = useActivation(op, qkvu);
  if (failed(x))
    return failure();
  std::vector<PlanOperand> inputs = {*x};
  if (theta) {
    FailureOr<PlanOperand> t = useParam(op, theta, "LRPE theta");
    if (failed(t))
      return failure();
    inputs.push_back(*t);
  }
  return inputs;
}

PlanOperand Lowering::newWorkspace(int64_t cols, int64_t step) {
  PlanOperand w = newBuffer(cols, step);
  w.dtype = plan.buffers[w.index].dtype = "f32";
  plan.buffers[w.index].bytesPerRow = cols * 4;
  return w;
}

PlanOperand Lowering::newBatchBuffer(int64_t cols, int64_t step) {
  PlanBuffer b;
  b.cols = cols;
  b.dtype = actDtype;
  b.fixedBytes = plan.maxBatch * cols * dtypeBytes(actDtype);
  b.firstStep = b.lastStep = step;
  plan.buffers.push_back(b);
  return PlanOperand{
      OperandKind::Arena, static_cast<int64_t>(plan.buffers.size() - 1), 0, cols, cols, actDtype,
      kRowsPerBatch};
}

PlanOperand Lowering::newFixedBuffer(RankedTensorType type, int64_t step) {
  auto [rows, cols] = fixedShape(type);
  std::string dtype = type.getElementType().isInteger(32) ? "i32" : "f32";
  PlanBuffer b;
  b.cols = cols;
  b.dtype = dtype;
  b.fixedBytes = rows * cols * 4;
  b.firstStep = b.lastStep = step;
  plan.buffers.push_back(b);
  return PlanOperand{OperandKind::Arena,
                     static_cast<int64_t>(plan.buffers.size() - 1),
                     0,
                     cols,
                     cols,
                     dtype,
                     rows};
}

FailureOr<PlanOperand> Lowering::resultOperand(Operation *op, Value r, int64_t cols) {
  auto it = updates.find(r);
  if (it != updates.end()) {
    if (it->second.size() != 1)
      return op->emitError() << "one value updates " << it->second.size()
                             << " parameters or states; each needs its own producer";
    return it->second.front();
  }
  auto type = llvm::cast<RankedTensorType>(r.getType());
  if (type.hasStaticShape())
    return newFixedBuffer(type, plan.steps.size());
  return newBuffer(cols, plan.steps.size());
}

FailureOr<PlanOperand> Lowering::use(Operation *op, Value v) {
  auto it = values.find(v);
  if (it == values.end())
    return op->emitError() << "operand is not produced by a lowerable op";
  if (it->second.kind == OperandKind::Arena) {
    PlanBuffer &b = plan.buffers[it->second.index];
    b.lastStep = std::max<int64_t>(b.lastStep, plan.steps.size());
  }
  return it->second;
}

FailureOr<PlanOperand> Lowering::useParam(Operation *op, Value v, const char *what) {
  FailureOr<PlanOperand> o = use(op, v);
  if (failed(o))
    return failure();
  if (o->kind != OperandKind::Param)
    return op->emitError() << what << " must be a parameter (a tnlm.param argument)";
  return o;
}

FailureOr<PlanOperand> Lowering::useActivation(Operation *op, Value v) {
  // One row per slot ([B, 1, d]): the sequence dim is 1 by construction.
  auto known = values.find(v);
  bool perSlot = known != values.end() && known->second.rows == kRowsPerBatch;
  if (!perSlot && failed(checkDims(op, llvm::cast<RankedTensorType>(v.getType()))))
    return failure();
  FailureOr<PlanOperand> o = use(op, v);
  if (failed(o))
    return failure();
  if (o->kind != OperandKind::Arena || (o->rows != kRowsPerCall && o->rows != kRowsPerBatch))
    return op->emitError() << "operand must be an activation, not a parameter, state or input";
  return o;
}

// Appends a step reading `inputs` and writing one new buffer of `cols` columns; extends the
// live intervals of the arena buffers it reads.
PlanOperand Lowering::emit(KernelKind kind, std::string name, std::vector<PlanOperand> inputs,
                           int64_t cols) {
  int64_t step = static_cast<int64_t>(plan.steps.size());
  for (const PlanOperand &in : inputs)
    if (in.kind == OperandKind::Arena)
      plan.buffers[in.index].lastStep = std::max(plan.buffers[in.index].lastStep, step);
  PlanOperand y = newBuffer(cols, step);
  plan.steps.push_back(PlanStep{kind, std::move(name), std::move(inputs), {y}, {}, {}, {}});
  return y;
}

// Results (logits) stay f32 on every target: retypes buffer `id` and every view of it.
void Lowering::setF32(int64_t id) {
  PlanBuffer &b = plan.buffers[id];
  b.dtype = "f32";
  if (b.bytesPerRow > 0) // fixed-size buffers (batch rows) are resized by the caller
    b.bytesPerRow = b.cols * 4;
  for (PlanStep &s : plan.steps)
    for (auto *list : {&s.inputs, &s.outputs})
      for (PlanOperand &o : *list)
        if (o.kind == OperandKind::Arena && o.index == id)
          o.dtype = "f32";
  for (auto &entry : values)
    if (entry.second.kind == OperandKind::Arena && entry.second.index == id)
      entry.second.dtype = "f32";
}

PlanStep &Lowering::addStep(KernelKind kind, Operation *op) {
  plan.steps.push_back(PlanStep{kind, locName(op->getLoc()), {}, {}, {}, {}, {}});
  return plan.steps.back();
}

// Elementwise and row-wise kernels: one activation (or two) in, one new buffer out.
LogicalResult Lowering::unary(Operation *op, KernelKind kind, std::vector<float> f32Attrs) {
  FailureOr<PlanOperand> x = useActivation(op, op->getOperand(0));
  if (failed(x))
    return failure();
  PlanOperand y = newBuffer(x->cols, plan.steps.size());
  PlanStep &s = addStep(kind, op);
  s.inputs = {*x};
  s.outputs = {y};
  s.f32Attrs = std::move(f32Attrs);
  values[op->getResult(0)] = y;
  return success();
}

LogicalResult Lowering::binary(Operation *op, KernelKind kind) {
  // Parameter-shaped values (gradients, state) take the fixed-row path.
  if (llvm::cast<RankedTensorType>(op->getResult(0).getType()).hasStaticShape())
    return fixedBinary(op, kind);
  FailureOr<PlanOperand> a = useActivation(op, op->getOperand(0));
  FailureOr<PlanOperand> b = useActivation(op, op->getOperand(1));
  if (failed(a) || failed(b))
    return failure();
  PlanOperand y = newBuffer(a->cols, plan.steps.size());
  PlanStep &s = addStep(kind, op);
  s.inputs = {*a, *b};
  s.outputs = {y};
  values[op->getResult(0)] = y;
  return success();
}

LogicalResult Lowering::linear(Operation *op, Value x, Value w, Value result) {
  FailureOr<PlanOperand> xo = useActivation(op, x);
  FailureOr<PlanOperand> wo = useParam(op, w, "the weight of a projection");
  if (failed(xo) || failed(wo))
    return failure();
  PlanOperand y = xo->rows == kRowsPerBatch ? newBatchBuffer(lastDim(result), plan.steps.size())
                                            : newBuffer(lastDim(result), plan.steps.size());
  PlanStep &s = addStep(KernelKind::Linear, op);
  s.inputs = {*xo, *wo};
  s.outputs = {y};
  values[result] = y;
  return success();
}

// One step: qkvu (+ θ) in; the gated, normalized output and, when φ or LRPE has to be
// applied, a workspace for q', k' that lives for this step only (the CPU kernel's prologue
// writes it; see runtime/cpu/Fused.h).
LogicalResult Lowering::lightningAttention(LightningAttentionOp la) {
  Operation *op = la.getOperation();
  if (la.getOffset())
    return la.emitError() << "a runtime position offset is bound by recurrent mode; "
                             "infer artifacts start at position 0";
  int64_t block = la.getBlockSizeAttr().getInt();
  if (block <= 0)
    return la.emitError() << "the Lightning Attention block size is not chosen; run "
                             "tnlm-choose-tiles (part of tnlm-infer-pipeline) or give "
                             "tnlm-fuse-lightning-attention a block-size";
  FailureOr<std::vector<PlanOperand>> qkvuTheta = qkvuAndTheta(op, la.getQkvu(), la.getTheta());
  if (failed(qkvuTheta))
    return failure();
  std::vector<PlanOperand> inputs = std::move(*qkvuTheta);
  int64_t heads = la.getHeads(), dh = la.getHeadDim();
  bool lrpe = static_cast<bool>(la.getTheta()), silu = la.hasSilu();
  int64_t step = plan.steps.size();
  std::vector<PlanOperand> outputs = {newBuffer(heads * dh, step)};
  // The CUDA executor applies φ in place in qkvu for inference: there, only LRPE needs the
  // workspace. A train step keeps qkvu for the backward (which recomputes φ), so φ(q), φ(k)
  // go to a workspace with qkvu's row stride (the forward kernel reads q, k, v with one).
  // There the forward also writes O into the workspace's columns [2D, 3D), and the backward of
  // the layer reads φ(q), φ(k) and O from it (lightningKept).
  const bool keepsQkvu = cuda && plan.function == "train_step";
  if (lrpe || (silu && (!cuda || keepsQkvu)))
    outputs.push_back(newBuffer(cuda ? 4 * heads * dh : 2 * heads * la.getKeyDim(), step));
  if (keepsQkvu && silu && !lrpe)
    lightningKept[la.getQkvu()] = LightningKept{outputs[1], heads, dh};
  PlanStep &s = addStep(KernelKind::LightningAttention, op);
  s.inputs = std::move(inputs);
  s.outputs = outputs;
  s.i64Attrs = {heads, dh, block, lrpe ? 1 : 0, silu ? 1 : 0, /*position offset*/ 0};
  s.f32Attrs = {la.getEps().convertToFloat()};
  s.slopes.assign(la.getSlopes().begin(), la.getSlopes().end());
  values[la.getResult()] = outputs.front();
  return success();
}

LogicalResult Lowering::lower(Operation &op) {
  if (auto e = llvm::dyn_cast<EmbeddingOp>(op)) {
    FailureOr<PlanOperand> ids = use(&op, e.getIds());
    FailureOr<PlanOperand> table = useParam(&op, e.getTable(), "the embedding table");
    if (failed(ids) || failed(table))
      return failure();
    PlanOperand y = newBuffer(lastDim(e.getResult()), plan.steps.size());
    PlanStep &s = addStep(KernelKind::Embedding, &op);
    s.inputs = {*ids, *table};
    s.outputs = {y};
    s.f32Attrs = {e.getScale().convertToFloat()};
    values[e.getResult()] = y;
    return success();
  }
  if (auto n = llvm::dyn_cast<SrmsNormOp>(op))
    return unary(&op, KernelKind::SrmsNorm, {n.getEps().convertToFloat()});
  if (llvm::isa<SiluOp>(op))
    return unary(&op, KernelKind::Silu);
  if (llvm::isa<MulOp>(op))
    return binary(&op, KernelKind::Mul);
  if (llvm::isa<AddOp>(op))
    return binary(&op, KernelKind::Add);
  if (auto l = llvm::dyn_cast<LinearOp>(op))
    return linear(&op, l.getInput(), l.getWeight(), l.getResult());
  if (auto h = llvm::dyn_cast<LmHeadOp>(op))
    return linear(&op, h.getInput(), h.getWeight(), h.getResult());
  if (auto sp = llvm::dyn_cast<SplitOp>(op)) {
    FailureOr<PlanOperand> x = useActivation(&op, sp.getInput());
    if (failed(x))
      return failure();
    int64_t width = lastDim(sp.getResult(0));
    for (auto [i, r] : llvm::enumerate(sp.getResults())) {
      PlanOperand view = *x;
      view.colOffset += static_cast<int64_t>(i) * width;
      view.cols = width;
      values[r] = view;
    }
    return success();
  }
  if (llvm::isa<SplitHeadsOp, MergeHeadsOp>(op)) {
    // [B, N, H·dh] and [B, N, H, dh] are the same row-major memory.
    FailureOr<PlanOperand> x = use(&op, op.getOperand(0));
    if (failed(x))
      return failure();
    values[op.getResult(0)] = *x;
    return success();
  }
  if (auto lr = llvm::dyn_cast<LrpeOp>(op)) {
    if (lr.getOffset())
      return op.emitError() << "a runtime position offset is bound by recurrent mode; "
                               "infer artifacts start at position 0";
    auto xt = llvm::cast<RankedTensorType>(lr.getInput().getType());
    FailureOr<PlanOperand> x = useActivation(&op, lr.getInput());
    FailureOr<PlanOperand> theta = useParam(&op, lr.getTheta(), "LRPE theta");
    if (failed(x) || failed(theta))
      return failure();
    int64_t heads = xt.getDimSize(2), dh = xt.getDimSize(3);
    PlanOperand y = newBuffer(heads * 2 * dh, plan.steps.size());
    PlanStep &s = addStep(KernelKind::Lrpe, &op);
    s.inputs = {*x, *theta};
    s.outputs = {y};
    s.i64Attrs = {heads, dh, 0};
    values[lr.getResult()] = y;
    return success();
  }
  if (auto at = llvm::dyn_cast<DecayLinearAttentionOp>(op)) {
    auto qt = llvm::cast<RankedTensorType>(at.getQ().getType());
    auto vt = llvm::cast<RankedTensorType>(at.getV().getType());
    FailureOr<PlanOperand> q = useActivation(&op, at.getQ());
    FailureOr<PlanOperand> k = useActivation(&op, at.getK());
    FailureOr<PlanOperand> v = useActivation(&op, at.getV());
    if (failed(q) || failed(k) || failed(v))
      return failure();
    int64_t heads = qt.getDimSize(2), dk = qt.getDimSize(3), dv = vt.getDimSize(3);
    PlanOperand y = newBuffer(heads * dv, plan.steps.size());
    PlanStep &s = addStep(KernelKind::DecayAttention, &op);
    s.inputs = {*q, *k, *v};
    s.outputs = {y};
    s.i64Attrs = {heads, dk, dv, /*block: recurrent form*/ 0};
    s.slopes.assign(at.getSlopes().begin(), at.getSlopes().end());
    values[at.getResult()] = y;
    return success();
  }
  if (auto la = llvm::dyn_cast<LightningAttentionOp>(op))
    return lightningAttention(la);
  if (auto an = llvm::dyn_cast<AddSrmsNormOp>(op)) {
    FailureOr<PlanOperand> a = useActivation(&op, an.getLhs());
    FailureOr<PlanOperand> b = useActivation(&op, an.getRhs());
    if (failed(a) || failed(b))
      return failure();
    int64_t step = plan.steps.size();
    PlanOperand sum = newBuffer(a->cols, step), y = newBuffer(a->cols, step);
    PlanStep &s = addStep(KernelKind::AddSrmsNorm, &op);
    s.inputs = {*a, *b};
    s.outputs = {sum, y};
    s.f32Attrs = {an.getEps().convertToFloat()};
    values[an.getSum()] = sum;
    values[an.getResult()] = y;
    return success();
  }
  if (auto gl = llvm::dyn_cast<GatedLinearOp>(op)) {
    FailureOr<PlanOperand> x = useActivation(&op, gl.getInput());
    FailureOr<PlanOperand> w1 = useParam(&op, gl.getW1(), "the W1 of a gated projection");
    FailureOr<PlanOperand> w2 = useParam(&op, gl.getW2(), "the W2 of a gated projection");
    if (failed(x) || failed(w1) || failed(w2))
      return failure();
    if (cuda && plan.function != "decode_step") {
      // Two cuBLASLt GEMMs and a product: cuBLASLt has no product-of-two-GEMMs epilogue.
      // (@decode_step keeps the op whole: its GEMV computes both products, CudaEmitter.cpp.)
      // a and b are the two column halves of one [rows, 2F] buffer (row r: a_r then b_r), so
      // that where W2's bf16 copy follows W1's the executor runs the pair as one GEMM of
      // x·[W1; W2]ᵀ (CudaExecutor, the Linear steps).
      int64_t out = lastDim(gl.getResult());
      std::string name = locName(op.getLoc());
      const int64_t step = static_cast<int64_t>(plan.steps.size());
      PlanOperand ab = newBuffer(2 * out, step), a = ab, b = ab;
      a.cols = b.cols = out;
      b.colOffset += out;
      plan.buffers[ab.index].lastStep = step + 1;
      if (x->kind == OperandKind::Arena)
        plan.buffers[x->index].lastStep = std::max(plan.buffers[x->index].lastStep, step + 1);
      plan.steps.push_back(PlanStep{KernelKind::Linear, name + ".l1", {*x, *w1}, {a}, {}, {}, {}});
      plan.steps.push_back(PlanStep{KernelKind::Linear, name + ".l2", {*x, *w2}, {b}, {}, {}, {}});
      gatedProducts[{gl.getInput().getAsOpaquePointer(), gl.getW1().getAsOpaquePointer()}] = {a, b};
      values[gl.getResult()] = emit(KernelKind::Mul, name + ".product", {a, b}, out);
      return success();
    }
    PlanOperand y = newBuffer(lastDim(gl.getResult()), plan.steps.size());
    PlanStep &s = addStep(KernelKind::GatedLinear, &op);
    s.inputs = {*x, *w1, *w2};
    s.outputs = {y};
    values[gl.getResult()] = y;
    return success();
  }
  if (auto sg = llvm::dyn_cast<SgluOp>(op)) {
    // (x·W1ᵀ ⊙ x·W2ᵀ)·W3ᵀ as three GEMMs and a product (no fused SGLU kernel on CPU).
    FailureOr<PlanOperand> x = useActivation(&op, sg.getInput());
    FailureOr<PlanOperand> w1 = useParam(&op, sg.getW1(), "SGLU W1");
    FailureOr<PlanOperand> w2 = useParam(&op, sg.getW2(), "SGLU W2");
    FailureOr<PlanOperand> w3 = useParam(&op, sg.getW3(), "SGLU W3");
    if (failed(x) || failed(w1) || failed(w2) || failed(w3))
      return failure();
    int64_t glu = llvm::cast<RankedTensorType>(sg.getW1().getType()).getDimSize(0);
    std::string name = locName(op.getLoc());
    PlanOperand a = emit(KernelKind::Linear, name + ".l1", {*x, *w1}, glu);
    PlanOperand b = emit(KernelKind::Linear, name + ".l2", {*x, *w2}, glu);
    PlanOperand p = emit(KernelKind::Mul, name + ".product", {a, b}, glu);
    PlanOperand y = emit(KernelKind::Linear, name + ".l3", {p, *w3}, lastDim(sg.getResult()));
    values[sg.getResult()] = y;
    return success();
  }
  if (auto ret = llvm::dyn_cast<func::ReturnOp>(op))
    return lowerReturn(ret, op.getParentOfType<func::FuncOp>());
  bool handled = false;
  if (failed(lowerTraining(op, handled)))
    return failure();
  if (handled)
    return success();
  if (failed(lowerRecurrent(op, handled)))
    return failure();
  if (handled)
    return success();
  return op.emitError() << "'" << op.getName() << "' cannot be lowered to "
                        << (cuda ? "CUDA" : "CPU") << " kernels";
}

LogicalResult Lowering::lowerReturn(func::ReturnOp ret, func::FuncOp fn) {
  for (auto [i, v] : llvm::enumerate(ret.getOperands())) {
    FailureOr<PlanOperand> o = use(ret, v);
    if (failed(o))
      return failure();
    if (auto name = fn.getResultAttrOfType<StringAttr>(i, TnlmDialect::getUpdatesAttrName())) {
      // The producer wrote into the parameter or state (resultOperand), or v is unchanged.
      auto it = updates.find(v);
      bool inPlace = llvm::isa<BlockArgument>(v) ||
                     (it != updates.end() && llvm::any_of(it->second, [&](const PlanOperand &t) {
                        return t.sameStorage(*o) || llvm::isa<FillOp>(v.getDefiningOp());
                      }));
      if (!inPlace)
        return ret.emitError() << "result #" << i << " updates '" << name.getValue()
                               << "' but its producer cannot write it in place";
      continue;
    }
    if (o->kind != OperandKind::Arena)
      return ret.emitError() << "result #" << i << " must be computed by the function";
    if (o->colOffset != 0 || o->ld != o->cols)
      return ret.emitError() << "a function result must be a whole buffer, not a view";
    auto type = llvm::cast<RankedTensorType>(v.getType());
    auto outName = fn.getResultAttrOfType<StringAttr>(i, TnlmDialect::getOutputAttrName());
    PlanIO io{outName ? outName.str() : "logits", "f32", {}, o->index};
    if (o->rows == kRowsPerCall || o->rows == kRowsPerBatch) {
      if (o->dtype != "f32") {
        setF32(o->index);
        if (o->rows == kRowsPerBatch)
          plan.buffers[o->index].fixedBytes = plan.maxBatch * o->cols * 4;
      }
      io.shape = {kDimBatch, o->rows == kRowsPerBatch ? 1 : kDimSeq, type.getShape().back()};
    } else {
      io.dtype = o->dtype;
      io.shape.assign(type.getShape().begin(), type.getShape().end());
    }
    // Results stay live to the end of the function.
    plan.buffers[o->index].lastStep = static_cast<int64_t>(plan.steps.size());
    plan.outputs.push_back(io);
  }
  return success();
}

} // namespace detail

FailureOr<KernelPlan> lowerToKernelPlan(ModuleOp module, StringRef function, int64_t maxBatch,
                                        int64_t maxSeq, StringRef target) {
  auto fn = module.lookupSymbol<func::FuncOp>(function);
  if (!fn)
    return module.emitError() << "no function @" << function << " to compile";
  if (!fn.getBody().hasOneBlock())
    return fn.emitError() << "only single-block functions can be compiled";
  KernelPlan plan;
  plan.function = function.str();
  plan.maxBatch = maxBatch;
  plan.maxSeq = maxSeq;
  if (failed(detail::Lowering(plan, target).run(fn)))
    return failure();
  // Steps index their buffers' live intervals; the output stays live through the last step.
  for (const PlanIO &out : plan.outputs)
    plan.buffers[out.buffer].lastStep = std::max<int64_t>(
        static_cast<int64_t>(plan.steps.size()) - 1, plan.buffers[out.buffer].firstStep);
  if (target != "cpu" && plan.function == "decode_step")
    markDecodeFusions(plan);
  return plan;
}

// A norm followed by the GEMV that reads its output becomes one launch for small batches: the
// GEMV recomputes the row norm from the norm's inputs (rec::gemv's prologue). The inputs then
// stay live one step longer (the GEMV reads them while it writes its output), and nothing
// but the GEMV may read the norm's output.
void markDecodeFusions(KernelPlan &plan) {
  auto readers = [&](const PlanOperand &o) {
    int64_t n = 0;
    for (const PlanStep &s : plan.steps)
      for (const PlanOperand &in : s.inputs)
        n += in.sameStorage(o);
    return n;
  };
  auto extend = [&](const PlanOperand &o, int64_t step) {
    if (o.kind == OperandKind::Arena)
      plan.buffers[o.index].lastStep = std::max(plan.buffers[o.index].lastStep, step);
  };
  for (size_t i = 0; i + 1 < plan.steps.size(); ++i) {
    PlanStep &norm = plan.steps[i], &gemv = plan.steps[i + 1];
    if (gemv.kind != KernelKind::Linear && gemv.kind != KernelKind::GatedLinear)
      continue;
    const PlanOperand &x = gemv.inputs[0];
    int64_t mode = 0;
    const PlanOperand *normed = nullptr;
    if (norm.kind == KernelKind::SrmsNorm)
      mode = 1, normed = &norm.outputs[0];
    else if (norm.kind == KernelKind::AddSrmsNorm)
      mode = 2, normed = &norm.outputs[1];
    else if (norm.kind == KernelKind::LightningDecode)
      mode = 3, normed = &norm.outputs[0];
    if (!mode || !x.sameStorage(*normed) || x.colOffset != normed->colOffset ||
        x.cols != normed->cols || x.cols % 8 != 0 || readers(*normed) != 1)
      continue;
    for (const PlanOperand &in : norm.inputs)
      extend(in, static_cast<int64_t>(i + 1));
    for (const PlanOperand &out : norm.outputs)
      extend(out, static_cast<int64_t>(i + 1));
    gemv.gemvPrologue = mode;
  }
  // The qkvu linear and the lightning_decode that reads its whole output as q | k | v | u.
  for (size_t i = 0; i + 1 < plan.steps.size(); ++i) {
    PlanStep &lin = plan.steps[i];
    const PlanStep &dec = plan.steps[i + 1];
    if (lin.kind != KernelKind::Linear || dec.kind != KernelKind::LightningDecode ||
        dec.i64Attrs.size() < 4 || dec.inputs.empty() || lin.outputs.empty())
      continue;
    const PlanOperand &y = lin.outputs[0], &qkvu = dec.inputs[0];
    if (y.dtype == "bf16" && qkvu.sameStorage(y) && qkvu.colOffset == y.colOffset &&
        y.colOffset == 0 && qkvu.cols == y.cols && qkvu.ld == y.ld &&
        y.cols == 4 * dec.i64Attrs[0] * dec.i64Attrs[1])
      lin.decodeFusion.assign(dec.i64Attrs.begin(), dec.i64Attrs.begin() + 4);
  }
}

FailureOr<std::vector<KernelPlan>> lowerFunctions(ModuleOp module, ArrayRef<std::string> functions,
                                                  int64_t maxBatch, int64_t maxSeq,
                                                  StringRef target) {
  std::vector<KernelPlan> plans;
  for (const std::string &name : functions) {
    FailureOr<KernelPlan> plan = lowerToKernelPlan(module, name, maxBatch, maxSeq, target);
    if (failed(plan))
      return failure();
    plans.push_back(std::move(*plan));
  }
  // One parameter table (the first function's) and the union of the state tables.
  std::vector<PlanParam> params = plans.front().params;
  std::vector<PlanState> state;
  for (KernelPlan &plan : plans) {
    std::vector<int64_t> paramIndex, stateIndex;
    for (const PlanParam &p : plan.params) {
      auto it = llvm::find_if(params, [&](const PlanParam &q) { return q.name == p.name; });
      if (it == params.end() || it->shape != p.shape || it->dtype != p.dtype)
        return module.emitError() << "@" << plan.function << " has parameter '" << p.name
                                  << "' that @" << plans.front().function
                                  << " does not have with that shape and dtype";
      paramIndex.push_back(it - params.begin());
    }
    for (const PlanState &s : plan.state) {
      auto it = llvm::find_if(state, [&](const PlanState &q) { return q.name == s.name; });
      if (it == state.end()) {
        state.push_back(s);
        it = state.end() - 1;
      } else if (it->shape != s.shape || it->dtype != s.dtype) {
        return module.emitError() << "state '" << s.name << "' has different shapes in "
                                  << "different functions";
      }
      stateIndex.push_back(it - state.begin());
    }
    for (PlanStep &s : plan.steps)
      for (auto *list : {&s.inputs, &s.outputs})
        for (PlanOperand &o : *list) {
          if (o.kind == OperandKind::Param)
            o.index = paramIndex[o.index];
          else if (o.kind == OperandKind::State)
            o.index = stateIndex[o.index];
        }
  }
  for (KernelPlan &plan : plans) {
    plan.params = params;
    plan.state = state;
  }
  return plans;
}

} // namespace mlir::tnlm
