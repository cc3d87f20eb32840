//===- Autodiff.cpp - @loss → @train_step, @optimizer_step, @eval_loss ----===//
//
// Reverse-mode automatic differentiation of a model's loss, in tnlm IR:
//
//   @eval_loss(ids, labels, params…) -> loss                       the loss, inlined
//   @train_step(ids, labels, params…, grads…) -> (loss, grads + ∂loss/∂params)
//   @optimizer_step(hparams, params…, grads…, m…, v…, step)
//       -> (grad_norm, lr, params', m', v', zeroed grads, step + 1)
//
// A training step is k calls of @train_step (gradient accumulation over k micro-batches into
// the f32 gradient state) and one @optimizer_step (global-norm clipping of the averaged
// gradient, AdamW as torch.optim.AdamW, the learning-rate schedule of the step counter, then
// the gradients are zeroed), so k is a run-time choice (tnlm-train --grad-accum).
//
// The backward walks the inlined forward in reverse; every op with a cotangent builds its
// vector-Jacobian product (VjpOpInterface); cotangents of a value used several times are
// summed. Backward ops are located at `<forward op name>/grad`.
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmOps.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "runtime/schema/tnlm_generated.h"
#include "llvm/ADT/DenseMap.h"

namespace mlir::tnlm {
#define GEN_PASS_DEF_AUTODIFF
#include "passes/Passes.h.inc"
} // namespace mlir::tnlm

namespace mlir::tnlm {
namespace {

struct ParamArg {
  std::string name;
  RankedTensorType type;
  unsigned index; // argument index in @loss
};

// Copies the body of `callee` (one block, func.return last) at b's insertion point with its
// arguments bound to `args`, inlining nested calls; returns the values it returned.
FailureOr<SmallVector<Value>> inlineBody(OpBuilder &b, ModuleOp module, func::FuncOp callee,
                                         ValueRange args, int depth = 0) {
  if (depth > 16)
    return callee.emitError() << "calls nest too deeply (recursion?) to be differentiated";
  if (!callee.getBody().hasOneBlock())
    return callee.emitError() << "only single-block functions can be differentiated";
  IRMapping map;
  for (auto [formal, actual] : llvm::zip(callee.getArguments(), args))
    map.map(formal, actual);
  for (Operation &op : callee.getBody().front()) {
    if (auto ret = llvm::dyn_cast<func::ReturnOp>(op)) {
      SmallVector<Value> results;
      for (Value v : ret.getOperands())
        results.push_back(map.lookup(v));
      return results;
    }
    if (auto call = llvm::dyn_cast<func::CallOp>(op)) {
      auto target = module.lookupSymbol<func::FuncOp>(call.getCallee());
      if (!target)
        return call.emitError() << "calls unknown function @" << call.getCallee();
      // Name the call, not the declaration: the call is what puts it on the loss's path.
      if (target.isExternal())
        return call.emitError() << "calls @" << call.getCallee()
                                << ", a declaration without a body, which cannot be "
                                   "differentiated";
      SmallVector<Value> actuals;
      for (Value v : call.getOperands())
        actuals.push_back(map.lookup(v));
      FailureOr<SmallVector<Value>> results = inlineBody(b, module, target, actuals, depth + 1);
      if (failed(results))
        return failure();
      for (auto [r, v] : llvm::zip(call.getResults(), *results))
        map.map(r, v);
      continue;
    }
    b.clone(op, map);
  }
  return callee.emitError() << "has no func.return";
}

Location gradLoc(Location loc) {
  if (auto name = llvm::dyn_cast<NameLoc>(loc))
    return NameLoc::get(StringAttr::get(loc.getContext(), name.getName().str() + "/grad"),
                        name.getChildLoc());
  return NameLoc::get(StringAttr::get(loc.getContext(), "grad"), loc);
}

RankedTensorType f32Of(RankedTensorType t) {
  return RankedTensorType::get(t.getShape(), Float32Type::get(t.getContext()));
}

bool isTheta(StringRef name) { return name.ends_with(".lrpe.theta"); }

class Autodiff {
public:
  Autodiff(ModuleOp module, func::FuncOp loss) : module(module), loss(loss), b(module) {}

