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

// Programmatic dependent launch (as in Elementwise.cuh, which defines the same macros: each
// header also stands alone, e.g. Elementwise.cuh is compiled by itself in
// tnlm-gpu-rowkernels): the decode step's kernels may start before the previous one ends;
// they wait before touching any activation or state.
#ifndef TNLM_PDL_WAIT
#define TNLM_PDL_WAIT() asm volatile("griddepcontrol.wait;" ::: "memory")
#define TNLM_PDL_LAUNCH() asm volatile("griddepcontrol.launch_dependents;" ::: "memory")
#endif
// Where the decode GEMVs and the decode kernel let the next kernel launch: right after their
// wait (TNLM_PDL_AT_WAIT), or once their input rows have landed (TNLM_PDL_AT_INPUTS, where
// TNLM_PDL_AFTER_INPUTS is defined: TNLM_PDL_AFTER_INPUTS=1 when tnlmc runs). The next kernel's
// CTAs issue their weight copies as soon as they start, and an SM returns bytes in order: input
// rows requested after those copies wait for them (the trace: 4.7 µs after the wait for the
// gated pair's input row, behind its own and the down projection's weights).
#ifdef TNLM_PDL_AFTER_INPUTS
#define TNLM_PDL_AT_WAIT() ((void)0)
#define TNLM_PDL_AT_INPUTS() TNLM_PDL_LAUNCH()
#else
#define TNLM_PDL_AT_WAIT() TNLM_PDL_LAUNCH()
#define TNLM_PDL_AT_INPUTS() ((void)0)
#endif

// The decode step's trace (TNLM_DECODE_TRACE=1 when tnlmc runs defines TNLM_DECODE_TRACE; for
// timing studies, CudaExecutor::decodeTrace reads it): thread 0 of a sample of the CTAs of each
// GEMV and decode kernel takes a record of tnlm_trace (tnlm_trace_count counts them, up to
// TNLM_DECODE_TRACE_RECORDS) and writes into it: [0] the kernel's tag (1 a GEMV, 2 the fused
// qkvu GEMV + decode, 3 a decode kernel), [1] a pointer that names the launch (its weights or
// state), [2] blockIdx.x | blockIdx.y << 20 | gridDim.x << 40, [3] the SM, then %globaltimer
// (ns) at [4] entry, [5] after griddepcontrol.wait, [6] the input row ready (a GEMV: after the
// prologue; decode: q, k in shared memory), [7] thread 0's last instruction.
#ifdef TNLM_DECODE_TRACE
#define TNLM_DECODE_TRACE_RECORDS 131072
extern "C" {
__device__ unsigned long long tnlm_trace[TNLM_DECODE_TRACE_RECORDS][8];
__device__ unsigned int tnlm_trace_count;
}
#endif

