//===- OptimizerStepTest.cpp - compiled @optimizer_step vs f64 formulas ---===//
//
// The compiled optimizer of the tiny model's CPU train artifact against an independent f64
// implementation of docs/model.md (§11: AdamW as torch.optim.AdamW, clip_grad_norm_, the LR
// schedule) and TnlmGradOps.td (tnlm.lr_schedule, tnlm.clip_scale, tnlm.global_norm), written
// from the formulas and sharing no code with the compiler or the runtime:
// - 10 optimizer steps with warmup + cosine, weight decay and clipping that bites on some
//   steps: params, AdamW moments, grad_norm, lr, zeroed gradients, the step counter;
// - LRPE θ gets no weight decay;
// - k accumulated micro-batches equal one k-times larger batch;
// - the learning-rate schedule at its corners, through the compiled "lr" output.
//
// The f64 side takes the gradients the artifact computed (the "grad/<param>" state before
// each @optimizer_step), so what is compared is the optimizer alone; its error bound is
// derived next to RefAdamW.
//
//===----------------------------------------------------------------------===//
#include "models/Import.h"
#include "runtime/CpuExecutor.h"
#include "runtime/schema/tnlm_generated.h"
#include "test/unit/ModelTestSupport.h"

#include "dialect/TnlmOps.h"
#include "mlir/IR/MLIRContext.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace {

namespace mt = mlir::tnlm;
namespace hp = tnlm::schema;

// Unit roundoff of f32 (round to nearest): every f32 operation is exact up to a factor
// (1 + δ), |δ| ≤ u.
constexpr double kU = 0x1p-24;

mt::ModelConfig tinyConfig() {
  mt::ConfigResult r = mt::loadModelConfig(std::string(TNLM_MODELS_DIR) + "/tiny.json");
  EXPECT_TRUE(r.config) << r.error;
  return *r.config;
}

// One train artifact of the tiny model per call shape, compiled once for all tests (the
// executors copy the parameters; the artifact is read-only).
const tnlm::Artifact &tinyArtifact(int64_t maxBatch, int64_t maxSeq) {
  static std::map<std::pair<int64_t, int64_t>, std::unique_ptr<tnlm::Artifact>> cache;
  auto &slot = cache[{maxBatch, maxSeq}];
  if (!slot) {
    mt::ModelConfig cfg = tinyConfig();
    mlir::MLIRContext ctx;
    auto module = mt::importModel(cfg, &ctx, "tiny.json");
    EXPECT_TRUE(module);
    slot = std::make_unique<tnlm::Artifact>(
        tnlm::testing::compileTrainCpu(*module, maxBatch, maxSeq, "tiny", /*blockSize=*/16));
  }
  return *slot;
}

std::vector<std::string> paramNames(const tnlm::Artifact &a) {
  std::vector<std::string> names;
  for (const auto *p : *a.root().params())
    names.push_back(p->name()->str());
  return names;
}

