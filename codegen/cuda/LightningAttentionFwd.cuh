// Lightning Attention forward (causal linear attention with per-head decay): CUDA device
// templates and launchers, for the compiler to emit (docs/model.md, "Lightning Attention").
//
//   o_t = q_t · S_t,   S_t = λ_h · S_{t-1} + k_tᵀ v_t,   λ_h = exp(-s_h),   S in fp32 on chip
//
// Inputs q, k: bf16 [B, N, H, DK]; v: bf16 [B, N, H, DV]; output o: bf16 [B, N, H, DV]
// (token / batch / head strides are arguments; the feature dim is contiguous). Optional output:
// the fp32 state after the last token (prefill -> decode hand-off).
//
// Tiled algorithm (block of C = 64 tokens, per (b, h), running state KV (DK x DV, fp32)):
//   O_intra = ((Q Kᵀ) ⊙ M) V          M[i][j] = λ^(i-j) for j <= i, else 0
//   O_inter = Λ (Q KV)                 Λ = diag(λ^1 … λ^m)   (m = rows in the block)
//   KV      = λ^m KV + (λ^m Λ⁻¹ K)ᵀ V  row j of K scaled by λ^(m-1-j)
// Every power λ^r is computed as exp(-s·r) (a per-CTA table for r = 0..C, expf for longer
// distances), never by repeated products or divisions. Matrix products take bf16 operands
// (Q, K, V, P = decayed scores, K~ = decayed keys, and a bf16 copy of the state for Q·KV) with
// fp32 accumulation; the state itself is only ever fp32 (accumulator registers).
// No O(N²) memory, no per-block state in HBM: Q/K/V stream through a shared-memory ring.
//
// Two implementations with the same arguments, plan and results:
//   * LightningFwdSm90Config + launch_lightning_fwd_sm90 (sm_90a, the fast path): wgmma,
//     warp-specialized CTA of two warpgroups (outputs / state), in LightningAttentionFwdSm90.cuh
//     (which includes this file; the compiler's kernels come from there).
//   * LightningFwdConfig + launch_lightning_fwd (sm_80+, portable): mma.sync m16n8k16 +
//     ldmatrix + cp.async, 8 (or 16) warps; the state lives in the accumulators of the
//     state-update product (a (DK/4) x (DV/(NWARPS/4)) slice per warp); Q·Kᵀ and Q·KV share
//     the Q fragments; P and the bf16 state copy go through shared memory; two barriers per
//     block. About half the speed of the Hopper path on an H200.
// Both take the head dims as template parameters. The Hopper kernels static_assert
// DK = DV = 128 today: the state warpgroup holds the whole 128 x 128 fp32 state (128 registers
// per thread). DK = 256 (LRPE layers) needs a third warpgroup (two state warpgroups of 128 dk
// rows each, 384 threads) and a 2-stage ring (Q/K tiles double); every loop below is already
// written over DK / 16 k-steps and 64-row state slices. The mma.sync path is generic in DK/DV
// up to its shared-memory limit (DK = 256 with C = 64 does not fit two stages).
//
// Sequence segments (few (b, h), long N): plan_lightning_fwd splits the sequence into
// `num_segs` segments of `seg_len` tokens so that B·H·num_segs CTAs fill the GPU (one CTA per
// SM), and runs
//   pass 1 (…_state_kernel): for every piece (piece_len tokens, a divisor of seg_len) that lies
//     before the last segment's start, the local end state Σ_j λ^(end-1-j) k_jᵀ v_j (fp32,
//     DK x DV) -> workspace. It reads only K and V and walks its blocks backwards, so that the
//     first blocks of each piece are the last ones left in L2 when pass 2 starts reading them.
//   scan (lightning_fwd_scan_kernel): in place, piece p becomes the state after piece p with
//     all history, prefix_p = λ^piece_len · prefix_{p-1} + local_p.
//   pass 2 (…_main_kernel): the CTA of segment s starts from the prefix state of the piece
//     that ends at its first token and runs the full tiled forward over its segment.
// Extra HBM traffic over the 8E-byte floor: the K,V re-read of all but the last segment
// (4E·(S-1)/S, partly served from L2) plus O(B·H·DK·DV·pieces) bytes of states. With one
// segment (B·H >= #SMs) there is no extra traffic and no workspace. (Adding the inter-segment
// term afterwards instead, Λ_t Q_t · state_in on top of zero-state outputs, would cost
// 6E·(S-1)/S: re-read Q, read and write O.)
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

