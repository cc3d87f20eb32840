//===- LightningGpuTest.cpp - the Hopper Lightning Attention forward vs the CPU ----===//
//
// The kernels tnlmc emits for a Lightning Attention layer (codegen/CudaEmitter.cpp lightning():
// LightningFwdSm90Config<128, 128>, i.e. C = 64, 3 Q/K/V stages, 4 state stages;
// lightning_fwd_sm90_state_kernel, lightning_fwd_scan_kernel<128, 128>,
// lightning_fwd_sm90_main_kernel), NVRTC-compiled for the device from the headers as they were
// at build time (Lightning.cmake embeds them), found by their lowered names, and launched as
// CudaExecutor::runLightning launches them: the args struct by value, plan_lightning_fwd(B, H,
// N, 128, 128, 64, #SMs) (or a forced split), block 256, the emitter's shared memory sizes, the
// state pass (grid B·H·pieces_per_bh) and the scan (grid (DK·DV/1024, B·H)) only when the plan
// has pieces, then the main pass (grid B·H·num_segs). final_state is nullptr as in the
// executor, except in the cases that check it.
//
// The function: per (b, h), o_t = q_t · Σ_{s≤t} λ^{t−s} k_sᵀ v_s, λ = exp(−s_h), head dim 128.
// Inputs: q uniform in ±1/√128, k and v uniform in ±1, rounded to bf16; the references read the
// same bf16-rounded values. Decay rates: ALiBi slopes of H heads ("alibi"), the same times 1e-5
// (the last layer's factor: λ within 1e-5 of 1, "slow"), and times 16 (λ down to e^-11, "fast":
// the output is mostly the diagonal term, so a mask or decay-power error shows).
// Layouts: "qkvu": q, k, v inside one [B, N, 4·H·128] buffer (token stride 4·H·128, as the
// executor passes the projection's output) whose u quarter holds bf16 NaN, and o with token
// stride H·128 (the executor's y); "dense": separate [B, N, H, 128] q, k, v, and o with token
// stride H·128 + 64 whose gaps hold NaN. o is NaN-filled before each run, with one guard
// token row after it, and the piece-state workspace is NaN-filled too: an output element never
// written, a write outside [b, t, h, 0:128], a read of u or of a piece state the state pass did
// not write, all fail. Every case runs twice and must give bit-identical outputs.
//
// References (same bf16-rounded inputs, every output row):
//   (a) cpu::lightningAttention, the CPU backend's kernel (blocked, f32 sgemm, block 64);
//   (b) an fp64 recurrence written here, S_t = λ S_{t−1} + k_tᵀ v_t, o_t = q_t S_t with
//       λ = exp(−s) in f64 (~1 s for 16 heads x 32768 tokens on 16 cores).
//   A host-only test checks (b) against the direct O(N²) sum (1e-12) and (a) against (b)
//   (2^-12 of the row scale; measured <= 3e-6): a GPU failure is the GPU's.
//
// Tolerance: |gpu − ref| <= 2^-5 · scale_r elementwise, and per (b, h)
// ‖gpu − ref‖₂ / ‖ref‖₂ <= 2^-7, where for output row r = (b, t, h)
//   scale_r = max(max_j |ref_rj|, RMS of ref over the 16 rows of (b, h) up to t, 2^-10 · max of
//   the (b, h)).
//   The kernel reads the references' inputs; what differs is bf16 rounding inside it (unit
//   roundoff u = 2^-8, round to nearest: unbiased): P = decayed scores, K~ = decayed keys of
//   the state update and the bf16 copy of the state read by Q·KV are each rounded once,
//   products accumulate in fp32 (~2^-24 relative: negligible), and o is rounded once (<= u|o|).
//   Each rounding perturbs one term of a sum by a relative δ, |δ| <= u, so with zero-mean
//   random inputs an element's error is a zero-mean sum of scale ~u·rms(row) plus the output
//   rounding: the worst of 10^7 elements is a few u of the row's max. Relative to the row, not
//   to max|o| of the head, so early rows of a slowly decaying sequence (|o_t| grows like √t,
//   ~180x over 32768 tokens) are held to the same relative bound. The window RMS floors rows
//   whose outputs cancel: with a fast decay (λ ~ 0.3-0.6) the state is a few k_sᵀ v_s, and when
//   q_t is nearly orthogonal to those keys o_t is small while the state copy's rounding error
//   (relative to Σ_c |q_tc S_cj|) is not; the row's max alone then gave up to 5.5u.
//   Measured with a host emulation of exactly these roundings (C = 64 blocks, fp32 sums) against
//   (b), 33M elements per setting (H = 16, N = 16384, two seeds; alibi and fast): max
//   |d|/scale_r 2.0-2.5u, rel L2 0.6-0.7u (slow decay, N = 32768: 1.5u, 0.6u). So 8u and 2u
//   leave >3x margin; bench/lightning_fwd.cu measures the same roundings on an H200 against an
//   fp32 recurrence as max rel err (of max|o|) <= 3.4e-3 ≈ 0.9u, rel L2 <= 2.3e-3 ≈ 0.6u.
//   Caught (by the same emulation, mutated): a dropped diagonal of the mask (rel L2 >= 8u in
//   every decay), Λ off by one power (alibi and fast: 80-1000u; slow: invisible, λ ≈ 1), and
//   anything coarser: a lost, doubled or stale block, segment or piece state, a wrong position,
//   head or batch, a NaN read.
//   The final state (when checked) against the fp64 S_N: only the K~ roundings, elementwise
//   <= 2^-6 · max|S| of the (b, h), rel L2 <= 2^-7 (emulated: <= 0.6u and 0.45u; bench: max
//   rel err 1.8e-3, rel L2 1.6e-3).
//
//===----------------------------------------------------------------------===//
#include "codegen/cuda/LightningFwdPlan.h"
#include "runtime/DType.h"
#include "runtime/cpu/Kernels.h"
#include "runtime/cpu/Parallel.h"
#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/Nvrtc.h"
#include "test/unit/cuda/GpuTest.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