bool isTheta(const std::string &name) {
  const std::string suffix = ".lrpe.theta";
  return name.size() > suffix.size() &&
         name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The hyperparameter vector of @optimizer_step (tnlm.fbs HyperParam).
struct HyperParams {
  float lr = 1e-3f, minLr = 0.0f, warmup = 0.0f, totalSteps = 1.0f;
  float schedule = static_cast<float>(hp::LrScheduleKind_Cosine);
  float beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weightDecay = 0.0f, clip = 0.0f;
  float accum = 1.0f;

  std::array<float, hp::HyperParam_Count> vector() const {
    std::array<float, hp::HyperParam_Count> v{};
    v[hp::HyperParam_Lr] = lr;
    v[hp::HyperParam_MinLr] = minLr;
    v[hp::HyperParam_Warmup] = warmup;
    v[hp::HyperParam_TotalSteps] = totalSteps;
    v[hp::HyperParam_Schedule] = schedule;
    v[hp::HyperParam_Beta1] = beta1;
    v[hp::HyperParam_Beta2] = beta2;
    v[hp::HyperParam_Eps] = eps;
    v[hp::HyperParam_WeightDecay] = weightDecay;
    v[hp::HyperParam_ClipGrad] = clip;
    v[hp::HyperParam_AccumSteps] = accum;
    return v;
  }
};

// tnlm.lr_schedule for the 0-based step index s, in f64 from the (f32) hyperparameters.
double scheduledLr(const HyperParams &h, int64_t s) {
  const double lr = h.lr, minLr = h.minLr, w = h.warmup, total = h.totalSteps;
  if (static_cast<double>(s) < w)
    return lr * static_cast<double>(s + 1) / w;
  if (h.schedule != static_cast<float>(hp::LrScheduleKind_Cosine))
    return lr;
  const double progress = std::min(1.0, (static_cast<double>(s) - w) / std::max(1.0, total - w));
  return minLr + 0.5 * (lr - minLr) * (1.0 + std::cos(M_PI * progress));
}

struct Outputs {
  double gradNorm = 0, lr = 0;
};

Outputs optimizerStep(tnlm::CpuExecutor &exec, const HyperParams &h, int64_t batch, int64_t seq) {
  const auto v = h.vector();
  Outputs o;
  for (auto &[name, value] : exec.run("optimizer_step", {{"hparams", v.data()}}, batch, seq)) {
    if (name == "grad_norm")
      o.gradNorm = value.at(0);
    else if (name == "lr")
      o.lr = value.at(0);
  }
  return o;
}

double trainStep(tnlm::CpuExecutor &exec, const std::vector<int32_t> &ids,
                 const std::vector<int32_t> &labels, int64_t batch, int64_t seq) {
  auto out = exec.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, batch, seq);
  return out.at(0).second.at(0);
}

// A batch of `batch` windows of seq + 1 random tokens: ids = first seq, labels = next seq.
void randomBatch(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed,
                 std::vector<int32_t> &ids, std::vector<int32_t> &labels) {
  std::vector<int32_t> w = tnlm::testing::randomIds(batch * (seq + 1), vocab, seed);
  ids.clear();
  labels.clear();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < seq; ++t) {
      ids.push_back(w[b * (seq + 1) + t]);
      labels.push_back(w[b * (seq + 1) + t + 1]);
    }
}

std::vector<std::vector<float>> gradients(const tnlm::CpuExecutor &exec,
                                          const std::vector<std::string> &names) {
  std::vector<std::vector<float>> g;
  for (const std::string &n : names) {
    int64_t i = exec.stateIndex("grad/" + n);
    EXPECT_GE(i, 0) << n;
    g.push_back(exec.state().at(i));
  }
  return g;
}

// AdamW (torch.optim.AdamW) with clip_grad_norm_ and the LR schedule, in f64, from model.md
// §11 (the denominator in its sqrt(v/(1 − β2^t)) form):
//   n = sqrt(Σ g²)/k (g: the summed gradient of k micro-batches), c = min(1, clip/(n + 1e-6)),
//   ĝ = g·c/k;  p ← p·(1 − lr·wd) (not θ);  m ← β1·m + (1 − β1)·ĝ;  v ← β2·v + (1 − β2)·ĝ²;
//   p ← p − (lr/(1 − β1^t))·m/(sqrt(v/(1 − β2^t)) + eps),  t = s + 1.
//
// Alongside, a first-order running bound of |f32 artifact − f64| for every element, from
// the standard model (each f32 operation rounds its exact result by at most u relative;
// errors propagate linearly) applied to the update as an f32 kernel computes it:
//   ĝ = g·scale:     scale from the f32 norm (≤ u) through f32 c/k (≤ 2u), times g (≤ u):
//                    e_g = 4u·|ĝ|;
//   m (3 roundings: the difference, the product with f32(1 − β1), the sum; f32(1 − β1) itself
//   ≤ u):            e_m ← β1·e_m + (1 − β1)·e_g + u·(|m'| + 2·(1 − β1)·(|ĝ| + |m|));
//   v (all terms ≥ 0, 4 roundings incl. f32(1 − β2)):  e_v ← β2·e_v + (1 − β2)·2|ĝ|·e_g + 4u·v';
//   d = sqrt(v̂) + eps: sqrt halves v's relative error, plus sqrt, /sqrt(bc2), f32(sqrt(bc2))
//                    and + eps: e_d = min(e_v/(2·sqrt(v')), sqrt(e_v))/sqrt(bc2) + 4u·d;
//   Δ = (lr/bc1)·m/d: lr and f32(lr/bc1) (2u), the product and the quotient (2u):
//                    e_Δ = (lr/bc1)·(e_m + |m'|·(e_d/d + 4u))/d;
//   p ← p·f32(1 − lr·wd) + Δ: e_p ← e_p + 2u·|p| + e_Δ + u·|p'|.
// The tests allow twice that (second-order terms, and u·|x| on both sides of each
// rounding). It is a few ulps of |p| and of the step size per step, while a step moves p by
// about lr·|m̂|/(sqrt(v̂) + eps) ≈ lr: 10^3 to 10^5 times more (asserted in the 10-step test).
struct RefAdamW {
  std::vector<std::string> names;
  std::vector<std::vector<double>> p, m, v, ep, em, ev;

