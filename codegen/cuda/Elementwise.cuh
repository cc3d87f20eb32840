// Row-wise and elementwise CUDA device templates of the kernel plan (codegen/KernelPlan.h), for
// the CUDA emitter (codegen/CudaEmitter.cpp) to specialize.
//
// Every activation is a row-major bf16 matrix [rows, COLS] with a row stride (ld, elements);
// math is fp32 and rounds to bf16 once, on store. Every kernel runs one CTA of BLOCK threads
// per row (grid.x = rows): the threads stride over the row's COLS columns, and the norms reduce
// over the row with warp shuffles and one shared-memory pass. Each body is written once over
// W consecutive columns per access: W = 8 (16-byte loads and stores) when COLS is a multiple
// of 8 and every pointer and row stride of the call keeps 16-byte alignment (checked at run
// time, the same for the whole grid), else W = 1. COLS and BLOCK are compile-time
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

// Programmatic dependent launch (runtime/cuda/CudaContext.h, LaunchConfig::programmatic):
// every kernel waits for the kernels before it before it touches an activation, and lets the
// next one launch early (its CTAs then wait at their own TNLM_PDL_WAIT). Without a
// programmatic launch both are no-ops.
#ifndef TNLM_PDL_WAIT
#define TNLM_PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define TNLM_PDL_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#endif

