//===- Recurrent.h - CPU kernels of recurrent inference ---------*- C++ -*-===//
//
// Prefill and decode of the fused token mixer (tnlm.lightning_prefill, tnlm.lightning_decode)
// for generation at constant memory per token (docs/model.md, "Recurrent form", Algorithm 4),
// and the gather of each sequence's last position before the LM head. Same conventions as
// Kernels.h and Fused.h: row-major f32, leading dimensions, f64 row reductions, tnlm::Error on
// bad data; every kernel is deterministic whatever the number of threads.
//
// Slots. A batch of B sequences is B independent slots; each slot has its own fp32 state
// S[b] of [H, dk, dv] (dk = 2·dh with LRPE, else dh), layout [B, H, dk, dv] contiguous, and
// its own length or position. A slot with length 0 (prefill) or a negative position (decode)
// is inactive: its state is left exactly as it was and its output rows are written as zeros,
// so one slot can be refilled with a new prompt while the others keep their state.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CPU_RECURRENT_H
#define TNLM_RUNTIME_CPU_RECURRENT_H

#include <cstdint>

namespace tnlm::cpu {

/// Prefill of tnlm.lightning_prefill on ids padded to [B, N] (qkvu [B·N, 4·D], ld ldqkvu,
/// D = H·dh, q, k, v, u at columns 0, D, 2D, 3D): for every slot b with lengths[b] > 0
/// (lengths[b] ≤ N), the tokens t < lengths[b] at positions t (LRPE angle float(t)·θ, as
/// cpu::lrpe) go through exactly the computation of cpu::fusedLightningAttention (φ = SiLU if
/// silu, LRPE iff theta, blocked Lightning Attention with block `block` from a zero state, then
/// y = u ⊙ SRMSNorm(O) over all D features), rows t ≥ lengths[b] of y are zero, and state[b]
/// receives the final state S after lengths[b] tokens (the state the decode loop continues
/// from). Slots with lengths[b] == 0 are untouched (state and zero rows). lengths outside
/// [0, N] throw tnlm::Error naming the slot. workspace: [B·N, 2·H·dk] f32 contiguous when
/// silu or theta, else may be null (only rows t < lengths[b] are written). The rows of an
/// active slot equal fusedLightningAttention's on that slot alone (the zeroed initial state
/// can at most flip the sign of a zero). Lengths, slopes (finite, >= 0), block (> 0) and the
/// workspace are all checked before anything is written. Parallel over (slot, head).
void lightningPrefill(const float *qkvu, int64_t ldqkvu, int64_t B, int64_t N, int64_t H,
                      int64_t dh, bool silu, const float *theta, const int32_t *lengths,
                      const float *slopes, int64_t block, float eps, float *workspace, float *state,
                      float *y, int64_t ldy);

/// One decode step of tnlm.lightning_decode for B slots, one token each (qkvu [B, 4·D], ld
/// ldqkvu): for every slot b with positions[b] ≥ 0, q, k = LRPE(φ(q)), LRPE(φ(k)) at position
/// positions[b], then the robust recurrence S ← λ_h S + kᵀv (per head, S = state[b] in f32,
/// the update evaluated in f64 as cpu::decayLinearAttentionRecurrent does), o = q S, and
/// y[b] = u ⊙ SRMSNorm(o) over all D features. Slots with a negative position are inactive
/// (state untouched, y[b] = 0). The result equals the prefill's output row and state at that
/// position up to f32 rounding (blocked vs recurrent evaluation order). Any position p >= 0
/// is accepted; its LRPE angle is float(p)·θ (exact below 2^24, as in the prefill). Slopes
/// are checked before anything is written. No workspace: per-task scratch only.
void lightningDecode(const float *qkvu, int64_t ldqkvu, int64_t B, int64_t H, int64_t dh, bool silu,
                     const float *theta, const int32_t *positions, const float *slopes, float eps,
                     float *state, float *y, int64_t ldy);

/// out[b, :] = x[b·N + lengths[b] − 1, :] for lengths[b] ≥ 1, zeros for lengths[b] == 0:
/// x [B·N, d] (ld ldx), out [B, d] (ld ldout). lengths outside [0, N] throw tnlm::Error.
void gatherLastRows(const float *x, int64_t ldx, int64_t B, int64_t N, int64_t d,
                    const int32_t *lengths, float *out, int64_t ldout);

} // namespace tnlm::cpu

#endif // TNLM_RUNTIME_CPU_RECURRENT_H
