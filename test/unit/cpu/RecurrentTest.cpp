//===- RecurrentTest.cpp - prefill/decode kernels vs fused kernel and f64 --===//
//
// lightningPrefill against fusedLightningAttention run on each sequence alone (same rows,
// compared with ==), its final state against an f64 recurrence, lightningDecode against
// prefill and against an f64 step at a large position, inactive slots, errors, threads.
//
// Error bounds (u = 2^-24, "abs" = the same sum over absolute values):
// - Prologue: k' = LRPE(SiLU(k)) in f32 is within 8u relative of the f64 value of the same
//   f32 angle: expf (< 1 ulp <= 2u), 1 + e and the division (u each), cosf/sinf (< 1 ulp
//   <= 2u), the product (u): 7u to first order, 8u with slack.
// - Prefill state: Lightning's state takes T sgemm updates of m + 1 terms with rounded
//   weights, (m + 4)u each, errors adding up (AttentionTest.cpp): (N + 2Bk + 4T + 16)u·abs,
//   plus 8u·abs from k'.
// - One decode step from a given f32 state S: S' = f32(λS + k'v) with k' off by 8u: 9u·abs;
//   o = q'S' in f64 then rounded: (8u + 9u)·abs + u|o|, so 20u·abs covers it; the f64 norm,
//   its rounding and the two f32 products of the gate add the terms of normGateBound.
// - Decode vs prefill (norm-wise, ||Δy|| / ||y|| <= 1e-5 and ||ΔS|| / ||S|| <= 1e-5 per
//   head): both evaluations are within the worst-case bounds above of the exact value, but
//   those grow like n·u (1.4e-4 at n = 2048) and are far from reached with random data: the
//   roundings are independent, so they add like a random walk (Higham & Mary's probabilistic
//   bound, √K·u instead of K·u). A state entry is rounded once per step (recurrence) or
//   accumulated in f32 over a block plus rounded once per block (Lightning), relative to
//   |S_t| itself, so after n tokens the state is off by ~√n·u ≈ 2.7e-6 relative per path at
//   n = 2048, the f64 product q·S and the norm add ~u; twice that (two paths) is < 1e-5.
//   The head with slope 1e-5 (λ ≈ 1, no effective decay) makes this the worst case.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Recurrent.h"

#include "runtime/cpu/Fused.h"
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
#include <vector>

