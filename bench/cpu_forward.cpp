//===- cpu_forward.cpp - CPU forward throughput of a compiled artifact ----===//
//
//   tnlm-bench-cpu-forward MODEL.tnlm --batch=B --seq=N [--iters=K] [--threads=T]
//
// Random weights (docs/model.md init), one warm-up call, then K timed calls of @forward on
// random ids; prints one JSON line: median/min ms, tokens/s, and GFLOP/s where the FLOPs are
// counted from the plan (2·in·out per row for each projection, 4·H·dk·dv per token for the
// attention in its recurrent form; fused kernels count their parts).
//
//===----------------------------------------------------------------------===//
#include "runtime/Artifact.h"
#include "runtime/CpuExecutor.h"
#include "runtime/Error.h"
#include "runtime/Weights.h"
#include "runtime/cpu/Parallel.h"
#include "tools/tnlm-run/Options.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>

using namespace tnlm;

static double flopsPerToken(const Artifact &a) {
  double f = 0;
  for (const schema::Step *s : *a.function("forward").steps()) {
    if (s->kind() == schema::KernelKind_Linear) {
      const schema::Operand *w = s->inputs()->Get(1);
      auto shape = a.root().params()->Get(w->offset())->shape();
      f += 2.0 * shape->Get(0) * shape->Get(1);
    } else if (s->kind() == schema::KernelKind_GatedLinear) {
      auto shape = a.root().params()->Get(s->inputs()->Get(1)->offset())->shape();
      f += 2.0 * 2.0 * shape->Get(0) * shape->Get(1); // two projections
    } else if (s->kind() == schema::KernelKind_DecayAttention) { // [heads, dk, dv, block]
      f += 4.0 * s->i64_attrs()->Get(0) * s->i64_attrs()->Get(1) * s->i64_attrs()->Get(2);
    } else if (s->kind() == schema::KernelKind_LightningAttention) { // [heads, dh, block, lrpe]
      double dh = s->i64_attrs()->Get(1), dk = s->i64_attrs()->Get(3) ? 2 * dh : dh;
      f += 4.0 * s->i64_attrs()->Get(0) * dk * dh;
    }
  }
  return f;
}

int main(int argc, char **argv) {
  try {
    Options opts("tnlm-bench-cpu-forward",
                 "tnlm-bench-cpu-forward MODEL.tnlm --batch=B --seq=N [--iters=K]");
    opts.value("batch", "b", "Batch (default: the artifact's maximum)");
    opts.value("seq", "n", "Sequence length (default: the artifact's maximum)");
    opts.value("iters", "k", "Timed iterations (default 5)");
    opts.value("threads", "t", "CPU threads (default: all cores)");
    opts.value("label", "name", "Model label for the JSON line");
    if (!opts.parse(argc, argv))
      return 0;
    if (opts.positional().size() != 1)
      throw Error("expected one artifact");
    if (opts.has("threads"))
      cpu::setNumThreads(static_cast<int>(opts.getInt("threads", 0, 1, 1024)));
    Artifact a = Artifact::load(opts.positional()[0], Target::Cpu);
    int64_t batch = opts.getInt("batch", a.maxBatch(), 1, a.maxBatch());
    int64_t seq = opts.getInt("seq", a.maxSeq(), 1, a.maxSeq());
    int64_t iters = opts.getInt("iters", 5, 1, 1000);
    CpuExecutor exec(a, randomWeights(a, 1));
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(exec.vocabSize() - 1));
    std::vector<int32_t> ids(static_cast<size_t>(batch * seq));
    for (int32_t &t : ids)
      t = tok(rng);
    exec.forward(ids.data(), batch, seq); // warm-up: page in weights and arena
    std::vector<double> ms;
    for (int64_t i = 0; i < iters; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      exec.forward(ids.data(), batch, seq);
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ms.begin(), ms.end());
    double median = ms[ms.size() / 2];
    double tokens = static_cast<double>(batch * seq);
    std::printf("{\"op\": \"forward\", \"backend\": \"cpu\", \"model\": \"%s\", \"batch\": %lld, "
                "\"seq\": %lld, \"threads\": %d, \"iters\": %lld, \"median_ms\": %.3f, "
                "\"min_ms\": %.3f, \"tokens_per_s\": %.1f, \"gflop_per_s\": %.2f}\n",
                opts.get("label", a.root().config() && a.root().config()->name()
                                      ? a.root().config()->name()->str()
                                      : "model")
                    .c_str(),
                static_cast<long long>(batch), static_cast<long long>(seq), cpu::numThreads(),
                static_cast<long long>(iters), median, ms.front(), tokens / (median / 1e3),
                flopsPerToken(a) * tokens / (median / 1e3) / 1e9);
    return 0;
  } catch (const Error &e) {
    std::fprintf(stderr, "tnlm-bench-cpu-forward: error: %s\n", e.what());
    return 1;
  }
}
