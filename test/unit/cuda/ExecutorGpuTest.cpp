//===- ExecutorGpuTest.cpp - CudaExecutor against CpuExecutor, same weights -----===//
//
//   tnlm-gpu-executor <cuda artifact> <cpu artifact> [BxN ...]
//   e.g. tnlm-gpu-executor cuda.tnlm cpu.tnlm 1x1 2x63 2x64 1x65 2x2048 1x32768
// Both artifacts are compiled by tnlmc from one model config with the same --batch/--seq; every
// call shape B x N (batch B, sequence N) must lie within them (default: the artifact's max
// batch x max seq). ctest compiles them first (a fixture) where the compiler is built, for two
// models: test/unit/cuda/cuda-exec-model.json (d 256, H 2 so head dim 128, no LRPE, L 2, F 512,
// V 300, tied head) and cuda-exec-lrpe.json (d 768, H 6: head dim 128 with a head count that is
// not a power of two, layer 0 with LRPE and layer 1 without, F 1536, V 512, separate head);
// scripts/device-test compiles the same pairs for the device. The same seeded random weights
// go through both executors and, per shape, the same seeded random ids; the logits are
// compared and one line per shape gives the numbers.
//
// Checks: per shape, no non-finite logit and max |gpu - cpu| ≤ 3e-2 · max |cpu|, and a second
// GPU call of the shape (the replay of its CUDA graph) bit-identical to the first; an
// out-of-vocabulary id (too large, negative) rejected with an error; then every shape again, in
// order, so each one right after another shape (A, B, A), bit-identical to its first call.
//
// Tolerance: the GPU path keeps activations, weights and the logits in bf16 (8 bits of
// significand: relative rounding 2^-9, 2^-8 per op at worst), with fp32 accumulation in the
// GEMMs and the attention. About 25 rounded ops lie between the ids and a logit (per layer:
// norm, GEMM out, silu, attention out, gate/norm, projection, residual add + norm, two GLU
// GEMMs, product, down projection, add + norm; then the head), and the errors are mostly
// independent, so the expected error is a few 2^-8 of the activations' scale; the bound is
// max |gpu - cpu| ≤ 3e-2 · max |cpu| (about 8 · 2^-8). LRPE adds one rounded product per q and
// k feature; its angles θ·p are fp32 on both sides (docs/model.md), so they agree as long as the
// GPU computes cos and sin accurately at arguments up to 32767 rad (a fast-math __sinf would
// not: the 32768-token shape checks that). The attention sums over up to 32768 positions are
// fp32, so the sequence length adds only fp32-sized error.
// The artifacts are loaded (verified) and the shapes checked before the device is looked for.
// Exit 0 pass, 1 fail, 2 usage (a malformed or out-of-range shape), 77 no device.
//
//===----------------------------------------------------------------------===//
#include "codegen/cuda/LightningFwdPlan.h"
#include "runtime/CpuExecutor.h"
#include "runtime/Error.h"
#include "runtime/cuda/CudaApi.h"
#include "runtime/cuda/CudaExecutor.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Shape {
  int64_t batch = 0, seq = 0;
};

/// Parses "BxN" (two positive decimal integers); false on anything else.
bool parseShape(const std::string &s, Shape &out) {
  auto number = [](const std::string &t, int64_t &v) {
    if (t.empty() || t.size() > 12 || t.find_first_not_of("0123456789") != std::string::npos)
      return false;
    v = std::atoll(t.c_str());
    return v > 0;
  };
  const size_t x = s.find('x');
  return x != std::string::npos && number(s.substr(0, x), out.batch) &&
         number(s.substr(x + 1), out.seq);
}

/// Seeded random ids in [0, vocab) for one shape (the seed depends on the shape).
std::vector<int32_t> randomIds(const Shape &s, int64_t vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(s.batch * s.seq));
  uint64_t x =
      88172645463325252ull ^ (static_cast<uint64_t>(s.batch) << 40) ^ static_cast<uint64_t>(s.seq);
  for (auto &id : ids) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    id = static_cast<int32_t>(x % static_cast<uint64_t>(vocab));
  }
  return ids;
}

double msSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

/// ‖g − c‖₂ / ‖c‖₂ (‖g − c‖₂ where c is 0; infinite where g holds a non-finite value or the
/// sizes differ); *norm = ‖c‖₂.
double gradientRelL2(const std::vector<float> &g, const std::vector<float> &c, double *norm) {
  double d2 = 0, r2 = 0;
  bool finite = g.size() == c.size();
  for (size_t j = 0; j < c.size() && j < g.size(); ++j) {
    finite &= std::isfinite(g[j]);
    d2 += double(g[j] - c[j]) * (g[j] - c[j]);
    r2 += double(c[j]) * c[j];
  }
  *norm = std::sqrt(r2);
  return !finite ? INFINITY : r2 > 0 ? std::sqrt(d2 / r2) : std::sqrt(d2);
}