namespace tnlm {
namespace ew {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float ld(const bf16 *p) { return __bfloat162float(*p); }
__device__ __forceinline__ void st(bf16 *p, float v) { *p = __float2bfloat16(v); }

// W consecutive bf16 <-> fp32 (W = 1 or 8; for 8 the address is 16-byte aligned).
template <int W> __device__ __forceinline__ void ldv(const bf16 *p, float (&f)[W]) {
  if constexpr (W == 1) {
    f[0] = __bfloat162float(*p);
  } else {
    static_assert(W == 8, "W: 1 or 8");
    const uint4 u = *reinterpret_cast<const uint4 *>(p);
    const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 t = __bfloat1622float2(h[i]);
      f[2 * i] = t.x;
      f[2 * i + 1] = t.y;
    }
  }
}
template <int W> __device__ __forceinline__ void stv(bf16 *p, const float (&f)[W]) {
  if constexpr (W == 1) {
    *p = __float2bfloat16(f[0]);
  } else {
    uint4 u;
    __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&u);
#pragma unroll
    for (int i = 0; i < 4; ++i)
      h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4 *>(p) = u;
  }
}
// W consecutive f32 (for θ).
template <int W> __device__ __forceinline__ void ldv(const float *p, float (&f)[W]) {
  if constexpr (W == 1) {
    f[0] = *p;
  } else {
    const float4 a = reinterpret_cast<const float4 *>(p)[0];
    const float4 b = reinterpret_cast<const float4 *>(p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  }
}

// Whether 16-byte accesses are possible: COLS a multiple of 8, every pointer 16-byte aligned
// and every row stride a multiple of 8 elements.
template <int COLS> __device__ __forceinline__ bool aligned16() { return COLS % 8 == 0; }
template <int COLS, class... Rest>
__device__ __forceinline__ bool aligned16(const void *p, long long ldp, Rest... rest) {
  return (reinterpret_cast<unsigned long long>(p) % 16 == 0) && (ldp % 8 == 0) &&
         aligned16<COLS>(rest...);
}

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

// Runs the body (a block that uses the constant W) with W = 8 when `vec`, else with W = 1.
#define TNLM_EW_DISPATCH(vec, ...)                                                                 \
  do {                                                                                             \
    auto tnlm_body = [&](auto tnlm_w) {                                                            \
      constexpr int W = decltype(tnlm_w)::value;                                                   \
      __VA_ARGS__                                                                                  \
    };                                                                                             \
    if (vec)                                                                                       \
      tnlm_body(Width<8>{});                                                                       \
    else                                                                                           \
      tnlm_body(Width<1>{});                                                                       \
  } while (0)
template <int N> struct Width { static constexpr int value = N; };

// f(q, c) for each of this thread's groups q < G of W columns of a row, starting at column
// c < COLS (unrolled: the rows held in registers below index their arrays by q).
template <int COLS, int BLOCK, int W, int G, class F>
__device__ __forceinline__ void for_groups(F f) {
#pragma unroll
  for (int q = 0; q < G; ++q) {
    const int c = threadIdx.x * W + q * BLOCK * W;
    if (c < COLS)
      f(q, c);
  }
}

// rsqrt(mean_c(v[c]²) + eps) of this CTA's row, the threads loading W columns at a time with
// load(c, v) (v = W fp32 values from column c); every thread gets the result.
template <int COLS, int BLOCK, int W, class Load>
__device__ __forceinline__ float row_rstd(Load load, float eps) {
  float ss = 0.0f;
  for (int c = threadIdx.x * W; c < COLS; c += BLOCK * W) {
    float v[W];
    load(c, v);
#pragma unroll
    for (int i = 0; i < W; ++i)
      ss += v[i] * v[i];
  }
  return rsqrtf(block_sum<BLOCK>(ss) / COLS + eps);
}

// y[r, c] = op(a[r, c], b[r, c]) for the elementwise binary kernels.
template <int COLS, int BLOCK, class Op>
__device__ __forceinline__ void binary(const bf16 *a, long long lda, const bf16 *b, long long ldb,
                                       bf16 *y, long long ldy, Op op) {
  TNLM_PDL_WAIT();
  TNLM_PDL_LAUNCH();
  const long long r = blockIdx.x;
  TNLM_EW_DISPATCH(aligned16<COLS>(a, lda, b, ldb, y, ldy), {
    for (int c = threadIdx.x * W; c < COLS; c += BLOCK * W) {
      float va[W], vb[W];
      ldv<W>(a + r * lda + c, va);
      ldv<W>(b + r * ldb + c, vb);
#pragma unroll
      for (int i = 0; i < W; ++i)
        va[i] = op(va[i], vb[i]);
      stv<W>(y + r * ldy + c, va);
    }
  });
}

// embedding: y[r, c] = scale · table[ids[r], c]   (ids outside [0, vocab) give zeros)
template <int COLS, int BLOCK>
__device__ __forceinline__ void embedding(const int *ids, const bf16 *table, int vocab, bf16 *y,
                                          long long ldy, float scale) {
  TNLM_PDL_WAIT();
  TNLM_PDL_LAUNCH();
  const long long r = blockIdx.x;
  const int id = ids[r];
  const bool ok = id >= 0 && id < vocab;
  const bf16 *t = table + static_cast<long long>(ok ? id : 0) * COLS;
  TNLM_EW_DISPATCH(aligned16<COLS>(table, COLS, y, ldy), {
    for (int c = threadIdx.x * W; c < COLS; c += BLOCK * W) {
      float v[W];
      ldv<W>(t + c, v);
#pragma unroll
      for (int i = 0; i < W; ++i)
        v[i] = ok ? scale * v[i] : 0.0f;
      stv<W>(y + r * ldy + c, v);
    }
  });
}

// srms_norm: y[r, :] = x[r, :] · rsqrt(mean_c(x[r, c]²) + eps)
template <int COLS, int BLOCK>
__device__ __forceinline__ void srms_norm(const bf16 *x, long long ldx, bf16 *y, long long ldy,
                                          float eps) {
  TNLM_PDL_WAIT();
  TNLM_PDL_LAUNCH();
  const long long r = blockIdx.x;
  TNLM_EW_DISPATCH(aligned16<COLS>(x, ldx, y, ldy), {
    const float inv =
        row_rstd<COLS, BLOCK, W>([&](int c, float(&v)[W]) { ldv<W>(x + r * ldx + c, v); }, eps);
    for (int c = threadIdx.x * W; c < COLS; c += BLOCK * W) {
      float v[W];
      ldv<W>(x + r * ldx + c, v);
#pragma unroll
      for (int i = 0; i < W; ++i)
        v[i] *= inv;
      stv<W>(y + r * ldy + c, v);
    }
  });
}

// add_srms_norm: s = a + b (stored as bf16); y[r, :] = s[r, :] · rsqrt(mean_c(s[r, c]²) + eps)
// The norm reads the rounded sum, so y is exactly srms_norm of the stored residual stream.
template <int COLS, int BLOCK>
__device__ __forceinline__ void add_srms_norm(const bf16 *a, long long lda, const bf16 *b,
                                              long long ldb, bf16 *sum, long long lds, bf16 *y,
                                              long long ldy, float eps) {
  TNLM_PDL_WAIT();
  TNLM_PDL_LAUNCH();
  const long long r = blockIdx.x;
  TNLM_EW_DISPATCH(aligned16<COLS>(a, lda, b, ldb, sum, lds, y, ldy), {
    constexpr int G = (COLS + BLOCK * W - 1) / (BLOCK * W); // groups of W per thread
    if constexpr (G <= 4) {
      // The sums kept in registers for the second pass (not reread after the reduction);
      // the same values in the same order as below.
      float vs[G][W];
      for_groups<COLS, BLOCK, W, G>([&](int q, int c) {
        float vb[W];
        ldv<W>(a + r * lda + c, vs[q]);
        ldv<W>(b + r * ldb + c, vb);
#pragma unroll
        for (int i = 0; i < W; ++i)
          vs[q][i] = __bfloat162float(__float2bfloat16(vs[q][i] + vb[i]));
      });
      float ss = 0.0f;
      for_groups<COLS, BLOCK, W, G>([&](int q, int c) {
#pragma unroll
        for (int i = 0; i < W; ++i)
          ss += vs[q][i] * vs[q][i];
        stv<W>(sum + r * lds + c, vs[q]);
      });
      const float inv = rsqrtf(block_sum<BLOCK>(ss) / COLS + eps);
      for_groups<COLS, BLOCK, W, G>([&](int q, int c) {
#pragma unroll
        for (int i = 0; i < W; ++i)
          vs[q][i] *= inv;
        stv<W>(y + r * ldy + c, vs[q]);
      });
      return;
    }
    float ss = 0.0f;
    for (int c = threadIdx.x * W; c < COLS; c += BLOCK * W) {
      float va[W], vb[W];
      ldv<W>(a + r * lda + c, va);
      ldv<W>(b + r * ldb + c, vb);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        va[i] = __bfloat162float(__float2bfloat16(va[i] + vb[i])); // the stored value
        ss += va[i] * va[i];
      }
      stv<W>(sum + r * lds + c, va);
    }
    const float inv = rsqrtf(block_sum<BLOCK>(ss) / COLS + eps);
    for (int c = threadIdx.x * W; c < COLS; c += BLOCK * W) { // each thread rereads its own
      float v[W];
      ldv<W>(sum + r * lds + c, v);
#pragma unroll
      for (int i = 0; i < W; ++i)
        v[i] *= inv;
      stv<W>(y + r * ldy + c, v);
    }
  });
}