  LogicalResult run() {
    if (failed(checkLoss()))
      return failure();
    b.setInsertionPointToEnd(module.getBody());
    if (failed(buildEvalLoss()) || failed(buildTrainStep()) || failed(buildOptimizerStep()))
      return failure();
    return success();
  }

private:
  ModuleOp module;
  func::FuncOp loss;
  OpBuilder b;
  SmallVector<ParamArg> params;
  SmallVector<unsigned> dataArgs; // ids, labels

  LogicalResult checkLoss() {
    // Before anything is built: a declaration has nothing to inline (and its argument
    // attributes are not type-checked by the dialect).
    if (loss.isExternal())
      return loss.emitError() << "@" << loss.getSymName()
                              << " is a declaration without a body, nothing to differentiate";
    auto result = loss.getNumResults() == 1
                      ? llvm::dyn_cast<RankedTensorType>(loss.getResultTypes()[0])
                      : RankedTensorType();
    if (!result || result.getRank() != 0 || !result.getElementType().isF32())
      return loss.emitError() << "@loss must return one rank-0 f32 tensor (the mean loss)";
    for (unsigned i = 0; i < loss.getNumArguments(); ++i) {
      auto type = llvm::dyn_cast<RankedTensorType>(loss.getArgumentTypes()[i]);
      if (auto name = loss.getArgAttrOfType<StringAttr>(i, TnlmDialect::getParamAttrName())) {
        params.push_back({name.str(), type, i});
        continue;
      }
      if (!type || type.getRank() != 2 || !type.getElementType().isInteger(32))
        return loss.emitError() << "argument #" << i
                                << " of @loss must be a parameter or i32 [batch, seq] ids/labels";
      dataArgs.push_back(i);
    }
    if (dataArgs.size() != 2)
      return loss.emitError() << "@loss must take two token arguments (ids, labels), got "
                              << dataArgs.size();
    if (params.empty())
      return loss.emitError() << "@loss has no parameters to train";
    return success();
  }

  // A function with the data arguments first, then the parameters, then `extra` arguments.
  func::FuncOp makeFunc(StringRef name, ArrayRef<Type> leading, ArrayRef<StringRef> leadingNames,
                        ArrayRef<std::pair<Type, std::string>> stateArgs, ArrayRef<Type> results) {
    if (auto old = module.lookupSymbol<func::FuncOp>(name))
      old.erase();
    SmallVector<Type> inputs(leading.begin(), leading.end());
    for (const ParamArg &p : params)
      inputs.push_back(p.type);
    for (auto &s : stateArgs)
      inputs.push_back(s.first);
    auto fn = func::FuncOp::create(b, loss.getLoc(), name, b.getFunctionType(inputs, results));
    unsigned i = 0;
    for (StringRef n : leadingNames)
      fn.setArgAttr(i++, TnlmDialect::getInputAttrName(), b.getStringAttr(n));
    for (const ParamArg &p : params)
      fn.setArgAttr(i++, TnlmDialect::getParamAttrName(), b.getStringAttr(p.name));
    for (auto &s : stateArgs)
      fn.setArgAttr(i++, TnlmDialect::getStateAttrName(), b.getStringAttr(s.second));
    return fn;
  }

  // Inlines @loss into fn (data arguments first, then parameters): returns the loss value.
  FailureOr<Value> inlineLoss(func::FuncOp fn) {
    SmallVector<Value> args(loss.getNumArguments());
    args[dataArgs[0]] = fn.getArgument(0);
    args[dataArgs[1]] = fn.getArgument(1);
    for (auto [i, p] : llvm::enumerate(params))
      args[p.index] = fn.getArgument(2 + i);
    FailureOr<SmallVector<Value>> results = inlineBody(b, module, loss, args);
    if (failed(results))
      return failure();
    return (*results)[0];
  }

  Type idsType() { return loss.getArgumentTypes()[dataArgs[0]]; }
  Type lossType() { return loss.getResultTypes()[0]; }

  LogicalResult buildEvalLoss() {
    func::FuncOp fn =
        makeFunc("eval_loss", {idsType(), idsType()}, {"ids", "labels"}, {}, {lossType()});
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(fn.addEntryBlock());
    FailureOr<Value> l = inlineLoss(fn);
    if (failed(l))
      return failure();
    func::ReturnOp::create(b, loss.getLoc(), ValueRange{*l});
    fn.setResultAttr(0, TnlmDialect::getOutputAttrName(), b.getStringAttr("loss"));
    return success();
  }

