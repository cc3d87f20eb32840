//===- OptimizerTest.cpp - sumSquares and AdamW vs f64 formulas -----------===//
//
// Tolerances (u = 2^-24 for f32, 2^-53 for f64):
// - sumSquares sums n f64 products of f32 values (exact in f64) in f64: within n·2^-53·Σx².
// - AdamW: each step rounds p twice (the decay, the update): 2u·|p|. The step term
//   lr·m̂/(sqrt(v̂) + eps) is a chain of f32 operations on m and v, themselves f32 recurrences:
//   over t <= 10 steps m is within ~3t·u of its f64 value relative to the running mean of |g|
//   (the abs companion M̂ below; m itself may cancel), v within ~(4 + t)·u relative (a sum of
//   positive terms), so the ratio is within ~(3t + 15)·u·(|m̂| + M̂)/(sqrt(v̂) + eps); the tests
//   allow 64u for it and sum both parts over the steps (an earlier error is only damped by
//   the decay, never amplified).
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Backward.h"
#include "runtime/cpu/Parallel.h"
#include "test/unit/cpu/Naive.h"

#include "runtime/Error.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>

namespace tnlm::cpu {
namespace {

using naive::kU;
constexpr double kU64 = 1.1102230246251565e-16; // 2^-53

struct ThreadCount {
  int saved = numThreads();
  explicit ThreadCount(int n) { setNumThreads(n); }
  ~ThreadCount() { setNumThreads(saved); }
};

//===-- sumSquares ---------------------------------------------------------------===//

TEST(SumSquares, ExactOnSmallIntegersAcrossChunks) {
  // 3 chunks of 2^16 and a tail; the squares of small integers sum exactly in f64.
  const int64_t n = 3 * 65536 + 5;
  std::vector<float> x(n);
  double want = 0;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = static_cast<float>(i % 7 - 3);
    want += x[i] * x[i];
  }
  EXPECT_EQ(sumSquares(x.data(), n), want);
  EXPECT_EQ(sumSquares(x.data(), 0), 0.0);
  EXPECT_EQ(sumSquares(x.data(), 3), 9.0 + 4.0 + 1.0); // below one chunk
}

TEST(SumSquares, MatchesNaiveAndIsBitIdenticalAcrossThreadCounts) {
  const int64_t n = 2000003;
  const std::vector<float> x = naive::randomVector(n, 201, -3.0f, 3.0f);
  double want = 0;
  for (float v : x)
    want += static_cast<double>(v) * v;
  double first = 0;
  for (int threads : {1, 2, 3}) {
    ThreadCount guard(threads);
    const double got = sumSquares(x.data(), n);
    EXPECT_NEAR(got, want, 2 * n * kU64 * want);
    if (threads == 1)
      first = got;
    else
      EXPECT_EQ(got, first) << threads << " threads";
  }
}

//===-- AdamW ----------------------------------------------------------------------===//

// Step 1 and 2 of one parameter, by hand from the formulas: p0 = 1, lr = 0.1, wd = 0.1,
// β = (0.9, 0.999), eps = 1e-8.
//   t = 1, g = 0.5:  p = 1·(1 − 0.01) = 0.99;  m = 0.1·0.5 = 0.05;  v = 0.001·0.25 = 2.5e-4;
//                    m̂ = 0.05/0.1 = 0.5, v̂ = 2.5e-4/0.001 = 0.25, sqrt = 0.5
//                    p = 0.99 − 0.1·0.5/(0.5 + 1e-8) = 0.89 + 2e-9
//   t = 2, g = −0.5: p = 0.99·0.89 = 0.8811;  m = 0.045 − 0.05 = −0.005;
//                    v = 0.999·2.5e-4 + 0.001·0.25 = 4.9975e-4;  bc1 = 0.19, bc2 = 0.001999
//                    m̂ = −0.005/0.19 = −1/38, v̂ = 4.9975e-4/0.001999 = 0.25 (exactly)
//                    p = 0.8811 + 0.1·(1/38)/0.5 = 0.8811 + 1/190 (eps: −1e-10)
// The f32 results are within a few roundings of these: 4u relative. One caveat: the kernel
// takes β as f32: 0.9f = 0.89999998, so 1 − β1 = c1 = 0.10000002 (4u above 0.1), and
// 0.999f = 0.99900001, so 1 − β2 = c2 = 9.9998713e-4 (1.3e-5 below 0.001). m and v below use
// these (m1 = 0.5·c1, m2 = −0.5·c1², v1 = 0.25·c2, v2 = 0.25·c2·(2 − c2)); p does not depend
// on them to first order (m̂ and v̂ are independent of β at step 1 and v̂ = 0.25 at step 2).
TEST(AdamW, TwoStepsComputedByHand) {
  const double c1 = 1.0 - static_cast<double>(0.9f), c2 = 1.0 - static_cast<double>(0.999f);
  for (float scale : {1.0f, 0.5f}) { // g·gradScale: 0.5·1 and 1·0.5 are the same gradient
    float p = 1.0f, m = 0.0f, v = 0.0f;
    const float g1 = 0.5f / scale, g2 = -0.5f / scale;
    adamw(&p, &g1, &m, &v, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.1f, scale, 1);
    EXPECT_NEAR(p, 0.89 + 2e-9, 4 * kU * 0.89);
    EXPECT_NEAR(m, 0.5 * c1, 4 * kU * 0.05);
    EXPECT_NEAR(v, 0.25 * c2, 4 * kU * 2.5e-4);
    adamw(&p, &g2, &m, &v, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.1f, scale, 2);
    EXPECT_NEAR(p, 0.8811 + 1.0 / 190 - 1e-10, 4 * kU * 0.89);
    EXPECT_NEAR(m, -0.5 * c1 * c1, 4 * kU * 0.055); // cancels: relative to 0.05 + 0.005
    EXPECT_NEAR(v, 0.25 * c2 * (2 - c2), 4 * kU * 4.9975e-4);
  }
  // gradScale folds into g exactly when the product is exact: the same bits.
  float pa = 0.3f, ma = 0.01f, va = 0.02f, pb = pa, mb = ma, vb = va;
  const float ga = 0.25f, gb = 1.0f;
  adamw(&pa, &ga, &ma, &va, 1, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 1.0f, 7);
  adamw(&pb, &gb, &mb, &vb, 1, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 0.25f, 7);
  EXPECT_EQ(pa, pb);
  EXPECT_EQ(ma, mb);
  EXPECT_EQ(va, vb);
}

TEST(AdamW, StepBelowOneThrows) {
  float p = 1, g = 1, m = 0, v = 0;
  for (int64_t step : {0, -3}) {
    try {
      adamw(&p, &g, &m, &v, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f, step);
      FAIL() << "no error for step " << step;
    } catch (const tnlm::Error &e) {
      EXPECT_NE(std::string(e.what()).find("step " + std::to_string(step)), std::string::npos)
          << e.what();
    }
  }
  EXPECT_EQ(p, 1.0f); // nothing written
  EXPECT_EQ(m, 0.0f);
}

// The f64 formulas of docs/model.md for one tensor (sqrt(v/(1 − β2^t)), not the kernel's
// sqrt(v)/sqrt(1 − β2^t)), with the error bound of the top comment accumulated in `tol`.
struct Reference {
  std::vector<double> p, m, v, mAbs, tol;
  explicit Reference(const std::vector<float> &p0)
      : p(p0.begin(), p0.end()), m(p0.size(), 0), v(p0.size(), 0), mAbs(p0.size(), 0),
        tol(p0.size(), 0) {}
  void step(const std::vector<double> &g, double lr, double b1, double b2, double eps, double wd,
            int64_t t) {
    const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1 - lr * wd;
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      mAbs[i] = b1 * mAbs[i] + (1 - b1) * std::fabs(g[i]);
      const double denom = std::sqrt(v[i] / bc2) + eps;
      p[i] -= lr * (m[i] / bc1) / denom;
      tol[i] += 2 * kU * std::fabs(p[i]) +
                64 * kU * lr * (std::fabs(m[i]) + mAbs[i]) / bc1 / denom + 1e-30;
    }
  }
};

