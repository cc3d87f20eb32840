//===- GpuMain.cpp - GPU tests skip (exit 77) where there is no GPU --------===//
//
// ctest registers these tests with SKIP_RETURN_CODE 77, so on a machine without a driver or
// device they show as skipped, not passed. Listing tests (gtest_discover_tests at build time)
// needs no GPU.
//
//===----------------------------------------------------------------------===//
#include "test/unit/cuda/GpuTest.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

namespace tnlm::cuda::test {

Context &gpu() {
  static Context context;
  return context;
}

std::string deviceArch() {
  int capability = gpu().computeCapability();
  return "sm_" + std::to_string(capability) + (capability == 90 ? "a" : "");
}

} // namespace tnlm::cuda::test

int main(int argc, char **argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // The tests set the GEMM tuning (and its cache) themselves: none from the caller's
  // environment reaches the Gemm instances they make.
  unsetenv("TNLM_GEMM_TUNE_CACHE");
  if (!::testing::GTEST_FLAG(list_tests)) {
    std::string why;
    if (!tnlm::cuda::deviceAvailable(&why)) {
      std::printf("SKIPPED: no CUDA device (%s)\n", why.c_str());
      return 77;
    }
    tnlm::cuda::Context &context = tnlm::cuda::test::gpu();
    std::printf("device: %s, sm_%d, %d SMs, %.1f GiB, driver CUDA %d\n",
                context.deviceName().c_str(), context.computeCapability(),
                context.multiprocessors(), double(context.totalMemory()) / double(1 << 30),
                tnlm::cuda::driver().version);
  }
  return RUN_ALL_TESTS();
}
