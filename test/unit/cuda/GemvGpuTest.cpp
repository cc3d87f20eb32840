//===- GemvGpuTest.cpp - the decode GEMV (rec::gemv) against an f64 reference ---===//
//
// codegen/cuda/Recurrent.cuh's rec::gemv, wrapped as the emitter wraps it
// (tnlm_gemv_<out>_p<P>_c<C>: MAXM 4, 8 stages at most, 256 threads; the executor's parameter
// list), NVRTC-compiled for the device against the header's text at build time (Gemv.cmake embeds
// it), on seeded random bf16 inputs x, x2 [M, K] and weights W [N, K] (and W2, gated). The prologue
// P computes the layer input v from x and x2 (v = x; the srms_norm of x, of x + x2 (writing x + x2
// to `sum`), or x2 times the srms_norm of x); C > 0 gives M = 1 calls the single-row path
// (gemv_one, v in every warp's registers). The cases cover the 385M's decode shapes (qkvu 4096 x
// 1024, the gated pair 2816 x 1024, the down projection 1024 x 2816, an f32 lm head) with the
// executor's layouts and others: rows per CTA that do not fill the last stage or CTA, rings that
// wrap around (more stages than slots, 1-row stages), 2-8 warps per row over slices of K, and M = 1
// to 4 slots.
//
// Reference: v from the prologue (layerInput: exact, or within one bf16 step where the f32 norm
// may round either way), y[m, n] = Σ_k v[m, k] W[n, k] in f64 on the same bf16 values. Bound: the
// GPU adds exact products (bf16 x bf16 fits in f32) in f32 over K terms, in some order: |y_gpu - y|
// <= K · 2^-23 · Σ_k |v w| (the worst case of K roundings of 2^-24 each, doubled for the ordering
// of the lanes' and warps' partial sums), plus, for a bf16 result, its one rounding: 2^-8 · |y|. A
// row computed twice, a K tile skipped or taken twice (1/64 of the terms for K = 1024), a slot's
// column swapped or a stage read before it lands fail by far more. Gated: y = bf16(a)·bf16(b)
// rounded to bf16, where a GPU a or b one bf16 step from the reference's (a value near a rounding
// boundary) moves the product by 2^-8 relative: bound 3 · 2^-8 · |a b| plus the f32 terms times the
// other factor. Every element outside the M x N result (a guard row, the row stride's gap) must
// keep its sentinel.
//
//===----------------------------------------------------------------------===//
#include "runtime/DType.h"
#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/Nvrtc.h"
#include "test/unit/cuda/GpuTest.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

