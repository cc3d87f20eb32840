//===- LightningBwdFastGpuTest.cpp - the Lightning backward as three forward passes -===//
//
// The backward of o_i = Σ_{j<=i} λ^(i−j) (q_i·k_j) v_j is three passes of the Hopper forward
// kernel (LightningAttentionFwdSm90.cuh, the kernels tnlmc emits), one in order and two over
// the reversed sequence, which is the same kernel given the tensors' last rows and negative
// token strides:
//   dq = fwd(q := dO, k := v, v := k):   dq_i = Σ_{j<=i} λ^(i−j) (dO_i·v_j) k_j
//   dk = rev(q := v,  k := dO, v := q):  dk_j = Σ_{i>=j} λ^(i−j) (v_j·dO_i) q_i
//   dv = rev(q := k,  k := q,  v := dO): dv_j = Σ_{i>=j} λ^(i−j) (k_j·q_i) dO_i
// each with the default segment plan (the state pass and the scan when it has pieces), checked
// against cpu::lightningAttentionGrad (block 64) on the same bf16 q, k, v, dO: B = 2, H = 3,
// D = 128, N = 1, 63, 64, 65, 300, 2048, 32768, and N = 4097 with forced segments (5 segments of 2
// pieces: the reversed pass's segments start from the states of the pieces after them).
// Bound (LightningGpuTest.cpp's analysis applies pass by pass: P, the decayed keys and the
// state copy rounded to bf16 once each, fp32 sums, the output rounded once): elementwise
// |gpu − cpu| <= 2^-5·scale_r, scale_r = max(max_j |cpu_rj|, the RMS of the slice), and per
// (tensor, b, h) ‖gpu − cpu‖₂ <= 2^-7·‖cpu‖₂. A wrong direction, decay power, stride or
// segment state is O(1).
//
//===----------------------------------------------------------------------===//
#include "codegen/cuda/LightningFwdPlan.h"
#include "runtime/DType.h"
#include "runtime/cpu/Backward.h"
#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/Nvrtc.h"
#include "test/unit/cuda/GpuTest.h"
#include "test/unit/cuda/LightningBwdReference.h"

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
using Args = la::LightningFwdArgsT<uint16_t>;

const char *const kSm90Cuh =
#include "Lightning_LightningAttentionFwdSm90_cuh.inc"
    ;
const char *const kFwdCuh =
#include "Lightning_LightningAttentionFwd_cuh.inc"
    ;
const char *const kPlanH =
#include "Lightning_LightningFwdPlan_h.inc"
    ;
const char *const kMmaSyncCuh =
#include "Lightning_MmaSync_cuh.inc"
    ;
const char *const kStdint = "#pragma once\n"
                            "typedef signed char int8_t;\ntypedef short int16_t;\n"
                            "typedef int int32_t;\ntypedef long long int64_t;\n"
                            "typedef unsigned char uint8_t;\ntypedef unsigned short uint16_t;\n"
                            "typedef unsigned int uint32_t;\n"
                            "typedef unsigned long long uint64_t;\n";

constexpr int kD = 128, kC = 64, kH = 3, kB = 2, kThreads = 256;
constexpr int kTile = kC * kD * 2;
constexpr int kSmemMain = 3 * 4 * kTile + kD * kD * 2 + ((kC + 1) * 4 + 15) / 16 * 16 + 1024;
constexpr int kSmemState = 4 * kTile * 2 + 1024;
const char *const kStateExpr = "&tnlm::la::lightning_fwd_sm90_state_kernel<Cfg>";
const char *const kScanExpr = "&tnlm::la::lightning_fwd_scan_kernel<128, 128>";
const char *const kMainExpr = "&tnlm::la::lightning_fwd_sm90_main_kernel<Cfg>";

struct Kernels {
  std::unique_ptr<Module> module;
  Kernel *state = nullptr, *scan = nullptr, *main = nullptr;
};

