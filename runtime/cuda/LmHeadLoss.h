//===- LmHeadLoss.h - the lm head, its loss and backward in chunks of rows -*- C++ -*-===//
//
// Training on the GPU (issue 11): the last hidden states h [rows, d] (bf16) through the lm head
// W [V, d] (bf16) into the cross entropy, and back, without the [rows, V] logits ever whole in
// memory. A call's rows are cut into as few chunks of at most `chunkRows` rows as hold them, of
// equal size (the last one up to chunks - 1 rows smaller: 8,192 rows with chunkRows 2,688 are
// 4 x 2,048, not 3 x 2,688 + 128, whose last GEMMs, K = 128 for dW, run far below the others'
// rate). For each chunk:
//   z  = h·Wᵀ                    f32 logits [chunk, V]           (cuBLASLt, bf16 in, f32 out)
//   dz, loss rows                bw::cross_entropy_grad, dz bf16 (the GEMMs' operand), the
//                                rows' losses in f64, k = dloss / counted read on the device
//   dh = dz·W                    f32 or bf16 [chunk, d]          (Gemm::gradInput)
//   dW += dzᵀ·h                  f32 [V, d]                      (Gemm::gradWeight, β = 1;
//                                                                 β = 0 on the first chunk
//                                                                 unless accumulating)
// or, without dh (the loss alone, @eval_loss), bw::cross_entropy_loss on each chunk's logits;
// then bw::loss_total adds the row losses in row order (the CPU's order). The workspace is
// chunkRows·V·6 bytes (the f32 logits and the bf16 dz of one chunk). Everything is queued on
// the context's stream (a CUDA graph may capture it).
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CUDA_LMHEADLOSS_H
#define TNLM_RUNTIME_CUDA_LMHEADLOSS_H

#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/Gemm.h"

#include <cstdint>
#include <string_view>

namespace tnlm::cuda {

/// The two kernels it launches, from a module compiled from codegen/cuda/Backward.cuh:
///   crossEntropyGrad: bw::cross_entropy_grad<block, bf16>(const float *x, long long ldx,
///       const int *labels, int vocab, int ignoreIndex, const double *kp, bf16 *dx,
///       long long lddx, double *rowLoss), one CTA of `block` threads per row; or (gradRows)
///       bw::cross_entropy_grad_rows<block, bf16>(x, ldx, labels, long long rows, vocab, ...),
///       min(rows, #SMs) CTAs looping over the rows (or bw::cross_entropy_grad_rows_held, the
///       same arguments, with gradShared bytes of dynamic shared memory);
///   lossTotal: bw::loss_total(const double *rowLoss, long long rows, double *total), one thread
///       (or bw::loss_total_block, lossTotalBlock threads);
///   crossEntropyLoss (for calls without dh): bw::cross_entropy_loss<block>(const float *x,
///       long long ldx, const int *labels, int vocab, int ignoreIndex, double *rowLoss).
struct LmHeadLossKernels {
  Kernel *crossEntropyGrad = nullptr;
  unsigned block = 256; // crossEntropyGrad's
  Kernel *lossTotal = nullptr;
  Kernel *crossEntropyLoss = nullptr;
  unsigned lossBlock = 256;    // crossEntropyLoss's
  bool gradRows = false;       // crossEntropyGrad is bw::cross_entropy_grad_rows (takes the rows; a
                               // grid of at most one CTA per SM), not one CTA per row
  unsigned lossTotalBlock = 1; // lossTotal's (bw::loss_total_block<block> where > 1)
  unsigned gradShared = 0;     // crossEntropyGrad's dynamic shared memory (the held rows:
                               // bw::cross_entropy_grad_rows_held, same arguments as gradRows)
};

struct LmHeadLossCall {
  CUdeviceptr h = 0;      // bf16 [rows, d], ld ldh
  int64_t ldh = 0;        // 0: d
  CUdeviceptr w = 0;      // bf16 [vocab, d] contiguous (the lm head, or the tied embedding)
  CUdeviceptr labels = 0; // i32 [rows]
  int ignoreIndex = -100;
  CUdeviceptr k = 0; // f64 on the device: dloss / the step's counted labels
  int64_t rows = 0;
  CUdeviceptr dh = 0; // f32 (or bf16) [rows, d], ld lddh (overwritten); 0: the loss alone
  int64_t lddh = 0;   // 0: d
  bool dhBf16 = false;
  CUdeviceptr dw = 0;       // f32 [vocab, d] contiguous
  bool accumulateDw = true; // dW += (or, false: dW =) the call's gradient
  CUdeviceptr rowLoss = 0;  // f64 [rows]
  CUdeviceptr total = 0;    // f64: Σ row losses (the caller divides by the counted labels)
};

class LmHeadLoss {
public:
  /// Allocates the workspace for chunks of `chunkRows` rows of a vocabulary of `vocab` and a
  /// hidden size `d`. Throws on sizes that are not positive and without the kernels it needs
  /// (crossEntropyGrad or crossEntropyLoss, and lossTotal).
  LmHeadLoss(const Context &context, Gemm &gemm, LmHeadLossKernels kernels, int64_t chunkRows,
             int64_t vocab, int64_t d);

  /// Queues the chunks and the total for one call. `where` names the step in errors.
  void run(const LmHeadLossCall &call, std::string_view where = {});

  int64_t chunkRows() const { return chunkRows_; }
  /// The rows of each chunk of a call of `rows` rows with chunks of at most `maxChunk` (the
  /// last chunk: the rest; two chunks at least where rows >= 2, lmHeadEvenChunk). Needs no GPU.
  static int64_t evenChunk(int64_t rows, int64_t maxChunk);
  size_t workspaceBytes() const { return logits_.size() + dz_.size(); }

private:
  const Context &context_;
  Gemm &gemm_;
  LmHeadLossKernels kernels_;
  int64_t chunkRows_, vocab_, d_;
  DeviceBuffer logits_, dz_;
};

} // namespace tnlm::cuda

#endif // TNLM_RUNTIME_CUDA_LMHEADLOSS_H
