//===- Fused.cpp - CPU kernels of the fused tnlm ops ----------------------===//
//
// Fused residual add + SRMSNorm, the SGLU up-projections with their product, and the
// Lightning Attention token mixer core with its φ/LRPE prologue and norm/gate epilogue.
// The rounding steps mirror the unfused kernels (Elementwise.cpp, Attention.cpp), so a fused
// model differs from the unfused one only where the algorithm differs (blocked vs recurrent
// attention, GEMM tiling).
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Fused.h"

#include "runtime/cpu/Blas.h"
#include "runtime/cpu/Kernels.h"

#include "runtime/Error.h"
#include "runtime/cpu/RowMath.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace tnlm::cpu {
namespace {

using detail::rowGrain;
using detail::rstdOf;

// gatedLinear tiles: 64 rows × 256 outputs keep the scratch tile (64 KiB) in L2.
constexpr int64_t kRowTile = 64, kColTile = 256;

} // namespace

void addSrmsNorm(const float *a, const float *b, int64_t rows, int64_t d, int64_t lda, int64_t ldb,
                 float eps, float *sum, int64_t ldsum, float *y, int64_t ldy) {
  if (rows <= 0 || d <= 0)
    return;
  parallelFor(rows, rowGrain(d), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float *ar = a + r * lda, *br = b + r * ldb;
      float *sr = sum + r * ldsum, *yr = y + r * ldy;
      for (int64_t c = 0; c < d; ++c)
        sr[c] = ar[c] + br[c];
      const float rstd = rstdOf(sr, d, eps);
      for (int64_t c = 0; c < d; ++c)
        yr[c] = sr[c] * rstd;
    }
  });
}

void gatedLinear(const float *x, int64_t rows, int64_t in, int64_t ldx, const float *w1,
                 const float *w2, int64_t out, float *y, int64_t ldy) {
  if (rows <= 0 || out <= 0)
    return;
  if (in == 0) { // empty sums: both products are 0
    for (int64_t r = 0; r < rows; ++r)
      std::fill(y + r * ldy, y + r * ldy + out, 0.0f);
    return;
  }
  using detail::blasSize;
  detail::initBlas();
  const blasint bin = blasSize(in, "in"), bldx = blasSize(ldx, "ldx"), bldy = blasSize(ldy, "ldy");
  const int64_t rowTiles = (rows + kRowTile - 1) / kRowTile;
  const int64_t colTiles = (out + kColTile - 1) / kColTile;
  parallelFor(rowTiles * colTiles, 1, [&](int64_t t0, int64_t t1) {
    std::vector<float> second(kRowTile * kColTile);
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t r0 = (t / colTiles) * kRowTile, c0 = (t % colTiles) * kColTile;
      const int64_t m = std::min(kRowTile, rows - r0), n = std::min(kColTile, out - c0);
      const blasint bm = static_cast<blasint>(m), bn = static_cast<blasint>(n);
      const float *xt = x + r0 * ldx;
      float *yt = y + r0 * ldy + c0;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bm, bn, bin, 1.0f, xt, bldx,
                  w1 + c0 * in, bin, 0.0f, yt, bldy);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, bm, bn, bin, 1.0f, xt, bldx,
                  w2 + c0 * in, bin, 0.0f, second.data(), bn);
      for (int64_t i = 0; i < m; ++i)
        for (int64_t j = 0; j < n; ++j)
          yt[i * ldy + j] *= second[i * n + j];
    }
  });
}

void fusedLightningAttention(const float *qkvu, int64_t ldqkvu, int64_t B, int64_t N, int64_t H,
                             int64_t dh, bool silu, const float *theta, int64_t offset,
                             const float *slopes, int64_t block, float eps, float *workspace,
                             float *y, int64_t ldy) {
  if (B <= 0 || N <= 0 || H <= 0 || dh <= 0)
    return;
  const int64_t D = H * dh, rows = B * N, dk = theta ? 2 * dh : dh;
  const float *q = qkvu, *k = qkvu + D;
  int64_t ldq = ldqkvu, ldk = ldqkvu;

  // Prologue: q' and k' of a row side by side in the workspace. The angles depend on the
  // position only, so cos/sin are computed once per row for both q and k.
  if (silu || theta) {
    if (!workspace)
      throw Error("lightning_attention: the SiLU/LRPE prologue needs a workspace");
    const int64_t ldw = 2 * H * dk;
    parallelFor(rows, rowGrain(2 * ldw), [&](int64_t r0, int64_t r1) {
      std::vector<float> cosv(theta ? D : 0), sinv(theta ? D : 0);
      for (int64_t r = r0; r < r1; ++r) {
        if (theta) {
          const float p = static_cast<float>(r % N + offset);
          for (int64_t i = 0; i < D; ++i) {
            const float angle = p * theta[i]; // one f32 rounding, as cpu::lrpe
            cosv[i] = std::cos(angle);
            sinv[i] = std::sin(angle);
          }
        }
        for (int64_t part = 0; part < 2; ++part) {
          const float *src = qkvu + r * ldqkvu + part * D;
          float *dst = workspace + r * ldw + part * H * dk;
          for (int64_t h = 0; h < H; ++h)
            for (int64_t c = 0; c < dh; ++c) {
              const int64_t i = h * dh + c;
              float v = src[i];
              if (silu) // as cpu::silu; x → −∞ gives −0, no NaN
                v = v / (1.0f + std::exp(-v));
              if (theta) {
                dst[h * dk + c] = v * cosv[i];
                dst[h * dk + dh + c] = v * sinv[i];
              } else {
                dst[i] = v;
              }
            }
        }
      }
    });
    q = workspace;
    k = workspace + H * dk;
    ldq = ldk = ldw;
  }

  lightningAttention(q, k, qkvu + 2 * D, B, N, H, dk, dh, ldq, ldk, ldqkvu, slopes, y, ldy, block);

  // Epilogue: the norm spans all heads of a row, so it runs after the attention has written
  // every head; then the gate, in the order of the unfused mul(u, srms_norm(O)).
  const float *u = qkvu + 3 * D;
  parallelFor(rows, rowGrain(D), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float *yr = y + r * ldy;
      const float *ur = u + r * ldqkvu;
      const float rstd = rstdOf(yr, D, eps);
      for (int64_t c = 0; c < D; ++c)
        yr[c] = ur[c] * (yr[c] * rstd);
    }
  });
}

} // namespace tnlm::cpu
