// Independent float64 reference of the TransNormerLLM forward pass. See ReferenceModel.h and
// docs/model.md; each step below names the docs/model.md line it implements.
#include "test/reference/ReferenceModel.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace tnlm::ref {
namespace {

constexpr double kPi = 3.14159265358979323846;

std::string layerName(int64_t l, const char *suffix) {
  return "model.layers." + std::to_string(l) + "." + suffix;
}

int64_t product(const std::vector<int64_t> &shape) {
  int64_t p = 1;
  for (int64_t s : shape)
    p *= s;
  return p;
}

const std::vector<double> &tensor(const Weights &w, const std::string &name) {
  auto it = w.find(name);
  if (it == w.end())
    throw std::invalid_argument("reference model: missing weight " + name);
  return it->second;
}

// splitmix64: a tiny, well-known mixing generator, enough for test weights.
struct Rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  double uniform() { // in (0, 1)
    return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  }
  double normal() { // Box-Muller, one value per call
    double u1 = uniform(), u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
  }
};

bool isPowerOfTwo(int64_t n) { return n > 0 && (n & (n - 1)) == 0; }

} // namespace

// ---------------------------------------------------------------------------------------------
// Weights

std::map<std::string, std::vector<int64_t>> weightShapes(const Config &cfg) {
  std::map<std::string, std::vector<int64_t>> s;
  const int64_t V = cfg.vocab, d = cfg.d, D = cfg.hidden, F = cfg.glu, H = cfg.heads;
  s["model.embed_tokens.weight"] = {V, d};
  for (int64_t l = 0; l < cfg.layers; ++l) {
    s[layerName(l, "token_mixer.qkvu_proj.weight")] = {4 * D, d};
    s[layerName(l, "token_mixer.out_proj.weight")] = {d, D};
    if (cfg.layerHasLrpe(l))
      s[layerName(l, "token_mixer.lrpe.theta")] = {H, 1, cfg.headDim()};
    s[layerName(l, "channel_mixer.l1.weight")] = {F, d};
    s[layerName(l, "channel_mixer.l2.weight")] = {F, d};
    s[layerName(l, "channel_mixer.l3.weight")] = {d, F};
  }
  if (!cfg.tied)
    s["lm_head.weight"] = {V, d};
  return s;
}

Weights randomWeights(const Config &cfg, uint64_t seed, double stddev) {
  Rng rng{seed};
  Weights w;
  for (const auto &[name, shape] : weightShapes(cfg)) {
    std::vector<double> t(static_cast<size_t>(product(shape)));
    if (name.size() > 11 && name.compare(name.size() - 11, 11, ".lrpe.theta") == 0) {
      const double D = static_cast<double>(cfg.hidden);
      for (size_t i = 0; i < t.size(); ++i)
        t[i] = std::pow(10000.0, -2.0 * static_cast<double>(i) / D);
    } else {
      for (double &x : t)
        x = stddev * rng.normal();
      if (name == "model.embed_tokens.weight")
        for (int64_t c = 0; c < cfg.d; ++c)
          t[static_cast<size_t>(c)] = 0.0; // padding row
    }
    w[name] = std::move(t);
  }
  return w;
}

void validate(const Config &cfg, const Weights &w) {
  if (cfg.vocab <= 0 || cfg.d <= 0 || cfg.layers <= 0 || cfg.heads <= 0 || cfg.hidden <= 0 ||
      cfg.glu <= 0)
    throw std::invalid_argument("reference model: every dimension must be positive");
  if (cfg.hidden % cfg.heads != 0)
    throw std::invalid_argument("reference model: hidden must be a multiple of heads");
  for (const auto &[name, shape] : weightShapes(cfg)) {
    const auto &t = tensor(w, name);
    if (static_cast<int64_t>(t.size()) != product(shape))
      throw std::invalid_argument("reference model: wrong element count for " + name);
  }
}

// ---------------------------------------------------------------------------------------------
// Decay rates

std::vector<double> alibiSlopes(int64_t heads) {
  if (heads <= 0)
    throw std::invalid_argument("alibiSlopes: heads must be positive");
  if (isPowerOfTwo(heads)) {
    // s_h = 2^(−8(h+1)/H)
    std::vector<double> s(static_cast<size_t>(heads));
    for (int64_t h = 0; h < heads; ++h)
      s[static_cast<size_t>(h)] =
          std::exp2(-8.0 * static_cast<double>(h + 1) / static_cast<double>(heads));
    return s;
  }
  // slopes(H) = slopes(P) + slopes(2P)[0::2][:H−P], P = 2^floor(log2 H)
  int64_t p = 1;
  while (p * 2 <= heads)
    p *= 2;
  std::vector<double> s = alibiSlopes(p);
  std::vector<double> twice = alibiSlopes(2 * p);
  for (int64_t i = 0; i < heads - p; ++i)
    s.push_back(twice[static_cast<size_t>(2 * i)]);
  return s;
}

