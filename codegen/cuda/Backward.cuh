// Training on the GPU, part 1 (issue 11): the backward row kernels and the optimizer's kernels,
// device templates for the CUDA emitter to specialize (not yet wired into tnlmc: the GPU
// train step is being built; test/unit/cuda/BackwardGpuTest.cpp checks each against the CPU
// backend, runtime/cpu/Backward.h).
//
// Precision (docs/gpu-training.md): forward activations are bf16 (as inference), the
// activation gradients bf16 or f32 (each template takes the types of its gradient operands:
// the residual stream's gradient is f32), weight gradients, master weights and moments f32.
// Math is fp32 (f64 where the CPU backend's order of sums cannot be followed and the result
// feeds the optimizer: the sum of squares); every result is rounded once, on store.
//
// Row kernels run one CTA of BLOCK threads per row (grid.x = rows), threads striding over the
// COLS columns; reductions are per-thread partial sums, then a warp butterfly and the warps in
// index order (deterministic).
#pragma once

#include <cuda_bf16.h>

namespace tnlm {
namespace bw {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_f(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f(float v) { return v; }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 from_f<bf16>(float v) { return __float2bfloat16(v); }

// Four consecutive elements as f32, read and written with one 8-byte (bf16) or 16-byte (f32)
// access: the row kernels below take that path where every row they touch is so aligned and the
// width is a multiple of 4 (the same arithmetic per element), else one element per access.
__device__ __forceinline__ bool aligned4(const bf16 *p) {
  return (reinterpret_cast<unsigned long long>(p) & 7ull) == 0;
}
__device__ __forceinline__ bool aligned4(const float *p) {
  return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0;
}
struct __align__(8) Bf16Quad {
  bf16 v[4];
};
__device__ __forceinline__ void load4(const bf16 *p, float (&f)[4]) {
  const Bf16Quad q = *reinterpret_cast<const Bf16Quad *>(p);
#pragma unroll
  for (int j = 0; j < 4; ++j)
    f[j] = __bfloat162float(q.v[j]);
}
__device__ __forceinline__ void load4(const float *p, float (&f)[4]) {
  const float4 q = *reinterpret_cast<const float4 *>(p);
  f[0] = q.x, f[1] = q.y, f[2] = q.z, f[3] = q.w;
}
// (As one 8-byte store, st.global.wb.v2.u32: the four elements as two bf16 pairs, element 0
// at the low half; __floats2bfloat162_rn rounds as __float2bfloat16.)
__device__ __forceinline__ void store4(bf16 *p, const float (&f)[4]) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(f[0], f[1]);
  const __nv_bfloat162 hi = __floats2bfloat162_rn(f[2], f[3]);
  uint2 u;
  u.x = *reinterpret_cast<const unsigned *>(&lo);
  u.y = *reinterpret_cast<const unsigned *>(&hi);
  __stwb(reinterpret_cast<uint2 *>(p), u); // (a plain uint2 store may be split in two)
}
__device__ __forceinline__ void store4(float *p, const float (&f)[4]) {
  *reinterpret_cast<float4 *>(p) = make_float4(f[0], f[1], f[2], f[3]);
}

// Sums of a and b over the CTA (BLOCK whole warps), the same for every thread. Once per kernel.
template <int BLOCK> __device__ __forceinline__ float2 cta_sum2(float a, float b) {
  __shared__ float ra[BLOCK / 32], rb[BLOCK / 32];
  for (int o = 16; o > 0; o >>= 1) {
    a += __shfl_xor_sync(0xffffffffu, a, o);
    b += __shfl_xor_sync(0xffffffffu, b, o);
  }
  if (threadIdx.x % 32 == 0)
    ra[threadIdx.x / 32] = a, rb[threadIdx.x / 32] = b;
  __syncthreads();
  float ta = 0.0f, tb = 0.0f;
#pragma unroll
  for (int w = 0; w < BLOCK / 32; ++w)
    ta += ra[w], tb += rb[w];
  return make_float2(ta, tb);
}

// Σ of each thread's s over the CTA (BLOCK whole warps) in a fixed order: a shuffle tree, then the
// warps in index order (deterministic). The total is valid in thread 0. Once per kernel.
template <int BLOCK> __device__ __forceinline__ double cta_total_f64(double s) {
  __shared__ double red[BLOCK / 32];
  for (int o = 16; o > 0; o >>= 1)
    s += __shfl_xor_sync(0xffffffffu, s, o);
  if (threadIdx.x % 32 == 0)
    red[threadIdx.x / 32] = s;
  __syncthreads();
  double t = 0.0;
  if (threadIdx.x == 0)
    for (int w = 0; w < BLOCK / 32; ++w)
      t += red[w];
  return t;
}

// The SRMSNorm backward of one row (y = x·r, r = rsqrt(mean(x²) + eps)):
//   out = base + r·dy − x·r³·Σ(x·dy)/COLS        (= base + r·(dy − x̂·mean(x̂ ⊙ dy)), x̂ = x·r)
// with base = 0, dx (ACC: accumulate) or dsum. out may alias dy or base (each element is read
// by the thread that writes it, after the reduction).
template <int COLS, int BLOCK, typename TDY, typename TOUT, typename TBASE>
__device__ __forceinline__ void norm_grad_row(const bf16 *x, const TDY *dy, const TBASE *base,
                                              TOUT *out, float eps) {
  if (COLS % 4 == 0 && aligned4(x) && aligned4(dy) && aligned4(out) &&
      (base == nullptr || aligned4(base))) {                // (the same for the whole CTA)
    constexpr int G = (COLS + BLOCK * 4 - 1) / (BLOCK * 4); // groups of four per thread
    if constexpr (G <= 4) {
      // The row's x, dy and base loaded once, all before the first is used (base no longer a
      // second memory latency after the reduction); the same arithmetic in the same order as
      // below.
      float xv[G][4], g[G][4], b[G][4];
#pragma unroll
      for (int q = 0; q < G; ++q) {
        const int c = threadIdx.x * 4 + q * BLOCK * 4;
        if (c < COLS) {
          load4(x + c, xv[q]);
          load4(dy + c, g[q]);
          if (base != nullptr)
            load4(base + c, b[q]);
        }
      }
      float ss = 0.0f, sd = 0.0f;
#pragma unroll
      for (int q = 0; q < G; ++q)
        if (threadIdx.x * 4 + q * BLOCK * 4 < COLS)
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            ss = fmaf(xv[q][j], xv[q][j], ss);
            sd = fmaf(xv[q][j], g[q][j], sd);
          }
      const float2 t = cta_sum2<BLOCK>(ss, sd);
      const float r = rsqrtf(t.x / COLS + eps);
      const float k = r * r * r * (t.y / COLS);
#pragma unroll
      for (int q = 0; q < G; ++q) {
        const int c = threadIdx.x * 4 + q * BLOCK * 4;
        if (c < COLS) {
          float v[4];
#pragma unroll
          for (int j = 0; j < 4; ++j) {
            v[j] = r * g[q][j] - k * xv[q][j];
            if (base != nullptr)
              v[j] += b[q][j];
          }
          store4(out + c, v);
        }
      }
      return;
    }
    float ss = 0.0f, sd = 0.0f;
    for (int c = threadIdx.x * 4; c < COLS; c += BLOCK * 4) {
      float xv[4], g[4];
      load4(x + c, xv);
      load4(dy + c, g);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        ss = fmaf(xv[j], xv[j], ss);
        sd = fmaf(xv[j], g[j], sd);
      }
    }
    const float2 t = cta_sum2<BLOCK>(ss, sd);
    const float r = rsqrtf(t.x / COLS + eps);
    const float k = r * r * r * (t.y / COLS);
    for (int c = threadIdx.x * 4; c < COLS; c += BLOCK * 4) {
      float xv[4], g[4], v[4], b[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      load4(x + c, xv);
      load4(dy + c, g);
      if (base != nullptr)
        load4(base + c, b);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        v[j] = r * g[j] - k * xv[j];
        if (base != nullptr)
          v[j] += b[j];
      }
      store4(out + c, v);
    }
    return;
  }
  float ss = 0.0f, sd = 0.0f;
  for (int c = threadIdx.x; c < COLS; c += BLOCK) {
    const float xv = to_f(x[c]), g = to_f(dy[c]);
    ss = fmaf(xv, xv, ss);
    sd = fmaf(xv, g, sd);
  }
  const float2 t = cta_sum2<BLOCK>(ss, sd);
  const float r = rsqrtf(t.x / COLS + eps);
  const float k = r * r * r * (t.y / COLS);
  for (int c = threadIdx.x; c < COLS; c += BLOCK) {
    float v = r * to_f(dy[c]) - k * to_f(x[c]);
    if (base != nullptr)
      v += to_f(base[c]);
    out[c] = from_f<TOUT>(v);
  }
}

