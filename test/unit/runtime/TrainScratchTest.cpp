//===- TrainScratchTest.cpp - the GPU train step's scratch and the dθ segments ------===//
//
// runtime/TrainScratch.h: the LRPE dθ partials' scratch holds the partials of the absolute form
// (one row per 16 positions) or of the relative form (one row per batch row), and
// dthetaSegments cuts a long sequence so that the relative dθ kernel fills the GPU, its
// segments' states placed after the partials within that scratch.
//
//===----------------------------------------------------------------------===//
#include "runtime/TrainScratch.h"

#include <gtest/gtest.h>

#include <string>

namespace tnlm {
namespace {

constexpr int64_t kStateBytes = 2 * 128 * 32 * 4; // S and T of one CTA

size_t dthetaScratch(int64_t maxBatch, int64_t maxSeq, int64_t features) {
  TrainScratchNeeds n;
  n.lrpeFeatures = features;
  return trainScratch(maxBatch * maxSeq, maxSeq, n).dtheta;
}

TEST(TrainScratch, TheDthetaPartialsFitEitherForm) {
  // 385M's layer 0 (8 heads of 128): position chunks at long sequences, batch rows at short.
  EXPECT_EQ(dthetaScratch(1, 32768, 1024), size_t(2048) * 1024 * 8);
  EXPECT_EQ(dthetaScratch(4, 2048, 1024), size_t(128) * 1024 * 8);
  EXPECT_EQ(dthetaScratch(64, 32, 1024), size_t(64) * 1024 * 8); // 2 chunks, 64 rows
  EXPECT_EQ(dthetaScratch(4, 2048, 0), 0u);                      // no LRPE layer
}

TEST(TrainScratch, DthetaSegmentsFillTheGpu) {
  // 385M at 4 x 2048: 256 CTAs already, one segment.
  DthetaSegments d = dthetaSegments(4, 256, 1024, 2048, 132, dthetaScratch(4, 2048, 1024));
  EXPECT_EQ(d.segments, 1);
  EXPECT_EQ(d.length, 2048);
  // 1 x 32768: 64 CTAs, two segments of 16,384 tokens, the states after 2 rows of partials.
  d = dthetaSegments(1, 64, 1024, 32768, 132, dthetaScratch(1, 32768, 1024));
  EXPECT_EQ(d.segments, 2);
  EXPECT_EQ(d.length, 16384);
  EXPECT_EQ(d.statesOffset, size_t(2) * 1024 * 8);
  // The scratch too small for any states: one segment.
  d = dthetaSegments(1, 64, 1024, 32768, 132, size_t(1024) * 8);
  EXPECT_EQ(d.segments, 1);
  // Segments of at least 8 blocks: 5,000 tokens, 8 CTAs: 9 segments of 576 (the last 392).
  d = dthetaSegments(1, 8, 128, 5000, 132, size_t(1) << 30);
  EXPECT_EQ(d.segments, 9);
  EXPECT_EQ(d.length, 576);
  // Short and empty sequences: one segment of at least one block.
  d = dthetaSegments(1, 8, 128, 100, 132, size_t(1) << 30);
  EXPECT_EQ(d.segments, 1);
  EXPECT_EQ(d.length, 128);
  d = dthetaSegments(1, 8, 128, 0, 132, size_t(1) << 30);
  EXPECT_EQ(d.segments, 1);
  EXPECT_EQ(d.length, 64);
}

TEST(TrainScratch, DthetaSegmentsCoverTheSequenceWithinTheScratch) {
  for (int64_t batch : {1, 2, 4})
    for (int64_t heads : {1, 3, 8})
      for (int64_t seq : {1, 63, 64, 65, 511, 512, 1000, 4097, 32768, 100000})
        for (int sms : {1, 132, 1000}) {
          const int64_t ctas = batch * heads * 8, features = heads * 128;
          const size_t scratch = dthetaScratch(batch, seq, features);
          const DthetaSegments d = dthetaSegments(batch, ctas, features, seq, sms, scratch);
          const std::string at = "batch " + std::to_string(batch) + ", heads " +
                                 std::to_string(heads) + ", seq " + std::to_string(seq) + ", sms " +
                                 std::to_string(sms);
          EXPECT_GE(d.segments, 1) << at;
          EXPECT_EQ(d.length % 64, 0) << at;
          EXPECT_GE(d.segments * d.length, seq) << at;
          EXPECT_LT((d.segments - 1) * d.length, std::max<int64_t>(seq, 1)) << at;
          EXPECT_LE(d.segments * ctas, std::max<int64_t>(sms, ctas)) << at;
          EXPECT_GE(d.statesOffset, size_t(batch * d.segments * features) * 8) << at;
          if (d.segments > 1) {
            EXPECT_GE(d.length, 8 * 64) << at;
            EXPECT_LE(d.statesOffset + size_t(d.segments * ctas * kStateBytes), scratch) << at;
          }
        }
}

} // namespace
} // namespace tnlm
