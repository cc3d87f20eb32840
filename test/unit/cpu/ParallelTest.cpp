//===- ParallelTest.cpp - the CPU kernels' thread pool --------------------===//
#include "runtime/cpu/Parallel.h"

#include <gtest/gtest.h>

#include <atomic>
#include <stdexcept>
#include <vector>

namespace tnlm::cpu {
namespace {

// Restores the thread count a test changed.
struct ThreadCountGuard {
  int saved = numThreads();
  ~ThreadCountGuard() { setNumThreads(saved); }
};

TEST(Parallel, CoversEveryIndexExactlyOnce) {
  ThreadCountGuard guard;
  for (int threads : {1, 2, 3, 5}) {
    setNumThreads(threads);
    EXPECT_EQ(numThreads(), threads);
    for (int64_t n : {0, 1, 7, 1000, 4097})
      for (int64_t grain : {1, 3, 100}) {
        std::vector<std::atomic<int>> hits(n);
        parallelFor(n, grain, [&](int64_t b, int64_t e) {
          ASSERT_LE(0, b);
          ASSERT_LT(b, e);
          ASSERT_LE(e, n);
          for (int64_t i = b; i < e; ++i)
            hits[i].fetch_add(1);
        });
        for (int64_t i = 0; i < n; ++i)
          ASSERT_EQ(hits[i].load(), 1) << "n " << n << " grain " << grain << " index " << i;
      }
  }
}

TEST(Parallel, NestedCallsRunInline) {
  ThreadCountGuard guard;
  setNumThreads(3);
  std::atomic<int64_t> sum{0};
  parallelFor(6, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      parallelFor(10, 1, [&](int64_t b2, int64_t e2) {
        for (int64_t j = b2; j < e2; ++j)
          sum.fetch_add(i * 10 + j);
      });
  });
  EXPECT_EQ(sum.load(), 59 * 60 / 2);
}

TEST(Parallel, ExceptionReachesCallerAndPoolStaysUsable) {
  ThreadCountGuard guard;
  setNumThreads(2);
  EXPECT_THROW(parallelFor(100, 1,
                           [](int64_t b, int64_t e) {
                             if (b <= 50 && 50 < e)
                               throw std::runtime_error("chunk with 50");
                           }),
               std::runtime_error);
  std::atomic<int> count{0};
  parallelFor(100, 1, [&](int64_t b, int64_t e) { count.fetch_add(static_cast<int>(e - b)); });
  EXPECT_EQ(count.load(), 100);
}

TEST(Parallel, ZeroRestoresDefault) {
  ThreadCountGuard guard;
  setNumThreads(4);
  setNumThreads(0);
  EXPECT_GE(numThreads(), 1);
}

} // namespace
} // namespace tnlm::cpu
