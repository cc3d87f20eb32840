// Tests of the independent f64 reference model. Expected values are derived here by hand from
// docs/model.md, not by calling the code under test a second time.
#include "test/reference/ReferenceModel.h"

#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <random>
#include <stdexcept>

namespace tnlm::ref {
namespace {

std::vector<double> randomVector(size_t n, uint32_t seed, double lo = -1.0, double hi = 1.0) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<double> v(n);
  for (double &x : v)
    x = dist(gen);
  return v;
}

double maxAbs(const std::vector<double> &v) {
  double m = 0.0;
  for (double x : v)
    m = std::max(m, std::fabs(x));
  return m;
}

double maxAbsDiff(const std::vector<double> &a, const std::vector<double> &b, size_t count) {
  double m = 0.0;
  for (size_t i = 0; i < count; ++i)
    m = std::max(m, std::fabs(a[i] - b[i]));
  return m;
}

// ---- ALiBi slopes -------------------------------------------------------------------------

TEST(AlibiSlopes, PowersOfTwo) {
  auto s8 = alibiSlopes(8); // 2^(−8(h+1)/8) = 2^−(h+1)
  ASSERT_EQ(s8.size(), 8u);
  for (int h = 0; h < 8; ++h)
    EXPECT_DOUBLE_EQ(s8[h], std::ldexp(1.0, -(h + 1))) << h;
  EXPECT_EQ(s8[0], 0.5);

  auto s32 = alibiSlopes(32); // 2^−(h+1)/4
  ASSERT_EQ(s32.size(), 32u);
  for (int h = 0; h < 32; ++h)
    EXPECT_DOUBLE_EQ(s32[h], std::pow(2.0, -(h + 1) / 4.0)) << h;
  EXPECT_DOUBLE_EQ(s32[31], 1.0 / 256.0);

  auto s1 = alibiSlopes(1);
  ASSERT_EQ(s1.size(), 1u);
  EXPECT_DOUBLE_EQ(s1[0], 1.0 / 256.0);
}

TEST(AlibiSlopes, TwentyHeads) {
  auto s = alibiSlopes(20);
  ASSERT_EQ(s.size(), 20u);
  for (int h = 0; h < 16; ++h) // slopes(16): 2^−(h+1)/2
    EXPECT_DOUBLE_EQ(s[h], std::pow(2.0, -(h + 1) / 2.0)) << h;
  // slopes(32)[0::2][:4] = 2^−1/4, 2^−3/4, 2^−5/4, 2^−7/4
  EXPECT_DOUBLE_EQ(s[16], std::pow(2.0, -0.25));
  EXPECT_DOUBLE_EQ(s[17], std::pow(2.0, -0.75));
  EXPECT_DOUBLE_EQ(s[18], std::pow(2.0, -1.25));
  EXPECT_DOUBLE_EQ(s[19], std::pow(2.0, -1.75));
}

TEST(AlibiSlopes, FortyAndThreeHeads) {
  auto s = alibiSlopes(40);
  ASSERT_EQ(s.size(), 40u);
  for (int h = 0; h < 32; ++h) // slopes(32): 2^−(h+1)/4
    EXPECT_DOUBLE_EQ(s[h], std::pow(2.0, -(h + 1) / 4.0)) << h;
  for (int j = 0; j < 8; ++j) // slopes(64)[0::2][:8]: 2^−8(2j+1)/64 = 2^−(2j+1)/8
    EXPECT_DOUBLE_EQ(s[32 + j], std::pow(2.0, -(2 * j + 1) / 8.0)) << j;

  auto s3 = alibiSlopes(3); // slopes(2) = {2^−4, 2^−8}, then slopes(4)[0] = 2^−2
  ASSERT_EQ(s3.size(), 3u);
  EXPECT_DOUBLE_EQ(s3[0], 1.0 / 16.0);
  EXPECT_DOUBLE_EQ(s3[1], 1.0 / 256.0);
  EXPECT_DOUBLE_EQ(s3[2], 0.25);
  EXPECT_THROW(alibiSlopes(0), std::invalid_argument);
}

// ---- decay rates ---------------------------------------------------------------------------

TEST(DecayRate, FirstMiddleAndLastLayerInFloat) {
  const int H = 20, L = 32;
  for (int h = 0; h < H; ++h) {
    const float base = static_cast<float>(alibiSlopes(H)[h]);
    const float first = base * static_cast<float>(1.0 + 1e-5);
    const float last = base * static_cast<float>(1e-5); // 1 − 31/31 + 1e-5
    EXPECT_EQ(decayRate(H, h, 0, L), static_cast<double>(first)) << h;
    EXPECT_EQ(decayRate(H, h, L - 1, L), static_cast<double>(last)) << h;
    EXPECT_GT(decayRate(H, h, L - 1, L), 0.0);
  }
  // Middle of three layers: factor 1 − 1/2 + 1e-5.
  const float mid = static_cast<float>(alibiSlopes(8)[2]) * static_cast<float>(0.5 + 1e-5);
  EXPECT_EQ(decayRate(8, 2, 1, 3), static_cast<double>(mid));
  // Every rate is a float value (computed in f32).
  for (int l = 0; l < L; ++l) {
    double r = decayRate(H, 7, l, L);
    EXPECT_EQ(static_cast<double>(static_cast<float>(r)), r) << l;
  }
  // λ of the fastest head of the 3B model's first layer is about 0.43.
  EXPECT_NEAR(std::exp(-decayRate(20, 16, 0, 32)), 0.4305, 1e-3);
  // The slowest rate of a last layer gives λ within ~1e-7 of 1 but not 1.
  const double lamSlow = std::exp(-decayRate(32, 31, 29, 30));
  EXPECT_LT(lamSlow, 1.0);
  EXPECT_GT(lamSlow, 1.0 - 1e-6);
}

TEST(DecayRate, SingleLayerUsesFactorOnePlusEps) {
  for (int h = 0; h < 4; ++h) {
    const float base = static_cast<float>(alibiSlopes(4)[h]);
    EXPECT_EQ(decayRate(4, h, 0, 1), static_cast<double>(base * static_cast<float>(1.00001)));
  }
  EXPECT_THROW(decayRate(4, 4, 0, 1), std::invalid_argument);
  EXPECT_THROW(decayRate(4, 0, 1, 1), std::invalid_argument);
  auto all = layerDecayRates(3, 1, 3);
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[2], decayRate(3, 2, 1, 3));
}

