// Lightning Attention backward, first GPU version (issue 11): correct before
// fast. One CTA per (batch, head), fp32 tiles and states in shared memory, products as FMA
// loops (no tensor cores), the blocked algorithm of cpu::lightningAttentionGrad
// (runtime/cpu/AttentionGrad.cpp, docs/model.md Algorithm 2) with its factors:
//   dec[r] = λ^r = exp(−s·r) in f64, rounded once to f32 (0 below FLT_MIN), M[i,j] = dec[i−j];
//   first sweep, blocks in order:  dQ = ((dO Vᵀ) ⊙ M) K + Λ dO KVᵀ,  Λ = diag(dec[1..m]),
//                                  KV = dec[m] KV + (diag(dec[m−1−i]) K)ᵀ V;
//   second sweep, in reverse:      dK = ((dO Vᵀ) ⊙ M)ᵀ Q + (diag(dec[m−1−i]) V) dKVᵀ,
//                                  dV = ((Q Kᵀ) ⊙ M)ᵀ dO + (diag(dec[m−1−i]) K) dKV,
//                                  dKV = dec[m] dKV + (Λ Q)ᵀ dO.
// Each output is written once (the block-local terms are recomputed in the sweep that writes
// it). q, k: bf16 [B·N rows, H·DK] (head h at columns h·DK), v, dO: bf16 [B·N rows, H·DV], with
// their row strides; dq, dk, dv: TG (bf16 or f32) likewise. Dynamic shared memory
// SimpleBwd<DK, DV, C>::kSmemBytes (DK = DV = 128 with C = 64; DK = 256, the LRPE layers' q', k',
// with C = 16, since the fp32 state is then 128 KiB). lightning_fwd_simple: the forward's O
// (before the gate and norm) the same way, for the fused op's backward
// (LightningAttentionGradParts.cuh).
#pragma once

#include <cuda_bf16.h>

