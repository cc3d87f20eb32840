//===- CudaContext.cpp - device, stream, arena, modules, launches, graphs -===//
#include "runtime/cuda/CudaContext.h"

#include "runtime/Error.h"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <utility>

namespace tnlm::cuda {
namespace {

std::string join(std::string_view context, const std::string &what) {
  if (context.empty())
    return what;
  return std::string(context) + ": " + what;
}

std::string humanBytes(size_t bytes) {
  char text[64];
  if (bytes >= (size_t(1) << 30))
    std::snprintf(text, sizeof text, "%.2f GiB", double(bytes) / double(size_t(1) << 30));
  else if (bytes >= (size_t(1) << 20))
    std::snprintf(text, sizeof text, "%.2f MiB", double(bytes) / double(size_t(1) << 20));
  else
    std::snprintf(text, sizeof text, "%zu bytes", bytes);
  return text;
}

} // namespace

//===----------------------------------------------------------------------===//
// Context
//===----------------------------------------------------------------------===//

Context::Context(int ordinal) : ordinal_(ordinal) {
  const DriverApi &api = driver(); // throws the no-driver sentence
  std::string why;
  if (!deviceAvailable(&why))
    throw Error(why);
  int count = 0;
  TNLM_CU(cuDeviceGetCount, (&count), "counting CUDA devices");
  if (ordinal < 0 || ordinal >= count)
    throw Error("CUDA device " + std::to_string(ordinal) + " does not exist (this machine has " +
                std::to_string(count) + ")");
  TNLM_CU(cuDeviceGet, (&device_, ordinal), "opening CUDA device " + std::to_string(ordinal));
  TNLM_CU(cuDevicePrimaryCtxRetain, (&context_, device_), "creating the CUDA context");
  try {
    TNLM_CU(cuCtxSetCurrent, (context_), "making the CUDA context current");
    char name[256] = {};
    TNLM_CU(cuDeviceGetName, (name, sizeof name - 1, device_), "querying the CUDA device");
    name_ = name;
    auto attribute = [&](CUdevice_attribute which) {
      int value = 0;
      TNLM_CU(cuDeviceGetAttribute, (&value, which, device_), "querying the CUDA device");
      return value;
    };
    capability_ = 10 * attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR) +
                  attribute(CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR);
    multiprocessors_ = attribute(CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT);
    maxSharedOptIn_ = size_t(attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN));
    l2Bytes_ = size_t(attribute(CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE));
    sharedPerSm_ = size_t(attribute(CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_MULTIPROCESSOR));
    reservedSharedPerBlock_ =
        size_t(attribute(CU_DEVICE_ATTRIBUTE_RESERVED_SHARED_MEMORY_PER_BLOCK));
    TNLM_CU(cuDeviceTotalMem, (&totalMemory_, device_), "querying the CUDA device");
    // Non-blocking: the plan's stream never waits on work others queue on the legacy stream.
    TNLM_CU(cuStreamCreate, (&stream_, CU_STREAM_NON_BLOCKING), "creating the CUDA stream");
    current_ = stream_;
  } catch (...) {
    api.cuDevicePrimaryCtxRelease(device_);
    throw;
  }
}

Context::~Context() {
  // Destructors do not throw; a failure here would only be a fault reported earlier.
  const DriverApi &api = driver();
  if (side_) {
    api.cuStreamSynchronize(side_);
    api.cuStreamDestroy(side_);
  }
  for (CUevent e : {forked_, joined_})
    if (e)
      api.cuEventDestroy(e);
  if (stream_) {
    api.cuStreamSynchronize(stream_);
    api.cuStreamDestroy(stream_);
  }
  api.cuDevicePrimaryCtxRelease(device_);
}

void Context::makeCurrent() const {
  TNLM_CU(cuCtxSetCurrent, (context_), "making the CUDA context current");
}

void Context::synchronize(std::string_view context) const {
  if (side_)
    TNLM_CU(cuStreamSynchronize, (side_), context);
  TNLM_CU(cuStreamSynchronize, (stream_), context);
}

