//===- BackwardGpuTest.cpp - the backward and optimizer CUDA templates vs the CPU -===//
//
// Every template of codegen/cuda/Backward.cuh (srms_norm_grad, add_srms_norm_grad, silu_grad,
// mul_grad, embedding_grad, cross_entropy_grad / loss_total, sum_squares_chunks /
// sum_squares_total, adamw; the gated linear's backward with cuBLASLt) in extern "C"
// wrappers (BackwardWrappers.h), NVRTC-compiled for the device against the header's text
// at build time (Backward.cmake embeds it; the tests run in tnlm-gpu-rowkernels), and compared with
// the CPU backend's kernels (runtime/cpu/Backward.h) on the same inputs: bf16 operands are rounded
// first and the CPU runs on their f32 values. Row strides are larger than the columns; every
// output's gaps and one guard row hold a NaN pattern that must survive (a write outside the view
// fails).
//
// Tolerances (|gpu − ref| <= rel·|ref| + abs):
//   bf16 outputs: rel 2^-8 (one round to nearest of an fp32 value: at most 0.996·2^-8·|v|,
//   RowKernelGpuTest.cpp), f32 outputs: rel 2^-20; plus, for the norms' backward, abs =
//   2^-14 · r · (|dy| + |x̂|·M), M = r·Σ|x·dy|/COLS, r = rsqrt(mean(x²) + eps): the GPU sums
//   Σx² and Σx·dy in fp32 (at most ~30 additions deep at 4096 columns: a relative error of
//   the sums within 30·2^-24 ≈ 1.8e-6 of Σ|terms|) where the CPU uses f64, and rsqrtf is 2
//   ulp; the two terms r·dy and x·r³·Σx·dy/COLS of the result each carry ≤ ~4e-6 of their
//   size, so 2^-14 ≈ 6.1e-5 is ~15x that, while a wrong term is O(1) of them.
//   SiLU: rel 2^-8 (bf16) or 2^-20 (f32), abs 2^-18·|dy|·(1 + |x|): expf's 2 ulp and a fused
//   multiply-add in 1 + x·(1 − σ) (cancelling near x ≈ −1.28).
//   cross entropy: dlogits rel 2^-8 (bf16) or 2^-20 (f32) plus abs k·2^-19 (k = 1/counted):
//   expf is 2 ulp where the CPU's std::exp is correctly rounded, so e, Σe and e/Σe carry ≤ ~5e-7
//   relative, which at the label (k·(e/Σe − 1), cancelling where p ≈ 1) is ≤ 5e-7·k absolute;
//   the mean loss within 4e-6·(1 + |loss|) (log Σe to ~5e-7 per row).
//   mul_grad, embedding_grad, adamw: bit for bit (one IEEE operation per step on both sides:
//   the templates use no fused multiply-add there; adamw up to the f64 pow of the bias
//   corrections, CUDA's vs glibc's, which moves the f32 step only when a double lies within
//   ~1e-15 of an f32 rounding boundary).
//   sum of squares: f64 sums in another order: relative 1e-12 on the total; the f32 norm
//   within one ulp.
//
//===----------------------------------------------------------------------===//
#include "runtime/CpuExecutor.h"
#include "runtime/DType.h"
#include "runtime/EmbeddingSegments.h"
#include "runtime/cpu/Backward.h"
#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/Gemm.h"
#include "runtime/cuda/LmHeadLoss.h"
#include "runtime/cuda/Nvrtc.h"
#include "runtime/schema/tnlm_generated.h"
#include "test/unit/cuda/BackwardWrappers.h"
#include "test/unit/cuda/GpuTest.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <string>
#include <vector>

namespace tnlm::cuda {
namespace {

using test::gpu;

// codegen/cuda/Backward.cuh at build time (Backward.cmake).
const char *const kBackwardCuh =
#include "BackwardCuh.inc"
    ;

Module &module() {
  static std::unique_ptr<Module> m;
  if (!m) {
    NvrtcOptions options;
    options.arch = test::deviceArch();
    options.headers = {{"tnlm/Backward.cuh", kBackwardCuh}};
    CompiledKernels compiled = compileCuda(test::backwardWrappers(), "backward.cu", options);
    m = std::make_unique<Module>(gpu(), compiled.image, "backward");
  }
  return *m;
}

template <typename... Args>
void launch(const std::string &kernel, Dim3 grid, unsigned block, const Args &...args) {
  LaunchConfig config{grid, {block}, 0};
  gpu().launchWith(module().kernel(kernel), config, kernel, args...);
}

//===-- Host and device matrices ---------------------------------------------===//

constexpr uint16_t kBf16Guard = 0xffff;    // bf16 NaN
constexpr uint32_t kF32Guard = 0x7fc0dead; // an f32 NaN pattern

/// A host matrix [rows, ld] of T (uint16_t = bf16 bits, or float), gaps holding the guard.
template <typename T> struct Mat {
  int64_t rows = 0, cols = 0, ld = 0;
  std::vector<T> data;
  std::vector<float> f32() const {
    std::vector<float> out(data.size());
    for (size_t i = 0; i < data.size(); ++i) {
      if constexpr (sizeof(T) == 2)
        out[i] = bf16ToF32(data[i]);
      else
        out[i] = data[i];
    }
    return out;
  }
};

template <typename T> T guard() {
  if constexpr (sizeof(T) == 2) {
    return kBf16Guard;
  } else {
    float f;
    std::memcpy(&f, &kF32Guard, 4);
    return f;
  }
}
template <typename T> bool isGuard(T v) {
  if constexpr (sizeof(T) == 2) {
    return v == kBf16Guard;
  } else {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return u == kF32Guard;
  }
}

/// Uniform in [lo, hi) times 2^k per row, k uniform in [-scaleExp, scaleExp] (bf16-rounded
/// for bf16 matrices).
template <typename T>
Mat<T> randomMat(int64_t rows, int64_t cols, int64_t ld, float lo, float hi, unsigned seed,
                 int scaleExp = 0) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::uniform_int_distribution<int> exps(-scaleExp, scaleExp);
  Mat<T> m{rows, cols, ld, std::vector<T>(static_cast<size_t>(rows * ld), guard<T>())};
  for (int64_t r = 0; r < rows; ++r) {
    const float scale = std::ldexp(1.0f, exps(rng));
    for (int64_t c = 0; c < cols; ++c) {
      const float v = scale * dist(rng);
      if constexpr (sizeof(T) == 2)
        m.data[r * ld + c] = f32ToBf16(v);
      else
        m.data[r * ld + c] = v;
    }
  }
  return m;
}

/// A device copy of m (or of an all-guard matrix) followed by one guard row.
template <typename T> class Dev {
public:
  explicit Dev(const Mat<T> &m)
      : m_(m), buffer_(static_cast<size_t>((m.rows + 1) * m.ld) * sizeof(T), "test matrix") {
    std::vector<T> all(m.data);
    all.resize(static_cast<size_t>((m.rows + 1) * m.ld), guard<T>());
    gpu().copyToDevice(buffer_.get(), all.data(), all.size() * sizeof(T), "test matrix");
    gpu().synchronize("test matrix");
  }
  CUdeviceptr ptr() const { return buffer_.get(); }
  long long ld() const { return m_.ld; }
  /// The rows; fails on a written gap or guard row.
  std::vector<T> download(const std::string &what) const {
    std::vector<T> out(static_cast<size_t>((m_.rows + 1) * m_.ld));
    gpu().copyToHost(out.data(), buffer_.get(), out.size() * sizeof(T), what);
    int64_t bad = 0;
    for (int64_t r = 0; r <= m_.rows; ++r)
      for (int64_t c = r < m_.rows ? m_.cols : 0; c < m_.ld; ++c)
        if (!isGuard(out[r * m_.ld + c]))
          ++bad;
    EXPECT_EQ(bad, 0) << what << ": writes outside the view";
    out.resize(static_cast<size_t>(m_.rows * m_.ld));
    return out;
  }

private:
  Mat<T> m_;
  DeviceBuffer buffer_;
};

template <typename T> Mat<T> outputMat(int64_t rows, int64_t cols, int64_t ld) {
  return Mat<T>{rows, cols, ld, std::vector<T>(static_cast<size_t>(rows * ld), guard<T>())};
}

// An output operand: random when the kernel accumulates into it, else all guard.
template <typename T>
Mat<T> outputFor(bool accumulate, int64_t rows, int64_t cols, int64_t ld, unsigned seed) {
  return accumulate ? randomMat<T>(rows, cols, ld, -1, 1, seed) : outputMat<T>(rows, cols, ld);
}
// The CPU reference's starting values for an output: its elements, 0 in the guard's place.
template <typename T> std::vector<float> startOf(const Mat<T> &m) {
  std::vector<float> out = m.f32();
  for (float &v : out)
    if (std::isnan(v))
      v = 0;
  return out;
}

template <typename T> double value(T v) {
  if constexpr (sizeof(T) == 2)
    return bf16ToF32(v);
  else
    return v;
}

/// |gpu − ref| <= rel·|ref| + absTerm(r, c) over [rows, cols] (gpu ld ldg, ref ld ldr).
template <typename T, typename AbsFn>
void expectNear(const std::string &what, const std::vector<T> &got, int64_t ldg,
                const std::vector<float> &ref, int64_t ldr, int64_t rows, int64_t cols, double rel,
                AbsFn absTerm) {
  int64_t bad = 0;
  double worst = 0;
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double g = value(got[r * ldg + c]), w = ref[r * ldr + c];
      const double err = std::fabs(g - w), bound = rel * std::fabs(w) + absTerm(r, c);
      if (!(err <= bound)) {
        if (bad++ < 5)
          ADD_FAILURE() << what << " (" << r << ", " << c << "): gpu " << g << ", want " << w
                        << ", |diff| " << err << " > " << bound;
        continue;
      }
      if (bound > 0)
        worst = std::max(worst, err / bound);
    }
  EXPECT_EQ(bad, 0) << what << ": elements outside the tolerance";
  std::printf("  %-40s max |diff|/bound %.3f\n", what.c_str(), worst);
}

