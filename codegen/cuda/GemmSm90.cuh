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
  static constexpr int SMEM = OFF_BAR + 2 * STAGES * 8 + 1024; // + alignment slack
  static_assert(SMEM <= 227 * 1024, "shared memory");
};

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
template <int R> __device__ __forceinline__ void setmaxnreg_inc() {
  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(R));
}
template <int R> __device__ __forceinline__ void setmaxnreg_dec() {
  asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(R));
}
// Fences, groups, accumulator pins, descriptors and the m64n128k16 wgmma: MmaSync.cuh.
using mma::fence_regs;
using mma::kmajor_desc;
using mma::wgmma_commit;
using mma::wgmma_fence;
using mma::wgmma_m64n128k16_ss;
using mma::wgmma_wait;

// One 64 x 128 accumulator block of a consumer thread (columns 128h ..) into the consumer's
// staging boxes (box 2h + i/8 holds columns 64(2h + i/8) ..; 128-byte swizzle): rows r, r + 8.
__device__ __forceinline__ void stage_rows(const float (&acc)[64], uint32_t out, int h, int r,
                                           int pair) {
#pragma unroll
  for (int i = 0; i < 16; ++i) {
    const uint32_t box = out + (2 * h + i / 8) * (64 * 64 * 2);
    const int chunk = i % 8;
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
      const int row = r + 8 * hf;
      const uint32_t addr = box + row * 128 + ((chunk ^ (row & 7)) << 4) + pair * 4;
      __nv_bfloat162 v = __floats2bfloat162_rn(acc[4 * i + 2 * hf], acc[4 * i + 2 * hf + 1]);
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
constexpr int kPlain = 0, kGatedProduct = 1;
// The body, for a __global__ wrapper of Cfg::NTHREADS threads and Cfg::SMEM bytes of dynamic
// shared memory whose TmaDesc parameters are __grid_constant__ (TMA reads the descriptors where
// the launch put them): gemm_tn_sm90_kernel below, or the extern "C" one tnlmc emits.
template <class Cfg = GemmSm90Config, int EPI = kPlain>
__device__ __forceinline__ void gemm_tn_sm90(const TmaDesc &tmA, const TmaDesc &tmB,
                                             const TmaDesc &tmD, const TmaDesc &tmD2,
                                             const TmaDesc &tmP, int M, int N, int K) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using namespace detail;
  constexpr int BM = Cfg::BM, BK = Cfg::BK, STAGES = Cfg::STAGES;
  constexpr int BN = EPI == kGatedProduct ? Cfg::BN / 2 : Cfg::BN; // columns of D per tile
  extern __shared__ __align__(1024) uint8_t smem_raw[];
  const uint32_t raw = smem_u32(smem_raw);
  const uint32_t base = (raw + 1023u) & ~1023u;
  const uint32_t sA = base + Cfg::OFF_A, sB = base + Cfg::OFF_B;
  const uint32_t full = base + Cfg::OFF_BAR, empty = full + STAGES * 8;
  const int tid = threadIdx.x, wg = tid / 128;
  const int tilesN = (N + BN - 1) / BN, tilesM = (M + BM - 1) / BM;
  const int tiles = tilesM * tilesN;
  const int KT = K / BK;
  // Launched as a programmatic dependent of the kernel before it, wait for that kernel's
  // results before reading anything (a no-op otherwise).
  asm volatile("griddepcontrol.wait;\n" ::: "memory");
  if (tid == 0) {
    for (int s = 0; s < STAGES; ++s) {
      mbar_init(full + 8 * s, 1);
      mbar_init(empty + 8 * s, 256); // every consumer thread arrives
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (wg == 0) {
    setmaxnreg_dec<40>();
    if (tid == 0) {
      int it = 0; // K slices issued so far (all tiles)
      for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
        int mt, nt;
        tile_of(t, tilesM, tilesN, Cfg::GROUP_M, mt, nt);
        const int m0 = mt * BM, n0 = nt * BN;
        for (int kt = 0; kt < KT; ++kt, ++it) {
          const int s = it % STAGES;
          if (it >= STAGES)
            mbar_wait(empty + 8 * s, ((it / STAGES) - 1) & 1);
          mbar_expect_tx(full + 8 * s, Cfg::A_STAGE + Cfg::B_STAGE);
          tma_load_2d(sA + s * Cfg::A_STAGE, &tmA, kt * BK, m0, full + 8 * s);
          if constexpr (EPI == kGatedProduct) {
            tma_load_2d(sB + s * Cfg::B_STAGE, &tmB, kt * BK, n0, full + 8 * s);
            tma_load_2d(sB + s * Cfg::B_STAGE + 128 * 128, &tmB, kt * BK, N + n0, full + 8 * s);
          } else {
            tma_load_2d(sB + s * Cfg::B_STAGE, &tmB, kt * BK, n0, full + 8 * s);
          }
        }
      }
    }
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
      for (int kt = 0; kt < KT; ++kt, ++it) {
        const int s = it % STAGES;
        mbar_wait(full + 8 * s, (it / STAGES) & 1);
        const uint32_t a = sA + s * Cfg::A_STAGE + c * 64 * 128;
        const uint32_t b = sB + s * Cfg::B_STAGE;
        fence_regs(acc0);
        fence_regs(acc1);
        wgmma_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          const int accumulate = kt > 0 || kk > 0;
          wgmma_m64n128k16_ss(acc0, kmajor_desc(a + kk * 32), kmajor_desc(b + kk * 32), accumulate);
          wgmma_m64n128k16_ss(acc1, kmajor_desc(a + kk * 32), kmajor_desc(b + 128 * 128 + kk * 32),
                              accumulate);
        }
        wgmma_commit();
        wgmma_wait<1>(); // the group before this one is done: its stage may be refilled
        fence_regs(acc0);
        fence_regs(acc1);
        if (kt > 0)
          mbar_arrive(empty + 8 * ((it - 1) % STAGES));
      }
      wgmma_wait<0>();
      fence_regs(acc0);
      fence_regs(acc1);
      mbar_arrive(empty + 8 * ((it - 1) % STAGES)); // the tile's last slice
      // Epilogue: thread (warp w, lane l) holds rows 16w + l/4 (+8), columns 8i + 2(l%4) (+1).
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

template <class Cfg = GemmSm90Config, int EPI = kPlain>
__global__ void __launch_bounds__(Cfg::NTHREADS, 1)
    gemm_tn_sm90_kernel(const __grid_constant__ TmaDesc tmA, const __grid_constant__ TmaDesc tmB,
                        const __grid_constant__ TmaDesc tmD, const __grid_constant__ TmaDesc tmD2,
                        const __grid_constant__ TmaDesc tmP, int M, int N, int K) {
  gemm_tn_sm90<Cfg, EPI>(tmA, tmB, tmD, tmD2, tmP, M, N, K);
}

} // namespace gemm
} // namespace tnlm
