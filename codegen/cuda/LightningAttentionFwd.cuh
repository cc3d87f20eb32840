// Lightning Attention forward (causal linear attention with per-head decay): CUDA device
// templates and launchers, for the compiler to emit (docs/MODEL.md, "Lightning Attention").
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
//     warp-specialized CTA of two warpgroups (outputs / state), see the Hopper section below.
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

__device__ __forceinline__ uint32_t smem_u32(const void *p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

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

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// D += A(16x16, row) · B(16x8, col), bf16 in, fp32 accumulate.
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
               "{%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

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

// ==============================================================================================
// Hopper version (sm_90a): warpgroup MMA (wgmma), two warpgroups per CTA, warp-specialized.
// ==============================================================================================
// Shared tiles use the wgmma 128-byte swizzle: a tile of R rows x K bf16 columns is K/64 blocks of
// R x 128 bytes, 16-byte chunk c of row r at (c/8)·R·128 + r·128 + ((c mod 8) xor (r mod 8))·16,
// each block 1024-byte aligned. Q, K, V tiles ([token][feature]) are loaded in that layout; Q
// and K serve as K-major operands (contraction over features), V as an MN-major operand
// (contraction over tokens, N = dv contiguous), the decayed keys K~ᵀ come from registers
// (ldmatrix.trans + scaling), and the bf16 state copy is written as (KV)ᵀ [dv][dk] (K-major for
// Q·KV). No tile is transposed through shared memory.
template <int DK_, int DV_, int C_ = 64, int STAGES_ = 3, int STATE_STAGES_ = 4>
struct LightningFwdSm90Config {
  static constexpr int DK = DK_, DV = DV_, C = C_;
  static constexpr int STAGES = STAGES_;             // Q/K/V ring of the main kernel
  static constexpr int STATE_STAGES = STATE_STAGES_; // K/V ring of the state pass
  static constexpr int NWARPS = 8, NTHREADS = 256;   // two warpgroups
  static constexpr bool kHopper = true;              // wgmma kernels (sm_90a)
  static_assert(DK == 128 && DV == 128 && C == 64,
                "sm90 kernels: DK = DV = 128 and C = 64 (the state warpgroup holds the whole "
                "128 x 128 fp32 state in registers)");
  static_assert(STAGES >= 2 && STATE_STAGES >= 2, "pipeline stages");
  static constexpr int Q_TILE = C * DK * 2, K_TILE = C * DK * 2, V_TILE = C * DV * 2;
  static constexpr int OFF_Q = 0;
  static constexpr int OFF_K = OFF_Q + STAGES * Q_TILE;
  static constexpr int OFF_V = OFF_K + STAGES * K_TILE;
  static constexpr int OFF_KV = OFF_V + STAGES * V_TILE; // (KV)ᵀ bf16 [DV][DK]
  static constexpr int OFF_DECAY = OFF_KV + DV * DK * 2; // fp32 [C + 1]
  static constexpr int SMEM_MAIN = OFF_DECAY + ((C + 1) * 4 + 15) / 16 * 16 + 1024;
  static constexpr int SOFF_K = 0;
  static constexpr int SOFF_V = STATE_STAGES * K_TILE;
  static constexpr int SMEM_STATE = SOFF_V + STATE_STAGES * V_TILE + 1024;
  static_assert(SMEM_MAIN <= 227 * 1024 && SMEM_STATE <= 227 * 1024, "shared memory");
};

namespace detail {

// Byte offset of 16-byte chunk c of row r in a 128B-swizzled tile of R rows.
template <int R> __device__ __forceinline__ uint32_t swz_km(int r, int c) {
  return static_cast<uint32_t>((c >> 3) * (R * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}

__device__ __forceinline__ void stsm_x4(uint32_t addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]));
}
__device__ __forceinline__ void stsm_x4_t(uint32_t addr, const uint32_t (&r)[4]) {
  asm volatile("stmatrix.sync.aligned.m8n8.x4.trans.shared.b16 [%0], {%1,%2,%3,%4};\n" ::"r"(addr),
               "r"(r[0]), "r"(r[1]), "r"(r[2]), "r"(r[3]));
}
__device__ __forceinline__ void fence_proxy_async() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wgmma_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Pins accumulator registers between wgmma stages (no non-wgmma definition may move into a
// stage, no use may move before its wgmma_wait).
template <int N> __device__ __forceinline__ void fence_regs(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
    asm volatile("" : "+f"(d[i])::"memory");
}
template <int N, int M> __device__ __forceinline__ void fence_regs(uint32_t (&d)[N][M]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
#pragma unroll
    for (int j = 0; j < M; ++j)
      asm volatile("" : "+r"(d[i][j])::"memory");
}
// Shared memory matrix descriptors (128-byte swizzle). K-major: rows of 64 K-elements, 8-row
// groups 1024 bytes apart (LBO unused). MN-major: rows are K, each 64 MN-elements; 8-row K groups
// 1024 bytes apart (SBO), 64-wide MN blocks `mn_block_bytes` apart (LBO).
__device__ __forceinline__ uint64_t kmajor_desc(uint32_t saddr) {
  return static_cast<uint64_t>((saddr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) |
         (1ull << 62);
}
__device__ __forceinline__ uint64_t mnmajor_desc(uint32_t saddr, uint32_t mn_block_bytes) {
  return static_cast<uint64_t>((saddr & 0x3FFFF) >> 4) |
         (static_cast<uint64_t>(mn_block_bytes >> 4) << 16) | (64ull << 32) | (1ull << 62);
}

// D(64x64) (+)= A(64x16, smem desc) · B(16x64, smem desc), both K-major.
__device__ __forceinline__ void wgmma_m64n64k16_ss(float (&d)[32], uint64_t da, uint64_t db,
                                                   int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,"
               "%23,%24,%25,%26,%27,%28,%29,%30,%31}, %32, %33, p, 1, 1, 0, "
               "0;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                 "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
                 "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
                 "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
                 "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
                 "+f"(d[31])
               : "l"(da), "l"(db), "r"(accumulate));
}
// D(64x128) (+)= A(64x16, smem desc) · B(16x128, smem desc), both K-major.
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[64], uint64_t da, uint64_t db,
                                                    int accumulate) {
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
      "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%"
      "25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%"
      "48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, p, 1, 1, 0, "
      "0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
        "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]),
        "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]),
        "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]),
        "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]),
        "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]),
        "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]),
        "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]),
        "+f"(d[63])
      : "l"(da), "l"(db), "r"(accumulate));
}
// D(64x64) (+)= A(64x16, registers) · B(16x64, smem desc, K-major).
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[32], const uint32_t (&a)[4],
                                                   uint64_t db, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,"
               "%23,%24,%25,%26,%27,%28,%29,%30,%31}, {%32,%33,%34,%35}, %36, p, 1, 1, 0;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                 "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
                 "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
                 "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
                 "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
                 "+f"(d[31])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}

