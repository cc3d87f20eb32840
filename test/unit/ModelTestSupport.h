//===- ModelTestSupport.h - shared helpers of the model-level tests -*- C++ -*-===//
#ifndef TNLM_TEST_UNIT_MODELTESTSUPPORT_H
#define TNLM_TEST_UNIT_MODELTESTSUPPORT_H

#include "codegen/ArtifactWriter.h"
#include "codegen/KernelPlan.h"
#include "models/ModelConfig.h"
#include "passes/Passes.h"
#include "runtime/Artifact.h"
#include "runtime/Weights.h"
#include "test/reference/ReferenceModel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace tnlm::testing {

inline mlir::tnlm::ModelConfig parseConfig(const std::string &json, const std::string &name) {
  mlir::tnlm::ConfigResult r = mlir::tnlm::parseModelConfig(json, name + ".json");
  EXPECT_TRUE(r.config) << r.error;
  return *r.config;
}

/// The reference model's view of a compiler config.
inline ref::Config refConfig(const mlir::tnlm::ModelConfig &c) {
  ref::Config r;
  r.vocab = c.vocabSize;
  r.d = c.embedDim;
  r.layers = c.layers;
  r.heads = c.heads;
  r.hidden = c.hiddenDim;
  r.glu = c.gluDim;
  r.scaleEmbedding = c.scaleEmbedding;
  r.tied = c.tieWordEmbeddings;
  r.silu = c.activation == mlir::tnlm::Activation::Silu;
  r.lrpe = c.lrpe;
  return r;
}

/// Reference weights rounded to f32 once, so the artifact (f32) and the reference (f64) see
/// identical parameters; returned in the artifact's parameter order and by name.
inline std::pair<ParamValues, ref::Weights>
weightsFor(const Artifact &a, const mlir::tnlm::ModelConfig &cfg, uint64_t seed, double stddev) {
  ref::Weights w = ref::randomWeights(refConfig(cfg), seed, stddev);
  ParamValues values;
  for (const auto *p : *a.root().params()) {
    std::vector<double> &src = w.at(p->name()->str());
    std::vector<float> f(src.begin(), src.end());
    std::copy(f.begin(), f.end(), src.begin());
    values.push_back(std::move(f));
  }
  EXPECT_EQ(values.size(), w.size()) << "artifact and reference disagree on the parameters";
  return {std::move(values), std::move(w)};
}

/// A CPU artifact and the kernel plan it was written from.
struct CompiledCpu {
  Artifact artifact;
  mlir::tnlm::KernelPlan plan;
};

/// Lowers @forward of `module` as it is (no passes), plans its memory and loads the written
/// artifact back through the verifier; `source` names it in messages.
inline CompiledCpu compileCpu(mlir::ModuleOp module, int64_t maxBatch, int64_t maxSeq,
                              const std::string &source) {
  mlir::FailureOr<mlir::tnlm::KernelPlan> plan =
      mlir::tnlm::lowerToKernelPlan(module, "forward", maxBatch, maxSeq);
  EXPECT_TRUE(mlir::succeeded(plan));
  mlir::tnlm::planMemory(*plan);
  std::vector<uint8_t> bytes = mlir::tnlm::serializeArtifact(module, {*plan}, "cpu");
  return CompiledCpu{Artifact::fromBytes(std::move(bytes), source, Target::Cpu), *plan};
}

/// A train artifact of `module` (the forward as imported): tnlm-train-pipeline for the cpu
/// target, then @train_step, @optimizer_step and @eval_loss lowered, planned and loaded back
/// through the verifier. `blockSize` > 0 forces the Lightning Attention block size.
/// `fuse` = false differentiates the unfused forward as imported (tnlm-autodiff alone).
/// `recompute` is the tnlm-recompute policy of @train_step (none, attention, full).
inline Artifact compileTrainCpu(mlir::ModuleOp module, int64_t maxBatch, int64_t maxSeq,
                                const std::string &source, int64_t blockSize = 0, bool fuse = true,
                                const std::string &recompute = "none") {
  mlir::PassManager pm(module.getContext());
  mlir::tnlm::InferPipelineOptions options;
  options.target = "cpu";
  options.maxSeq = maxSeq;
  options.blockSize = blockSize;
  if (fuse) {
    mlir::tnlm::buildTrainPipeline(pm, options, recompute);
  } else {
    pm.addPass(mlir::tnlm::createAutodiff());
    pm.addPass(mlir::tnlm::createRecompute({recompute}));
  }
  EXPECT_TRUE(mlir::succeeded(pm.run(module)));
  auto plans = mlir::tnlm::lowerFunctions(module, {"train_step", "optimizer_step", "eval_loss"},
                                          maxBatch, maxSeq);
  EXPECT_TRUE(mlir::succeeded(plans));
  for (mlir::tnlm::KernelPlan &p : *plans)
    mlir::tnlm::planMemory(p);
  std::vector<uint8_t> bytes = mlir::tnlm::serializeArtifact(module, *plans, "cpu");
  return Artifact::fromBytes(std::move(bytes), source, Target::Cpu);
}

/// `count` token ids uniform in [0, vocab), from mt19937(seed).
inline std::vector<int32_t> randomIds(int64_t count, int64_t vocab, uint64_t seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> ids(static_cast<size_t>(count));
  for (int32_t &t : ids)
    t = tok(rng);
  return ids;
}

} // namespace tnlm::testing

#endif // TNLM_TEST_UNIT_MODELTESTSUPPORT_H