  RefAdamW(const std::vector<std::string> &names, const tnlm::ParamValues &values) : names(names) {
    for (const auto &t : values) {
      p.emplace_back(t.begin(), t.end());
      m.emplace_back(t.size(), 0.0);
      v.emplace_back(t.size(), 0.0);
      ep.emplace_back(t.size(), 0.0);
      em.emplace_back(t.size(), 0.0);
      ev.emplace_back(t.size(), 0.0);
    }
  }

  static double norm(const std::vector<std::vector<float>> &g, double k) {
    double sq = 0;
    for (const auto &t : g)
      for (float x : t)
        sq += static_cast<double>(x) * x;
    return std::sqrt(sq) / k;
  }

  // One optimizer step at step index s; returns (grad norm, lr) as the formulas give them.
  Outputs step(const HyperParams &h, int64_t s, const std::vector<std::vector<float>> &g) {
    const double k = h.accum, n = norm(g, k);
    const double c = h.clip > 0 ? std::min(1.0, h.clip / (n + 1e-6)) : 1.0;
    const double lr = scheduledLr(h, s);
    const double b1 = h.beta1, b2 = h.beta2, eps = h.eps, wd = h.weightDecay;
    const double t = static_cast<double>(s + 1);
    const double bc1 = 1.0 - std::pow(b1, t), bc2 = 1.0 - std::pow(b2, t);
    for (size_t i = 0; i < p.size(); ++i) {
      const bool decay = !isTheta(names[i]);
      for (size_t j = 0; j < p[i].size(); ++j) {
        const double gj = g[i][j] * c / k, m0 = m[i][j];
        const double p0 = decay ? p[i][j] * (1.0 - lr * wd) : p[i][j];
        const double mj = b1 * m0 + (1.0 - b1) * gj;
        const double vj = b2 * v[i][j] + (1.0 - b2) * gj * gj;
        const double d = std::sqrt(vj / bc2) + eps;
        const double delta = (lr / bc1) * mj / d;
        m[i][j] = mj;
        v[i][j] = vj;
        p[i][j] = p0 - delta;

        const double eg = 4 * kU * std::fabs(gj);
        em[i][j] = b1 * em[i][j] + (1 - b1) * eg +
                   kU * (std::fabs(mj) + 2 * (1 - b1) * (std::fabs(gj) + std::fabs(m0)));
        ev[i][j] = b2 * ev[i][j] + (1 - b2) * 2 * std::fabs(gj) * eg + 4 * kU * vj;
        const double ed =
            (vj > 0 ? std::min(ev[i][j] / (2 * std::sqrt(vj)), std::sqrt(ev[i][j])) : 0.0) /
                std::sqrt(bc2) +
            4 * kU * d;
        const double eDelta = (lr / bc1) * (em[i][j] + std::fabs(mj) * (ed / d + 4 * kU)) / d;
        ep[i][j] += 2 * kU * std::fabs(p0) + eDelta + kU * std::fabs(p[i][j]);
      }
    }
    return {n, lr};
  }
};

