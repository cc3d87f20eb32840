//===- LightningBwdGpuTest.cpp - the first GPU Lightning backward vs the CPU -------===//
//
// codegen/cuda/LightningAttentionBwdSimple.cuh (correct before fast) against
// cpu::lightningAttentionGrad (block 64) on the same bf16-rounded q, k, v, dO: B = 2, H = 3
// (not a power of two), D = 128, N = 1, 63, 64, 65, 300 (one block, a partial one, exactly
// one, one and a row, several with a partial last one). Per output tensor and (batch, head):
// |gpu − cpu| <= rel·|cpu| + 1e-4·max|cpu|, rel = 2^-8 for bf16 outputs (one rounding), 0 for
// f32 ones; 1e-4 of the slice's largest entry covers the different order of the fp32 sums (the
// GPU's FMA loops vs OpenBLAS: ~1e-6 relative to the sums of |terms|, which stay within a few
// times the largest output here), while a wrong factor or a missing term is O(1) of it.
//
//===----------------------------------------------------------------------===//
#include "runtime/DType.h"
#include "runtime/cpu/Backward.h"
#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/Nvrtc.h"
#include "test/unit/cuda/GpuTest.h"
#include "test/unit/cuda/LightningBwdReference.h"
#include "test/unit/cuda/LightningBwdWrappers.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace tnlm::cuda {
namespace {

using test::gpu;

const char *const kBwdSimpleCuh =
#include "Lightning_LightningAttentionBwdSimple_cuh.inc"
    ;

constexpr int kD = 128, kC = 64, kH = 3, kB = 2;
constexpr unsigned kSmem = (4 * kC * kD + kD * kD + kC * kC + kC + 1) * 4;

Module &module() {
  static std::unique_ptr<Module> m;
  if (!m) {
    NvrtcOptions options;
    options.arch = test::deviceArch();
    options.headers = {{"tnlm/LightningAttentionBwdSimple.cuh", kBwdSimpleCuh}};
    m = std::make_unique<Module>(
        gpu(), compileCuda(test::lightningBwdSimpleWrappers(), "la_bwd.cu", options).image,
        "la_bwd");
  }
  return *m;
}

template <typename T> void runCase(int N) {
  const int64_t rows = int64_t(kB) * N, ld = kH * kD;
  const size_t n = size_t(rows * ld);
  const std::vector<uint16_t> q = test::randomBf16(n, 1, 0.5f), k = test::randomBf16(n, 2, 0.5f),
                              v = test::randomBf16(n, 3, 1.0f), o = test::randomBf16(n, 4, 1.0f);
  const float slopes[kH] = {0.5f, 0.0625f, 0.0078125f};
  auto up = [&](const void *src, size_t bytes) {
    return test::upload(src, bytes, "la_bwd operand");
  };
  DeviceBuffer dQ = up(q.data(), n * 2), dK = up(k.data(), n * 2), dV = up(v.data(), n * 2),
               dO = up(o.data(), n * 2), dS = up(slopes, sizeof slopes);
  DeviceBuffer gq(n * sizeof(T), "dq"), gk(n * sizeof(T), "dk"), gv(n * sizeof(T), "dv");
  const std::string kernel = std::string("la_bwd_simple_") + (sizeof(T) == 2 ? "bf16" : "float");
  LaunchConfig c{{unsigned(kB * kH)}, {256}, kSmem};
  const long long l = ld;
  gpu().launchWith(module().kernel(kernel), c, kernel, dQ.get(), l, dK.get(), l, dV.get(), l,
                   dO.get(), l, dS.get(), gq.get(), l, gk.get(), l, gv.get(), l, N, kH);
  auto down = [&](const DeviceBuffer &b) {
    std::vector<T> raw(n);
    gpu().copyToHost(raw.data(), b.get(), n * sizeof(T), "la_bwd result");
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) {
      if constexpr (sizeof(T) == 2)
        out[i] = bf16ToF32(raw[i]);
      else
        out[i] = raw[i];
    }
    return out;
  };
  const std::vector<float> got[3] = {down(gq), down(gk), down(gv)};

  const std::array<std::vector<float>, 3> want =
      test::cpuLightningGrad(q, k, v, o, kB, N, kH, kD, slopes, kC);
  const double rel = sizeof(T) == 2 ? 1.0 / 256 : 0.0;
  const char *names[3] = {"dq", "dk", "dv"};
  for (int t = 0; t < 3; ++t)
    for (int b = 0; b < kB; ++b)
      for (int h = 0; h < kH; ++h) {
        double mx = 0, worst = 0;
        for (int64_t r = 0; r < N; ++r)
          for (int c = 0; c < kD; ++c)
            mx = std::max(mx, double(std::fabs(want[t][(b * N + r) * ld + h * kD + c])));
        int64_t bad = 0;
        for (int64_t r = 0; r < N; ++r)
          for (int c = 0; c < kD; ++c) {
            const size_t i = size_t((b * N + r) * ld + h * kD + c);
            const double err = std::fabs(double(got[t][i]) - want[t][i]);
            const double bound = rel * std::fabs(want[t][i]) + 1e-4 * mx;
            if (!(err <= bound) && bad++ < 3)
              ADD_FAILURE() << kernel << " N=" << N << " " << names[t] << " b" << b << " h" << h
                            << " (" << r << ", " << c << "): gpu " << got[t][i] << ", cpu "
                            << want[t][i] << " (bound " << bound << ")";
            if (bound > 0)
              worst = std::max(worst, err / bound);
          }
        EXPECT_EQ(bad, 0) << kernel << " N=" << N << " " << names[t] << " b" << b << " h" << h;
        if (b == 0 && h == kH - 1)
          std::printf("  %s N=%d %s: max |diff|/bound %.3f (max |cpu| %.3g)\n", kernel.c_str(), N,
                      names[t], worst, mx);
      }
}

TEST(LightningBwdSimple, MatchesCpu) {
  for (int N : {1, 63, 64, 65, 300}) {
    runCase<uint16_t>(N);
    runCase<float>(N);
  }
}

} // namespace
} // namespace tnlm::cuda
