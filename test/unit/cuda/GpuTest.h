//===- GpuTest.h - shared context of the GPU tests -------------------------===//
#ifndef TNLM_TEST_UNIT_CUDA_GPUTEST_H
#define TNLM_TEST_UNIT_CUDA_GPUTEST_H

#include "runtime/cuda/CudaContext.h"

#include <string>

namespace tnlm::cuda::test {

/// One context for the whole binary (GpuMain.cpp has checked that a device exists).
Context &gpu();

/// The NVRTC architecture of the test device: sm_90a on Hopper (for wgmma), sm_XY elsewhere.
std::string deviceArch();

} // namespace tnlm::cuda::test

#endif // TNLM_TEST_UNIT_CUDA_GPUTEST_H
