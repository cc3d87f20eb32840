//===- FuseAddNorm.cpp - residual add + SRMSNorm → tnlm.add_srms_norm -----===//
//
// Pre-norm residual blocks (docs/model.md) compute h = x + f(x) and immediately SRMSNorm(h) for
// the next block; h itself is read again only by the next residual add. One pass over the
// row produces both, so the sum is not read back from memory to be normalized.
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmOps.h"
#include "passes/Passes.h"

#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace mlir::tnlm {
#define GEN_PASS_DEF_FUSEADDNORM
#include "passes/Passes.h.inc"
} // namespace mlir::tnlm

namespace mlir::tnlm {
namespace {

struct AddThenNorm : OpRewritePattern<SrmsNormOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(SrmsNormOp norm, PatternRewriter &rewriter) const override {
    auto add = norm.getInput().getDefiningOp<AddOp>();
    if (!add)
      return rewriter.notifyMatchFailure(norm, "the norm does not read an add");
    // At the add: its operands dominate, and so does the new op every user of the sum.
    OpBuilder::InsertionGuard guard(rewriter);
    rewriter.setInsertionPoint(add);
    auto fused = AddSrmsNormOp::create(rewriter, add.getLoc(), add.getType(), add.getType(),
                                       add.getLhs(), add.getRhs(), norm.getEpsAttr());
    rewriter.replaceOp(norm, fused.getResult());
    rewriter.replaceOp(add, fused.getSum());
    return success();
  }
};

struct FuseAddNormPass : impl::FuseAddNormBase<FuseAddNormPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    patterns.add<AddThenNorm>(&getContext());
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      signalPassFailure();
  }
};

} // namespace
} // namespace mlir::tnlm
