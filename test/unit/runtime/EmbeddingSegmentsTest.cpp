//===- EmbeddingSegmentsTest.cpp - a step's tokens grouped by id -----------===//
#include "runtime/EmbeddingSegments.h"
#include "runtime/Error.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace {

TEST(EmbeddingSegments, GroupsTokensByIdInTokenOrder) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> pick(0, 40); // repeats, and ids that never occur
  std::vector<int32_t> ids(1000);
  for (int32_t &id : ids)
    id = pick(rng);
  ids[10] = 0, ids[11] = 99; // the first and the last id of the vocabulary
  const tnlm::EmbeddingSegments s = tnlm::embeddingSegments(ids.data(), 1000, 100);
  ASSERT_EQ(s.start.size(), s.ids.size() + 1);
  ASSERT_EQ(s.order.size(), ids.size());
  EXPECT_EQ(s.start.front(), 0);
  EXPECT_EQ(s.start.back(), 1000);
  EXPECT_EQ(s.ids.front(), 0);
  EXPECT_EQ(s.ids.back(), 99);
  std::vector<int> seen(ids.size(), 0);
  for (size_t g = 0; g < s.ids.size(); ++g) {
    if (g > 0) {
      EXPECT_LT(s.ids[g - 1], s.ids[g]); // each id once, increasing
    }
    ASSERT_LT(s.start[g], s.start[g + 1]) << "an empty segment";
    for (int32_t j = s.start[g]; j < s.start[g + 1]; ++j) {
      const int32_t t = s.order[static_cast<size_t>(j)];
      ++seen[static_cast<size_t>(t)];
      EXPECT_EQ(ids[static_cast<size_t>(t)], s.ids[g]);
      if (j > s.start[g]) {
        EXPECT_LT(s.order[static_cast<size_t>(j - 1)], t); // token order within an id
      }
    }
  }
  for (size_t t = 0; t < seen.size(); ++t)
    EXPECT_EQ(seen[t], 1) << "token " << t;
}

TEST(EmbeddingSegments, LeavesOutThePaddingId) {
  const std::vector<int32_t> ids = {3, 0, 5, 0, 3, 7, 0};
  const tnlm::EmbeddingSegments s = tnlm::embeddingSegments(ids.data(), 7, 10, /*paddingIdx=*/0);
  EXPECT_EQ(s.ids, (std::vector<int32_t>{3, 5, 7}));
  EXPECT_EQ(s.start, (std::vector<int32_t>{0, 2, 3, 4}));
  EXPECT_EQ(s.order, (std::vector<int32_t>{0, 4, 2, 5}));
  // Without a padding index token 0's three positions form the first segment.
  const tnlm::EmbeddingSegments all = tnlm::embeddingSegments(ids.data(), 7, 10);
  EXPECT_EQ(all.ids, (std::vector<int32_t>{0, 3, 5, 7}));
  EXPECT_EQ(all.order, (std::vector<int32_t>{1, 3, 6, 0, 4, 2, 5}));
}

TEST(EmbeddingSegments, NoTokensNoSegments) {
  const tnlm::EmbeddingSegments s = tnlm::embeddingSegments(nullptr, 0, 10);
  EXPECT_TRUE(s.order.empty());
  EXPECT_TRUE(s.ids.empty());
  EXPECT_EQ(s.start, std::vector<int32_t>{0});
}

TEST(EmbeddingSegments, IdOutsideTheVocabularyIsNamed) {
  for (int32_t bad : {-1, 10, 1 << 30}) {
    std::vector<int32_t> ids = {1, 2, 3, bad, 4};
    try {
      tnlm::embeddingSegments(ids.data(), 5, 10);
      ADD_FAILURE() << bad << " accepted";
    } catch (const tnlm::Error &e) {
      EXPECT_EQ(std::string(e.what()), "embedding backward: token id " + std::to_string(bad) +
                                           " at position 3 is outside the vocabulary [0, 10)");
    }
  }
}

// The grouping by its definition: the tokens' positions sorted by id, stably (token order
// within an id), the padding id's left out; each id once with where its run starts.
tnlm::EmbeddingSegments referenceSegments(const int32_t *ids, int64_t tokens, int64_t padding) {
  std::vector<int32_t> order;
  for (int64_t t = 0; t < tokens; ++t)
    if (ids[t] != padding)
      order.push_back(static_cast<int32_t>(t));
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return ids[a] < ids[b]; });
  tnlm::EmbeddingSegments s;
  for (size_t j = 0; j < order.size(); ++j)
    if (j == 0 || ids[order[j]] != ids[order[j - 1]]) {
      s.ids.push_back(ids[order[j]]);
      s.start.push_back(static_cast<int32_t>(j));
    }
  s.start.push_back(static_cast<int32_t>(order.size()));
  s.order = std::move(order);
  return s;
}

// The grouper (the train step's, memory kept between calls) gives the reference grouping on
// every call: vocabularies of one to three radix bytes, repeated and changing calls (its
// stamps), padding, no tokens; and its errors.
TEST(EmbeddingGrouper, EqualsEmbeddingSegmentsCallAfterCall) {
  std::mt19937 rng(11);
  tnlm::EmbeddingGrouper g;
  tnlm::EmbeddingSegments out;
  auto same = [](const tnlm::EmbeddingSegments &a, const tnlm::EmbeddingSegments &b) {
    return a.ids == b.ids && a.start == b.start && a.order == b.order;
  };
  int calls = 0;
  for (int64_t vocab : {1, 2, 256, 257, 64000, 70000}) {
    for (int64_t tokens : {0, 1, 7, 3000, 8192}) {
      for (int64_t padding : {int64_t(-1), int64_t(0), vocab - 1}) {
        std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
        std::vector<int32_t> ids(static_cast<size_t>(tokens));
        for (int32_t &id : ids)
          id = pick(rng);
        g.group(ids.data(), tokens, vocab, padding, out);
        ++calls;
        ASSERT_TRUE(same(out, referenceSegments(ids.data(), tokens, padding)))
            << "vocab " << vocab << ", tokens " << tokens << ", padding " << padding;
      }
    }
  }
  EXPECT_EQ(calls, 90);
  std::vector<int32_t> ids = {1, 2, 3, 10, 4};
  try {
    g.group(ids.data(), 5, 10, -1, out);
    ADD_FAILURE() << "10 accepted";
  } catch (const tnlm::Error &e) {
    EXPECT_EQ(std::string(e.what()), "embedding backward: token id 10 at position 3 is outside "
                                     "the vocabulary [0, 10)");
  }
  ids[3] = 9; // and it goes on after an error
  g.group(ids.data(), 5, 10, -1, out);
  EXPECT_TRUE(same(out, referenceSegments(ids.data(), 5, -1)));
}

} // namespace
