//===- ExecutorGpuTest.cpp - CudaExecutor against CpuExecutor, same weights -----===//
//
//   tnlm-gpu-executor <cuda artifact> <cpu artifact> [batch seq]
// Both artifacts are compiled by tnlmc from one model config (test/unit/cuda/
// cuda-exec-model.json: d 256, H 2 so head dim 128, no LRPE, L 2, F 512, V 300) with the same
// --batch/--seq; ctest makes them first (a fixture) where the compiler is built. The same
// seeded random weights and ids go through both executors and the logits are compared.
//
// Tolerance: the GPU path keeps activations, weights and the logits in bf16 (8 bits of
// significand: relative rounding 2^-9, 2^-8 per op at worst), with fp32 accumulation in the
// GEMMs and the attention. About 25 rounded ops lie between the ids and a logit (per layer:
// norm, GEMM out, silu, attention out, gate/norm, projection, residual add + norm, two GLU
// GEMMs, product, down projection, add + norm; then the head), and the errors are mostly
// independent, so the expected error is a few 2^-8 of the activations' scale; the bound is
// max |gpu - cpu| ≤ 3e-2 · max |cpu| (about 8 · 2^-8). Exit 0 pass, 1 fail, 77 no device.
//
//===----------------------------------------------------------------------===//
#include "runtime/CpuExecutor.h"
#include "runtime/Error.h"
#include "runtime/cuda/CudaApi.h"
#include "runtime/cuda/CudaExecutor.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

int main(int argc, char **argv) {
  if (argc != 3 && argc != 5) {
    std::fprintf(stderr, "usage: %s <cuda artifact> <cpu artifact> [batch seq]\n", argv[0]);
    return 2;
  }
  std::string why;
  if (!tnlm::cuda::deviceAvailable(&why)) {
    std::printf("SKIPPED: no CUDA device (%s)\n", why.c_str());
    return 77;
  }
  try {
    tnlm::Artifact gpuArt = tnlm::Artifact::load(argv[1], tnlm::Target::CudaSm90a);
    tnlm::Artifact cpuArt = tnlm::Artifact::load(argv[2], tnlm::Target::Cpu);
    const int64_t batch = argc == 5 ? std::atoll(argv[3]) : gpuArt.maxBatch();
    const int64_t seq = argc == 5 ? std::atoll(argv[4]) : gpuArt.maxSeq();
    tnlm::ParamValues weights = tnlm::randomWeights(cpuArt, 1234);
    tnlm::ParamValues same = tnlm::randomWeights(gpuArt, 1234);
    if (weights != same) {
      std::printf("FAIL: the two artifacts' random weights differ (parameter tables?)\n");
      return 1;
    }
    tnlm::CpuExecutor cpu(cpuArt, weights);
    tnlm::cuda::CudaExecutor gpu(gpuArt, weights);
    std::printf("device: %s, %d SMs\n", gpu.context().deviceName().c_str(),
                gpu.context().multiprocessors());
    if (cpu.vocabSize() != gpu.vocabSize()) {
      std::printf("FAIL: vocab %lld vs %lld\n", (long long)cpu.vocabSize(),
                  (long long)gpu.vocabSize());
      return 1;
    }
    std::vector<int32_t> ids(batch * seq);
    uint64_t x = 88172645463325252ull;
    for (auto &id : ids) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      id = static_cast<int32_t>(x % static_cast<uint64_t>(cpu.vocabSize()));
    }
    int failures = 0;
    // Twice on the GPU: the second call must reuse everything and give the same logits.
    std::vector<float> want = cpu.forward(ids.data(), batch, seq);
    std::vector<float> got = gpu.forward(ids.data(), batch, seq);
    std::vector<float> again = gpu.forward(ids.data(), batch, seq);
    double maxRef = 0, maxErr = 0, sumSq = 0;
    size_t at = 0, nonFinite = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      maxRef = std::max(maxRef, std::fabs(double(want[i])));
      if (!std::isfinite(got[i]))
        ++nonFinite;
      double e = std::fabs(double(got[i]) - double(want[i]));
      sumSq += e * e;
      if (e > maxErr)
        maxErr = e, at = i;
    }
    const double rel = maxRef > 0 ? maxErr / maxRef : maxErr;
    const double rms = std::sqrt(sumSq / double(want.size())) / (maxRef > 0 ? maxRef : 1);
    std::printf("logits [%lld x %lld], batch %lld seq %lld: max |cpu| %.4f, max |gpu - cpu| "
                "%.5f (at %zu: cpu %.5f gpu %.5f), relative to max %.3e, rms relative %.3e\n",
                (long long)(batch * seq), (long long)cpu.vocabSize(), (long long)batch,
                (long long)seq, maxRef, maxErr, at, want[at], got[at], rel, rms);
    if (nonFinite || !(rel <= 3e-2)) {
      std::printf("FAIL: %zu non-finite logits, relative error %.3e > 3e-2\n", nonFinite, rel);
      ++failures;
    }
    if (again != got) {
      std::printf("FAIL: the second GPU forward differs from the first\n");
      ++failures;
    }
    // A shorter call on the same executor (fewer rows, another Lightning plan).
    const int64_t seq2 = seq > 65 ? 65 : seq;
    std::vector<float> want2 = cpu.forward(ids.data(), 1, seq2);
    std::vector<float> got2 = gpu.forward(ids.data(), 1, seq2);
    double maxRef2 = 0, maxErr2 = 0;
    for (size_t i = 0; i < want2.size(); ++i) {
      maxRef2 = std::max(maxRef2, std::fabs(double(want2[i])));
      maxErr2 = std::max(maxErr2, std::fabs(double(got2[i]) - double(want2[i])));
    }
    std::printf("batch 1 seq %lld: relative to max %.3e\n", (long long)seq2, maxErr2 / maxRef2);
    if (!(maxErr2 <= 3e-2 * maxRef2)) {
      std::printf("FAIL: batch 1 relative error above 3e-2\n");
      ++failures;
    }
    // Errors name the artifact: a bad id.
    try {
      std::vector<int32_t> bad(ids.begin(), ids.begin() + seq);
      bad[3] = static_cast<int32_t>(gpu.vocabSize());
      gpu.forward(bad.data(), 1, seq);
      std::printf("FAIL: an out-of-vocabulary id was accepted\n");
      ++failures;
    } catch (const tnlm::Error &e) {
      std::printf("bad id rejected: %s\n", e.what());
    }
    std::printf(failures ? "FAILED\n" : "PASSED\n");
    return failures ? 1 : 0;
  } catch (const std::exception &e) {
    std::printf("FAIL: %s\n", e.what());
    return 1;
  }
}