namespace tnlm::cuda {
namespace {

using test::gpu;

// The kernels' arguments with bf16 as 16-bit words (same layout), as CudaExecutor fills them.
using LightningArgs = la::LightningFwdArgsT<uint16_t>;

// codegen/cuda/LightningAttentionFwdSm90.cuh, LightningAttentionFwd.cuh and LightningFwdPlan.h
// at build time (Lightning.cmake).
const char *const kLightningSm90Cuh =
#include "Lightning_LightningAttentionFwdSm90_cuh.inc"
    ;
const char *const kLightningCuh =
#include "Lightning_LightningAttentionFwd_cuh.inc"
    ;
const char *const kLightningPlanH =
#include "Lightning_LightningFwdPlan_h.inc"
    ;
const char *const kMmaSyncCuh =
#include "Lightning_MmaSync_cuh.inc"
    ;
// NVRTC has no C library headers (the emitter's stub, codegen/CudaEmitter.cpp cudaDeviceHeaders).
const char *const kStdintStub = "#pragma once\n"
                                "typedef signed char int8_t;\ntypedef short int16_t;\n"
                                "typedef int int32_t;\ntypedef long long int64_t;\n"
                                "typedef unsigned char uint8_t;\ntypedef unsigned short uint16_t;\n"
                                "typedef unsigned int uint32_t;\n"
                                "typedef unsigned long long uint64_t;\n";

// The emitter's launch numbers (codegen/CudaEmitter.cpp kLa*): head dim, kernel tile, threads,
// and shared memory as it computes them; the test source static_asserts them against the
// template, as the emitted source does.
constexpr int kD = 128, kC = 64, kThreads = 256, kScanThreads = 256;
constexpr int kTile = kC * kD * 2;
constexpr int kSmemMain = 3 * 4 * kTile + kD * kD * 2 + ((kC + 1) * 4 + 15) / 16 * 16 + 1024;
constexpr int kSmemState = 4 * kTile * 2 + 1024;

const char *const kStateExpr = "&tnlm::la::lightning_fwd_sm90_state_kernel<Cfg>";
const char *const kScanExpr = "&tnlm::la::lightning_fwd_scan_kernel<128, 128>";
const char *const kMainExpr = "&tnlm::la::lightning_fwd_sm90_main_kernel<Cfg>";

std::string lightningSource() {
  return "#include \"tnlm/LightningAttentionFwdSm90.cuh\"\n\n"
         "using Cfg = tnlm::la::LightningFwdSm90Config<128, 128>;\n"
         "static_assert(Cfg::NTHREADS == " +
         std::to_string(kThreads) + " && Cfg::C == " + std::to_string(kC) +
         " && Cfg::SMEM_MAIN == " + std::to_string(kSmemMain) +
         " && Cfg::SMEM_STATE == " + std::to_string(kSmemState) +
         ",\n              \"the test's launch numbers disagree with "
         "LightningAttentionFwdSm90.cuh\");\n";
}

NvrtcOptions lightningOptions(const std::string &arch) {
  NvrtcOptions options;
  options.arch = arch;
  // The headers include each other by bare name.
  options.headers = {{"tnlm/LightningAttentionFwdSm90.cuh", kLightningSm90Cuh},
                     {"LightningAttentionFwd.cuh", kLightningCuh},
                     {"LightningFwdPlan.h", kLightningPlanH},
                     {"MmaSync.cuh", kMmaSyncCuh},
                     {"stdint.h", kStdintStub}};
  options.nameExpressions = {kStateExpr, kScanExpr, kMainExpr};
  return options;
}

/// The three kernels, compiled for the test device once.
struct LightningKernels {
  std::unique_ptr<Module> module;
  Kernel *state = nullptr, *scan = nullptr, *main = nullptr;
};

LightningKernels &lightningKernels() {
  static LightningKernels k;
  if (!k.module) {
    const auto t0 = std::chrono::steady_clock::now();
    CompiledKernels out =
        compileCuda(lightningSource(), "lightning.cu", lightningOptions(test::deviceArch()));
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::printf("  NVRTC (%s): %.1f s\n", test::deviceArch().c_str(), s);
    if (!out.log.empty())
      std::printf("  NVRTC log:\n%s\n", out.log.c_str());
    k.module = std::make_unique<Module>(gpu(), out.image, "lightning");
    k.state = &k.module->kernel(out.loweredNames.at(kStateExpr));
    k.scan = &k.module->kernel(out.loweredNames.at(kScanExpr));
    k.main = &k.module->kernel(out.loweredNames.at(kMainExpr));
  }
  return k;
}

//===-- Inputs ------------------------------------------------------------------===//

constexpr uint16_t kSentinel = 0xffff; // a bf16 NaN

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ULL;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
  return x ^ (x >> 31);
}

/// n values uniform in [-scale, scale), rounded to bf16; element i depends only on (seed, i).
std::vector<uint16_t> randomBf16(int64_t n, float scale, uint64_t seed) {
  std::vector<uint16_t> out(static_cast<size_t>(n));
  cpu::parallelFor(n, 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const uint64_t r = splitmix64(seed * 0x100000001B3ULL + static_cast<uint64_t>(i));
      const float u = static_cast<float>(r >> 40) * (1.0f / 16777216.0f); // [0, 1)
      out[i] = f32ToBf16(scale * (2.0f * u - 1.0f));
    }
  });
  return out;
}

