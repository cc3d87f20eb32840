//===- Recurrent.cpp - @forward → @prefill and @decode_step ---------------===//
//
// Generation at constant memory and time per token (docs/model.md, "Recurrent form"): the
// fused, tiled @forward becomes
//
//   @prefill(ids [B, N], lengths [B], params…, state/…[B, H, dk, dv]…)
//       -> (logits [B, 1, V] at each slot's last position, the states after the prompts)
//   @decode_step(ids [B, 1], positions [B], params…, states…)
//       -> (logits [B, 1, V], the states after one more token)
//
// Every tnlm.lightning_attention becomes tnlm.lightning_prefill (the blocked algorithm, per
// slot up to its length, leaving the final state) or tnlm.lightning_decode (the robust
// recurrence S ← λS + kᵀv, o = qS); the per-layer fp32 state is persistent
// (`tnlm.state = "state/model.layers.<l>.token_mixer"`) and updated in place. The prefill's LM
// head reads only each slot's last position (tnlm.gather_last).
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmOps.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"

namespace mlir::tnlm {
#define GEN_PASS_DEF_RECURRENT
#include "passes/Passes.h.inc"
} // namespace mlir::tnlm

namespace mlir::tnlm {
namespace {

class RecurrentBuilder {
public:
  RecurrentBuilder(ModuleOp module, func::FuncOp forward, int64_t maxBatch)
      : module(module), forward(forward), b(module), maxBatch(maxBatch) {}

  LogicalResult run() {
    if (!forward.getBody().hasOneBlock())
      return forward.emitError() << "only single-block functions can be made recurrent";
    for (Operation &op : forward.getBody().front()) {
      if (auto la = llvm::dyn_cast<LightningAttentionOp>(op)) {
        if (la.getBlockSizeAttr().getInt() <= 0)
          return la.emitError() << "the Lightning Attention block size is not chosen; run "
                                   "tnlm-choose-tiles (tnlm-infer-pipeline) before tnlm-recurrent";
        if (la.getOffset())
          return la.emitError() << "already has a position offset: the recurrent functions bind "
                                   "positions themselves";
        mixers.push_back(la);
      } else if (llvm::isa<DecayLinearAttentionOp, LrpeOp>(op)) {
        return op.emitError() << "tnlm-recurrent needs the fused token mixer "
                                 "(tnlm.lightning_attention): run tnlm-fuse-lightning-attention "
                                 "first";
      } else if (auto head = llvm::dyn_cast<LmHeadOp>(op)) {
        lmHeads++;
      }
    }
    if (mixers.empty())
      return forward.emitError() << "@forward has no tnlm.lightning_attention to make recurrent";
    if (lmHeads != 1)
      return forward.emitError() << "@forward must have exactly one tnlm.lm_head, has " << lmHeads;
    if (forward.getNumResults() != 1)
      return forward.emitError() << "@forward must return the logits only";
    b.setInsertionPointToEnd(module.getBody());
    if (failed(build("prefill")) || failed(build("decode_step")))
      return failure();
    return success();
  }

private:
  ModuleOp module;
  func::FuncOp forward;
  OpBuilder b;
  int64_t maxBatch;
  SmallVector<LightningAttentionOp> mixers;
  int lmHeads = 0;

  RankedTensorType stateType(LightningAttentionOp la) {
    const int64_t heads = la.getHeadsAttr().getInt(), dh = la.getHeadDimAttr().getInt();
    return RankedTensorType::get({maxBatch, heads, la.getKeyDim(), dh}, b.getF32Type());
  }

