//===- TileCostModel.cpp - Lightning Attention block sizes ----------------===//
//
// Per (batch, head) and block of m tokens, Lightning Attention (docs/model.md) does
//   Q Kᵀ and ((Q Kᵀ) ⊙ M) V   2·m²·dk + 2·m²·dv flops (full m×m tiles; half is masked)
//   Λ Q KV and Kᵀ V (state)   2·m·dk·dv + 2·m·dk·dv flops
// and the T = ceil(n/m) blocks run one after the other (the state carries over). Small
// blocks waste the GEMM units and pay the per-block step T times; large blocks spend
// quadratic work on the intra-block tile and must still fit on chip.
//
//===----------------------------------------------------------------------===//
#include "passes/TileCostModel.h"

#include <algorithm>

namespace mlir::tnlm {

std::optional<TileTarget> lookupTileTarget(llvm::StringRef name) {
  // One AVX2 core: OpenBLAS sgemm sustains ~50 GFLOP/s once the row panel is ≥ 32; a block
  // step is four BLAS calls plus the decay scaling (~2 µs); the tile should live in L2.
  if (name == "cpu")
    return TileTarget{"cpu", 50e9, 32, 2e-6, 1 << 20, 4};
  // One H100/H200 SM: 989 TFLOP/s dense bf16 / 132 SMs; wgmma tiles have M = 64; a block
  // step is a barrier plus the state update through shared memory; 227 KiB of shared
  // memory per thread block; Q/K/V/O tiles in bf16, scores and state in f32.
  if (name == "cuda:sm_90a")
    return TileTarget{"cuda:sm_90a", 7.5e12, 64, 1e-6, 227 * 1024, 2};
  return std::nullopt;
}

llvm::ArrayRef<int64_t> attentionBlockCandidates() {
  static const int64_t candidates[] = {16, 32, 64, 128, 256};
  return candidates;
}

int64_t attentionWorkingSetBytes(int64_t block, int64_t dk, int64_t dv, int64_t maxSeq,
                                 const TileTarget &target) {
  int64_t m = std::min(block, std::max<int64_t>(maxSeq, 1));
  return target.tileElementBytes * m * (2 * dk + 2 * dv) + 4 * (m * m + dk * dv);
}

double attentionSeconds(int64_t block, int64_t dk, int64_t dv, int64_t maxSeq,
                        const TileTarget &target) {
  int64_t n = std::max<int64_t>(maxSeq, 1);
  int64_t m = std::min(block, n);
  int64_t blocks = (n + m - 1) / m;
  double md = static_cast<double>(m);
  double flops =
      static_cast<double>(blocks) * (2.0 * md * md * static_cast<double>(dk + dv) +
                                     4.0 * md * static_cast<double>(dk) * static_cast<double>(dv));
  double rate =
      target.flopsPerSecond * std::min(1.0, md / static_cast<double>(target.fullRateBlock));
  return flops / rate + static_cast<double>(blocks) * target.secondsPerBlock;
}

int64_t chooseAttentionBlock(int64_t dk, int64_t dv, int64_t maxSeq, const TileTarget &target) {
  int64_t best = 0;
  double bestSeconds = 0.0;
  for (int64_t b : attentionBlockCandidates()) {
    if (attentionWorkingSetBytes(b, dk, dv, maxSeq, target) > target.onChipBytes)
      continue;
    double s = attentionSeconds(b, dk, dv, maxSeq, target);
    // Strictly better only: on a tie (e.g. every block covers a short sequence) the
    // smaller block keeps less scratch.
    if (best == 0 || s < bestSeconds * (1.0 - 1e-9)) {
      best = b;
      bestSeconds = s;
    }
  }
  return best ? best : attentionBlockCandidates().front();
}

} // namespace mlir::tnlm
