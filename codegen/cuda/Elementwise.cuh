// Row-wise and elementwise CUDA device templates of the kernel plan (codegen/KernelPlan.h), for
// the CUDA emitter (codegen/CudaEmitter.cpp) to specialize.
//
// Every activation is a row-major bf16 matrix [rows, COLS] with a row stride (ld, elements);
// math is fp32 and rounds to bf16 once, on store. Every kernel runs one CTA of BLOCK threads
// per row (grid.x = rows): the threads stride over the row's COLS columns, and the norms reduce
// over the row with warp shuffles and one shared-memory pass. COLS and BLOCK are compile-time
// (the emitter specializes on them); strides, eps and scales are kernel arguments, so identical
// layers share one kernel.
//
// The emitter wraps each specialization in an extern "C" __global__ kernel, e.g.
//   extern "C" __global__ void __launch_bounds__(256)
//   tnlm_srms_norm_c1024(const __nv_bfloat16 *x, long long ldx, __nv_bfloat16 *y,
//                        long long ldy, float eps) {
//     tnlm::ew::srms_norm<1024, 256>(x, ldx, y, ldy, eps);
//   }
#pragma once

#include <cuda_bf16.h>

namespace tnlm {
namespace ew {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float ld(const bf16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st(bf16 *p, float v) { *p = __float2bfloat16(v); }

// Sum of v over the CTA (BLOCK a multiple of 32, at most 1024); every thread gets the result.
template <int BLOCK> __device__ __forceinline__ float block_sum(float v) {
  static_assert(BLOCK % 32 == 0 && BLOCK <= 1024, "BLOCK: whole warps, at most 1024 threads");
  __shared__ float partial[BLOCK / 32];
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  if (BLOCK == 32)
    return v;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0)
    partial[warp] = v;
  __syncthreads();
  v = lane < BLOCK / 32 ? partial[lane] : 0.0f;
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// embedding: y[r, c] = scale · table[ids[r], c]   (ids outside [0, vocab) give zeros)
template <int COLS, int BLOCK>
__device__ __forceinline__ void embedding(const int *ids, const bf16 *table, int vocab, bf16 *y,
                                          long long ldy, float scale) {
  const long long r = blockIdx.x;
  const int id = ids[r];
  const bool ok = id >= 0 && id < vocab;
  for (int c = threadIdx.x; c < COLS; c += BLOCK)
    st(y + r * ldy + c, ok ? scale * ld(table + static_cast<long long>(id) * COLS + c) : 0.0f);
}

// srms_norm: y[r, :] = x[r, :] · rsqrt(mean_c(x[r, c]²) + eps)
template <int COLS, int BLOCK>
__device__ __forceinline__ void srms_norm(const bf16 *x, long long ldx, bf16 *y, long long ldy,
                                          float eps) {
  const long long r = blockIdx.x;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < COLS; c += BLOCK) {
    const float v = ld(x + r * ldx + c);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum<BLOCK>(ss) / COLS + eps);
  for (int c = threadIdx.x; c < COLS; c += BLOCK)
    st(y + r * ldy + c, ld(x + r * ldx + c) * inv);
}

// add_srms_norm: s = a + b (stored as bf16); y[r, :] = s[r, :] · rsqrt(mean_c(s[r, c]²) + eps)
// The norm reads the rounded sum, so y is exactly srms_norm of the stored residual stream.
template <int COLS, int BLOCK>
__device__ __forceinline__ void add_srms_norm(const bf16 *a, long long lda, const bf16 *b,
                                              long long ldb, bf16 *sum, long long lds, bf16 *y,
                                              long long ldy, float eps) {
  const long long r = blockIdx.x;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < COLS; c += BLOCK) {
    const bf16 s = __float2bfloat16(ld(a + r * lda + c) + ld(b + r * ldb + c));
    sum[r * lds + c] = s;
    const float v = __bfloat162float(s);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum<BLOCK>(ss) / COLS + eps);
  for (int c = threadIdx.x; c < COLS; c += BLOCK) // each thread rereads what it wrote
    st(y + r * ldy + c, __bfloat162float(sum[r * lds + c]) * inv);
}

// gated_srms_norm (Lightning Attention epilogue, in place): y[r, :] = u[r, :] ⊙ y[r, :] ·
// rsqrt(mean_c(y[r, c]²) + eps)
template <int COLS, int BLOCK>
__device__ __forceinline__ void gated_srms_norm(const bf16 *u, long long ldu, bf16 *y,
                                                long long ldy, float eps) {
  const long long r = blockIdx.x;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < COLS; c += BLOCK) {
    const float v = ld(y + r * ldy + c);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum<BLOCK>(ss) / COLS + eps);
  for (int c = threadIdx.x; c < COLS; c += BLOCK)
    st(y + r * ldy + c, ld(u + r * ldu + c) * ld(y + r * ldy + c) * inv);
}

