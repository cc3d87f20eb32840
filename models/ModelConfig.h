//===- ModelConfig.h - Hugging Face TransNormerLLM configs ------*- C++ -*-===//
//
// The config fields and their meaning are those of docs/model.md ("Symbols"). Parsing never
// throws to the caller: it returns either a config or one error naming the file and field.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_MODELS_MODELCONFIG_H
#define TNLM_MODELS_MODELCONFIG_H

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace mlir::tnlm {

enum class Activation { Silu, Identity };
enum class ParamDType { F32, BF16, F16 };

const char *dtypeName(ParamDType t);                           // "f32", "bf16", "f16"
std::optional<ParamDType> parseDType(const std::string &name); // also torch names

struct ModelConfig {
  std::string name;                         // file stem, e.g. "tnl-7b"
  int64_t vocabSize = 0;                    // V
  int64_t embedDim = 0;                     // d   (decoder_embed_dim)
  int64_t layers = 0;                       // L   (decoder_layers)
  int64_t heads = 0;                        // H   (decoder_attention_heads)
  int64_t hiddenDim = 0;                    // D   (hidden_dim, defaults to d)
  int64_t gluDim = 0;                       // F   (glu_dim)
  bool scaleEmbedding = true;               // !no_scale_embedding
  bool tieWordEmbeddings = true;            // tie_word_embeddings
  std::vector<bool> lrpe;                   // linear_use_lrpe_list, one flag per layer
  Activation activation = Activation::Silu; // linear_act_fun
  ParamDType dtype = ParamDType::F32;       // torch_dtype
  float normEps = 1e-6f;
  int64_t padTokenId = 0, bosTokenId = 1, eosTokenId = 2;
  bool reconstructed = false; // "_reconstructed": shape not from a released config

  int64_t headDim() const { return hiddenDim / heads; }
  float embedScale() const;
  bool hasLrpe(int64_t layer) const { return lrpe[static_cast<size_t>(layer)]; }
};

struct ConfigResult {
  std::optional<ModelConfig> config;
  std::string error;                 // set when config is empty: "<file>: <what is wrong>"
  std::vector<std::string> warnings; // e.g. unknown fields
};

/// Parses a Hugging Face-style TransNormerLLM config.json text. `source` names the file in
/// messages.
ConfigResult parseModelConfig(const std::string &text, const std::string &source);

/// Reads and parses a config file.
ConfigResult loadModelConfig(const std::string &path);

/// ALiBi base slopes for H heads (docs/model.md "Decay rates"): s_h = 2^(−8(h+1)/H) for H a
/// power of two; otherwise slopes(P) + slopes(2P)[0::2][:H−P] with P = 2^floor(log2 H).
std::vector<double> alibiSlopes(int64_t heads);

/// Per-layer decay rates s_{l,h} = s_h · (1 − l/(L−1) + 1e-5), in f32 as the reference code
/// computes them; λ_{l,h} = exp(−s_{l,h}). For L = 1 the factor is 1 + 1e-5.
std::vector<float> layerDecaySlopes(int64_t heads, int64_t layer, int64_t layers);

} // namespace mlir::tnlm

#endif // TNLM_MODELS_MODELCONFIG_H