  LogicalResult build(StringRef name) {
    const bool decode = name == "decode_step";
    if (auto old = module.lookupSymbol<func::FuncOp>(name))
      old.erase();
    // Arguments: ids, the slot vector, the forward's parameters (in order), the states.
    SmallVector<Type> inputs;
    SmallVector<unsigned> paramArgs;
    Type idsType;
    for (unsigned i = 0; i < forward.getNumArguments(); ++i) {
      if (forward.getArgAttr(i, TnlmDialect::getParamAttrName()))
        paramArgs.push_back(i);
      else if (idsType)
        return forward.emitError() << "@forward must take one token argument (ids)";
      else
        idsType = forward.getArgumentTypes()[i];
    }
    if (!idsType)
      return forward.emitError() << "@forward has no token argument";
    auto slotType = RankedTensorType::get({ShapedType::kDynamic}, b.getI32Type());
    inputs.push_back(idsType);
    inputs.push_back(slotType);
    for (unsigned i : paramArgs)
      inputs.push_back(forward.getArgumentTypes()[i]);
    for (LightningAttentionOp la : mixers)
      inputs.push_back(stateType(la));
    auto logits = llvm::cast<RankedTensorType>(forward.getResultTypes()[0]);
    auto logits1 = RankedTensorType::get({logits.getDimSize(0), 1, logits.getDimSize(2)},
                                         logits.getElementType());
    // Prefill: one row per slot ([B, 1, V]); decode: one token per slot as @forward types it.
    RankedTensorType logitsOut = decode ? logits : logits1;
    SmallVector<Type> results = {logitsOut};
    for (LightningAttentionOp la : mixers)
      results.push_back(stateType(la));
    auto fn = func::FuncOp::create(b, forward.getLoc(), name, b.getFunctionType(inputs, results));
    fn.setArgAttr(0, TnlmDialect::getInputAttrName(), b.getStringAttr("ids"));
    fn.setArgAttr(1, TnlmDialect::getInputAttrName(),
                  b.getStringAttr(decode ? "positions" : "lengths"));
    for (auto [j, i] : llvm::enumerate(paramArgs))
      fn.setArgAttr(2 + j, TnlmDialect::getParamAttrName(),
                    forward.getArgAttr(i, TnlmDialect::getParamAttrName()));
    const unsigned firstState = 2 + paramArgs.size();
    for (size_t l = 0; l < mixers.size(); ++l)
      fn.setArgAttr(firstState + l, TnlmDialect::getStateAttrName(), b.getStringAttr(stateName(l)));

    OpBuilder::InsertionGuard guard(b);
    Block *entry = fn.addEntryBlock();
    b.setInsertionPointToStart(entry);
    IRMapping map;
    unsigned next = 2;
    for (unsigned i = 0; i < forward.getNumArguments(); ++i)
      map.map(forward.getArgument(i), forward.getArgAttr(i, TnlmDialect::getParamAttrName())
                                          ? entry->getArgument(next++)
                                          : entry->getArgument(0));
    Value slots = entry->getArgument(1);
    SmallVector<Value> newStates;
    size_t layer = 0;
    for (Operation &op : forward.getBody().front()) {
      if (auto la = llvm::dyn_cast<LightningAttentionOp>(op)) {
        Value state = entry->getArgument(firstState + layer++);
        Value theta = la.getTheta() ? map.lookup(la.getTheta()) : Value();
        Value qkvu = map.lookup(la.getQkvu());
        Operation *mixer;
        if (decode)
          mixer = LightningDecodeOp::create(
              b, la.getLoc(), la.getResult().getType(), state.getType(), qkvu, state, slots, theta,
              la.getHeadsAttr(), la.getHeadDimAttr(), la.getSlopesAttr(), la.getActivationAttr(),
              la.getEpsAttr());
        else
          mixer = LightningPrefillOp::create(
              b, la.getLoc(), la.getResult().getType(), state.getType(), qkvu, state, slots, theta,
              la.getHeadsAttr(), la.getHeadDimAttr(), la.getBlockSizeAttr(), la.getSlopesAttr(),
              la.getActivationAttr(), la.getEpsAttr());
        map.map(la.getResult(), mixer->getResult(0));
        newStates.push_back(mixer->getResult(1));
        continue;
      }
      if (auto head = llvm::dyn_cast<LmHeadOp>(op)) {
        Value x = map.lookup(head.getInput());
        if (!decode) {
          auto xt = llvm::cast<RankedTensorType>(x.getType());
          auto last =
              RankedTensorType::get({xt.getDimSize(0), 1, xt.getDimSize(2)}, xt.getElementType());
          x = GatherLastOp::create(b, head.getLoc(), last, x, slots);
        }
        map.map(head.getResult(),
                LmHeadOp::create(b, head.getLoc(), logitsOut, x, map.lookup(head.getWeight())));
        continue;
      }
      if (auto ret = llvm::dyn_cast<func::ReturnOp>(op)) {
        SmallVector<Value> values = {map.lookup(ret.getOperand(0))};
        values.append(newStates);
        func::ReturnOp::create(b, ret.getLoc(), values);
        continue;
      }
      b.clone(op, map);
    }
    fn.setResultAttr(0, TnlmDialect::getOutputAttrName(), b.getStringAttr("logits"));
    for (size_t l = 0; l < mixers.size(); ++l)
      fn.setResultAttr(1 + l, TnlmDialect::getUpdatesAttrName(), b.getStringAttr(stateName(l)));
    return success();
  }

  static std::string stateName(size_t layer) {
    return "state/model.layers." + std::to_string(layer) + ".token_mixer";
  }
};

struct RecurrentPass : impl::RecurrentBase<RecurrentPass> {
  using RecurrentBase::RecurrentBase;
  void runOnOperation() override {
    ModuleOp module = getOperation();
    auto forward = module.lookupSymbol<func::FuncOp>("forward");
    if (!forward) {
      module.emitError() << "tnlm-recurrent: no function @forward";
      return signalPassFailure();
    }
    if (maxBatch < 1) {
      module.emitError() << "tnlm-recurrent: max-batch must be >= 1, got " << maxBatch;
      return signalPassFailure();
    }
    if (failed(RecurrentBuilder(module, forward, maxBatch).run()))
      signalPassFailure();
  }
};

} // namespace
} // namespace mlir::tnlm
