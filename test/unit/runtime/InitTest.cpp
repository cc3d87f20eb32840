//===- InitTest.cpp - deterministic parameter initialization --------------===//
#include "runtime/Init.h"
#include "runtime/Error.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

using namespace tnlm;

namespace {

std::vector<float> init(const std::string &name, std::vector<int64_t> shape, uint64_t seed) {
  size_t n = 1;
  for (int64_t d : shape)
    n *= static_cast<size_t>(d);
  std::vector<float> out(n, std::nanf(""));
  initParameter(name, shape, seed, out.data());
  return out;
}

struct Moments {
  double mean = 0, std = 0, withinOneSigma = 0;
};

Moments moments(const float *x, size_t n, double sigma) {
  Moments m;
  for (size_t i = 0; i < n; ++i)
    m.mean += x[i];
  m.mean /= n;
  for (size_t i = 0; i < n; ++i) {
    m.std += (x[i] - m.mean) * (x[i] - m.mean);
    m.withinOneSigma += std::fabs(x[i]) < sigma;
  }
  m.std = std::sqrt(m.std / (n - 1));
  m.withinOneSigma /= n;
  return m;
}

bool sameBits(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void expectInitError(const std::string &name, std::vector<int64_t> shape,
                     const std::string &fragment) {
  std::vector<float> out(64);
  try {
    initParameter(name, shape, 1, out.data());
    ADD_FAILURE() << name << " should not initialize";
  } catch (const Error &e) {
    std::string message = e.what();
    EXPECT_NE(message.find("'" + name + "'"), std::string::npos) << message;
    EXPECT_NE(message.find(fragment), std::string::npos) << message;
  }
}

// With n = 10^6 samples of N(0, σ²), σ = 0.02, the standard errors are: of the mean
// σ/√n = 2e-5, of the sample std σ/√(2n) ≈ 1.4e-5, of the fraction inside ±σ
// √(p(1−p)/n) ≈ 4.7e-4 (p = 0.6827). Tolerances are 5 standard errors: a correct generator
// fails one with probability below 1e-6, while a wrong σ (e.g. 0.01 or 0.02²), a biased
// mean or a non-Gaussian shape (uniform: p = 0.577) misses by far more.
TEST(Init, WeightStatistics) {
  const double sigma = 0.02;
  std::vector<float> w = init("model.layers.0.channel_mixer.l1.weight", {1000, 1000}, 42);
  Moments m = moments(w.data(), w.size(), sigma);
  EXPECT_NEAR(m.mean, 0.0, 5 * 2e-5);
  EXPECT_NEAR(m.std, sigma, 5 * 1.42e-5);
  EXPECT_NEAR(m.withinOneSigma, 0.682689, 5 * 4.66e-4);
  for (float x : w)
    ASSERT_TRUE(std::isfinite(x));
}

TEST(Init, EmbeddingPaddingRowIsZero) {
  const int64_t V = 500, d = 64;
  std::vector<float> e = init("model.embed_tokens.weight", {V, d}, 7);
  for (int64_t j = 0; j < d; ++j)
    EXPECT_EQ(e[j], 0.0f) << "column " << j;
  // Only row 0: the rest is the usual N(0, 0.02) (n ≈ 32000, 5 standard errors).
  size_t n = static_cast<size_t>((V - 1) * d);
  Moments m = moments(e.data() + d, n, 0.02);
  EXPECT_NEAR(m.mean, 0.0, 5 * 0.02 / std::sqrt(n));
  EXPECT_NEAR(m.std, 0.02, 5 * 0.02 / std::sqrt(2.0 * n));
  size_t zeros = 0;
  for (size_t i = d; i < e.size(); ++i)
    zeros += e[i] == 0.0f;
  EXPECT_EQ(zeros, 0u);

  // The untied lm head has no padding row.
  std::vector<float> head = init("lm_head.weight", {4, 8}, 7);
  EXPECT_NE(head[0], 0.0f);
}

TEST(Init, LrpeThetaFormulaExact) {
  const int64_t H = 4, dh = 8, d = H * dh;
  std::vector<float> theta = init("model.layers.0.token_mixer.lrpe.theta", {H, 1, dh}, 3);
  ASSERT_EQ(theta.size(), static_cast<size_t>(d));
  // θ_flat[i] = 10000^(−2i/d), flattened row-major over [H, 1, dh].
  for (int64_t i = 0; i < d; ++i)
    EXPECT_EQ(theta[i], static_cast<float>(std::pow(10000.0, -2.0 * i / d))) << i;
  // Hand values: i = 0 gives 1, i = d/4 gives 10000^(−1/2), i = d/2 gives 10000^(−1).
  EXPECT_EQ(theta[0], 1.0f);
  EXPECT_FLOAT_EQ(theta[d / 4], 0.01f);
  EXPECT_FLOAT_EQ(theta[d / 2], 1e-4f);
  EXPECT_FLOAT_EQ(theta[d - 1], static_cast<float>(std::pow(10000.0, -2.0 * 31 / 32)));
  // θ is not random: the seed does not matter; the head index continues the flat index.
  EXPECT_TRUE(sameBits(theta, init("model.layers.0.token_mixer.lrpe.theta", {H, 1, dh}, 99)));
  std::vector<float> other = init("x.lrpe.theta", {2, 1, 16}, 3);
  EXPECT_TRUE(sameBits(theta, other)) << "only d = H·dh enters the formula";
}

TEST(Init, DeterministicAndOrderIndependent) {
  const std::string a = "model.layers.0.token_mixer.qkvu_proj.weight";
  const std::string b = "model.layers.0.token_mixer.out_proj.weight";
  std::vector<float> a1 = init(a, {16, 8}, 1234);
  std::vector<float> b1 = init(b, {8, 4}, 1234);
  // Other order, other parameters in between: identical bits.
  std::vector<float> b2 = init(b, {8, 4}, 1234);
  init("model.layers.1.channel_mixer.l3.weight", {3, 3}, 1234);
  std::vector<float> a2 = init(a, {16, 8}, 1234);
  EXPECT_TRUE(sameBits(a1, a2));
  EXPECT_TRUE(sameBits(b1, b2));
  // Element i depends only on (seed, name, i): a larger tensor extends a smaller one.
  std::vector<float> big = init(a, {32, 8}, 1234);
  EXPECT_TRUE(sameBits(a1, std::vector<float>(big.begin(), big.begin() + 128)));
  // The seed and the name both select the stream.
  EXPECT_FALSE(sameBits(a1, init(a, {16, 8}, 1235)));
  EXPECT_FALSE(sameBits(init("model.layers.2.channel_mixer.l1.weight", {16, 8}, 1234),
                        init("model.layers.2.channel_mixer.l2.weight", {16, 8}, 1234)));
}

// Streams of neighbouring names must be uncorrelated, or e.g. W1 and W2 of SGLU would start
// aligned. For independent streams the sample correlation has standard error 1/√n.
TEST(Init, StreamsOfDifferentNamesAreUncorrelated) {
  const size_t n = 200000;
  std::vector<float> x = init("model.layers.0.channel_mixer.l1.weight", {400, 500}, 5);
  std::vector<float> y = init("model.layers.0.channel_mixer.l2.weight", {400, 500}, 5);
  std::vector<float> z = init("model.layers.0.channel_mixer.l1.weight", {400, 500}, 6);
  auto corr = [&](const std::vector<float> &p, const std::vector<float> &q) {
    double s = 0;
    for (size_t i = 0; i < n; ++i)
      s += static_cast<double>(p[i]) * q[i];
    return s / (n * 0.02 * 0.02);
  };
  EXPECT_NEAR(corr(x, y), 0.0, 5 / std::sqrt(double(n)));
  EXPECT_NEAR(corr(x, z), 0.0, 5 / std::sqrt(double(n)));
  // Neighbouring elements (the two halves of one Box–Muller pair) too.
  std::vector<float> shifted(x.begin() + 1, x.end());
  shifted.push_back(0.0f);
  EXPECT_NEAR(corr(x, shifted), 0.0, 5 / std::sqrt(double(n)));
}

TEST(Init, StandardNormalStream) {
  EXPECT_EQ(standardNormal(1, "s", 10), standardNormal(1, "s", 10));
  EXPECT_NE(standardNormal(1, "s", 10), standardNormal(1, "s", 11));
  const size_t n = 100000;
  double sum = 0, sumSq = 0;
  for (size_t i = 0; i < n; ++i) {
    double v = standardNormal(9, "data", i);
    sum += v;
    sumSq += v * v;
  }
  // Standard errors: mean 1/√n, second moment √(2/n).
  EXPECT_NEAR(sum / n, 0.0, 5 / std::sqrt(double(n)));
  EXPECT_NEAR(sumSq / n, 1.0, 5 * std::sqrt(2.0 / n));
}

TEST(Init, EmptyTensorsAreFine) {
  initParameter("model.embed_tokens.weight", {0, 16}, 1, nullptr);
  initParameter("lm_head.weight", {16, 0}, 1, nullptr);
}

TEST(Init, RejectsUnknownNamesAndShapes) {
  expectInitError("model.layers.0.token_mixer.qkvu_proj.bias", {4}, "no initialization rule");
  expectInitError("model.layers.0.token_mixer.lrpe.theta", {4, 8}, "[H, 1, dh]");
  expectInitError("model.layers.0.token_mixer.lrpe.theta", {4, 2, 8}, "[4, 2, 8]");
  expectInitError("lm_head.weight", {2, 2, 2}, "rank 2");
  expectInitError("lm_head.weight", {-2, 2}, "negative dimension");
}

} // namespace
