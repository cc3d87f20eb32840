//===- ModelConfigTest.cpp - config parsing and decay slopes --------------===//
#include "models/ModelConfig.h"

#include <gtest/gtest.h>

#include <cmath>

using namespace mlir::tnlm;

namespace {

// Slopes from the ALiBi definition written out independently: for a power of two n,
// s_h = 2^(-8(h+1)/n); otherwise the first P of those for P = 2^floor(log2 H), then every
// other slope of 2P.
TEST(AlibiSlopes, PowerOfTwoHeads) {
  for (int64_t heads : {8, 32}) {
    std::vector<double> s = alibiSlopes(heads);
    ASSERT_EQ(s.size(), static_cast<size_t>(heads));
    for (int64_t h = 0; h < heads; ++h)
      EXPECT_DOUBLE_EQ(s[h], std::exp2(-8.0 * (h + 1) / heads)) << "H=" << heads << " h=" << h;
  }
  // H = 8: 1/2, 1/4, ..., 1/256.
  std::vector<double> s8 = alibiSlopes(8);
  EXPECT_DOUBLE_EQ(s8.front(), 0.5);
  EXPECT_DOUBLE_EQ(s8.back(), 1.0 / 256.0);
}

TEST(AlibiSlopes, TwentyHeads) {
  std::vector<double> s = alibiSlopes(20);
  ASSERT_EQ(s.size(), 20u);
  for (int h = 0; h < 16; ++h)
    EXPECT_DOUBLE_EQ(s[h], std::exp2(-(h + 1) / 2.0));
  // slopes(32)[0::2][:4] = 2^-(1/4), 2^-(3/4), 2^-(5/4), 2^-(7/4)
  EXPECT_DOUBLE_EQ(s[16], std::exp2(-0.25));
  EXPECT_DOUBLE_EQ(s[17], std::exp2(-0.75));
  EXPECT_DOUBLE_EQ(s[18], std::exp2(-1.25));
  EXPECT_DOUBLE_EQ(s[19], std::exp2(-1.75));
}

TEST(AlibiSlopes, FortyHeads) {
  std::vector<double> s = alibiSlopes(40);
  ASSERT_EQ(s.size(), 40u);
  for (int h = 0; h < 32; ++h)
    EXPECT_DOUBLE_EQ(s[h], std::exp2(-(h + 1) / 4.0));
  for (int i = 0; i < 8; ++i) // slopes(64)[2i] = 2^(-(2i+1)/8)
    EXPECT_DOUBLE_EQ(s[32 + i], std::exp2(-(2 * i + 1) / 8.0)) << i;
}

TEST(LayerDecay, FirstAndLastLayer) {
  // 7B: L = 30, H = 32. First layer factor 1 + 1e-5, last layer factor 1e-5.
  std::vector<float> first = layerDecaySlopes(32, 0, 30), last = layerDecaySlopes(32, 29, 30);
  ASSERT_EQ(first.size(), 32u);
  EXPECT_FLOAT_EQ(first[0], static_cast<float>(std::exp2(-0.25)) * 1.00001f);
  EXPECT_NEAR(last[0], std::exp2(-0.25) * 1e-5, 1e-12);
  // λ = exp(-s): first layer, head 0 of H = 8 is exp(-0.5·(1+1e-5)) ≈ 0.6065.
  EXPECT_NEAR(std::exp(-layerDecaySlopes(8, 0, 24)[0]), std::exp(-0.5 * 1.00001), 1e-7);
  // Middle layer of L = 3: factor 1 - 1/2 + 1e-5.
  EXPECT_FLOAT_EQ(layerDecaySlopes(8, 1, 3)[0], 0.5f * static_cast<float>(0.5 + 1e-5));
  // Every rate stays > 0 (the +1e-5 term).
  for (float s : last)
    EXPECT_GT(s, 0.0f);
}

ConfigResult parse(const std::string &json) { return parseModelConfig(json, "cfg.json"); }

const char *kMinimal = R"({"vocab_size": 256, "decoder_embed_dim": 64, "decoder_layers": 2,
  "decoder_attention_heads": 2, "glu_dim": 128})";

TEST(ModelConfig, DefaultsFollowTheReference) {
  ConfigResult r = parse(kMinimal);
  ASSERT_TRUE(r.config) << r.error;
  EXPECT_EQ(r.config->hiddenDim, 64);
  EXPECT_EQ(r.config->headDim(), 32);
  EXPECT_TRUE(r.config->scaleEmbedding);
  EXPECT_FLOAT_EQ(r.config->embedScale(), 8.0f);
  EXPECT_TRUE(r.config->tieWordEmbeddings);
  EXPECT_EQ(r.config->activation, Activation::Silu);
  EXPECT_EQ(r.config->lrpe, std::vector<bool>({false, false}));
  EXPECT_TRUE(r.warnings.empty());
}

