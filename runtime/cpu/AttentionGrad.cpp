//===- AttentionGrad.cpp - backward of LRPE and decayed linear attention ---===//
//
// The vector-Jacobian products of Attention.cpp and of the fused token mixer (Fused.cpp):
//   lrpeGrad                            dx and dθ of y = [x⊙cos(θp), x⊙sin(θp)];
//   decayLinearAttentionGradRecurrent   the reverse recurrence (reference, O(N·dk·dv));
//   lightningAttentionGrad              Algorithm 2 of docs/model.md, GEMMs per block;
//   fusedLightningAttentionGrad         recompute φ/LRPE and O, then gate/norm, attention,
//                                       LRPE and SiLU backward.
// Determinism: attention work is split over (b, h) pairs, row work over rows, and the θ
// gradient (a sum over tokens) is taken over fixed chunks of positions reduced in chunk
// order, so no result depends on the thread count.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Backward.h"

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

using detail::rowGrain;

void checkSlopes(const char *op, const float *slopes, int64_t H) {
  for (int64_t h = 0; h < H; ++h)
    if (!std::isfinite(slopes[h]) || slopes[h] < 0.0f)
      throw Error(std::string(op) + ": decay slope " + std::to_string(slopes[h]) + " of head " +
                  std::to_string(h) + " is not finite and >= 0");
}

void checkBlock(const char *op, int64_t block) {
  if (block <= 0)
    throw Error(std::string(op) + ": block size " + std::to_string(block) + " must be positive");
}

// λ^r = exp(−s·r) in f64, rounded once to f32, flushed to 0 below FLT_MIN (as the forward).
float decayPower(double slope, int64_t r) {
  double value = std::exp(-slope * static_cast<double>(r));
  return value < static_cast<double>(FLT_MIN) ? 0.0f : static_cast<float>(value);
}

// Zeros the H·width head columns of every row (the gradients of an empty contraction).
void zeroHeads(float *x, int64_t ld, int64_t rows, int64_t H, int64_t width) {
  for (int64_t r = 0; r < rows; ++r)
    std::fill(x + r * ld, x + r * ld + H * width, 0.0f);
}

// φ = SiLU as cpu::silu (x / (1 + e^−x)) and its derivative σ(x)·(1 + x·(1 − σ(x))).
inline float siluValue(float x) { return x / (1.0f + std::exp(-x)); }
inline float siluSlope(float x) {
  const float s = 1.0f / (1.0f + std::exp(-x));
  return s * (1.0f + x * (1.0f - s));
}
// Both from one exp: φ(x) rounded exactly as siluValue, and φ'(x).
inline void siluBoth(float x, float &value, float &slope) {
  const float d = 1.0f + std::exp(-x), s = 1.0f / d;
  value = x / d;
  slope = s * (1.0f + x * (1.0f - s));
}

// One input of the LRPE backward: x (before φ when silu), the cotangent dy of LRPE's output
// ([.., H, 2·dh] per row), and where dx goes (dx = φ'(x) ⊙ LRPE backward when silu).
struct LrpeOperand {
  const float *x;
  int64_t ldx;
  const float *dy;
  int64_t lddy;
  float *dx;
  int64_t lddx;
};

// Positions per θ-gradient chunk: fixed, so the partial sums (and the result) do not depend
// on how parallelFor splits the work.
constexpr int64_t kPositionChunk = 16;