std::vector<float> toF32(const std::vector<uint16_t> &bits) {
  std::vector<float> out(bits.size());
  cpu::parallelFor(static_cast<int64_t>(bits.size()), 1 << 16, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i)
      out[i] = bf16ToF32(bits[i]);
  });
  return out;
}

enum class Decay { Alibi, Slow, Fast };
const char *decayName(Decay d) {
  return d == Decay::Alibi ? "alibi" : d == Decay::Slow ? "slow" : "fast";
}

/// ALiBi slopes of H heads (models/ModelConfig.cpp alibiSlopes), times 1, 1e-5 or 16, in f32.
std::vector<float> slopesFor(int H, Decay d) {
  auto powerOfTwo = [](int n) {
    std::vector<double> s(static_cast<size_t>(n));
    for (int h = 0; h < n; ++h)
      s[h] = std::pow(2.0, -8.0 * (h + 1) / n);
    return s;
  };
  int p = 1;
  while (p * 2 <= H)
    p *= 2;
  std::vector<double> s = powerOfTwo(p);
  if (p < H) {
    std::vector<double> extra = powerOfTwo(2 * p);
    for (int i = 0; i < H - p; ++i)
      s.push_back(extra[static_cast<size_t>(2 * i)]);
  }
  const double factor = d == Decay::Alibi ? 1.0 : d == Decay::Slow ? 1e-5 : 16.0;
  std::vector<float> out;
  for (double x : s)
    out.push_back(static_cast<float>(x * factor));
  return out;
}

//===-- The fp64 reference --------------------------------------------------------===//

/// The recurrence in f64 per (b, h) on dense [B, N, H, D] inputs: S_t = λ S_{t−1} + k_tᵀ v_t,
/// o_t = q_t S_t, λ = exp(−s_h) in f64. out: [B][ts.size()][H][D] for the tokens ts (sorted);
/// finalState (if given): S_N as [B·H][D][D].
void recurrenceF64(const std::vector<float> &q, const std::vector<float> &k,
                   const std::vector<float> &v, int B, int N, int H, int D,
                   const std::vector<float> &slopes, const std::vector<int> &ts,
                   std::vector<double> &out, std::vector<double> *finalState = nullptr) {
  const int64_t R = static_cast<int64_t>(ts.size());
  out.assign(static_cast<size_t>(B * R * H * D), 0.0);
  if (finalState)
    finalState->assign(static_cast<size_t>(int64_t(B) * H * D * D), 0.0);
  cpu::parallelFor(int64_t(B) * H, 1, [&](int64_t p0, int64_t p1) {
    std::vector<double> S(static_cast<size_t>(D * D)), vd(D), acc(D);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / H, h = p % H;
      const double lambda = std::exp(-static_cast<double>(slopes[h]));
      std::fill(S.begin(), S.end(), 0.0);
      int64_t next = 0;
      for (int t = 0; t < N; ++t) {
        const int64_t row = ((b * N + t) * H + h) * D;
        for (int j = 0; j < D; ++j)
          vd[j] = v[row + j];
        for (int i = 0; i < D; ++i) {
          const double ki = k[row + i];
          double *Si = S.data() + i * D;
          for (int j = 0; j < D; ++j)
            Si[j] = lambda * Si[j] + ki * vd[j];
        }
        if (next < R && ts[next] == t) {
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int i = 0; i < D; ++i) {
            const double qi = q[row + i];
            const double *Si = S.data() + i * D;
            for (int j = 0; j < D; ++j)
              acc[j] += qi * Si[j];
          }
          std::copy(acc.begin(), acc.end(), out.begin() + ((b * R + next) * H + h) * D);
          ++next;
        }
      }
      if (finalState)
        std::copy(S.begin(), S.end(), finalState->begin() + p * D * D);
    }
  });
}

