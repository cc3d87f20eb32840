//===- Naive.h - f64 loop references for the CPU kernel tests ---*- C++ -*-===//
//
// Written straight from docs/model.md, independent of runtime/cpu: plain loops in f64, no
// blocking, no BLAS, no threads. Each function also returns, where useful, the same sum taken
// over absolute values ("abs"), which scales the rounding-error bounds in the tests: an f32
// sum of K products has |error| <= K·2^-24·Σ|terms| in the worst case (Higham, γ_K).
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TEST_UNIT_CPU_NAIVE_H
#define TNLM_TEST_UNIT_CPU_NAIVE_H

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

namespace tnlm::cpu::naive {

/// Unit roundoff of f32 (round to nearest): 2^-24.
constexpr double kU = 5.9604644775390625e-08;

inline std::vector<float> randomVector(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float &x : out)
    x = dist(gen);
  return out;
}

/// Causal decayed linear attention by its dense masked definition (docs/model.md):
///   o_t = q_t · (λ^{t+1} S0 + Σ_{s≤t} λ^{t−s} k_sᵀ v_s),  λ^r = exp(−slope·r) in f64,
/// for 0-indexed t (S0 = initial state [B, H, dk, dv] or null). Output [B·N, H·dv]
/// contiguous, plus abs: the same with |q_t·k_s| replaced by Σ_c |q_tc k_sc| and every other
/// factor by its absolute value.
struct Attention {
  std::vector<double> o, abs;
};

inline Attention denseDecayAttention(const float *q, const float *k, const float *v, int64_t B,
                                     int64_t N, int64_t H, int64_t dk, int64_t dv, int64_t ldq,
                                     int64_t ldk, int64_t ldv, const float *slopes,
                                     const float *s0 = nullptr) {
  Attention r;
  r.o.assign(B * N * H * dv, 0.0);
  r.abs.assign(B * N * H * dv, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const double slope = slopes[h];
      for (int64_t t = 0; t < N; ++t) {
        const float *qt = q + (b * N + t) * ldq + h * dk;
        double *ot = r.o.data() + (b * N + t) * H * dv + h * dv;
        double *at = r.abs.data() + (b * N + t) * H * dv + h * dv;
        for (int64_t s = 0; s <= t; ++s) {
          const float *ks = k + (b * N + s) * ldk + h * dk;
          const float *vs = v + (b * N + s) * ldv + h * dv;
          double dot = 0, dotAbs = 0;
          for (int64_t c = 0; c < dk; ++c) {
            dot += static_cast<double>(qt[c]) * ks[c];
            dotAbs += std::fabs(static_cast<double>(qt[c]) * ks[c]);
          }
          const double decay = std::exp(-slope * static_cast<double>(t - s));
          for (int64_t j = 0; j < dv; ++j) {
            ot[j] += decay * dot * vs[j];
            at[j] += decay * dotAbs * std::fabs(vs[j]);
          }
        }
        if (s0) {
          const float *S = s0 + (b * H + h) * dk * dv;
          const double decay = std::exp(-slope * static_cast<double>(t + 1));
          for (int64_t c = 0; c < dk; ++c)
            for (int64_t j = 0; j < dv; ++j) {
              ot[j] += decay * qt[c] * S[c * dv + j];
              at[j] += decay * std::fabs(static_cast<double>(qt[c]) * S[c * dv + j]);
            }
        }
      }
    }
  return r;
}

/// Final state of the same: S_N = λ^N S0 + Σ_s λ^{N−1−s} k_sᵀ v_s, [B, H, dk, dv].
inline std::vector<double> denseFinalState(const float *k, const float *v, int64_t B, int64_t N,
                                           int64_t H, int64_t dk, int64_t dv, int64_t ldk,
                                           int64_t ldv, const float *slopes,
                                           const float *s0 = nullptr) {
  std::vector<double> S(B * H * dk * dv, 0.0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      double *Sbh = S.data() + (b * H + h) * dk * dv;
      if (s0)
        for (int64_t e = 0; e < dk * dv; ++e)
          Sbh[e] = std::exp(-static_cast<double>(slopes[h]) * N) * s0[(b * H + h) * dk * dv + e];
      for (int64_t s = 0; s < N; ++s) {
        const double decay = std::exp(-static_cast<double>(slopes[h]) * (N - 1 - s));
        const float *ks = k + (b * N + s) * ldk + h * dk;
        const float *vs = v + (b * N + s) * ldv + h * dv;
        for (int64_t c = 0; c < dk; ++c)
          for (int64_t j = 0; j < dv; ++j)
            Sbh[c * dv + j] += decay * ks[c] * vs[j];
      }
    }
  return S;
}

/// y = x · Wᵀ in f64 with its abs companion Σ|x_i w_i|.
inline void denseLinear(const float *x, int64_t rows, int64_t in, int64_t ldx, const float *w,
                        int64_t out, std::vector<double> &y, std::vector<double> &abs) {
  y.assign(rows * out, 0.0);
  abs.assign(rows * out, 0.0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t o = 0; o < out; ++o) {
      double acc = 0, accAbs = 0;
      for (int64_t i = 0; i < in; ++i) {
        double p = static_cast<double>(x[r * ldx + i]) * w[o * in + i];
        acc += p;
        accAbs += std::fabs(p);
      }
      y[r * out + o] = acc;
      abs[r * out + o] = accAbs;
    }
}

/// logsumexp(x[0:n]) in f64 (max-shifted).
inline double logSumExp(const float *x, int64_t n) {
  double mx = x[0];
  for (int64_t i = 1; i < n; ++i)
    mx = std::fmax(mx, x[i]);
  double sum = 0;
  for (int64_t i = 0; i < n; ++i)
    sum += std::exp(static_cast<double>(x[i]) - mx);
  return mx + std::log(sum);
}

} // namespace tnlm::cpu::naive

#endif // TNLM_TEST_UNIT_CPU_NAIVE_H
