//===- Recompute.cpp - activation checkpointing of @train_step ------------===//
//
// tnlm-autodiff's backward reads forward values directly (`linear_weight_grad %dy, %x` reads
// the forward's %x), so every such value is live from the forward to its backward use and
// the arena holds the activations of all layers at once. This pass clones forward ops into
// the backward, next to their readers, so that the forward's values die in the forward:
//
//   none       unchanged;
//   attention  every tnlm.lightning_attention whose output a backward op reads (the out_proj
//              weight gradient) is cloned right before that reader; its input qkvu is kept
//              (the fused backward reads it anyway);
//   full       only the residual stream is kept: the embedding output, the sum of every
//              tnlm.add_srms_norm and (unfused form, tnlm-autodiff without the fusions)
//              every tnlm.add with a residual-stream operand. Every other forward value a
//              backward op reads is cloned, with the producers it needs, from the residual
//              stream, parameters and arguments. The normalized result of add_srms_norm is
//              recomputed as `tnlm.srms_norm %sum`: add_srms_norm normalizes the sum rounded
//              to the element type, exactly what srms_norm of the stored sum computes (one
//              row-statistics helper on the CPU, codegen/cuda/Elementwise.cuh on the GPU).
//
// Results are bit-identical to policy none: the clones are the same ops on the same inputs.
//
// Segments and recompute regions. The residual stream cuts the forward into segments (a
// token mixer, a channel mixer, the head): segment r holds the values computed after the
// r-th residual-stream value. The backward of segment r reads segment r's values, so the
// recompute region of a backward op is the newest segment among the recomputed values it
// reads; each forward value is cloned at most once per region, right before the first
// reader in that region, and that clone serves the region's later readers. A value read
// again by a far-away region (none in a TransNormerLLM) gets a clone of its own there rather
// than keeping the first one live in between. The last segment (final norm, logits, loss) is
// not recomputed under `full`: the backward starts with it, so keeping it costs nothing and
// recomputing it would repeat the LM head's GEMM.
//
// The forward is every op before the first backward op (the first op located at `…/grad`,
// the seed of the reverse sweep); the clones are located at `<forward name>/recompute`. No
// CSE may run after this pass (it would merge the clones back into the forward).
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmOps.h"
#include "passes/Passes.h"

#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/Builders.h"
#include "mlir/IR/IRMapping.h"
#include "mlir/Interfaces/SideEffectInterfaces.h"
#include "llvm/ADT/DenseMap.h"
#include "llvm/ADT/DenseSet.h"
#include "llvm/ADT/StringSwitch.h"

namespace mlir::tnlm {
#define GEN_PASS_DEF_RECOMPUTE
#include "passes/Passes.h.inc"
} // namespace mlir::tnlm

namespace mlir::tnlm {
namespace {

enum class Policy { None, Attention, Full };

// tnlm-autodiff locates backward ops at `<forward name>/grad`, or at `grad` when the forward
// op has no name.
bool isBackward(Operation *op) {
  auto name = llvm::dyn_cast<NameLoc>(op->getLoc());
  return name && (name.getName() == "grad" || name.getName().getValue().ends_with("/grad"));
}

Location recomputeLoc(Location loc) {
  if (auto name = llvm::dyn_cast<NameLoc>(loc))
    return NameLoc::get(StringAttr::get(loc.getContext(), name.getName().str() + "/recompute"),
                        name.getChildLoc());
  return NameLoc::get(StringAttr::get(loc.getContext(), "recompute"), loc);
}

class Recompute {
public:
  Recompute(func::FuncOp fn, Policy policy) : fn(fn), policy(policy), b(fn.getContext()) {}

  void run() {
    Block &body = fn.getBody().front();
    auto firstBackward = llvm::find_if(body, [](Operation &op) { return isBackward(&op); });
    if (firstBackward == body.end())
      return; // no reverse sweep: nothing reads the forward late
    numberSegments(llvm::make_range(body.begin(), firstBackward));
    // The readers, collected first: the clones inserted among them are not readers.
    SmallVector<Operation *> readers;
    for (Operation &op : llvm::make_range(firstBackward, body.end()))
      if (!op.hasTrait<OpTrait::IsTerminator>())
        readers.push_back(&op);
    for (Operation *reader : readers) {
      std::optional<unsigned> region;
      for (Value v : reader->getOperands())
        if (recomputed(v))
          region = std::max(region.value_or(0), segment.lookup(v.getDefiningOp()));
      if (!region)
        continue;
      for (OpOperand &use : reader->getOpOperands())
        if (recomputed(use.get()))
          use.set(cloneOf(use.get(), *region, reader));
    }
  }

private:
  func::FuncOp fn;
  Policy policy;
  OpBuilder b;
  llvm::DenseSet<Value> kept;                               // the residual stream
  llvm::DenseMap<Operation *, unsigned> segment;            // forward ops
  unsigned lastSegment = 0;                                 // the head's
  llvm::DenseMap<std::pair<Value, unsigned>, Value> clones; // (forward value, region)

