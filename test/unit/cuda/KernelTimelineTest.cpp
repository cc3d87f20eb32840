//===- KernelTimelineTest.cpp - the CUPTI timeline's summary (no GPU) -----===//
//
// bench/KernelTimeline.h's summarize(): the span, the union of the kernels' intervals (busy),
// the gaps, the window of a step, and the time per kernel name, on hand-made records.
//
//===----------------------------------------------------------------------===//
#include "bench/KernelTimeline.h"

#include <gtest/gtest.h>

using tnlm::bench::summarize;
using tnlm::bench::TimelineRecord;

namespace {

// Records sorted by start, as KernelTimeline::stop returns them (times in ns).
std::vector<TimelineRecord> records() {
  return {
      {"gemm", 1000, 3000},  // 2 us
      {"norm", 3500, 4000},  // 0.5 us after a 0.5 us gap
      {"side", 3600, 4500},  // overlaps norm: busy grows by 0.5 us only
      {"norm", 6500, 7000},  // after a 2 us gap
      {"later", 9000, 9500}, // outside the window [0, 9000)
  };
}

TEST(KernelTimeline, BusyIsTheUnionAndGapsTheRest) {
  const auto s = summarize(records(), 0, 9000);
  EXPECT_EQ(s.kernels, 4);
  EXPECT_DOUBLE_EQ(s.spanMs, 6000 / 1e6);                     // 1000 .. 7000
  EXPECT_DOUBLE_EQ(s.busyMs, (2000 + 500 + 500 + 500) / 1e6); // the overlap counted once
  EXPECT_DOUBLE_EQ(s.gapMs, (500 + 2000) / 1e6);
}

TEST(KernelTimeline, KindsSumTheirKernelsSlowestFirst) {
  const auto s = summarize(records(), 0, 9000);
  ASSERT_EQ(s.kinds.size(), 3u);
  EXPECT_EQ(s.kinds[0].name, "gemm");
  EXPECT_DOUBLE_EQ(s.kinds[0].ms, 2000 / 1e6);
  EXPECT_EQ(s.kinds[1].name, "norm"); // two kernels, 1 us in all
  EXPECT_EQ(s.kinds[1].count, 2);
  EXPECT_DOUBLE_EQ(s.kinds[1].ms, 1000 / 1e6);
  EXPECT_EQ(s.kinds[2].name, "side"); // one, 0.9 us
  EXPECT_DOUBLE_EQ(s.kinds[2].ms, 900 / 1e6);
}

TEST(KernelTimeline, GapsAreNamedByTheirBoundary) {
  const auto s = summarize(records(), 0, 9000);
  // 2 us idle after "side" (it covered the timeline to 4500, norm ended at 4000) before the
  // second "norm"; 0.5 us after "gemm" before the first "norm"; none before "side" (it starts
  // while norm runs).
  ASSERT_EQ(s.gaps.size(), 2u);
  EXPECT_EQ(s.gaps[0].before, "side");
  EXPECT_EQ(s.gaps[0].after, "norm");
  EXPECT_DOUBLE_EQ(s.gaps[0].ms, 2000 / 1e6);
  EXPECT_EQ(s.gaps[0].count, 1);
  EXPECT_EQ(s.gaps[1].before, "gemm");
  EXPECT_EQ(s.gaps[1].after, "norm");
  EXPECT_DOUBLE_EQ(s.gaps[1].ms, 500 / 1e6);
  double sum = 0;
  for (const auto &g : s.gaps)
    sum += g.ms;
  EXPECT_DOUBLE_EQ(sum, s.gapMs);
  // The idle intervals themselves, longest first, placed from the window's first start.
  ASSERT_EQ(s.longest.size(), 2u);
  EXPECT_DOUBLE_EQ(s.longest[0].atMs, 3500 / 1e6); // from side's end (4500)
  EXPECT_DOUBLE_EQ(s.longest[0].ms, 2000 / 1e6);
  EXPECT_EQ(s.longest[0].index, 3);
  EXPECT_EQ(s.longest[0].before, "side");
  EXPECT_EQ(s.longest[0].after, "norm");
  EXPECT_EQ(s.longest[0].next, ""); // "later" lies outside the window
  EXPECT_DOUBLE_EQ(s.longest[1].atMs, 2000 / 1e6);
  EXPECT_EQ(s.longest[1].index, 1);
  EXPECT_EQ(s.longest[1].before, "gemm");
  EXPECT_EQ(s.longest[1].next, "side");
}

TEST(KernelTimeline, AZeroLengthFirstRecordStillNamesTheGapAfterIt) {
  const std::vector<TimelineRecord> recs = {{"memset", 1000, 1000}, {"gemm", 2000, 3000}};
  const auto s = summarize(recs, 0, 9000);
  EXPECT_DOUBLE_EQ(s.gapMs, 1000 / 1e6);
  ASSERT_EQ(s.gaps.size(), 1u);
  EXPECT_EQ(s.gaps[0].before, "memset");
  EXPECT_DOUBLE_EQ(s.gaps[0].ms, s.gapMs);
  ASSERT_EQ(s.longest.size(), 1u);
  EXPECT_EQ(s.longest[0].after, "gemm");
}

TEST(KernelTimeline, TheWindowIsByStart) {
  const auto s = summarize(records(), 3500, 9500); // from norm on, "later" included
  EXPECT_EQ(s.kernels, 4);
  EXPECT_DOUBLE_EQ(s.spanMs, 6000 / 1e6); // 3500 .. 9500
  EXPECT_DOUBLE_EQ(s.busyMs, (1000 + 500 + 500) / 1e6);
  const auto none = summarize(records(), 10000, 20000);
  EXPECT_EQ(none.kernels, 0);
  EXPECT_EQ(none.spanMs, 0);
  EXPECT_TRUE(none.kinds.empty());
}

} // namespace
