//===- BackwardTest.cpp - VJPs vs f64 loops and finite differences --------===//
//
// Each kernel is checked three ways:
// - per element against the f64 formula of docs/model.md ("Training"), written here as plain
//   loops, with an error bound from the f32 arithmetic (u = 2^-24, Higham's γ_K: an f32 sum
//   of K products is within K·u·Σ|terms| of the exact one, to first order);
// - as a VJP: <grad, e> against the central difference (L(x + he) − L(x − he)) / 2h of
//   L = <dy, f(x)> with f an f64 forward written here, along a random direction e. For the
//   linear and quadratic maps the difference is exact up to f64 rounding; for the others its
//   truncation error is ~h²·|L'''| ≈ 1e-9 relative (h = 1e-4). The tolerance is the
//   per-element bound summed against |e| plus 1e-7·Σ|grad·e|;
// - for determinism: bit-identical results with 1, 2 and 3 threads.
// Padding columns hold a sentinel that must survive; overwritten outputs start as NaN.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Backward.h"
#include "runtime/cpu/Kernels.h"
#include "test/unit/cpu/Naive.h"

#include "runtime/Error.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <tuple>

namespace tnlm::cpu {
namespace {

using naive::kU;
using Vec = std::vector<float>;
using DVec = std::vector<double>;

constexpr float kSentinel = -777.0f;
const float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kH = 1e-4; // finite-difference step

struct ThreadCount {
  int saved = numThreads();
  explicit ThreadCount(int n) { setNumThreads(n); }
  ~ThreadCount() { setNumThreads(saved); }
};

DVec toDouble(const Vec &x) { return DVec(x.begin(), x.end()); }

// x + t·e, elementwise.
DVec along(const Vec &x, const DVec &e, double t) {
  DVec out(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    out[i] = x[i] + t * e[i];
  return out;
}

// A random direction with zeros in the padding columns [cols, ld) of each row.
DVec direction(int64_t rows, int64_t cols, int64_t ld, uint32_t seed) {
  Vec r = naive::randomVector(rows * ld, seed);
  DVec e(rows * ld, 0.0);
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c)
      e[i * ld + c] = r[i * ld + c];
  return e;
}

// Checks <g, e> (g [rows, cols] with ld, e with lde: the layout of the input x, whose
// perturbation L takes) against the central difference of L along e; bound[i·cols + c] is the
// element bound of g.
void expectDirectional(const Vec &g, int64_t rows, int64_t cols, int64_t ld, const DVec &e,
                       int64_t lde, const DVec &bound, const std::function<double(double)> &L,
                       const char *what) {
  double dot = 0, dotAbs = 0, tol = 0;
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t c = 0; c < cols; ++c) {
      const double ge = g[i * ld + c] * e[i * lde + c];
      dot += ge;
      dotAbs += std::fabs(ge);
      tol += bound[i * cols + c] * std::fabs(e[i * lde + c]);
    }
  const double fd = (L(kH) - L(-kH)) / (2 * kH);
  EXPECT_NEAR(dot, fd, tol + 1e-7 * dotAbs + 1e-12) << what;
}

void expectPaddingIntact(const Vec &y, int64_t rows, int64_t cols, int64_t ld, const char *what) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = cols; c < ld; ++c)
      ASSERT_EQ(y[r * ld + c], kSentinel) << what << ": padding of row " << r << " written";
}

// An output [rows, cols] with ld: NaN (to be overwritten) or, with `old` (same layout), the
// old values (to be accumulated into) there, the sentinel in the padding.
Vec buffer(int64_t rows, int64_t cols, int64_t ld, const Vec *old = nullptr) {
  Vec y(rows * ld, kSentinel);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      y[r * ld + c] = old ? (*old)[r * ld + c] : kNaN;
  return y;
}

// Σ_k a(i, k)·b(k, j) over an [M, N] result with its abs companion Σ|a·b|, in f64.
template <typename A, typename B>
void naiveProduct(int64_t M, int64_t N, int64_t K, A &&a, B &&b, DVec &y, DVec &abs) {
  y.assign(M * N, 0.0);
  abs.assign(M * N, 0.0);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < K; ++k) {
      const double aik = a(i, k);
      for (int64_t j = 0; j < N; ++j) {
        y[i * N + j] += aik * b(k, j);
        abs[i * N + j] += std::fabs(aik * b(k, j));
      }
    }
}

//===-- linearGradInput / linearGradWeight --------------------------------------===//

// y = x·Wᵀ in f64 (x [rows, in] with ldx, W [out, in]), and <dy, y> (dy with lddy).
DVec project(const DVec &x, int64_t ldx, const DVec &w, int64_t rows, int64_t in, int64_t out) {
  DVec y(rows * out, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o)
      for (int64_t i = 0; i < in; ++i)
        y[r * out + o] += x[r * ldx + i] * w[o * in + i];
  return y;
}

double dotDy(const Vec &dy, int64_t lddy, const DVec &y, int64_t rows, int64_t out) {
  double L = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o)
      L += dy[r * lddy + o] * y[r * out + o];
  return L;
}