struct Mismatch {
  size_t count = 0;
  double worstRatio = 0; // max |got − want| / bound
  std::string where;
};

// Elementwise |got − want| ≤ 2·bound.
Mismatch compare(const std::string &what, const std::vector<float> &got,
                 const std::vector<double> &want, const std::vector<double> &bound) {
  Mismatch r;
  for (size_t j = 0; j < got.size(); ++j) {
    const double err = std::fabs(got[j] - want[j]), allowed = 2 * bound[j];
    const double ratio = allowed > 0 ? err / allowed : (err > 0 ? INFINITY : 0);
    if (ratio > r.worstRatio) {
      r.worstRatio = ratio;
      r.where = what + "[" + std::to_string(j) + "]: got " + std::to_string(got[j]) + ", want " +
                std::to_string(want[j]) + ", allowed " + std::to_string(allowed);
    }
    r.count += err > allowed;
  }
  return r;
}

TEST(OptimizerStep, TenStepsMatchTheF64FormulasWithWarmupCosineDecayAndClipping) {
  const int64_t batch = 2, seq = 24;
  const tnlm::Artifact &a = tinyArtifact(batch, 32);
  mt::ModelConfig cfg = tinyConfig();
  auto [values, refWeights] = tnlm::testing::weightsFor(a, cfg, /*seed=*/7, /*stddev=*/0.05);
  (void)refWeights;
  tnlm::CpuExecutor exec(a, values);
  const std::vector<std::string> names = paramNames(a);
  RefAdamW ref(names, exec.params());

  // Warmup over 3 steps, then cosine to min_lr at step 10; β2 and eps other than torch's
  // defaults, so that a kernel reading a default instead of hparams shows. The clip lies
  // inside the range of this run's grad norms (2.55 to 4.75), so steps 1, 5 and 9 are
  // clipped and the others are not (both asserted below).
  HyperParams h;
  h.lr = 1e-2f;
  h.minLr = 1e-3f;
  h.warmup = 3;
  h.totalSteps = 10;
  h.beta1 = 0.9f;
  h.beta2 = 0.95f;
  h.eps = 1e-6f;
  h.weightDecay = 0.1f;
  h.clip = 2.8f;

  int clipped = 0, unclipped = 0;
  for (int64_t s = 0; s < 10; ++s) {
    SCOPED_TRACE("optimizer step " + std::to_string(s));
    std::vector<int32_t> ids, labels;
    randomBatch(batch, seq, cfg.vocabSize, 100 + s, ids, labels);
    trainStep(exec, ids, labels, batch, seq);
    const std::vector<std::vector<float>> g = gradients(exec, names);
    const std::vector<std::vector<float>> before = exec.params();

    const Outputs got = optimizerStep(exec, h, batch, seq);
    const Outputs want = ref.step(h, s, g);
    (want.gradNorm > h.clip ? clipped : unclipped)++;

    // Both norms are f64 sums of the same f32 squares (orders differ by ~N·2^-53, N ≈ 10^5)
    // rounded once to f32 (≤ u/2); the lr is an f64 expression rounded once to f32.
    EXPECT_NEAR(got.gradNorm, want.gradNorm, kU * want.gradNorm);
    EXPECT_NEAR(got.lr, want.lr, kU * want.lr);
    EXPECT_EQ(exec.stepCounter(), s + 1);

    for (size_t i = 0; i < names.size(); ++i) {
      SCOPED_TRACE(names[i]);
      Mismatch mp = compare("param", exec.params()[i], ref.p[i], ref.ep[i]);
      EXPECT_EQ(mp.count, 0u) << mp.where;
      Mismatch mm = compare("adam_m", exec.state()[exec.stateIndex("adam_m/" + names[i])], ref.m[i],
                            ref.em[i]);
      EXPECT_EQ(mm.count, 0u) << mm.where;
      Mismatch mv = compare("adam_v", exec.state()[exec.stateIndex("adam_v/" + names[i])], ref.v[i],
                            ref.ev[i]);
      EXPECT_EQ(mv.count, 0u) << mv.where;
      // The test means something only if the step moved the parameters by far more than
      // the allowed error.
      double moved = 0, allowed = 0;
      for (size_t j = 0; j < before[i].size(); ++j) {
        moved = std::max(moved, std::fabs(static_cast<double>(exec.params()[i][j]) - before[i][j]));
        allowed = std::max(allowed, 2 * ref.ep[i][j]);
      }
      EXPECT_GT(moved, 100 * allowed);

      const std::vector<float> &zeroed = exec.state()[exec.stateIndex("grad/" + names[i])];
      EXPECT_TRUE(std::all_of(zeroed.begin(), zeroed.end(), [](float x) { return x == 0.0f; }))
          << "gradients are not zero after @optimizer_step";
    }
  }
  EXPECT_GT(clipped, 0) << "the clip never bit: lower h.clip";
  EXPECT_GT(unclipped, 0) << "every step was clipped: raise h.clip";
}

