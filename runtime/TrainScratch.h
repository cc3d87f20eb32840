//===- TrainScratch.h - the GPU train executor's scratch beside the arena -*- C++ -*-===//
//
// CudaExecutor (runtime/cuda/CudaTrainSteps.cpp, planTrainScratch) allocates these buffers
// besides the planned arena for a train artifact; tnlmc --summary counts the same bytes when it
// says whether a GPU train step fits. Header-only, no CUDA: both sides include it.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_TRAINSCRATCH_H
#define TNLM_RUNTIME_TRAINSCRATCH_H

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace tnlm {

constexpr int64_t kTrainOptChunk = 1 << 16; // gradient elements per sum-of-squares chunk
constexpr int kTrainPositionChunk = 16;     // positions per LRPE dθ partial

/// The largest operand of each kind over the artifact's train functions.
struct TrainScratchNeeds {
  int64_t lossCols = 0;     // cross entropy without its loss-only kernel (artifacts of an
                            // earlier tnlmc): the logits' columns, for a gradient never read
  int64_t gatedCols = 0;    // gated linear backward: the hidden width F
  int64_t lrpeFeatures = 0; // Lightning backward: H · dh
  int64_t gradChunks = 0;   // global norm: chunks of kTrainOptChunk gradient elements
};

struct TrainScratch {
  size_t loss = 0, gated = 0, dtheta = 0, chunks = 0, total = 0;
};

/// (Older artifacts: the loss's bf16 logit gradients [rows, V].) The gated linear backward's four
/// bf16 products [rows, F], the LRPE dθ partials (f64 per position chunk and feature), the sum of
/// squares' f64 chunks, 20 bytes per row (row losses, the embedding grouping) and 4 KiB of scalars.
inline TrainScratch trainScratch(int64_t maxRows, int64_t maxSeq, const TrainScratchNeeds &n) {
  TrainScratch s;
  const size_t rows = size_t(std::max<int64_t>(maxRows, 0));
  s.loss = rows * size_t(n.lossCols) * 2;
  s.gated = 4 * rows * size_t(n.gatedCols) * 2;
  s.dtheta =
      size_t((maxSeq + kTrainPositionChunk - 1) / kTrainPositionChunk) * size_t(n.lrpeFeatures) * 8;
  s.chunks = size_t(n.gradChunks);
  s.total = s.loss + s.gated + s.dtheta + s.chunks * 8 + rows * (8 + 12) + 4096;
  return s;
}

} // namespace tnlm

#endif // TNLM_RUNTIME_TRAINSCRATCH_H
