//===- LmHeadLoss.cpp - the lm head, its loss and backward in chunks of rows ---===//
#include "runtime/cuda/LmHeadLoss.h"

#include "runtime/Error.h"
#include "runtime/TrainScratch.h"

#include <algorithm>
#include <string>

namespace tnlm::cuda {

namespace {
size_t checkedBytes(int64_t chunkRows, int64_t vocab, int64_t d, size_t elem) {
  if (chunkRows <= 0 || vocab <= 0 || d <= 0)
    throw Error("the chunked lm head loss: chunk rows (" + std::to_string(chunkRows) +
                "), vocabulary (" + std::to_string(vocab) + ") and hidden size (" +
                std::to_string(d) + ") must be positive");
  return size_t(chunkRows) * size_t(vocab) * elem;
}
} // namespace

LmHeadLoss::LmHeadLoss(const Context &context, Gemm &gemm, LmHeadLossKernels kernels,
                       int64_t chunkRows, int64_t vocab, int64_t d)
    : context_(context), gemm_(gemm), kernels_(kernels), chunkRows_(chunkRows), vocab_(vocab),
      d_(d), logits_(checkedBytes(chunkRows, vocab, d, 4), "the lm head's chunk of logits"),
      dz_(checkedBytes(chunkRows, vocab, d, 2), "the lm head's chunk of logit gradients") {
  if ((!kernels_.crossEntropyGrad && !kernels_.crossEntropyLoss) || !kernels_.lossTotal)
    throw Error("the chunked lm head loss needs its cross entropy and loss total kernels");
}

int64_t LmHeadLoss::evenChunk(int64_t rows, int64_t maxChunk) {
  if (maxChunk <= 0)
    throw Error("the chunked lm head loss: chunks of " + std::to_string(maxChunk) + " rows");
  return lmHeadEvenChunk(rows, maxChunk);
}

void LmHeadLoss::run(const LmHeadLossCall &c, std::string_view where) {
  const std::string at = where.empty() ? std::string("the lm head loss") : std::string(where);
  if (c.rows < 0)
    throw Error(at + ": negative rows");
  const int64_t ldh = c.ldh ? c.ldh : d_, lddh = c.lddh ? c.lddh : d_;
  if (ldh < d_ || lddh < d_)
    throw Error(at + ": a leading dimension below the hidden size " + std::to_string(d_));
  const bool grad = c.dh != 0;
  if (grad ? !kernels_.crossEntropyGrad : !kernels_.crossEntropyLoss)
    throw Error(at + ": no cross entropy kernel for " + (grad ? "the gradient" : "the loss alone"));
  if (grad && !c.accumulateDw && c.rows == 0)
    context_.fillBytes(c.dw, 0, size_t(vocab_) * size_t(d_) * 4, at + ": dW");
  const int64_t per = evenChunk(c.rows, chunkRows_);
  for (int64_t r0 = 0; r0 < c.rows; r0 += per) {
    const int64_t n = std::min(per, c.rows - r0);
    const CUdeviceptr h = c.h + CUdeviceptr(r0 * ldh * 2);
    // z = h·Wᵀ: rows n, in d, out vocab.
    gemm_.linear(GemmType::Bf16F32Out, {n, d_, vocab_, ldh, d_, vocab_}, h, c.w, logits_.get(),
                 at + ": logits");
    const CUdeviceptr labels = c.labels + CUdeviceptr(r0 * 4);
    const CUdeviceptr rowLoss = c.rowLoss + CUdeviceptr(r0 * 8);
    const long long ldz = vocab_;
    const int vocab = int(vocab_);
    LaunchConfig perRow{{unsigned(n)}, {kernels_.block}, 0};
    if (!grad) {
      const LaunchConfig lossRow{{unsigned(n)}, {kernels_.lossBlock}, 0};
      context_.launchWith(*kernels_.crossEntropyLoss, lossRow, at + ": cross entropy",
                          logits_.get(), ldz, labels, vocab, c.ignoreIndex, rowLoss);
      continue;
    }
    if (kernels_.gradRows) {
      const LaunchConfig perSm{
          {unsigned(std::min<int64_t>(n, std::max(1, context_.multiprocessors())))},
          {kernels_.block},
          kernels_.gradShared};
      context_.launchWith(*kernels_.crossEntropyGrad, perSm, at + ": cross entropy", logits_.get(),
                          ldz, labels, static_cast<long long>(n), vocab, c.ignoreIndex, c.k,
                          dz_.get(), ldz, rowLoss);
    } else {
      context_.launchWith(*kernels_.crossEntropyGrad, perRow, at + ": cross entropy", logits_.get(),
                          ldz, labels, vocab, c.ignoreIndex, c.k, dz_.get(), ldz, rowLoss);
    }
    // dh = dz·W (rows n, in d, out vocab; dx's ld lddh), dW += dzᵀ·h.
    const size_t dhElem = c.dhBf16 ? 2 : 4;
    gemm_.gradInput(c.dhBf16 ? GemmType::Bf16 : GemmType::Bf16F32Out,
                    {n, d_, vocab_, lddh, d_, vocab_}, dz_.get(), c.w,
                    c.dh + CUdeviceptr(size_t(r0) * size_t(lddh) * dhElem), at + ": dh");
    const float beta = (c.accumulateDw || r0 > 0) ? 1.0f : 0.0f;
    gemm_.gradWeight(GemmType::Bf16F32Out, {n, d_, vocab_, ldh, d_, vocab_}, dz_.get(), h, c.dw,
                     at + ": dW", 1.0f, beta);
  }
  const long long rows = c.rows;
  context_.launchWith(*kernels_.lossTotal, LaunchConfig{{1}, {kernels_.lossTotalBlock}, 0},
                      at + ": loss total", c.rowLoss, rows, c.total);
}

} // namespace tnlm::cuda
