//===- RowMath.h - row helpers shared by the CPU kernels --------*- C++ -*-===//
//
// Internal to runtime/cpu: the parallel grain of a row-wise loop and the norms' row
// statistics. The unfused (Elementwise.cpp) and fused (Fused.cpp) kernels use the same
// definitions, so a fused norm rounds exactly like srmsNorm.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CPU_ROWMATH_H
#define TNLM_RUNTIME_CPU_ROWMATH_H

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace tnlm::cpu::detail {

/// A thread wake-up costs about as much as ~10^4 flops: chunks of at least this many elements.
inline constexpr int64_t kMinWork = 1 << 15;

/// Rows per parallelFor chunk for rows of `cols` elements.
inline int64_t rowGrain(int64_t cols) {
  return std::max<int64_t>(1, kMinWork / std::max<int64_t>(cols, 1));
}

/// Σ x² of one row in f64; eight independent partial sums let the compiler vectorize without
/// reassociating (no -ffast-math).
inline double sumSquares(const float *x, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8)
    for (int j = 0; j < 8; ++j)
      acc[j] += static_cast<double>(x[c + j]) * x[c + j];
  for (; c < n; ++c)
    acc[0] += static_cast<double>(x[c]) * x[c];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

/// rsqrt(mean(x²) + eps) of one row, evaluated in f64 and rounded once.
inline float rstdOf(const float *x, int64_t d, float eps) {
  const double meanSq = sumSquares(x, d) / static_cast<double>(d);
  return static_cast<float>(1.0 / std::sqrt(meanSq + static_cast<double>(eps)));
}



/// Rows whose label is not ignoreIndex; a label outside [0, vocab) that is not ignoreIndex
/// throws tnlm::Error naming it and its row (before anything is written).
int64_t countLabels(const int32_t *labels, int64_t rows, int64_t vocab, int64_t ignoreIndex);

/// One step of the robust recurrence for one head (docs/model.md, Algorithm 4):
///   S ← λ S + kᵀ v (one f32 rounding per entry; λ·S + k_i·v_j in f64), then o = q S (f64
///   accumulation in `acc`, dv entries, rounded once into o).
/// λ is f64 (exp(−s) in f64, never rounded to f32: it would drop the decay for s < 6e-8).
inline void recurrenceStep(float *S, const float *q, const float *k, const float *v, int64_t dk,
                           int64_t dv, double lambda, double *acc, float *o) {
  for (int64_t i = 0; i < dk; ++i) {
    const double ki = k[i];
    float *Si = S + i * dv;
    for (int64_t j = 0; j < dv; ++j)
      Si[j] = static_cast<float>(lambda * Si[j] + ki * v[j]);
  }
  std::fill(acc, acc + dv, 0.0);
  for (int64_t i = 0; i < dk; ++i) {
    const double qi = q[i];
    const float *Si = S + i * dv;
    for (int64_t j = 0; j < dv; ++j)
      acc[j] += qi * Si[j];
  }
  for (int64_t j = 0; j < dv; ++j)
    o[j] = static_cast<float>(acc[j]);
}

} // namespace tnlm::cpu::detail

#endif // TNLM_RUNTIME_CPU_ROWMATH_H