namespace tnlm {
namespace rec {

using bf16 = __nv_bfloat16;

#ifdef TNLM_DECODE_TRACE
__device__ __forceinline__ unsigned long long trace_clock() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
// The CTA's record (thread 0's; null where the CTA is not sampled or the buffer is full).
__device__ __forceinline__ unsigned long long *&trace_record() {
  __shared__ unsigned long long *record;
  return record;
}
__device__ __forceinline__ void trace_open(int tag, const void *key, bool sampled) {
  if (threadIdx.x != 0)
    return;
  const unsigned long long t = trace_clock();
  unsigned long long *r = nullptr;
  if (sampled) {
    const unsigned i = atomicAdd(&tnlm_trace_count, 1u);
    if (i < TNLM_DECODE_TRACE_RECORDS) {
      unsigned sm;
      asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
      r = tnlm_trace[i];
      r[0] = static_cast<unsigned long long>(tag);
      r[1] = reinterpret_cast<unsigned long long>(key);
      r[2] = blockIdx.x | static_cast<unsigned long long>(blockIdx.y) << 20 |
             static_cast<unsigned long long>(gridDim.x) << 40;
      r[3] = sm;
      r[4] = t;
    }
  }
  trace_record() = r;
}
__device__ __forceinline__ void trace_at(int i) {
  if (threadIdx.x == 0 && trace_record())
    trace_record()[i] = trace_clock();
}
#define TNLM_TRACE_OPEN(tag, key, sampled) ::tnlm::rec::trace_open(tag, key, sampled)
#define TNLM_TRACE_AT(i) ::tnlm::rec::trace_at(i)
#else
#define TNLM_TRACE_OPEN(tag, key, sampled) ((void)0)
#define TNLM_TRACE_AT(i) ((void)0)
#endif

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
  TNLM_PDL_WAIT();
  TNLM_PDL_LAUNCH();
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
__device__ __forceinline__ void state_commit(const float *scratch, float *state, const int *lengths,
                                             int heads, int dk_total, int row0) {
  static_assert((DK * DV) % (4 * BLOCK) == 0, "the state must split into float4 per thread");
  TNLM_PDL_WAIT();
  TNLM_PDL_LAUNCH();
  const int bh = blockIdx.y, b = bh / heads;
  if (lengths[b] <= 0)
    return;
  const int e = (blockIdx.x * BLOCK + threadIdx.x) * 4; // element of the DK x DV tile
  const int i = e / DV, j = e % DV;
  const float4 v =
      *reinterpret_cast<const float4 *>(scratch + static_cast<long long>(bh) * DK * DV + e);
  *reinterpret_cast<float4 *>(state + static_cast<long long>(bh) * dk_total * DV +
                              static_cast<long long>(row0 + i) * DV + j) = v;
}

// y[b, :] = x[b·seq + seq - 1, :] (each slot's last position, left-padded prompts), zeros for
// a slot of length 0; one CTA per slot (grid.x = B).
template <int COLS, int BLOCK>
__device__ __forceinline__ void gather_last(const bf16 *x, long long ldx, const int *lengths,
                                            int seq, bf16 *y, long long ldy) {
  TNLM_PDL_WAIT();
  TNLM_PDL_LAUNCH();
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
__device__ __forceinline__ void
lightning_decode(const bf16 *qkvu, long long ldqkvu, const float *theta, const int *positions,
                 const float *slopes, float *state, bf16 *y, long long ldy, int heads) {
  constexpr int DK = LRPE ? 2 * DH : DH;
  constexpr int GROUPS = BLOCK / COLS_PER_CTA, PER = DK / GROUPS;
  static_assert(BLOCK % COLS_PER_CTA == 0 && DH % COLS_PER_CTA == 0 && DK % GROUPS == 0,
                "decode tiling");
  __shared__ float qs[DK], ks[DK], partial[GROUPS][COLS_PER_CTA];
  const int bh = blockIdx.x, b = bh / heads, h = bh % heads;
  const int col0 = blockIdx.y * COLS_PER_CTA;
  const int j = threadIdx.x % COLS_PER_CTA, g = threadIdx.x / COLS_PER_CTA;
  // The thread's state entries and the decay before the wait: no kernel of the step writes
  // them before this one (the state of a layer is this kernel's alone, λ a parameter).
  TNLM_TRACE_OPEN(3, state, blockIdx.y == 0);
  float *S = state + static_cast<long long>(bh) * DK * DH + col0 + j;
  float sv[PER];
#pragma unroll
  for (int t = 0; t < PER; ++t)
    sv[t] = S[(g + t * GROUPS) * DH];
  const double lambda = exp(-static_cast<double>(slopes[h]));
  TNLM_PDL_WAIT();
  TNLM_PDL_AT_WAIT();
  TNLM_TRACE_AT(5);
  const int pos = positions[b];
  const long long D = static_cast<long long>(heads) * DH;
  if (pos < 0) { // inactive slot: state untouched, output row zero
    for (int c = threadIdx.x; c < COLS_PER_CTA; c += BLOCK)
      y[b * ldy + h * DH + col0 + c] = __float2bfloat16(0.0f);
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
  TNLM_PDL_AT_INPUTS();
  TNLM_TRACE_AT(6);
  const float v = __bfloat162float(row[2 * D + h * DH + col0 + j]);
  float acc = 0.0f;
#pragma unroll
  for (int t = 0; t < PER; ++t) {
    const int i = g + t * GROUPS;
    const float s = static_cast<float>(lambda * static_cast<double>(sv[t]) +
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
  TNLM_TRACE_AT(7);
}

// Sum over the CTA (BLOCK whole warps); every thread gets it. `red` holds BLOCK / 32 floats.
template <int BLOCK> __device__ __forceinline__ float cta_sum(float v, float *red) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads(); // red may still be read from the previous call
  if (threadIdx.x % 32 == 0)
    red[threadIdx.x / 32] = v;
  __syncthreads();
  float t = 0.0f;
#pragma unroll
  for (int w = 0; w < BLOCK / 32; ++w)
    t += red[w];
  return t;
}

// 8 bf16 of a 16-byte word as floats.
__device__ __forceinline__ void unpack8(const uint4 &u, float (&f)[8]) {
  const __nv_bfloat162 *h = reinterpret_cast<const __nv_bfloat162 *>(&u);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const float2 t = __bfloat1622float2(h[i]);
    f[2 * i] = t.x, f[2 * i + 1] = t.y;
  }
}
__device__ __forceinline__ float round_bf16(float v) {
  return __bfloat162float(__float2bfloat16(v));
}

// Shared-memory barriers and bulk copies (the TMA engine's 1-D form, sm_90) for rec::gemv.
__device__ __forceinline__ unsigned smem_u32(const void *p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void mbar_init(unsigned bar, unsigned count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(bar), "r"(count) : "memory");
}
// The barrier's phase completes when the copies it expects (`bytes`) have landed.
__device__ __forceinline__ void mbar_expect(unsigned bar, unsigned bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_wait(unsigned bar, unsigned parity) {
  asm volatile("{\n"
               ".reg .pred done;\n"
               "TNLM_MBAR_WAIT:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
               "@!done bra TNLM_MBAR_WAIT;\n"
               "}\n" ::"r"(bar),
               "r"(parity)
               : "memory");
}
// bytes (a multiple of 16, both addresses 16-byte aligned) global -> shared, completing on bar.
__device__ __forceinline__ void bulk_copy(unsigned dst, const void *src, unsigned bytes,
                                          unsigned bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, "
               "[%3];" ::"r"(dst),
               "l"(src), "r"(bytes), "r"(bar)
               : "memory");
}

// Bytes of global memory into L2 without waiting (the TMA engine's bulk prefetch, sm_90):
// `bytes` a multiple of 16, p 16-byte aligned.
__device__ __forceinline__ void l2_prefetch(const void *p, unsigned bytes) {
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}
// This CTA's share (1 / gridDim.x, in 16 KiB pieces over warp 0's lanes) of `bytes` at p: a
// later decode GEMV's weights, which then stream from L2 rather than HBM (none: p null).
__device__ __forceinline__ void prefetch_share(const unsigned char *p, long long bytes) {
  if (p == nullptr || bytes <= 0 || threadIdx.x >= 32)
    return;
  const long long share = ((bytes + gridDim.x - 1) / gridDim.x + 15) / 16 * 16;
  const long long b0 = blockIdx.x * share, b1 = min(bytes, b0 + share);
  for (long long o = b0 + threadIdx.x * 16384LL; o < b1; o += 32 * 16384LL)
    l2_prefetch(p + o, static_cast<unsigned>(min(16384LL, b1 - o)));
}

// One linear layer of a decode step for M <= MAXM rows (the slots of the call):
//   y[m, n] = Σ_k v[m, k] · W[n, k]           (tnlm.linear; OutT bf16, or f32 for the logits)
//   y[m, n] = bf16(v·W1ᵀ) ⊙ bf16(v·W2ᵀ)       (GATED: tnlm.gated_linear, rounded as the two
//                                              GEMMs and the product of the prefill path)
// where v is the layer's input, computed by the PROLOGUE from the inputs of the norm step
// before it (which then does not run; markDecodeFusions in codegen/KernelPlan.h), with the
// row kernels' roundings (Elementwise.cuh):
//   0: v = x                                   (no fused norm)
//   1: v = bf16(x · r),  r = rsqrt(mean(x²) + eps)                        (srms_norm)
//   2: s = bf16(x + x2), v = bf16(s · rsqrt(mean(s²) + eps)); CTA 0 writes s to `sum`
//                                                                         (add_srms_norm)
//   3: v = bf16(x2 ⊙ x · rsqrt(mean(x²) + eps)), x = o, x2 = u          (the gated norm)
// bf16 inputs and W (rows of K contiguous, K % 8 == 0), f32 accumulation.
//
// CTA c owns the rows [c·rowsPerCta, (c + 1)·rowsPerCta) of W (and W2) and streams them into
// shared memory with bulk copies, `stageRows` rows per stage in a ring of `stages` <= MAXSTAGES
// stages, one barrier per stage. The first `stages` copies are issued before the wait for the
// previous kernel (weights do not depend on it): with programmatic launches they fly while
// that kernel runs. Then the input rows go into shared memory once (M · K bf16, with the
// prologue's norm), and the warps compute each stage's rows as it lands: `warpsPerRow` warps
// per row (a power of two, with warpsPerRow · stageRows <= BLOCK / 32 where it is above 1: long
// rows), each over a slice of K, lanes in 16-byte chunks, a butterfly sum per warp, the
// slices added in order (deterministic for a given K and warpsPerRow); a stage is refilled
// once every warp is done with it.
// Dynamic shared memory: `stages` stages of stageBytes (128-byte multiples), then v.
// Before the wait each CTA also prefetches its share of [pf, pf + pfBytes) and [pf2, pf2 +
// pf2Bytes) into L2 (prefetch_share; the executor passes a later GEMV's weights, or nulls).
//
// gemv_rows is the body for the CTA's rows [n0, n0 + rows); `sink(n - n0, m, value)` also gets
// each stored output as stored (rec::gemv_decode keeps them in shared memory).
// The single-row case of gemv_rows with K = 256·CPL (CPL > 0: the emitter's choice where the
// lane's share of a row fits in registers): no barrier after the wait. Every warp computes the
// prologue's whole input row itself (lane l holds the 16-byte chunks l + 32j, j < CPL, the same
// chunks it reads of every weight row; the norm's sum of squares by a butterfly over the warp),
// keeps it in registers, and sums up to RW of its rows of a stage at once (their weight chunks
// loaded together). The order of each row's sum is gemv_rows's with one warp per row (j, then the
// 8 products of a chunk, then the butterfly); only the norm's sum of squares is added in another
// order (lane-wise, then the butterfly).
template <int BLOCK, bool GATED, int PROLOGUE, int CPL, typename Issue, typename Store>
__device__ __forceinline__ void
gemv_one(const bf16 *x, const bf16 *x2, bf16 *sum, float eps, int K, const unsigned char *smem,
         unsigned stageBytes, unsigned bar0, int n0, int rows, int stageRows, int stages,
         int nStages, int pre, unsigned preBytes, Issue &issue, Store &store) {
  constexpr int WARPS = BLOCK / 32, MATS = GATED ? 2 : 1;
  constexpr int RW = 8 / (CPL * MATS) < 1 ? 1 : (8 / (CPL * MATS) > 4 ? 4 : 8 / (CPL * MATS));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  uint4 vr[CPL];
#pragma unroll
  for (int j = 0; j < CPL; ++j)
    vr[j] = *reinterpret_cast<const uint4 *>(x + 8 * (lane + 32 * j));
  uint4 br[PROLOGUE >= 2 ? CPL : 1];
  if constexpr (PROLOGUE >= 2) {
#pragma unroll
    for (int j = 0; j < CPL; ++j)
      br[j] = *reinterpret_cast<const uint4 *>(x2 + 8 * (lane + 32 * j));
  }
  if (threadIdx.x == 0) // the stages not issued before the wait: after the input rows' loads
    for (int t = pre; t < min(stages, nStages); ++t)
      issue(t, t == pre ? preBytes : 0u);
  if constexpr (PROLOGUE != 0) {
    float ss = 0.0f;
#pragma unroll
    for (int j = 0; j < CPL; ++j) {
      float a[8];
      unpack8(vr[j], a);
      if constexpr (PROLOGUE == 2) { // s = bf16(x + x2), kept in place of x
        float b[8];
        unpack8(br[j], b);
        __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&vr[j]);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          h[i] = __floats2bfloat162_rn(a[2 * i] + b[2 * i], a[2 * i + 1] + b[2 * i + 1]);
          a[2 * i] = round_bf16(a[2 * i] + b[2 * i]);
          a[2 * i + 1] = round_bf16(a[2 * i + 1] + b[2 * i + 1]);
        }
        if (blockIdx.x == 0 && warp == 0)
          *reinterpret_cast<uint4 *>(sum + 8 * (lane + 32 * j)) = vr[j];
      }
#pragma unroll
      for (int i = 0; i < 8; ++i)
        ss += a[i] * a[i];
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      ss += __shfl_xor_sync(0xffffffffu, ss, o);
    const float r = rsqrtf(ss / K + eps);
#pragma unroll
    for (int j = 0; j < CPL; ++j) {
      float a[8], b[8];
      unpack8(vr[j], a);
      if constexpr (PROLOGUE == 3)
        unpack8(br[j], b);
      __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&vr[j]);
#pragma unroll
      for (int i = 0; i < 8; ++i)
        a[i] = PROLOGUE == 3 ? b[i] * a[i] * r : a[i] * r;
#pragma unroll
      for (int i = 0; i < 4; ++i)
        h[i] = __floats2bfloat162_rn(a[2 * i], a[2 * i + 1]);
    }
  }
  TNLM_PDL_AT_INPUTS();
  TNLM_TRACE_AT(6);
  for (int t = 0; t < nStages; ++t) {
    mbar_wait(bar0 + 8 * (t % stages), (t / stages) & 1);
    const int r0 = t * stageRows, nr = min(stageRows, rows - r0);
    const uint4 *slot = reinterpret_cast<const uint4 *>(smem + (t % stages) * stageBytes);
    for (int rb = warp; rb < nr; rb += WARPS * RW) {
      uint4 wv[RW][CPL], wv2[GATED ? RW : 1][CPL];
#pragma unroll
      for (int i = 0; i < RW; ++i) {
        const int r = rb + i * WARPS;
        if (r < nr) {
#pragma unroll
          for (int j = 0; j < CPL; ++j) {
            wv[i][j] = slot[r * 32 * CPL + lane + 32 * j];
            if constexpr (GATED)
              wv2[i][j] = slot[(stageRows + r) * 32 * CPL + lane + 32 * j];
          }
        }
      }
      float acc[RW], acc2[RW];
#pragma unroll
      for (int i = 0; i < RW; ++i)
        acc[i] = 0.0f, acc2[i] = 0.0f;
#pragma unroll
      for (int j = 0; j < CPL; ++j) {
        float v[8];
        unpack8(vr[j], v);
#pragma unroll
        for (int i = 0; i < RW; ++i) {
          float wf[8], wf2[8];
          unpack8(wv[i][j], wf);
          if constexpr (GATED)
            unpack8(wv2[i][j], wf2);
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            acc[i] = fmaf(v[e], wf[e], acc[i]);
            if constexpr (GATED)
              acc2[i] = fmaf(v[e], wf2[e], acc2[i]);
          }
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
#pragma unroll
        for (int i = 0; i < RW; ++i) {
          acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
          if constexpr (GATED)
            acc2[i] += __shfl_xor_sync(0xffffffffu, acc2[i], o);
        }
      }
      if (lane == 0) {
#pragma unroll
        for (int i = 0; i < RW; ++i)
          if (rb + i * WARPS < nr)
            store(n0 + r0 + rb + i * WARPS, 0, acc[i], acc2[i]);
      }
    }
    if (t + stages < nStages) {
      __syncthreads(); // every warp is done with slot t % stages
      if (threadIdx.x == 0)
        issue(t + stages);
    }
  }
}

// The groups of rec::gemv_split for rows of `chunks` 16-byte chunks: the largest power of two G
// <= BLOCK / 32 with G · chunks <= BLOCK (each group's threads cover a whole row), and the
// chunks per thread that takes (the emitter's SPLIT: CudaEmitter.cpp's gemvSplitChunks).
__host__ __device__ constexpr int gemv_split_groups(int chunks, int block) {
  int g = 1;
  while (2 * g <= block / 32 && 2 * g * chunks <= block)
    g *= 2;
  return g;
}
__host__ __device__ constexpr int gemv_split_chunks(int chunks, int block) {
  return (chunks + block / gemv_split_groups(chunks, block) - 1) /
         (block / gemv_split_groups(chunks, block));
}

// The single-row case of gemv_rows with K split over the threads (SPLIT > 0 chunks per thread
// at most; TNLM_GEMV_SPLIT=1 when tnlmc runs). The CTA's BLOCK threads form G groups of TPR =
// BLOCK / G (gemv_split_groups); thread c of group g holds the 16-byte chunks c + TPR·j of the
// input row v (in f32 registers, with the prologue's norm: its sum of squares from group 0's
// partials, one CTA barrier) and, for a block of R·G rows of a stage, sums its chunks of rows
// g + G·i (i < R) at once: R independent chains of 8·SPLIT products. Each warp then adds its
// lanes' R partial sums with a transposing butterfly (R - 1 + 5 - log2 R shuffles for R rows,
// not 5 per row), the warps of a group add theirs through shared memory in warp order, and a
// thread per row stores it. Deterministic for a given K: the order of every sum is fixed (the
// chunks j, the 8 products, the butterfly's pairs, the warps).
template <int BLOCK, bool GATED, int PROLOGUE, int SPLIT, typename Issue, typename Store>
__device__ __forceinline__ void
gemv_split(const bf16 *x, const bf16 *x2, bf16 *sum, float eps, int K, const unsigned char *smem,
           unsigned stageBytes, unsigned bar0, int n0, int rows, int stageRows, int stages,
           int nStages, int pre, unsigned preBytes, Issue &issue, Store &store) {
  constexpr int WARPS = BLOCK / 32, R = 8;
  __shared__ float red[WARPS];
  __shared__ float part[2][WARPS][R], part2[2][GATED ? WARPS : 1][R];
  const int chunks = K / 8;
  const int G = gemv_split_groups(chunks, BLOCK), TPR = BLOCK / G, WPG = TPR / 32;
  const int g = threadIdx.x / TPR, c0 = threadIdx.x % TPR;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float v[SPLIT][8];
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < SPLIT; ++j) {
    const int c = c0 + TPR * j;
#pragma unroll
    for (int e = 0; e < 8; ++e)
      v[j][e] = 0.0f;
    if (c < chunks) {
      unpack8(*reinterpret_cast<const uint4 *>(x + 8 * c), v[j]);
      if constexpr (PROLOGUE == 2) { // s = bf16(x + x2), kept in place of x
        float b[8];
        unpack8(*reinterpret_cast<const uint4 *>(x2 + 8 * c), b);
        uint4 o;
        __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&o);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          h[i] = __floats2bfloat162_rn(v[j][2 * i] + b[2 * i], v[j][2 * i + 1] + b[2 * i + 1]);
          v[j][2 * i] = round_bf16(v[j][2 * i] + b[2 * i]);
          v[j][2 * i + 1] = round_bf16(v[j][2 * i + 1] + b[2 * i + 1]);
        }
        if (blockIdx.x == 0 && g == 0)
          *reinterpret_cast<uint4 *>(sum + 8 * c) = o;
      }
#pragma unroll
      for (int e = 0; e < 8; ++e)
        ss += v[j][e] * v[j][e];
    }
  }
  if (threadIdx.x == 0) // the stages not issued before the wait
    for (int t = pre; t < min(stages, nStages); ++t)
      issue(t, t == pre ? preBytes : 0u);
  if constexpr (PROLOGUE != 0) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
      ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (lane == 0)
      red[warp] = ss;
    __syncthreads();
    float t = 0.0f;
    for (int w = 0; w < WPG; ++w) // group 0's warps: the whole row
      t += red[w];
    const float r = rsqrtf(t / K + eps);
