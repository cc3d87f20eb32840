//===- AttentionTest.cpp - decayed linear attention kernels vs f64 loops ---===//
//
// Error bounds (u = 2^-24, "abs" = the reference sum over absolute values, Naive.h):
// - Recurrence: each step rounds S once to f32 (λS + kv is exact-ish in f64); an error made
//   at step s reaches step t decayed by λ^{t−s}, so |ΔS_t| <= (t+1)·u·|S_t|abs, and the f64
//   product q·S adds one final rounding: |Δo_t| <= (t+2)·u·abs  →  tolerance (N+2)·u·abs.
// - Lightning, block m <= Bk, T blocks: intra part ((QKᵀ)⊙M)V is a dk-term dot, two
//   roundings (decay factor, product) and an m-term sum: (dk+m+2)·u. The state takes T
//   sgemm updates of m+1 terms with rounded weights, (m+4)·u each, errors adding up:
//   (N+Bk+4T)·u; then Λ-scaling and the dk-term product Q·KV: +(dk+4)·u.
//   Together <= (dk + N + 2Bk + 4T + 16)·u·abs.
// These are worst-case bounds; a wrong decay exponent still shows, because one head always
// has slope 0.05 or more, where an off-by-one in λ's power is a >= 5 % change.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Kernels.h"
#include "test/unit/cpu/Naive.h"

#include "runtime/Error.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <tuple>

namespace tnlm::cpu {
namespace {

using naive::kU;

constexpr float kSentinel = 12345.0f;

// q, k, v as column blocks of one fused [B·N, ld] buffer (ld padded), as a qkvu projection
// output is read in place.
struct Fused {
  int64_t B, N, H, dk, dv, ld;
  std::vector<float> buf;
  const float *q() const { return buf.data(); }
  const float *k() const { return buf.data() + H * dk; }
  const float *v() const { return buf.data() + 2 * H * dk; }
};

Fused makeFused(int64_t B, int64_t N, int64_t H, int64_t dk, int64_t dv, uint32_t seed) {
  int64_t ld = 2 * H * dk + H * dv + 7;
  return {B, N, H, dk, dv, ld, naive::randomVector(B * N * ld, seed)};
}

// Checks o (ld ldo) against ref within factor·u·abs (+ a 1e-30 floor for exact zeros) and
// that the padding columns past H·dv still hold the sentinel.
void expectWithinBound(const std::vector<float> &o, int64_t ldo, const naive::Attention &ref,
                       int64_t rows, int64_t width, double factor, const std::string &what) {
  int failures = 0;
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < width; ++j) {
      double got = o[r * ldo + j], want = ref.o[r * width + j];
      double tol = factor * kU * ref.abs[r * width + j] + 1e-30;
      double err = std::fabs(got - want);
      if (!(err <= tol) && failures++ < 5)
        ADD_FAILURE() << what << ": row " << r << " col " << j << " got " << got << " want " << want
                      << " (tolerance " << tol << ")";
      worst = std::max(worst, err / tol);
    }
    for (int64_t j = width; j < ldo; ++j)
      if (o[r * ldo + j] != kSentinel && failures++ < 5)
        ADD_FAILURE() << what << ": padding column " << j << " of row " << r << " written";
  }
  EXPECT_EQ(failures, 0) << what << ": worst error / tolerance = " << worst;
}

double lightningFactor(int64_t N, int64_t dk, int64_t block) {
  int64_t Bk = std::min(block, N);
  int64_t T = (N + Bk - 1) / Bk;
  return static_cast<double>(dk + N + 2 * Bk + 4 * T + 16);
}

double recurrentFactor(int64_t N) { return static_cast<double>(N + 2); }

TEST(DecayLinearAttentionRecurrent, MatchesDenseMaskedFormula) {
  // One head per regime: fast decay, λ = 1 − 1e-5, λ rounding to 1 in f32, moderate, none.
  const float slopes[] = {0.85f, 1e-5f, 4e-8f, 0.05f, 0.0f};
  const int64_t B = 2, N = 70, H = 5, dk = 24, dv = 12;
  Fused f = makeFused(B, N, H, dk, dv, 7);
  int64_t ldo = H * dv + 3;
  std::vector<float> o(B * N * ldo, kSentinel);
  decayLinearAttentionRecurrent(f.q(), f.k(), f.v(), B, N, H, dk, dv, f.ld, f.ld, f.ld, slopes,
                                o.data(), ldo);
  naive::Attention ref =
      naive::denseDecayAttention(f.q(), f.k(), f.v(), B, N, H, dk, dv, f.ld, f.ld, f.ld, slopes);
  expectWithinBound(o, ldo, ref, B * N, H * dv, recurrentFactor(N), "recurrent");
}

