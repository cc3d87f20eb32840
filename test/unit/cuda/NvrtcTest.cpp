//===- NvrtcTest.cpp - CUDA C++ to cubin/PTX without a GPU ------------------===//
//
// NVRTC needs no driver: these run on every machine with the toolkit, CI included.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/Nvrtc.h"

#include "runtime/Error.h"
#include "runtime/cuda/CudaApi.h"
#include "runtime/cuda/CudaContext.h"
#include "test/unit/cuda/TestKernels.h"

#include <gtest/gtest.h>

namespace tnlm::cuda {
namespace {

TEST(Nvrtc, CompilesToAnSm90aCubin) {
  CompiledKernels out = compileCuda(test::kElementwiseSource, "elementwise.cu");
  ASSERT_GT(out.image.size(), 1000u);
  EXPECT_EQ(imageKind(out.image), ImageKind::Cubin);
  EXPECT_EQ(out.options.front(), "--gpu-architecture=sm_90a");
  // The kernel names are in the ELF's symbol table.
  EXPECT_NE(out.image.find("silu"), std::string::npos);
  EXPECT_NE(out.image.find("shared_roundtrip"), std::string::npos);
  EXPECT_FALSE(nvrtcVersionString().empty());
}

TEST(Nvrtc, CompilesToPtxForTheVirtualArchitecture) {
  NvrtcOptions options;
  options.output = NvrtcOptions::Output::Ptx;
  CompiledKernels out = compileCuda(test::kElementwiseSource, "elementwise.cu", options);
  EXPECT_EQ(imageKind(out.image), ImageKind::Ptx);
  EXPECT_EQ(out.options.front(), "--gpu-architecture=compute_90a");
  EXPECT_NE(out.image.find(".target sm_90a"), std::string::npos);
  EXPECT_NE(out.image.find(".entry silu("), std::string::npos);
  EXPECT_EQ(out.image.back(), '\n'); // no trailing NUL: Module adds it
}

TEST(Nvrtc, ResolvesTemplateKernelNames) {
  NvrtcOptions options;
  options.nameExpressions = {"scale<float>", "scale<int>"};
  CompiledKernels out = compileCuda(test::kElementwiseSource, "elementwise.cu", options);
  ASSERT_EQ(out.loweredNames.size(), 2u);
  EXPECT_EQ(out.loweredNames["scale<float>"], "_Z5scaleIfEvPT_S0_j");
  EXPECT_EQ(out.loweredNames["scale<int>"], "_Z5scaleIiEvPT_S0_j");
  EXPECT_NE(out.image.find("_Z5scaleIfEvPT_S0_j"), std::string::npos);
}

TEST(Nvrtc, SyntaxErrorGivesTheLogLine) {
  try {
    compileCuda(test::kBrokenSource, "broken.cu");
    FAIL() << "a missing semicolon compiled";
  } catch (const Error &e) {
    std::string message = e.what();
    EXPECT_NE(message.find("NVRTC could not compile broken.cu"), std::string::npos) << message;
    EXPECT_NE(message.find("broken.cu(3): error"), std::string::npos) << message;
    EXPECT_NE(message.find("expected a \";\""), std::string::npos) << message;
    EXPECT_NE(message.find("--gpu-architecture=sm_90a"), std::string::npos) << message;
  }
}

TEST(Nvrtc, HeadersFromMemoryAndTheToolkit) {
  // cuda_bf16.h from the toolkit found beside NVRTC; a generated header from memory.
  if (toolkitIncludeDir().empty())
    GTEST_SKIP() << "no CUDA headers on this machine (NVRTC without the toolkit)";
  NvrtcOptions options;
  options.headers["tnlm/params.h"] = "#define TNLM_SCALE 0.5f\n";
  options.extraOptions = {"-lineinfo", "-DTNLM_EXTRA=1"};
  const char *source = R"cuda(
#include <cuda_bf16.h>
#include "tnlm/params.h"
extern "C" __global__ void to_bf16(const float *x, __nv_bfloat16 *y, unsigned n) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n && TNLM_EXTRA)
    y[i] = __float2bfloat16(x[i] * TNLM_SCALE);
}
)cuda";
  CompiledKernels out = compileCuda(source, "to_bf16.cu", options);
  EXPECT_EQ(imageKind(out.image), ImageKind::Cubin);
}

TEST(Nvrtc, UnknownArchitectureNamesTheOption) {
  NvrtcOptions options;
  options.arch = "sm_1234";
  try {
    compileCuda(test::kElementwiseSource, "elementwise.cu", options);
    FAIL() << "sm_1234 accepted";
  } catch (const Error &e) {
    EXPECT_NE(std::string(e.what()).find("sm_1234"), std::string::npos) << e.what();
  }
}

TEST(ImageKind, TellsCubinFatbinPtxAndJunkApart) {
  EXPECT_EQ(imageKind(std::string("\177ELF\2\1", 6)), ImageKind::Cubin);
  EXPECT_EQ(imageKind(std::string("\x50\xed\x55\xba\x01\x00", 6)), ImageKind::Fatbin);
  EXPECT_EQ(imageKind("//\n.version 9.0\n.target sm_90a\n"), ImageKind::Ptx);
  EXPECT_EQ(imageKind("not a kernel image"), ImageKind::Unknown);
  EXPECT_EQ(imageKind(""), ImageKind::Unknown);
}

} // namespace
} // namespace tnlm::cuda
