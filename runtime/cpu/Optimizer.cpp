//===- Optimizer.cpp - gradient norm and AdamW ----------------------------===//
//
// Both are memory-bound passes over the parameters, split over fixed chunks: the chunking
// (not the thread count) fixes the summation order of sumSquares, and AdamW is elementwise.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Backward.h"

#include "runtime/Error.h"
#include "runtime/cpu/Parallel.h"
#include "runtime/cpu/RowMath.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

namespace tnlm::cpu {
namespace {

// sumSquares: partial sums over fixed chunks of 2^16 floats (256 KiB, one L2's worth).
constexpr int64_t kSumChunk = 1 << 16;
// adamw: elements per parallel chunk (five streams of 16 KiB).
constexpr int64_t kAdamGrain = 1 << 12;

} // namespace

// Σ x² = Σ over chunks, in chunk order, of the chunk's f64 sum (8 interleaved partial sums,
// detail::sumSquares). Each chunk's sum is computed by one thread, so the result is the
// same bit for bit for any thread count. 10^8 floats: one 400 MB read.
double sumSquares(const float *x, int64_t n) {
  if (n <= 0)
    return 0.0;
  const int64_t chunks = (n + kSumChunk - 1) / kSumChunk;
  if (chunks == 1)
    return detail::sumSquares(x, n);
  std::vector<double> partial(static_cast<size_t>(chunks));
  parallelFor(chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t b = c * kSumChunk;
      partial[c] = detail::sumSquares(x + b, std::min(kSumChunk, n - b));
    }
  });
  double total = 0.0;
  for (double s : partial)
    total += s;
  return total;
}

// torch.optim.AdamW, single-tensor path (foreach=False, amsgrad=False, maximize=False), with
// the Python scalars (double) converted to the f32 opmath of the tensor kernels:
//   param.mul_(1 − lr·wd)                    p = p · f32(1 − lr·wd)
//   exp_avg.lerp_(grad, 1 − β1)              m = m + w·(g − m),  w = f32(1 − β1)   (w < 1/2;
//                                            for w >= 1/2 lerp uses g − (g − m)·(1 − w))
//   exp_avg_sq.mul_(β2).addcmul_(g, g, 1−β2) v = v·β2 + (f32(1 − β2)·g)·g
//   bias_correction1/2 = 1 − β^t             f64
//   step_size = lr / bias_correction1        f64, then f32
//   denom = sqrt(v) / sqrt(bc2) + eps        f32 (sqrt(bc2) in f64, then f32)
//   param.addcdiv_(m, denom, −step_size)     p = p + (f32(−step_size)·m) / denom
// with g = grad·gradScale in f32. Every step is one f32 rounding in this order. (PyTorch's
// vectorized CPU kernels fuse the lerp into an FMA, so it can differ by an ulp there.)
void adamw(float *p, const float *g, float *m, float *v, int64_t n, float lr, float beta1,
           float beta2, float eps, float weightDecay, float gradScale, int64_t step) {
  if (step < 1)
    throw Error("adamw: step " + std::to_string(step) + " must be >= 1 (the first step is 1)");
  if (n <= 0)
    return;
  const double t = static_cast<double>(step);
  const float decay = static_cast<float>(1.0 - static_cast<double>(lr) * weightDecay);
  const float w = static_cast<float>(1.0 - static_cast<double>(beta1));
  const bool smallWeight = std::fabs(w) < 0.5f;
  const float oneMinusW = 1.0f - w; // lerp's (opmath(1) − weight), in f32
  const float c2 = static_cast<float>(1.0 - static_cast<double>(beta2));
  const double bc1 = 1.0 - std::pow(static_cast<double>(beta1), t);
  const double bc2 = 1.0 - std::pow(static_cast<double>(beta2), t);
  const float negStep = static_cast<float>(-(static_cast<double>(lr) / bc1));
  const float bc2Sqrt = static_cast<float>(std::sqrt(bc2));
  parallelFor(n, kAdamGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const float gi = g[i] * gradScale;
      const float pi = p[i] * decay;
      const float mi = smallWeight ? m[i] + w * (gi - m[i]) : gi - (gi - m[i]) * oneMinusW;
      const float vi = v[i] * beta2 + (c2 * gi) * gi;
      const float denom = std::sqrt(vi) / bc2Sqrt + eps;
      m[i] = mi;
      v[i] = vi;
      p[i] = pi + (negStep * mi) / denom;
    }
  });
}

} // namespace tnlm::cpu