// (rows, in, out, threads): one row, odd sizes, several 256-tiles in every dimension.
class LinearGrad : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, int>> {};

TEST_P(LinearGrad, MatchesNaiveAndFiniteDifferences) {
  auto [rows, in, out, threads] = GetParam();
  ThreadCount guard(threads);
  const int64_t ldx = in + 2, lddy = out + 3, lddx = in + 5;
  const Vec x = naive::randomVector(rows * ldx, 101), w = naive::randomVector(out * in, 102);
  const Vec dy = naive::randomVector(rows * lddy, 103);
  DVec wantDx, absDx, wantDw, absDw;
  naiveProduct(
      rows, in, out, [&](int64_t r, int64_t o) { return double(dy[r * lddy + o]); },
      [&](int64_t o, int64_t i) { return double(w[o * in + i]); }, wantDx, absDx);
  naiveProduct(
      out, in, rows, [&](int64_t o, int64_t r) { return double(dy[r * lddy + o]); },
      [&](int64_t r, int64_t i) { return double(x[r * ldx + i]); }, wantDw, absDw);

  Vec dx0, dw0; // the overwrite results, for the finite differences
  DVec boundDx(rows * in), boundDw(out * in);
  for (bool acc : {false, true}) {
    const Vec oldDx = naive::randomVector(rows * lddx, 104),
              oldDw = naive::randomVector(out * in, 105);
    Vec dx = buffer(rows, in, lddx, acc ? &oldDx : nullptr), dw(out * in + 7, kSentinel);
    for (int64_t j = 0; j < out * in; ++j)
      dw[j] = acc ? oldDw[j] : kNaN;
    linearGradInput(dy.data(), rows, out, lddy, w.data(), in, dx.data(), lddx, acc);
    linearGradWeight(dy.data(), rows, out, lddy, x.data(), in, ldx, dw.data(), acc);
    // K = out (dx) or rows (dW) products; +2 for the products and the add of the old value.
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < in; ++i) {
        const double old = acc ? oldDx[r * lddx + i] : 0.0;
        boundDx[r * in + i] = (out + 2) * kU * (absDx[r * in + i] + std::fabs(old)) + 1e-30;
        ASSERT_NEAR(dx[r * lddx + i], wantDx[r * in + i] + old, boundDx[r * in + i])
            << "dx row " << r << " col " << i << " accumulate " << acc;
      }
    for (int64_t j = 0; j < out * in; ++j) {
      const double old = acc ? oldDw[j] : 0.0;
      boundDw[j] = (rows + 2) * kU * (absDw[j] + std::fabs(old)) + 1e-30;
      ASSERT_NEAR(dw[j], wantDw[j] + old, boundDw[j]) << "dW " << j << " accumulate " << acc;
    }
    expectPaddingIntact(dx, rows, in, lddx, "dx");
    for (int64_t j = out * in; j < out * in + 7; ++j)
      ASSERT_EQ(dw[j], kSentinel) << "dW written past its end";
    if (!acc) {
      dx0 = dx;
      dw0 = dw;
    }
  }
  const DVec ex = direction(rows, in, ldx, 106), ew = direction(out, in, in, 107);
  const DVec xd = toDouble(x), wd = toDouble(w);
  auto loss = [&](const DVec &xv, const DVec &wv) { // Σ dy ⊙ (x·Wᵀ)
    return dotDy(dy, lddy, project(xv, ldx, wv, rows, in, out), rows, out);
  };
  expectDirectional(
      dx0, rows, in, lddx, ex, ldx, boundDx, [&](double t) { return loss(along(x, ex, t), wd); },
      "<dx, e>");
  expectDirectional(
      dw0, out, in, in, ew, in, boundDw, [&](double t) { return loss(xd, along(w, ew, t)); },
      "<dW, e>");
}

INSTANTIATE_TEST_SUITE_P(Shapes, LinearGrad,
                         ::testing::Values(std::make_tuple(1, 7, 5, 1),
                                           std::make_tuple(3, 129, 70, 2),
                                           std::make_tuple(70, 96, 33, 2),
                                           std::make_tuple(260, 300, 270, 2),
                                           std::make_tuple(260, 300, 270, 3)));

TEST(LinearGrad, EmptyInnerDimensionsGiveZeros) {
  Vec dw(6, kNaN), dx(6, kNaN);
  linearGradWeight(nullptr, 0, 2, 2, nullptr, 3, 3, dw.data()); // no rows: dW = 0
  linearGradInput(nullptr, 2, 0, 0, nullptr, 3, dx.data(), 3);  // no outputs: dx = 0
  for (int j = 0; j < 6; ++j) {
    EXPECT_EQ(dw[j], 0.0f);
    EXPECT_EQ(dx[j], 0.0f);
  }
  Vec dw1(6, kNaN), dw2(6, kNaN), dxg(6, kNaN);
  gatedLinearGrad(nullptr, 0, 3, 3, nullptr, nullptr, 2, nullptr, 2, nullptr, 3, dw1.data(),
                  dw2.data()); // no rows: dW1 = dW2 = 0
  gatedLinearGrad(nullptr, 2, 3, 3, nullptr, nullptr, 0, nullptr, 0, dxg.data(), 3, nullptr,
                  nullptr); // no outputs: dx = 0
  for (int j = 0; j < 6; ++j)
    EXPECT_TRUE(dw1[j] == 0.0f && dw2[j] == 0.0f && dxg[j] == 0.0f) << j;
}