namespace tnlm::cpu {
namespace {

using naive::kU;

constexpr float kSentinel = 12345.0f;
const float kNaN = std::numeric_limits<float>::quiet_NaN();

// One token-mixer configuration: H = 3 heads (not a power of two), one head per decay regime
// (fast, moderate, λ ≈ 1 where an f32 λ would be 1 − 1e-5 rounded).
struct Mixer {
  int64_t H = 3, dh = 8;
  bool silu = true, lrpe = true;
  std::vector<float> theta; // [H·dh]
  std::vector<float> slopes = {0.5f, 0.02f, 1e-5f};
  float eps = 1e-5f;
  int64_t D() const { return H * dh; }
  int64_t dk() const { return lrpe ? 2 * dh : dh; }
  int64_t slotState() const { return H * dk() * dh; }
  const float *th() const { return lrpe ? theta.data() : nullptr; }
};

Mixer makeMixer(int64_t dh, bool silu, bool lrpe, uint32_t seed) {
  Mixer m;
  m.dh = dh;
  m.silu = silu;
  m.lrpe = lrpe;
  m.theta = naive::randomVector(m.H * dh, seed, 0.0f, 1.0f);
  return m;
}

// Per slot a token sequence [len, 4D] of q, k, v, u.
std::vector<std::vector<float>> makeSequences(const Mixer &m, const std::vector<int64_t> &lens,
                                              uint32_t seed) {
  std::vector<std::vector<float>> seqs;
  for (size_t b = 0; b < lens.size(); ++b)
    seqs.push_back(naive::randomVector(lens[b] * 4 * m.D(), seed + static_cast<uint32_t>(b)));
  return seqs;
}

// The padded batch [B·N, ld]: rows t < lengths[b] from the sequences, everything else NaN,
// so a kernel reading past a length or into the padding columns produces NaN.
std::vector<float> pack(const Mixer &m, const std::vector<std::vector<float>> &seqs, int64_t N,
                        int64_t ld, const std::vector<int32_t> &lengths) {
  std::vector<float> buf(seqs.size() * N * ld, kNaN);
  for (size_t b = 0; b < seqs.size(); ++b)
    for (int64_t t = 0; t < lengths[b]; ++t)
      std::copy_n(seqs[b].data() + t * 4 * m.D(), 4 * m.D(), buf.data() + (b * N + t) * ld);
  return buf;
}

int64_t ldOf(const Mixer &m) { return 4 * m.D() + 5; }

void prefill(const Mixer &m, const std::vector<float> &qkvu, int64_t B, int64_t N,
             const std::vector<int32_t> &lengths, int64_t block, std::vector<float> &state,
             std::vector<float> &y, int64_t ldy) {
  std::vector<float> ws(B * N * fusedAttentionWorkspaceCols(m.H, m.dh, m.silu, m.lrpe));
  lightningPrefill(qkvu.data(), ldOf(m), B, N, m.H, m.dh, m.silu, m.th(), lengths.data(),
                   m.slopes.data(), block, m.eps, ws.empty() ? nullptr : ws.data(), state.data(),
                   y.data(), ldy);
}

void decode(const Mixer &m, const std::vector<float> &rows, const std::vector<int32_t> &positions,
            std::vector<float> &state, std::vector<float> &y, int64_t ldy) {
  lightningDecode(rows.data(), ldOf(m), static_cast<int64_t>(positions.size()), m.H, m.dh, m.silu,
                  m.th(), positions.data(), m.slopes.data(), m.eps, state.data(), y.data(), ldy);
}

// f64 prologue of one head's dh features at position p: φ in f64, the f32 angle float(p)·θ
// (the rule cpu::lrpe documents), cos/sin in f64 of that angle.
std::vector<double> prologueF64(const Mixer &m, const float *x, int64_t h, int64_t p) {
  std::vector<double> out(m.dk());
  for (int64_t c = 0; c < m.dh; ++c) {
    double v = x[c];
    if (m.silu)
      v = v / (1.0 + std::exp(-v));
    if (m.lrpe) {
      const float angle = static_cast<float>(p) * m.theta[h * m.dh + c];
      out[c] = v * std::cos(static_cast<double>(angle));
      out[m.dh + c] = v * std::sin(static_cast<double>(angle));
    } else {
      out[c] = v;
    }
  }
  return out;
}

// Norm-wise relative difference ||a − b|| / ||b|| over n entries.
double relativeDiff(const float *a, const float *b, int64_t n) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    norm += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(diff) / std::max(std::sqrt(norm), 1e-300);
}

//===-- Prefill vs the fused kernel on each sequence alone -------------------===//

class PrefillGrid : public ::testing::TestWithParam<std::tuple<bool, bool, int64_t, int64_t>> {};

TEST_P(PrefillGrid, MatchesFusedPerSequenceAndF64State) {
  const auto [silu, lrpe, dh, block] = GetParam();
  const Mixer m = makeMixer(dh, silu, lrpe, 3);
  const std::vector<int64_t> lens = {1, 17, 63, 0, 64, 65, 300};
  const std::vector<int32_t> lengths(lens.begin(), lens.end());
  const int64_t B = static_cast<int64_t>(lens.size()), N = 300, D = m.D(), ld = ldOf(m);
  const int64_t ldy = D + 3, dk = m.dk(), dv = m.dh, Sn = m.slotState();
  const auto seqs = makeSequences(m, lens, 100);
  const std::vector<float> qkvu = pack(m, seqs, N, ld, lengths);
  // Sentinels everywhere: the active slots' states must be reset by the kernel itself.
  std::vector<float> state(B * Sn, kSentinel), y(B * N * ldy, kSentinel);
  prefill(m, qkvu, B, N, lengths, block, state, y, ldy);

  int failures = 0;
  double worstState = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t L = lens[b];
    const float *yb = y.data() + b * N * ldy;
    if (L > 0) {
      std::vector<float> ws(L * fusedAttentionWorkspaceCols(m.H, dh, silu, lrpe));
      std::vector<float> alone(L * D);
      fusedLightningAttention(qkvu.data() + b * N * ld, ld, 1, L, m.H, dh, silu, m.th(), 0,
                              m.slopes.data(), block, m.eps, ws.empty() ? nullptr : ws.data(),
                              alone.data(), D);
      // == (not memcmp): the zeroed initial state adds Λ Q·0 = +0, which can only flip the
      // sign of a zero.
      for (int64_t t = 0; t < L; ++t)
        for (int64_t c = 0; c < D; ++c)
          if (!(yb[t * ldy + c] == alone[t * D + c]) && failures++ < 5)
            ADD_FAILURE() << "slot " << b << " row " << t << " col " << c << ": " << yb[t * ldy + c]
                          << " vs fused " << alone[t * D + c];
    }
    for (int64_t t = 0; t < N; ++t) {
      for (int64_t c = 0; c < D && t >= L; ++c)
        if (yb[t * ldy + c] != 0.0f && failures++ < 5)
          ADD_FAILURE() << "slot " << b << " row " << t << " past the length is not zero";
      for (int64_t c = D; c < ldy; ++c)
        if (yb[t * ldy + c] != kSentinel && failures++ < 5)
          ADD_FAILURE() << "slot " << b << " padding column " << c << " written";
    }
    const float *Sb = state.data() + b * Sn;
    if (L == 0) {
      for (int64_t e = 0; e < Sn; ++e)
        if (Sb[e] != kSentinel && failures++ < 5)
          ADD_FAILURE() << "inactive slot's state entry " << e << " changed";
      continue;
    }
    // Final state vs S_t = λ S_{t−1} + k'_tᵀ v_t in f64 over the f64 prologue'd keys.
    const int64_t Bk = std::min(block, L), T = (L + Bk - 1) / Bk;
    const double factor = static_cast<double>(L + 2 * Bk + 4 * T + 16 + 8);
    for (int64_t h = 0; h < m.H; ++h) {
      const double lambda = std::exp(-static_cast<double>(m.slopes[h]));
      std::vector<double> S(dk * dv, 0.0), abs(dk * dv, 0.0);
      for (int64_t t = 0; t < L; ++t) {
        const float *row = seqs[b].data() + t * 4 * D;
        const std::vector<double> kp = prologueF64(m, row + D + h * dh, h, t);
        const float *vt = row + 2 * D + h * dv;
        for (int64_t i = 0; i < dk; ++i)
          for (int64_t j = 0; j < dv; ++j) {
            S[i * dv + j] = lambda * S[i * dv + j] + kp[i] * vt[j];
            abs[i * dv + j] = lambda * abs[i * dv + j] + std::fabs(kp[i] * vt[j]);
          }
      }
      for (int64_t e = 0; e < dk * dv; ++e) {
        const double got = Sb[h * dk * dv + e], tol = factor * kU * abs[e] + 1e-30;
        const double err = std::fabs(got - S[e]);
        worstState = std::max(worstState, err / tol);
        if (!(err <= tol) && failures++ < 5)
          ADD_FAILURE() << "slot " << b << " head " << h << " state entry " << e << ": " << got
                        << " want " << S[e] << " (tolerance " << tol << ")";
      }
    }
  }
  EXPECT_EQ(failures, 0) << "worst state error / tolerance = " << worstState;
}

