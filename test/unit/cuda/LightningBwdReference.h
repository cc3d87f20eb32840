//===- LightningBwdReference.h - shared pieces of the GPU Lightning backward tests -===//
//
// The inputs (seeded uniform bf16, uploaded) and the CPU reference, cpu::lightningAttentionGrad
// on the f32 values of bf16 q, k, v, dO ([B·N, H·D] each, dense), of LightningBwdGpuTest.cpp,
// LightningBwdFastGpuTest.cpp and LightningFusedGradGpuTest.cpp.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TEST_UNIT_CUDA_LIGHTNINGBWDREFERENCE_H
#define TNLM_TEST_UNIT_CUDA_LIGHTNINGBWDREFERENCE_H

#include "runtime/DType.h"
#include "runtime/cpu/Backward.h"
#include "runtime/cuda/CudaContext.h"
#include "test/unit/cuda/GpuTest.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <random>
#include <vector>

namespace tnlm::cuda::test {

/// n values uniform in [-scale, scale) (std::mt19937 of `seed`), rounded to bf16.
inline std::vector<uint16_t> randomBf16(size_t n, unsigned seed, float scale) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<uint16_t> out(n);
  for (uint16_t &x : out)
    x = f32ToBf16(dist(rng));
  return out;
}

/// A device copy of `bytes` at src (at least 8 bytes allocated).
inline DeviceBuffer upload(const void *src, size_t bytes, const char *what) {
  DeviceBuffer b(std::max<size_t>(bytes, 8), what);
  gpu().copyToDevice(b.get(), src, bytes, what);
  return b;
}

inline std::vector<float> bf16Floats(const std::vector<uint16_t> &x) {
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); ++i)
    out[i] = bf16ToF32(x[i]);
  return out;
}

/// dq, dk, dv of the block-`block` CPU backward (head dim D for q, k and v alike).
inline std::array<std::vector<float>, 3>
cpuLightningGrad(const std::vector<uint16_t> &q, const std::vector<uint16_t> &k,
                 const std::vector<uint16_t> &v, const std::vector<uint16_t> &dO, int64_t B,
                 int64_t N, int64_t H, int64_t D, const float *slopes, int64_t block) {
  const int64_t ld = H * D;
  const size_t n = q.size();
  const std::vector<float> qf = bf16Floats(q), kf = bf16Floats(k), vf = bf16Floats(v),
                           of = bf16Floats(dO);
  std::array<std::vector<float>, 3> want = {std::vector<float>(n), std::vector<float>(n),
                                            std::vector<float>(n)};
  cpu::lightningAttentionGrad(qf.data(), kf.data(), vf.data(), B, N, H, D, D, ld, ld, ld, slopes,
                              of.data(), ld, want[0].data(), ld, want[1].data(), ld, want[2].data(),
                              ld, block);
  return want;
}

} // namespace tnlm::cuda::test

#endif // TNLM_TEST_UNIT_CUDA_LIGHTNINGBWDREFERENCE_H