template <typename T> constexpr double relOf() {
  return sizeof(T) == 2 ? 1.0 / 256 : 1.0 / (1 << 20);
}
template <typename T> const char *typeName() { return sizeof(T) == 2 ? "bf16" : "float"; }

constexpr float kEps = 1e-5f;

/// The norms' backward bound (header comment) for row r of x and dy.
std::vector<double> normAbs(const std::vector<float> &x, int64_t ldx, const std::vector<float> &dy,
                            int64_t lddy, int64_t rows, int64_t cols) {
  std::vector<double> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r) {
    double ss = 0, sd = 0;
    for (int64_t c = 0; c < cols; ++c) {
      ss += double(x[r * ldx + c]) * x[r * ldx + c];
      sd += std::fabs(double(x[r * ldx + c]) * dy[r * lddy + c]);
    }
    const double rs = 1.0 / std::sqrt(ss / cols + kEps), m = rs * sd / cols;
    for (int64_t c = 0; c < cols; ++c)
      out[r * cols + c] = std::ldexp(1.0, -14) * rs *
                          (std::fabs(dy[r * lddy + c]) + std::fabs(x[r * ldx + c]) * rs * m);
  }
  return out;
}

struct Shape {
  int cols;
  int64_t rows;
};
// gtest's "# GetParam() = ..." (and so the ctest names) without the struct's padding bytes.
void PrintTo(const Shape &s, std::ostream *os) { *os << "c" << s.cols << "_r" << s.rows; }
class BackwardRows : public ::testing::TestWithParam<Shape> {
protected:
  int cols() const { return GetParam().cols; }
  int64_t rows() const { return GetParam().rows; }
  unsigned block() const { return cols() == 100 ? 32 : 256; }
  std::string name(const char *op, const char *type = nullptr) const {
    std::string n = std::string(op) + "_c" + std::to_string(cols());
    return type ? n + "_" + type : n;
  }
};

// bf16 dy → bf16 dx (overwrite), and f32 dy → f32 dx accumulated (ACC).
template <typename T> void srmsNormGradCase(const BackwardRows &t, const std::string &kernel) {
  const int64_t rows = t.GetParam().rows, cols = t.GetParam().cols;
  Mat<uint16_t> x = randomMat<uint16_t>(rows, cols, cols + 8, -1, 1, 1, 6);
  std::fill(x.data.begin(), x.data.begin() + cols, 0); // row 0 all zero: r = eps^-1/2
  Mat<T> dy = randomMat<T>(rows, cols, cols + 16, -1, 1, 2, 3);
  const bool acc = sizeof(T) == 4;
  Mat<T> dx = outputFor<T>(acc, rows, cols, cols + 24, 3);
  Dev<uint16_t> dX(x);
  Dev<T> dDy(dy), dDx(dx);
  launch(kernel, {static_cast<unsigned>(rows)}, t.GetParam().cols == 100 ? 32 : 256, dX.ptr(),
         dX.ld(), dDy.ptr(), dDy.ld(), dDx.ptr(), dDx.ld(), kEps);
  const std::vector<T> got = dDx.download(kernel);
  const std::vector<float> xf = x.f32(), dyf = dy.f32();
  std::vector<float> ref = startOf(dx);
  cpu::srmsNormGrad(xf.data(), x.ld, dyf.data(), dy.ld, rows, cols, kEps, ref.data(), dx.ld, acc);
  const std::vector<double> abs = normAbs(xf, x.ld, dyf, dy.ld, rows, cols);
  expectNear(kernel, got, dx.ld, ref, dx.ld, rows, cols, relOf<T>(),
             [&](int64_t r, int64_t c) { return abs[r * cols + c]; });
}

TEST_P(BackwardRows, SrmsNormGrad) {
  srmsNormGradCase<uint16_t>(*this, name("srms_norm_grad", "bf16"));
  srmsNormGradCase<float>(*this, name("srms_norm_grad", "float"));
}

template <typename T> void addSrmsNormGradCase(const BackwardRows &t, const std::string &kernel) {
  const int64_t rows = t.GetParam().rows, cols = t.GetParam().cols;
  for (int mode = 0; mode < 3; ++mode) { // 0: dsum, 1: no dsum, 2: g written over dsum
    SCOPED_TRACE(mode);
    Mat<uint16_t> sum = randomMat<uint16_t>(rows, cols, cols + 8, -4, 4, 11 + mode, 4);
    Mat<T> dy = randomMat<T>(rows, cols, cols + 16, -1, 1, 12 + mode, 2);
    Mat<float> dsum = randomMat<float>(rows, cols, cols + 24, -2, 2, 13 + mode, 2);
    Mat<float> g = outputMat<float>(rows, cols, cols + 24);
    Dev<uint16_t> dS(sum);
    Dev<T> dDy(dy);
    Dev<float> dDsum(dsum), dG(g);
    const Dev<float> &out = mode == 2 ? dDsum : dG;
    launch(kernel, {static_cast<unsigned>(rows)}, cols == 100 ? 32 : 256, dS.ptr(), dS.ld(),
           mode == 1 ? CUdeviceptr(0) : dDsum.ptr(), dDsum.ld(), dDy.ptr(), dDy.ld(), out.ptr(),
           out.ld(), kEps);
    const std::vector<float> got = out.download(kernel);
    const std::vector<float> sf = sum.f32(), dyf = dy.f32(), dsf = dsum.f32();
    std::vector<float> ref(static_cast<size_t>(rows * (cols + 24)));
    cpu::addSrmsNormGrad(sf.data(), sum.ld, mode == 1 ? nullptr : dsf.data(), dsum.ld, dyf.data(),
                         dy.ld, rows, cols, kEps, ref.data(), cols + 24);
    const std::vector<double> abs = normAbs(sf, sum.ld, dyf, dy.ld, rows, cols);
    expectNear(kernel + (mode == 1   ? " (no dsum)"
                         : mode == 2 ? " (in place)"
                                     : ""),
               got, cols + 24, ref, cols + 24, rows, cols, relOf<float>(),
               [&](int64_t r, int64_t c) { return abs[r * cols + c]; });
  }
}

TEST_P(BackwardRows, AddSrmsNormGrad) {
  addSrmsNormGradCase<uint16_t>(*this, name("add_srms_norm_grad", "bf16"));
  addSrmsNormGradCase<float>(*this, name("add_srms_norm_grad", "float"));
}

template <typename T> void siluGradCase(const BackwardRows &t, const std::string &kernel) {
  const int64_t rows = t.GetParam().rows, cols = t.GetParam().cols;
  // x over [-100, 100): e = exp(-x) overflows to inf below -88.7 (σ = 0 there).
  Mat<uint16_t> x = randomMat<uint16_t>(rows, cols, cols + 8, -100, 100, 21, 0);
  for (int64_t r = 1; r < rows; r += 2) // odd rows near the cancellation at x ≈ -1.28
    for (int64_t c = 0; c < cols; ++c)
      x.data[r * x.ld + c] = f32ToBf16(-1.4f + 0.25f * float(c % 64) / 64.0f);
  Mat<T> dy = randomMat<T>(rows, cols, cols + 16, -1, 1, 22, 2);
  const bool acc = sizeof(T) == 4;
  Mat<T> dx = outputFor<T>(acc, rows, cols, cols + 24, 23);
  Dev<uint16_t> dX(x);
  Dev<T> dDy(dy), dDx(dx);
  launch(kernel, {static_cast<unsigned>(rows)}, cols == 100 ? 32 : 256, dX.ptr(), dX.ld(),
         dDy.ptr(), dDy.ld(), dDx.ptr(), dDx.ld());
  const std::vector<T> got = dDx.download(kernel);
  const std::vector<float> xf = x.f32(), dyf = dy.f32();
  std::vector<float> ref = startOf(dx);
  cpu::siluGrad(xf.data(), x.ld, dyf.data(), dy.ld, rows, cols, ref.data(), dx.ld, acc);
  expectNear(kernel, got, dx.ld, ref, dx.ld, rows, cols, relOf<T>(), [&](int64_t r, int64_t c) {
    return std::ldexp(1.0, -18) * std::fabs(dyf[r * dy.ld + c]) * (1 + std::fabs(xf[r * x.ld + c]));
  });
}