INSTANTIATE_TEST_SUITE_P(SiluLrpeHeadDimBlock, PrefillGrid,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool(),
                                            ::testing::Values<int64_t>(8, 16),
                                            ::testing::Values<int64_t>(16, 64)));

//===-- Decode equals prefill ------------------------------------------------===//

class DecodeVsPrefill : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(DecodeVsPrefill, OneStepAfterPrefillAndDecodeFromZero) {
  const auto [silu, lrpe] = GetParam();
  const Mixer m = makeMixer(16, silu, lrpe, 5);
  const std::vector<int64_t> lens = {1, 63, 64, 65, 300, 2048};
  const int64_t B = static_cast<int64_t>(lens.size()), N = 2048, D = m.D(), ld = ldOf(m);
  const int64_t Sn = m.slotState(), block = 64, dkdv = m.dk() * m.dh;
  constexpr double kTol = 1e-5; // see the header: ~2·√n·u ≈ 5e-6 at n = 2048
  const auto seqs = makeSequences(m, lens, 200);

  // prefill(n) over all tokens: the reference rows and states.
  std::vector<int32_t> full(lens.begin(), lens.end()), prompt(B);
  for (int64_t b = 0; b < B; ++b)
    prompt[b] = static_cast<int32_t>(lens[b] - 1);
  std::vector<float> stateFull(B * Sn, 0.0f), yFull(B * N * D);
  prefill(m, pack(m, seqs, N, ld, full), B, N, full, block, stateFull, yFull, D);

