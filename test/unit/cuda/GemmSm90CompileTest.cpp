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
  // Each instance in the cubin, by its mangled name (the templates' names and arguments:
  // EPI 0-3, BMN 0/1; the ping-pong config's 5 stages).
  for (const char *name : {"gemm_tn_sm90_kernelINS0_14GemmSm90ConfigELi0ELb0E",
                           "gemm_tn_sm90_kernelINS0_14GemmSm90ConfigELi1ELb0E",
                           "gemm_tn_sm90_kernelINS0_14GemmSm90ConfigELi2ELb1E",
                           "gemm_tn_sm90_kernelINS0_14GemmSm90ConfigELi0ELb1E",
                           "gemm_tn_sm90_kernelINS0_14GemmSm90ConfigELi3ELb0E",
                           "gemm_sm90_pingpong_kernelINS0_22GemmSm90PingpongConfigILi5EEELi2ELb1E",
                           "gemm_sm90_pingpong_kernelINS0_22GemmSm90PingpongConfigILi5EEELi3ELb0E"})
    EXPECT_NE(out.image.find(name), std::string::npos) << name;
  // Bodies, not the empty kernels a target without sm_90a's features would give (the code is
  // under __CUDA_ARCH_FEAT_SM90_ALL): each instance is some 10 KB of SASS.
  EXPECT_GT(out.image.size(), 50000u) << out.image.size();
  EXPECT_EQ(out.log.find("error"), std::string::npos) << out.log;
}

} // namespace
} // namespace tnlm::cuda
