//===- ElementwiseTest.cpp - embedding, SRMSNorm, SiLU, mul/add, loss -----===//
//
// Tolerances (u = 2^-24):
// - SRMSNorm: the mean of squares is summed in f64 (error ~d·2^-53, negligible), rsqrt in
//   f64 rounded to f32 (u), one f32 product (u): 2u relative; we allow 4u.
// - SiLU: expf (< 1 ulp = 2u), 1 + e (u), the division (u): ~4u; we allow 8u.
// - mul/add: one rounding each, so exact against the f32-rounded f64 result.
// - logsumexp: f32 exponentials (2u each, relative) summed in f64: the log moves by <= 2u;
//   plus the final rounding of x − lse: |error| <= 4u·(|x| + |lse|) + tiny.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Kernels.h"
#include "test/unit/cpu/Naive.h"

#include "runtime/Error.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>

namespace tnlm::cpu {
namespace {

using naive::kU;

TEST(Embedding, GathersAndScalesRows) {
  const int64_t vocab = 11, d = 7;
  std::vector<float> table = naive::randomVector(vocab * d, 61);
  const int32_t ids[] = {3, 0, 10, 3};
  std::vector<float> out(4 * d);
  for (float scale : {1.0f, std::sqrt(7.0f)}) {
    embedding(ids, 4, table.data(), vocab, d, scale, out.data());
    for (int t = 0; t < 4; ++t)
      for (int64_t c = 0; c < d; ++c)
        EXPECT_EQ(out[t * d + c], scale * table[ids[t] * d + c]);
  }
}

TEST(Embedding, OutOfRangeIdThrowsNamingIdAndPosition) {
  const int64_t vocab = 5, d = 2;
  std::vector<float> table(vocab * d, 1.0f), out(3 * d, -1.0f);
  const int32_t tooLarge[] = {0, 4, 5};
  const int32_t negative[] = {-2, 0, 1};
  try {
    embedding(tooLarge, 3, table.data(), vocab, d, 1.0f, out.data());
    FAIL() << "no error for id 5 with vocab 5";
  } catch (const tnlm::Error &e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("token id 5"), std::string::npos) << msg;
    EXPECT_NE(msg.find("position 2"), std::string::npos) << msg;
  }
  for (float v : out) // checked before anything was written
    EXPECT_EQ(v, -1.0f);
  EXPECT_THROW(embedding(negative, 3, table.data(), vocab, d, 1.0f, out.data()), tnlm::Error);
}

TEST(SrmsNorm, MatchesNaiveWithStridesAndInPlace) {
  const int64_t rows = 37, d = 300, ldx = d + 4, ldy = d + 1;
  const float eps = 1e-6f;
  std::vector<float> x = naive::randomVector(rows * ldx, 62, -3.0f, 3.0f);
  std::vector<float> y(rows * ldy, 0.0f);
  srmsNorm(x.data(), rows, d, ldx, eps, y.data(), ldy);
  std::vector<float> inPlace = x;
  srmsNorm(inPlace.data(), rows, d, ldx, eps, inPlace.data(), ldx);
  for (int64_t r = 0; r < rows; ++r) {
    double ms = 0;
    for (int64_t c = 0; c < d; ++c)
      ms += static_cast<double>(x[r * ldx + c]) * x[r * ldx + c];
    double rstd = 1.0 / std::sqrt(ms / d + eps);
    for (int64_t c = 0; c < d; ++c) {
      double want = x[r * ldx + c] * rstd;
      ASSERT_NEAR(y[r * ldy + c], want, 4 * kU * std::fabs(want)) << "row " << r;
      ASSERT_EQ(inPlace[r * ldx + c], y[r * ldy + c]) << "row " << r;
    }
  }
}

TEST(SrmsNorm, EpsKeepsZeroRowFiniteAndDampsTinyRows) {
  const int64_t d = 64;
  std::vector<float> x(2 * d, 0.0f), y(2 * d, 1.0f);
  for (int64_t c = 0; c < d; ++c)
    x[d + c] = (c % 2 ? 1e-4f : -1e-4f); // mean(x²) = 1e-8, far below eps = 1e-6
  srmsNorm(x.data(), 2, d, d, 1e-6f, y.data(), d);
  for (int64_t c = 0; c < d; ++c) {
    EXPECT_EQ(y[c], 0.0f); // zero row stays zero, no NaN
    // 1e-4 / sqrt(1e-8 + 1e-6) = 0.0995 instead of 1 without eps.
    double want = x[d + c] / std::sqrt(1e-8 + static_cast<double>(1e-6f));
    EXPECT_NEAR(y[d + c], want, 4 * kU * std::fabs(want) + 1e-12);
    EXPECT_LT(std::fabs(y[d + c]), 0.1f);
  }
}

TEST(Silu, MatchesNaiveIncludingExtremes) {
  const int64_t rows = 4, cols = 50, ld = 53;
  std::vector<float> x = naive::randomVector(rows * ld, 63, -12.0f, 12.0f);
  x[0] = -200.0f; // exp(200) overflows f32: the result must be −0, not NaN
  x[1] = 200.0f;
  x[2] = 0.0f;
  std::vector<float> y(rows * ld, 0.0f);
  silu(x.data(), rows, cols, ld, y.data(), ld);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      double xv = x[r * ld + c];
      double want = xv / (1.0 + std::exp(-xv));
      ASSERT_NEAR(y[r * ld + c], want, 8 * kU * std::fabs(want) + 1e-40) << "x = " << xv;
    }
}

