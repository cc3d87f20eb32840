//===- EmbeddingSegments.h - a step's tokens grouped by id ------------*- C++ -*-===//
//
// The deterministic embedding backward on the GPU (codegen/cuda/Backward.cuh, embedding_grad)
// adds each id's token rows in token order, one CTA per id: the host, which holds the step's
// ids anyway (it uploads them), groups the tokens by id with a stable counting sort and
// uploads the grouping with them.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_EMBEDDINGSEGMENTS_H
#define TNLM_RUNTIME_EMBEDDINGSEGMENTS_H

#include <cstdint>
#include <vector>

namespace tnlm {

struct EmbeddingSegments {
  std::vector<int32_t> order; ///< token indices sorted by id, in token order within an id
  std::vector<int32_t> start; ///< segments + 1 offsets into order
  std::vector<int32_t> ids;   ///< each segment's id, increasing
};

/// Groups tokens [0, tokens) by ids[t]. Every id must lie in [0, vocab) (tnlm::Error naming
/// the first one outside and its position, as the CPU backward does); at most 2^31 − 1 tokens.
/// Tokens of id `paddingIdx` (>= 0) are left out (nn.Embedding(padding_idx=), cpu::embeddingGrad).
EmbeddingSegments embeddingSegments(const int32_t *ids, int64_t tokens, int64_t vocab,
                                    int64_t paddingIdx = -1);

/// embeddingSegments for every train step: the same grouping in O(tokens) per call, its memory
/// kept from call to call (embeddingSegments is one call of a fresh grouper). (Counting over
/// the whole vocabulary, with fresh per-id arrays each time, took ~0.24 ms of the host's time
/// per 385M step at 8,192 tokens and a vocabulary of 64,000, while the GPU waited: the ids seen
/// are marked with the call's stamp and sorted by a radix sort instead.)
class EmbeddingGrouper {
public:
  /// Writes embeddingSegments(ids, tokens, vocab, paddingIdx) into `out` (its vectors reused);
  /// the same errors.
  void group(const int32_t *ids, int64_t tokens, int64_t vocab, int64_t paddingIdx,
             EmbeddingSegments &out);

private:
  struct Slot {
    uint32_t stamp; // the call that last counted the id
    int32_t count;  // where stamp is this call's: the id's tokens, then its next slot in order
  };
  std::vector<Slot> slots_; // per id (one cache line per random access, not two)
  std::vector<int32_t> seen_, sorted_;
  uint32_t call_ = 0;
};

} // namespace tnlm

#endif // TNLM_RUNTIME_EMBEDDINGSEGMENTS_H
