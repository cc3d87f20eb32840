//===- ModelConfig.cpp - Hugging Face TransNormerLLM configs --------------===//
#include "models/ModelConfig.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

using nlohmann::json;

namespace mlir::tnlm {

const char *dtypeName(ParamDType t) {
  switch (t) {
  case ParamDType::F32:
    return "f32";
  case ParamDType::BF16:
    return "bf16";
  case ParamDType::F16:
    return "f16";
  }
  return "?";
}

std::optional<ParamDType> parseDType(const std::string &n) {
  if (n == "f32" || n == "float32" || n == "float")
    return ParamDType::F32;
  if (n == "bf16" || n == "bfloat16")
    return ParamDType::BF16;
  if (n == "f16" || n == "float16" || n == "half")
    return ParamDType::F16;
  return std::nullopt;
}

float ModelConfig::embedScale() const {
  return scaleEmbedding ? std::sqrt(static_cast<float>(embedDim)) : 1.0f;
}

std::vector<double> alibiSlopes(int64_t heads) {
  auto powerOfTwo = [](int64_t n) {
    std::vector<double> s(static_cast<size_t>(n));
    for (int64_t h = 0; h < n; ++h)
      s[h] = std::pow(2.0, -8.0 * static_cast<double>(h + 1) / static_cast<double>(n));
    return s;
  };
  if (heads <= 0)
    return {};
  int64_t p = 1;
  while (p * 2 <= heads)
    p *= 2;
  std::vector<double> slopes = powerOfTwo(p);
  if (p == heads)
    return slopes;
  std::vector<double> extra = powerOfTwo(2 * p);
  for (int64_t i = 0; i < heads - p; ++i)
    slopes.push_back(extra[static_cast<size_t>(2 * i)]);
  return slopes;
}

std::vector<float> layerDecaySlopes(int64_t heads, int64_t layer, int64_t layers) {
  // Reference: slopes (python floats → f32 tensor) * (1 - l/(L-1) + 1e-5) (python float → f32).
  double factor = layers > 1
                      ? 1.0 - static_cast<double>(layer) / static_cast<double>(layers - 1) + 1e-5
                      : 1.0 + 1e-5;
  float f = static_cast<float>(factor);
  std::vector<float> out;
  for (double s : alibiSlopes(heads))
    out.push_back(static_cast<float>(s) * f);
  return out;
}

namespace {

// Fields of the reference config that tnlm reads or knowingly ignores; anything else is
// reported as a warning. Fields starting with '_' are comments/metadata.
const std::set<std::string> kKnownFields = {"vocab_size",
                                            "decoder_embed_dim",
                                            "decoder_layers",
                                            "decoder_attention_heads",
                                            "hidden_dim",
                                            "glu_dim",
                                            "no_scale_embedding",
                                            "linear_use_lrpe_list",
                                            "linear_act_fun",
                                            "norm_type",
                                            "tie_word_embeddings",
                                            "torch_dtype",
                                            "pad_token_id",
                                            "bos_token_id",
                                            "eos_token_id",
                                            "architectures",
                                            "auto_map",
                                            "model_type",
                                            "transformers_version",
                                            "use_cache",
                                            "init_std",
                                            "add_bos_token",
                                            "add_eos_token",
                                            "causal",
                                            "bias",
                                            "glu_act",
                                            "max_position_embeddings",
                                            "fp32_ln",
                                            "fp32_attn"};

struct Parser {
  const json &root;
  std::string source;
  std::string error;

  bool fail(const std::string &field, const std::string &what) {
    if (error.empty())
      error = source + ": field '" + field + "': " + what;
    return false;
  }

  static std::string typeName(const json &v) { return v.type_name(); }

  bool positiveInt(const char *field, int64_t &out, bool required, int64_t dflt = 0) {
    auto it = root.find(field);
    if (it == root.end()) {
      if (required)
        return fail(field, "required field is missing");
      out = dflt;
      return true;
    }
    if (!it->is_number_integer())
      return fail(field, std::string("expected a positive integer, got ") +
                             (it->is_number() ? "a non-integer number " + it->dump()
                                              : "a " + typeName(*it)));
    int64_t v = it->get<int64_t>();
    if (v <= 0)
      return fail(field, "expected a positive integer, got " + std::to_string(v));
    out = v;
    return true;
  }

  bool boolean(const char *field, bool &out, bool dflt) {
    auto it = root.find(field);
    if (it == root.end()) {
      out = dflt;
      return true;
    }
    if (it->is_boolean()) {
      out = it->get<bool>();
      return true;
    }
    if (it->is_number_integer() && (it->get<int64_t>() == 0 || it->get<int64_t>() == 1)) {
      out = it->get<int64_t>() == 1;
      return true;
    }
    return fail(field, "expected true or false, got " + it->dump());
  }

  bool string(const char *field, std::string &out, const std::string &dflt) {
    auto it = root.find(field);
    if (it == root.end()) {
      out = dflt;
      return true;
    }
    if (!it->is_string())
      return fail(field, "expected a string, got a " + typeName(*it));
    out = it->get<std::string>();
    return true;
  }

