//===- KernelGpuTest.cpp - NVRTC kernels launched, captured and replayed ----===//
//
// silu on the GPU vs the CPU: expf is within 2 ulp (CUDA C Programming Guide, maths
// accuracy) and NVRTC's default division is IEEE, so with the CPU's own rounding the two agree
// to within ~6 ulp: |Δ| <= 1e-6·|y| (2^-24 ≈ 6e-8 per ulp) allows that with margin.
// A replayed graph runs the same kernels on the same data: its results are bit-identical.
//
//===----------------------------------------------------------------------===//
#include "runtime/Error.h"
#include "runtime/cuda/Nvrtc.h"
#include "test/unit/cuda/GpuTest.h"
#include "test/unit/cuda/TestKernels.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

namespace tnlm::cuda {
namespace {

using test::gpu;

std::vector<float> uniform(size_t n, float lo, float hi, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float &x : v)
    x = dist(rng);
  return v;
}

float siluRef(float x) { return x / (1.0f + std::exp(-x)); }

/// The test kernels compiled for this device once, as a cubin and as PTX.
Module &elementwise(bool ptx = false) {
  static std::unique_ptr<Module> modules[2];
  std::unique_ptr<Module> &module = modules[ptx];
  if (!module) {
    NvrtcOptions options;
    options.arch = test::deviceArch();
    options.output = ptx ? NvrtcOptions::Output::Ptx : NvrtcOptions::Output::Cubin;
    CompiledKernels compiled = compileCuda(test::kElementwiseSource, "elementwise.cu", options);
    module =
        std::make_unique<Module>(gpu(), compiled.image, ptx ? "elementwise-ptx" : "elementwise");
  }
  return *module;
}

constexpr unsigned kThreads = 256;
LaunchConfig over(unsigned n) { return {{(n + kThreads - 1) / kThreads}, {kThreads}, 0}; }

class Silu : public ::testing::TestWithParam<bool> {};

TEST_P(Silu, MatchesCpuOnAMillionElements) {
  const unsigned n = (1u << 20) + 3; // a partial last block
  std::vector<float> x = uniform(n, -12.0f, 12.0f, 1);
  Arena arena(2 * n * sizeof(float) + 2 * Arena::kAlignment, "the silu test arena");
  CUdeviceptr dx = arena.allocate(n * sizeof(float), "x");
  CUdeviceptr dy = arena.allocate(n * sizeof(float), "y");
  gpu().copyToDevice(dx, x.data(), n * sizeof(float));
  gpu().fillBytes(dy, 0xff, n * sizeof(float)); // NaN sentinels
  Module &module = elementwise(GetParam());
  void *params[] = {&dx, &dy, const_cast<unsigned *>(&n)};
  module.launch("silu", over(n), params, "silu test");
  std::vector<float> y(n);
  gpu().copyToHost(y.data(), dy, n * sizeof(float));

  double worst = 0;
  for (unsigned i = 0; i < n; ++i) {
    float want = siluRef(x[i]);
    double err = std::fabs(double(y[i]) - double(want));
    ASSERT_LE(err, 1e-6 * std::fabs(want) + 1e-37) << "i=" << i << " x=" << x[i];
    worst = std::max(worst, err / (std::fabs(want) + 1e-30));
  }
  std::printf("silu %s: %u elements, max relative error %.3g\n", GetParam() ? "PTX" : "cubin", n,
              worst);
}

INSTANTIATE_TEST_SUITE_P(CubinAndPtx, Silu, ::testing::Values(false, true),
                         [](const auto &info) { return info.param ? "Ptx" : "Cubin"; });

TEST(Graph, ReplayMatchesEagerLaunchesBitForBit) {
  const unsigned n = 1u << 20;
  const size_t bytes = n * sizeof(float);
  Arena arena(4 * bytes, "the graph test arena");
  CUdeviceptr x = arena.allocate(bytes, "x"), y = arena.allocate(bytes, "y");
  CUdeviceptr z = arena.allocate(bytes, "z"), w = arena.allocate(bytes, "w");
  Module &module = elementwise();
  Kernel &silu = module.kernel("silu"), &axpy = module.kernel("axpy");
  // w = silu(0.5·silu(x) + x)
  auto record = [&] {
    gpu().launchWith(silu, over(n), "graph step 0", x, y, n);
    gpu().launchWith(axpy, over(n), "graph step 1", 0.5f, y, x, z, n);
    gpu().launchWith(silu, over(n), "graph step 2", z, w, n);
  };
  auto runOn = [&](const std::vector<float> &input, const std::function<void()> &run) {
    gpu().copyToDevice(x, input.data(), bytes);
    gpu().fillBytes(w, 0xff, bytes);
    run();
    std::vector<float> out(n);
    gpu().copyToHost(out.data(), w, bytes);
    return out;
  };

  std::vector<float> first = uniform(n, -6, 6, 2), second = uniform(n, -6, 6, 3);
  std::vector<float> eager1 = runOn(first, record), eager2 = runOn(second, record);
  Graph graph = gpu().capture(record, "graph test");
  EXPECT_EQ(graph.nodeCount(), 3u);
  auto replay = [&] { graph.launch(gpu().stream(), "graph test replay"); };
  // The graph reads x when it runs: new input, new output; replaying twice changes nothing.
  std::vector<float> replay1 = runOn(first, replay), replay2 = runOn(second, replay);
  std::vector<float> again = runOn(second, [&] {
    replay();
    replay();
  });
  EXPECT_EQ(std::memcmp(eager1.data(), replay1.data(), bytes), 0);
  EXPECT_EQ(std::memcmp(eager2.data(), replay2.data(), bytes), 0);
  EXPECT_EQ(std::memcmp(eager2.data(), again.data(), bytes), 0);
  EXPECT_NE(std::memcmp(eager1.data(), eager2.data(), bytes), 0);
  for (unsigned i = 0; i < n; i += 4099)
    ASSERT_NEAR(eager1[i], siluRef(0.5f * siluRef(first[i]) + first[i]),
                1e-5 * std::fabs(eager1[i]) + 1e-30); // silu amplifies z's rounding up to ~6x
}

TEST(Graph, FailureDuringCaptureEndsTheCapture) {
  Module &module = elementwise();
  EXPECT_THROW(gpu().capture([&] { module.kernel("not_there"); }, "capture test"), Error);
  // The stream is usable again: a launch runs eagerly.
  DeviceBuffer buffer(sizeof(float) * 4, "x");
  CUdeviceptr x = buffer.get();
  unsigned n = 4;
  gpu().launchWith(module.kernel("silu"), over(n), "after capture", x, x, n);
  gpu().synchronize("after capture");
}

TEST(Launch, MissingKernelNameIsAnErrorNamingIt) {
  Module &module = elementwise();
  void *params[] = {nullptr};
  try {
    module.launch("lightning_fwd_missing", over(1), params, "step 7");
    FAIL() << "a missing kernel launched";
  } catch (const Error &e) {
    std::string message = e.what();
    EXPECT_NE(message.find("step 7"), std::string::npos) << message;
    EXPECT_NE(message.find("kernel 'lightning_fwd_missing' in module 'elementwise'"),
              std::string::npos)
        << message;
    EXPECT_NE(message.find("cuModuleGetFunction failed"), std::string::npos) << message;
    EXPECT_NE(message.find("CUDA_ERROR_NOT_FOUND"), std::string::npos) << message;
  }
}

TEST(Launch, SharedMemoryAbove48KiBIsOptedIn) {
  Module &module = elementwise();
  const unsigned floats = 100 * 1024 / sizeof(float); // 100 KiB, above the 48 KiB default
  DeviceBuffer out(floats * sizeof(float), "out");
  CUdeviceptr p = out.get();
  LaunchConfig config{{1}, {256}, unsigned(floats * sizeof(float))};
  gpu().launchWith(module.kernel("shared_roundtrip"), config, "shared test", p, floats);
  std::vector<float> host(floats);
  gpu().copyToHost(host.data(), p, floats * sizeof(float));
  for (unsigned i = 0; i < floats; ++i)
    ASSERT_EQ(host[i], float(floats - 1 - i));

  LaunchConfig tooMuch{{1}, {256}, unsigned(gpu().maxSharedPerBlock() + 1024)};
  try {
    gpu().launchWith(module.kernel("shared_roundtrip"), tooMuch, "step 9", p, floats);
    FAIL() << "more shared memory than the device has was accepted";
  } catch (const Error &e) {
    std::string message = e.what();
    EXPECT_NE(message.find("step 9"), std::string::npos) << message;
    EXPECT_NE(message.find("kernel 'shared_roundtrip'"), std::string::npos) << message;
  }
}

// Context::carveoutFor: the smallest percent of the SM's shared memory that holds the CTAs a
// launch puts on each SM (TNLM_DECODE_CARVEOUT=auto notes it per launch), and launches asking
// for a carveout run (0, 50 and 100 %).
TEST(Launch, CarveoutHoldsTheCtasOfOneSm) {
  Module &module = elementwise();
  Kernel &k = module.kernel("shared_roundtrip");
  const unsigned sms = unsigned(gpu().multiprocessors());
  const size_t perSm = gpu().sharedPerMultiprocessor();
  int reserve = -1, staticBytes = -1;
  CUdevice dev = 0;
  TNLM_CU(cuDeviceGet, (&dev, gpu().ordinal()), "carveout test");
  TNLM_CU(cuDeviceGetAttribute,
          (&reserve, CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK, dev), "carveout test");
  TNLM_CU(cuFuncGetAttribute, (&staticBytes, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, k.function),
          "carveout test");
  ASSERT_GT(perSm, 64u * 1024);
  ASSERT_GE(reserve, 0);
  // Whether P % of the SM's shared memory holds `ctas` CTAs of `bytes` dynamic shared memory.
  auto holds = [&](int pct, unsigned ctas, unsigned bytes) { // pct % of perSm ≥ the CTAs' bytes
    return uint64_t(pct) * perSm >= 100 * uint64_t(ctas) * (bytes + staticBytes + reserve);
  };
  const unsigned kib40 = 40 * 1024;
  LaunchConfig one{{sms}, {256}, kib40}, two{{2 * sms}, {256}, kib40};
  const int p1 = gpu().carveoutFor(k, one), p2 = gpu().carveoutFor(k, two);
  EXPECT_TRUE(holds(p1, 1, kib40) && !holds(p1 - 1, 1, kib40)) << p1;
  EXPECT_TRUE(holds(p2, 2, kib40) && !holds(p2 - 1, 2, kib40)) << p2;
  EXPECT_GT(p2, p1);
  // One CTA more than the SMs: two on some SM. More than fits: all of it.
  LaunchConfig spill{{sms + 1}, {256}, kib40};
  EXPECT_EQ(gpu().carveoutFor(k, spill), p2);
  LaunchConfig three{{3 * sms}, {256}, 100 * 1024};
  EXPECT_EQ(gpu().carveoutFor(k, three), 100);

  // Launches noting their needs, each at a carveout of its own (a launch attribute).
  const unsigned floats = kib40 / sizeof(float);
  DeviceBuffer out(kib40, "out");
  CUdeviceptr p = out.get();
  std::vector<int> needs;
  const LaunchConfig small{{1}, {256}, 4096};
  int carveout = 0;
  for (LaunchConfig c : {one, two, small}) {
    c.carveoutNeeds = &needs;
    c.carveout = carveout;
    carveout += 50;
    gpu().launchWith(k, c, "carveout test", p, c.sharedBytes / unsigned(sizeof(float)));
  }
  EXPECT_EQ(needs, (std::vector<int>{p1, p2, gpu().carveoutFor(k, small)}));
  std::vector<float> host(floats);
  gpu().copyToHost(host.data(), p, kib40);
  for (unsigned i = 0; i < 1024; ++i) // the last launch wrote 4 KiB reversed
    ASSERT_EQ(host[i], float(1023 - i));
  std::printf("carveout: one CTA of 40 KiB per SM %d %%, two %d %% (%zu bytes per SM, %d "
              "reserved per CTA)\n",
              p1, p2, perSm, reserve);
}

TEST(Module, RejectsAnImageThatIsNoKernelCode) {
  try {
    Module module(gpu(), "definitely not a cubin", "junk");
    FAIL();
  } catch (const Error &e) {
    EXPECT_NE(std::string(e.what()).find("kernel module 'junk'"), std::string::npos) << e.what();
  }
}

TEST(ArenaTest, OffsetsAreCheckedAndFullnessNamed) {
  Arena arena(4096, "the test arena");
  EXPECT_EQ(arena.at(0, 4096), arena.base());
  EXPECT_THROW(arena.at(4000, 200, "step 1 buffer 'q'"), Error);
  CUdeviceptr a = arena.allocate(100, "a");
  CUdeviceptr b = arena.allocate(100, "b");
  EXPECT_EQ(b - a, Arena::kAlignment);
  try {
    arena.allocate(8192, "the embedding table");
    FAIL();
  } catch (const Error &e) {
    EXPECT_NE(std::string(e.what()).find("the embedding table"), std::string::npos);
  }
  try {
    DeviceBuffer huge(size_t(1) << 50, "the activation arena");
    FAIL();
  } catch (const Error &e) {
    std::string message = e.what();
    EXPECT_NE(message.find("allocating the activation arena (1048576.00 GiB)"), std::string::npos)
        << message;
    EXPECT_NE(message.find("cuMemAlloc failed"), std::string::npos) << message;
  }
}

} // namespace
} // namespace tnlm::cuda
