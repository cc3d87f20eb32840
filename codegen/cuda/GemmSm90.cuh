// A bf16 GEMM of our own for Hopper (sm_90a): D[M, N] = A[M, K] · B[N, K]ᵀ, fp32 accumulation,
// A and B K-major (row-major with K contiguous: the "TN" of a linear layer, y = x · Wᵀ with W
// in its [out, in] layout). The first step towards matrix products whose epilogue does what
// cuBLASLt cannot (SGLU's product, its backward, SiLU): docs/gpu-training.md.
//
// Design (128 x 256 tiles of D, one CTA of 384 threads per SM, persistent):
//   warpgroup 0: the producer; one thread issues the TMA loads of each 64-wide K slice of A
//                (128 x 64) and B (256 x 64) into a ring of STAGES stages, 128-byte swizzled,
//                completing on the stage's "full" mbarrier; it waits on the stage's "empty"
//                mbarrier before reusing it. setmaxnreg 40.
//   warpgroups 1, 2: the consumers; each owns 64 rows of the tile: per K slice, 4 k-steps of two
//                wgmma m64n128k16 (the two 128-column halves), operands from shared memory
//                (K-major descriptors), fp32 accumulators in registers (128 per thread);
//                a stage is released once the wgmma group after it has been waited for.
//                setmaxnreg 232.
//   epilogue:    each consumer rounds its 64 x 256 block to bf16 into shared memory (four
//                128-byte swizzled 64 x 64 boxes) and one thread stores them with TMA (rows
//                beyond M and columns beyond N are not written); persistent over tiles.
// BMN: B N-major instead (a row-major [K, N] B, D = A · B: a linear layer's dx = dy · W with W
// as stored), through TMA boxes of 64 N x 64 K and transposed-B wgmma descriptors.
// gemm_sm90_pingpong below: the same stages in 128 x 128 tiles, one per consumer warpgroup,
// their K loops taking turns so that one's epilogue runs beside the other's K loop (what pays
// where the epilogue moves as many bytes as the K loop reads: kMulGrad).
// Requirements (checked by the launcher): K % 64 == 0, leading dimensions multiples of 8
// elements (16-byte TMA strides), pointers 16-byte aligned.
#pragma once

#include <cuda_bf16.h>
#include <stdint.h>

#include "MmaSync.cuh"

namespace tnlm {
namespace gemm {

// A TMA descriptor as the driver's cuTensorMapEncodeTiled fills it (CUtensorMap: 128 bytes,
// 64-byte aligned), declared here so that NVRTC needs no driver header; the host copies the
// CUtensorMap into it.
struct alignas(64) TmaDesc {
  unsigned long long opaque[16];
};

struct GemmSm90Config {
  static constexpr int BM = 128, BN = 256, BK = 64, STAGES = 3;
  static constexpr int GROUP_M = 8; // tile raster: GROUP_M M tiles walk the N tiles together
  static constexpr int NTHREADS = 384;
  static constexpr int A_STAGE = BM * BK * 2, B_STAGE = BN * BK * 2; // bytes
  static constexpr int OFF_A = 0, OFF_B = STAGES * A_STAGE;
  // Each consumer's 64 x 256 block of D staged for its TMA stores: four 64 x 64 boxes,
  // 128-byte swizzled (8 KB each).
  static constexpr int OUT_BOX = 64 * 64 * 2, OUT_WG = 4 * OUT_BOX;
  static constexpr int OFF_OUT = OFF_B + STAGES * B_STAGE;
  static constexpr int OFF_BAR = OFF_OUT + 2 * OUT_WG;
  // Full and empty mbarriers of the ring, then one per consumer for its epilogue's loads.
  static constexpr int OFF_EBAR = OFF_BAR + 2 * STAGES * 8;
  static constexpr int SMEM = OFF_EBAR + 2 * 8 + 1024; // + alignment slack
  static_assert(SMEM <= 227 * 1024, "shared memory");
};

// The epilogues (gemm_tn_sm90 below).
constexpr int kPlain = 0, kGatedProduct = 1, kMulGrad = 2, kSiluPrefix = 3;

namespace detail {

using mma::smem_u32; // MmaSync.cuh
__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count));
}
__device__ __forceinline__ void mbar_expect_tx(uint32_t bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes)
               : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  asm volatile("{\n.reg .pred p;\nWAIT_%=:\n"
               "mbarrier.try_wait.parity.shared::cta.b64 p, [%0], %1;\n"
               "@!p bra WAIT_%=;\n}\n" ::"r"(bar),
               "r"(parity)
               : "memory");
}
__device__ __forceinline__ void tma_load_2d(uint32_t dst, const TmaDesc *map, int c0, int c1,
                                            uint32_t bar) {
  asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes "
               "[%0], [%1, {%2, %3}], [%4];\n" ::"r"(dst),
               "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(bar)
               : "memory");
}
__device__ __forceinline__ void tma_store_2d(const TmaDesc *map, uint32_t src, int c0, int c1) {
  asm volatile(
      "cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%1, %2}], [%3];\n" ::"l"(
          reinterpret_cast<uint64_t>(map)),
      "r"(c0), "r"(c1), "r"(src)
      : "memory");
}
__device__ __forceinline__ void bulk_commit() {
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void bulk_wait_read() {
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void bulk_wait_all() {
  asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
}
__device__ __forceinline__ void fence_async_smem() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
__device__ __forceinline__ void bar_sync(int id, int n) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
__device__ __forceinline__ void bar_arrive(int id, int n) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(n) : "memory");
}
template <int R> __device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
}
template <int R> __device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
}
// Fences, groups, accumulator pins, descriptors and the m64n128k16 wgmma: MmaSync.cuh.
using mma::fence_regs;
using mma::kmajor_desc;
using mma::mnmajor_desc;
using mma::wgmma_commit;
using mma::wgmma_fence;
using mma::wgmma_m64n128k16_ss;
using mma::wgmma_m64n128k16_ss_first;
using mma::wgmma_wait;

