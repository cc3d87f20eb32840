//===- Nvrtc.cpp - CUDA C++ source to a cubin or PTX, in process ----------===//
#include "runtime/cuda/Nvrtc.h"

#include "runtime/Error.h"
#include "runtime/cuda/CudaApi.h"

namespace tnlm::cuda {
namespace {

/// Destroys the program on every path out of compileCuda.
struct Program {
  nvrtcProgram handle = nullptr;
  ~Program() {
    if (handle)
      nvrtc().nvrtcDestroyProgram(&handle);
  }
};

std::string programLog(nvrtcProgram program) {
  size_t size = 0;
  if (nvrtc().nvrtcGetProgramLogSize(program, &size) != NVRTC_SUCCESS || size <= 1)
    return {};
  std::string log(size, '\0');
  if (nvrtc().nvrtcGetProgramLog(program, log.data()) != NVRTC_SUCCESS)
    return {};
  while (!log.empty() && (log.back() == '\0' || log.back() == '\n'))
    log.pop_back();
  return log;
}

} // namespace

std::string nvrtcVersionString() {
  const NvrtcApi &api = nvrtc();
  return std::to_string(api.major) + "." + std::to_string(api.minor);
}

CompiledKernels compileCuda(const std::string &source, const std::string &sourceName,
                            const NvrtcOptions &options) {
  const std::string where = "compiling " + sourceName + " for " + options.arch;
  CompiledKernels out;

  std::vector<const char *> headerTexts, headerNames;
  for (const auto &[name, text] : options.headers) {
    headerNames.push_back(name.c_str());
    headerTexts.push_back(text.c_str());
  }
  Program program;
  TNLM_NVRTC(nvrtcCreateProgram,
             (&program.handle, source.c_str(), sourceName.c_str(), int(headerTexts.size()),
              headerTexts.data(), headerNames.data()),
             where);
  for (const std::string &expression : options.nameExpressions)
    TNLM_NVRTC(nvrtcAddNameExpression, (program.handle, expression.c_str()),
               where + " (name expression '" + expression + "')");

  // A PTX request names a virtual architecture (compute_XX); a cubin request a real one.
  std::string arch = options.arch;
  bool ptx = options.output == NvrtcOptions::Output::Ptx;
  if (ptx && arch.rfind("sm_", 0) == 0)
    arch = "compute_" + arch.substr(3);
  if (!ptx && arch.rfind("compute_", 0) == 0)
    arch = "sm_" + arch.substr(8);
  out.options = {"--gpu-architecture=" + arch, "-std=c++17", "-default-device"};
  for (const std::string &dir : options.includeDirs)
    out.options.push_back("-I" + dir);
  if (options.addToolkitIncludes)
    if (std::string include = toolkitIncludeDir(); !include.empty())
      out.options.push_back("-I" + include);
  out.options.insert(out.options.end(), options.extraOptions.begin(), options.extraOptions.end());
  std::vector<const char *> argv;
  for (const std::string &option : out.options)
    argv.push_back(option.c_str());

  nvrtcResult compiled = nvrtc().nvrtcCompileProgram(program.handle, int(argv.size()), argv.data());
  out.log = programLog(program.handle);
  if (compiled != NVRTC_SUCCESS) {
    std::string flags;
    for (const std::string &option : out.options)
      flags += " " + option;
    throw Error("NVRTC could not compile " + sourceName + " (" +
                nvrtc().nvrtcGetErrorString(compiled) + "; options:" + flags + "):\n" +
                (out.log.empty() ? std::string("(no log)") : out.log));
  }

  for (const std::string &expression : options.nameExpressions) {
    const char *lowered = nullptr;
    TNLM_NVRTC(nvrtcGetLoweredName, (program.handle, expression.c_str(), &lowered),
               where + " (name expression '" + expression + "')");
    out.loweredNames[expression] = lowered;
  }

  size_t size = 0;
  if (ptx) {
    TNLM_NVRTC(nvrtcGetPTXSize, (program.handle, &size), where);
    out.image.resize(size);
    TNLM_NVRTC(nvrtcGetPTX, (program.handle, out.image.data()), where);
    while (!out.image.empty() && out.image.back() == '\0')
      out.image.pop_back(); // Module adds the terminator back
  } else {
    TNLM_NVRTC(nvrtcGetCUBINSize, (program.handle, &size), where);
    out.image.resize(size);
    TNLM_NVRTC(nvrtcGetCUBIN, (program.handle, out.image.data()), where);
  }
  if (out.image.empty())
    throw Error(where + ": NVRTC returned an empty " + (ptx ? "PTX" : "cubin"));
  return out;
}

} // namespace tnlm::cuda