Kernels &kernels() {
  static Kernels k;
  if (!k.module) {
    NvrtcOptions options;
    options.arch = test::deviceArch();
    options.headers = {{"tnlm/LightningAttentionFwdSm90.cuh", kSm90Cuh},
                       {"LightningAttentionFwd.cuh", kFwdCuh},
                       {"LightningFwdPlan.h", kPlanH},
                       {"MmaSync.cuh", kMmaSyncCuh},
                       {"stdint.h", kStdint}};
    options.nameExpressions = {kStateExpr, kScanExpr, kMainExpr};
    const std::string src = "#include \"tnlm/LightningAttentionFwdSm90.cuh\"\n"
                            "using Cfg = tnlm::la::LightningFwdSm90Config<128, 128>;\n"
                            "static_assert(Cfg::SMEM_MAIN == " +
                            std::to_string(kSmemMain) +
                            " && Cfg::SMEM_STATE == " + std::to_string(kSmemState) +
                            ", \"shared memory\");\n";
    CompiledKernels out = compileCuda(src, "la_bwd_fast.cu", options);
    k.module = std::make_unique<Module>(gpu(), out.image, "la_bwd_fast");
    k.state = &k.module->kernel(out.loweredNames.at(kStateExpr));
    k.scan = &k.module->kernel(out.loweredNames.at(kScanExpr));
    k.main = &k.module->kernel(out.loweredNames.at(kMainExpr));
  }
  return k;
}

// One forward pass o = pass(q, k, v) on [B·N, H·D] bf16 tensors, or (reversed) over the
// reversed sequence: the same kernel on each tensor's row N − 1 with a negative token stride.
// The segment plan as CudaExecutor::runLightning makes it (or forced), its workspace `ws`.
// With `oscale`, the stores multiply by SiLU'(oscale) ([B·N, H·D] at row stride scaleLd), as the
// executor runs the plain layer's dq and dk passes.
// With `reuseTransposed`, no state pass and scan: the main pass reads the piece states the pass
// before left in `ws` transposed (LightningFwdArgs::state_t; that pass's K and V are this one's
// V and K), as the executor runs the plain layer's dv pass after its dk pass.
void pass(CUdeviceptr q, CUdeviceptr k, CUdeviceptr v, CUdeviceptr o, CUdeviceptr slopes, int N,
          bool reversed, int forceSegs, int forcePieces, DeviceBuffer &ws, CUdeviceptr oscale = 0,
          long long scaleLd = 0, bool reuseTransposed = false) {
  const long long ld = kH * kD;
  const la::LightningFwdPlan plan = la::plan_lightning_fwd(
      kB, kH, N, kD, kD, kC, gpu().multiprocessors(), forceSegs, forcePieces);
  if (plan.workspace_bytes > ws.size())
    ws = DeviceBuffer(plan.workspace_bytes, "piece states");
  const CUdeviceptr last = reversed ? CUdeviceptr((N - 1) * ld * 2) : 0;
  Args a{};
  a.q = reinterpret_cast<const uint16_t *>(q + last);
  a.k = reinterpret_cast<const uint16_t *>(k + last);
  a.v = reinterpret_cast<const uint16_t *>(v + last);
  a.o = reinterpret_cast<uint16_t *>(o + last);
  a.slopes = reinterpret_cast<const float *>(slopes);
  a.piece_states = plan.pieces_per_bh > 0 ? reinterpret_cast<float *>(ws.get()) : nullptr;
  a.B = kB, a.N = N, a.H = kH;
  a.in_sn = reversed ? -ld : ld, a.in_sb = int64_t(N) * ld, a.in_sh = kD;
  a.out_sn = a.in_sn, a.out_sb = a.in_sb, a.out_sh = kD;
  a.seg_len = plan.seg_len, a.num_segs = plan.num_segs, a.piece_len = plan.piece_len;
  a.pieces_per_bh = plan.pieces_per_bh;
  if (oscale) {
    const CUdeviceptr lastScale = reversed ? CUdeviceptr((N - 1) * scaleLd * 2) : 0;
    a.oscale = reinterpret_cast<const uint16_t *>(oscale + lastScale);
    a.os_sn = reversed ? -scaleLd : scaleLd, a.os_sb = int64_t(N) * scaleLd, a.os_sh = kD;
  }
  a.state_t = reuseTransposed ? 1 : 0;
  Kernels &ks = kernels();
  const unsigned bh = unsigned(kB * kH);
  if (plan.pieces_per_bh > 0 && !reuseTransposed) {
    LaunchConfig state;
    state.grid.x = bh * unsigned(plan.pieces_per_bh);
    state.block.x = kThreads;
    state.sharedBytes = kSmemState;
    gpu().launchWith(*ks.state, state, "backward state pass", a);
    LaunchConfig scan;
    scan.grid.x = kD * kD / 1024;
    scan.grid.y = bh;
    scan.block.x = 256;
    gpu().launchWith(*ks.scan, scan, "backward scan", a);
  }
  LaunchConfig c;
  c.grid.x = bh * unsigned(plan.num_segs);
  c.block.x = kThreads;
  c.sharedBytes = kSmemMain;
  gpu().launchWith(*ks.main, c, "backward main pass", a);
}