// Where a consumer thread's accumulators acc[4i + 2hf], acc[4i + 2hf + 1] of its 64 x 128
// block h (columns 128h ..) sit in the consumer's staging boxes (box 2h + i/8 holds columns
// 64(2h + i/8) ..; 128-byte swizzle): row r + 8hf, the column pair `pair` of chunk i % 8.
__device__ __forceinline__ uint32_t stage_addr(uint32_t out, int h, int i, int hf, int r,
                                               int pair) {
  const uint32_t box = out + (2 * h + i / 8) * (64 * 64 * 2);
  const int row = r + 8 * hf;
  return box + row * 128 + (((i % 8) ^ (row & 7)) << 4) + pair * 4;
}

// One 64 x 128 accumulator block of a consumer thread into the staging boxes, rounded to bf16.
__device__ __forceinline__ void stage_rows(const float (&acc)[64], uint32_t out, int h, int r,
                                           int pair) {
#pragma unroll
  for (int i = 0; i < 16; ++i) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const uint32_t addr = stage_addr(out, h, i, hf, r, pair);
      __nv_bfloat162 v = __floats2bfloat162_rn(acc[4 * i + 2 * hf], acc[4 * i + 2 * hf + 1]);
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(*reinterpret_cast<uint32_t *>(&v))
                   : "memory");
    }
  }
}

// A consumer thread's 64 x 128 block rounded to bf16 pairs (d[2i + hf]: acc[4i + 2hf], + 1).
__device__ __forceinline__ void round_pairs(const float (&acc)[64], __nv_bfloat162 (&d)[32]) {
#pragma unroll
  for (int i = 0; i < 32; ++i)
    d[i] = __floats2bfloat162_rn(acc[2 * i], acc[2 * i + 1]);
}

// The product's backward in place (kMulGrad): the staging boxes hold x (a or b of SGLU's
// forward) at the thread's positions; each becomes bf16(dy · x), mul_grad's arithmetic on
// dy = bf16(D) (Backward.cuh: one f32 product of the two bf16 values, rounded).
__device__ __forceinline__ void multiply_rows(const __nv_bfloat162 (&dy)[32], uint32_t out, int h,
                                              int r, int pair) {
#pragma unroll
  for (int i = 0; i < 16; ++i) {
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const uint32_t addr = stage_addr(out, h, i, hf, r, pair);
      uint32_t raw;
      asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(raw) : "r"(addr) : "memory");
      const __nv_bfloat162 x = *reinterpret_cast<const __nv_bfloat162 *>(&raw);
      const __nv_bfloat162 g = dy[2 * i + hf];
      __nv_bfloat162 v = __floats2bfloat162_rn(__bfloat162float(g.x) * __bfloat162float(x.x),
                                               __bfloat162float(g.y) * __bfloat162float(x.y));
      asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(addr), "r"(*reinterpret_cast<uint32_t *>(&v))
                   : "memory");
    }
  }
}

// SGLU's product in place of a: acc0 = bf16(a) · bf16(b) in f32 (ew::mul's arithmetic on the
// two bf16 values; the staging rounds it).
__device__ __forceinline__ void product_in_place(float (&a)[64], const float (&b)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i)
    a[i] = __bfloat162float(__float2bfloat16(a[i])) * __bfloat162float(__float2bfloat16(b[i]));
}