// D(64x128) (+)= A(64x16, registers) · B(16x128, smem desc, K-major).
__device__ __forceinline__ void wgmma_m64n128k16_rs(float (&d)[64], const uint32_t (&a)[4],
                                                    uint64_t db, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,"
               "%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%"
               "43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
               ", {%64,%65,%66,%67}, %68, p, 1, 1, 0;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                 "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
                 "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
                 "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
                 "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
                 "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
                 "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),
                 "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
                 "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),
                 "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]),
                 "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}
// D(64x128) (+)= A(64x16, registers) · B(16x128, smem desc, MN-major: N contiguous).
__device__ __forceinline__ void wgmma_m64n128k16_rs_bmn(float (&d)[64], const uint32_t (&a)[4],
                                                        uint64_t db, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
               "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,"
               "%23,%24,%25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%"
               "43,%44,%45,%46,%47,%48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}"
               ", {%64,%65,%66,%67}, %68, p, 1, 1, 1;\n}\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]),
                 "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]),
                 "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]),
                 "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),
                 "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]),
                 "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]),
                 "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),
                 "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),
                 "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]),
                 "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]),
                 "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(accumulate));
}

// Issues cp.async for a C x COLS bf16 tile into the swizzled layout, by NT threads (t = index).
template <int C, int COLS, int NT>
__device__ __forceinline__ void load_tile_sw_async(uint32_t s_tile, const __nv_bfloat16 *g,
                                                   long long row_stride, int valid_rows, int t) {
  constexpr int CH = COLS / 8;
  constexpr int TOTAL = C * CH;
  static_assert(TOTAL % NT == 0, "tile load: whole passes of the threads");
#pragma unroll
  for (int it = 0; it < TOTAL / NT; ++it) {
    const int idx = t + it * NT;
    const int r = idx / CH, c = idx % CH;
    const bool ok = r < valid_rows;
    const __nv_bfloat16 *src = ok ? g + r * row_stride + c * 8 : g;
    cp_async16(s_tile + swz_km<C>(r, c), src, ok ? 16 : 0);
  }
}

// A fragments of K~ᵀ (m = dk rows r0..r0+15 of a warp, k = the C tokens of the block) from the
// K tile ([token][dk], swizzled, C rows), token j scaled by fac(j): ka[kk] is k-step kk.
template <int C, class Fac>
__device__ __forceinline__ void load_decayed_kt_frags(uint32_t (&ka)[C / 16][4], uint32_t sK,
                                                      int r0, int lane, Fac fac) {
  const int t2 = 2 * (lane & 3);
#pragma unroll
  for (int kk = 0; kk < C / 16; ++kk) {
    ldsm_x4_t(ka[kk], sK + swz_km<C>(kk * 16 + (lane & 7) + ((lane >> 4) << 3),
                                     r0 / 8 + ((lane >> 3) & 1)));
    const float f0 = fac(kk * 16 + t2), f1 = fac(kk * 16 + t2 + 1);
    const float f2 = fac(kk * 16 + t2 + 8), f3 = fac(kk * 16 + t2 + 9);
    ka[kk][0] = scale_bf16x2(ka[kk][0], f0, f1);
    ka[kk][1] = scale_bf16x2(ka[kk][1], f0, f1);
    ka[kk][2] = scale_bf16x2(ka[kk][2], f2, f3);
    ka[kk][3] = scale_bf16x2(ka[kk][3], f2, f3);
  }
}

// (KV)ᵀ bf16 copy ([DV][DK] tile) of 16 state rows: kv holds dk rows r0 + (g, g+8), all DV = 128
// columns, in the wgmma accumulator layout.
template <int DV>
__device__ __forceinline__ void store_state_copy(uint32_t sKV, const float (&kv)[64], int r0,
                                                 int lane) {
  const int mi = lane >> 3, i = lane & 7;
#pragma unroll
  for (int j = 0; j < 16; j += 2) {
    uint32_t r[4];
    r[0] = pack_bf16x2(kv[4 * j + 0], kv[4 * j + 1]);
    r[1] = pack_bf16x2(kv[4 * j + 2], kv[4 * j + 3]);
    r[2] = pack_bf16x2(kv[4 * j + 4], kv[4 * j + 5]);
    r[3] = pack_bf16x2(kv[4 * j + 6], kv[4 * j + 7]);
    stsm_x4_t(sKV + swz_km<DV>(8 * (j + (mi >> 1)) + i, (r0 >> 3) + (mi & 1)), r);
  }
}

// Named barriers (ids 1..15; 0 is __syncthreads).
__device__ __forceinline__ void named_bar_sync(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void named_bar_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}

} // namespace detail