//===-- gatedLinearGrad ------------------------------------------------------------===//

// (rows, in, out, threads): out > 256 spans two blocks of the kernel's output loop.
class GatedLinearGrad
    : public ::testing::TestWithParam<std::tuple<int64_t, int64_t, int64_t, int>> {};

TEST_P(GatedLinearGrad, MatchesNaiveAndFiniteDifferences) {
  auto [rows, in, out, threads] = GetParam();
  ThreadCount guard(threads);
  const int64_t ldx = in + 3, lddy = out + 1, lddx = in + 2;
  const Vec x = naive::randomVector(rows * ldx, 111), w1 = naive::randomVector(out * in, 112);
  const Vec w2 = naive::randomVector(out * in, 113), dy = naive::randomVector(rows * lddy, 114);
  DVec a, absA, b, absB;
  naive::denseLinear(x.data(), rows, in, ldx, w1.data(), out, a, absA);
  naive::denseLinear(x.data(), rows, in, ldx, w2.data(), out, b, absB);
  // da = dy⊙b, db = dy⊙a; dW1 = daᵀx, dW2 = dbᵀx, dx = da·W1 + db·W2. The abs companions
  // carry the error of the recomputed a, b (in·u·absA) into every later sum (see below).
  DVec dW1(out * in, 0), dW2(out * in, 0), t1(out * in, 0), t2(out * in, 0);
  DVec dX(rows * in, 0), tx(rows * in, 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      const double g = dy[r * lddy + o], da = g * b[r * out + o], db = g * a[r * out + o];
      const double ea = std::fabs(g) * absB[r * out + o], eb = std::fabs(g) * absA[r * out + o];
      for (int64_t i = 0; i < in; ++i) {
        const double xv = x[r * ldx + i], v1 = w1[o * in + i], v2 = w2[o * in + i];
        dW1[o * in + i] += da * xv;
        dW2[o * in + i] += db * xv;
        t1[o * in + i] += ea * std::fabs(xv);
        t2[o * in + i] += eb * std::fabs(xv);
        dX[r * in + i] += da * v1 + db * v2;
        tx[r * in + i] += ea * std::fabs(v1) + eb * std::fabs(v2);
      }
    }
  Vec dx = buffer(rows, in, lddx), dw1(out * in + 5, kNaN), dw2(out * in + 5, kNaN);
  for (int64_t j = out * in; j < out * in + 5; ++j)
    dw1[j] = dw2[j] = kSentinel;
  gatedLinearGrad(x.data(), rows, in, ldx, w1.data(), w2.data(), out, dy.data(), lddy, dx.data(),
                  lddx, dw1.data(), dw2.data());
  // da: (in + 1)·u·|dy|·absB (a sum of in products, then one product); dW1 adds rows sums
  // and products: (in + rows + 4)·u·Σ_r |dy|·absB·|x|; dx: (in + 2·out + 4)·u·tx.
  DVec bw1(out * in), bw2(out * in), bx(rows * in);
  for (int64_t j = 0; j < out * in; ++j) {
    bw1[j] = (in + rows + 4) * kU * t1[j] + 1e-30;
    bw2[j] = (in + rows + 4) * kU * t2[j] + 1e-30;
    ASSERT_NEAR(dw1[j], dW1[j], bw1[j]) << "dW1 " << j;
    ASSERT_NEAR(dw2[j], dW2[j], bw2[j]) << "dW2 " << j;
  }
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < in; ++i) {
      bx[r * in + i] = (in + 2 * out + 4) * kU * tx[r * in + i] + 1e-30;
      ASSERT_NEAR(dx[r * lddx + i], dX[r * in + i], bx[r * in + i]) << "dx " << r << "," << i;
    }
  expectPaddingIntact(dx, rows, in, lddx, "dx");
  for (int64_t j = out * in; j < out * in + 5; ++j)
    ASSERT_TRUE(dw1[j] == kSentinel && dw2[j] == kSentinel) << "dW written past its end";

  const DVec xd = toDouble(x), w1d = toDouble(w1), w2d = toDouble(w2);
  const DVec ex = direction(rows, in, ldx, 115), e1 = direction(out, in, in, 116);
  const DVec e2 = direction(out, in, in, 117);
  auto loss = [&](const DVec &xv, const DVec &v1, const DVec &v2) { // Σ dy ⊙ a ⊙ b
    DVec y = project(xv, ldx, v1, rows, in, out);
    const DVec b = project(xv, ldx, v2, rows, in, out);
    for (size_t j = 0; j < y.size(); ++j)
      y[j] *= b[j];
    return dotDy(dy, lddy, y, rows, out);
  };
  expectDirectional(
      dx, rows, in, lddx, ex, ldx, bx, [&](double t) { return loss(along(x, ex, t), w1d, w2d); },
      "<dx, e>");
  expectDirectional(
      dw1, out, in, in, e1, in, bw1, [&](double t) { return loss(xd, along(w1, e1, t), w2d); },
      "<dW1, e>");
  expectDirectional(
      dw2, out, in, in, e2, in, bw2, [&](double t) { return loss(xd, w1d, along(w2, e2, t)); },
      "<dW2, e>");
}

