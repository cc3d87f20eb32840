//===- RecurrentGpuTest.cpp - GPU prefill/decode against itself and the CPU ------===//
//
//   tnlm-gpu-recurrent <cuda artifact> <cpu artifact>
// Both are tnlmc --mode=recurrent artifacts of one model config (ctest and scripts/device-test
// compile test/unit/cuda/cuda-exec-lrpe.json: d 768, H 6 of head dim 128, layer 0 with LRPE and
// layer 1 without, separate head; scripts/device-test also cuda-exec-model.json: d 256, no LRPE)
// at --batch=4 --seq=2048. The same seeded random weights go
// to CudaExecutor and CpuExecutor. Checks (one line each, with the numbers):
//   1. decode equals prefill: for n in 1, 63, 64, 65, 300, 2048, GPU prefill(n - 1) then one
//      GPU decode step at position n - 1 gives the logits of GPU prefill(n) (and both those of
//      CPU prefill(n)); again (n = 65, 300) with decode's linear layers on cuBLASLt (the path
//      of batches above 4) instead of the small-batch GEMVs; and (n = 65) without programmatic
//      dependent launch, and with the GEMVs' L2 prefetch off or two GEMVs ahead: identical
//      logits; and (n = 65, 300) with 2 KiB GEMV weight stages
//      (rings that wrap around, several warps per row); and four slots through two decode
//      steps with the qkvu GEMV and the decode kernel fused and apart (the default): the
//      same logits and states bit for bit; and 13 decode steps queued back to back
//      (enqueueDecode, the page-locked uploads' ring) vs waited for: the same bits;
//   2. the GPU state after prefill(n) equals the GPU state after n decode steps, and the CPU
//      state after prefill(n) (n = 300);
//   3. a batch of slots of different lengths (5, 0, 300, 2048) in one prefill: each slot's
//      logits equal those of its prompt alone; the length-0 slot keeps its state bit for bit;
//      then one decode step with an inactive slot (-1) leaves that slot's state alone;
//   4. at position 65,536 the decode logits are finite and match the CPU recurrence's (whose
//      kernel test/unit/cpu/RecurrentTest.cpp checks against the f64 recurrence);
//   5. greedy generation, 48 tokens, on the GPU and on the CPU independently: the sequences
//      agree until the first step where the CPU's two best logits are within the bf16 noise
//      bound below (a near-tie may then go either way); at least 8 tokens must agree.
//   6. bad input: a length outside [0, seq], an id outside the vocabulary, a position < -1,
//      a TNLM_PDL or TNLM_DECODE_FUSE that is neither 0 nor 1, a TNLM_GEMV_PREFETCH not 0-2,
//      a TNLM_DECODE_CARVEOUT not auto, driver or 0-100; and TNLM_DECODE_CARVEOUT's values:
//      auto chooses a percent at the first decode call (none before it), driver none, 37 37;
//   7. the decode step of the batch was captured as one CUDA graph.
//
// Bounds. Logits: max |a - b| ≤ 3e-2 · max |b| (the bound of ExecutorGpuTest.cpp: bf16
// activations and weights, about 25 rounded ops between the ids and a logit, errors of a few
// 2^-8 of the scale; prefill and decode differ in every GEMM's row count and in how the
// attention sums (the chunked bf16 products of the Hopper kernel vs the fp32 recurrence), so
// they are two independent bf16 paths). States: normwise ‖a - b‖ / ‖b‖ ≤ 2e-2: the Hopper
// prefill adds bf16-rounded decayed keys times bf16 values into its fp32 state (2^-8 relative
// per product, independent, so ~2^-8 normwise), and the q, k, v that both read are themselves
// bf16 results of different GEMMs (another ~2^-8).
// Exit 0 pass, 1 fail, 2 usage, 77 no device.
//
//===----------------------------------------------------------------------===//
#include "runtime/CpuExecutor.h"
#include "runtime/Error.h"
#include "runtime/Init.h"
#include "runtime/cuda/CudaApi.h"
#include "runtime/cuda/CudaExecutor.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

namespace {

using tnlm::CpuExecutor;
using tnlm::cuda::CudaExecutor;

int failures = 0;

void report(bool ok, const std::string &line) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", line.c_str());
  std::fflush(stdout);
  if (!ok)
    ++failures;
}

