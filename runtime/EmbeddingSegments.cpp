//===- EmbeddingSegments.cpp ----------------------------------------------===//
#include "runtime/EmbeddingSegments.h"

#include "runtime/Error.h"

#include <algorithm>
#include <limits>
#include <string>

namespace tnlm {

namespace {

void checkIds(const int32_t *ids, int64_t tokens, int64_t vocab) {
  if (tokens < 0 || tokens > std::numeric_limits<int32_t>::max())
    throw Error("embedding backward: " + std::to_string(tokens) +
                " tokens in one step (at most 2^31 - 1)");
  for (int64_t t = 0; t < tokens; ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      throw Error("embedding backward: token id " + std::to_string(ids[t]) + " at position " +
                  std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(vocab) +
                  ")");
}

} // namespace

EmbeddingSegments embeddingSegments(const int32_t *ids, int64_t tokens, int64_t vocab,
                                    int64_t paddingIdx) {
  EmbeddingSegments s;
  EmbeddingGrouper().group(ids, tokens, vocab, paddingIdx, s);
  return s;
}

void EmbeddingGrouper::group(const int32_t *ids, int64_t tokens, int64_t vocab, int64_t paddingIdx,
                             EmbeddingSegments &out) {
  checkIds(ids, tokens, vocab);
  if (slots_.size() != static_cast<size_t>(vocab)) {
    slots_.assign(static_cast<size_t>(vocab), Slot{0, 0});
    call_ = 0;
  }
  if (++call_ == 0) { // the stamps wrapped: every id unseen again
    std::fill(slots_.begin(), slots_.end(), Slot{0, 0});
    call_ = 1;
  }
  // The ids that occur, in order of first occurrence, and their counts.
  seen_.clear();
  for (int64_t t = 0; t < tokens; ++t) {
    const int32_t id = ids[t];
    if (id == paddingIdx)
      continue;
    Slot &slot = slots_[static_cast<size_t>(id)];
    if (slot.stamp != call_) {
      slot = Slot{call_, 0};
      seen_.push_back(id);
    }
    ++slot.count;
  }
  // Sorted: least significant digit first, 8 bits a pass (each pass stable), as many passes as
  // vocab - 1 has bytes (two for 64,000; at most four: the ids are int32).
  int passes = 0;
  for (uint64_t v = static_cast<uint64_t>(vocab > 0 ? vocab - 1 : 0); v > 0 && passes < 4; v >>= 8)
    ++passes;
  sorted_.resize(seen_.size());
  for (int p = 0; p < passes; ++p) {
    const int shift = 8 * p;
    size_t bucket[257] = {};
    for (int32_t id : seen_)
      ++bucket[((static_cast<uint32_t>(id) >> shift) & 255u) + 1];
    for (int b = 0; b < 256; ++b)
      bucket[b + 1] += bucket[b];
    for (int32_t id : seen_)
      sorted_[bucket[(static_cast<uint32_t>(id) >> shift) & 255u]++] = id;
    seen_.swap(sorted_);
  }
  // Segments in id order; each id's count becomes its next slot in `order`.
  out.ids.assign(seen_.begin(), seen_.end());
  out.start.resize(seen_.size() + 1);
  int32_t offset = 0;
  for (size_t i = 0; i < seen_.size(); ++i) {
    int32_t &c = slots_[static_cast<size_t>(seen_[i])].count;
    out.start[i] = offset;
    const int32_t n = c;
    c = offset;
    offset += n;
  }
  out.start[seen_.size()] = offset;
  out.order.resize(static_cast<size_t>(offset));
  for (int64_t t = 0; t < tokens; ++t)
    if (ids[t] != paddingIdx)
      out.order[static_cast<size_t>(slots_[static_cast<size_t>(ids[t])].count++)] =
          static_cast<int32_t>(t);
}

} // namespace tnlm
