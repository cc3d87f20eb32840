//===- GemvGpuTest.cpp - the decode GEMV (rec::gemv) against an f64 reference ---===//
//
// codegen/cuda/Recurrent.cuh's rec::gemv, wrapped as the emitter wraps it (tnlm_gemv_<out>_p0:
// MAXM 4, 8 stages at most, 256 threads; the executor's parameter list), NVRTC-compiled for the
// device against the header's text at build time (Gemv.cmake embeds it), on seeded random bf16
// inputs v [M, K] and weights W [N, K] (and W2, gated). The cases cover the 385M's decode
// shapes (qkvu 4096 x 1024, the gated pair 2816 x 1024, the down projection 1024 x 2816, an f32
// lm head) with the executor's layouts and others: rows per CTA that do not fill the last
// stage or CTA, rings that wrap around (more stages than slots, 1-row stages), 2-8 warps per
// row over slices of K, and M = 1 to 4 slots.
//
// Reference: y[m, n] = Σ_k v[m, k] W[n, k] in f64 on the same bf16 values. Bound: the GPU adds
// exact products (bf16 x bf16 fits in f32) in f32 over K terms, in some order: |y_gpu - y| <=
// K · 2^-23 · Σ_k |v w| (the worst case of K roundings of 2^-24 each, doubled for the
// ordering of the lanes' and warps' partial sums), plus, for a bf16 result, its one rounding: 2^-8
// · |y|. A row computed twice, a K tile skipped or taken twice (1/64 of the terms for K = 1024), a
// slot's column swapped or a stage read before it lands fail by far more. Gated: y =
// bf16(a)·bf16(b) rounded to bf16, where a GPU a or b one bf16 step from the reference's (a value
// near a rounding boundary) moves the product by 2^-8 relative: bound 3 · 2^-8 · |a b| plus the f32
// terms times the other factor. Every element outside the M x N result (a guard row, the row
// stride's gap) must keep its sentinel.
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

constexpr int kMaxM = 4, kMaxStages = 8, kBlock = 256;

std::string wrapper(const char *name, bool gated, const char *out) {
  return std::string("extern \"C\" __global__ void __launch_bounds__(256, 2)\n") + name +
         "(const bf16 *x, long long ldx, const bf16 *x2, long long ldx2, bf16 *sum, long long "
         "ldsum, float eps, const bf16 *w, const bf16 *w2, " +
         out +
         " *y, long long ldy, int M, int N, int K, int rowsPerCta, int stageRows, int stages, int "
         "warpsPerRow) {\n  tnlm::rec::gemv<4, 8, 256, " +
         (gated ? "true" : "false") + ", 0, " + out +
         ">(x, ldx, x2, ldx2, sum, ldsum, eps, w, w2, y, ldy, M, N, K, rowsPerCta, stageRows, "
         "stages, warpsPerRow);\n}\n";
}

Module &gemvModule() {
  static std::unique_ptr<Module> module;
  if (!module) {
    const std::string text = "#include \"tnlm/Recurrent.cuh\"\n\nusing bf16 = __nv_bfloat16;\n" +
                             wrapper("gemv_bf16", false, "bf16") +
                             wrapper("gemv_f32", false, "float") +
                             wrapper("gemv_gated", true, "bf16");
    NvrtcOptions options;
    options.arch = test::deviceArch();
    options.headers = {{"tnlm/Recurrent.cuh", kRecurrentCuh}};
    CompiledKernels compiled = compileCuda(text, "gemv.cu", options);
    module = std::make_unique<Module>(gpu(), compiled.image, "gemv");
  }
  return *module;
}

struct Case {
  const char *name;
  int n, k, m;
  bool gated, f32out;
  int rowsPerCta, stageRows, stages, warpsPerRow;
};

std::ostream &operator<<(std::ostream &os, const Case &c) { return os << c.name; }

const Case kCases[] = {
    // name            N     K     M  gated  f32    rows/CTA stage slots warps/row
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
};

