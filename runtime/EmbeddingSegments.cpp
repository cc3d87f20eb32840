//===- EmbeddingSegments.cpp ----------------------------------------------===//
#include "runtime/EmbeddingSegments.h"

#include "runtime/Error.h"

#include <limits>
#include <string>

namespace tnlm {

EmbeddingSegments embeddingSegments(const int32_t *ids, int64_t tokens, int64_t vocab,
                                    int64_t paddingIdx) {
  if (tokens < 0 || tokens > std::numeric_limits<int32_t>::max())
    throw Error("embedding backward: " + std::to_string(tokens) +
                " tokens in one step (at most 2^31 - 1)");
  for (int64_t t = 0; t < tokens; ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      throw Error("embedding backward: token id " + std::to_string(ids[t]) + " at position " +
                  std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(vocab) +
                  ")");
  // Counting sort by id (stable): counts, their prefix over the ids that occur, placement.
  std::vector<int32_t> count(static_cast<size_t>(vocab), 0);
  for (int64_t t = 0; t < tokens; ++t)
    if (ids[t] != paddingIdx)
      ++count[static_cast<size_t>(ids[t])];
  EmbeddingSegments s;
  std::vector<int32_t> next(static_cast<size_t>(vocab), 0);
  int32_t offset = 0;
  for (int64_t id = 0; id < vocab; ++id)
    if (count[static_cast<size_t>(id)] > 0) {
      s.ids.push_back(static_cast<int32_t>(id));
      s.start.push_back(offset);
      next[static_cast<size_t>(id)] = offset;
      offset += count[static_cast<size_t>(id)];
    }
  s.start.push_back(offset);
  s.order.resize(static_cast<size_t>(offset));
  for (int64_t t = 0; t < tokens; ++t)
    if (ids[t] != paddingIdx)
      s.order[static_cast<size_t>(next[static_cast<size_t>(ids[t])]++)] = static_cast<int32_t>(t);
  return s;
}

} // namespace tnlm