// ---- SRMSNorm ------------------------------------------------------------------------------

TEST(SrmsNorm, EpsilonInsideTheRoot) {
  // Rows: zeros; a tiny constant (eps dominates); a normal row; a huge row.
  std::vector<double> x = {0, 0, 0, 0, 1e-3, 1e-3, 1e-3, 1e-3, 1, -2, 3, -4, 1e6, 0, 0, 0};
  srmsNorm(x, 4, 4, 1e-6);
  for (int c = 0; c < 4; ++c)
    EXPECT_EQ(x[c], 0.0);
  for (int c = 4; c < 8; ++c) // 1e-3 / sqrt(1e-6 + 1e-6) = 1/sqrt(2)
    EXPECT_NEAR(x[c], 1.0 / std::sqrt(2.0), 1e-12);
  const double rms = std::sqrt((1.0 + 4 + 9 + 16) / 4.0 + 1e-6);
  EXPECT_NEAR(x[8], 1.0 / rms, 1e-15);
  EXPECT_NEAR(x[11], -4.0 / rms, 1e-15);
  EXPECT_NEAR(x[12], 2.0, 1e-12); // 1e6 / sqrt(1e12 / 4 + 1e-6)
  EXPECT_EQ(x[13], 0.0);

  std::vector<double> y = {1e-3, 1e-3};
  srmsNorm(y, 1, 2, 0.0); // without eps a constant row maps to 1
  EXPECT_NEAR(y[0], 1.0, 1e-15);
  EXPECT_THROW(srmsNorm(y, 2, 2, 1e-6), std::invalid_argument);
}

// ---- attention -----------------------------------------------------------------------------