struct BadCase {
  const char *json;
  const char *expected; // substring of the error
};

TEST(ModelConfig, BadInputNamesFileAndField) {
  const BadCase cases[] = {
      {R"({"vocab_size": 256,)", "cfg.json:1:"},
      {R"([1, 2])", "expected a JSON object"},
      {R"({"vocab_size": 256, "decoder_embed_dim": 64, "decoder_layers": 2, "glu_dim": 8})",
       "field 'decoder_attention_heads': required field is missing"},
      {R"({"vocab_size": "256", "decoder_embed_dim": 64, "decoder_layers": 2,
           "decoder_attention_heads": 2, "glu_dim": 8})",
       "field 'vocab_size': expected a positive integer, got a string"},
      {R"({"vocab_size": 256, "decoder_embed_dim": 64, "decoder_layers": -3,
           "decoder_attention_heads": 2, "glu_dim": 8})",
       "field 'decoder_layers': expected a positive integer, got -3"},
      {R"({"vocab_size": 256, "decoder_embed_dim": 64, "decoder_layers": 2,
           "decoder_attention_heads": 0, "glu_dim": 8})",
       "field 'decoder_attention_heads': expected a positive integer, got 0"},
      {R"({"vocab_size": 256, "decoder_embed_dim": 64, "decoder_layers": 2,
           "decoder_attention_heads": 3, "glu_dim": 8})",
       "field 'decoder_attention_heads': 3 heads do not divide hidden_dim 64"},
      {R"({"vocab_size": 256, "decoder_embed_dim": 64, "decoder_layers": 2,
           "decoder_attention_heads": 2, "glu_dim": 8, "linear_act_fun": "relu"})",
       "field 'linear_act_fun': unknown activation 'relu'"},
      {R"({"vocab_size": 256, "decoder_embed_dim": 64, "decoder_layers": 2,
           "decoder_attention_heads": 2, "glu_dim": 8, "norm_type": "layernorm"})",
       "field 'norm_type': unsupported norm type 'layernorm'"},
      {R"({"vocab_size": 256, "decoder_embed_dim": 64, "decoder_layers": 2,
           "decoder_attention_heads": 2, "glu_dim": 8, "linear_use_lrpe_list": [1]})",
       "field 'linear_use_lrpe_list': has 1 entries but decoder_layers is 2"},
      {R"({"vocab_size": 256, "decoder_embed_dim": 64, "decoder_layers": 2,
           "decoder_attention_heads": 2, "glu_dim": 8, "torch_dtype": "int8"})",
       "field 'torch_dtype': unknown dtype 'int8'"},
      {R"({"vocab_size": 256, "decoder_embed_dim": 64.5, "decoder_layers": 2,
           "decoder_attention_heads": 2, "glu_dim": 8})",
       "field 'decoder_embed_dim': expected a positive integer, got a non-integer number"},
  };
  for (const BadCase &c : cases) {
    ConfigResult r = parse(c.json);
    EXPECT_FALSE(r.config) << c.json;
    EXPECT_NE(r.error.find(c.expected), std::string::npos)
        << "error was: " << r.error << "\nexpected: " << c.expected;
    EXPECT_EQ(r.error.rfind("cfg.json", 0), 0u) << r.error;
  }
}

TEST(ModelConfig, UnknownFieldIsAWarning) {
  ConfigResult r = parse(R"({"vocab_size": 256, "decoder_embed_dim": 64, "decoder_layers": 2,
      "decoder_attention_heads": 2, "glu_dim": 128, "rope_theta": 10000, "_note": "x"})");
  ASSERT_TRUE(r.config) << r.error;
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("unknown field 'rope_theta'"), std::string::npos);
}

TEST(ModelConfig, ShippedConfigsParseWithoutWarnings) {
  for (const char *name : {"tiny", "tnl-385m", "tnl-1b", "tnl-3b", "tnl-7b", "tnl-13b", "tnl-15b",
                           "tnl-65b", "tnl-175b"}) {
    ConfigResult r = loadModelConfig(std::string(TNLM_MODELS_DIR) + "/" + name + ".json");
    ASSERT_TRUE(r.config) << name << ": " << r.error;
    EXPECT_TRUE(r.warnings.empty()) << name;
    EXPECT_EQ(r.config->name, name);
  }
  ConfigResult missing = loadModelConfig("/nonexistent/x.json");
  EXPECT_NE(missing.error.find("/nonexistent/x.json: cannot open"), std::string::npos);
}

} // namespace
