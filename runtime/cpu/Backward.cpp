//===- Backward.cpp - VJPs of the projections, norms, SiLU, embedding, loss -===//
//
// Determinism: every product is cut into fixed tiles of its output that depend on the shape
// only, never on the thread count; each tile is one single-threaded sgemm over the whole
// inner dimension (all tokens for a weight gradient). So every output element is computed
// by the same sgemm call, with the same summation order, whatever thread runs it. Row-wise
// kernels compute each row on one thread; the embedding scatter-add gives each table row to
// one thread, which adds its tokens in token order.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Backward.h"

#include "runtime/Error.h"
#include "runtime/cpu/Blas.h"
#include "runtime/cpu/Parallel.h"
#include "runtime/cpu/RowMath.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

namespace tnlm::cpu {
namespace {

using detail::blasSize;
using detail::rowGrain;

// Output tiles of a product [M, N]: up to 512 × 512, which runs at ~90% of one large sgemm
// (256 × 256: ~80%; OpenBLAS on Xeon). While there are fewer than kMinTiles tiles the larger
// side is halved (rounded up to a multiple of 16), down to 64, so that small products still
// spread over ~16 threads. Only the shape, never the thread count, chooses the tiles.
constexpr int64_t kMaxTile = 512, kMinTile = 64, kMinTiles = 16;

struct Tiles {
  int64_t m, n; // tile sides
};

Tiles tilesFor(int64_t M, int64_t N) {
  Tiles t{std::min(M, kMaxTile), std::min(N, kMaxTile)};
  auto count = [&] { return ((M + t.m - 1) / t.m) * ((N + t.n - 1) / t.n); };
  while (count() < kMinTiles) {
    int64_t &side = t.m >= t.n ? t.m : t.n;
    if (side <= kMinTile)
      break;
    side = std::max(kMinTile, (side / 2 + 15) / 16 * 16);
  }
  return t;
}

// Below this many multiply-adds per parallel phase one thread is faster than waking others.
constexpr int64_t kMinParallelMacs = 1 << 18;
// gatedLinearGrad handles the outputs in blocks of this many features (see there).
constexpr int64_t kOutBlock = 256;

// C[M, N] = op(A) · op(B) + beta · C, row-major; op(A) is [M, K], op(B) is [K, N].
struct Gemm {
  bool transA, transB;
  int64_t M, N, K;
  const float *A;
  int64_t lda;
  const float *B;
  int64_t ldb;
  float beta;
  float *C;
  int64_t ldc;
};

// Rows [i0, i1) × columns [j0, j1) of g's output, one sgemm over the whole K.
void gemmTile(const Gemm &g, int64_t i0, int64_t i1, int64_t j0, int64_t j1) {
  float *c = g.C + i0 * g.ldc + j0;
  if (g.K == 0) { // an empty sum; BLAS implementations differ on k = 0
    if (g.beta == 0.0f)
      for (int64_t i = i0; i < i1; ++i)
        std::fill(c + (i - i0) * g.ldc, c + (i - i0) * g.ldc + (j1 - j0), 0.0f);
    return;
  }
  // op(A) rows i0.. start at row i0 of A, or at column i0 of the stored [K, M] Aᵀ.
  const float *a = g.transA ? g.A + i0 : g.A + i0 * g.lda;
  const float *b = g.transB ? g.B + j0 * g.ldb : g.B + j0;
  cblas_sgemm(CblasRowMajor, g.transA ? CblasTrans : CblasNoTrans,
              g.transB ? CblasTrans : CblasNoTrans, blasSize(i1 - i0, "M"), blasSize(j1 - j0, "N"),
              blasSize(g.K, "K"), 1.0f, a, blasSize(g.lda, "lda"), b, blasSize(g.ldb, "ldb"),
              g.beta, c, blasSize(g.ldc, "ldc"));
}

// One unit of parallel work: one output tile of ops[0], then of ops[1], ... in
// order (all ops of a task write the same output, e.g. dx += da·W1 then dx += db·W2).
struct Task {
  const Gemm *ops;
  int nops;
  int64_t i0, i1, j0, j1;
};

void addTiles(std::vector<Task> &tasks, const Gemm *ops, int nops) {
  const Tiles t = tilesFor(ops[0].M, ops[0].N);
  for (int64_t i0 = 0; i0 < ops[0].M; i0 += t.m)
    for (int64_t j0 = 0; j0 < ops[0].N; j0 += t.n)
      tasks.push_back(
          {ops, nops, i0, std::min(ops[0].M, i0 + t.m), j0, std::min(ops[0].N, j0 + t.n)});
}

// Runs every task; tasks must write disjoint outputs. The task list, not the thread count,
// fixes what each sgemm computes.
void runTasks(const std::vector<Task> &tasks) {
  if (tasks.empty())
    return;
  detail::initBlas();
  int64_t macs = 0;
  for (const Task &t : tasks)
    for (int o = 0; o < t.nops; ++o)
      macs += (t.i1 - t.i0) * (t.j1 - t.j0) * std::max<int64_t>(t.ops[o].K, 1);
  const int64_t n = static_cast<int64_t>(tasks.size());
  parallelFor(n, macs < kMinParallelMacs ? n : 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t)
      for (int o = 0; o < tasks[t].nops; ++o)
        gemmTile(tasks[t].ops[o], tasks[t].i0, tasks[t].i1, tasks[t].j0, tasks[t].j1);
  });
}

