//===- CudaCheck.h - CK(call): a CUDA runtime error ends the bench ------*- C++ -*-===//
//
// For the nvcc-built benchmarks (bench/lightning_fwd.cu, bench/gemm_sm90.cu): CK(x) runs x and,
// where it returns another cudaError_t than cudaSuccess, prints the error, file, line and the
// call, and exits 2.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_BENCH_CUDACHECK_H
#define TNLM_BENCH_CUDACHECK_H

#include <cuda_runtime.h>

#include <cstdio>
#include <cstdlib>

#define CK(x)                                                                                      \
  do {                                                                                             \
    cudaError_t e_ = (x);                                                                          \
    if (e_ != cudaSuccess) {                                                                       \
      std::fprintf(stderr, "CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e_), __FILE__,       \
                   __LINE__, #x);                                                                  \
      std::exit(2);                                                                                \
    }                                                                                              \
  } while (0)

#endif // TNLM_BENCH_CUDACHECK_H
