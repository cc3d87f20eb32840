//===- Linear.cpp - y = x · Wᵀ through OpenBLAS ---------------------------===//
//
// One single-threaded sgemm per thread on a slice of y: rows when there are many (prefill,
// training), output columns when there are few (decode: one row per sequence, where the
// weight read dominates and each thread streams its own part of W).
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Blas.h"
#include "runtime/cpu/Kernels.h"

#include <algorithm>

namespace tnlm::cpu {
namespace {

// Below this many multiply-adds one thread is faster than waking the others.
constexpr int64_t kMinParallelMacs = 1 << 18;

// y[:, o0:o1] (+)= x · W[o0:o1, :]ᵀ for rows [r0, r1).
void linearSlice(const float *x, int64_t r0, int64_t r1, int64_t in, int64_t ldx, const float *w,
                 int64_t o0, int64_t o1, float *y, int64_t ldy, bool accumulate) {
  using detail::blasSize;
  float beta = accumulate ? 1.0f : 0.0f;
  const float *xs = x + r0 * ldx;
  const float *ws = w + o0 * in;
  float *ys = y + r0 * ldy + o0;
  if (r1 - r0 == 1) {
    cblas_sgemv(CblasRowMajor, CblasNoTrans, blasSize(o1 - o0, "out"), blasSize(in, "in"), 1.0f, ws,
                blasSize(in, "in"), xs, 1, beta, ys, 1);
    return;
  }
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, blasSize(r1 - r0, "rows"),
              blasSize(o1 - o0, "out"), blasSize(in, "in"), 1.0f, xs, blasSize(ldx, "ldx"), ws,
              blasSize(in, "in"), beta, ys, blasSize(ldy, "ldy"));
}

} // namespace

void linear(const float *x, int64_t rows, int64_t in, int64_t ldx, const float *w, int64_t out,
            float *y, int64_t ldy, bool accumulate) {
  if (rows <= 0 || out <= 0)
    return;
  if (in == 0) { // an empty sum; BLAS implementations differ on k = 0
    if (!accumulate)
      for (int64_t r = 0; r < rows; ++r)
        std::fill(y + r * ldy, y + r * ldy + out, 0.0f);
    return;
  }
  detail::initBlas();
  int64_t threads = numThreads();
  int64_t macs = rows * in * out;
  if (threads == 1 || macs < kMinParallelMacs) {
    linearSlice(x, 0, rows, in, ldx, w, 0, out, y, ldy, accumulate);
    return;
  }
  if (rows >= 16 * threads) {
    // One contiguous slab of rows per thread, so each sgemm packs W once.
    int64_t grain = (rows + threads - 1) / threads;
    parallelFor(rows, grain, [&](int64_t r0, int64_t r1) {
      linearSlice(x, r0, r1, in, ldx, w, 0, out, y, ldy, accumulate);
    });
    return;
  }
  // Few rows: split the outputs in multiples of 16 (whole cache lines of y and panels of W).
  int64_t grain = ((out + threads - 1) / threads + 15) / 16 * 16;
  parallelFor(out, grain, [&](int64_t o0, int64_t o1) {
    linearSlice(x, 0, rows, in, ldx, w, o0, o1, y, ldy, accumulate);
  });
}

} // namespace tnlm::cpu