// tnlm.srms_norm backward: dx[r, :] (+)= SRMSNorm'(x[r, :])ᵀ dy[r, :] (cpu::srmsNormGrad).
template <int COLS, int BLOCK, typename TDY, typename TDX, bool ACC>
__device__ __forceinline__ void srms_norm_grad(const bf16 *x, long long ldx, const TDY *dy,
                                               long long lddy, TDX *dx, long long lddx, float eps) {
  const long long r = blockIdx.x;
  TDX *out = dx + r * lddx;
  norm_grad_row<COLS, BLOCK>(x + r * ldx, dy + r * lddy, ACC ? out : static_cast<TDX *>(nullptr),
                             out, eps);
}

// tnlm.add_srms_norm backward (sum = a + b, y = SRMSNorm(sum)): the gradient of a and b,
//   g[r, :] = dsum[r, :] + SRMSNorm'(sum[r, :])ᵀ dy[r, :]   (cpu::addSrmsNormGrad)
// dsum may be null (sum unused after); g (f32 by default: the residual stream's gradient; TG
// bf16 where the plan keeps it in bf16) may alias dsum.
template <int COLS, int BLOCK, typename TDY, typename TDS = float, typename TG = float>
__device__ __forceinline__ void
add_srms_norm_grad(const bf16 *sum, long long ldsum, const TDS *dsum, long long lddsum,
                   const TDY *dy, long long lddy, TG *g, long long ldg, float eps) {
  const long long r = blockIdx.x;
  norm_grad_row<COLS, BLOCK>(sum + r * ldsum, dy + r * lddy,
                             dsum != nullptr ? dsum + r * lddsum : nullptr, g + r * ldg, eps);
}

// SiLU backward: dx = dy · σ(x)·(1 + x·(1 − σ(x))) (+ dx with ACC), as cpu::siluGrad: 1 − σ(x)
// taken as e·σ(x), e = exp(−x), for x >= 0 and as 1 − σ(x) below (no cancellation; e may be
// inf there, σ then 0). expf, not __expf: the CPU's std::exp to a few ulp.
template <int COLS, int BLOCK, typename TDY, typename TDX, bool ACC>
__device__ __forceinline__ void silu_grad(const bf16 *x, long long ldx, const TDY *dy,
                                          long long lddy, TDX *dx, long long lddx) {
  const long long r = blockIdx.x;
  const bf16 *xr = x + r * ldx;
  const TDY *dyr = dy + r * lddy;
  TDX *dxr = dx + r * lddx;
  for (int c = threadIdx.x; c < COLS; c += BLOCK) {
    const float xv = to_f(xr[c]);
    const float e = expf(-xv);
    const float s = 1.0f / (1.0f + e);
    const float oneMinus = xv >= 0.0f ? e * s : 1.0f - s;
    float v = to_f(dyr[c]) * (s * (1.0f + xv * oneMinus));
    if (ACC)
      v += to_f(dxr[c]);
    dxr[c] = from_f<TDX>(v);
  }
}

