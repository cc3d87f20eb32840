//===- LightningFusedGradGpuTest.cpp - the fused Lightning backward on the GPU ------===//
//
// The backward of the fused op (tnlm.lightning_attention: φ, LRPE, the attention, the gate and
// the cross-head norm) on the GPU, composed as the train step will run it
// (codegen/cuda/LightningAttentionGradParts.cuh around LightningAttentionBwdSimple.cuh's
// forward and backward cores), against cpu::fusedLightningAttentionGrad (block 64) on the same
// bf16-rounded qkvu and dy: B = 2, H = 3 (not a power of two), dh = 128, N = 1, 65, 130, with
// and without SiLU and LRPE (dk = 256: the core's blocks are 16 rows there, 64 otherwise; the
// blocking changes only the order of the sums).
//
// Bound, per output part (dq, dk, dv, du) and (batch, head): |gpu − cpu| <= 2^-8·|cpu| +
// 2^-6·max|cpu|. The GPU keeps q', k' and dO in bf16 (as the train step's operands: one
// rounding, 2^-9 relative, each) where the CPU keeps them in f32; every output is a sum of
// products of these, so its error stays within a few 2^-9 of the sum of the terms' sizes, which
// for these inputs is within a few times the slice's largest output (at N = 1, 2^-4: below).
// dθ: 2^-6·max|dθ| (exactly 0 at N = 1). A wrong factor, sign or missing term is O(1) of the
// largest output.
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
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
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
const char *const kPartsCuh =
#include "Lightning_LightningAttentionGradParts_cuh.inc"
    ;
const char *const kMmaSyncCuh =
#include "Lightning_MmaSync_cuh.inc"
    ;

constexpr int kH = 3, kB = 2, kDh = 128, kD = kH * kDh;
constexpr float kEps = 1e-6f;

unsigned smemFor(int dk) {
  const int c = test::fusedGradBlock(dk);
  return unsigned((2 * c * dk + 2 * c * kDh + dk * kDh + c * c + c + 1) * 4);
}

Module &module() {
  static std::unique_ptr<Module> m;
  if (!m) {
    NvrtcOptions options;
    options.arch = test::deviceArch();
    options.headers = {{"tnlm/LightningAttentionBwdSimple.cuh", kBwdSimpleCuh},
                       {"tnlm/LightningAttentionGradParts.cuh", kPartsCuh},
                       {"tnlm/MmaSync.cuh", kMmaSyncCuh}};
    m = std::make_unique<Module>(
        gpu(), compileCuda(test::lightningFusedGradWrappers(), "la_fused_bwd.cu", options).image,
        "la_fused_bwd");
  }
  return *m;
}