// reuseDv: the dv pass reads the dk pass's states (state_t); reuseDq: the dq pass reads those of
// a forward pass fwd(q, k, v) run just before it (as the executor keeps the train forward's).
void runCase(int N, int forceSegs = 0, int forcePieces = 0, bool reuseDv = false,
             bool reuseDq = false) {
  const int64_t rows = int64_t(kB) * N, ld = kH * kD;
  const size_t n = size_t(rows * ld);
  const std::vector<uint16_t> q = test::randomBf16(n, 1, 0.5f), k = test::randomBf16(n, 2, 0.5f),
                              v = test::randomBf16(n, 3, 1.0f), o = test::randomBf16(n, 4, 1.0f);
  const float slopes[kH] = {0.5f, 0.0625f, 0.0078125f};
  auto up = [&](const void *src, size_t bytes) { return test::upload(src, bytes, "operand"); };
  DeviceBuffer dQ = up(q.data(), n * 2), dK = up(k.data(), n * 2), dV = up(v.data(), n * 2),
               dO = up(o.data(), n * 2), dS = up(slopes, sizeof slopes);
  DeviceBuffer gq(n * 2, "dq"), gk(n * 2, "dk"), gv(n * 2, "dv");
  for (DeviceBuffer *b : {&gq, &gk, &gv})
    gpu().fillBytes(b->get(), 0xff, n * 2, "sentinel");
  DeviceBuffer ws;
  DeviceBuffer fwdOut(reuseDq ? n * 2 : 16, "forward o"); // (kept until the end: async launches)
  if (reuseDq) { // the forward (its output unused), then dq from its states
    pass(dQ.get(), dK.get(), dV.get(), fwdOut.get(), dS.get(), N, false, forceSegs, forcePieces,
         ws);
    pass(dO.get(), dV.get(), dK.get(), gq.get(), dS.get(), N, false, forceSegs, forcePieces, ws, 0,
         0, true);
  } else {
    pass(dO.get(), dV.get(), dK.get(), gq.get(), dS.get(), N, false, forceSegs, forcePieces, ws);
  }
  pass(dV.get(), dO.get(), dQ.get(), gk.get(), dS.get(), N, true, forceSegs, forcePieces, ws);
  pass(dK.get(), dQ.get(), dO.get(), gv.get(), dS.get(), N, true, forceSegs, forcePieces, ws, 0, 0,
       reuseDv);
  auto down = [&](const DeviceBuffer &b) {
    std::vector<uint16_t> raw(n);
    gpu().copyToHost(raw.data(), b.get(), n * 2, "result");
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i)
      out[i] = bf16ToF32(raw[i]);
    return out;
  };
  const std::vector<float> got[3] = {down(gq), down(gk), down(gv)};
  const std::array<std::vector<float>, 3> want =
      test::cpuLightningGrad(q, k, v, o, kB, N, kH, kD, slopes, kC);
  const char *names[3] = {"dq", "dk", "dv"};
  for (int t = 0; t < 3; ++t)
    for (int b = 0; b < kB; ++b)
      for (int h = 0; h < kH; ++h) {
        auto at = [&](int64_t r, int c) { return size_t((b * N + r) * ld + h * kD + c); };
        double ss = 0, se = 0, worst = 0;
        for (int64_t r = 0; r < N; ++r)
          for (int c = 0; c < kD; ++c)
            ss += double(want[t][at(r, c)]) * want[t][at(r, c)];
        const double rms = std::sqrt(ss / (double(N) * kD));
        int64_t bad = 0;
        for (int64_t r = 0; r < N; ++r) {
          double rowMax = 0;
          for (int c = 0; c < kD; ++c)
            rowMax = std::max(rowMax, double(std::fabs(want[t][at(r, c)])));
          const double bound = std::ldexp(std::max(rowMax, rms), -5);
          for (int c = 0; c < kD; ++c) {
            const double err = std::fabs(double(got[t][at(r, c)]) - want[t][at(r, c)]);
            se += err * err;
            if (!(err <= bound) && bad++ < 3)
              ADD_FAILURE() << "N=" << N << " " << names[t] << " b" << b << " h" << h << " (" << r
                            << ", " << c << "): gpu " << got[t][at(r, c)] << ", cpu "
                            << want[t][at(r, c)] << " (bound " << bound << ")";
            worst = std::max(worst, err / bound);
          }
        }
        EXPECT_EQ(bad, 0) << "N=" << N << " " << names[t] << " b" << b << " h" << h;
        const double rel = ss > 0 ? std::sqrt(se / ss) : 0;
        EXPECT_LE(rel, std::ldexp(1.0, -7))
            << "N=" << N << " " << names[t] << " b" << b << " h" << h;
        if (b == 0 && h == kH - 1)
          std::printf("  three-pass backward N=%d (segments %d%s) %s: max |diff|/bound %.3f, "
                      "rel L2 %.2e\n",
                      N, forceSegs,
                      reuseDq ? (reuseDv ? ", dq, dv from kept states" : ", dq from the forward's")
                              : (reuseDv ? ", dv from dk's states" : ""),
                      names[t], worst, rel);
      }
}