/// The train calls' batch: ids in [0, V), every 7th label ignored (-100), the rest in [0, V).
void trainBatch(int64_t V, std::vector<int32_t> &ids, std::vector<int32_t> &labels) {
  uint64_t x = 99;
  for (size_t i = 0; i < ids.size(); ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    ids[i] = int32_t((x >> 33) % uint64_t(V));
    labels[i] = i % 7 == 3 ? -100 : int32_t((x >> 13) % uint64_t(V));
  }
}

} // namespace

/// tnlm-gpu-executor --train <cuda train artifact> <cpu train artifact> (issue 11): two
/// @train_step calls (accumulating; the GPU's second replays its graph) of the
/// same random weights and batch (ids in [0, V), every 7th label ignored) on both, then
/// @optimizer_step and @eval_loss; prints the loss, each gradient's
/// relative L2 difference and the master weights' after the step. Checks: finite, the loss
/// within 2e-2 · (1 + |loss|), every gradient within 0.1 relative L2 (bf16 activations and
/// activation gradients round to 2^-9 relative, about 25 times along the path from the ids to
/// a weight gradient's operand: at worst 25 · 2^-9 ≈ 4.9e-2 for each of the two operands of
/// dW = xᵀ·dy, so ≈ 0.1 for their product; errors that add like a random walk give
/// √25 · 2^-9 ≈ 1e-2 per operand, and the measured worst is 3.6e-2); after the optimizer
/// step at most 2 % of the weights more than lr / 2 from the CPU's and none more than 2.5 lr
/// (sign flips of gradients near zero move an element 2 lr at the first step; these two
/// bounds are first guesses, to be set from measurements). Then a NaN in one weight: the
/// finite checks name the step it first reaches.
int trainMain(const char *gpuPath, const char *cpuPath) {
  tnlm::Artifact gpuArt = tnlm::Artifact::load(gpuPath, tnlm::Target::CudaSm90a);
  tnlm::Artifact cpuArt = tnlm::Artifact::load(cpuPath, tnlm::Target::Cpu);
  std::string why;
  if (!tnlm::cuda::deviceAvailable(&why)) {
    std::printf("SKIPPED: no CUDA device (%s)\n", why.c_str());
    return 77;
  }
  const int64_t B = cpuArt.maxBatch(), N = cpuArt.maxSeq(), V = cpuArt.vocabSize();
  tnlm::ParamValues weights = tnlm::randomWeights(cpuArt, 4321);
  tnlm::CpuExecutor cpu(cpuArt, weights);
  tnlm::cuda::CudaExecutor gpu(gpuArt, weights);
  // The same calls with the optimizer zeroing the gradients (TNLM_GRAD_FIRST_WRITE=0), for the
  // check after the optimizer step below.
  tnlm::cuda::CudaExecutor zeroed(gpuArt, weights);
  zeroed.setGradFirstWrite(false);
  gpu.setGradFirstWrite(true);
  gpu.setGradStream(false);
  // The same calls with the weight gradients' GEMMs on the side stream (TNLM_GRAD_STREAM=1):
  // the same GEMMs on the same operands, so the same gradients bit for bit.
  tnlm::cuda::CudaExecutor sided(gpuArt, weights);
  sided.setGradFirstWrite(true);
  sided.setGradStream(true);
  // And with each gated pair's forward as cuBLASLt's GEMM and the product kernel instead of the
  // fused kernel, its backward's dy = dz·W3 and mul_grad as cuBLASLt's GEMM and the mul_grad
  // kernel (TNLM_SGLU_FUSE=0), and each plain layer's qkvu GEMM and φ as cuBLASLt's GEMM and the
  // SiLU kernel (TNLM_SILU_FUSE=0): the fused kernels' outputs are those bits too.
  tnlm::cuda::CudaExecutor unfused(gpuArt, weights);
  unfused.setGradFirstWrite(true);
  unfused.setGradStream(false);
  unfused.setFuseSglu(false);
  unfused.setFuseSilu(false);
  gpu.setFuseSglu(true);
  gpu.setFuseSilu(true);
  std::vector<int32_t> ids(size_t(B * N)), labels(size_t(B * N));
  trainBatch(V, ids, labels);
  int failures = 0;
  auto lossOf = [](const std::vector<std::pair<std::string, std::vector<float>>> &r) {
    return r.empty() || r.front().second.empty() ? NAN : double(r.front().second[0]);
  };
  // Twice (the gradients accumulate): the GPU's first call runs step by step and captures
  // the step as a CUDA graph, the second replays it.
  double cpuLoss = 0, gpuLoss = 0;
  for (int call = 0; call < 2; ++call) {
    cpuLoss = lossOf(cpu.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N));
    gpuLoss = lossOf(gpu.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N));
    zeroed.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N);
    sided.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N);
    unfused.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N);
  }
  // State entries of two executors that differ in their bits (a different count of buffers
  // or entries counts as differing); n: the entries compared. ok: none differs.
  auto compare = [](tnlm::cuda::CudaExecutor &x, tnlm::cuda::CudaExecutor &y, size_t &differ,
                    size_t &n) {
    const std::vector<std::vector<float>> a = x.state(), b = y.state();
    differ = a.size() != b.size(), n = 0;
    for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
      n += a[i].size();
      differ += a[i].size() != b[i].size();
      for (size_t j = 0; j < a[i].size() && j < b[i].size(); ++j)
        differ += std::memcmp(&a[i][j], &b[i][j], sizeof(float)) != 0;
    }
    return n > 0 && differ == 0;
  };
  {
    size_t differ = 0, n = 0;
    const bool ok = compare(gpu, sided, differ, n);
    std::printf("%s train_step with the weight gradients on a side stream (two calls, the "
                "second a graph): %zu of %zu state entries differ (want 0)\n",
                ok ? "ok  " : "FAIL", differ, n);
    failures += !ok;
  }
  {
    size_t differ = 0, n = 0;
    // Each fused kernel tnlmc put in the artifact must have run (an older artifact's steps run
    // unfused, and this check then says so), and none it left out. The product's backward
    // fuses into a dgrad only where the gated step comes within three steps of it (with
    // --recompute=full, a and b are recomputed between the two: no place to fuse).
    auto has = [&](const char *name) {
      for (const flatbuffers::String *k : *gpuArt.root().kernels()->names())
        if (k->string_view() == name)
          return true;
      return false;
    };
    bool mulGradPlace = false;
    for (const tnlm::schema::Function *fn : *gpuArt.root().functions()) {
      if (fn->name()->string_view() != "train_step")
        continue;
      const auto &st = *fn->steps();
      for (unsigned i = 0; i < st.size(); ++i)
        for (unsigned g = i + 1; g < st.size() && g <= i + 3; ++g)
          mulGradPlace =
              mulGradPlace || (st.Get(i)->kind() == tnlm::schema::KernelKind_LinearGradInput &&
                               st.Get(g)->kind() == tnlm::schema::KernelKind_GatedLinearGrad &&
                               st.Get(g)->inputs()->size() == 6);
    }
    const bool ok =
        compare(gpu, unfused, differ, n) && (gpu.fusedSglus() > 0) == has(tnlm::kSgluFusedKernel) &&
        unfused.fusedSglus() == 0 &&
        (gpu.fusedMulGrads() > 0) == (has(tnlm::kMulGradFusedKernel) && mulGradPlace) &&
        unfused.fusedMulGrads() == 0 && (gpu.fusedSilus() > 0) == has(tnlm::kSiluFusedKernel) &&
        unfused.fusedSilus() == 0 && gpu.siluLaunchesSkipped() == gpu.siluFusedLaunches();
    std::printf("%s train_step with SGLU's forward fused (%zu places), its product's backward "
                "fused into the dgrad before it (%zu places) and φ into the qkvu GEMM (%zu "
                "places; %lld fused launches, %lld SiLU launches skipped) against cuBLASLt's GEMMs "
                "and the product, mul_grad and SiLU kernels: %zu of %zu state entries differ "
                "(want 0)\n",
                ok ? "ok  " : "FAIL", gpu.fusedSglus(), gpu.fusedMulGrads(), gpu.fusedSilus(),
                (long long)gpu.siluFusedLaunches(), (long long)gpu.siluLaunchesSkipped(), differ,
                n);
    failures += !ok;
  }
  const bool lossOk =
      std::isfinite(gpuLoss) && std::fabs(gpuLoss - cpuLoss) <= 2e-2 * (1 + std::fabs(cpuLoss));
  std::printf("%s train_step loss: gpu %.6f, cpu %.6f\n", lossOk ? "ok  " : "FAIL", gpuLoss,
              cpuLoss);
  failures += !lossOk;
  const auto &table = *cpuArt.root().state();
  // Every gradient's relative L2 difference from ref's; prints each where `each`, returns the
  // worst (infinite where one is not finite).
  auto gradientsAgainst = [&](const std::vector<std::vector<float>> &gs,
                              const std::vector<std::vector<float>> &cs, double bound, bool each,
                              const char *what) {
    double worst = 0;
    for (unsigned i = 0; i < table.size(); ++i) {
      if (table.Get(i)->kind() != tnlm::schema::StateKind_Gradient)
        continue;
      double norm = 0;
      const double rel = gradientRelL2(gs[i], cs[i], &norm);
      worst = std::max(worst, rel);
      const bool ok = rel <= bound;
      failures += !ok;
      if (each || !ok)
        std::printf("%s grad %-60s rel L2 %.3e (|%s| %.3e)\n", ok ? "ok  " : "FAIL",
                    table.Get(i)->name()->str().c_str(), rel, what, norm);
    }
    return worst;
  };
  std::printf("worst gradient rel L2 %.3e\n",
              gradientsAgainst(gpu.state(), cpu.state(), 0.1, true, "cpu"));
  // The optimizer step, then the evaluation loss.
  float hp[tnlm::schema::HyperParam_Count] = {};
  hp[tnlm::schema::HyperParam_Lr] = 1e-3f, hp[tnlm::schema::HyperParam_MinLr] = 1e-4f;
  hp[tnlm::schema::HyperParam_Warmup] = 10, hp[tnlm::schema::HyperParam_TotalSteps] = 100;
  hp[tnlm::schema::HyperParam_Schedule] = tnlm::schema::LrScheduleKind_Cosine;
  hp[tnlm::schema::HyperParam_Beta1] = 0.9f, hp[tnlm::schema::HyperParam_Beta2] = 0.95f;
  hp[tnlm::schema::HyperParam_Eps] = 1e-8f, hp[tnlm::schema::HyperParam_WeightDecay] = 0.1f;
  hp[tnlm::schema::HyperParam_ClipGrad] = 1.0f, hp[tnlm::schema::HyperParam_AccumSteps] = 1;
  cpu.run("optimizer_step", {{"hparams", hp}}, B, N);
  gpu.run("optimizer_step", {{"hparams", hp}}, B, N);
  zeroed.run("optimizer_step", {{"hparams", hp}}, B, N);
  const std::vector<std::vector<float>> gp = gpu.masterParams();
  const tnlm::ParamValues &cp = cpu.params();
  // At AdamW's first step an element moves by about ±lr whatever its gradient's size, so an
  // element whose gradient's sign differs between bf16 and f32 (gradients within their noise
  // of zero) moves 2·lr apart: count the elements more than lr / 2 apart, and the worst.
  const double lr1 = hp[tnlm::schema::HyperParam_Lr] / hp[tnlm::schema::HyperParam_Warmup];
  int64_t far = 0, total = 0;
  double worstUpdate = 0;
  bool finiteParams = true;
  for (size_t i = 0; i < cp.size(); ++i)
    for (size_t j = 0; j < cp[i].size(); ++j) {
      const double d = std::fabs(double(gp[i][j]) - cp[i][j]);
      finiteParams &= std::isfinite(gp[i][j]);
      far += d > 0.5 * lr1;
      ++total;
      worstUpdate = std::max(worstUpdate, d / lr1);
    }
  const double farFraction = total ? double(far) / double(total) : 0;
  const bool updateOk = finiteParams && farFraction <= 0.02 && worstUpdate <= 2.5;
  failures += !updateOk;
  std::printf("%s optimizer_step: %.4f %% of %lld weights more than lr/2 from the CPU's (bound "
              "2 %%), worst %.3f lr (bound 2.5)\n",
              updateOk ? "ok  " : "FAIL", 100 * farFraction, (long long)total, worstUpdate);
  const double cpuEval =
      lossOf(cpu.run("eval_loss", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N));
  const double gpuEval =
      lossOf(gpu.run("eval_loss", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N));
  const bool evalOk =
      std::isfinite(gpuEval) && std::fabs(gpuEval - cpuEval) <= 2e-2 * (1 + std::fabs(cpuEval));
  failures += !evalOk;
  std::printf("%s eval_loss after the step: gpu %.6f, cpu %.6f\n", evalOk ? "ok  " : "FAIL",
              gpuEval, cpuEval);
  // After the optimizer step the GPU's gradients still hold the step's values (its fills are
  // skipped): the next train step's first writes overwrite them (its own graph), the one after
  // adds (the ordinary graph). Each against the CPU (zeroed by its optimizer step; the bound
  // above: stale values left in would be O(1) off) and against the executor whose optimizer
  // zeroed them (same GPU kernels; β = 0 against β = 1 over zeros: within 1e-5).
  for (int call = 0; call < 2; ++call) {
    cpu.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N);
    gpu.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N);
    zeroed.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N);
    const std::vector<std::vector<float>> gs = gpu.state();
    const double vsCpu = gradientsAgainst(gs, cpu.state(), 0.1, false, "cpu");
    const double vsZeroed = gradientsAgainst(gs, zeroed.state(), 1e-5, false, "zeroed");
    std::printf("%s train_step %d after the optimizer step (%s): worst gradient rel L2 %.3e vs "
                "the cpu, %.3e vs the optimizer zeroing them\n",
                vsCpu <= 0.1 && vsZeroed <= 1e-5 ? "ok  " : "FAIL", call + 1,
                call == 0 ? "overwriting the stale gradients" : "adding", vsCpu, vsZeroed);
    if (call == 0) { // two more calls of each graph: replays
      for (int again = 0; again < 2; ++again) {
        gpu.run("optimizer_step", {{"hparams", hp}}, B, N);
        zeroed.run("optimizer_step", {{"hparams", hp}}, B, N);
        cpu.run("optimizer_step", {{"hparams", hp}}, B, N);
        cpu.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N);
        gpu.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N);
        zeroed.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N);
      }
      const double replay = gradientsAgainst(gpu.state(), zeroed.state(), 1e-5, false, "zeroed");
      std::printf("%s the overwriting graph replayed twice more: %.3e vs the optimizer zeroing "
                  "them\n",
                  replay <= 1e-5 ? "ok  " : "FAIL", replay);
    }
  }
  // A NaN in one weight (layer 1's out_proj): the device-side check says the weights are not
  // finite, and a train step with the per-step checks names the step whose output first holds
  // a NaN: that projection (tnlm-train reports it as "step N: the loss is nan: ...").
  {
    const auto &table = *gpuArt.root().params();
    size_t p = table.size() - 1;
    for (size_t i = 0; i < table.size(); ++i)
      if (table[i]->name()->str() == "model.layers.1.token_mixer.out_proj.weight")
        p = i;
    const std::string module = table[p]->name()->str().substr(0, table[p]->name()->str().size() -
                                                                     std::string(".weight").size());
    tnlm::ParamValues bad = gpu.masterParams();
    const bool finiteBefore = gpu.mastersFinite();
    bad[p][bad[p].size() / 2] = NAN;
    gpu.setMasterParams(bad);
    const bool finiteAfter = gpu.mastersFinite();
    gpu.setCheckFinite(true);
    std::string where, message;
    try {
      gpu.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N);
    } catch (const tnlm::NonFiniteError &e) {
      where = e.where(), message = e.what();
    }
    gpu.setCheckFinite(false);
    const bool ok = finiteBefore && !finiteAfter && where.rfind(module, 0) == 0 &&
                    message.find("@train_step") != std::string::npos;
    failures += !ok;
    std::printf("%s a NaN in %s: weights finite before %s, after %s; %s\n", ok ? "ok  " : "FAIL",
                table[p]->name()->c_str(), finiteBefore ? "yes" : "no", finiteAfter ? "yes" : "no",
                message.empty() ? "no error" : message.c_str());
  }
  std::printf("%s\n", failures ? "FAILED" : "PASSED");
  return failures ? 1 : 0;
}

