//===- CpuTrainSteps.cpp - the backward and optimizer steps on the CPU ----===//
//
// The kernels tnlm-autodiff's train functions use (tnlm.fbs, KernelKind 8 and 12..29). Plan
// semantics: every output is overwritten; the kernels of runtime/cpu/Backward.h that
// accumulate get their outputs zeroed first.
//
//===----------------------------------------------------------------------===//
#include "runtime/CpuCall.h"
#include "runtime/TrainScratch.h"

#include "runtime/cpu/Backward.h"
#include "runtime/cpu/Fused.h"
#include "runtime/cpu/Kernels.h"
#include "runtime/cpu/Parallel.h"
#include "runtime/cpu/Recurrent.h"
#include "runtime/cpu/RowMath.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tnlm {

namespace {

void zero(float *p, int64_t rows, int64_t cols, int64_t ld) {
  for (int64_t r = 0; r < rows; ++r)
    std::fill(p + r * ld, p + r * ld + cols, 0.0f);
}

int64_t elements(const schema::Operand *o, int64_t rows) { return rows * o->cols(); }

} // namespace

// Learning rate of optimizer step index s (0-based), documented in TnlmGradOps.td
// (tnlm.lr_schedule) and docs/model.md.
double learningRate(int64_t s, const float *hp) {
  const double lr = hp[schema::HyperParam_Lr], minLr = hp[schema::HyperParam_MinLr];
  const double warmup = hp[schema::HyperParam_Warmup];
  const double total = hp[schema::HyperParam_TotalSteps];
  if (s < warmup)
    return lr * (static_cast<double>(s) + 1.0) / warmup;
  if (static_cast<int>(hp[schema::HyperParam_Schedule]) != schema::LrScheduleKind_Cosine)
    return lr;
  const double p = std::min(1.0, (s - warmup) / std::max(1.0, total - warmup));
  return minLr + (lr - minLr) * 0.5 * (1.0 + std::cos(M_PI * p));
}

