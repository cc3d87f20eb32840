//===- GpuTrainScratch.h - tnlmc --summary's count of the GPU train scratch -*- C++ -*-===//
//
// The bytes CudaExecutor allocates beside the arena for a cuda train artifact
// (runtime/TrainScratch.h), from the kernel plans, for tnlmc --summary's "fits an H200".
// A separate translation unit: runtime/ headers use namespace ::tnlm, tnlmc.cpp mlir::tnlm.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TOOLS_TNLMC_GPUTRAINSCRATCH_H
#define TNLM_TOOLS_TNLMC_GPUTRAINSCRATCH_H

#include "codegen/KernelPlan.h"

#include <cstdint>
#include <vector>

namespace mlir::tnlm {

struct GpuTrainScratchBytes {
  int64_t total = 0, gated = 0;
  int64_t lmHead = 0, lmHeadChunkRows = 0; // the fused lm head loss's chunk of logits
  int64_t keptLaStates = 0;                // the plain layers' kept Lightning piece states
};
GpuTrainScratchBytes gpuTrainScratch(const std::vector<KernelPlan> &plans, int64_t maxRows,
                                     int64_t maxSeq);

} // namespace mlir::tnlm

#endif // TNLM_TOOLS_TNLMC_GPUTRAINSCRATCH_H