// dx = dy_c ⊙ cos(θp) + dy_s ⊙ sin(θp) (times φ'(x) when silu) for every operand, and
// dθ += Σ_{operands, b, t} p · φ(x) ⊙ (dy_s ⊙ cos(θp) − dy_c ⊙ sin(θp)) in f64, rounded once.
// The angle is fl32(float(p)·θ) and cos/sin are taken of it, exactly as the forward.
void lrpeBackward(const LrpeOperand *ops, int nops, bool silu, int64_t B, int64_t N, int64_t H,
                  int64_t dh, const float *theta, int64_t offset, float *dtheta) {
  const int64_t D = H * dh;
  const int64_t chunks = (N + kPositionChunk - 1) / kPositionChunk;
  std::vector<double> partial(dtheta ? chunks * D : 0, 0.0);
  const int64_t grain = std::max<int64_t>(1, detail::kMinWork / (kPositionChunk * B * nops * D));
  parallelFor(chunks, grain, [&](int64_t c0, int64_t c1) {
    std::vector<float> cosv(D), sinv(D);
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      double *acc = dtheta ? partial.data() + chunk * D : nullptr;
      const int64_t tEnd = std::min(N, (chunk + 1) * kPositionChunk);
      for (int64_t t = chunk * kPositionChunk; t < tEnd; ++t) {
        const float p = static_cast<float>(t + offset);
        for (int64_t i = 0; i < D; ++i) {
          const float angle = p * theta[i]; // one f32 rounding, as cpu::lrpe
          cosv[i] = std::cos(angle);
          sinv[i] = std::sin(angle);
        }
        for (int op = 0; op < nops; ++op)
          for (int64_t b = 0; b < B; ++b) {
            const int64_t row = b * N + t;
            const float *xr = ops[op].x + row * ops[op].ldx;
            const float *dyr = ops[op].dy + row * ops[op].lddy;
            float *dxr = ops[op].dx + row * ops[op].lddx;
            for (int64_t h = 0; h < H; ++h)
              for (int64_t c = 0; c < dh; ++c) {
                const int64_t i = h * dh + c;
                const float dyc = dyr[h * 2 * dh + c], dys = dyr[h * 2 * dh + dh + c];
                const float g = dyc * cosv[i] + dys * sinv[i];
                float xi = xr[i], slope = 1.0f;
                if (silu)
                  siluBoth(xr[i], xi, slope);
                dxr[i] = silu ? g * slope : g;
                if (acc)
                  acc[i] +=
                      static_cast<double>(p) * xi *
                      (static_cast<double>(dys) * cosv[i] - static_cast<double>(dyc) * sinv[i]);
              }
          }
      }
    }
  });
  if (!dtheta)
    return;
  for (int64_t i = 0; i < D; ++i) {
    double sum = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk)
      sum += partial[chunk * D + i];
    dtheta[i] = static_cast<float>(dtheta[i] + sum);
  }
}

} // namespace