// gated_srms_norm_sum (epilogue of an LRPE layer, whose attention output is the sum of two
// halves, see lrpe_split): o = y + y2 in fp32 (never rounded), then
// y[r, :] = u[r, :] ⊙ o[r, :] · rsqrt(mean_c(o[r, c]²) + eps)
template <int COLS, int BLOCK>
__device__ __forceinline__ void gated_srms_norm_sum(const bf16 *u, long long ldu, const bf16 *y2,
                                                    long long ldy2, bf16 *y, long long ldy,
                                                    float eps) {
  const long long r = blockIdx.x;
  float ss = 0.0f;
  for (int c = threadIdx.x; c < COLS; c += BLOCK) {
    const float v = ld(y + r * ldy + c) + ld(y2 + r * ldy2 + c);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum<BLOCK>(ss) / COLS + eps);
  for (int c = threadIdx.x; c < COLS; c += BLOCK) {
    const float v = ld(y + r * ldy + c) + ld(y2 + r * ldy2 + c);
    st(y + r * ldy + c, ld(u + r * ldu + c) * v * inv);
  }
}

// lrpe_split (prologue of an LRPE layer, D = COLS = H·dh): q = φ(x[r, 0:D]), k = φ(x[r, D:2D])
// (φ = SiLU when SILU, else identity) at position p = r mod seq (each call starts at 0), angle
// a_c = p · θ[c] in fp32 (one rounding, as the CPU backend), and
//   w[r, 0:D] = q ⊙ cos a,  w[r, D:2D] = k ⊙ cos a,  w[r, 2D:3D] = q ⊙ sin a,  w[r, 3D:4D] = k ⊙ sin a.
// LRPE(q)ᵀ LRPE(k) = (q cos)ᵀ(k cos) + (q sin)ᵀ(k sin) per head, and the attention output is
// linear in the scores, so the layer's output is the sum of two head-dim-dh attentions,
// (w[0:D], w[D:2D], v) and (w[2D:3D], w[3D:4D], v): the same kernel as a plain layer, and q',
// k' in four planes with the stride of qkvu.
template <int COLS, int BLOCK, bool SILU>
__device__ __forceinline__ void lrpe_split(const bf16 *x, long long ldx, const float *theta,
                                           int seq, bf16 *w, long long ldw) {
  const long long r = blockIdx.x;
  const float p = static_cast<float>(r % seq);
  for (int c = threadIdx.x; c < COLS; c += BLOCK) {
    float q = ld(x + r * ldx + c), k = ld(x + r * ldx + COLS + c);
    if (SILU) {
      q = q / (1.0f + __expf(-q));
      k = k / (1.0f + __expf(-k));
    }
    float sn, cs;
    sincosf(p * theta[c], &sn, &cs); // full range reduction: angles reach 10^4 and beyond
    bf16 *wr = w + r * ldw;
    st(wr + c, q * cs);
    st(wr + COLS + c, k * cs);
    st(wr + 2 * COLS + c, q * sn);
    st(wr + 3 * COLS + c, k * sn);
  }
}

// silu: y = x · sigmoid(x) = x / (1 + exp(-x))
template <int COLS, int BLOCK>
__device__ __forceinline__ void silu(const bf16 *x, long long ldx, bf16 *y, long long ldy) {
  const long long r = blockIdx.x;
  for (int c = threadIdx.x; c < COLS; c += BLOCK) {
    const float v = ld(x + r * ldx + c);
    st(y + r * ldy + c, v / (1.0f + __expf(-v)));
  }
}

// mul: y = a ⊙ b
template <int COLS, int BLOCK>
__device__ __forceinline__ void mul(const bf16 *a, long long lda, const bf16 *b, long long ldb,
                                    bf16 *y, long long ldy) {
  const long long r = blockIdx.x;
  for (int c = threadIdx.x; c < COLS; c += BLOCK)
    st(y + r * ldy + c, ld(a + r * lda + c) * ld(b + r * ldb + c));
}

// add: y = a + b
template <int COLS, int BLOCK>
__device__ __forceinline__ void add(const bf16 *a, long long lda, const bf16 *b, long long ldb,
                                    bf16 *y, long long ldy) {
  const long long r = blockIdx.x;
  for (int c = threadIdx.x; c < COLS; c += BLOCK)
    st(y + r * ldy + c, ld(a + r * lda + c) + ld(b + r * ldb + c));
}

} // namespace ew
} // namespace tnlm