void Context::createSideStream() {
  if (side_)
    return;
  TNLM_CU(cuStreamCreate, (&side_, CU_STREAM_NON_BLOCKING), "creating the side CUDA stream");
  TNLM_CU(cuEventCreate, (&forked_, CU_EVENT_DISABLE_TIMING), "creating the side stream's events");
  TNLM_CU(cuEventCreate, (&joined_, CU_EVENT_DISABLE_TIMING), "creating the side stream's events");
}

void Context::useSideStream(bool on) const {
  if (on && !side_)
    throw Error("Context::useSideStream: no side stream (createSideStream first)");
  current_ = on ? side_ : stream_;
}

void Context::forkSide(std::string_view context) const {
  TNLM_CU(cuEventRecord, (forked_, stream_), join(context, "forking the side stream"));
  TNLM_CU(cuStreamWaitEvent, (side_, forked_, 0), join(context, "forking the side stream"));
}

void Context::joinSide(std::string_view context) const {
  TNLM_CU(cuEventRecord, (joined_, side_), join(context, "joining the side stream"));
  TNLM_CU(cuStreamWaitEvent, (stream_, joined_, 0), join(context, "joining the side stream"));
}

void Context::copyToDevice(CUdeviceptr dst, const void *src, size_t bytes,
                           std::string_view context) const {
  if (bytes)
    TNLM_CU(cuMemcpyHtoDAsync, (dst, src, bytes, current_), context);
}

void Context::copyToHost(void *dst, CUdeviceptr src, size_t bytes, std::string_view context) const {
  if (bytes)
    TNLM_CU(cuMemcpyDtoHAsync, (dst, src, bytes, current_), context);
  synchronize(context);
}

void Context::copyOnDevice(CUdeviceptr dst, CUdeviceptr src, size_t bytes,
                           std::string_view context) const {
  if (bytes)
    TNLM_CU(cuMemcpyDtoDAsync, (dst, src, bytes, current_), context);
}

void Context::fillBytes(CUdeviceptr dst, unsigned char value, size_t bytes,
                        std::string_view context) const {
  if (bytes)
    TNLM_CU(cuMemsetD8Async, (dst, value, bytes, current_), context);
}

void Context::fillWords(CUdeviceptr dst, uint32_t value, size_t count,
                        std::string_view context) const {
  if (count)
    TNLM_CU(cuMemsetD32Async, (dst, value, count, current_), context);
}

// The kernel's opt-ins for `config`: dynamic shared memory above 48 KiB, clusters above 8.
static void optIn(Kernel &kernel, const LaunchConfig &config, size_t maxShared,
                  std::string_view context) {
  const DriverApi &api = driver();
  if (config.sharedBytes > kernel.sharedOptIn) {
    CUresult result = api.cuFuncSetAttribute(
        kernel.function, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, int(config.sharedBytes));
    if (result != CUDA_SUCCESS)
      throwCuError(result, "cuFuncSetAttribute",
                   join(context, "kernel '" + kernel.name + "' asking for " +
                                     std::to_string(config.sharedBytes) +
                                     " bytes of shared memory (the device allows " +
                                     std::to_string(maxShared) + ")"));
    kernel.sharedOptIn = config.sharedBytes;
  }
  if (config.cluster > 8 && !kernel.nonPortableClusters) {
    CUresult result = api.cuFuncSetAttribute(
        kernel.function, CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED, 1);
    if (result != CUDA_SUCCESS)
      throwCuError(result, "cuFuncSetAttribute",
                   join(context, "kernel '" + kernel.name + "' asking for clusters of " +
                                     std::to_string(config.cluster) + " CTAs"));
    kernel.nonPortableClusters = true;
  }
}