TEST_P(BackwardRows, SiluGrad) {
  siluGradCase<uint16_t>(*this, name("silu_grad", "bf16"));
  siluGradCase<float>(*this, name("silu_grad", "float"));
}

TEST_P(BackwardRows, MulGradIsBitExact) {
  Mat<uint16_t> a = randomMat<uint16_t>(rows(), cols(), cols() + 8, -3, 3, 31, 4);
  Mat<uint16_t> b = randomMat<uint16_t>(rows(), cols(), cols() + 16, -3, 3, 32, 4);
  Mat<uint16_t> dy = randomMat<uint16_t>(rows(), cols(), cols() + 24, -1, 1, 33, 4);
  Dev<uint16_t> dA(a), dB(b), dDy(dy), dDa(outputMat<uint16_t>(rows(), cols(), cols() + 32)),
      dDb(outputMat<uint16_t>(rows(), cols(), cols() + 40));
  launch(name("mul_grad"), {static_cast<unsigned>(rows())}, block(), dA.ptr(), dA.ld(), dB.ptr(),
         dB.ld(), dDy.ptr(), dDy.ld(), dDa.ptr(), dDa.ld(), dDb.ptr(), dDb.ld());
  const std::vector<uint16_t> da = dDa.download("mul_grad da"), db = dDb.download("mul_grad db");
  int64_t bad = 0;
  for (int64_t r = 0; r < rows(); ++r)
    for (int64_t c = 0; c < cols(); ++c) {
      const float g = bf16ToF32(dy.data[r * dy.ld + c]);
      bad += da[r * (cols() + 32) + c] != f32ToBf16(g * bf16ToF32(b.data[r * b.ld + c]));
      bad += db[r * (cols() + 40) + c] != f32ToBf16(g * bf16ToF32(a.data[r * a.ld + c]));
    }
  EXPECT_EQ(bad, 0) << "mul_grad: elements not bf16(dy * b), bf16(dy * a)";
}

INSTANTIATE_TEST_SUITE_P(Shapes, BackwardRows,
                         ::testing::Values(Shape{100, 1}, Shape{100, 37}, Shape{768, 300},
                                           Shape{4096, 1}, Shape{4096, 64}),
                         [](const ::testing::TestParamInfo<Shape> &i) {
                           return "c" + std::to_string(i.param.cols) + "_r" +
                                  std::to_string(i.param.rows);
                         });

//===-- The gated linear's backward (SGLU) ---------------------------------------===//

// tnlm.gated_linear_grad composed as the train step runs it on the GPU: a = x·W1ᵀ, b = x·W2ᵀ
// recomputed (cuBLASLt, bf16), mul_grad (da = dy ⊙ b, db = dy ⊙ a, bf16), dx = da·W1 + db·W2
// (two Gemm::gradInput, the second accumulating, f32), dW1 = daᵀx, dW2 = dbᵀx (the executor
// runs each pair as one GEMM where W1, W2 and dW1, dW2 are adjacent: not composed here)
// (Gemm::gradWeight, f32), against cpu::gatedLinearGrad (all f32). The GPU rounds a, b, da and
// db to bf16 (2^-9 relative each, and da carries b's), so every output is within
// 2^-7·S + 3·K·2^-24·S of the CPU's, S = Σ|terms| of its sum (computed here from the CPU's
// a, b, da, db), K the summed length; a wrong operand or transpose is O(|dx|) off.
// Stacked (the executor's layout where W2 follows W1 and dW2 follows dW1): a | b and da | db as
// the column halves of one [rows, 2F] matrix, W and dW as one [2F, in] matrix each, so the pair
// is one GEMM each way: [a b] = x·[W1; W2]ᵀ, dx = [da db]·[W1; W2] (K = 2F), [dW1; dW2] =
// [da db]ᵀ·x; the same bounds.
class BackwardGatedLinear : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(Layout, BackwardGatedLinear, ::testing::Values(false, true),
                         [](const auto &info) { return info.param ? "Stacked" : "Separate"; });

TEST_P(BackwardGatedLinear, MatchesCpu) {
  const bool stacked = GetParam();
  const int64_t rows = 130, in = 256, F = 768; // mul_grad_c768
  Mat<uint16_t> x = randomMat<uint16_t>(rows, in, in, -1, 1, 61);
  Mat<uint16_t> w1 = randomMat<uint16_t>(F, in, in, -0.1f, 0.1f, 62);
  Mat<uint16_t> w2 = randomMat<uint16_t>(F, in, in, -0.1f, 0.1f, 63);
  Mat<uint16_t> dy = randomMat<uint16_t>(rows, F, F, -1, 1, 64);
  static Gemm gemm(gpu());
  std::vector<float> gotDx, gotDw1, gotDw2;
  Dev<uint16_t> dX(x), dDy(dy);
  if (!stacked) {
    Dev<uint16_t> dW1(w1), dW2(w2);
    Dev<uint16_t> dA(outputMat<uint16_t>(rows, F, F)), dB(outputMat<uint16_t>(rows, F, F)),
        dDa(outputMat<uint16_t>(rows, F, F)), dDb(outputMat<uint16_t>(rows, F, F));
    Dev<float> dDx(outputMat<float>(rows, in, in)), dDw1(outputMat<float>(F, in, in)),
        dDw2(outputMat<float>(F, in, in));
    const GemmShape shape{rows, in, F, in, in, F};
    gemm.linear(GemmType::Bf16, shape, dX.ptr(), dW1.ptr(), dA.ptr(), "a = x W1^T");
    gemm.linear(GemmType::Bf16, shape, dX.ptr(), dW2.ptr(), dB.ptr(), "b = x W2^T");
    launch("mul_grad_c768", {static_cast<unsigned>(rows)}, 256, dA.ptr(), dA.ld(), dB.ptr(),
           dB.ld(), dDy.ptr(), dDy.ld(), dDa.ptr(), dDa.ld(), dDb.ptr(), dDb.ld());
    gemm.gradInput(GemmType::Bf16F32Out, shape, dDa.ptr(), dW1.ptr(), dDx.ptr(), "dx = da W1");
    gemm.gradInput(GemmType::Bf16F32Out, shape, dDb.ptr(), dW2.ptr(), dDx.ptr(), "dx += db W2",
                   1.0f, 1.0f);
    gemm.gradWeight(GemmType::Bf16F32Out, shape, dDa.ptr(), dX.ptr(), dDw1.ptr(), "dW1");
    gemm.gradWeight(GemmType::Bf16F32Out, shape, dDb.ptr(), dX.ptr(), dDw2.ptr(), "dW2");
    gotDx = dDx.download("dx"), gotDw1 = dDw1.download("dW1"), gotDw2 = dDw2.download("dW2");
  } else {
    Mat<uint16_t> w12{2 * F, in, in, w1.data};
    w12.data.insert(w12.data.end(), w2.data.begin(), w2.data.end());
    Dev<uint16_t> dW12(w12), dAb(outputMat<uint16_t>(rows, 2 * F, 2 * F)),
        dDadb(outputMat<uint16_t>(rows, 2 * F, 2 * F));
    Dev<float> dDx(outputMat<float>(rows, in, in)), dDw12(outputMat<float>(2 * F, in, in));
    const GemmShape pair{rows, in, 2 * F, in, in, 2 * F};
    gemm.linear(GemmType::Bf16, pair, dX.ptr(), dW12.ptr(), dAb.ptr(), "[a b] = x [W1; W2]^T");
    const CUdeviceptr half = CUdeviceptr(F * 2);
    launch("mul_grad_c768", {static_cast<unsigned>(rows)}, 256, dAb.ptr(), dAb.ld(),
           dAb.ptr() + half, dAb.ld(), dDy.ptr(), dDy.ld(), dDadb.ptr(), dDadb.ld(),
           dDadb.ptr() + half, dDadb.ld());
    gemm.gradInput(GemmType::Bf16F32Out, pair, dDadb.ptr(), dW12.ptr(), dDx.ptr(),
                   "dx = [da db] [W1; W2]");
    gemm.gradWeight(GemmType::Bf16F32Out, pair, dDadb.ptr(), dX.ptr(), dDw12.ptr(), "[dW1; dW2]");
    gotDx = dDx.download("dx");
    const std::vector<float> dw = dDw12.download("[dW1; dW2]");
    gotDw1.assign(dw.begin(), dw.begin() + F * in);
    gotDw2.assign(dw.begin() + F * in, dw.end());
  }

  const std::vector<float> xf = x.f32(), w1f = w1.f32(), w2f = w2.f32(), dyf = dy.f32();
  std::vector<float> dx(size_t(rows * in)), dw1(size_t(F * in)), dw2(size_t(F * in));
  cpu::gatedLinearGrad(xf.data(), rows, in, in, w1f.data(), w2f.data(), F, dyf.data(), F, dx.data(),
                       in, dw1.data(), dw2.data());
  // The CPU's a, b, da, db (f32) for the sizes of the terms.
  std::vector<float> da(size_t(rows * F)), db(size_t(rows * F));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t f = 0; f < F; ++f) {
      float a = 0, b = 0;
      for (int64_t k = 0; k < in; ++k)
        a += xf[r * in + k] * w1f[f * in + k], b += xf[r * in + k] * w2f[f * in + k];
      da[r * F + f] = dyf[r * F + f] * b, db[r * F + f] = dyf[r * F + f] * a;
    }
  const double u = std::ldexp(1.0, -24);
  auto check = [&](const char *what, const std::vector<float> &got, const std::vector<float> &ref,
                   int64_t n, int64_t m, int64_t K, auto termSum) {
    int64_t bad = 0;
    double worst = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) {
        const double S = termSum(i, j), bound = std::ldexp(S, -7) + 3 * double(K) * u * S + 1e-30;
        const double err = std::fabs(double(got[i * m + j]) - ref[i * m + j]);
        if (!(err <= bound) && bad++ < 3)
          ADD_FAILURE() << what << "[" << i << ", " << j << "]: gpu " << got[i * m + j] << ", cpu "
                        << ref[i * m + j] << " (bound " << bound << ")";
        worst = std::max(worst, err / bound);
      }
    EXPECT_EQ(bad, 0) << what;
    std::printf("  gated linear backward %s: max |diff|/bound %.3f\n", what, worst);
  };
  check("dx", gotDx, dx, rows, in, 2 * F, [&](int64_t r, int64_t k) {
    double S = 0;
    for (int64_t f = 0; f < F; ++f)
      S += std::fabs(da[r * F + f] * w1f[f * in + k]) + std::fabs(db[r * F + f] * w2f[f * in + k]);
    return S;
  });
  for (int t = 0; t < 2; ++t)
    check(t ? "dW2" : "dW1", t ? gotDw2 : gotDw1, t ? dw2 : dw1, F, in, rows,
          [&, t](int64_t f, int64_t k) {
            double S = 0;
            for (int64_t r = 0; r < rows; ++r)
              S += std::fabs((t ? db : da)[r * F + f] * xf[r * in + k]);
            return S;
          });
}

