//===- GpuTrainScratch.cpp - tnlmc --summary's count of the GPU train scratch ===//
#include "tools/tnlmc/GpuTrainScratch.h"

#include "runtime/TrainScratch.h"

#include <algorithm>

namespace mlir::tnlm {

GpuTrainScratchBytes gpuTrainScratch(const std::vector<KernelPlan> &plans, int64_t maxRows,
                                     int64_t maxSeq) {
  ::tnlm::TrainScratchNeeds n;
  for (const KernelPlan &p : plans)
    for (const PlanStep &s : p.steps) {
      switch (s.kind) {
      // CrossEntropy: none (its kernel writes no gradient; artifacts of an earlier tnlmc did).
      case KernelKind::LmHeadLoss:
        n.lmHeadVocab = std::max(n.lmHeadVocab, s.inputs[1].rows);
        break;
      case KernelKind::GatedLinearGrad:
        n.gatedCols = std::max(n.gatedCols, s.inputs[3].cols);
        if (s.inputs.size() < 6) // no forward a, b: the executor recomputes them in scratch
          n.gatedRecomputedCols = std::max(n.gatedRecomputedCols, s.inputs[3].cols);
        break;
      case KernelKind::LightningAttentionGrad:
        n.lrpeFeatures = std::max(n.lrpeFeatures, s.i64Attrs[0] * s.i64Attrs[1]);
        if (s.i64Attrs[3] == 0 && s.inputs.size() == 3) // a plain layer reading its forward's
          n.keptLaStates +=                             // workspace: its piece states kept
              ::tnlm::keptLaStatesOf(maxRows / std::max<int64_t>(maxSeq, 1), s.i64Attrs[0], maxSeq);
        break;
      case KernelKind::GlobalNorm: {
        int64_t c = 0;
        for (size_t i = 1; i < s.inputs.size(); ++i)
          c += (std::max<int64_t>(s.inputs[i].rows, 1) * s.inputs[i].cols + ::tnlm::kTrainOptChunk -
                1) /
               ::tnlm::kTrainOptChunk;
        n.gradChunks = std::max(n.gradChunks, c);
        break;
      }
      default:
        break;
      }
    }
  const ::tnlm::TrainScratch t = ::tnlm::trainScratch(maxRows, maxSeq, n);
  return {int64_t(t.total), int64_t(t.gated), int64_t(t.lmHead), t.lmHeadChunkRows,
          int64_t(t.keptLaStates)};
}

} // namespace mlir::tnlm