  // prefill(n − 1), slot 0 with an empty prompt keeps its zero state; then one decode step
  // of token n − 1 at position n − 1.
  std::vector<float> state(B * Sn, 0.0f), yPrompt((N - 1) * B * D);
  prefill(m, pack(m, seqs, N - 1, ld, prompt), B, N - 1, prompt, block, state, yPrompt, D);
  std::vector<float> rows(B * ld, kNaN), y(B * D, kSentinel);
  for (int64_t b = 0; b < B; ++b)
    std::copy_n(seqs[b].data() + (lens[b] - 1) * 4 * D, 4 * D, rows.data() + b * ld);
  decode(m, rows, prompt, state, y, D);
  double worstY = 0, worstS = 0;
  for (int64_t b = 0; b < B; ++b) {
    const double ry = relativeDiff(y.data() + b * D, yFull.data() + (b * N + lens[b] - 1) * D, D);
    EXPECT_LE(ry, kTol) << "n = " << lens[b] << ": decode row vs prefill row";
    worstY = std::max(worstY, ry);
    for (int64_t h = 0; h < m.H; ++h) {
      const int64_t off = b * Sn + h * dkdv;
      const double rs = relativeDiff(state.data() + off, stateFull.data() + off, dkdv);
      EXPECT_LE(rs, kTol) << "n = " << lens[b] << " head " << h << ": state";
      worstS = std::max(worstS, rs);
    }
  }

  // n decode steps from a zero state; a slot whose sequence has ended is inactive (position
  // −1, NaN input row) and keeps its state. Every step's row is compared too.
  std::vector<float> stateDec(B * Sn, 0.0f);
  double worstSteps = 0;
  for (int64_t t = 0; t < N; ++t) {
    std::vector<int32_t> positions(B, -1);
    std::fill(rows.begin(), rows.end(), kNaN);
    for (int64_t b = 0; b < B; ++b)
      if (t < lens[b]) {
        positions[b] = static_cast<int32_t>(t);
        std::copy_n(seqs[b].data() + t * 4 * D, 4 * D, rows.data() + b * ld);
      }
    std::fill(y.begin(), y.end(), kSentinel);
    decode(m, rows, positions, stateDec, y, D);
    for (int64_t b = 0; b < B; ++b) {
      if (t < lens[b]) {
        double r = relativeDiff(y.data() + b * D, yFull.data() + (b * N + t) * D, D);
        worstSteps = std::max(worstSteps, r);
      } else {
        for (int64_t c = 0; c < D; ++c)
          ASSERT_EQ(y[b * D + c], 0.0f) << "inactive slot " << b << " at step " << t;
      }
    }
  }
  EXPECT_LE(worstSteps, kTol) << "decode rows from a zero state vs prefill rows";
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < m.H; ++h) {
      const int64_t off = b * Sn + h * dkdv;
      const double rs = relativeDiff(stateDec.data() + off, stateFull.data() + off, dkdv);
      EXPECT_LE(rs, kTol) << "n = " << lens[b] << " head " << h << ": n decode steps' state";
      worstS = std::max(worstS, rs);
    }
  std::printf("[ worst    ] decode vs prefill: one step %.3g, every step %.3g, state %.3g\n",
              worstY, worstSteps, worstS);
}

INSTANTIATE_TEST_SUITE_P(SiluLrpe, DecodeVsPrefill,
                         ::testing::Combine(::testing::Bool(), ::testing::Bool()));

//===-- Decode at a large position vs an f64 step ------------------------------===//

// Bound of y = u ⊙ (o·r), r = rsqrt(mean(o²) + eps), given |Δo_j| <= c·u·abs_j: the rstd is
// off by Σ|o_j||Δo_j| / Σo_j² (first order) plus its f64→f32 rounding, the two f32
// products of the gate by 2u|y_j| (3u with slack).
std::vector<double> normGateBound(const std::vector<double> &o, const std::vector<double> &abs,
                                  const float *gate, double c, float eps, std::vector<double> &y) {
  const int64_t D = static_cast<int64_t>(o.size());
  double sq = 0, cross = 0;
  for (int64_t j = 0; j < D; ++j) {
    sq += o[j] * o[j];
    cross += std::fabs(o[j]) * c * kU * abs[j];
  }
  const double r = 1.0 / std::sqrt(sq / D + eps), relR = cross / sq + 2 * kU;
  std::vector<double> tol(D);
  y.assign(D, 0.0);
  for (int64_t j = 0; j < D; ++j) {
    y[j] = gate[j] * o[j] * r;
    tol[j] = std::fabs(gate[j]) * r * (c * kU * abs[j] + std::fabs(o[j]) * relR) +
             3 * kU * std::fabs(y[j]) + 1e-30;
  }
  return tol;
}