// ----------------------------------------------------------------------------------------------
// Pass 1 on Hopper: local end state of each piece. Each warpgroup owns 64 dk rows of the state
// (64 accumulator registers); K~ᵀ comes from registers, V is the MN-major B operand.
// ----------------------------------------------------------------------------------------------
template <class Cfg>
__global__ void __launch_bounds__(Cfg::NTHREADS, 1)
    lightning_fwd_sm90_state_kernel(const LightningFwdArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace detail;
  constexpr int C = Cfg::C, DK = Cfg::DK, DV = Cfg::DV, STAGES = Cfg::STATE_STAGES;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t s_base = (raw + 1023u) & ~1023u;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int wg = warp / 4, wi = warp % 4;
  const int piece = blockIdx.x % a.pieces_per_bh;
  const int bh = blockIdx.x / a.pieces_per_bh;
  const int b = bh / a.H, h = bh % a.H;
  const float s = a.slopes[h];
  const int start = piece * a.piece_len;
  const int end = start + a.piece_len;
  const int nchunks = a.piece_len / C;
  const __nv_bfloat16 *kg = a.k + b * a.in_sb + h * a.in_sh;
  const __nv_bfloat16 *vg = a.v + b * a.in_sb + h * a.in_sh;

  auto issue = [&](int t) { // chunks last to first (L2 reuse by pass 2)
    const long long tok = start + (nchunks - 1 - t) * C;
    const int st = t % STAGES;
    load_tile_sw_async<C, DK, Cfg::NTHREADS>(s_base + Cfg::SOFF_K + st * Cfg::K_TILE,
                                             kg + tok * a.in_sn, a.in_sn, C, tid);
    load_tile_sw_async<C, DV, Cfg::NTHREADS>(s_base + Cfg::SOFF_V + st * Cfg::V_TILE,
                                             vg + tok * a.in_sn, a.in_sn, C, tid);
  };
#pragma unroll
  for (int t = 0; t < STAGES - 1; ++t) {
    if (t < nchunks)
      issue(t);
    cp_async_commit();
  }
  float acc[64];
#pragma unroll
  for (int i = 0; i < 64; ++i)
    acc[i] = 0.f;
  for (int t = 0; t < nchunks; ++t) {
    cp_async_wait<STAGES - 2>();
    fence_proxy_async();
    __syncthreads(); // tiles of chunk t visible (also to wgmma); chunk t-1 fully consumed
    if (t + STAGES - 1 < nchunks)
      issue(t + STAGES - 1);
    cp_async_commit();
    const int st = t % STAGES;
    const uint32_t sK = s_base + Cfg::SOFF_K + st * Cfg::K_TILE;
    const uint32_t sV = s_base + Cfg::SOFF_V + st * Cfg::V_TILE;
    // token j of this chunk is dist0 - j steps before the piece end
    const int dist0 = end - 1 - (start + (nchunks - 1 - t) * C);
    uint32_t ka[C / 16][4];
    load_decayed_kt_frags<C>(ka, sK, 64 * wg + 16 * wi, lane,
                             [&](int j) { return expf(-s * static_cast<float>(dist0 - j)); });
    fence_regs(acc);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < C / 16; ++kk)
      wgmma_m64n128k16_rs_bmn(acc, ka[kk], mnmajor_desc(sV + kk * 16 * 128, C * 128), 1);
    wgmma_commit();
    wgmma_wait<0>();
    fence_regs(acc);
    fence_regs(ka);
  }
  float *out = a.piece_states + (static_cast<long long>(bh) * a.pieces_per_bh + piece) * DK * DV;
  const int row0 = 64 * wg + 16 * wi + (lane >> 2);
