//===- TrainTest.cpp - compiled training functions vs the f64 reference ---===//
//
// config → tnlm-train-pipeline (fusion, tiles, tnlm-autodiff) → plans of @train_step,
// @optimizer_step, @eval_loss → artifact → CPU executor, against test/reference (plain f64
// loops, no code shared with the compiler or runtime):
// - the loss of @train_step and @eval_loss equals the reference loss;
// - every parameter's gradient (the gradient state after one @train_step) equals central
//   finite differences of the f64 reference loss, on the entries with the largest gradient
//   and on random ones.
//
// Tolerance: the f64 differences with h = 1e-5·max(1, |p|) have truncation error
// O(h²·|L'''|) ≲ 1e-9 relative and rounding error ~1e-16·|L|/h ≲ 1e-10; the f32 gradient of a chain
// of ~15 ops per layer with dot products of ≤ max(d, D, F, N) terms carries ~√K·u per product,
// amplified by the norms; the issue's bound is 1e-4 relative (normwise over the checked
// entries of each tensor).
//
//===----------------------------------------------------------------------===//
#include "models/Import.h"
#include "runtime/CpuExecutor.h"
#include "runtime/schema/tnlm_generated.h"
#include "test/unit/ModelTestSupport.h"

#include "dialect/TnlmOps.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/MLIRContext.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace {

namespace mt = mlir::tnlm;
using tnlm::testing::refConfig;
using tnlm::testing::weightsFor;

// The models of the issue: the tiny demo model and one with H = 6, LRPE in both layers, an
// untied head, unscaled embeddings and no activation on q, k.
const char *kOdd = R"({
  "vocab_size": 50, "decoder_embed_dim": 48, "decoder_layers": 2,
  "decoder_attention_heads": 6, "hidden_dim": 48, "glu_dim": 64,
  "no_scale_embedding": true, "tie_word_embeddings": false,
  "linear_use_lrpe_list": [1, 1], "linear_act_fun": "none", "norm_type": "simplermsnorm"
})";

mt::ModelConfig tinyConfig() {
  mt::ConfigResult r = mt::loadModelConfig(std::string(TNLM_MODELS_DIR) + "/tiny.json");
  EXPECT_TRUE(r.config) << r.error;
  return *r.config;
}

struct Setup {
  mt::ModelConfig cfg;
  tnlm::Artifact artifact;
};

Setup compileTrain(const mt::ModelConfig &cfg, int64_t batch, int64_t seq, int64_t block = 0,
                   bool fuse = true) {
  mlir::MLIRContext ctx;
  auto module = mt::importModel(cfg, &ctx, cfg.name + ".json");
  EXPECT_TRUE(module);
  return Setup{cfg, tnlm::testing::compileTrainCpu(*module, batch, seq, cfg.name, block, fuse)};
}

// Mean reference loss over `batch` windows of n + 1 tokens (inputs = first n, labels = next).
double refLoss(const tnlm::ref::Config &rc, const tnlm::ref::Weights &w,
               const std::vector<int32_t> &windows, int64_t batch, int64_t n) {
  double sum = 0;
  for (int64_t b = 0; b < batch; ++b) {
    std::vector<int32_t> win(windows.begin() + b * (n + 1), windows.begin() + (b + 1) * (n + 1));
    sum += tnlm::ref::loss(rc, w, win);
  }
  return sum / batch;
}

void splitWindows(const std::vector<int32_t> &windows, int64_t batch, int64_t n,
                  std::vector<int32_t> &ids, std::vector<int32_t> &labels) {
  ids.clear();
  labels.clear();
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t < n; ++t) {
      ids.push_back(windows[b * (n + 1) + t]);
      labels.push_back(windows[b * (n + 1) + t + 1]);
    }
}

