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

} // namespace tnlm

#endif // TNLM_RUNTIME_EMBEDDINGSEGMENTS_H
