//===- GemmSm90CompileTest.cpp - the Hopper GEMM compiles with NVRTC --------===//
//
// codegen/cuda/GemmSm90.cuh as the runtime will compile it (the header's text at build time,
// sm_90a cubin, no driver headers), every epilogue instantiated: a construct nvcc accepts but
// NVRTC does not fails here, in CI. The kernel's results and speed: bench/gemm_sm90.cu on the
// GPU (against cuBLASLt, bit for bit, and an fp32 loop).
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/Nvrtc.h"

#include <gtest/gtest.h>

namespace tnlm::cuda {
namespace {

const char *const kGemmCuh =
#include "GemmSm90_cuh.inc"
    ;
const char *const kMmaSyncCuh =
#include "Lightning_MmaSync_cuh.inc"
    ;

// NVRTC has no C library headers (the runtime's compiler gives the same stub:
// codegen/CudaEmitter.cpp).
const char *const kStdint =
    "#pragma once\ntypedef unsigned char uint8_t;\n"
    "typedef unsigned int uint32_t;\ntypedef unsigned long long uint64_t;\n";

TEST(Nvrtc, CompilesTheHopperGemm) {
  NvrtcOptions options;
  options.headers = {
      {"tnlm/GemmSm90.cuh", kGemmCuh}, {"MmaSync.cuh", kMmaSyncCuh}, {"stdint.h", kStdint}};
  const std::string source = R"(#include "tnlm/GemmSm90.cuh"
namespace g = tnlm::gemm;
#define TMA const __grid_constant__ g::TmaDesc
template __global__ void g::gemm_tn_sm90_kernel<g::GemmSm90Config, g::kPlain>(
    TMA, TMA, TMA, TMA, TMA, TMA, int, int, int, int);
template __global__ void g::gemm_tn_sm90_kernel<g::GemmSm90Config, g::kGatedProduct>(
    TMA, TMA, TMA, TMA, TMA, TMA, int, int, int, int);
template __global__ void g::gemm_tn_sm90_kernel<g::GemmSm90Config, g::kMulGrad>(
    TMA, TMA, TMA, TMA, TMA, TMA, int, int, int, int);
template __global__ void g::gemm_tn_sm90_kernel<g::GemmSm90Config, g::kPlain, true>(
    TMA, TMA, TMA, TMA, TMA, TMA, int, int, int, int);
template __global__ void g::gemm_tn_sm90_kernel<g::GemmSm90Config, g::kSiluPrefix>(
    TMA, TMA, TMA, TMA, TMA, TMA, int, int, int, int);
template __global__ void g::gemm_sm90_pingpong_kernel<g::GemmSm90PingpongConfig<>, g::kMulGrad>(
    TMA, TMA, TMA, TMA, TMA, TMA, int, int, int, int);
template __global__ void g::gemm_sm90_pingpong_kernel<g::GemmSm90PingpongConfig<>, g::kSiluPrefix>(
    TMA, TMA, TMA, TMA, TMA, TMA, int, int, int, int);
)";
  const CompiledKernels out = compileCuda(source, "gemm_sm90.cu", options);
  // Five instances of the cooperative kernel and two of the ping-pong one in the cubin (the
  // mangled names hold the templates' names).
  size_t found = 0, pingpong = 0;
  for (size_t at = out.image.find("gemm_tn_sm90_kernel"); at != std::string::npos;
       at = out.image.find("gemm_tn_sm90_kernel", at + 1))
    ++found;
  for (size_t at = out.image.find("gemm_sm90_pingpong_kernel"); at != std::string::npos;
       at = out.image.find("gemm_sm90_pingpong_kernel", at + 1))
    ++pingpong;
  EXPECT_GE(found, 5u);
  EXPECT_GE(pingpong, 2u);
  // Bodies, not the empty kernels a target without sm_90a's features would give (the code is
  // under __CUDA_ARCH_FEAT_SM90_ALL): each instance is some 10 KB of SASS.
  EXPECT_GT(out.image.size(), 50000u) << out.image.size();
  EXPECT_EQ(out.log.find("error"), std::string::npos) << out.log;
}

} // namespace
} // namespace tnlm::cuda