TEST(LightningDecode, LargePositionMatchesF64Step) {
  for (bool silu : {false, true}) {
    const Mixer m = makeMixer(8, silu, /*lrpe=*/true, 7);
    const std::vector<int32_t> positions = {65536, -1, 100003};
    const int64_t B = 3, D = m.D(), ld = ldOf(m), dk = m.dk(), dv = m.dh, Sn = m.slotState();
    // A state of the size a long prompt leaves: Σ_s λ^{t−s} k'v over random k'v of
    // magnitude ~0.3 grows like √(Σ λ^{2r}) = √(min(t, 1 / (1 − λ²))).
    std::vector<float> state = naive::randomVector(B * Sn, 8);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < m.H; ++h) {
        const double lambda = std::exp(-static_cast<double>(m.slopes[h]));
        const double scale = 0.3 * std::sqrt(std::min(65536.0, 1.0 / (1.0 - lambda * lambda)));
        for (int64_t e = 0; e < dk * dv; ++e)
          state[b * Sn + h * dk * dv + e] *= static_cast<float>(scale);
      }
    const std::vector<float> s0 = state;
    std::vector<float> rows = naive::randomVector(B * ld, 9, -2.0f, 2.0f);
    std::vector<float> y(B * D, kSentinel);
    decode(m, rows, positions, state, y, D);

    int failures = 0;
    double worst = 0;
    for (int64_t b = 0; b < B; ++b) {
      const float *yb = y.data() + b * D;
      if (positions[b] < 0) {
        EXPECT_EQ(0, std::memcmp(state.data() + b * Sn, s0.data() + b * Sn, Sn * sizeof(float)));
        for (int64_t c = 0; c < D; ++c)
          EXPECT_EQ(yb[c], 0.0f);
        continue;
      }
      const float *row = rows.data() + b * ld;
      std::vector<double> o(D), oAbs(D);
      for (int64_t h = 0; h < m.H; ++h) {
        const double lambda = std::exp(-static_cast<double>(m.slopes[h]));
        const std::vector<double> qp = prologueF64(m, row + h * m.dh, h, positions[b]);
        const std::vector<double> kp = prologueF64(m, row + D + h * m.dh, h, positions[b]);
        const float *vt = row + 2 * D + h * dv;
        const float *S0 = s0.data() + b * Sn + h * dk * dv;
        const float *S1 = state.data() + b * Sn + h * dk * dv;
        for (int64_t i = 0; i < dk; ++i)
          for (int64_t j = 0; j < dv; ++j) {
            const double s = lambda * S0[i * dv + j] + kp[i] * vt[j];
            const double sAbs = lambda * std::fabs(S0[i * dv + j]) + std::fabs(kp[i] * vt[j]);
            const double err = std::fabs(S1[i * dv + j] - s), tol = 10 * kU * sAbs;
            worst = std::max(worst, err / tol);
            if (!(err <= tol) && failures++ < 5)
              ADD_FAILURE() << "position " << positions[b] << " head " << h << " state (" << i
                            << ", " << j << "): " << S1[i * dv + j] << " want " << s;
            o[h * dv + j] += qp[i] * s;
            oAbs[h * dv + j] += std::fabs(qp[i]) * sAbs;
          }
      }
      std::vector<double> want;
      const std::vector<double> tol = normGateBound(o, oAbs, row + 3 * D, 20, m.eps, want);
      for (int64_t c = 0; c < D; ++c) {
        ASSERT_TRUE(std::isfinite(yb[c]));
        const double err = std::fabs(yb[c] - want[c]);
        worst = std::max(worst, err / tol[c]);
        if (!(err <= tol[c]) && failures++ < 5)
          ADD_FAILURE() << "position " << positions[b] << " y col " << c << ": " << yb[c]
                        << " want " << want[c] << " (tolerance " << tol[c] << ")";
      }
    }
    EXPECT_EQ(failures, 0) << "silu " << silu << ": worst error / tolerance = " << worst;
    std::printf("[ worst    ] one step at 65536/100003, silu %d: error / bound %.3g\n", silu,
                worst);
  }
}