void runGemm(const Gemm &g) {
  if (g.M <= 0 || g.N <= 0)
    return;
  std::vector<Task> tasks;
  addTiles(tasks, &g, 1);
  runTasks(tasks);
}

template <typename F> void forEachRow(int64_t rows, int64_t cols, F &&rowFn) {
  parallelFor(rows, rowGrain(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      rowFn(r);
  });
}

// SRMSNorm backward of one row, in f64 and rounded once:
//   out = base + r·(dy − x·(r²·Σ x⊙dy / d)),  r = 1 / sqrt(Σx²/d + eps)
// (x̂·mean(x̂⊙dy) = x·r²·Σ(x⊙dy)/d). r is the f64 value, not the forward's f32 rounding: the
// exact derivative. base may be null (0). Each element is read before it is written, so out
// may alias x, dy or base.
void srmsRowGrad(const float *x, const float *dy, int64_t d, float eps, const float *base,
                 float *out) {
  const double r =
      1.0 / std::sqrt(detail::sumSquares(x, d) / static_cast<double>(d) + static_cast<double>(eps));
  double acc[4] = {0, 0, 0, 0};
  int64_t c = 0;
  for (; c + 4 <= d; c += 4)
    for (int j = 0; j < 4; ++j)
      acc[j] += static_cast<double>(x[c + j]) * dy[c + j];
  for (; c < d; ++c)
    acc[0] += static_cast<double>(x[c]) * dy[c];
  const double dot = (acc[0] + acc[2]) + (acc[1] + acc[3]);
  const double k = r * r * dot / static_cast<double>(d);
  for (c = 0; c < d; ++c) {
    const double g = r * (static_cast<double>(dy[c]) - static_cast<double>(x[c]) * k);
    out[c] = static_cast<float>(base ? static_cast<double>(base[c]) + g : g);
  }
}

} // namespace

//===-- Projections ------------------------------------------------------------===//

void linearGradInput(const float *dy, int64_t rows, int64_t out, int64_t lddy, const float *w,
                     int64_t in, float *dx, int64_t lddx, bool accumulate) {
  // dx [rows, in] = dy [rows, out] · W [out, in]
  runGemm({false, false, rows, in, out, dy, lddy, w, in, accumulate ? 1.0f : 0.0f, dx, lddx});
}

