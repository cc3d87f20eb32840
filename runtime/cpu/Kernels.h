//===- Kernels.h - CPU reference kernels of the TransNormerLLM ops ----*- C++ -*-===//
//
// The CPU backend's kernels: plain C++17 over flat f32 buffers, GEMMs through OpenBLAS, work
// split through the pool in runtime/cpu/Parallel.h. The math of every kernel is the numeric
// contract in docs/model.md; each has a naive f64 comparison in test/unit/cpu.
//
// Conventions
// - All tensors are row-major f32. A 2-D operand [rows, cols] is read with a leading
//   dimension `ld` (elements between the starts of consecutive rows, ld >= cols), so the
//   q/k/v/u column blocks of a fused qkvu projection output [tokens, 4D] are used in place:
//   q = qkvu, k = qkvu + D, v = qkvu + 2D, u = qkvu + 3D, all with ld = 4D.
// - Attention operands are [B, N, H, d] as a token-major matrix [B·N, ld]: token (b, t) is
//   row b·N + t and head h occupies columns [h·d, (h+1)·d) of that row.
// - Accumulation is f32 or better: reductions over a row (norms, logsumexp, loss) use f64
//   accumulators; GEMMs are OpenBLAS sgemm (f32 accumulation).
// - Outputs must not overlap inputs unless a kernel says so. Elementwise kernels and srmsNorm
//   may run in place (y == x with equal leading dimensions).
// - A problem with user data (token id or label out of range, bad decay rate) throws
//   tnlm::Error with a message naming the value and its position; nothing aborts.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CPU_KERNELS_H
#define TNLM_RUNTIME_CPU_KERNELS_H

#include "runtime/cpu/Parallel.h"

#include <cstdint>