#include "LightningFwdPlan.h"
#include "MmaSync.cuh"

namespace tnlm {
namespace la {

// Launch arguments (LightningFwdPlan.h, shared with the host runtime).
using LightningFwdArgs = LightningFwdArgsT<__nv_bfloat16>;

// ----------------------------------------------------------------------------------------------
// Configuration (all shapes compile-time)
// ----------------------------------------------------------------------------------------------
template <int DK_, int DV_, int C_ = 64, int NWARPS_ = 8, int STAGES_ = 2>
struct LightningFwdConfig {
  static constexpr int DK = DK_, DV = DV_, C = C_, NWARPS = NWARPS_, STAGES = STAGES_;
  static constexpr int NTHREADS = NWARPS * 32;
  static constexpr bool kHopper = false; // mma.sync kernels (sm_80+)
  // Output / score tiles: RG row groups of 16 rows, WN column groups.
  static constexpr int RG = C / 16;
  static constexpr int WN = NWARPS / RG;
  static constexpr int S_COLS = C / WN;  // score columns per warp
  static constexpr int O_COLS = DV / WN; // output columns per warp
  static constexpr int S_NT = S_COLS / 8, O_NT = O_COLS / 8;
  // State tiles: SR x SC warps.
  static constexpr int SR = 4, SC = NWARPS / SR;
  static constexpr int ST_ROWS = DK / SR, ST_COLS = DV / SC;
  static constexpr int ST_MT = ST_ROWS / 16, ST_NT = ST_COLS / 8;

  static_assert(C % 64 == 0, "block size: multiple of 64 (128-byte swizzled P rows)");
  static_assert(DK % 64 == 0 && DV % 64 == 0, "head dims: multiples of 64");
  static_assert(NWARPS % RG == 0 && NWARPS % SR == 0, "warps must tile the block");
  static_assert(S_COLS % 16 == 0 && O_COLS % 16 == 0, "warp column slices: multiples of 16");
  static_assert(ST_ROWS % 16 == 0 && ST_COLS % 16 == 0, "state slices: multiples of 16");
  static_assert(STAGES >= 2 && STAGES <= 4, "pipeline stages (cp.async ring)");

