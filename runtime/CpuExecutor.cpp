//===- CpuExecutor.cpp - run an artifact's plan on the CPU ----------------===//
#include "runtime/CpuExecutor.h"
#include "runtime/CpuCall.h"

#include "runtime/Error.h"
#include "runtime/cpu/Fused.h"
#include "runtime/cpu/Kernels.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace tnlm {

CpuExecutor::CpuExecutor(const Artifact &artifact, ParamValues params)
    : artifact_(artifact), params_(std::move(params)) {
  checkParamValues(artifact, params_);
  uint64_t arena = 0;
  for (const schema::Function *f : *artifact.root().functions())
    arena = std::max<uint64_t>(arena, f->arena_bytes());
  try {
    arena_.assign(arena / sizeof(float) + 1, 0.0f);
    if (const auto *state = artifact.root().state())
      for (const schema::StateBuffer *s : *state) {
        uint64_t n = 1;
        for (int64_t d : *s->shape())
          n *= static_cast<uint64_t>(d);
        state_.emplace_back(n, 0.0f); // int32 0 has the bits of 0.0f
      }
  } catch (const std::exception &) { // bad_alloc or length_error
    throw Error(artifact.source() + ": cannot allocate the activation arena of " +
                std::to_string(arena) + " bytes and the training state");
  }
  for (const schema::Function *f : *artifact.root().functions())
    for (const schema::FunctionIO *out : *f->outputs())
      if (out->shape()->size() == 3)
        vocab_ = out->shape()->Get(2);
  if (vocab_ == 0)
    vocab_ = artifact.vocabSize();
}

int64_t CpuExecutor::stateIndex(const std::string &name) const {
  if (const auto *state = artifact_.root().state())
    for (unsigned i = 0; i < state->size(); ++i)
      if (state->Get(i)->name()->str() == name)
        return i;
  return -1;
}

int64_t CpuExecutor::stepCounter() const {
  int64_t i = stateIndex("step");
  if (i < 0)
    return 0;
  int32_t v;
  std::memcpy(&v, state_[i].data(), sizeof v);
  return v;
}

void CpuExecutor::setStepCounter(int64_t step) {
  int64_t i = stateIndex("step");
  if (i < 0)
    throw Error(artifact_.source() + ": the artifact has no step counter");
  if (step < 0 || step > INT32_MAX)
    throw Error("step counter " + std::to_string(step) + " is outside 0..2^31-1");
  int32_t v = static_cast<int32_t>(step);
  std::memcpy(state_[i].data(), &v, sizeof v);
}

std::vector<float> CpuExecutor::forward(const int32_t *ids, int64_t batch, int64_t seq) {
  auto outputs = run("forward", {{"ids", ids}}, batch, seq);
  return std::move(outputs.front().second);
}

std::vector<std::pair<std::string, std::vector<float>>>
CpuExecutor::run(const std::string &name, const std::vector<Input> &inputs, int64_t batch,
                 int64_t seq) {
  const schema::Function &fn = artifact_.function(name);
  artifact_.checkCallShape(batch, seq);
  Call call{artifact_.source(), batch, seq, batch * seq, arena_.data(), params_, state_, {}};
  for (const schema::FunctionIO *in : *fn.inputs()) {
    auto it = std::find_if(inputs.begin(), inputs.end(),
                           [&](const Input &i) { return i.name == in->name()->str(); });
    if (it == inputs.end() || !it->data)
      throw Error(artifact_.source() + ": function '" + name + "' needs input '" +
                  in->name()->str() + "'");
    call.inputs.push_back(it->data);
  }
  if (checkFinite_) {
    const auto *params = artifact_.root().params();
    for (unsigned i = 0; i < params->size(); ++i)
      for (float v : params_[i])
        if (!std::isfinite(v))
          throw NonFiniteError("parameter '" + params->Get(i)->name()->str() +
                                   "' holds non-finite values before @" + name,
                               params->Get(i)->name()->str());
  }
  for (const schema::Step *s : *fn.steps()) {
    runStep(*s, call);
    if (!checkFinite_)
      continue;
    const auto *outs = s->outputs();
    for (unsigned k = 0; k < outs->size(); ++k) {
      const schema::Operand *o = outs->Get(k);
      // Workspaces hold scratch, not results.
      const bool workspace =
          (s->kind() == schema::KernelKind_LightningAttention && k > 0) ||
          (s->kind() == schema::KernelKind_LightningAttentionGrad && k + 1 == outs->size());
      if (o->dtype() != schema::DType_F32 || workspace)
        continue;
      const float *p = call.ptr(o);
      const int64_t n = call.rowsOf(o);
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < o->cols(); ++c)
          if (!std::isfinite(p[r * o->ld() + c]))
            throw NonFiniteError("non-finite values first appear in the output of step '" +
                                     s->name()->str() + "' (" +
                                     schema::EnumNameKernelKind(s->kind()) + ") of @" + name,
                                 s->name()->str());
    }
  }
  std::vector<std::pair<std::string, std::vector<float>>> results;
  for (const schema::FunctionIO *out : *fn.outputs()) {
    const float *p = arena_.data() + out->offset() / sizeof(float);
    int64_t n = 1;
    if (out->shape()->size() == 3) // [batch, seq or 1, vocab]
      n = (out->shape()->Get(1) == -2 ? call.rows : call.batch * out->shape()->Get(1)) *
          out->shape()->Get(2);
    else
      for (int64_t d : *out->shape())
        n *= d;
    results.emplace_back(out->name()->str(), std::vector<float>(p, p + n));
  }
  return results;
}