TEST(Attention, RecurrentEqualsDense) {
  const int64_t N = 41, H = 3, dk = 6, dv = 4;
  const auto q = randomVector(N * H * dk, 1), k = randomVector(N * H * dk, 2),
             v = randomVector(N * H * dv, 3);
  // λ ≈ 0.43, λ = 1 − 1e-5, and one in between.
  const std::vector<double> decay = {-std::log(0.43), -std::log1p(-1e-5), 0.05};
  const auto rec = attentionRecurrent(q, k, v, N, H, dk, dv, decay);
  const auto den = attentionDense(q, k, v, N, H, dk, dv, decay);
  ASSERT_EQ(rec.size(), static_cast<size_t>(N * H * dv));
  ASSERT_EQ(den.size(), rec.size());
  EXPECT_LT(maxAbsDiff(rec, den, rec.size()), 1e-12 * std::max(1.0, maxAbs(den)));
  // The decay matters: a different λ for head 0 changes head 0 but not head 1.
  auto decay2 = decay;
  decay2[0] = 1.5;
  const auto other = attentionRecurrent(q, k, v, N, H, dk, dv, decay2);
  const size_t last0 = static_cast<size_t>(((N - 1) * H + 0) * dv);
  const size_t last1 = static_cast<size_t>(((N - 1) * H + 1) * dv);
  EXPECT_GT(std::fabs(other[last0] - rec[last0]), 1e-6);
  EXPECT_EQ(other[last1], rec[last1]);
  EXPECT_THROW(attentionRecurrent(q, k, v, N, H, dk, dv, {0.1}), std::invalid_argument);
}

TEST(Attention, TwoStepsByHand) {
  // One head, dk = 2, dv = 1: o0 = (q0·k0) v0, o1 = λ (q1·k0) v0 + (q1·k1) v1.
  const std::vector<double> q = {1, 2, 3, -1}, k = {0.5, 1, 2, 2}, v = {4, -3};
  const double lam = 0.7;
  const auto o = attentionRecurrent(q, k, v, 2, 1, 2, 1, {-std::log(lam)});
  EXPECT_NEAR(o[0], (0.5 + 2) * 4, 1e-14);
  EXPECT_NEAR(o[1], lam * (1.5 - 1) * 4 + (6 - 2) * -3, 1e-14);
}

// ---- LRPE ----------------------------------------------------------------------------------

TEST(Lrpe, LayoutAndRelativeProperty) {
  const int64_t N = 9, H = 2, dh = 5, offset = 7;
  const auto q = randomVector(N * H * dh, 11), k = randomVector(N * H * dh, 12);
  const auto theta = randomVector(H * dh, 13, 0.0, 1.0);
  const auto qp = lrpe(q, N, H, dh, theta, offset), kp = lrpe(k, N, H, dh, theta, offset);
  ASSERT_EQ(qp.size(), static_cast<size_t>(N * H * 2 * dh));
  // Layout: row (t, h) = concat(x cos(θ_h p), x sin(θ_h p)), p = t + offset.
  const int64_t t = 3, h = 1, c = 2;
  const double ang = theta[h * dh + c] * (t + offset);
  EXPECT_NEAR(qp[(t * H + h) * 2 * dh + c], q[(t * H + h) * dh + c] * std::cos(ang), 1e-15);
  EXPECT_NEAR(qp[(t * H + h) * 2 * dh + dh + c], q[(t * H + h) * dh + c] * std::sin(ang), 1e-15);
  // q'_s · k'_t = Σ_c q_c k_c cos(θ_c (s − t)), whatever the offset.
  for (int64_t s = 0; s < N; ++s)
    for (int64_t u = 0; u < N; ++u)
      for (int64_t hh = 0; hh < H; ++hh) {
        double lhs = 0.0, rhs = 0.0;
        for (int64_t i = 0; i < 2 * dh; ++i)
          lhs += qp[(s * H + hh) * 2 * dh + i] * kp[(u * H + hh) * 2 * dh + i];
        for (int64_t i = 0; i < dh; ++i)
          rhs += q[(s * H + hh) * dh + i] * k[(u * H + hh) * dh + i] *
                 std::cos(theta[hh * dh + i] * static_cast<double>(s - u));
        EXPECT_NEAR(lhs, rhs, 1e-13) << s << " " << u << " " << hh;
      }
  // The offset does change the encoded vectors themselves.
  const auto q0 = lrpe(q, N, H, dh, theta, 0);
  EXPECT_GT(maxAbsDiff(q0, qp, qp.size()), 1e-3);
}

