//===- CudaContext.h - device, stream, arena, modules, launches, graphs -*- C++ -*-===//
//
// The pieces a CUDA executor needs to run a compiled plan:
//   Context  the device's primary context made current on this thread, and one stream on
//            which every copy, launch and GEMM of the plan is queued in order;
//   Arena    one device allocation that holds every activation (the compiler planned the
//            offsets) plus what is bump-allocated from it (weights, workspaces);
//   Module   a kernel image from the artifact (cubin, fatbin or PTX) and its kernels by name;
//   Graph    the launches of one call captured from the stream once and replayed with one
//            cuGraphLaunch, which removes the per-launch CPU cost on decode-sized steps.
// Errors are tnlm::Error naming the CUDA call and the caller's context (step, kernel, tensor).
// Use a Context from the thread that created it.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CUDA_CUDACONTEXT_H
#define TNLM_RUNTIME_CUDA_CUDACONTEXT_H

#include "runtime/cuda/CudaApi.h"

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

namespace tnlm::cuda {

struct Dim3 {
  unsigned x = 1, y = 1, z = 1;
};

struct LaunchConfig {
  Dim3 grid, block;
  unsigned sharedBytes = 0; // dynamic shared memory; above 48 KiB the kernel is opted in
  /// Programmatic dependent launch (Hopper): the kernel may start before the one queued
  /// before it has finished; it must wait (griddepcontrol.wait, TNLM_PDL_WAIT in the device
  /// headers) before it touches anything an earlier kernel writes or reads.
  bool programmatic = false;
  /// Thread block clusters of `cluster` CTAs along x (0 or 1: none); above 8 the kernel is
  /// opted in to non-portable sizes.
  unsigned cluster = 0;
  /// The launch's preferred shared-memory carveout in percent of the SM's unified L1 / shared
  /// memory (CU_LAUNCH_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT, which a captured graph
  /// keeps per node), or -1: the driver's choice. An SM runs CTAs of different carveouts
  /// together only after draining to reconfigure, so kernels meant to overlap (programmatic
  /// launches) should all ask for the same one.
  int carveout = -1;
  /// When set, the launch appends the carveout it needs (Context::carveoutFor) here.
  std::vector<int> *carveoutNeeds = nullptr;
};

/// A kernel of a loaded Module.
struct Kernel {
  CUfunction function = nullptr;
  std::string name;
  unsigned sharedOptIn = 48 * 1024; // dynamic shared memory the function is allowed so far
  bool nonPortableClusters = false; // opted in to clusters of more than 8 CTAs
  int staticShared = -1;            // its static shared memory in bytes (-1: not asked yet)
};

class Graph;

class Context {
public:
  /// Retains device `ordinal`'s primary context, makes it current and creates the stream.
  /// Throws the one-sentence error when there is no driver or no such device.
  explicit Context(int ordinal = 0);
  ~Context();
  Context(const Context &) = delete;
  Context &operator=(const Context &) = delete;

  int ordinal() const { return ordinal_; }
  const std::string &deviceName() const { return name_; }
  int computeCapability() const { return capability_; } // 90 for the H100 and H200
  int multiprocessors() const { return multiprocessors_; }
  size_t totalMemory() const { return totalMemory_; }
  size_t maxSharedPerBlock() const { return maxSharedOptIn_; }    // with opt-in
  size_t l2Bytes() const { return l2Bytes_; }                     // 50 MiB on the H200
  size_t sharedPerMultiprocessor() const { return sharedPerSm_; } // 228 KiB on the H200
  /// The smallest shared-memory carveout in percent (0 to 100) that holds the CTAs `config`
  /// puts on one SM at once: ⌈CTAs / SMs⌉ of them (clusters count as their CTAs), each with
  /// its dynamic and static shared memory and the driver's reserve per CTA; 100 where they do
  /// not all fit.
  int carveoutFor(Kernel &kernel, const LaunchConfig &config, std::string_view context = {}) const;
  /// The stream work is queued on: the main one, or the side stream while useSideStream(true).
  CUstream stream() const { return current_; }
  CUstream mainStream() const { return stream_; }