void lrpeThetaGradRelative(const float *q, const float *k, const float *v, const float *dout,
                           int64_t B, int64_t N, int64_t H, int64_t dh, int64_t dv, int64_t ldq,
                           int64_t ldk, int64_t ldv, int64_t lddo, const float *slopes,
                           int64_t block, float *dtheta) {
  if (block <= 0)
    throw Error("lrpeThetaGradRelative: block " + std::to_string(block) + " (must be > 0)");
  for (int64_t h = 0; h < H; ++h)
    if (!(slopes[h] >= 0.0f) || !std::isfinite(slopes[h]))
      throw Error("lrpeThetaGradRelative: slope " + std::to_string(slopes[h]) + " of head " +
                  std::to_string(h) + " (must be finite and >= 0)");
  const int64_t dk = 2 * dh;
  // Per (b, h) its sum, added in (b, h) order at the end (deterministic).
  std::vector<double> perHead(size_t(B * H * dh), 0.0);
  parallelFor(B * H, 1, [&](int64_t i0, int64_t i1) {
    std::vector<double> S(static_cast<size_t>(dv * dk)), T(S.size()), out(static_cast<size_t>(dk));
    std::vector<double> lam(static_cast<size_t>(block + 1));
    for (int64_t bh = i0; bh < i1; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      for (int64_t r = 0; r <= block; ++r)
        lam[size_t(r)] = std::exp(-static_cast<double>(slopes[h]) * static_cast<double>(r));
      std::fill(S.begin(), S.end(), 0.0);
      std::fill(T.begin(), T.end(), 0.0);
      double *local = perHead.data() + bh * dh;
      auto qrow = [&](int64_t n) { return q + (b * N + n) * ldq + h * dk; };
      auto krow = [&](int64_t n) { return k + (b * N + n) * ldk + h * dk; };
      auto vrow = [&](int64_t n) { return v + (b * N + n) * ldv + h * dv; };
      auto orow = [&](int64_t n) { return dout + (b * N + n) * lddo + h * dv; };
      for (int64_t t0 = 0; t0 < N; t0 += block) {
        const int64_t m = std::min(block, N - t0);
        for (int64_t n = t0; n < t0 + m; ++n) {
          const float *on = orow(n);
          const int64_t r = n - t0 + 1;
          // From before the block: dO_n · λ^r (T + r·S).
          for (int64_t c = 0; c < dk; ++c) {
            double s = 0;
            for (int64_t e = 0; e < dv; ++e)
              s += double(on[e]) * (T[size_t(e * dk + c)] + double(r) * S[size_t(e * dk + c)]);
            out[size_t(c)] = lam[size_t(r)] * s;
          }
          // The block's own pairs (m' < n; m' = n has weight 0).
          double decay = 1.0;
          for (int64_t mm = n - 1; mm >= t0; --mm) {
            decay *= lam[1];
            double dot = 0;
            const float *vm = vrow(mm), *km = krow(mm);
            for (int64_t e = 0; e < dv; ++e)
              dot += double(on[e]) * vm[e];
            const double w = double(n - mm) * decay * dot;
            for (int64_t c = 0; c < dk; ++c)
              out[size_t(c)] += w * km[c];
          }
          const float *qn = qrow(n);
          for (int64_t c = 0; c < dh; ++c)
            local[c] -= double(qn[dh + c]) * out[size_t(c)] - double(qn[c]) * out[size_t(dh + c)];
        }
        // The states at the block's last token t1 = t0 + m − 1.
        const double lm = lam[size_t(m)];
        for (size_t i = 0; i < S.size(); ++i) {
          T[i] = lm * (T[i] + double(m) * S[i]);
          S[i] = lm * S[i];
        }
        for (int64_t mm = t0; mm < t0 + m; ++mm) {
          const int64_t d = t0 + m - 1 - mm;
          const double ls = lam[size_t(d)], lt = double(d) * ls;
          const float *vm = vrow(mm), *km = krow(mm);
          for (int64_t e = 0; e < dv; ++e)
            for (int64_t c = 0; c < dk; ++c) {
              const double x = double(vm[e]) * km[c];
              S[size_t(e * dk + c)] += ls * x;
              T[size_t(e * dk + c)] += lt * x;
            }
        }
      }
    }
  });
  for (int64_t h = 0; h < H; ++h)
    for (int64_t c = 0; c < dh; ++c) {
      double sum = 0.0;
      for (int64_t b = 0; b < B; ++b)
        sum += perHead[size_t((b * H + h) * dh + c)];
      dtheta[h * dh + c] = static_cast<float>(dtheta[h * dh + c] + sum);
    }
}

void lrpeGrad(const float *x, int64_t B, int64_t N, int64_t H, int64_t dh, int64_t ldx,
              const float *theta, int64_t offset, const float *dy, float *dx, int64_t lddx,
              float *dtheta) {
  if (B <= 0 || N <= 0 || H <= 0 || dh <= 0)
    return;
  const LrpeOperand op{x, ldx, dy, 2 * H * dh, dx, lddx};
  lrpeBackward(&op, 1, /*silu=*/false, B, N, H, dh, theta, offset, dtheta);
}