TEST(OptimizerStep, LrpeThetaGetsNoWeightDecay) {
  // With zero gradients (a fresh executor) m = v = 0 and the Adam step m/(sqrt(v̂) + eps) is
  // exactly 0, so one @optimizer_step is the decoupled weight decay alone:
  // p ← p·(1 − lr·wd) for every parameter except LRPE θ, which must keep its bits.
  const tnlm::Artifact &a = tinyArtifact(2, 32);
  auto [values, refWeights] = tnlm::testing::weightsFor(a, tinyConfig(), 3, 0.05);
  (void)refWeights;
  tnlm::CpuExecutor exec(a, values);
  const std::vector<std::string> names = paramNames(a);
  HyperParams h;
  h.lr = 0.05f;
  h.weightDecay = 0.2f; // 1 − lr·wd = 0.99: a change of ~10^5 ulps
  h.clip = 1.0f;
  const tnlm::ParamValues before = exec.params();
  const Outputs out = optimizerStep(exec, h, 1, 1);
  ASSERT_EQ(out.gradNorm, 0.0);
  const double factor = 1.0 - out.lr * static_cast<double>(h.weightDecay);

  int thetas = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    SCOPED_TRACE(names[i]);
    const std::vector<float> &p = exec.params()[i];
    for (size_t j = 0; j < p.size(); ++j) {
      if (isTheta(names[i])) {
        ASSERT_EQ(p[j], before[i][j]) << "θ was decayed at " << j;
        continue;
      }
      // One f32 product with the rounded factor: ≤ 2u relative.
      const double want = before[i][j] * factor;
      ASSERT_NEAR(p[j], want, 2 * kU * std::fabs(want)) << j;
    }
    thetas += isTheta(names[i]);
  }
  EXPECT_EQ(thetas, 1) << "tiny.json has LRPE in layer 0 only";
}

