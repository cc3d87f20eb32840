//===- CudaCompile.cpp - NVRTC for tnlmc, when built with CUDA ------------===//
#include "tools/tnlmc/CudaCompile.h"

#ifdef TNLM_HAVE_CUDA
#include "runtime/Error.h"
#include "runtime/cuda/Nvrtc.h"
#endif

namespace tnlmc {

bool compileCudaSource(const std::string &source, const std::string &name,
                       const std::string &arch, const std::map<std::string, std::string> &headers,
                       const std::vector<std::string> &expressions, std::string &image,
                       std::map<std::string, std::string> &lowered, std::string &error) {
#ifdef TNLM_HAVE_CUDA
  try {
    tnlm::cuda::NvrtcOptions options;
    options.arch = arch;
    options.headers = headers;
    options.nameExpressions = expressions;
    tnlm::cuda::CompiledKernels out = tnlm::cuda::compileCuda(source, name, options);
    image = std::move(out.image);
    lowered = std::move(out.loweredNames);
    return true;
  } catch (const tnlm::Error &e) {
    error = e.what();
    return false;
  }
#else
  (void)source, (void)name, (void)arch, (void)headers, (void)expressions, (void)image,
      (void)lowered;
  error = "compiling a CUDA artifact needs the CUDA toolkit (NVRTC), and this tnlmc was built "
          "without one; --emit=cuda-source works without it";
  return false;
#endif
}

} // namespace tnlmc
