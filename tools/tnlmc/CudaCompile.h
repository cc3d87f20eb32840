//===- CudaCompile.h - NVRTC for tnlmc, when built with CUDA ----*- C++ -*-===//
//
// Kept apart from tnlmc.cpp: the runtime's NVRTC wrapper lives in namespace ::tnlm, which
// would clash with mlir::tnlm under tnlmc.cpp's `using namespace mlir`.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TOOLS_TNLMC_CUDACOMPILE_H
#define TNLM_TOOLS_TNLMC_CUDACOMPILE_H

#include <map>
#include <string>
#include <vector>

namespace tnlmc {

/// Compiles CUDA C++ `source` for `arch` with the in-memory `headers` into a cubin (`image`)
/// and resolves `expressions` to symbols (`lowered`). Returns false with `error` set when
/// NVRTC fails or this tnlmc was built without the CUDA toolkit.
bool compileCudaSource(const std::string &source, const std::string &name,
                       const std::string &arch, const std::map<std::string, std::string> &headers,
                       const std::vector<std::string> &expressions, std::string &image,
                       std::map<std::string, std::string> &lowered, std::string &error);

} // namespace tnlmc

#endif // TNLM_TOOLS_TNLMC_CUDACOMPILE_H
