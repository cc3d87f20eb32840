// Independent float64 reference of the TransNormerLLM forward pass (tests only).
//
// Written straight from docs/model.md ("the numeric contract") with plain loops: no BLAS, no
// code shared with the runtime or the compiler. Tests use it as the numerics oracle, so it
// favours obviousness over speed. Every tensor is a row-major std::vector<double>.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace tnlm::ref {

/// Model hyper-parameters (docs/model.md "Symbols").
struct Config {
  int64_t vocab = 0;          ///< V
  int64_t d = 0;              ///< model width
  int64_t layers = 0;         ///< L
  int64_t heads = 0;          ///< H; head dim dh = hidden / heads
  int64_t hidden = 0;         ///< D, token-mixer width
  int64_t glu = 0;            ///< F, SGLU inner width
  bool scaleEmbedding = true; ///< x0 = sqrt(d)·E[ids] when true (no_scale_embedding = false)
  bool tied = true;           ///< lm head = embedding matrix; otherwise "lm_head.weight"
  bool silu = true;           ///< φ = SiLU on q, k; false → identity ("none")
  std::vector<bool> lrpe;     ///< per layer; missing entries mean false
  double eps = 1e-6;          ///< SRMSNorm epsilon

  int64_t headDim() const { return heads > 0 ? hidden / heads : 0; }
  bool layerHasLrpe(int64_t l) const {
    return l >= 0 && l < static_cast<int64_t>(lrpe.size()) && lrpe[static_cast<size_t>(l)];
  }
};

/// Hugging Face state-dict names (docs/model.md "Checkpoint layout") → row-major data.
/// "lm_head.weight" is read only when !tied; "...lrpe.theta" only for LRPE layers.
using Weights = std::map<std::string, std::vector<double>>;

/// Name → shape of every tensor the forward pass reads for this config.
std::map<std::string, std::vector<int64_t>> weightShapes(const Config &cfg);

/// Deterministic pseudo-random weights: every matrix ~ N(0, stddev²) (own generator, same
/// seed → same weights on every platform), embedding row 0 zero (padding), LRPE θ initialized
/// as θ_flat[i] = 10000^(−2i/D), i = 0..D−1 (D = d in every released config).
Weights randomWeights(const Config &cfg, uint64_t seed, double stddev = 0.02);

/// Throws std::invalid_argument when the config is inconsistent or a tensor the forward pass
/// needs is missing or has the wrong number of elements.
void validate(const Config &cfg, const Weights &w);

// ---- decay rates (docs/model.md "Decay rates") ----

/// ALiBi base slopes s_h for H heads, in double (not yet rounded to float).
std::vector<double> alibiSlopes(int64_t heads);

/// s_{l,h} = float(s_h) · float(1 − l/(L−1) + 1e-5), multiplied in float like the reference
/// code (slopes are an fp32 tensor, the factor a Python scalar). λ_{l,h} = exp(−s_{l,h}).
/// L = 1: the reference code would divide by zero; we use the factor 1 + 1e-5 (l/(L−1) := 0).
double decayRate(int64_t heads, int64_t h, int64_t layer, int64_t layers);

/// All H decay rates s_{l,h} of one layer.
std::vector<double> layerDecayRates(int64_t heads, int64_t layer, int64_t layers);

// ---- building blocks (exposed for kernel tests) ----

/// In place, per row: x ← x · 1/sqrt(mean(x²) + eps). x is [rows, d].
void srmsNorm(std::vector<double> &x, int64_t rows, int64_t d, double eps);

/// SiLU(z) = z · sigmoid(z).
double silu(double z);

/// Causal decayed linear attention, recurrent form, per head h with λ_h = exp(−decay[h]):
/// S_t = λ S_{t−1} + k_tᵀ v_t ; o_t = q_t S_t (state S in double, dk × dv).
/// q, k: [N, H, dk]; v: [N, H, dv]; result [N, H, dv].
std::vector<double> attentionRecurrent(const std::vector<double> &q, const std::vector<double> &k,
                                       const std::vector<double> &v, int64_t n, int64_t heads,
                                       int64_t dk, int64_t dv, const std::vector<double> &decay);

/// Same quantity, dense form: o_t = Σ_{s≤t} λ^{t−s} (q_t·k_s) v_s. Same layouts.
std::vector<double> attentionDense(const std::vector<double> &q, const std::vector<double> &k,
                                   const std::vector<double> &v, int64_t n, int64_t heads,
                                   int64_t dk, int64_t dv, const std::vector<double> &decay);

/// LRPE: x [N, H, dh], θ [H, dh] (the checkpoint's [H, 1, dh]), positions p = t + offset →
/// [N, H, 2dh] with row (t, h) = concat(x ⊙ cos(θ_h p), x ⊙ sin(θ_h p)).
std::vector<double> lrpe(const std::vector<double> &x, int64_t n, int64_t heads, int64_t dh,
                         const std::vector<double> &theta, int64_t offset);

/// y = x · Wᵀ with x [rows, in], W [out, in] → y [rows, out].
std::vector<double> linear(const std::vector<double> &x, int64_t rows, int64_t in,
                           const std::vector<double> &w, int64_t out);

// ---- whole model ----

/// Logits of one sequence: [N, V] row-major. positionOffset shifts the LRPE positions
/// (p = t + positionOffset).
std::vector<double> logits(const Config &cfg, const Weights &w, const std::vector<int32_t> &ids,
                           int64_t positionOffset = 0);

/// Mean cross-entropy of logits[t] against ids[t+1], t = 0..N−2 (needs N ≥ 2).
double loss(const Config &cfg, const Weights &w, const std::vector<int32_t> &ids);

/// Mean cross-entropy of precomputed logits [N, V] against ids[t+1] (needs N ≥ 2).
double crossEntropy(const std::vector<double> &logits, int64_t vocab,
                    const std::vector<int32_t> &ids);

} // namespace tnlm::ref