#pragma unroll
  for (int j = 0; j < 16; ++j)
#pragma unroll
    for (int hf = 0; hf < 2; ++hf)
      *reinterpret_cast<float2 *>(out + (row0 + 8 * hf) * DV + 8 * j + 2 * (lane & 3)) =
          make_float2(acc[4 * j + 2 * hf], acc[4 * j + 2 * hf + 1]);
#endif
}

// ----------------------------------------------------------------------------------------------
// Pass 2 on Hopper, warp-specialized: warpgroup 0 computes the outputs, warpgroup 1 the state.
// ----------------------------------------------------------------------------------------------
// Per block t (both warpgroups meet once per block at barrier BLOCK):
//   state WG : issues the cp.async loads of block t + STAGES - 1; K~ᵀ fragments (registers);
//              KV = λ^m KV + K~ᵀ V (fp32, 128 accumulator registers per thread: the whole
//              DK x DV state; V read MN-major); waits INTER; writes the bf16 copy (KV)ᵀ.
//   output WG: S = Q Kᵀ (64 x 64) and O = Q · KV(t-1) (64 x 128) issued together; P = S ⊙ M in
//              registers while Q·KV finishes; arrives INTER; O = Λ O + P V (P as the register A
//              operand, V MN-major); O staged through the Q tile and stored 16 bytes per thread.
// The state update of block t overlaps the output work of block t; the warpgroups share only
// the Q/K/V ring and the state copy.
template <class Cfg>
__global__ void __launch_bounds__(Cfg::NTHREADS, 1)
    lightning_fwd_sm90_main_kernel(const LightningFwdArgs a) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace detail;
  constexpr int C = Cfg::C, DK = Cfg::DK, DV = Cfg::DV, STAGES = Cfg::STAGES;
  constexpr int BAR_BLOCK = 1, BAR_INTER = 2, BAR_OUT = 3; // named barriers
  constexpr int WG_THREADS = 128;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t s_base = (raw + 1023u) & ~1023u;
  uint8_t *smem = smem_raw + (s_base - raw);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const int wg = warp / 4, wi = warp % 4, wtid = tid % WG_THREADS;
  const int BH = a.B * a.H;
  const int bh = blockIdx.x % BH;
  const int seg = blockIdx.x / BH;
  const int b = bh / a.H, h = bh % a.H;
  const float s = a.slopes[h];
  const int seg_start = seg * a.seg_len;
  const int seg_end = min(a.N, seg_start + a.seg_len);
  const int nchunks = (seg_end - seg_start + C - 1) / C;
  const bool want_final = seg == a.num_segs - 1 && a.final_state != nullptr;

  const __nv_bfloat16 *qg = a.q + b * a.in_sb + h * a.in_sh;
  const __nv_bfloat16 *kg = a.k + b * a.in_sb + h * a.in_sh;
  const __nv_bfloat16 *vg = a.v + b * a.in_sb + h * a.in_sh;
  __nv_bfloat16 *og = a.o + b * a.out_sb + h * a.out_sh;
  const uint32_t sKV = s_base + Cfg::OFF_KV;
  float *decay = reinterpret_cast<float *>(smem + Cfg::OFF_DECAY); // decay[r] = exp(-s·r)

  // Loads are issued by the state warpgroup only (its threads then fence and arrive at BLOCK,
  // so the output warpgroup needs no proxy fence and never waits on its own global stores).
  auto issue = [&](int t) {
    const long long tok = seg_start + t * C;
    const int rows = min(C, seg_end - static_cast<int>(tok));
    const int st = t % STAGES;
    load_tile_sw_async<C, DK, WG_THREADS>(s_base + Cfg::OFF_Q + st * Cfg::Q_TILE,
                                          qg + tok * a.in_sn, a.in_sn, rows, wtid);
    load_tile_sw_async<C, DK, WG_THREADS>(s_base + Cfg::OFF_K + st * Cfg::K_TILE,
                                          kg + tok * a.in_sn, a.in_sn, rows, wtid);
    load_tile_sw_async<C, DV, WG_THREADS>(s_base + Cfg::OFF_V + st * Cfg::V_TILE,
                                          vg + tok * a.in_sn, a.in_sn, rows, wtid);
  };
  for (int r = tid; r <= C; r += Cfg::NTHREADS)
    decay[r] = expf(-s * static_cast<float>(r));

  if (wg == 0) {
    // ================================ output warpgroup ================================
    float sacc[32], oacc[64];
#pragma unroll
    for (int i = 0; i < 32; ++i)
      sacc[i] = 0.f;
#pragma unroll
    for (int i = 0; i < 64; ++i)
      oacc[i] = 0.f;
    const int i0 = 16 * wi + g; // rows i0, i0 + 8 of the block
    for (int t = 0; t < nchunks; ++t) {
      named_bar_sync(BAR_BLOCK, Cfg::NTHREADS); // block t loaded, state copy t-1 written
      const int st = t % STAGES;
      const uint32_t sQ = s_base + Cfg::OFF_Q + st * Cfg::Q_TILE;
      const uint32_t sK = s_base + Cfg::OFF_K + st * Cfg::K_TILE;
      const uint32_t sV = s_base + Cfg::OFF_V + st * Cfg::V_TILE;
      const int tok0 = seg_start + t * C;
      const int m = min(C, seg_end - tok0);

      fence_regs(sacc);
      fence_regs(oacc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < DK / 16; ++kk) {
        const uint32_t koff = (kk >> 2) * (C * 128) + (kk & 3) * 32;
        wgmma_m64n64k16_ss(sacc, kmajor_desc(sQ + koff), kmajor_desc(sK + koff), kk > 0);
      }
      wgmma_commit();
#pragma unroll
      for (int kk = 0; kk < DK / 16; ++kk) {
        wgmma_m64n128k16_ss(oacc, kmajor_desc(sQ + (kk >> 2) * (C * 128) + (kk & 3) * 32),
                            kmajor_desc(sKV + (kk >> 2) * (DV * 128) + (kk & 3) * 32), kk > 0);
      }
      wgmma_commit();
      wgmma_wait<1>(); // S done, Q·KV may still run
      fence_regs(sacc);
      uint32_t pa[4][4]; // P = S ⊙ M as bf16 A fragments
#pragma unroll
      for (int jb = 0; jb < 8; ++jb) {
        const int j = 8 * jb + 2 * t4;
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int i = i0 + 8 * hf;
          const float p0 = j <= i ? sacc[4 * jb + 2 * hf] * decay[max(i - j, 0)] : 0.f;
          const float p1 = j + 1 <= i ? sacc[4 * jb + 2 * hf + 1] * decay[max(i - j - 1, 0)] : 0.f;
          pa[jb >> 1][(jb & 1) * 2 + hf] = pack_bf16x2(p0, p1);
        }
      }
      wgmma_wait<0>();
      fence_regs(oacc);
      named_bar_arrive(BAR_INTER, Cfg::NTHREADS); // done reading the state copy
      {                                           // O_inter rows scaled by Λ: row i gets λ^(i+1)
        const float f0 = decay[i0 + 1], f1 = decay[i0 + 9];
#pragma unroll
        for (int jb = 0; jb < 16; ++jb) {
          oacc[4 * jb + 0] *= f0;
          oacc[4 * jb + 1] *= f0;
          oacc[4 * jb + 2] *= f1;
          oacc[4 * jb + 3] *= f1;
        }
      }
      fence_regs(oacc);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < C / 16; ++kk)
        wgmma_m64n128k16_rs_bmn(oacc, pa[kk], mnmajor_desc(sV + kk * 16 * 128, C * 128), 1);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(oacc);
      fence_regs(pa);
      // O (bf16) -> the Q tile of this block (free: S and Q·KV are done; refilled only after
      // the next BLOCK barrier) -> 16-byte coalesced stores.
