//===- Blas.h - OpenBLAS access for the CPU kernels (internal) ---*- C++ -*-===//
//
// Not part of the kernels' interface: only runtime/cpu/*.cpp include it. OpenBLAS is linked
// statically (the device machine has no libopenblas) and pinned to one thread, because
// every call comes from a worker of the kernels' own pool (Parallel.h).
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CPU_BLAS_H
#define TNLM_RUNTIME_CPU_BLAS_H

#include <cblas.h>

#include <cstdint>
#include <limits>
#include <mutex>
#include <stdexcept>
#include <string>

namespace tnlm::cpu::detail {

/// Called before the first BLAS call of every kernel: sets OpenBLAS to one thread, once.
inline void initBlas() {
  static std::once_flag once;
  std::call_once(once, [] { openblas_set_num_threads(1); });
}

/// BLAS takes 32-bit sizes; a larger one is a bug in the caller, not user data.
inline blasint blasSize(int64_t n, const char *what) {
  if (n < 0 || n > std::numeric_limits<blasint>::max())
    throw std::length_error(std::string("tnlm cpu kernels: ") + what + " = " + std::to_string(n) +
                            " is outside the BLAS integer range");
  return static_cast<blasint>(n);
}

} // namespace tnlm::cpu::detail

#endif // TNLM_RUNTIME_CPU_BLAS_H