std::vector<int32_t> randomIds(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  uint64_t x = 88172645463325252ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (auto &id : ids) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    id = static_cast<int32_t>(x % static_cast<uint64_t>(vocab));
  }
  return ids;
}

struct Diff {
  double rel = 0, maxRef = 0;
  bool finite = true;
};
// max |a - b| / max |b| over [0, n).
Diff maxRel(const float *a, const float *b, size_t n) {
  Diff d;
  double err = 0;
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(a[i]) || !std::isfinite(b[i]))
      d.finite = false;
    d.maxRef = std::max(d.maxRef, std::fabs(double(b[i])));
    err = std::max(err, std::fabs(double(a[i]) - double(b[i])));
  }
  d.rel = d.maxRef > 0 ? err / d.maxRef : err;
  return d;
}
double normRel(const std::vector<float> &a, const std::vector<float> &b, size_t from, size_t n) {
  double e = 0, r = 0;
  for (size_t i = from; i < from + n; ++i) {
    e += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    r += double(b[i]) * b[i];
  }
  return r > 0 ? std::sqrt(e / r) : std::sqrt(e);
}

// Both executors behind one interface: prefill of one slot's prompt (others length 0),
// decode of one slot (others inactive).
struct Runner {
  CpuExecutor *cpu = nullptr;
  CudaExecutor *gpu = nullptr;
  int64_t slots = 0, vocab = 0;

  std::vector<float> prefill(const std::vector<int32_t> &ids, const std::vector<int32_t> &lengths,
                             int64_t seq) {
    if (gpu)
      return gpu->prefill(ids.data(), lengths.data(), slots, seq);
    return cpu->run("prefill", {{"ids", ids.data()}, {"lengths", lengths.data()}}, slots, seq)
        .front()
        .second;
  }
  std::vector<float> decode(const std::vector<int32_t> &ids, const std::vector<int32_t> &pos) {
    if (gpu)
      return gpu->decodeStep(ids.data(), pos.data(), slots);
    return cpu->run("decode_step", {{"ids", ids.data()}, {"positions", pos.data()}}, slots, 1)
        .front()
        .second;
  }
  std::vector<std::vector<float>> state() { return gpu ? gpu->state() : cpu->state(); }
  void reset() {
    if (gpu) {
      gpu->resetState();
    } else {
      for (auto &s : cpu->state())
        std::fill(s.begin(), s.end(), 0.0f);
    }
  }
  // Slot `slot` alone: its prompt, the other slots at length 0. Returns the slot's logits.
  std::vector<float> prefillOne(int64_t slot, const std::vector<int32_t> &prompt) {
    const int64_t n = static_cast<int64_t>(prompt.size());
    std::vector<int32_t> ids(size_t(slots * n), 0), lengths(size_t(slots), 0);
    std::copy(prompt.begin(), prompt.end(), ids.begin() + slot * n);
    lengths[slot] = static_cast<int32_t>(n);
    std::vector<float> all = prefill(ids, lengths, n);
    return std::vector<float>(all.begin() + slot * vocab, all.begin() + (slot + 1) * vocab);
  }
  std::vector<float> decodeOne(int64_t slot, int32_t id, int32_t position) {
    std::vector<int32_t> ids(size_t(slots), 0), pos(size_t(slots), -1);
    ids[slot] = id;
    pos[slot] = position;
    std::vector<float> all = decode(ids, pos);
    return std::vector<float>(all.begin() + slot * vocab, all.begin() + (slot + 1) * vocab);
  }
};

int32_t argmax(const std::vector<float> &z) {
  return static_cast<int32_t>(std::max_element(z.begin(), z.end()) - z.begin());
}
// Gap between the two largest logits.
double topTwoGap(const std::vector<float> &z) {
  std::vector<float> c = z;
  std::partial_sort(c.begin(), c.begin() + 2, c.end(), std::greater<float>());
  return double(c[0]) - double(c[1]);
}

} // namespace