INSTANTIATE_TEST_SUITE_P(Shapes, GatedLinearGrad,
                         ::testing::Values(std::make_tuple(1, 5, 3, 1),
                                           std::make_tuple(9, 33, 70, 2),
                                           std::make_tuple(260, 257, 300, 2),
                                           std::make_tuple(260, 257, 300, 3)));

//===-- srmsNormGrad / addSrmsNormGrad ------------------------------------------===//

// L = Σ dy ⊙ SRMSNorm(x) in f64.
double srmsLoss(const DVec &x, int64_t ldx, const Vec &dy, int64_t lddy, int64_t rows, int64_t d,
                double eps) {
  double L = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0, dot = 0;
    for (int64_t c = 0; c < d; ++c) {
      ss += x[r * ldx + c] * x[r * ldx + c];
      dot += x[r * ldx + c] * dy[r * lddy + c];
    }
    L += dot / std::sqrt(ss / d + eps);
  }
  return L;
}

// dx = r·(dy − x̂·mean(x̂⊙dy)) in f64, with its scale r·(|dy| + |x̂|·|mean(x̂⊙dy)|): the kernel
// evaluates it in f64 (error ≪ u·scale) and rounds once (u·|dx|), and with an accumulation
// adds to the old value in f64 before that rounding. Bound: 2u·(|want| + scale).
void naiveSrmsGrad(const Vec &x, int64_t ldx, const Vec &dy, int64_t lddy, int64_t rows, int64_t d,
                   double eps, DVec &want, DVec &bound) {
  want.assign(rows * d, 0);
  bound.assign(rows * d, 0);
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < d; ++c)
      ss += double(x[r * ldx + c]) * x[r * ldx + c];
    const double rs = 1 / std::sqrt(ss / d + eps);
    double m = 0;
    for (int64_t c = 0; c < d; ++c)
      m += x[r * ldx + c] * rs * dy[r * lddy + c] / d;
    for (int64_t c = 0; c < d; ++c) {
      const double xh = x[r * ldx + c] * rs, g = dy[r * lddy + c];
      want[r * d + c] = rs * (g - xh * m);
      bound[r * d + c] =
          2 * kU * (std::fabs(want[r * d + c]) + rs * (std::fabs(g) + std::fabs(xh * m)));
    }
  }
}

TEST(SrmsNormGrad, MatchesNaiveFiniteDifferencesAccumulateAndInPlace) {
  const int64_t rows = 37, d = 300, ldx = d + 4, lddy = d + 1, lddx = d + 3;
  const float eps = 1e-6f;
  Vec x = naive::randomVector(rows * ldx, 121, -3.0f, 3.0f);
  for (int64_t c = 0; c < d; ++c) // a zero row: the gradient is dy/sqrt(eps), finite
    x[5 * ldx + c] = 0.0f;
  const Vec dy = naive::randomVector(rows * lddy, 122);
  DVec want, bound;
  naiveSrmsGrad(x, ldx, dy, lddy, rows, d, eps, want, bound);
  for (bool acc : {false, true}) {
    const Vec old = naive::randomVector(rows * lddx, 123);
    Vec dx = buffer(rows, d, lddx, acc ? &old : nullptr);
    srmsNormGrad(x.data(), ldx, dy.data(), lddy, rows, d, eps, dx.data(), lddx, acc);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < d; ++c) {
        const double o = acc ? old[r * lddx + c] : 0.0;
        ASSERT_NEAR(dx[r * lddx + c], want[r * d + c] + o, bound[r * d + c] + 2 * kU * std::fabs(o))
            << "row " << r << " col " << c << " accumulate " << acc;
      }
    expectPaddingIntact(dx, rows, d, lddx, "dx");
    if (!acc) {
      // Not along the zero row: there SRMSNorm is x/sqrt(eps) only while |x|² << d·eps, so
      // the difference would need h << sqrt(eps) (its value is checked above).
      DVec e = direction(rows, d, ldx, 124);
      std::fill(e.begin() + 5 * ldx, e.begin() + 6 * ldx, 0.0);
      expectDirectional(
          dx, rows, d, lddx, e, ldx, bound,
          [&](double t) { return srmsLoss(along(x, e, t), ldx, dy, lddy, rows, d, eps); },
          "<dx, e>");
      // In place over dy (equal leading dimensions): the same bits.
      Vec inPlace(rows * lddx, kSentinel);
      for (int64_t r = 0; r < rows; ++r)
        std::memcpy(&inPlace[r * lddx], &dy[r * lddy], sizeof(float) * d);
      srmsNormGrad(x.data(), ldx, inPlace.data(), lddx, rows, d, eps, inPlace.data(), lddx);
      ASSERT_EQ(std::memcmp(inPlace.data(), dx.data(), sizeof(float) * dx.size()), 0);
    }
  }
}

