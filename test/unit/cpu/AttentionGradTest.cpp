//===- AttentionGradTest.cpp - attention backward kernels vs f64 references ---===//
//
// References, all f64 loops in this file: the gradient of the dense masked form
//   dq_t = Σ_{s<=t} λ^{t−s} (do_t·v_s) k_s,  dk_s = Σ_{t>=s} λ^{t−s} (do_t·v_s) q_t,
//   dv_s = Σ_{t>=s} λ^{t−s} (q_t·k_s) do_t,
// and central finite differences of f64 forwards (attention, LRPE, the fused token mixer).
//
// Error bounds (u = 2^-24, "abs" = the same sums over absolute values):
// - Recurrence: the state S_t (or dS_t) is rounded once per step and an error made at step s
//   reaches step t decayed, so |ΔS_t| <= (N+1)·u·abs; the f64 product adds one rounding:
//   (N+2)·u·abs.
// - Lightning, block Bk, T blocks: as the forward (AttentionTest.cpp) with both feature
//   widths in the dot products: intra part (dk or dv)-term dot, decay and product roundings,
//   m-term sum; the state KV or dKV takes T updates of m+1 terms with rounded weights
//   ((N + 4T)·u together), then a dk- or dv-term product: (dk + dv + N + 2Bk + 4T + 16)·u·abs.
// - Finite differences: attention is linear in each of q, k, v, so central differences are
//   exact up to f64 rounding (~1e-16·|L|/h); for the nonlinear LRPE and fused forwards the
//   truncation error h²·L'''/6 is kept below 1e-8 relative by the step sizes chosen below.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Backward.h"
#include "runtime/cpu/Kernels.h"
#include "test/unit/cpu/Naive.h"

#include "runtime/Error.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <tuple>