// The product's backward of tnlm.gated_linear (y = a ⊙ b, a = x·W1ᵀ, b = x·W2ᵀ recomputed):
// da = dy ⊙ b, db = dy ⊙ a (one rounding each; da, db feed the GEMMs of dx, dW1, dW2).
template <int COLS, int BLOCK, typename TDY, typename TD>
__device__ __forceinline__ void mul_grad(const bf16 *a, long long lda, const bf16 *b, long long ldb,
                                         const TDY *dy, long long lddy, TD *da, long long ldda,
                                         TD *db, long long lddb) {
  const long long r = blockIdx.x;
  if (COLS % 4 == 0 && aligned4(a + r * lda) && aligned4(b + r * ldb) && aligned4(dy + r * lddy) &&
      aligned4(da + r * ldda) && aligned4(db + r * lddb)) {
    for (int c = threadIdx.x * 4; c < COLS; c += BLOCK * 4) {
      float g[4], av[4], bv[4], x[4], y[4];
      load4(dy + r * lddy + c, g);
      load4(a + r * lda + c, av);
      load4(b + r * ldb + c, bv);
#pragma unroll
      for (int j = 0; j < 4; ++j)
        x[j] = g[j] * bv[j], y[j] = g[j] * av[j];
      store4(da + r * ldda + c, x);
      store4(db + r * lddb + c, y);
    }
    return;
  }
  for (int c = threadIdx.x; c < COLS; c += BLOCK) {
    const float g = to_f(dy[r * lddy + c]);
    const float av = to_f(a[r * lda + c]), bv = to_f(b[r * ldb + c]);
    da[r * ldda + c] = from_f<TD>(g * bv);
    db[r * lddb + c] = from_f<TD>(g * av);
  }
}

// Embedding backward (x = scale · E[ids]), deterministic: the host groups the step's tokens by
// id (runtime/EmbeddingSegments.h: `order` the token indices sorted by id, stable; segment s
// holds order[start[s] .. start[s + 1]) of id ids[s]; the padding index's tokens are left out
// there); CTA (s, column block) adds its tokens'
// rows in token order, as cpu::embeddingGrad:
//   dE[id, c] ← dE[id, c] + scale·dx[t, c]   (f32, one rounding per operation, no fused
//                                             multiply-add: bit for bit the CPU's)
// grid = (segments or more, ceil(d / BLOCK)).
template <int BLOCK, typename TDX>
__device__ __forceinline__ void embedding_grad(const int *order, const int *start, const int *ids,
                                               const TDX *dx, long long lddx, int d, float scale,
                                               float *dtable) {
  const int s = blockIdx.x, c = blockIdx.y * BLOCK + threadIdx.x;
  // c past the row, or an empty segment (the executor pads the grid of a replayed graph to
  // the most segments a call can have with empty ones).
  if (c >= d || start[s] == start[s + 1])
    return;
  float *row = dtable + static_cast<long long>(ids[s]) * d + c;
  float acc = *row;
  for (int j = start[s]; j < start[s + 1]; ++j) {
    const float v = to_f(dx[static_cast<long long>(order[j]) * lddx + c]);
    acc = scale == 1.0f ? __fadd_rn(acc, v) : __fadd_rn(acc, __fmul_rn(scale, v));
  }
  *row = acc;
}

// body(c, load(c)) for c = threadIdx.x, + BLOCK, ... < n, in that order, the loads of four
// consecutive c's of a thread issued before the first body (64 bytes of float4 in flight per
// thread, not 16: one load at a time kept a 1024-thread CTA near 16 GB/s per SM).
template <int BLOCK, class Load, class Body>
__device__ __forceinline__ void for_each4_batched(int n, Load load, Body body) {
  int c = threadIdx.x;
  for (; c + 3 * BLOCK < n; c += 4 * BLOCK) {
    float4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u)
      v[u] = load(c + u * BLOCK);
#pragma unroll
    for (int u = 0; u < 4; ++u)
      body(c + u * BLOCK, v[u]);
  }
  for (; c < n; c += BLOCK)
    body(c, load(c));
}

// A row's max and Σ exp(x − max) in one pass over it (online: each thread keeps its running max
// m and Σ exp(x − m) in f64, rescaled by expf(m_old − m_new) when m grows; the threads are then
// combined at the row's max, the warps in order: deterministic). e = expf(x − m) in f32; on the
// 16-byte path four e's at a time are summed in f32 before the f64 add.
template <int BLOCK>
__device__ __forceinline__ void ce_row_stats(const float *xr, int vocab, float &rowMax,
                                             double &rowSum) {
  __shared__ float redf[BLOCK / 32];
  __shared__ double redd[BLOCK / 32];
  const float ninf = __int_as_float(0xff800000); // -inf (NVRTC has no INFINITY)
  float m = ninf;
  double sum = 0.0;
  auto add = [&](float x) {
    if (x > m) {
      sum = m == ninf ? 0.0 : sum * static_cast<double>(expf(m - x));
      m = x;
    }
    sum += static_cast<double>(expf(x - m));
  };
  if (vocab % 4 == 0 && (reinterpret_cast<unsigned long long>(xr) & 15) == 0) {
    // 16-byte loads (four logits per thread and step: more bytes in flight per load), the four
    // e's summed in f32 (each <= 1: a few 2^-24 of their sum) and added to the f64 sum once:
    // the f32 -> f64 conversions (16 per SM and clock) bounded this kernel at one per element.
    // Four of a thread's loads in flight before the first is used (for_each4_batched); the
    // elements are taken in the same order as one at a time.
    const float4 *x4 = reinterpret_cast<const float4 *>(xr);
    auto add4 = [&](const float4 v) {
      const float x = fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w));
      if (x > m) {
        sum = m == ninf ? 0.0 : sum * static_cast<double>(expf(m - x));
        m = x;
      }
      sum += static_cast<double>((expf(v.x - m) + expf(v.y - m)) + (expf(v.z - m) + expf(v.w - m)));
    };
    for_each4_batched<BLOCK>(
        vocab / 4, [&](int c) { return x4[c]; }, [&](int, const float4 v) { add4(v); });
  } else {
    for (int c = threadIdx.x; c < vocab; c += BLOCK)
      add(xr[c]);
  }
  float mx = m;
  for (int o = 16; o > 0; o >>= 1)
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
  if (threadIdx.x % 32 == 0)
    redf[threadIdx.x / 32] = mx;
  __syncthreads();
  mx = redf[0];