TEST(AddSrmsNormGrad, IsDsumPlusSrmsGradWithAndWithoutDsum) {
  const int64_t rows = 19, d = 130, ld = d + 2;
  const float eps = 1e-5f;
  const Vec sum = naive::randomVector(rows * ld, 131, -2.0f, 2.0f);
  const Vec dy = naive::randomVector(rows * ld, 132), dsum = naive::randomVector(rows * ld, 133);
  DVec want, bound;
  naiveSrmsGrad(sum, ld, dy, ld, rows, d, eps, want, bound);
  Vec g = buffer(rows, d, ld), g0 = buffer(rows, d, ld);
  addSrmsNormGrad(sum.data(), ld, dsum.data(), ld, dy.data(), ld, rows, d, eps, g.data(), ld);
  addSrmsNormGrad(sum.data(), ld, nullptr, 0, dy.data(), ld, rows, d, eps, g0.data(), ld);
  Vec srms = buffer(rows, d, ld);
  srmsNormGrad(sum.data(), ld, dy.data(), ld, rows, d, eps, srms.data(), ld);
  Vec inPlace = dsum; // g over dsum
  addSrmsNormGrad(sum.data(), ld, inPlace.data(), ld, dy.data(), ld, rows, d, eps, inPlace.data(),
                  ld);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < d; ++c) {
      const int64_t i = r * ld + c;
      const double o = dsum[i];
      ASSERT_NEAR(g[i], want[r * d + c] + o, bound[r * d + c] + 2 * kU * std::fabs(o));
      ASSERT_EQ(g0[i], srms[i]); // dsum = null is srmsNormGrad
      ASSERT_EQ(inPlace[i], g[i]);
    }
  expectPaddingIntact(g, rows, d, ld, "g");
}

//===-- siluGrad ---------------------------------------------------------------------===//

// dx = dy·s·(1 + x(1 − s)), s = σ(x), in f64. The kernel works in f32: s within 4u
// (expf < 1 ulp = 2u, the add, the division), 1 − s within 7u (e·s for x >= 0, 1 − s with
// s < 1/2 otherwise), then three more roundings: |error| <= 16u·|dy|·s·(1 + |x(1 − s)|)
// (relative to the sum's absolute terms: near x ≈ −1.28 the result cancels to 0).
TEST(SiluGrad, MatchesNaiveFiniteDifferencesAndExtremes) {
  const int64_t rows = 5, cols = 61, ld = 64;
  Vec x = naive::randomVector(rows * ld, 141, -12.0f, 12.0f);
  x[0] = -200.0f; // exp(200) = inf in f32: s = 0 and the gradient 0, not NaN
  x[1] = 200.0f;
  x[2] = 0.0f;
  x[3] = -1.2784645f; // the zero of silu'
  x[4] = -89.0f;
  const Vec dy = naive::randomVector(rows * ld, 142);
  DVec want(rows * cols), bound(rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double xv = x[r * ld + c], s = 1 / (1 + std::exp(-xv)), g = dy[r * ld + c];
      want[r * cols + c] = g * s * (1 + xv * (1 - s));
      // + |dy|·1e-36: for x < −88.7 expf(−x) overflows and the kernel gives 0 (s = 0) where
      // |exact| <= |dy|·|x|·e^x < |dy|·1e-36; just above, s is subnormal (absolute 1e-45).
      bound[r * cols + c] =
          16 * kU * std::fabs(g) * s * (1 + std::fabs(xv * (1 - s))) + std::fabs(g) * 1e-36;
    }
  for (bool acc : {false, true}) {
    const Vec old = naive::randomVector(rows * ld, 143);
    Vec dx = buffer(rows, cols, ld, acc ? &old : nullptr);
    siluGrad(x.data(), ld, dy.data(), ld, rows, cols, dx.data(), ld, acc);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c) {
        const double o = acc ? old[r * ld + c] : 0.0;
        ASSERT_NEAR(dx[r * ld + c], want[r * cols + c] + o,
                    bound[r * cols + c] + 2 * kU * std::fabs(want[r * cols + c] + o))
            << "x = " << x[r * ld + c] << " accumulate " << acc;
      }
    expectPaddingIntact(dx, rows, cols, ld, "dx");
    if (!acc) {
      EXPECT_EQ(dx[0], 0.0f);
      EXPECT_EQ(dx[1], dy[1]);
      const DVec e = direction(rows, cols, ld, 144);
      auto loss = [&](double t) {
        double L = 0;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < cols; ++c) {
            const double xv = x[r * ld + c] + t * e[r * ld + c];
            L += dy[r * ld + c] * xv / (1 + std::exp(-xv));
          }
        return L;
      };
      expectDirectional(dx, rows, cols, ld, e, ld, bound, loss, "<dx, e>");
    }
  }
}