namespace tnlm {
namespace la_bw {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }
template <typename T> __device__ __forceinline__ T out_of(float v);
template <> __device__ __forceinline__ float out_of<float>(float v) { return v; }
template <> __device__ __forceinline__ bf16 out_of<bf16>(float v) { return __float2bfloat16(v); }

template <int DK, int DV, int C> struct SimpleBwd {
  // Q, K tiles [C][DK], V, dO tiles [C][DV], the state [DK][DV], the block's masked scores
  // [C][C], dec[C + 1].
  static constexpr int kSmemFloats = 2 * C * DK + 2 * C * DV + DK * DV + C * C + C + 1;
  static constexpr int kSmemBytes = kSmemFloats * 4;
};

template <int DK, int DV, int C, int BLOCK, typename TG>
__device__ __forceinline__ void
lightning_bwd_simple(const bf16 *q, long long ldq, const bf16 *k, long long ldk, const bf16 *v,
                     long long ldv, const bf16 *dout, long long lddo, const float *slopes, TG *dq,
                     long long lddq, TG *dk, long long lddk, TG *dv, long long lddv, int N, int H) {
  extern __shared__ __align__(16) float la_bw_smem[];
  float *Qs = la_bw_smem, *Ks = Qs + C * DK, *Vs = Ks + C * DK, *Os = Vs + C * DV;
  float *S = Os + C * DV, *A = S + DK * DV, *dec = A + C * C;
  const int p = blockIdx.x, b = p / H, h = p % H, tid = threadIdx.x;
  const double slope = slopes[h];
  for (int r = tid; r <= C; r += BLOCK) {
    const double val = exp(-slope * static_cast<double>(r));
    dec[r] = val < 1.1754943508222875e-38 ? 0.0f : static_cast<float>(val);
  }
  const int T = (N + C - 1) / C;
  // The tiles of block blk (rows beyond its length m are zero).
  auto load = [&](int blk, int m) {
    const long long row0 = static_cast<long long>(b) * N + static_cast<long long>(blk) * C;
    for (int e = tid; e < C * DK; e += BLOCK) {
      const int i = e / DK, c = e % DK;
      const bool in = i < m;
      const long long r = row0 + i;
      Qs[e] = in ? __bfloat162float(q[r * ldq + h * DK + c]) : 0.0f;
      Ks[e] = in ? __bfloat162float(k[r * ldk + h * DK + c]) : 0.0f;
    }
    for (int e = tid; e < C * DV; e += BLOCK) {
      const int i = e / DV, c = e % DV;
      const bool in = i < m;
      const long long r = row0 + i;
      Vs[e] = in ? __bfloat162float(v[r * ldv + h * DV + c]) : 0.0f;
      Os[e] = in ? __bfloat162float(dout[r * lddo + h * DV + c]) : 0.0f;
    }
  };
  // A = (X Yᵀ) ⊙ M over the block's m rows (zero outside), rows of W columns.
  auto masked = [&](const float *X, const float *Y, int m, int W) {
    for (int e = tid; e < C * C; e += BLOCK) {
      const int i = e / C, j = e % C;
      float s = 0.0f;
      if (i < m && j <= i) {
        for (int c = 0; c < W; ++c)
          s = fmaf(X[i * W + c], Y[j * W + c], s);
        s *= dec[i - j];
      }
      A[e] = s;
    }
  };
  __syncthreads();

  // First sweep: dQ, then KV for the next block.
  for (int blk = 0; blk < T; ++blk) {
    const int m = min(C, N - blk * C);
    load(blk, m);
    __syncthreads();
    masked(Os, Vs, m, DV);
    __syncthreads();
    for (int e = tid; e < m * DK; e += BLOCK) {
      const int i = e / DK, c = e % DK;
      float s = 0.0f;
      for (int j = 0; j <= i; ++j)
        s = fmaf(A[i * C + j], Ks[j * DK + c], s);
      if (blk > 0) {
        float t = 0.0f;
        for (int x = 0; x < DV; ++x)
          t = fmaf(Os[i * DV + x], S[c * DV + x], t);
        s = fmaf(dec[i + 1], t, s);
      }
      const long long r = static_cast<long long>(b) * N + static_cast<long long>(blk) * C + i;
      dq[r * lddq + h * DK + c] = out_of<TG>(s);
    }
    __syncthreads();
    if (blk + 1 < T)
      for (int e = tid; e < DK * DV; e += BLOCK) {
        const int c = e / DV, x = e % DV;
        float s = 0.0f;
        for (int i = 0; i < m; ++i)
          s = fmaf(dec[m - 1 - i] * Ks[i * DK + c], Vs[i * DV + x], s);
        S[e] = blk == 0 ? s : fmaf(dec[m], S[e], s);
      }
    __syncthreads();
  }

  // Second sweep: dK, dV, then dKV for the block before.
  for (int e = tid; e < DK * DV; e += BLOCK)
    S[e] = 0.0f;
  __syncthreads();
  for (int blk = T - 1; blk >= 0; --blk) {
    const int m = min(C, N - blk * C);
    const bool later = blk + 1 < T;
    load(blk, m);
    __syncthreads();
    masked(Os, Vs, m, DV);
    __syncthreads();
    const long long row0 = static_cast<long long>(b) * N + static_cast<long long>(blk) * C;
    for (int e = tid; e < m * DK; e += BLOCK) { // dK
      const int i = e / DK, c = e % DK;
      float s = 0.0f;
      for (int j = i; j < m; ++j)
        s = fmaf(A[j * C + i], Qs[j * DK + c], s);
      if (later) {
        float t = 0.0f;
        for (int x = 0; x < DV; ++x)
          t = fmaf(Vs[i * DV + x], S[c * DV + x], t);
        s = fmaf(dec[m - 1 - i], t, s);
      }
      dk[(row0 + i) * lddk + h * DK + c] = out_of<TG>(s);
    }
    __syncthreads();
    masked(Qs, Ks, m, DK);
    __syncthreads();
    for (int e = tid; e < m * DV; e += BLOCK) { // dV
      const int i = e / DV, x = e % DV;
      float s = 0.0f;
      for (int j = i; j < m; ++j)
        s = fmaf(A[j * C + i], Os[j * DV + x], s);
      if (later) {
        float t = 0.0f;
        for (int c = 0; c < DK; ++c)
          t = fmaf(Ks[i * DK + c], S[c * DV + x], t);
        s = fmaf(dec[m - 1 - i], t, s);
      }
      dv[(row0 + i) * lddv + h * DV + x] = out_of<TG>(s);
    }
    __syncthreads();
    if (blk > 0)
      for (int e = tid; e < DK * DV; e += BLOCK) {
        const int c = e / DV, x = e % DV;
        float s = 0.0f;
        for (int i = 0; i < m; ++i)
          s = fmaf(dec[i + 1] * Qs[i * DK + c], Os[i * DV + x], s);
        S[e] = later ? fmaf(dec[m], S[e], s) : s;
      }
    __syncthreads();
  }
}

// The forward's O = ((Q Kᵀ) ⊙ M) V + Λ Q KV, KV = dec[m] KV + (diag(dec[m−1−i]) K)ᵀ V, blocks
// in order, the same factors (the reference for the fused op's backward: O before its gate and
// norm). q, k: bf16 [B·N, H·DK], v: bf16 [B·N, H·DV]; o: TO [B·N, H·DV]. One CTA per (b, h);
// dynamic shared memory SimpleBwd<DK, DV, C>::kSmemBytes.
template <int DK, int DV, int C, int BLOCK, typename TO>
__device__ __forceinline__ void
lightning_fwd_simple(const bf16 *q, long long ldq, const bf16 *k, long long ldk, const bf16 *v,
                     long long ldv, const float *slopes, TO *o, long long ldo, int N, int H) {
  extern __shared__ __align__(16) float la_fw_smem[];
  float *Qs = la_fw_smem, *Ks = Qs + C * DK, *Vs = Ks + C * DK;
  float *S = Vs + 2 * C * DV, *A = S + DK * DV, *dec = A + C * C;
  const int p = blockIdx.x, b = p / H, h = p % H, tid = threadIdx.x;
  const double slope = slopes[h];
  for (int r = tid; r <= C; r += BLOCK) {
    const double val = exp(-slope * static_cast<double>(r));
    dec[r] = val < 1.1754943508222875e-38 ? 0.0f : static_cast<float>(val);
  }
  const int T = (N + C - 1) / C;
  for (int blk = 0; blk < T; ++blk) {
    const int m = min(C, N - blk * C);
    const long long row0 = static_cast<long long>(b) * N + static_cast<long long>(blk) * C;
    for (int e = tid; e < C * DK; e += BLOCK) {
      const int i = e / DK, c = e % DK;
      const long long r = row0 + i;
      Qs[e] = i < m ? __bfloat162float(q[r * ldq + h * DK + c]) : 0.0f;
      Ks[e] = i < m ? __bfloat162float(k[r * ldk + h * DK + c]) : 0.0f;
    }
    for (int e = tid; e < C * DV; e += BLOCK) {
      const int i = e / DV, c = e % DV;
      Vs[e] = i < m ? __bfloat162float(v[(row0 + i) * ldv + h * DV + c]) : 0.0f;
    }
    __syncthreads();
    for (int e = tid; e < C * C; e += BLOCK) {
      const int i = e / C, j = e % C;
      float s = 0.0f;
      if (i < m && j <= i) {
        for (int c = 0; c < DK; ++c)
          s = fmaf(Qs[i * DK + c], Ks[j * DK + c], s);
        s *= dec[i - j];
      }
      A[e] = s;
    }
    __syncthreads();
    for (int e = tid; e < m * DV; e += BLOCK) {
      const int i = e / DV, x = e % DV;
      float s = 0.0f;
      for (int j = 0; j <= i; ++j)
        s = fmaf(A[i * C + j], Vs[j * DV + x], s);
      if (blk > 0) {
        float t = 0.0f;
        for (int c = 0; c < DK; ++c)
          t = fmaf(Qs[i * DK + c], S[c * DV + x], t);
        s = fmaf(dec[i + 1], t, s);
      }
      o[(row0 + i) * ldo + h * DV + x] = out_of<TO>(s);
    }
    __syncthreads();
    if (blk + 1 < T)
      for (int e = tid; e < DK * DV; e += BLOCK) {
        const int c = e / DV, x = e % DV;
        float s = 0.0f;
        for (int i = 0; i < m; ++i)
          s = fmaf(dec[m - 1 - i] * Ks[i * DK + c], Vs[i * DV + x], s);
        S[e] = blk == 0 ? s : fmaf(dec[m], S[e], s);
      }
    __syncthreads();
  }
}

} // namespace la_bw
} // namespace tnlm
