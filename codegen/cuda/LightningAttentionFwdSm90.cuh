// Lightning Attention forward, Hopper version (sm_90a): warpgroup MMA (wgmma), two warpgroups
// per CTA, warp-specialized. The algorithm, the arguments, the segment plan, the scan kernel and
// the shared device helpers are in LightningAttentionFwd.cuh (the portable mma.sync version);
// this file adds LightningFwdSm90Config, its state and main kernels and their host launcher.
#pragma once

#include "LightningAttentionFwd.cuh"

namespace tnlm {
namespace la {

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
  // The SiLU' fold's pre-activation ring (LightningFwdArgs::oscale), one C x DV tile per stage,
  // loaded with Q/K/V so the stores never wait on global memory; only where it fits in shared
  // memory (3 stages: 225 KB in all). Without it a kernel given oscale traps.
  static constexpr int OFF_S = OFF_KV + DV * DK * 2;
  static constexpr int DECAY_BYTES = ((C + 1) * 4 + 15) / 16 * 16;
  static constexpr bool kScaleRing = OFF_S + STAGES * V_TILE + DECAY_BYTES + 1024 <= 227 * 1024;
  static constexpr int OFF_DECAY = OFF_S + (kScaleRing ? STAGES * V_TILE : 0); // fp32 [C + 1]
  static constexpr int SMEM_MAIN = OFF_DECAY + DECAY_BYTES + 1024;
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
// Eight bf16 o (one 16-byte store) times SiLU'(x) of eight bf16 x, rounded to bf16: per
// element the ops of la_bw::silu_both's slope and la_silu_scale (d = 1 + e^-x, s = 1 / d,
// slope = s (1 + x (1 - s)); bf16(o · slope)), so the folded stores equal that pass bit for bit.
__device__ __forceinline__ uint4 silu_slope_scale8(uint4 o, uint4 x) {
  uint32_t ow[4] = {o.x, o.y, o.z, o.w};
  const uint32_t xw[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const __nv_bfloat162 ob = *reinterpret_cast<const __nv_bfloat162 *>(&ow[i]);
    const __nv_bfloat162 xb = *reinterpret_cast<const __nv_bfloat162 *>(&xw[i]);
    float r[2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const float xv = __bfloat162float(j ? xb.y : xb.x);
      const float d = 1.0f + expf(-xv), sg = 1.0f / d;
      const float slope = sg * (1.0f + xv * (1.0f - sg));
      r[j] = __bfloat162float(j ? ob.y : ob.x) * slope;
    }
    __nv_bfloat162 out;
    out.x = __float2bfloat16(r[0]);
    out.y = __float2bfloat16(r[1]);
    ow[i] = *reinterpret_cast<const uint32_t *>(&out);
  }
  return make_uint4(ow[0], ow[1], ow[2], ow[3]);
}
using mma::fence_regs; // MmaSync.cuh (the float accumulators'); this file's: uint32_t arrays
using mma::wgmma_commit;
using mma::wgmma_fence;
using mma::wgmma_wait;
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
using mma::kmajor_desc; // MmaSync.cuh
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
using mma::wgmma_m64n128k16_ss; // MmaSync.cuh
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
  const __nv_bfloat16 *osg = a.oscale != nullptr ? a.oscale + b * a.os_sb + h * a.os_sh : nullptr;
  if constexpr (!Cfg::kScaleRing)
    if (osg != nullptr) // no S ring in this configuration: the fold is not available
      __trap();
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
    if constexpr (Cfg::kScaleRing)
      if (osg != nullptr)
        load_tile_sw_async<C, DV, WG_THREADS>(s_base + Cfg::OFF_S + st * Cfg::V_TILE,
                                              osg + tok * a.os_sn, a.os_sn, rows, wtid);
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
      constexpr int kStores = C * DV / 8 / WG_THREADS;
#pragma unroll
      for (int it = 0; it < kStores; ++it) {
        const int idx = wtid + it * WG_THREADS;
        const int r = idx / (DV / 8), c = idx % (DV / 8);
        if (r < m) {
          uint4 x = ld_shared_v4(sQ + swz_km<C>(r, c));
          if constexpr (Cfg::kScaleRing)
            if (osg != nullptr) // o · SiLU'(oscale), eight at a time, from this block's S tile
              x = silu_slope_scale8(
                  x, ld_shared_v4(s_base + Cfg::OFF_S + st * Cfg::V_TILE + swz_km<C>(r, c)));
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
          float2 x0, x1;
          if (a.state_t) { // [DV][DK]: element (row, col) at col · DK + row
            x0 = make_float2(__ldcg(ps + col * DK + row), __ldcg(ps + (col + 1) * DK + row));
            x1 = make_float2(__ldcg(ps + col * DK + row + 64),
                             __ldcg(ps + (col + 1) * DK + row + 64));
          } else {
            x0 = __ldcg(reinterpret_cast<const float2 *>(ps + row * DV + col));
            x1 = __ldcg(reinterpret_cast<const float2 *>(ps + (row + 64) * DV + col));
          }
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
// Hopper (sm_90a) version: same arguments and plan (launch_lightning_passes,
// LightningAttentionFwd.cuh).
template <class Cfg>
inline cudaError_t launch_lightning_fwd_sm90(const LightningFwdArgs &a, cudaStream_t stream) {
  static bool configured = false;
  return launch_lightning_passes<Cfg>(lightning_fwd_sm90_state_kernel<Cfg>,
                                      lightning_fwd_sm90_main_kernel<Cfg>, configured, a, stream);
}
#endif // !__CUDACC_RTC__

} // namespace la
} // namespace tnlm
