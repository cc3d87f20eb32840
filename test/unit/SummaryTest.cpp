//===- SummaryTest.cpp - parameter counts of the released shapes ----------===//
#include "models/Summary.h"
#include "models/Import.h"

#include "dialect/TnlmOps.h"
#include "mlir/Dialect/Func/IR/FuncOps.h"
#include "mlir/IR/MLIRContext.h"

#include <gtest/gtest.h>

using namespace mlir::tnlm;

namespace {

ModelSummary summarize(const char *name, mlir::MLIRContext &ctx) {
  std::string path = std::string(TNLM_MODELS_DIR) + "/" + name + ".json";
  ConfigResult r = loadModelConfig(path);
  EXPECT_TRUE(r.config) << r.error;
  auto module = importModel(*r.config, &ctx, path);
  EXPECT_TRUE(module);
  auto s = summarizeModel(*module, "forward");
  EXPECT_TRUE(mlir::succeeded(s));
  return *s;
}

TEST(Summary, SevenBillion) {
  mlir::MLIRContext ctx;
  ModelSummary s = summarize("tnl-7b", ctx);
  EXPECT_EQ(s.totalParams, 6836719616);
  EXPECT_TRUE(s.tiedLmHead);
  EXPECT_EQ(s.bytesPerDType.at("bf16"), 2 * 6836719616);
  // Projections: 2·(L·(5d² + 3dF) + V·d) (lm head tied, still computed).
  const int64_t d = 4096, L = 30, F = 11008, V = 64000, H = 32, dh = 128;
  EXPECT_EQ(s.projectionFlopsPerToken, 2 * (L * (5 * d * d + 3 * d * F) + V * d));
  // Attention: 4·H·dk·dv per layer; layer 0 has LRPE (dk = 2·dh).
  EXPECT_EQ(s.attentionFlopsPerToken, 4 * H * dh * dh * (L - 1) + 4 * H * 2 * dh * dh);
}

TEST(Summary, OneBillion) {
  mlir::MLIRContext ctx;
  ModelSummary s = summarize("tnl-1b", ctx);
  EXPECT_EQ(s.totalParams, 1020264448);
  EXPECT_TRUE(s.tiedLmHead);
}

TEST(Summary, UntiedHeadIsCounted) {
  mlir::MLIRContext ctx;
  ConfigResult r = parseModelConfig(R"({"vocab_size": 256, "decoder_embed_dim": 64,
      "decoder_layers": 2, "decoder_attention_heads": 2, "glu_dim": 128,
      "tie_word_embeddings": false, "linear_use_lrpe_list": [1, 0]})",
                                    "m.json");
  ASSERT_TRUE(r.config) << r.error;
  auto module = importModel(*r.config, &ctx, "m.json");
  ASSERT_TRUE(module);
  auto s = summarizeModel(*module, "forward");
  ASSERT_TRUE(mlir::succeeded(s));
  // 2·V·d (embedding + head) + L·(5d² + 3dF) + H·dh (one LRPE θ).
  EXPECT_EQ(s->totalParams, 2 * 256 * 64 + 2 * (5 * 64 * 64 + 3 * 64 * 128) + 64);
  EXPECT_FALSE(s->tiedLmHead);
}

} // namespace