namespace tnlm::cpu {
namespace {

using naive::kU;
using Vec = std::vector<double>;

const float kNaN = std::numeric_limits<float>::quiet_NaN();

// The tile chooser's candidates (passes/TileCostModel.cpp, attentionBlockCandidates).
constexpr int64_t kBlocks[] = {16, 32, 64, 128, 256};

// q, k, v as column blocks of one padded buffer (as a qkvu projection output is read in
// place), dO in its own padded buffer; gradients as column blocks of one NaN-filled padded
// buffer, so a missed output stays NaN and a write into the padding shows.
struct Problem {
  int64_t B, N, H, dk, dv, ld, lddo, ldg;
  std::vector<float> qkv, dout, grads;
  const float *q() const { return qkv.data(); }
  const float *k() const { return qkv.data() + H * dk; }
  const float *v() const { return qkv.data() + 2 * H * dk; }
  float *dq() { return grads.data(); }
  float *dk_() { return grads.data() + H * dk; }
  float *dv_() { return grads.data() + 2 * H * dk; }
  void resetGrads() { std::fill(grads.begin(), grads.end(), kNaN); }
  void lightning(const float *slopes, int64_t block) {
    lightningAttentionGrad(q(), k(), v(), B, N, H, dk, dv, ld, ld, ld, slopes, dout.data(), lddo,
                           dq(), ldg, dk_(), ldg, dv_(), ldg, block);
  }
  void recurrent(const float *slopes) {
    decayLinearAttentionGradRecurrent(q(), k(), v(), B, N, H, dk, dv, ld, ld, ld, slopes,
                                      dout.data(), lddo, dq(), ldg, dk_(), ldg, dv_(), ldg);
  }
};

Problem makeProblem(int64_t B, int64_t N, int64_t H, int64_t dk, int64_t dv, uint32_t seed) {
  Problem p{B,  N,  H, dk, dv, 2 * H * dk + H * dv + 7, H * dv + 3, 2 * H * dk + H * dv + 5,
            {}, {}, {}};
  p.qkv = naive::randomVector(B * N * p.ld, seed);
  p.dout = naive::randomVector(B * N * p.lddo, seed + 1);
  p.grads.assign(B * N * p.ldg, kNaN);
  return p;
}

// A [rows, width] view (ld) as contiguous doubles.
Vec toDouble(const float *x, int64_t rows, int64_t width, int64_t ld) {
  Vec out(rows * width);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < width; ++j)
      out[r * width + j] = x[r * ld + j];
  return out;
}

// o_t = q_t Σ_{s<=t} λ^{t−s} k_sᵀ v_s, λ^r = exp(−slope·r); operands contiguous [B·N, H·d].
Vec denseAttention(const double *q, const double *k, const double *v, int64_t B, int64_t N,
                   int64_t H, int64_t dk, int64_t dv, const float *slopes) {
  Vec o(B * N * H * dv, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < N; ++t)
        for (int64_t s = 0; s <= t; ++s) {
          const double *qt = q + (b * N + t) * H * dk + h * dk,
                       *ks = k + (b * N + s) * H * dk + h * dk;
          double dot = 0;
          for (int64_t c = 0; c < dk; ++c)
            dot += qt[c] * ks[c];
          const double w = std::exp(-static_cast<double>(slopes[h]) * (t - s)) * dot;
          for (int64_t j = 0; j < dv; ++j)
            o[(b * N + t) * H * dv + h * dv + j] += w * v[(b * N + s) * H * dv + h * dv + j];
        }
  return o;
}

// The dense gradients above with their abs companions (every factor by its absolute value).
struct Grad64 {
  Vec dq, dk, dv, dqAbs, dkAbs, dvAbs;
};

Grad64 denseAttentionGrad(const Vec &q, const Vec &k, const Vec &v, const Vec &dO, int64_t B,
                          int64_t N, int64_t H, int64_t dk, int64_t dv, const float *slopes) {
  Grad64 g;
  for (Vec *x : {&g.dq, &g.dk, &g.dqAbs, &g.dkAbs})
    x->assign(B * N * H * dk, 0.0);
  g.dv.assign(B * N * H * dv, 0.0);
  g.dvAbs.assign(B * N * H * dv, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t t = 0; t < N; ++t)
        for (int64_t s = 0; s <= t; ++s) {
          const int64_t kt = (b * N + t) * H * dk + h * dk, ks = (b * N + s) * H * dk + h * dk;
          const int64_t vt = (b * N + t) * H * dv + h * dv, vs = (b * N + s) * H * dv + h * dv;
          double a = 0, aAbs = 0, c = 0, cAbs = 0; // a = do_t·v_s, c = q_t·k_s
          for (int64_t j = 0; j < dv; ++j) {
            a += dO[vt + j] * v[vs + j];
            aAbs += std::fabs(dO[vt + j] * v[vs + j]);
          }
          for (int64_t i = 0; i < dk; ++i) {
            c += q[kt + i] * k[ks + i];
            cAbs += std::fabs(q[kt + i] * k[ks + i]);
          }
          const double w = std::exp(-static_cast<double>(slopes[h]) * (t - s));
          for (int64_t i = 0; i < dk; ++i) {
            g.dq[kt + i] += w * a * k[ks + i];
            g.dqAbs[kt + i] += w * aAbs * std::fabs(k[ks + i]);
            g.dk[ks + i] += w * a * q[kt + i];
            g.dkAbs[ks + i] += w * aAbs * std::fabs(q[kt + i]);
          }
          for (int64_t j = 0; j < dv; ++j) {
            g.dv[vs + j] += w * c * dO[vt + j];
            g.dvAbs[vs + j] += w * cAbs * std::fabs(dO[vt + j]);
          }
        }
  return g;
}

Grad64 denseGradOf(const Problem &p, const float *slopes) {
  const int64_t rows = p.B * p.N;
  return denseAttentionGrad(
      toDouble(p.q(), rows, p.H * p.dk, p.ld), toDouble(p.k(), rows, p.H * p.dk, p.ld),
      toDouble(p.v(), rows, p.H * p.dv, p.ld), toDouble(p.dout.data(), rows, p.H * p.dv, p.lddo),
      p.B, p.N, p.H, p.dk, p.dv, slopes);
}

// got (a view, ld) vs want within factor·u·abs (+1e-30 for exact zeros). Returns the
// normwise relative error max|got − want| / max|want|.
double expectWithin(const float *got, int64_t ld, const Vec &want, const Vec &abs, int64_t rows,
                    int64_t width, double factor, const std::string &what) {
  int failures = 0;
  double worstRatio = 0, maxErr = 0, maxWant = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < width; ++j) {
      const double g = got[r * ld + j], w = want[r * width + j];
      const double tol = factor * kU * abs[r * width + j] + 1e-30, err = std::fabs(g - w);
      if (!(err <= tol) && failures++ < 5)
        ADD_FAILURE() << what << ": row " << r << " col " << j << " got " << g << " want " << w
                      << " (tolerance " << tol << ")";
      worstRatio = std::max(worstRatio, err / tol);
      maxErr = std::max(maxErr, err);
      maxWant = std::max(maxWant, std::fabs(w));
    }
  EXPECT_EQ(failures, 0) << what << ": worst error / tolerance " << worstRatio;
  return maxErr / std::max(maxWant, 1e-300);
}

// Columns [used, ld) of every row must still hold NaN.
void expectPaddingUntouched(const std::vector<float> &buf, int64_t ld, int64_t used,
                            const std::string &what) {
  int64_t written = 0;
  for (size_t r = 0; r < buf.size() / ld; ++r)
    for (int64_t j = used; j < ld; ++j)
      written += !std::isnan(buf[r * ld + j]);
  EXPECT_EQ(written, 0) << what << ": padding entries written";
}

double lightningGradFactor(int64_t N, int64_t dk, int64_t dv, int64_t block) {
  const int64_t Bk = std::min(block, N), T = (N + Bk - 1) / Bk;
  return static_cast<double>(dk + dv + N + 2 * Bk + 4 * T + 16);
}

double recurrentGradFactor(int64_t N) { return static_cast<double>(N + 2); }

// One head per decay regime: λ = 0.43, moderate, slow, λ = 1 − 1e-5, λ rounding to 1 in f32.
const float kSlopes5[] = {0.844f, 0.25f, 0.05f, 1e-5f, 4e-8f};

class LightningGradGrid : public ::testing::TestWithParam<std::tuple<int64_t, int64_t>> {};

