//===- CudaEmitter.h - kernel plan → CUDA C++ + launch metadata -*- C++ -*-===//
//
// For the cuda:sm_90a target: turns a memory-planned kernel plan into ONE deterministic CUDA
// C++ source (same plan → byte-identical text) and per-step launch metadata. Row-wise and
// elementwise steps become extern "C" wrappers around the device templates of
// codegen/cuda/Elementwise.cuh, one per distinct specialization (identical layers share a
// kernel, e.g. tnlm_srms_norm_c1024); GEMMs run through cuBLASLt at run time and are recorded
// as GEMM launches; Lightning Attention instantiates the Hopper template of
// codegen/cuda/LightningAttentionFwdSm90.cuh (head dim 128) between a SiLU prologue and
// a gated-norm epilogue. The device headers are embedded in the compiler and handed to NVRTC
// as in-memory headers, so artifacts never depend on the source tree.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_CODEGEN_CUDAEMITTER_H
#define TNLM_CODEGEN_CUDAEMITTER_H

#include "codegen/KernelPlan.h"

#include <map>
#include <string>
#include <vector>

namespace mlir::tnlm {

/// Mirrors tnlm.fbs LaunchKind: how one launch of a step runs and how its grid follows rows.
enum class CudaLaunchKind {
  Gemm,
  PerRow,
  LightningState,
  LightningScan,
  LightningMain,
  StateCommit,
  Decode,
  PerSlot,
  Gemv,
  Single,
  PerHead,
  PerChunk,
  GemvDecode
};
const char *launchKindName(CudaLaunchKind kind);

struct CudaLaunch {
  CudaLaunchKind kind = CudaLaunchKind::PerRow;
  int64_t kernel = -1; // index into CudaProgram::kernels; -1 for Gemm
  int64_t block = 0, sharedMem = 0;
  int64_t gemmN = 0, gemmK = 0; // Gemm: out[rows, n] = in[rows, k] · W[n, k]ᵀ
  int64_t prologue = 0;         // Gemv: the fused norm of the step before (KernelPlan.h)
  int64_t maxRows = 0;          // Gemv: the largest batch it serves
  int64_t stages = 0;           // Gemv: the most weight stages of its shared-memory ring
  int64_t cluster = 0;          // GemvDecode: CTAs per head (its thread block cluster)
  std::string note;             // what the launch does, for the manifest
};

struct CudaKernel {
  std::string name;       // readable name; the symbol itself for extern "C" kernels
  std::string expression; // template kernels: NVRTC name expression (symbol = lowered name)
};

struct CudaProgram {
  std::string arch = "sm_90a";
  std::string sourceName; // e.g. "forward.cu"
  std::string source;
  std::vector<CudaKernel> kernels;
  /// Per function (in the order of the plans given to emitCudaProgram), one launch list per
  /// plan step, in plan order.
  std::vector<std::vector<std::vector<CudaLaunch>>> functions;
};

/// Emits the CUDA program of `plan` (memory-planned, lowered for cuda). Fails with a
/// diagnostic at `loc` naming the step (layer) when a step has no CUDA kernel yet.
FailureOr<CudaProgram> emitCudaProgram(const KernelPlan &plan, Location loc);
/// One program for several functions of one artifact (recurrent: @prefill and @decode_step),
/// their kernels shared; `plans` share one parameter table.
FailureOr<CudaProgram> emitCudaProgram(const std::vector<KernelPlan> &plans, Location loc);

/// The device headers the source includes, by include name ("tnlm/Elementwise.cuh").
const std::map<std::string, std::string> &cudaDeviceHeaders();

/// The readable launch manifest (`tnlmc --emit=cuda-source` writes it next to the source).
/// `symbols`, when given, are the resolved kernel symbols (same order as program.kernels).
/// `function`: the index of `plan` among the program's functions.
void printCudaManifest(const KernelPlan &plan, const CudaProgram &program, llvm::raw_ostream &os,
                       const std::vector<std::string> *symbols = nullptr, size_t function = 0);

} // namespace mlir::tnlm

#endif // TNLM_CODEGEN_CUDAEMITTER_H
