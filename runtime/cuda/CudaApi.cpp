//===- CudaApi.cpp - dlopen the CUDA driver, NVRTC and cuBLASLt -----------===//
//
// Each library is opened once, under std::call_once; the outcome (the table or
// the error sentence) is kept, so a machine without a driver pays for one failed dlopen.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/CudaApi.h"

#include "runtime/Error.h"

#include <dlfcn.h>

#include <sys/stat.h>

#include <cstdlib>
#include <mutex>
#include <vector>

#ifndef TNLM_CUDA_ROOT
#define TNLM_CUDA_ROOT "/usr/local/cuda"
#endif

// Two levels, so that a versioning macro (cuMemAlloc -> cuMemAlloc_v2) expands first.
#define TNLM_CUDA_STRINGIFY_(x) #x
#define TNLM_CUDA_STRINGIFY(x) TNLM_CUDA_STRINGIFY_(x)

namespace tnlm::cuda {

const char *const kNoDriverMessage =
    "no CUDA driver on this machine (libcuda.so.1 not found): CUDA artifacts need an NVIDIA "
    "GPU; compile with --target=cpu to run on the CPU";

namespace {

constexpr const char *kNoDeviceAdvice =
    ": CUDA artifacts need an NVIDIA GPU; compile with --target=cpu to run on the CPU";

std::string joined(const std::vector<std::string> &items) {
  std::string out;
  for (const std::string &item : items)
    out += (out.empty() ? "" : ", ") + item;
  return out;
}

/// dlopen the first of `names` that opens; the tried names go to `tried`.
void *openFirst(const std::vector<std::string> &names, std::string &opened,
                std::vector<std::string> &tried) {
  for (const std::string &name : names) {
    tried.push_back(name);
    if (void *handle = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL)) {
      opened = name;
      return handle;
    }
  }
  return nullptr;
}

/// Bare sonames first (the loader's path: LD_LIBRARY_PATH, ldconfig), then the toolkit.
std::vector<std::string> candidates(const char *stem, const char *major) {
  std::vector<std::string> names = {std::string(stem) + ".so." + major, std::string(stem) + ".so"};
  std::string root = toolkitRoot();
  for (const char *lib : {"/lib64/", "/lib/", "/targets/x86_64-linux/lib/"})
    names.push_back(root + lib + stem + ".so." + major);
  return names;
}

template <typename Fn>
void lookUp(void *handle, Fn &slot, const char *symbol, std::vector<std::string> &missing) {
  slot = reinterpret_cast<Fn>(dlsym(handle, symbol));
  if (!slot)
    missing.push_back(symbol);
}

struct DriverState {
  std::once_flag once;
  DriverApi api;
  std::string error; // non-empty: the sentence driver() throws
};

DriverState &driverState() {
  static DriverState state;
  std::call_once(state.once, [&] {
    void *handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      state.error = kNoDriverMessage;
      return;
    }
    DriverApi &api = state.api;
    std::vector<std::string> missing;
#define TNLM_CUDA_LOAD(fn) lookUp(handle, api.fn, TNLM_CUDA_STRINGIFY(fn), missing);
    TNLM_CUDA_DRIVER_SYMBOLS(TNLM_CUDA_LOAD)
#undef TNLM_CUDA_LOAD
    if (!missing.empty()) {
      state.error = "the CUDA driver (libcuda.so.1) lacks " + joined(missing) +
                    ": it is older than tnlm's CUDA 13.0 backend needs; install NVIDIA driver "
                    "R580 or newer";
      return;
    }
    CUresult init = api.cuInit(0);
    if (init == CUDA_ERROR_STUB_LIBRARY) {
      state.error = std::string("no CUDA driver on this machine (libcuda.so.1 is the toolkit's "
                                "stub library)") +
                    kNoDeviceAdvice;
      return;
    }
    if (init == CUDA_ERROR_NO_DEVICE) {
      state.error =
          std::string("no CUDA device on this machine (the driver found none)") + kNoDeviceAdvice;
      return;
    }
    if (init != CUDA_SUCCESS) {
      const char *text = nullptr;
      api.cuGetErrorString(init, &text);
      state.error = std::string("the CUDA driver failed to initialize (cuInit: ") +
                    (text ? text : "unknown error") + ")" + kNoDeviceAdvice;
      return;
    }
    api.cuDriverGetVersion(&api.version);
    if (api.version < CUDA_VERSION) {
      state.error = "the CUDA driver supports CUDA " + std::to_string(api.version / 1000) + "." +
                    std::to_string(api.version % 1000 / 10) + ", older than the CUDA " +
                    std::to_string(CUDA_VERSION / 1000) + "." +
                    std::to_string(CUDA_VERSION % 1000 / 10) +
                    " tnlm was built with; install NVIDIA driver R580 or newer";
    }
  });
  return state;
}

} // namespace

std::string toolkitRoot() {
  for (const char *var : {"CUDA_HOME", "CUDA_PATH"})
    if (const char *value = std::getenv(var); value && *value)
      return value;
  return TNLM_CUDA_ROOT;
}