TEST_P(LightningGradGrid, MatchesRecurrenceAndDense) {
  const int64_t block = std::get<0>(GetParam()), N = std::get<1>(GetParam());
  const int64_t B = 2, H = 5, dk = 16, dv = 12;
  Problem p = makeProblem(B, N, H, dk, dv, static_cast<uint32_t>(block * 1000 + N));
  Grad64 ref = denseGradOf(p, kSlopes5);
  const std::string tag = "N=" + std::to_string(N) + " block=" + std::to_string(block);
  const double fl = lightningGradFactor(N, dk, dv, block), fr = recurrentGradFactor(N);

  const int64_t rows = B * N, widths[3] = {H * dk, H * dk, H * dv};
  float *got[3] = {p.dq(), p.dk_(), p.dv_()};
  const Vec *want[3] = {&ref.dq, &ref.dk, &ref.dv}, *abs[3] = {&ref.dqAbs, &ref.dkAbs, &ref.dvAbs};
  const std::string names[3] = {" dq ", " dk ", " dv "};

  p.recurrent(kSlopes5);
  expectPaddingUntouched(p.grads, p.ldg, 2 * H * dk + H * dv, "recurrent " + tag);
  Vec rec[3]; // the recurrence's outputs, for lightning vs recurrence
  double relRec = 0, rel = 0;
  for (int i = 0; i < 3; ++i) {
    relRec = std::max(relRec, expectWithin(got[i], p.ldg, *want[i], *abs[i], rows, widths[i], fr,
                                           "recurrent" + names[i] + tag));
    rec[i] = toDouble(got[i], rows, widths[i], p.ldg);
  }
  p.resetGrads();
  p.lightning(kSlopes5, block);
  expectPaddingUntouched(p.grads, p.ldg, 2 * H * dk + H * dv, "lightning " + tag);
  for (int i = 0; i < 3; ++i) {
    rel = std::max(rel, expectWithin(got[i], p.ldg, *want[i], *abs[i], rows, widths[i], fl,
                                     "lightning" + names[i] + tag));
    expectWithin(got[i], p.ldg, rec[i], *abs[i], rows, widths[i], fl + fr,
                 "lightning vs recurrent" + names[i] + tag);
  }
  std::printf("[ stats    ] %s: normwise relative error vs f64 lightning %.2e recurrent %.2e\n",
              tag.c_str(), rel, relRec);
}

INSTANTIATE_TEST_SUITE_P(BlocksAndLengths, LightningGradGrid,
                         ::testing::Combine(::testing::ValuesIn(kBlocks),
                                            ::testing::Values(1, 63, 64, 65, 300)));

// Impulses over 10^5 tokens (dk = 2, dv = 1): do_t = v_t = 1 for all t, k_0 = (1, 1) and
// q_{N−1} = (1, 0.5), all other q, k zero, give exactly dq_t = λ^t k_0 (the KV sweep),
// dk_s = λ^{N−1−s} q_{N−1} (the dKV sweep) and dv_0 = 1.5 λ^{N−1}. As in the forward's test:
// a f32 λ would turn slope 4e-8 into 1 − 2^-24 (0.6 % off at the end instead of 0.4 %), a
// λ^{−t} form would overflow for 0.85; n state updates cost (2n + 8)·u relative.
TEST(LightningAttentionGrad, ImpulseResponseOverLongSequence) {
  const float slopes[] = {0.85f, 1e-5f, 4e-8f};
  const int64_t N = 100003, H = 3, ld = 5 * H;
  std::vector<float> qkv(N * ld, 0.0f), dO(N * H, 1.0f);
  for (int64_t h = 0; h < H; ++h) {
    qkv[(N - 1) * ld + 2 * h] = 1.0f, qkv[(N - 1) * ld + 2 * h + 1] = 0.5f;
    qkv[2 * H + 2 * h] = qkv[2 * H + 2 * h + 1] = 1.0f;
    for (int64_t t = 0; t < N; ++t)
      qkv[t * ld + 4 * H + h] = 1.0f;
  }
  for (int64_t block : {64, 256}) {
    std::vector<float> dq(N * 2 * H), dk(N * 2 * H), dv(N * H);
    lightningAttentionGrad(qkv.data(), qkv.data() + 2 * H, qkv.data() + 4 * H, 1, N, H, 2, 1, ld,
                           ld, ld, slopes, dO.data(), H, dq.data(), 2 * H, dk.data(), 2 * H,
                           dv.data(), H, block);
    int failures = 0;
    auto check = [&](float got, double want, int64_t updates, const char *what, int64_t t) {
      const double tol = (2.0 * updates + 8) * kU * want + 1e-36; // floor: FLT_MIN flush
      if (!(std::fabs(got - want) <= tol) && failures++ < 5)
        ADD_FAILURE() << what << " block " << block << " t " << t << ": got " << got << " want "
                      << want;
    };
    for (int64_t t = 0; t < N; ++t)
      for (int64_t h = 0; h < H; ++h) {
        const double s = slopes[h], fwd = std::exp(-s * t), bwd = std::exp(-s * (N - 1 - t));
        check(dq[t * 2 * H + 2 * h], fwd, t / block, "dq", t);
        check(dq[t * 2 * H + 2 * h + 1], fwd, t / block, "dq", t);
        check(dk[t * 2 * H + 2 * h], bwd, (N - 1 - t) / block + 1, "dk", t);
        check(dk[t * 2 * H + 2 * h + 1], 0.5 * bwd, (N - 1 - t) / block + 1, "dk", t);
        check(dv[t * H + h], t == 0 ? 1.5 * bwd : 0.0, N / block + 1, "dv", t);
      }
    EXPECT_EQ(failures, 0);
    EXPECT_LT(dk[2 * H + 4], 0.997f); // the slope-4e-8 head really decays
  }
}