#pragma unroll
    for (int j = 0; j < SPLIT; ++j) {
      const int c = c0 + TPR * j;
      if (c < chunks) {
        float b[8];
        if constexpr (PROLOGUE == 3)
          unpack8(*reinterpret_cast<const uint4 *>(x2 + 8 * c), b);
#pragma unroll
        for (int e = 0; e < 8; ++e)
          v[j][e] = round_bf16(PROLOGUE == 3 ? b[e] * v[j][e] * r : v[j][e] * r);
      }
    }
  }
  TNLM_PDL_AT_INPUTS();
  TNLM_TRACE_AT(6);
  int parity = 0;
  for (int t = 0; t < nStages; ++t) {
    mbar_wait(bar0 + 8 * (t % stages), (t / stages) & 1);
    const int r0 = t * stageRows, nr = min(stageRows, rows - r0);
    const uint4 *slot = reinterpret_cast<const uint4 *>(smem + (t % stages) * stageBytes);
    for (int rb = 0; rb < nr; rb += R * G) {
      float acc[R], acc2[R];
#pragma unroll
      for (int i = 0; i < R; ++i)
        acc[i] = 0.0f, acc2[i] = 0.0f;
#pragma unroll
      for (int j = 0; j < SPLIT; ++j) {
        const int c = c0 + TPR * j;
        if (c < chunks) {
#pragma unroll
          for (int i = 0; i < R; ++i) {
            const int r = rb + g + G * i;
            if (r < nr) {
              float wf[8];
              unpack8(slot[r * chunks + c], wf);
#pragma unroll
              for (int e = 0; e < 8; ++e)
                acc[i] = fmaf(v[j][e], wf[e], acc[i]);
              if constexpr (GATED) {
                unpack8(slot[(stageRows + r) * chunks + c], wf);
#pragma unroll
                for (int e = 0; e < 8; ++e)
                  acc2[i] = fmaf(v[j][e], wf[e], acc2[i]);
              }
            }
          }
        }
      }
      // The transposing butterfly: after the step of offset o (16, 8, 4) a lane keeps the half
      // of its rows that its bit o selects and adds its partner's values of them; then o = 2, 1
      // add the one row left. Lane l ends with row ((l >> 4) & 1)·4 + ((l >> 3) & 1)·2 +
      // ((l >> 2) & 1) of the warp's rows.
#pragma unroll
      for (int o = 16, n = R / 2; n >= 1; o >>= 1, n >>= 1) {
        const bool up = (lane & o) != 0;
#pragma unroll
        for (int i = 0; i < n; ++i) {
          const float send = up ? acc[i] : acc[i + n], keep = up ? acc[i + n] : acc[i];
          acc[i] = keep + __shfl_xor_sync(0xffffffffu, send, o);
          if constexpr (GATED) {
            const float send2 = up ? acc2[i] : acc2[i + n], keep2 = up ? acc2[i + n] : acc2[i];
            acc2[i] = keep2 + __shfl_xor_sync(0xffffffffu, send2, o);
          }
        }
      }
#pragma unroll
      for (int o = 2; o > 0; o >>= 1) {
        acc[0] += __shfl_xor_sync(0xffffffffu, acc[0], o);
        if constexpr (GATED)
          acc2[0] += __shfl_xor_sync(0xffffffffu, acc2[0], o);
      }
      if ((lane & 3) == 0) {
        const int i = ((lane >> 4) & 1) * 4 + ((lane >> 3) & 1) * 2 + ((lane >> 2) & 1);
        part[parity][warp][i] = acc[0];
        if constexpr (GATED)
          part2[parity][warp][i] = acc2[0];
      }
      __syncthreads(); // the partial sums, and every warp done with this block of the stage
      if (rb + R * G >= nr && t + stages < nStages && threadIdx.x == 0)
        issue(t + stages); // the slot is free
      if (threadIdx.x < R * G) {
        const int gg = threadIdx.x / R, i = threadIdx.x % R, r = rb + gg + G * i;
        if (r < nr) {
          float s = 0.0f, s2 = 0.0f;
          for (int w = 0; w < WPG; ++w) { // in warp order: deterministic
            s += part[parity][gg * WPG + w][i];
            if constexpr (GATED)
              s2 += part2[parity][gg * WPG + w][i];
          }
          store(n0 + r0 + r, 0, s, s2);
        }
      }
      parity ^= 1; // the next block writes the other half (its barrier orders the one after)
    }
  }
}