//===-- The lm head's loss in chunks ----------------------------------------------===//

// cuda::LmHeadLoss (chunks of at most 64 rows: 44, 44, 42 of 130, two with an ignored label)
// against the CPU on the same bf16 h and W: logits = h·Wᵀ in f32, cpu::crossEntropyGrad (the mean
// loss, dz), dh = dz·W, dW = dzᵀ·h (+ the prior dW: it accumulates). The logits differ only by the
// order of their f32 sums; the GPU rounds dz to bf16 (2^-9 relative), so dh, dW are within 2^-8·S +
// 3·K·2^-24·S of the CPU's (S = Σ|terms|, K the summed length); the loss within 1e-5 relative (f32
// logits, exp to 2 ulp). A chunk at the wrong rows or a missing dW accumulation is O(1) off. Then
// the executor's two other modes on the same operands: dh in bf16 (one more rounding: 2^-9 of |dh|
// <= S) with dW overwritten (the gradient alone, the prior dW not added), and the loss alone (no
// dh: its total equals the first call's bit for bit, the two kernels computing each row's loss the
// same way).
void lmHeadLossCase(bool rowsKernels, bool heldRows = false) {
  const int64_t rows = 130, d = 256, vocab = 1000, chunk = 64;
  Mat<uint16_t> h = randomMat<uint16_t>(rows, d, d + 8, -1, 1, 71);
  Mat<uint16_t> w = randomMat<uint16_t>(vocab, d, d, -0.2f, 0.2f, 72);
  Mat<float> dw0 = randomMat<float>(vocab, d, d, -1, 1, 73);
  std::vector<int32_t> labels(static_cast<size_t>(rows));
  std::mt19937 rng(74);
  std::uniform_int_distribution<int32_t> pick(0, int32_t(vocab - 1));
  for (int32_t &l : labels)
    l = pick(rng);
  labels[5] = -100, labels[129] = -100;
  const std::vector<float> hf = h.f32(), wf = w.f32();
  // The CPU: f32 logits, the cross entropy's gradient, the two products.
  std::vector<float> z(size_t(rows * vocab)), dz(z.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t v = 0; v < vocab; ++v) {
      float acc = 0;
      for (int64_t k = 0; k < d; ++k)
        acc += hf[r * h.ld + k] * wf[v * d + k];
      z[r * vocab + v] = acc;
    }
  int64_t counted = 0;
  const double loss =
      cpu::crossEntropyGrad(z.data(), labels.data(), rows, vocab, -100, 1.0f, dz.data(), &counted);
  std::vector<float> dh(size_t(rows * d), 0.0f), dw = dw0.data, S_dh(dh.size()), S_dw(dw.size());
  std::vector<float> dwAlone(dw.size()), S_alone(dw.size()); // the gradient without dw0
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < d; ++k) {
      double a = 0, s = 0;
      for (int64_t v = 0; v < vocab; ++v)
        a += double(dz[r * vocab + v]) * wf[v * d + k],
            s += std::fabs(dz[r * vocab + v] * wf[v * d + k]);
      dh[r * d + k] = float(a), S_dh[r * d + k] = float(s);
    }
  for (int64_t v = 0; v < vocab; ++v)
    for (int64_t k = 0; k < d; ++k) {
      double a = 0, s = 0;
      for (int64_t r = 0; r < rows; ++r)
        a += double(dz[r * vocab + v]) * hf[r * h.ld + k],
            s += std::fabs(dz[r * vocab + v] * hf[r * h.ld + k]);
      dw[v * d + k] += float(a), S_dw[v * d + k] = float(s) + std::fabs(dw0.data[v * d + k]);
      dwAlone[v * d + k] = float(a), S_alone[v * d + k] = float(s);
    }

  Dev<uint16_t> dH(h), dW(w);
  Dev<float> dDh(outputMat<float>(rows, d, d + 4)), dDw(dw0);
  auto upload = [](const void *p, size_t bytes) {
    DeviceBuffer b(std::max<size_t>(8, bytes), "lm head loss operand");
    gpu().copyToDevice(b.get(), p, bytes, "lm head loss operand");
    return b;
  };
  const double k = 1.0 / double(counted);
  DeviceBuffer dLabels = upload(labels.data(), labels.size() * 4), dK = upload(&k, 8);
  DeviceBuffer rowLoss(size_t(rows) * 8, "row losses"), total(8, "loss total");
  static Gemm gemm(gpu());
  LmHeadLossKernels kernels{&module().kernel("cross_entropy_grad_bf16"), 256,
                            &module().kernel("loss_total"), &module().kernel("cross_entropy_loss")};
  if (rowsKernels) // what tnlmc emits now: the rows loop, both kernels at 1,024 threads
    kernels = {&module().kernel("cross_entropy_grad_rows_bf16"),
               1024,
               &module().kernel("loss_total_block"),
               &module().kernel("cross_entropy_loss_1024"),
               1024,
               true,
               256};
  if (heldRows) // the held rows (what tnlmc emits for vocab 1000): all in registers
    kernels.crossEntropyGrad = &module().kernel("cross_entropy_grad_rows_held_v1000");
  LmHeadLoss head(gpu(), gemm, kernels, chunk, vocab, d);
  EXPECT_EQ(head.workspaceBytes(), size_t(chunk * vocab * 6));
  LmHeadLossCall call;
  call.h = dH.ptr(), call.ldh = dH.ld(), call.w = dW.ptr(), call.labels = dLabels.get();
  call.k = dK.get(), call.rows = rows, call.dh = dDh.ptr(), call.lddh = dDh.ld();
  call.dw = dDw.ptr(), call.rowLoss = rowLoss.get(), call.total = total.get();
  head.run(call, "lm head loss test");
  double gotTotal = 0;
  gpu().copyToHost(&gotTotal, total.get(), 8, "loss total");
  const std::vector<float> gotDh = dDh.download("dh"), gotDw = dDw.download("dW");
  EXPECT_NEAR(gotTotal / double(counted), loss, 1e-5 * (1 + std::fabs(loss)));
  const double u = std::ldexp(1.0, -24);
  auto check = [&](const char *what, const std::vector<float> &got, int64_t ldGot,
                   const std::vector<float> &ref, const std::vector<float> &S, int64_t n, int64_t K,
                   double rel = std::ldexp(1.0, -8)) {
    int64_t bad = 0;
    double worst = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < d; ++j) {
        const double s = S[i * d + j], bound = rel * s + 3 * double(K) * u * s + 1e-30;
        const double err = std::fabs(double(got[i * ldGot + j]) - ref[i * d + j]);
        if (!(err <= bound) && bad++ < 3)
          ADD_FAILURE() << what << "[" << i << ", " << j << "]: gpu " << got[i * ldGot + j]
                        << ", cpu " << ref[i * d + j] << " (bound " << bound << ")";
        worst = std::max(worst, err / bound);
      }
    EXPECT_EQ(bad, 0) << what;
    std::printf("  lm head loss (chunks of %lld) %s: max |diff|/bound %.3f\n", (long long)chunk,
                what, worst);
  };
  check("dh", gotDh, dDh.ld(), dh, S_dh, rows, vocab);
  check("dW", gotDw, d, dw, S_dw, vocab, rows);
  std::printf("  lm head loss: mean %.9f (cpu %.9f)\n", gotTotal / double(counted), loss);

  // bf16 dh, dW overwritten: dW is the gradient alone.
  Dev<uint16_t> dDh16(outputMat<uint16_t>(rows, d, d + 4));
  Dev<float> dDwNew(outputMat<float>(vocab, d, d));
  LmHeadLossCall bf = call;
  bf.dh = dDh16.ptr(), bf.lddh = dDh16.ld(), bf.dhBf16 = true;
  bf.dw = dDwNew.ptr(), bf.accumulateDw = false;
  head.run(bf, "lm head loss test (bf16 dh)");
  std::vector<float> gotDh16;
  for (uint16_t b : dDh16.download("bf16 dh"))
    gotDh16.push_back(bf16ToF32(b));
  check("dh (bf16)", gotDh16, dDh16.ld(), dh, S_dh, rows, vocab, std::ldexp(1.0, -8) * 1.5);
  check("dW (overwritten)", dDwNew.download("dW overwritten"), d, dwAlone, S_alone, vocab, rows);

  // The loss alone.
  LmHeadLossCall lossOnly = call;
  lossOnly.dh = 0, lossOnly.dw = 0;
  head.run(lossOnly, "lm head loss test (loss alone)");
  double lossOnlyTotal = 0;
  gpu().copyToHost(&lossOnlyTotal, total.get(), 8, "loss total");
  // The same row losses bit for bit, except from the held rows (Σe of __expf's e where the
  // loss alone takes expf's: about 1e-7 of each row's Σe, so of its loss's log term).
  if (heldRows)
    EXPECT_NEAR(lossOnlyTotal, gotTotal, 1e-6 * (1 + std::fabs(gotTotal)))
        << "the loss alone is off the loss with its gradient";
  else
    EXPECT_EQ(lossOnlyTotal, gotTotal) << "the loss alone differs from the loss with its gradient";
}