// φ of Lightning Attention in place (kSiluPrefix): silu(bf16(D)) = v / (1 + e^-v) in f32 on the
// bf16-rounded value, the quotient as __fdividef (ew::silu's arithmetic on what the GEMM would
// have written; the staging rounds it). A full-precision division here, with its slow path
// unrolled 128 times, made the kernel's code half again as large (72 KB of SASS, 48 KB).
__device__ __forceinline__ void silu_in_place(float (&a)[64]) {
#pragma unroll
  for (int i = 0; i < 64; ++i) {
    const float v = __bfloat162float(__float2bfloat16(a[i]));
    a[i] = __fdividef(v, 1.0f + __expf(-v));
  }
}

template <bool B> struct Bool { static constexpr bool value = B; };

// Tile t -> (M tile, N tile): groups of `group` M tiles (the last group may be smaller) walk
// the N tiles together, M fastest, so the ~#SMs tiles in flight share a few M tiles' A rows
// and a band of B's rows (all of B need not fit in L2).
__device__ __forceinline__ void tile_of(int t, int tilesM, int tilesN, int group, int &mt,
                                        int &nt) {
  const int per = group * tilesN;
  const int g = t / per, first = g * group;
  const int rows = min(group, tilesM - first);
  const int r = t - g * per;
  mt = first + r % rows;
  nt = r / rows;
}

// The ring's mbarriers: full (one arrival, the producer's expect_tx) and empty (`readers`
// consumer threads) per stage, then one per consumer for its epilogue's loads.
__device__ __forceinline__ void init_barriers(uint32_t full, uint32_t empty, uint32_t ebar,
                                              int stages, int readers) {
  for (int s = 0; s < stages; ++s) {
    mbar_init(full + 8 * s, 1);
    mbar_init(empty + 8 * s, readers);
  }
  mbar_init(ebar, 1);
  mbar_init(ebar + 8, 1);
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}

// The producer thread: the K slices of the CTA's tiles (BN columns of D each) in order into
// the ring: A's 64 x BM box, and B as BN / 64 N-major boxes of 64 x 64 (BMN), the gated pair's
// two 128-row halves (B rows n0.. and N + n0..), or one K-major box.
template <class Cfg, int EPI, bool BMN, int BN>
__device__ __forceinline__ void produce(const TmaDesc &tmA, const TmaDesc &tmB, uint32_t sA,
                                        uint32_t sB, uint32_t full, uint32_t empty, int tiles,
                                        int tilesM, int tilesN, int KT, int N) {
  constexpr int BK = Cfg::BK, STAGES = Cfg::STAGES;
  int it = 0; // K slices issued so far (all tiles)
  for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
    int mt, nt;
    tile_of(t, tilesM, tilesN, Cfg::GROUP_M, mt, nt);
    const int m0 = mt * Cfg::BM, n0 = nt * BN;
    for (int kt = 0; kt < KT; ++kt, ++it) {
      const int s = it % STAGES;
      const uint32_t bar = full + 8 * s, b = sB + s * Cfg::B_STAGE;
      if (it >= STAGES)
        mbar_wait(empty + 8 * s, ((it / STAGES) - 1) & 1);
      mbar_expect_tx(bar, Cfg::A_STAGE + Cfg::B_STAGE);
      tma_load_2d(sA + s * Cfg::A_STAGE, &tmA, kt * BK, m0, bar);
      if constexpr (BMN) {
#pragma unroll
        for (int j = 0; j < BN / 64; ++j)
          tma_load_2d(b + j * 8192, &tmB, n0 + 64 * j, kt * BK, bar);
      } else if constexpr (EPI == kGatedProduct) {
        tma_load_2d(b, &tmB, kt * BK, n0, bar);
        tma_load_2d(b + 128 * 128, &tmB, kt * BK, N + n0, bar);
      } else {
        tma_load_2d(b, &tmB, kt * BK, n0, bar);
      }
    }
  }
}

// A consumer's four 64 x 64 staging boxes (8 KB each; box q at D's column and row box(q, ..))
// loaded from `map` on mbarrier bar, or stored to it (one thread; then committed).
template <class Box>
__device__ __forceinline__ void load_boxes(uint32_t out, const TmaDesc &map, Box box,
                                           uint32_t bar) {
  mbar_expect_tx(bar, 4 * 64 * 64 * 2);
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    int col, row;
    box(q, col, row);
    tma_load_2d(out + q * (64 * 64 * 2), &map, col, row, bar);
  }
}
template <class Box>
__device__ __forceinline__ void store_boxes(uint32_t out, const TmaDesc &map, Box box) {
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    int col, row;
    box(q, col, row);
    tma_store_2d(&map, out + q * (64 * 64 * 2), col, row);
  }
  bulk_commit();
}