// The SiLU' fold (LightningFwdArgs::oscale, the plain layer's dq and dk passes): the pass with
// it against the same pass without it and the product on the host, per element bf16(o ·
// slope(x)) with slope = s (1 + x (1 - s)), s = 1 / (1 + e^-x) (la_silu_scale's ops), in order
// and over the reversed sequence (the scale read at the same reversed rows), one segment and
// several. The pre-activations sit at another row stride and column offset than o (a [B·N,
// 2·H·D] buffer, columns [H·D, 2·H·D)), so scale strides taken from o's would be caught. Within
// one bf16 step (the host's exp and unfused arithmetic are not the device's); a row, column or
// direction mix-up is O(1).
TEST(LightningBwdThreePass, SiluSlopeInTheStores) {
  for (int N : {65, 2048})
    for (bool reversed : {false, true}) {
      const int64_t rows = int64_t(kB) * N, ld = kH * kD;
      const size_t n = size_t(rows * ld);
      const std::vector<uint16_t> q = test::randomBf16(n, 11, 0.5f),
                                  k = test::randomBf16(n, 12, 0.5f),
                                  v = test::randomBf16(n, 13, 1.0f),
                                  xw = test::randomBf16(2 * n, 14, 3.0f); // [rows, 2·ld]
      auto xAt = [&](size_t i) {
        return xw[(i / size_t(ld)) * size_t(2 * ld) + size_t(ld) + i % size_t(ld)];
      };
      const float slopes[kH] = {0.5f, 0.0625f, 0.0078125f};
      auto up = [&](const void *src, size_t bytes) { return test::upload(src, bytes, "operand"); };
      DeviceBuffer dQ = up(q.data(), n * 2), dK = up(k.data(), n * 2), dV = up(v.data(), n * 2),
                   dX = up(xw.data(), 2 * n * 2), dS = up(slopes, sizeof slopes);
      DeviceBuffer plain(n * 2, "o"), scaled(n * 2, "o scaled"), ws;
      gpu().fillBytes(scaled.get(), 0xff, n * 2, "sentinel");
      pass(dQ.get(), dK.get(), dV.get(), plain.get(), dS.get(), N, reversed, 0, 0, ws);
      pass(dQ.get(), dK.get(), dV.get(), scaled.get(), dS.get(), N, reversed, 0, 0, ws,
           dX.get() + CUdeviceptr(ld * 2), 2 * ld);
      std::vector<uint16_t> a(n), b(n);
      gpu().copyToHost(a.data(), plain.get(), n * 2, "o");
      gpu().copyToHost(b.data(), scaled.get(), n * 2, "o scaled");
      int64_t bad = 0, exact = 0;
      for (size_t i = 0; i < n; ++i) {
        const float xv = bf16ToF32(xAt(i));
        const float d = 1.0f + std::exp(-xv), sg = 1.0f / d;
        const float want = bf16ToF32(f32ToBf16(bf16ToF32(a[i]) * (sg * (1.0f + xv * (1.0f - sg)))));
        const float got = bf16ToF32(b[i]);
        exact += got == want;
        if (!(std::fabs(got - want) <= std::ldexp(std::fabs(want), -7)) && bad++ < 3)
          ADD_FAILURE() << "N=" << N << (reversed ? " reversed" : "") << " element " << i
                        << ": gpu " << got << ", want " << want << " (unscaled " << bf16ToF32(a[i])
                        << ", x " << xv << ")";
      }
      EXPECT_EQ(bad, 0) << "N=" << N << (reversed ? " reversed" : "");
      std::printf("  SiLU' in the stores N=%d%s: %lld of %zu bit for bit with the host's product\n",
                  N, reversed ? " reversed" : "", (long long)exact, n);
    }
}