  // Segment r starts after the r-th residual-stream value; an add_srms_norm's normalized
  // result is in the segment its own sum starts, like the ops that read it.
  void numberSegments(llvm::iterator_range<Block::iterator> forward) {
    unsigned r = 0;
    for (Operation &op : forward) {
      Value stream;
      if (auto e = llvm::dyn_cast<EmbeddingOp>(op))
        stream = e.getResult();
      else if (auto an = llvm::dyn_cast<AddSrmsNormOp>(op))
        stream = an.getSum();
      else if (auto add = llvm::dyn_cast<AddOp>(op);
               add && (kept.contains(add.getLhs()) || kept.contains(add.getRhs())))
        stream = add.getResult();
      if (stream) {
        kept.insert(stream);
        ++r;
      }
      segment[&op] = r;
    }
    lastSegment = r;
  }

  // Whether backward readers of `v` read a clone instead.
  bool recomputed(Value v) const {
    Operation *op = v.getDefiningOp();
    if (!op || !segment.contains(op))
      return false; // an argument, or not a forward value
    if (policy == Policy::Attention)
      return llvm::isa<LightningAttentionOp>(op);
    if (kept.contains(v) || segment.lookup(op) == lastSegment || !isMemoryEffectFree(op) ||
        op->getNumRegions() != 0)
      return false;
    // An op that also produces the residual stream is not re-run; add_srms_norm's norm has
    // its own recomputation from the kept sum.
    for (Value r : op->getResults())
      if (kept.contains(r))
        return llvm::isa<AddSrmsNormOp>(op) && v == llvm::cast<AddSrmsNormOp>(op).getResult();
    return true;
  }

  // The clone of forward value `v` for `region`, built right before `reader` (with the
  // clones of its recomputed operands before it) unless the region already has one.
  Value cloneOf(Value v, unsigned region, Operation *reader) {
    if (Value c = clones.lookup({v, region}))
      return c;
    Operation *op = v.getDefiningOp();
    if (auto an = llvm::dyn_cast<AddSrmsNormOp>(op)) {
      b.setInsertionPoint(reader);
      Value c = SrmsNormOp::create(b, recomputeLoc(op->getLoc()), an.getResult().getType(),
                                   an.getSum(), an.getEpsAttr());
      return clones[{v, region}] = c;
    }
    IRMapping map;
    if (policy == Policy::Full)
      for (Value operand : op->getOperands())
        if (recomputed(operand))
          map.map(operand, cloneOf(operand, region, reader));
    b.setInsertionPoint(reader);
    Operation *c = b.clone(*op, map);
    c->setLoc(recomputeLoc(op->getLoc()));
    for (auto [orig, copy] : llvm::zip(op->getResults(), c->getResults()))
      clones[{orig, region}] = copy;
    return clones.lookup({v, region});
  }
};

struct RecomputePass : impl::RecomputeBase<RecomputePass> {
  using RecomputeBase::RecomputeBase;
  void runOnOperation() override {
    std::optional<Policy> p = llvm::StringSwitch<std::optional<Policy>>(policy)
                                  .Case("none", Policy::None)
                                  .Case("attention", Policy::Attention)
                                  .Case("full", Policy::Full)
                                  .Default(std::nullopt);
    if (!p) {
      getOperation().emitError() << "tnlm-recompute: unknown policy '" << policy
                                 << "' (expected none, attention or full)";
      return signalPassFailure();
    }
    auto fn = getOperation().lookupSymbol<func::FuncOp>("train_step");
    if (*p == Policy::None || !fn || fn.isExternal()) {
      markAllAnalysesPreserved();
      return;
    }
    if (!fn.getBody().hasOneBlock()) {
      fn.emitError() << "tnlm-recompute: @train_step must have one block";
      return signalPassFailure();
    }
    Recompute(fn, *p).run();
  }
};

} // namespace
} // namespace mlir::tnlm