// kMulGrad's epilogue for a consumer warpgroup (thread wt, rows r, r + 8 of its blocks, column
// pair `pair`) whose staging boxes hold b (loaded at the tile's start by load_boxes on bar,
// phase 0): da = bf16(D)·b in place, stored through tmD; then a through tmP into the boxes
// once da has left them (phase 1), db = bf16(D)·a, stored through tmD2. named: the
// warpgroup's named barrier.
template <class Box>
__device__ __forceinline__ void
mul_grad_epilogue(const float (&acc0)[64], const float (&acc1)[64], uint32_t out, uint32_t bar,
                  int named, int wt, int r, int pair, const TmaDesc &tmD, const TmaDesc &tmD2,
                  const TmaDesc &tmP, Box box) {
  __nv_bfloat162 dy0[32], dy1[32]; // bf16(D): what the unfused GEMM would have written
  round_pairs(acc0, dy0);
  round_pairs(acc1, dy1);
  mbar_wait(bar, 0);
  multiply_rows(dy0, out, 0, r, pair);
  multiply_rows(dy1, out, 1, r, pair);
  fence_async_smem();
  bar_sync(named, 128);
  if (wt == 0) {
    store_boxes(out, tmD, box);
    bulk_wait_read<0>();
    load_boxes(out, tmP, box, bar);
  }
  mbar_wait(bar, 1);
  multiply_rows(dy0, out, 0, r, pair);
  multiply_rows(dy1, out, 1, r, pair);
  fence_async_smem();
  bar_sync(named, 128);
  if (wt == 0)
    store_boxes(out, tmD2, box);
}

// kSiluPrefix's second store for a consumer warpgroup whose block of D (acc0, acc1) has just
// been staged and stored through tmD: where the block's first box (box(0, ..): its leftmost
// columns) lies below P, silu(bf16(D)) staged in the same boxes once those stores have read
// them, and each box whose columns lie below P stored through tmD2. named: the warpgroup's
// named barrier; (r, pair): stage_rows' thread position.
template <class Box>
__device__ __forceinline__ void
silu_prefix_epilogue(float (&acc0)[64], float (&acc1)[64], uint32_t out, int named, int wt, int r,
                     int pair, const TmaDesc &tmD2, int P, Box box) {
  int col0, row0;
  box(0, col0, row0);
  if (col0 >= P)
    return;
  if (wt == 0)
    bulk_wait_read<0>();
  bar_sync(named, 128);
  silu_in_place(acc0);
  silu_in_place(acc1);
  stage_rows(acc0, out, 0, r, pair);
  stage_rows(acc1, out, 1, r, pair);
  fence_async_smem();
  bar_sync(named, 128);
  if (wt == 0) {
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      int col, row;
      box(q, col, row);
      if (col < P)
        tma_store_2d(&tmD2, out + q * (64 * 64 * 2), col, row);
    }
    bulk_commit();
  }
}

// A consumer warpgroup's K loop over one tile: KT slices of the ring from slice `it` on (it
// advances past them), per 16-wide k-step two wgmma m64n128k16, acc0 (+)= A0·B0 and acc1 (+)=
// A1·B1, with desc(a, b, kk, a0, b0, a1, b1) giving the descriptors from the slot's A and B
// stages. The tile's first k-step overwrites the accumulators without reading them, so that
// they are not live from the last tile's epilogue on. A slice's slot is released once the
// wgmma group after it is done; k_loop_end waits for the last group and releases its slot.
template <class Cfg, bool BMN, class Desc>
__device__ __forceinline__ void k_loop(float (&acc0)[64], float (&acc1)[64], uint32_t sA,
                                       uint32_t sB, uint32_t full, uint32_t empty, int &it, int KT,
                                       Desc desc) {
  constexpr int STAGES = Cfg::STAGES;
  auto slice = [&](auto first) {
    constexpr bool FIRST = decltype(first)::value;
    const int s = it % STAGES;
    mbar_wait(full + 8 * s, (it / STAGES) & 1);
    const uint32_t a = sA + s * Cfg::A_STAGE, b = sB + s * Cfg::B_STAGE;
    if constexpr (!FIRST) {
      fence_regs(acc0);
      fence_regs(acc1);
    }
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < Cfg::BK / 16; ++kk) {
      unsigned long long a0, b0, a1, b1;
      desc(a, b, kk, a0, b0, a1, b1);
      if (FIRST && kk == 0) {
        wgmma_m64n128k16_ss_first<BMN ? 1 : 0>(acc0, a0, b0);
        wgmma_m64n128k16_ss_first<BMN ? 1 : 0>(acc1, a1, b1);
      } else {
        wgmma_m64n128k16_ss<BMN ? 1 : 0>(acc0, a0, b0, 1);
        wgmma_m64n128k16_ss<BMN ? 1 : 0>(acc1, a1, b1, 1);
      }
    }
    wgmma_commit();
    wgmma_wait<1>(); // the group before this one is done: its stage may be refilled
    fence_regs(acc0);
    fence_regs(acc1);
    if (!FIRST)
      mbar_arrive(empty + 8 * ((it - 1) % STAGES));
    ++it;
  };
  slice(Bool<true>{});
  for (int kt = 1; kt < KT; ++kt)
    slice(Bool<false>{});
}
template <class Cfg>
__device__ __forceinline__ void k_loop_end(float (&acc0)[64], float (&acc1)[64], uint32_t empty,
                                           int it) {
  wgmma_wait<0>();
  fence_regs(acc0);
  fence_regs(acc1);
  mbar_arrive(empty + 8 * ((it - 1) % Cfg::STAGES)); // the tile's last slice
}

} // namespace detail