void checkGradients(const Setup &s, int64_t batch, int64_t n, uint64_t seed, double stddev,
                    int64_t lmHeadChunkRows = 0) {
  tnlm::ref::Config rc = refConfig(s.cfg);
  auto [values, refWeights] = weightsFor(s.artifact, s.cfg, seed, stddev);
  tnlm::CpuExecutor exec(s.artifact, values);
  exec.setLmHeadChunkRows(lmHeadChunkRows);
  // Ids from 1: the padding row E[0] is zero, and at a zero row the chain of eps-regularized
  // norms (every norm of that token's residual stream sees 0 and scales by 1/sqrt(eps)) is
  // so curved that central differences agree with the (correct) gradient only for h ≈ 1e-9.
  std::vector<int32_t> windows =
      tnlm::testing::randomIds(batch * (n + 1), s.cfg.vocabSize - 1, seed * 13 + n);
  for (int32_t &t : windows)
    t += 1;
  std::vector<int32_t> ids, labels;
  splitWindows(windows, batch, n, ids, labels);

  auto trained = exec.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, batch, n);
  auto evaluated =
      exec.run("eval_loss", {{"ids", ids.data()}, {"labels", labels.data()}}, batch, n);
  const double want = refLoss(rc, refWeights, windows, batch, n);
  EXPECT_NEAR(trained.front().second[0], want, 1e-5 * std::fabs(want)) << "train_step loss";
  EXPECT_EQ(trained.front().second[0], evaluated.front().second[0]) << "eval_loss vs train_step";

  const auto *params = s.artifact.root().params();
  std::mt19937 rng(static_cast<uint32_t>(seed));
  for (unsigned i = 0; i < params->size(); ++i) {
    const std::string name = params->Get(i)->name()->str();
    int64_t gi = exec.stateIndex("grad/" + name);
    ASSERT_GE(gi, 0) << name;
    const std::vector<float> &g = exec.state()[gi];
    // The 4 largest gradient entries and 4 random ones.
    std::vector<size_t> order(g.size());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + std::min<size_t>(4, g.size()), order.end(),
                      [&](size_t a, size_t b) { return std::fabs(g[a]) > std::fabs(g[b]); });
    std::vector<size_t> picks(order.begin(), order.begin() + std::min<size_t>(4, g.size()));
    for (int k = 0; k < 4; ++k)
      picks.push_back(std::uniform_int_distribution<size_t>(0, g.size() - 1)(rng));
    double errSq = 0, normSq = 0;
    for (size_t e : picks) {
      tnlm::ref::Weights w = refWeights;
      double &p = w.at(name)[e];
      const double p0 = p, h = 1e-5 * std::max(1.0, std::fabs(p0));
      p = p0 + h;
      double up = refLoss(rc, w, windows, batch, n);
      p = p0 - h;
      double down = refLoss(rc, w, windows, batch, n);
      double fd = (up - down) / (2 * h);
      errSq += (g[e] - fd) * (g[e] - fd);
      normSq += fd * fd;
    }
    ASSERT_GT(normSq, 0.0) << name << ": every checked gradient entry is zero";
    EXPECT_LE(std::sqrt(errSq / normSq), 1e-4) << name << " (|fd| = " << std::sqrt(normSq) << ")";
  }
}

TEST(TrainGradients, TinyModelMatchesFiniteDifferencesOfTheReference) {
  // 2 x 40 tokens with block 16: two full blocks and a partial one per sequence.
  checkGradients(compileTrain(tinyConfig(), 2, 40, 16), 2, 40, 1, 0.05);
}

// The lm head, its loss and their backward are one lm_head_loss step (the logits a chunk of
// rows at a time): in chunks of 7 rows (80 rows: 11 whole chunks and one of 3) the loss and every
// gradient still match the reference (dW summed over the chunks).
TEST(TrainGradients, LmHeadLossInChunksMatchesTheReference) {
  const ::Setup s = compileTrain(tinyConfig(), 2, 40, 16);
  bool fused = false;
  for (const tnlm::schema::Step *st : *s.artifact.function("train_step").steps())
    fused = fused || st->kind() == tnlm::schema::KernelKind_LmHeadLoss;
  EXPECT_TRUE(fused) << "no lm_head_loss step in @train_step";
  checkGradients(s, 2, 40, 1, 0.05, /*lmHeadChunkRows=*/7);
}

TEST(TrainGradients, LrpeUntiedUnscaledSixHeadModelMatchesTheReference) {
  auto cfg = tnlm::testing::parseConfig(kOdd, "odd");
  checkGradients(compileTrain(cfg, 2, 33, 16), 2, 33, 2, 0.05);
}

TEST(TrainGradients, UnfusedOpsDifferentiateToTheReferenceToo) {
  // tnlm-autodiff on the imported forward: the VJPs of split, silu, split_heads, lrpe,
  // decay_linear_attention (recurrent backward), merge_heads, srms_norm, mul, add, sglu.
  auto cfg = tnlm::testing::parseConfig(kOdd, "odd");
  checkGradients(compileTrain(cfg, 2, 33, 0, /*fuse=*/false), 2, 33, 4, 0.05);
  checkGradients(compileTrain(tinyConfig(), 2, 20, 0, /*fuse=*/false), 2, 20, 5, 0.05);
}