  // Shared memory (bytes). Every tile is row-major with 16-byte chunks XOR-swizzled by row.
  static constexpr int Q_TILE = C * DK * 2, K_TILE = C * DK * 2, V_TILE = C * DV * 2;
  static constexpr int OFF_Q = 0;
  static constexpr int OFF_K = OFF_Q + STAGES * Q_TILE;
  static constexpr int OFF_V = OFF_K + STAGES * K_TILE;
  static constexpr int OFF_KT = OFF_V + STAGES * V_TILE; // bf16 [C][DK] decayed keys K~
  static constexpr int OFF_KV = OFF_KT + K_TILE;         // bf16 [DK][DV] copy of the state
  static constexpr int OFF_P = OFF_KV + DK * DV * 2;     // bf16 [C][C] decayed scores
  static constexpr int OFF_DECAY = OFF_P + C * C * 2;    // fp32 [C + 1]: exp(-s·r)
  static constexpr int SMEM_MAIN = OFF_DECAY + ((C + 1) * 4 + 15) / 16 * 16;
  // State pass: K and V tiles only.
  static constexpr int SOFF_K = 0;
  static constexpr int SOFF_V = STAGES * K_TILE;
  static constexpr int SMEM_STATE = SOFF_V + STAGES * V_TILE;
  static_assert(SMEM_MAIN <= 227 * 1024, "shared memory of the main kernel exceeds 227 KB");
  // fp32 registers per thread for the state and the output block.
  static constexpr int STATE_REGS = ST_MT * ST_NT * 4;
  static constexpr int OUT_REGS = O_NT * 4;
  static_assert(STATE_REGS + OUT_REGS + S_NT * 4 <= 160, "accumulators would spill");
  // P·V and the state update share the V fragments: a warp's output columns are its state
  // columns.
  static_assert(SR == RG && SC == WN && ST_COLS == O_COLS, "warp layout: shared V columns");
};

namespace detail {

using mma::smem_u32; // MmaSync.cuh

// Byte offset of 16-byte chunk `chunk` of row `row` in a swizzled tile with ROW_BYTES per row.
template <int ROW_BYTES> __device__ __forceinline__ uint32_t swz(int row, int chunk) {
  static_assert(ROW_BYTES % 128 == 0, "swizzle needs rows of whole 128-byte lines");
  return static_cast<uint32_t>(row * ROW_BYTES + ((chunk ^ (row & 7)) << 4));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void *src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src),
               "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

using mma::ldsm_x4;
using mma::ldsm_x4_t;
using mma::mma16816;

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t *>(&v);
}
// Scales the two bf16 halves of x by fl (low) and fh (high), rounding once.
__device__ __forceinline__ uint32_t scale_bf16x2(uint32_t x, float fl, float fh) {
  const float lo = __uint_as_float(x << 16);
  const float hi = __uint_as_float(x & 0xffff0000u);
  return pack_bf16x2(lo * fl, hi * fh);
}
__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(v));
}
__device__ __forceinline__ uint4 ld_shared_v4(uint32_t addr) {
  uint4 v;
  asm volatile("ld.shared.v4.b32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "r"(addr));
  return v;
}
__device__ __forceinline__ void st_shared_v4(uint32_t addr, uint4 v) {
  asm volatile("st.shared.v4.b32 [%0], {%1,%2,%3,%4};\n" ::"r"(addr), "r"(v.x), "r"(v.y), "r"(v.z),
               "r"(v.w));
}

// Issues cp.async for a C x COLS bf16 tile (rows >= valid_rows are zero-filled).
template <class Cfg, int COLS>
__device__ __forceinline__ void load_tile_async(uint32_t s_tile, const __nv_bfloat16 *g,
                                                long long row_stride, int valid_rows, int tid) {
  constexpr int CH = COLS / 8; // 16-byte chunks per row
  constexpr int TOTAL = Cfg::C * CH;
  static_assert(TOTAL % Cfg::NTHREADS == 0, "tile load: whole passes of the CTA");
#pragma unroll
  for (int it = 0; it < TOTAL / Cfg::NTHREADS; ++it) {
    const int idx = tid + it * Cfg::NTHREADS;
    const int r = idx / CH, c = idx % CH;
    const bool ok = r < valid_rows;
    const __nv_bfloat16 *src = ok ? g + r * row_stride + c * 8 : g;
    cp_async16(s_tile + swz<COLS * 2>(r, c), src, ok ? 16 : 0);
  }
}

// dst row r = fac(r) · src row r for a C x COLS bf16 tile, over the same (row, chunk) cells
// that load_tile_async gives thread `tid` (so a thread may scale its own cp.async data in
// place right after cp.async.wait_group, before any barrier).
template <class Cfg, int COLS, class Fac>
__device__ __forceinline__ void scale_tile_rows(uint32_t s_src, uint32_t s_dst, int tid, Fac fac) {
  constexpr int CH = COLS / 8;
  constexpr int TOTAL = Cfg::C * CH;
#pragma unroll
  for (int it = 0; it < TOTAL / Cfg::NTHREADS; ++it) {
    const int idx = tid + it * Cfg::NTHREADS;
    const int r = idx / CH, c = idx % CH;
    const uint32_t off = swz<COLS * 2>(r, c);
    const float f = fac(r);
    uint4 x = ld_shared_v4(s_src + off);
    x.x = scale_bf16x2(x.x, f, f);
    x.y = scale_bf16x2(x.y, f, f);
    x.z = scale_bf16x2(x.z, f, f);
    x.w = scale_bf16x2(x.w, f, f);
    st_shared_v4(s_dst + off, x);
  }
}

// V fragments (B operand, k = token, n = dv) of k-step ks for 16-column pairs starting at c0.
template <class Cfg, int NP>
__device__ __forceinline__ void load_v_frags(uint32_t (&vf)[NP][4], uint32_t sV, int ks, int c0,
                                             int lane) {
#pragma unroll
  for (int np = 0; np < NP; ++np)
    ldsm_x4_t(vf[np], sV + swz<Cfg::DV * 2>(ks * 16 + (lane & 7) + (((lane >> 3) & 1) << 3),
                                            (c0 + 16 * np) / 8 + (lane >> 4)));
}

// One k-step (16 tokens) of the state update acc += K~ᵀ V, K~ = decayed keys in shared
// memory ([token][dk]); warp owns state rows r0.. (ST_MT m-tiles), V fragments given.
template <class Cfg>
__device__ __forceinline__ void state_update_step(float (&acc)[Cfg::ST_MT][Cfg::ST_NT][4],
                                                  const uint32_t (&vf)[Cfg::ST_NT / 2][4],
                                                  uint32_t sKt, int ks, int r0, int lane) {
  uint32_t ka[Cfg::ST_MT][4];
#pragma unroll
  for (int mt = 0; mt < Cfg::ST_MT; ++mt)
    // A = K~ᵀ: m = dk, k = token; stored [token][dk] -> transposed ldmatrix.
    ldsm_x4_t(ka[mt], sKt + swz<Cfg::DK * 2>(ks * 16 + (lane & 7) + ((lane >> 4) << 3),
                                             (r0 + 16 * mt) / 8 + ((lane >> 3) & 1)));
#pragma unroll
  for (int np = 0; np < Cfg::ST_NT / 2; ++np)
#pragma unroll
    for (int mt = 0; mt < Cfg::ST_MT; ++mt) {
      mma16816(acc[mt][2 * np], ka[mt], vf[np][0], vf[np][1]);
      mma16816(acc[mt][2 * np + 1], ka[mt], vf[np][2], vf[np][3]);
    }
}

// Visits every state element a thread owns: f(mt, nt, half, row, col) with col even; the
// pair (acc[mt][nt][2*half], acc[mt][nt][2*half+1]) sits at (row, col), (row, col+1).
template <class Cfg, class F>
__device__ __forceinline__ void for_state_pairs(int warp, int lane, F f) {
  const int r0 = (warp % Cfg::SR) * Cfg::ST_ROWS;
  const int c0 = (warp / Cfg::SR) * Cfg::ST_COLS;
  const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int mt = 0; mt < Cfg::ST_MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < Cfg::ST_NT; ++nt)
#pragma unroll
      for (int hf = 0; hf < 2; ++hf)
        f(mt, nt, hf, r0 + 16 * mt + g + 8 * hf, c0 + 8 * nt + 2 * t4);
}

} // namespace detail