namespace {
// A CUlaunchConfig for `config` on `stream`, with its attributes in `attrs` (at least 3).
CUlaunchConfig exConfig(const LaunchConfig &config, CUstream stream, CUlaunchAttribute *attrs) {
  const Dim3 &g = config.grid, &b = config.block;
  CUlaunchConfig c{};
  c.gridDimX = g.x, c.gridDimY = g.y, c.gridDimZ = g.z;
  c.blockDimX = b.x, c.blockDimY = b.y, c.blockDimZ = b.z;
  c.sharedMemBytes = config.sharedBytes;
  c.hStream = stream;
  c.attrs = attrs;
  if (config.programmatic) {
    attrs[c.numAttrs] = CUlaunchAttribute{};
    attrs[c.numAttrs].id = CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    attrs[c.numAttrs].value.programmaticStreamSerializationAllowed = 1;
    ++c.numAttrs;
  }
  if (config.cluster > 1) {
    attrs[c.numAttrs] = CUlaunchAttribute{};
    attrs[c.numAttrs].id = CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    attrs[c.numAttrs].value.clusterDim.x = config.cluster;
    attrs[c.numAttrs].value.clusterDim.y = 1;
    attrs[c.numAttrs].value.clusterDim.z = 1;
    ++c.numAttrs;
  }
  if (config.carveout >= 0) {
    attrs[c.numAttrs] = CUlaunchAttribute{};
    attrs[c.numAttrs].id = CU_LAUNCH_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT;
    attrs[c.numAttrs].value.sharedMemCarveout = unsigned(config.carveout);
    ++c.numAttrs;
  }
  return c;
}
} // namespace

int Context::carveoutFor(Kernel &kernel, const LaunchConfig &config,
                         std::string_view context) const {
  if (kernel.staticShared < 0) {
    int bytes = 0;
    TNLM_CU(cuFuncGetAttribute, (&bytes, CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES, kernel.function),
            join(context, "kernel '" + kernel.name + "': its static shared memory"));
    kernel.staticShared = bytes;
  }
  if (sharedPerSm_ == 0 || multiprocessors_ <= 0)
    return 100;
  const uint64_t ctas = uint64_t(config.grid.x) * config.grid.y * config.grid.z;
  const uint64_t perSm = (ctas + multiprocessors_ - 1) / uint64_t(multiprocessors_);
  const uint64_t need = perSm * (uint64_t(config.sharedBytes) + uint64_t(kernel.staticShared) +
                                 reservedSharedPerBlock_);
  if (need >= sharedPerSm_)
    return 100;
  return int((100 * need + sharedPerSm_ - 1) / sharedPerSm_);
}

int Context::maxActiveClusters(Kernel &kernel, const LaunchConfig &config,
                               std::string_view context) const {
  optIn(kernel, config, maxSharedOptIn_, context);
  CUlaunchAttribute attrs[3];
  LaunchConfig plain = config;
  plain.programmatic = false;
  plain.carveout = -1; // (at the driver's choice: the carveout is a hint a launch may not get)
  const CUlaunchConfig c = exConfig(plain, stream_, attrs);
  int clusters = 0;
  TNLM_CU(cuOccupancyMaxActiveClusters, (&clusters, kernel.function, &c),
          join(context, "kernel '" + kernel.name + "': how many clusters of " +
                            std::to_string(config.cluster) + " fit"));
  return clusters;
}

void Context::launch(Kernel &kernel, const LaunchConfig &config, void **params,
                     std::string_view context) const {
  const DriverApi &api = driver();
  if (config.carveoutNeeds)
    config.carveoutNeeds->push_back(carveoutFor(kernel, config, context));
  optIn(kernel, config, maxSharedOptIn_, context);
  const Dim3 &g = config.grid, &b = config.block;
  CUresult result;
  if (config.programmatic || config.cluster > 1 || config.carveout >= 0) {
    CUlaunchAttribute attrs[3];
    CUlaunchConfig c = exConfig(config, current_, attrs);
    result = api.cuLaunchKernelEx(&c, kernel.function, params, nullptr);
  } else {
    result = api.cuLaunchKernel(kernel.function, g.x, g.y, g.z, b.x, b.y, b.z, config.sharedBytes,
                                current_, params, nullptr);
  }
  if (result != CUDA_SUCCESS) {
    char shape[200];
    std::snprintf(shape, sizeof shape, " (grid %ux%ux%u, block %ux%ux%u, %u bytes shared%s)", g.x,
                  g.y, g.z, b.x, b.y, b.z, config.sharedBytes,
                  config.cluster > 1 ? (", clusters of " + std::to_string(config.cluster)).c_str()
                                     : "");
    throwCuError(result, "cuLaunchKernel", join(context, "kernel '" + kernel.name + "'" + shape));
  }
}