namespace tnlm::cpu {

//===-- Embedding, norm, projection -------------------------------------------===//

/// out[t, :] = scale · table[ids[t], :] for t < tokens; table is [vocab, d], out is
/// [tokens, d] contiguous. Every id is checked before anything is written: an id outside
/// [0, vocab) throws tnlm::Error naming the id and its position.
void embedding(const int32_t *ids, int64_t tokens, const float *table, int64_t vocab, int64_t d,
               float scale, float *out);

/// SRMSNorm: y[r, :] = x[r, :] · rsqrt(mean(x[r, :]²) + eps). The mean of squares is
/// accumulated in f64, the scale applied in f32. A zero row gives zeros (eps > 0). In place
/// allowed.
void srmsNorm(const float *x, int64_t rows, int64_t d, int64_t ldx, float eps, float *y,
              int64_t ldy);

/// y = x · Wᵀ (nn.Linear without bias): x [rows, in] (ld ldx), W [out, in] contiguous,
/// y [rows, out] (ld ldy). With accumulate = true, y += x · Wᵀ (a fused residual add).
/// sgemm (sgemv for one row) per thread on a slice of rows, or of outputs when rows are few.
void linear(const float *x, int64_t rows, int64_t in, int64_t ldx, const float *w, int64_t out,
            float *y, int64_t ldy, bool accumulate = false);

//===-- Elementwise on [rows, cols] -------------------------------------------===//

/// y = x · sigmoid(x) = x / (1 + exp(−x)) (the reference's SiLU). In place allowed.
void silu(const float *x, int64_t rows, int64_t cols, int64_t ldx, float *y, int64_t ldy);

/// y = a ⊙ b. In place allowed (y == a or y == b).
void mul(const float *a, const float *b, int64_t rows, int64_t cols, int64_t lda, int64_t ldb,
         float *y, int64_t ldy);

/// y = a + b. In place allowed (y == a or y == b).
void add(const float *a, const float *b, int64_t rows, int64_t cols, int64_t lda, int64_t ldb,
         float *y, int64_t ldy);

/// The SGLU product (x·W1ᵀ) ⊙ (x·W2ᵀ): the same operation as mul.
inline void sgluProduct(const float *a, const float *b, int64_t rows, int64_t cols, int64_t lda,
                        int64_t ldb, float *y, int64_t ldy) {
  mul(a, b, rows, cols, lda, ldb, y, ldy);
}

//===-- Token mixer --------------------------------------------------------===//

/// LRPE: for x [B, N, H, dh] (token stride ldx elements, head h at columns h·dh), θ [H·dh]
/// (the checkpoint's [H, 1, dh]) and positions p = t + offset:
///   y[b, t, h, :] = concat(x ⊙ cos(θ_h·p), x ⊙ sin(θ_h·p)),  y [B, N, H, 2·dh] contiguous.
/// Exact arithmetic (matches an f32 PyTorch run): the angle is the f32 product float(p) · θ
/// (float(p) is exact for p < 2^24), then cosf/sinf of that f32 angle (glibc, < 1 ulp), then
/// one f32 multiply. The result therefore depends on p only through float(p)·θ, and
/// lrpe(x[t0:], offset = t0) equals lrpe(x)[t0:] bit for bit.
void lrpe(const float *x, int64_t B, int64_t N, int64_t H, int64_t dh, int64_t ldx,
          const float *theta, int64_t offset, float *y);

/// Causal linear attention with decay, by the recurrence (docs/model.md, Algorithm 4):
///   S_t = λ_h S_{t−1} + k_tᵀ v_t ;  o_t = q_t S_t,  λ_h = exp(−slopes[h]),
/// per (b, h), parallel over (b, h). q, k: [B, N, H, dk], v, o: [B, N, H, dv], each with its
/// own token stride. S is stored in f32; the update λ·S + k v and the product q·S are
/// evaluated in f64 with λ = exp(−s) in f64, so λ is never rounded to f32 (for s < 6e-8 it
/// would round to 1 and drop the decay).
/// state: nullptr (S_0 = 0), or [B, H, dk, dv] holding S_0 on entry and S_N on exit: the
/// per-layer cache of recurrent decoding (N = 1 per step), seeded by a prefill.
/// slopes must be finite and >= 0 (tnlm::Error otherwise).
void decayLinearAttentionRecurrent(const float *q, const float *k, const float *v, int64_t B,
                                   int64_t N, int64_t H, int64_t dk, int64_t dv, int64_t ldq,
                                   int64_t ldk, int64_t ldv, const float *slopes, float *o,
                                   int64_t ldo, float *state = nullptr);

/// The same function by the blocked Lightning Attention forward (docs/model.md), block size
/// `block` (> 0), per (b, h) over blocks of m = min(block, rest) tokens:
///   O  = ((Q Kᵀ) ⊙ M) V + Λ Q KV          M[i,j] = λ^{i−j} (i ≥ j), Λ = diag(λ¹ … λ^m)
///   KV = λ^m KV + (λ^m Λ⁻¹ K)ᵀ V          (λ^m Λ⁻¹)_ii = λ^{m−1−i}, rows 0-indexed
/// Every decay factor is λ^r = exp(−s·r) evaluated in f64 and rounded once to f32: never a
/// product of λ's and never a division by a power of λ (overflow for large r, docs/model.md).
/// The four products are sgemm calls on in-place operand views; KV is f32. `state` as in
/// decayLinearAttentionRecurrent (the prefill hands its final KV to the decode loop).
void lightningAttention(const float *q, const float *k, const float *v, int64_t B, int64_t N,
                        int64_t H, int64_t dk, int64_t dv, int64_t ldq, int64_t ldk, int64_t ldv,
                        const float *slopes, float *o, int64_t ldo, int64_t block,
                        float *state = nullptr);

//===-- Head and loss ---------------------------------------------------------===//

/// y[r, :] = x[r, :] − logsumexp(x[r, :]) (max-shifted, sum in f64). In place allowed.
void logSoftmax(const float *x, int64_t rows, int64_t cols, int64_t ldx, float *y, int64_t ldy);

/// Mean over rows r with labels[r] != ignoreIndex of logsumexp(logits[r, :]) −
/// logits[r, labels[r]]; logits [rows, vocab] contiguous (f64 accumulation, deterministic
/// for any thread count). A label outside [0, vocab) that is not ignoreIndex throws
/// tnlm::Error naming it and its row. If every row is ignored the mean is NaN (0/0, as in
/// PyTorch). `counted`, if given, receives the number of rows that entered the mean, so a
/// caller can combine batches: sum = mean · counted.
double crossEntropy(const float *logits, const int32_t *labels, int64_t rows, int64_t vocab,
                    int64_t ignoreIndex = -100, int64_t *counted = nullptr);
/// crossEntropy's rows without the count and the mean (labels already checked): rowLoss[r] =
/// the row's loss, 0 on ignored rows.
void crossEntropyRows(const float *logits, const int32_t *labels, int64_t rows, int64_t vocab,
                      int64_t ignoreIndex, double *rowLoss);

} // namespace tnlm::cpu

#endif // TNLM_RUNTIME_CPU_KERNELS_H
