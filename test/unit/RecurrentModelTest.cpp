//===- RecurrentModelTest.cpp - @prefill and @decode_step of compiled models -===//
//
// config → tnlm-infer-pipeline → tnlm-recurrent → plans of @prefill, @decode_step → artifact
// → CPU executor, against the artifact's own @prefill and the independent f64 reference:
// - decode equals prefill: prefill(n − 1) then one @decode_step gives the logits of
//   prefill(n) at its last position, for n in 1, 63, 64, 65, 300, 2048 (with LRPE: tiny);
// - n decode steps from an empty state give the state prefill(n) leaves;
// - the prefill logits equal the f64 reference's at each slot's last position, for slots
//   of different lengths in one batch; a slot with length 0 keeps its state;
// - at position 65,536 the decode logits are finite and match the f64 reference model's.
//
// Tolerance: both paths compute in f32; they differ in evaluation order only (the blocked
// Lightning Attention vs the recurrence, the same GEMMs on 1 vs n rows). The state after n
// tokens carries ~n·u relative rounding in either form (AttentionTest.cpp), the logits one
// more chain of ~10 f32 ops per layer: 1e-5 relative to the largest logit covers n = 2048
// (2048·6e-8 = 1.2e-4 is the worst-case bound of a sum of n terms; the observed error is
// √n-like, ~3e-6).
//
//===----------------------------------------------------------------------===//
#include "models/Import.h"
#include "runtime/CpuExecutor.h"
#include "test/unit/ModelTestSupport.h"

#include "dialect/TnlmOps.h"
#include "mlir/IR/MLIRContext.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace {

namespace mt = mlir::tnlm;
using tnlm::testing::refConfig;
using tnlm::testing::weightsFor;

mt::ModelConfig tinyConfig() {
  mt::ConfigResult r = mt::loadModelConfig(std::string(TNLM_MODELS_DIR) + "/tiny.json");
  EXPECT_TRUE(r.config) << r.error;
  return *r.config;
}

// Tiny without LRPE (the released models have it in layer 0 only; tiny too).
mt::ModelConfig noLrpeConfig() {
  mt::ModelConfig c = tinyConfig();
  std::fill(c.lrpe.begin(), c.lrpe.end(), false);
  c.name = "tiny-nolrpe";
  return c;
}

tnlm::Artifact compileRecurrent(const mt::ModelConfig &cfg, int64_t batch, int64_t seq) {
  mlir::MLIRContext ctx;
  auto module = mt::importModel(cfg, &ctx, cfg.name + ".json");
  EXPECT_TRUE(module);
  mlir::PassManager pm(module->getContext());
  mt::InferPipelineOptions options;
  options.maxSeq = seq;
  mt::buildRecurrentPipeline(pm, options, batch);
  EXPECT_TRUE(mlir::succeeded(pm.run(*module)));
  auto plans = mt::lowerFunctions(*module, {"prefill", "decode_step"}, batch, seq);
  EXPECT_TRUE(mlir::succeeded(plans));
  for (mt::KernelPlan &p : *plans)
    mt::planMemory(p);
  return tnlm::Artifact::fromBytes(mt::serializeArtifact(*module, *plans, "cpu"), cfg.name,
                                   tnlm::Target::Cpu);
}

struct Model {
  mt::ModelConfig cfg;
  tnlm::Artifact artifact;
  tnlm::ParamValues values;
  tnlm::ref::Weights ref;
};

Model make(const mt::ModelConfig &cfg, int64_t batch, int64_t seq, uint64_t seed) {
  tnlm::Artifact a = compileRecurrent(cfg, batch, seq);
  auto [values, ref] = weightsFor(a, cfg, seed, 0.05);
  return Model{cfg, std::move(a), std::move(values), std::move(ref)};
}

std::vector<float> prefill(tnlm::CpuExecutor &exec, const std::vector<int32_t> &ids,
                           const std::vector<int32_t> &lengths, int64_t n) {
  return exec
      .run("prefill", {{"ids", ids.data()}, {"lengths", lengths.data()}},
           static_cast<int64_t>(lengths.size()), n)
      .front()
      .second;
}