TEST(TrainGradients, PaddingRowGetsNoGradientFromItsLookups) {
  // The untied model: the embedding's gradient is its lookups' alone. pad_token_id (0 by
  // default, 7 here) is the lookup's padding index, as the reference's
  // nn.Embedding(padding_idx=pad_token_id): positions holding it add nothing to its row, every
  // other row that occurs gets a gradient.
  for (int64_t pad : {0, 7}) {
    std::string json = kOdd;
    json.insert(json.find('{') + 1, "\"pad_token_id\": " + std::to_string(pad) + ", ");
    auto cfg = tnlm::testing::parseConfig(json, "odd-pad");
    const ::Setup s = compileTrain(cfg, 1, 12, 16);
    auto [values, refWeights] = weightsFor(s.artifact, s.cfg, 3, 0.05);
    (void)refWeights;
    tnlm::CpuExecutor exec(s.artifact, values);
    const std::vector<int32_t> ids = {0, 3, 7, 0, 5, 7, 3, 0, 9, 7, 4, 0};
    const std::vector<int32_t> labels = {3, 7, 0, 5, 7, 3, 0, 9, 7, 4, 0, 1};
    exec.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, 1, 12);
    const std::vector<float> &g = exec.state()[exec.stateIndex("grad/model.embed_tokens.weight")];
    const int64_t d = cfg.embedDim;
    for (int32_t id : {0, 3, 4, 5, 7, 9}) {
      double norm = 0;
      for (int64_t c = 0; c < d; ++c)
        norm += std::fabs(g[id * d + c]);
      if (id == pad)
        EXPECT_EQ(norm, 0.0) << "padding row " << id;
      else
        EXPECT_GT(norm, 0.0) << "row " << id << " (padding index " << pad << ")";
    }
  }
}

// The chunked lm head loss with ignored labels (-100, the loss's ignore index) in several
// chunks, one of them all ignored: the same loss and gradients as the call in one chunk (the
// row losses are the same numbers summed in the same order; dW is summed over chunks, so the
// gradients differ by f32 rounding only).
TEST(TrainGradients, LmHeadLossChunksSkipIgnoredLabels) {
  const ::Setup s = compileTrain(tinyConfig(), 2, 40, 16);
  auto [values, refWeights] = weightsFor(s.artifact, s.cfg, 5, 0.05);
  std::vector<int32_t> ids = tnlm::testing::randomIds(80, s.cfg.vocabSize - 1, 17);
  std::vector<int32_t> labels = tnlm::testing::randomIds(80, s.cfg.vocabSize - 1, 18);
  for (int32_t &t : ids)
    t += 1;
  for (int64_t r = 14; r < 21; ++r) // rows 14..20: the whole third chunk of 7
    labels[size_t(r)] = -100;
  labels[3] = labels[40] = labels[79] = -100;
  std::vector<float> loss;
  std::vector<std::vector<float>> grads;
  for (int64_t chunk : {int64_t(0), int64_t(7)}) {
    tnlm::CpuExecutor exec(s.artifact, values);
    exec.setLmHeadChunkRows(chunk);
    loss.push_back(exec.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, 2, 40)
                       .front()
                       .second[0]);
    const int64_t gi = exec.stateIndex("grad/model.embed_tokens.weight");
    ASSERT_GE(gi, 0);
    grads.push_back(exec.state()[size_t(gi)]);
  }
  ASSERT_TRUE(std::isfinite(loss[0]));
  EXPECT_EQ(loss[0], loss[1]) << "the mean of the same row losses in the same order";
  double worst = 0, scale = 0;
  for (size_t i = 0; i < grads[0].size(); ++i) {
    worst = std::max(worst, double(std::fabs(grads[0][i] - grads[1][i])));
    scale = std::max(scale, double(std::fabs(grads[0][i])));
  }
  EXPECT_GT(scale, 0.0);
  EXPECT_LE(worst, 1e-5 * scale) << "the tied embedding's gradient, chunked vs whole";
}

TEST(TrainGradients, ShorterCallThanCompiledRunsWithoutRecompiling) {
  // Compiled for 2 x 64, called with 1 x 17 (and the default block from the cost model).
  checkGradients(compileTrain(tinyConfig(), 2, 64), 1, 17, 3, 0.05);
}

} // namespace
