//===- Recurrent.cpp - prefill and decode of the fused token mixer --------===//
//
// Recurrent inference (docs/model.md, "Recurrent form"): the prompt of every slot runs
// through the blocked Lightning Attention of fusedLightningAttention and leaves its final
// state S = Σ_s λ^{L−1−s} k'_sᵀ v_s in the slot; each decode step then costs O(H·dk·dv):
//   S ← λ S + k'ᵀ v,   o = q' S,   y = u ⊙ SRMSNorm(o).
// The prologue (φ, LRPE) and the epilogue (norm over all D features, gate) use the same f32
// rounding steps as fusedLightningAttention (Fused.cpp), so a prefill row equals the fused
// kernel's row, and the recurrence update is the one of decayLinearAttentionRecurrent
// (Attention.cpp). Work is split over independent (slot, head) pairs or rows only, so no
// result depends on the thread count.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Recurrent.h"

#include "runtime/cpu/Kernels.h"

#include "runtime/Error.h"
#include "runtime/cpu/RowMath.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace tnlm::cpu {
namespace {

using detail::rowGrain;
using detail::rstdOf;

void checkSlopes(const char *op, const float *slopes, int64_t H) {
  for (int64_t h = 0; h < H; ++h)
    if (!std::isfinite(slopes[h]) || slopes[h] < 0.0f)
      throw Error(std::string(op) + ": decay slope " + std::to_string(slopes[h]) + " of head " +
                  std::to_string(h) + " is not finite and >= 0");
}

// Every length is checked before anything is written, so a bad batch leaves all state intact.
void checkLengths(const char *op, const int32_t *lengths, int64_t B, int64_t N) {
  for (int64_t b = 0; b < B; ++b)
    if (lengths[b] < 0 || lengths[b] > N)
      throw Error(std::string(op) + ": length " + std::to_string(lengths[b]) + " of slot " +
                  std::to_string(b) + " is outside [0, " + std::to_string(N) + "]");
}

// cos/sin of the LRPE angles float(p)·θ_i for n features: one f32 product, then cosf/sinf of
// that f32 angle, exactly as cpu::lrpe (so decode at p equals prefill at t = p bit for bit).
void lrpeAngles(float p, const float *theta, int64_t n, float *cosv, float *sinv) {
  for (int64_t i = 0; i < n; ++i) {
    const float angle = p * theta[i];
    cosv[i] = std::cos(angle);
    sinv[i] = std::sin(angle);
  }
}

// φ then LRPE of one head's dh features x into dst: [x'⊙cos, x'⊙sin] (2·dh) with LRPE, else
// x' (dh), x' = SiLU(x) = x / (1 + exp(−x)) if silu (as cpu::silu; x → −∞ gives −0).
void prologueHead(const float *x, int64_t dh, bool silu, const float *cosv, const float *sinv,
                  float *dst) {
  for (int64_t c = 0; c < dh; ++c) {
    float v = x[c];
    if (silu)
      v = v / (1.0f + std::exp(-v));
    if (cosv) {
      dst[c] = v * cosv[c];
      dst[dh + c] = v * sinv[c];
    } else {
      dst[c] = v;
    }
  }
}

// y = u ⊙ (o · rsqrt(mean(o²) + eps)) over the D features of one row, in place in y: the
// fused epilogue, in the order of the unfused mul(u, srms_norm(O)).
void normGateRow(float *yr, const float *ur, int64_t D, float eps) {
  const float rstd = rstdOf(yr, D, eps);
  for (int64_t c = 0; c < D; ++c)
    yr[c] = ur[c] * (yr[c] * rstd);
}

} // namespace

