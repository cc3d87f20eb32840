// Recurrent inference on the GPU (tnlm-recurrent's @prefill and @decode_step; docs/generation.md):
// device templates for the CUDA emitter (codegen/CudaEmitter.cpp) to specialize.
//
// Prefill. The runtime places each slot's prompt at the END of the call's sequence (left
// padding): slot b with L_b tokens in a call of N rows holds them at rows [N - L_b, N), its
// first token at position 0. The prologue writes zeros for q' and k' of the padding rows, so
// they add nothing to the state (k'ᵀv = 0) and decay nothing that exists (the state is still
// zero when they pass); the Hopper forward (LightningAttentionFwdSm90.cuh) then runs
// unchanged, its optional final state after row N - 1 is exactly Σ_s λ^(L-1-s) k'_sᵀ v_s over
// the slot's tokens, and every slot's last position is row N - 1. The final state of each
// pass goes to a scratch [B·H][DK][DV] and state_commit copies it into the persistent state
// of the slots that had a prompt (a slot of length 0 keeps its state).
//
// Decode. One token per slot at its own position (positions[b], -1 = inactive slot, whose
// state is left alone and whose output row is zero): lightning_decode does, per (slot, head)
// and a slice of DV columns per CTA, the prologue of q and k (φ = SiLU, LRPE at the slot's
// position), S ← λ S + k'ᵀ v in fp32 (update in f64, one rounding per entry, as the CPU
// backend), and o = q' S, written as bf16. The norm over all heads of the row and the gate
// follow as the forward's row kernel (gated_srms_norm).
//
// The LRPE layout of the state matches the CPU backend's: q' = [φ(q) cos | φ(q) sin] per head
// (dk = 2·dh), so state rows [0, dh) hold the cos half and [dh, 2dh) the sin half; on the GPU
// prefill the two halves are the two forward passes (cos planes, sin planes).
#pragma once

#include <cuda_bf16.h>

namespace tnlm {
namespace rec {

using bf16 = __nv_bfloat16;

__device__ __forceinline__ float silu_f(float x) { return x / (1.0f + __expf(-x)); }

// Prefill prologue, one CTA per row r of the call (grid.x = B·N), COLS = D = H·dh:
// position p = t - (N - L_b) for row t of slot b (negative: padding).
//   LRPE: w[r] = [q' cos | k' cos | q' sin | k' sin] (four planes of D), q' = φ(x[r, 0:D]),
//         k' = φ(x[r, D:2D]), angle p·θ in fp32 (as ew::lrpe_split); zeros where p < 0.
//   else: q', k' in place in x (w == x): φ where p >= 0 (when SILU), zeros where p < 0.
template <int COLS, int BLOCK, bool SILU, bool LRPE>
__device__ __forceinline__ void prefill_prologue(bf16 *x, long long ldx, const float *theta,
                                                 const int *lengths, int seq, bf16 *w,
                                                 long long ldw) {
  static_assert(COLS % 2 == 0, "COLS must be even (bf16 pairs)");
  const long long r = blockIdx.x;
  const int b = static_cast<int>(r / seq), t = static_cast<int>(r % seq);
  const int p = t - (seq - lengths[b]);
  bf16 *xr = x + r * ldx;
  if (!LRPE && !SILU && p >= 0)
    return; // nothing to do for a real row of a layer without φ
  for (int c = threadIdx.x * 2; c < COLS; c += BLOCK * 2) {
    float2 q = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(xr + c));
    float2 k = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(xr + COLS + c));
    if (p < 0) {
      q = make_float2(0.0f, 0.0f);
      k = q;
    } else if (SILU) {
      q = make_float2(silu_f(q.x), silu_f(q.y));
      k = make_float2(silu_f(k.x), silu_f(k.y));
    }
    if (LRPE) {
      float s0 = 0.0f, c0 = 1.0f, s1 = 0.0f, c1 = 1.0f;
      if (p >= 0) {
        sincosf(static_cast<float>(p) * theta[c], &s0, &c0);
        sincosf(static_cast<float>(p) * theta[c + 1], &s1, &c1);
      }
      bf16 *wr = w + r * ldw;
      *reinterpret_cast<__nv_bfloat162 *>(wr + c) = __floats2bfloat162_rn(q.x * c0, q.y * c1);
      *reinterpret_cast<__nv_bfloat162 *>(wr + COLS + c) =
          __floats2bfloat162_rn(k.x * c0, k.y * c1);
      *reinterpret_cast<__nv_bfloat162 *>(wr + 2 * COLS + c) =
          __floats2bfloat162_rn(q.x * s0, q.y * s1);
      *reinterpret_cast<__nv_bfloat162 *>(wr + 3 * COLS + c) =
          __floats2bfloat162_rn(k.x * s0, k.y * s1);
    } else {
      *reinterpret_cast<__nv_bfloat162 *>(xr + c) = __floats2bfloat162_rn(q.x, q.y);
      *reinterpret_cast<__nv_bfloat162 *>(xr + COLS + c) = __floats2bfloat162_rn(k.x, k.y);
    }
  }
}