#pragma unroll
  for (int w = 1; w < BLOCK / 32; ++w)
    mx = fmaxf(mx, redf[w]);
  double t = m == ninf ? 0.0 : sum * static_cast<double>(expf(m - mx));
  for (int o = 16; o > 0; o >>= 1)
    t += __shfl_xor_sync(0xffffffffu, t, o);
  if (threadIdx.x % 32 == 0)
    redd[threadIdx.x / 32] = t;
  __syncthreads();
  t = 0.0;
#pragma unroll
  for (int w = 0; w < BLOCK / 32; ++w)
    t += redd[w];
  rowMax = mx;
  rowSum = t;
}

// Cross entropy and its gradient over a block of rows of f32 logits [rows, vocab] (ld ldx;
// the lm head's output for a chunk of rows, so the [tokens, vocab] logits never exist whole),
// as cpu::crossEntropyGrad, the CTA's threads on row r:
//   rowLoss[r] = logsumexp(x[r]) − x[r, label]                      (f64; 0 on ignored rows)
//   dx[r, c]   = f(e_c · (k / Σe)),  dx[r, label] = f(k · (e_label / Σe − 1)),  e_c = exp(x_c −
//   max)
// with k = dloss / (rows counted over the whole step) in device memory (*kp, f64: the host
// counts the step's labels when it uploads them, and checks them: a label outside [0, vocab)
// that is not ignoreIndex gives a NaN row loss here, never an out-of-bounds read); zeros on
// ignored rows. e in f32 (expf), Σe and the loss in f64 (ce_row_stats: one pass for max and
// Σe, then one for the gradient). dx may alias x when TG is float (each element is read before
// the thread writes it). loss_total then adds the row losses in row order (the CPU's order).
// STREAM: the second pass's loads and the gradient's stores bypass L2's retention (ld.global.cs,
// st.global.cs), for the rows loop below, whose rows the first pass left in L2.
template <int BLOCK, typename TG, bool STREAM>
__device__ __forceinline__ void
cross_entropy_grad_row(long long r, const float *x, long long ldx, const int *labels, int vocab,
                       int ignoreIndex, const double *kp, TG *dx, long long lddx, double *rowLoss) {
  const float *xr = x + r * ldx;
  TG *gr = dx + r * lddx;
  const int label = labels[r];
  if (label == ignoreIndex) {
    for (int c = threadIdx.x; c < vocab; c += BLOCK)
      gr[c] = from_f<TG>(0.0f);
    if (threadIdx.x == 0)
      rowLoss[r] = 0.0;
    return;
  }
  if (label < 0 || label >= vocab) {
    if (threadIdx.x == 0)
      rowLoss[r] = __longlong_as_double(0x7ff8000000000000ll); // NaN: the host's checks failed
    return;
  }
  const float xl = xr[label];
  float mx;
  double sum;
  ce_row_stats<BLOCK>(xr, vocab, mx, sum);
  const double k = *kp, scale = k / sum;
  const float el = expf(xl - mx), scalef = static_cast<float>(scale);
  // e · (k / Σe) in f32 (two roundings of 2^-24 where the CPU has one; the GPU's dz is bf16),
  // the label's k (e / Σe − 1) in f64 (the difference cancels). A bf16 gradient takes e from
  // __expf (ex2.approx: ~2·10^-6 relative, against bf16's 2^-9; two instructions instead of
  // expf's ten, in the pass that writes every element); an f32 one from expf.
  auto grad = [&](int c, float x) {
    return c == label ? from_f<TG>(static_cast<float>(k * (static_cast<double>(el) / sum - 1.0)))
                      : from_f<TG>((sizeof(TG) == 2 ? __expf(x - mx) : expf(x - mx)) * scalef);
  };
  if (vocab % 4 == 0 && (reinterpret_cast<unsigned long long>(xr) & 15) == 0 &&
      (reinterpret_cast<unsigned long long>(gr) & (4 * sizeof(TG) - 1)) == 0 &&
      static_cast<const void *>(gr) != static_cast<const void *>(xr)) {
    // Four logits per thread and step (16-byte loads, 4-element stores).
    // As in ce_row_stats, four loads of a thread in flight before the first is used.
    const float4 *x4 = reinterpret_cast<const float4 *>(xr);
    auto load4 = [&](int c) { return STREAM ? __ldcs(x4 + c) : x4[c]; };
    auto store4 = [&](int c, const float4 v) {
      const TG g0 = grad(4 * c, v.x), g1 = grad(4 * c + 1, v.y), g2 = grad(4 * c + 2, v.z),
               g3 = grad(4 * c + 3, v.w);
      if constexpr (sizeof(TG) == 4) {
        const float4 w = make_float4(g0, g1, g2, g3);
        if constexpr (STREAM)
          __stcs(reinterpret_cast<float4 *>(gr) + c, w);
        else
          reinterpret_cast<float4 *>(gr)[c] = w;
      } else { // bf16: one 8-byte store
        __nv_bfloat162 lo, hi;
        lo.x = g0, lo.y = g1, hi.x = g2, hi.y = g3;
        uint2 w;
        w.x = *reinterpret_cast<const unsigned *>(&lo);
        w.y = *reinterpret_cast<const unsigned *>(&hi);
        if constexpr (STREAM)
          __stcs(reinterpret_cast<uint2 *>(gr) + c, w);
        else
          reinterpret_cast<uint2 *>(gr)[c] = w;
      }
    };
    for_each4_batched<BLOCK>(vocab / 4, load4, store4);
  } else {
    for (int c = threadIdx.x; c < vocab; c += BLOCK)
      gr[c] = grad(c, xr[c]);
  }
  if (threadIdx.x == 0) {
    const double lse = isinf(mx) ? static_cast<double>(mx) : mx + log(sum);
    rowLoss[r] = lse - static_cast<double>(xl);
  }
}

