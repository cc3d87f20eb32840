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
const char *const kMmaSyncCuh =
#include "Lightning_MmaSync_cuh.inc"
    ;

TEST(Nvrtc, CompilesTheLightningBackward) {
  NvrtcOptions options;
  options.headers = {{"tnlm/LightningAttentionBwdSimple.cuh", kBwdSimpleCuh},
                     {"tnlm/LightningAttentionGradParts.cuh", kPartsCuh},
                     {"tnlm/MmaSync.cuh", kMmaSyncCuh}};
  const CompiledKernels simple =
      compileCuda(test::lightningBwdSimpleWrappers(), "la_bwd.cu", options);
  for (const char *k : {"la_bwd_simple_bf16", "la_bwd_simple_float"})
    EXPECT_NE(simple.image.find(k), std::string::npos) << k;
  const CompiledKernels fused =
      compileCuda(test::lightningFusedGradWrappers(), "la_fused_bwd.cu", options);
  for (const char *k : {"prologue_11", "prologue_10", "prologue_01", "fwd_128", "fwd_256",
                        "bwd_128", "bwd_256", "gate_norm", "lrpe_grad_0", "lrpe_grad_1",
                        "dtheta_sum", "silu_scale", "dtheta_relative", "dtheta_relative_tc"})
    EXPECT_NE(fused.image.find(k), std::string::npos) << k;
}

} // namespace
} // namespace tnlm::cuda
