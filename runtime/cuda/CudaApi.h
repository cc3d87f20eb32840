//===- CudaApi.h - the CUDA driver, NVRTC and cuBLASLt, loaded at run time -*- C++ -*-===//
//
// tnlm never links libcuda, libcudart, libnvrtc or libcublasLt: one binary has to run on a
// machine without a GPU (CI, a laptop compiling artifacts) and on the H200. The three
// libraries are opened with dlopen on first use and their entry points looked up with dlsym
// into the tables below, which list exactly the symbols the runtime calls. The toolkit
// headers supply only the prototypes.
//
// Versioned driver entry points: cuda.h maps e.g. `cuMemAlloc` to `cuMemAlloc_v2` with a
// macro, so a table member written `cuMemAlloc` is really `cuMemAlloc_v2`, is looked up under
// that exported name, and has that prototype; callers write `driver().cuMemAlloc(...)` and
// get the ABI their headers describe.
//
// Every failing call becomes a tnlm::Error naming the call, the library's error string and a
// context the caller supplies (the step and kernel, the tensor, the GEMM shape):
//   TNLM_CU(cuModuleGetFunction, (&fn, module, name), "step 3 (kernel 'silu')");
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CUDA_CUDAAPI_H
#define TNLM_RUNTIME_CUDA_CUDAAPI_H

#include <cublasLt.h>
#include <cuda.h>
#include <nvrtc.h>

#include <string>
#include <string_view>

namespace tnlm::cuda {

// clang-format off
#define TNLM_CUDA_DRIVER_SYMBOLS(X)                                                            \
  X(cuInit) X(cuDriverGetVersion) X(cuGetErrorName) X(cuGetErrorString)                       \
  X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName) X(cuDeviceGetAttribute)                \
  X(cuDeviceTotalMem) X(cuDevicePrimaryCtxRetain) X(cuDevicePrimaryCtxRelease)                 \
  X(cuCtxSetCurrent) X(cuStreamCreate) X(cuStreamDestroy) X(cuStreamSynchronize)               \
  X(cuMemAlloc) X(cuMemFree) X(cuMemcpyHtoDAsync) X(cuMemcpyDtoHAsync) X(cuMemcpyDtoDAsync)    \
  X(cuMemsetD8Async) X(cuMemsetD32Async) X(cuModuleLoadDataEx) X(cuModuleUnload) X(cuModuleGetFunction) X(cuModuleGetGlobal) \
  X(cuFuncSetAttribute) X(cuFuncGetAttribute) X(cuLaunchKernel) X(cuLaunchKernelEx) X(cuStreamBeginCapture) X(cuStreamEndCapture)        \
  X(cuGraphInstantiate) X(cuGraphLaunch) X(cuGraphGetNodes) X(cuGraphDestroy)                  \
  X(cuGraphExecDestroy) X(cuEventCreate) X(cuEventDestroy) X(cuEventRecord)                   \
  X(cuEventSynchronize) X(cuEventElapsedTime) X(cuStreamIsCapturing) X(cuOccupancyMaxActiveClusters) \
  X(cuMemHostAlloc) X(cuMemFreeHost) X(cuStreamWaitEvent) X(cuTensorMapEncodeTiled)

#define TNLM_CUDA_NVRTC_SYMBOLS(X)                                                             \
  X(nvrtcVersion) X(nvrtcGetErrorString) X(nvrtcCreateProgram) X(nvrtcDestroyProgram)          \
  X(nvrtcCompileProgram) X(nvrtcGetProgramLogSize) X(nvrtcGetProgramLog) X(nvrtcGetPTXSize)    \
  X(nvrtcGetPTX) X(nvrtcGetCUBINSize) X(nvrtcGetCUBIN) X(nvrtcAddNameExpression)               \
  X(nvrtcGetLoweredName)

#define TNLM_CUDA_CUBLASLT_SYMBOLS(X)                                                          \
  X(cublasLtGetStatusName) X(cublasLtGetStatusString) X(cublasLtCreate)  \
  X(cublasLtDestroy) X(cublasLtMatmulDescCreate) X(cublasLtMatmulDescDestroy)                  \
  X(cublasLtMatmulDescSetAttribute) X(cublasLtMatrixLayoutCreate)                              \
  X(cublasLtMatrixLayoutDestroy) X(cublasLtMatmulPreferenceCreate)                             \
  X(cublasLtMatmulPreferenceDestroy) X(cublasLtMatmulPreferenceSetAttribute)                   \
  X(cublasLtMatmulAlgoGetHeuristic) X(cublasLtMatmul) X(cublasLtGetVersion)                  \
  X(cublasLtMatmulAlgoConfigGetAttribute)
