//===- TrainScratch.h - the GPU train executor's scratch beside the arena -*- C++ -*-===//
//
// CudaExecutor (runtime/cuda/CudaTrainSteps.cpp, planTrainScratch) allocates these buffers
// besides the planned arena for a train artifact; tnlmc --summary counts the same bytes when it
// says whether a GPU train step fits. Header-only, no CUDA: both sides include it.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_TRAINSCRATCH_H
#define TNLM_RUNTIME_TRAINSCRATCH_H

#include "codegen/cuda/LightningFwdPlan.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>

namespace tnlm {

constexpr int64_t kTrainOptChunk = 1 << 16; // gradient elements per sum-of-squares chunk
constexpr int kTrainPositionChunk = 16;     // positions per LRPE dθ partial
constexpr int64_t kGpuLmHeadWholeBytes = int64_t(4) << 30; // one lm head chunk up to this
// The Lightning piece states [DK][DV] f32 (DK = DV = 128) a plain layer's forward keeps for its
// backward's dq pass: per layer, those of the plan at the artifact's largest call on the
// H200's 132 SMs (keptLaStatesOf; a call whose plan needs more, a smaller batch on a GPU with
// more SMs say, runs the dq pass's own state pass and scan instead).
constexpr int kTrainKeptLaSms = 132;
constexpr int64_t kTrainLaStateBytes = int64_t(128) * 128 * 4;
inline int64_t keptLaStatesOf(int64_t maxBatch, int64_t heads, int64_t maxSeq,
                              int sms = kTrainKeptLaSms) {
  const la::LightningFwdPlan p =
      la::plan_lightning_fwd(int(maxBatch), int(heads), int(maxSeq), 128, 128, 64, sms);
  return int64_t(p.workspace_bytes / kTrainLaStateBytes);
}

/// The largest operand of each kind over the artifact's train functions.
struct TrainScratchNeeds {
  int64_t lossCols = 0;            // cross entropy without its loss-only kernel (artifacts of an
                                   // earlier tnlmc): the logits' columns, for a gradient never read
  int64_t gatedCols = 0;           // gated linear backward: the hidden width F (for da, db)
  int64_t gatedRecomputedCols = 0; // ... of those without the forward's a, b (recomputed)
  int64_t lrpeFeatures = 0;        // Lightning backward: H · dh
  int64_t gradChunks = 0;          // global norm: chunks of kTrainOptChunk gradient elements
  int64_t lmHeadVocab = 0;         // the fused lm head loss (lm_head_loss steps): its vocabulary
  int64_t keptLaStates = 0; // Σ keptLaStatesOf over the Lightning backward steps of plain layers
                            // that read their forward's kept workspace
};

struct TrainScratch {
  size_t loss = 0, gated = 0, dtheta = 0, chunks = 0, lmHead = 0, keptLaStates = 0, total = 0;
  int64_t lmHeadChunkRows = 0;
};

/// The rows of each chunk when a call of `rows` rows is cut into chunks of at most `maxChunk`
/// (> 0): as few chunks as fit, of equal size (the last at most chunks - 1 rows smaller), and
/// at least two where the call has two rows or more, so that its [rows, V] f32 logits are never
/// whole in memory.
inline int64_t lmHeadEvenChunk(int64_t rows, int64_t maxChunk) {
  const int64_t chunks =
      std::max<int64_t>(rows >= 2 ? 2 : 1, (rows + maxChunk - 1) / std::max<int64_t>(maxChunk, 1));
  return std::max<int64_t>(1, (rows + chunks - 1) / chunks); // <= maxChunk
}

/// The rows of one chunk of the fused lm head loss (runtime/cuda/LmHeadLoss.h): its f32 logits
/// and bf16 logit gradients (6 bytes per row and vocabulary entry) in about 1 GiB, a multiple
/// of 128 rows where that many fit; or, where all of the call's logits fit in `wholeBytes` (the
/// GPU: 4 GiB), half the call (385M at 4 x 2048: two chunks of 4,096 rows, whose dW GEMMs sum
/// over 4,096 rows each instead of four partial results over 2,048). At most half the call's
/// rows (rounded up) either way: the [tokens, V] logits are never whole (lmHeadEvenChunk).
inline int64_t lmHeadChunkRows(int64_t maxRows, int64_t vocab, int64_t wholeBytes = 0) {
  if (maxRows <= 0 || vocab <= 0)
    return 0;
  const int64_t half = (maxRows + 1) / 2;
  if (maxRows <= wholeBytes / (vocab * 6))
    return half;
  int64_t rows = (int64_t(1) << 30) / (vocab * 6);
  if (rows >= 128)
    rows -= rows % 128;
  return std::clamp<int64_t>(rows, 1, half);
}

/// The bytes beside the arena: (older artifacts) the loss's bf16 logit gradients [rows, V]; the
/// fused lm head loss's chunk (lmHeadChunkRows · V · 6 bytes: f32 logits, bf16 gradients); the
/// gated linear backward's bf16 products [rows, F]: da and db, and a and b where a step
/// recomputes them (without the forward's); the LRPE dθ partials (f64 per position
/// chunk, or per batch row where there are more, and feature); the sum of squares' f64 chunks; 20
/// bytes per row (row losses, the embedding grouping), the plain layers' kept Lightning piece
/// states (keptLaStatesOf each) and 4 KiB of scalars.
inline TrainScratch trainScratch(int64_t maxRows, int64_t maxSeq, const TrainScratchNeeds &n) {
  TrainScratch s;
  const size_t rows = size_t(std::max<int64_t>(maxRows, 0));
  s.loss = rows * size_t(n.lossCols) * 2;
  s.gated = 2 * rows * size_t(n.gatedCols) * 2 + 2 * rows * size_t(n.gatedRecomputedCols) * 2;
  // The LRPE dθ partials: per position chunk (the absolute form, older artifacts) or per batch
  // row (la_dtheta_relative), whichever is more.
  const int64_t maxBatch = maxSeq > 0 ? maxRows / maxSeq : 0;
  s.dtheta = size_t(std::max<int64_t>((maxSeq + kTrainPositionChunk - 1) / kTrainPositionChunk,
                                      maxBatch)) *
             size_t(n.lrpeFeatures) * 8;
  s.chunks = size_t(n.gradChunks);
  s.lmHeadChunkRows = lmHeadChunkRows(maxRows, n.lmHeadVocab, kGpuLmHeadWholeBytes);
  s.lmHead = size_t(s.lmHeadChunkRows) * size_t(std::max<int64_t>(n.lmHeadVocab, 0)) * 6;
  s.keptLaStates = size_t(std::max<int64_t>(n.keptLaStates, 0)) * size_t(kTrainLaStateBytes);
  s.total = s.loss + s.gated + s.dtheta + s.chunks * 8 + s.lmHead + s.keptLaStates +
            rows * (8 + 12) + 4096;
  return s;
}

/// How the tensor-core relative dθ kernel (tnlm_la_dtheta_segments) cuts a call's sequence:
/// `segments` of `length` tokens each (whole 64-token blocks; the last one shorter), and where
/// the segments' states go in the dθ partials' scratch: after the partials (batch · segments ·
/// features f64, rounded up to 256 bytes), 32 KiB (S and T of 128 × 32 f32) per CTA and segment.
struct DthetaSegments {
  int64_t segments = 1, length = 0;
  size_t statesOffset = 0; // bytes into the partials' scratch
};

/// One CTA per (b, h, 16 features) (`ctas` of them): as many segments as leave no more CTAs
/// than the GPU's `sms`, each at least 8 blocks, their partials and states within
/// `scratchBytes`; at least one segment of at least one block.
inline DthetaSegments dthetaSegments(int64_t batch, int64_t ctas, int64_t features, int64_t seq,
                                     int sms, size_t scratchBytes) {
  constexpr int64_t kBlock = 64, kStateBytes = 2 * 128 * 32 * 4;
  auto partialBytes = [&](int64_t g) {
    return (size_t(std::max<int64_t>(batch * g * features, 0)) * 8 + 255) / 256 * 256;
  };
  int64_t segs = std::max<int64_t>(1, sms / std::max<int64_t>(ctas, 1));
  segs = std::min<int64_t>(segs, std::max<int64_t>(1, seq / (8 * kBlock)));
  while (segs > 1 && partialBytes(segs) + size_t(segs * ctas * kStateBytes) > scratchBytes)
    --segs;
  DthetaSegments d;
  d.length = std::max(kBlock, ((seq + segs - 1) / segs + kBlock - 1) / kBlock * kBlock);
  d.segments = std::max<int64_t>(1, (seq + d.length - 1) / d.length);
  d.statesOffset = partialBytes(d.segments);
  return d;
}

} // namespace tnlm

#endif // TNLM_RUNTIME_TRAINSCRATCH_H