std::string toolkitIncludeDir() {
  std::vector<std::string> roots;
  for (const char *var : {"CUDA_HOME", "CUDA_PATH"})
    if (const char *value = std::getenv(var); value && *value)
      roots.push_back(value);
  try {
    // .../lib64/libnvrtc.so.13 or .../targets/x86_64-linux/lib/libnvrtc.so.13
    std::string lib = nvrtc().path;
    std::string dir = lib.substr(0, lib.find_last_of('/'));
    roots.push_back(dir + "/..");
  } catch (const Error &) {
  }
  roots.push_back(TNLM_CUDA_ROOT);
  for (const std::string &root : roots) {
    struct stat info;
    std::string include = root + "/include";
    if (stat((include + "/cuda_runtime.h").c_str(), &info) == 0)
      return include;
  }
  return {};
}

const DriverApi &driver() {
  DriverState &state = driverState();
  if (!state.error.empty())
    throw Error(state.error);
  return state.api;
}

bool deviceAvailable(std::string *why) {
  DriverState &state = driverState();
  std::string reason = state.error;
  if (reason.empty()) {
    int count = 0;
    CUresult result = state.api.cuDeviceGetCount(&count);
    if (result != CUDA_SUCCESS || count == 0)
      reason =
          std::string("no CUDA device on this machine (the driver found none)") + kNoDeviceAdvice;
  }
  if (why)
    *why = reason;
  return reason.empty();
}

const NvrtcApi &nvrtc() {
  static std::once_flag once;
  static NvrtcApi api;
  static std::string error;
  std::call_once(once, [] {
    std::vector<std::string> tried;
    void *handle = openFirst(candidates("libnvrtc", "13"), api.path, tried);
    if (!handle) {
      error = "NVRTC not found (tried " + joined(tried) +
              "): compiling CUDA kernels needs the CUDA 13 toolkit's NVRTC; install it or set "
              "CUDA_HOME to the toolkit";
      return;
    }
    std::vector<std::string> missing;
#define TNLM_CUDA_LOAD(fn) lookUp(handle, api.fn, TNLM_CUDA_STRINGIFY(fn), missing);
    TNLM_CUDA_NVRTC_SYMBOLS(TNLM_CUDA_LOAD)
#undef TNLM_CUDA_LOAD
    if (!missing.empty()) {
      error = api.path + " lacks " + joined(missing) + ": tnlm needs NVRTC from CUDA 13";
      return;
    }
    api.nvrtcVersion(&api.major, &api.minor);
    Dl_info info;
    if (dladdr(reinterpret_cast<void *>(api.nvrtcVersion), &info) && info.dli_fname)
      api.path = info.dli_fname;
  });
  if (!error.empty())
    throw Error(error);
  return api;
}

const CublasLtApi &cublasLt() {
  static std::once_flag once;
  static CublasLtApi api;
  static std::string error;
  std::call_once(once, [] {
    std::vector<std::string> tried;
    void *handle = openFirst(candidates("libcublasLt", "13"), api.path, tried);
    if (!handle) {
      error = "cuBLASLt not found (tried " + joined(tried) +
              "): GEMMs on the GPU need the CUDA 13 toolkit's cuBLASLt; install it or set "
              "CUDA_HOME to the toolkit";
      return;
    }
    std::vector<std::string> missing;
#define TNLM_CUDA_LOAD(fn) lookUp(handle, api.fn, TNLM_CUDA_STRINGIFY(fn), missing);
    TNLM_CUDA_CUBLASLT_SYMBOLS(TNLM_CUDA_LOAD)
#undef TNLM_CUDA_LOAD
    if (!missing.empty())
      error = api.path + " lacks " + joined(missing) + ": tnlm needs cuBLASLt from CUDA 13";
  });
  if (!error.empty())
    throw Error(error);
  return api;
}

namespace {

std::string withContext(std::string_view context, const std::string &what) {
  if (context.empty())
    return what;
  return std::string(context) + ": " + what;
}

} // namespace

void throwCuError(CUresult result, const char *call, std::string_view context) {
  // The driver is loaded whenever a CUresult exists to report, except in tests that feed
  // codes by hand; fall back on the number then.
  const char *name = nullptr, *text = nullptr;
  DriverState &state = driverState();
  if (state.error.empty()) {
    state.api.cuGetErrorName(result, &name);
    state.api.cuGetErrorString(result, &text);
  }
  std::string what = std::string(call) + " failed: " + (text ? text : "CUDA error") + " (" +
                     (name ? name : "CUresult " + std::to_string(int(result))) + ")";
  throw Error(withContext(context, what));
}

void throwNvrtcError(nvrtcResult result, const char *call, std::string_view context) {
  const char *text = nvrtc().nvrtcGetErrorString(result);
  throw Error(withContext(context, std::string(call) + " failed: " + (text ? text : "?")));
}

void throwCublasLtError(cublasStatus_t status, const char *call, std::string_view context) {
  const CublasLtApi &api = cublasLt();
  const char *name = api.cublasLtGetStatusName(status);
  const char *text = api.cublasLtGetStatusString(status);
  throw Error(withContext(context, std::string(call) + " failed: " + (text ? text : "?") + " (" +
                                       (name ? name : "?") + ")"));
}

} // namespace tnlm::cuda
