//===- Elementwise.cpp - embedding, SRMSNorm, SiLU, mul/add, loss ---------===//
//
// Row-wise kernels: each row is independent, so rows are split across threads in chunks of
// at least kMinWork elements (a thread wake-up costs about as much as ~10^4 flops).
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Kernels.h"

#include "runtime/Error.h"
#include "runtime/cpu/RowMath.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

namespace tnlm::cpu {
namespace {

using detail::rowGrain;

// logsumexp of one row: max-shifted, exponentials in f32 (they are in (0, 1]), sum in f64.
double logSumExp(const float *x, int64_t n) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t c = 0; c < n; ++c)
    mx = std::max(mx, x[c]);
  if (std::isinf(mx)) // all −inf (lse = −inf) or some +inf (lse = +inf)
    return mx;
  double acc[4] = {0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 4 <= n; c += 4)
    for (int j = 0; j < 4; ++j)
      acc[j] += std::exp(x[c + j] - mx);
  for (; c < n; ++c)
    acc[0] += std::exp(x[c] - mx);
  return mx + std::log((acc[0] + acc[2]) + (acc[1] + acc[3]));
}

template <typename F> void forEachRow(int64_t rows, int64_t cols, F &&rowFn) {
  parallelFor(rows, rowGrain(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      rowFn(r);
  });
}

} // namespace

void embedding(const int32_t *ids, int64_t tokens, const float *table, int64_t vocab, int64_t d,
               float scale, float *out) {
  for (int64_t t = 0; t < tokens; ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      throw Error("embedding: token id " + std::to_string(ids[t]) + " at position " +
                  std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(vocab) +
                  ")");
  forEachRow(tokens, d, [&](int64_t t) {
    const float *src = table + static_cast<int64_t>(ids[t]) * d;
    float *dst = out + t * d;
    if (scale == 1.0f) {
      std::memcpy(dst, src, sizeof(float) * d);
    } else {
      for (int64_t c = 0; c < d; ++c)
        dst[c] = scale * src[c];
    }
  });
}

void srmsNorm(const float *x, int64_t rows, int64_t d, int64_t ldx, float eps, float *y,
              int64_t ldy) {
  forEachRow(rows, d, [&](int64_t r) {
    const float *xr = x + r * ldx;
    float *yr = y + r * ldy;
    const float rstd = detail::rstdOf(xr, d, eps);
    for (int64_t c = 0; c < d; ++c)
      yr[c] = xr[c] * rstd;
  });
}

void silu(const float *x, int64_t rows, int64_t cols, int64_t ldx, float *y, int64_t ldy) {
  forEachRow(rows, cols, [&](int64_t r) {
    const float *xr = x + r * ldx;
    float *yr = y + r * ldy;
    // For x → −∞, exp(−x) = inf and x / inf = −0: no NaN.
    for (int64_t c = 0; c < cols; ++c)
      yr[c] = xr[c] / (1.0f + std::exp(-xr[c]));
  });
}

void mul(const float *a, const float *b, int64_t rows, int64_t cols, int64_t lda, int64_t ldb,
         float *y, int64_t ldy) {
  forEachRow(rows, cols, [&](int64_t r) {
    const float *ar = a + r * lda;
    const float *br = b + r * ldb;
    float *yr = y + r * ldy;
    for (int64_t c = 0; c < cols; ++c)
      yr[c] = ar[c] * br[c];
  });
}

void add(const float *a, const float *b, int64_t rows, int64_t cols, int64_t lda, int64_t ldb,
         float *y, int64_t ldy) {
  forEachRow(rows, cols, [&](int64_t r) {
    const float *ar = a + r * lda;
    const float *br = b + r * ldb;
    float *yr = y + r * ldy;
    for (int64_t c = 0; c < cols; ++c)
      yr[c] = ar[c] + br[c];
  });
}

void logSoftmax(const float *x, int64_t rows, int64_t cols, int64_t ldx, float *y, int64_t ldy) {
  forEachRow(rows, cols, [&](int64_t r) {
    const float *xr = x + r * ldx;
    float *yr = y + r * ldy;
    double lse = logSumExp(xr, cols);
    for (int64_t c = 0; c < cols; ++c)
      yr[c] = static_cast<float>(static_cast<double>(xr[c]) - lse);
  });
}

int64_t detail::countLabels(const int32_t *labels, int64_t rows, int64_t vocab,
                            int64_t ignoreIndex) {
  int64_t count = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (labels[r] == ignoreIndex)
      continue;
    if (labels[r] < 0 || labels[r] >= vocab)
      throw Error("cross_entropy: label " + std::to_string(labels[r]) + " at row " +
                  std::to_string(r) + " is outside the vocabulary [0, " + std::to_string(vocab) +
                  ") and is not the ignore index " + std::to_string(ignoreIndex));
    ++count;
  }
  return count;
}

void crossEntropyRows(const float *logits, const int32_t *labels, int64_t rows, int64_t vocab,
                      int64_t ignoreIndex, double *rowLoss) {
  forEachRow(rows, vocab, [&](int64_t r) {
    rowLoss[r] = 0.0;
    if (labels[r] == ignoreIndex)
      return;
    const float *xr = logits + r * vocab;
    rowLoss[r] = logSumExp(xr, vocab) - static_cast<double>(xr[labels[r]]);
  });
}

double crossEntropy(const float *logits, const int32_t *labels, int64_t rows, int64_t vocab,
                    int64_t ignoreIndex, int64_t *counted) {
  const int64_t count = detail::countLabels(labels, rows, vocab, ignoreIndex);
  // Per-row losses summed in row order afterwards: the result does not depend on threads.
  std::vector<double> loss(static_cast<size_t>(std::max<int64_t>(rows, 0)), 0.0);
  crossEntropyRows(logits, labels, rows, vocab, ignoreIndex, loss.data());
  double sum = 0.0;
  for (double l : loss)
    sum += l;
  if (counted)
    *counted = count;
  return sum / static_cast<double>(count); // 0/0 = NaN when every row is ignored
}

} // namespace tnlm::cpu