bool CpuExecutor::runTrainingStep(const schema::Step &step, Call &call) {
  const schema::Step *s = &step;
  const int64_t rows = call.rows, batch = call.batch, seq = call.seq;
  const auto &in = *s->inputs();
  const auto &out = *s->outputs();
  const schema::Operand *y = out.Get(0);
  auto ptr = [&](const schema::Operand *o) { return call.ptr(o); };
  auto i64 = [&](unsigned i) { return s->i64_attrs()->Get(i); };
  auto f32 = [&](unsigned i) { return s->f32_attrs()->Get(i); };
  auto ld = [&](unsigned i) { return in.Get(i)->ld(); };
  switch (s->kind()) {
  case schema::KernelKind_CrossEntropy: {
    const schema::Operand *z = in.Get(0);
    if (z->ld() != z->cols())
      throw Error(call.source + ": step '" + s->name()->str() + "' reads strided logits");
    *ptr(y) =
        static_cast<float>(cpu::crossEntropy(ptr(z), call.ids(in.Get(1)), rows, z->cols(), i64(0)));
    return true;
  }
  case schema::KernelKind_CrossEntropyGrad: {
    const schema::Operand *z = in.Get(0);
    if (z->ld() != z->cols() || y->ld() != y->cols())
      throw Error(call.source + ": step '" + s->name()->str() + "' reads strided logits");
    cpu::crossEntropyGrad(ptr(z), call.ids(in.Get(1)), rows, z->cols(), i64(0), *ptr(in.Get(2)),
                          ptr(y));
    return true;
  }
  case schema::KernelKind_LmHeadLoss: {
    // The lm head, its cross entropy (and their backward) a chunk of rows at a time
    // (TrainScratch.h's rows per chunk): per chunk z = h·Wᵀ, the rows' losses (and dz in
    // place), dh = dz·W, dW (+)= dzᵀ·h; the mean of the row losses in row order, as
    // cross_entropy. Labels are checked (and counted) over the whole call first.
    const schema::Operand *h = in.Get(0), *w = in.Get(1);
    const bool grad = in.size() == 4;
    const int64_t vocab = w->rows(), d = h->cols(), ignore = i64(0);
    if (w->ld() != d)
      throw Error(call.source + ": step '" + s->name()->str() + "' reads a strided lm head");
    const int32_t *labels = call.ids(in.Get(2));
    const int64_t count = cpu::detail::countLabels(labels, rows, vocab, ignore);
    // Chunks as the GPU's (LmHeadLoss::evenChunk): equal, two at least.
    const int64_t chunk = lmHeadEvenChunk(
        rows, std::max<int64_t>(1, lmHeadChunkRows_ > 0 ? lmHeadChunkRows_
                                                        : lmHeadChunkRows(rows, vocab)));
    if (lmHeadChunk_.size() < size_t(std::min(chunk, rows) * vocab))
      lmHeadChunk_.resize(size_t(std::min(chunk, rows) * vocab));
    std::vector<double> rowLoss(size_t(std::max<int64_t>(rows, 0)), 0.0);
    const double k = grad ? double(*ptr(in.Get(3))) / double(count) : 0.0;
    float *z = lmHeadChunk_.data();
    if (grad && rows == 0)
      zero(ptr(out.Get(2)), out.Get(2)->rows(), out.Get(2)->cols(), out.Get(2)->ld());
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t n = std::min(chunk, rows - r0);
      const float *hc = ptr(h) + r0 * h->ld();
      cpu::linear(hc, n, d, h->ld(), ptr(w), vocab, z, vocab);
      if (!grad) {
        cpu::crossEntropyRows(z, labels + r0, n, vocab, ignore, rowLoss.data() + r0);
        continue;
      }
      cpu::crossEntropyGradRows(z, labels + r0, n, vocab, ignore, k, z, rowLoss.data() + r0);
      const schema::Operand *dh = out.Get(1), *dw = out.Get(2);
      cpu::linearGradInput(z, n, vocab, vocab, ptr(w), d, ptr(dh) + r0 * dh->ld(), dh->ld());
      cpu::linearGradWeight(z, n, vocab, vocab, hc, d, h->ld(), ptr(dw), r0 > 0);
    }
    double total = 0.0;
    for (double l : rowLoss)
      total += l;
    *ptr(y) = static_cast<float>(total / static_cast<double>(count));
    return true;
  }
  case schema::KernelKind_LinearGradInput: {
    const schema::Operand *dy = in.Get(0);
    cpu::linearGradInput(ptr(dy), rows, dy->cols(), dy->ld(), ptr(in.Get(1)), y->cols(), ptr(y),
                         y->ld());
    return true;
  }
  case schema::KernelKind_LinearGradWeight: {
    const schema::Operand *dy = in.Get(0), *x = in.Get(1);
    cpu::linearGradWeight(ptr(dy), rows, dy->cols(), dy->ld(), ptr(x), x->cols(), x->ld(), ptr(y));
    return true;
  }
  case schema::KernelKind_SrmsNormGrad:
    cpu::srmsNormGrad(ptr(in.Get(0)), ld(0), ptr(in.Get(1)), ld(1), rows, y->cols(), f32(0), ptr(y),
                      y->ld());
    return true;
  case schema::KernelKind_AddSrmsNormGrad: {
    const bool dsum = in.size() > 2;
    cpu::addSrmsNormGrad(ptr(in.Get(0)), ld(0), dsum ? ptr(in.Get(2)) : nullptr, dsum ? ld(2) : 0,
                         ptr(in.Get(1)), ld(1), rows, y->cols(), f32(0), ptr(y), y->ld());
    return true;
  }
  case schema::KernelKind_SiluGrad:
    cpu::siluGrad(ptr(in.Get(0)), ld(0), ptr(in.Get(1)), ld(1), rows, y->cols(), ptr(y), y->ld());
    return true;
  case schema::KernelKind_LrpeGrad: {
    const schema::Operand *dtheta = out.Get(1);
    zero(ptr(dtheta), dtheta->rows(), dtheta->cols(), dtheta->ld());
    cpu::lrpeGrad(ptr(in.Get(0)), batch, seq, i64(0), i64(1), ld(0), ptr(in.Get(1)), i64(2),
                  ptr(in.Get(2)), ptr(y), y->ld(), ptr(dtheta));
    return true;
  }
  case schema::KernelKind_DecayAttentionGrad: {
    const int64_t heads = i64(0), dk = i64(1), dv = i64(2), block = i64(3);
    const schema::Operand *dq = out.Get(0), *dkk = out.Get(1), *dvv = out.Get(2);
    if (block > 0)
      cpu::lightningAttentionGrad(ptr(in.Get(0)), ptr(in.Get(1)), ptr(in.Get(2)), batch, seq, heads,
                                  dk, dv, ld(0), ld(1), ld(2), s->slopes()->data(), ptr(in.Get(3)),
                                  ld(3), ptr(dq), dq->ld(), ptr(dkk), dkk->ld(), ptr(dvv),
                                  dvv->ld(), block);
    else
      cpu::decayLinearAttentionGradRecurrent(ptr(in.Get(0)), ptr(in.Get(1)), ptr(in.Get(2)), batch,
                                             seq, heads, dk, dv, ld(0), ld(1), ld(2),
                                             s->slopes()->data(), ptr(in.Get(3)), ld(3), ptr(dq),
                                             dq->ld(), ptr(dkk), dkk->ld(), ptr(dvv), dvv->ld());
    return true;
  }
  case schema::KernelKind_LightningAttentionGrad: {
    const bool lrpe = i64(3) != 0, silu = i64(4) != 0;
    const schema::Operand *dy = in.Get(lrpe ? 2 : 1);
    float *dtheta = nullptr;
    if (lrpe) {
      const schema::Operand *dt = out.Get(1);
      dtheta = ptr(dt);
      zero(dtheta, dt->rows(), dt->cols(), dt->ld());
    }
    cpu::fusedLightningAttentionGrad(ptr(in.Get(0)), ld(0), batch, seq, i64(0), i64(1), silu,
                                     lrpe ? ptr(in.Get(1)) : nullptr, i64(5), s->slopes()->data(),
                                     i64(2), f32(0), ptr(dy), dy->ld(), ptr(out.Get(lrpe ? 2 : 1)),
                                     ptr(y), y->ld(), dtheta);
    return true;
  }
  case schema::KernelKind_GatedLinearGrad: {
    const schema::Operand *x = in.Get(0), *dy = in.Get(3);
    cpu::gatedLinearGrad(ptr(x), rows, x->cols(), x->ld(), ptr(in.Get(1)), ptr(in.Get(2)),
                         dy->cols(), ptr(dy), dy->ld(), ptr(y), y->ld(), ptr(out.Get(1)),
                         ptr(out.Get(2)));
    return true;
  }
  case schema::KernelKind_EmbeddingGrad: {
    const schema::Operand *dx = in.Get(1);
    zero(ptr(y), y->rows(), y->cols(), y->ld());
    const int64_t padding =
        s->i64_attrs() && s->i64_attrs()->size() > 0 ? s->i64_attrs()->Get(0) : int64_t(-1);
    cpu::embeddingGrad(call.ids(in.Get(0)), rows, ptr(dx), dx->ld(), y->cols(), f32(0), y->rows(),
                       ptr(y), padding);
    return true;
  }
  case schema::KernelKind_Concat: {
    float *dst = ptr(y);
    const int64_t n = call.rowsOf(y);
    int64_t col = 0;
    for (const schema::Operand *part : in) {
      const float *src = ptr(part);
      const int64_t w = part->cols(), lds = part->ld(), ldy = y->ld();
      cpu::parallelFor(n, 256, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r)
          std::memcpy(dst + r * ldy + col, src + r * lds, w * sizeof(float));
      });
      col += w;
    }
    return true;
  }
  case schema::KernelKind_Fill: {
    const float v = f32(0);
    float *p = ptr(y);
    const int64_t n = call.rowsOf(y);
    if (y->dtype() == schema::DType_I32) {
      for (int64_t i = 0; i < n * y->cols(); ++i)
        reinterpret_cast<int32_t *>(p)[i] = static_cast<int32_t>(v);
      return true;
    }
    for (int64_t r = 0; r < n; ++r)
      std::fill(p + r * y->ld(), p + r * y->ld() + y->cols(), v);
    return true;
  }
  case schema::KernelKind_GlobalNorm: {
    const float *hp = ptr(in.Get(0));
    double sum = 0;
    for (unsigned i = 1; i < in.size(); ++i)
      sum += cpu::sumSquares(ptr(in.Get(i)), elements(in.Get(i), call.rowsOf(in.Get(i))));
    *ptr(y) = static_cast<float>(std::sqrt(sum) / hp[schema::HyperParam_AccumSteps]);
    return true;
  }
  case schema::KernelKind_LrSchedule:
    *ptr(y) = static_cast<float>(learningRate(*call.i32(in.Get(0)), ptr(in.Get(1))));
    return true;
  case schema::KernelKind_ClipScale: {
    const float *hp = ptr(in.Get(1));
    const double norm = *ptr(in.Get(0)), clip = hp[schema::HyperParam_ClipGrad];
    double c = 1.0;
    if (clip > 0)
      c = std::min(1.0, clip / (norm + 1e-6)); // torch.nn.utils.clip_grad_norm_
    *ptr(y) = static_cast<float>(c / hp[schema::HyperParam_AccumSteps]);
    return true;
  }
  case schema::KernelKind_AdamW: {
    const schema::Operand *p = in.Get(0);
    const float *hp = ptr(in.Get(7));
    const float wd = i64(0) ? hp[schema::HyperParam_WeightDecay] : 0.0f;
    cpu::adamw(ptr(p), ptr(in.Get(1)), ptr(in.Get(2)), ptr(in.Get(3)), elements(p, call.rowsOf(p)),
               *ptr(in.Get(5)), hp[schema::HyperParam_Beta1], hp[schema::HyperParam_Beta2],
               hp[schema::HyperParam_Eps], wd, *ptr(in.Get(6)),
               static_cast<int64_t>(*call.i32(in.Get(4))) + 1);
    return true;
  }
  case schema::KernelKind_Increment:
    *call.i32(y) = *call.i32(in.Get(0)) + 1;
    return true;
  case schema::KernelKind_LightningPrefill: {
    const bool lrpe = i64(3) != 0, silu = i64(4) != 0;
    cpu::lightningPrefill(ptr(in.Get(0)), ld(0), batch, seq, i64(0), i64(1), silu,
                          lrpe ? ptr(in.Get(3)) : nullptr, call.ids(in.Get(2)), s->slopes()->data(),
                          i64(2), f32(0), out.size() > 2 ? ptr(out.Get(2)) : nullptr,
                          ptr(out.Get(1)), ptr(y), y->ld());
    return true;
  }
  case schema::KernelKind_LightningDecode: {
    if (seq != 1)
      throw Error(call.source + ": step '" + s->name()->str() +
                  "' decodes one token per slot, "
                  "but the call has " +
                  std::to_string(seq) + " per slot");
    const bool lrpe = i64(2) != 0, silu = i64(3) != 0;
    cpu::lightningDecode(ptr(in.Get(0)), ld(0), batch, i64(0), i64(1), silu,
                         lrpe ? ptr(in.Get(3)) : nullptr, call.ids(in.Get(2)), s->slopes()->data(),
                         f32(0), ptr(out.Get(1)), ptr(y), y->ld());
    return true;
  }
  case schema::KernelKind_GatherLast:
    cpu::gatherLastRows(ptr(in.Get(0)), ld(0), batch, seq, y->cols(), call.ids(in.Get(1)), ptr(y),
                        y->ld());
    return true;
  default:
    return false;
  }
}

} // namespace tnlm