// clang-format on

#define TNLM_CUDA_DECLARE_SYMBOL(fn) decltype(&::fn) fn = nullptr;

/// The driver entry points; loaded and cuInit-ed by driver().
struct DriverApi {
  TNLM_CUDA_DRIVER_SYMBOLS(TNLM_CUDA_DECLARE_SYMBOL)
  int version = 0; // cuDriverGetVersion: 13000 for CUDA 13.0
};

/// NVRTC; loaded by nvrtc(). Needs no GPU and no driver.
struct NvrtcApi {
  TNLM_CUDA_NVRTC_SYMBOLS(TNLM_CUDA_DECLARE_SYMBOL)
  std::string path; // the library that was opened, as the loader resolved it
  int major = 0, minor = 0;
};

/// cuBLASLt; loaded by cublasLt().
struct CublasLtApi {
  TNLM_CUDA_CUBLASLT_SYMBOLS(TNLM_CUDA_DECLARE_SYMBOL)
  std::string path;
};

/// The loaded, initialized driver. Throws tnlm::Error with one sentence when there is no
/// driver (libcuda.so.1 missing, or only the toolkit's stub), when it is older than CUDA 13.0,
/// or when cuInit fails; the first failure is remembered and thrown again on later calls.
const DriverApi &driver();
/// NVRTC (libnvrtc.so.13, else libnvrtc.so, else under the toolkit root). Throws if absent.
const NvrtcApi &nvrtc();
/// cuBLASLt (libcublasLt.so.13, else libcublasLt.so, else under the toolkit root).
const CublasLtApi &cublasLt();

/// True when the driver loads and sees at least one device; otherwise false and, if `why` is
/// given, the sentence a context would throw. Never throws.
bool deviceAvailable(std::string *why = nullptr);

/// The message thrown when libcuda.so.1 cannot be opened.
extern const char *const kNoDriverMessage;

/// The CUDA toolkit root the runtime falls back on to find NVRTC and cuBLASLt: $CUDA_HOME,
/// else $CUDA_PATH, else the TNLM_CUDA_ROOT this was built with.
std::string toolkitRoot();

/// The toolkit's include folder for NVRTC (cuda_bf16.h and friends are not built into NVRTC):
/// the first that exists of $CUDA_HOME/include, $CUDA_PATH/include, the include folder beside
/// the NVRTC library in use, and TNLM_CUDA_ROOT/include; empty when none does.
std::string toolkitIncludeDir();

[[noreturn]] void throwCuError(CUresult result, const char *call, std::string_view context);
[[noreturn]] void throwNvrtcError(nvrtcResult result, const char *call, std::string_view context);
[[noreturn]] void throwCublasLtError(cublasStatus_t status, const char *call,
                                     std::string_view context);

inline void checkCu(CUresult result, const char *call, std::string_view context) {
  if (result != CUDA_SUCCESS)
    throwCuError(result, call, context);
}
inline void checkNvrtc(nvrtcResult result, const char *call, std::string_view context) {
  if (result != NVRTC_SUCCESS)
    throwNvrtcError(result, call, context);
}
inline void checkCublasLt(cublasStatus_t status, const char *call, std::string_view context) {
  if (status != CUBLAS_STATUS_SUCCESS)
    throwCublasLtError(status, call, context);
}

} // namespace tnlm::cuda

// `fn` names the call in the message as written (cuMemAlloc), while the table member it
// calls is the versioned one (cuMemAlloc_v2).
#define TNLM_CU(fn, args, context)                                                                 \
  ::tnlm::cuda::checkCu(::tnlm::cuda::driver().fn args, #fn, context)
#define TNLM_NVRTC(fn, args, context)                                                              \
  ::tnlm::cuda::checkNvrtc(::tnlm::cuda::nvrtc().fn args, #fn, context)
#define TNLM_CUBLASLT(fn, args, context)                                                           \
  ::tnlm::cuda::checkCublasLt(::tnlm::cuda::cublasLt().fn args, #fn, context)

#endif // TNLM_RUNTIME_CUDA_CUDAAPI_H