struct NoSink {
  __device__ void operator()(int, int, float) const {}
};
// The trace's tag of a gemv_rows call: 1 rec::gemv's (no sink), 2 rec::gemv_decode's.
template <typename Sink> struct TraceTag { static constexpr int value = 2; };
template <> struct TraceTag<NoSink> { static constexpr int value = 1; };
template <int MAXM, int MAXSTAGES, int BLOCK, bool GATED, int PROLOGUE, typename OutT, int CPL,
          typename Sink>
__device__ __forceinline__ void
gemv_rows(const bf16 *x, long long ldx, const bf16 *x2, long long ldx2, bf16 *sum, long long ldsum,
          float eps, const bf16 *w, const bf16 *w2, OutT *y, long long ldy, int M, int K, int n0,
          int rows, int stageRows, int stages, int warpsPerRow, const unsigned char *pf,
          long long pfBytes, const unsigned char *pf2, long long pf2Bytes, Sink sink) {
  constexpr int WARPS = BLOCK / 32, MATS = GATED ? 2 : 1;
  extern __shared__ __align__(128) unsigned char gemv_smem[];
  __shared__ __align__(8) unsigned long long bars[MAXSTAGES];
  __shared__ float red[WARPS], rstd[MAXM];
  __shared__ float part[WARPS][MAXM], part2[GATED ? WARPS : 1][MAXM];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int chunks = K / 8;
  const long long rowBytes = static_cast<long long>(K) * 2;
  const unsigned stageBytes =
      static_cast<unsigned>((MATS * stageRows * rowBytes + 127) / 128 * 128);
  const int nStages = (rows + stageRows - 1) / stageRows;
  stages = max(1, min(stages, MAXSTAGES));
  // y[m, n] from the row's sums (the gated pair rounded as two GEMMs and their product).
  auto store = [&](int n, int m, float v, float v2) {
    if (GATED)
      v = round_bf16(v) * round_bf16(v2);
    if constexpr (sizeof(OutT) == 4) {
      y[m * ldy + n] = v;
      sink(n - n0, m, v);
    } else {
      y[m * ldy + n] = __float2bfloat16(v);
      sink(n - n0, m, round_bf16(v));
    }
  };
  bf16 *vs = reinterpret_cast<bf16 *>(gemv_smem + static_cast<size_t>(stages) * stageBytes);
  const unsigned ring = smem_u32(gemv_smem), bar0 = smem_u32(bars);
  // Stage t: rows [n0 + t·stageRows, ...) of W (then of W2) into slot t % stages; bytes
  // [lo, hi) of each matrix's share (lo 0 arms the barrier for the whole stage, so a stage may
  // be issued in two parts: TNLM_GEMV_PRE_BYTES).
  auto issue_part = [&](int t, unsigned lo, unsigned hi) {
    const int r0 = t * stageRows, nr = min(stageRows, rows - r0);
    const unsigned bytes = static_cast<unsigned>(nr * rowBytes);
    const unsigned slot = ring + (t % stages) * stageBytes, bar = bar0 + 8 * (t % stages);
    hi = min(hi, bytes);
    if (lo == 0)
      mbar_expect(bar, MATS * bytes);
    if (lo >= hi)
      return;
    const unsigned char *src = reinterpret_cast<const unsigned char *>(w) +
                               static_cast<long long>(n0 + r0) * rowBytes + lo;
    bulk_copy(slot + lo, src, hi - lo, bar);
    if constexpr (GATED)
      bulk_copy(slot + static_cast<unsigned>(stageRows * rowBytes) + lo,
                reinterpret_cast<const unsigned char *>(w2) +
                    static_cast<long long>(n0 + r0) * rowBytes + lo,
                hi - lo, bar);
  };
  auto issue = [&](int t, unsigned lo = 0) { issue_part(t, lo, ~0u); };
  // Stages issued before the wait: all of the ring, or TNLM_GEMV_PRE_STAGES (the emitter
  // defines it: 1 unless TNLM_GEMV_PRE_STAGES=N when tnlmc runs) where the single-row paths
  // issue the rest after their input rows' loads: an SM returns bytes in the order asked, so
  // the input rows then land before those stages instead of after the whole ring (the trace:
  // the gated pair's rows 4.7 us after its wait with the whole ring issued before it).
  // TNLM_GEMV_PRE_BYTES=B (a multiple of 16) also issues the first B bytes of each matrix's
  // share of stage `pre` before the wait (its rest after the input rows' loads), and
  // TNLM_GEMV_PRE_L2=1 asks L2 for every byte of the CTA's weights not issued before the wait
  // (a bulk prefetch: nothing returns to the SM, so it does not queue ahead of the input rows).
  const bool single = M == 1 && ((CPL < 0 && gemv_split_chunks(K / 8, BLOCK) <= -CPL) ||
                                 (CPL > 0 && K == 256 * CPL)); // the paths below
#if defined(TNLM_GEMV_PRE_STAGES)
  const int pre = single ? min(stages, TNLM_GEMV_PRE_STAGES) : stages;
#else
  const int pre = stages;
#endif
#if defined(TNLM_GEMV_PRE_BYTES)
  const unsigned preBytes = single && pre < min(stages, nStages) ? TNLM_GEMV_PRE_BYTES : 0u;
#else
  const unsigned preBytes = 0u;
#endif
  TNLM_TRACE_OPEN(TraceTag<Sink>::value, w, blockIdx.x % 8 == 0);
  if (threadIdx.x == 0) {
    for (int i = 0; i < stages; ++i)
      mbar_init(bar0 + 8 * i, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
    for (int t = 0; t < min(pre, nStages); ++t)
      issue(t);
    if (preBytes != 0)
      issue_part(pre, 0, preBytes);
#if defined(TNLM_GEMV_PRE_L2)
    if (single && pre < nStages) {
      const long long from = static_cast<long long>(n0 + pre * stageRows) * rowBytes + preBytes;
      const long long to = static_cast<long long>(n0 + rows) * rowBytes;
      if (to > from) {
        l2_prefetch(reinterpret_cast<const unsigned char *>(w) + from,
                    static_cast<unsigned>(to - from));
        if constexpr (GATED)
          l2_prefetch(reinterpret_cast<const unsigned char *>(w2) + from,
                      static_cast<unsigned>(to - from));
      }
    }
#endif
  }
  prefetch_share(pf, pfBytes);
  prefetch_share(pf2, pf2Bytes);
  __syncthreads(); // the barriers' initialization visible to every warp (before the wait: free)
  TNLM_PDL_WAIT();
  TNLM_PDL_AT_WAIT();
  TNLM_TRACE_AT(5);
  if constexpr (CPL < 0) {
    if (M == 1 && gemv_split_chunks(K / 8, BLOCK) <= -CPL) {
      gemv_split<BLOCK, GATED, PROLOGUE, (CPL < 0 ? -CPL : 1)>(
          x, x2, sum, eps, K, gemv_smem, stageBytes, bar0, n0, rows, stageRows, stages, nStages,
          pre, preBytes, issue, store);
      TNLM_TRACE_AT(7);
      return;
    }
  }
  if constexpr (CPL > 0) {
    if (M == 1 && K == 256 * CPL) {
      gemv_one<BLOCK, GATED, PROLOGUE, CPL>(x, x2, sum, eps, K, gemv_smem, stageBytes, bar0, n0,
                                            rows, stageRows, stages, nStages, pre, preBytes, issue,
                                            store);
      TNLM_TRACE_AT(7);
      return;
    }
  }
  // The input rows into shared memory, with the prologue's norm.
  for (int m = 0; m < M; ++m) {
    float r = 1.0f;
    if (PROLOGUE != 0) {
      float ss = 0.0f;
      for (int c = threadIdx.x; c < chunks; c += BLOCK) {
        float a[8];
        unpack8(*reinterpret_cast<const uint4 *>(x + m * ldx + 8 * c), a);
        if (PROLOGUE == 2) {
          float b[8];
          unpack8(*reinterpret_cast<const uint4 *>(x2 + m * ldx2 + 8 * c), b);
#pragma unroll
          for (int i = 0; i < 8; ++i)
            a[i] = round_bf16(a[i] + b[i]);
          if (blockIdx.x == 0) {
            uint4 o;
            __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&o);
#pragma unroll
            for (int i = 0; i < 4; ++i)
              h[i] = __floats2bfloat162_rn(a[2 * i], a[2 * i + 1]);
            *reinterpret_cast<uint4 *>(sum + m * ldsum + 8 * c) = o;
          }
        }
#pragma unroll
        for (int i = 0; i < 8; ++i)
          ss += a[i] * a[i];
      }
      const float t = cta_sum<BLOCK>(ss, red);
      if (threadIdx.x == 0)
        rstd[m] = rsqrtf(t / K + eps);
      __syncthreads();
      r = rstd[m];
    }
    for (int c = threadIdx.x; c < chunks; c += BLOCK) {
      float v[8];
      unpack8(*reinterpret_cast<const uint4 *>(x + m * ldx + 8 * c), v);
      if (PROLOGUE == 1) {
#pragma unroll
        for (int i = 0; i < 8; ++i)
          v[i] = round_bf16(v[i] * r);
      } else if (PROLOGUE >= 2) {
        float b[8];
        unpack8(*reinterpret_cast<const uint4 *>(x2 + m * ldx2 + 8 * c), b);
#pragma unroll
        for (int i = 0; i < 8; ++i)
          v[i] =
              PROLOGUE == 2 ? round_bf16(round_bf16(v[i] + b[i]) * r) : round_bf16(b[i] * v[i] * r);
      }
      uint4 o;
      __nv_bfloat162 *h = reinterpret_cast<__nv_bfloat162 *>(&o);
#pragma unroll
      for (int i = 0; i < 4; ++i)
        h[i] = __floats2bfloat162_rn(v[2 * i], v[2 * i + 1]);
      *reinterpret_cast<uint4 *>(vs + static_cast<long long>(m) * K + 8 * c) = o;
    }
  }
  __syncthreads(); // v, and the barriers' initialization, visible to every warp
  TNLM_PDL_AT_INPUTS();
  TNLM_TRACE_AT(6);
  for (int t = 0; t < nStages; ++t) {
    mbar_wait(bar0 + 8 * (t % stages), (t / stages) & 1);
    const int r0 = t * stageRows, nr = min(stageRows, rows - r0);
    const bf16 *slot = reinterpret_cast<const bf16 *>(gemv_smem + (t % stages) * stageBytes);
    // Warp w: row w / warpsPerRow of each pass, slice w % warpsPerRow of K (lanes over the
    // 16-byte chunks c ≡ slice·32 + lane mod 32·warpsPerRow).
    const int slice = warp % warpsPerRow, rowsPerPass = WARPS / warpsPerRow;
    for (int r = warp / warpsPerRow; r < nr; r += rowsPerPass) {
      const uint4 *wr = reinterpret_cast<const uint4 *>(slot + static_cast<long long>(r) * K);
      const uint4 *wr2 =
          reinterpret_cast<const uint4 *>(slot + static_cast<long long>(stageRows + r) * K);
      float acc[MAXM], acc2[GATED ? MAXM : 1];
#pragma unroll
      for (int m = 0; m < MAXM; ++m) {
        acc[m] = 0.0f;
        if constexpr (GATED)
          acc2[m] = 0.0f;
      }
      for (int c = slice * 32 + lane; c < chunks; c += 32 * warpsPerRow) {
        float wf[8], wf2[8];
        unpack8(wr[c], wf);
        if constexpr (GATED)
          unpack8(wr2[c], wf2);
#pragma unroll
        for (int m = 0; m < MAXM; ++m) {
          if (m >= M)
            break;
          float v[8];
          unpack8(*reinterpret_cast<const uint4 *>(vs + static_cast<long long>(m) * K + 8 * c), v);
#pragma unroll
          for (int i = 0; i < 8; ++i) {
            acc[m] = fmaf(v[i], wf[i], acc[m]);
            if constexpr (GATED)
              acc2[m] = fmaf(v[i], wf2[i], acc2[m]);
          }
        }
      }
#pragma unroll
      for (int m = 0; m < MAXM; ++m) {
        if (m >= M)
          break;
        float v = acc[m], v2 = GATED ? acc2[m] : 0.0f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
          v += __shfl_xor_sync(0xffffffffu, v, o);
          if constexpr (GATED)
            v2 += __shfl_xor_sync(0xffffffffu, v2, o);
        }
        if (warpsPerRow > 1) { // the slices' sums meet in shared memory
          if (lane == 0) {
            part[warp][m] = v;
            if constexpr (GATED)
              part2[warp][m] = v2;
          }
        } else if (lane == 0) {
          store(n0 + r0 + r, m, v, v2);
        }
      }
    }
    if (warpsPerRow > 1) { // each warp had at most one row (rowsPerPass >= stageRows)
      __syncthreads();
      const int r = warp / warpsPerRow;
      if (slice == 0 && r < nr && lane < M) {
        float v = 0.0f, v2 = 0.0f;
        for (int k = 0; k < warpsPerRow; ++k) { // in slice order: deterministic
          v += part[warp + k][lane];
          if constexpr (GATED)
            v2 += part2[warp + k][lane];
        }
        store(n0 + r0 + r, lane, v, v2);
      }
      __syncthreads(); // part is rewritten by the next stage
    }
    if (t + stages < nStages) {
      __syncthreads(); // every warp is done with slot t % stages
      if (threadIdx.x == 0)
        issue(t + stages);
    }
  }
  TNLM_TRACE_AT(7);
}

