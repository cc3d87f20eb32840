//===- BenchCommon.h - helpers shared by the GPU benchmarks -----*- C++ -*-===//
#ifndef TNLM_BENCH_BENCHCOMMON_H
#define TNLM_BENCH_BENCHCOMMON_H

#include "runtime/Artifact.h"
#include "runtime/Error.h"
#include "runtime/Init.h"
#include "runtime/Weights.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace tnlm::bench {

/// randomWeights(artifact, seed), with the parameters filled on all cores: each value is a
/// pure function of (seed, name, index) (runtime/Init.h), so the result is the same; one
/// thread takes 30-60 s for 1B parameters.
inline ParamValues randomWeightsParallel(const Artifact &a, uint64_t seed) {
  const auto &table = *a.root().params();
  ParamValues values(table.size());
  std::vector<std::vector<int64_t>> shapes(table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    int64_t n = 1;
    for (int64_t dim : *table[i]->shape()) {
      shapes[i].push_back(dim);
      n *= dim;
    }
    values[i].resize(size_t(n));
  }
  std::atomic<size_t> next{0};
  std::vector<std::string> errors(table.size());
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < table.size();) {
      try {
        initParameter(table[i]->name()->str(), shapes[i], seed, values[i].data());
      } catch (const Error &e) {
        errors[i] = e.what();
      }
    }
  };
  const unsigned n = std::max(1u, std::min(std::thread::hardware_concurrency(), 64u));
  std::vector<std::thread> threads;
  for (unsigned t = 1; t < n; ++t)
    threads.emplace_back(work);
  work();
  for (std::thread &t : threads)
    t.join();
  for (const std::string &e : errors)
    if (!e.empty())
      throw Error(a.source() + ": " + e);
  return values;
}

/// The Lightning Attention FLOPs of one call of `fn` at `rows` = batch · seq rows: per
/// LightningAttention step (i64 attrs [heads H, head_dim dh, block, lrpe, ...]), chunked form
/// with chunk C = 64, 2C(dk + dv) + 4·dk·dv per token and head (dk = 2·dh with LRPE, dv = dh;
/// bench/prefill.cpp's header derives it).
inline double lightningAttentionFlops(const Artifact &a, const schema::Function &fn, double rows) {
  constexpr double kChunk = 64;
  double flops = 0;
  for (const schema::Step *s : *fn.steps())
    if (s->kind() == schema::KernelKind_LightningAttention) {
      const auto *attrs = s->i64_attrs();
      if (!attrs || attrs->size() < 4)
        throw Error(a.source() + ": a lightning_attention step without its attributes");
      const double heads = double(attrs->Get(0)), d = double(attrs->Get(1));
      const double dk = attrs->Get(3) != 0 ? 2 * d : d, dv = d;
      flops += rows * heads * (2 * kChunk * (dk + dv) + 4 * dk * dv);
    }
  return flops;
}

/// The one artifact path of a benchmark's command line; an Error naming what is wrong otherwise.
inline std::string oneArtifact(const std::vector<std::string> &positional,
                               const std::string &tool) {
  if (positional.size() != 1)
    throw Error(positional.empty()
                    ? "expected one artifact (see " + tool + " --help)"
                    : "expected one artifact, got " + std::to_string(positional.size()) +
                          " arguments (see " + tool + " --help)");
  return positional[0];
}

/// Profiled steps (CudaExecutor::StepTime: kind, ms) summed per kernel kind.
struct KindTime {
  double ms = 0;
  int steps = 0;
};
template <typename StepTimes>
double addByKind(std::map<std::string, KindTime> &byKind, const StepTimes &times,
                 const std::string &prefix = "") {
  double total = 0;
  for (const auto &t : times) {
    KindTime &k = byKind[prefix + t.kind];
    k.ms += t.ms;
    k.steps += 1;
    total += t.ms;
  }
  return total;
}
/// The kinds, slowest first.
inline std::vector<std::pair<std::string, KindTime>>
slowestFirst(const std::map<std::string, KindTime> &byKind) {
  std::vector<std::pair<std::string, KindTime>> kinds(byKind.begin(), byKind.end());
  std::stable_sort(kinds.begin(), kinds.end(),
                   [](const auto &x, const auto &y) { return x.second.ms > y.second.ms; });
  return kinds;
}

inline std::string jsonString(const std::string &s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

} // namespace tnlm::bench

#endif // TNLM_BENCH_BENCHCOMMON_H