// gated_norm_from_o (epilogue of a train step's plain layer, whose forward keeps its attention
// output O in the step's workspace for the backward): y[r, :] = u[r, :] ⊙ o[r, :] ·
// rsqrt(mean_c(o[r, c]²) + eps), o read from its own buffer (or y itself: gated_srms_norm).
template <int COLS, int BLOCK>
__device__ __forceinline__ void gated_norm_from_o(const bf16 *u, long long ldu, const bf16 *o,
                                                  long long ldo, bf16 *y, long long ldy,
                                                  float eps) {
  TNLM_PDL_WAIT();
  TNLM_PDL_LAUNCH();
  const long long r = blockIdx.x;
  TNLM_EW_DISPATCH(aligned16<COLS>(u, ldu, o, ldo, y, ldy), {
    constexpr int G = (COLS + BLOCK * W - 1) / (BLOCK * W); // groups of W per thread
    if constexpr (G <= 4) {
      // o and u loaded once, before the reduction (u no longer a memory latency after it);
      // the same values in the same order as below.
      float vo[G][W], vu[G][W];
      for_groups<COLS, BLOCK, W, G>([&](int q, int c) {
        ldv<W>(o + r * ldo + c, vo[q]);
        ldv<W>(u + r * ldu + c, vu[q]);
      });
      float ss = 0.0f;
      for_groups<COLS, BLOCK, W, G>([&](int q, int) {
#pragma unroll
        for (int i = 0; i < W; ++i)
          ss += vo[q][i] * vo[q][i];
      });
      const float inv = rsqrtf(block_sum<BLOCK>(ss) / COLS + eps);
      for_groups<COLS, BLOCK, W, G>([&](int q, int c) {
#pragma unroll
        for (int i = 0; i < W; ++i)
          vo[q][i] = vu[q][i] * vo[q][i] * inv;
        stv<W>(y + r * ldy + c, vo[q]);
      });
      return;
    }
    const float inv =
        row_rstd<COLS, BLOCK, W>([&](int c, float(&v)[W]) { ldv<W>(o + r * ldo + c, v); }, eps);
    for (int c = threadIdx.x * W; c < COLS; c += BLOCK * W) {
      float v[W], g[W];
      ldv<W>(o + r * ldo + c, v);
      ldv<W>(u + r * ldu + c, g);
#pragma unroll
      for (int i = 0; i < W; ++i)
        v[i] = g[i] * v[i] * inv;
      stv<W>(y + r * ldy + c, v);
    }
  });
}

