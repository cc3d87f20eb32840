//===- decode.cpp - recurrent decode (and long prefill) of a CUDA artifact ------===//
//
//   tnlm-bench-decode MODEL.tnlm [--batch=B] [--contexts=1024,65536] [--steps=64]
//                     [--warmup=8] [--label=NAME]   (--help)
//   MODEL.tnlm from `tnlmc CONFIG --mode=recurrent --target=cuda:sm_90a`; one JSON line per
//   context on stdout. Run on the device machine by scripts/device-bench-decode; exits 77
//   without a CUDA device.
//
// Per context C (each at most the artifact's --seq): every one of the B slots gets a prompt of
// C random tokens (seed 7); one untimed @prefill of the batch (it also captures the graph),
// the state is zeroed, then the timed @prefill (host clock around CudaExecutor::prefill, which
// includes the upload and the copy of the last logits: the time to the first token). Then
// `warmup` untimed decode steps, then `steps` timed ones at positions C + warmup, …:
//   - wall: CudaExecutor::decodeStepLogits (what tnlm-run's generation loop calls), the host
//     clock around the upload of ids and positions, the graph replay of the whole step and the
//     copy of the [B, vocab] f32 logits back into page-locked memory (what a generation loop
//     waits for per token, sampling excluded); median;
//   - device: `steps` back-to-back enqueueDecode calls between two CUDA events, divided by
//     `steps` (the GPU time of one step's graph, its uploads included).
// The logits of the first and last timed steps must be finite (exit 1 otherwise).
//
// Floors (PERFORMANCE.md: 4.3 TB/s copy bandwidth): one decode step reads every weight once
// as bf16 (an untied model's embedding table only at B rows), θ as f32, and reads and writes
// the B slots' fp32 states: floor = those bytes / 4.3 TB/s. The JSON line gives both the
// weight-read floor and the floor with the state traffic, and the ratio of the device time
// to the former.
//
//===----------------------------------------------------------------------===//
#include "bench/BenchCommon.h"
#include "runtime/Artifact.h"
#include "runtime/Error.h"
#include "runtime/cuda/CudaApi.h"
#include "runtime/cuda/CudaExecutor.h"
#include "tools/tnlm-run/Options.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace tnlm;

namespace {

constexpr const char *kTool = "tnlm-bench-decode";
constexpr double kBandwidth = 4.3e12; // bytes/s, measured copy bandwidth (PERFORMANCE.md)

double msSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<int64_t> parseList(const std::string &text) {
  std::vector<int64_t> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    if (item.empty() || item.find_first_not_of("0123456789") != std::string::npos ||
        item.size() > 9)
      throw Error("--contexts: '" + item + "' is not a positive integer (e.g. 1024,65536)");
    out.push_back(std::stoll(item));
    if (out.back() <= 0)
      throw Error("--contexts: contexts must be positive");
  }
  if (out.empty())
    throw Error("--contexts: give at least one context length");
  return out;
}

bool allFinite(const std::vector<float> &v) {
  for (float x : v)
    if (!std::isfinite(x))
      return false;
  return true;
}

} // namespace

