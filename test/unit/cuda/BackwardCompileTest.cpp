//===- BackwardCompileTest.cpp - Backward.cuh compiles with NVRTC, no GPU needed ---===//
//
// The wrappers BackwardGpuTest.cpp runs on the device, compiled as it compiles them (the
// header's text at build time, sm_90a cubin), on every machine with the toolkit: a header that
// nvcc accepts but NVRTC does not (e.g. one using INFINITY) fails here, in CI, before it
// reaches the device.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/Nvrtc.h"
#include "test/unit/cuda/BackwardWrappers.h"

#include <gtest/gtest.h>

namespace tnlm::cuda {
namespace {

const char *const kBackwardCuh =
#include "BackwardCuh.inc"
    ;

TEST(Nvrtc, CompilesTheBackwardTemplates) {
  NvrtcOptions options;
  options.headers = {{"tnlm/Backward.cuh", kBackwardCuh}};
  CompiledKernels out = compileCuda(test::backwardWrappers(), "backward.cu", options);
  EXPECT_GT(out.image.size(), 1000u);
  for (const char *k :
       {"srms_norm_grad_c4096_bf16", "add_srms_norm_grad_c768_float", "silu_grad_c100_bf16",
        "mul_grad_c4096", "embedding_grad_float", "cross_entropy_grad_bf16",
        "cross_entropy_grad_rows_bf16", "cross_entropy_grad_rows_float", "cross_entropy_loss_1024",
        "loss_total", "sum_squares_chunks", "sum_squares_total_block", "adamw", "adamw_bf16",
        "optimizer_scalars", "step_increment"})
    EXPECT_NE(out.image.find(k), std::string::npos) << k;
}

} // namespace
} // namespace tnlm::cuda
