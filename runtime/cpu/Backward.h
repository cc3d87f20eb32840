//===- Backward.h - CPU kernels of the backward ops and the optimizer -*- C++ -*-===//
//
// The vector-Jacobian products of the forward kernels in Kernels.h and Fused.h, and the
// AdamW update, for the train functions of an artifact (tnlm-autodiff). Same conventions as
// Kernels.h: row-major f32, leading dimensions, f64 row reductions, tnlm::Error on bad user
// data. Gradient formulas: docs/model.md, "Training".
//
// Determinism: every kernel gives bit-identical results for a given input whatever the
// number of threads (work is split over independent outputs; sums over tokens are taken in a
// fixed order), so a resumed training run repeats an uninterrupted one exactly.
//
// `accumulate`: where a kernel takes it, true adds the gradient into the output (dx += …),
// false overwrites it.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CPU_BACKWARD_H
#define TNLM_RUNTIME_CPU_BACKWARD_H

#include <cstdint>

namespace tnlm::cpu {

//===-- Projections ------------------------------------------------------------===//

/// Input gradient of y = x·Wᵀ: dx = dy · W. dy [rows, out] (ld lddy), W [out, in]
/// contiguous, dx [rows, in] (ld lddx).
void linearGradInput(const float *dy, int64_t rows, int64_t out, int64_t lddy, const float *w,
                     int64_t in, float *dx, int64_t lddx, bool accumulate = false);

/// Weight gradient of y = x·Wᵀ: dW = dyᵀ · x summed over all rows. dy [rows, out] (ld lddy),
/// x [rows, in] (ld ldx), dW [out, in] contiguous.
void linearGradWeight(const float *dy, int64_t rows, int64_t out, int64_t lddy, const float *x,
                      int64_t in, int64_t ldx, float *dw, bool accumulate = false);

/// tnlm.gated_linear backward, y = (x·W1ᵀ) ⊙ (x·W2ᵀ) = a ⊙ b: recomputes a and b, then
/// da = dy ⊙ b, db = dy ⊙ a, dW1 = daᵀx, dW2 = dbᵀx, dx = da·W1 + db·W2.
/// x [rows, in] (ldx), W1, W2 [out, in] contiguous, dy [rows, out] (lddy), dx [rows, in]
/// (lddx, overwritten), dW1, dW2 [out, in] contiguous (overwritten). Works on blocks of 256
/// output features with a scratch of 2·rows·min(out, 256) floats (8 MiB for 4096 rows), so
/// the [rows, out] intermediates a, b, da, db never exist whole.
void gatedLinearGrad(const float *x, int64_t rows, int64_t in, int64_t ldx, const float *w1,
                     const float *w2, int64_t out, const float *dy, int64_t lddy, float *dx,
                     int64_t lddx, float *dw1, float *dw2);

//===-- Norms and elementwise ------------------------------------------------------===//

/// SRMSNorm backward, y = x·r, r = rsqrt(mean(x²) + eps) per row of d features:
/// dx = r · (dy − x̂ · mean(x̂ ⊙ dy)), x̂ = x·r (evaluated in f64, r included, rounded once).
/// In place allowed (dx == dy or dx == x, equal leading dimensions).
void srmsNormGrad(const float *x, int64_t ldx, const float *dy, int64_t lddy, int64_t rows,
                  int64_t d, float eps, float *dx, int64_t lddx, bool accumulate = false);

/// tnlm.add_srms_norm backward (sum = a + b, y = SRMSNorm(sum)): the gradient of both a and b,
/// g = dsum + SRMSNorm backward of dy at `sum` (in f64, rounded once). dsum may be null (sum
/// unused). g may alias dsum or dy (equal leading dimensions).
void addSrmsNormGrad(const float *sum, int64_t ldsum, const float *dsum, int64_t lddsum,
                     const float *dy, int64_t lddy, int64_t rows, int64_t d, float eps, float *g,
                     int64_t ldg);

/// SiLU backward: dx = dy · σ(x) · (1 + x·(1 − σ(x))), in f32 (1 − σ(x) without
/// cancellation; x < −88.7, where expf(−x) overflows, gives 0). In place allowed (dx == dy).
void siluGrad(const float *x, int64_t ldx, const float *dy, int64_t lddy, int64_t rows,
              int64_t cols, float *dx, int64_t lddx, bool accumulate = false);

//===-- Embedding and loss ---------------------------------------------------------===//

/// Embedding backward (x = scale · E[ids]): dE[ids[t], :] += scale · dx[t, :] for t < tokens;
/// dE [vocab, d] contiguous, always accumulated into (repeated ids add up, in token order).
/// Ids are checked as in cpu::embedding, all before anything is written (tnlm::Error naming the
/// id and its position). Tokens whose id is `paddingIdx` (>= 0) add nothing, as torch's
/// nn.Embedding(padding_idx=) (the reference's: that row moves only through other paths).
void embeddingGrad(const int32_t *ids, int64_t tokens, const float *dx, int64_t lddx, int64_t d,
                   float scale, int64_t vocab, float *dtable, int64_t paddingIdx = -1);

/// Cross entropy and its gradient in one pass over logits [rows, vocab] contiguous:
/// returns the mean loss over rows whose label is not ignoreIndex (as cpu::crossEntropy) and
/// writes dlogits[r] = dloss · (softmax(logits[r]) − onehot(labels[r])) / counted on counted
/// rows, 0 on ignored rows. `counted` receives the number of counted rows. dlogits may alias
/// logits (in place). Labels are checked as in cpu::crossEntropy before anything is written;
/// the loss is bit-identical to cpu::crossEntropy's (same operations). If every row is
/// ignored the loss is NaN (0/0, as PyTorch) and dlogits is all zeros.
double crossEntropyGrad(const float *logits, const int32_t *labels, int64_t rows, int64_t vocab,
                        int64_t ignoreIndex, float dloss, float *dlogits,
                        int64_t *counted = nullptr);
/// crossEntropyGrad's rows without the count and the mean: labels already checked, k =
/// dloss / counted given (the counted rows of the whole call, for a chunk of its rows);
/// rowLoss[r] = the row's loss (0 on ignored rows). The same operations per row.
void crossEntropyGradRows(const float *logits, const int32_t *labels, int64_t rows, int64_t vocab,
                          int64_t ignoreIndex, double k, float *dlogits, double *rowLoss);

//===-- Token mixer ------------------------------------------------------------------===//

/// LRPE backward (y = [x⊙cos(θp), x⊙sin(θp)], p = t + offset), layout as cpu::lrpe:
///   dx = dy_c ⊙ cos(θp) + dy_s ⊙ sin(θp)                         (dx: ld lddx, overwritten)
///   dθ += Σ_{b,t} p · x ⊙ (dy_s ⊙ cos(θp) − dy_c ⊙ sin(θp))       (dθ [H·dh], accumulated)
/// dy is [B, N, H, 2·dh] contiguous. The angle is float(p)·θ rounded to f32, as in cpu::lrpe.
/// dθ is summed in f64 over fixed chunks of positions, reduced in order and added with one
/// rounding (deterministic); dtheta may be null when θ is not trained.
void lrpeGrad(const float *x, int64_t B, int64_t N, int64_t H, int64_t dh, int64_t ldx,
              const float *theta, int64_t offset, const float *dy, float *dx, int64_t lddx,
              float *dtheta);

/// The LRPE θ gradient in the relative form (the reference for a well-conditioned GPU one,
/// bench/lrpe_theta.cpp): with the rotated planes q' = [qc | qs], k' = [kc | ks] ([B, N, H, 2·dh],
/// cpu::lrpe's layout, token stride ldq / ldk), v and dO ([B, N, H, dv], strides ldv / lddo) of
/// o_n = Σ_{m<=n} λ^(n−m) (q'_n·k'_m) v_m,
///   dθ_(h,c) += −Σ_{m<=n} (n − m) λ^(n−m) (dO_n·v_m) (qs_n,c kc_m,c − qc_n,c ks_m,c),
/// which equals cpu::lrpeGrad's dθ over the q and k sides in exact arithmetic. That form sums
/// absolute positions p on each side, and the two sides cancel (each ~86x |dθ| at 8192 tokens),
/// so one bf16 rounding of its inputs is amplified about N-fold; here every weight (n − m) is a
/// relative distance. By blocks of `block` tokens with two f64 states per head, S = Σ_{m<t}
/// λ^(t−1−m) v_m k'_mᵀ and T = Σ_{m<t} (t−1−m) λ^(t−1−m) v_m k'_mᵀ: token n of the block that
/// starts at t0 takes λ^r (T + r·S) from before it (r = n − t0 + 1) and the block's own pairs
/// directly; at the block's end (m tokens) S ← λ^m S + ..., T ← λ^m (T + m·S) + ... (all weights
/// non-negative). dθ [H·dh] is accumulated (one f32 rounding).
void lrpeThetaGradRelative(const float *q, const float *k, const float *v, const float *dout,
                           int64_t B, int64_t N, int64_t H, int64_t dh, int64_t dv, int64_t ldq,
                           int64_t ldk, int64_t ldv, int64_t lddo, const float *slopes,
                           int64_t block, float *dtheta);

/// Backward of cpu::decayLinearAttentionRecurrent (S_0 = 0) by the reverse recurrence:
///   forward S_t = λ S_{t−1} + k_tᵀ v_t;  dq_t = do_t S_tᵀ
///   reverse dS_t = λ dS_{t+1} + q_tᵀ do_t;  dk_t = v_t dS_tᵀ;  dv_t = k_t dS_t
/// Operands as in the forward (each with its own token stride); dq, dk, dv overwritten.
void decayLinearAttentionGradRecurrent(const float *q, const float *k, const float *v, int64_t B,
                                       int64_t N, int64_t H, int64_t dk, int64_t dv, int64_t ldq,
                                       int64_t ldk, int64_t ldv, const float *slopes,
                                       const float *dout, int64_t lddo, float *dq, int64_t lddq,
                                       float *dkk, int64_t lddk, float *dvv, int64_t lddv);

/// The same gradients by the blocked Lightning Attention backward (docs/model.md, Algorithm 2)
/// with block size `block` (> 0; a last block shorter than `block` uses its length m):
///   forward over blocks:  dQ_t = ((dO_t V_tᵀ) ⊙ M) K_t + Λ dO_t KVᵀ;  KV update as forward
///   reverse over blocks:  dK_t = ((dO_t V_tᵀ) ⊙ M)ᵀ Q_t + (λ^m Λ⁻¹ V_t) dKVᵀ
///                         dV_t = ((Q_t K_tᵀ) ⊙ M)ᵀ dO_t + (λ^m Λ⁻¹ K_t) dKV
///                         dKV  = λ^m dKV + (Λ Q_t)ᵀ dO_t
/// Decay factors λ^r = exp(−s·r) in f64 rounded once to f32, as in the forward; products are
/// sgemm calls; KV and dKV are f32.
void lightningAttentionGrad(const float *q, const float *k, const float *v, int64_t B, int64_t N,
                            int64_t H, int64_t dk, int64_t dv, int64_t ldq, int64_t ldk,
                            int64_t ldv, const float *slopes, const float *dout, int64_t lddo,
                            float *dq, int64_t lddq, float *dkk, int64_t lddk, float *dvv,
                            int64_t lddv, int64_t block);

/// f32 columns per row of the workspace fusedLightningAttentionGrad needs:
/// q', k', dq', dk' (H·dk each; dk = 2·dh with LRPE, else dh) and O, dO (D each).
inline int64_t fusedAttentionGradWorkspaceCols(int64_t H, int64_t dh, bool lrpe) {
  const int64_t dk = lrpe ? 2 * dh : dh;
  return 4 * H * dk + 2 * H * dh;
}

/// Backward of cpu::fusedLightningAttention (tnlm.lightning_attention), same operands:
/// y = u ⊙ SRMSNorm(O), O = LightningAttention(q', k', v), q' = LRPE(φ(q)), k' = LRPE(φ(k)).
/// Recomputes q', k' and O from qkvu (nothing of the forward is saved but qkvu), then
///   du = dy ⊙ SRMSNorm(O);  dO = SRMSNorm backward (over all D features) of dy ⊙ u at O;
///   dq', dk', dv by lightningAttentionGrad (block `block`);
///   dq = φ'(q) ⊙ LRPE backward of dq' (and dk likewise); dθ += the LRPE θ gradient of q and k.
/// dqkvu [B·N, 4·D] (ld lddqkvu, overwritten: dq, dk, dv, du at columns 0, D, 2D, 3D);
/// dtheta [H·dh] accumulated, only with theta (may be null). workspace: [B·N,
/// fusedAttentionGradWorkspaceCols] contiguous, always required (O and dO live there); without
/// SiLU and LRPE, q and k are read in place and dq', dk' go straight to dqkvu. dqkvu must not
/// overlap qkvu, dy or the workspace. Bad slopes or block size throw tnlm::Error before
/// anything is written.
void fusedLightningAttentionGrad(const float *qkvu, int64_t ldqkvu, int64_t B, int64_t N, int64_t H,
                                 int64_t dh, bool silu, const float *theta, int64_t offset,
                                 const float *slopes, int64_t block, float eps, const float *dy,
                                 int64_t lddy, float *workspace, float *dqkvu, int64_t lddqkvu,
                                 float *dtheta);

//===-- Optimizer ------------------------------------------------------------------===//

/// Σ x² over n contiguous floats, in f64 (fixed summation order: deterministic): per fixed
/// chunk of 2^16 floats, then over the chunks in index order.
double sumSquares(const float *x, int64_t n);

/// One AdamW step on n contiguous floats, exactly as torch.optim.AdamW (docs/model.md), on the
/// gradient g·gradScale (gradScale folds clipping and the 1/k of k accumulated micro-batches):
///   p ← p·(1 − lr·wd);  m ← β1 m + (1−β1) g;  v ← β2 v + (1−β2) g²
///   p ← p − (lr / (1 − β1^t)) · m / (sqrt(v / (1 − β2^t)) + eps),   t = step ≥ 1
/// Bias corrections are computed in f64 from t; per-element arithmetic in f32, in the order of
/// torch's single-tensor path (denominator sqrt(v)/sqrt(1 − β2^t) + eps; Optimizer.cpp). The
/// hyperparameters are f32, so 1 − β carries the rounding of β (0.999f: 1.3e-5 relative),
/// unlike PyTorch's f64 Python scalars. step < 1 throws tnlm::Error.
void adamw(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1,
           float beta2, float eps, float weightDecay, float gradScale, int64_t step);

} // namespace tnlm::cpu

#endif // TNLM_RUNTIME_CPU_BACKWARD_H