// Three tensors (one without weight decay, as LRPE θ), 10 steps of k = 2 accumulated
// micro-batches with clipping to max_norm 1 (the norm is ~100: gradScale ~0.005 < 1), a
// varying learning rate; against Reference with the clip factor computed in f64.
TEST(AdamW, TenStepsWithWeightDecayAndClippingMatchF64) {
  const std::vector<int64_t> sizes = {5000, 3001, 2040};
  const std::vector<float> decay = {0.1f, 0.1f, 0.0f};
  const float beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, maxNorm = 1.0f;
  const int k = 2;
  std::vector<std::vector<float>> p, m, v;
  std::vector<Reference> ref;
  for (size_t j = 0; j < sizes.size(); ++j) {
    p.push_back(naive::randomVector(sizes[j], 210 + j));
    m.emplace_back(sizes[j], 0.0f);
    v.emplace_back(sizes[j], 0.0f);
    ref.emplace_back(p[j]);
  }
  double minScale = 1;
  for (int64_t t = 1; t <= 10; ++t) {
    const float lr = 1e-3f * (1.0f + 0.1f * t);
    std::vector<std::vector<float>> g; // the sum of k micro-batch gradients
    double ss = 0, ssRef = 0;
    for (size_t j = 0; j < sizes.size(); ++j) {
      g.push_back(naive::randomVector(sizes[j], 300 + 10 * t + j, -2.0f, 2.0f));
      g[j][7] = 0.0f; // a zero gradient: only the decay moves p
      ss += sumSquares(g[j].data(), sizes[j]);
      for (float x : g[j])
        ssRef += static_cast<double>(x) * x;
    }
    EXPECT_NEAR(ss, ssRef, 2 * 10041 * 1.2e-16 * ssRef);
    // clip_grad_norm_ of the mean gradient g/k, then AdamW on g·(clip/k).
    const double norm = std::sqrt(ss) / k, clip = std::min(1.0, maxNorm / (norm + 1e-6));
    const double normRef = std::sqrt(ssRef) / k;
    const double clipRef = std::min(1.0, maxNorm / (normRef + 1e-6));
    const float gradScale = static_cast<float>(clip / k);
    minScale = std::min(minScale, clip);
    for (size_t j = 0; j < sizes.size(); ++j) {
      adamw(p[j].data(), g[j].data(), m[j].data(), v[j].data(), sizes[j], lr, beta1, beta2, eps,
            decay[j], gradScale, t);
      std::vector<double> gd(sizes[j]);
      for (int64_t i = 0; i < sizes[j]; ++i)
        gd[i] = g[j][i] * (clipRef / k);
      ref[j].step(gd, lr, beta1, beta2, eps, decay[j], t);
    }
  }
  EXPECT_LT(minScale, 0.1); // clipping was active
  double worst = 0;
  for (size_t j = 0; j < sizes.size(); ++j)
    for (int64_t i = 0; i < sizes[j]; ++i) {
      ASSERT_NEAR(p[j][i], ref[j].p[i], ref[j].tol[i]) << "tensor " << j << " element " << i;
      worst = std::max(worst, std::fabs(p[j][i] - ref[j].p[i]) / ref[j].tol[i]);
    }
  RecordProperty("worst_error_over_bound", std::to_string(worst));
}