// ---- whole model ---------------------------------------------------------------------------

Config smallConfig(bool tied, bool scale) {
  Config c;
  c.vocab = 17;
  c.d = 12;
  c.layers = 3;
  c.heads = 3;
  c.hidden = 12;
  c.glu = 20;
  c.scaleEmbedding = scale;
  c.tied = tied;
  c.lrpe = {true, false, false};
  return c;
}

const std::vector<int32_t> kIds = {1, 5, 16, 3, 3, 9, 0, 12, 7, 2, 11, 4, 15, 8};

TEST(Model, SmallModelVariantsAreFiniteAndCausal) {
  for (bool tied : {true, false})
    for (bool scale : {true, false}) {
      SCOPED_TRACE(testing::Message() << "tied=" << tied << " scale=" << scale);
      const Config cfg = smallConfig(tied, scale);
      const Weights w = randomWeights(cfg, 42, 0.2);
      EXPECT_EQ(w.count("lm_head.weight"), tied ? 0u : 1u);
      EXPECT_EQ(w.count("model.layers.0.token_mixer.lrpe.theta"), 1u);
      EXPECT_EQ(w.count("model.layers.1.token_mixer.lrpe.theta"), 0u);
      const auto full = logits(cfg, w, kIds);
      ASSERT_EQ(full.size(), kIds.size() * 17);
      for (double x : full)
        ASSERT_TRUE(std::isfinite(x));
      EXPECT_GT(maxAbs(full), 1e-3);
      // Causality: the first m rows equal the logits of the m-token prefix.
      for (size_t m : {size_t(1), size_t(5), kIds.size() - 1}) {
        std::vector<int32_t> prefix(kIds.begin(), kIds.begin() + static_cast<long>(m));
        EXPECT_LT(maxAbsDiff(logits(cfg, w, prefix), full, m * 17), 1e-12) << m;
      }
      // ...and the context is used: changing token 0 moves the last row.
      auto changed = kIds;
      changed[0] = 6;
      const auto other = logits(cfg, w, changed);
      double lastDiff = 0.0;
      for (size_t i = full.size() - 17; i < full.size(); ++i)
        lastDiff = std::max(lastDiff, std::fabs(other[i] - full[i]));
      EXPECT_GT(lastDiff, 1e-6);
    }
}

TEST(Model, OptionsChangeTheResult) {
  const Config base = smallConfig(true, true);
  const Weights w = randomWeights(base, 7, 0.2);
  const auto ref = logits(base, w, kIds);
  auto differs = [&](const Config &c, const Weights &ww) {
    return maxAbsDiff(logits(c, ww, kIds), ref, ref.size()) > 1e-6;
  };
  Config noScale = base;
  noScale.scaleEmbedding = false;
  EXPECT_TRUE(differs(noScale, w));
  Config noLrpe = base;
  noLrpe.lrpe = {false, false, false};
  EXPECT_TRUE(differs(noLrpe, w)); // theta is then simply not read
  Config identity = base;
  identity.silu = false;
  EXPECT_TRUE(differs(identity, w));
  // An untied head equal to the embedding gives the same logits; another head does not.
  Config untied = base;
  untied.tied = false;
  Weights wu = w;
  wu["lm_head.weight"] = w.at("model.embed_tokens.weight");
  EXPECT_FALSE(differs(untied, wu));
  wu["lm_head.weight"][5] += 0.5;
  EXPECT_TRUE(differs(untied, wu));
}

TEST(Model, PositionOffset) {
  const Config cfg = smallConfig(false, true);
  const Weights w = randomWeights(cfg, 3, 0.2);
  const auto full = logits(cfg, w, kIds);
  // LRPE is a relative encoding (q'_s·k'_t depends on s − t only), so a uniform shift of all
  // positions leaves the logits unchanged up to rounding.
  EXPECT_LT(maxAbsDiff(logits(cfg, w, kIds, 13), full, full.size()), 1e-10);
  // Continuing at offset k WITHOUT the earlier tokens is not the same as the full run: the
  // attention state of the first k tokens is missing.
  const size_t k = 4;
  std::vector<int32_t> tail(kIds.begin() + k, kIds.end());
  const auto cont = logits(cfg, w, tail, static_cast<int64_t>(k));
  std::vector<double> fullTail(full.begin() + static_cast<long>(k * 17), full.end());
  EXPECT_GT(maxAbsDiff(cont, fullTail, cont.size()), 1e-6);
}