Graph Context::capture(const std::function<void()> &record, std::string_view context) const {
  const DriverApi &api = driver();
  // Thread-local mode: only this thread's calls that are unsafe during capture (e.g. a
  // cuMemAlloc) are refused, as they should be: the plan allocates nothing per call.
  TNLM_CU(cuStreamBeginCapture, (stream_, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
          join(context, "beginning graph capture"));
  try {
    record();
  } catch (...) {
    CUgraph broken = nullptr;
    api.cuStreamEndCapture(stream_, &broken);
    if (broken)
      api.cuGraphDestroy(broken);
    throw;
  }
  CUgraph graph = nullptr;
  TNLM_CU(cuStreamEndCapture, (stream_, &graph), join(context, "ending graph capture"));
  CUgraphExec exec = nullptr;
  CUresult result = api.cuGraphInstantiate(&exec, graph, 0);
  if (result != CUDA_SUCCESS) {
    api.cuGraphDestroy(graph);
    throwCuError(result, "cuGraphInstantiate", join(context, "instantiating the captured graph"));
  }
  return Graph(graph, exec);
}

//===----------------------------------------------------------------------===//
// Graph
//===----------------------------------------------------------------------===//

Graph::~Graph() { reset(); }

Graph::Graph(Graph &&other) noexcept
    : graph_(std::exchange(other.graph_, nullptr)), exec_(std::exchange(other.exec_, nullptr)) {}

Graph &Graph::operator=(Graph &&other) noexcept {
  if (this != &other) {
    reset();
    graph_ = std::exchange(other.graph_, nullptr);
    exec_ = std::exchange(other.exec_, nullptr);
  }
  return *this;
}

void Graph::reset() {
  if (!graph_ && !exec_)
    return;
  const DriverApi &api = driver();
  if (exec_)
    api.cuGraphExecDestroy(exec_);
  if (graph_)
    api.cuGraphDestroy(graph_);
  graph_ = nullptr;
  exec_ = nullptr;
}

void Graph::launch(CUstream stream, std::string_view context) const {
  if (!exec_)
    throw Error(join(context, "launching an empty CUDA graph"));
  TNLM_CU(cuGraphLaunch, (exec_, stream), context);
}

size_t Graph::nodeCount() const {
  size_t count = 0;
  if (graph_)
    TNLM_CU(cuGraphGetNodes, (graph_, nullptr, &count), "counting graph nodes");
  return count;
}

//===----------------------------------------------------------------------===//
// DeviceBuffer and Arena
//===----------------------------------------------------------------------===//

DeviceBuffer::DeviceBuffer(size_t bytes, std::string_view what) : bytes_(bytes) {
  if (bytes)
    TNLM_CU(cuMemAlloc, (&ptr_, bytes),
            "allocating " + std::string(what) + " (" + humanBytes(bytes) + ") on the GPU");
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_)
    driver().cuMemFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer &&other) noexcept
    : ptr_(std::exchange(other.ptr_, 0)), bytes_(std::exchange(other.bytes_, 0)) {}

