//===- TestKernels.h - small CUDA C++ kernels the CUDA tests compile --------===//
//
// Compiled with NVRTC by both test binaries: on any machine to check the compiler path, and
// on the GPU to check loading, launching and graph replay against CPU loops.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TEST_UNIT_CUDA_TESTKERNELS_H
#define TNLM_TEST_UNIT_CUDA_TESTKERNELS_H

namespace tnlm::cuda::test {

// y = x·σ(x) = x / (1 + e^-x); z = a·y + x; a template to exercise name expressions; a
// kernel that touches `n` floats of dynamic shared memory (for the >48 KiB opt-in).
inline constexpr const char *kElementwiseSource = R"cuda(
extern "C" __global__ void silu(const float *x, float *y, unsigned n) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n)
    y[i] = x[i] / (1.0f + expf(-x[i]));
}

extern "C" __global__ void axpy(float a, const float *y, const float *x, float *z, unsigned n) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n)
    z[i] = a * y[i] + x[i];
}

template <typename T> __global__ void scale(T *x, T s, unsigned n) {
  unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n)
    x[i] *= s;
}

// Writes 0..floats-1 through shared memory and back out: out[i] = i.
extern "C" __global__ void shared_roundtrip(float *out, unsigned floats) {
  extern __shared__ float buffer[];
  for (unsigned i = threadIdx.x; i < floats; i += blockDim.x)
    buffer[i] = float(i);
  __syncthreads();
  for (unsigned i = threadIdx.x; i < floats; i += blockDim.x)
    out[i] = buffer[floats - 1 - i];
}
)cuda";

// Three statements, the second missing its semicolon: NVRTC reports line 3.
inline constexpr const char *kBrokenSource = "extern \"C\" __global__ void broken(float *x) {\n"
                                             "  float y = 1.0f\n"
                                             "  x[0] = y;\n"
                                             "}\n";

} // namespace tnlm::cuda::test

#endif // TNLM_TEST_UNIT_CUDA_TESTKERNELS_H
