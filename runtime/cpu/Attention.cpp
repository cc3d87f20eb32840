//===- Attention.cpp - LRPE and causal decayed linear attention -----------===//
//
// Two evaluations of o_t = q_t · Σ_{s≤t} λ^{t−s} k_sᵀ v_s (docs/model.md):
//   the recurrence (Algorithm 4), O(N·dk·dv) sequential per head: the decode step and the
//   plain reference;
//   Lightning Attention (blocked), whose four products per block are GEMMs: the prefill.
// Both run one (batch, head) pair per task; operands are read in place through their token
// strides, so q/k/v can be column blocks of one fused projection output.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Blas.h"
#include "runtime/cpu/Kernels.h"
#include "runtime/cpu/RowMath.h"

#include "runtime/Error.h"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <string>
#include <vector>

namespace tnlm::cpu {
namespace {

void checkSlopes(const char *op, const float *slopes, int64_t H) {
  for (int64_t h = 0; h < H; ++h)
    if (!std::isfinite(slopes[h]) || slopes[h] < 0.0f)
      throw Error(std::string(op) + ": decay slope " + std::to_string(slopes[h]) + " of head " +
                  std::to_string(h) + " is not finite and >= 0");
}

// λ^r = exp(−s·r) in f64, rounded once to f32. Values below FLT_MIN become 0: they would
// only feed denormal arithmetic (slow on x86) and weigh < 2^-126 against the λ^0 = 1 term.
float decayPower(double slope, int64_t r) {
  double value = std::exp(-slope * static_cast<double>(r));
  return value < static_cast<double>(FLT_MIN) ? 0.0f : static_cast<float>(value);
}

} // namespace

void lrpe(const float *x, int64_t B, int64_t N, int64_t H, int64_t dh, int64_t ldx,
          const float *theta, int64_t offset, float *y) {
  const int64_t D = H * dh;
  if (B <= 0 || N <= 0 || D <= 0)
    return;
  // cos/sin depend on (t, feature) only: computed once per position, applied to every batch.
  int64_t grain = std::max<int64_t>(1, (1 << 14) / (D * (B + 8)));
  parallelFor(N, grain, [&](int64_t t0, int64_t t1) {
    std::vector<float> cosv(D), sinv(D);
    for (int64_t t = t0; t < t1; ++t) {
      const float p = static_cast<float>(t + offset);
      for (int64_t i = 0; i < D; ++i) {
        const float angle = p * theta[i]; // one f32 rounding, as in an f32 PyTorch run
        cosv[i] = std::cos(angle);
        sinv[i] = std::sin(angle);
      }
      for (int64_t b = 0; b < B; ++b) {
        const float *xr = x + (b * N + t) * ldx;
        float *yr = y + (b * N + t) * 2 * D;
        for (int64_t h = 0; h < H; ++h) {
          const float *xh = xr + h * dh;
          const float *ch = cosv.data() + h * dh;
          const float *sh = sinv.data() + h * dh;
          float *yh = yr + h * 2 * dh;
          for (int64_t c = 0; c < dh; ++c) {
            yh[c] = xh[c] * ch[c];
            yh[dh + c] = xh[c] * sh[c];
          }
        }
      }
    }
  });
}

void decayLinearAttentionRecurrent(const float *q, const float *k, const float *v, int64_t B,
                                   int64_t N, int64_t H, int64_t dk, int64_t dv, int64_t ldq,
                                   int64_t ldk, int64_t ldv, const float *slopes, float *o,
                                   int64_t ldo, float *state) {
  checkSlopes("decay_linear_attention", slopes, H);
  if (B <= 0 || H <= 0 || dv <= 0)
    return;
  parallelFor(B * H, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> local;
    std::vector<double> acc(dv);
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / H, h = p % H;
      float *S;
      if (state) {
        S = state + p * dk * dv;
      } else {
        local.assign(dk * dv, 0.0f);
        S = local.data();
      }
      const double lambda = std::exp(-static_cast<double>(slopes[h]));
      for (int64_t t = 0; t < N; ++t) {
        const int64_t row = b * N + t;
        const float *qt = q + row * ldq + h * dk;
        const float *kt = k + row * ldk + h * dk;
        const float *vt = v + row * ldv + h * dv;
        // S_t = λ S_{t−1} + k_tᵀ v_t, o_t = q_t S_t.
        detail::recurrenceStep(S, qt, kt, vt, dk, dv, lambda, acc.data(), o + row * ldo + h * dv);
      }
    }
  });
}

