//===- ChooseTiles.cpp - block sizes of the fused attentions --------------===//
//
// Fills in `block_size` of every tnlm.lightning_attention from the cost model in
// TileCostModel.h (formulas in Passes.td), unless a block size is already recorded; the
// pass option block-size overrides both.
//
//===----------------------------------------------------------------------===//
#include "dialect/TnlmOps.h"
#include "passes/Passes.h"
#include "passes/TileCostModel.h"

namespace mlir::tnlm {
#define GEN_PASS_DEF_CHOOSETILES
#include "passes/Passes.h.inc"
} // namespace mlir::tnlm

namespace mlir::tnlm {
namespace {

struct ChooseTilesPass : impl::ChooseTilesBase<ChooseTilesPass> {
  using ChooseTilesBase::ChooseTilesBase;
  void runOnOperation() override {
    std::optional<TileTarget> t = lookupTileTarget(target);
    if (!t) {
      emitError(getOperation().getLoc())
          << "tnlm-choose-tiles: unknown target '" << static_cast<std::string>(target)
          << "' (expected cpu or cuda:sm_90a)";
      return signalPassFailure();
    }
    if (maxSeq < 1 || blockSize < 0) {
      emitError(getOperation().getLoc())
          << "tnlm-choose-tiles: max-seq must be >= 1 and block-size >= 0, got "
          << static_cast<int64_t>(maxSeq) << " and " << static_cast<int64_t>(blockSize);
      return signalPassFailure();
    }
    getOperation().walk([&](LightningAttentionOp op) {
      if (blockSize > 0)
        op.setBlockSize(blockSize);
      else if (op.getBlockSize() == 0)
        op.setBlockSize(chooseAttentionBlock(op.getKeyDim(), op.getHeadDim(), maxSeq, *t));
    });
  }
};

} // namespace
} // namespace mlir::tnlm