// One CTA per row (grid.x = rows).
template <int BLOCK, typename TG>
__device__ __forceinline__ void cross_entropy_grad(const float *x, long long ldx, const int *labels,
                                                   int vocab, int ignoreIndex, const double *kp,
                                                   TG *dx, long long lddx, double *rowLoss) {
  cross_entropy_grad_row<BLOCK, TG, false>(blockIdx.x, x, ldx, labels, vocab, ignoreIndex, kp, dx,
                                           lddx, rowLoss);
}

// The same values with a grid of at most one CTA per SM looping over the rows (r = blockIdx.x,
// + gridDim.x, ...): with BLOCK = 1024 about #SMs rows (132 x 256 KB at V = 64,000) are in flight,
// which L2 holds, so the second pass reads each row from L2 instead of HBM (one CTA per row
// kept ~1,000 rows in flight: both passes from HBM).
template <int BLOCK, typename TG>
__device__ __forceinline__ void
cross_entropy_grad_rows(const float *x, long long ldx, const int *labels, long long rows, int vocab,
                        int ignoreIndex, const double *kp, TG *dx, long long lddx,
                        double *rowLoss) {
  for (long long r = blockIdx.x; r < rows; r += gridDim.x)
    cross_entropy_grad_row<BLOCK, TG, true>(r, x, ldx, labels, vocab, ignoreIndex, kp, dx, lddx,
                                            rowLoss);
}

// cross_entropy_grad_rows's values with each row held on chip: each thread's float4s
// c = threadIdx.x + j·BLOCK of the row, REG of them in registers and the rest (up to
// HELD4 − REG·BLOCK per CTA) in dynamic shared memory (cp.async, each thread its own chunks: no
// barrier guards them), so the logits are read from memory once where the rows loop reads
// every row twice (the second time from L2), and in three steps over the held values instead of
// the online max: the row's max; e = exp(x − max) (__expf: ex2.approx, ~2^-22 relative, as the
// rows loop's bf16 gradient already takes) kept in place of x, Σe in f64 (four e's summed in f32
// first, as ce_row_stats); the gradient from the kept e's. ~8 instructions per logit against
// ~25 (accurate expf twice, the online rescaling), which bounded the rows loop at ~65 % of
// issue. The row loss differs from ce_row_stats's (cross_entropy_loss, accurate expf) by about
// 1e-7 relative. A row that does not fit (vocab > 4·HELD4, vocab % 4 != 0, unaligned rows, dx
// aliasing x) takes cross_entropy_grad_row's two passes. Launched with
// max(0, HELD4 − REG·BLOCK)·16 bytes of dynamic shared memory.
template <int BLOCK, int REG, int HELD4, typename TG>
__device__ __forceinline__ void
cross_entropy_grad_rows_held(const float *x, long long ldx, const int *labels, long long rows,
                             int vocab, int ignoreIndex, const double *kp, TG *dx,
                             long long lddx, double *rowLoss) {
  static_assert(sizeof(TG) == 2, "the held rows write bf16 gradients");
  extern __shared__ float4 ce_held[];
  __shared__ float redf[BLOCK / 32];
  __shared__ double redd[BLOCK / 32];
  const float ninf = __int_as_float(0xff800000);
  const int n4 = vocab / 4;
  const bool fits = vocab % 4 == 0 && n4 <= HELD4 && (ldx & 3) == 0 && (lddx & 3) == 0 &&
                    (reinterpret_cast<unsigned long long>(x) & 15) == 0 &&
                    (reinterpret_cast<unsigned long long>(dx) & 7) == 0 &&
                    static_cast<const void *>(dx) != static_cast<const void *>(x);
  const int t = threadIdx.x;
  const unsigned sbase = static_cast<unsigned>(__cvta_generic_to_shared(ce_held));
  for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
    const int label = labels[r];
    if (!fits || label == ignoreIndex || label < 0 || label >= vocab) {
      cross_entropy_grad_row<BLOCK, TG, true>(r, x, ldx, labels, vocab, ignoreIndex, kp, dx, lddx,
                                              rowLoss);
      continue;
    }
    const float4 *x4 = reinterpret_cast<const float4 *>(x + r * ldx);
    // The shared part first (cp.async, L2 only), then the registers' loads: all in flight.
    for (int c = t + REG * BLOCK; c < n4; c += BLOCK)
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                       sbase + static_cast<unsigned>(c - REG * BLOCK) * 16u),
                   "l"(x4 + c)
                   : "memory");
    asm volatile("cp.async.commit_group;\n" ::: "memory");
    float4 v[REG];
#pragma unroll
    for (int j = 0; j < REG; ++j)
      v[j] = t + j * BLOCK < n4 ? __ldcs(x4 + t + j * BLOCK) : make_float4(ninf, ninf, ninf, ninf);
    const float xl = x[r * ldx + label];
    asm volatile("cp.async.wait_all;\n" ::: "memory");
    // 1. The row's max.
    float m = ninf;