void lightningPrefill(const float *qkvu, int64_t ldqkvu, int64_t B, int64_t N, int64_t H,
                      int64_t dh, bool silu, const float *theta, const int32_t *lengths,
                      const float *slopes, int64_t block, float eps, float *workspace, float *state,
                      float *y, int64_t ldy) {
  static const char *op = "lightning_prefill";
  if (B <= 0)
    return;
  checkLengths(op, lengths, B, N);
  checkSlopes(op, slopes, H);
  if (block <= 0)
    throw Error(std::string(op) + ": block size " + std::to_string(block) + " must be positive");
  const bool prologue = silu || theta;
  if (prologue && !workspace)
    throw Error(std::string(op) + ": the SiLU/LRPE prologue needs a workspace");
  if (N <= 0 || H <= 0 || dh <= 0)
    return;
  const int64_t D = H * dh, dk = theta ? 2 * dh : dh, dv = dh, rows = B * N;

  // Prologue over the valid rows: q' and k' side by side in the workspace row, [2, H, dk],
  // at positions t (offset 0), as fusedLightningAttention's prologue.
  const float *q = qkvu, *k = qkvu + D;
  int64_t ldq = ldqkvu, ldk = ldqkvu;
  if (prologue) {
    const int64_t ldw = 2 * H * dk;
    parallelFor(rows, rowGrain(2 * ldw), [&](int64_t r0, int64_t r1) {
      std::vector<float> cosv(theta ? D : 0), sinv(theta ? D : 0);
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t t = r % N;
        if (t >= lengths[r / N])
          continue;
        if (theta)
          lrpeAngles(static_cast<float>(t), theta, D, cosv.data(), sinv.data());
        for (int64_t part = 0; part < 2; ++part) {
          const float *src = qkvu + r * ldqkvu + part * D;
          float *dst = workspace + r * ldw + part * H * dk;
          for (int64_t h = 0; h < H; ++h)
            prologueHead(src + h * dh, dh, silu, theta ? cosv.data() + h * dh : nullptr,
                         theta ? sinv.data() + h * dh : nullptr, dst + h * dk);
        }
      }
    });
    q = workspace;
    k = workspace + H * dk;
    ldq = ldk = ldw;
  }

  // Attention: one task per active (slot, head), longest first so that the long sequential
  // ones start early. Each task is lightningAttention on that slot's first L rows with a
  // zeroed state of its own (B = H = 1 views; its parallelFor runs inline in our worker), so
  // the rows equal those of fusedLightningAttention on the slot alone (the zero initial
  // state adds Λ Q·0 = +0 to the first block: at most the sign of a zero differs) and the
  // state ends as S after L tokens.
  std::vector<int64_t> tasks;
  for (int64_t b = 0; b < B; ++b)
    if (lengths[b] > 0)
      for (int64_t h = 0; h < H; ++h)
        tasks.push_back(b * H + h);
  std::stable_sort(tasks.begin(), tasks.end(),
                   [&](int64_t a, int64_t c) { return lengths[a / H] > lengths[c / H]; });
  const float *v = qkvu + 2 * D;
  parallelFor(static_cast<int64_t>(tasks.size()), 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = tasks[i] / H, h = tasks[i] % H, row = b * N;
      float *S = state + tasks[i] * dk * dv;
      std::fill(S, S + dk * dv, 0.0f);
      lightningAttention(q + row * ldq + h * dk, k + row * ldk + h * dk, v + row * ldqkvu + h * dv,
                         1, lengths[b], 1, dk, dv, ldq, ldk, ldqkvu, slopes + h,
                         y + row * ldy + h * dv, ldy, block, S);
    }
  });

  // Epilogue per row once all heads are done; rows past the length (and every row of an
  // inactive slot) become zeros.
  const float *u = qkvu + 3 * D;
  parallelFor(rows, rowGrain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float *yr = y + r * ldy;
      if (r % N < lengths[r / N])
        normGateRow(yr, u + r * ldqkvu, D, eps);
      else
        std::fill(yr, yr + D, 0.0f);
    }
  });
}

void lightningDecode(const float *qkvu, int64_t ldqkvu, int64_t B, int64_t H, int64_t dh, bool silu,
                     const float *theta, const int32_t *positions, const float *slopes, float eps,
                     float *state, float *y, int64_t ldy) {
  if (B <= 0)
    return;
  checkSlopes("lightning_decode", slopes, H);
  if (H <= 0 || dh <= 0)
    return;
  const int64_t D = H * dh, dk = theta ? 2 * dh : dh, dv = dh;
  const bool prologue = silu || theta;

  // One (slot, head) per task: prologue of this head's q and k (the angles of its dh
  // features only; the same per-feature arithmetic as the prefill's per-row prologue), the
  // update and the product, written into the head's columns of y[b].
  parallelFor(B * H, rowGrain(2 * dk * dv), [&](int64_t p0, int64_t p1) {
    std::vector<float> qk(prologue ? 2 * dk : 0), cosv(theta ? dh : 0), sinv(theta ? dh : 0);
    std::vector<double> acc(dv);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / H, h = p % H;
      if (positions[b] < 0)
        continue;
      const float *row = qkvu + b * ldqkvu;
      const float *qt = row + h * dh, *kt = row + D + h * dh, *vt = row + 2 * D + h * dv;
      if (prologue) {
        if (theta)
          lrpeAngles(static_cast<float>(positions[b]), theta + h * dh, dh, cosv.data(),
                     sinv.data());
        const float *c = theta ? cosv.data() : nullptr, *s = theta ? sinv.data() : nullptr;
        prologueHead(qt, dh, silu, c, s, qk.data());
        prologueHead(kt, dh, silu, c, s, qk.data() + dk);
        qt = qk.data();
        kt = qk.data() + dk;
      }
      // S = λ S + kᵀv with λ = exp(−s) in f64 and one f32 rounding per entry, then o = q S
      // in f64: decayLinearAttentionRecurrent's step, so λ is never rounded to f32.
      const double lambda = std::exp(-static_cast<double>(slopes[h]));
      detail::recurrenceStep(state + p * dk * dv, qt, kt, vt, dk, dv, lambda, acc.data(),
                             y + b * ldy + h * dv);
    }
  });

  // Norm over all heads of the slot's row, then the gate; inactive slots get zeros.
  parallelFor(B, rowGrain(D), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      float *yr = y + b * ldy;
      if (positions[b] >= 0)
        normGateRow(yr, qkvu + b * ldqkvu + 3 * D, D, eps);
      else
        std::fill(yr, yr + D, 0.0f);
    }
  });
}

void gatherLastRows(const float *x, int64_t ldx, int64_t B, int64_t N, int64_t d,
                    const int32_t *lengths, float *out, int64_t ldout) {
  if (B <= 0)
    return;
  checkLengths("gather_last_rows", lengths, B, N);
  if (d <= 0)
    return;
  for (int64_t b = 0; b < B; ++b) {
    float *dst = out + b * ldout;
    if (lengths[b] == 0)
      std::fill(dst, dst + d, 0.0f);
    else
      std::copy_n(x + (b * N + lengths[b] - 1) * ldx, d, dst);
  }
}

} // namespace tnlm::cpu