TEST(BackwardLmHeadLoss, ChunksMatchCpu) { lmHeadLossCase(false); }
TEST(BackwardLmHeadLoss, ChunksMatchCpuWithTheRowsLoop) { lmHeadLossCase(true); }
TEST(BackwardLmHeadLoss, ChunksMatchCpuWithTheHeldRows) { lmHeadLossCase(true, true); }

//===-- Embedding backward -------------------------------------------------------===//

template <typename T> void embeddingGradCase(int64_t tokens, int64_t d, float scale) {
  const int64_t vocab = 3000;
  std::mt19937 rng(41);
  std::uniform_int_distribution<int32_t> pick(0, 499); // many repeats
  std::vector<int32_t> ids(static_cast<size_t>(tokens));
  for (int32_t &id : ids)
    id = pick(rng);
  ids[0] = int32_t(vocab - 1);
  const EmbeddingSegments seg = embeddingSegments(ids.data(), tokens, vocab);
  Mat<T> dx = randomMat<T>(tokens, d, d + 8, -1, 1, 42, 3);
  Mat<float> table = randomMat<float>(vocab, d, d, -1, 1, 43);
  Dev<T> dDx(dx);
  Dev<float> dTable(table);
  auto upload = [](const std::vector<int32_t> &v) {
    DeviceBuffer b(std::max<size_t>(4, v.size() * 4), "segments");
    gpu().copyToDevice(b.get(), v.data(), v.size() * 4, "segments");
    return b;
  };
  DeviceBuffer order = upload(seg.order), start = upload(seg.start), segIds = upload(seg.ids);
  const std::string kernel = std::string("embedding_grad_") + typeName<T>();
  launch(kernel, {static_cast<unsigned>(seg.ids.size()), static_cast<unsigned>((d + 127) / 128)},
         128, order.get(), start.get(), segIds.get(), dDx.ptr(), dDx.ld(), int(d), scale,
         dTable.ptr());
  const std::vector<float> got = dTable.download(kernel);
  std::vector<float> ref = table.data;
  const std::vector<float> dxf = dx.f32();
  cpu::embeddingGrad(ids.data(), tokens, dxf.data(), dx.ld, d, scale, vocab, ref.data());
  int64_t bad = 0;
  for (size_t i = 0; i < ref.size(); ++i)
    if (std::memcmp(&got[i], &ref[i], 4) != 0 && bad++ < 5)
      ADD_FAILURE() << kernel << " element " << i << ": gpu " << got[i] << ", cpu " << ref[i];
  EXPECT_EQ(bad, 0) << kernel << " (" << tokens << " tokens, d " << d << ", scale " << scale
                    << "): not the CPU's bit for bit";
}

TEST(BackwardEmbedding, MatchesCpuBitForBit) {
  embeddingGradCase<uint16_t>(4096, 768, std::sqrt(768.0f));
  embeddingGradCase<float>(4096, 768, std::sqrt(768.0f));
  embeddingGradCase<uint16_t>(1000, 100, 1.0f);
  embeddingGradCase<float>(1, 300, 1.0f);
}

//===-- Cross entropy ---------------------------------------------------------------===//

// rowsKernel: bw::cross_entropy_grad_rows (1,024 threads, a grid of 7 CTAs looping over the
// rows, as the executor's lm head loss runs it with #SMs; idle CTAs where rows < 7; with every
// 5th row ignored, a CTA meets an ignored row and then a counted one), its loss-only twin at
// 1,024 threads.
template <typename T> void crossEntropyCase(int64_t rows, int64_t vocab, bool rowsKernel = false) {
  const int ignore = -100;
  std::mt19937 rng(61);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::uniform_int_distribution<int32_t> pick(0, int32_t(vocab - 1));
  Mat<float> x{rows, vocab, vocab + 4,
               std::vector<float>(size_t(rows * (vocab + 4)), guard<float>())};
  std::vector<int32_t> labels(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < vocab; ++c)
      x.data[r * x.ld + c] = dist(rng);
    labels[r] = pick(rng);
    if (r % 3 == 1) // a dominant label: p ≈ 1, the label's gradient cancels
      x.data[r * x.ld + labels[r]] = 60.0f;
    if (r % 5 == 2)
      labels[r] = ignore;
  }
  int64_t count = 0;
  for (int32_t l : labels)
    count += l != ignore;
  const double k = 1.0 / double(count);
  Dev<float> dX(x);
  Dev<T> dG(outputMat<T>(rows, vocab, vocab + 8));
  DeviceBuffer dLabels(labels.size() * 4, "labels"), dK(8, "k"), rowLoss(size_t(rows) * 8, "loss"),
      total(8, "total");
  gpu().copyToDevice(dLabels.get(), labels.data(), labels.size() * 4, "labels");
  gpu().copyToDevice(dK.get(), &k, 8, "k");
  const std::string kernel =
      std::string(rowsKernel ? "cross_entropy_grad_rows_" : "cross_entropy_grad_") + typeName<T>();
  if (rowsKernel)
    launch(kernel, {7u}, 1024, dX.ptr(), dX.ld(), dLabels.get(), static_cast<long long>(rows),
           int(vocab), ignore, dK.get(), dG.ptr(), dG.ld(), rowLoss.get());
  else
    launch(kernel, {static_cast<unsigned>(rows)}, 256, dX.ptr(), dX.ld(), dLabels.get(), int(vocab),
           ignore, dK.get(), dG.ptr(), dG.ld(), rowLoss.get());
  launch("loss_total", {1}, 1, rowLoss.get(), static_cast<long long>(rows), total.get());
  const std::vector<T> got = dG.download(kernel);
  double gpuTotal = 0;
  gpu().copyToHost(&gpuTotal, total.get(), 8, "total");

  std::vector<float> packed(static_cast<size_t>(rows * vocab)), ref(packed.size());
  for (int64_t r = 0; r < rows; ++r)
    std::copy_n(x.data.begin() + r * x.ld, vocab, packed.begin() + r * vocab);
  int64_t counted = 0;
  const double mean = cpu::crossEntropyGrad(packed.data(), labels.data(), rows, vocab, ignore, 1.0f,
                                            ref.data(), &counted);
  ASSERT_EQ(counted, count);
  expectNear(kernel + " v" + std::to_string(vocab), got, vocab + 8, ref, vocab, rows, vocab,
             relOf<T>(), [&](int64_t, int64_t) { return std::ldexp(k, -19); });
  // The 256-thread total of the same row losses (what tnlmc emits): within f64 rounding.
  DeviceBuffer blockTotal(8, "total (block)");
  launch("loss_total_block", {1}, 256, rowLoss.get(), static_cast<long long>(rows),
         blockTotal.get());
  double gpuBlockTotal = 0;
  gpu().copyToHost(&gpuBlockTotal, blockTotal.get(), 8, "total (block)");
  EXPECT_LE(std::fabs(gpuBlockTotal - gpuTotal), 1e-13 * (1 + std::fabs(gpuTotal)))
      << kernel << ": the 256-thread loss total " << gpuBlockTotal << " vs " << gpuTotal;
  const double gpuMean = gpuTotal / double(count);
  EXPECT_LE(std::fabs(gpuMean - mean), 4e-6 * (1 + std::fabs(mean)))
      << kernel << " mean loss " << gpuMean << " vs cpu " << mean;
  std::printf("  %s v%lld: mean loss %.9f (cpu %.9f)\n", kernel.c_str(), (long long)vocab, gpuMean,
              mean);
  // The loss alone (the forward's kernel: no gradient): the same row losses, bit for bit.
  DeviceBuffer lossOnly(size_t(rows) * 8, "loss only");
  launch(rowsKernel ? "cross_entropy_loss_1024" : "cross_entropy_loss",
         {static_cast<unsigned>(rows)}, rowsKernel ? 1024 : 256, dX.ptr(), dX.ld(), dLabels.get(),
         int(vocab), ignore, lossOnly.get());
  std::vector<double> a(static_cast<size_t>(rows)), b(a.size());
  gpu().copyToHost(a.data(), rowLoss.get(), a.size() * 8, "row losses");
  gpu().copyToHost(b.data(), lossOnly.get(), b.size() * 8, "row losses (loss only)");
  int64_t differ = 0;
  for (size_t r = 0; r < a.size(); ++r)
    differ += std::memcmp(&a[r], &b[r], 8) != 0;
  EXPECT_EQ(differ, 0) << "cross_entropy_loss v" << vocab << ": row losses differ from " << kernel
                       << "'s";
}

