//===- ArtifactWriter.h - kernel plan → model.tnlm --------------*- C++ -*-===//
#ifndef TNLM_CODEGEN_ARTIFACTWRITER_H
#define TNLM_CODEGEN_ARTIFACTWRITER_H

#include "codegen/KernelPlan.h"

#include <cstdint>
#include <string>
#include <vector>

namespace mlir::tnlm {

/// Serializes a memory-planned plan of `module` into the FlatBuffers artifact format
/// (runtime/schema/tnlm.fbs) for `target` ("cpu").
std::vector<uint8_t> serializeArtifact(ModuleOp module, const std::vector<KernelPlan> &plans,
                                       llvm::StringRef target);

/// Writes bytes to `path` through a temporary file and a rename, so a failed write never
/// leaves a truncated artifact behind. Returns an error message, or "" on success.
std::string writeFileAtomically(const std::string &path, const std::vector<uint8_t> &bytes);

} // namespace mlir::tnlm

#endif // TNLM_CODEGEN_ARTIFACTWRITER_H
