//===- train.cpp - the GPU train step of a CUDA train artifact ------------===//
//
//   tnlm-bench-train MODEL-train.tnlm [--batch=B] [--seq=N] [--warmup=3] [--iters=10]
//                    [--label=NAME] [--no-profile] [--timeline=K]                   (--help)
//   MODEL-train.tnlm from `tnlmc CONFIG --mode=train --target=cuda:sm_90a`; one JSON line on
//   stdout, the time per kernel kind on stderr. Run on the device machine by
//   scripts/device-train; exits 77 without a CUDA device.
//
// The GEMMs: as tnlm-train's --gemm-tune (off by default: cuBLASLt's first choice; on: its
// candidates timed on the first step, the fastest kept), else TNLM_GEMM_TUNE where set.
//
// What is timed: random weights (docs/model.md init, seed 1), random ids and labels (seed 7);
// `warmup` untimed optimizer steps (train_step + optimizer_step; the first captures the train
// step's CUDA graph); then `iters` optimizer steps, each timed on the host with
// std::chrono::steady_clock around CudaExecutor::run("train_step") + run("optimizer_step")
// (each returns after the GPU is done, so a time is what tnlm-train's loop waits for, less its
// data loading and finite checks). Median and min ms. Every loss must be finite (exit 1).
//
// FLOPs of one step (the definition): 6 · params · tokens (params: the artifact's
// parameter table, a tied embedding counted once: it is the lm head's matrix) plus the
// attention's, 3x the forward's (backward = 2 forwards): per LightningAttention step of
// @train_step, chunked form with C = 64, 2C(dk + dv) + 4·dk·dv per token and head (as
// bench/prefill.cpp). MFU against 989 TFLOP/s (H200 dense bf16 spec) and 790 (measured), of
// the whole optimizer step and ("train_step_mfu_989") of @train_step alone: the forward and
// backward, what the Hugging Face reference's train step times (bench/hf_train_reference.py).
//
// The profile (default on): one more train_step and optimizer_step with CUDA events around
// every step (launched one by one, no graph: the sum is above the graph's time), summed by
// kernel kind, in ms and as a share of the profiled total.
//
// The timeline (--timeline=K): K more optimizer steps, graph replays as timed, with CUPTI
// recording every kernel (bench/KernelTimeline.h): per step the span from the first kernel's
// start to the last one's end, the time some kernel ran (busy) and the rest (gaps between
// kernels), the kernels' time by name, and the gaps by boundary (the kernel before and the
// one after each idle interval), averaged over the K steps; on stderr, and as one more JSON
// line ("bench":"train_step_timeline").
//
//===----------------------------------------------------------------------===//
#include "bench/BenchCommon.h"
#include "bench/KernelTimeline.h"
#include "runtime/Artifact.h"
#include "runtime/Error.h"
#include "runtime/Init.h"
#include "runtime/Weights.h"
#include "runtime/cuda/CudaApi.h"
#include "runtime/cuda/CudaExecutor.h"
#include "tools/tnlm-run/Options.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <random>
#include <string>
#include <vector>

using namespace tnlm;
using bench::jsonString;
using bench::median;
using bench::randomWeightsParallel;