DeviceBuffer &DeviceBuffer::operator=(DeviceBuffer &&other) noexcept {
  if (this != &other) {
    if (ptr_)
      driver().cuMemFree(ptr_);
    ptr_ = std::exchange(other.ptr_, 0);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

PinnedBuffer::PinnedBuffer(size_t bytes, std::string_view what) : bytes_(bytes) {
  if (bytes) {
    TNLM_CU(cuMemHostAlloc, (&ptr_, bytes, 0),
            "allocating " + std::string(what) + " (" + humanBytes(bytes) +
                ") in page-locked host memory");
    std::memset(ptr_, 0, bytes);
  }
}

PinnedBuffer::~PinnedBuffer() {
  if (ptr_)
    driver().cuMemFreeHost(ptr_);
}

PinnedBuffer::PinnedBuffer(PinnedBuffer &&other) noexcept
    : ptr_(std::exchange(other.ptr_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

PinnedBuffer &PinnedBuffer::operator=(PinnedBuffer &&other) noexcept {
  if (this != &other) {
    if (ptr_)
      driver().cuMemFreeHost(ptr_);
    ptr_ = std::exchange(other.ptr_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

Arena::Arena(size_t bytes, std::string_view what) : buffer_(bytes, what) {}

CUdeviceptr Arena::at(size_t offset, size_t bytes, std::string_view what) const {
  if (offset > size() || bytes > size() - offset)
    throw Error(join(what, "arena range [" + std::to_string(offset) + ", +" +
                               std::to_string(bytes) + ") lies outside the " +
                               std::to_string(size()) + "-byte arena"));
  return base() + offset;
}

CUdeviceptr Arena::allocate(size_t bytes, std::string_view what, size_t alignment) {
  size_t start = (used_ + alignment - 1) / alignment * alignment;
  if (start > size() || bytes > size() - start)
    throw Error("the device arena is full: " + std::string(what) + " needs " + humanBytes(bytes) +
                ", " + humanBytes(start > size() ? 0 : size() - start) + " of " +
                humanBytes(size()) + " are left");
  used_ = start + bytes;
  return base() + start;
}

//===----------------------------------------------------------------------===//
// Module
//===----------------------------------------------------------------------===//

ImageKind imageKind(std::string_view image) {
  auto startsWith = [&](std::string_view magic) { return image.substr(0, magic.size()) == magic; };
  if (startsWith(std::string_view("\177ELF", 4)))
    return ImageKind::Cubin;
  if (startsWith(std::string_view("\x50\xed\x55\xba", 4)))
    return ImageKind::Fatbin; // fatbin header magic 0xBA55ED50, little-endian
  std::string_view head = image.substr(0, 4096);
  if (head.find(".version") != std::string_view::npos &&
      head.find(".target") != std::string_view::npos)
    return ImageKind::Ptx;
  return ImageKind::Unknown;
}

Module::Module(const Context &context, std::string_view image, std::string name)
    : context_(context), name_(std::move(name)) {
  if (imageKind(image) == ImageKind::Unknown)
    throw Error("kernel module '" + name_ + "' (" + std::to_string(image.size()) +
                " bytes) is neither a cubin, a fatbin nor PTX");
  // PTX has to end in a NUL; a copy also gives cubins the driver's preferred alignment.
  std::string copy(image);
  char log[8192] = {};
  CUjit_option options[] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
  void *values[] = {log, reinterpret_cast<void *>(uintptr_t(sizeof log - 1))};
  CUresult result = driver().cuModuleLoadDataEx(&module_, copy.c_str(), 2, options, values);
  if (result != CUDA_SUCCESS) {
    std::string what = "loading kernel module '" + name_ + "'";
    if (log[0])
      what += " (JIT log: " + std::string(log) + ")";
    throwCuError(result, "cuModuleLoadData", what);
  }
}

Module::~Module() {
  if (module_)
    driver().cuModuleUnload(module_);
}

Kernel &Module::kernel(const std::string &kernelName, std::string_view context) {
  auto found = kernels_.find(kernelName);
  if (found != kernels_.end())
    return *found->second;
  auto kernel = std::make_unique<Kernel>();
  kernel->name = kernelName;
  CUresult result = driver().cuModuleGetFunction(&kernel->function, module_, kernelName.c_str());
  if (result != CUDA_SUCCESS)
    throwCuError(result, "cuModuleGetFunction",
                 join(context, "kernel '" + kernelName + "' in module '" + name_ + "'"));
  return *kernels_.emplace(kernelName, std::move(kernel)).first->second;
}

std::pair<CUdeviceptr, size_t> Module::global(const std::string &name) const {
  CUdeviceptr ptr = 0;
  size_t bytes = 0;
  if (driver().cuModuleGetGlobal(&ptr, &bytes, module_, name.c_str()) != CUDA_SUCCESS)
    return {0, 0};
  return {ptr, bytes};
}

void Module::launch(const std::string &kernelName, const LaunchConfig &config, void **params,
                    std::string_view context) {
  context_.launch(kernel(kernelName, context), config, params, context);
}

} // namespace tnlm::cuda