// state[(b·H + h)·DK_TOTAL·DV + (row0 + i)·DV + j] = scratch[(b·H + h)·DK·DV + i·DV + j] for
// the slots with lengths[b] > 0; grid = (DK·DV / (4·BLOCK), B·H), float4 per thread.
template <int DK, int DV, int BLOCK>
__device__ __forceinline__ void state_commit(const float *scratch, float *state,
                                             const int *lengths, int heads, int dk_total,
                                             int row0) {
  static_assert((DK * DV) % (4 * BLOCK) == 0, "the state must split into float4 per thread");
  const int bh = blockIdx.y, b = bh / heads;
  if (lengths[b] <= 0)
    return;
  const int e = (blockIdx.x * BLOCK + threadIdx.x) * 4; // element of the DK x DV tile
  const int i = e / DV, j = e % DV;
  const float4 v = *reinterpret_cast<const float4 *>(scratch + static_cast<long long>(bh) * DK * DV + e);
  *reinterpret_cast<float4 *>(state + static_cast<long long>(bh) * dk_total * DV +
                              static_cast<long long>(row0 + i) * DV + j) = v;
}

// y[b, :] = x[b·seq + seq - 1, :] (each slot's last position, left-padded prompts), zeros for
// a slot of length 0; one CTA per slot (grid.x = B).
template <int COLS, int BLOCK>
__device__ __forceinline__ void gather_last(const bf16 *x, long long ldx, const int *lengths,
                                            int seq, bf16 *y, long long ldy) {
  const long long b = blockIdx.x;
  const bf16 *src = x + (b * seq + seq - 1) * ldx;
  const bool live = lengths[b] > 0;
  for (int c = threadIdx.x; c < COLS; c += BLOCK)
    y[b * ldy + c] = live ? src[c] : __float2bfloat16(0.0f);
}

// One decode step of one layer. grid = (B·H, DH / COLS_PER_CTA), BLOCK threads: the CTA of
// (slot b, head h, column slice) loads q', k' (DK = DH, or 2·DH with LRPE) into shared memory,
// then thread (g, j) updates the rows i ≡ g (mod BLOCK / COLS_PER_CTA) of column j of the
// slot's state and sums q'_i S_ij; the groups' partial sums are added in shared memory.
// qkvu: [B, 4·D] (q, k, v, u per head), state: [B·H][DK][DH] fp32, y: [B, D].
template <int DH, int COLS_PER_CTA, int BLOCK, bool SILU, bool LRPE>
__device__ __forceinline__ void lightning_decode(const bf16 *qkvu, long long ldqkvu,
                                                 const float *theta, const int *positions,
                                                 const float *slopes, float *state, bf16 *y,
                                                 long long ldy, int heads) {
  constexpr int DK = LRPE ? 2 * DH : DH;
  constexpr int GROUPS = BLOCK / COLS_PER_CTA;
  static_assert(BLOCK % COLS_PER_CTA == 0 && DH % COLS_PER_CTA == 0 && DK % GROUPS == 0,
                "decode tiling");
  __shared__ float qs[DK], ks[DK], partial[GROUPS][COLS_PER_CTA];
  const int bh = blockIdx.x, b = bh / heads, h = bh % heads;
  const int col0 = blockIdx.y * COLS_PER_CTA;
  const int pos = positions[b];
  const long long D = static_cast<long long>(heads) * DH;
  if (pos < 0) { // inactive slot: state untouched, output row zero
    for (int j = threadIdx.x; j < COLS_PER_CTA; j += BLOCK)
      y[b * ldy + h * DH + col0 + j] = __float2bfloat16(0.0f);
    return;
  }
  const bf16 *row = qkvu + b * ldqkvu;
  for (int c = threadIdx.x; c < DH; c += BLOCK) {
    float q = __bfloat162float(row[h * DH + c]), k = __bfloat162float(row[D + h * DH + c]);
    if (SILU) {
      q = silu_f(q);
      k = silu_f(k);
    }
    if (LRPE) {
      float sn, cs;
      sincosf(static_cast<float>(pos) * theta[h * DH + c], &sn, &cs);
      qs[c] = q * cs, ks[c] = k * cs;
      qs[DH + c] = q * sn, ks[DH + c] = k * sn;
    } else {
      qs[c] = q, ks[c] = k;
    }
  }
  __syncthreads();
  const int j = threadIdx.x % COLS_PER_CTA, g = threadIdx.x / COLS_PER_CTA;
  const float v = __bfloat162float(row[2 * D + h * DH + col0 + j]);
  const double lambda = exp(-static_cast<double>(slopes[h]));
  float *S = state + static_cast<long long>(bh) * DK * DH + col0 + j;
  float acc = 0.0f;
#pragma unroll 4
  for (int i = g; i < DK; i += GROUPS) {
    const float s = static_cast<float>(lambda * static_cast<double>(S[i * DH]) +
                                       static_cast<double>(ks[i]) * static_cast<double>(v));
    S[i * DH] = s;
    acc = fmaf(qs[i], s, acc);
  }
  partial[g][j] = acc;
  __syncthreads();
  if (threadIdx.x < COLS_PER_CTA) {
    float o = 0.0f;
#pragma unroll
    for (int k = 0; k < GROUPS; ++k)
      o += partial[k][threadIdx.x];
    y[b * ldy + h * DH + col0 + threadIdx.x] = __float2bfloat16(o);
  }
}

} // namespace rec
} // namespace tnlm