/// tnlm-gpu-executor --train <cuda train artifact> <cpu train artifact> BxN ... (issue 11's
/// lengths): per shape, one @train_step of fresh executors on the same random weights and
/// batch (as trainMain's), the loss and every gradient against the CPU with trainMain's bounds
/// (2e-2 · (1 + |loss|); 0.1 relative L2, reasoned there for bf16: the path from the ids to a
/// gradient does not lengthen with N, and the sums over tokens are f32). At 1, 63, 64, 65,
/// 2048 and 32768 tokens this runs the fused Lightning backward (the three passes and their
/// segment plans, the gate and norm backward, φ', LRPE and dθ) with H = 6 (not a power of two)
/// from one token to a sequence split over the SMs.
int trainShapesMain(const char *gpuPath, const char *cpuPath, const std::vector<Shape> &shapes) {
  tnlm::Artifact gpuArt = tnlm::Artifact::load(gpuPath, tnlm::Target::CudaSm90a);
  tnlm::Artifact cpuArt = tnlm::Artifact::load(cpuPath, tnlm::Target::Cpu);
  for (const Shape &s : shapes)
    if (s.batch > gpuArt.maxBatch() || s.seq > gpuArt.maxSeq() || s.batch > cpuArt.maxBatch() ||
        s.seq > cpuArt.maxSeq()) {
      std::printf("FAIL: shape %lldx%lld is outside the artifacts' %lldx%lld / %lldx%lld\n",
                  (long long)s.batch, (long long)s.seq, (long long)gpuArt.maxBatch(),
                  (long long)gpuArt.maxSeq(), (long long)cpuArt.maxBatch(),
                  (long long)cpuArt.maxSeq());
      return 1;
    }
  std::string why;
  if (!tnlm::cuda::deviceAvailable(&why)) {
    std::printf("SKIPPED: no CUDA device (%s)\n", why.c_str());
    return 77;
  }
  const int64_t V = cpuArt.vocabSize();
  const tnlm::ParamValues weights = tnlm::randomWeights(cpuArt, 4321);
  const auto &table = *cpuArt.root().state();
  int failures = 0;
  for (const Shape &s : shapes) {
    const int64_t B = s.batch, N = s.seq;
    std::vector<int32_t> ids(size_t(B * N)), labels(size_t(B * N));
    trainBatch(V, ids, labels);
    const auto t0 = std::chrono::steady_clock::now();
    tnlm::CpuExecutor cpu(cpuArt, weights);
    tnlm::cuda::CudaExecutor gpu(gpuArt, weights);
    const std::vector<tnlm::cuda::CudaExecutor::Input> in = {{"ids", ids.data()},
                                                             {"labels", labels.data()}};
    const auto c = cpu.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, B, N);
    const auto g = gpu.run("train_step", in, B, N);
    const double cpuLoss = c.empty() || c.front().second.empty() ? NAN : c.front().second[0];
    const double gpuLoss = g.empty() || g.front().second.empty() ? NAN : g.front().second[0];
    const bool lossOk =
        std::isfinite(gpuLoss) && std::fabs(gpuLoss - cpuLoss) <= 2e-2 * (1 + std::fabs(cpuLoss));
    failures += !lossOk;
    const std::vector<std::vector<float>> gs = gpu.state(), cs = cpu.state();
    double worst = 0;
    std::string worstName;
    int bad = 0, grads = 0;
    for (unsigned i = 0; i < table.size() && i < gs.size() && i < cs.size(); ++i) {
      if (table.Get(i)->kind() != tnlm::schema::StateKind_Gradient)
        continue;
      ++grads;
      double norm = 0;
      const double rel = gradientRelL2(gs[i], cs[i], &norm);
      if (rel > worst || worstName.empty())
        worst = rel, worstName = table.Get(i)->name()->str();
      if (!(rel <= 0.1)) {
        ++bad;
        std::printf("FAIL %lldx%lld grad %s rel L2 %.3e (bound 0.1)\n", (long long)B, (long long)N,
                    table.Get(i)->name()->str().c_str(), rel);
      }
    }
    failures += bad + (grads == 0);
    std::printf("%s train_step %lldx%lld: loss gpu %.6f cpu %.6f; %d gradients, worst rel L2 "
                "%.3e (%s); %.1f s\n",
                lossOk && bad == 0 && grads > 0 ? "ok  " : "FAIL", (long long)B, (long long)N,
                gpuLoss, cpuLoss, grads, worst, worstName.c_str(), msSince(t0) / 1e3);
  }
  std::printf("%s\n", failures ? "FAILED" : "PASSED");
  return failures ? 1 : 0;
}