// gated_srms_norm (Lightning Attention epilogue, in place): y[r, :] = u[r, :] ⊙ y[r, :] ·
// rsqrt(mean_c(y[r, c]²) + eps): gated_norm_from_o with o = y.
template <int COLS, int BLOCK>
__device__ __forceinline__ void gated_srms_norm(const bf16 *u, long long ldu, bf16 *y,
                                                long long ldy, float eps) {
  gated_norm_from_o<COLS, BLOCK>(u, ldu, y, ldy, y, ldy, eps);
}

// gated_srms_norm_sum (epilogue of an LRPE layer, whose attention output is the sum of two
// halves, see lrpe_split): o = y + y2 in fp32 (each half was stored as bf16; the sum itself is
// not rounded again), then
// y[r, :] = u[r, :] ⊙ o[r, :] · rsqrt(mean_c(o[r, c]²) + eps)
template <int COLS, int BLOCK>
__device__ __forceinline__ void gated_srms_norm_sum(const bf16 *u, long long ldu, const bf16 *y2,
                                                    long long ldy2, bf16 *y, long long ldy,
                                                    float eps) {
  TNLM_PDL_WAIT();
  TNLM_PDL_LAUNCH();
  const long long r = blockIdx.x;
  TNLM_EW_DISPATCH(aligned16<COLS>(u, ldu, y2, ldy2, y, ldy), {
    const float inv = row_rstd<COLS, BLOCK, W>(
        [&](int c, float(&v)[W]) {
          float v2[W];
          ldv<W>(y + r * ldy + c, v);
          ldv<W>(y2 + r * ldy2 + c, v2);
#pragma unroll
          for (int i = 0; i < W; ++i)
            v[i] += v2[i];
        },
        eps);
    for (int c = threadIdx.x * W; c < COLS; c += BLOCK * W) {
      float v[W], v2[W], g[W];
      ldv<W>(y + r * ldy + c, v);
      ldv<W>(y2 + r * ldy2 + c, v2);
      ldv<W>(u + r * ldu + c, g);
#pragma unroll
      for (int i = 0; i < W; ++i)
        v[i] = g[i] * (v[i] + v2[i]) * inv;
      stv<W>(y + r * ldy + c, v);
    }
  });
}

