//===- LightningBwdCompileTest.cpp - the GPU Lightning backward compiles with NVRTC -===//
//
// The wrappers tnlm-gpu-lightning runs on the device (LightningBwdWrappers.h), compiled as it
// compiles them (the headers' text at build time, sm_90a cubin) on every machine with the
// toolkit: a header that nvcc accepts but NVRTC does not fails here, in CI.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/Nvrtc.h"
#include "test/unit/cuda/LightningBwdWrappers.h"

#include <gtest/gtest.h>

namespace tnlm::cuda {
namespace {

const char *const kBwdSimpleCuh =
#include "Lightning_LightningAttentionBwdSimple_cuh.inc"
    ;
const char *const kPartsCuh =
#include "Lightning_LightningAttentionGradParts_cuh.inc"
    ;
const char *const kSm90Cuh =
#include "Lightning_LightningAttentionFwdSm90_cuh.inc"
    ;
const char *const kFwdCuh =
#include "Lightning_LightningAttentionFwd_cuh.inc"
    ;
const char *const kPlanH =
#include "Lightning_LightningFwdPlan_h.inc"
    ;

TEST(Nvrtc, CompilesTheLightningBackward) {
  NvrtcOptions options;
  options.headers = {{"tnlm/LightningAttentionBwdSimple.cuh", kBwdSimpleCuh},
                     {"tnlm/LightningAttentionGradParts.cuh", kPartsCuh}};
  const CompiledKernels simple =
      compileCuda(test::lightningBwdSimpleWrappers(), "la_bwd.cu", options);
  for (const char *k : {"la_bwd_simple_bf16", "la_bwd_simple_float"})
    EXPECT_NE(simple.image.find(k), std::string::npos) << k;
  const CompiledKernels fused =
      compileCuda(test::lightningFusedGradWrappers(), "la_fused_bwd.cu", options);
  for (const char *k :
       {"prologue_11", "prologue_10", "prologue_01", "fwd_128", "fwd_256", "bwd_128", "bwd_256",
        "gate_norm", "lrpe_grad_0", "lrpe_grad_1", "dtheta_sum", "silu_scale"})
    EXPECT_NE(fused.image.find(k), std::string::npos) << k;
}

// The reversed pass of the Hopper forward (the backward's dk and dv,
// LightningBwdFastGpuTest.cpp) next to the forward, as that test compiles them.
TEST(Nvrtc, CompilesTheReversedLightningPass) {
  NvrtcOptions options;
  options.headers = {{"tnlm/LightningAttentionFwdSm90.cuh", kSm90Cuh},
                     {"LightningAttentionFwd.cuh", kFwdCuh},
                     {"LightningFwdPlan.h", kPlanH},
                     {"stdint.h", "#pragma once\ntypedef unsigned short uint16_t;\ntypedef "
                                  "unsigned int uint32_t;\ntypedef unsigned char uint8_t;\n"
                                  "typedef unsigned long long uint64_t;\ntypedef int int32_t;\n"
                                  "typedef long long int64_t;\n"}};
  const std::string fwd = "&tnlm::la::lightning_fwd_sm90_main_kernel<CfgF>",
                    rev = "&tnlm::la::lightning_fwd_sm90_main_kernel<CfgR>";
  options.nameExpressions = {fwd, rev};
  const CompiledKernels out = compileCuda(
      "#include \"tnlm/LightningAttentionFwdSm90.cuh\"\n"
      "using CfgF = tnlm::la::LightningFwdSm90Config<128, 128>;\n"
      "using CfgR = tnlm::la::LightningFwdSm90Config<128, 128, 64, 3, 4, true>;\n",
      "la_rev.cu", options);
  ASSERT_EQ(out.loweredNames.size(), 2u);
  EXPECT_NE(out.loweredNames.at(fwd), out.loweredNames.at(rev));
  for (const auto &[expr, name] : out.loweredNames)
    EXPECT_NE(out.image.find(name), std::string::npos) << expr;
}

} // namespace
} // namespace tnlm::cuda