//===-- Comparisons ---------------------------------------------------------------===//

constexpr double kElemBound = 1.0 / 32;  // 2^-5 of the row's max |ref|
constexpr double kL2Bound = 1.0 / 128;   // 2^-7, per (b, h)
constexpr double kRowFloor = 1.0 / 1024; // row scales floored at 2^-10 of the (b, h) max
constexpr int kWindow = 16;              // ... and at the RMS of the 16 checked rows up to it
constexpr double kStateElemBound = 1.0 / 64;

struct HeadStats {
  double worst = 0, l2 = 0; // max |d| / scale_row; ‖d‖ / ‖ref‖
  int64_t worstT = -1, worstJ = -1, bad = 0;
  std::string firstBad;
};

/// gpu rows (b, t, h) of `o` (bf16 bits, [B, N, outLd] with head h at columns h·D) against
/// ref(b, i, h) -> D values for the tokens ts[i]; fails past `elem` · scale_row or `l2`.
template <typename T, typename RefRow>
void compareRows(const std::string &what, const std::vector<uint16_t> &o, int64_t outLd, int B,
                 int N, int H, int D, const std::vector<int> &ts, RefRow ref, double elem,
                 double l2) {
  const int64_t R = static_cast<int64_t>(ts.size());
  std::vector<HeadStats> st(static_cast<size_t>(B * H));
  cpu::parallelFor(int64_t(B) * H, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int b = static_cast<int>(p / H), h = static_cast<int>(p % H);
      HeadStats &s = st[p];
      double maxAbs = 0;
      for (int64_t i = 0; i < R; ++i) {
        const T *r = ref(b, i, h);
        for (int j = 0; j < D; ++j)
          maxAbs = std::max(maxAbs, std::fabs(double(r[j])));
      }
      // Mean squares of the last kWindow checked rows (a ring), for the window RMS.
      double window[kWindow] = {};
      double d2 = 0, r2 = 0;
      for (int64_t i = 0; i < R; ++i) {
        const T *r = ref(b, i, h);
        const uint16_t *g = o.data() + (int64_t(b) * N + ts[i]) * outLd + int64_t(h) * D;
        double rowMax = 0, rowSq = 0;
        for (int j = 0; j < D; ++j) {
          rowMax = std::max(rowMax, std::fabs(double(r[j])));
          rowSq += double(r[j]) * double(r[j]);
        }
        window[i % kWindow] = rowSq / D;
        double windowSum = 0;
        for (double w : window)
          windowSum += w;
        const double windowRms = std::sqrt(windowSum / double(std::min<int64_t>(i + 1, kWindow)));
        const double scale = std::max({rowMax, windowRms, kRowFloor * maxAbs});
        for (int j = 0; j < D; ++j) {
          const double got = bf16ToF32(g[j]), want = double(r[j]);
          double d = std::fabs(got - want);
          d2 += d * d;
          r2 += want * want;
          if (!(d <= elem * scale)) { // NaN fails too
            if (s.bad++ == 0)
              s.firstBad = "(b " + std::to_string(b) + ", t " + std::to_string(ts[i]) + ", h " +
                           std::to_string(h) + ", j " + std::to_string(j) + "): gpu " +
                           std::to_string(got) + ", ref " + std::to_string(want) + ", row scale " +
                           std::to_string(scale);
            if (!(d == d))
              d = INFINITY;
          }
          if (scale > 0 && d / scale > s.worst) {
            s.worst = d / scale;
            s.worstT = ts[i];
            s.worstJ = j;
          }
        }
      }
      s.l2 = r2 > 0 ? std::sqrt(d2 / r2) : (d2 > 0 ? INFINITY : 0.0);
      if (!(d2 == d2))
        s.l2 = INFINITY;
    }
  });
  double worst = 0, worstL2 = 0;
  int64_t at = 0, atL2 = 0, bad = 0;
  for (int64_t p = 0; p < int64_t(B) * H; ++p) {
    const HeadStats &s = st[p];
    if (s.bad > 0 && bad < 5)
      ADD_FAILURE() << what << ": " << s.bad << " elements of (b " << p / H << ", h " << p % H
                    << ") past " << elem << " · row scale; first " << s.firstBad;
    bad += s.bad;
    EXPECT_LE(s.l2, l2) << what << ": (b " << p / H << ", h " << p % H << ") rel L2 error";
    if (s.worst >= worst)
      worst = s.worst, at = p;
    if (s.l2 >= worstL2)
      worstL2 = s.l2, atL2 = p;
  }
  EXPECT_EQ(bad, 0) << what << ": elements outside the tolerance";
  std::printf("  %-34s %8lld rows/head: max |d|/row scale %.2e = %.2f u (bound %.2f u) at (b %lld, "
              "h %lld, t %lld, j %lld); max rel L2 %.2e = %.2f u (bound %.2f u, b %lld h %lld)\n",
              what.c_str(), static_cast<long long>(R), worst, worst * 256, elem * 256,
              static_cast<long long>(at / H), static_cast<long long>(at % H),
              static_cast<long long>(st[at].worstT), static_cast<long long>(st[at].worstJ), worstL2,
              worstL2 * 256, l2 * 256, static_cast<long long>(atL2 / H),
              static_cast<long long>(atL2 % H));
}