void runCase(int N, bool silu, bool lrpe) {
  const int64_t rows = int64_t(kB) * N, ld = 4 * kD;
  const int dk = lrpe ? 2 * kDh : kDh;
  const std::string name = "N=" + std::to_string(N) + (silu ? " silu" : "") + (lrpe ? " lrpe" : "");
  // qkvu: q, k at 0.5, v, u at 1; dy at 1; θ in (0, 1) (positions up to 130: angles to 130 rad).
  std::vector<uint16_t> qkvu(size_t(rows * ld));
  {
    const std::vector<uint16_t> a = test::randomBf16(qkvu.size(), 11, 0.5f),
                                b = test::randomBf16(qkvu.size(), 12, 1.0f);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < ld; ++c)
        qkvu[size_t(r * ld + c)] = c < 2 * kD ? a[size_t(r * ld + c)] : b[size_t(r * ld + c)];
  }
  const std::vector<uint16_t> dy = test::randomBf16(size_t(rows * kD), 13, 1.0f);
  std::vector<float> theta(kD);
  {
    std::mt19937 rng(14);
    std::uniform_real_distribution<float> dist(0.0f, 1.0f);
    for (float &t : theta)
      t = dist(rng);
  }
  const float slopes[kH] = {0.5f, 0.0625f, 0.0078125f};

  // The CPU reference on the same (bf16-rounded) values.
  std::vector<float> qkvuF(qkvu.size()), dyF(dy.size());
  for (size_t i = 0; i < qkvu.size(); ++i)
    qkvuF[i] = bf16ToF32(qkvu[i]);
  for (size_t i = 0; i < dy.size(); ++i)
    dyF[i] = bf16ToF32(dy[i]);
  std::vector<float> workspace(size_t(rows * cpu::fusedAttentionGradWorkspaceCols(kH, kDh, lrpe)));
  std::vector<float> want(size_t(rows * ld), 0.0f), wantTheta(kD, 0.0f);
  cpu::fusedLightningAttentionGrad(
      qkvuF.data(), ld, kB, N, kH, kDh, silu, lrpe ? theta.data() : nullptr, 0, slopes, 64, kEps,
      dyF.data(), kD, workspace.data(), want.data(), ld, lrpe ? wantTheta.data() : nullptr);

  // The GPU composition.
  DeviceBuffer gQkvu = test::upload(qkvu.data(), qkvu.size() * 2, "qkvu"),
               gDy = test::upload(dy.data(), dy.size() * 2, "dy"),
               gTheta = test::upload(theta.data(), theta.size() * 4, "theta"),
               gSlopes = test::upload(slopes, sizeof slopes, "slopes");
  const std::vector<float> zeros(size_t(rows * ld), 0.0f);
  DeviceBuffer gOut = test::upload(zeros.data(), zeros.size() * 4, "dqkvu"),
               gDtheta = test::upload(zeros.data(), kD * 4, "dtheta");
  const long long ldp = int64_t(kH) * dk;
  DeviceBuffer gQp(size_t(rows * ldp) * 2, "q'"), gKp(size_t(rows * ldp) * 2, "k'");
  DeviceBuffer gO(size_t(rows * kD) * 4, "O"), gDO(size_t(rows * kD) * 2, "dO");
  DeviceBuffer gDqk(size_t(rows * 2 * ldp) * 4, "dq', dk'");
  const int chunks = (N + 15) / 16;
  DeviceBuffer gPartial(size_t(chunks) * kD * 8, "dtheta partials");
  std::vector<float> gotRelTheta(kD, 0.0f);
  const unsigned rowsU = unsigned(rows);
  const LaunchConfig perRow{{rowsU}, {256}, 0};
  const long long l = ld;
  CUdeviceptr q = gQkvu.get(), k = q + kD * 2, v = q + 2 * kD * 2, u = q + 3 * kD * 2;
  long long ldq = l;
  if (silu || lrpe) {
    const std::string p = "prologue_" + std::to_string(int(silu)) + std::to_string(int(lrpe));
    gpu().launchWith(module().kernel(p), perRow, p, gQkvu.get(), l, gTheta.get(), N, kH, kDh,
                     gQp.get(), gKp.get(), ldp);
    q = gQp.get(), k = gKp.get(), ldq = ldp;
  }
  const std::string d = std::to_string(dk);
  const LaunchConfig perHead{{unsigned(kB * kH)}, {256}, smemFor(dk)};
  const long long ldD = kD;
  gpu().launchWith(module().kernel("fwd_" + d), perHead, "fwd", q, ldq, k, ldq, v, l, gSlopes.get(),
                   gO.get(), ldD, N, kH);
  gpu().launchWith(module().kernel("gate_norm"), perRow, "gate_norm", gO.get(), ldD, gDy.get(), ldD,
                   u, l, gOut.get() + 3 * kD * 4, l, gDO.get(), ldD, kD, kEps);
  CUdeviceptr dq = gOut.get(), dkp = gOut.get() + kD * 4;
  long long lddq = l;
  if (lrpe)
    dq = gDqk.get(), dkp = gDqk.get() + ldp * 4, lddq = 2 * ldp;
  gpu().launchWith(module().kernel("bwd_" + d), perHead, "bwd", q, ldq, k, ldq, v, l, gDO.get(),
                   ldD, gSlopes.get(), dq, lddq, dkp, lddq, gOut.get() + 2 * kD * 4, l, N, kH);
  if (lrpe) {
    const std::string g = "lrpe_grad_" + std::to_string(int(silu));
    const LaunchConfig c{{unsigned(chunks), unsigned((kD + 255) / 256)}, {256}, 0};
    gpu().launchWith(module().kernel(g), c, g, gQkvu.get(), l, gDqk.get(), 2 * ldp, ldp,
                     gTheta.get(), kB, N, kH, kDh, gOut.get(), l, gPartial.get());
    const LaunchConfig s{{unsigned((kD + 255) / 256)}, {256}, 0};
    gpu().launchWith(module().kernel("dtheta_sum"), s, "dtheta_sum", gPartial.get(), chunks, kD,
                     gDtheta.get());
    // dθ again in the relative form (la_dtheta_relative, the train step's), from the same q',
    // k' (per head [cos | sin]), v and dO: the same bound against the CPU's.
    DeviceBuffer gRel = test::upload(zeros.data(), kD * 4, "dtheta (relative)"),
                 gRelPartial(size_t(kB) * kD * 8, "dtheta partials (relative)");
    const LaunchConfig r{
        {unsigned(kB * kH), unsigned(kDh / 16)}, {256}, unsigned(test::kDthetaRelativeSmem)};
    gpu().launchWith(module().kernel("dtheta_relative"), r, "dtheta_relative", gQp.get(), ldp,
                     (long long)(2 * kDh), (long long)kDh, gKp.get(), ldp, (long long)(2 * kDh),
                     (long long)kDh, v, l, gDO.get(), ldD, gSlopes.get(), N, kH, kDh,
                     gRelPartial.get());
    gpu().launchWith(module().kernel("dtheta_sum"), s, "dtheta_sum", gRelPartial.get(), kB, kD,
                     gRel.get());
    gpu().copyToHost(gotRelTheta.data(), gRel.get(), kD * 4, "dtheta (relative)");
  } else if (silu) {
    gpu().launchWith(module().kernel("silu_scale"), perRow, "silu_scale", gQkvu.get(), l,
                     gOut.get(), l, kD);
  }
  std::vector<float> got(size_t(rows * ld)), gotTheta(kD);
  gpu().copyToHost(got.data(), gOut.get(), got.size() * 4, "dqkvu");
  gpu().copyToHost(gotTheta.data(), gDtheta.get(), kD * 4, "dtheta");

  const char *parts[4] = {"dq", "dk", "dv", "du"};
  for (int part = 0; part < 4; ++part)
    for (int b = 0; b < kB; ++b)
      for (int h = 0; h < kH; ++h) {
        auto at = [&](int64_t r, int c) {
          return size_t((b * N + r) * ld + part * kD + h * kDh + c);
        };
        double mx = 0, worst = 0;
        // At N = 1 a head's outputs are one vector times one dot product of 128 terms (dO·v,
        // q'·k'), whose rounded operands can cancel to a few % of it (2.8 % measured): 2^-4.
        const int slack = N == 1 ? -4 : -6;
        for (int64_t r = 0; r < N; ++r)
          for (int c = 0; c < kDh; ++c)
            mx = std::max(mx, double(std::fabs(want[at(r, c)])));
        int64_t bad = 0;
        for (int64_t r = 0; r < N; ++r)
          for (int c = 0; c < kDh; ++c) {
            const double err = std::fabs(double(got[at(r, c)]) - want[at(r, c)]);
            const double bound = std::ldexp(std::fabs(want[at(r, c)]), -8) + std::ldexp(mx, slack);
            if (!(err <= bound) && bad++ < 3)
              ADD_FAILURE() << name << " " << parts[part] << " b" << b << " h" << h << " (" << r
                            << ", " << c << "): gpu " << got[at(r, c)] << ", cpu " << want[at(r, c)]
                            << " (bound " << bound << ")";
            if (bound > 0)
              worst = std::max(worst, err / bound);
          }
        EXPECT_EQ(bad, 0) << name << " " << parts[part] << " b" << b << " h" << h;
        if (b == 0 && h == kH - 1)
          std::printf("  fused grad %-16s %s: max |diff|/bound %.3f (max |cpu| %.3g)\n",
                      name.c_str(), parts[part], worst, mx);
      }
  if (lrpe) {
    double mx = 0, worst = 0, worstRel = 0;
    for (float t : wantTheta)
      mx = std::max(mx, double(std::fabs(t)));
    if (N == 1) { // position 0 only: every term has the factor p = 0
      EXPECT_EQ(mx, 0.0) << name;
      for (int i = 0; i < kD; ++i) {
        EXPECT_EQ(gotTheta[i], 0.0f) << name << " dtheta[" << i << "]";
        EXPECT_EQ(gotRelTheta[i], 0.0f) << name << " dtheta[" << i << "] (relative)";
      }
      return;
    }
    ASSERT_GT(mx, 0.0) << name << ": the CPU's dθ is zero";
    for (int i = 0; i < kD; ++i) {
      const double err = std::fabs(double(gotTheta[i]) - wantTheta[i]), bound = std::ldexp(mx, -6);
      EXPECT_LE(err, bound) << name << " dtheta[" << i << "]: gpu " << gotTheta[i] << ", cpu "
                            << wantTheta[i];
      worst = std::max(worst, err / bound);
      const double rel = std::fabs(double(gotRelTheta[i]) - wantTheta[i]);
      EXPECT_LE(rel, bound) << name << " dtheta[" << i << "] (relative): gpu " << gotRelTheta[i]
                            << ", cpu " << wantTheta[i];
      worstRel = std::max(worstRel, rel / bound);
    }
    std::printf("  fused grad %-16s dθ: max |diff|/bound %.3f, relative form %.3f (max |cpu| "
                "%.3g)\n",
                name.c_str(), worst, worstRel, mx);
  }
}