TEST(LightningBwdThreePass, MatchesCpu) {
  for (int N : {1, 63, 64, 65, 300, 2048})
    runCase(N);
  runCase(4097, 5, 2); // several segments (one piece each: 13 chunks), a partial last block
}

// The dv pass without its own state pass and scan, from the dk pass's piece states read
// transposed (state_t, as the executor runs it from artifact format 6 on), and the dq pass from
// the forward's: the same bounds against the CPU; at 132 SMs N = 65 has 2 segments of 1 piece,
// 2048 has 16 of 1, (4097, 5, 2) 5 of 1 with a partial last block, (1000, 4, 4) 4 segments of
// 4 pieces (a state from a piece inside a segment). A transpose mix-up (K·Vᵀ for Kᵀ·V) or a
// wrong piece is O(1) off from the second segment on.
TEST(LightningBwdThreePass, DvFromDkStates) {
  for (int N : {65, 2048})
    runCase(N, 0, 0, true);
  runCase(4097, 5, 2, true);
  runCase(1000, 4, 4, true);
}

// N = 32768 (issue 11's longest length): the default plan splits each (b, h) into 22
// segments at 132 SMs (B·H = 6), so the reversed passes start 21 of them from piece states;
// the same bounds, with each pass's own states and as the executor runs a plain layer (dq
// from the forward's states, dv from dk's).
TEST(LightningBwdThreePass, At32768Tokens) {
  runCase(32768);
  runCase(32768, 0, 0, true, true);
}

TEST(LightningBwdThreePass, DqFromForwardStates) {
  for (int N : {65, 2048})
    runCase(N, 0, 0, false, true);
  runCase(1000, 4, 4, false, true);
  runCase(1000, 4, 4, true, true); // both, as the executor runs a plain layer
}

} // namespace
} // namespace tnlm::cuda