int main(int argc, char **argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s <cuda recurrent artifact> <cpu recurrent artifact>\n", argv[0]);
    return 2;
  }
  try {
    tnlm::Artifact gpuArt = tnlm::Artifact::load(argv[1], tnlm::Target::CudaSm90a);
    tnlm::Artifact cpuArt = tnlm::Artifact::load(argv[2], tnlm::Target::Cpu);
    if (gpuArt.root().mode() != tnlm::schema::Mode_Recurrent ||
        cpuArt.root().mode() != tnlm::schema::Mode_Recurrent || gpuArt.maxSeq() < 2048 ||
        gpuArt.maxBatch() < 4 || cpuArt.maxBatch() != gpuArt.maxBatch() ||
        cpuArt.maxSeq() != gpuArt.maxSeq()) {
      std::fprintf(stderr,
                   "%s: need two recurrent artifacts of one model, --batch >= 4 and "
                   "--seq >= 2048, the same for both\n",
                   argv[0]);
      return 2;
    }
    std::string why;
    if (!tnlm::cuda::deviceAvailable(&why)) {
      std::printf("SKIPPED: no CUDA device (%s)\n", why.c_str());
      return 77;
    }
    const tnlm::ParamValues weights = tnlm::randomWeights(cpuArt, 4321);
    CpuExecutor cpuExec(cpuArt, weights);
    CudaExecutor gpuExec(gpuArt, weights);
    const int64_t vocab = cpuExec.vocabSize(), slots = gpuArt.maxBatch();
    Runner gpu{nullptr, &gpuExec, slots, vocab}, cpu{&cpuExec, nullptr, slots, vocab};
    std::printf("device: %s; artifacts for %lld slots x %lld tokens, vocab %lld\n",
                gpuExec.context().deviceName().c_str(), (long long)slots,
                (long long)gpuArt.maxSeq(), (long long)vocab);
    const std::vector<int32_t> text = randomIds(2048, vocab, 7);

    // 1. decode equals prefill.
    for (int64_t n : {1, 63, 64, 65, 300, 2048}) {
      const std::vector<int32_t> prompt(text.begin(), text.begin() + n);
      const std::vector<int32_t> head(text.begin(), text.begin() + (n - 1));
      gpu.reset();
      const std::vector<float> full = gpu.prefillOne(1, prompt);
      gpu.reset();
      if (n > 1)
        gpu.prefillOne(1, head);
      const std::vector<float> stepped = gpu.decodeOne(1, text[n - 1], int32_t(n - 1));
      cpu.reset();
      const std::vector<float> want = cpu.prefillOne(1, prompt);
      const Diff d = maxRel(stepped.data(), full.data(), vocab);
      const Diff dc = maxRel(full.data(), want.data(), vocab);
      const Diff ds = maxRel(stepped.data(), want.data(), vocab);
      report(d.finite && dc.finite && d.maxRef > 0 && d.rel <= 3e-2 && dc.rel <= 3e-2 &&
                 ds.rel <= 3e-2,
             "n=" + std::to_string(n) + ": gpu prefill(n-1)+decode vs gpu prefill(n): " +
                 std::to_string(d.rel) + "; gpu prefill vs cpu: " + std::to_string(dc.rel) +
                 "; gpu decode vs cpu prefill: " + std::to_string(ds.rel) + " (bound 3e-2)");
    }

    // Slot 1 after prefill(n - 1), one decode step at position n - 1 through the default
    // executor and through `other`, and the CPU's prefill(n): the three rows of logits.
    struct Decoded {
      std::vector<float> base, other, cpu;
    };
    auto decodeBoth = [&](Runner &other, int64_t n) {
      const std::vector<int32_t> head(text.begin(), text.begin() + (n - 1));
      const std::vector<int32_t> prompt(text.begin(), text.begin() + n);
      Decoded r;
      gpu.reset();
      gpu.prefillOne(1, head);
      r.base = gpu.decodeOne(1, text[n - 1], int32_t(n - 1));
      other.prefillOne(1, head);
      r.other = other.decodeOne(1, text[n - 1], int32_t(n - 1));
      cpu.reset();
      r.cpu = cpu.prefillOne(1, prompt);
      return r;
    };
    // `other` against the CPU and the default path, within the bf16 bound of section 1.
    auto againstCpuAndDefault = [&](Runner &other, const std::string &what,
                                    const std::string &defaultName) {
      for (int64_t n : {65, 300}) {
        const Decoded r = decodeBoth(other, n);
        const Diff d = maxRel(r.other.data(), r.cpu.data(), vocab);
        const Diff g = maxRel(r.other.data(), r.base.data(), vocab);
        report(d.finite && d.rel <= 3e-2 && g.rel <= 3e-2,
               "n=" + std::to_string(n) + ", decode " + what +
                   " vs cpu prefill(n): " + std::to_string(d.rel) + ", vs " + defaultName + ": " +
                   std::to_string(g.rel) + " (bound 3e-2)");
      }
    };

    // 1b. The same through the other GEMM path: decode's linear layers as cuBLASLt GEMMs (what
    // batches above 4 run, the gated pair as two GEMMs and a product) instead of the GEMVs.
    {
      CudaExecutor gemmExec(gpuArt, weights);
      gemmExec.setSmallBatchGemv(false);
      Runner viaGemm{nullptr, &gemmExec, slots, vocab};
      againstCpuAndDefault(viaGemm, "through cuBLASLt GEMMs", "the GEMV path");
    }

    // 1c. Without programmatic dependent launch (TNLM_PDL=0: two GEMV CTAs per SM instead of
    // one, no early weight copies): each output is the same warp's sum in the same order, so
    // the logits are identical bit for bit.
    {
      CudaExecutor plainExec(gpuArt, weights);
      plainExec.setProgrammaticLaunch(false);
      Runner plain{nullptr, &plainExec, slots, vocab};
      const Decoded r = decodeBoth(plain, 65);
      size_t differ = 0;
      for (size_t i = 0; i < r.other.size(); ++i)
        differ += std::memcmp(&r.other[i], &r.base[i], sizeof(float)) != 0;
      report(r.other.size() == r.base.size() && differ == 0,
             "n=65, decode without programmatic launch vs with: " + std::to_string(differ) +
                 " of " + std::to_string(r.other.size()) + " logits differ (want 0)");
    }

    // 1c'. The decode GEMVs' L2 prefetch of later GEMVs' weights (a hint) off, and two GEMVs
    // ahead instead of one: the same sums, so the same logits bit for bit.
    for (int ahead : {0, 2}) {
      CudaExecutor pfExec(gpuArt, weights);
      pfExec.setGemvPrefetch(ahead);
      Runner pfRun{nullptr, &pfExec, slots, vocab};
      const Decoded r = decodeBoth(pfRun, 65);
      size_t differ = 0;
      for (size_t i = 0; i < r.other.size(); ++i)
        differ += std::memcmp(&r.other[i], &r.base[i], sizeof(float)) != 0;
      report(r.other.size() == r.base.size() && differ == 0,
             "n=65, decode with the L2 prefetch " + std::to_string(ahead) +
                 " GEMVs ahead vs 1: " + std::to_string(differ) + " of " +
                 std::to_string(r.other.size()) + " logits differ (want 0)");
    }

    // 1d. GEMVs with 2 KiB weight stages: one row per stage, eight warps per row over slices of
    // K, rings of eight stages that wrap around (the barriers' parities flip): what long rows
    // and large matrices run, on this model's shapes.
    {
      CudaExecutor smallExec(gpuArt, weights);
      smallExec.setGemvStageBytes(2048);
      Runner small{nullptr, &smallExec, slots, vocab};
      againstCpuAndDefault(small, "with 2 KiB GEMV stages", "32 KiB stages");
    }

    // 1e. The qkvu GEMV and the decode kernel as one launch per layer (rec::gemv_decode,
    // setDecodeFusion(true) where it applies) vs two (the default): the same sums in the same
    // order, so four slots
    // prefilled to different lengths, then two decode steps (the second with slot 1 inactive)
    // give the same logits and states bit for bit; the fused launch ran on every layer.
    {
      CudaExecutor fusedExec(gpuArt, weights);
      fusedExec.setDecodeFusion(true);
      Runner fused{nullptr, &fusedExec, slots, vocab};
      Runner &apart = gpu;
      const int64_t n = 300;
      std::vector<int32_t> ids(size_t(slots * n), 0), lens = {5, 64, 300, 17};
      for (int64_t b = 0; b < slots; ++b)
        for (int64_t t = 0; t < n; ++t)
          ids[b * n + t] = text[(t * (b + 5) + 3 * b) % 2048];
      size_t differ = 0, total = 0;
      auto compare = [&](const std::vector<float> &a, const std::vector<float> &b) {
        total += a.size();
        if (a.size() != b.size()) {
          differ += a.size() + b.size();
          return;
        }
        for (size_t i = 0; i < a.size(); ++i)
          differ += std::memcmp(&a[i], &b[i], sizeof(float)) != 0;
      };
      fused.reset();
      apart.reset();
      fused.prefill(ids, lens, n);
      apart.prefill(ids, lens, n);
      const std::vector<int32_t> tokens = {7, 8, 9, 10}, pos1 = {5, 64, 300, 17},
                                 pos2 = {6, -1, 301, 18};
      compare(fused.decode(tokens, pos1), apart.decode(tokens, pos1));
      compare(fused.decode(tokens, pos2), apart.decode(tokens, pos2));
      const auto sf = fused.state(), sa = apart.state();
      for (size_t l = 0; l < sf.size() && l < sa.size(); ++l)
        compare(sf[l], sa[l]);
      const int64_t layers = static_cast<int64_t>(sf.size());
      report(differ == 0 && total > 0 && fusedExec.fusedDecodeLaunches() == layers &&
                 gpuExec.fusedDecodeLaunches() == 0,
             "4 slots, two decode steps, qkvu GEMV + decode fused vs apart: " +
                 std::to_string(differ) + " of " + std::to_string(total) +
                 " logits and state entries differ (want 0); fused on " +
                 std::to_string(fusedExec.fusedDecodeLaunches()) + " of " + std::to_string(layers) +
                 " layers");
    }

    // 1f. Decode steps queued back to back (enqueueDecode: the host runs ahead of the GPU, and
    // the page-locked ids and positions of a step must not be rewritten before its upload
    // ran) leave the same states, bit for bit, as the same steps each waited for
    // (decodeStep), and decodeStepLogits returns decodeStep's logits.
    {
      const int64_t n = 64, count = 12;
      std::vector<int32_t> ids(size_t(slots * n), 0), lens(size_t(slots), static_cast<int32_t>(n));
      for (int64_t b = 0; b < slots; ++b)
        for (int64_t t = 0; t < n; ++t)
          ids[b * n + t] = text[(t * (b + 3) + 5 * b) % 2048];
      auto step = [&](int64_t i, std::vector<int32_t> &tok, std::vector<int32_t> &pos) {
        tok.resize(size_t(slots)), pos.resize(size_t(slots));
        for (int64_t b = 0; b < slots; ++b) {
          tok[b] = text[(i * 31 + b * 7 + 11) % 2048];
          pos[b] = int32_t(n + i);
        }
      };
      std::vector<int32_t> tok, pos;
      gpu.reset();
      gpu.prefill(ids, lens, n);
      for (int64_t i = 0; i < count; ++i) {
        step(i, tok, pos);
        gpuExec.enqueueDecode(tok.data(), pos.data(), slots);
      }
      step(count, tok, pos);
      const float *queuedLogits = gpuExec.decodeStepLogits(tok.data(), pos.data(), slots);
      const std::vector<float> queued(queuedLogits, queuedLogits + slots * vocab);
      const auto queuedState = gpu.state();
      gpu.reset();
      gpu.prefill(ids, lens, n);
      std::vector<float> waited;
      for (int64_t i = 0; i <= count; ++i) {
        step(i, tok, pos);
        waited = gpu.decode(tok, pos);
      }
      const auto waitedState = gpu.state();
      size_t differ = queued.size() == waited.size() ? 0 : queued.size() + waited.size(), total = 0;
      for (size_t i = 0; i < queued.size() && i < waited.size(); ++i)
        differ += std::memcmp(&queued[i], &waited[i], sizeof(float)) != 0;
      total += queued.size();
      for (size_t l = 0; l < queuedState.size() && l < waitedState.size(); ++l) {
        total += queuedState[l].size();
        for (size_t i = 0; i < queuedState[l].size(); ++i)
          differ += std::memcmp(&queuedState[l][i], &waitedState[l][i], sizeof(float)) != 0;
      }
      report(differ == 0 && total > 0 && queuedState.size() == waitedState.size(),
             std::to_string(count) +
                 " decode steps queued back to back vs waited for: " + std::to_string(differ) +
                 " of " + std::to_string(total) + " logits and state entries differ (want 0)");
    }

    // 2. state after prefill(n) = state after n decode steps (GPU), = CPU state.
    {
      const int64_t n = 300;
      const std::vector<int32_t> prompt(text.begin(), text.begin() + n);
      gpu.reset();
      gpu.prefillOne(2, prompt);
      const auto afterPrefill = gpu.state();
      gpu.reset();
      for (int64_t t = 0; t < n; ++t)
        gpu.decodeOne(2, text[t], int32_t(t));
      const auto afterDecode = gpu.state();
      cpu.reset();
      cpu.prefillOne(2, prompt);
      const auto cpuState = cpu.state();
      for (size_t l = 0; l < afterPrefill.size(); ++l) {
        const size_t per = afterPrefill[l].size() / size_t(slots);
        const double e = normRel(afterPrefill[l], afterDecode[l], 2 * per, per);
        const double c = normRel(afterPrefill[l], cpuState[l], 2 * per, per);
        double others = 0; // the other slots stay zero
        for (size_t i = 0; i < afterPrefill[l].size(); ++i)
          if (i / per != 2)
            others = std::max(others,
                              double(std::fabs(afterPrefill[l][i])) + std::fabs(afterDecode[l][i]));
        report(
            e <= 2e-2 && c <= 2e-2 && others == 0,
            "state " + std::to_string(l) + " after prefill(300) vs 300 decode steps: " +
                std::to_string(e) + ", vs cpu prefill: " + std::to_string(c) +
                " (normwise, bound 2e-2); other slots untouched: " + (others == 0 ? "yes" : "NO"));
      }
    }

    // 3. slots of different lengths in one prefill; a length-0 slot keeps its state.
    {
      const std::vector<int64_t> lengths = {5, 0, 300, 2048};
      gpu.reset();
      gpu.prefillOne(1, std::vector<int32_t>(text.begin() + 100, text.begin() + 164));
      const auto before = gpu.state();
      const int64_t n = 2048;
      std::vector<int32_t> ids(size_t(slots * n), 0), lens(size_t(slots), 0);
      for (int64_t b = 0; b < 4; ++b) {
        lens[b] = int32_t(lengths[b]);
        for (int64_t t = 0; t < lengths[b]; ++t)
          ids[b * n + t] = text[(t * (b + 3) + b) % 2048];
      }
      const std::vector<float> batched = gpu.prefill(ids, lens, n);
      const auto after = gpu.state();
      bool kept = true;
      for (size_t l = 0; l < before.size(); ++l) {
        const size_t per = before[l].size() / size_t(slots);
        kept &= std::equal(before[l].begin() + per, before[l].begin() + 2 * per,
                           after[l].begin() + per);
      }
      report(kept, "a slot of length 0 in a prefill keeps its state bit for bit");
      for (int64_t b = 0; b < 4; ++b) {
        if (lengths[b] == 0)
          continue;
        std::vector<int32_t> alone(ids.begin() + b * n, ids.begin() + b * n + lengths[b]);
        const std::vector<float> one = gpu.prefillOne(b, alone);
        const Diff d = maxRel(batched.data() + b * vocab, one.data(), vocab);
        report(d.finite && d.rel <= 3e-2,
               "slot " + std::to_string(b) + " (length " + std::to_string(lengths[b]) +
                   ") in a batch of lengths 5, 0, 300, 2048 vs alone: " + std::to_string(d.rel) +
                   " (bound 3e-2)");
      }
      // All four slots decode one token at their own positions (the GEMVs with M = 4), against
      // the CPU from the same prompts.
      {
        cpu.reset();
        cpu.prefillOne(1, std::vector<int32_t>(text.begin() + 100, text.begin() + 164));
        cpu.prefill(ids, lens, n);
        gpu.reset();
        gpu.prefillOne(1, std::vector<int32_t>(text.begin() + 100, text.begin() + 164));
        gpu.prefill(ids, lens, n);
        const std::vector<int32_t> tokens = {11, 22, 33, 44}, pos = {5, 64, 300, 2048};
        const std::vector<float> g = gpu.decode(tokens, pos), c = cpu.decode(tokens, pos);
        double worst = 0;
        bool finite = true;
        for (int64_t b = 0; b < 4; ++b) {
          const Diff d = maxRel(g.data() + b * vocab, c.data() + b * vocab, vocab);
          worst = std::max(worst, d.rel);
          finite &= d.finite && d.maxRef > 0;
        }
        report(finite && worst <= 3e-2, "4 slots decoding at positions 5, 64, 300, 2048 vs the "
                                        "cpu: worst slot " +
                                            std::to_string(worst) + " (bound 3e-2)");
      }
      // One decode step with slot 1 inactive: its state stays.
      const auto beforeStep = gpu.state();
      gpu.decode({1, 2, 3, 4}, {5, -1, 300, 2048});
      const auto afterStep = gpu.state();
      bool inactiveKept = true, activeMoved = false;
      for (size_t l = 0; l < beforeStep.size(); ++l) {
        const size_t per = beforeStep[l].size() / size_t(slots);
        inactiveKept &= std::equal(beforeStep[l].begin() + per, beforeStep[l].begin() + 2 * per,
                                   afterStep[l].begin() + per);
        activeMoved |=
            !std::equal(beforeStep[l].begin(), beforeStep[l].begin() + per, afterStep[l].begin());
      }
      report(inactiveKept && activeMoved,
             "a decode step leaves an inactive slot's state alone and updates the active ones");
    }

    // 4. position 65,536.
    {
      const std::vector<int32_t> prompt(text.begin(), text.begin() + 64);
      gpu.reset();
      cpu.reset();
      gpu.prefillOne(0, prompt);
      cpu.prefillOne(0, prompt);
      const std::vector<float> g = gpu.decodeOne(0, text[64], 65536);
      const std::vector<float> c = cpu.decodeOne(0, text[64], 65536);
      const Diff d = maxRel(g.data(), c.data(), vocab);
      report(d.finite && d.maxRef > 0 && d.rel <= 3e-2,
             "decode at position 65536: finite, vs the cpu recurrence " + std::to_string(d.rel) +
                 " (bound 3e-2)");
    }

    // 5. greedy generation, CPU and GPU independently.
    {
      const std::vector<int32_t> prompt(text.begin() + 500, text.begin() + 533);
      std::vector<int32_t> gpuTokens, cpuTokens;
      std::vector<double> gaps; // the CPU's top-two gap, relative to max |logit|, per step
      for (Runner *r : {&gpu, &cpu}) {
        r->reset();
        std::vector<float> z = r->prefillOne(3, prompt);
        std::vector<int32_t> &out = r == &gpu ? gpuTokens : cpuTokens;
        for (int t = 0; t < 48; ++t) {
          if (r == &cpu) {
            double m = 0;
            for (float v : z)
              m = std::max(m, std::fabs(double(v)));
            gaps.push_back(topTwoGap(z) / m);
          }
          out.push_back(argmax(z));
          z = r->decodeOne(3, out.back(), int32_t(prompt.size() + t));
        }
      }
      size_t agree = 0;
      while (agree < gpuTokens.size() && gpuTokens[agree] == cpuTokens[agree])
        ++agree;
      // A divergence must sit at a near-tie: the CPU's top two within 2 × the logit bound.
      const bool explained = agree == gpuTokens.size() || gaps[agree] <= 2 * 3e-2;
      std::string first;
      for (size_t i = 0; i < std::min<size_t>(agree, 12); ++i)
        first += std::to_string(cpuTokens[i]) + " ";
      report(agree >= 8 && explained,
             "greedy generation: gpu and cpu agree on the first " + std::to_string(agree) +
                 " of 48 tokens (" + first + "...)" +
                 (agree < gpuTokens.size() ? "; they part where the cpu's top two logits are " +
                                                 std::to_string(gaps[agree]) +
                                                 " of max |logit| apart (near-tie "
                                                 "bound 6e-2)"
                                           : ""));
    }

    // 6. bad input.
    {
      auto refused = [&](const char *what, auto call) {
        try {
          call();
          report(false, std::string(what) + ": accepted");
        } catch (const tnlm::Error &e) {
          report(true, std::string(what) + ": " + e.what());
        }
      };
      std::vector<int32_t> ids(size_t(slots * 8), 1), lens(size_t(slots), 8);
      lens[2] = 9;
      refused("a length beyond the call's sequence",
              [&] { gpuExec.prefill(ids.data(), lens.data(), slots, 8); });
      lens[2] = 8;
      ids[3] = int32_t(vocab);
      refused("a prompt id outside the vocabulary",
              [&] { gpuExec.prefill(ids.data(), lens.data(), slots, 8); });
      std::vector<int32_t> one(size_t(slots), 1), pos(size_t(slots), 0);
      pos[1] = -2;
      refused("a position below -1", [&] { gpuExec.decodeStep(one.data(), pos.data(), slots); });
      pos[1] = 0;
      one[0] = -1;
      refused("a decode id outside the vocabulary",
              [&] { gpuExec.decodeStep(one.data(), pos.data(), slots); });
      refused("@forward on a recurrent artifact", [&] { gpuExec.forward(one.data(), 1, 1); });
      // What the caller set, before the refusals below change it.
      const char *pdl = std::getenv("TNLM_PDL"), *cv = std::getenv("TNLM_DECODE_CARVEOUT");
      const bool outerDefault =
          (!pdl || std::string_view(pdl) == "1") && (!cv || !*cv || std::string_view(cv) == "auto");
      ::setenv("TNLM_PDL", "yes", 1);
      refused("TNLM_PDL=yes", [&] { CudaExecutor bad(gpuArt, weights); });
      ::unsetenv("TNLM_PDL");
      ::setenv("TNLM_DECODE_FUSE", "2", 1);
      refused("TNLM_DECODE_FUSE=2", [&] { CudaExecutor bad(gpuArt, weights); });
      ::unsetenv("TNLM_DECODE_FUSE");
      ::setenv("TNLM_GEMV_PREFETCH", "3", 1);
      refused("TNLM_GEMV_PREFETCH=3", [&] { CudaExecutor bad(gpuArt, weights); });
      ::unsetenv("TNLM_GEMV_PREFETCH");
      ::setenv("TNLM_DECODE_CARVEOUT", "101", 1);
      refused("TNLM_DECODE_CARVEOUT=101", [&] { CudaExecutor bad(gpuArt, weights); });
      ::setenv("TNLM_DECODE_CARVEOUT", "most", 1);
      refused("TNLM_DECODE_CARVEOUT=most", [&] { CudaExecutor bad(gpuArt, weights); });
      // auto (the default) asks for what the decode kernels need, noted at the first call of
      // a batch size (which runs at the driver's choice); driver and a percent are what they
      // say, before and after a step. (Programmatic launches on, whatever the caller set: the
      // carveout applies to them.) The main executor, if it ran at the default, chose the same.
      const int mainChoice = gpuExec.decodeCarveout(slots);
      int chosen = -1;
      for (const char *v : {"auto", "driver", "37"}) {
        ::setenv("TNLM_DECODE_CARVEOUT", v, 1);
        CudaExecutor e(gpuArt, weights);
        const std::string_view name(v);
        const int before = e.decodeCarveout(slots);
        std::vector<int32_t> tokens(size_t(slots), 1), at(size_t(slots), 5);
        e.decodeStep(tokens.data(), at.data(), slots);
        const int after = e.decodeCarveout(slots);
        if (name == "auto")
          chosen = after;
        const bool ok = name == "auto"     ? before == -1 && after > 0 && after <= 100
                        : name == "driver" ? before == -1 && after == -1
                                           : before == 37 && after == 37;
        report(ok, "TNLM_DECODE_CARVEOUT=" + std::string(name) + ": " + std::to_string(before) +
                       " before a step, " + std::to_string(after) + " after");
      }
      if (outerDefault)
        report(mainChoice == chosen, "the default carveout of the executor that ran the checks: " +
                                         std::to_string(mainChoice) + " %");
      ::unsetenv("TNLM_DECODE_CARVEOUT");
    }
    // The whole decode step of the batch replays as one CUDA graph (0: it was not captured
    // and runs launch by launch).
    const size_t nodes = gpuExec.graphNodes("decode_step", slots, 1);
    report(nodes > 0, "the decode step of " + std::to_string(slots) +
                          " slots is one CUDA graph of " + std::to_string(nodes) +
                          " kernel launches");
    std::printf(failures ? "FAILED (%d failed checks)\n" : "PASSED\n", failures);
    return failures ? 1 : 0;
  } catch (const std::exception &e) {
    std::printf("FAIL: %s\n", e.what());
    return 1;
  }
}