std::vector<float> decode(tnlm::CpuExecutor &exec, const std::vector<int32_t> &ids,
                          const std::vector<int32_t> &positions) {
  return exec
      .run("decode_step", {{"ids", ids.data()}, {"positions", positions.data()}},
           static_cast<int64_t>(positions.size()), 1)
      .front()
      .second;
}

double maxAbs(const std::vector<float> &v) {
  double m = 0;
  for (float x : v)
    m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

// The worst |got − want| relative to the largest |want| (expected ≤ rel); NaN if the sizes
// differ.
double expectClose(const std::vector<float> &got, const std::vector<float> &want, double rel,
                   const std::string &what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  if (got.size() != want.size())
    return std::nan("");
  const double scale = std::max(maxAbs(want), 1e-30);
  double worst = 0;
  size_t nonFinite = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) {
      EXPECT_EQ(nonFinite++, 0u) << what << ": the first non-finite value at [" << i << "]";
      continue;
    }
    worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - want[i]) / scale);
  }
  EXPECT_EQ(nonFinite, 0u) << what << ": non-finite values";
  EXPECT_LE(worst, rel) << what;
  return nonFinite ? std::nan("") : worst;
}

class DecodeEqualsPrefill : public ::testing::TestWithParam<bool> {};

TEST_P(DecodeEqualsPrefill, AtEveryLengthOfTheIssue) {
  const bool lrpe = GetParam();
  Model m = make(lrpe ? tinyConfig() : noLrpeConfig(), 1, 2048, 3);
  std::vector<int32_t> ids = tnlm::testing::randomIds(2048, m.cfg.vocabSize, 11);
  for (int64_t n : {1, 63, 64, 65, 300, 2048}) {
    tnlm::CpuExecutor a(m.artifact, m.values), b(m.artifact, m.values);
    // prefill(n): the logits at position n − 1 and the state after n tokens.
    std::vector<int32_t> full(ids.begin(), ids.begin() + n);
    std::vector<float> want = prefill(a, full, {static_cast<int32_t>(n)}, n);
    // prefill(n − 1) (nothing for n = 1: the empty state), then token n − 1 at position n − 1.
    if (n > 1) {
      std::vector<int32_t> head(ids.begin(), ids.begin() + n - 1);
      prefill(b, head, {static_cast<int32_t>(n - 1)}, n - 1);
    }
    std::vector<float> got = decode(b, {ids[n - 1]}, {static_cast<int32_t>(n - 1)});
    expectClose(got, want, 1e-5, "logits at n = " + std::to_string(n));
    for (size_t s = 0; s < a.state().size(); ++s)
      expectClose(b.state()[s], a.state()[s], 1e-5,
                  "state " + std::to_string(s) + " at n = " + std::to_string(n));
  }
}

TEST_P(DecodeEqualsPrefill, StateOfNDecodeStepsIsThePrefillState) {
  const bool lrpe = GetParam();
  Model m = make(lrpe ? tinyConfig() : noLrpeConfig(), 1, 300, 4);
  std::vector<int32_t> ids = tnlm::testing::randomIds(300, m.cfg.vocabSize, 12);
  tnlm::CpuExecutor a(m.artifact, m.values), b(m.artifact, m.values);
  prefill(a, ids, {300}, 300);
  std::vector<float> last;
  for (int32_t t = 0; t < 300; ++t)
    last = decode(b, {ids[t]}, {t});
  for (size_t s = 0; s < a.state().size(); ++s)
    expectClose(b.state()[s], a.state()[s], 1e-5, "state " + std::to_string(s));
}

INSTANTIATE_TEST_SUITE_P(Lrpe, DecodeEqualsPrefill, ::testing::Values(true, false),
                         [](const auto &info) { return info.param ? "lrpe" : "no_lrpe"; });