namespace tnlm::cuda {
namespace {

using test::gpu;

// codegen/cuda/Recurrent.cuh at build time (Gemv.cmake).
const char *const kRecurrentCuh =
#include "GemvRecurrent.inc"
    ;

constexpr int kBlock = 256; // and MAXM 4, 8 stages at most (the emitter's wrapper)

struct Case {
  const char *name;
  int n, k, m;
  bool gated, f32out;
  int rowsPerCta, stageRows, stages, warpsPerRow;
  int prologue =
      0; // rec::gemv's PROLOGUE: 0 v = x, 1 srms_norm(x), 2 srms_norm(x + x2), 3 x2 * srms_norm(x)
  int cpl = 0; // its CPL template argument (K / 256 for the single-row path, -chunks per thread
               // for the split path, 0 = none)
};

std::string kernelName(const Case &c) {
  return std::string("gemv_") +
         (c.gated    ? "gated"
          : c.f32out ? "f32"
                     : "bf16") +
         "_p" + std::to_string(c.prologue) +
         (c.cpl < 0 ? "_s" + std::to_string(-c.cpl) : "_c" + std::to_string(c.cpl));
}

std::string wrapper(const Case &c) {
  const char *out = c.f32out ? "float" : "bf16";
  return std::string("extern \"C\" __global__ void __launch_bounds__(256, 2)\n") + kernelName(c) +
         "(const bf16 *x, long long ldx, const bf16 *x2, long long ldx2, bf16 *sum, long long "
         "ldsum, float eps, const bf16 *w, const bf16 *w2, " +
         out +
         " *y, long long ldy, int M, int N, int K, int rowsPerCta, int stageRows, int stages, int "
         "warpsPerRow, const unsigned char *pf, long long pfBytes, const unsigned char *pf2, long "
         "long pf2Bytes) {\n  tnlm::rec::gemv<4, 8, 256, " +
         (c.gated ? "true" : "false") + ", " + std::to_string(c.prologue) + ", " + out + ", " +
         std::to_string(c.cpl) +
         ">(x, ldx, x2, ldx2, sum, ldsum, eps, w, w2, y, ldy, M, N, K, rowsPerCta, stageRows, "
         "stages, warpsPerRow, pf, pfBytes, pf2, pf2Bytes);\n}\n";
}

std::ostream &operator<<(std::ostream &os, const Case &c) { return os << c.name; }

const Case kCases[] = {
    // name            N     K     M  gated  f32    rows/CTA stage slots warps/row [prologue cpl]
    {"qkvu", 4096, 1024, 1, false, false, 32, 16, 2, 1},
    {"qkvu_m4", 4096, 1024, 4, false, false, 32, 16, 2, 1},
    {"down", 1024, 2816, 1, false, false, 8, 5, 2, 1},
    {"gated", 2816, 1024, 2, true, false, 22, 8, 3, 1},
    {"gated_m3_wraps", 2816, 1024, 3, true, false, 44, 8, 3, 1},
    {"lmhead_wraps", 1000, 1024, 4, false, true, 70, 16, 3, 1},
    {"one_row_stages", 300, 2816, 2, false, false, 20, 1, 8, 8},
    {"two_warps_per_row", 500, 4096, 1, false, false, 9, 4, 3, 2},
    {"short_rows", 48, 64, 4, false, false, 12, 8, 1, 1},
    {"gated_small", 200, 512, 4, true, false, 7, 7, 1, 1},
    // The single-row path (gemv_one, M = 1 and K = 256·CPL) at the 385M's decode shapes and
    // layouts (CudaExecutor::gemvLayout), with each prologue; and the general path's prologues
    // in the same kernels (M > 1).
    {"one_qkvu_norm", 4096, 1024, 1, false, false, 32, 16, 2, 1, 1, 4},
    {"one_qkvu_add_norm", 4096, 1024, 1, false, false, 32, 16, 2, 1, 2, 4},
    {"one_out_gate_norm", 1024, 1024, 1, false, false, 8, 8, 1, 1, 3, 4},
    {"one_gated_add_norm", 2816, 1024, 1, true, false, 22, 8, 3, 1, 2, 4},
    {"one_down", 1024, 2816, 1, false, false, 8, 5, 2, 1, 0, 11},
    {"one_lmhead_wraps", 1000, 1024, 1, false, true, 70, 16, 3, 1, 2, 4},
    {"one_row_stages_c11", 300, 2816, 1, false, false, 20, 1, 8, 8, 0, 11},
    {"general_m2_norm", 4096, 1024, 2, false, false, 32, 16, 2, 1, 1, 4},
    {"general_m3_add_norm", 2816, 1024, 3, true, false, 22, 8, 3, 1, 2, 4},
    {"general_m4_gate_norm", 1024, 1024, 4, false, false, 8, 8, 1, 1, 3, 4},
    // The split path (gemv_split, TNLM_GEMV_SPLIT=1: CPL = -chunks per thread) at the same
    // shapes: 2 groups of 128 threads at K = 1024, one group of 256 with 2 chunks for some
    // threads at K = 2816, 8 groups of one warp at K = 256; rows of a block past the stage's end,
    // stages that wrap, and M > 1 calls of the same kernels (the general path).
    {"split_qkvu_norm", 4096, 1024, 1, false, false, 32, 16, 2, 1, 1, -1},
    {"split_qkvu_add_norm", 4096, 1024, 1, false, false, 32, 16, 2, 1, 2, -1},
    {"split_out_gate_norm", 1024, 1024, 1, false, false, 8, 8, 1, 1, 3, -1},
    {"split_gated_add_norm", 2816, 1024, 1, true, false, 22, 8, 3, 1, 2, -1},
    {"split_down", 1024, 2816, 1, false, false, 8, 5, 2, 1, 0, -2},
    {"split_lmhead_wraps", 1000, 1024, 1, false, true, 70, 16, 3, 1, 2, -1},
    {"split_row_stages", 300, 2816, 1, false, false, 20, 1, 8, 8, 0, -2},
    {"split_short_rows_gated", 200, 256, 1, true, false, 7, 7, 1, 1, 3, -1},
    {"split_wide_rows", 500, 4096, 1, false, false, 9, 4, 3, 2, 1, -2},
    {"split_general_m3", 2816, 1024, 3, true, false, 22, 8, 3, 1, 2, -1},
};

Module &gemvModule() {
  static std::unique_ptr<Module> module;
  if (!module) {
    // As the emitter's default: one weight stage before the wait, the rest after the input
    // rows' loads (the single-row paths; the wrapping rings above take both branches). The
    // environment variable TNLM_GEMV_TEST_DEFINES replaces that line (e.g. "#define
    // TNLM_GEMV_PRE_STAGES 0;#define TNLM_GEMV_PRE_BYTES 8192u", ';' between lines), so that
    // the device scripts check the emitter's other orders of issue on the same cases.
    std::string defines = "#define TNLM_GEMV_PRE_STAGES 1";
    if (const char *d = std::getenv("TNLM_GEMV_TEST_DEFINES"); d && *d) {
      defines = d;
      std::replace(defines.begin(), defines.end(), ';', '\n');
    }
    std::string text =
        defines + "\n#include \"tnlm/Recurrent.cuh\"\n\nusing bf16 = __nv_bfloat16;\n";
    std::vector<std::string> names;
    for (const Case &c : kCases)
      if (std::find(names.begin(), names.end(), kernelName(c)) == names.end()) {
        names.push_back(kernelName(c));
        text += wrapper(c);
      }
    NvrtcOptions options;
    options.arch = test::deviceArch();
    options.headers = {{"tnlm/Recurrent.cuh", kRecurrentCuh}};
    CompiledKernels compiled = compileCuda(text, "gemv.cu", options);
    module = std::make_unique<Module>(gpu(), compiled.image, "gemv");
  }
  return *module;
}

class Gemv : public ::testing::TestWithParam<Case> {};

// The layer input v[m, :] of rec::gemv's prologue from x and x2, in f64 on the bf16 values, with
// `amb[m, k]`: how far the GPU's v may be from it. The norm's rstd r is f32 on the GPU: its sum
// of squares (K terms, any order) and rsqrtf are within δ = K·2^-24 + 2^-21 of the exact value
// relative, so where bf16(pre · r) differs at r(1 - δ) and r(1 + δ) the GPU may round either
// way: v is taken at r(1 - δ) and amb holds the other bf16 value's distance. Elsewhere v is exact.
struct Inputs {
  std::vector<double> v, amb;
  std::vector<uint16_t> sum; // prologue 2: bf16(x + x2), which CTA 0 writes
};
Inputs layerInput(const Case &c, const std::vector<uint16_t> &x, const std::vector<uint16_t> &x2,
                  double eps) {
  Inputs in;
  in.v.assign(size_t(c.m) * c.k, 0.0), in.amb.assign(size_t(c.m) * c.k, 0.0);
  const double delta = c.k * std::ldexp(1.0, -24) + std::ldexp(1.0, -21);
  for (int m = 0; m < c.m; ++m) {
    std::vector<double> z(c.k), pre(c.k);
    for (int k = 0; k < c.k; ++k) {
      const size_t i = size_t(m) * c.k + k;
      z[k] = bf16ToF32(x[i]);
      if (c.prologue == 2) {
        const uint16_t s = f32ToBf16(bf16ToF32(x[i]) + bf16ToF32(x2[i]));
        in.sum.push_back(s);
        z[k] = bf16ToF32(s);
      }
      pre[k] = c.prologue == 3 ? double(bf16ToF32(x2[i])) * z[k] : z[k];
    }
    if (c.prologue == 0) {
      for (int k = 0; k < c.k; ++k)
        in.v[size_t(m) * c.k + k] = pre[k];
      continue;
    }
    double ss = 0;
    for (double t : z)
      ss += t * t;
    const double r = 1.0 / std::sqrt(ss / c.k + eps);
    for (int k = 0; k < c.k; ++k) {
      const double lo = bf16ToF32(f32ToBf16(float(pre[k] * r * (1 - delta))));
      const double hi = bf16ToF32(f32ToBf16(float(pre[k] * r * (1 + delta))));
      in.v[size_t(m) * c.k + k] = lo;
      in.amb[size_t(m) * c.k + k] = std::fabs(hi - lo);
    }
  }
  return in;
}

TEST_P(Gemv, MatchesF64Reference) {
  const Case &c = GetParam();
  const bool gated = c.gated;
  const int mats = gated ? 2 : 1;
  std::mt19937 rng(1234u + static_cast<unsigned>(c.n * 7 + c.k + 1000 * c.prologue + c.m));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  auto fill = [&](size_t count, float scale) {
    std::vector<uint16_t> bits(count);
    for (auto &b : bits)
      b = f32ToBf16(scale * dist(rng));
    return bits;
  };
  const std::vector<uint16_t> x = fill(size_t(c.m) * c.k, 1.0f);
  const std::vector<uint16_t> x2 = fill(size_t(c.m) * c.k, 1.0f);
  const std::vector<uint16_t> w1 = fill(size_t(c.n) * c.k, 0.05f);
  const std::vector<uint16_t> w2 = gated ? fill(size_t(c.n) * c.k, 0.05f) : std::vector<uint16_t>();
  const float eps = 1e-5f;
  const Inputs in = layerInput(c, x, x2, eps);
  const int64_t ldy = c.n + 8; // a gap after each row, and one guard row
  const size_t outBytes = c.f32out ? 4 : 2, outCount = size_t(c.m + 1) * ldy;
  DeviceBuffer dx(x.size() * 2, "x"), dx2(x2.size() * 2, "x2"),
      dsum((size_t(c.m) + 1) * c.k * 2, "sum"), dw(w1.size() * 2, "W"),
      dw2(std::max<size_t>(w2.size(), 8) * 2, "W2"), dy(outCount * outBytes, "y");
  gpu().copyToDevice(dx.get(), x.data(), x.size() * 2, "x");
  gpu().copyToDevice(dx2.get(), x2.data(), x2.size() * 2, "x2");
  gpu().copyToDevice(dw.get(), w1.data(), w1.size() * 2, "W");
  if (gated)
    gpu().copyToDevice(dw2.get(), w2.data(), w2.size() * 2, "W2");
  gpu().fillBytes(dy.get(), 0xff, dy.size(), "y");
  gpu().fillBytes(dsum.get(), 0xff, dsum.size(), "sum");

  const long long stageBytes = (mats * c.stageRows * c.k * 2LL + 127) / 128 * 128;
  LaunchConfig config;
  config.grid.x = static_cast<unsigned>((c.n + c.rowsPerCta - 1) / c.rowsPerCta);
  config.block.x = kBlock;
  config.sharedBytes = static_cast<unsigned>(c.stages * stageBytes + c.m * c.k * 2);
  const std::string kernel = kernelName(c);
  // Each CTA also prefetches its share of a weight range into L2 (what the executor points at
  // a later GEMV's weights; here this one's own): a hint that must change nothing.
  const CUdeviceptr none = 0;
  gpu().launchWith(
      gemvModule().kernel(kernel.c_str()), config, kernel, dx.get(), (long long)c.k, dx2.get(),
      (long long)c.k, dsum.get(), (long long)c.k, eps, dw.get(), gated ? dw2.get() : dw.get(),
      dy.get(), (long long)ldy, c.m, c.n, c.k, c.rowsPerCta, c.stageRows, c.stages, c.warpsPerRow,
      dw.get(), (long long)(w1.size() * 2), gated ? dw2.get() : none, (long long)(w2.size() * 2));
  gpu().synchronize(kernel);
  std::vector<unsigned char> out(dy.size());
  gpu().copyToHost(out.data(), dy.get(), out.size(), "y");
  auto at = [&](size_t i) {
    if (c.f32out) {
      float f;
      std::memcpy(&f, out.data() + 4 * i, 4);
      return f;
    }
    uint16_t b;
    std::memcpy(&b, out.data() + 2 * i, 2);
    return bf16ToF32(b);
  };
  auto untouched = [&](size_t i) {
    for (size_t b = 0; b < outBytes; ++b)
      if (out[outBytes * i + b] != 0xff)
        return false;
    return true;
  };
  const double u23 = std::ldexp(1.0, -23), u8 = std::ldexp(1.0, -8);
  int bad = 0, gaps = 0;
  double worst = 0; // |err| / bound
  for (int m = 0; m <= c.m; ++m)
    for (int64_t n = 0; n < ldy; ++n) {
      const size_t i = size_t(m) * ldy + n;
      if (m == c.m || n >= c.n) {
        gaps += !untouched(i);
        continue;
      }
      // a, b: the sums; ea, eb: their bounds (the f32 sums' and the prologue's ambiguity)
      double a = 0, aa = 0, ea = 0, b = 0, ba = 0, eb = 0;
      for (int k = 0; k < c.k; ++k) {
        const size_t j = size_t(m) * c.k + k;
        const double v = in.v[j], w = bf16ToF32(w1[size_t(n) * c.k + k]);
        a += v * w, aa += std::fabs(v * w), ea += in.amb[j] * std::fabs(w);
        if (gated) {
          const double w_ = bf16ToF32(w2[size_t(n) * c.k + k]);
          b += v * w_, ba += std::fabs(v * w_), eb += in.amb[j] * std::fabs(w_);
        }
      }
      ea += c.k * u23 * aa, eb += c.k * u23 * ba;
      double want = a, bound = ea;
      if (gated) {
        const double ra = bf16ToF32(f32ToBf16(float(a))), rb = bf16ToF32(f32ToBf16(float(b)));
        want = bf16ToF32(f32ToBf16(float(ra * rb)));
        bound = 3 * u8 * std::fabs(a * b) + ea * std::fabs(b) + eb * std::fabs(a) + ea * eb;
      }
      if (!c.f32out)
        bound += u8 * std::fabs(want);
      bound += 1e-30;
      const double got = at(i), err = std::fabs(got - want);
      worst = std::max(worst, err / bound);
      if (!(err <= bound) && bad++ < 5)
        ADD_FAILURE() << c.name << ": y[" << m << ", " << n << "] = " << got << ", want " << want
                      << " (bound " << bound << ")";
    }
  EXPECT_EQ(bad, 0) << c.name;
  EXPECT_EQ(gaps, 0) << c.name << ": elements outside the result were written";
  // Prologue 2 writes s = bf16(x + x2) (the residual stream's next value) from CTA 0, exactly.
  std::vector<uint16_t> sum(size_t(c.m + 1) * c.k);
  gpu().copyToHost(sum.data(), dsum.get(), sum.size() * 2, "sum");
  int sumBad = 0;
  for (size_t i = 0; i < sum.size(); ++i) {
    const uint16_t want = c.prologue == 2 && i < in.sum.size() ? in.sum[i] : uint16_t(0xffff);
    sumBad += sum[i] != want;
  }
  EXPECT_EQ(sumBad, 0) << c.name
                       << ": the sum row (prologue 2) is not bf16(x + x2), or written "
                          "where no sum is";
  std::printf("%-22s worst |err| / bound %.3f\n", c.name, worst);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Gemv, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case> &info) {
                           return std::string(info.param.name);
                         });

} // namespace
} // namespace tnlm::cuda
