//===- Fused.h - CPU kernels of the fused tnlm ops --------------*- C++ -*-===//
//
// The CPU side of the fusion passes (docs/passes.md): one kernel per fused op, same
// conventions as Kernels.h (row-major f32, leading dimensions, f64 row reductions, errors
// as tnlm::Error). Each computes exactly the unfused chain it replaces, in the same f32
// rounding steps, except where a comment says otherwise.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CPU_FUSED_H
#define TNLM_RUNTIME_CPU_FUSED_H

#include <cstdint>

namespace tnlm::cpu {

/// tnlm.add_srms_norm: sum = a + b (rounded to f32), y = sum · rsqrt(mean(sum²) + eps) with
/// the mean of squares in f64, per row of d features. `sum` may alias a or b (equal
/// leading dimensions); y must not alias sum.
void addSrmsNorm(const float *a, const float *b, int64_t rows, int64_t d, int64_t lda, int64_t ldb,
                 float eps, float *sum, int64_t ldsum, float *y, int64_t ldy);

/// tnlm.gated_linear: y = (x·W1ᵀ) ⊙ (x·W2ᵀ), x [rows, in] (ld ldx), W1 and W2 [out, in]
/// contiguous, y [rows, out] (ld ldy). Work is split into tiles of rows × outputs; per tile
/// the first product is written into y, the second into a tile-sized scratch and multiplied
/// in while both are in cache, so the two [rows, out] intermediates never exist.
void gatedLinear(const float *x, int64_t rows, int64_t in, int64_t ldx, const float *w1,
                 const float *w2, int64_t out, float *y, int64_t ldy);

/// Bytes of f32 workspace fusedLightningAttention needs per row: 2·H·dk·4 when there is a
/// prologue (SiLU or LRPE), else 0; dk = 2·dh with LRPE.
inline int64_t fusedAttentionWorkspaceCols(int64_t H, int64_t dh, bool silu, bool lrpe) {
  return (silu || lrpe) ? 2 * H * (lrpe ? 2 * dh : dh) : 0;
}

/// tnlm.lightning_attention on [B, N] tokens. qkvu is [B·N, 4·D] (ld ldqkvu, D = H·dh):
/// q, k, v, u at columns 0, D, 2D, 3D. Computes
///   prologue  q', k' = LRPE(φ(q)), LRPE(φ(k))   φ = SiLU if silu; LRPE iff theta != nullptr
///             (θ [H·dh], positions t + offset) into workspace [B·N, 2·H·dk] contiguous
///             (q' then k' per row), exactly as cpu::silu then cpu::lrpe;
///   attention O = cpu::lightningAttention(q', k', v) with block `block`, slopes per head;
///   epilogue  y = u ⊙ (O · rsqrt(mean over all D features of O² + eps)), per row, in place
///             in y (the cross-head norm runs once all heads of the row are done).
/// Without a prologue q and k are read in place and `workspace` may be null.
void fusedLightningAttention(const float *qkvu, int64_t ldqkvu, int64_t B, int64_t N, int64_t H,
                             int64_t dh, bool silu, const float *theta, int64_t offset,
                             const float *slopes, int64_t block, float eps, float *workspace,
                             float *y, int64_t ldy);

} // namespace tnlm::cpu

#endif // TNLM_RUNTIME_CPU_FUSED_H