// ----------------------------------------------------------------------------------------------
// Pass 1: local end state of each piece (only when the sequence is split into segments).
// Grid: B·H·pieces_per_bh CTAs.
// ----------------------------------------------------------------------------------------------
template <class Cfg>
__global__ void __launch_bounds__(Cfg::NTHREADS, 2)
    lightning_fwd_state_kernel(const LightningFwdArgs a) {
  using namespace detail;
  constexpr int C = Cfg::C, DK = Cfg::DK, DV = Cfg::DV, STAGES = Cfg::STAGES;
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int piece = blockIdx.x % a.pieces_per_bh;
  const int bh = blockIdx.x / a.pieces_per_bh;
  const int b = bh / a.H, h = bh % a.H;
  const float s = a.slopes[h];
  const int start = piece * a.piece_len;
  const int end = start + a.piece_len; // pieces lie before the last segment: end <= N
  const int nchunks = a.piece_len / C;
  const __nv_bfloat16 *kb = a.k + b * a.in_sb + h * a.in_sh;
  const __nv_bfloat16 *vb = a.v + b * a.in_sb + h * a.in_sh;
  const uint32_t s_base = smem_u32(smem);

  // Chunks are visited last to first (see the header comment on L2 reuse).
  auto issue = [&](int t) {
    const int c = nchunks - 1 - t;
    const long long tok = start + c * C;
    const int st = t % STAGES;
    load_tile_async<Cfg, DK>(s_base + Cfg::SOFF_K + st * Cfg::K_TILE, kb + tok * a.in_sn, a.in_sn,
                             C, tid);
    load_tile_async<Cfg, DV>(s_base + Cfg::SOFF_V + st * Cfg::V_TILE, vb + tok * a.in_sn, a.in_sn,
                             C, tid);
  };
#pragma unroll
  for (int t = 0; t < STAGES - 1; ++t) {
    if (t < nchunks)
      issue(t);
    cp_async_commit();
  }

  float acc[Cfg::ST_MT][Cfg::ST_NT][4] = {};
  const int r0 = (warp % Cfg::SR) * Cfg::ST_ROWS;
  const int c0 = (warp / Cfg::SR) * Cfg::ST_COLS;
  for (int t = 0; t < nchunks; ++t) {
    cp_async_wait<STAGES - 2>();
    const int st = t % STAGES;
    const int c = nchunks - 1 - t;
    const uint32_t sK = s_base + Cfg::SOFF_K + st * Cfg::K_TILE;
    const uint32_t sV = s_base + Cfg::SOFF_V + st * Cfg::V_TILE;
    // K~ in place (each thread scales the cells it loaded): token r of this chunk is
    // dist0 - r steps before the piece end.
    const int dist0 = end - 1 - (start + c * C);
    scale_tile_rows<Cfg, DK>(sK, sK, tid,
                             [&](int r) { return expf(-s * static_cast<float>(dist0 - r)); });
    __syncthreads();
    if (t + STAGES - 1 < nchunks)
      issue(t + STAGES - 1);
    cp_async_commit();
#pragma unroll
    for (int ks = 0; ks < C / 16; ++ks) {
      uint32_t vf[Cfg::ST_NT / 2][4];
      load_v_frags<Cfg>(vf, sV, ks, c0, lane);
      state_update_step<Cfg>(acc, vf, sK, ks, r0, lane);
    }
  }
  float *out = a.piece_states + (static_cast<long long>(bh) * a.pieces_per_bh + piece) * DK * DV;
  for_state_pairs<Cfg>(warp, lane, [&](int mt, int nt, int hf, int row, int col) {
    *reinterpret_cast<float2 *>(out + row * DV + col) =
        make_float2(acc[mt][nt][2 * hf], acc[mt][nt][2 * hf + 1]);
  });
}

