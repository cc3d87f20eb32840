//===- DecomposeSglu.cpp - tnlm.sglu → linear, linear, mul, linear --------===//
#include "dialect/TnlmOps.h"
#include "passes/Passes.h"

#include "mlir/IR/PatternMatch.h"
#include "mlir/Transforms/GreedyPatternRewriteDriver.h"

namespace mlir::tnlm {
#define GEN_PASS_DEF_DECOMPOSESGLU
#include "passes/Passes.h.inc"
} // namespace mlir::tnlm

namespace mlir::tnlm {
namespace {

// (x·W1ᵀ ⊙ x·W2ᵀ)·W3ᵀ: the hidden type is the input's with the last dim replaced by F.
struct DecomposeSgluPattern : OpRewritePattern<SgluOp> {
  using OpRewritePattern::OpRewritePattern;
  LogicalResult matchAndRewrite(SgluOp op, PatternRewriter &rewriter) const override {
    auto xType = llvm::cast<RankedTensorType>(op.getInput().getType());
    auto w1Type = llvm::cast<RankedTensorType>(op.getW1().getType());
    SmallVector<int64_t> hiddenShape(xType.getShape());
    hiddenShape.back() = w1Type.getDimSize(0);
    auto hiddenType = RankedTensorType::get(hiddenShape, xType.getElementType());
    Location loc = op.getLoc();
    Value a = LinearOp::create(rewriter, loc, hiddenType, op.getInput(), op.getW1());
    Value b = LinearOp::create(rewriter, loc, hiddenType, op.getInput(), op.getW2());
    Value gated = MulOp::create(rewriter, loc, hiddenType, a, b);
    rewriter.replaceOpWithNewOp<LinearOp>(op, xType, gated, op.getW3());
    return success();
  }
};

struct DecomposeSgluPass : impl::DecomposeSgluBase<DecomposeSgluPass> {
  void runOnOperation() override {
    RewritePatternSet patterns(&getContext());
    patterns.add<DecomposeSgluPattern>(&getContext());
    if (failed(applyPatternsGreedily(getOperation(), std::move(patterns))))
      signalPassFailure();
  }
};

} // namespace
} // namespace mlir::tnlm