TEST(Model, LossIsMeanNegativeLogSoftmax) {
  const Config cfg = smallConfig(true, false);
  const Weights w = randomWeights(cfg, 5, 0.2);
  const auto lg = logits(cfg, w, kIds);
  double total = 0.0;
  for (size_t t = 0; t + 1 < kIds.size(); ++t) {
    double z = 0.0;
    for (int c = 0; c < 17; ++c)
      z += std::exp(lg[t * 17 + c]);
    total += -std::log(std::exp(lg[t * 17 + kIds[t + 1]]) / z);
  }
  const double expected = total / static_cast<double>(kIds.size() - 1);
  EXPECT_NEAR(loss(cfg, w, kIds), expected, 1e-12);
  EXPECT_GT(expected, 0.0);
  EXPECT_THROW(loss(cfg, w, {1}), std::invalid_argument);
}

// d = D = 2, H = 2 (dh = 1), F = 1, V = 3, SiLU, tied, no scale; two tokens. With two heads of
// width 1 this pins the per-head decay and the ONE norm over all D features.
const std::vector<double> kE = {0, 0, 1, 2, -1, 0.5};
const std::vector<double> kWqkvu = {1, 0, 0.5, -1, 2, 1, 0, 1, 1, 1, -1, 3, 0.3, 0.2, 1, -2};
const std::vector<double> kWo = {1, -0.5, 0.25, 2}, kW1 = {1, 2}, kW2 = {-1, 0.5},
                          kW3 = {0.7, -1.1};

Config tinyConfig(int64_t layers) {
  Config cfg;
  cfg.vocab = 3;
  cfg.d = 2;
  cfg.layers = layers;
  cfg.heads = 2;
  cfg.hidden = 2;
  cfg.glu = 1;
  cfg.scaleEmbedding = false;
  return cfg;
}

// Weights whose last layer is the hand-checked one; earlier layers are identities (zero
// out_proj and l3, so both residual branches add nothing).
Weights tinyWeights(int64_t layers) {
  Weights w;
  w["model.embed_tokens.weight"] = kE;
  for (int64_t l = 0; l < layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const bool last = l + 1 == layers;
    w[p + "token_mixer.qkvu_proj.weight"] = kWqkvu;
    w[p + "token_mixer.out_proj.weight"] = last ? kWo : std::vector<double>(4, 0.0);
    w[p + "channel_mixer.l1.weight"] = kW1;
    w[p + "channel_mixer.l2.weight"] = kW2;
    w[p + "channel_mixer.l3.weight"] = last ? kW3 : std::vector<double>(2, 0.0);
  }
  return w;
}