// Impulse response of the recurrence (see the Lightning test below): o_t = 1.5·λ^t within
// (t+2)·u relative. With slope 4e-8 an f32 state cannot decay below one ulp per step, so
// the error grows like t·4e-8, which this bound allows; the Lightning kernel does better.
TEST(DecayLinearAttentionRecurrent, ImpulseResponse) {
  const float slopes[] = {0.01f, 4e-8f};
  const int64_t N = 3000, H = 2, dk = 2, dv = 1, ld = H * (2 * dk + dv);
  std::vector<float> qkv(N * ld, 0.0f);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t h = 0; h < H; ++h) {
      qkv[t * ld + h * dk] = 1.0f;
      qkv[t * ld + h * dk + 1] = 0.5f;
    }
  for (int64_t h = 0; h < H; ++h) {
    qkv[H * dk + h * dk] = qkv[H * dk + h * dk + 1] = 1.0f;
    qkv[2 * H * dk + h] = 1.0f;
  }
  std::vector<float> o(N * H);
  decayLinearAttentionRecurrent(qkv.data(), qkv.data() + H * dk, qkv.data() + 2 * H * dk, 1, N, H,
                                dk, dv, ld, ld, ld, slopes, o.data(), H);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t h = 0; h < H; ++h) {
      double want = 1.5 * std::exp(-static_cast<double>(slopes[h]) * t);
      ASSERT_NEAR(o[t * H + h], want, (t + 2) * kU * want) << "head " << h << " t " << t;
    }
}

TEST(DecayLinearAttentionRecurrent, InitialAndFinalState) {
  const float slopes[] = {0.3f, 1e-5f};
  const int64_t B = 2, N = 19, H = 2, dk = 8, dv = 6;
  Fused f = makeFused(B, N, H, dk, dv, 11);
  std::vector<float> s0 = naive::randomVector(B * H * dk * dv, 12);
  std::vector<float> state = s0;
  std::vector<float> o(B * N * H * dv);
  decayLinearAttentionRecurrent(f.q(), f.k(), f.v(), B, N, H, dk, dv, f.ld, f.ld, f.ld, slopes,
                                o.data(), H * dv, state.data());
  naive::Attention ref = naive::denseDecayAttention(f.q(), f.k(), f.v(), B, N, H, dk, dv, f.ld,
                                                    f.ld, f.ld, slopes, s0.data());
  expectWithinBound(o, H * dv, ref, B * N, H * dv, recurrentFactor(N), "recurrent with S0");
  std::vector<double> want =
      naive::denseFinalState(f.k(), f.v(), B, N, H, dk, dv, f.ld, f.ld, slopes, s0.data());
  for (size_t e = 0; e < want.size(); ++e)
    EXPECT_NEAR(state[e], want[e], (N + 2) * kU * (N + 1.0)) << "entry " << e;
}

// The required grid: lengths 1, Bk−1, Bk, Bk+1, 5Bk+3 for block sizes 16…128, dk = 2·dv (as
// with LRPE), one head per decay regime, checked against both the recurrence and the dense
// formula.
class LightningGrid : public ::testing::TestWithParam<std::tuple<int64_t, int>> {};

