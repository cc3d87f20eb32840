//===- KernelReferenceTest.cpp - CPU kernels vs the f64 reference model ---===//
//
// The same oracle as the end-to-end test (test/reference), applied kernel by kernel, and the
// compiler's decay formula against the reference's at the first and last layer.
//
//===----------------------------------------------------------------------===//
#include "models/ModelConfig.h"
#include "runtime/cpu/Kernels.h"
#include "test/reference/ReferenceModel.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>

namespace {

std::vector<double> randomVec(size_t n, uint32_t seed, double scale = 1.0) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> dist(0.0, scale);
  std::vector<double> v(n);
  for (double &x : v)
    x = static_cast<float>(dist(rng)); // representable in f32: both sides see the same input
  return v;
}

std::vector<float> toF32(const std::vector<double> &v) { return {v.begin(), v.end()}; }

double maxRelErr(const std::vector<float> &got, const std::vector<double> &want) {
  double scale = 0, err = 0;
  for (double w : want)
    scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < want.size(); ++i)
    err = std::max(err, std::fabs(got[i] - want[i]));
  return err / std::max(scale, 1e-300);
}

// Compiler (models/ModelConfig) and reference agree on s_{l,h} bit for bit: both compute
// s_h · (1 − l/(L−1) + 1e-5) in f32, for every head at the first and the last layer.
TEST(KernelReference, DecayFormulaFirstAndLastLayer) {
  for (int64_t heads : {8, 20, 32, 40}) {
    const int64_t layers = 30;
    for (int64_t layer : {int64_t(0), layers - 1}) {
      std::vector<float> compiler = mlir::tnlm::layerDecaySlopes(heads, layer, layers);
      for (int64_t h = 0; h < heads; ++h)
        EXPECT_EQ(compiler[h], static_cast<float>(tnlm::ref::decayRate(heads, h, layer, layers)))
            << "H=" << heads << " layer=" << layer << " head=" << h;
    }
  }
}

// f32 with f64 row sums vs f64: ≤ a few ulps (2^-24 ≈ 6e-8) per element.
TEST(KernelReference, SrmsNormIncludingEps) {
  const int64_t rows = 5, d = 48;
  std::vector<double> x = randomVec(rows * d, 1);
  for (int64_t c = 0; c < d; ++c) // a tiny row where eps = 1e-6 dominates the mean square
    x[3 * d + c] = static_cast<float>(1e-4 * (c % 3 - 1));
  for (int64_t c = 0; c < d; ++c) // and a zero row
    x[4 * d + c] = 0.0;
  std::vector<double> want = x;
  tnlm::ref::srmsNorm(want, rows, d, 1e-6);
  std::vector<float> xf = toF32(x), got(x.size());
  tnlm::cpu::srmsNorm(xf.data(), rows, d, d, 1e-6f, got.data(), d);
  for (size_t i = 0; i < want.size(); ++i)
    EXPECT_NEAR(got[i], want[i], 4e-7 * std::max(1.0, std::fabs(want[i]))) << i;
  // eps matters for the tiny row: without it every entry would be ±1.2247 or 0.
  EXPECT_LT(std::fabs(got[3 * d + 2]), 0.2);
}

// Recurrence and Lightning (block 64) with the real first/last-layer rates of a 6-head,
// 4-layer model vs the reference recurrence: f32 state and products over ≤ 300 tokens.
TEST(KernelReference, AttentionWithModelDecayRates) {
  const int64_t n = 300, heads = 6, dk = 16, dv = 8;
  for (int64_t layer : {0, 3}) {
    std::vector<double> s = tnlm::ref::layerDecayRates(heads, layer, 4);
    std::vector<float> slopes(s.begin(), s.end());
    std::vector<double> q = randomVec(n * heads * dk, 2, 0.3),
                        k = randomVec(n * heads * dk, 3, 0.3), v = randomVec(n * heads * dv, 4);
    std::vector<double> want = tnlm::ref::attentionRecurrent(q, k, v, n, heads, dk, dv, s);
    std::vector<float> qf = toF32(q), kf = toF32(k), vf = toF32(v), rec(want.size()),
                       blk(want.size());
    tnlm::cpu::decayLinearAttentionRecurrent(qf.data(), kf.data(), vf.data(), 1, n, heads, dk, dv,
                                             heads * dk, heads * dk, heads * dv, slopes.data(),
                                             rec.data(), heads * dv);
    tnlm::cpu::lightningAttention(qf.data(), kf.data(), vf.data(), 1, n, heads, dk, dv, heads * dk,
                                  heads * dk, heads * dv, slopes.data(), blk.data(), heads * dv,
                                  64);
    EXPECT_LT(maxRelErr(rec, want), 1e-5) << "recurrent, layer " << layer;
    EXPECT_LT(maxRelErr(blk, want), 1e-5) << "lightning, layer " << layer;
  }
}

TEST(KernelReference, LrpeWithOffset) {
  const int64_t n = 37, heads = 3, dh = 8;
  std::vector<double> x = randomVec(n * heads * dh, 5);
  std::vector<double> theta(heads * dh);
  for (size_t i = 0; i < theta.size(); ++i)
    theta[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / (heads * dh)));
  std::vector<double> want = tnlm::ref::lrpe(x, n, heads, dh, theta, 11);
  std::vector<float> xf = toF32(x), tf = toF32(theta), got(want.size());
  tnlm::cpu::lrpe(xf.data(), 1, n, heads, dh, heads * dh, tf.data(), 11, got.data());
  // f32 angle θ·p (p ≤ 48) has relative error 2^-24, i.e. an absolute phase error ≤ 3e-6.
  EXPECT_LT(maxRelErr(got, want), 1e-5);
}

} // namespace