// L = <dO, F(q, k, v)> with F the f64 dense forward: <∇_x L, e> against
// (L(x + he) − L(x − he)) / 2h, for single entries and a random direction of q, k and v.
TEST(LightningAttentionGrad, MatchesFiniteDifferencesOfForward) {
  const float slopes[] = {0.844f, 0.05f, 1e-5f};
  const int64_t B = 2, N = 37, H = 3, dk = 12, dv = 16, rows = B * N, block = 16;
  Problem p = makeProblem(B, N, H, dk, dv, 77);
  p.lightning(slopes, block);
  Grad64 ref = denseGradOf(p, slopes);
  Vec x[3] = {toDouble(p.q(), rows, H * dk, p.ld), toDouble(p.k(), rows, H * dk, p.ld),
              toDouble(p.v(), rows, H * dv, p.ld)};
  const Vec dO = toDouble(p.dout.data(), rows, H * dv, p.lddo);
  auto loss = [&] {
    Vec o = denseAttention(x[0].data(), x[1].data(), x[2].data(), B, N, H, dk, dv, slopes);
    double L = 0;
    for (size_t i = 0; i < o.size(); ++i)
      L += dO[i] * o[i];
    return L;
  };
  const float *got[3] = {p.dq(), p.dk_(), p.dv_()};
  const Vec *want[3] = {&ref.dq, &ref.dk, &ref.dv}, *abs[3] = {&ref.dqAbs, &ref.dkAbs, &ref.dvAbs};
  const double factor = lightningGradFactor(N, dk, dv, block), h = 1.0 / 64;
  std::mt19937 gen(5);
  double worst = 0;
  for (int op = 0; op < 3; ++op) {
    const int64_t width = op == 2 ? H * dv : H * dk;
    for (int trial = 0; trial < 5; ++trial) { // 4 single entries, then a random direction
      Vec e(rows * width, 0.0);
      if (trial < 4)
        e[std::uniform_int_distribution<int64_t>(0, rows * width - 1)(gen)] = 1.0;
      else
        for (double &ei : e)
          ei = std::uniform_real_distribution<double>(-1, 1)(gen);
      const Vec saved = x[op];
      for (size_t i = 0; i < e.size(); ++i)
        x[op][i] = saved[i] + h * e[i];
      const double plus = loss();
      for (size_t i = 0; i < e.size(); ++i)
        x[op][i] = saved[i] - h * e[i];
      const double fd = (plus - loss()) / (2 * h);
      x[op] = saved;
      double kernel = 0, dense = 0, scale = 0, tol = 0;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < width; ++j) {
          const double ei = e[r * width + j];
          kernel += got[op][r * p.ldg + j] * ei;
          dense += (*want[op])[r * width + j] * ei;
          scale += std::fabs((*want[op])[r * width + j] * ei);
          tol += factor * kU * (*abs[op])[r * width + j] * std::fabs(ei);
        }
      EXPECT_NEAR(dense, fd, 1e-10 * scale + 1e-13) << "f64 reference, operand " << op;
      EXPECT_NEAR(kernel, fd, tol + 1e-10 * scale + 1e-13) << "kernel, operand " << op;
      worst = std::max(worst, std::fabs(kernel - fd) / std::max(scale, 1e-300));
    }
  }
  std::printf("[ stats    ] directional derivatives vs finite differences: worst rel %.2e\n",
              worst);
}

// θ_flat[i] = 10000^(−2i/D) (docs/model.md initialization).
std::vector<float> initTheta(int64_t D) {
  std::vector<float> theta(D);
  for (int64_t i = 0; i < D; ++i)
    theta[i] = static_cast<float>(std::pow(10000.0, -2.0 * i / D));
  return theta;
}