TEST_P(LightningGrid, MatchesRecurrenceAndDense) {
  const int64_t block = std::get<0>(GetParam());
  const int64_t lengths[] = {1, block - 1, block, block + 1, 5 * block + 3};
  const int64_t N = lengths[std::get<1>(GetParam())];
  const float slopes[] = {0.85f, 1e-5f, 4e-8f, 0.05f};
  const int64_t B = 2, H = 4, dv = 16, dk = 2 * dv;
  Fused f = makeFused(B, N, H, dk, dv, static_cast<uint32_t>(block * 1000 + N));
  int64_t ldo = H * dv + 5;
  std::vector<float> light(B * N * ldo, kSentinel), rec(B * N * ldo, kSentinel);
  lightningAttention(f.q(), f.k(), f.v(), B, N, H, dk, dv, f.ld, f.ld, f.ld, slopes, light.data(),
                     ldo, block);
  decayLinearAttentionRecurrent(f.q(), f.k(), f.v(), B, N, H, dk, dv, f.ld, f.ld, f.ld, slopes,
                                rec.data(), ldo);
  naive::Attention dense =
      naive::denseDecayAttention(f.q(), f.k(), f.v(), B, N, H, dk, dv, f.ld, f.ld, f.ld, slopes);
  std::string tag = "N=" + std::to_string(N) + " block=" + std::to_string(block);
  expectWithinBound(light, ldo, dense, B * N, H * dv, lightningFactor(N, dk, block),
                    "lightning vs dense, " + tag);
  // Lightning vs recurrence: both bounds together, measured around the recurrence output.
  naive::Attention recAsRef = dense;
  for (int64_t r = 0; r < B * N; ++r)
    for (int64_t j = 0; j < H * dv; ++j)
      recAsRef.o[r * H * dv + j] = rec[r * ldo + j];
  expectWithinBound(light, ldo, recAsRef, B * N, H * dv,
                    lightningFactor(N, dk, block) + recurrentFactor(N),
                    "lightning vs recurrence, " + tag);
}

INSTANTIATE_TEST_SUITE_P(BlocksAndLengths, LightningGrid,
                         ::testing::Combine(::testing::Values(16, 32, 64, 128),
                                            ::testing::Range(0, 5)));

// One key/value at t = 0, then silence: o_t = (q·k0) v0 λ^t exactly, so the decay powers are
// seen without any other rounding. Over 10^5 tokens slope 4e-8 decays by 0.4 %, which an f32
// λ (= 1 − 2^-24) would turn into 0.6 %; slope 0.85 underflows, which a λ^{−t} formulation
// turns into inf·0 = NaN. Relative error after n state updates: each multiplies by one
// rounded λ^m (u) and the output adds a few roundings: (2n + 8)·u.
TEST(LightningAttention, ImpulseResponseOverLongSequence) {
  const float slopes[] = {0.85f, 1e-5f, 4e-8f};
  const int64_t N = 100003, H = 3, dk = 2, dv = 1, ld = H * (2 * dk + dv);
  std::vector<float> qkv(N * ld, 0.0f);
  for (int64_t t = 0; t < N; ++t)
    for (int64_t h = 0; h < H; ++h) {
      qkv[t * ld + h * dk] = 1.0f; // q = (1, 0.5)
      qkv[t * ld + h * dk + 1] = 0.5f;
    }
  for (int64_t h = 0; h < H; ++h) {
    qkv[H * dk + h * dk] = qkv[H * dk + h * dk + 1] = 1.0f; // k0 = (1, 1)
    qkv[2 * H * dk + h] = 1.0f;                             // v0 = 1
  }
  for (int64_t block : {64, 128}) {
    std::vector<float> o(N * H);
    lightningAttention(qkv.data(), qkv.data() + H * dk, qkv.data() + 2 * H * dk, 1, N, H, dk, dv,
                       ld, ld, ld, slopes, o.data(), H, block);
    int failures = 0;
    for (int64_t t = 0; t < N; ++t)
      for (int64_t h = 0; h < H; ++h) {
        double want = 1.5 * std::exp(-static_cast<double>(slopes[h]) * t);
        double tol = (2.0 * (t / block) + 8) * kU * want + 1e-36; // floor: FLT_MIN flush
        if (!(std::fabs(o[t * H + h] - want) <= tol) && failures++ < 5)
          ADD_FAILURE() << "block " << block << " head " << h << " t " << t << ": got "
                        << o[t * H + h] << " want " << want;
      }
    EXPECT_EQ(failures, 0);
    // The slope-4e-8 head really decays: 1.5·exp(−4e-3) at the end, not 1.5.
    EXPECT_LT(o[(N - 1) * H + 2], 1.5f * 0.997f);
  }
}