//===-- embeddingGrad ----------------------------------------------------------------===//

TEST(EmbeddingGrad, ScatterAddsRepeatedIdsInTokenOrder) {
  const int64_t vocab = 11, d = 37, tokens = 50, lddx = d + 3;
  std::vector<int32_t> ids(tokens);
  for (int64_t t = 0; t < tokens; ++t)
    ids[t] = static_cast<int32_t>((t * 7 + t / 5) % 9); // ids 0..8 repeated; 9, 10 unused
  ids[13] = 10;
  const Vec dx = naive::randomVector(tokens * lddx, 151);
  for (float scale : {1.0f, std::sqrt(37.0f)}) {
    const Vec table0 = naive::randomVector(vocab * d, 152);
    Vec table = table0;
    table.resize(vocab * d + 4, kSentinel);
    embeddingGrad(ids.data(), tokens, dx.data(), lddx, d, scale, vocab, table.data());
    // Exactly the f32 loop over tokens in order (the documented order), and within the f32
    // rounding of a sum of (count + 1) terms of the f64 value.
    Vec exact = table0;
    DVec want(table0.begin(), table0.end()), abs(vocab * d);
    std::vector<int> count(vocab, 0);
    for (int64_t t = 0; t < tokens; ++t) {
      ++count[ids[t]];
      for (int64_t c = 0; c < d; ++c) {
        const float v = dx[t * lddx + c];
        exact[ids[t] * d + c] += scale == 1.0f ? v : scale * v;
        want[ids[t] * d + c] += double(scale) * v;
        abs[ids[t] * d + c] += std::fabs(double(scale) * v);
      }
    }
    for (int64_t j = 0; j < vocab * d; ++j) {
      ASSERT_EQ(table[j], exact[j]) << "row " << j / d << " col " << j % d;
      const double bnd = (count[j / d] + 2) * kU * (abs[j] + std::fabs(table0[j]));
      ASSERT_NEAR(table[j], want[j], bnd) << "row " << j / d;
    }
    for (int64_t j = vocab * d; j < vocab * d + 4; ++j)
      ASSERT_EQ(table[j], kSentinel);
    // FD of L(E) = Σ dx ⊙ scale·E[ids] (linear) along e, from a zero table.
    Vec dE(vocab * d, 0.0f);
    embeddingGrad(ids.data(), tokens, dx.data(), lddx, d, scale, vocab, dE.data());
    const DVec e = direction(vocab, d, d, 153);
    DVec bound(vocab * d);
    for (int64_t j = 0; j < vocab * d; ++j)
      bound[j] = (count[j / d] + 2) * kU * abs[j];
    expectDirectional(
        dE, vocab, d, d, e, d, bound,
        [&](double t) {
          double L = 0;
          for (int64_t tk = 0; tk < tokens; ++tk)
            for (int64_t c = 0; c < d; ++c)
              L += dx[tk * lddx + c] * double(scale) * (0.0 + t * e[ids[tk] * d + c]);
          return L;
        },
        "<dE, e>");
  }
}

TEST(EmbeddingGrad, PaddingIdTokensAddNothing) {
  // As torch's nn.Embedding(padding_idx=0): the rows of the other ids are the same as without a
  // padding index, bit for bit; row 0 keeps its value.
  const int64_t vocab = 6, d = 9, tokens = 20;
  std::vector<int32_t> ids(tokens);
  for (int64_t t = 0; t < tokens; ++t)
    ids[t] = static_cast<int32_t>(t % 4); // 0 at every fourth position
  const Vec dx = naive::randomVector(tokens * d, 161);
  const Vec table0 = naive::randomVector(vocab * d, 162);
  Vec with = table0, without = table0;
  embeddingGrad(ids.data(), tokens, dx.data(), d, d, 2.0f, vocab, with.data(), /*padding=*/0);
  embeddingGrad(ids.data(), tokens, dx.data(), d, d, 2.0f, vocab, without.data());
  for (int64_t j = 0; j < vocab * d; ++j) {
    if (j < d) {
      ASSERT_EQ(with[j], table0[j]) << "padding row, col " << j;
      ASSERT_NE(without[j], table0[j]) << "row 0 without a padding index, col " << j;
    } else {
      ASSERT_EQ(with[j], without[j]) << "row " << j / d << " col " << j % d;
    }
  }
  // Only padding tokens: nothing changes.
  const std::vector<int32_t> pads(5, 3);
  Vec same = table0;
  embeddingGrad(pads.data(), 5, dx.data(), d, d, 1.0f, vocab, same.data(), 3);
  EXPECT_EQ(same, table0);
}