// The same position reached by running the recurrence over a real prompt: prefill(65536) then
// one decode step at position 65536, vs prefill(65537)'s last row and state, and vs an f64
// recurrence over the f64 prologue (LRPE angles up to 65536·θ on every path). Elementwise the
// worst-case bounds of the header: state (n + 2Bk + 4T + 24)u·abs plus the step's 9u·abs,
// the row through normGateBound with c = that + 20. Norm-wise the random-walk estimate is
// ~√n·u ≈ 1.5e-5 per path (the λ ≈ 1 head keeps all 65536 tokens): 1e-4 is asserted.
TEST(LightningDecode, AfterLongPrefillMatchesPrefillAndF64) {
  const Mixer m = makeMixer(8, true, true, 11);
  const int64_t n = 65537, block = 96, D = m.D(), ld = ldOf(m), Sn = m.slotState();
  const int64_t dk = m.dk(), dv = m.dh;
  const auto seqs = makeSequences(m, {n}, 300);
  const std::vector<int32_t> full = {static_cast<int32_t>(n)};
  const std::vector<int32_t> prompt = {static_cast<int32_t>(n - 1)};
  std::vector<float> stateFull(Sn), yFull(n * D), state(Sn), yPrompt((n - 1) * D);
  prefill(m, pack(m, seqs, n, ld, full), 1, n, full, block, stateFull, yFull, D);
  prefill(m, pack(m, seqs, n - 1, ld, prompt), 1, n - 1, prompt, block, state, yPrompt, D);
  std::vector<float> rows(ld), y(D);
  const float *last = seqs[0].data() + (n - 1) * 4 * D;
  std::copy_n(last, 4 * D, rows.data());
  decode(m, rows, prompt, state, y, D);
  for (float v : y)
    ASSERT_TRUE(std::isfinite(v));
  const double ry = relativeDiff(y.data(), yFull.data() + (n - 1) * D, D);
  const double rs = relativeDiff(state.data(), stateFull.data(), Sn);
  EXPECT_LE(ry, 1e-4) << "decode row vs prefill row";
  EXPECT_LE(rs, 1e-4) << "decode state vs prefill state";

  // f64: S_t = λ S_{t−1} + k'_tᵀ v_t over all n tokens, o = q'_{n−1} S_{n−1}.
  std::vector<double> S(Sn, 0.0), abs(Sn, 0.0), o(D, 0.0), oAbs(D, 0.0);
  for (int64_t h = 0; h < m.H; ++h) {
    const double lambda = std::exp(-static_cast<double>(m.slopes[h]));
    double *Sh = S.data() + h * dk * dv, *Ah = abs.data() + h * dk * dv;
    for (int64_t t = 0; t < n; ++t) {
      const float *row = seqs[0].data() + t * 4 * D;
      const std::vector<double> kp = prologueF64(m, row + D + h * m.dh, h, t);
      const float *vt = row + 2 * D + h * dv;
      for (int64_t i = 0; i < dk; ++i)
        for (int64_t j = 0; j < dv; ++j) {
          Sh[i * dv + j] = lambda * Sh[i * dv + j] + kp[i] * vt[j];
          Ah[i * dv + j] = lambda * Ah[i * dv + j] + std::fabs(kp[i] * vt[j]);
        }
    }
    const std::vector<double> qp = prologueF64(m, last + h * m.dh, h, n - 1);
    for (int64_t i = 0; i < dk; ++i)
      for (int64_t j = 0; j < dv; ++j) {
        o[h * dv + j] += qp[i] * Sh[i * dv + j];
        oAbs[h * dv + j] += std::fabs(qp[i]) * Ah[i * dv + j];
      }
  }
  const int64_t T = (n - 1 + block - 1) / block;
  const double cS = static_cast<double>(n - 1 + 2 * block + 4 * T + 24 + 9);
  std::vector<double> want;
  const std::vector<double> tol = normGateBound(o, oAbs, last + 3 * D, cS + 20, m.eps, want);
  double worst = 0, diffS = 0, normS = 0, diffY = 0, normY = 0;
  for (int64_t e = 0; e < Sn; ++e) {
    const double err = std::fabs(state[e] - S[e]);
    EXPECT_LE(err, cS * kU * abs[e]) << "state entry " << e;
    worst = std::max(worst, err / (cS * kU * abs[e]));
    diffS += err * err;
    normS += S[e] * S[e];
  }
  for (int64_t c = 0; c < D; ++c) {
    const double err = std::fabs(y[c] - want[c]);
    EXPECT_LE(err, tol[c]) << "y col " << c << ": " << y[c] << " want " << want[c];
    worst = std::max(worst, err / tol[c]);
    diffY += err * err;
    normY += want[c] * want[c];
  }
  const double rsF64 = std::sqrt(diffS / normS), ryF64 = std::sqrt(diffY / normY);
  EXPECT_LE(rsF64, 1e-4) << "state vs f64";
  EXPECT_LE(ryF64, 1e-4) << "row vs f64";
  std::printf("[ worst    ] position 65536: vs prefill row %.3g state %.3g; vs f64 row %.3g "
              "state %.3g; worst-case bound used %.3g\n",
              ry, rs, ryF64, rsF64, worst);
}