namespace {

constexpr const char *kTool = "tnlm-bench-train";
constexpr double kPeakSpec = 989e12;
constexpr double kPeakMeasured = 790e12;

double paramCount(const Artifact &a) {
  double n = 0;
  for (const schema::Param *p : *a.root().params()) {
    double e = 1;
    for (int64_t d : *p->shape())
      e *= double(d);
    n += e;
  }
  return n;
}

double msSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

bool isGemm(const std::string &name) {
  return name.find("nvjet") != std::string::npos || name.find("gemm") != std::string::npos ||
         name.find("xmma") != std::string::npos || name.find("cutlass") != std::string::npos;
}

// K optimizer steps with CUPTI recording; `step` runs one and marks its train_step's start,
// its optimizer_step's start and its end on the records' clock.
template <typename Step> void printTimeline(const std::string &label, int64_t k, Step step) {
  bench::KernelTimeline tl;
  std::string why;
  if (!tl.start(&why)) {
    std::fprintf(stderr, "timeline: not recorded: %s\n", why.c_str());
    return;
  }
  std::vector<std::array<uint64_t, 3>> marks(static_cast<size_t>(k));
  std::vector<double> wall;
  for (auto &m : marks) {
    const auto t0 = std::chrono::steady_clock::now();
    step(tl, m.data());
    wall.push_back(msSince(t0));
  }
  const std::vector<bench::TimelineRecord> recs = tl.stop();
  // Per phase (train_step, optimizer_step): the mean over the K steps.
  struct Phase {
    double span = 0, busy = 0, gap = 0, kernels = 0;
    std::map<std::string, std::pair<double, double>> kinds;                        // ms, count
    std::map<std::pair<std::string, std::string>, std::pair<double, double>> gaps; // ms, count
  } phases[2];
  std::vector<bench::TimelineSummary::Idle> longest[2]; // the last step's
  for (const auto &m : marks)
    for (int p = 0; p < 2; ++p) {
      const bench::TimelineSummary s = bench::summarize(recs, m[size_t(p)], m[size_t(p) + 1]);
      longest[p] = s.longest;
      phases[p].span += s.spanMs / double(k);
      phases[p].busy += s.busyMs / double(k);
      phases[p].gap += s.gapMs / double(k);
      phases[p].kernels += double(s.kernels) / double(k);
      for (const auto &kind : s.kinds) {
        auto &v = phases[p].kinds[kind.name];
        v.first += kind.ms / double(k);
        v.second += double(kind.count) / double(k);
      }
      for (const auto &g : s.gaps) {
        auto &v = phases[p].gaps[{g.before, g.after}];
        v.first += g.ms / double(k);
        v.second += double(g.count) / double(k);
      }
    }
  std::fprintf(stderr,
               "timeline (CUPTI, %lld graph-replayed steps, median %.2f ms each on the host):\n",
               (long long)k, median(wall));
  std::string json = "{\"bench\":\"train_step_timeline\",\"label\":" + jsonString(label) +
                     ",\"steps\":" + std::to_string(k) +
                     ",\"median_ms\":" + std::to_string(median(wall));
  const char *names[2] = {"train_step", "optimizer_step"};
  for (int p = 0; p < 2; ++p) {
    const Phase &ph = phases[p];
    double gemm = 0;
    for (const auto &[name, v] : ph.kinds)
      gemm += isGemm(name) ? v.first : 0;
    std::fprintf(stderr,
                 "  %s: span %.3f ms, kernels busy %.3f ms, gaps %.3f ms (%.1f %%), %.0f kernels "
                 "(%.2f us of gap each); GEMMs %.3f ms, the rest %.3f ms\n",
                 names[p], ph.span, ph.busy, ph.gap, 100 * ph.gap / std::max(ph.span, 1e-9),
                 ph.kernels, 1e3 * ph.gap / std::max(ph.kernels, 1.0), gemm, ph.busy - gemm);
    std::vector<std::pair<std::string, std::pair<double, double>>> sorted(ph.kinds.begin(),
                                                                          ph.kinds.end());
    std::stable_sort(sorted.begin(), sorted.end(),
                     [](const auto &x, const auto &y) { return x.second.first > y.second.first; });
    json += std::string(",\"") + names[p] + "\":{\"span_ms\":" + std::to_string(ph.span) +
            ",\"busy_ms\":" + std::to_string(ph.busy) + ",\"gap_ms\":" + std::to_string(ph.gap) +
            ",\"kernels\":" + std::to_string(ph.kernels) + ",\"gemm_ms\":" + std::to_string(gemm) +
            ",\"by_kernel\":[";
    for (size_t i = 0; i < sorted.size(); ++i) {
      const auto &[name, v] = sorted[i];
      if (i < 40)
        std::fprintf(stderr, "    %9.3f ms %5.1f %% %6.0f x %8.2f us  %s\n", v.first,
                     100 * v.first / std::max(ph.busy, 1e-9), v.second,
                     1e3 * v.first / std::max(v.second, 1.0), name.c_str());
      json += std::string(i ? "," : "") + "{\"name\":" + jsonString(name) +
              ",\"ms\":" + std::to_string(v.first) + ",\"count\":" + std::to_string(v.second) + "}";
    }
    json += "]";
    // Where the idle time sits: the boundaries (kernel before -> kernel after) by their gaps.
    std::vector<std::pair<std::pair<std::string, std::string>, std::pair<double, double>>> gaps(
        ph.gaps.begin(), ph.gaps.end());
    std::stable_sort(gaps.begin(), gaps.end(),
                     [](const auto &x, const auto &y) { return x.second.first > y.second.first; });
    if (!gaps.empty())
      std::fprintf(stderr, "    gaps by boundary (kernel before -> kernel after):\n");
    json += ",\"gaps_by_boundary\":[";
    for (size_t i = 0; i < gaps.size(); ++i) {
      const auto &[names, v] = gaps[i];
      if (i < 20)
        std::fprintf(stderr, "    %9.3f ms %5.1f %% %6.0f x %6.2f us  %s -> %s\n", v.first,
                     100 * v.first / std::max(ph.gap, 1e-9), v.second,
                     1e3 * v.first / std::max(v.second, 1e-9), names.first.c_str(),
                     names.second.c_str());
      json += std::string(i ? "," : "") + "{\"before\":" + jsonString(names.first) +
              ",\"after\":" + jsonString(names.second) + ",\"ms\":" + std::to_string(v.first) +
              ",\"count\":" + std::to_string(v.second) + "}";
    }
    json += "]";
    if (!longest[p].empty())
      std::fprintf(stderr, "    the longest idle intervals of the last step:\n");
    for (const auto &g : longest[p])
      std::fprintf(stderr, "    %8.3f ms at %8.3f ms (before record %lld): %s -> %s, then %s\n",
                   g.ms, g.atMs, (long long)g.index, g.before.c_str(), g.after.c_str(),
                   g.next.c_str());
    json += "}";
  }
  std::printf("%s}\n", json.c_str());
  std::fflush(stdout);
}

} // namespace