// β1 = 0.3: the lerp weight 1 − β1 = 0.7 >= 0.5 takes lerp's other branch, g − (g − m)·β1.
TEST(AdamW, LargeLerpWeightBranchMatchesF64) {
  const int64_t n = 999;
  std::vector<float> p = naive::randomVector(n, 220), m(n, 0.0f), v(n, 0.0f);
  Reference ref(p);
  for (int64_t t = 1; t <= 10; ++t) {
    const std::vector<float> g = naive::randomVector(n, 230 + t);
    adamw(p.data(), g.data(), m.data(), v.data(), n, 1e-2f, 0.3f, 0.999f, 1e-8f, 0.01f, 0.75f, t);
    std::vector<double> gd(n);
    for (int64_t i = 0; i < n; ++i)
      gd[i] = g[i] * 0.75;
    ref.step(gd, 1e-2f, 0.3f, 0.999f, 1e-8f, 0.01f, t);
  }
  for (int64_t i = 0; i < n; ++i)
    ASSERT_NEAR(p[i], ref.p[i], ref.tol[i]) << "element " << i;
}

TEST(AdamW, BitIdenticalAcrossThreadCounts) {
  const int64_t n = 100003;
  const std::vector<float> p0 = naive::randomVector(n, 240), g = naive::randomVector(n, 241);
  std::vector<float> first;
  for (int threads : {1, 2, 3}) {
    ThreadCount guard(threads);
    std::vector<float> p = p0, m(n, 0.01f), v(n, 0.02f);
    adamw(p.data(), g.data(), m.data(), v.data(), n, 3e-4f, 0.9f, 0.999f, 1e-8f, 0.1f, 0.3f, 5);
    p.insert(p.end(), m.begin(), m.end());
    p.insert(p.end(), v.begin(), v.end());
    if (first.empty())
      first = p;
    else
      ASSERT_EQ(std::memcmp(p.data(), first.data(), sizeof(float) * p.size()), 0) << threads;
  }
}

} // namespace
} // namespace tnlm::cpu