//===-- Inactive slots, errors, threads, gather --------------------------------===//

TEST(LightningPrefill, RejectsBadArgumentsBeforeWriting) {
  const Mixer m = makeMixer(8, true, true, 13);
  const int64_t B = 3, N = 10, D = m.D(), ld = ldOf(m), Sn = m.slotState();
  std::vector<float> qkvu = naive::randomVector(B * N * ld, 14);
  std::vector<float> ws(B * N * fusedAttentionWorkspaceCols(m.H, m.dh, true, true));
  std::vector<float> state(B * Sn, kSentinel), y(B * N * D, kSentinel);
  const std::vector<int32_t> good = {3, 0, 10};
  auto run = [&](const std::vector<int32_t> &lengths, const float *slopes, int64_t block,
                 float *workspace) {
    lightningPrefill(qkvu.data(), ld, B, N, m.H, m.dh, true, m.th(), lengths.data(), slopes, block,
                     m.eps, workspace, state.data(), y.data(), D);
  };
  for (const std::vector<int32_t> &bad :
       {std::vector<int32_t>{3, 11, 0}, std::vector<int32_t>{3, -1, 0}}) {
    try {
      run(bad, m.slopes.data(), 16, ws.data());
      ADD_FAILURE() << "length " << bad[1] << " accepted";
    } catch (const Error &e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find("slot 1"), std::string::npos) << msg;
      EXPECT_NE(msg.find(std::to_string(bad[1])), std::string::npos) << msg;
    }
  }
  const float negative[] = {0.1f, -0.5f, 0.1f}, nan[] = {0.1f, 0.1f, kNaN};
  EXPECT_THROW(run(good, negative, 16, ws.data()), Error);
  EXPECT_THROW(run(good, nan, 16, ws.data()), Error);
  EXPECT_THROW(run(good, m.slopes.data(), 0, ws.data()), Error);
  EXPECT_THROW(run(good, m.slopes.data(), -4, ws.data()), Error);
  EXPECT_THROW(run(good, m.slopes.data(), 16, nullptr), Error);
  for (float s : state)
    ASSERT_EQ(s, kSentinel) << "a rejected call wrote the state";
  for (float v : y)
    ASSERT_EQ(v, kSentinel) << "a rejected call wrote y";
  // Without a prologue the workspace is not needed.
  EXPECT_NO_THROW(lightningPrefill(qkvu.data(), ld, B, N, m.H, m.dh, false, nullptr, good.data(),
                                   m.slopes.data(), 4, m.eps, nullptr, state.data(), y.data(), D));
}