void linearGradWeight(const float *dy, int64_t rows, int64_t out, int64_t lddy, const float *x,
                      int64_t in, int64_t ldx, float *dw, bool accumulate) {
  // dW [out, in] = dyᵀ (dy stored [rows, out]) · x [rows, in]; each tile sums all rows.
  runGemm({true, false, out, in, rows, dy, lddy, x, ldx, accumulate ? 1.0f : 0.0f, dw, in});
}

// Per block of n <= kOutBlock output features [c0, c0 + n), with a scratch S [rows, 2n]
// (2·rows·min(out, 256) floats: 8 MiB for 4096 rows, whatever `out` is):
//   phase 1, per tile of rows: S = [a | b] = [x·W1ᵀ | x·W2ᵀ] (block columns), then in place
//            S = [da | db] = [dy ⊙ b | dy ⊙ a] while the tile is in cache;
//   phase 2, independent outputs: dW1[c0:] = daᵀ·x, dW2[c0:] = dbᵀ·x (all rows each), and
//            per tile of dx: dx += da·W1[c0:] then dx += db·W2[c0:] (overwrite for c0 = 0).
// dx thus sums its 2·out products block by block in a fixed order: deterministic.
void gatedLinearGrad(const float *x, int64_t rows, int64_t in, int64_t ldx, const float *w1,
                     const float *w2, int64_t out, const float *dy, int64_t lddy, float *dx,
                     int64_t lddx, float *dw1, float *dw2) {
  if (in <= 0)
    return;
  if (out <= 0 || rows <= 0) { // empty sums
    for (int64_t r = 0; r < rows; ++r)
      std::fill(dx + r * lddx, dx + r * lddx + in, 0.0f);
    std::fill(dw1, dw1 + std::max<int64_t>(out, 0) * in, 0.0f);
    std::fill(dw2, dw2 + std::max<int64_t>(out, 0) * in, 0.0f);
    return;
  }
  const int64_t nb = std::min(out, kOutBlock);
  std::vector<float> scratch(static_cast<size_t>(rows * 2 * nb));
  float *S = scratch.data();
  std::vector<Task> tasks;
  for (int64_t c0 = 0; c0 < out; c0 += nb) {
    const int64_t n = std::min(nb, out - c0), lds = 2 * n;
    float *da = S, *db = S + n;
    const float *w1b = w1 + c0 * in, *w2b = w2 + c0 * in, *dyb = dy + c0;

    // Phase 1: tiles of rows; the two sgemms of a tile, then its elementwise part.
    const Gemm up[2] = {{false, true, rows, n, in, x, ldx, w1b, in, 0.0f, da, lds},
                        {false, true, rows, n, in, x, ldx, w2b, in, 0.0f, db, lds}};
    const int64_t rowTile = tilesFor(rows, 1).m, rowTiles = (rows + rowTile - 1) / rowTile;
    detail::initBlas();
    parallelFor(rowTiles, rows * n * in < kMinParallelMacs ? rowTiles : 1,
                [&](int64_t t0, int64_t t1) {
                  for (int64_t t = t0; t < t1; ++t) {
                    const int64_t r0 = t * rowTile, r1 = std::min(rows, r0 + rowTile);
                    gemmTile(up[0], r0, r1, 0, n);
                    gemmTile(up[1], r0, r1, 0, n);
                    for (int64_t r = r0; r < r1; ++r) {
                      float *ar = da + r * lds, *br = db + r * lds;
                      const float *dyr = dyb + r * lddy;
                      for (int64_t j = 0; j < n; ++j) {
                        const float a = ar[j];
                        ar[j] = dyr[j] * br[j];
                        br[j] = dyr[j] * a;
                      }
                    }
                  }
                });

    // Phase 2: the weight-gradient rows of the block and the dx update, all disjoint.
    const Gemm dW[2] = {{true, false, n, in, rows, da, lds, x, ldx, 0.0f, dw1 + c0 * in, in},
                        {true, false, n, in, rows, db, lds, x, ldx, 0.0f, dw2 + c0 * in, in}};
    const Gemm dX[2] = {
        {false, false, rows, in, n, da, lds, w1b, in, c0 == 0 ? 0.0f : 1.0f, dx, lddx},
        {false, false, rows, in, n, db, lds, w2b, in, 1.0f, dx, lddx}};
    tasks.clear();
    addTiles(tasks, &dW[0], 1);
    addTiles(tasks, &dW[1], 1);
    addTiles(tasks, dX, 2);
    runTasks(tasks);
  }
}