// ----------------------------------------------------------------------------------------------
// Scan of the piece states (one launch between pass 1 and pass 2): in place, piece p becomes
// the state after piece p with all history, Σ_{q<=p} exp(-s·(p-q)·piece_len) · local_q.
// Grid: (DK·DV / (4·256), B·H) CTAs of 256 threads, 4 consecutive floats per thread.
// ----------------------------------------------------------------------------------------------
template <int DK, int DV>
__global__ void __launch_bounds__(256) lightning_fwd_scan_kernel(const LightningFwdArgs a) {
  static_assert((DK * DV) % (4 * 256) == 0, "scan: whole CTAs");
  const int bh = blockIdx.y;
  const int e = (blockIdx.x * 256 + threadIdx.x) * 4;
  const float w = expf(-a.slopes[bh % a.H] * static_cast<float>(a.piece_len));
  float *base = a.piece_states + static_cast<long long>(bh) * a.pieces_per_bh * DK * DV + e;
  float4 run = make_float4(0.f, 0.f, 0.f, 0.f);
  constexpr int BATCH = 8; // loads of a batch go out before its stores
  for (int p0 = 0; p0 < a.pieces_per_bh; p0 += BATCH) {
    float4 x[BATCH];
#pragma unroll
    for (int i = 0; i < BATCH; ++i)
      if (p0 + i < a.pieces_per_bh)
        x[i] = __ldcg(
            reinterpret_cast<const float4 *>(base + static_cast<long long>(p0 + i) * DK * DV));
#pragma unroll
    for (int i = 0; i < BATCH; ++i)
      if (p0 + i < a.pieces_per_bh) {
        run = make_float4(fmaf(w, run.x, x[i].x), fmaf(w, run.y, x[i].y), fmaf(w, run.z, x[i].z),
                          fmaf(w, run.w, x[i].w));
        __stcg(reinterpret_cast<float4 *>(base + static_cast<long long>(p0 + i) * DK * DV), run);
      }
  }
}