void decayLinearAttentionGradRecurrent(const float *q, const float *k, const float *v, int64_t B,
                                       int64_t N, int64_t H, int64_t dk, int64_t dv, int64_t ldq,
                                       int64_t ldk, int64_t ldv, const float *slopes,
                                       const float *dout, int64_t lddo, float *dq, int64_t lddq,
                                       float *dkk, int64_t lddk, float *dvv, int64_t lddv) {
  checkSlopes("decay_linear_attention_grad", slopes, H);
  if (B <= 0 || H <= 0 || N <= 0)
    return;
  parallelFor(B * H, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> S(dk * dv);
    std::vector<double> acc(std::max(dk, dv));
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / H, h = p % H;
      const double lambda = std::exp(-static_cast<double>(slopes[h]));
      // Forward: S_t = λ S_{t−1} + k_tᵀ v_t (rounded as the forward), dq_t = do_t S_tᵀ.
      std::fill(S.begin(), S.end(), 0.0f);
      for (int64_t t = 0; t < N; ++t) {
        const int64_t row = b * N + t;
        const float *kt = k + row * ldk + h * dk, *vt = v + row * ldv + h * dv;
        const float *dot = dout + row * lddo + h * dv;
        float *dqt = dq + row * lddq + h * dk;
        for (int64_t i = 0; i < dk; ++i) {
          const double ki = kt[i];
          float *Si = S.data() + i * dv;
          double sum = 0.0;
          for (int64_t j = 0; j < dv; ++j) {
            Si[j] = static_cast<float>(lambda * Si[j] + ki * vt[j]);
            sum += static_cast<double>(dot[j]) * Si[j];
          }
          dqt[i] = static_cast<float>(sum);
        }
      }
      // Reverse: dS_t = λ dS_{t+1} + q_tᵀ do_t; dk_t = v_t dS_tᵀ; dv_t = k_t dS_t.
      std::fill(S.begin(), S.end(), 0.0f);
      for (int64_t t = N - 1; t >= 0; --t) {
        const int64_t row = b * N + t;
        const float *qt = q + row * ldq + h * dk, *kt = k + row * ldk + h * dk;
        const float *vt = v + row * ldv + h * dv, *dot = dout + row * lddo + h * dv;
        float *dkt = dkk + row * lddk + h * dk, *dvt = dvv + row * lddv + h * dv;
        std::fill(acc.begin(), acc.begin() + dv, 0.0);
        for (int64_t i = 0; i < dk; ++i) {
          const double qi = qt[i], ki = kt[i];
          float *Si = S.data() + i * dv;
          double sum = 0.0;
          for (int64_t j = 0; j < dv; ++j) {
            Si[j] = static_cast<float>(lambda * Si[j] + qi * dot[j]);
            sum += static_cast<double>(vt[j]) * Si[j];
            acc[j] += ki * Si[j];
          }
          dkt[i] = static_cast<float>(sum);
        }
        for (int64_t j = 0; j < dv; ++j)
          dvt[j] = static_cast<float>(acc[j]);
      }
    }
  });
}

