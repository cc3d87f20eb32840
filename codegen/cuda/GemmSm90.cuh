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

__device__ __forceinline__ uint32_t smem_addr(const void *p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
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
// K-major shared memory descriptor, 128-byte swizzle, 8-row groups 1024 bytes apart.
__device__ __forceinline__ uint64_t kdesc(uint32_t saddr) {
  return static_cast<uint64_t>((saddr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) |
         (1ull << 62);
}
__device__ __forceinline__ void wg_fence() {
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void wg_commit() {
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void wg_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
template <int N> __device__ __forceinline__ void pin(float (&d)[N]) {
#pragma unroll
  for (int i = 0; i < N; ++i)
    asm volatile("" : "+f"(d[i])::"memory");
}
// D(64x128) (+)= A(64x16) · B(16x128), both K-major in shared memory.
__device__ __forceinline__ void mma_m64n128k16(float (&d)[64], uint64_t da, uint64_t db, int acc) {
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
      : "l"(da), "l"(db), "r"(acc));
}

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
  const uint32_t raw = smem_addr(smem_raw);
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
        pin(acc0);
        pin(acc1);
        wg_fence();
#pragma unroll
        for (int kk = 0; kk < BK / 16; ++kk) {
          const int accumulate = kt > 0 || kk > 0;
          mma_m64n128k16(acc0, kdesc(a + kk * 32), kdesc(b + kk * 32), accumulate);
          mma_m64n128k16(acc1, kdesc(a + kk * 32), kdesc(b + 128 * 128 + kk * 32), accumulate);
        }
        wg_commit();
        wg_wait<1>(); // the group before this one is done: its stage may be refilled
        pin(acc0);
        pin(acc1);
        if (kt > 0)
          mbar_arrive(empty + 8 * ((it - 1) % STAGES));
      }
      wg_wait<0>();
      pin(acc0);
      pin(acc1);
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