// Logits [2, 3] of ids {1, 2} through the hand-checked layer with decay factor `factor`.
std::vector<double> tinyByHand(float factor) {
  using V2 = std::array<double, 2>;
  auto norm = [](V2 a) {
    const double r = 1.0 / std::sqrt((a[0] * a[0] + a[1] * a[1]) / 2.0 + 1e-6);
    return V2{a[0] * r, a[1] * r};
  };
  // Block r of Wqkvu (rows 2r, 2r+1) applied to y: component h belongs to head h.
  auto block = [](int r, V2 y) {
    return V2{kWqkvu[4 * r] * y[0] + kWqkvu[4 * r + 1] * y[1],
              kWqkvu[4 * r + 2] * y[0] + kWqkvu[4 * r + 3] * y[1]};
  };
  auto sig = [](V2 a) { return V2{a[0] / (1 + std::exp(-a[0])), a[1] / (1 + std::exp(-a[1]))}; };
  auto dot = [](V2 a, V2 b) { return a[0] * b[0] + a[1] * b[1]; };
  // H = 2: slopes 2^−4, 2^−8, times the layer factor, in float.
  const double lam[2] = {std::exp(-static_cast<double>(0.0625f * factor)),
                         std::exp(-static_cast<double>(0.00390625f * factor))};
  const int ids[2] = {1, 2};
  V2 x[2], q[2], k[2], v[2], u[2], o[2];
  for (int t = 0; t < 2; ++t) {
    x[t] = V2{kE[2 * ids[t]], kE[2 * ids[t] + 1]};
    const V2 y = norm(x[t]);
    q[t] = sig(block(0, y)); // rows 0..1 of Wqkvu
    k[t] = sig(block(1, y)); // rows 2..3
    v[t] = block(2, y);      // rows 4..5
    u[t] = block(3, y);      // rows 6..7
  }
  for (int h = 0; h < 2; ++h) {
    o[0][h] = q[0][h] * k[0][h] * v[0][h];
    o[1][h] = lam[h] * q[1][h] * k[0][h] * v[0][h] + q[1][h] * k[1][h] * v[1][h];
  }
  std::vector<double> out;
  for (int t = 0; t < 2; ++t) {
    V2 g = norm(o[t]); // over both heads together
    g = V2{g[0] * u[t][0], g[1] * u[t][1]};
    x[t] = V2{x[t][0] + kWo[0] * g[0] + kWo[1] * g[1], x[t][1] + kWo[2] * g[0] + kWo[3] * g[1]};
    const V2 y = norm(x[t]);
    const double s = dot(V2{kW1[0], kW1[1]}, y) * dot(V2{kW2[0], kW2[1]}, y);
    x[t] = norm(V2{x[t][0] + kW3[0] * s, x[t][1] + kW3[1] * s});
    for (int c = 0; c < 3; ++c)
      out.push_back(dot(V2{kE[2 * c], kE[2 * c + 1]}, x[t]));
  }
  return out;
}

TEST(Model, TinyModelByHand) {
  // L = 1: factor 1 + 1e-5.
  const auto got = logits(tinyConfig(1), tinyWeights(1), {1, 2});
  const auto want = tinyByHand(static_cast<float>(1.00001));
  ASSERT_EQ(got.size(), 6u);
  for (size_t i = 0; i < 6; ++i)
    EXPECT_NEAR(got[i], want[i], 1e-12) << i;
}

TEST(Model, LastLayerUsesItsOwnDecay) {
  // L = 2 with an identity layer 0: layer 1 runs with factor 1 − 1/1 + 1e-5.
  const auto got = logits(tinyConfig(2), tinyWeights(2), {1, 2});
  const auto want = tinyByHand(static_cast<float>(1e-5));
  const auto wrong = tinyByHand(static_cast<float>(1.00001));
  for (size_t i = 0; i < 6; ++i)
    EXPECT_NEAR(got[i], want[i], 1e-12) << i;
  EXPECT_GT(maxAbsDiff(want, wrong, 6), 1e-6); // the factor is visible in the logits
}

TEST(Model, ValidationRejectsBadWeights) {
  const Config cfg = smallConfig(false, true);
  Weights w = randomWeights(cfg, 1);
  EXPECT_NO_THROW(validate(cfg, w));
  Weights missing = w;
  missing.erase("lm_head.weight");
  EXPECT_THROW(logits(cfg, missing, kIds), std::invalid_argument);
  Weights wrong = w;
  wrong["model.layers.2.channel_mixer.l3.weight"].pop_back();
  EXPECT_THROW(validate(cfg, wrong), std::invalid_argument);
  EXPECT_THROW(logits(cfg, w, {1, 17}), std::invalid_argument);
  // Padding row of the generated embedding is zero; θ follows 10000^(−2i/D).
  EXPECT_EQ(maxAbsDiff(w.at("model.embed_tokens.weight"), std::vector<double>(12, 0.0), 12), 0.0);
  const auto &theta = w.at("model.layers.0.token_mixer.lrpe.theta");
  ASSERT_EQ(theta.size(), 12u);
  EXPECT_DOUBLE_EQ(theta[0], 1.0);
  EXPECT_DOUBLE_EQ(theta[6], std::pow(10000.0, -1.0));
}

} // namespace
} // namespace tnlm::ref
