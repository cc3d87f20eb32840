//===- FuseSglu.cpp - SGLU up-projections + product → tnlm.gated_linear ---===//
//
// (x·W1ᵀ ⊙ x·W2ᵀ)·W3ᵀ: the two up-projections read the same x, and their [tokens, F]
// results exist only to be multiplied. tnlm.gated_linear computes the product where the
// projections' tiles are produced, so x is read once per tile and the two F-wide
// intermediates are never written (docs/passes.md).
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmOps.h"
#include "passes/Passes.h"

#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace mlir::tnlm {
#define GEN_PASS_DEF_FUSESGLU
#include "passes/Passes.h.inc"
} // namespace mlir::tnlm

namespace mlir::tnlm {
namespace {

RankedTensorType gluType(Value x, Value w1) {
  auto xt = llvm::cast<RankedTensorType>(x.getType());
  SmallVector<int64_t> shape(xt.getShape());
  shape.back() = llvm::cast<RankedTensorType>(w1.getType()).getDimSize(0);
  return RankedTensorType::get(shape, xt.getElementType());
}

// tnlm.sglu → gated_linear + the down projection.
struct SgluToGatedLinear : OpRewritePattern<SgluOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(SgluOp op, PatternRewriter &rewriter) const override {
    Value p = GatedLinearOp::create(rewriter, op.getLoc(), gluType(op.getInput(), op.getW1()),
                                    op.getInput(), op.getW1(), op.getW2());
    rewriter.replaceOpWithNewOp<LinearOp>(op, op.getType(), p, op.getW3());
    return success();
  }
};

// mul(linear(x, W1), linear(x, W2)) → gated_linear(x, W1, W2).
struct ProductOfProjections : OpRewritePattern<MulOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(MulOp op, PatternRewriter &rewriter) const override {
    auto a = op.getLhs().getDefiningOp<LinearOp>();
    auto b = op.getRhs().getDefiningOp<LinearOp>();
    if (!a || !b || a == b)
      return rewriter.notifyMatchFailure(op, "not a product of two projections");
    if (a.getInput() != b.getInput())
      return rewriter.notifyMatchFailure(op, "the projections read different inputs");
    if (!a->hasOneUse() || !b->hasOneUse())
      return rewriter.notifyMatchFailure(op, "a projection is also used elsewhere");
    if (a.getWeight().getType() != b.getWeight().getType())
      return rewriter.notifyMatchFailure(op, "the projections have different shapes");
    rewriter.replaceOpWithNewOp<GatedLinearOp>(op, op.getType(), a.getInput(), a.getWeight(),
                                               b.getWeight());
    rewriter.eraseOp(a);
    rewriter.eraseOp(b);
    return success();
  }
};

struct FuseSgluPass : impl::FuseSgluBase<FuseSgluPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    patterns.add<SgluToGatedLinear, ProductOfProjections>(&getContext());
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      signalPassFailure();
  }
};

} // namespace
} // namespace mlir::tnlm