// dx (all entries) and dθ (all entries, accumulated) against central differences of
// L = <dy, LRPE(x)> in f64. The kernel rounds the angle to f32 (|Δ| <= u·|pθ|) before
// cosf/sinf (< 1 ulp), then 2 roundings: |Δdx| <= (|pθ| + 4)·u·(|dy_c| + |dy_s|), and dθ sums
// such terms times p·|x| in f64, then one rounding into the accumulator.
TEST(LrpeGrad, MatchesFiniteDifferences) {
  const int64_t B = 2, N = 21, H = 3, dh = 4, D = H * dh, offset = 37, ldx = 3 * D + 1;
  const int64_t lddx = D + 2, rows = B * N;
  std::vector<float> xbuf = naive::randomVector(rows * ldx, 91);
  const float *x = xbuf.data() + D; // a column block of a wider buffer
  std::vector<float> dy = naive::randomVector(rows * 2 * D, 92), theta = initTheta(D);
  std::vector<float> dx(rows * lddx, kNaN), dtheta = naive::randomVector(D, 93);
  const std::vector<float> dtheta0 = dtheta;
  lrpeGrad(x, B, N, H, dh, ldx, theta.data(), offset, dy.data(), dx.data(), lddx, dtheta.data());
  expectPaddingUntouched(dx, lddx, D, "lrpeGrad dx");

  Vec xd = toDouble(x, rows, D, ldx), th(theta.begin(), theta.end());
  auto loss = [&] {
    double L = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t c = 0; c < dh; ++c) {
          const int64_t i = h * dh + c;
          const double a = static_cast<double>(r % N + offset) * th[i];
          const float *dyh = dy.data() + r * 2 * D + h * 2 * dh;
          L += xd[r * D + i] * (dyh[c] * std::cos(a) + dyh[dh + c] * std::sin(a));
        }
    return L;
  };
  auto central = [&](double &value, double h) {
    const double saved = value;
    value = saved + h;
    const double plus = loss();
    value = saved - h;
    const double minus = loss();
    value = saved;
    return (plus - minus) / (2 * h);
  };
  double worstDx = 0, worstDtheta = 0;
  std::vector<double> thetaAbs(D, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < D; ++i) {
      const int64_t h = i / dh, c = i % dh;
      const double p = static_cast<double>(r % N + offset);
      const double dyAbs = std::fabs(dy[r * 2 * D + h * 2 * dh + c]) +
                           std::fabs(dy[r * 2 * D + h * 2 * dh + dh + c]);
      const double bound = (p * theta[i] + 4) * kU * dyAbs;
      thetaAbs[i] += p * std::fabs(xd[r * D + i]) * bound;
      const double fd = central(xd[r * D + i], 0.125); // linear in x: exact up to rounding
      const double got = dx[r * lddx + i];
      EXPECT_NEAR(got, fd, bound + 1e-12) << "dx row " << r << " feature " << i;
      worstDx = std::max(worstDx, std::fabs(got - fd) / std::max(std::fabs(fd), 1e-3));
    }
  // θ step 1e-6: p·h <= 6e-5, truncation (p·h)²/6 ~ 1e-9 relative; rounding ~1e-16·|L|/h.
  for (int64_t i = 0; i < D; ++i) {
    const double fd = central(th[i], 1e-6), want = dtheta0[i] + fd;
    EXPECT_NEAR(dtheta[i], want, thetaAbs[i] + kU * std::fabs(want) + 1e-8 * std::fabs(fd) + 1e-9)
        << "dtheta " << i;
    worstDtheta = std::max(worstDtheta, std::fabs(dtheta[i] - want) / std::fabs(fd));
  }
  std::printf("[ stats    ] lrpeGrad vs finite differences: worst rel dx %.2e dtheta %.2e\n",
              worstDx, worstDtheta);
}

// The fused token mixer in f64: y = u ⊙ SRMSNorm(attn(LRPE(φ(q)), LRPE(φ(k)), v)), L = <dy, y>.
struct FusedCase {
  int64_t B, N, H, dh, offset;
  bool silu, lrpe;
  const float *slopes;
  double eps;
};

double fusedLoss(const FusedCase &fc, const Vec &qkvu, const Vec &theta, const Vec &dy) {
  const int64_t D = fc.H * fc.dh, rows = fc.B * fc.N, dk = fc.lrpe ? 2 * fc.dh : fc.dh;
  Vec qk[2] = {Vec(rows * fc.H * dk), Vec(rows * fc.H * dk)}, v(rows * D);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < D; ++i) {
      const int64_t h = i / fc.dh, c = i % fc.dh;
      const double a = static_cast<double>(r % fc.N + fc.offset) * (fc.lrpe ? theta[i] : 0.0);
      for (int part = 0; part < 2; ++part) {
        double x = qkvu[r * 4 * D + part * D + i];
        if (fc.silu)
          x = x / (1 + std::exp(-x));
        qk[part][r * fc.H * dk + h * dk + c] = fc.lrpe ? x * std::cos(a) : x;
        if (fc.lrpe)
          qk[part][r * fc.H * dk + h * dk + fc.dh + c] = x * std::sin(a);
      }
      v[r * D + i] = qkvu[r * 4 * D + 2 * D + i];
    }
  Vec o =
      denseAttention(qk[0].data(), qk[1].data(), v.data(), fc.B, fc.N, fc.H, dk, fc.dh, fc.slopes);
  double L = 0;
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0;
    for (int64_t i = 0; i < D; ++i)
      ss += o[r * D + i] * o[r * D + i];
    const double rstd = 1 / std::sqrt(ss / D + fc.eps);
    for (int64_t i = 0; i < D; ++i)
      L += dy[r * D + i] * qkvu[r * 4 * D + 3 * D + i] * o[r * D + i] * rstd;
  }
  return L;
}

// Kernel outputs of one fused case, with padded dqkvu/dy and a guarded workspace.
struct FusedRun {
  int64_t ldq, ldy, ldg;
  std::vector<float> qkvu, dy, theta, dtheta, dqkvu;
};

FusedRun runFused(const FusedCase &fc, int64_t block, uint32_t seed) {
  const int64_t D = fc.H * fc.dh, rows = fc.B * fc.N;
  FusedRun run{4 * D + 5, D + 3, 4 * D + 2, {}, {}, {}, {}, {}};
  run.qkvu = naive::randomVector(rows * run.ldq, seed);
  run.dy = naive::randomVector(rows * run.ldy, seed + 1);
  run.theta = initTheta(D);
  run.dtheta.assign(D, 0.25f);
  run.dqkvu.assign(rows * run.ldg, kNaN);
  const int64_t wsSize = rows * fusedAttentionGradWorkspaceCols(fc.H, fc.dh, fc.lrpe);
  std::vector<float> ws(wsSize + 64, 777.0f);
  fusedLightningAttentionGrad(run.qkvu.data(), run.ldq, fc.B, fc.N, fc.H, fc.dh, fc.silu,
                              fc.lrpe ? run.theta.data() : nullptr, fc.offset, fc.slopes, block,
                              static_cast<float>(fc.eps), run.dy.data(), run.ldy, ws.data(),
                              run.dqkvu.data(), run.ldg, fc.lrpe ? run.dtheta.data() : nullptr);
  EXPECT_TRUE(std::all_of(ws.begin() + wsSize, ws.end(), [](float g) { return g == 777.0f; }))
      << "write past the workspace";
  return run;
}