#pragma unroll
    for (int j = 0; j < REG; ++j)
      m = fmaxf(m, fmaxf(fmaxf(v[j].x, v[j].y), fmaxf(v[j].z, v[j].w)));
    for (int c = t + REG * BLOCK; c < n4; c += BLOCK) {
      const float4 w = ce_held[c - REG * BLOCK];
      m = fmaxf(m, fmaxf(fmaxf(w.x, w.y), fmaxf(w.z, w.w)));
    }
    for (int o = 16; o > 0; o >>= 1)
      m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if (t % 32 == 0)
      redf[t / 32] = m;
    __syncthreads();
    float mx = redf[0];
#pragma unroll
    for (int w = 1; w < BLOCK / 32; ++w)
      mx = fmaxf(mx, redf[w]);
    // 2. e = exp(x − max) in place of x; Σe in f64. (The -inf padding gives e = 0.)
    double sum = 0.0;
    auto exp4 = [&](float4 &w) {
      w = make_float4(__expf(w.x - mx), __expf(w.y - mx), __expf(w.z - mx), __expf(w.w - mx));
      sum += static_cast<double>((w.x + w.y) + (w.z + w.w));
    };
#pragma unroll
    for (int j = 0; j < REG; ++j)
      exp4(v[j]);
    for (int c = t + REG * BLOCK; c < n4; c += BLOCK) {
      float4 w = ce_held[c - REG * BLOCK];
      exp4(w);
      ce_held[c - REG * BLOCK] = w;
    }
    for (int o = 16; o > 0; o >>= 1)
      sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if (t % 32 == 0)
      redd[t / 32] = sum;
    __syncthreads();
    double tsum = 0.0;
#pragma unroll
    for (int w = 0; w < BLOCK / 32; ++w)
      tsum += redd[w];
    // The next row's reductions write redf / redd only after this row's reads of them.
    __syncthreads();
    // 3. dz = e · (k / Σe), the label's k (e / Σe − 1) in f64 (the difference cancels).
    const double k = *kp;
    const float scalef = static_cast<float>(k / tsum);
    const float el = __expf(xl - mx);
    const TG gl = from_f<TG>(static_cast<float>(k * (static_cast<double>(el) / tsum - 1.0)));
    TG *gr = dx + r * lddx;
    auto store4 = [&](int c, const float4 w) {
      __nv_bfloat162 lo, hi;
      lo.x = 4 * c == label ? gl : from_f<TG>(w.x * scalef);
      lo.y = 4 * c + 1 == label ? gl : from_f<TG>(w.y * scalef);
      hi.x = 4 * c + 2 == label ? gl : from_f<TG>(w.z * scalef);
      hi.y = 4 * c + 3 == label ? gl : from_f<TG>(w.w * scalef);
      uint2 u;
      u.x = *reinterpret_cast<const unsigned *>(&lo);
      u.y = *reinterpret_cast<const unsigned *>(&hi);
      __stcs(reinterpret_cast<uint2 *>(gr) + c, u);
    };
#pragma unroll
    for (int j = 0; j < REG; ++j)
      if (t + j * BLOCK < n4)
        store4(t + j * BLOCK, v[j]);
    for (int c = t + REG * BLOCK; c < n4; c += BLOCK)
      store4(c, ce_held[c - REG * BLOCK]);
    if (t == 0) {
      const double lse = isinf(mx) ? static_cast<double>(mx) : mx + log(tsum);
      rowLoss[r] = lse - static_cast<double>(xl);
    }
  }
}

// The row losses alone (the loss of @train_step's forward and @eval_loss): one pass over each
// row, no gradient written. Same values as cross_entropy_grad's rowLoss.
template <int BLOCK>
__device__ __forceinline__ void cross_entropy_loss(const float *x, long long ldx, const int *labels,
                                                   int vocab, int ignoreIndex, double *rowLoss) {
  const long long r = blockIdx.x;
  const float *xr = x + r * ldx;
  const int label = labels[r];
  if (label == ignoreIndex || label < 0 || label >= vocab) {
    if (threadIdx.x == 0)
      rowLoss[r] = label == ignoreIndex ? 0.0 : __longlong_as_double(0x7ff8000000000000ll);
    return;
  }
  float mx;
  double sum;
  ce_row_stats<BLOCK>(xr, vocab, mx, sum);
  if (threadIdx.x == 0) {
    const double lse = isinf(mx) ? static_cast<double>(mx) : mx + log(sum);
    rowLoss[r] = lse - static_cast<double>(xr[label]);
  }
}

// *total = Σ rowLoss[r] with one CTA of BLOCK threads (grid = 1): thread t adds rows t, t + BLOCK,
// ... in order, then a fixed shuffle tree and the warps in order (deterministic; within f64
// rounding of the row order). One thread alone took 0.6 ms over 8,192 rows (a load's latency
// per row).
template <int BLOCK>
__device__ __forceinline__ void loss_total_block(const double *rowLoss, long long rows,
                                                 double *total) {
  double s = 0.0;
  for (long long r = threadIdx.x; r < rows; r += BLOCK)
    s += rowLoss[r];
  const double t = cta_total_f64<BLOCK>(s);
  if (threadIdx.x == 0)
    *total = t;
}

// One thread: *total = Σ rowLoss[r] over r < rows in row order (then / counted for the mean).
__device__ __forceinline__ void loss_total(const double *rowLoss, long long rows, double *total) {
  double s = 0.0;
  for (long long r = 0; r < rows; ++r)
    s += rowLoss[r];
  *total = s;
}

// The optimizer's tensors (@optimizer_step): parameter p, gradient g, moments m and v (f32,
// n contiguous each), weight decay on or off, and the first of the CHUNK-float chunks the
// tensor's work is cut into (chunk0: the chunks of the tensors before it). A kernel over all
// tensors runs one CTA per chunk (grid.x = the chunks of all tensors).
struct OptTensor {
  float *p;
  const float *g;
  float *m, *v;
  long long n, chunk0;
  int decay;
};
constexpr int kOptChunk = 1 << 16; // cpu::sumSquares's chunk

