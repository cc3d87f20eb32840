//===- MmaSync.cuh - ldmatrix and mma.sync m16n8k16: the warp-level tensor-core calls ---===//
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

} // namespace mma
} // namespace tnlm

#endif // TNLM_CODEGEN_CUDA_MMASYNC_CUH