// Target 1e-4 relative: the f32 attention gradients carry <= (dk+dv+N+2Bk+4T+16)·u ≈ 2.5e2·u
// ≈ 1.5e-5 of their abs sums (above), the recomputed O the same through x̂ and r, the norm
// backward and φ' a few u more, the f32 LRPE angles <= |pθ|·u ≈ 4e-6; abs sums stay within
// a small factor of a block's largest gradient on this data, and the finite differences
// (h = 1e-5 on qkvu, 1e-6 on θ) are good to ~1e-8. Errors are measured against the largest
// gradient of the block (single entries) or Σ|g_i e_i| (random directions e).
class FusedGrad : public ::testing::TestWithParam<std::tuple<bool, bool, int64_t>> {};

TEST_P(FusedGrad, MatchesFiniteDifferencesOfFusedForward) {
  const float slopes[] = {0.844f, 0.05f, 1e-5f};
  const FusedCase fc{2,      65,  3, 8, 3, std::get<1>(GetParam()), std::get<0>(GetParam()),
                     slopes, 1e-6};
  const int64_t block = std::get<2>(GetParam()), D = fc.H * fc.dh, rows = fc.B * fc.N;
  FusedRun run = runFused(fc, block, 123);
  expectPaddingUntouched(run.dqkvu, run.ldg, 4 * D, "dqkvu");
  Vec x = toDouble(run.qkvu.data(), rows, 4 * D, run.ldq),
      dy = toDouble(run.dy.data(), rows, D, run.ldy);
  Vec th(run.theta.begin(), run.theta.end()), gth(D),
      gx = toDouble(run.dqkvu.data(), rows, 4 * D, run.ldg);
  for (int64_t i = 0; i < D; ++i)
    gth[i] = run.dtheta[i] - 0.25; // accumulated onto 0.25
  ASSERT_TRUE(std::all_of(gx.begin(), gx.end(), [](double g) { return std::isfinite(g); }));
  std::mt19937 gen(fc.silu * 2 + fc.lrpe);
  auto uniform = [&](int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(gen); };
  double worst = 0;
  // <grad, e> vs the central difference along e; relative to `scale` for a single entry,
  // to Σ|grad_i e_i| for a direction.
  auto probe = [&](Vec &target, const Vec &grad, const Vec &e, double h, double scale,
                   const std::string &what) {
    const Vec saved = target;
    double got = 0, sum = 0, fd[2];
    for (int sign = 0; sign < 2; ++sign) {
      for (size_t i = 0; i < e.size(); ++i)
        target[i] = saved[i] + (sign ? -h : h) * e[i];
      fd[sign] = fusedLoss(fc, x, th, dy);
    }
    target = saved;
    for (size_t i = 0; i < e.size(); ++i) {
      got += grad[i] * e[i];
      sum += std::fabs(grad[i] * e[i]);
    }
    const double want = (fd[0] - fd[1]) / (2 * h),
                 rel = std::fabs(got - want) / (scale > 0 ? scale : sum);
    EXPECT_LE(rel, 1e-4) << what << ": got " << got << " finite difference " << want;
    worst = std::max(worst, rel);
  };
  const char *names[4] = {"dq", "dk", "dv", "du"};
  for (int blk = 0; blk < 4; ++blk) {
    double scale = 0;
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t i = 0; i < D; ++i)
        scale = std::max(scale, std::fabs(gx[r * 4 * D + blk * D + i]));
    for (int trial = 0; trial < 7; ++trial) { // first and last row, 4 random entries, a direction
      Vec e(rows * 4 * D, 0.0);
      const int64_t r = trial == 0 ? 0 : trial == 1 ? rows - 1 : uniform(rows);
      if (trial < 6)
        e[r * 4 * D + blk * D + uniform(D)] = 1.0;
      else
        for (int64_t rr = 0; rr < rows; ++rr)
          for (int64_t i = 0; i < D; ++i)
            e[rr * 4 * D + blk * D + i] = std::uniform_real_distribution<double>(-1, 1)(gen);
      probe(x, gx, e, 1e-5, trial < 6 ? scale : 0.0, names[blk] + std::to_string(trial));
    }
  }
  if (fc.lrpe) { // every θ entry, then a random direction
    const double scale = std::fabs(*std::max_element(
        gth.begin(), gth.end(), [](double a, double b) { return std::fabs(a) < std::fabs(b); }));
    for (int64_t i = 0; i <= D; ++i) {
      Vec e(D, 0.0);
      if (i < D)
        e[i] = 1.0;
      else
        for (double &ei : e)
          ei = std::uniform_real_distribution<double>(-1, 1)(gen);
      probe(th, gth, e, 1e-6, i < D ? scale : 0.0, "dtheta " + std::to_string(i));
    }
  }
  std::printf("[ stats    ] fused lrpe=%d silu=%d block=%lld: worst rel %.2e\n", fc.lrpe, fc.silu,
              static_cast<long long>(block), worst);
}