template <int MAXM, int MAXSTAGES, int BLOCK, bool GATED, int PROLOGUE, typename OutT, int CPL = 0>
__device__ __forceinline__ void
gemv(const bf16 *x, long long ldx, const bf16 *x2, long long ldx2, bf16 *sum, long long ldsum,
     float eps, const bf16 *w, const bf16 *w2, OutT *y, long long ldy, int M, int N, int K,
     int rowsPerCta, int stageRows, int stages, int warpsPerRow, const unsigned char *pf = nullptr,
     long long pfBytes = 0, const unsigned char *pf2 = nullptr, long long pf2Bytes = 0) {
  const int n0 = blockIdx.x * rowsPerCta, rows = max(0, min(N, n0 + rowsPerCta) - n0);
  gemv_rows<MAXM, MAXSTAGES, BLOCK, GATED, PROLOGUE, OutT, CPL>(
      x, ldx, x2, ldx2, sum, ldsum, eps, w, w2, y, ldy, M, K, n0, rows, stageRows, stages,
      warpsPerRow, pf, pfBytes, pf2, pf2Bytes, NoSink{});
}

// Thread block clusters (sm_90): the CTA's rank, the cluster-wide barrier in its two halves
// (arrive releases this CTA's writes, wait acquires everyone's), and a float of another
// CTA's shared memory (distributed shared memory).
__device__ __forceinline__ unsigned cluster_rank() {
  unsigned r;
  asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
  return r;
}
__device__ __forceinline__ void cluster_arrive() {
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
}
__device__ __forceinline__ void cluster_wait() {
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
}
__device__ __forceinline__ float dsmem_load(const float *local, unsigned rank) {
  unsigned remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;"
               : "=r"(remote)
               : "r"(smem_u32(local)), "r"(rank));
  float v;
  asm volatile("ld.shared::cluster.f32 %0, [%1];" : "=f"(v) : "r"(remote) : "memory");
  return v;
}