//===-- Norms and elementwise ------------------------------------------------------===//

void srmsNormGrad(const float *x, int64_t ldx, const float *dy, int64_t lddy, int64_t rows,
                  int64_t d, float eps, float *dx, int64_t lddx, bool accumulate) {
  if (d <= 0)
    return;
  forEachRow(rows, d, [&](int64_t r) {
    float *dxr = dx + r * lddx;
    srmsRowGrad(x + r * ldx, dy + r * lddy, d, eps, accumulate ? dxr : nullptr, dxr);
  });
}

void addSrmsNormGrad(const float *sum, int64_t ldsum, const float *dsum, int64_t lddsum,
                     const float *dy, int64_t lddy, int64_t rows, int64_t d, float eps, float *g,
                     int64_t ldg) {
  if (d <= 0)
    return;
  forEachRow(rows, d, [&](int64_t r) {
    srmsRowGrad(sum + r * ldsum, dy + r * lddy, d, eps, dsum ? dsum + r * lddsum : nullptr,
                g + r * ldg);
  });
}

void siluGrad(const float *x, int64_t ldx, const float *dy, int64_t lddy, int64_t rows,
              int64_t cols, float *dx, int64_t lddx, bool accumulate) {
  forEachRow(rows, cols, [&](int64_t r) {
    const float *xr = x + r * ldx, *dyr = dy + r * lddy;
    float *dxr = dx + r * lddx;
    for (int64_t c = 0; c < cols; ++c) {
      // s = σ(x) = 1/(1 + e), e = exp(−x). 1 − s = σ(−x) is taken as e·s for x >= 0 (no
      // cancellation in 1 − s as s → 1; e <= 1 is finite) and as 1 − s for x < 0 (s < 1/2;
      // e may be inf, s then 0 and the gradient dy·0·(1 + x) = −0 or 0, not NaN).
      const float xv = xr[c];
      const float e = std::exp(-xv);
      const float s = 1.0f / (1.0f + e);
      const float oneMinus = xv >= 0.0f ? e * s : 1.0f - s;
      const float grad = dyr[c] * (s * (1.0f + xv * oneMinus));
      dxr[c] = accumulate ? dxr[c] + grad : grad;
    }
  });
}

//===-- Embedding and loss ---------------------------------------------------------===//

void embeddingGrad(const int32_t *ids, int64_t tokens, const float *dx, int64_t lddx, int64_t d,
                   float scale, int64_t vocab, float *dtable, int64_t paddingIdx) {
  for (int64_t t = 0; t < tokens; ++t)
    if (ids[t] < 0 || ids[t] >= vocab)
      throw Error("embedding backward: token id " + std::to_string(ids[t]) + " at position " +
                  std::to_string(t) + " is outside the vocabulary [0, " + std::to_string(vocab) +
                  ")");
  if (tokens <= 0 || d <= 0)
    return;
  // Tokens grouped by id, in token order within an id (stable sort); one group per task.
  std::vector<int64_t> order(static_cast<size_t>(tokens));
  for (int64_t t = 0; t < tokens; ++t)
    order[t] = t;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return ids[a] < ids[b]; });
  std::vector<int64_t> groupStart;
  // The padding id's tokens (sorted together) are dropped from the order.
  if (paddingIdx >= 0)
    order.erase(
        std::remove_if(order.begin(), order.end(), [&](int64_t t) { return ids[t] == paddingIdx; }),
        order.end());
  tokens = static_cast<int64_t>(order.size());
  if (tokens == 0)
    return;
  for (int64_t i = 0; i < tokens; ++i)
    if (i == 0 || ids[order[i]] != ids[order[i - 1]])
      groupStart.push_back(i);
  const int64_t groups = static_cast<int64_t>(groupStart.size());
  groupStart.push_back(tokens);
  const int64_t grain = std::max<int64_t>(1, rowGrain(d) * groups / tokens);
  parallelFor(groups, grain, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      float *row = dtable + static_cast<int64_t>(ids[order[groupStart[g]]]) * d;
      for (int64_t i = groupStart[g]; i < groupStart[g + 1]; ++i) {
        const float *src = dx + order[i] * lddx;
        if (scale == 1.0f) {
          for (int64_t c = 0; c < d; ++c)
            row[c] += src[c];
        } else { // the forward's scale first, as autograd does: E += (s·dx)
          for (int64_t c = 0; c < d; ++c)
            row[c] += scale * src[c];
        }
      }
    }
  });
}