// The tensor of chunk c (tensors[i].chunk0 <= c < tensors[i + 1].chunk0).
__device__ __forceinline__ int opt_tensor_of(const OptTensor *tensors, int count, long long c) {
  int lo = 0, hi = count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (tensors[mid].chunk0 <= c)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Σ g² over every tensor's gradient, in f64: partial[c] = the sum over chunk c (per-thread
// strided sums, the warps' sums in order), then sum_squares_total adds the chunks in index
// order. Deterministic; the CPU (cpu::sumSquares) sums each chunk sequentially, so the two
// differ by f64 rounding only.
template <int BLOCK>
__device__ __forceinline__ void sum_squares_chunks(const OptTensor *tensors, int count,
                                                   double *partial) {
  const long long c = blockIdx.x;
  const OptTensor t = tensors[opt_tensor_of(tensors, count, c)];
  const long long i0 = (c - t.chunk0) * kOptChunk;
  const long long i1 = i0 + kOptChunk < t.n ? i0 + kOptChunk : t.n;
  double s = 0.0;
  long long tail = i0; // where the one-float loop starts
  if (aligned4(t.g)) { // (i0 is a multiple of 4: four floats per 16-byte access)
    const long long n4 = (i1 - i0) / 4;
    for (long long j = threadIdx.x; j < n4; j += BLOCK) {
      float f[4];
      load4(t.g + i0 + 4 * j, f);
#pragma unroll
      for (int e = 0; e < 4; ++e)
        s = fma(double(f[e]), double(f[e]), s);
    }
    tail = i0 + 4 * n4;
  }
  for (long long i = tail + threadIdx.x; i < i1; i += BLOCK) {
    const double v = t.g[i];
    s = fma(v, v, s);
  }
  const double total = cta_total_f64<BLOCK>(s);
  if (threadIdx.x == 0)
    partial[c] = total;
}

// One thread: total = Σ partial[c] in index order; norm = f32(sqrt(total) / divisor)
// (tnlm GlobalNorm: divisor = the accumulation steps). grid = 1, block = 1.
__device__ __forceinline__ void sum_squares_total(const double *partial, long long chunks,
                                                  double divisor, double *total, float *norm) {
  double s = 0.0;
  for (long long c = 0; c < chunks; ++c)
    s += partial[c];
  if (total != nullptr)
    *total = s;
  if (norm != nullptr)
    *norm = static_cast<float>(sqrt(s) / divisor);
}

// The same with one CTA of BLOCK threads (grid = 1): thread t adds chunks t, t + BLOCK, ... in
// order, then the warps' lanes by a fixed shuffle tree and the warps in order: deterministic,
// and within f64 rounding of the sequential sum. One thread alone waits a load's latency per few
// chunks (~6,000 chunks at 385M: ~0.4 ms); here BLOCK loads are in flight at once.
template <int BLOCK>
__device__ __forceinline__ void sum_squares_total_block(const double *partial, long long chunks,
                                                        double divisor, double *total,
                                                        float *norm) {
  double s = 0.0;
  for (long long c = threadIdx.x; c < chunks; c += BLOCK)
    s += partial[c];
  const double t = cta_total_f64<BLOCK>(s);
  if (threadIdx.x == 0) {
    if (total != nullptr)
      *total = t;
    if (norm != nullptr)
      *norm = static_cast<float>(sqrt(t) / divisor);
  }
}

// y = a + b over a row (grid.x = rows; the train plan's gradient accumulation, f32).
template <int COLS, int BLOCK, typename TA, typename TB, typename TY>
__device__ __forceinline__ void add_rows(const TA *a, long long lda, const TB *b, long long ldb,
                                         TY *y, long long ldy) {
  const long long r = blockIdx.x;
  for (int c = threadIdx.x; c < COLS; c += BLOCK)
    y[r * ldy + c] = from_f<TY>(to_f(a[r * lda + c]) + to_f(b[r * ldb + c]));
}

// The mean loss (one thread): *loss = f32(*total · *invCount), invCount = 1 / the counted
// labels (the host's count).
__device__ __forceinline__ void loss_mean(const double *total, const double *invCount,
                                          float *loss) {
  *loss = static_cast<float>(*total * *invCount);
}

// k = dloss · invCount (f64, one thread): the cross entropy gradient's factor, from the loss's
// cotangent (the plan's fill) and 1 / the counted labels (the host's count).
__device__ __forceinline__ void loss_grad_scale(const float *dloss, const double *invCount,
                                                double *k) {
  *k = static_cast<double>(*dloss) * *invCount;
}

// The bf16 copy of n f32 values (the weights the GEMMs read, after each optimizer step);
// grid-stride.
__device__ __forceinline__ void cast_bf16(const float *x, long long n, bf16 *y) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<long long>(gridDim.x) * blockDim.x)
    y[i] = __float2bfloat16(x[i]);
}

