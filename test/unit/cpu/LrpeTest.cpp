//===- LrpeTest.cpp - LRPE kernel vs f64 loops ----------------------------===//
//
// The kernel's documented arithmetic: angle = fl32(float(p)·θ), cosf/sinf of it (glibc,
// < 1 ulp), one f32 product. Against x·cos(angle) in f64 that is at most ~2 ulp, i.e.
// 4u relative (u = 2^-24); the tests allow 8u.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Kernels.h"
#include "test/unit/cpu/Naive.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

namespace tnlm::cpu {
namespace {

using naive::kU;

// θ_flat[i] = 10000^(−2i/D) (docs/model.md initialization), as f32.
std::vector<float> initTheta(int64_t H, int64_t dh) {
  int64_t D = H * dh;
  std::vector<float> theta(D);
  for (int64_t i = 0; i < D; ++i)
    theta[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / D));
  return theta;
}

TEST(Lrpe, MatchesNaiveWithStrideAndOffset) {
  const int64_t B = 3, N = 29, H = 2, dh = 8, ldx = 4 * H * dh + 1, offset = 17;
  std::vector<float> x = naive::randomVector(B * N * ldx, 41);
  std::vector<float> theta = initTheta(H, dh);
  std::vector<float> y(B * N * H * 2 * dh);
  lrpe(x.data() + H * dh, B, N, H, dh, ldx, theta.data(), offset, y.data()); // the k block
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t c = 0; c < dh; ++c) {
          const float angle = static_cast<float>(t + offset) * theta[h * dh + c];
          const double xv = x[(b * N + t) * ldx + H * dh + h * dh + c];
          const double wantCos = xv * std::cos(static_cast<double>(angle));
          const double wantSin = xv * std::sin(static_cast<double>(angle));
          const float *yh = y.data() + (b * N + t) * H * 2 * dh + h * 2 * dh;
          EXPECT_NEAR(yh[c], wantCos, 8 * kU * std::fabs(wantCos) + 1e-30);
          EXPECT_NEAR(yh[dh + c], wantSin, 8 * kU * std::fabs(wantSin) + 1e-30);
        }
}

// q'_s · k'_t = Σ_c q_c k_c cos(θ_c (s − t)) in exact arithmetic. The kernel rounds each
// angle p·θ to f32 (|Δ| <= u·|p·θ|, and cos is 1-Lipschitz), and each output to ~2 ulp:
// |error| <= Σ_c |q_c k_c| (u(|sθ_c| + |tθ_c|) + 8u).
TEST(Lrpe, DotProductDependsOnRelativePositionOnly) {
  const int64_t N = 40, H = 2, dh = 16, offset = 1000;
  std::vector<float> q = naive::randomVector(N * H * dh, 43);
  std::vector<float> k = naive::randomVector(N * H * dh, 44);
  std::vector<float> theta = initTheta(H, dh);
  std::vector<float> qp(N * H * 2 * dh), kp(N * H * 2 * dh);
  lrpe(q.data(), 1, N, H, dh, H * dh, theta.data(), offset, qp.data());
  lrpe(k.data(), 1, N, H, dh, H * dh, theta.data(), offset, kp.data());
  for (int64_t s = 0; s < N; ++s)
    for (int64_t t = 0; t < N; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double got = 0, want = 0, tol = 0;
        for (int64_t c = 0; c < 2 * dh; ++c)
          got += static_cast<double>(qp[(s * H + h) * 2 * dh + c]) * kp[(t * H + h) * 2 * dh + c];
        for (int64_t c = 0; c < dh; ++c) {
          const double th = theta[h * dh + c];
          const double qk = static_cast<double>(q[(s * H + h) * dh + c]) * k[(t * H + h) * dh + c];
          want += qk * std::cos(th * static_cast<double>(s - t));
          tol += std::fabs(qk) * (kU * th * ((s + offset) + (t + offset)) + 8 * kU);
        }
        ASSERT_NEAR(got, want, tol) << "s " << s << " t " << t << " head " << h;
      }
}

// Decoding continues positions from the prompt length: encoding tokens [t0, N) with
// offset t0 gives the same bits as rows [t0, N) of encoding all of [0, N).
TEST(Lrpe, OffsetContinuesPositionsBitExactly) {
  const int64_t N = 50, H = 3, dh = 4, t0 = 37;
  std::vector<float> x = naive::randomVector(N * H * dh, 45);
  std::vector<float> theta = initTheta(H, dh);
  std::vector<float> all(N * H * 2 * dh), tail((N - t0) * H * 2 * dh);
  lrpe(x.data(), 1, N, H, dh, H * dh, theta.data(), 0, all.data());
  lrpe(x.data() + t0 * H * dh, 1, N - t0, H, dh, H * dh, theta.data(), t0, tail.data());
  EXPECT_EQ(0, std::memcmp(all.data() + t0 * H * 2 * dh, tail.data(), tail.size() * sizeof(float)));
  // Position 0 is the identity on the cos half and zero on the sin half.
  for (int64_t c = 0; c < dh; ++c) {
    EXPECT_EQ(all[c], x[c]);
    EXPECT_EQ(all[dh + c], 0.0f);
  }
}

} // namespace
} // namespace tnlm::cpu