TEST(LightningFusedGrad, MatchesCpu) {
  for (int N : {1, 65, 130})
    for (int silu = 0; silu < 2; ++silu)
      for (int lrpe = 0; lrpe < 2; ++lrpe)
        runCase(N, silu != 0, lrpe != 0);
}

// la_dtheta_relative and la_dtheta_relative_tc (the LRPE dθ of the train step in the relative
// form: fp32 FMA loops, the reference path's; tensor cores, the fast path's) against
// cpu::lrpeThetaGradRelative (f64 states, block 64) on the same bf16 q', k', v, dO (q', k' at
// 0.5, v, dO at 1): B = 2, H = 3, dh = dv = 128, N = 1, 63, 64, 65, 300, 2048, 4096 (the
// tensor-core kernel also with the sequence in 3 segments: 64-token multiples, the last shorter
// or, at N < 192, fewer segments), in the fast
// path's layout (bf16 planes [q cos, k cos, q sin, k sin, v, dO] of D columns, head stride dh)
// and the reference path's (q', k' per head [cos | sin]): the two must agree bit for bit (the
// same values, only the strides differ). Bound: ‖gpu − cpu‖₂ <= 2^-10·‖cpu‖₂ and elementwise
// 2^-10·max|cpu|. The GPU differs from the CPU only in its fp32 states and sums (2^-24 relative
// per operation, over at most N·C terms per sum: ~2^-12 at 4,096 in the worst case, far less
// typically) and, on tensor cores, in the fp32 operands split as bf16 hi + lo (2^-17 relative
// each); a wrong decay power, weight, sign, state update or stride is O(1).
TEST(LightningDthetaRelative, MatchesTheCpuReference) {
  const float slopes[kH] = {0.5f, 0.0625f, 0.0078125f};
  DeviceBuffer gSlopes = test::upload(slopes, sizeof slopes, "slopes");
  for (int N : {1, 63, 64, 65, 300, 2048, 4096}) {
    const int64_t rows = int64_t(kB) * N, dk = 2 * kDh, ldq = kH * dk;
    const std::vector<uint16_t> q = test::randomBf16(size_t(rows * ldq), 21 + N, 0.5f),
                                k = test::randomBf16(size_t(rows * ldq), 22 + N, 0.5f),
                                v = test::randomBf16(size_t(rows * kD), 23 + N, 1.0f),
                                dO = test::randomBf16(size_t(rows * kD), 24 + N, 1.0f);
    auto floats = [](const std::vector<uint16_t> &x) {
      std::vector<float> y(x.size());
      for (size_t i = 0; i < x.size(); ++i)
        y[i] = bf16ToF32(x[i]);
      return y;
    };
    const std::vector<float> qF = floats(q), kF = floats(k), vF = floats(v), oF = floats(dO);
    std::vector<float> want(kD, 0.0f);
    cpu::lrpeThetaGradRelative(qF.data(), kF.data(), vF.data(), oF.data(), kB, N, kH, kDh, kDh, ldq,
                               ldq, kD, kD, slopes, 64, want.data());
    // The planes: [q c, k c, q s, k s, v, dO] at row stride 6D.
    const int64_t S = 6 * kD;
    std::vector<uint16_t> planes(size_t(rows * S));
    for (int64_t r = 0; r < rows; ++r)
      for (int h = 0; h < kH; ++h)
        for (int c = 0; c < kDh; ++c) {
          uint16_t *p = planes.data() + r * S + h * kDh + c;
          const int64_t x = r * ldq + h * dk + c;
          p[0] = q[size_t(x)], p[2 * kD] = q[size_t(x + kDh)];
          p[kD] = k[size_t(x)], p[3 * kD] = k[size_t(x + kDh)];
          p[4 * kD] = v[size_t(r * kD + h * kDh + c)];
          p[5 * kD] = dO[size_t(r * kD + h * kDh + c)];
        }
    DeviceBuffer gPlanes = test::upload(planes.data(), planes.size() * 2, "planes"),
                 gQ = test::upload(q.data(), q.size() * 2, "q'"),
                 gK = test::upload(k.data(), k.size() * 2, "k'"),
                 gV = test::upload(v.data(), v.size() * 2, "v"),
                 gO = test::upload(dO.data(), dO.size() * 2, "dO");
    const std::vector<float> zeros(kD, 0.0f);
    const LaunchConfig sum{{unsigned((kD + 255) / 256)}, {256}, 0};
    // The tensor-core kernel with the sequence in `segs` segments (as CudaExecutor cuts it): a
    // pass for the segments' own states, then every segment from the states before it.
    auto run = [&](const std::string &kernel, bool planar, int segs) {
      const bool tc = kernel == "dtheta_relative_tc";
      const int segLen = (((N + segs - 1) / segs) + 63) / 64 * 64;
      segs = (N + segLen - 1) / segLen;
      DeviceBuffer gPart(size_t(kB) * segs * kD * 8, "partials"),
          gStates(size_t(segs) * kB * kH * (kDh / 16) * 2 * 128 * 32 * 4, "segment states");
      DeviceBuffer gTheta = test::upload(zeros.data(), kD * 4, "dtheta");
      const CUdeviceptr P = gPlanes.get();
      const long long ldP = S, ldQ = ldq, ldV = kD, dh2 = 2 * kDh, dh1 = kDh, twoD = 2 * kD;
      for (int statesOnly = tc && segs > 1 ? 1 : 0; statesOnly >= 0; --statesOnly) {
        const unsigned gz = unsigned(statesOnly ? segs - 1 : tc ? segs : 1);
        const LaunchConfig r{
            {unsigned(kB * kH), unsigned(kDh / 16), gz},
            {256},
            unsigned(tc ? test::kDthetaRelativeTcSmem : test::kDthetaRelativeSmem)};
        const CUdeviceptr qq = planar ? P : gQ.get(), kk = planar ? P + kD * 2 : gK.get(),
                          vv = planar ? P + 4 * kD * 2 : gV.get(),
                          oo = planar ? P + 5 * kD * 2 : gO.get();
        const long long lq = planar ? ldP : ldQ, lv = planar ? ldP : ldV, head = planar ? dh1 : dh2,
                        sin = planar ? twoD : dh1;
        if (tc)
          gpu().launchWith(module().kernel(kernel), r, kernel, qq, lq, head, sin, kk, lq, head, sin,
                           vv, lv, oo, lv, gSlopes.get(), N, kH, kDh, gPart.get(), gStates.get(),
                           segLen, statesOnly);
        else
          gpu().launchWith(module().kernel(kernel), r, kernel, qq, lq, head, sin, kk, lq, head, sin,
                           vv, lv, oo, lv, gSlopes.get(), N, kH, kDh, gPart.get());
      }
      gpu().launchWith(module().kernel("dtheta_sum"), sum, "dtheta_sum", gPart.get(),
                       tc ? kB * segs : kB, kD, gTheta.get());
      std::vector<float> got(kD);
      gpu().copyToHost(got.data(), gTheta.get(), kD * 4, "dtheta");
      return got;
    };
    double mx = 0, norm = 0;
    for (int i = 0; i < kD; ++i)
      mx = std::max(mx, double(std::fabs(want[i]))), norm += double(want[i]) * want[i];
    for (const auto &[kernel, segs] : std::vector<std::pair<std::string, int>>{
             {"dtheta_relative", 1}, {"dtheta_relative_tc", 1}, {"dtheta_relative_tc", 3}}) {
      const std::vector<float> planar = run(kernel, true, segs), perHead = run(kernel, false, segs);
      double diff = 0, worst = 0;
      for (int i = 0; i < kD; ++i) {
        uint32_t a = 0, b = 0;
        std::memcpy(&a, &planar[i], 4);
        std::memcpy(&b, &perHead[i], 4);
        EXPECT_EQ(a, b) << kernel << " segments " << segs << " N=" << N << " dtheta[" << i
                        << "]: planes " << planar[i] << ", per head " << perHead[i];
        const double e = std::fabs(double(planar[i]) - want[i]);
        diff += e * e;
        worst = std::max(worst, e);
        if (N > 1) {
          EXPECT_LE(e, std::ldexp(mx, -10))
              << kernel << " segments " << segs << " N=" << N << " dtheta[" << i << "]: gpu "
              << planar[i] << ", cpu " << want[i];
        }
      }
      if (N == 1) { // one token: no pair at a distance > 0
        EXPECT_EQ(mx, 0.0);
        EXPECT_EQ(worst, 0.0) << kernel << " segments " << segs;
        continue;
      }
      ASSERT_GT(mx, 0.0) << "N=" << N;
      const double relL2 = std::sqrt(diff / norm);
      EXPECT_LE(relL2, std::ldexp(1.0, -10)) << kernel << " segments " << segs << " N=" << N;
      std::printf("  dθ %-18s segments %d N=%-5d rel L2 %.3g, max |diff| / max|cpu| %.3g\n",
                  kernel.c_str(), segs, N, relL2, worst / mx);
    }
  }
}

} // namespace
} // namespace tnlm::cuda