TEST(EmbeddingGrad, BadIdThrowsNamingIdAndPositionBeforeWriting) {
  const int64_t vocab = 5, d = 3;
  const Vec dx(4 * d, 1.0f);
  Vec table(vocab * d, 2.0f);
  const int32_t tooLarge[] = {0, 4, 4, 5};
  try {
    embeddingGrad(tooLarge, 4, dx.data(), d, d, 1.0f, vocab, table.data());
    FAIL() << "no error for id 5 with vocab 5";
  } catch (const tnlm::Error &e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("token id 5"), std::string::npos) << msg;
    EXPECT_NE(msg.find("position 3"), std::string::npos) << msg;
  }
  for (float v : table)
    EXPECT_EQ(v, 2.0f);
  const int32_t negative[] = {1, -1, 0, 0};
  EXPECT_THROW(embeddingGrad(negative, 4, dx.data(), d, d, 1.0f, vocab, table.data()), tnlm::Error);
}

//===-- crossEntropyGrad -----------------------------------------------------------===//

// f64 per-row softmax p and H = Σ p·|x − max|; the kernel's e_c = expf(fl(x_c − max)) is
// within (2 + |x_c − max|)·u of exp(x_c − max) (expf < 1 ulp; the rounded difference moves
// the exponent by u·|x_c − max|), Σ therefore within (2 + H)·u; the f64 quotient and
// product round once: |g_c − want| <= k·u·(p_c·(8 + |x_c − max| + H) + |want/k|).
TEST(CrossEntropyGrad, MatchesNaiveFiniteDifferencesAndCrossEntropy) {
  const int64_t rows = 12, vocab = 3001;
  const Vec logits = naive::randomVector(rows * vocab, 161, -20.0f, 20.0f);
  std::vector<int32_t> labels = {5, -100, 3000, 0, 17, -100, 42, 2999, 1, -100, 7, 100};
  const int64_t counted = 9;
  for (float dloss : {1.0f, 0.375f}) {
    const double k = double(dloss) / counted;
    DVec want(rows * vocab, 0.0), bound(rows * vocab, 1e-30);
    double lossSum = 0, lossTol = 0;
    for (int64_t r = 0; r < rows; ++r) {
      if (labels[r] == -100)
        continue;
      const float *xr = &logits[r * vocab];
      const double lse = naive::logSumExp(xr, vocab);
      double mx = xr[0], H = 0;
      for (int64_t c = 0; c < vocab; ++c)
        mx = std::max<double>(mx, xr[c]);
      for (int64_t c = 0; c < vocab; ++c)
        H += std::exp(xr[c] - lse) * (mx - xr[c]);
      lossSum += lse - xr[labels[r]];
      lossTol += (4 + H) * kU * std::fabs(lse) + kU * std::fabs(mx);
      for (int64_t c = 0; c < vocab; ++c) {
        const double p = std::exp(xr[c] - lse), w = k * (p - (c == labels[r] ? 1 : 0));
        want[r * vocab + c] = w;
        bound[r * vocab + c] = k * kU * (p * (8 + (mx - xr[c]) + H)) + kU * std::fabs(w);
      }
    }
    Vec g(rows * vocab + 3, kNaN);
    g[rows * vocab] = g[rows * vocab + 1] = g[rows * vocab + 2] = kSentinel;
    int64_t n = -1;
    const double loss =
        crossEntropyGrad(logits.data(), labels.data(), rows, vocab, -100, dloss, g.data(), &n);
    EXPECT_EQ(n, counted);
    // The same operations as cpu::crossEntropy: the same bits.
    EXPECT_EQ(loss, crossEntropy(logits.data(), labels.data(), rows, vocab, -100));
    EXPECT_NEAR(loss, lossSum / counted, lossTol / counted);
    for (int64_t j = 0; j < rows * vocab; ++j)
      ASSERT_NEAR(g[j], want[j], bound[j]) << "row " << j / vocab << " col " << j % vocab;
    for (int64_t j = rows * vocab; j < rows * vocab + 3; ++j)
      ASSERT_EQ(g[j], kSentinel);
    // In place: the same bits.
    Vec inPlace = logits;
    EXPECT_EQ(
        crossEntropyGrad(inPlace.data(), labels.data(), rows, vocab, -100, dloss, inPlace.data()),
        loss);
    ASSERT_EQ(std::memcmp(inPlace.data(), g.data(), sizeof(float) * rows * vocab), 0);
    // VJP of L(z) = dloss · mean cross entropy (f64).
    const DVec e = direction(rows, vocab, vocab, 162);
    expectDirectional(
        g, rows, vocab, vocab, e, vocab, bound,
        [&](double t) {
          double L = 0;
          for (int64_t r = 0; r < rows; ++r) {
            if (labels[r] == -100)
              continue;
            double mx = -1e300, s = 0;
            for (int64_t c = 0; c < vocab; ++c)
              mx = std::max(mx, logits[r * vocab + c] + t * e[r * vocab + c]);
            for (int64_t c = 0; c < vocab; ++c)
              s += std::exp(logits[r * vocab + c] + t * e[r * vocab + c] - mx);
            L += mx + std::log(s) - (logits[r * vocab + labels[r]] + t * e[r * vocab + labels[r]]);
          }
          return dloss * L / counted;
        },
        "<dlogits, e>");
  }
}