  bool intOr(const char *field, int64_t &out, int64_t dflt) {
    auto it = root.find(field);
    if (it == root.end() || it->is_null()) {
      out = dflt;
      return true;
    }
    if (!it->is_number_integer())
      return fail(field, "expected an integer, got " + it->dump());
    out = it->get<int64_t>();
    return true;
  }
};

std::string stemOf(const std::string &path) {
  size_t slash = path.find_last_of('/');
  std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  size_t dot = base.rfind('.');
  return dot == std::string::npos || dot == 0 ? base : base.substr(0, dot);
}

} // namespace

ConfigResult parseModelConfig(const std::string &text, const std::string &source) {
  ConfigResult result;
  json root;
  try {
    root = json::parse(text);
  } catch (const json::parse_error &e) {
    // e.byte is the 1-based offset of the failure; report line:column.
    size_t line = 1, col = 1;
    for (size_t i = 0; i + 1 < e.byte && i < text.size(); ++i) {
      if (text[i] == '\n') {
        ++line;
        col = 1;
      } else {
        ++col;
      }
    }
    std::string msg = e.what();
    size_t colon = msg.find(": ");
    result.error =
        source + ":" + std::to_string(line) + ":" + std::to_string(col) +
        ": malformed JSON: " + (colon == std::string::npos ? msg : msg.substr(colon + 2));
    return result;
  }
  if (!root.is_object()) {
    result.error = source + ": expected a JSON object at the top level, got a " +
                   std::string(root.type_name());
    return result;
  }

  Parser p{root, source, {}};
  ModelConfig c;
  c.name = stemOf(source);
  bool ok = p.positiveInt("vocab_size", c.vocabSize, true) &&
            p.positiveInt("decoder_embed_dim", c.embedDim, true) &&
            p.positiveInt("decoder_layers", c.layers, true) &&
            p.positiveInt("decoder_attention_heads", c.heads, true) &&
            p.positiveInt("glu_dim", c.gluDim, true) &&
            p.positiveInt("hidden_dim", c.hiddenDim, false, c.embedDim);
  bool noScale = false;
  ok = ok && p.boolean("no_scale_embedding", noScale, false) &&
       p.boolean("tie_word_embeddings", c.tieWordEmbeddings, true);
  c.scaleEmbedding = !noScale;

  if (ok && c.hiddenDim % c.heads != 0)
    ok = p.fail("decoder_attention_heads", std::to_string(c.heads) +
                                               " heads do not divide hidden_dim " +
                                               std::to_string(c.hiddenDim));

  std::string act, norm, dtype, gluAct;
  ok = ok && p.string("linear_act_fun", act, "silu") &&
       p.string("norm_type", norm, "simplermsnorm") && p.string("torch_dtype", dtype, "float32") &&
       p.string("glu_act", gluAct, "none");
  if (ok) {
    if (act == "silu" || act == "swish")
      c.activation = Activation::Silu;
    else if (act == "none" || act == "identity")
      c.activation = Activation::Identity;
    else
      ok = p.fail("linear_act_fun",
                  "unknown activation '" + act + "' (supported: silu, swish, none)");
  }
  if (ok && norm != "simplermsnorm")
    ok = p.fail("norm_type", "unsupported norm type '" + norm + "' (supported: simplermsnorm)");
  if (ok && gluAct != "none" && gluAct != "identity")
    ok = p.fail("glu_act",
                "unsupported SGLU activation '" + gluAct + "' (TransNormerLLM's SGLU has none)");
  if (ok) {
    if (auto t = parseDType(dtype))
      c.dtype = *t;
    else
      ok = p.fail("torch_dtype",
                  "unknown dtype '" + dtype + "' (supported: float32, bfloat16, float16)");
  }
  bool bias = false, causal = true;
  ok = ok && p.boolean("bias", bias, false) && p.boolean("causal", causal, true) &&
       p.boolean("_reconstructed", c.reconstructed, false);
  if (ok && bias)
    ok = p.fail("bias", "biases are not supported (TransNormerLLM has none)");
  if (ok && !causal)
    ok = p.fail("causal", "only causal language models are supported");
  ok = ok && p.intOr("pad_token_id", c.padTokenId, 0) && p.intOr("bos_token_id", c.bosTokenId, 1) &&
       p.intOr("eos_token_id", c.eosTokenId, 2);

  if (ok) {
    c.lrpe.assign(static_cast<size_t>(c.layers), false);
    auto it = root.find("linear_use_lrpe_list");
    if (it != root.end()) {
      if (!it->is_array())
        ok = p.fail("linear_use_lrpe_list",
                    "expected a list of 0/1 flags, got a " + std::string(it->type_name()));
      else if (it->size() != static_cast<size_t>(c.layers))
        ok = p.fail("linear_use_lrpe_list", "has " + std::to_string(it->size()) +
                                                " entries but decoder_layers is " +
                                                std::to_string(c.layers));
      else
        for (size_t i = 0; ok && i < it->size(); ++i) {
          const json &f = (*it)[i];
          if (f.is_boolean())
            c.lrpe[i] = f.get<bool>();
          else if (f.is_number_integer() && (f.get<int64_t>() == 0 || f.get<int64_t>() == 1))
            c.lrpe[i] = f.get<int64_t>() == 1;
          else
            ok = p.fail("linear_use_lrpe_list",
                        "entry " + std::to_string(i) + " must be 0 or 1, got " + f.dump());
        }
    }
  }
  if (ok && c.padTokenId >= c.vocabSize)
    ok = p.fail("pad_token_id", std::to_string(c.padTokenId) + " is not below vocab_size " +
                                    std::to_string(c.vocabSize));
  if (!ok) {
    result.error = p.error;
    return result;
  }

  for (auto it = root.begin(); it != root.end(); ++it)
    if (!it.key().empty() && it.key()[0] != '_' && !kKnownFields.count(it.key()))
      result.warnings.push_back(source + ": warning: unknown field '" + it.key() + "' ignored");
  result.config = std::move(c);
  return result;
}

ConfigResult loadModelConfig(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    ConfigResult r;
    r.error = path + ": cannot open model config";
    return r;
  }
  std::stringstream buffer;
  buffer << in.rdbuf();
  return parseModelConfig(buffer.str(), path);
}

} // namespace mlir::tnlm
