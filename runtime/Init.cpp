//===- Init.cpp - deterministic initialization of parameters --------------===//
#include "runtime/Init.h"

#include "runtime/Error.h"
#include "runtime/Safetensors.h"

#include <cmath>

namespace tnlm {

namespace {

constexpr uint64_t kGoldenGamma = 0x9e3779b97f4a7c15ull; // 2^64 / golden ratio, odd
constexpr double kTwoPi = 6.283185307179586476925286766559;

// The splitmix64 output function: a bijective 64-bit mixer with full avalanche, so nearby
// counters give unrelated outputs.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// FNV-1a over the name, then mixed with the seed: the per-tensor key of the stream.
uint64_t streamKey(uint64_t seed, const std::string &name) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : name) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return mix64(mix64(seed) ^ h);
}

// The n-th output of a splitmix64 stream started at `key`, without stepping through the
// first n: state_n = key + (n + 1)·γ.
uint64_t counterBits(uint64_t key, uint64_t n) { return mix64(key + (n + 1) * kGoldenGamma); }

// Uniform in (0, 1]: the top 53 bits, shifted by one ulp so log() below never sees zero.
double uniformOpenZero(uint64_t bits) {
  return (static_cast<double>(bits >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

// Box–Muller on the pair (2j, 2j+1): element 2j takes the cosine, 2j+1 the sine. Computed in
// double so the float result is unaffected by the transform's own rounding.
double normalAt(uint64_t key, uint64_t i) {
  uint64_t pair = i / 2;
  double u1 = uniformOpenZero(counterBits(key, 2 * pair));
  double u2 = uniformOpenZero(counterBits(key, 2 * pair + 1));
  double r = std::sqrt(-2.0 * std::log(u1));
  double angle = kTwoPi * u2;
  return (i % 2 == 0) ? r * std::cos(angle) : r * std::sin(angle);
}

bool endsWith(const std::string &s, const std::string &suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shapeText(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

[[noreturn]] void failParam(const std::string &name, const std::string &message) {
  throw Error("parameter '" + name + "': " + message);
}

} // namespace

double standardNormal(uint64_t seed, const std::string &streamName, uint64_t i) {
  return normalAt(streamKey(seed, streamName), i);
}

void initParameter(const std::string &name, const std::vector<int64_t> &shape, uint64_t seed,
                   float *out) {
  uint64_t n = static_cast<uint64_t>(numElements(shape, "parameter '" + name + "'"));

  if (endsWith(name, ".lrpe.theta")) {
    if (shape.size() != 3 || shape[1] != 1)
      failParam(name, "LRPE theta must have shape [H, 1, dh], got " + shapeText(shape));
    // θ_flat[i] = 10000^(-2i/d) with d = H·dh = n. Evaluated in double and rounded once, so
    // every entry is the float nearest the exact value.
    double d = static_cast<double>(n);
    for (uint64_t i = 0; i < n; ++i)
      out[i] = static_cast<float>(std::pow(10000.0, -2.0 * static_cast<double>(i) / d));
    return;
  }

  if (endsWith(name, ".weight")) {
    if (shape.size() != 2)
      failParam(name, "linear and embedding weights must be rank 2, got " + shapeText(shape));
    uint64_t key = streamKey(seed, name);
    for (uint64_t i = 0; i < n; ++i)
      out[i] = static_cast<float>(kInitStd * normalAt(key, i));
    // Token 0 is padding (docs/model.md): its embedding row starts at zero.
    if (name == "model.embed_tokens.weight")
      for (int64_t j = 0; j < shape[1] && shape[0] > 0; ++j)
        out[j] = 0.0f;
    return;
  }

  failParam(name, "no initialization rule (expected a '*.weight' or '*.lrpe.theta' name)");
}

} // namespace tnlm
