//===- ArtifactWriter.h - kernel plan → model.tnlm --------------*- C++ -*-===//
#ifndef TNLM_CODEGEN_ARTIFACTWRITER_H
#define TNLM_CODEGEN_ARTIFACTWRITER_H

#include "codegen/CudaEmitter.h"
#include "codegen/KernelPlan.h"

#include <cstdint>
#include <string>
#include <vector>

namespace mlir::tnlm {

/// The compiled device code of a CUDA program: the image NVRTC made from its source and the
/// symbol of each of its kernels (program.kernels order).
struct CudaImage {
  std::string image;
  bool ptx = false;
  std::vector<std::string> symbols;
};

/// Serializes a memory-planned plan of `module` into the FlatBuffers artifact format
/// (runtime/schema/tnlm.fbs) for `target` ("cpu" or "cuda:sm_90a"). CUDA artifacts carry
/// `program`'s per-step launches (for plans.front()) and `image`.
std::vector<uint8_t> serializeArtifact(ModuleOp module, const std::vector<KernelPlan> &plans,
                                       llvm::StringRef target,
                                       const CudaProgram *program = nullptr,
                                       const CudaImage *image = nullptr);

/// Writes bytes to `path` through a temporary file and a rename, so a failed write never
/// leaves a truncated artifact behind. Returns an error message, or "" on success.
std::string writeFileAtomically(const std::string &path, const std::vector<uint8_t> &bytes);

} // namespace mlir::tnlm

#endif // TNLM_CODEGEN_ARTIFACTWRITER_H
