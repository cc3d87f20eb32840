//===- LinearTest.cpp - y = x·Wᵀ vs f64 loops -----------------------------===//
//
// sgemm sums K = `in` products in f32: |error| <= K·u·Σ|x_i w_i| (u = 2^-24, worst case);
// the tests allow (K + 2)·u·Σ|x_i w_i|, the 2 covering the product and, with accumulate,
// the final add of the old y.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Kernels.h"
#include "test/unit/cpu/Naive.h"

#include <gtest/gtest.h>

#include <cmath>
#include <tuple>

namespace tnlm::cpu {
namespace {

using naive::kU;

constexpr float kSentinel = -777.0f;

// (rows, in, out, threads): one row (sgemv), few rows (split over outputs), many rows
// (split over rows), sizes that are no multiple of any vector width.
class LinearShapes : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, int>> {};

TEST_P(LinearShapes, MatchesNaiveWithStridesAndAccumulate) {
  auto [rows, in, out, threads] = GetParam();
  int saved = numThreads();
  setNumThreads(threads);
  const int64_t ldx = in + 3, ldy = out + 5;
  std::vector<float> x = naive::randomVector(rows * ldx, 51);
  std::vector<float> w = naive::randomVector(out * in, 52);
  std::vector<double> want, abs;
  naive::denseLinear(x.data(), rows, in, ldx, w.data(), out, want, abs);

  for (bool accumulate : {false, true}) {
    std::vector<float> y(rows * ldy, kSentinel);
    std::vector<float> y0 = naive::randomVector(rows * ldy, 53);
    if (accumulate)
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t o = 0; o < out; ++o)
          y[r * ldy + o] = y0[r * ldy + o];
    linear(x.data(), rows, in, ldx, w.data(), out, y.data(), ldy, accumulate);
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t o = 0; o < out; ++o) {
        double expect = want[r * out + o] + (accumulate ? y0[r * ldy + o] : 0.0);
        double bound = (in + 2) * kU * (abs[r * out + o] + (accumulate ? 1.0 : 0.0)) + 1e-30;
        ASSERT_NEAR(y[r * ldy + o], expect, bound)
            << "row " << r << " out " << o << (accumulate ? " (accumulate)" : "");
      }
      for (int64_t o = out; o < ldy; ++o)
        ASSERT_EQ(y[r * ldy + o], kSentinel) << "padding of row " << r << " written";
    }
  }
  setNumThreads(saved);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LinearShapes,
    ::testing::Values(std::make_tuple(1, 300, 257, 1), std::make_tuple(1, 300, 257, 2),
                      std::make_tuple(3, 129, 70, 2), std::make_tuple(5, 64, 1000, 3),
                      std::make_tuple(70, 96, 33, 2), std::make_tuple(257, 130, 200, 2),
                      std::make_tuple(257, 130, 200, 1)));

TEST(Linear, EmptyInnerDimensionGivesZeros) {
  std::vector<float> y(6, 5.0f);
  linear(nullptr, 2, 0, 0, nullptr, 3, y.data(), 3);
  for (float v : y)
    EXPECT_EQ(v, 0.0f);
}

} // namespace
} // namespace tnlm::cpu