  LogicalResult buildTrainStep() {
    SmallVector<std::pair<Type, std::string>> grads;
    SmallVector<Type> results = {lossType()};
    for (const ParamArg &p : params) {
      grads.push_back({f32Of(p.type), "grad/" + p.name});
      results.push_back(f32Of(p.type));
    }
    func::FuncOp fn =
        makeFunc("train_step", {idsType(), idsType()}, {"ids", "labels"}, grads, results);
    OpBuilder::InsertionGuard guard(b);
    Block *entry = fn.addEntryBlock();
    b.setInsertionPointToStart(entry);
    FailureOr<Value> l = inlineLoss(fn);
    if (failed(l))
      return failure();
    SmallVector<Operation *> forward;
    for (Operation &op : *entry)
      forward.push_back(&op);

    // Reverse sweep: cotangents keyed by forward value, seeded with d loss / d loss = 1.
    llvm::DenseMap<Value, Value> cot;
    cot[*l] = FillOp::create(b, gradLoc(l->getLoc()), llvm::cast<RankedTensorType>(lossType()),
                             Value(), b.getF32FloatAttr(1.0f));
    // A parameter's gradient is added to its state as soon as each contribution exists
    // (state ← state + dW, written in place), so no weight gradient stays live to the end of
    // the backward; other cotangents are summed until their value's VJP reads them.
    const unsigned n = params.size();
    llvm::DenseMap<Value, Value> stateCur;
    for (unsigned i = 0; i < n; ++i)
      stateCur[fn.getArgument(2 + i)] = fn.getArgument(2 + n + i);
    bool typeError = false;
    auto accumulate = [&](Value v, Value g, Location loc) {
      auto state = stateCur.find(v);
      if (state != stateCur.end()) {
        unsigned i = llvm::cast<BlockArgument>(v).getArgNumber() - 2;
        if (g.getType() != state->second.getType()) {
          loss.emitError() << "gradient of '" << params[i].name << "' has type " << g.getType()
                           << ", expected " << state->second.getType();
          typeError = true;
          return;
        }
        state->second = AddOp::create(
            b, NameLoc::get(b.getStringAttr(params[i].name + "/accumulate"), loss.getLoc()),
            state->second, g);
        return;
      }
      auto it = cot.find(v);
      if (it == cot.end()) {
        cot[v] = g;
        return;
      }
      it->second = AddOp::create(b, loc, it->second, g);
    };
    for (Operation *op : llvm::reverse(forward)) {
      SmallVector<Value> resultGrads;
      bool any = false;
      for (Value r : op->getResults()) {
        auto it = cot.find(r);
        resultGrads.push_back(it == cot.end() ? Value() : it->second);
        any |= it != cot.end();
      }
      if (!any)
        continue;
      auto vjp = llvm::dyn_cast<VjpOpInterface>(op);
      if (!vjp)
        return op->emitError() << "'" << op->getName()
                               << "' is on the path to the loss but is not differentiable "
                                  "(it does not implement VjpOpInterface)";
      Location loc = gradLoc(op->getLoc());
      Operation *before = b.getInsertionBlock()->empty() ? nullptr : &b.getInsertionBlock()->back();
      SmallVector<Value> operandGrads = vjp.buildVjp(b, resultGrads);
      // Everything the VJP built is located at the op's gradient.
      for (Operation *o = before ? before->getNextNode() : &b.getInsertionBlock()->front(); o;
           o = o->getNextNode())
        o->setLoc(loc);
      if (operandGrads.size() != op->getNumOperands())
        return op->emitError() << "VJP returned " << operandGrads.size() << " cotangents for "
                               << op->getNumOperands() << " operands";
      for (auto [operand, g] : llvm::zip(op->getOperands(), operandGrads))
        if (g)
          accumulate(operand, g, loc);
    }

    if (typeError)
      return failure();
    // New gradient state: grads + ∂loss/∂p (f32); unchanged where the loss does not depend
    // on the parameter.
    SmallVector<Value> rets = {*l};
    for (unsigned i = 0; i < n; ++i)
      rets.push_back(stateCur[fn.getArgument(2 + i)]);
    func::ReturnOp::create(b, loss.getLoc(), rets);
    fn.setResultAttr(0, TnlmDialect::getOutputAttrName(), b.getStringAttr("loss"));
    for (auto [i, p] : llvm::enumerate(params))
      fn.setResultAttr(1 + i, TnlmDialect::getUpdatesAttrName(), b.getStringAttr("grad/" + p.name));
    return success();
  }