// Per counted row, with e_c = exp(x_c − max) in f32 and Σ = Σ_c e_c in f64 (the same
// operations, in the same order, as cpu::crossEntropy, so the loss is bit-identical to it):
//   loss_r = max + log Σ − x_label;  dlogits_c = k·(e_c/Σ − [c = label]),  k = dloss / counted
// with e_c/Σ and the product in f64, rounded once. e_c is stored in dlogits between the two
// passes, so the exponentials are taken once; x_label is read first, so dlogits may alias
// logits. A row with an infinite max gives loss ±inf or NaN (as cpu::crossEntropy) and a NaN
// gradient.
void crossEntropyGradRows(const float *logits, const int32_t *labels, int64_t rows, int64_t vocab,
                          int64_t ignoreIndex, double k, float *dlogits, double *rowLoss) {
  forEachRow(rows, vocab, [&](int64_t r) {
    const float *xr = logits + r * vocab;
    float *gr = dlogits + r * vocab;
    rowLoss[r] = 0.0;
    if (labels[r] == ignoreIndex) {
      std::fill(gr, gr + vocab, 0.0f);
      return;
    }
    const int64_t label = labels[r];
    const float xl = xr[label];
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < vocab; ++c)
      mx = std::max(mx, xr[c]);
    double acc[4] = {0, 0, 0, 0};
    int64_t c = 0;
    for (; c + 4 <= vocab; c += 4)
      for (int j = 0; j < 4; ++j) {
        const float e = std::exp(xr[c + j] - mx);
        gr[c + j] = e;
        acc[j] += e;
      }
    for (; c < vocab; ++c) {
      const float e = std::exp(xr[c] - mx);
      gr[c] = e;
      acc[0] += e;
    }
    const double sum = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    const double lse = std::isinf(mx) ? static_cast<double>(mx) : mx + std::log(sum);
    rowLoss[r] = lse - static_cast<double>(xl);
    const double el = gr[label], scale = k / sum;
    for (c = 0; c < vocab; ++c)
      gr[c] = static_cast<float>(static_cast<double>(gr[c]) * scale);
    gr[label] = static_cast<float>(k * (el / sum - 1.0));
  });
}

double crossEntropyGrad(const float *logits, const int32_t *labels, int64_t rows, int64_t vocab,
                        int64_t ignoreIndex, float dloss, float *dlogits, int64_t *counted) {
  const int64_t count = detail::countLabels(labels, rows, vocab, ignoreIndex);
  const double k = static_cast<double>(dloss) / static_cast<double>(count);
  std::vector<double> loss(static_cast<size_t>(std::max<int64_t>(rows, 0)), 0.0);
  crossEntropyGradRows(logits, labels, rows, vocab, ignoreIndex, k, dlogits, loss.data());
  // Row order, as cpu::crossEntropy: the same mean, independent of the thread count.
  double total = 0.0;
  for (double l : loss)
    total += l;
  if (counted)
    *counted = count;
  return total / static_cast<double>(count); // 0/0 = NaN when every row is ignored
}

} // namespace tnlm::cpu