#pragma unroll
      for (int jb = 0; jb < 16; jb += 2) {
        uint32_t r[4];
        r[0] = pack_bf16x2(oacc[4 * jb + 0], oacc[4 * jb + 1]);
        r[1] = pack_bf16x2(oacc[4 * jb + 2], oacc[4 * jb + 3]);
        r[2] = pack_bf16x2(oacc[4 * jb + 4], oacc[4 * jb + 5]);
        r[3] = pack_bf16x2(oacc[4 * jb + 6], oacc[4 * jb + 7]);
        stsm_x4(sQ + swz_km<C>(16 * wi + (lane & 7) + (((lane >> 3) & 1) << 3), jb + (lane >> 4)),
                r);
      }
      named_bar_sync(BAR_OUT, WG_THREADS);
#pragma unroll
      for (int it = 0; it < C * DV / 8 / WG_THREADS; ++it) {
        const int idx = wtid + it * WG_THREADS;
        const int r = idx / (DV / 8), c = idx % (DV / 8);
        if (r < m) {
          const uint4 x = ld_shared_v4(sQ + swz_km<C>(r, c));
          *reinterpret_cast<uint4 *>(og + static_cast<long long>(tok0 + r) * a.out_sn + c * 8) = x;
        }
      }
    }
  } else {
    // ================================ state warpgroup =================================
    // kv0: dk rows 16·wi + (g, g+8); kv1: dk rows 64 + 16·wi + (g, g+8); all DV columns.
#pragma unroll
    for (int t = 0; t < STAGES - 1; ++t) {
      if (t < nchunks)
        issue(t);
      cp_async_commit();
    }
    float kv0[64], kv1[64];
#pragma unroll
    for (int i = 0; i < 64; ++i)
      kv0[i] = kv1[i] = 0.f;
    if (seg > 0) { // state after token seg_start - 1: the scanned piece state ending there
      const float *ps =
          a.piece_states +
          (static_cast<long long>(bh) * a.pieces_per_bh + seg_start / a.piece_len - 1) * DK * DV;
#pragma unroll
      for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int row = 16 * wi + g + 8 * hf, col = 8 * j + 2 * t4;
          const float2 x0 = __ldcg(reinterpret_cast<const float2 *>(ps + row * DV + col));
          const float2 x1 = __ldcg(reinterpret_cast<const float2 *>(ps + (row + 64) * DV + col));
          kv0[4 * j + 2 * hf] = x0.x;
          kv0[4 * j + 2 * hf + 1] = x0.y;
          kv1[4 * j + 2 * hf] = x1.x;
          kv1[4 * j + 2 * hf + 1] = x1.y;
        }
    }
    store_state_copy<DV>(sKV, kv0, 16 * wi, lane); // read by block 0
    store_state_copy<DV>(sKV, kv1, 64 + 16 * wi, lane);
    for (int t = 0; t < nchunks; ++t) {
      cp_async_wait<STAGES - 2>();
      fence_proxy_async(); // cp.async data and the state copy -> visible to wgmma
      named_bar_sync(BAR_BLOCK, Cfg::NTHREADS);
      if (t + STAGES - 1 < nchunks)
        issue(t + STAGES - 1);
      cp_async_commit();
      const int st = t % STAGES;
      const uint32_t sK = s_base + Cfg::OFF_K + st * Cfg::K_TILE;
      const uint32_t sV = s_base + Cfg::OFF_V + st * Cfg::V_TILE;
      const int tok0 = seg_start + t * C;
      const int m = min(C, seg_end - tok0);
      auto fac = [&](int j) { return j < m ? decay[max(m - 1 - j, 0)] : 0.f; };
      uint32_t ka0[C / 16][4], ka1[C / 16][4]; // K~ᵀ rows 16·wi.. and 64 + 16·wi..
      load_decayed_kt_frags<C>(ka0, sK, 16 * wi, lane, fac);
      load_decayed_kt_frags<C>(ka1, sK, 64 + 16 * wi, lane, fac);
      const float lm = decay[m];
#pragma unroll
      for (int i = 0; i < 64; ++i) {
        kv0[i] *= lm;
        kv1[i] *= lm;
      }
      fence_regs(kv0);
      fence_regs(kv1);
      wgmma_fence();
#pragma unroll
      for (int kk = 0; kk < C / 16; ++kk)
        wgmma_m64n128k16_rs_bmn(kv0, ka0[kk], mnmajor_desc(sV + kk * 16 * 128, C * 128), 1);
#pragma unroll
      for (int kk = 0; kk < C / 16; ++kk)
        wgmma_m64n128k16_rs_bmn(kv1, ka1[kk], mnmajor_desc(sV + kk * 16 * 128, C * 128), 1);
      wgmma_commit();
      wgmma_wait<0>();
      fence_regs(kv0);
      fence_regs(kv1);
      fence_regs(ka0);
      fence_regs(ka1);
      named_bar_sync(BAR_INTER, Cfg::NTHREADS); // the output WG is done with the old copy
      if (t != nchunks - 1) {
        store_state_copy<DV>(sKV, kv0, 16 * wi, lane);
        store_state_copy<DV>(sKV, kv1, 64 + 16 * wi, lane);
      }
    }
    if (want_final) {
      float *out = a.final_state + static_cast<long long>(bh) * DK * DV;
#pragma unroll
      for (int j = 0; j < 16; ++j)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
          const int row = 16 * wi + g + 8 * hf, col = 8 * j + 2 * t4;
          *reinterpret_cast<float2 *>(out + row * DV + col) =
              make_float2(kv0[4 * j + 2 * hf], kv0[4 * j + 2 * hf + 1]);
          *reinterpret_cast<float2 *>(out + (row + 64) * DV + col) =
              make_float2(kv1[4 * j + 2 * hf], kv1[4 * j + 2 * hf + 1]);
        }
    }
  }