// ----------------------------------------------------------------------------------------------
// Pass 2: the tiled forward over one segment. Grid: B·H·num_segs CTAs.
// ----------------------------------------------------------------------------------------------
template <class Cfg>
__global__ void __launch_bounds__(Cfg::NTHREADS, 1)
    lightning_fwd_main_kernel(const LightningFwdArgs a) {
  using namespace detail;
  constexpr int C = Cfg::C, DK = Cfg::DK, DV = Cfg::DV, STAGES = Cfg::STAGES;
  extern __shared__ __align__(128) uint8_t smem[];
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int BH = a.B * a.H;
  const int bh = blockIdx.x % BH;
  const int seg = blockIdx.x / BH;
  const int b = bh / a.H, h = bh % a.H;
  const float s = a.slopes[h];
  const int seg_start = seg * a.seg_len;
  const int seg_end = min(a.N, seg_start + a.seg_len);
  const int nchunks = (seg_end - seg_start + C - 1) / C;
  const bool last_seg = seg == a.num_segs - 1;
  const bool want_final = last_seg && a.final_state != nullptr;

  const __nv_bfloat16 *qg = a.q + b * a.in_sb + h * a.in_sh;
  const __nv_bfloat16 *kg = a.k + b * a.in_sb + h * a.in_sh;
  const __nv_bfloat16 *vg = a.v + b * a.in_sb + h * a.in_sh;
  __nv_bfloat16 *og = a.o + b * a.out_sb + h * a.out_sh;

  const uint32_t s_base = smem_u32(smem);
  const uint32_t sKV = s_base + Cfg::OFF_KV;
  const uint32_t sP = s_base + Cfg::OFF_P;
  float *decay = reinterpret_cast<float *>(smem + Cfg::OFF_DECAY); // decay[r] = exp(-s·r)

  auto issue = [&](int t) {
    const long long tok = seg_start + t * C;
    const int rows = min(C, seg_end - static_cast<int>(tok));
    const int st = t % STAGES;
    load_tile_async<Cfg, DK>(s_base + Cfg::OFF_Q + st * Cfg::Q_TILE, qg + tok * a.in_sn, a.in_sn,
                             rows, tid);
    load_tile_async<Cfg, DK>(s_base + Cfg::OFF_K + st * Cfg::K_TILE, kg + tok * a.in_sn, a.in_sn,
                             rows, tid);
    load_tile_async<Cfg, DV>(s_base + Cfg::OFF_V + st * Cfg::V_TILE, vg + tok * a.in_sn, a.in_sn,
                             rows, tid);
  };
#pragma unroll
  for (int t = 0; t < STAGES - 1; ++t) {
    if (t < nchunks)
      issue(t);
    cp_async_commit();
  }
  for (int r = tid; r <= C; r += Cfg::NTHREADS)
    decay[r] = expf(-s * static_cast<float>(r));

  // Running state (fp32, registers). Segment s > 0 starts from the scanned piece state that
  // ends at its first token (the state after token seg_start - 1).
  float kv[Cfg::ST_MT][Cfg::ST_NT][4] = {};
  bool has_state = false;
  if (seg > 0) {
    const float *ps =
        a.piece_states +
        (static_cast<long long>(bh) * a.pieces_per_bh + seg_start / a.piece_len - 1) * DK * DV;
    for_state_pairs<Cfg>(warp, lane, [&](int mt, int nt, int hf, int row, int col) {
      const float2 x = __ldcg(reinterpret_cast<const float2 *>(ps + row * DV + col));
      kv[mt][nt][2 * hf] = x.x;
      kv[mt][nt][2 * hf + 1] = x.y;
    });
    has_state = true;
    for_state_pairs<Cfg>(warp, lane, [&](int mt, int nt, int hf, int row, int col) {
      st_shared_u32(sKV + swz<DV * 2>(row, col / 8) + (col % 8) * 2,
                    pack_bf16x2(kv[mt][nt][2 * hf], kv[mt][nt][2 * hf + 1]));
    });
  }

  // Warp roles: column group cg = warp / RG; row group rg alternates direction between
  // column groups so that the warps sharing a sub-partition (warp mod 4) get light and heavy
  // (near / far from the diagonal) row groups alike.
  const int cg = warp / Cfg::RG;
  const int rg = (cg % 2 == 0) ? warp % Cfg::RG : Cfg::RG - 1 - warp % Cfg::RG;
  const int row0 = 16 * rg;                        // first output row of this warp inside the block
  const int sr0 = (warp % Cfg::SR) * Cfg::ST_ROWS; // state rows of this warp
  const int oc0 = cg * Cfg::O_COLS;                // output (= state) columns of this warp
  const uint32_t sKt = s_base + Cfg::OFF_KT;

  for (int t = 0; t < nchunks; ++t) {
    cp_async_wait<STAGES - 2>();
    __syncthreads(); // [A] tiles of block t, state copy, decay table visible
    if (t + STAGES - 1 < nchunks)
      issue(t + STAGES - 1);
    cp_async_commit();

    const int st = t % STAGES;
    const uint32_t sQ = s_base + Cfg::OFF_Q + st * Cfg::Q_TILE;
    const uint32_t sK = s_base + Cfg::OFF_K + st * Cfg::K_TILE;
    const uint32_t sV = s_base + Cfg::OFF_V + st * Cfg::V_TILE;
    const int tok0 = seg_start + t * C;
    const int m = min(C, seg_end - tok0);

    // ---- S = Q Kᵀ (lower triangle) and O = Q·KV, sharing the Q fragments ----
    float sacc[Cfg::S_NT][4] = {};
    float oacc[Cfg::O_NT][4] = {};
#pragma unroll
    for (int ks = 0; ks < DK / 16; ++ks) {
      uint32_t qa[4];
      ldsm_x4(qa, sQ + swz<DK * 2>(row0 + (lane & 15), 2 * ks + (lane >> 4)));
#pragma unroll
      for (int np = 0; np < Cfg::S_NT / 2; ++np) {
        const int n0 = cg * Cfg::S_COLS + 16 * np;
        if (n0 < row0 + 16) { // else the 16x16 tile is above the diagonal
          uint32_t kf[4];
          ldsm_x4(kf, sK + swz<DK * 2>(n0 + (lane & 7) + ((lane >> 4) << 3),
                                       2 * ks + ((lane >> 3) & 1)));
          mma16816(sacc[2 * np], qa, kf[0], kf[1]);
          mma16816(sacc[2 * np + 1], qa, kf[2], kf[3]);
        }
      }
      if (has_state) {
#pragma unroll
        for (int np = 0; np < Cfg::O_NT / 2; ++np) {
          const int n0 = cg * Cfg::O_COLS + 16 * np;
          uint32_t sf[4];
          ldsm_x4_t(sf, sKV + swz<DV * 2>(16 * ks + (lane & 7) + (((lane >> 3) & 1) << 3),
                                          n0 / 8 + (lane >> 4)));
          mma16816(oacc[2 * np], qa, sf[0], sf[1]);
          mma16816(oacc[2 * np + 1], qa, sf[2], sf[3]);
        }
      }
    }
    // O_inter rows scaled by Λ: row i gets λ^(i+1).
    if (has_state) {
      const float f0 = decay[row0 + g + 1], f1 = decay[row0 + g + 9];
#pragma unroll
      for (int nt = 0; nt < Cfg::O_NT; ++nt) {
        oacc[nt][0] *= f0;
        oacc[nt][1] *= f0;
        oacc[nt][2] *= f1;
        oacc[nt][3] *= f1;
      }
    }
    // P = S ⊙ M (decay mask) -> bf16 in shared memory.
#pragma unroll
    for (int np = 0; np < Cfg::S_NT / 2; ++np) {
      const int n0 = cg * Cfg::S_COLS + 16 * np;
      if (n0 < row0 + 16) {
#pragma unroll
        for (int j = 0; j < 2; ++j) {
          const int col = n0 + 8 * j + 2 * t4;
#pragma unroll
          for (int hf = 0; hf < 2; ++hf) {
            const int i = row0 + g + 8 * hf;
            const float p0 = col <= i ? sacc[2 * np + j][2 * hf] * decay[max(i - col, 0)] : 0.f;
            const float p1 =
                col + 1 <= i ? sacc[2 * np + j][2 * hf + 1] * decay[max(i - col - 1, 0)] : 0.f;
            st_shared_u32(sP + swz<C * 2>(i, col / 8) + (col % 8) * 2, pack_bf16x2(p0, p1));
          }
        }
      }
    }
    const bool last_block = t == nchunks - 1;
    const bool do_state = !last_block || want_final; // state after this block needed?
    if (do_state) // K~ row j = λ^(m-1-j) K row j (0 for padding rows)
      scale_tile_rows<Cfg, DK>(sK, sKt, tid,
                               [&](int j) { return j < m ? decay[max(m - 1 - j, 0)] : 0.f; });
    __syncthreads(); // [B] P and K~ visible; every warp is done reading the state copy

    // ---- O += P V (k only up to the diagonal) and KV = λ^m KV + K~ᵀ V, sharing V ----
    if (do_state) {
      const float lm = decay[m];
#pragma unroll
      for (int mt = 0; mt < Cfg::ST_MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < Cfg::ST_NT; ++nt)
#pragma unroll
          for (int e = 0; e < 4; ++e)
            kv[mt][nt][e] *= lm;
    }
#pragma unroll
    for (int ks = 0; ks < C / 16; ++ks) {
      const bool do_pv = ks <= rg;
      if (ks * 16 < m && (do_pv || do_state)) {
        uint32_t vf[Cfg::O_NT / 2][4];
        load_v_frags<Cfg>(vf, sV, ks, oc0, lane);
        if (do_pv) {
          uint32_t pa[4];
          ldsm_x4(pa, sP + swz<C * 2>(row0 + (lane & 15), 2 * ks + (lane >> 4)));
#pragma unroll
          for (int np = 0; np < Cfg::O_NT / 2; ++np) {
            mma16816(oacc[2 * np], pa, vf[np][0], vf[np][1]);
            mma16816(oacc[2 * np + 1], pa, vf[np][2], vf[np][3]);
          }
        }
        if (do_state)
          state_update_step<Cfg>(kv, vf, sKt, ks, sr0, lane);
      }
    }
    // ---- store O (bf16) ----
#pragma unroll
    for (int nt = 0; nt < Cfg::O_NT; ++nt) {
      const int col = oc0 + 8 * nt + 2 * t4;
#pragma unroll
      for (int hf = 0; hf < 2; ++hf) {
        const int i = row0 + g + 8 * hf;
        if (i < m) {
          *reinterpret_cast<uint32_t *>(og + static_cast<long long>(tok0 + i) * a.out_sn + col) =
              pack_bf16x2(oacc[nt][2 * hf], oacc[nt][2 * hf + 1]);
        }
      }
    }
    if (do_state) {
      has_state = true;
      if (!last_block) {
        for_state_pairs<Cfg>(warp, lane, [&](int mt, int nt, int hf, int row, int col) {
          st_shared_u32(sKV + swz<DV * 2>(row, col / 8) + (col % 8) * 2,
                        pack_bf16x2(kv[mt][nt][2 * hf], kv[mt][nt][2 * hf + 1]));
        });
      }
    }
  }

  if (want_final) {
    float *out = a.final_state + static_cast<long long>(bh) * DK * DV;
    for_state_pairs<Cfg>(warp, lane, [&](int mt, int nt, int hf, int row, int col) {
      *reinterpret_cast<float2 *>(out + row * DV + col) =
          make_float2(kv[mt][nt][2 * hf], kv[mt][nt][2 * hf + 1]);
    });
  }
}