void lightningAttentionGrad(const float *q, const float *k, const float *v, int64_t B, int64_t N,
                            int64_t H, int64_t dk, int64_t dv, int64_t ldq, int64_t ldk,
                            int64_t ldv, const float *slopes, const float *dout, int64_t lddo,
                            float *dq, int64_t lddq, float *dkk, int64_t lddk, float *dvv,
                            int64_t lddv, int64_t block) {
  checkSlopes("lightning_attention_grad", slopes, H);
  checkBlock("lightning_attention_grad", block);
  if (B <= 0 || H <= 0 || N <= 0)
    return;
  if (dk == 0 || dv == 0) { // an empty contraction: every gradient is 0
    zeroHeads(dq, lddq, B * N, H, dk);
    zeroHeads(dkk, lddk, B * N, H, dk);
    zeroHeads(dvv, lddv, B * N, H, dv);
    return;
  }
  using detail::blasSize;
  detail::initBlas();
  const int64_t Bk = std::min(block, N);
  const blasint bdk = blasSize(dk, "dk"), bdv = blasSize(dv, "dv"), bBk = blasSize(Bk, "block");
  const blasint bldq = blasSize(ldq, "ldq"), bldk = blasSize(ldk, "ldk");
  const blasint bldv = blasSize(ldv, "ldv"), bldo = blasSize(lddo, "lddo");
  const blasint blddq = blasSize(lddq, "lddq"), blddk = blasSize(lddk, "lddk");
  const blasint blddv = blasSize(lddv, "lddv");
  const int64_t T = (N + Bk - 1) / Bk;

  parallelFor(B * H, 1, [&](int64_t p0, int64_t p1) {
    std::vector<float> dec(Bk + 1), A(Bk * Bk), Xs(Bk * std::max(dk, dv)), KV(dk * dv);
    // A := (X Yᵀ) ⊙ M for the m×m block, M[i,j] = λ^{i−j} (j <= i), else 0.
    auto maskedScores = [&](const float *X, blasint ldx, const float *Y, blasint ldy, blasint kd,
                            blasint m) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, m, kd, 1.0f, X, ldx, Y, ldy, 0.0f,
                  A.data(), bBk);
      for (int64_t i = 0; i < m; ++i) {
        float *Ai = A.data() + i * Bk;
        for (int64_t j = 0; j <= i; ++j)
          Ai[j] *= dec[i - j];
        std::fill(Ai + i + 1, Ai + m, 0.0f);
      }
    };
    // Xs := diag(w_0 … w_{m−1}) X for an m×cols operand.
    auto scaleRows = [&](const float *X, int64_t ldx, int64_t cols, int64_t m, auto weight) {
      for (int64_t i = 0; i < m; ++i) {
        const float w = weight(i);
        for (int64_t c = 0; c < cols; ++c)
          Xs[i * cols + c] = w * X[i * ldx + c];
      }
    };
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t b = p / H, h = p % H;
      for (int64_t r = 0; r <= Bk; ++r)
        dec[r] = decayPower(slopes[h], r);

      // First sweep, blocks in order: everything local to the block, and the dQ term that
      // needs KV = Σ_{s < t0} λ^{t0−1−s} k_sᵀ v_s of the preceding blocks.
      for (int64_t blk = 0; blk < T; ++blk) {
        const int64_t t0 = blk * Bk, m = std::min(Bk, N - t0), row = b * N + t0;
        const blasint bm = static_cast<blasint>(m);
        const float *Q = q + row * ldq + h * dk, *K = k + row * ldk + h * dk;
        const float *V = v + row * ldv + h * dv, *dO = dout + row * lddo + h * dv;
        float *dQ = dq + row * lddq + h * dk, *dK = dkk + row * lddk + h * dk;
        float *dV = dvv + row * lddv + h * dv;

        // dQ = ((dO Vᵀ) ⊙ M) K and dK = ((dO Vᵀ) ⊙ M)ᵀ Q.
        maskedScores(dO, bldo, V, bldv, bdv, bm);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bm, bdk, bm, 1.0f, A.data(), bBk, K,
                    bldk, 0.0f, dQ, blddq);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bm, bdk, bm, 1.0f, A.data(), bBk, Q,
                    bldq, 0.0f, dK, blddk);
        // dV = ((Q Kᵀ) ⊙ M)ᵀ dO.
        maskedScores(Q, bldq, K, bldk, bdk, bm);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bm, bdv, bm, 1.0f, A.data(), bBk, dO,
                    bldo, 0.0f, dV, blddv);
        if (blk > 0) { // dQ += Λ dO KVᵀ, Λ = diag(λ¹ … λ^m)
          scaleRows(dO, lddo, dv, m, [&](int64_t i) { return dec[i + 1]; });
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bm, bdk, bdv, 1.0f, Xs.data(), bdv,
                      KV.data(), bdv, 1.0f, dQ, blddq);
        }
        if (blk + 1 < T) { // KV = λ^m KV + (λ^m Λ⁻¹ K)ᵀ V, (λ^m Λ⁻¹)_ii = λ^{m−1−i}
          scaleRows(K, ldk, dk, m, [&](int64_t i) { return dec[m - 1 - i]; });
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bdk, bdv, bm, 1.0f, Xs.data(), bdk,
                      V, bldv, blk == 0 ? 0.0f : dec[m], KV.data(), bdv);
        }
      }

      // Second sweep, blocks in reverse: the terms through the later tokens,
      // dKV = Σ_{t >= t0+m} λ^{t−(t0+m)+1} q_tᵀ do_t, zero for the last block.
      float *dKV = KV.data();
      for (int64_t blk = T - 1; blk >= 0; --blk) {
        const int64_t t0 = blk * Bk, m = std::min(Bk, N - t0), row = b * N + t0;
        const blasint bm = static_cast<blasint>(m);
        const float *Q = q + row * ldq + h * dk, *K = k + row * ldk + h * dk;
        const float *V = v + row * ldv + h * dv, *dO = dout + row * lddo + h * dv;
        float *dK = dkk + row * lddk + h * dk, *dV = dvv + row * lddv + h * dv;
        if (blk + 1 < T) {
          // dK += (λ^m Λ⁻¹ V) dKVᵀ;  dV += (λ^m Λ⁻¹ K) dKV.
          scaleRows(V, ldv, dv, m, [&](int64_t i) { return dec[m - 1 - i]; });
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bm, bdk, bdv, 1.0f, Xs.data(), bdv,
                      dKV, bdv, 1.0f, dK, blddk);
          scaleRows(K, ldk, dk, m, [&](int64_t i) { return dec[m - 1 - i]; });
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, bm, bdv, bdk, 1.0f, Xs.data(), bdk,
                      dKV, bdv, 1.0f, dV, blddv);
        }
        if (blk > 0) { // dKV = λ^m dKV + (Λ Q)ᵀ dO
          scaleRows(Q, ldq, dk, m, [&](int64_t i) { return dec[i + 1]; });
          cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, bdk, bdv, bm, 1.0f, Xs.data(), bdk,
                      dO, bldo, blk + 1 < T ? dec[m] : 0.0f, dKV, bdv);
        }
      }
    }
  });
}