#endif
}

#if !defined(__CUDACC_RTC__)
// ----------------------------------------------------------------------------------------------
// Host side: planning the segment split and launching both passes.
// ----------------------------------------------------------------------------------------------
// LightningFwdPlan and plan_lightning_fwd: LightningFwdPlan.h.

// Launches pass 1 (if the plan has pieces) and pass 2 on `stream`. `a` must carry the plan's
// fields and a workspace of plan.workspace_bytes in piece_states.
template <class Cfg>
inline cudaError_t launch_lightning_fwd(const LightningFwdArgs &a, cudaStream_t stream) {
  static bool configured = false;
  if (!configured) {
    cudaError_t e =
        cudaFuncSetAttribute(lightning_fwd_main_kernel<Cfg>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::SMEM_MAIN);
    if (e != cudaSuccess)
      return e;
    e = cudaFuncSetAttribute(lightning_fwd_state_kernel<Cfg>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::SMEM_STATE);
    if (e != cudaSuccess)
      return e;
    configured = true;
  }
  const int BH = a.B * a.H;
  if (a.N <= 0 || BH <= 0)
    return cudaSuccess;
  if (a.pieces_per_bh > 0) {
    lightning_fwd_state_kernel<Cfg>
        <<<BH * a.pieces_per_bh, Cfg::NTHREADS, Cfg::SMEM_STATE, stream>>>(a);
    lightning_fwd_scan_kernel<Cfg::DK, Cfg::DV>
        <<<dim3(Cfg::DK * Cfg::DV / 1024, BH), 256, 0, stream>>>(a);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
      return e;
  }
  lightning_fwd_main_kernel<Cfg><<<BH * a.num_segs, Cfg::NTHREADS, Cfg::SMEM_MAIN, stream>>>(a);
  return cudaGetLastError();
}
// Hopper (sm_90a) version: same arguments and plan.
template <class Cfg>
inline cudaError_t launch_lightning_fwd_sm90(const LightningFwdArgs &a, cudaStream_t stream) {
  static bool configured = false;
  if (!configured) {
    cudaError_t e =
        cudaFuncSetAttribute(lightning_fwd_sm90_main_kernel<Cfg>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::SMEM_MAIN);
    if (e != cudaSuccess)
      return e;
    e = cudaFuncSetAttribute(lightning_fwd_sm90_state_kernel<Cfg>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, Cfg::SMEM_STATE);
    if (e != cudaSuccess)
      return e;
    configured = true;
  }
  const int BH = a.B * a.H;
  if (a.N <= 0 || BH <= 0)
    return cudaSuccess;
  if (a.pieces_per_bh > 0) {
    lightning_fwd_sm90_state_kernel<Cfg>
        <<<BH * a.pieces_per_bh, Cfg::NTHREADS, Cfg::SMEM_STATE, stream>>>(a);
    lightning_fwd_scan_kernel<Cfg::DK, Cfg::DV>
        <<<dim3(Cfg::DK * Cfg::DV / 1024, BH), 256, 0, stream>>>(a);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
      return e;
  }
  lightning_fwd_sm90_main_kernel<Cfg>
      <<<BH * a.num_segs, Cfg::NTHREADS, Cfg::SMEM_MAIN, stream>>>(a);
  return cudaGetLastError();
}
#endif // !__CUDACC_RTC__

} // namespace la
} // namespace tnlm