TEST(CrossEntropyGrad, BadLabelThrowsBeforeWritingAndAllIgnoredIsNaNWithZeroGradient) {
  const int64_t rows = 3, vocab = 4;
  Vec logits = naive::randomVector(rows * vocab, 171);
  const Vec original = logits;
  std::vector<int32_t> labels = {1, 4, 0};
  try {
    crossEntropyGrad(logits.data(), labels.data(), rows, vocab, -100, 1.0f, logits.data());
    FAIL() << "no error for label 4 with vocab 4";
  } catch (const tnlm::Error &e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("label 4"), std::string::npos) << msg;
    EXPECT_NE(msg.find("row 1"), std::string::npos) << msg;
  }
  EXPECT_EQ(logits, original); // checked before the in-place write
  labels = {-100, -100, -100};
  Vec g(rows * vocab, kNaN);
  int64_t n = -1;
  EXPECT_TRUE(std::isnan(
      crossEntropyGrad(logits.data(), labels.data(), rows, vocab, -100, 1.0f, g.data(), &n)));
  EXPECT_EQ(n, 0);
  for (float v : g)
    EXPECT_EQ(v, 0.0f);
  // Another ignore index: label −100 is now out of range.
  EXPECT_THROW(crossEntropyGrad(logits.data(), labels.data(), rows, vocab, 3, 1.0f, g.data()),
               tnlm::Error);
}

//===-- Determinism ------------------------------------------------------------------===//

// Each kernel on shapes with many tiles / chunks, with 1, 2 and 3 threads: the same bits.
TEST(BackwardDeterminism, BitIdenticalAcrossThreadCounts) {
  const int64_t rows = 530, in = 300, out = 520, ldx = in + 1, lddy = out + 2;
  const Vec x = naive::randomVector(rows * ldx, 181), w1 = naive::randomVector(out * in, 182);
  const Vec w2 = naive::randomVector(out * in, 183), dy = naive::randomVector(rows * lddy, 184);
  const int64_t tokens = 4000, vocab = 700, d = 64, ceRows = 64, ceVocab = 5003;
  std::vector<int32_t> ids(tokens), labels(ceRows);
  for (int64_t t = 0; t < tokens; ++t)
    ids[t] = static_cast<int32_t>((t * t + 3 * t) % vocab);
  for (int64_t r = 0; r < ceRows; ++r)
    labels[r] = r % 5 == 0 ? -100 : static_cast<int32_t>((r * 811) % ceVocab);
  const Vec logits = naive::randomVector(ceRows * ceVocab, 185, -10.0f, 10.0f);
  const Vec ex = naive::randomVector(tokens * d, 186);

  std::vector<Vec> first;
  double firstLoss = 0;
  for (int threads : {1, 2, 3}) {
    ThreadCount guard(threads);
    std::vector<Vec> r;
    Vec dx(rows * in), dw(out * in), g1(out * in), g2(out * in);
    linearGradInput(dy.data(), rows, out, lddy, w1.data(), in, dx.data(), in);
    linearGradWeight(dy.data(), rows, out, lddy, x.data(), in, ldx, dw.data());
    r.push_back(dx);
    r.push_back(dw);
    gatedLinearGrad(x.data(), rows, in, ldx, w1.data(), w2.data(), out, dy.data(), lddy, dx.data(),
                    in, g1.data(), g2.data());
    r.push_back(dx);
    r.push_back(g1);
    r.push_back(g2);
    Vec s(rows * out);
    srmsNormGrad(dy.data(), lddy, x.data(), ldx, rows, out < in ? out : in, 1e-6f, s.data(), out);
    r.push_back(s);
    siluGrad(dy.data(), lddy, dy.data() + 1, lddy, rows, out, s.data(), out);
    r.push_back(s);
    Vec table(vocab * d, 0.5f);
    embeddingGrad(ids.data(), tokens, ex.data(), d, d, 3.0f, vocab, table.data());
    r.push_back(table);
    Vec g(ceRows * ceVocab);
    const double loss =
        crossEntropyGrad(logits.data(), labels.data(), ceRows, ceVocab, -100, 1.0f, g.data());
    r.push_back(g);
    if (first.empty()) {
      first = r;
      firstLoss = loss;
      continue;
    }
    ASSERT_EQ(loss, firstLoss) << threads << " threads";
    for (size_t i = 0; i < r.size(); ++i)
      ASSERT_EQ(std::memcmp(r[i].data(), first[i].data(), sizeof(float) * r[i].size()), 0)
          << "result " << i << " differs with " << threads << " threads";
  }
}

} // namespace
} // namespace tnlm::cpu