int main(int argc, char **argv) {
  Options opts(kTool, std::string(kTool) +
                          " MODEL-train.tnlm [--batch=B] [--seq=N] [--warmup=K] [--iters=K] "
                          "[--label=NAME] [--no-profile]\n  MODEL-train.tnlm: an artifact from "
                          "tnlmc --mode=train --target=cuda:sm_90a. Prints one JSON line\n  "
                          "(median/min ms of a train step + optimizer step, tokens/s, TFLOP/s, "
                          "MFU) and the time\n  per kernel kind on stderr. Exit 0 ok, 1 error or "
                          "a non-finite loss, 2 usage, 77 no CUDA device.");
  opts.value("batch", "b", "Batch of every call (default: the artifact's max batch)");
  opts.value("seq", "n", "Sequence length of every call (default: the artifact's max seq)");
  opts.value("warmup", "k", "Untimed optimizer steps first (default 3)");
  opts.value("iters", "k", "Timed optimizer steps; median and min are reported (default 10)");
  opts.value("label", "name", "Label for the JSON line (default: the model's name)");
  opts.flag("no-profile", "Skip the per-step profile (time per kernel kind)");
  opts.value("gemm-tune", "on|off",
             "As tnlm-train's: time cuBLASLt's candidates per GEMM shape on the first step and "
             "keep the fastest (default off; TNLM_GEMM_TUNE, when set, is the default instead; "
             "TNLM_GEMM_TUNE_CACHE still names a cache)");
  opts.value("timeline", "k",
             "K more steps (graph replays) with every kernel recorded by CUPTI: busy time, gaps "
             "and time by kernel (default 0: none)");
  int64_t batch = 0, seq = 0, warmup = 0, iters = 0, timelineSteps = 0;
  std::string path, gemmTune;
  try {
    if (!opts.parse(argc, argv))
      return 0;
    path = bench::oneArtifact(opts.positional(), kTool);
    warmup = opts.getInt("warmup", 3, 0, 100000);
    iters = opts.getInt("iters", 10, 1, 100000);
    timelineSteps = opts.getInt("timeline", 0, 0, 1000);
    gemmTune = opts.get("gemm-tune");
    if (!gemmTune.empty() && gemmTune != "on" && gemmTune != "off")
      throw Error("--gemm-tune: unknown value '" + gemmTune + "' (expected on or off)");
  } catch (const Error &e) {
    std::fprintf(stderr, "%s: error: %s\n", kTool, e.what());
    return 2;
  }

  try {
    Artifact a = Artifact::load(path, Target::CudaSm90a);
    bool train = false;
    if (a.root().functions())
      for (const schema::Function *f : *a.root().functions())
        train = train || (f->name() && f->name()->str() == "train_step");
    if (!train)
      throw Error(path + ": not a train artifact (compile it with tnlmc --mode=train)");
    try {
      batch = opts.getInt("batch", a.maxBatch(), 1, a.maxBatch());
      seq = opts.getInt("seq", a.maxSeq(), 1, a.maxSeq());
    } catch (const Error &e) {
      std::fprintf(stderr, "%s: error: %s (the artifact's maximum is %lldx%lld)\n", kTool, e.what(),
                   (long long)a.maxBatch(), (long long)a.maxSeq());
      return 2;
    }
    const double tokens = double(batch) * double(seq), params = paramCount(a);
    // The forward's attention FLOPs (the LightningAttention steps of @train_step).
    const double attn =
        bench::lightningAttentionFlops(a, a.function("train_step"), double(batch) * double(seq));
    const double flops = 6 * params * tokens + 3 * attn;
    std::string label = opts.get("label");
    if (label.empty())
      label = a.root().config() && a.root().config()->name() ? a.root().config()->name()->str()
                                                             : "model";
    std::string why;
    if (!cuda::deviceAvailable(&why)) {
      std::printf("SKIPPED: no CUDA device is available (%s)\n", why.c_str());
      return 77;
    }

    const auto tInit = std::chrono::steady_clock::now();
    cuda::CudaExecutor exec(a, randomWeightsParallel(a, 1));
    const double initMs = msSince(tInit);
    // tnlm-train's default (off) unless the flag or TNLM_GEMM_TUNE says otherwise.
    if (const char *env = std::getenv("TNLM_GEMM_TUNE"); !gemmTune.empty() || !env || !*env)
      exec.gemm().setTuning(gemmTune == "on" ? 1 : 0);
    const int64_t vocab = exec.vocabSize();
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab - 1));
    std::vector<int32_t> ids(size_t(batch * seq)), labels(ids.size());
    for (size_t i = 0; i < ids.size(); ++i)
      ids[i] = tok(rng), labels[i] = tok(rng);
    std::vector<float> hp(schema::HyperParam_Count, 0.0f);
    hp[schema::HyperParam_Lr] = 3e-4f;
    hp[schema::HyperParam_MinLr] = 3e-5f;
    hp[schema::HyperParam_TotalSteps] = float(warmup + iters + 10);
    hp[schema::HyperParam_Beta1] = 0.9f;
    hp[schema::HyperParam_Beta2] = 0.999f;
    hp[schema::HyperParam_Eps] = 1e-8f;
    hp[schema::HyperParam_WeightDecay] = 0.01f;
    hp[schema::HyperParam_ClipGrad] = 1.0f;
    hp[schema::HyperParam_AccumSteps] = 1.0f;
    const std::vector<cuda::CudaExecutor::Input> trainIn = {{"ids", ids.data()},
                                                            {"labels", labels.data()}};
    const std::vector<cuda::CudaExecutor::Input> optIn = {{"hparams", hp.data()}};
    double trainMs = 0, optMs = 0, lastLoss = 0;
    cuda::CudaExecutor::RunTimes trainHost;
    auto step = [&] {
      auto t0 = std::chrono::steady_clock::now();
      lastLoss = exec.run("train_step", trainIn, batch, seq).front().second[0];
      trainMs = msSince(t0);
      trainHost = exec.lastRunTimes();
      t0 = std::chrono::steady_clock::now();
      exec.run("optimizer_step", optIn, batch, seq);
      optMs = msSince(t0);
      if (!std::isfinite(lastLoss))
        throw Error("the loss is not finite (" + std::to_string(lastLoss) + ")");
    };
    const auto tFirst = std::chrono::steady_clock::now();
    step();
    const double firstMs = msSince(tFirst), firstLoss = lastLoss;
    for (int64_t i = 1; i < warmup; ++i)
      step();
    std::vector<double> ms, trainV, optV;
    std::vector<cuda::CudaExecutor::RunTimes> hostV;
    for (int64_t i = 0; i < iters; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      step();
      ms.push_back(msSince(t0));
      trainV.push_back(trainMs);
      optV.push_back(optMs);
      hostV.push_back(trainHost);
    }
    const double med = median(ms), best = *std::min_element(ms.begin(), ms.end());
    const double tflops = flops / (med / 1e3) / 1e12;
    const double trainMed = median(trainV), optMed = median(optV);
    const double trainMfu = flops / (trainMed / 1e3) / kPeakSpec; // @train_step alone
    cuda::Context &ctx = exec.context();
    std::printf("{\"bench\":\"train_step\",\"label\":%s,\"artifact\":%s,\"batch\":%lld,"
                "\"seq\":%lld,\"tokens\":%lld,\"params\":%.0f,\"iters\":%lld,\"median_ms\":%.3f,"
                "\"min_ms\":%.3f,\"train_step_ms\":%.3f,\"optimizer_step_ms\":%.3f,"
                "\"first_step_ms\":%.1f,\"init_ms\":%.1f,\"tokens_per_s\":%.1f,"
                "\"gflop_per_step\":%.1f,\"attention_gflop\":%.1f,\"tflops\":%.2f,"
                "\"mfu_989\":%.4f,\"mfu_790\":%.4f,\"first_loss\":%.4f,\"last_loss\":%.4f,"
                "\"device_gib\":%.2f,\"gemm_tune\":%d,\"train_step_mfu_989\":%.4f,\"gpu\":%s}\n",
                jsonString(label).c_str(), jsonString(path).c_str(), (long long)batch,
                (long long)seq, (long long)(batch * seq), params, (long long)iters, med, best,
                trainMed, optMed, firstMs, initMs, tokens / (med / 1e3), flops / 1e9,
                3 * attn / 1e9, tflops, tflops * 1e12 / kPeakSpec, tflops * 1e12 / kPeakMeasured,
                firstLoss, lastLoss, double(exec.deviceBytes()) / double(1ull << 30),
                exec.gemm().tuning(), trainMfu, jsonString(ctx.deviceName()).c_str());
    std::fflush(stdout);
    std::fprintf(stderr,
                 "%s %lldx%lld: median %.2f ms per optimizer step (train_step %.2f, "
                 "optimizer_step %.2f; min %.2f) over %lld, %.0f tokens/s, %.1f TFLOP/s = %.1f %% "
                 "MFU of 989 (%.1f %% of 790; the train step alone, forward + backward as the "
                 "Hugging Face reference's: %.1f %%) on %s; %.2f GiB allocated\n",
                 label.c_str(), (long long)batch, (long long)seq, med, trainMed, optMed, best,
                 (long long)iters, tokens / (med / 1e3), tflops, 100 * tflops * 1e12 / kPeakSpec,
                 100 * tflops * 1e12 / kPeakMeasured, 100 * trainMfu, ctx.deviceName().c_str(),
                 double(exec.deviceBytes()) / double(1ull << 30));
    // The host's part of train_step: until the graph is queued the GPU has nothing to run.
    auto hostMedian = [&](double cuda::CudaExecutor::RunTimes::*field) {
      std::vector<double> v;
      for (const auto &t : hostV)
        v.push_back(t.*field);
      return median(v);
    };
    using RT = cuda::CudaExecutor::RunTimes;
    const double prep = hostMedian(&RT::prepareMs), launch = hostMedian(&RT::launchMs),
                 wait = hostMedian(&RT::waitMs), read = hostMedian(&RT::readMs),
                 gpu = hostMedian(&RT::gpuMs);
    std::fprintf(stderr,
                 "train_step on the host (medians): inputs checked and uploaded %.3f ms, graph "
                 "queued %.3f ms, waiting for the GPU %.3f ms, the loss read back %.3f ms; on the "
                 "GPU (events around the graph) %.3f ms\n",
                 prep, launch, wait, read, gpu);
    std::printf("{\"bench\":\"train_step_host\",\"label\":%s,\"prepare_ms\":%.4f,"
                "\"launch_ms\":%.4f,\"wait_ms\":%.4f,\"read_ms\":%.4f,\"gpu_ms\":%.4f}\n",
                jsonString(label).c_str(), prep, launch, wait, read, gpu);
    std::fprintf(stderr, "GEMMs over stacked pairs (the gated forward, dx, dW): %zu\n",
                 exec.stackedGemms());
    std::fprintf(stderr, "gated forwards fused with their product (TNLM_SGLU_FUSE): %zu\n",
                 exec.fusedSglus());
    std::fprintf(stderr,
                 "dgrads fused with SGLU's product backward (TNLM_SGLU_FUSE): %zu; qkvu GEMMs "
                 "fused with phi (TNLM_SILU_FUSE): %zu\n",
                 exec.fusedMulGrads(), exec.fusedSilus());
    if (exec.sideSteps())
      std::fprintf(stderr,
                   "weight-gradient GEMMs on the side stream (TNLM_GRAD_STREAM=1): %lld per "
                   "train step, %lld joins before the end\n",
                   (long long)exec.sideSteps(), (long long)exec.sideJoins());
    if (exec.gemm().tuning() || !exec.gemm().tuneCache().empty())
      std::fprintf(stderr,
                   "GEMM tuning (TNLM_GEMM_TUNE=%d): %zu plans, %d timed, %d of them faster with "
                   "another algorithm than cuBLASLt's first, %d from the cache%s%s\n",
                   exec.gemm().tuning(), exec.gemm().planCount(), exec.gemm().timedPlans(),
                   exec.gemm().changedPlans(), exec.gemm().cachedPlans(),
                   exec.gemm().tuneCache().empty() ? "" : " ", exec.gemm().tuneCache().c_str());
    if (timelineSteps > 0)
      printTimeline(label, timelineSteps, [&](bench::KernelTimeline &tl, uint64_t marks[3]) {
        marks[0] = tl.now();
        exec.run("train_step", trainIn, batch, seq);
        marks[1] = tl.now();
        exec.run("optimizer_step", optIn, batch, seq);
        marks[2] = tl.now();
      });
    if (!opts.has("no-profile")) {
      std::map<std::string, bench::KindTime> byKind;
      double total = bench::addByKind(byKind, exec.profileRun("train_step", trainIn, batch, seq));
      total += bench::addByKind(byKind, exec.profileRun("optimizer_step", optIn, batch, seq),
                                "optimizer: ");
      std::fprintf(stderr, "profile (steps one by one, no graph): %.2f ms in all\n", total);
      for (const auto &[kind, v] : bench::slowestFirst(byKind))
        std::fprintf(stderr, "  %-34s %9.3f ms %5.1f %%  (%d steps)\n", kind.c_str(), v.ms,
                     100 * v.ms / total, v.steps);
    }
    return 0;
  } catch (const Error &e) {
    std::fprintf(stderr, "%s: error: %s\n", kTool, e.what());
    return 1;
  }
}