// The optimizer step's scalars (tnlm LrSchedule, ClipScale; one thread), from the step
// counter (completed steps), the hyperparameter vector (f32 [HyperParam.Count], tnlm.fbs
// order: lr 0, min lr 1, warmup 2, total steps 3, schedule 4 (1 = cosine), clip 9, accumulation
// steps 10) and the global norm, in f64 as runtime/CpuTrainSteps.cpp:
//   lr    = lr·(s + 1)/warmup while s < warmup; then lr (constant) or
//           min + (lr − min)·(1 + cos(π·min(1, (s − warmup)/max(1, total − warmup))))/2;
//   scale = min(1, clip/(norm + 1e-6)) (1 when clip <= 0), divided by the accumulation steps;
//   t     = s + 1 (the AdamW step adamw reads).
// lr_schedule writes lr and t, clip_scale the scale; optimizer_scalars both.
__device__ __forceinline__ void lr_schedule(const int *counter, const float *hp, float *lr,
                                            int *t) {
  const int s = *counter;
  const double base = hp[0], minLr = hp[1], warmup = hp[2], total = hp[3];
  double l;
  if (s < warmup) {
    l = base * (static_cast<double>(s) + 1.0) / warmup;
  } else if (static_cast<int>(hp[4]) != 1) {
    l = base;
  } else {
    const double p = fmin(1.0, (s - warmup) / fmax(1.0, total - warmup));
    l = minLr + (base - minLr) * 0.5 * (1.0 + cos(3.14159265358979323846 * p));
  }
  *lr = static_cast<float>(l);
  *t = s + 1;
}
__device__ __forceinline__ void clip_scale(const float *norm, const float *hp, float *scale) {
  const double clip = hp[9];
  double c = 1.0;
  if (clip > 0)
    c = fmin(1.0, clip / (static_cast<double>(*norm) + 1e-6));
  *scale = static_cast<float>(c / hp[10]);
}
__device__ __forceinline__ void optimizer_scalars(const int *counter, const float *hp,
                                                  const float *norm, float *lr, float *scale,
                                                  int *t) {
  lr_schedule(counter, hp, lr, t);
  clip_scale(norm, hp, scale);
}

// tnlm Increment: the step counter, after the step (one thread).
__device__ __forceinline__ void step_increment(int *counter) { *counter += 1; }

// One AdamW step over every tensor (cpu::adamw, torch.optim.AdamW's single-tensor order), on
// the gradient g·gradScale: lr, gradScale and the step t >= 1 come from device memory (the
// schedule's, the clipping's and the step counter's outputs), β1, β2, eps and the weight decay
// as arguments. The step's scalars are computed in f64 per CTA as on the CPU, the per-element
// arithmetic in f32 with one IEEE rounding per operation (__f*_rn: nothing fused), so the
// result is the CPU's up to the f64 pow of the bias corrections (CUDA's 2 ulp vs glibc's).
// copies (may be null): per tensor, its bf16 copy (the weights the GEMMs read) or null; the
// updated p is written there too (cast_bf16's rounding), so no pass of its own rereads p.
template <int BLOCK>
__device__ __forceinline__ void
adamw(const OptTensor *tensors, int count, const float *lrp, const float *scalep, const int *stepp,
      float beta1, float beta2, float eps, float weightDecay, bf16 *const *copies = nullptr) {
  const long long c = blockIdx.x;
  const int ti = opt_tensor_of(tensors, count, c);
  const OptTensor t = tensors[ti]; // a copy: the stores below cannot alias the table
  bf16 *const copy = copies ? copies[ti] : nullptr;
  const float lr = *lrp, gradScale = *scalep;
  const double step = static_cast<double>(*stepp);
  if (*stepp < 1)
    return; // the CPU throws; the executor checks the counter before the step
  const float wd = t.decay ? weightDecay : 0.0f;
  const float decay = static_cast<float>(1.0 - static_cast<double>(lr) * wd);
  const float w = static_cast<float>(1.0 - static_cast<double>(beta1));
  const bool smallWeight = fabsf(w) < 0.5f;
  const float oneMinusW = __fsub_rn(1.0f, w);
  const float c2 = static_cast<float>(1.0 - static_cast<double>(beta2));
  const double bc1 = 1.0 - pow(static_cast<double>(beta1), step);
  const double bc2 = 1.0 - pow(static_cast<double>(beta2), step);
  const float negStep = static_cast<float>(-(static_cast<double>(lr) / bc1));
  const float bc2Sqrt = static_cast<float>(sqrt(bc2));
  const long long i0 = (c - t.chunk0) * kOptChunk;
  const long long i1 = i0 + kOptChunk < t.n ? i0 + kOptChunk : t.n;
  // One element: the same arithmetic on both paths.
  auto update = [&](float g0, float p0, float m0, float v0, float &mi, float &vi, float &pn) {
    const float gi = __fmul_rn(g0, gradScale);
    const float pi = __fmul_rn(p0, decay);
    mi = smallWeight ? __fadd_rn(m0, __fmul_rn(w, __fsub_rn(gi, m0)))
                     : __fsub_rn(gi, __fmul_rn(__fsub_rn(gi, m0), oneMinusW));
    vi = __fadd_rn(__fmul_rn(v0, beta2), __fmul_rn(__fmul_rn(c2, gi), gi));
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), bc2Sqrt), eps);
    pn = __fadd_rn(pi, __fdiv_rn(__fmul_rn(negStep, mi), denom));
  };
  long long tail = i0; // where the one-element loop starts
  if (aligned4(t.p) && aligned4(t.g) && aligned4(t.m) && aligned4(t.v) &&
      (copy == nullptr || aligned4(copy))) {
    // Four elements per access (i0 is a multiple of 4): 16-byte f32 and 8-byte bf16 accesses.
    const long long n4 = (i1 - i0) / 4;
    for (long long j = threadIdx.x; j < n4; j += BLOCK) {
      const long long i = i0 + 4 * j;
      float g[4], p[4], m[4], v[4];
      load4(t.g + i, g), load4(t.p + i, p), load4(t.m + i, m), load4(t.v + i, v);
#pragma unroll
      for (int e = 0; e < 4; ++e)
        update(g[e], p[e], m[e], v[e], m[e], v[e], p[e]);
      store4(t.m + i, m), store4(t.v + i, v), store4(t.p + i, p);
      if (copy)
        store4(copy + i, p);
    }
    tail = i0 + 4 * n4;
  }
  for (long long i = tail + threadIdx.x; i < i1; i += BLOCK) {
    float mi, vi, pn;
    update(t.g[i], t.p[i], t.m[i], t.v[i], mi, vi, pn);
    t.m[i] = mi;
    t.v[i] = vi;
    t.p[i] = pn;
    if (copy)
      copy[i] = __float2bfloat16(pn);
  }
}

} // namespace bw
} // namespace tnlm