class Gemv : public ::testing::TestWithParam<Case> {};

TEST_P(Gemv, MatchesF64Reference) {
  const Case &c = GetParam();
  const bool gated = c.gated;
  const int mats = gated ? 2 : 1;
  std::mt19937 rng(1234u + static_cast<unsigned>(c.n * 7 + c.k));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  auto fill = [&](size_t count, float scale) {
    std::vector<uint16_t> bits(count);
    for (auto &b : bits)
      b = f32ToBf16(scale * dist(rng));
    return bits;
  };
  const std::vector<uint16_t> v = fill(size_t(c.m) * c.k, 1.0f);
  const std::vector<uint16_t> w1 = fill(size_t(c.n) * c.k, 0.05f);
  const std::vector<uint16_t> w2 = gated ? fill(size_t(c.n) * c.k, 0.05f) : std::vector<uint16_t>();
  const int64_t ldy = c.n + 8; // a gap after each row, and one guard row
  const size_t outBytes = c.f32out ? 4 : 2, outCount = size_t(c.m + 1) * ldy;
  DeviceBuffer dv(v.size() * 2, "v"), dw(w1.size() * 2, "W"),
      dw2(std::max<size_t>(w2.size(), 8) * 2, "W2"), dy(outCount * outBytes, "y");
  gpu().copyToDevice(dv.get(), v.data(), v.size() * 2, "v");
  gpu().copyToDevice(dw.get(), w1.data(), w1.size() * 2, "W");
  if (gated)
    gpu().copyToDevice(dw2.get(), w2.data(), w2.size() * 2, "W2");
  gpu().fillBytes(dy.get(), 0xff, dy.size(), "y");

  const long long stageBytes = (mats * c.stageRows * c.k * 2LL + 127) / 128 * 128;
  LaunchConfig config;
  config.grid.x = static_cast<unsigned>((c.n + c.rowsPerCta - 1) / c.rowsPerCta);
  config.block.x = kBlock;
  config.sharedBytes = static_cast<unsigned>(c.stages * stageBytes + c.m * c.k * 2);
  const char *kernel = gated ? "gemv_gated" : c.f32out ? "gemv_f32" : "gemv_bf16";
  const CUdeviceptr none = 0;
  gpu().launchWith(gemvModule().kernel(kernel), config, kernel, dv.get(), (long long)c.k, none, 0LL,
                   none, 0LL, 0.0f, dw.get(), gated ? dw2.get() : dw.get(), dy.get(),
                   (long long)ldy, c.m, c.n, c.k, c.rowsPerCta, c.stageRows, c.stages,
                   c.warpsPerRow);
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
      double a = 0, aa = 0, b = 0, ba = 0;
      for (int k = 0; k < c.k; ++k) {
        const double x = bf16ToF32(v[size_t(m) * c.k + k]);
        const double p = x * bf16ToF32(w1[size_t(n) * c.k + k]);
        a += p, aa += std::fabs(p);
        if (gated) {
          const double q = x * bf16ToF32(w2[size_t(n) * c.k + k]);
          b += q, ba += std::fabs(q);
        }
      }
      double want = a, bound = c.k * u23 * aa;
      if (gated) {
        const double ra = bf16ToF32(f32ToBf16(float(a))), rb = bf16ToF32(f32ToBf16(float(b)));
        want = bf16ToF32(f32ToBf16(float(ra * rb)));
        bound = 3 * u8 * std::fabs(a * b) + c.k * u23 * (aa * std::fabs(b) + ba * std::fabs(a));
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
  std::printf("%-22s worst |err| / bound %.3f\n", c.name, worst);
}

INSTANTIATE_TEST_SUITE_P(Shapes, Gemv, ::testing::ValuesIn(kCases),
                         [](const ::testing::TestParamInfo<Case> &info) {
                           return std::string(info.param.name);
                         });

} // namespace
} // namespace tnlm::cuda