double decayRate(int64_t heads, int64_t h, int64_t layer, int64_t layers) {
  if (h < 0 || h >= heads || layer < 0 || layer >= layers)
    throw std::invalid_argument("decayRate: head or layer out of range");
  const float base = static_cast<float>(alibiSlopes(heads)[static_cast<size_t>(h)]);
  // The reference code computes 1 − l/(L−1) + 1e-5 as a Python float (double); L = 1 would
  // divide by zero there, so we take l/(L−1) = 0 (factor 1 + 1e-5).
  const double frac =
      layers > 1 ? static_cast<double>(layer) / static_cast<double>(layers - 1) : 0.0;
  const float factor = static_cast<float>(1.0 - frac + 1e-5);
  const float rate = base * factor; // float × float, rounded to float
  return static_cast<double>(rate);
}

std::vector<double> layerDecayRates(int64_t heads, int64_t layer, int64_t layers) {
  std::vector<double> s(static_cast<size_t>(heads));
  for (int64_t h = 0; h < heads; ++h)
    s[static_cast<size_t>(h)] = decayRate(heads, h, layer, layers);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Building blocks

void srmsNorm(std::vector<double> &x, int64_t rows, int64_t d, double eps) {
  if (static_cast<int64_t>(x.size()) != rows * d)
    throw std::invalid_argument("srmsNorm: size mismatch");
  for (int64_t r = 0; r < rows; ++r) {
    double *row = x.data() + r * d;
    double sumSq = 0.0;
    for (int64_t c = 0; c < d; ++c)
      sumSq += row[c] * row[c];
    const double rstd = 1.0 / std::sqrt(sumSq / static_cast<double>(d) + eps);
    for (int64_t c = 0; c < d; ++c)
      row[c] *= rstd;
  }
}

double silu(double z) { return z / (1.0 + std::exp(-z)); }

std::vector<double> attentionRecurrent(const std::vector<double> &q, const std::vector<double> &k,
                                       const std::vector<double> &v, int64_t n, int64_t heads,
                                       int64_t dk, int64_t dv, const std::vector<double> &decay) {
  if (static_cast<int64_t>(q.size()) != n * heads * dk ||
      static_cast<int64_t>(k.size()) != n * heads * dk ||
      static_cast<int64_t>(v.size()) != n * heads * dv ||
      static_cast<int64_t>(decay.size()) != heads)
    throw std::invalid_argument("attentionRecurrent: size mismatch");
  std::vector<double> o(static_cast<size_t>(n * heads * dv), 0.0);
  std::vector<double> S(static_cast<size_t>(dk * dv));
  for (int64_t h = 0; h < heads; ++h) {
    const double lambda = std::exp(-decay[static_cast<size_t>(h)]);
    std::fill(S.begin(), S.end(), 0.0);
    for (int64_t t = 0; t < n; ++t) {
      const double *qt = q.data() + (t * heads + h) * dk;
      const double *kt = k.data() + (t * heads + h) * dk;
      const double *vt = v.data() + (t * heads + h) * dv;
      double *ot = o.data() + (t * heads + h) * dv;
      // S_t = λ S_{t−1} + k_tᵀ v_t
      for (int64_t i = 0; i < dk; ++i)
        for (int64_t j = 0; j < dv; ++j)
          S[static_cast<size_t>(i * dv + j)] =
              lambda * S[static_cast<size_t>(i * dv + j)] + kt[i] * vt[j];
      // o_t = q_t S_t
      for (int64_t j = 0; j < dv; ++j) {
        double acc = 0.0;
        for (int64_t i = 0; i < dk; ++i)
          acc += qt[i] * S[static_cast<size_t>(i * dv + j)];
        ot[j] = acc;
      }
    }
  }
  return o;
}

std::vector<double> attentionDense(const std::vector<double> &q, const std::vector<double> &k,
                                   const std::vector<double> &v, int64_t n, int64_t heads,
                                   int64_t dk, int64_t dv, const std::vector<double> &decay) {
  if (static_cast<int64_t>(q.size()) != n * heads * dk ||
      static_cast<int64_t>(k.size()) != n * heads * dk ||
      static_cast<int64_t>(v.size()) != n * heads * dv ||
      static_cast<int64_t>(decay.size()) != heads)
    throw std::invalid_argument("attentionDense: size mismatch");
  std::vector<double> o(static_cast<size_t>(n * heads * dv), 0.0);
  for (int64_t h = 0; h < heads; ++h) {
    const double s = decay[static_cast<size_t>(h)];
    for (int64_t t = 0; t < n; ++t) {
      const double *qt = q.data() + (t * heads + h) * dk;
      double *ot = o.data() + (t * heads + h) * dv;
      for (int64_t u = 0; u <= t; ++u) {
        const double *ku = k.data() + (u * heads + h) * dk;
        const double *vu = v.data() + (u * heads + h) * dv;
        double score = 0.0;
        for (int64_t i = 0; i < dk; ++i)
          score += qt[i] * ku[i];
        score *= std::exp(-s * static_cast<double>(t - u)); // λ^{t−u}
        for (int64_t j = 0; j < dv; ++j)
          ot[j] += score * vu[j];
      }
    }
  }
  return o;
}

std::vector<double> lrpe(const std::vector<double> &x, int64_t n, int64_t heads, int64_t dh,
                         const std::vector<double> &theta, int64_t offset) {
  if (static_cast<int64_t>(x.size()) != n * heads * dh ||
      static_cast<int64_t>(theta.size()) != heads * dh)
    throw std::invalid_argument("lrpe: size mismatch");
  std::vector<double> y(static_cast<size_t>(n * heads * 2 * dh));
  for (int64_t t = 0; t < n; ++t) {
    const double p = static_cast<double>(t + offset);
    for (int64_t h = 0; h < heads; ++h) {
      const double *xr = x.data() + (t * heads + h) * dh;
      const double *th = theta.data() + h * dh;
      double *yr = y.data() + (t * heads + h) * 2 * dh;
      for (int64_t c = 0; c < dh; ++c) {
        const double angle = th[c] * p;
        yr[c] = xr[c] * std::cos(angle);
        yr[dh + c] = xr[c] * std::sin(angle);
      }
    }
  }
  return y;
}

std::vector<double> linear(const std::vector<double> &x, int64_t rows, int64_t in,
                           const std::vector<double> &w, int64_t out) {
  if (static_cast<int64_t>(x.size()) != rows * in || static_cast<int64_t>(w.size()) != out * in)
    throw std::invalid_argument("linear: size mismatch");
  std::vector<double> y(static_cast<size_t>(rows * out));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0.0;
      for (int64_t i = 0; i < in; ++i)
        acc += x[static_cast<size_t>(r * in + i)] * w[static_cast<size_t>(o * in + i)];
      y[static_cast<size_t>(r * out + o)] = acc;
    }
  return y;
}