void CpuExecutor::runStep(const schema::Step &step, Call &call) {
  const schema::Step *s = &step;
  const std::string &src = call.source;
  const int64_t rows = call.rows, batch = call.batch, seq = call.seq;
  const auto &in = *s->inputs();
  const auto &out = *s->outputs();
  const schema::Operand *y = out.Get(0);
  auto ptr = [&](const schema::Operand *o) { return call.ptr(o); };
  auto i64 = [&](unsigned i) { return s->i64_attrs()->Get(i); };
  auto f32 = [&](unsigned i) { return s->f32_attrs()->Get(i); };
  switch (s->kind()) {
  case schema::KernelKind_Embedding: {
    const schema::Operand *table = in.Get(1);
    int64_t vocab = artifact_.root().params()->Get(table->offset())->shape()->Get(0);
    cpu::embedding(call.ids(in.Get(0)), rows, ptr(table), vocab, y->cols(), f32(0), ptr(y));
    break;
  }
  case schema::KernelKind_SrmsNorm:
    cpu::srmsNorm(ptr(in.Get(0)), rows, in.Get(0)->cols(), in.Get(0)->ld(), f32(0), ptr(y),
                  y->ld());
    break;
  case schema::KernelKind_Linear: {
    const schema::Operand *w = in.Get(1);
    int64_t outFeatures = artifact_.root().params()->Get(w->offset())->shape()->Get(0);
    cpu::linear(ptr(in.Get(0)), call.rowsOf(in.Get(0)), in.Get(0)->cols(), in.Get(0)->ld(), ptr(w),
                outFeatures, ptr(y), y->ld());
    break;
  }
  case schema::KernelKind_Silu:
    cpu::silu(ptr(in.Get(0)), rows, y->cols(), in.Get(0)->ld(), ptr(y), y->ld());
    break;
  case schema::KernelKind_Mul:
    cpu::mul(ptr(in.Get(0)), ptr(in.Get(1)), call.rowsOf(y), y->cols(), in.Get(0)->ld(),
             in.Get(1)->ld(), ptr(y), y->ld());
    break;
  case schema::KernelKind_Add:
    cpu::add(ptr(in.Get(0)), ptr(in.Get(1)), call.rowsOf(y), y->cols(), in.Get(0)->ld(),
             in.Get(1)->ld(), ptr(y), y->ld());
    break;
  case schema::KernelKind_Lrpe:
    cpu::lrpe(ptr(in.Get(0)), batch, seq, i64(0), i64(1), in.Get(0)->ld(), ptr(in.Get(1)), i64(2),
              ptr(y));
    break;
  case schema::KernelKind_DecayAttention: {
    int64_t heads = i64(0), dk = i64(1), dv = i64(2), block = i64(3);
    const float *slopes = s->slopes()->data();
    if (block > 0)
      cpu::lightningAttention(ptr(in.Get(0)), ptr(in.Get(1)), ptr(in.Get(2)), batch, seq, heads, dk,
                              dv, in.Get(0)->ld(), in.Get(1)->ld(), in.Get(2)->ld(), slopes, ptr(y),
                              y->ld(), block);
    else
      cpu::decayLinearAttentionRecurrent(ptr(in.Get(0)), ptr(in.Get(1)), ptr(in.Get(2)), batch, seq,
                                         heads, dk, dv, in.Get(0)->ld(), in.Get(1)->ld(),
                                         in.Get(2)->ld(), slopes, ptr(y), y->ld());
    break;
  }
  case schema::KernelKind_LightningAttention: {
    // Operands as checked by checkStructure: θ iff lrpe, workspace iff prologue.
    bool lrpe = i64(3) != 0, silu = i64(4) != 0;
    cpu::fusedLightningAttention(ptr(in.Get(0)), in.Get(0)->ld(), batch, seq, i64(0), i64(1), silu,
                                 lrpe ? ptr(in.Get(1)) : nullptr, i64(5), s->slopes()->data(),
                                 i64(2), f32(0), out.size() > 1 ? ptr(out.Get(1)) : nullptr, ptr(y),
                                 y->ld());
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
    if (!runTrainingStep(step, call))
      throw Error(src + ": step '" + s->name()->str() + "' has a kernel kind (" +
                  std::to_string(static_cast<int>(s->kind())) +
                  ") that the CPU backend does not run");
  }
}

} // namespace tnlm
