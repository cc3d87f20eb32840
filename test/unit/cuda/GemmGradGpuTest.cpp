//===- GemmGradGpuTest.cpp - the linear layer's backward GEMMs vs CPU loops ---===//
//
// Gemm::gradInput (dx = dy·W) and Gemm::gradWeight (dW = dyᵀ·x, summed over rows) against f32
// loops on the CPU over the very bf16 values the GPU reads, with the bound of GemmGpuTest.cpp:
// |Δ| <= 2^-8·|ref| (bf16 output only) + 1.01·3·K·2^-24·(S + |β·prior|), K the summed length
// (out for dx, rows for dW), S = Σ|terms|. β = 1 checks accumulation into the output's prior
// values (the tied embedding, gradient accumulation); the gaps that leading dimensions leave
// must keep a sentinel. A wrong layout, transpose or leading dimension is O(|ref|) off.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/Gemm.h"

#include "runtime/DType.h"
#include "runtime/Error.h"
#include "test/unit/cuda/GpuTest.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <tuple>
#include <vector>

namespace tnlm::cuda {
namespace {

using test::gpu;

Gemm &gemm() {
  static Gemm instance(gpu());
  return instance;
}

// The same cases through a Gemm that times the heuristic's candidates (TNLM_GEMM_TUNE=1); with
// β = 1 the candidates run on a scratch output, so the prior values are added once.
Gemm &tunedGemm() {
  static Gemm instance(gpu());
  static const bool once = (instance.setTuning(1), true);
  (void)once;
  return instance;
}

struct GradCase {
  bool weight; // gradWeight, else gradInput
  GemmType type;
  int64_t rows, in, out, ldx, ldw, ldy;
  float beta;
  const char *name;
};

void PrintTo(const GradCase &c, std::ostream *os) { *os << c.name; }
void PrintTo(const std::tuple<GradCase, bool> &p, std::ostream *os) {
  *os << std::get<0>(p).name << (std::get<1>(p) ? " (tuned)" : "");
}

std::vector<float> randomRounded(size_t n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float &x : v)
    x = bf16ToF32(f32ToBf16(dist(rng)));
  return v;
}

std::vector<uint16_t> bits(const std::vector<float> &v) {
  std::vector<uint16_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i)
    out[i] = f32ToBf16(v[i]);
  return out;
}

class GemmGradVsCpu : public ::testing::TestWithParam<std::tuple<GradCase, bool>> {};