// ---------------------------------------------------------------------------------------------
// Whole model

namespace {

// TokenMixer_l applied to y = SRMSNorm(x) ([N, d]) → [N, d] (docs/model.md "TokenMixer").
std::vector<double> tokenMixer(const Config &cfg, const Weights &w, int64_t l,
                               const std::vector<double> &y, int64_t n, int64_t offset) {
  const int64_t d = cfg.d, D = cfg.hidden, H = cfg.heads, dh = cfg.headDim();
  // [q | k | v | u] = y · Wqkvuᵀ; each block head-major, dh-minor, so [N, D] == [N, H, dh].
  const auto qkvu = linear(y, n, d, tensor(w, layerName(l, "token_mixer.qkvu_proj.weight")), 4 * D);
  std::vector<double> q(static_cast<size_t>(n * D)), k(q.size()), v(q.size()), u(q.size());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < D; ++c) {
      const double *row = qkvu.data() + t * 4 * D;
      const size_t at = static_cast<size_t>(t * D + c);
      q[at] = cfg.silu ? silu(row[c]) : row[c];         // φ(q)
      k[at] = cfg.silu ? silu(row[D + c]) : row[D + c]; // φ(k)
      v[at] = row[2 * D + c];                           // no activation
      u[at] = row[3 * D + c];                           // no activation
    }
  int64_t dk = dh;
  if (cfg.layerHasLrpe(l)) {
    const auto &theta = tensor(w, layerName(l, "token_mixer.lrpe.theta"));
    q = lrpe(q, n, H, dh, theta, offset);
    k = lrpe(k, n, H, dh, theta, offset);
    dk = 2 * dh;
  }
  // O = concat_h O_h, [N, H, dh] == [N, D]
  std::vector<double> o =
      attentionRecurrent(q, k, v, n, H, dk, dh, layerDecayRates(H, l, cfg.layers));
  srmsNorm(o, n, D, cfg.eps); // one norm over all D features
  for (size_t i = 0; i < o.size(); ++i)
    o[i] *= u[i]; // output gate, no activation
  return linear(o, n, D, tensor(w, layerName(l, "token_mixer.out_proj.weight")), d);
}