// Persistent: CTA b takes tiles b, b + gridDim.x, .. (tile_of: grouped raster). The
// producer runs ahead across tiles (the ring does not drain at a tile's end); a consumer stages
// its block of D in shared memory and stores it with TMA (its previous tile's stores must have
// left the staging buffer first), then goes on to its next tile.
//
// EPI = kPlain: D[M, N] = A · Bᵀ (tmB boxes 64 x 256, tmD boxes 64 x 64).
// EPI = kGatedProduct (SGLU's forward, N = F): B is the stacked [W1; W2] ([2F, K], tmB boxes
//   64 x 128); a tile covers 128 columns j0.. of both a = A·W1ᵀ and b = A·W2ᵀ (B rows j0.. and
//   F + j0..), and writes a through tmD, b through tmD2 (the two [M, F] halves of one buffer)
//   and the product bf16(a) · bf16(b), rounded, through tmP.
// EPI = kMulGrad (SGLU's backward through its product, N = F): B is N-major (a row-major
//   [K, N] matrix: W3 of y = u · W3ᵀ, so D = dy · W3 = du; tmB over W3 as [K rows, N columns],
//   boxes 64 x 64); D itself is never written: each tile's da = bf16(D)·b and db = bf16(D)·a
//   are, through tmD and tmD2 ([M, F], boxes 64 x 64), with a through tmP and b through tmE
//   (the forward's [M, F] halves, boxes 64 x 64) read into the staging boxes: b while the tile's
//   K loop runs, a after da's stores have left them.
// EPI = kSiluPrefix (a train step's qkvu, N = 4D, P = 2D): D = A · Bᵀ through tmD as kPlain,
//   and for D's columns below P (a multiple of 64) also silu(bf16(D)), rounded, through tmD2
//   (Lightning Attention's φ(q), φ(k) into the step's workspace, whose SiLU pass is then
//   skipped; D keeps the pre-activation for the backward's SiLU'). The executor runs the
//   ping-pong form (the SiLU beside the other tile's K loop).
// (kPlain, kGatedProduct, kMulGrad, kSiluPrefix: declared above.)
// The body, for a __global__ wrapper of Cfg::NTHREADS threads and Cfg::SMEM bytes of dynamic
// shared memory whose TmaDesc parameters are __grid_constant__ (TMA reads the descriptors where
// the launch put them): gemm_tn_sm90_kernel below, or the extern "C" one tnlmc emits.
// BMN: B N-major (mnmajor_desc; tmB over the row-major [K, N] B, boxes 64 x 64), D = A · B.
template <class Cfg = GemmSm90Config, int EPI = kPlain, bool BMN = (EPI == kMulGrad)>
__device__ __forceinline__ void
gemm_tn_sm90(const TmaDesc &tmA, const TmaDesc &tmB, const TmaDesc &tmD, const TmaDesc &tmD2,
             const TmaDesc &tmP, const TmaDesc &tmE, int M, int N, int K, int P = 0) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace detail;
  constexpr int BM = Cfg::BM, BK = Cfg::BK, STAGES = Cfg::STAGES;
  constexpr int BN = EPI == kGatedProduct ? Cfg::BN / 2 : Cfg::BN; // columns of D per tile
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t sA = base + Cfg::OFF_A, sB = base + Cfg::OFF_B;
  const uint32_t full = base + Cfg::OFF_BAR, empty = full + STAGES * 8;
  const uint32_t ebar = base + Cfg::OFF_EBAR; // + 8c: consumer c's epilogue loads
  const int tid = threadIdx.x, wg = tid / 128;
  const int tilesN = (N + BN - 1) / BN, tilesM = (M + BM - 1) / BM;
  const int tiles = tilesM * tilesN;
  const int KT = K / BK;
  // Launched as a programmatic dependent of the kernel before it, wait for that kernel's
  // results before reading anything (a no-op otherwise).
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  if (tid == 0)
    init_barriers(full, empty, ebar, STAGES, 256); // every consumer thread reads every slice
  __syncthreads();

  if (wg == 0) {
    setmaxnreg_dec<40>();
    if (tid == 0)
      produce<Cfg, EPI, BMN, BN>(tmA, tmB, sA, sB, full, empty, tiles, tilesM, tilesN, KT, N);
  } else {
    setmaxnreg_inc<232>();
    const int c = wg - 1;     // rows 64c .. of each tile
    const int wt = tid % 128; // thread in the warpgroup
    const int w = wt / 32, l = wt % 32;
    const uint32_t out = base + Cfg::OFF_OUT + c * Cfg::OUT_WG;
    float acc0[64], acc1[64];
    int it = 0;
    for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
      int mt, nt;
      tile_of(t, tilesM, tilesN, Cfg::GROUP_M, mt, nt);
      const int m0 = mt * BM, n0 = nt * BN;
      // The staging box q: D's columns n0 + 64q .., rows m0 + 64c ...
      auto box = [&](int q, int &col, int &row) { col = n0 + 64 * q, row = m0 + 64 * c; };
      if constexpr (EPI == kMulGrad) { // b into the staging boxes while the K loop runs
        if (wt == 0) {
          bulk_wait_read<0>(); // the previous tile's db stores have read them
          load_boxes(out, tmE, box, ebar + 8 * c);
        }
      }
      // Rows 64c .. of A's stage; B's two 128-column halves: 16 K rows of 128 bytes from box 2h
      // on, 2 boxes apart (N-major), or its two 128-row halves (K-major).
      k_loop<Cfg, BMN>(acc0, acc1, sA, sB, full, empty, it, KT,
                       [&](uint32_t a, uint32_t b, int kk, unsigned long long &a0,
                           unsigned long long &b0, unsigned long long &a1, unsigned long long &b1) {
                         a0 = a1 = kmajor_desc(a + c * 64 * 128 + kk * 32);
                         b0 = BMN ? mnmajor_desc(b + kk * 2048, 8192) : kmajor_desc(b + kk * 32);
                         b1 = BMN ? mnmajor_desc(b + 2 * 8192 + kk * 2048, 8192)
                                  : kmajor_desc(b + 128 * 128 + kk * 32);
                       });
      k_loop_end<Cfg>(acc0, acc1, empty, it);
      // Epilogue: thread (warp w, lane l) holds rows 16w + l/4 (+8), columns 8i + 2(l%4) (+1).
      if constexpr (EPI == kMulGrad) {
        mul_grad_epilogue(acc0, acc1, out, ebar + 8 * c, 1 + c, wt, 16 * w + l / 4, l % 4, tmD,
                          tmD2, tmP, box);
        continue;
      }
      if (wt == 0)
        bulk_wait_read<0>(); // the previous tile's stores have read the staging boxes
      bar_sync(1 + c, 128);
      stage_rows(acc0, out, 0, 16 * w + l / 4, l % 4);
      stage_rows(acc1, out, 1, 16 * w + l / 4, l % 4);
      fence_async_smem();
      bar_sync(1 + c, 128);
      if (wt == 0) {
#pragma unroll
        for (int q = 0; q < 4; ++q) {
          if constexpr (EPI == kGatedProduct)
            tma_store_2d(q < 2 ? &tmD : &tmD2, out + q * Cfg::OUT_BOX, n0 + 64 * (q % 2),
                         m0 + 64 * c);
          else
            tma_store_2d(&tmD, out + q * Cfg::OUT_BOX, n0 + 64 * q, m0 + 64 * c);
        }
        bulk_commit();
      }
      if constexpr (EPI == kSiluPrefix) // then φ of the prefix's columns
        silu_prefix_epilogue(acc0, acc1, out, 1 + c, wt, 16 * w + l / 4, l % 4, tmD2, P, box);
      if constexpr (EPI == kGatedProduct) { // then the product, through boxes 0, 1
        if (wt == 0)
          bulk_wait_read<0>();
        bar_sync(1 + c, 128);
        product_in_place(acc0, acc1);
        stage_rows(acc0, out, 0, 16 * w + l / 4, l % 4);
        fence_async_smem();
        bar_sync(1 + c, 128);
        if (wt == 0) {
          tma_store_2d(&tmP, out, n0, m0 + 64 * c);
          tma_store_2d(&tmP, out + Cfg::OUT_BOX, n0 + 64, m0 + 64 * c);
          bulk_commit();
        }
      }
    }
    if (wt == 0)
      bulk_wait_all();
  }
