//===- MmaSync.cuh - ldmatrix, mma.sync m16n8k16 and wgmma: the tensor-core calls ---===//
//
// The tensor-core primitives the Lightning kernels share (sm_80 and up; the forward's
// mma.sync path in LightningAttentionFwd.cuh and the dθ kernel in
// LightningAttentionGradParts.cuh): shared-memory addresses, four 8 x 8 bf16 matrices from shared
// memory (lane l gives the row address of matrix l / 8; _t: transposed), and d += a (16 x 16, row)
// · b (16 x 8, col) with bf16 operands and fp32 accumulators (d's elements: row lane / 4, columns
// 2 (lane % 4) + 0, 1, then the same 8 rows below). No includes: compiled alone by NVRTC.
// Include guards, not #pragma once: it is included by two names ("MmaSync.cuh" by its
// neighbours, "tnlm/MmaSync.cuh" by generated sources), which NVRTC takes for two files.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_CODEGEN_CUDA_MMASYNC_CUH
#define TNLM_CODEGEN_CUDA_MMASYNC_CUH

namespace tnlm {
namespace mma {

// The shared-memory address of p (what ldmatrix, cp.async and st.shared take).
__device__ __forceinline__ unsigned smem_u32(const void *p) {
  return static_cast<unsigned>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldsm_x4(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(unsigned (&r)[4], unsigned addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void mma16816(float (&d)[4], const unsigned (&a)[4], unsigned b0,
                                         unsigned b1) {
  asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, "
               "{%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Hopper's warpgroup MMA (sm_90a: the Lightning forward's passes, LightningAttentionFwdSm90.cuh,
// and the GEMM of our own, GemmSm90.cuh): fences, groups, accumulator pins, the 128-byte
// swizzled K-major shared-memory descriptor and D(64 x 128) (+)= A · B from two such tiles.
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
__device__ __forceinline__ unsigned long long kmajor_desc(unsigned saddr) {
  return static_cast<unsigned long long>((saddr & 0x3FFFF) >> 4) | (1ull << 16) | (64ull << 32) |
         (1ull << 62);
}
// An MN-major operand (its M or N contiguous: a row-major [K, N] B), 128-byte swizzled as TMA
// writes boxes of 64 elements x rows of K: each K row is 128 bytes of 64 consecutive N, groups of
// 8 K rows 1024 bytes apart (the stride byte offset), the next 64 N `chunk` bytes on (the
// leading byte offset; PTX ISA, "Matrix Descriptor": MN-major, swizzled).
__device__ __forceinline__ unsigned long long mnmajor_desc(unsigned saddr, unsigned chunk) {
  return static_cast<unsigned long long>((saddr & 0x3FFFF) >> 4) |
         (static_cast<unsigned long long>((chunk >> 4) & 0x3FFF) << 16) | (64ull << 32) |
         (1ull << 62);
}
// The 64 accumulator operands of an m64n128 wgmma, with constraint C.
#define TNLM_WGMMA_ACC64(C)                                                                        \
  C(d[0]), C(d[1]), C(d[2]), C(d[3]), C(d[4]), C(d[5]), C(d[6]), C(d[7]), C(d[8]), C(d[9]),        \
      C(d[10]), C(d[11]), C(d[12]), C(d[13]), C(d[14]), C(d[15]), C(d[16]), C(d[17]), C(d[18]),    \
      C(d[19]), C(d[20]), C(d[21]), C(d[22]), C(d[23]), C(d[24]), C(d[25]), C(d[26]), C(d[27]),    \
      C(d[28]), C(d[29]), C(d[30]), C(d[31]), C(d[32]), C(d[33]), C(d[34]), C(d[35]), C(d[36]),    \
      C(d[37]), C(d[38]), C(d[39]), C(d[40]), C(d[41]), C(d[42]), C(d[43]), C(d[44]), C(d[45]),    \
      C(d[46]), C(d[47]), C(d[48]), C(d[49]), C(d[50]), C(d[51]), C(d[52]), C(d[53]), C(d[54]),    \
      C(d[55]), C(d[56]), C(d[57]), C(d[58]), C(d[59]), C(d[60]), C(d[61]), C(d[62]), C(d[63])
#define TNLM_WGMMA_M64N128K16_REGS                                                                 \
  "{%0,%1,%2,%3,%4,%5,%6,%7,%8,%9,%10,%11,%12,%13,%14,%15,%16,%17,%18,%19,%20,%21,%22,%23,%24,%"   \
  "25,%26,%27,%28,%29,%30,%31,%32,%33,%34,%35,%36,%37,%38,%39,%40,%41,%42,%43,%44,%45,%46,%47,%"   \
  "48,%49,%50,%51,%52,%53,%54,%55,%56,%57,%58,%59,%60,%61,%62,%63}, %64, %65, "
// D(64x128) (+)= A(64x16, smem desc) · B(16x128, smem desc), A K-major, B K-major (TRANS_B = 0)
// or N-major (TRANS_B = 1: mnmajor_desc).
template <int TRANS_B = 0>
__device__ __forceinline__ void wgmma_m64n128k16_ss(float (&d)[64], unsigned long long da,
                                                    unsigned long long db, int accumulate) {
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " TNLM_WGMMA_M64N128K16_REGS
               "p, 1, 1, 0, %67;\n}\n"
               : TNLM_WGMMA_ACC64("+f")
               : "l"(da), "l"(db), "r"(accumulate), "n"(TRANS_B));
}
// D(64x128) = A · B, D's previous values neither read nor kept live (a tile's first k-step:
// the registers are free for other use before it).
template <int TRANS_B = 0>
__device__ __forceinline__ void wgmma_m64n128k16_ss_first(float (&d)[64], unsigned long long da,
                                                          unsigned long long db) {
  asm volatile("{\n.reg .pred p;\n.reg .b32 z;\nmov.b32 z, 0;\nsetp.ne.b32 p, z, 0;\n"
               "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 " TNLM_WGMMA_M64N128K16_REGS
               "p, 1, 1, 0, %66;\n}\n"
               : TNLM_WGMMA_ACC64("=f")
               : "l"(da), "l"(db), "n"(TRANS_B));
}
#undef TNLM_WGMMA_M64N128K16_REGS
#undef TNLM_WGMMA_ACC64

} // namespace mma
} // namespace tnlm

#endif // TNLM_CODEGEN_CUDA_MMASYNC_CUH