// At position 65,536: prefill(65,536) then one decode step against the last row of the f64
// reference model over all 65,537 tokens (its token mixer is the f64 recurrence, LRPE angles
// included). The f32 state of a head whose decay keeps every token sums 65,536 terms: ~√n·u ≈
// 1.5e-5 relative for rounding errors that add like a random walk (what the sums of
// AttentionTest.cpp show), n·u ≈ 3.9e-3 if they all had one sign; 1e-4 relative to the largest
// logit allows the first with a margin (observed: printed, 2.2e-6 here).
TEST(Decode, AtPosition65536MatchesTheF64ReferenceModel) {
  const int64_t n = 65536;
  Model m = make(tinyConfig(), 1, n, 6);
  std::vector<int32_t> ids = tnlm::testing::randomIds(n + 1, m.cfg.vocabSize, 14);
  tnlm::CpuExecutor exec(m.artifact, m.values);
  std::vector<int32_t> head(ids.begin(), ids.begin() + n);
  prefill(exec, head, {static_cast<int32_t>(n)}, n);
  std::vector<float> got = decode(exec, {ids[n]}, {static_cast<int32_t>(n)});
  const int64_t V = m.cfg.vocabSize;
  ASSERT_EQ(got.size(), static_cast<size_t>(V));
  for (float x : got)
    ASSERT_TRUE(std::isfinite(x)) << "a non-finite logit at position 65,536";
  std::vector<double> ref = tnlm::ref::logits(refConfig(m.cfg), m.ref, ids);
  std::vector<float> want(ref.end() - V, ref.end());
  const double worst =
      expectClose(got, want, 1e-4, "decode at position 65,536 vs the f64 reference");
  std::printf("[ worst    ] decode at position 65,536 vs the f64 reference: %.3g relative\n",
              worst);
}

TEST(Prefill, SlotsOfDifferentLengthsMatchTheReferenceAndAnEmptySlotKeepsItsState) {
  const int64_t B = 3, N = 70;
  Model m = make(tinyConfig(), B, N, 5);
  tnlm::CpuExecutor exec(m.artifact, m.values);
  // Slot 2 first holds a prompt of its own, then is left alone (length 0) by the next call.
  std::vector<int32_t> ids = tnlm::testing::randomIds(B * N, m.cfg.vocabSize, 13);
  prefill(exec, ids, {0, 0, 9}, N);
  std::vector<std::vector<float>> before = exec.state();
  const std::vector<int32_t> lengths = {70, 33, 0};
  std::vector<float> logits = prefill(exec, ids, lengths, N);
  const int64_t V = m.cfg.vocabSize;
  ASSERT_EQ(logits.size(), static_cast<size_t>(B * V));
  tnlm::ref::Config rc = refConfig(m.cfg);
  for (int64_t b = 0; b < 2; ++b) {
    std::vector<int32_t> seq(ids.begin() + b * N, ids.begin() + b * N + lengths[b]);
    std::vector<double> ref = tnlm::ref::logits(rc, m.ref, seq);
    std::vector<float> want(ref.end() - V, ref.end());
    std::vector<float> got(logits.begin() + b * V, logits.begin() + (b + 1) * V);
    expectClose(got, want, 1e-4, "slot " + std::to_string(b) + " vs the f64 reference");
  }
  for (int64_t v = 0; v < V; ++v)
    EXPECT_EQ(logits[2 * V + v], 0.0f) << "an empty slot's logits row is zero";
  const auto *states = m.artifact.root().state();
  for (unsigned s = 0; s < states->size(); ++s) {
    const int64_t per = static_cast<int64_t>(exec.state()[s].size()) / B;
    for (int64_t i = 2 * per; i < 3 * per; ++i)
      ASSERT_EQ(exec.state()[s][i], before[s][i]) << "slot 2 of state " << s << " changed";
  }
}

TEST(Prefill, LengthsBeyondTheCallAreRefused) {
  Model m = make(tinyConfig(), 2, 16, 6);
  tnlm::CpuExecutor exec(m.artifact, m.values);
  std::vector<int32_t> ids(32, 5);
  try {
    prefill(exec, ids, {16, 17}, 16);
    ADD_FAILURE() << "accepted a length beyond the call";
  } catch (const tnlm::Error &e) {
    EXPECT_NE(std::string(e.what()).find("17"), std::string::npos) << e.what();
  }
}

} // namespace