  /// A second stream for work that may run beside the main stream's (CudaExecutor's weight
  /// gradients). While useSideStream(true), every copy, fill, launch and GEMM is queued on it.
  /// forkSide: the side stream waits for what the main one has queued so far; joinSide: the
  /// main stream waits for what the side one has queued so far. Both are captured into graphs
  /// as edges (a capture must join everything it forked before it ends).
  void createSideStream();
  bool hasSideStream() const { return side_ != nullptr; }
  bool onSideStream() const { return side_ && current_ == side_; }
  void useSideStream(bool on) const;
  void forkSide(std::string_view context = {}) const;
  void joinSide(std::string_view context = {}) const;

  /// Makes the primary context current on the calling thread.
  void makeCurrent() const;
  /// Waits for everything queued on the streams; an asynchronous kernel fault surfaces here.
  void synchronize(std::string_view context = {}) const;

  /// Queued on the stream; `src` must stay valid until the stream reaches the copy.
  void copyToDevice(CUdeviceptr dst, const void *src, size_t bytes,
                    std::string_view context = {}) const;
  /// Queues the copy and waits for it (and everything before it).
  void copyToHost(void *dst, CUdeviceptr src, size_t bytes, std::string_view context = {}) const;
  void copyOnDevice(CUdeviceptr dst, CUdeviceptr src, size_t bytes,
                    std::string_view context = {}) const;
  void fillBytes(CUdeviceptr dst, unsigned char value, size_t bytes,
                 std::string_view context = {}) const;
  /// `count` 32-bit words of `value` at dst (4-byte aligned), queued on the stream.
  void fillWords(CUdeviceptr dst, uint32_t value, size_t count,
                 std::string_view context = {}) const;

  /// Queues `kernel` on the stream. `params` points at one pointer per kernel parameter.
  void launch(Kernel &kernel, const LaunchConfig &config, void **params,
              std::string_view context = {}) const;
  /// How many clusters of `config` (its cluster size, block and shared memory) can be resident
  /// on the device at once (cuOccupancyMaxActiveClusters); opts the kernel in as launch does.
  int maxActiveClusters(Kernel &kernel, const LaunchConfig &config,
                        std::string_view context = {}) const;
  /// The same with the parameters given as values (each passed by address to the driver,
  /// which copies them before returning).
  template <typename... Args>
  void launchWith(Kernel &kernel, const LaunchConfig &config, std::string_view context,
                  const Args &...args) const {
    void *params[] = {const_cast<void *>(static_cast<const void *>(&args))..., nullptr};
    launch(kernel, config, params, context);
  }

  /// Captures what `record` queues on the stream (launches, GEMMs, device copies) into a
  /// graph instead of running it. Nothing runs until Graph::launch. If `record` throws, the
  /// capture is ended and discarded and the exception propagates.
  Graph capture(const std::function<void()> &record, std::string_view context = {}) const;

private:
  int ordinal_ = 0;
  CUdevice device_ = 0;
  CUcontext context_ = nullptr;
  CUstream stream_ = nullptr, side_ = nullptr;
  mutable CUstream current_ = nullptr;
  CUevent forked_ = nullptr, joined_ = nullptr;
  std::string name_;
  int capability_ = 0, multiprocessors_ = 0;
  size_t totalMemory_ = 0, maxSharedOptIn_ = 0, l2Bytes_ = 0;
  size_t sharedPerSm_ = 0, reservedSharedPerBlock_ = 0;
};

/// An instantiated CUDA graph; replays its launches on a stream, in order after what is
/// already queued there.
class Graph {
public:
  Graph() = default;
  Graph(CUgraph graph, CUgraphExec exec) : graph_(graph), exec_(exec) {}
  ~Graph();
  Graph(Graph &&other) noexcept;
  Graph &operator=(Graph &&other) noexcept;

