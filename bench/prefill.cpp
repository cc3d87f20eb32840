//===- prefill.cpp - whole-model prefill time of a CUDA artifact ----------===//
//
//   tnlm-bench-prefill MODEL.tnlm [--batch=B] [--seq=N] [--iters=20] [--no-graphs]  (--help)
//   MODEL.tnlm from `tnlmc CONFIG --mode=infer --target=cuda:sm_90a`; one JSON line on stdout.
//   Run on the device machine by scripts/device-bench-prefill; exits 77 without a CUDA device.
//
// What is timed: random weights (docs/model.md init, seed 1) and random ids (seed 7); one forward()
// whose logits must all be finite (exit 1 otherwise); `warmup` untimed calls; then `iters`
// calls of CudaExecutor::enqueue + Context::synchronize, each timed on the host with
// std::chrono::steady_clock (so a time includes the id check and upload and the graph launch,
// i.e. what a caller waits for). Median and min ms of those.
//
// FLOPs of one forward, from the artifact's @forward plan (rows = batch · seq):
//   - every cuBLASLt GEMM launch (the Linear steps): 2 · rows · gemm_k · gemm_n;
//   - every LightningAttention step (i64 attrs [heads H, head_dim dh, block, lrpe, silu, …]),
//     chunked form with chunk C = 64 (the CUDA kernel's tile), per token and head with key dim
//     dk and value dim dv: scores inside the chunk 2·C·dk, scores·V 2·C·dv, q·state 2·dk·dv,
//     state update kᵀv 2·dk·dv, i.e. 2C(dk + dv) + 4·dk·dv. Plain layer, dk = dv = D = dh:
//     4D(D + C) per token and head, = 4E(D + C) with E = B·H·N·D (PERFORMANCE.md's forward).
//     LRPE layer: q and k carry cos and sin halves, dk = 2D, dv = D: 2C·3D + 8D² per token
//     and head, = 2E(4D + 3C). (The CUDA backend runs it as two dk = D passes, cos and sin,
//     which is 8E(D + C) executed: scores·V is done twice; the extra 2E·C is not counted.)
//   - elementwise kernels (embedding, norms, silu, products, LRPE rotation) are not counted.
// TFLOP/s = FLOPs / median time; MFU against the H200's dense bf16 spec peak (989 TFLOP/s)
// and against the ~790 TFLOP/s measured ceiling (PERFORMANCE.md).
//
//===----------------------------------------------------------------------===//
#include "bench/BenchCommon.h"
#include "runtime/Artifact.h"
#include "runtime/Error.h"
#include "runtime/Init.h"
#include "runtime/Weights.h"
#include "runtime/cuda/CudaApi.h"
#include "runtime/cuda/CudaExecutor.h"
#include "tools/tnlm-run/Options.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace tnlm;
using bench::jsonString;
using bench::median;
using bench::randomWeightsParallel;

namespace {

constexpr const char *kTool = "tnlm-bench-prefill";
constexpr double kPeakSpec = 989e12;     // H200 dense bf16, spec sheet
constexpr double kPeakMeasured = 790e12; // H200 dense bf16, measured (PERFORMANCE.md)

/// FLOPs of one @forward at `batch` x `seq` (see the header comment).
double forwardFlops(const Artifact &a, int64_t batch, int64_t seq) {
  const double rows = double(batch) * double(seq);
  const schema::Function &fn = a.function("forward");
  double flops = bench::lightningAttentionFlops(a, fn, rows);
  for (const schema::Step *s : *fn.steps())
    if (s->launches())
      for (const schema::KernelLaunch *l : *s->launches())
        if (l->kind() == schema::LaunchKind_Gemm)
          flops += 2.0 * rows * double(l->gemm_k()) * double(l->gemm_n());
  return flops;
}

} // namespace