//===-- The GPU run ---------------------------------------------------------------===//

enum class Layout { Qkvu, Dense };

struct Case {
  int B, H, N; // B = 0: the smallest B with B·H > #SMs (one segment per (b, h))
  Layout layout;
  Decay decay;
  int forceSegs = 0, forcePieces = 0; // plan_lightning_fwd's overrides
  bool finalState = false;            // also pass final_state and check it
};

std::string caseText(const Case &c) {
  std::string s = (c.B > 0 ? "b" + std::to_string(c.B) : std::string("bFill")) + "_h" +
                  std::to_string(c.H) + "_n" + std::to_string(c.N) + "_" +
                  (c.layout == Layout::Qkvu ? "qkvu" : "dense") + "_" + decayName(c.decay);
  if (c.forceSegs)
    s += "_segs" + std::to_string(c.forceSegs);
  if (c.forcePieces)
    s += "_pieces" + std::to_string(c.forcePieces);
  if (c.finalState)
    s += "_final";
  return s;
}
std::string caseName(const ::testing::TestParamInfo<Case> &info) { return caseText(info.param); }
void PrintTo(const Case &c, std::ostream *os) { *os << caseText(c); }

class LightningFwd : public ::testing::TestWithParam<Case> {};

TEST_P(LightningFwd, MatchesCpuAndF64Recurrence) {
  if (gpu().computeCapability() != 90)
    GTEST_SKIP() << "the Hopper kernels need sm_90a (device is sm_" << gpu().computeCapability()
                 << ")";
  const Case c = GetParam();
  const int sms = gpu().multiprocessors();
  const int H = c.H, N = c.N, D = kD;
  const int B = c.B > 0 ? c.B : sms / H + 1;
  const int64_t HD = int64_t(H) * D, rows = int64_t(B) * N;
  const la::LightningFwdPlan plan =
      la::plan_lightning_fwd(B, H, N, kD, kD, kC, sms, c.forceSegs, c.forcePieces);
  std::printf("  B %d H %d N %d, %s, %s decay; plan: %d segment(s) of %d tokens, %d piece(s) of "
              "%d per (b, h), workspace %llu bytes (%d SMs)\n",
              B, H, N, c.layout == Layout::Qkvu ? "qkvu" : "dense", decayName(c.decay),
              plan.num_segs, plan.seg_len, plan.pieces_per_bh, plan.piece_len, plan.workspace_bytes,
              sms);
  if (c.B == 0) {
    EXPECT_GE(B * H, sms);
    EXPECT_EQ(plan.num_segs, 1);
  }
  if (c.forceSegs > 1) {
    EXPECT_GT(plan.pieces_per_bh, 0) << "the forced split should have pieces";
  }

  // Inputs, dense [B, N, H, D] bf16 (the references' operands are these values in f32).
  const std::vector<uint16_t> qBits = randomBf16(rows * HD, 1.0f / std::sqrt(float(D)), 1);
  const std::vector<uint16_t> kBits = randomBf16(rows * HD, 1.0f, 2);
  const std::vector<uint16_t> vBits = randomBf16(rows * HD, 1.0f, 3);
  const std::vector<float> slopes = slopesFor(H, c.decay);

  // Device buffers: inputs in the case's layout, o with a guard token row, slopes, workspace.
  const int64_t inLd = c.layout == Layout::Qkvu ? 4 * HD : HD;
  const int64_t outLd = c.layout == Layout::Qkvu ? HD : HD + 64;
  std::vector<DeviceBuffer> inputs;
  CUdeviceptr dq = 0, dk = 0, dv = 0;
  if (c.layout == Layout::Qkvu) {
    std::vector<uint16_t> qkvu(static_cast<size_t>((rows + 1) * inLd), kSentinel);
    cpu::parallelFor(rows, 256, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        std::copy_n(qBits.begin() + r * HD, HD, qkvu.begin() + r * inLd);
        std::copy_n(kBits.begin() + r * HD, HD, qkvu.begin() + r * inLd + HD);
        std::copy_n(vBits.begin() + r * HD, HD, qkvu.begin() + r * inLd + 2 * HD);
      }
    });
    inputs.emplace_back(qkvu.size() * 2, "qkvu");
    gpu().copyToDevice(inputs[0].get(), qkvu.data(), qkvu.size() * 2, "qkvu");
    gpu().synchronize("qkvu upload");
    dq = inputs[0].get();
    dk = dq + HD * 2;
    dv = dq + 2 * HD * 2;
  } else {
    for (const std::vector<uint16_t> *x : {&qBits, &kBits, &vBits}) {
      inputs.emplace_back(x->size() * 2 + HD * 2, "q/k/v");
      gpu().fillBytes(inputs.back().get(), 0xff, inputs.back().size(), "q/k/v guard");
      gpu().copyToDevice(inputs.back().get(), x->data(), x->size() * 2, "q/k/v");
    }
    gpu().synchronize("q/k/v upload");
    dq = inputs[0].get();
    dk = inputs[1].get();
    dv = inputs[2].get();
  }
  const size_t oBytes = static_cast<size_t>((rows + 1) * outLd) * 2;
  DeviceBuffer dout(oBytes, "o");
  DeviceBuffer dslopes(slopes.size() * sizeof(float), "slopes");
  gpu().copyToDevice(dslopes.get(), slopes.data(), slopes.size() * sizeof(float), "slopes");
  DeviceBuffer dws;
  if (plan.workspace_bytes > 0)
    dws = DeviceBuffer(plan.workspace_bytes, "piece states");
  const size_t stateBytes = static_cast<size_t>(int64_t(B) * H * D * D) * sizeof(float);
  DeviceBuffer dfinal;
  if (c.finalState)
    dfinal = DeviceBuffer(stateBytes, "final state");

  // The arguments as CudaExecutor::runLightning fills them.
  LightningArgs a{};
  a.q = reinterpret_cast<const uint16_t *>(dq);
  a.k = reinterpret_cast<const uint16_t *>(dk);
  a.v = reinterpret_cast<const uint16_t *>(dv);
  a.o = reinterpret_cast<uint16_t *>(dout.get());
  a.slopes = reinterpret_cast<const float *>(dslopes.get());
  a.piece_states = plan.pieces_per_bh > 0 ? reinterpret_cast<float *>(dws.get()) : nullptr;
  a.final_state = c.finalState ? reinterpret_cast<float *>(dfinal.get()) : nullptr;
  a.B = B;
  a.N = N;
  a.H = H;
  a.in_sn = inLd;
  a.in_sb = int64_t(N) * inLd;
  a.in_sh = D;
  a.out_sn = outLd;
  a.out_sb = int64_t(N) * outLd;
  a.out_sh = D;
  a.seg_len = plan.seg_len;
  a.num_segs = plan.num_segs;
  a.piece_len = plan.piece_len;
  a.pieces_per_bh = plan.pieces_per_bh;

  LightningKernels &kernels = lightningKernels();
  const unsigned bh = static_cast<unsigned>(B * H);
  auto forward = [&]() {
    gpu().fillBytes(dout.get(), 0xff, oBytes, "o sentinel");
    if (dws.size())
      gpu().fillBytes(dws.get(), 0xff, dws.size(), "workspace sentinel");
    if (dfinal.size())
      gpu().fillBytes(dfinal.get(), 0xff, dfinal.size(), "final state sentinel");
    if (plan.pieces_per_bh > 0) {
      LaunchConfig state;
      state.block.x = kThreads;
      state.sharedBytes = kSmemState;
      state.grid.x = bh * static_cast<unsigned>(plan.pieces_per_bh);
      gpu().launchWith(*kernels.state, state, "lightning state pass", a);
      LaunchConfig scan;
      scan.block.x = kScanThreads;
      scan.grid.x = kD * kD / 1024;
      scan.grid.y = bh;
      gpu().launchWith(*kernels.scan, scan, "lightning scan", a);
    }
    LaunchConfig mainPass;
    mainPass.block.x = kThreads;
    mainPass.sharedBytes = kSmemMain;
    mainPass.grid.x = bh * static_cast<unsigned>(plan.num_segs);
    gpu().launchWith(*kernels.main, mainPass, "lightning main pass", a);
    std::vector<uint16_t> o(oBytes / 2);
    gpu().copyToHost(o.data(), dout.get(), oBytes, "o");
    return o;
  };
  const std::vector<uint16_t> o = forward();
  std::vector<float> finalGpu;
  if (c.finalState) {
    finalGpu.resize(stateBytes / sizeof(float));
    gpu().copyToHost(finalGpu.data(), dfinal.get(), stateBytes, "final state");
  }
  const std::vector<uint16_t> o2 = forward();
  EXPECT_TRUE(o == o2) << "a second run on the same inputs gave different outputs";

  // Nothing outside [b, t, h, 0:D) written (gaps, guard row), every element inside written.
  {
    int64_t stray = 0, unwritten = 0;
    for (int64_t r = 0; r <= rows; ++r)
      for (int64_t col = 0; col < outLd; ++col) {
        const bool inside = r < rows && col < HD;
        const uint16_t x = o[r * outLd + col];
        if (!inside && x != kSentinel && stray++ < 5)
          ADD_FAILURE() << "o (" << r << ", " << col << ") outside the output was written";
        if (inside && x == kSentinel)
          ++unwritten;
      }
    EXPECT_EQ(stray, 0) << "writes outside the output view";
    EXPECT_EQ(unwritten, 0) << "output elements left at the NaN sentinel";
  }

  // (a) the CPU backend's kernel, every row.
  const std::vector<float> q = toF32(qBits), k = toF32(kBits), v = toF32(vBits);
  std::vector<float> refCpu(static_cast<size_t>(rows * HD));
  auto t0 = std::chrono::steady_clock::now();
  cpu::lightningAttention(q.data(), k.data(), v.data(), B, N, H, D, D, HD, HD, HD, slopes.data(),
                          refCpu.data(), HD, kC);
  auto t1 = std::chrono::steady_clock::now();
  std::vector<int> all(static_cast<size_t>(N));
  for (int t = 0; t < N; ++t)
    all[t] = t;
  compareRows<float>(
      "vs cpu::lightningAttention", o, outLd, B, N, H, D, all,
      [&](int b, int64_t i, int h) { return refCpu.data() + (int64_t(b) * N + i) * HD + h * D; },
      kElemBound, kL2Bound);

  // (b) the fp64 recurrence, every row.
  std::vector<double> ref64, final64;
  auto t2 = std::chrono::steady_clock::now();
  recurrenceF64(q, k, v, B, N, H, D, slopes, all, ref64, c.finalState ? &final64 : nullptr);
  auto t3 = std::chrono::steady_clock::now();
  compareRows<double>(
      "vs fp64 recurrence", o, outLd, B, N, H, D, all,
      [&](int b, int64_t i, int h) { return ref64.data() + ((int64_t(b) * N + i) * H + h) * D; },
      kElemBound, kL2Bound);
  std::printf("  host references: cpu::lightningAttention %.2f s, fp64 recurrence %.2f s (%d "
              "threads)\n",
              std::chrono::duration<double>(t1 - t0).count(),
              std::chrono::duration<double>(t3 - t2).count(), cpu::numThreads());

  if (c.finalState) {
    double worst = 0, worstL2 = 0;
    int64_t bad = 0;
    for (int64_t p = 0; p < int64_t(B) * H; ++p) {
      const float *g = finalGpu.data() + p * D * D;
      const double *r = final64.data() + p * D * D;
      double maxAbs = 0, d2 = 0, r2 = 0;
      for (int64_t e = 0; e < int64_t(D) * D; ++e)
        maxAbs = std::max(maxAbs, std::fabs(r[e]));
      for (int64_t e = 0; e < int64_t(D) * D; ++e) {
        double d = std::fabs(double(g[e]) - r[e]);
        if (!(d <= kStateElemBound * maxAbs)) {
          if (bad++ < 5)
            ADD_FAILURE() << "final state (b " << p / H << ", h " << p % H << ", " << e / D << ", "
                          << e % D << "): gpu " << g[e] << ", fp64 " << r[e];
          if (!(d == d))
            d = INFINITY;
        }
        d2 += d * d;
        r2 += r[e] * r[e];
        if (maxAbs > 0)
          worst = std::max(worst, d / maxAbs);
      }
      const double l2 = r2 > 0 ? std::sqrt(d2 / r2) : 0.0;
      EXPECT_LE(l2, kL2Bound) << "final state (b " << p / H << ", h " << p % H << ") rel L2";
      worstL2 = std::max(worstL2, l2);
    }
    EXPECT_EQ(bad, 0) << "final state elements outside the tolerance";
    std::printf("  %-34s max |d|/max|S| %.2e = %.2f u (bound %.2f u); max rel L2 %.2e = %.2f u "
                "(bound %.2f u)\n",
                "final state vs fp64", worst, worst * 256, kStateElemBound * 256, worstL2,
                worstL2 * 256, kL2Bound * 256);
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LightningFwd,
    ::testing::Values(Case{1, 1, 1, Layout::Dense, Decay::Alibi},
                      Case{2, 6, 63, Layout::Qkvu, Decay::Alibi},
                      Case{1, 6, 64, Layout::Dense, Decay::Fast},
                      Case{1, 6, 65, Layout::Qkvu, Decay::Slow, 0, 0, true},
                      Case{2, 16, 2048, Layout::Qkvu, Decay::Alibi, 0, 0, true},
                      Case{2, 16, 2048, Layout::Dense, Decay::Fast},
                      Case{1, 16, 32768, Layout::Qkvu, Decay::Alibi},
                      Case{1, 16, 32768, Layout::Qkvu, Decay::Slow, 0, 0, true},
                      // Forced splits: several segments and several pieces per segment.
                      Case{1, 4, 1000, Layout::Dense, Decay::Alibi, 5, 4, true},
                      Case{2, 3, 3000, Layout::Qkvu, Decay::Slow, 7, 7, true},
                      Case{1, 2, 513, Layout::Dense, Decay::Fast, 3, 3},
                      // B·H >= #SMs: one segment, no pieces.
                      Case{0, 16, 300, Layout::Qkvu, Decay::Alibi}),
    caseName);