TEST(OptimizerStep, AccumulatedMicroBatchesEqualOneLargerBatch) {
  // (a) 2 @train_step calls of 2 windows each + @optimizer_step with AccumSteps = 2;
  // (b) 1 @train_step of the same 4 windows + @optimizer_step with AccumSteps = 1.
  const int64_t seq = 24;
  const tnlm::Artifact &a = tinyArtifact(4, 32);
  mt::ModelConfig cfg = tinyConfig();
  auto [values, refWeights] = tnlm::testing::weightsFor(a, cfg, 11, 0.05);
  (void)refWeights;
  const std::vector<std::string> names = paramNames(a);
  std::vector<int32_t> ids, labels;
  randomBatch(4, seq, cfg.vocabSize, 77, ids, labels);
  const std::vector<int32_t> ids1(ids.begin(), ids.begin() + 2 * seq),
      ids2(ids.begin() + 2 * seq, ids.end()), labels1(labels.begin(), labels.begin() + 2 * seq),
      labels2(labels.begin() + 2 * seq, labels.end());

  HyperParams h;
  h.lr = 1e-2f;
  h.weightDecay = 0.1f;
  h.clip = 0.5f; // below this batch's norm (asserted below): the clip scale is part of it

  tnlm::CpuExecutor micro(a, values), whole(a, values);
  const double l1 = trainStep(micro, ids1, labels1, 2, seq);
  const double l2 = trainStep(micro, ids2, labels2, 2, seq);
  const double l = trainStep(whole, ids, labels, 4, seq);
  // Each loss is the mean over its call's positions, all counted: l = (l1 + l2)/2.
  EXPECT_NEAR(l, 0.5 * (l1 + l2), 4 * kU * l);

  // The state of (a) holds g1 + g2 (each the mean over 2·seq positions), that of (b) the mean
  // over 4·seq positions: (g1 + g2)/2 (1/count differs by an exact factor 2). Per window the
  // forward and the backward are the same computation in both (the kernels work row by row
  // or sequence by sequence), so the gradients differ where rows are summed (the weight
  // gradients, the embedding scatter-add, θ): (a) adds two partial sums over 2·seq rows, (b)
  // sums the 4·seq rows in the kernel's order. Two orders of an f32 sum of N terms each lie
  // within γ_N·Σ|terms| of the exact sum, γ_N = N·u/(1 − N·u): for N = 96 they differ by at
  // most 2·γ_96 ≈ 1.2e-5 of Σ|terms|. Against the gradient itself (tensor-wise, and
  // elementwise relative to the tensor's largest entry) the test allows 2e-5: this counts
  // Σ|terms| as about |Σ terms|, i.e. little cancellation between rows. A wrong accumulation
  // (a micro-batch lost or counted twice, a wrong 1/k) is off by tens of percent or more.
  // Measured: ≤ 2e-7 tensor-wise, ≤ 5e-7 elementwise.
  const auto ga = gradients(micro, names), gb = gradients(whole, names);
  double sqA = 0, sqB = 0;
  for (size_t i = 0; i < names.size(); ++i) {
    SCOPED_TRACE(names[i]);
    double errSq = 0, normSq = 0, maxAbs = 0, maxErr = 0;
    for (size_t j = 0; j < ga[i].size(); ++j) {
      const double x = 0.5 * ga[i][j], y = gb[i][j];
      errSq += (x - y) * (x - y);
      normSq += y * y;
      maxAbs = std::max(maxAbs, std::fabs(y));
      maxErr = std::max(maxErr, std::fabs(x - y));
      sqA += static_cast<double>(ga[i][j]) * ga[i][j];
      sqB += y * y;
    }
    ASSERT_GT(normSq, 0.0);
    EXPECT_LE(std::sqrt(errSq / normSq), 2e-5);
    EXPECT_LE(maxErr, 2e-5 * maxAbs);
  }

  HyperParams h2 = h;
  h2.accum = 2;
  const Outputs outA = optimizerStep(micro, h2, 2, seq);
  const Outputs outB = optimizerStep(whole, h, 4, seq);
  // grad_norm: sqrt(Σ(g1 + g2)²)/2 vs sqrt(Σ g²): the gradients' normwise difference (above)
  // plus one f32 rounding each.
  EXPECT_NEAR(outA.gradNorm, std::sqrt(sqA) / 2, kU * outA.gradNorm);
  EXPECT_NEAR(outB.gradNorm, std::sqrt(sqB), kU * outB.gradNorm);
  EXPECT_NEAR(outA.gradNorm, outB.gradNorm, 2e-5 * outB.gradNorm);
  ASSERT_GT(outB.gradNorm, h.clip) << "the clip should bite here";
  EXPECT_EQ(outA.lr, outB.lr);

  // The updated parameters: at t = 1, m̂ = ĝ and v̂ = ĝ², so the Adam step is
  // lr·ĝ/(|ĝ| + eps) with ĝ = c·(mean gradient): a function of the gradient alone, so the f64
  // formula applied to each side's own gradients predicts both (RefAdamW, within its
  // bound), and where the two gradients differ slightly the updates may too: near ĝ = 0 the
  // step's slope is 1/eps. So each side is checked against the formula with its own
  // gradients, and the two against each other within the difference the formula predicts.
  RefAdamW refA(names, values), refB(names, values);
  refA.step(h2, 0, ga);
  refB.step(h, 0, gb);
  for (size_t i = 0; i < names.size(); ++i) {
    SCOPED_TRACE(names[i]);
    Mismatch ma = compare("param (a)", micro.params()[i], refA.p[i], refA.ep[i]);
    EXPECT_EQ(ma.count, 0u) << ma.where;
    Mismatch mb = compare("param (b)", whole.params()[i], refB.p[i], refB.ep[i]);
    EXPECT_EQ(mb.count, 0u) << mb.where;
    size_t bad = 0;
    double worst = 0;
    for (size_t j = 0; j < refA.p[i].size(); ++j) {
      const double predicted = std::fabs(refA.p[i][j] - refB.p[i][j]);
      const double allowed = predicted + 2 * (refA.ep[i][j] + refB.ep[i][j]);
      const double err =
          std::fabs(static_cast<double>(micro.params()[i][j]) - whole.params()[i][j]);
      bad += err > allowed;
      worst = std::max(worst, err);
    }
    EXPECT_EQ(bad, 0u) << "largest difference " << worst;
  }
}