int main(int argc, char **argv) {
  Options opts(kTool,
               std::string(kTool) +
                   " MODEL.tnlm [--batch=B] [--seq=N] [--warmup=K] [--iters=K] "
                   "[--label=NAME] [--no-graphs] [--profile]\n  MODEL.tnlm: an artifact from tnlmc "
                   "--mode=infer --target=cuda:sm_90a. Prints one JSON line\n  (median/min "
                   "ms of enqueue + synchronize, tokens/s, TFLOP/s, MFU) and a summary\n  "
                   "on stderr. Exit 0 ok, 1 error or non-finite logits, 2 usage, 77 no "
                   "CUDA device.");
  opts.value("batch", "b", "Batch of every call (default: the artifact's max batch)");
  opts.value("seq", "n", "Sequence length of every call (default: the artifact's max seq)");
  opts.value("warmup", "k", "Untimed calls after the checked first forward (default 5)");
  opts.value("iters", "k", "Timed calls; median and min are reported (default 20)");
  opts.value("label", "name", "Label for the JSON line (default: the model's name)");
  opts.flag("no-graphs", "Launch every step on each call instead of replaying a CUDA graph");
  opts.flag("profile", "Also time every step once (CUDA events, no graph) and print the time per "
                       "kernel kind and the slowest steps to stderr");
  int64_t batch = 0, seq = 0, warmup = 0, iters = 0;
  std::string path;
  try {
    if (!opts.parse(argc, argv))
      return 0;
    path = bench::oneArtifact(opts.positional(), kTool);
    warmup = opts.getInt("warmup", 5, 0, 100000);
    iters = opts.getInt("iters", 20, 1, 100000);
  } catch (const Error &e) {
    std::fprintf(stderr, "%s: error: %s\n", kTool, e.what());
    return 2;
  }

  try {
    // The artifact and the call shape are checked before the device is looked for.
    Artifact a = Artifact::load(path, Target::CudaSm90a);
    try {
      batch = opts.getInt("batch", a.maxBatch(), 1, a.maxBatch());
      seq = opts.getInt("seq", a.maxSeq(), 1, a.maxSeq());
    } catch (const Error &e) {
      std::fprintf(stderr, "%s: error: %s (the artifact's maximum is %lldx%lld)\n", kTool, e.what(),
                   (long long)a.maxBatch(), (long long)a.maxSeq());
      return 2;
    }
    const double flops = forwardFlops(a, batch, seq);
    std::string label = opts.get("label");
    if (label.empty())
      label = a.root().config() && a.root().config()->name() ? a.root().config()->name()->str()
                                                             : "model";

    std::string why;
    if (!cuda::deviceAvailable(&why)) {
      std::printf("SKIPPED: no CUDA device is available (%s)\n", why.c_str());
      return 77;
    }

    cuda::CudaExecutor exec(a, randomWeightsParallel(a, 1));
    const bool graphs = !opts.has("no-graphs");
    exec.setUseGraphs(graphs);
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(exec.vocabSize() - 1));
    std::vector<int32_t> ids(size_t(batch * seq));
    for (int32_t &t : ids)
      t = tok(rng);

    // Correctness guard: a fast forward that produces NaN or Inf does not count.
    {
      const std::vector<float> logits = exec.forward(ids.data(), batch, seq);
      size_t bad = 0;
      for (float v : logits)
        bad += !std::isfinite(v);
      if (logits.size() != size_t(batch * seq * exec.vocabSize()) || bad) {
        std::fprintf(stderr, "%s: FAIL: %zu of %zu logits are not finite (expected %lld logits)\n",
                     kTool, bad, logits.size(), (long long)(batch * seq * exec.vocabSize()));
        return 1;
      }
    }

    cuda::Context &ctx = exec.context();
    for (int64_t i = 0; i < warmup; ++i)
      exec.enqueue(ids.data(), batch, seq);
    ctx.synchronize("warm-up");
    std::vector<double> ms;
    for (int64_t i = 0; i < iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      exec.enqueue(ids.data(), batch, seq);
      ctx.synchronize("timed forward");
      ms.push_back(
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    const double med = median(ms), best = *std::min_element(ms.begin(), ms.end());
    const double tokens = double(batch * seq);
    const double tflops = flops / (med / 1e3) / 1e12;
    std::printf("{\"bench\":\"prefill\",\"label\":%s,\"artifact\":%s,\"batch\":%lld,\"seq\":%lld,"
                "\"tokens\":%lld,\"iters\":%lld,\"median_ms\":%.4f,\"min_ms\":%.4f,"
                "\"tokens_per_s\":%.1f,\"gflop_per_forward\":%.3f,\"tflops\":%.2f,"
                "\"mfu_989\":%.4f,\"mfu_790\":%.4f,\"graphs\":%s,\"gpu\":%s}\n",
                jsonString(label).c_str(), jsonString(path).c_str(), (long long)batch,
                (long long)seq, (long long)(batch * seq), (long long)iters, med, best,
                tokens / (med / 1e3), flops / 1e9, tflops, tflops * 1e12 / kPeakSpec,
                tflops * 1e12 / kPeakMeasured, graphs ? "true" : "false",
                jsonString(ctx.deviceName()).c_str());
    std::fflush(stdout);
    std::fprintf(stderr,
                 "%s %lldx%lld%s: median %.3f ms (min %.3f) over %lld, %.0f tokens/s, "
                 "%.1f GFLOP/forward, %.1f TFLOP/s = %.1f %% of 989 (%.1f %% of 790) on %s\n",
                 label.c_str(), (long long)batch, (long long)seq, graphs ? "" : " (no graphs)", med,
                 best, (long long)iters, tokens / (med / 1e3), flops / 1e9, tflops,
                 100 * tflops * 1e12 / kPeakSpec, 100 * tflops * 1e12 / kPeakMeasured,
                 ctx.deviceName().c_str());
    if (opts.has("profile")) {
      exec.profileSteps(ids.data(), batch, seq); // warm
      const auto steps = exec.profileSteps(ids.data(), batch, seq);
      std::map<std::string, bench::KindTime> byKind;
      const double total = bench::addByKind(byKind, steps);
      std::fprintf(stderr, "profile %s %lldx%lld: %.3f ms over %zu steps (eager, events)\n",
                   label.c_str(), (long long)batch, (long long)seq, total, steps.size());
      for (const auto &[kind, v] : bench::slowestFirst(byKind))
        std::fprintf(stderr, "  %-20s %4d steps %9.3f ms %5.1f %%\n", kind.c_str(), v.steps, v.ms,
                     100 * v.ms / total);
      std::vector<cuda::CudaExecutor::StepTime> slow(steps);
      std::sort(slow.begin(), slow.end(), [](const auto &x, const auto &y) { return x.ms > y.ms; });
      for (size_t i = 0; i < slow.size() && i < 8; ++i)
        std::fprintf(stderr, "  step %4u %-18s %8.3f ms  %s\n", slow[i].index, slow[i].kind.c_str(),
                     slow[i].ms, slow[i].name.c_str());
    }
    return 0;
  } catch (const Error &e) {
    std::fprintf(stderr, "%s: error: %s\n", kTool, e.what());
    return 1;
  }
}