// The qkvu linear of a decode layer and its lightning_decode in one launch (the executor's
// choice where both would run as rec::gemv and rec::lightning_decode; CudaExecutor::runStep):
// one cluster of CLUSTER CTAs per head h (grid.x = H·CLUSTER, cluster dims CLUSTER). CTA rank c
// computes ROWS = 4·DH / CLUSTER rows of the head's q | k | v | u (rows b·D + h·DH + p·ROWS
// onwards, b = c / (CLUSTER / 4), p = c % (CLUSTER / 4)) exactly as rec::gemv (same prologue,
// same sums, written to qkvu), keeps them in shared memory, and after a cluster barrier reads
// the head's q, k and its DH / CLUSTER columns of v from the other CTAs' shared memory and
// updates those columns of the slots' states as lightning_decode does (the same 16 row groups
// per column, the same order of every sum: the same bits as the two launches).
template <int MAXM, int MAXSTAGES, int BLOCK, int PROLOGUE, int DH, int CLUSTER, bool SILU,
          bool LRPE, int CPL = 0>
__device__ __forceinline__ void
gemv_decode(const bf16 *x, long long ldx, const bf16 *x2, long long ldx2, bf16 *sum,
            long long ldsum, float eps, const bf16 *w, bf16 *qkvu, long long ldqkvu, int M, int K,
            int stageRows, int stages, int warpsPerRow, const float *theta, const int *positions,
            const float *slopes, float *state, bf16 *o, long long ldo, int heads,
            const unsigned char *pf = nullptr, long long pfBytes = 0,
            const unsigned char *pf2 = nullptr, long long pf2Bytes = 0) {
  static_assert(CLUSTER % 4 == 0 && DH % CLUSTER == 0, "the cluster splits q, k, v, u evenly");
  constexpr int ROWS = 4 * DH / CLUSTER, COLS = DH / CLUSTER, DK = LRPE ? 2 * DH : DH;
  constexpr int GROUPS = 16, PER = DK / GROUPS; // lightning_decode<DH, 16, 256>'s row groups
  constexpr int ITEMS = (MAXM * GROUPS * COLS + BLOCK - 1) / BLOCK; // (slot, group, column)
  static_assert(DK % GROUPS == 0, "decode tiling");
  __shared__ float xout[MAXM][ROWS];
  __shared__ float qs[MAXM][DK], ks[MAXM][DK], vs[MAXM][COLS], partial[MAXM][GROUPS][COLS];
  const int h = blockIdx.x / CLUSTER;
  const unsigned rank = cluster_rank();
  const long long D = static_cast<long long>(heads) * DH;
  const int col0 = static_cast<int>(rank) * COLS;
  // The state entries of this CTA's items and the decay, before the GEMV's wait (the state of
  // a layer is this launch's alone, λ a parameter).
  float sv[ITEMS][PER];
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int e = threadIdx.x + it * BLOCK, m = e / (GROUPS * COLS);
    const int g = e % (GROUPS * COLS) / COLS, j = e % COLS;
    if (m < M) {
      const float *S = state + (static_cast<long long>(m) * heads + h) * DK * DH + col0 + j;
#pragma unroll
      for (int t = 0; t < PER; ++t)
        sv[it][t] = S[(g + t * GROUPS) * DH];
    }
  }
  const double lambda = exp(-static_cast<double>(slopes[h]));
  const int b = static_cast<int>(rank) / (CLUSTER / 4), p = static_cast<int>(rank) % (CLUSTER / 4);
  const int n0 = static_cast<int>(b * D + h * DH + p * ROWS);
  gemv_rows<MAXM, MAXSTAGES, BLOCK, false, PROLOGUE, bf16, CPL>(
      x, ldx, x2, ldx2, sum, ldsum, eps, w, w, qkvu, ldqkvu, M, K, n0, ROWS, stageRows, stages,
      warpsPerRow, pf, pfBytes, pf2, pf2Bytes, [&](int r, int m, float v) { xout[m][r] = v; });
  cluster_arrive();
  cluster_wait(); // every CTA's rows are in its shared memory
  // Head-local row t (q: [0, DH), k: [DH, 2DH), v: [2DH, 3DH)) is entry t % ROWS of rank t / ROWS.
  for (int e = threadIdx.x; e < MAXM * DH; e += BLOCK) {
    const int m = e / DH, c = e % DH;
    if (m >= M)
      break;
    const int pos = positions[m];
    float q = dsmem_load(&xout[m][c % ROWS], c / ROWS);
    float k = dsmem_load(&xout[m][(DH + c) % ROWS], (DH + c) / ROWS);
    if (SILU) {
      q = silu_f(q);
      k = silu_f(k);
    }
    if (LRPE) {
      float sn, cs;
      sincosf(static_cast<float>(max(pos, 0)) * theta[h * DH + c], &sn, &cs);
      qs[m][c] = q * cs, ks[m][c] = k * cs;
      qs[m][DH + c] = q * sn, ks[m][DH + c] = k * sn;
    } else {
      qs[m][c] = q, ks[m][c] = k;
    }
  }
  for (int e = threadIdx.x; e < MAXM * COLS; e += BLOCK) {
    const int m = e / COLS, j = e % COLS, t = 2 * DH + col0 + j;
    if (m < M)
      vs[m][j] = dsmem_load(&xout[m][t % ROWS], t / ROWS);
  }
  cluster_arrive(); // this CTA has read all it reads of the others' shared memory
  __syncthreads();
