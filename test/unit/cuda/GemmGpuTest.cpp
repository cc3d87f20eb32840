//===- GemmGpuTest.cpp - cuBLASLt y = x·Wᵀ vs CPU loops ---------------------===//
//
// The reference is an f32 GEMM on the CPU of the very bf16 values the GPU reads, so input
// rounding cancels out and what remains is bounded per element, with S = Σ_i |x_i·w_i|:
//   bf16 output: one rounding to nearest, |Δ| <= 2^-8·|y| (8 significant bits);
//   fp32 sums:   |Δ| <= K·2^-24·S for the CPU's sequential sum (K = in), and 2·K·2^-24·S
//                for the GPU's, allowing tensor cores that truncate rather than round;
// so |y_gpu - y_cpu| <= 2^-8·|y_cpu| + 3·K·2^-24·S (+ 2^-8 of the sum error, folded into a
// factor 1.01). The f32 GEMM has no output rounding: |Δ| <= 3·K·2^-24·S.
// A wrong layout or leading dimension gives errors of the order of |y| itself, far above.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/Gemm.h"

#include "runtime/DType.h"
#include "runtime/Error.h"
#include "test/unit/cuda/GpuTest.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

namespace tnlm::cuda {
namespace {

using test::gpu;

Gemm &gemm() {
  static Gemm instance(gpu());
  return instance;
}

// n bf16 values uniform in [-1, 1) from `rng`.
std::vector<uint16_t> randomBf16(size_t n, std::mt19937 &rng) {
  std::uniform_real_distribution<float> dist(-1, 1);
  std::vector<uint16_t> out(n);
  for (uint16_t &v : out)
    v = f32ToBf16(dist(rng));
  return out;
}

// The same cases through a Gemm that times the heuristic's candidates (TNLM_GEMM_TUNE=1):
// whichever algorithm it keeps computes the same product within the same bound.
Gemm &tunedGemm() {
  static Gemm instance(gpu());
  static const bool once = (instance.setTuning(1), true);
  (void)once;
  return instance;
}

struct Case {
  int64_t rows, in, out;
  int64_t ldx = 0, ldw = 0, ldy = 0;
};

/// x, W as f32 holding the values the GPU sees (bf16-rounded for Bf16), strided.
struct Operands {
  std::vector<float> x, w;
  std::vector<uint16_t> xBits, wBits;
};

Operands makeOperands(GemmType type, const Case &c, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Operands ops;
  ops.x.resize(c.rows * c.ldx);
  ops.w.resize(c.out * c.ldw);
  for (std::vector<float> *v : {&ops.x, &ops.w})
    for (float &value : *v) {
      value = dist(rng);
      if (type != GemmType::F32)
        value = bf16ToF32(f32ToBf16(value));
    }
  if (type != GemmType::F32) {
    ops.xBits.resize(ops.x.size());
    ops.wBits.resize(ops.w.size());
    for (size_t i = 0; i < ops.x.size(); ++i)
      ops.xBits[i] = f32ToBf16(ops.x[i]);
    for (size_t i = 0; i < ops.w.size(); ++i)
      ops.wBits[i] = f32ToBf16(ops.w[i]);
  }
  return ops;
}

/// y = x·Wᵀ in f32 with sequential sums, and S = Σ|x_i w_i| per element; rows over threads.
void cpuLinear(const Case &c, const Operands &ops, std::vector<float> &y, std::vector<float> &s) {
  y.assign(c.rows * c.out, 0.0f);
  s.assign(c.rows * c.out, 0.0f);
  unsigned threads = std::max(1u, std::min(16u, std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < threads; ++t)
    pool.emplace_back([&, t] {
      for (int64_t r = t; r < c.rows; r += threads)
        for (int64_t o = 0; o < c.out; ++o) {
          const float *xr = &ops.x[r * c.ldx], *wr = &ops.w[o * c.ldw];
          float sum = 0, abs = 0;
          for (int64_t i = 0; i < c.in; ++i) {
            sum += xr[i] * wr[i];
            abs += std::fabs(xr[i] * wr[i]);
          }
          y[r * c.out + o] = sum;
          s[r * c.out + o] = abs;
        }
    });
  for (std::thread &thread : pool)
    thread.join();
}

/// Runs the GEMM on the GPU (y pre-filled with a sentinel where ldy leaves gaps) and checks
/// every element against the bound; returns the largest error / bound seen.
double runAndCheck(GemmType type, Case c, Gemm &g = gemm()) {
  c.ldx = c.ldx ? c.ldx : c.in;
  c.ldw = c.ldw ? c.ldw : c.in;
  c.ldy = c.ldy ? c.ldy : c.out;
  Operands ops = makeOperands(type, c, unsigned(c.rows * 7 + c.in * 3 + c.out));
  const size_t inElem = type == GemmType::F32 ? 4 : 2; // x and W
  const size_t elem = type == GemmType::Bf16 ? 2 : 4;  // y
  const size_t xBytes = c.rows * c.ldx * inElem, wBytes = c.out * c.ldw * inElem;
  const size_t yBytes = c.rows * c.ldy * elem;
  Arena arena(xBytes + wBytes + yBytes + 3 * Arena::kAlignment, "the GEMM test arena");
  CUdeviceptr x = arena.allocate(xBytes, "x"), w = arena.allocate(wBytes, "W");
  CUdeviceptr y = arena.allocate(yBytes, "y");
  const void *xHost = inElem == 2 ? (const void *)ops.xBits.data() : ops.x.data();
  const void *wHost = inElem == 2 ? (const void *)ops.wBits.data() : ops.w.data();
  gpu().copyToDevice(x, xHost, xBytes);
  gpu().copyToDevice(w, wHost, wBytes);
  gpu().fillBytes(y, 0x7f, yBytes); // a sentinel the gaps between rows must keep
  GemmShape shape{c.rows, c.in, c.out, c.ldx, c.ldw, c.ldy};
  g.linear(type, shape, x, w, y, "gemm test");

  std::vector<unsigned char> raw(yBytes);
  gpu().copyToHost(raw.data(), y, yBytes);
  std::vector<float> want, sums;
  cpuLinear(c, ops, want, sums);
  const double u = std::ldexp(1.0, -24), outRounding = type == GemmType::Bf16 ? 1.0 / 256 : 0;
  double worst = 0;
  for (int64_t r = 0; r < c.rows; ++r) {
    for (int64_t o = 0; o < c.ldy; ++o) {
      size_t at = (r * c.ldy + o) * elem;
      if (o >= c.out) { // untouched padding
        for (size_t b = 0; b < elem; ++b)
          if (raw[at + b] != 0x7f) {
            ADD_FAILURE() << "row " << r << " wrote past out at column " << o;
            return 1e30;
          }
        continue;
      }
      float got;
      if (elem == 2) {
        uint16_t bits;
        std::memcpy(&bits, &raw[at], 2);
        got = bf16ToF32(bits);
      } else {
        std::memcpy(&got, &raw[at], 4);
      }
      double ref = want[r * c.out + o], s = sums[r * c.out + o];
      double bound = outRounding * std::fabs(ref) + 1.01 * 3 * double(c.in) * u * s + 1e-30;
      double err = std::fabs(double(got) - ref);
      if (!(err <= bound)) {
        ADD_FAILURE() << "y[" << r << "," << o << "] = " << got << ", CPU " << ref << ", |Δ| "
                      << err << " > bound " << bound;
        return err / bound;
      }
      worst = std::max(worst, err / bound);
    }
  }
  return worst;
}

struct GemmParam {
  GemmType type;
  Case shape;
  const char *name;
};

void PrintTo(const GemmParam &param, std::ostream *os) { *os << param.name; }

class GemmVsCpu : public ::testing::TestWithParam<GemmParam> {};

TEST_P(GemmVsCpu, WithinTheRoundingBound) {
  const GemmParam &p = GetParam();
  double worst = runAndCheck(p.type, p.shape);
  std::printf("%s rows=%lld in=%lld out=%lld: max |Δ| / bound = %.3f\n",
              p.type == GemmType::Bf16         ? "bf16"
              : p.type == GemmType::Bf16F32Out ? "bf16->f32"
                                               : "f32",
              (long long)p.shape.rows, (long long)p.shape.in, (long long)p.shape.out, worst);
}

const GemmParam kGemmCases[] = {
    GemmParam{GemmType::Bf16, {1, 1024, 4096}, "Bf16_1x1024x4096"},
    GemmParam{GemmType::Bf16, {2048, 1024, 4096}, "Bf16_2048x1024x4096"},
    GemmParam{GemmType::Bf16, {37, 100, 300}, "Bf16_37x100x300"},
    // Column slices of wider matrices, as q/k/v of a fused projection.
    GemmParam{GemmType::Bf16, {37, 100, 300, 136, 104, 320}, "Bf16_Strided"},
    GemmParam{GemmType::F32, {37, 100, 300}, "F32_37x100x300"},
    // The logits: bf16 in, f32 out (no output rounding in the bound).
    GemmParam{GemmType::Bf16F32Out, {130, 256, 300}, "Bf16F32Out_130x256x300"},
    GemmParam{GemmType::Bf16F32Out, {37, 100, 300, 136, 0, 0}, "Bf16F32Out_Strided"},
    GemmParam{GemmType::F32, {256, 1024, 512, 1040, 0, 520}, "F32_Strided"}};

INSTANTIATE_TEST_SUITE_P(Shapes, GemmVsCpu, ::testing::ValuesIn(kGemmCases),
                         [](const auto &info) { return std::string(info.param.name); });

class GemmTunedVsCpu : public ::testing::TestWithParam<GemmParam> {};

TEST_P(GemmTunedVsCpu, WithinTheRoundingBound) {
  const GemmParam &p = GetParam();
  const double worst = runAndCheck(p.type, p.shape, tunedGemm());
  std::printf("tuned %s: max |Δ| / bound = %.3f (%d plans timed, %d changed)\n", p.name, worst,
              tunedGemm().timedPlans(), tunedGemm().changedPlans());
}

INSTANTIATE_TEST_SUITE_P(Shapes, GemmTunedVsCpu, ::testing::ValuesIn(kGemmCases),
                         [](const auto &info) { return std::string(info.param.name); });

// The tuning tests' operands: random bf16 x [rows, in] and W [out, in] (seed), two outputs.
struct TuningOperands {
  static constexpr int64_t rows = 2048, in = 1024, out = 4096;
  Arena arena{size_t(rows * in + out * in + 2 * rows * out) * 2 + 4 * Arena::kAlignment,
              "the GEMM tuning arena"};
  CUdeviceptr x = arena.allocate(size_t(rows * in) * 2, "x");
  CUdeviceptr w = arena.allocate(size_t(out * in) * 2, "W");
  CUdeviceptr y = arena.allocate(size_t(rows * out) * 2, "y");
  CUdeviceptr y2 = arena.allocate(size_t(rows * out) * 2, "y2");
  explicit TuningOperands(unsigned seed) {
    std::mt19937 rng(seed);
    const std::vector<uint16_t> xs = randomBf16(size_t(rows * in), rng);
    const std::vector<uint16_t> ws = randomBf16(size_t(out * in), rng);
    gpu().copyToDevice(x, xs.data(), xs.size() * 2);
    gpu().copyToDevice(w, ws.data(), ws.size() * 2);
  }
};

// A tuned Gemm times the heuristic's candidates on the first call of a shape (the heuristic
// offers several for a 2048 x 1024 x 4096 bf16 GEMM on Hopper) and not on later calls; a plan
// made while the stream is being captured keeps the heuristic's first algorithm (nothing is
// timed), and its graph replays what an untuned Gemm computes, bit for bit.
TEST(GemmTuning, TimesOnceAndNotWhileCapturing) {
  Gemm tuned(gpu());
  tuned.setTuning(1);
  TuningOperands ops(5);
  constexpr int64_t rows = TuningOperands::rows, in = TuningOperands::in, out = TuningOperands::out;
  const CUdeviceptr x = ops.x, w = ops.w, y = ops.y, y2 = ops.y2;
  tuned.linear(GemmType::Bf16, {rows, in, out}, x, w, y, "tuning test");
  EXPECT_EQ(tuned.timedPlans(), 1);
  tuned.linear(GemmType::Bf16, {rows, in, out}, x, w, y, "tuning test");
  EXPECT_EQ(tuned.timedPlans(), 1) << "the plan was timed again";
  // A new shape (rows 1024) first seen during capture (its kernels loaded by the untuned run
  // before it, the module loading that a first launch may do kept out of the capture).
  Gemm plain(gpu());
  plain.setTuning(0);
  plain.linear(GemmType::Bf16, {1024, in, out}, x, w, y2, "untuned");
  auto record = [&] { tuned.linear(GemmType::Bf16, {1024, in, out}, x, w, y, "captured"); };
  Graph graph = gpu().capture(record, "tuning capture");
  EXPECT_EQ(tuned.timedPlans(), 1) << "a plan was timed during capture";
  graph.launch(gpu().stream());
  std::vector<uint16_t> a(size_t(1024 * out)), b(a.size());
  gpu().copyToHost(a.data(), y, a.size() * 2);
  gpu().copyToHost(b.data(), y2, b.size() * 2);
  EXPECT_EQ(a, b);
  std::printf("2048 x 1024 x 4096: the heuristic's first %s\n",
              tuned.changedPlans() ? "was not the fastest" : "was kept");
}

// TNLM_GEMM_TUNE_CACHE: a tuned plan's choice goes to the file; another Gemm with the file takes
// it without timing and computes the same bits; a file made for another GPU (fingerprint) is
// set aside and rewritten.
TEST(GemmTuning, CacheMakesTheChoiceRepeatable) {
  TuningOperands ops(6);
  constexpr int64_t rows = TuningOperands::rows, in = TuningOperands::in, out = TuningOperands::out;
  const CUdeviceptr x = ops.x, w = ops.w, y = ops.y, y2 = ops.y2;
  const std::string path = ::testing::TempDir() + "tnlm-gemm-tune-cache.json";
  std::remove(path.c_str());
  auto readFile = [&] {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    return text.str();
  };
  bool firstChanged = false;
  {
    Gemm first(gpu());
    first.setTuning(1);
    first.setTuneCache(path);
    first.linear(GemmType::Bf16, {rows, in, out}, x, w, y, "cache test");
    EXPECT_EQ(first.timedPlans(), 1);
    EXPECT_EQ(first.cachedPlans(), 0);
    firstChanged = first.changedPlans() != 0;
  }
  const Gemm::TuneCache written = Gemm::parseTuneCache(readFile(), path);
  ASSERT_EQ(written.choices.size(), 1u);
  EXPECT_NE(written.fingerprint.find(gpu().deviceName()), std::string::npos) << written.fingerprint;
  // The recorded index is the algorithm kept (0 where the heuristic's first stayed).
  EXPECT_EQ(written.choices.begin()->second != 0, firstChanged);
  {
    Gemm second(gpu());
    second.setTuning(1);
    second.setTuneCache(path);
    second.linear(GemmType::Bf16, {rows, in, out}, x, w, y2, "cache test");
    EXPECT_EQ(second.timedPlans(), 0) << "a plan in the cache was timed";
    EXPECT_EQ(second.cachedPlans(), 1);
  }
  std::vector<uint16_t> a(size_t(rows * out)), b(a.size());
  gpu().copyToHost(a.data(), y, a.size() * 2);
  gpu().copyToHost(b.data(), y2, b.size() * 2);
  EXPECT_EQ(a, b) << "the cached algorithm computed other bits";
  {
    Gemm::TuneCache other = written;
    other.fingerprint = "cuBLASLt 1 on another GPU";
    std::ofstream(path, std::ios::binary | std::ios::trunc) << Gemm::formatTuneCache(other);
    Gemm third(gpu());
    third.setTuning(1);
    third.setTuneCache(path);
    third.linear(GemmType::Bf16, {rows, in, out}, x, w, y2, "cache test");
    EXPECT_EQ(third.cachedPlans(), 0) << "a cache of another GPU was used";
    EXPECT_EQ(third.timedPlans(), 1);
    EXPECT_EQ(Gemm::parseTuneCache(readFile(), path).fingerprint, written.fingerprint);
  }
  // A malformed file is refused (naming it) on every plan, never overwritten; an empty one is
  // an empty cache; one that cannot be written leaves the run going (a note, no record).
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "{oops";
  {
    Gemm bad(gpu());
    bad.setTuning(1);
    bad.setTuneCache(path);
    for (int call = 0; call < 2; ++call) {
      try {
        bad.linear(GemmType::Bf16, {rows, in, out}, x, w, y2, "cache test");
        ADD_FAILURE() << "a malformed cache was taken (call " << call << ")";
      } catch (const Error &e) {
        EXPECT_NE(std::string(e.what()).find(path + ": not a GEMM tuning cache"), std::string::npos)
            << e.what();
      }
    }
    EXPECT_EQ(readFile(), "{oops");
  }
  std::ofstream(path, std::ios::binary | std::ios::trunc) << "";
  {
    Gemm empty(gpu());
    empty.setTuning(1);
    empty.setTuneCache(path);
    empty.linear(GemmType::Bf16, {rows, in, out}, x, w, y2, "cache test");
    EXPECT_EQ(empty.timedPlans(), 1);
    EXPECT_EQ(Gemm::parseTuneCache(readFile(), path).choices.size(), 1u);
  }
  {
    Gemm nowhere(gpu());
    nowhere.setTuning(1);
    nowhere.setTuneCache(::testing::TempDir() + "no-such-folder/cache.json");
    nowhere.linear(GemmType::Bf16, {rows, in, out}, x, w, y2, "cache test");
    EXPECT_EQ(nowhere.timedPlans(), 1);
  }
  std::remove(path.c_str());
}

TEST(GemmGraph, CapturedGemmReplaysBitForBit) {
  const int64_t rows = 64, in = 256, out = 128;
  std::mt19937 rng(9);
  const std::vector<uint16_t> x = randomBf16(size_t(rows * in), rng);
  const std::vector<uint16_t> w = randomBf16(size_t(out * in), rng);
  Arena arena(1 << 20, "the GEMM graph arena");
  CUdeviceptr dx = arena.allocate(x.size() * 2, "x"), dw = arena.allocate(w.size() * 2, "W");
  CUdeviceptr dy = arena.allocate(rows * out * 2, "y");
  gpu().copyToDevice(dx, x.data(), x.size() * 2);
  gpu().copyToDevice(dw, w.data(), w.size() * 2);
  auto record = [&] { gemm().linear(GemmType::Bf16, {rows, in, out}, dx, dw, dy, "graph gemm"); };
  std::vector<uint16_t> eager(rows * out), replayed(rows * out);
  record();
  gpu().copyToHost(eager.data(), dy, eager.size() * 2);
  Graph graph = gpu().capture(record, "gemm capture");
  EXPECT_GE(graph.nodeCount(), 1u);
  gpu().fillBytes(dy, 0, rows * out * 2);
  graph.launch(gpu().stream());
  gpu().copyToHost(replayed.data(), dy, replayed.size() * 2);
  EXPECT_EQ(eager, replayed);
}

TEST(GemmErrors, BadShapesNameTheStepAndShape) {
  try {
    gemm().linear(GemmType::Bf16, {4, 64, 32, 16}, 0, 0, 0, "step 5 (linear 'o_proj')");
    FAIL();
  } catch (const Error &e) {
    std::string message = e.what();
    EXPECT_NE(message.find("step 5 (linear 'o_proj'): bf16 GEMM rows=4 in=64 out=32 (ldx=16"),
              std::string::npos)
        << message;
  }
}

// Not a pass/fail test: the rate of the largest shape, for the log.
TEST(GemmRate, Bf16_2048x1024x4096) {
  const int64_t rows = 2048, in = 1024, out = 4096;
  Arena arena((rows * in + out * in + rows * out) * 2 + 1024, "the GEMM rate arena");
  CUdeviceptr x = arena.allocate(rows * in * 2, "x"), w = arena.allocate(out * in * 2, "W");
  CUdeviceptr y = arena.allocate(rows * out * 2, "y");
  gpu().fillBytes(x, 0x3c, rows * in * 2); // bf16 0x3c3c ≈ 0.0115
  gpu().fillBytes(w, 0x3c, out * in * 2);
  auto run = [&] { gemm().linear(GemmType::Bf16, {rows, in, out}, x, w, y, "rate"); };
  for (int i = 0; i < 5; ++i)
    run();
  gpu().synchronize();
  const int reps = 200;
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < reps; ++i)
    run();
  gpu().synchronize();
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("bf16 GEMM %lldx%lldx%lld: %.1f us per call, %.0f TFLOP/s\n", (long long)rows,
              (long long)in, (long long)out, 1e6 * seconds / reps,
              2.0 * rows * in * out * reps / seconds / 1e12);
}

} // namespace
} // namespace tnlm::cuda
