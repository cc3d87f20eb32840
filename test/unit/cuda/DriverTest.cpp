//===- DriverTest.cpp - the runtime with and without a CUDA driver ----------===//
//
// Runs everywhere. Where libcuda.so.1 is absent (CI, this project's build machines) a
// context must fail with the one sentence a user sees; where it is present, it must work.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/CudaExecutor.h"
#include "runtime/cuda/Gemm.h"
#include "runtime/cuda/LmHeadLoss.h"

#include "runtime/Error.h"

#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <functional>

namespace tnlm::cuda {
namespace {

bool driverLibraryPresent() {
  void *handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (handle)
    dlclose(handle);
  return handle != nullptr;
}

std::string contextError() {
  try {
    Context context;
    return {};
  } catch (const Error &e) {
    return e.what();
  }
}

// Without libcuda.so.1 (this machine, CI): one sentence, remembered.
void checkWithoutDriver() {
  const std::string expected =
      "no CUDA driver on this machine (libcuda.so.1 not found): CUDA artifacts need an NVIDIA "
      "GPU; compile with --target=cpu to run on the CPU";
  EXPECT_EQ(contextError(), expected);
  EXPECT_EQ(contextError(), expected); // the failed load is remembered, same sentence
  std::string why;
  EXPECT_FALSE(deviceAvailable(&why));
  EXPECT_EQ(why, expected);
  EXPECT_THROW(driver(), Error);
}

// With a driver (the device machine): a context, or one sentence if there is no device.
void checkWithDriver() {
  std::string why;
  if (!deviceAvailable(&why)) {
    // A driver without a usable device (or only the toolkit's stub) is one sentence too.
    EXPECT_EQ(contextError(), why);
    EXPECT_NE(why.find("compile with --target=cpu"), std::string::npos) << why;
    return;
  }
  Context context;
  EXPECT_FALSE(context.deviceName().empty());
  EXPECT_GE(context.computeCapability(), 50);
  EXPECT_GT(context.totalMemory(), size_t(1) << 30);
  EXPECT_NE(context.stream(), nullptr);
  EXPECT_GE(driver().version, CUDA_VERSION);
}

// One test for both machines, each branch asserting what that machine must do.
TEST(CudaDriver, ContextOrOneSentence) {
  if (driverLibraryPresent())
    checkWithDriver();
  else
    checkWithoutDriver();
}

// Errors name the call, the library's own words and the caller's context.
TEST(CudaErrors, DriverErrorNamesCallAndContext) {
  try {
    throwCuError(CUDA_ERROR_OUT_OF_MEMORY, "cuMemAlloc", "step 3 (kernel 'silu')");
  } catch (const Error &e) {
    std::string message = e.what();
    EXPECT_EQ(message.rfind("step 3 (kernel 'silu'): cuMemAlloc failed: ", 0), 0u) << message;
    if (deviceAvailable())
      EXPECT_NE(message.find("CUDA_ERROR_OUT_OF_MEMORY"), std::string::npos) << message;
    else // no driver to ask for the string: the code is given by number
      EXPECT_NE(message.find("CUresult 2"), std::string::npos) << message;
  }
}

TEST(CudaErrors, NvrtcErrorNamesCallAndContext) {
  try {
    checkNvrtc(NVRTC_ERROR_INVALID_OPTION, "nvrtcCompileProgram", "compiling lightning.cu");
    FAIL();
  } catch (const Error &e) {
    EXPECT_STREQ(e.what(),
                 "compiling lightning.cu: nvrtcCompileProgram failed: NVRTC_ERROR_INVALID_OPTION");
  }
}

TEST(CudaErrors, CublasLtErrorNamesCallAndContext) {
  try {
    checkCublasLt(CUBLAS_STATUS_NOT_SUPPORTED, "cublasLtMatmul", "step 7 (linear 'q_proj')");
    FAIL();
  } catch (const Error &e) {
    std::string message = e.what();
    EXPECT_EQ(message.rfind("step 7 (linear 'q_proj'): cublasLtMatmul failed: ", 0), 0u) << message;
    EXPECT_NE(message.find("CUBLAS_STATUS_NOT_SUPPORTED"), std::string::npos) << message;
  }
  checkCublasLt(CUBLAS_STATUS_SUCCESS, "cublasLtMatmul", "no error, no throw");
}

// TNLM_GEMM_TUNE_SPLITK: unset, empty or 0 skips split-K candidates, 1 times them, anything
// else is refused naming the variable (no GPU needed).
TEST(GemmTuning, TheSplitKVariableIsChecked) {
  const char *saved = std::getenv("TNLM_GEMM_TUNE_SPLITK");
  const std::string before = saved ? saved : "";
  unsetenv("TNLM_GEMM_TUNE_SPLITK");
  EXPECT_FALSE(Gemm::splitKTuningFromEnvironment());
  setenv("TNLM_GEMM_TUNE_SPLITK", "", 1);
  EXPECT_FALSE(Gemm::splitKTuningFromEnvironment());
  setenv("TNLM_GEMM_TUNE_SPLITK", "0", 1);
  EXPECT_FALSE(Gemm::splitKTuningFromEnvironment());
  setenv("TNLM_GEMM_TUNE_SPLITK", "1", 1);
  EXPECT_TRUE(Gemm::splitKTuningFromEnvironment());
  for (const char *bad : {"yes", "2", "-1"}) {
    setenv("TNLM_GEMM_TUNE_SPLITK", bad, 1);
    try {
      Gemm::splitKTuningFromEnvironment();
      ADD_FAILURE() << bad << " was taken";
    } catch (const Error &e) {
      const std::string message = e.what();
      EXPECT_EQ(message.rfind(std::string("TNLM_GEMM_TUNE_SPLITK=") + bad + ": expected 0 ", 0), 0u)
          << message;
    }
  }
  if (saved)
    setenv("TNLM_GEMM_TUNE_SPLITK", before.c_str(), 1);
  else
    unsetenv("TNLM_GEMM_TUNE_SPLITK");
}

// TNLM_GEMM_TUNE: unset or empty is 0; 0, 1, 2 are taken; anything else is refused, naming
// the variable and the values it takes (read before any GPU work, so no GPU is needed).
TEST(GemmTuning, TheEnvironmentVariableIsChecked) {
  const char *saved = std::getenv("TNLM_GEMM_TUNE");
  const std::string before = saved ? saved : "";
  unsetenv("TNLM_GEMM_TUNE");
  EXPECT_EQ(Gemm::tuningFromEnvironment(), 0);
  setenv("TNLM_GEMM_TUNE", "", 1);
  EXPECT_EQ(Gemm::tuningFromEnvironment(), 0);
  for (int level : {0, 1, 2}) {
    setenv("TNLM_GEMM_TUNE", std::to_string(level).c_str(), 1);
    EXPECT_EQ(Gemm::tuningFromEnvironment(), level);
  }
  for (const char *bad : {"yes", "3", "-1", "11"}) {
    setenv("TNLM_GEMM_TUNE", bad, 1);
    try {
      Gemm::tuningFromEnvironment();
      ADD_FAILURE() << bad << " was taken";
    } catch (const Error &e) {
      const std::string message = e.what();
      EXPECT_EQ(message.rfind(std::string("TNLM_GEMM_TUNE=") + bad + ": expected 0 ", 0), 0u)
          << message;
      EXPECT_NE(message.find("2 (as 1, printing the times)"), std::string::npos) << message;
    }
  }
  if (saved)
    setenv("TNLM_GEMM_TUNE", before.c_str(), 1);
  else
    unsetenv("TNLM_GEMM_TUNE");
}

// An on/off variable read by `read`: unset and 1 are on, 0 off, `bad` is refused naming the
// variable; `more` runs further checks with the variable at hand; the caller's value is restored.
void checkOnOffVariable(const char *name, bool (*read)(), const char *bad,
                        const std::function<void()> &more = {}) {
  const char *saved = std::getenv(name);
  const std::string before = saved ? saved : "";
  unsetenv(name);
  EXPECT_TRUE(read()) << name << " unset";
  setenv(name, "0", 1);
  EXPECT_FALSE(read()) << name << "=0";
  setenv(name, "1", 1);
  EXPECT_TRUE(read()) << name << "=1";
  setenv(name, bad, 1);
  try {
    read();
    ADD_FAILURE() << bad << " was taken";
  } catch (const Error &e) {
    EXPECT_EQ(std::string(e.what()).rfind(std::string(name) + "=" + bad + ": expected 0 ", 0), 0u)
        << e.what();
  }
  if (more)
    more();
  if (saved)
    setenv(name, before.c_str(), 1);
  else
    unsetenv(name);
}

// TNLM_GEMM_STACK: unset, empty or 1 stacks the gated pairs' GEMMs, 0 does not, anything else
// is refused naming the variable (no GPU needed).
TEST(GemmStacking, TheEnvironmentVariableIsChecked) {
  checkOnOffVariable("TNLM_GEMM_STACK", &CudaExecutor::stackingFromEnvironment, "off");
}

// TNLM_SGLU_FUSE: unset, empty or 1 runs a stacked gated pair and its product as the fused
// kernel, 0 does not, anything else is refused naming the variable (no GPU needed).
TEST(SgluFusion, TheEnvironmentVariableIsChecked) {
  checkOnOffVariable("TNLM_SGLU_FUSE", &CudaExecutor::sgluFusionFromEnvironment, "yes");
  checkOnOffVariable("TNLM_SILU_FUSE", &CudaExecutor::siluFusionFromEnvironment, "on");
}

// The GEMM tuning cache's file (TNLM_GEMM_TUNE_CACHE): written and read back the same; bad files
// are refused naming the file and what is wrong (no GPU needed).
TEST(GemmTuneCache, FileRoundTripsAndBadFilesAreRefused) {
  Gemm::TuneCache cache;
  cache.fingerprint = "cuBLASLt 130000 on NVIDIA H200 (132 SMs), workspace 33554432 bytes";
  cache.choices[{0, 0, 8192, 1024, 4096, 1024, 1024, 4096, 256, 256, 256}] = 4;
  cache.choices[{2, 2, 8192, 1024, 1024, 1024, 1024, 1024, 256, 256, 16}] = 0;
  const Gemm::TuneCache back = Gemm::parseTuneCache(Gemm::formatTuneCache(cache), "c.json");
  EXPECT_EQ(back.fingerprint, cache.fingerprint);
  EXPECT_EQ(back.choices, cache.choices);
  auto refused = [](const std::string &text) {
    try {
      Gemm::parseTuneCache(text, "c.json");
    } catch (const Error &e) {
      return std::string(e.what());
    }
    return std::string("<taken>");
  };
  const std::string head = "c.json: not a GEMM tuning cache (TNLM_GEMM_TUNE_CACHE): ";
  EXPECT_EQ(refused("{oops").rfind(head + "not JSON", 0), 0u) << refused("{oops");
  EXPECT_EQ(refused("[]").rfind(head + "expected {", 0), 0u) << refused("[]");
  EXPECT_EQ(refused(R"({"fingerprint": "f", "plans": [{"key": [1, 2], "index": 0}]})")
                .rfind(head + "plan 0: expected {\"key\": [11 integers]", 0),
            0u);
  const std::string key = "[0, 0, 1, 1, 1, 1, 1, 1, 16, 16, 16]";
  EXPECT_EQ(refused(R"({"fingerprint": "f", "plans": [{"key": )" + key + R"(, "index": 8}]})"),
            head + "plan 0: index 8 is outside [0, 8)");
  EXPECT_EQ(refused(R"({"fingerprint": "f", "plans": [{"key": )" + key + R"(, "index": 1}, )" +
                    R"({"key": )" + key + R"(, "index": 2}]})"),
            head + "plan 1: the same key twice");
}

// TNLM_GRAD_FIRST_WRITE: unset, empty or 1 leaves the gradients' zeroing to the next train
// step's first writes, 0 has the optimizer step zero them, anything else is refused naming the
// variable (no GPU needed).
TEST(GradFirstWrite, TheEnvironmentVariableIsChecked) {
  checkOnOffVariable("TNLM_GRAD_FIRST_WRITE", &CudaExecutor::firstWriteFromEnvironment, "yes", [] {
    setenv("TNLM_GRAD_FIRST_WRITE", "", 1);
    EXPECT_TRUE(CudaExecutor::firstWriteFromEnvironment());
  });
}

// TNLM_GRAD_STREAM: unset, empty or 0 keeps every train step on one stream, 1 puts the
// weight gradients' GEMMs on a second one, anything else is refused naming the variable (no
// GPU needed).
TEST(GradStream, TheEnvironmentVariableIsChecked) {
  unsetenv("TNLM_GRAD_STREAM");
  EXPECT_FALSE(CudaExecutor::gradStreamFromEnvironment());
  setenv("TNLM_GRAD_STREAM", "1", 1);
  EXPECT_TRUE(CudaExecutor::gradStreamFromEnvironment());
  setenv("TNLM_GRAD_STREAM", "0", 1);
  EXPECT_FALSE(CudaExecutor::gradStreamFromEnvironment());
  setenv("TNLM_GRAD_STREAM", "on", 1);
  try {
    CudaExecutor::gradStreamFromEnvironment();
    ADD_FAILURE() << "TNLM_GRAD_STREAM=on was taken";
  } catch (const Error &e) {
    EXPECT_EQ(std::string(e.what()).rfind("TNLM_GRAD_STREAM=on: expected 0", 0), 0u) << e.what();
  }
  unsetenv("TNLM_GRAD_STREAM");
}

// TNLM_LA_REUSE_STATES: unset, empty or 1 lets the Lightning backward's dq and dv passes read
// the states they share with the forward and the dk pass, 0 gives each pass its own, anything
// else is refused naming the variable (no GPU needed).
TEST(LightningStateReuse, TheEnvironmentVariableIsChecked) {
  checkOnOffVariable("TNLM_LA_REUSE_STATES", &CudaExecutor::reuseLaStatesFromEnvironment, "on");
}

// The lm head loss cuts a call into as few chunks as fit, of equal size: never above the
// maximum, never more chunks than needed, the last one at most chunks - 1 rows smaller, and two
// at least from two rows on (the call's logits are never whole).
TEST(LmHeadLossChunks, EqualChunksOfAtMostTheMaximum) {
  EXPECT_EQ(LmHeadLoss::evenChunk(8192, 2688), 2048);   // 4 x 2048, not 3 x 2688 + 128
  EXPECT_EQ(LmHeadLoss::evenChunk(8192, 4096), 4096);   // 2 x 4096 (the 4 GiB rule's half)
  EXPECT_EQ(LmHeadLoss::evenChunk(32768, 2688), 2521);  // 12 x 2521 + 2516
  EXPECT_EQ(LmHeadLoss::evenChunk(137216, 2688), 2639); // 51 x 2639 + 2627, not 51 x 2688 + 128
  EXPECT_EQ(LmHeadLoss::evenChunk(130, 64), 44);        // 44, 44, 42
  EXPECT_EQ(LmHeadLoss::evenChunk(100, 2688), 50);      // two chunks, not the whole call
  EXPECT_EQ(LmHeadLoss::evenChunk(3, 2688), 2);         // 2 + 1
  EXPECT_EQ(LmHeadLoss::evenChunk(1, 2688), 1);
  EXPECT_EQ(LmHeadLoss::evenChunk(0, 2688), 1);
  for (int64_t rows : {1, 2, 63, 64, 65, 2687, 2688, 2689, 8192, 10000, 137216, 819200})
    for (int64_t max : {1, 7, 64, 100, 2688}) {
      const int64_t per = LmHeadLoss::evenChunk(rows, max);
      const int64_t fewest = std::max<int64_t>(rows >= 2 ? 2 : 1, (rows + max - 1) / max),
                    used = (rows + per - 1) / per;
      const int64_t last = rows - (used - 1) * per;
      EXPECT_LE(per, max) << rows << " rows, max " << max;
      EXPECT_EQ(used, fewest) << rows << " rows, max " << max << ": " << used << " chunks of "
                              << per;
      EXPECT_GE(last, per - (used - 1)) << rows << " rows, max " << max << ": the last of " << used
                                        << " chunks of " << per << " has " << last;
    }
  EXPECT_THROW(LmHeadLoss::evenChunk(10, 0), Error);
}

} // namespace
} // namespace tnlm::cuda
