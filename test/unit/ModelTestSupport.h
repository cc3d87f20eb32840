//===- ModelTestSupport.h - shared helpers of the model-level tests -*- C++ -*-===//
#ifndef TNLM_TEST_UNIT_MODELTESTSUPPORT_H
#define TNLM_TEST_UNIT_MODELTESTSUPPORT_H

#include "models/ModelConfig.h"
#include "runtime/Artifact.h"
#include "runtime/Weights.h"
#include "test/reference/ReferenceModel.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <utility>

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
inline std::pair<ParamValues, ref::Weights> weightsFor(const Artifact &a,
                                                       const mlir::tnlm::ModelConfig &cfg,
                                                       uint64_t seed, double stddev) {
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

} // namespace tnlm::testing

#endif // TNLM_TEST_UNIT_MODELTESTSUPPORT_H