#endif
}

// Ping-pong (kPlain, kMulGrad, kSiluPrefix): each consumer warpgroup takes every other tile of its
// CTA, a whole 128 x 128 tile (two m64n128 accumulators: rows 0-63 and 64-127), so that one's
// epilogue runs while the other's K loop has the tensor cores. The producer loads the CTA's tiles'
// K slices in order into the ring; a slice is released by the one warpgroup that reads it.
// The K loops take turns (named barriers 3 and 4): a warpgroup starts its tile's once the other
// has finished the tile before, so that every ring slot it waits on is at most one phase behind
// (an mbarrier's parity wait cannot tell phase p from p - 2).
template <int STAGES_ = 5> struct GemmSm90PingpongConfig {
  static constexpr int BM = 128, BN = 128, BK = 64, STAGES = STAGES_;
  static constexpr int GROUP_M = 8;
  static constexpr int NTHREADS = 384;
  static constexpr int A_STAGE = BM * BK * 2, B_STAGE = BN * BK * 2; // bytes
  static constexpr int OFF_A = 0, OFF_B = STAGES * A_STAGE;
  // A consumer's 128 x 128 tile staged for its stores (and kMulGrad's loads): four 64 x 64
  // boxes, box 2h + q holding rows 64h .., columns 64q ...
  static constexpr int OUT_BOX = 64 * 64 * 2, OUT_WG = 4 * OUT_BOX;
  static constexpr int OFF_OUT = OFF_B + STAGES * B_STAGE;
  static constexpr int OFF_BAR = OFF_OUT + 2 * OUT_WG;
  static constexpr int OFF_EBAR = OFF_BAR + 2 * STAGES * 8;
  static constexpr int SMEM = OFF_EBAR + 2 * 8 + 1024; // + alignment slack
  static_assert(SMEM <= 227 * 1024, "shared memory");
};

