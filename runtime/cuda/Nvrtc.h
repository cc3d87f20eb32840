//===- Nvrtc.h - CUDA C++ source to a cubin or PTX, in process -*- C++ -*-===//
//
// What codegen runs at compile time to turn the emitted CUDA C++ of a plan's kernels into
// the images stored in the artifact. NVRTC needs neither a GPU nor a driver.
//
//   NvrtcOptions options;                       // sm_90a cubin by default
//   CompiledKernels out = compileCuda(source, "lightning_fwd.cu", options);
//   // out.image: the cubin, ready for Module; out.log: NVRTC's warnings
//
// A failed compilation throws a tnlm::Error holding NVRTC's log, whose lines read
// "lightning_fwd.cu(12): error: ...".
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CUDA_NVRTC_H
#define TNLM_RUNTIME_CUDA_NVRTC_H

#include <map>
#include <string>
#include <vector>

namespace tnlm::cuda {

struct NvrtcOptions {
  /// The GPU: "sm_90a" gives a cubin with Hopper's wgmma and TMA; "compute_90a" (or
  /// output = Ptx) gives PTX for the driver to compile at load time.
  std::string arch = "sm_90a";
  enum class Output { Cubin, Ptx } output = Output::Cubin;
  /// Added as -I; then, with addToolkitIncludes, toolkitIncludeDir() when there is one
  /// (NVRTC has no built-in cuda_bf16.h, cuda/barrier, ...).
  std::vector<std::string> includeDirs;
  bool addToolkitIncludes = true;
  /// Source-level headers by include name: {"tnlm/LightningAttentionFwd.cuh", text}.
  std::map<std::string, std::string> headers;
  /// Name expressions to resolve to mangled kernel names, e.g. "silu<float>" or
  /// "&tnlm::la::kernel<128>"; see CompiledKernels::loweredNames.
  std::vector<std::string> nameExpressions;
  /// -std=c++17 and -default-device come first; these follow (e.g. "-lineinfo",
  /// "--use_fast_math", "-DBLOCK=64").
  std::vector<std::string> extraOptions;
};

struct CompiledKernels {
  std::string image;                               // cubin (ELF) or PTX text
  std::string log;                                 // NVRTC's log (warnings), may be empty
  std::map<std::string, std::string> loweredNames; // name expression -> symbol to launch
  std::vector<std::string> options;                // the options NVRTC was given
};

/// Compiles `source` (named `sourceName` in the log). Throws tnlm::Error when NVRTC is
/// missing or the source does not compile; the message holds the options and NVRTC's log.
CompiledKernels compileCuda(const std::string &source, const std::string &sourceName,
                            const NvrtcOptions &options = {});

/// "13.0" for the NVRTC that compileCuda uses; throws if there is none.
std::string nvrtcVersionString();

} // namespace tnlm::cuda

#endif // TNLM_RUNTIME_CUDA_NVRTC_H