TEST_P(GemmGradVsCpu, WithinTheRoundingBound) {
  const GradCase &c = std::get<0>(GetParam());
  Gemm &g = std::get<1>(GetParam()) ? tunedGemm() : gemm();
  const bool bf16Out = c.type == GemmType::Bf16;
  // The output: dx [rows, in] (ld ldx) or dW [out, in] (ld ldw); the other operand: W or x.
  const int64_t outRows = c.weight ? c.out : c.rows, outLd = c.weight ? c.ldw : c.ldx;
  const int64_t opRows = c.weight ? c.rows : c.out, opLd = c.weight ? c.ldx : c.ldw;
  const std::vector<float> dy = randomRounded(size_t(c.rows * c.ldy), 21);
  const std::vector<float> op = randomRounded(size_t(opRows * opLd), 22);
  std::vector<float> prior = randomRounded(size_t(outRows * outLd), 23);
  const size_t elem = bf16Out ? 2 : 4;
  const size_t dyBytes = dy.size() * 2, opBytes = op.size() * 2, outBytes = prior.size() * elem;
  Arena arena(dyBytes + opBytes + outBytes + 3 * Arena::kAlignment, "the GEMM grad test arena");
  CUdeviceptr gDy = arena.allocate(dyBytes, "dy"), gOp = arena.allocate(opBytes, "W or x");
  CUdeviceptr gOut = arena.allocate(outBytes, "dx or dW");
  gpu().copyToDevice(gDy, bits(dy).data(), dyBytes);
  gpu().copyToDevice(gOp, bits(op).data(), opBytes);
  // The prior values (β = 1) in the output's columns, a sentinel in its gaps.
  std::vector<unsigned char> init(outBytes, 0x7f);
  const int64_t cols = c.in;
  for (int64_t r = 0; r < outRows; ++r)
    for (int64_t k = 0; k < cols; ++k) {
      const size_t i = size_t(r * outLd + k);
      if (bf16Out) {
        const uint16_t b = f32ToBf16(prior[i]);
        std::memcpy(&init[i * 2], &b, 2);
      } else {
        std::memcpy(&init[i * 4], &prior[i], 4);
      }
    }
  gpu().copyToDevice(gOut, init.data(), outBytes);
  const GemmShape shape{c.rows, c.in, c.out, c.ldx, c.ldw, c.ldy};
  if (c.weight)
    g.gradWeight(c.type, shape, gDy, gOp, gOut, "grad test", 1.0f, c.beta);
  else
    g.gradInput(c.type, shape, gDy, gOp, gOut, "grad test", 1.0f, c.beta);
  std::vector<unsigned char> raw(outBytes);
  gpu().copyToHost(raw.data(), gOut, outBytes);

  const double u = std::ldexp(1.0, -24), rounding = bf16Out ? 1.0 / 256 : 0.0;
  const int64_t K = c.weight ? c.rows : c.out;
  double worst = 0;
  int64_t bad = 0;
  for (int64_t r = 0; r < outRows; ++r)
    for (int64_t k = 0; k < outLd; ++k) {
      const size_t at = size_t(r * outLd + k);
      if (k >= cols) { // a gap
        for (size_t b = 0; b < elem; ++b)
          if (raw[at * elem + b] != 0x7f && bad++ < 3)
            ADD_FAILURE() << c.name << ": row " << r << " wrote into the gap at column " << k;
        continue;
      }
      // dx[r, k] = Σ_o dy[r, o]·W[o, k];  dW[r = o, k] = Σ_t dy[t, o]·x[t, k].
      float sum = 0, abs = 0;
      for (int64_t j = 0; j < K; ++j) {
        const float a = c.weight ? dy[size_t(j * c.ldy + r)] : dy[size_t(r * c.ldy + j)];
        const float b = op[size_t(j * opLd + k)];
        sum += a * b;
        abs += std::fabs(a * b);
      }
      const double p = c.beta * prior[at], ref = double(sum) + p;
      float got;
      if (bf16Out) {
        uint16_t b;
        std::memcpy(&b, &raw[at * 2], 2);
        got = bf16ToF32(b);
      } else {
        std::memcpy(&got, &raw[at * 4], 4);
      }
      const double bound =
          rounding * std::fabs(ref) + 1.01 * 3 * double(K) * u * (abs + std::fabs(p)) + 1e-30;
      const double err = std::fabs(double(got) - ref);
      if (!(err <= bound) && bad++ < 3)
        ADD_FAILURE() << c.name << ": [" << r << ", " << k << "] = " << got << ", CPU " << ref
                      << ", |Δ| " << err << " > bound " << bound;
      worst = std::max(worst, err / bound);
    }
  EXPECT_EQ(bad, 0) << c.name;
  std::printf("%s%s: max |Δ| / bound = %.3f\n", c.name, std::get<1>(GetParam()) ? " (tuned)" : "",
              worst);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GemmGradVsCpu,
    ::testing::Combine(
        ::testing::Values(
            // dx = dy·W: bf16 (an activation gradient), f32 (the residual stream's), strided as
            // the q/k/v/u slices of a fused projection.
            GradCase{false, GemmType::Bf16, 130, 256, 384, 256, 256, 384, 0.0f, "GradInput_Bf16"},
            GradCase{false, GemmType::Bf16F32Out, 37, 100, 300, 104, 136, 320, 0.0f,
                     "GradInput_F32Out_Strided"},
            GradCase{false, GemmType::Bf16F32Out, 65, 128, 512, 128, 128, 512, 1.0f,
                     "GradInput_F32Out_Accumulate"},
            // dW = dyᵀ·x in f32: fresh, accumulated (β = 1), strided, and a single row.
            GradCase{true, GemmType::Bf16F32Out, 130, 256, 384, 256, 256, 384, 0.0f,
                     "GradWeight_F32Out"},
            GradCase{true, GemmType::Bf16F32Out, 2048, 128, 512, 128, 128, 512, 1.0f,
                     "GradWeight_F32Out_Accumulate"},
            GradCase{true, GemmType::Bf16F32Out, 37, 100, 300, 104, 136, 320, 1.0f,
                     "GradWeight_F32Out_Strided"},
            GradCase{true, GemmType::Bf16F32Out, 1, 64, 96, 64, 64, 96, 0.0f, "GradWeight_OneRow"}),
        ::testing::Bool()),
    [](const auto &info) {
      return std::string(std::get<0>(info.param).name) + (std::get<1>(info.param) ? "_Tuned" : "");
    });

TEST(GemmGrad, BadShapesAreRefused) {
  const GemmShape narrow{4, 64, 32, 32, 64, 32}; // ldx < in
  try {
    gemm().gradInput(GemmType::Bf16, narrow, 0, 0, 0, "grad test");
    FAIL() << "no error";
  } catch (const Error &e) {
    EXPECT_NE(std::string(e.what()).find("dx = dy.W"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("leading dimension"), std::string::npos) << e.what();
  }
  try {
    gemm().gradWeight(GemmType::Bf16F32Out, {0, 64, 32}, 0, 0, 0, "grad test", 1.0f, 0.0f);
    FAIL() << "no error";
  } catch (const Error &e) {
    EXPECT_NE(std::string(e.what()).find("beta"), std::string::npos) << e.what();
  }
}

} // namespace
} // namespace tnlm::cuda