// The ping-pong body: gemm_tn_sm90's operands and descriptors, but tmA boxes 64 x 128 and tmB
// boxes 64 x 128 (K-major) or 64 x 64 (BMN); D's tiles are 128 x 128.
template <class Cfg = GemmSm90PingpongConfig<>, int EPI = kPlain, bool BMN = (EPI == kMulGrad)>
__device__ __forceinline__ void
gemm_sm90_pingpong(const TmaDesc &tmA, const TmaDesc &tmB, const TmaDesc &tmD, const TmaDesc &tmD2,
                   const TmaDesc &tmP, const TmaDesc &tmE, int M, int N, int K, int P = 0) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  static_assert(EPI == kPlain || EPI == kMulGrad || EPI == kSiluPrefix,
                "ping-pong: kPlain, kMulGrad or kSiluPrefix");
  using namespace detail;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, STAGES = Cfg::STAGES;
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t sA = base + Cfg::OFF_A, sB = base + Cfg::OFF_B;
  const uint32_t full = base + Cfg::OFF_BAR, empty = full + STAGES * 8;
  const uint32_t ebar = base + Cfg::OFF_EBAR; // + 8c: consumer c's epilogue loads
  const int tid = threadIdx.x, wg = tid / 128;
  const int tilesN = (N + BN - 1) / BN, tilesM = (M + BM - 1) / BM;
  const int tiles = tilesM * tilesN;
  const int KT = K / BK;
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  if (tid == 0)
    init_barriers(full, empty, ebar, STAGES, 128); // the consumer warpgroup that read the slice
  __syncthreads();

  if (wg == 0) {
    setmaxnreg_dec<40>();
    if (tid == 0)
      produce<Cfg, EPI, BMN, BN>(tmA, tmB, sA, sB, full, empty, tiles, tilesM, tilesN, KT, N);
  } else {
    setmaxnreg_inc<232>();
    const int c = wg - 1;
    const int wt = tid % 128;
    const int w = wt / 32, l = wt % 32;
    const uint32_t out = base + Cfg::OFF_OUT + c * Cfg::OUT_WG;
    float acc0[64], acc1[64]; // rows 0-63, 64-127 of the tile
    int j = c;                // the CTA's tile this warpgroup takes: its c-th, (c + 2)-th, ..
    for (int t = blockIdx.x + c * gridDim.x; t < tiles; t += 2 * gridDim.x, j += 2) {
      int mt, nt;
      tile_of(t, tilesM, tilesN, Cfg::GROUP_M, mt, nt);
      const int m0 = mt * BM, n0 = nt * BN;
      // The staging box q = 2h + q' (h the row half): D's columns n0 + 64q' .., rows m0 + 64h ..
      auto box = [&](int q, int &col, int &row) {
        col = n0 + 64 * (q % 2), row = m0 + 64 * (q / 2);
      };
      if constexpr (EPI == kMulGrad) { // b into the staging boxes while the K loop runs
        if (wt == 0) {
          bulk_wait_read<0>(); // the previous tile's db stores have read them
          load_boxes(out, tmE, box, ebar + 8 * c);
        }
      }
      int it = j * KT; // the ring's slices are the CTA's tiles' K slices in order
      if (j > 0)
        bar_sync(3 + c, 256); // the other warpgroup's K loop of tile j - 1 is done
      // A's two 64-row halves; B: 16 K rows of 128 bytes (N-major) or its 128 rows (K-major).
      k_loop<Cfg, BMN>(acc0, acc1, sA, sB, full, empty, it, KT,
                       [&](uint32_t a, uint32_t b, int kk, unsigned long long &a0,
                           unsigned long long &b0, unsigned long long &a1, unsigned long long &b1) {
                         a0 = kmajor_desc(a + kk * 32);
                         a1 = kmajor_desc(a + 64 * 128 + kk * 32);
                         b0 = b1 =
                             BMN ? mnmajor_desc(b + kk * 2048, 8192) : kmajor_desc(b + kk * 32);
                       });
      if (t + gridDim.x < tiles) // the CTA's next tile (the other warpgroup's) may start
        bar_arrive(3 + (1 - c), 256);
      k_loop_end<Cfg>(acc0, acc1, empty, it);
      // Epilogue: acc0 into boxes 0, 1 and acc1 into boxes 2, 3 (stage_rows' block h = the
      // row half; thread (w, l): rows 16w + l/4 (+8), columns 8i + 2(l%4) (+1)).
      if constexpr (EPI == kMulGrad) {
        mul_grad_epilogue(acc0, acc1, out, ebar + 8 * c, 1 + c, wt, 16 * w + l / 4, l % 4, tmD,
                          tmD2, tmP, box);
      } else {
        if (wt == 0)
          bulk_wait_read<0>(); // the previous tile's stores have read the staging boxes
        bar_sync(1 + c, 128);
        stage_rows(acc0, out, 0, 16 * w + l / 4, l % 4);
        stage_rows(acc1, out, 1, 16 * w + l / 4, l % 4);
        fence_async_smem();
        bar_sync(1 + c, 128);
        if (wt == 0)
          store_boxes(out, tmD, box);
        if constexpr (EPI == kSiluPrefix) // then φ of the prefix's columns
          silu_prefix_epilogue(acc0, acc1, out, 1 + c, wt, 16 * w + l / 4, l % 4, tmD2, P, box);
      }
    }
    if (wt == 0)
      bulk_wait_all();
  }