INSTANTIATE_TEST_SUITE_P(PrologueAndBlock, FusedGrad,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool(),
                                            ::testing::Values(16, 64)));

// cpu::lrpeThetaGradRelative, the θ gradient in the relative form. A random attention over
// LRPE planes (q' = lrpe(x), k' = lrpe(y), v, dO, three heads at different decays); dq', dk' from
// lightningAttentionGrad, and the absolute form over the q and k sides (lrpeGrad) as the
// reference: the two are equal in exact arithmetic. Case 1 (f32 inputs, N = 77, blocks 1, 5, 16
// and 64 with partial last blocks): within 1e-5 of |dθ| (the absolute form's f32 terms, ~N·2^-24
// relative to each side, each side a few times |dθ| here); and against the pairs summed
// directly in f64, within 1e-9 (the same f64 sums in another order). Case 2 (the reason for it):
// the inputs rounded once to bf16 at N = 1024; the relative form's error against the f32
// absolute form stays near 2^-9 (bound 2e-2) while the absolute form's on the same inputs is
// amplified (the sides cancel; measured 3.8e-3 against 1.6): at least 4x apart.
// One rounding to bf16, to nearest even (finite inputs).
float roundBf16(float a) {
  uint32_t u;
  std::memcpy(&u, &a, 4);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  std::memcpy(&a, &u, 4);
  return a;
}

struct ThetaCase {
  int64_t B, N, H, dh;
  std::vector<float> x, y, theta, qp, kp, v, dO, dq, dk;
  std::vector<float> slopes;
  ThetaCase(int64_t B_, int64_t N_, int64_t H_, int64_t dh_, uint64_t seed)
      : B(B_), N(N_), H(H_), dh(dh_) {
    const int64_t D = H * dh, rows = B * N;
    x = naive::randomVector(rows * D, seed);
    y = naive::randomVector(rows * D, seed + 1);
    v = naive::randomVector(rows * D, seed + 2);
    dO = naive::randomVector(rows * D, seed + 3);
    theta = initTheta(D);
    for (int64_t h = 0; h < H; ++h)
      slopes.push_back(std::ldexp(1.0f, -1 - 2 * int(h)));
    qp.resize(size_t(rows * 2 * D));
    kp.resize(qp.size());
    lrpe(x.data(), B, N, H, dh, D, theta.data(), 0, qp.data());
    lrpe(y.data(), B, N, H, dh, D, theta.data(), 0, kp.data());
  }
  void round() {
    for (auto *w : {&qp, &kp, &v, &dO})
      for (float &a : *w)
        a = roundBf16(a);
  }
  // The absolute form from these planes: dq', dk' (f32), then lrpeGrad's q and k sides.
  std::vector<float> absolute() {
    const int64_t D = H * dh, rows = B * N;
    dq.assign(size_t(rows * 2 * D), 0.0f);
    dk.assign(dq.size(), 0.0f);
    std::vector<float> dv(size_t(rows * D)), dx(size_t(rows * D)), t(size_t(D), 0.0f);
    lightningAttentionGrad(qp.data(), kp.data(), v.data(), B, N, H, 2 * dh, dh, 2 * D, 2 * D, D,
                           slopes.data(), dO.data(), D, dq.data(), 2 * D, dk.data(), 2 * D,
                           dv.data(), D, 16);
    lrpeGrad(x.data(), B, N, H, dh, D, theta.data(), 0, dq.data(), dx.data(), D, t.data());
    lrpeGrad(y.data(), B, N, H, dh, D, theta.data(), 0, dk.data(), dx.data(), D, t.data());
    return t;
  }
  std::vector<float> relative(int64_t block) const {
    const int64_t D = H * dh;
    std::vector<float> t(size_t(D), 0.0f);
    lrpeThetaGradRelative(qp.data(), kp.data(), v.data(), dO.data(), B, N, H, dh, dh, 2 * D, 2 * D,
                          D, D, slopes.data(), block, t.data());
    return t;
  }
  // The pairs summed directly (f64).
  std::vector<double> naivePairs() const {
    const int64_t D = H * dh;
    std::vector<double> t(size_t(D), 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t n = 0; n < N; ++n)
          for (int64_t m = 0; m < n; ++m) {
            const int64_t rn = b * N + n, rm = b * N + m;
            double dot = 0;
            for (int64_t e = 0; e < dh; ++e)
              dot += double(dO[size_t(rn * D + h * dh + e)]) * v[size_t(rm * D + h * dh + e)];
            const double w =
                -double(n - m) * std::exp(-double(slopes[size_t(h)]) * double(n - m)) * dot;
            const float *qn = qp.data() + rn * 2 * D + h * 2 * dh;
            const float *km = kp.data() + rm * 2 * D + h * 2 * dh;
            for (int64_t c = 0; c < dh; ++c)
              t[size_t(h * dh + c)] +=
                  w * (double(qn[dh + c]) * km[c] - double(qn[c]) * km[dh + c]);
          }
    return t;
  }
};

double relL2(const std::vector<float> &a, const std::vector<float> &ref) {
  double d = 0, r = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    d += double(a[i] - ref[i]) * (a[i] - ref[i]), r += double(ref[i]) * ref[i];
  return std::sqrt(d / r);
}