// Decode after prefill: Lightning over the prompt hands its KV to the recurrence, which then
// runs one token per call; all outputs and the final state must match the dense formula
// over the whole sequence. Also Lightning continuing from a given state.
TEST(LightningAttention, StateHandoffToRecurrentDecode) {
  const float slopes[] = {0.85f, 0.05f, 1e-5f};
  const int64_t B = 2, H = 3, dk = 16, dv = 8, prompt = 45, total = 61, block = 16;
  Fused f = makeFused(B, total, H, dk, dv, 21);
  naive::Attention dense = naive::denseDecayAttention(f.q(), f.k(), f.v(), B, total, H, dk, dv,
                                                      f.ld, f.ld, f.ld, slopes);
  std::vector<float> state(B * H * dk * dv, 0.0f);
  std::vector<float> o(B * total * H * dv, kSentinel);
  // Batch b's tokens are rows b·total + t; run each batch entry on its own (N differs).
  for (int64_t b = 0; b < B; ++b) {
    const int64_t row0 = b * total;
    float *sb = state.data() + b * H * dk * dv;
    lightningAttention(f.q() + row0 * f.ld, f.k() + row0 * f.ld, f.v() + row0 * f.ld, 1, prompt, H,
                       dk, dv, f.ld, f.ld, f.ld, slopes, o.data() + row0 * H * dv, H * dv, block,
                       sb);
    for (int64_t t = prompt; t < total; ++t) {
      const int64_t row = row0 + t;
      decayLinearAttentionRecurrent(f.q() + row * f.ld, f.k() + row * f.ld, f.v() + row * f.ld, 1,
                                    1, H, dk, dv, f.ld, f.ld, f.ld, slopes, o.data() + row * H * dv,
                                    H * dv, sb);
    }
  }
  expectWithinBound(o, H * dv, dense, B * total, H * dv,
                    lightningFactor(prompt, dk, block) + recurrentFactor(total),
                    "prefill + decode");
  std::vector<double> want =
      naive::denseFinalState(f.k(), f.v(), B, total, H, dk, dv, f.ld, f.ld, slopes);
  for (size_t e = 0; e < want.size(); ++e)
    EXPECT_NEAR(state[e], want[e], (2 * total + 48) * kU * (total + 1.0)) << "state entry " << e;

  // Lightning from a nonzero initial state, partial last block.
  std::vector<float> s0 = naive::randomVector(B * H * dk * dv, 22);
  std::vector<float> s = s0, o2(B * total * H * dv);
  lightningAttention(f.q(), f.k(), f.v(), B, total, H, dk, dv, f.ld, f.ld, f.ld, slopes, o2.data(),
                     H * dv, block, s.data());
  naive::Attention dense0 = naive::denseDecayAttention(f.q(), f.k(), f.v(), B, total, H, dk, dv,
                                                       f.ld, f.ld, f.ld, slopes, s0.data());
  expectWithinBound(o2, H * dv, dense0, B * total, H * dv, lightningFactor(total, dk, block),
                    "lightning with S0");
}

TEST(LightningAttention, SameBitsForAnyThreadCount) {
  const float slopes[] = {0.5f, 0.01f, 1e-5f};
  const int64_t B = 3, N = 150, H = 3, dk = 32, dv = 32;
  Fused f = makeFused(B, N, H, dk, dv, 31);
  std::vector<float> one(B * N * H * dv), two(B * N * H * dv);
  int saved = numThreads();
  setNumThreads(1);
  lightningAttention(f.q(), f.k(), f.v(), B, N, H, dk, dv, f.ld, f.ld, f.ld, slopes, one.data(),
                     H * dv, 64);
  setNumThreads(2);
  lightningAttention(f.q(), f.k(), f.v(), B, N, H, dk, dv, f.ld, f.ld, f.ld, slopes, two.data(),
                     H * dv, 64);
  setNumThreads(saved);
  EXPECT_EQ(0, std::memcmp(one.data(), two.data(), one.size() * sizeof(float)));
}

TEST(LightningAttention, RejectsBadSlopesAndBlock) {
  const int64_t N = 4, H = 1, d = 2;
  std::vector<float> x(N * d, 1.0f), o(N * d);
  const float negative[] = {-0.1f}, nan[] = {std::nanf("")}, good[] = {0.1f};
  EXPECT_THROW(lightningAttention(x.data(), x.data(), x.data(), 1, N, H, d, d, d, d, d, negative,
                                  o.data(), d, 16),
               tnlm::Error);
  EXPECT_THROW(decayLinearAttentionRecurrent(x.data(), x.data(), x.data(), 1, N, H, d, d, d, d, d,
                                             nan, o.data(), d),
               tnlm::Error);
  EXPECT_THROW(lightningAttention(x.data(), x.data(), x.data(), 1, N, H, d, d, d, d, d, good,
                                  o.data(), d, 0),
               tnlm::Error);
}

} // namespace
} // namespace tnlm::cpu