// lrpe_split (prologue of an LRPE layer, D = COLS = H·dh): q = φ(x[r, 0:D]), k = φ(x[r, D:2D])
// (φ = SiLU when SILU, else identity) at position p = r mod seq (each call starts at 0), angle
// a_c = p · θ[c] in fp32 (one rounding, as the CPU backend), and
//   w[r, 0:D] = q ⊙ cos a,  w[r, D:2D] = k ⊙ cos a,  w[r, 2D:3D] = q ⊙ sin a,  w[r, 3D:4D] = k ⊙
//   sin a.
// LRPE(q)ᵀ LRPE(k) = (q cos)ᵀ(k cos) + (q sin)ᵀ(k sin) per head, and the attention output is
// linear in the scores, so the layer's output is the sum of two head-dim-dh attentions,
// (w[0:D], w[D:2D], v) and (w[2D:3D], w[3D:4D], v): the same kernel as a plain layer, and q',
// k' in four planes with the stride of qkvu.
template <int COLS, int BLOCK, bool SILU>
__device__ __forceinline__ void lrpe_split(const bf16 *x, long long ldx, const float *theta,
                                           int seq, bf16 *w, long long ldw) {
  TNLM_PDL_WAIT();
  TNLM_PDL_LAUNCH();
  const long long r = blockIdx.x;
  const float p = static_cast<float>(r % seq);
  TNLM_EW_DISPATCH(aligned16<COLS>(x, ldx, w, ldw, theta, 8), {
    for (int c = threadIdx.x * W; c < COLS; c += BLOCK * W) {
      float q[W], k[W], th[W], qc[W], kc[W];
      ldv<W>(x + r * ldx + c, q);
      ldv<W>(x + r * ldx + COLS + c, k);
      ldv<W>(theta + c, th);
#pragma unroll
      for (int i = 0; i < W; ++i) {
        if (SILU) {
          q[i] = q[i] / (1.0f + __expf(-q[i]));
          k[i] = k[i] / (1.0f + __expf(-k[i]));
        }
        float sn, cs;
        sincosf(p * th[i], &sn, &cs); // full range reduction: angles reach 10^4 and beyond
        qc[i] = q[i] * cs, kc[i] = k[i] * cs;
        q[i] *= sn, k[i] *= sn;
      }
      bf16 *wr = w + r * ldw;
      stv<W>(wr + c, qc);
      stv<W>(wr + COLS + c, kc);
      stv<W>(wr + 2 * COLS + c, q);
      stv<W>(wr + 3 * COLS + c, k);
    }
  });
}

// silu: y = x · sigmoid(x) = x / (1 + exp(-x)), the quotient as __fdividef (x times the
// approximate reciprocal, ~2 ulp of f32 before the bf16 rounding; -0 for x in about (-88.7,
// -87.3), where 1 + e^-x exceeds 2^126, instead of ~-5e-37): the qkvu GEMM's epilogue
// (GemmSm90.cuh kSiluPrefix) computes the same bits, where a full-precision division's 128
// unrolled slow paths would double its code. (The recurrent functions' φ, lrpe_split's and
// the backward's SiLU' keep the full-precision division.)
template <int COLS, int BLOCK>
__device__ __forceinline__ void silu(const bf16 *x, long long ldx, bf16 *y, long long ldy) {
  TNLM_PDL_WAIT();
  TNLM_PDL_LAUNCH();
  const long long r = blockIdx.x;
  TNLM_EW_DISPATCH(aligned16<COLS>(x, ldx, y, ldy), {
    for (int c = threadIdx.x * W; c < COLS; c += BLOCK * W) {
      float v[W];
      ldv<W>(x + r * ldx + c, v);
#pragma unroll
      for (int i = 0; i < W; ++i)
        v[i] = __fdividef(v[i], 1.0f + __expf(-v[i]));
      stv<W>(y + r * ldy + c, v);
    }
  });
}

// mul: y = a ⊙ b
template <int COLS, int BLOCK>
__device__ __forceinline__ void mul(const bf16 *a, long long lda, const bf16 *b, long long ldb,
                                    bf16 *y, long long ldy) {
  binary<COLS, BLOCK>(a, lda, b, ldb, y, ldy, [](float p, float q) { return p * q; });
}

// add: y = a + b
template <int COLS, int BLOCK>
__device__ __forceinline__ void add(const bf16 *a, long long lda, const bf16 *b, long long ldb,
                                    bf16 *y, long long ldy) {
  binary<COLS, BLOCK>(a, lda, b, ldb, y, ldy, [](float p, float q) { return p + q; });
}

#undef TNLM_EW_DISPATCH

} // namespace ew
} // namespace tnlm
