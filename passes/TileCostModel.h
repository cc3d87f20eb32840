//===- TileCostModel.h - Lightning Attention block sizes --------*- C++ -*-===//
//
// The cost model behind tnlm-choose-tiles (its ODS description states the formulas). Kept
// apart from the pass so that tests and tools can ask which blocks it may pick.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_PASSES_TILECOSTMODEL_H
#define TNLM_PASSES_TILECOSTMODEL_H

#include "llvm/ADT/ArrayRef.h"
#include "llvm/ADT/StringRef.h"

#include <cstdint>
#include <optional>

namespace mlir::tnlm {

/// What the cost model knows about one worker of a target (a CPU core, a GPU SM).
struct TileTarget {
  llvm::StringRef name;
  double flopsPerSecond;    ///< sustained GEMM rate once blocks are large enough
  int64_t fullRateBlock;    ///< smallest block whose GEMMs reach that rate
  double secondsPerBlock;   ///< fixed cost of one sequential block step
  int64_t onChipBytes;      ///< budget for one (batch, head) working set
  int64_t tileElementBytes; ///< bytes per Q/K/V/O tile element
};

/// The constants of "cpu" or "cuda:sm_90a"; nothing for other names.
std::optional<TileTarget> lookupTileTarget(llvm::StringRef name);

/// Every block size the cost model can pick, ascending: 16, 32, 64, 128, 256.
llvm::ArrayRef<int64_t> attentionBlockCandidates();

/// e·m·(2dk + 2dv) + 4·(m² + dk·dv) bytes with m = min(block, maxSeq).
int64_t attentionWorkingSetBytes(int64_t block, int64_t dk, int64_t dv, int64_t maxSeq,
                                 const TileTarget &target);

/// Modelled seconds of one (batch, head) over maxSeq tokens with this block.
double attentionSeconds(int64_t block, int64_t dk, int64_t dv, int64_t maxSeq,
                        const TileTarget &target);

/// The candidate of least modelled time among those whose working set fits on chip (the
/// smallest candidate if none fits); ties go to the smaller block.
int64_t chooseAttentionBlock(int64_t dk, int64_t dv, int64_t maxSeq, const TileTarget &target);

} // namespace mlir::tnlm

#endif // TNLM_PASSES_TILECOSTMODEL_H
