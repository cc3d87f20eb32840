//===- RecomputeTest.cpp - activation checkpointing changes memory, not results ===//
//
// tnlm-recompute clones forward ops into @train_step's backward: the same ops on the same
// inputs, so the loss and every gradient must be bit-identical to policy none, while the
// planned arena shrinks: full < attention < none for a multi-layer model. Checked on the
// tiny model (2 layers) and a 4-layer variant, fused (tnlm-train-pipeline) and unfused
// (tnlm-autodiff alone, where the residual stream is plain adds), on the CPU executor, over
// two accumulating @train_step calls.
//
//===----------------------------------------------------------------------===//
#include "models/Import.h"
#include "runtime/CpuExecutor.h"
#include "test/unit/ModelTestSupport.h"

#include "mlir/IR/MLIRContext.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

namespace {

namespace mt = mlir::tnlm;

const char *kPolicies[] = {"none", "attention", "full"};

mt::ModelConfig tinyConfig() {
  mt::ConfigResult r = mt::loadModelConfig(std::string(TNLM_MODELS_DIR) + "/tiny.json");
  EXPECT_TRUE(r.config) << r.error;
  return *r.config;
}

// The tiny model with 4 layers, LRPE in layers 0 and 2.
mt::ModelConfig fourLayerConfig() {
  mt::ModelConfig cfg = tinyConfig();
  cfg.name = "tiny4";
  cfg.layers = 4;
  cfg.lrpe = {true, false, true, false};
  return cfg;
}

struct Result {
  std::vector<float> losses;             // one per call
  std::vector<std::vector<float>> grads; // grad/<param>, in parameter order
  std::vector<std::string> names;        // the parameters
  uint64_t arenaBytes = 0;               // planned @train_step arena
  size_t steps = 0;                      // @train_step kernel steps
};

// Compiles `cfg` with recompute `policy`, runs two @train_step calls (batch x seq, block
// 16: full and partial blocks) on the same random weights and tokens for every policy.
Result train(const mt::ModelConfig &cfg, const std::string &policy, bool fuse) {
  const int64_t batch = 2, seq = 40;
  mlir::MLIRContext ctx;
  auto module = mt::importModel(cfg, &ctx, cfg.name + ".json");
  EXPECT_TRUE(module);
  tnlm::Artifact artifact =
      tnlm::testing::compileTrainCpu(*module, batch, seq, cfg.name, 16, fuse, policy);
  Result r;
  const tnlm::schema::Function &fn = artifact.function("train_step");
  r.arenaBytes = fn.arena_bytes();
  r.steps = fn.steps()->size();
  auto values = tnlm::testing::weightsFor(artifact, cfg, /*seed=*/7, /*stddev=*/0.05).first;
  tnlm::CpuExecutor exec(artifact, values);
  for (int call = 0; call < 2; ++call) {
    std::vector<int32_t> ids = tnlm::testing::randomIds(batch * seq, cfg.vocabSize, 11 + call);
    std::vector<int32_t> labels = tnlm::testing::randomIds(batch * seq, cfg.vocabSize, 23 + call);
    auto out = exec.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, batch, seq);
    r.losses.push_back(out.front().second.at(0));
  }
  for (const auto *p : *artifact.root().params()) {
    r.names.push_back(p->name()->str());
    int64_t gi = exec.stateIndex("grad/" + r.names.back());
    EXPECT_GE(gi, 0) << r.names.back();
    r.grads.push_back(gi < 0 ? std::vector<float>() : exec.state()[gi]);
  }
  return r;
}

bool sameBits(const std::vector<float> &a, const std::vector<float> &b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

void expectIdentical(const Result &want, const Result &got, const std::string &policy) {
  ASSERT_EQ(want.losses.size(), got.losses.size());
  EXPECT_TRUE(sameBits(want.losses, got.losses))
      << policy << ": loss " << got.losses[0] << " vs " << want.losses[0];
  ASSERT_EQ(want.names, got.names);
  for (size_t i = 0; i < want.grads.size(); ++i)
    EXPECT_TRUE(sameBits(want.grads[i], got.grads[i])) << policy << ": grad/" << want.names[i];
}

void checkModel(const mt::ModelConfig &cfg) {
  std::vector<Result> results;
  for (const char *policy : kPolicies) {
    SCOPED_TRACE(cfg.name + " --recompute=" + policy);
    results.push_back(train(cfg, policy, /*fuse=*/true));
    expectIdentical(results.front(), results.back(), policy);
  }
  const Result &none = results[0], &attention = results[1], &full = results[2];
  // Nothing trivial is being compared: every gradient has a non-zero entry.
  for (size_t i = 0; i < none.grads.size(); ++i)
    EXPECT_TRUE(
        std::any_of(none.grads[i].begin(), none.grads[i].end(), [](float g) { return g != 0.0f; }))
        << cfg.name << ": grad/" << none.names[i] << " is all zero";
  // Recomputation adds steps: one attention per layer, more for full.
  EXPECT_EQ(attention.steps, none.steps + cfg.layers) << cfg.name;
  EXPECT_GT(full.steps, attention.steps) << cfg.name;
  EXPECT_LT(full.arenaBytes, attention.arenaBytes) << cfg.name;
  EXPECT_LT(attention.arenaBytes, none.arenaBytes) << cfg.name;
}

TEST(Recompute, TinyModelGradientsAreBitIdenticalAndTheArenaShrinks) { checkModel(tinyConfig()); }

TEST(Recompute, FourLayerModelGradientsAreBitIdenticalAndTheArenaShrinks) {
  checkModel(fourLayerConfig());
}

TEST(Recompute, UnfusedFullRecomputeIsBitIdenticalToo) {
  // tnlm-autodiff on the imported forward: the residual stream is tnlm.add, the norms are
  // srms_norm, the attention the unfused chain (split, silu, LRPE, decay attention…).
  mt::ModelConfig cfg = fourLayerConfig();
  Result none = train(cfg, "none", /*fuse=*/false);
  Result full = train(cfg, "full", /*fuse=*/false);
  expectIdentical(none, full, "full (unfused)");
  EXPECT_GT(full.steps, none.steps);
  EXPECT_LT(full.arenaBytes, none.arenaBytes);
}

} // namespace