void lightningAttention(const float *q, const float *k, const float *v, int64_t B, int64_t N,
                        int64_t H, int64_t dk, int64_t dv, int64_t ldq, int64_t ldk, int64_t ldv,
                        const float *slopes, float *o, int64_t ldo, int64_t block, float *state) {
  checkSlopes("lightning_attention", slopes, H);
  if (block <= 0)
    throw Error("lightning_attention: block size " + std::to_string(block) + " must be positive");
  if (B <= 0 || H <= 0 || N <= 0 || dv <= 0)
    return;
  if (dk == 0) { // empty feature dim: every score is 0
    for (int64_t r = 0; r < B * N; ++r)
      for (int64_t h = 0; h < H; ++h)
        std::fill(o + r * ldo + h * dv, o + r * ldo + (h + 1) * dv, 0.0f);
    return;
  }
  using detail::blasSize;
  detail::initBlas();
  const int64_t Bk = std::min(block, N); // no scratch beyond the sequence
  const blasint bdk = blasSize(dk, "dk"), bdv = blasSize(dv, "dv"), bBk = blasSize(Bk, "block");
  const blasint bldq = blasSize(ldq, "ldq"), bldk = blasSize(ldk, "ldk");
  const blasint bldv = blasSize(ldv, "ldv"), bldo = blasSize(ldo, "ldo");

  parallelFor(B * H, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> dec(Bk + 1), A(Bk * Bk), Qs(Bk * dk), Ks(Bk * dk), local;
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / H, h = p % H;
      for (int64_t r = 0; r <= Bk; ++r)
        dec[r] = decayPower(slopes[h], r);
      float *KV;
      bool kvIsZero;
      if (state) {
        KV = state + p * dk * dv;
        kvIsZero = false;
      } else {
        local.assign(dk * dv, 0.0f);
        KV = local.data();
        kvIsZero = true;
      }
      for (int64_t t0 = 0; t0 < N; t0 += Bk) {
        const int64_t m = std::min(Bk, N - t0);
        const blasint bm = static_cast<blasint>(m);
        const int64_t row = b * N + t0;
        const float *Q = q + row * ldq + h * dk;
        const float *K = k + row * ldk + h * dk;
        const float *V = v + row * ldv + h * dv;
        float *O = o + row * ldo + h * dv;

        // O = ((Q Kᵀ) ⊙ M) V with M[i,j] = λ^{i−j} for j ≤ i, else 0.
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bm, bm, bdk, 1.0f, Q, bldq, K, bldk,
                    0.0f, A.data(), bBk);
        for (int64_t i = 0; i < m; ++i) {
          float *Ai = A.data() + i * Bk;
          for (int64_t j = 0; j <= i; ++j)
            Ai[j] *= dec[i - j];
          std::fill(Ai + i + 1, Ai + m, 0.0f);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bm, bdv, bm, 1.0f, A.data(), bBk, V,
                    bldv, 0.0f, O, bldo);

        // O += Λ Q KV with Λ = diag(λ¹ … λ^m): scale the rows of Q, then one GEMM.
        if (!kvIsZero) {
          for (int64_t i = 0; i < m; ++i) {
            const float *Qi = Q + i * ldq;
            float *Qsi = Qs.data() + i * dk;
            for (int64_t c = 0; c < dk; ++c)
              Qsi[c] = dec[i + 1] * Qi[c];
          }
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bm, bdv, bdk, 1.0f, Qs.data(), bdk,
                      KV, bdv, 1.0f, O, bldo);
        }

        // KV = λ^m KV + (λ^m Λ⁻¹ K)ᵀ V, row i of K weighted by λ^{m−1−i}. Skipped after the
        // last block unless the caller wants the final state.
        if (t0 + m < N || state) {
          for (int64_t i = 0; i < m; ++i) {
            const float *Ki = K + i * ldk;
            float *Ksi = Ks.data() + i * dk;
            const float w = dec[m - 1 - i];
            for (int64_t c = 0; c < dk; ++c)
              Ksi[c] = w * Ki[c];
          }
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bdk, bdv, bm, 1.0f, Ks.data(), bdk,
                      V, bldv, dec[m], KV, bdv);
          kvIsZero = false;
        }
      }
    }
  });
}

} // namespace tnlm::cpu