//===-- Host only: the references ----------------------------------------------------===//

// The fp64 recurrence against the definition summed directly in f64 (O(N²)), and
// cpu::lightningAttention against the recurrence, on every row: the two references agree far
// below the GPU tolerance (2^-12 of the row scale vs 2^-5), so a GPU failure is the GPU's.
TEST(LightningReference, RecurrenceMatchesDirectSumAndCpuKernel) {
  const int D = kD;
  for (Decay decay : {Decay::Alibi, Decay::Slow, Decay::Fast}) {
    SCOPED_TRACE(decayName(decay));
    const int B = 2, H = 3, N = 200;
    const int64_t HD = int64_t(H) * D, rows = int64_t(B) * N;
    const std::vector<float> q = toF32(randomBf16(rows * HD, 1.0f / std::sqrt(float(D)), 11));
    const std::vector<float> k = toF32(randomBf16(rows * HD, 1.0f, 12));
    const std::vector<float> v = toF32(randomBf16(rows * HD, 1.0f, 13));
    const std::vector<float> slopes = slopesFor(H, decay);
    std::vector<int> all(static_cast<size_t>(N));
    for (int t = 0; t < N; ++t)
      all[t] = t;
    std::vector<double> rec;
    recurrenceF64(q, k, v, B, N, H, D, slopes, all, rec);
    std::vector<float> cpuO(static_cast<size_t>(rows * HD));
    cpu::lightningAttention(q.data(), k.data(), v.data(), B, N, H, D, D, HD, HD, HD, slopes.data(),
                            cpuO.data(), HD, kC);
    double worstDirect = 0, worstCpu = 0;
    for (int b = 0; b < B; ++b)
      for (int h = 0; h < H; ++h) {
        const double lambda = std::exp(-double(slopes[h]));
        for (int t = 0; t < N; ++t) {
          const double *r = rec.data() + ((int64_t(b) * N + t) * H + h) * D;
          std::vector<double> direct(static_cast<size_t>(D), 0.0);
          for (int s = 0; s <= t; ++s) {
            const float *qt = q.data() + (int64_t(b) * N + t) * HD + h * D;
            const float *ks = k.data() + (int64_t(b) * N + s) * HD + h * D;
            const float *vs = v.data() + (int64_t(b) * N + s) * HD + h * D;
            double score = 0;
            for (int i = 0; i < D; ++i)
              score += double(qt[i]) * double(ks[i]);
            score *= std::pow(lambda, t - s);
            for (int j = 0; j < D; ++j)
              direct[j] += score * double(vs[j]);
          }
          double rowMax = 0;
          for (int j = 0; j < D; ++j)
            rowMax = std::max(rowMax, std::fabs(r[j]));
          const float *c = cpuO.data() + (int64_t(b) * N + t) * HD + h * D;
          for (int j = 0; j < D; ++j) {
            const double eDirect = std::fabs(direct[j] - r[j]) / rowMax;
            const double eCpu = std::fabs(double(c[j]) - r[j]) / rowMax;
            ASSERT_LE(eDirect, 1e-12) << "b " << b << " h " << h << " t " << t << " j " << j;
            ASSERT_LE(eCpu, 1.0 / 4096) << "b " << b << " h " << h << " t " << t << " j " << j;
            worstDirect = std::max(worstDirect, eDirect);
            worstCpu = std::max(worstCpu, eCpu);
          }
        }
      }
    std::printf("  %s: fp64 recurrence vs direct sum %.1e, cpu::lightningAttention vs fp64 "
                "recurrence %.1e (of the row's max)\n",
                decayName(decay), worstDirect, worstCpu);
  }
}

//===-- NVRTC only (no GPU) -------------------------------------------------------===//

// The test source compiles for the Hopper target the emitter uses, and the three kernels'
// lowered names resolve and are in the cubin. Needs NVRTC, not a device (the binary still
// skips it without one; see GpuMain).
TEST(LightningSource, CompilesForSm90a) {
  CompiledKernels out = compileCuda(lightningSource(), "lightning.cu", lightningOptions("sm_90a"));
  if (!out.log.empty())
    std::printf("  NVRTC log:\n%s\n", out.log.c_str());
  ASSERT_EQ(out.loweredNames.size(), 3u);
  for (const char *expr : {kStateExpr, kScanExpr, kMainExpr}) {
    auto it = out.loweredNames.find(expr);
    ASSERT_NE(it, out.loweredNames.end()) << expr;
    EXPECT_FALSE(it->second.empty()) << expr;
    EXPECT_NE(out.image.find(std::string(1, '\0') + it->second + '\0'), std::string::npos)
        << expr << " -> " << it->second << " is not in the cubin";
    std::printf("  %s -> %s\n", expr, it->second.c_str());
  }
}

} // namespace
} // namespace tnlm::cuda
