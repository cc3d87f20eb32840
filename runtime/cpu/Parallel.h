//===- Parallel.h - the CPU backend's one thread pool -----------*- C++ -*-===//
//
// All CPU kernels split their work through parallelFor, so there is exactly one source of
// threads in the process: OpenBLAS is pinned to one thread and each worker calls it on its own
// sub-problem (the OpenBLAS FAQ's recipe for an application that threads by itself). This
// avoids oversubscription when a GEMM runs inside a parallel loop over heads.
//
// The pool is persistent (no thread start per call). The calling thread takes part in the
// work. A parallelFor issued from inside a worker (nested) runs inline on that worker. Calls
// from several user threads at once are serialized. An exception thrown by the body is
// rethrown in the caller after all chunks have finished.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CPU_PARALLEL_H
#define TNLM_RUNTIME_CPU_PARALLEL_H

#include <cstdint>
#include <functional>

namespace tnlm::cpu {

/// Sets the number of threads the kernels use (the caller included). n <= 0 restores the
/// default: $TNLM_NUM_THREADS if set to a positive integer, else the hardware concurrency.
void setNumThreads(int n);

/// The number of threads the kernels use (>= 1).
int numThreads();

/// Calls body(begin, end) on disjoint ranges that cover [0, n), in parallel. Each range
/// holds at least `grain` indices (except possibly the last), so cheap bodies should pass a
/// grain large enough to amortize a thread wake-up (~ tens of microseconds of work).
/// Ranges are handed out dynamically; the body must not depend on which thread runs it.
void parallelFor(int64_t n, int64_t grain,
                 const std::function<void(int64_t begin, int64_t end)> &body);

} // namespace tnlm::cpu

#endif // TNLM_RUNTIME_CPU_PARALLEL_H