TEST(OptimizerStep, LearningRateScheduleAtItsCorners) {
  // lr = 2^-10 and min_lr = 2^-13, so the corners are exact binary fractions; warmup 4,
  // cosine to step 20. Each call runs a whole @optimizer_step (zero gradients) with the
  // step counter set to s, and must leave it at s + 1.
  const tnlm::Artifact &a = tinyArtifact(2, 32);
  auto [values, refWeights] = tnlm::testing::weightsFor(a, tinyConfig(), 5, 0.05);
  (void)refWeights;
  tnlm::CpuExecutor exec(a, values);
  HyperParams cosine;
  cosine.lr = 0x1p-10f;
  cosine.minLr = 0x1p-13f;
  cosine.warmup = 4;
  cosine.totalSteps = 20;
  HyperParams constant = cosine;
  constant.schedule = static_cast<float>(hp::LrScheduleKind_Constant);
  HyperParams noWarmup = cosine;
  noWarmup.warmup = 0;

  const double lr = 0x1p-10, minLr = 0x1p-13;
  struct Case {
    const char *what;
    const HyperParams *h;
    int64_t step;
    double want;
  };
  const Case cases[] = {
      {"warmup start: lr·1/W", &cosine, 0, lr / 4},
      {"warmup: lr·2/W", &cosine, 1, lr / 2},
      {"warmup end: lr·W/W", &cosine, 3, lr},
      {"cosine start", &cosine, 4, lr},
      {"cosine quarter", &cosine, 8, minLr + (lr - minLr) * (1 + std::sqrt(0.5)) / 2},
      {"mid-cosine", &cosine, 12, (lr + minLr) / 2},
      {"cosine end: min_lr", &cosine, 20, minLr},
      {"past the end: min_lr", &cosine, 25, minLr},
      {"far past the end", &cosine, 100000, minLr},
      {"constant, in warmup", &constant, 1, lr / 2},
      {"constant after warmup", &constant, 4, lr},
      {"constant, past total_steps", &constant, 50, lr},
      {"no warmup: cosine from step 0", &noWarmup, 0, lr},
      {"no warmup: mid-cosine", &noWarmup, 10, (lr + minLr) / 2},
  };
  for (const Case &c : cases) {
    SCOPED_TRACE(c.what);
    exec.setStepCounter(c.step);
    const Outputs out = optimizerStep(exec, *c.h, 1, 1);
    // The want values are exact or within 1e-16 relative; the output is one f32 rounding.
    EXPECT_NEAR(out.lr, c.want, kU * c.want) << "step " << c.step;
    EXPECT_NEAR(out.lr, scheduledLr(*c.h, c.step), kU * c.want);
    EXPECT_EQ(exec.stepCounter(), c.step + 1);
  }
}

} // namespace
