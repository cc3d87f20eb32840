//===- FuseLightningAttention.cpp - token mixer core → lightning_attention ===//
//
// Rooted at the output gate `mul(u, srms_norm(merge_heads(decay_linear_attention(q, k, v))))`
// and walked back to the 4-way split of the qkvu projection. The match is all or nothing:
// every value between the split and the gate must feed only the next op of the chain, or
// the fused op would have to materialize it anyway (and the pattern would be a pessimization).
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmOps.h"
#include "passes/Passes.h"

#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace mlir::tnlm {
#define GEN_PASS_DEF_FUSELIGHTNINGATTENTION
#include "passes/Passes.h.inc"
} // namespace mlir::tnlm

namespace mlir::tnlm {
namespace {

template <typename OpTy> OpTy singleUseDef(Value v) {
  if (!v || !v.hasOneUse())
    return nullptr;
  return v.getDefiningOp<OpTy>();
}

// One of q or k: split part → [silu] → split_heads → [lrpe].
struct QkChain {
  Value part; // the split result it starts from
  bool silu = false;
  LrpeOp lrpe;                     // null without LRPE
  SmallVector<Operation *, 3> ops; // consumer first
};

FailureOr<QkChain> matchQk(Value v) {
  QkChain c;
  if (auto lr = singleUseDef<LrpeOp>(v)) {
    c.lrpe = lr;
    c.ops.push_back(lr);
    v = lr.getInput();
  }
  auto heads = singleUseDef<SplitHeadsOp>(v);
  if (!heads)
    return failure();
  c.ops.push_back(heads);
  v = heads.getInput();
  if (auto s = singleUseDef<SiluOp>(v)) {
    c.silu = true;
    c.ops.push_back(s);
    v = s.getInput();
  }
  c.part = v;
  return c;
}

// The part index of `v` in `split`, or -1.
int64_t partIndex(SplitOp split, Value v) {
  auto r = llvm::dyn_cast<OpResult>(v);
  return r && r.getOwner() == split.getOperation() ? r.getResultNumber() : -1;
}

struct FuseLightningAttentionPattern : OpRewritePattern<MulOp> {
  FuseLightningAttentionPattern(MLIRContext *ctx, int64_t blockSize)
      : OpRewritePattern(ctx), blockSize(blockSize) {}

  LogicalResult matchAndRewrite(MulOp gate, PatternRewriter &rewriter) const override {
    // The gate is commutative: try the norm on either side.
    for (int side = 0; side < 2; ++side) {
      Value normed = gate->getOperand(side), u = gate->getOperand(1 - side);
      if (succeeded(tryFuse(gate, normed, u, rewriter)))
        return success();
    }
    return rewriter.notifyMatchFailure(gate, "not the gate of a gated linear attention");
  }

private:
  int64_t blockSize;

  LogicalResult tryFuse(MulOp gate, Value normed, Value u, PatternRewriter &rewriter) const {
    auto norm = singleUseDef<SrmsNormOp>(normed);
    if (!norm)
      return failure();
    // A per-head norm sits before merge_heads; then the input here is not a merge_heads.
    auto merge = singleUseDef<MergeHeadsOp>(norm.getInput());
    if (!merge)
      return failure();
    auto att = singleUseDef<DecayLinearAttentionOp>(merge.getInput());
    if (!att)
      return failure();
    auto vHeads = singleUseDef<SplitHeadsOp>(att.getV());
    if (!vHeads)
      return failure();
    FailureOr<QkChain> q = matchQk(att.getQ()), k = matchQk(att.getK());
    if (failed(q) || failed(k))
      return failure();

    // One split, parts in the order q, k, v, u (a swapped q/k is another function).
    auto split = vHeads.getInput().getDefiningOp<SplitOp>();
    if (!split || split.getNumResults() != 4 || partIndex(split, q->part) != 0 ||
        partIndex(split, k->part) != 1 || partIndex(split, vHeads.getInput()) != 2 ||
        partIndex(split, u) != 3)
      return failure();
    // φ and LRPE are one prologue for both q and k.
    if (q->silu != k->silu || !q->lrpe != !k->lrpe)
      return failure();
    Value theta, offset;
    if (q->lrpe) {
      if (q->lrpe.getTheta() != k->lrpe.getTheta() || q->lrpe.getOffset() != k->lrpe.getOffset())
        return failure();
      theta = q->lrpe.getTheta();
      offset = q->lrpe.getOffset();
    }
    // q, k and v are cut into the same heads (v's geometry is the output's).
    auto vt = llvm::cast<RankedTensorType>(vHeads.getType());
    int64_t heads = vt.getDimSize(2), headDim = vt.getDimSize(3);
    auto qHeads =
        llvm::cast<RankedTensorType>((q->lrpe ? q->ops[1] : q->ops[0])->getResult(0).getType());
    auto kHeads =
        llvm::cast<RankedTensorType>((k->lrpe ? k->ops[1] : k->ops[0])->getResult(0).getType());
    if (qHeads.getDimSize(2) != heads || qHeads.getDimSize(3) != headDim ||
        kHeads.getDimSize(2) != heads || kHeads.getDimSize(3) != headDim ||
        static_cast<int64_t>(att.getSlopes().size()) != heads)
      return failure();
    // Shapes the fused op's verifier needs static (hand-written IR may leave them dynamic).
    auto gateType = llvm::cast<RankedTensorType>(gate.getType());
    if (ShapedType::isDynamic(heads) || ShapedType::isDynamic(headDim) ||
        gateType.isDynamicDim(2) || gateType.getDimSize(2) != heads * headDim)
      return failure();
    if (theta) {
      auto tt = llvm::cast<RankedTensorType>(theta.getType());
      if (tt.getShape() != ArrayRef<int64_t>{heads, 1, headDim})
        return failure();
    }

    auto fused = LightningAttentionOp::create(
        rewriter, att.getLoc(), gate.getType(), split.getInput(), theta, offset,
        rewriter.getI64IntegerAttr(heads), rewriter.getI64IntegerAttr(headDim),
        rewriter.getI64IntegerAttr(blockSize), att.getSlopesAttr(),
        rewriter.getStringAttr(q->silu ? "silu" : "none"), norm.getEpsAttr());
    rewriter.replaceOp(gate, fused.getResult());
    // The chain, consumers first: each op is dead once the one after it is gone.
    SmallVector<Operation *> dead = {norm, merge, att, vHeads};
    dead.append(q->ops.begin(), q->ops.end());
    dead.append(k->ops.begin(), k->ops.end());
    for (Operation *op : dead)
      rewriter.eraseOp(op);
    if (split->use_empty())
      rewriter.eraseOp(split);
    return success();
  }
};

struct FuseLightningAttentionPass : impl::FuseLightningAttentionBase<FuseLightningAttentionPass> {
  using FuseLightningAttentionBase::FuseLightningAttentionBase;
  void runOnOperation() override {
    if (blockSize < 0) {
      emitError(getOperation().getLoc())
          << "tnlm-fuse-lightning-attention: block-size must be >= 0, got "
          << static_cast<int64_t>(blockSize);
      return signalPassFailure();
    }
    RewritePatternSet patterns(&getContext());
    patterns.add<FuseLightningAttentionPattern>(&getContext(), blockSize);
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      signalPassFailure();
  }
};

} // namespace
} // namespace mlir::tnlm