int main(int argc, char **argv) {
  Options opts(kTool,
               std::string(kTool) +
                   " MODEL.tnlm [--batch=B] [--contexts=C1,C2,...] [--steps=K] "
                   "[--warmup=K] [--label=NAME] [--profile] [--no-gemv] [--gemv-stage-bytes=N] "
                   "[--trace=FILE]\n  "
                   "MODEL.tnlm: an "
                   "artifact from tnlmc "
                   "--mode=recurrent --target=cuda:sm_90a. Prints one JSON\n  line per "
                   "context (prefill time, decode ms per step, tokens/s, floors).\n  Exit 0 "
                   "ok, 1 error or non-finite logits, 2 usage, 77 no CUDA device.");
  opts.value("batch", "b", "Slots of every call (default: the artifact's max batch)");
  opts.value("contexts", "list",
             "Prompt lengths to decode after, each <= the artifact's --seq (default: 1024 and "
             "the artifact's --seq)");
  opts.value("steps", "k", "Timed decode steps per context (default 64)");
  opts.value("warmup", "k", "Untimed decode steps before them (default 8)");
  opts.value("label", "name", "Label for the JSON lines (default: the model's name)");
  opts.flag("no-gemv", "Run the linear layers of batches up to 4 as cuBLASLt GEMMs too (as "
                       "larger batches), not as the decode GEMVs");
  opts.value("gemv-stage-bytes", "n",
             "Bytes of weights per stage of the decode GEMVs' shared-memory ring (default "
             "32768; 16 to 65536)");
  opts.flag("profile", "Also time every step of one decode step (CUDA events, no graph) and "
                       "print the time per kernel kind to stderr");
  opts.value("trace", "file",
             "After the timing, replay 4 decode steps of an artifact compiled with "
             "TNLM_DECODE_TRACE=1 and write its kernels' trace to FILE (CSV: one line per "
             "sampled CTA; Recurrent.cuh)");
  std::string path;
  int64_t steps = 0, warmup = 0, stageBytes = 0;
  try {
    if (!opts.parse(argc, argv))
      return 0;
    if (opts.positional().size() != 1)
      throw Error("expected one artifact (see " + std::string(kTool) + " --help)");
    path = opts.positional()[0];
    steps = opts.getInt("steps", 64, 1, 100000);
    warmup = opts.getInt("warmup", 8, 0, 100000);
    stageBytes = opts.getInt("gemv-stage-bytes", 32768, 16, 65536);
  } catch (const Error &e) {
    std::fprintf(stderr, "%s: error: %s\n", kTool, e.what());
    return 2;
  }
  try {
    Artifact a = Artifact::load(path, Target::CudaSm90a);
    if (a.root().mode() != schema::Mode_Recurrent)
      throw Error(path + ": not a recurrent artifact (tnlmc --mode=recurrent)");
    int64_t batch = 0;
    std::vector<int64_t> contexts;
    try {
      batch = opts.getInt("batch", a.maxBatch(), 1, a.maxBatch());
      contexts = opts.has("contexts")
                     ? parseList(opts.get("contexts"))
                     : std::vector<int64_t>{std::min<int64_t>(1024, a.maxSeq()), a.maxSeq()};
      for (int64_t c : contexts)
        if (c > a.maxSeq())
          throw Error("--contexts: " + std::to_string(c) + " is longer than the artifact's --seq " +
                      std::to_string(a.maxSeq()));
    } catch (const Error &e) {
      std::fprintf(stderr, "%s: error: %s\n", kTool, e.what());
      return 2;
    }
    std::string label = opts.get("label");
    if (label.empty())
      label = a.root().config() && a.root().config()->name() ? a.root().config()->name()->str()
                                                             : "model";
    // Bytes one decode step must move.
    double weightBytes = 0, embedBytes = 0, embedRows = 1, stateBytes = 0;
    bool untied = false;
    for (const schema::Param *p : *a.root().params()) {
      double n = 1;
      for (int64_t d : *p->shape())
        n *= double(d);
      const std::string name = p->name()->str();
      const bool theta = name.find("lrpe") != std::string::npos;
      weightBytes += n * (theta ? 4 : 2);
      if (name == "model.embed_tokens.weight") {
        embedBytes = n * 2;
        embedRows = double(p->shape()->Get(0));
      }
      untied |= name == "lm_head.weight";
    }
    if (untied) // the embedding lookup reads B rows of the table, not all of it
      weightBytes -= embedBytes * (1.0 - double(batch) / embedRows);
    if (a.root().state())
      for (const schema::StateBuffer *st : *a.root().state()) {
        double n = 1;
        for (int64_t d : *st->shape())
          n *= double(d);
        stateBytes += 2 * 4 * n * double(batch) / double(a.maxBatch()); // read + write
      }
    const double weightFloorMs = weightBytes / kBandwidth * 1e3;
    const double floorMs = (weightBytes + stateBytes) / kBandwidth * 1e3;

    const std::string tracePath = opts.get("trace");
    if (opts.has("trace") && tracePath.empty()) {
      std::fprintf(stderr, "%s: error: --trace needs a file\n", kTool);
      return 2;
    }
    std::string why;
    if (!cuda::deviceAvailable(&why)) {
      std::printf("SKIPPED: no CUDA device is available (%s)\n", why.c_str());
      return 77;
    }
    const auto t0 = std::chrono::steady_clock::now();
    cuda::CudaExecutor exec(a, bench::randomWeightsParallel(a, 1));
    const double setupS = msSince(t0) / 1e3;
    cuda::Context &ctx = exec.context();
    exec.setSmallBatchGemv(!opts.has("no-gemv"));
    exec.setGemvStageBytes(stageBytes);
    const int64_t vocab = exec.vocabSize();
    std::fprintf(stderr,
                 "%s: %s, batch %lld, device arena %.2f GiB, weights+state set up in %.1f s\n",
                 label.c_str(), ctx.deviceName().c_str(), (long long)batch,
                 exec.deviceBytes() / double(1u << 30), setupS);
    std::mt19937 rng(7);
    std::uniform_int_distribution<int32_t> tok(0, static_cast<int32_t>(vocab - 1));
    for (int64_t context : contexts) {
      std::vector<int32_t> ids(size_t(batch * context));
      for (int32_t &t : ids)
        t = tok(rng);
      std::vector<int32_t> lengths(static_cast<size_t>(batch), static_cast<int32_t>(context));
      exec.prefill(ids.data(), lengths.data(), batch, context); // untimed: captures the graph
      exec.resetState();
      auto p0 = std::chrono::steady_clock::now();
      const std::vector<float> first = exec.prefill(ids.data(), lengths.data(), batch, context);
      const double prefillMs = msSince(p0);
      if (!allFinite(first))
        throw Error("non-finite logits after the prefill of " + std::to_string(context) +
                    " tokens");
      std::vector<int32_t> step(static_cast<size_t>(batch)), pos(static_cast<size_t>(batch));
      int64_t position = context;
      auto next = [&] {
        for (int64_t b = 0; b < batch; ++b) {
          step[b] = tok(rng);
          pos[b] = int32_t(position);
        }
        ++position;
      };
      for (int64_t i = 0; i < warmup; ++i) {
        next();
        exec.decodeStep(step.data(), pos.data(), batch);
      }
      std::vector<double> wall;
      for (int64_t i = 0; i < steps; ++i) {
        next();
        const auto s0 = std::chrono::steady_clock::now();
        const float *l = exec.decodeStepLogits(step.data(), pos.data(), batch);
        wall.push_back(msSince(s0));
        if ((i == 0 || i == steps - 1) &&
            !allFinite(std::vector<float>(l, l + size_t(batch) * size_t(exec.vocabSize()))))
          throw Error("non-finite decode logits at position " + std::to_string(position - 1));
      }
      // Device time of back-to-back steps.
      CUevent e0 = nullptr, e1 = nullptr;
      TNLM_CU(cuEventCreate, (&e0, CU_EVENT_DEFAULT), "events");
      TNLM_CU(cuEventCreate, (&e1, CU_EVENT_DEFAULT), "events");
      TNLM_CU(cuEventRecord, (e0, ctx.stream()), "events");
      for (int64_t i = 0; i < steps; ++i) {
        next();
        exec.enqueueDecode(step.data(), pos.data(), batch);
      }
      TNLM_CU(cuEventRecord, (e1, ctx.stream()), "events");
      TNLM_CU(cuEventSynchronize, (e1), "events");
      float total = 0;
      TNLM_CU(cuEventElapsedTime, (&total, e0, e1), "events");
      cuda::driver().cuEventDestroy(e0);
      cuda::driver().cuEventDestroy(e1);
      const double deviceMs = total / double(steps);
      const double wallMs = bench::median(wall);
      const size_t nodes = exec.graphNodes("decode_step", batch, 1);
      std::printf(
          "{\"bench\":\"decode\",\"label\":%s,\"batch\":%lld,\"context\":%lld,\"steps\":%lld,"
          "\"prefill_ms\":%.3f,\"prefill_tokens_per_s\":%.1f,\"wall_ms_per_step\":%.4f,"
          "\"device_ms_per_step\":%.4f,\"tokens_per_s\":%.1f,\"weight_floor_ms\":%.4f,"
          "\"floor_with_state_ms\":%.4f,\"device_vs_weight_floor\":%.3f,\"graph_nodes\":%zu,"
          "\"fused_decodes\":%lld,\"carveout\":%d,\"device_bytes\":%zu,\"gpu\":%s}\n",
          bench::jsonString(label).c_str(), (long long)batch, (long long)context, (long long)steps,
          prefillMs, double(batch * context) / (prefillMs / 1e3), wallMs, deviceMs,
          double(batch) / (wallMs / 1e3), weightFloorMs, floorMs, deviceMs / weightFloorMs, nodes,
          (long long)exec.fusedDecodeLaunches(), exec.decodeCarveout(batch), exec.deviceBytes(),
          bench::jsonString(ctx.deviceName()).c_str());
      std::fflush(stdout);
      if (!tracePath.empty()) {
        if (!exec.hasDecodeTrace())
          throw Error("--trace: " + path +
                      " has no decode trace (compile it with "
                      "TNLM_DECODE_TRACE=1 when tnlmc runs)");
        exec.resetDecodeTrace();
        for (int i = 0; i < 4; ++i) {
          next();
          exec.enqueueDecode(step.data(), pos.data(), batch);
        }
        const std::vector<uint64_t> t = exec.decodeTrace();
        std::FILE *f = std::fopen(tracePath.c_str(), "w");
        if (!f)
          throw Error("--trace: cannot write " + tracePath);
        std::fprintf(f, "tag,key,block,grid,sm,entry,wait,input,end\n");
        for (size_t i = 0; i + 8 <= t.size(); i += 8)
          std::fprintf(f, "%llu,%llx,%llu,%llu,%llu,%llu,%llu,%llu,%llu\n",
                       (unsigned long long)t[i], (unsigned long long)t[i + 1],
                       (unsigned long long)(t[i + 2] & 0xfffff),
                       (unsigned long long)(t[i + 2] >> 40), (unsigned long long)t[i + 3],
                       (unsigned long long)t[i + 4], (unsigned long long)t[i + 5],
                       (unsigned long long)t[i + 6], (unsigned long long)t[i + 7]);
        if (std::fclose(f) != 0)
          throw Error("--trace: cannot write " + tracePath);
        std::fprintf(stderr, "%s: %zu trace records of 4 decode steps in %s\n", label.c_str(),
                     t.size() / 8, tracePath.c_str());
      }
      if (opts.has("profile")) {
        next();
        exec.profileDecode(step.data(), pos.data(), batch); // warm
        next();
        const auto times = exec.profileDecode(step.data(), pos.data(), batch);
        std::map<std::string, bench::KindTime> byKind;
        const double sum = bench::addByKind(byKind, times);
        std::fprintf(stderr, "profile %s B=%lld: %.4f ms over %zu steps (eager, events)\n",
                     label.c_str(), (long long)batch, sum, times.size());
        for (const auto &[kind, v] : byKind)
          std::fprintf(stderr, "  %-20s %4d steps %8.4f ms %5.1f %%  (%.2f us each)\n",
                       kind.c_str(), v.steps, v.ms, 100 * v.ms / sum, 1e3 * v.ms / v.steps);
      }
      std::fprintf(stderr,
                   "%s B=%lld context %lld: prefill %.2f ms; decode %.4f ms/step wall, %.4f "
                   "device (%.2fx the weight-read floor %.4f ms), %.0f tokens/s, %zu graph nodes\n",
                   label.c_str(), (long long)batch, (long long)context, prefillMs, wallMs, deviceMs,
                   deviceMs / weightFloorMs, weightFloorMs, double(batch) / (wallMs / 1e3), nodes);
    }
    return 0;
  } catch (const Error &e) {
    std::fprintf(stderr, "%s: error: %s\n", kTool, e.what());
    return 1;
  }
}