int main(int argc, char **argv) {
  if (argc >= 4 && std::string(argv[1]) == "--train") {
    try {
      if (argc == 4)
        return trainMain(argv[2], argv[3]);
      std::vector<Shape> shapes;
      for (int i = 4; i < argc; ++i) {
        Shape s;
        if (!parseShape(argv[i], s)) {
          std::fprintf(stderr, "%s: bad shape '%s': expected BxN (e.g. 2x63)\n", argv[0], argv[i]);
          return 2;
        }
        shapes.push_back(s);
      }
      return trainShapesMain(argv[2], argv[3], shapes);
    } catch (const tnlm::Error &e) {
      std::printf("FAIL: %s\n", e.what());
      return 1;
    }
  }
  if (argc < 3) {
    std::fprintf(stderr,
                 "usage: %s <cuda artifact> <cpu artifact> [BxN ...]\n"
                 "  e.g. %s cuda.tnlm cpu.tnlm 1x1 2x63 2x64 1x65 2x2048 1x32768\n"
                 "  (batch B x sequence N; default: the artifact's max batch x max seq)\n",
                 argv[0], argv[0]);
    return 2;
  }
  std::vector<Shape> shapes;
  for (int i = 3; i < argc; ++i) {
    Shape s;
    if (!parseShape(argv[i], s)) {
      std::fprintf(stderr,
                   "%s: bad shape '%s': expected BxN, batch B and sequence length N positive "
                   "integers (e.g. 2x63)\n",
                   argv[0], argv[i]);
      return 2;
    }
    shapes.push_back(s);
  }
  try {
    // The artifacts and shapes are checked first, so that a bad call fails without a device.
    tnlm::Artifact gpuArt = tnlm::Artifact::load(argv[1], tnlm::Target::CudaSm90a);
    tnlm::Artifact cpuArt = tnlm::Artifact::load(argv[2], tnlm::Target::Cpu);
    if (gpuArt.maxBatch() != cpuArt.maxBatch() || gpuArt.maxSeq() != cpuArt.maxSeq()) {
      std::printf("FAIL: the artifacts were compiled for %lldx%lld (cuda) and %lldx%lld (cpu)\n",
                  (long long)gpuArt.maxBatch(), (long long)gpuArt.maxSeq(),
                  (long long)cpuArt.maxBatch(), (long long)cpuArt.maxSeq());
      return 1;
    }
    if (shapes.empty())
      shapes.push_back({gpuArt.maxBatch(), gpuArt.maxSeq()});
    for (const Shape &s : shapes)
      if (s.batch > gpuArt.maxBatch() || s.seq > gpuArt.maxSeq()) {
        std::fprintf(stderr, "%s: shape %lldx%lld is outside the artifacts' %lldx%lld\n", argv[0],
                     (long long)s.batch, (long long)s.seq, (long long)gpuArt.maxBatch(),
                     (long long)gpuArt.maxSeq());
        return 2;
      }
    std::string why;
    if (!tnlm::cuda::deviceAvailable(&why)) {
      std::printf("SKIPPED: no CUDA device (%s)\n", why.c_str());
      return 77;
    }
    tnlm::ParamValues weights = tnlm::randomWeights(cpuArt, 1234);
    tnlm::ParamValues same = tnlm::randomWeights(gpuArt, 1234);
    if (weights != same) {
      std::printf("FAIL: the two artifacts' random weights differ (parameter tables?)\n");
      return 1;
    }
    tnlm::CpuExecutor cpu(cpuArt, weights);
    tnlm::cuda::CudaExecutor gpu(gpuArt, weights);
    std::printf("device: %s, %d SMs; artifacts for %lldx%lld; %zu shapes\n",
                gpu.context().deviceName().c_str(), gpu.context().multiprocessors(),
                (long long)gpuArt.maxBatch(), (long long)gpuArt.maxSeq(), shapes.size());
    if (cpu.vocabSize() != gpu.vocabSize()) {
      std::printf("FAIL: vocab %lld vs %lld\n", (long long)cpu.vocabSize(),
                  (long long)gpu.vocabSize());
      return 1;
    }
    const int64_t vocab = cpu.vocabSize();
    int failures = 0;
    std::vector<std::vector<float>> first(shapes.size()); // each shape's first GPU logits
    for (size_t k = 0; k < shapes.size(); ++k) {
      const Shape &s = shapes[k];
      const std::vector<int32_t> ids = randomIds(s, vocab);
      auto t0 = std::chrono::steady_clock::now();
      const std::vector<float> want = cpu.forward(ids.data(), s.batch, s.seq);
      const double cpuMs = msSince(t0);
      t0 = std::chrono::steady_clock::now();
      std::vector<float> got = gpu.forward(ids.data(), s.batch, s.seq);
      const double gpuMs = msSince(t0);
      t0 = std::chrono::steady_clock::now();
      const std::vector<float> again = gpu.forward(ids.data(), s.batch, s.seq);
      const double replayMs = msSince(t0);
      if (want.size() != static_cast<size_t>(s.batch * s.seq * vocab) ||
          got.size() != want.size()) {
        std::printf("FAIL %lldx%lld: %zu cpu and %zu gpu logits, expected %lld\n",
                    (long long)s.batch, (long long)s.seq, want.size(), got.size(),
                    (long long)(s.batch * s.seq * vocab));
        ++failures;
        continue;
      }
      double maxRef = 0, maxErr = 0, sumSq = 0;
      size_t at = 0, nonFinite = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        if (!std::isfinite(got[i]) || !std::isfinite(want[i])) {
          ++nonFinite;
          continue;
        }
        maxRef = std::max(maxRef, std::fabs(double(want[i])));
        const double e = std::fabs(double(got[i]) - double(want[i]));
        sumSq += e * e;
        if (e > maxErr)
          maxErr = e, at = i;
      }
      const double rel = maxRef > 0 ? maxErr / maxRef : maxErr;
      const double rms = std::sqrt(sumSq / double(want.size())) / (maxRef > 0 ? maxRef : 1);
      const bool identical = again == got;
      const bool ok = nonFinite == 0 && maxRef > 0 && rel <= 3e-2 && identical;
      std::printf("%s %lldx%lld: max |cpu| %.4f, max |gpu - cpu| %.5f (row %lld col %lld: cpu "
                  "%.5f gpu %.5f), relative %.3e (bound 3e-2), rms relative %.3e, non-finite "
                  "%zu, second call %s; cpu %.1f ms, gpu %.2f ms, second call %.2f ms\n",
                  ok ? "ok  " : "FAIL", (long long)s.batch, (long long)s.seq, maxRef, maxErr,
                  (long long)(at / vocab), (long long)(at % vocab), want[at], got[at], rel, rms,
                  nonFinite, identical ? "identical" : "DIFFERS", cpuMs, gpuMs, replayMs);
      std::fflush(stdout);
      if (!ok)
        ++failures;
      first[k] = std::move(got);
    }
    std::printf("graphs captured: %zu\n", gpu.graphCount());
    // Errors name the artifact: an out-of-vocabulary id, too large or negative.
    {
      const Shape &s = shapes.front();
      for (int32_t badId : {static_cast<int32_t>(vocab), int32_t(-1)}) {
        std::vector<int32_t> bad = randomIds(s, vocab);
        bad[bad.size() / 2] = badId;
        try {
          gpu.forward(bad.data(), s.batch, s.seq);
          std::printf("FAIL: the out-of-vocabulary id %d was accepted\n", badId);
          ++failures;
        } catch (const tnlm::Error &e) {
          std::printf("bad id rejected: %s\n", e.what());
        }
      }
    }
    // Every shape again, in order: each call follows a call of another shape (the first one
    // the last shape's, e.g. A, B, A) and the rejected calls above, and must give its first
    // logits bit for bit.
    int replayFailures = 0;
    for (size_t k = 0; k < shapes.size(); ++k) {
      if (first[k].empty())
        continue;
      const Shape &s = shapes[k];
      const std::vector<int32_t> ids = randomIds(s, vocab);
      if (gpu.forward(ids.data(), s.batch, s.seq) != first[k]) {
        std::printf("FAIL %lldx%lld: called again after %lldx%lld, the logits differ from its "
                    "first call\n",
                    (long long)s.batch, (long long)s.seq,
                    (long long)shapes[k ? k - 1 : shapes.size() - 1].batch,
                    (long long)shapes[k ? k - 1 : shapes.size() - 1].seq);
        ++replayFailures;
      }
    }
    failures += replayFailures;
    std::printf("every shape called again after another: %s\n",
                replayFailures ? "DIFFERS (see above)" : "bit-identical to its first call");
    // Without graphs (each step launched, as tnlm-run --sync-steps does) and with a wait after
    // every step: the same kernels in the same order, so the first shape's logits bit for bit.
    {
      const Shape &s = shapes.front();
      const std::vector<int32_t> ids = randomIds(s, vocab);
      gpu.setUseGraphs(false);
      const bool eagerSame = gpu.forward(ids.data(), s.batch, s.seq) == first.front();
      gpu.setSynchronizeSteps(true);
      const bool syncSame = gpu.forward(ids.data(), s.batch, s.seq) == first.front();
      gpu.setSynchronizeSteps(false);
      gpu.setUseGraphs(true);
      std::printf("%s %lldx%lld without graphs: %s; synchronizing every step: %s\n",
                  eagerSame && syncSame ? "ok  " : "FAIL", (long long)s.batch, (long long)s.seq,
                  eagerSame ? "identical" : "DIFFERS", syncSame ? "identical" : "DIFFERS");
      if (!eagerSame || !syncSame)
        ++failures;
    }
    // A replay with other ids: the graph reads the ids from the device buffer each call
    // (nothing of the first call's ids is baked in), so it must match the CPU on the new ids.
    {
      const Shape &s = shapes.front();
      std::vector<int32_t> ids = randomIds(s, vocab);
      for (int32_t &id : ids)
        id = static_cast<int32_t>((id * 7 + 3) % vocab);
      const std::vector<float> want = cpu.forward(ids.data(), s.batch, s.seq);
      const std::vector<float> got = gpu.forward(ids.data(), s.batch, s.seq);
      double maxRef = 0, maxErr = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        maxRef = std::max(maxRef, std::fabs(double(want[i])));
        const double e = std::fabs(double(got[i]) - double(want[i]));
        maxErr = std::isfinite(e) ? std::max(maxErr, e) : 1e30;
      }
      const bool ok = maxRef > 0 && maxErr <= 3e-2 * maxRef && got != first.front();
      std::printf("%s %lldx%lld replayed with other ids: relative %.3e (bound 3e-2)\n",
                  ok ? "ok  " : "FAIL", (long long)s.batch, (long long)s.seq,
                  maxRef > 0 ? maxErr / maxRef : maxErr);
      if (!ok)
        ++failures;
    }
    if (failures)
      std::printf("FAILED (%d failed checks)\n", failures);
    else
      std::printf("PASSED\n");
    return failures ? 1 : 0;
  } catch (const std::exception &e) {
    std::printf("FAIL: %s\n", e.what());
    return 1;
  }
}
