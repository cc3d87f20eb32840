//===- CpuExecutor.cpp - run an artifact's plan on the CPU ----------------===//
#include "runtime/CpuExecutor.h"

#include "runtime/Error.h"
#include "runtime/cpu/Fused.h"
#include "runtime/cpu/Kernels.h"

#include <cmath>

namespace tnlm {

CpuExecutor::CpuExecutor(const Artifact &artifact, ParamValues params)
    : artifact_(artifact), params_(std::move(params)) {
  checkParamValues(artifact, params_);
  const schema::Function &fn = artifact.function("forward");
  try {
    arena_.assign(fn.arena_bytes() / sizeof(float) + 1, 0.0f);
  } catch (const std::exception &) { // bad_alloc or length_error
    throw Error(artifact.source() + ": cannot allocate the activation arena of " +
                std::to_string(fn.arena_bytes()) + " bytes");
  }
  const schema::FunctionIO *out = fn.outputs()->Get(0);
  vocab_ = out->shape()->Get(out->shape()->size() - 1);
}

std::vector<float> CpuExecutor::forward(const int32_t *ids, int64_t batch, int64_t seq) {
  const std::string &src = artifact_.source();
  artifact_.checkCallShape(batch, seq);
  const int64_t rows = batch * seq;
  float *arena = arena_.data();
  auto ptr = [&](const schema::Operand *o) -> float * {
    switch (o->kind()) {
    case schema::OperandKind_Arena:
      return arena + o->offset() / sizeof(float) + o->col_offset();
    case schema::OperandKind_Param:
      return params_[o->offset()].data() + o->col_offset();
    default:
      throw Error(src + ": a float operand refers to a function input");
    }
  };
  const schema::Function &fn = artifact_.function("forward");
  for (const schema::Step *s : *fn.steps()) {
    const auto &in = *s->inputs();
    const auto &out = *s->outputs();
    const schema::Operand *y = out.Get(0);
    auto i64 = [&](unsigned i) { return s->i64_attrs()->Get(i); };
    auto f32 = [&](unsigned i) { return s->f32_attrs()->Get(i); };
    switch (s->kind()) {
    case schema::KernelKind_Embedding: {
      const schema::Operand *table = in.Get(1);
      int64_t vocab = artifact_.root().params()->Get(table->offset())->shape()->Get(0);
      cpu::embedding(ids, rows, ptr(table), vocab, y->cols(), f32(0), ptr(y));
      break;
    }
    case schema::KernelKind_SrmsNorm:
      cpu::srmsNorm(ptr(in.Get(0)), rows, in.Get(0)->cols(), in.Get(0)->ld(), f32(0), ptr(y),
                    y->ld());
      break;
    case schema::KernelKind_Linear: {
      const schema::Operand *w = in.Get(1);
      int64_t outFeatures = artifact_.root().params()->Get(w->offset())->shape()->Get(0);
      cpu::linear(ptr(in.Get(0)), rows, in.Get(0)->cols(), in.Get(0)->ld(), ptr(w), outFeatures,
                  ptr(y), y->ld());
      break;
    }
    case schema::KernelKind_Silu:
      cpu::silu(ptr(in.Get(0)), rows, y->cols(), in.Get(0)->ld(), ptr(y), y->ld());
      break;
    case schema::KernelKind_Mul:
      cpu::mul(ptr(in.Get(0)), ptr(in.Get(1)), rows, y->cols(), in.Get(0)->ld(),
               in.Get(1)->ld(), ptr(y), y->ld());
      break;
    case schema::KernelKind_Add:
      cpu::add(ptr(in.Get(0)), ptr(in.Get(1)), rows, y->cols(), in.Get(0)->ld(),
               in.Get(1)->ld(), ptr(y), y->ld());
      break;
    case schema::KernelKind_Lrpe:
      cpu::lrpe(ptr(in.Get(0)), batch, seq, i64(0), i64(1), in.Get(0)->ld(), ptr(in.Get(1)),
                i64(2), ptr(y));
      break;
    case schema::KernelKind_DecayAttention: {
      int64_t heads = i64(0), dk = i64(1), dv = i64(2), block = i64(3);
      const float *slopes = s->slopes()->data();
      if (static_cast<int64_t>(s->slopes()->size()) != heads)
        throw Error(src + ": step '" + s->name()->str() + "' has a wrong number of slopes");
      if (block > 0)
        cpu::lightningAttention(ptr(in.Get(0)), ptr(in.Get(1)), ptr(in.Get(2)), batch, seq,
                                heads, dk, dv, in.Get(0)->ld(), in.Get(1)->ld(),
                                in.Get(2)->ld(), slopes, ptr(y), y->ld(), block);
      else
        cpu::decayLinearAttentionRecurrent(ptr(in.Get(0)), ptr(in.Get(1)), ptr(in.Get(2)),
                                           batch, seq, heads, dk, dv, in.Get(0)->ld(),
                                           in.Get(1)->ld(), in.Get(2)->ld(), slopes, ptr(y),
                                           y->ld());
      break;
    }
    case schema::KernelKind_LightningAttention: {
      // Operands as checked by Artifact's checkStructure: θ iff lrpe, workspace iff prologue.
      bool lrpe = i64(3) != 0, silu = i64(4) != 0;
      cpu::fusedLightningAttention(ptr(in.Get(0)), in.Get(0)->ld(), batch, seq, i64(0), i64(1),
                                   silu, lrpe ? ptr(in.Get(1)) : nullptr, i64(5),
                                   s->slopes()->data(), i64(2), f32(0),
                                   out.size() > 1 ? ptr(out.Get(1)) : nullptr, ptr(y), y->ld());
      break;
    }
    case schema::KernelKind_AddSrmsNorm: {
      const schema::Operand *n = out.Get(1);
      cpu::addSrmsNorm(ptr(in.Get(0)), ptr(in.Get(1)), rows, y->cols(), in.Get(0)->ld(),
                       in.Get(1)->ld(), f32(0), ptr(y), y->ld(), ptr(n), n->ld());
      break;
    }
    case schema::KernelKind_GatedLinear:
      cpu::gatedLinear(ptr(in.Get(0)), rows, in.Get(0)->cols(), in.Get(0)->ld(), ptr(in.Get(1)),
                       ptr(in.Get(2)), y->cols(), ptr(y), y->ld());
      break;
    default:
      throw Error(src + ": step '" + s->name()->str() + "' has a kernel kind (" +
                  std::to_string(static_cast<int>(s->kind())) +
                  ") that the CPU backend does not run");
    }
  }
  const schema::FunctionIO *out = fn.outputs()->Get(0);
  const float *logits = arena + out->offset() / sizeof(float);
  return std::vector<float>(logits, logits + rows * vocab_);
}

} // namespace tnlm