TEST(BackwardCrossEntropy, MatchesCpu) {
  crossEntropyCase<float>(37, 100);
  crossEntropyCase<uint16_t>(37, 100);
  crossEntropyCase<float>(64, 5000);
  crossEntropyCase<uint16_t>(16, 64000);
  crossEntropyCase<float>(4, 64000);
}

TEST(BackwardCrossEntropy, RowsLoopMatchesCpu) {
  crossEntropyCase<float>(37, 100, true);
  crossEntropyCase<uint16_t>(37, 100, true);
  crossEntropyCase<float>(64, 5000, true);
  crossEntropyCase<uint16_t>(16, 64000, true);
  crossEntropyCase<uint16_t>(3, 64000, true); // fewer rows than CTAs
  crossEntropyCase<float>(37, 1001, true);    // vocab % 4 != 0: the one-logit loops
}

// The held rows (bw::cross_entropy_grad_rows_held: each row read once, held in registers and
// shared memory) against the rows loop (two passes, validated against the CPU above) on the
// same logits. Both take the same max and the same e = __expf(x − max) for the gradient; Σe
// differs by about 1e-7 relative (accurate expf in the rows loop's, and its online rescaling),
// so the scale k / Σe too, and the label's e (expf there): each bf16 element within one
// rounding step (2^-8 of the larger) plus 2^-20·k where the label's term cancels; the row losses
// within 1e-6 (1 + |loss|) (the rows loop's are cross_entropy_loss's bit for bit, checked
// above). A wrong max, a missed chunk or a stale row is O(1). 7 CTAs over the rows; every 5th
// row ignored, every 3rd with a dominant label; v64000 with (16000 − 6·1024)·16 bytes of shared
// memory (the 385M's vocabulary), v100 and v5000 all in registers, v1001 (built for 1000) the
// two passes (then bit for bit).
void heldRowsCase(int64_t rows, int64_t vocab, unsigned sharedBytes) {
  const int ignore = -100;
  std::mt19937 rng(67);
  std::normal_distribution<float> dist(0.0f, 3.0f);
  std::uniform_int_distribution<int32_t> pick(0, int32_t(vocab - 1));
  const int64_t ld = (vocab + 3) / 4 * 4 + 4; // 16-byte rows
  Mat<float> x{rows, vocab, ld, std::vector<float>(size_t(rows * ld), guard<float>())};
  std::vector<int32_t> labels(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < vocab; ++c)
      x.data[r * x.ld + c] = dist(rng);
    labels[r] = pick(rng);
    if (r % 3 == 1)
      x.data[r * x.ld + labels[r]] = 60.0f;
    if (r % 5 == 2)
      labels[r] = ignore;
  }
  const double k = 1.0 / double(rows);
  Dev<float> dX(x);
  Dev<uint16_t> a(outputMat<uint16_t>(rows, vocab, ld + 4)),
      b(outputMat<uint16_t>(rows, vocab, ld + 4));
  DeviceBuffer dLabels(labels.size() * 4, "labels"), dK(8, "k"), lossA(size_t(rows) * 8, "loss"),
      lossB(size_t(rows) * 8, "loss (held)");
  gpu().copyToDevice(dLabels.get(), labels.data(), labels.size() * 4, "labels");
  gpu().copyToDevice(dK.get(), &k, 8, "k");
  launch("cross_entropy_grad_rows_bf16", {7u}, 1024, dX.ptr(), dX.ld(), dLabels.get(),
         static_cast<long long>(rows), int(vocab), ignore, dK.get(), a.ptr(), a.ld(), lossA.get());
  const std::string held = "cross_entropy_grad_rows_held_v" + std::to_string(vocab);
  LaunchConfig config{{7u}, {1024u}, sharedBytes};
  gpu().launchWith(module().kernel(held), config, held, dX.ptr(), dX.ld(), dLabels.get(),
                   static_cast<long long>(rows), int(vocab), ignore, dK.get(), b.ptr(), b.ld(),
                   lossB.get());
  const std::vector<uint16_t> ga = a.download("rows loop"), gb = b.download(held);
  const bool exact = vocab % 4 != 0; // the two passes themselves
  int64_t differ = 0, bad = 0;
  for (size_t i = 0; i < ga.size(); ++i) {
    differ += ga[i] != gb[i];
    const double p = bf16ToF32(ga[i]), q = bf16ToF32(gb[i]);
    const bool guard = ga[i] == kBf16Guard || gb[i] == kBf16Guard;
    const double bound = std::ldexp(std::max(std::fabs(p), std::fabs(q)), -8) + std::ldexp(k, -20);
    const bool ok = exact || guard ? ga[i] == gb[i] : std::fabs(p - q) <= bound;
    if (!ok && bad++ < 3)
      ADD_FAILURE() << held << " element " << i << " (row " << int64_t(i) / a.ld() << "): held "
                    << q << ", rows loop " << p;
  }
  std::vector<double> la(static_cast<size_t>(rows)), lb(la.size());
  gpu().copyToHost(la.data(), lossA.get(), la.size() * 8, "row losses");
  gpu().copyToHost(lb.data(), lossB.get(), lb.size() * 8, "row losses (held)");
  double worstLoss = 0;
  for (size_t r = 0; r < la.size(); ++r) {
    const double d = std::fabs(la[r] - lb[r]);
    worstLoss = std::max(worstLoss, d);
    if (exact ? std::memcmp(&la[r], &lb[r], 8) != 0 : !(d <= 1e-6 * (1 + std::fabs(la[r]))))
      ADD_FAILURE() << held << " row " << r << ": loss held " << lb[r] << ", rows loop " << la[r];
  }
  EXPECT_EQ(bad, 0) << held << ": gradient elements (guards included) off the rows loop's";
  std::printf("  %s, %lld rows: %lld of %zu gradient elements differ from the rows loop (within "
              "one bf16 step), row losses by at most %.3g\n",
              held.c_str(), (long long)rows, (long long)differ, ga.size(), worstLoss);
}

TEST(BackwardCrossEntropy, HeldRowsEqualTheRowsLoop) {
  heldRowsCase(37, 64000, (16000 - 6 * 1024) * 16);
  heldRowsCase(3, 64000, (16000 - 6 * 1024) * 16); // fewer rows than CTAs
  heldRowsCase(37, 100, 0);
  heldRowsCase(64, 5000, 0);
  heldRowsCase(37, 1001, 0);
}

//===-- The optimizer ---------------------------------------------------------------===//

struct HostOpt { // as tnlm::bw::OptTensor (device pointers), 56 bytes
  CUdeviceptr p, g, m, v;
  long long n, chunk0;
  int decay, pad;
};
static_assert(sizeof(HostOpt) == 56, "OptTensor layout");

struct OptCase {
  std::vector<std::vector<float>> p, g, m, v;
  std::vector<int> decay;
  std::vector<DeviceBuffer> buffers;
  std::vector<HostOpt> table;
  long long chunks = 0;
  DeviceBuffer dTable;