#endif
}

template <class Cfg = GemmSm90PingpongConfig<>, int EPI = kPlain, bool BMN = (EPI == kMulGrad)>
__global__ void __launch_bounds__(Cfg::NTHREADS, 1)
    gemm_sm90_pingpong_kernel(const __grid_constant__ TmaDesc tmA,
                              const __grid_constant__ TmaDesc tmB,
                              const __grid_constant__ TmaDesc tmD,
                              const __grid_constant__ TmaDesc tmD2,
                              const __grid_constant__ TmaDesc tmP,
                              const __grid_constant__ TmaDesc tmE, int M, int N, int K, int P = 0) {
  gemm_sm90_pingpong<Cfg, EPI, BMN>(tmA, tmB, tmD, tmD2, tmP, tmE, M, N, K, P);
}

template <class Cfg = GemmSm90Config, int EPI = kPlain, bool BMN = (EPI == kMulGrad)>
__global__ void __launch_bounds__(Cfg::NTHREADS, 1)
    gemm_tn_sm90_kernel(const __grid_constant__ TmaDesc tmA, const __grid_constant__ TmaDesc tmB,
                        const __grid_constant__ TmaDesc tmD, const __grid_constant__ TmaDesc tmD2,
                        const __grid_constant__ TmaDesc tmP, const __grid_constant__ TmaDesc tmE,
                        int M, int N, int K, int P = 0) {
  gemm_tn_sm90<Cfg, EPI, BMN>(tmA, tmB, tmD, tmD2, tmP, tmE, M, N, K, P);
}

} // namespace gemm
} // namespace tnlm