  void launch(CUstream stream, std::string_view context = {}) const;
  size_t nodeCount() const;
  bool empty() const { return exec_ == nullptr; }

private:
  void reset();
  CUgraph graph_ = nullptr;
  CUgraphExec exec_ = nullptr;
};

/// One cuMemAlloc owned for its lifetime.
class DeviceBuffer {
public:
  DeviceBuffer() = default;
  /// `what` names the buffer in the out-of-memory error ("the activation arena").
  DeviceBuffer(size_t bytes, std::string_view what);
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer &&other) noexcept;
  DeviceBuffer &operator=(DeviceBuffer &&other) noexcept;

  CUdeviceptr get() const { return ptr_; }
  size_t size() const { return bytes_; }

private:
  CUdeviceptr ptr_ = 0;
  size_t bytes_ = 0;
};

/// Page-locked host memory (cuMemHostAlloc), zeroed: copies from and to it run asynchronously
/// on the stream (a pageable buffer goes through the driver's staging copies).
class PinnedBuffer {
public:
  PinnedBuffer() = default;
  PinnedBuffer(size_t bytes, std::string_view what);
  ~PinnedBuffer();
  PinnedBuffer(PinnedBuffer &&other) noexcept;
  PinnedBuffer &operator=(PinnedBuffer &&other) noexcept;

  void *get() const { return ptr_; }
  size_t size() const { return bytes_; }

private:
  void *ptr_ = nullptr;
  size_t bytes_ = 0;
};

/// One device allocation carved up by offset: the compiler's planned arena offsets go
/// through at(); allocate() hands out the rest front to back.
class Arena {
public:
  static constexpr size_t kAlignment = 256; // cuBLASLt's and TMA's preferred alignment

  Arena(size_t bytes, std::string_view what = "the device arena");

  CUdeviceptr base() const { return buffer_.get(); }
  size_t size() const { return buffer_.size(); }
  size_t used() const { return used_; }

  /// base + offset, after checking that [offset, offset + bytes) lies inside the arena.
  CUdeviceptr at(size_t offset, size_t bytes, std::string_view what = {}) const;
  /// The next `bytes`, aligned; throws naming `what` when the arena is full.
  CUdeviceptr allocate(size_t bytes, std::string_view what, size_t alignment = kAlignment);
  void reset() { used_ = 0; }

private:
  DeviceBuffer buffer_;
  size_t used_ = 0;
};

/// What a kernel image is, by its first bytes: an ELF cubin, a fatbin, or PTX text.
enum class ImageKind { Cubin, Fatbin, Ptx, Unknown };
ImageKind imageKind(std::string_view image);

/// A loaded kernel image. Kernels are looked up by name once and kept.
class Module {
public:
  /// Loads `image` (cubin, fatbin or PTX; PTX is JIT-compiled by the driver for this GPU and
  /// its JIT log goes into the error). `name` names the module in errors.
  Module(const Context &context, std::string_view image, std::string name);
  ~Module();
  Module(const Module &) = delete;
  Module &operator=(const Module &) = delete;

  const std::string &name() const { return name_; }
  /// The kernel with this (extern "C" or lowered) name; throws naming it and the module.
  Kernel &kernel(const std::string &kernelName, std::string_view context = {});
  /// The address and size of the module's global variable `name` (extern "C"), or {0, 0} where
  /// it has none.
  std::pair<CUdeviceptr, size_t> global(const std::string &name) const;
  /// kernel(kernelName) launched on the context's stream.
  void launch(const std::string &kernelName, const LaunchConfig &config, void **params,
              std::string_view context = {});

private:
  const Context &context_;
  std::string name_;
  CUmodule module_ = nullptr;
  std::unordered_map<std::string, std::unique_ptr<Kernel>> kernels_;
};

} // namespace tnlm::cuda

#endif // TNLM_RUNTIME_CUDA_CUDACONTEXT_H