#pragma unroll
  for (int it = 0; it < ITEMS; ++it) {
    const int e = threadIdx.x + it * BLOCK, m = e / (GROUPS * COLS);
    const int g = e % (GROUPS * COLS) / COLS, j = e % COLS;
    if (m < M && positions[m] >= 0) {
      float *S = state + (static_cast<long long>(m) * heads + h) * DK * DH + col0 + j;
      const float v = vs[m][j];
      float acc = 0.0f;
#pragma unroll
      for (int t = 0; t < PER; ++t) {
        const int i = g + t * GROUPS;
        const float s = static_cast<float>(lambda * static_cast<double>(sv[it][t]) +
                                           static_cast<double>(ks[m][i]) * static_cast<double>(v));
        S[i * DH] = s;
        acc = fmaf(qs[m][i], s, acc);
      }
      partial[m][g][j] = acc;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < MAXM * COLS; e += BLOCK) {
    const int m = e / COLS, j = e % COLS;
    if (m >= M)
      break;
    float out = 0.0f;
    if (positions[m] >= 0) { // an inactive slot: state untouched, output row zero
#pragma unroll
      for (int k = 0; k < GROUPS; ++k)
        out += partial[m][k][j];
    }
    o[m * ldo + h * DH + col0 + j] = __float2bfloat16(out);
  }
  cluster_wait(); // no CTA leaves while another may still read its rows
}

} // namespace rec
} // namespace tnlm