TEST(LightningDecode, InactiveSlotsAndBadSlopes) {
  const Mixer m = makeMixer(8, true, true, 15);
  const int64_t B = 4, D = m.D(), ld = ldOf(m), Sn = m.slotState(), ldy = D + 2;
  std::vector<float> rows = naive::randomVector(B * ld, 16);
  for (int64_t c = 0; c < ld; ++c)
    rows[ld + c] = rows[3 * ld + c] = kNaN; // inactive slots' rows are never read
  const std::vector<int32_t> positions = {0, -1, 7, std::numeric_limits<int32_t>::min()};
  std::vector<float> state(B * Sn, kSentinel), y(B * ldy, kSentinel);
  decode(m, rows, positions, state, y, ldy);
  for (int64_t b : {1, 3}) {
    for (int64_t e = 0; e < Sn; ++e)
      ASSERT_EQ(state[b * Sn + e], kSentinel);
    for (int64_t c = 0; c < D; ++c)
      ASSERT_EQ(y[b * ldy + c], 0.0f);
  }
  for (int64_t b : {0, 2})
    for (int64_t c = 0; c < D; ++c)
      ASSERT_TRUE(std::isfinite(y[b * ldy + c]));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t c = D; c < ldy; ++c)
      ASSERT_EQ(y[b * ldy + c], kSentinel) << "padding column written";

  const std::vector<float> before = state;
  const float negative[] = {0.1f, 0.1f, -1e-3f},
              inf[] = {std::numeric_limits<float>::infinity(), 0.1f, 0.1f};
  for (const float *bad : {negative, inf})
    EXPECT_THROW(lightningDecode(rows.data(), ld, B, m.H, m.dh, true, m.th(), positions.data(), bad,
                                 m.eps, state.data(), y.data(), ldy),
                 Error);
  EXPECT_EQ(0, std::memcmp(before.data(), state.data(), before.size() * sizeof(float)));
}

TEST(LightningRecurrent, SameBitsForAnyThreadCount) {
  const Mixer m = makeMixer(16, true, true, 17);
  const std::vector<int64_t> lens = {300, 0, 65, 1, 128, 17};
  const std::vector<int32_t> lengths(lens.begin(), lens.end());
  const int64_t B = static_cast<int64_t>(lens.size()), N = 300, D = m.D(), ld = ldOf(m);
  const std::vector<float> qkvu = pack(m, makeSequences(m, lens, 400), N, ld, lengths);
  const std::vector<float> rows = naive::randomVector(B * ld, 18);
  const std::vector<int32_t> positions = {300, -1, 65, 1, 128, 17};
  std::vector<float> ys[3], states[3], yd[3];
  const int saved = numThreads();
  for (int n = 1; n <= 3; ++n) {
    setNumThreads(n);
    std::vector<float> &state = states[n - 1], &y = ys[n - 1];
    state.assign(B * m.slotState(), kSentinel);
    y.assign(B * N * D, kSentinel);
    prefill(m, qkvu, B, N, lengths, 16, state, y, D);
    yd[n - 1].assign(B * D, kSentinel);
    decode(m, rows, positions, state, yd[n - 1], D);
  }
  setNumThreads(saved);
  for (int n = 1; n < 3; ++n) {
    EXPECT_EQ(0, std::memcmp(ys[0].data(), ys[n].data(), ys[0].size() * sizeof(float)))
        << "prefill y, " << n + 1 << " threads";
    EXPECT_EQ(0, std::memcmp(states[0].data(), states[n].data(), states[0].size() * sizeof(float)))
        << "state, " << n + 1 << " threads";
    EXPECT_EQ(0, std::memcmp(yd[0].data(), yd[n].data(), yd[0].size() * sizeof(float)))
        << "decode y, " << n + 1 << " threads";
  }
}

TEST(RecurrentGatherLastRows, PicksLastValidRowOrZeros) {
  const int64_t B = 3, N = 5, d = 4, ldx = 6, ldout = 5;
  const std::vector<float> x = naive::randomVector(B * N * ldx, 19);
  const std::vector<int32_t> lengths = {5, 0, 2};
  std::vector<float> out(B * ldout, kSentinel);
  gatherLastRows(x.data(), ldx, B, N, d, lengths.data(), out.data(), ldout);
  for (int64_t c = 0; c < d; ++c) {
    EXPECT_EQ(out[c], x[4 * ldx + c]);
    EXPECT_EQ(out[ldout + c], 0.0f);
    EXPECT_EQ(out[2 * ldout + c], x[(2 * N + 1) * ldx + c]);
  }
  for (int64_t b = 0; b < B; ++b)
    EXPECT_EQ(out[b * ldout + d], kSentinel);
  for (int32_t bad : {-1, 6}) {
    const std::vector<int32_t> lens = {1, 1, bad};
    try {
      gatherLastRows(x.data(), ldx, B, N, d, lens.data(), out.data(), ldout);
      ADD_FAILURE() << "length " << bad << " accepted";
    } catch (const Error &e) {
      EXPECT_NE(std::string(e.what()).find("slot 2"), std::string::npos) << e.what();
    }
  }
}

} // namespace
} // namespace tnlm::cpu