  // shift: the tensors start this many floats into their buffers (1: not 16-byte aligned, so
  // the kernels take their one-float paths; 0: aligned, the four-float paths).
  explicit OptCase(const std::vector<int64_t> &sizes, int shift = 0) {
    std::mt19937 rng(51);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    for (size_t i = 0; i < sizes.size(); ++i) {
      const size_t n = static_cast<size_t>(sizes[i]);
      std::vector<float> pi(n), gi(n), mi(n), vi(n);
      for (size_t j = 0; j < n; ++j) {
        pi[j] = dist(rng) * 0.02f, gi[j] = dist(rng) * 1e-3f;
        mi[j] = dist(rng) * 1e-4f, vi[j] = std::fabs(dist(rng)) * 1e-7f;
      }
      p.push_back(pi), g.push_back(gi), m.push_back(mi), v.push_back(vi);
      decay.push_back(int(i % 2));
      HostOpt t{};
      for (auto *src : {&p.back(), &g.back(), &m.back(), &v.back()}) {
        buffers.emplace_back(std::max<size_t>(4, (n + size_t(shift)) * 4), "optimizer tensor");
        gpu().copyToDevice(buffers.back().get() + 4 * shift, src->data(), n * 4,
                           "optimizer tensor");
      }
      const size_t b = buffers.size();
      const CUdeviceptr at = CUdeviceptr(4 * shift);
      t.p = buffers[b - 4].get() + at, t.g = buffers[b - 3].get() + at,
      t.m = buffers[b - 2].get() + at, t.v = buffers[b - 1].get() + at;
      t.n = sizes[i], t.chunk0 = chunks, t.decay = decay.back();
      chunks += (sizes[i] + 65535) / 65536;
      table.push_back(t);
    }
    dTable = DeviceBuffer(table.size() * sizeof(HostOpt), "optimizer table");
    gpu().copyToDevice(dTable.get(), table.data(), table.size() * sizeof(HostOpt), "table");
    gpu().synchronize("optimizer tensors");
  }
  std::vector<float> download(size_t i, int which) {
    const CUdeviceptr src[] = {table[i].p, table[i].g, table[i].m, table[i].v};
    std::vector<float> out(static_cast<size_t>(table[i].n));
    gpu().copyToHost(out.data(), src[which], out.size() * 4, "optimizer tensor");
    return out;
  }
};

const std::vector<int64_t> kOptSizes = {1, 1000, 65536, 65537, 300000, 1003, 65538};

// Aligned tensors (the four-float paths, with tails of 1, 2 and 3 elements after them: 65537,
// 65538, 1003) and shifted by one float (the one-float paths).
class BackwardOptimizerShift : public ::testing::TestWithParam<int> {};
INSTANTIATE_TEST_SUITE_P(Alignment, BackwardOptimizerShift, ::testing::Values(0, 1));

TEST_P(BackwardOptimizerShift, SumOfSquaresMatchesCpu) {
  OptCase c(kOptSizes, GetParam());
  DeviceBuffer partial(size_t(c.chunks) * 8, "partial"), total(8, "total"), norm(4, "norm");
  launch("sum_squares_chunks", {static_cast<unsigned>(c.chunks)}, 256, c.dTable.get(),
         int(c.table.size()), partial.get());
  const double divisor = 4.0;
  launch("sum_squares_total", {1}, 1, partial.get(), c.chunks, divisor, total.get(), norm.get());
  double gpuTotal = 0;
  float gpuNorm = 0;
  gpu().copyToHost(&gpuTotal, total.get(), 8, "total");
  gpu().copyToHost(&gpuNorm, norm.get(), 4, "norm");
  double want = 0;
  for (const auto &g : c.g)
    want += cpu::sumSquares(g.data(), int64_t(g.size()));
  EXPECT_LE(std::fabs(gpuTotal - want), 1e-12 * want) << gpuTotal << " vs " << want;
  const float wantNorm = static_cast<float>(std::sqrt(want) / divisor);
  EXPECT_LE(std::fabs(gpuNorm - wantNorm), std::ldexp(std::fabs(wantNorm), -23))
      << gpuNorm << " vs " << wantNorm;
  std::printf("  sum of squares %.17g (cpu %.17g), norm %.9g (cpu %.9g)\n", gpuTotal, want, gpuNorm,
              wantNorm);
  // The 256-thread total (what tnlmc emits): the same within f64 rounding, and the same bits on
  // every run (a fixed order).
  double blockTotal[2] = {0, 0};
  float blockNorm = 0;
  for (double &t : blockTotal) {
    launch("sum_squares_total_block", {1}, 256, partial.get(), c.chunks, divisor, total.get(),
           norm.get());
    gpu().copyToHost(&t, total.get(), 8, "total (block)");
  }
  gpu().copyToHost(&blockNorm, norm.get(), 4, "norm (block)");
  EXPECT_LE(std::fabs(blockTotal[0] - want), 1e-12 * want) << blockTotal[0] << " vs " << want;
  EXPECT_EQ(std::memcmp(&blockTotal[0], &blockTotal[1], 8), 0) << "two runs differ";
  EXPECT_LE(std::fabs(blockNorm - wantNorm), std::ldexp(std::fabs(wantNorm), -23))
      << blockNorm << " vs " << wantNorm;
}

// The 256-thread total over more chunks than threads (6,088 at 385M): each thread's strided
// sum, against the sequential sum of the same partials.
TEST(BackwardOptimizer, BlockTotalOverManyChunks) {
  for (long long chunks : {1LL, 255LL, 256LL, 257LL, 6088LL}) {
    std::vector<double> partial(static_cast<size_t>(chunks));
    std::mt19937 rng{unsigned(chunks)};
    std::uniform_real_distribution<double> dist(0.0, 1e3);
    double want = 0;
    for (double &p : partial)
      p = dist(rng), want += p;
    DeviceBuffer dPartial(partial.size() * 8, "partials"), total(8, "total"), norm(4, "norm");
    gpu().copyToDevice(dPartial.get(), partial.data(), partial.size() * 8, "partials");
    launch("sum_squares_total_block", {1}, 256, dPartial.get(), chunks, 2.0, total.get(),
           norm.get());
    double got = 0;
    float gotNorm = 0;
    gpu().copyToHost(&got, total.get(), 8, "total");
    gpu().copyToHost(&gotNorm, norm.get(), 4, "norm");
    EXPECT_LE(std::fabs(got - want), 1e-13 * want)
        << chunks << " chunks: " << got << " vs " << want;
    const float wantNorm = static_cast<float>(std::sqrt(want) / 2.0);
    EXPECT_LE(std::fabs(gotNorm - wantNorm), std::ldexp(std::fabs(wantNorm), -23)) << chunks;
  }
}

TEST_P(BackwardOptimizerShift, AdamWMatchesCpuBitForBit) {
  OptCase c(kOptSizes, GetParam());
  const float lr = 3e-4f, scale = 0.37f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  DeviceBuffer dLr(4, "lr"), dScale(4, "scale"), dStep(4, "step");
  gpu().copyToDevice(dLr.get(), &lr, 4, "lr");
  gpu().copyToDevice(dScale.get(), &scale, 4, "scale");
  for (int step : {1, 2, 10, 1000}) {
    gpu().copyToDevice(dStep.get(), &step, 4, "step");
    launch("adamw", {static_cast<unsigned>(c.chunks)}, 256, c.dTable.get(), int(c.table.size()),
           dLr.get(), dScale.get(), dStep.get(), beta1, beta2, eps, wd);
    for (size_t i = 0; i < c.table.size(); ++i)
      cpu::adamw(c.p[i].data(), c.g[i].data(), c.m[i].data(), c.v[i].data(), int64_t(c.p[i].size()),
                 lr, beta1, beta2, eps, c.decay[i] ? wd : 0.0f, scale, step);
    for (size_t i = 0; i < c.table.size(); ++i) {
      const std::vector<float> *want[] = {&c.p[i], nullptr, &c.m[i], &c.v[i]};
      for (int which : {0, 2, 3}) {
        const std::vector<float> got = c.download(i, which);
        int64_t bad = 0;
        for (size_t j = 0; j < got.size(); ++j)
          if (std::memcmp(&got[j], &(*want[which])[j], 4) != 0 && bad++ < 3)
            ADD_FAILURE() << "step " << step << " tensor " << i << " ("
                          << "p?mv"[which] << ") element " << j << ": gpu " << got[j] << ", cpu "
                          << (*want[which])[j];
        EXPECT_EQ(bad, 0) << "step " << step << ", tensor " << i << " of " << got.size();
      }
    }
  }
}