#if !defined(__CUDACC_RTC__)
// ----------------------------------------------------------------------------------------------
// Host side: planning the segment split and launching both passes.
// ----------------------------------------------------------------------------------------------
// LightningFwdPlan and plan_lightning_fwd: LightningFwdPlan.h.

using LightningKernel = void (*)(const LightningFwdArgs);

// Launches pass 1 and the scan (if the plan has pieces), then pass 2, with the state and main
// kernels of either version on `stream`; `a` must carry the plan's fields and a workspace of
// plan.workspace_bytes in piece_states. `configured` (one flag per kernel pair) records that
// their shared-memory limits were raised.
template <class Cfg>
inline cudaError_t launch_lightning_passes(LightningKernel state, LightningKernel main,
                                           bool &configured, const LightningFwdArgs &a,
                                           cudaStream_t stream) {
  if (!configured) {
    cudaError_t e =
        cudaFuncSetAttribute(main, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::SMEM_MAIN);
    if (e != cudaSuccess)
      return e;
    e = cudaFuncSetAttribute(state, cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::SMEM_STATE);
    if (e != cudaSuccess)
      return e;
    configured = true;
  }
  const int BH = a.B * a.H;
  if (a.N <= 0 || BH <= 0)
    return cudaSuccess;
  if (a.pieces_per_bh > 0) {
    state<<<BH * a.pieces_per_bh, Cfg::NTHREADS, Cfg::SMEM_STATE, stream>>>(a);
    lightning_fwd_scan_kernel<Cfg::DK, Cfg::DV>
        <<<dim3(Cfg::DK * Cfg::DV / 1024, BH), 256, 0, stream>>>(a);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
      return e;
  }
  main<<<BH * a.num_segs, Cfg::NTHREADS, Cfg::SMEM_MAIN, stream>>>(a);
  return cudaGetLastError();
}

// The portable (mma.sync) version.
template <class Cfg>
inline cudaError_t launch_lightning_fwd(const LightningFwdArgs &a, cudaStream_t stream) {
  static bool configured = false;
  return launch_lightning_passes<Cfg>(lightning_fwd_state_kernel<Cfg>,
                                      lightning_fwd_main_kernel<Cfg>, configured, a, stream);
}
#endif // !__CUDACC_RTC__

} // namespace la
} // namespace tnlm