TEST(MulAdd, ExactWithStridesAndInPlace) {
  const int64_t rows = 9, cols = 31, lda = 33, ldb = 40, ldy = 31;
  std::vector<float> a = naive::randomVector(rows * lda, 64);
  std::vector<float> b = naive::randomVector(rows * ldb, 65);
  std::vector<float> m(rows * ldy), s(rows * ldy);
  mul(a.data(), b.data(), rows, cols, lda, ldb, m.data(), ldy);
  add(a.data(), b.data(), rows, cols, lda, ldb, s.data(), ldy);
  std::vector<float> g(rows * ldy);
  sgluProduct(a.data(), b.data(), rows, cols, lda, ldb, g.data(), ldy);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      double av = a[r * lda + c], bv = b[r * ldb + c];
      EXPECT_EQ(m[r * ldy + c], static_cast<float>(av * bv));
      EXPECT_EQ(s[r * ldy + c], static_cast<float>(av + bv));
      EXPECT_EQ(g[r * ldy + c], m[r * ldy + c]);
    }
  std::vector<float> acc = a; // residual add in place: a += b
  add(acc.data(), b.data(), rows, cols, lda, ldb, acc.data(), lda);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      EXPECT_EQ(acc[r * lda + c], s[r * ldy + c]);
}

TEST(LogSoftmax, MatchesNaive) {
  const int64_t rows = 5, cols = 1000, ld = 1003;
  std::vector<float> x = naive::randomVector(rows * ld, 66, -30.0f, 30.0f);
  std::vector<float> y(rows * ld);
  logSoftmax(x.data(), rows, cols, ld, y.data(), ld);
  for (int64_t r = 0; r < rows; ++r) {
    double lse = naive::logSumExp(x.data() + r * ld, cols);
    for (int64_t c = 0; c < cols; ++c) {
      double want = x[r * ld + c] - lse;
      ASSERT_NEAR(y[r * ld + c], want, 4 * kU * (std::fabs(x[r * ld + c]) + std::fabs(lse)));
    }
  }
}

TEST(CrossEntropy, MatchesNaiveWithIgnoreIndex) {
  const int64_t rows = 12, vocab = 3001;
  std::vector<float> logits = naive::randomVector(rows * vocab, 67, -20.0f, 20.0f);
  std::vector<int32_t> labels = {5, -100, 3000, 0, 17, -100, 42, 2999, 1, -100, 7, 100};
  double sum = 0;
  int64_t n = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[r] == -100)
      continue;
    sum += naive::logSumExp(logits.data() + r * vocab, vocab) - logits[r * vocab + labels[r]];
    ++n;
  }
  int64_t counted = -1;
  double loss = crossEntropy(logits.data(), labels.data(), rows, vocab, -100, &counted);
  EXPECT_EQ(counted, n);
  // Per row: lse within 2u·|lse| (see top) and the f64 difference; |lse| <= 20 + log(V).
  EXPECT_NEAR(loss, sum / n, 4 * kU * (20 + std::log(vocab)));

  // A different ignore index: now −100 is an invalid label.
  EXPECT_THROW(crossEntropy(logits.data(), labels.data(), rows, vocab, 0), tnlm::Error);
  labels[4] = 3001;
  try {
    crossEntropy(logits.data(), labels.data(), rows, vocab, -100);
    FAIL() << "no error for label 3001 with vocab 3001";
  } catch (const tnlm::Error &e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("label 3001"), std::string::npos) << msg;
    EXPECT_NE(msg.find("row 4"), std::string::npos) << msg;
  }
}

TEST(CrossEntropy, AllIgnoredIsNaNLikePyTorch) {
  std::vector<float> logits(6, 0.0f);
  std::vector<int32_t> labels = {-100, -100};
  int64_t counted = -1;
  EXPECT_TRUE(std::isnan(crossEntropy(logits.data(), labels.data(), 2, 3, -100, &counted)));
  EXPECT_EQ(counted, 0);
}

TEST(CrossEntropy, UniformLogitsGiveLogVocab) {
  std::vector<float> logits(4 * 64000, 0.5f);
  std::vector<int32_t> labels = {1, 2, 63999, 0};
  EXPECT_NEAR(crossEntropy(logits.data(), labels.data(), 4, 64000), std::log(64000.0), 1e-6);
}

} // namespace
} // namespace tnlm::cpu