void fusedLightningAttentionGrad(const float *qkvu, int64_t ldqkvu, int64_t B, int64_t N, int64_t H,
                                 int64_t dh, bool silu, const float *theta, int64_t offset,
                                 const float *slopes, int64_t block, float eps, const float *dy,
                                 int64_t lddy, float *workspace, float *dqkvu, int64_t lddqkvu,
                                 float *dtheta) {
  checkSlopes("lightning_attention_grad", slopes, H);
  checkBlock("lightning_attention_grad", block);
  if (B <= 0 || N <= 0 || H <= 0 || dh <= 0)
    return;
  if (!workspace)
    throw Error("lightning_attention_grad: a workspace is required");
  const int64_t D = H * dh, rows = B * N, dk = theta ? 2 * dh : dh;
  const int64_t ldw = fusedAttentionGradWorkspaceCols(H, dh, theta != nullptr);
  // Workspace row: q' | k' | dq' | dk' (H·dk each) | O | dO (D each).
  float *qp = workspace, *kp = workspace + H * dk;
  float *dqp = workspace + 2 * H * dk, *dkp = workspace + 3 * H * dk;
  float *O = workspace + 4 * H * dk, *dO = O + D;
  const bool prologue = silu || theta;
  const float *q = qkvu, *k = qkvu + D, *v = qkvu + 2 * D, *u = qkvu + 3 * D;
  float *gq = dqkvu, *gk = dqkvu + D, *gv = dqkvu + 2 * D, *gu = dqkvu + 3 * D;

  // Recompute q', k' = LRPE(φ(q)), LRPE(φ(k)) exactly as the forward's prologue.
  if (prologue) {
    parallelFor(rows, rowGrain(4 * H * dk), [&](int64_t r0, int64_t r1) {
      std::vector<float> cosv(theta ? D : 0), sinv(theta ? D : 0);
      for (int64_t r = r0; r < r1; ++r) {
        if (theta) {
          const float p = static_cast<float>(r % N + offset);
          for (int64_t i = 0; i < D; ++i) {
            const float angle = p * theta[i];
            cosv[i] = std::cos(angle);
            sinv[i] = std::sin(angle);
          }
        }
        for (int64_t part = 0; part < 2; ++part) {
          const float *src = qkvu + r * ldqkvu + part * D;
          float *dst = (part == 0 ? qp : kp) + r * ldw;
          for (int64_t h = 0; h < H; ++h)
            for (int64_t c = 0; c < dh; ++c) {
              const int64_t i = h * dh + c;
              const float x = silu ? siluValue(src[i]) : src[i];
              if (theta) {
                dst[h * dk + c] = x * cosv[i];
                dst[h * dk + dh + c] = x * sinv[i];
              } else {
                dst[i] = x;
              }
            }
        }
      }
    });
  }
  const float *qa = prologue ? qp : q, *ka = prologue ? kp : k;
  const int64_t lda = prologue ? ldw : ldqkvu;
  lightningAttention(qa, ka, v, B, N, H, dk, dh, lda, lda, ldqkvu, slopes, O, ldw, block);

  // Gate and cross-head norm, y = u ⊙ x̂ with x̂ = O·r, r = rstd over all D features:
  //   du = dy ⊙ x̂;  g = dy ⊙ u;  dO = r·(g − x̂·mean(x̂ ⊙ g))  (the mean in f64).
  parallelFor(rows, rowGrain(4 * D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *Or = O + r * ldw, *dyr = dy + r * lddy, *ur = u + r * ldqkvu;
      float *dOr = dO + r * ldw, *dur = gu + r * lddqkvu;
      const float rstd = detail::rstdOf(Or, D, eps);
      double dot = 0.0;
      for (int64_t c = 0; c < D; ++c) {
        const float xhat = Or[c] * rstd; // as the forward's epilogue
        dur[c] = dyr[c] * xhat;
        dot += static_cast<double>(xhat) * (static_cast<double>(dyr[c]) * ur[c]);
      }
      const double mean = dot / static_cast<double>(D);
      for (int64_t c = 0; c < D; ++c) {
        const double xhat = Or[c] * rstd, g = static_cast<double>(dyr[c]) * ur[c];
        dOr[c] = static_cast<float>(static_cast<double>(rstd) * (g - xhat * mean));
      }
    }
  });

  // Attention backward; dq', dk' go straight to dqkvu unless LRPE has to map them back.
  float *dqa = theta ? dqp : gq, *dka = theta ? dkp : gk;
  const int64_t lddqa = theta ? ldw : lddqkvu;
  lightningAttentionGrad(qa, ka, v, B, N, H, dk, dh, lda, lda, ldqkvu, slopes, dO, ldw, dqa, lddqa,
                         dka, lddqa, gv, lddqkvu, block);

  if (theta) { // LRPE (and SiLU) backward of q and k; both add to dθ
    const LrpeOperand ops[2] = {{q, ldqkvu, dqp, ldw, gq, lddqkvu},
                                {k, ldqkvu, dkp, ldw, gk, lddqkvu}};
    lrpeBackward(ops, 2, silu, B, N, H, dh, theta, offset, dtheta);
  } else if (silu) { // dq = φ'(q) ⊙ dq', in place
    parallelFor(rows, rowGrain(2 * D), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t part = 0; part < 2; ++part) {
          const float *x = qkvu + r * ldqkvu + part * D;
          float *g = dqkvu + r * lddqkvu + part * D;
          for (int64_t c = 0; c < D; ++c)
            g[c] *= siluSlope(x[c]);
        }
    });
  }
}

} // namespace tnlm::cpu