// SGLU(y) = (y·W1ᵀ ⊙ y·W2ᵀ) · W3ᵀ (docs/model.md "SGLU").
std::vector<double> sglu(const Config &cfg, const Weights &w, int64_t l,
                         const std::vector<double> &y, int64_t n) {
  const int64_t d = cfg.d, F = cfg.glu;
  auto a = linear(y, n, d, tensor(w, layerName(l, "channel_mixer.l1.weight")), F);
  const auto b = linear(y, n, d, tensor(w, layerName(l, "channel_mixer.l2.weight")), F);
  for (size_t i = 0; i < a.size(); ++i)
    a[i] *= b[i];
  return linear(a, n, F, tensor(w, layerName(l, "channel_mixer.l3.weight")), d);
}

} // namespace

std::vector<double> logits(const Config &cfg, const Weights &w, const std::vector<int32_t> &ids,
                           int64_t positionOffset) {
  validate(cfg, w);
  const int64_t n = static_cast<int64_t>(ids.size()), d = cfg.d, V = cfg.vocab;
  const auto &E = tensor(w, "model.embed_tokens.weight");
  // x0 = embed_scale · E[ids]
  const double scale = cfg.scaleEmbedding ? std::sqrt(static_cast<double>(d)) : 1.0;
  std::vector<double> x(static_cast<size_t>(n * d));
  for (int64_t t = 0; t < n; ++t) {
    const int64_t id = ids[static_cast<size_t>(t)];
    if (id < 0 || id >= V)
      throw std::invalid_argument("reference model: token id out of range");
    for (int64_t c = 0; c < d; ++c)
      x[static_cast<size_t>(t * d + c)] = scale * E[static_cast<size_t>(id * d + c)];
  }
  for (int64_t l = 0; l < cfg.layers; ++l) {
    // h = x + TokenMixer_l(SRMSNorm(x))
    std::vector<double> y = x;
    srmsNorm(y, n, d, cfg.eps);
    const auto mix = tokenMixer(cfg, w, l, y, n, positionOffset);
    for (size_t i = 0; i < x.size(); ++i)
      x[i] += mix[i];
    // x = h + SGLU_l(SRMSNorm(h))
    y = x;
    srmsNorm(y, n, d, cfg.eps);
    const auto ch = sglu(cfg, w, l, y, n);
    for (size_t i = 0; i < x.size(); ++i)
      x[i] += ch[i];
  }
  // logits = SRMSNorm(x) · Wlmᵀ
  srmsNorm(x, n, d, cfg.eps);
  return linear(x, n, d, cfg.tied ? E : tensor(w, "lm_head.weight"), V);
}

double crossEntropy(const std::vector<double> &lg, int64_t vocab, const std::vector<int32_t> &ids) {
  const int64_t n = static_cast<int64_t>(ids.size());
  if (n < 2 || static_cast<int64_t>(lg.size()) != n * vocab)
    throw std::invalid_argument("crossEntropy: needs N >= 2 and logits [N, V]");
  double total = 0.0;
  for (int64_t t = 0; t + 1 < n; ++t) {
    const double *row = lg.data() + t * vocab;
    double mx = row[0];
    for (int64_t c = 1; c < vocab; ++c)
      mx = std::max(mx, row[c]);
    double sum = 0.0;
    for (int64_t c = 0; c < vocab; ++c)
      sum += std::exp(row[c] - mx);
    const int64_t target = ids[static_cast<size_t>(t + 1)];
    if (target < 0 || target >= vocab)
      throw std::invalid_argument("crossEntropy: target id out of range");
    total += mx + std::log(sum) - row[target]; // logsumexp − logit[target]
  }
  return total / static_cast<double>(n - 1);
}

double loss(const Config &cfg, const Weights &w, const std::vector<int32_t> &ids) {
  if (ids.size() < 2)
    throw std::invalid_argument("loss: needs at least two tokens");
  return crossEntropy(logits(cfg, w, ids), cfg.vocab, ids);
}

} // namespace tnlm::ref