// adamw with the bf16 copies (the executor's tnlm_fused_adamw_bf16): p, m, v as without them, and
// every tensor with a copy gets bf16(p) (cast_bf16's round to nearest even) of the updated p;
// a tensor without one (null) is left alone.
TEST_P(BackwardOptimizerShift, AdamWWritesTheBf16Copies) {
  OptCase c(kOptSizes, GetParam());
  const float lr = 3e-4f, scale = 0.37f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f;
  const int step = 3;
  DeviceBuffer dLr(4, "lr"), dScale(4, "scale"), dStep(4, "step");
  gpu().copyToDevice(dLr.get(), &lr, 4, "lr");
  gpu().copyToDevice(dScale.get(), &scale, 4, "scale");
  gpu().copyToDevice(dStep.get(), &step, 4, "step");
  std::vector<DeviceBuffer> copies;
  std::vector<CUdeviceptr> table;
  const uint16_t kUntouched = 0x7fc1; // a NaN the kernel never writes
  for (size_t i = 0; i < c.table.size(); ++i) {
    const size_t n = size_t(c.table[i].n);
    copies.emplace_back(std::max<size_t>(2, n * 2), "bf16 copy");
    std::vector<uint16_t> fill(n, kUntouched);
    gpu().copyToDevice(copies.back().get(), fill.data(), n * 2, "bf16 copy");
    table.push_back(i == 1 ? 0 : copies.back().get()); // tensor 1 has no copy
  }
  // Copies one bf16 into their buffers (not 8-byte aligned): with shift 0 tensor 2's alone (its
  // f32 tensors aligned: the one-element path for the copy's sake), with shift 1 every even
  // tensor's (the odd ones aligned while their f32 tensors are not). The element before each
  // shifted copy must keep kUntouched.
  std::vector<size_t> copyShift(copies.size(), 0);
  for (size_t i = 0; i < copies.size(); ++i)
    if (i != 1 && (GetParam() == 0 ? i == 2 : i % 2 == 0)) {
      const size_t n = size_t(c.table[i].n);
      copies[i] = DeviceBuffer(std::max<size_t>(2, (n + 1) * 2), "bf16 copy");
      std::vector<uint16_t> fill(n + 1, kUntouched);
      gpu().copyToDevice(copies[i].get(), fill.data(), (n + 1) * 2, "bf16 copy");
      copyShift[i] = 1;
      table[i] = copies[i].get() + 2;
    }
  DeviceBuffer dCopies(table.size() * 8, "the copies' table");
  gpu().copyToDevice(dCopies.get(), table.data(), table.size() * 8, "the copies' table");
  launch("adamw_bf16", {static_cast<unsigned>(c.chunks)}, 256, c.dTable.get(), int(c.table.size()),
         dLr.get(), dScale.get(), dStep.get(), beta1, beta2, eps, wd, dCopies.get());
  for (size_t i = 0; i < c.table.size(); ++i)
    cpu::adamw(c.p[i].data(), c.g[i].data(), c.m[i].data(), c.v[i].data(), int64_t(c.p[i].size()),
               lr, beta1, beta2, eps, c.decay[i] ? wd : 0.0f, scale, step);
  for (size_t i = 0; i < c.table.size(); ++i) {
    const std::vector<float> p = c.download(i, 0);
    std::vector<uint16_t> got(p.size());
    gpu().copyToHost(got.data(), i == 1 ? copies[i].get() : table[i], got.size() * 2, "bf16 copy");
    if (copyShift[i]) {
      uint16_t before = 0;
      gpu().copyToHost(&before, copies[i].get(), 2, "the element before the copy");
      EXPECT_EQ(before, kUntouched) << "tensor " << i << ": written before its copy";
    }
    int64_t bad = 0;
    for (size_t j = 0; j < p.size(); ++j) {
      const uint16_t want = i == 1 ? kUntouched : f32ToBf16(p[j]);
      if (std::memcmp(&p[j], &c.p[i][j], 4) != 0 || got[j] != want)
        if (bad++ < 3)
          ADD_FAILURE() << "tensor " << i << " element " << j << ": p " << p[j] << " (cpu "
                        << c.p[i][j] << "), copy 0x" << std::hex << got[j] << " (want 0x" << want
                        << ")" << std::dec;
    }
    EXPECT_EQ(bad, 0) << "tensor " << i << " of " << p.size();
  }
}

// The whole optimizer step on the device, as @optimizer_step runs it: sum_squares_chunks,
// sum_squares_total (÷ the accumulation steps: the global norm), optimizer_scalars (the
// scheduled lr, the clipping scale, t = counter + 1), adamw, step_increment, against the CPU's
// GlobalNorm, LrSchedule, ClipScale, AdamW and Increment (runtime/CpuTrainSteps.cpp) at
// counters in the warmup, at its end, on the cosine and past the total, with clipping active.
// The scalars from the CPU's norm must be the CPU's bit for bit (f64 on both sides; CUDA's cos
// is within 1 ulp of glibc's, which moves the f32 lr only within ~1e-16 of a rounding
// boundary); the device's norm within one f32 ulp (its f64 sum runs in another order), and
// p, m, v bit for bit the CPU's AdamW with the scale the device used.
TEST(BackwardOptimizer, WholeStepMatchesCpu) {
  OptCase c(kOptSizes);
  double sum = 0;
  for (const auto &g : c.g)
    sum += cpu::sumSquares(g.data(), int64_t(g.size()));
  float hp[schema::HyperParam_Count] = {};
  hp[schema::HyperParam_Lr] = 3e-4f, hp[schema::HyperParam_MinLr] = 3e-5f;
  hp[schema::HyperParam_Warmup] = 10, hp[schema::HyperParam_TotalSteps] = 1000;
  hp[schema::HyperParam_Schedule] = schema::LrScheduleKind_Cosine;
  hp[schema::HyperParam_Beta1] = 0.9f, hp[schema::HyperParam_Beta2] = 0.95f;
  hp[schema::HyperParam_Eps] = 1e-8f, hp[schema::HyperParam_WeightDecay] = 0.1f;
  hp[schema::HyperParam_AccumSteps] = 2;
  hp[schema::HyperParam_ClipGrad] = float(0.5 * std::sqrt(sum) / 2); // half the norm: clips
  DeviceBuffer dHp(sizeof hp, "hparams"), partial(size_t(c.chunks) * 8, "partial"), norm(4, "norm"),
      cpuNorm(4, "cpu norm"), lr(4, "lr"), scale(4, "scale"), t(4, "t"), counter(4, "counter");
  gpu().copyToDevice(dHp.get(), hp, sizeof hp, "hparams");
  for (int s : {0, 9, 10, 500, 1000, 2000}) {
    gpu().copyToDevice(counter.get(), &s, 4, "counter");
    // The CPU's step.
    const float wantNorm = static_cast<float>(std::sqrt(sum) / hp[schema::HyperParam_AccumSteps]);
    const float wantLr = static_cast<float>(learningRate(s, hp));
    const double clip = hp[schema::HyperParam_ClipGrad];
    const float wantScale = static_cast<float>(std::min(1.0, clip / (double(wantNorm) + 1e-6)) /
                                               hp[schema::HyperParam_AccumSteps]);
    // (a) the scalars from the CPU's norm.
    gpu().copyToDevice(cpuNorm.get(), &wantNorm, 4, "cpu norm");
    launch("optimizer_scalars", {1}, 1, counter.get(), dHp.get(), cpuNorm.get(), lr.get(),
           scale.get(), t.get());
    float gotLr = 0, gotScale = 0;
    int gotT = 0;
    gpu().copyToHost(&gotLr, lr.get(), 4, "lr");
    gpu().copyToHost(&gotScale, scale.get(), 4, "scale");
    gpu().copyToHost(&gotT, t.get(), 4, "t");
    EXPECT_EQ(gotLr, wantLr) << "counter " << s;
    EXPECT_EQ(gotScale, wantScale) << "counter " << s;
    EXPECT_EQ(gotT, s + 1) << "counter " << s;
    ASSERT_LT(wantScale, 0.5f / hp[schema::HyperParam_AccumSteps] + 1e-3f) << "clipping is on";
    // (b) the device's pipeline.
    launch("sum_squares_chunks", {static_cast<unsigned>(c.chunks)}, 256, c.dTable.get(),
           int(c.table.size()), partial.get());
    launch("sum_squares_total", {1}, 1, partial.get(), c.chunks,
           double(hp[schema::HyperParam_AccumSteps]), CUdeviceptr(0), norm.get());
    launch("optimizer_scalars", {1}, 1, counter.get(), dHp.get(), norm.get(), lr.get(), scale.get(),
           t.get());
    launch("adamw", {static_cast<unsigned>(c.chunks)}, 256, c.dTable.get(), int(c.table.size()),
           lr.get(), scale.get(), t.get(), hp[schema::HyperParam_Beta1],
           hp[schema::HyperParam_Beta2], hp[schema::HyperParam_Eps],
           hp[schema::HyperParam_WeightDecay]);
    launch("step_increment", {1}, 1, counter.get());
    float devNorm = 0, devScale = 0;
    int after = 0;
    gpu().copyToHost(&devNorm, norm.get(), 4, "norm");
    gpu().copyToHost(&devScale, scale.get(), 4, "scale");
    gpu().copyToHost(&after, counter.get(), 4, "counter");
    EXPECT_LE(std::fabs(devNorm - wantNorm), std::ldexp(std::fabs(wantNorm), -23)) << s;
    EXPECT_EQ(after, s + 1);
    for (size_t i = 0; i < c.table.size(); ++i)
      cpu::adamw(c.p[i].data(), c.g[i].data(), c.m[i].data(), c.v[i].data(), int64_t(c.p[i].size()),
                 wantLr, hp[schema::HyperParam_Beta1], hp[schema::HyperParam_Beta2],
                 hp[schema::HyperParam_Eps], c.decay[i] ? hp[schema::HyperParam_WeightDecay] : 0.0f,
                 devScale, s + 1);
    for (size_t i = 0; i < c.table.size(); ++i) {
      const std::vector<float> *want[] = {&c.p[i], nullptr, &c.m[i], &c.v[i]};
      for (int which : {0, 2, 3}) {
        const std::vector<float> got = c.download(i, which);
        int64_t bad = 0;
        for (size_t j = 0; j < got.size(); ++j)
          bad += std::memcmp(&got[j], &(*want[which])[j], 4) != 0;
        EXPECT_EQ(bad, 0) << "counter " << s << ", tensor " << i << " ("
                          << "p?mv"[which] << "): elements not the CPU's";
      }
    }
    std::printf("  optimizer step at counter %d: lr %.9g, scale %.9g, norm %.9g (cpu %.9g)\n", s,
                gotLr, devScale, devNorm, wantNorm);
  }
}

} // namespace
} // namespace tnlm::cuda