TEST(LrpeThetaGradRelative, EqualsTheAbsoluteFormAndThePairs) {
  ThetaCase c(2, 77, 3, 8, 301);
  const std::vector<float> abs = c.absolute();
  const std::vector<double> pairs = c.naivePairs();
  double norm = 0;
  for (double p : pairs)
    norm += p * p;
  norm = std::sqrt(norm);
  for (int64_t block : {1, 5, 16, 64}) {
    const std::vector<float> rel = c.relative(block);
    EXPECT_LE(relL2(rel, abs), 1e-5) << "block " << block;
    for (size_t i = 0; i < pairs.size(); ++i)
      EXPECT_NEAR(rel[i], pairs[i], 1e-9 * norm + 2 * std::fabs(pairs[i]) * kU)
          << "block " << block << ", dθ[" << i << "]";
  }
}

TEST(LrpeThetaGradRelative, StaysAccurateFromBf16Inputs) {
  ThetaCase c(1, 1024, 2, 32, 401);
  const std::vector<float> exact = c.absolute();
  c.round();
  const double absErr = relL2(c.absolute(), exact), relErr = relL2(c.relative(64), exact);
  std::printf("[ stats    ] dθ from bf16 inputs at N = 1024: relative form %.3e, absolute form "
              "%.3e\n",
              relErr, absErr);
  EXPECT_LE(relErr, 2e-2);
  EXPECT_GE(absErr, 4 * relErr) << "the absolute form was expected to amplify the rounding";
}

TEST(LrpeThetaGradRelative, RejectsBadBlockAndSlopes) {
  ThetaCase c(1, 4, 1, 2, 501);
  std::vector<float> t(2, 0.0f);
  EXPECT_THROW(lrpeThetaGradRelative(c.qp.data(), c.kp.data(), c.v.data(), c.dO.data(), 1, 4, 1, 2,
                                     2, 4, 4, 2, 2, c.slopes.data(), 0, t.data()),
               Error);
  const float bad = -1.0f;
  EXPECT_THROW(lrpeThetaGradRelative(c.qp.data(), c.kp.data(), c.v.data(), c.dO.data(), 1, 4, 1, 2,
                                     2, 4, 4, 2, 2, &bad, 16, t.data()),
               Error);
}

TEST(AttentionGrad, SameBitsForAnyThreadCount) {
  const float slopes[] = {0.5f, 0.01f, 1e-5f};
  const int saved = numThreads();
  auto run = [&](int threads) {
    setNumThreads(threads);
    Problem p = makeProblem(3, 150, 3, 32, 16, 31);
    p.lightning(slopes, 64);
    std::vector<float> out = p.grads;
    p.resetGrads();
    p.recurrent(slopes);
    out.insert(out.end(), p.grads.begin(), p.grads.end());
    std::vector<float> dx(p.B * p.N * 16), dtheta(16, 0.0f), theta = initTheta(16);
    lrpeGrad(p.q(), p.B, p.N, 2, 8, p.ld, theta.data(), 5, p.qkv.data() + 1, dx.data(), 16,
             dtheta.data());
    out.insert(out.end(), dx.begin(), dx.end());
    out.insert(out.end(), dtheta.begin(), dtheta.end());
    const FusedCase fc{2, 200, 3, 16, 7, true, true, slopes, 1e-6};
    FusedRun f = runFused(fc, 64, 41);
    out.insert(out.end(), f.dqkvu.begin(), f.dqkvu.end());
    out.insert(out.end(), f.dtheta.begin(), f.dtheta.end());
    return out;
  };
  const std::vector<float> one = run(1), two = run(2);
  setNumThreads(saved);
  ASSERT_EQ(one.size(), two.size());
  EXPECT_EQ(0, std::memcmp(one.data(), two.data(), one.size() * sizeof(float)));
}

TEST(AttentionGrad, RejectsBadSlopesBlockAndWorkspace) {
  Problem p = makeProblem(1, 4, 1, 2, 2, 3);
  std::vector<float> ws(4 * 64);
  auto fused = [&](const float *slopes, int64_t block, float *workspace) {
    fusedLightningAttentionGrad(p.qkv.data(), 4, 1, 4, 1, 1, true, nullptr, 0, slopes, block, 1e-6f,
                                p.dout.data(), 1, workspace, p.grads.data(), 4, nullptr);
  };
  const float negative[] = {-0.1f}, nan[] = {std::nanf("")}, inf[] = {INFINITY}, good[] = {0.1f};
  for (const float *bad : {negative, nan, inf}) {
    EXPECT_THROW(p.lightning(bad, 16), tnlm::Error);
    EXPECT_THROW(p.recurrent(bad), tnlm::Error);
    EXPECT_THROW(fused(bad, 16, ws.data()), tnlm::Error);
  }
  for (int64_t block : {0, -3}) {
    EXPECT_THROW(p.lightning(good, block), tnlm::Error);
    EXPECT_THROW(fused(good, block, ws.data()), tnlm::Error);
  }
  EXPECT_THROW(fused(good, 16, nullptr), tnlm::Error);
  EXPECT_TRUE(std::all_of(p.grads.begin(), p.grads.end(), [](float g) { return std::isnan(g); }))
      << "output written before an error";
}

} // namespace
} // namespace tnlm::cpu