  LogicalResult buildOptimizerStep() {
    auto scalar = RankedTensorType::get({}, b.getF32Type());
    auto stepType = RankedTensorType::get({}, b.getI32Type());
    auto hpType = RankedTensorType::get({static_cast<int64_t>(::tnlm::schema::HyperParam_Count)},
                                        b.getF32Type());
    SmallVector<std::pair<Type, std::string>> state;
    for (const char *kind : {"grad/", "adam_m/", "adam_v/"})
      for (const ParamArg &p : params)
        state.push_back({f32Of(p.type), kind + p.name});
    state.push_back({stepType, "step"});
    SmallVector<Type> results = {scalar, scalar};
    for (const ParamArg &p : params)
      results.push_back(p.type);
    for (size_t i = 0; i < 3 * params.size(); ++i)
      results.push_back(state[i].first);
    results.push_back(stepType);
    func::FuncOp fn = makeFunc("optimizer_step", {hpType}, {"hparams"}, state, results);
    OpBuilder::InsertionGuard guard(b);
    b.setInsertionPointToStart(fn.addEntryBlock());
    const size_t n = params.size();
    Value hp = fn.getArgument(0);
    auto arg = [&](size_t group, size_t i) { return fn.getArgument(1 + group * n + i); };
    Value step = fn.getArgument(1 + 4 * n);
    auto at = [&](const std::string &name) {
      return NameLoc::get(b.getStringAttr(name), loss.getLoc());
    };
    SmallVector<Value> grads;
    for (size_t i = 0; i < n; ++i)
      grads.push_back(arg(1, i));
    Value norm = GlobalNormOp::create(b, at("optimizer.grad_norm"), scalar, hp, grads);
    Value lr = LrScheduleOp::create(b, at("optimizer.lr"), scalar, step, hp);
    Value scale = ClipScaleOp::create(b, at("optimizer.clip"), scalar, norm, hp);
    SmallVector<Value> newP, newM, newV, zeroG;
    for (auto [i, p] : llvm::enumerate(params)) {
      auto u = AdamWOp::create(b, at(p.name + "/adamw"), p.type, grads[i].getType(),
                               grads[i].getType(), arg(0, i), grads[i], arg(2, i), arg(3, i), step,
                               lr, scale, hp, b.getBoolAttr(!isTheta(p.name)));
      newP.push_back(u.getNewParam());
      newM.push_back(u.getNewExpAvg());
      newV.push_back(u.getNewExpAvgSq());
    }
    for (auto [i, p] : llvm::enumerate(params))
      zeroG.push_back(FillOp::create(b, at(p.name + "/zero_grad"), f32Of(p.type), Value(),
                                     b.getF32FloatAttr(0.0f)));
    Value next = IncrementOp::create(b, at("optimizer.step"), step);
    SmallVector<Value> rets = {norm, lr};
    rets.append(newP);
    rets.append(newM);
    rets.append(newV);
    rets.append(zeroG);
    rets.push_back(next);
    func::ReturnOp::create(b, loss.getLoc(), rets);
    fn.setResultAttr(0, TnlmDialect::getOutputAttrName(), b.getStringAttr("grad_norm"));
    fn.setResultAttr(1, TnlmDialect::getOutputAttrName(), b.getStringAttr("lr"));
    unsigned r = 2;
    for (const ParamArg &p : params)
      fn.setResultAttr(r++, TnlmDialect::getUpdatesAttrName(), b.getStringAttr(p.name));
    for (const char *kind : {"adam_m/", "adam_v/", "grad/"})
      for (const ParamArg &p : params)
        fn.setResultAttr(r++, TnlmDialect::getUpdatesAttrName(), b.getStringAttr(kind + p.name));
    fn.setResultAttr(r, TnlmDialect::getUpdatesAttrName(), b.getStringAttr("step"));
    return success();
  }
};

struct AutodiffPass : impl::AutodiffBase<AutodiffPass> {
  using AutodiffBase::AutodiffBase;
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto loss = module.lookupSymbol<func::FuncOp>(function);
    if (!loss) {
      module.emitError() << "tnlm-autodiff: no function @" << function << " to differentiate";
      return signalPassFailure();
    }
    if (failed(Autodiff(module, loss).run()))
      signalPassFailure();
  }
};

} // namespace
} // namespace mlir::tnlm
