//===- CudaTrainSteps.cpp - the train plan's steps on the GPU (work in progress) --===//
//
// CudaExecutor's train functions (docs/gpu-training.md, "The GPU train step"): the forward
// steps run as in inference (runStep), the backward and optimizer steps here with the kernels
// CudaEmitter::trainStep emits (codegen/cuda/Backward.cuh, LightningAttentionGradParts.cuh)
// and cuBLASLt. Step by step, no graphs yet. Plan semantics as on the CPU
// (runtime/CpuTrainSteps.cpp): every output is overwritten; kernels that accumulate get their
// outputs zeroed first.
//
// The fused Lightning backward's workspace (the plan's [rows, 4·H·dk + 2·D] f32, ld W floats):
//   q', k' (bf16, ld 2W) at float columns 0 and H·dk/2; dq', dk' (bf16, ld 2W, LRPE only) at
//   float column 2·H·dk; O (f32, ld W) at 4·H·dk; dO (bf16, ld 2W) at 4·H·dk + D.
//
//===----------------------------------------------------------------------===//
#include "runtime/cuda/CudaExecutor.h"

#include "codegen/cuda/LightningFwdPlan.h"
#include "runtime/CpuExecutor.h"
#include "runtime/DType.h"
#include "runtime/EmbeddingSegments.h"
#include "runtime/Error.h"
#include "runtime/TrainScratch.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <string_view>

namespace tnlm::cuda {

namespace {

constexpr int64_t kOptChunk = kTrainOptChunk;       // bw::kOptChunk
constexpr int kPositionChunk = kTrainPositionChunk; // la_bw::kPositionChunk

// bw::OptTensor as the host fills it (device pointers as 64-bit words), 56 bytes.
struct HostOptTensor {
  CUdeviceptr p, g, m, v;
  long long n, chunk0;
  int decay, pad;
};
static_assert(sizeof(HostOptTensor) == 56, "bw::OptTensor's layout");

bool sameOperand(const schema::Operand *a, const schema::Operand *b) {
  return a->kind() == b->kind() && a->offset() == b->offset() &&
         a->col_offset() == b->col_offset() && a->ld() == b->ld() && a->rows() == b->rows() &&
         a->cols() == b->cols() && a->dtype() == b->dtype();
}

uint32_t floatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

} // namespace

bool launchesKernel(const schema::Artifact &a, const schema::Step &s, std::string_view prefix) {
  const auto &names = *a.kernels()->names();
  if (s.launches())
    for (const schema::KernelLaunch *l : *s.launches())
      if (l->kind() != schema::LaunchKind_Gemm &&
          names.Get(l->kernel())->string_view().substr(0, prefix.size()) == prefix)
        return true;
  return false;
}

CUdeviceptr CudaExecutor::master(const schema::Operand *o, const std::string &where) const {
  if (o->kind() != schema::OperandKind_Param)
    return operand(o, where);
  return masters_.at(o->offset()) + o->col_offset() * 4;
}

// A plain layer's Lightning backward that reads its forward's kept workspace (φ(q), φ(k), O:
// the step's third input), whose forward keeps its piece states for it.
static bool readsKeptWorkspace(const schema::Step &s) {
  return s.kind() == schema::KernelKind_LightningAttentionGrad && s.i64_attrs()->Get(3) == 0 &&
         s.inputs()->size() == 3;
}

size_t CudaExecutor::planTrainScratch() {
  TrainScratchNeeds n;
  for (const Function &f : functions_)
    for (const schema::Step *s : *f.fn->steps()) {
      const auto &in = *s->inputs();
      switch (s->kind()) {
      case schema::KernelKind_CrossEntropy: // older artifacts: the gradient into scratch
        if (!launchesKernel(artifact_.root(), *s, "tnlm_cross_entropy_loss"))
          n.lossCols = std::max<int64_t>(n.lossCols, in.Get(0)->cols());
        break;
      case schema::KernelKind_GatedLinearGrad:
        n.gatedCols = std::max<int64_t>(n.gatedCols, in.Get(3)->cols());
        if (in.size() < 6) // no forward a, b: recomputed in the scratch
          n.gatedRecomputedCols = std::max<int64_t>(n.gatedRecomputedCols, in.Get(3)->cols());
        break;
      case schema::KernelKind_LmHeadLoss:
        n.lmHeadVocab = std::max<int64_t>(n.lmHeadVocab, in.Get(1)->rows());
        break;
      case schema::KernelKind_LightningAttentionGrad:
        n.lrpeFeatures =
            std::max<int64_t>(n.lrpeFeatures, s->i64_attrs()->Get(0) * s->i64_attrs()->Get(1));
        if (readsKeptWorkspace(*s)) // as gpuTrainScratch (tnlmc)
          n.keptLaStates +=
              keptLaStatesOf(artifact_.maxBatch(), s->i64_attrs()->Get(0), artifact_.maxSeq());
        break;
      case schema::KernelKind_GlobalNorm: {
        int64_t c = 0;
        for (unsigned i = 1; i < in.size(); ++i)
          c += (std::max<int64_t>(in.Get(i)->rows(), 1) * in.Get(i)->cols() + kOptChunk - 1) /
               kOptChunk;
        n.gradChunks = std::max(n.gradChunks, c);
        break;
      }
      default:
        break;
      }
    }
  const TrainScratch t =
      trainScratch(artifact_.maxBatch() * artifact_.maxSeq(), artifact_.maxSeq(), n);
  lossScratchBytes_ = t.loss, gatedGradBytes_ = t.gated, dthetaBytes_ = t.dtheta;
  optChunks_ = t.chunks;
  lmHeadChunkRows_ = t.lmHeadChunkRows;
  keptLaBytes_ = t.keptLaStates;
  return t.total;
}

void CudaExecutor::allocateTrain() {
  const int64_t maxRows = artifact_.maxBatch() * artifact_.maxSeq();
  auto buffer = [&](size_t bytes, const char *what) {
    trainBuffers_.emplace_back(std::max<size_t>(bytes, 16), what);
    return trainBuffers_.back().get();
  };
  invCount_ = buffer(8, "1 / the counted labels");
  lossK_ = buffer(8, "the loss gradient's factor");
  lossTotal_ = buffer(8, "the loss total");
  rowLoss_ = buffer(size_t(maxRows) * 8, "the row losses");
  lossScratch_ = buffer(lossScratchBytes_, "the loss's logit gradients");
  gatedGrad_ = buffer(gatedGradBytes_, "the gated linear backward's products");
  dthetaPartial_ = buffer(dthetaBytes_, "the LRPE dθ partials");
  segOrder_ = buffer(size_t(maxRows) * 4, "the embedding grouping");
  segStart_ = buffer(size_t(maxRows + 1) * 4, "the embedding grouping");
  segIds_ = buffer(size_t(maxRows) * 4, "the embedding grouping");
  optPartial_ = buffer(optChunks_ * 8, "the sum of squares' chunks");
  optT_ = buffer(4, "the AdamW step");
  // The plain layers' kept piece states: one slot per kept workspace (the forward step's output,
  // its backward's third input: the same arena operand), keptLaStatesOf states each; none where
  // nothing reads them (TNLM_LA_REUSE_STATES=0, or kernels before format 6: planTrainScratch
  // still counts them, an upper bound).
  if (keptLaBytes_ && reuseLaStates_ && artifact_.root().format_version() >= 6) {
    const CUdeviceptr kept = buffer(keptLaBytes_, "the kept Lightning piece states");
    size_t used = 0;
    for (const Function &f : functions_)
      for (const schema::Step *s : *f.fn->steps())
        if (readsKeptWorkspace(*s)) {
          const size_t bytes = size_t(keptLaStatesOf(artifact_.maxBatch(), s->i64_attrs()->Get(0),
                                                     artifact_.maxSeq())) *
                               size_t(kTrainLaStateBytes);
          const CUdeviceptr ws = operand(s->inputs()->Get(2), artifact_.source());
          if (bytes && !keptLaSlots_.count(ws) && used + bytes <= keptLaBytes_) {
            keptLaSlots_[ws] = {kept + CUdeviceptr(used), bytes};
            used += bytes;
          }
        }
  }
  // The fused lm head losses: the kernels of every step of one (vocabulary, hidden size), then
  // one cuda::LmHeadLoss with its chunk's workspace (planTrainScratch counted it).
  std::map<std::pair<int64_t, int64_t>, LmHeadLossKernels> heads;
  const auto &names = *artifact_.root().kernels()->names();
  for (const Function &f : functions_)
    for (const schema::Step *s : *f.fn->steps()) {
      if (s->kind() != schema::KernelKind_LmHeadLoss)
        continue;
      const std::string where = artifact_.source() + ": @" + f.name + " step '" +
                                (s->name() ? s->name()->str() : std::string("?")) + "'";
      LmHeadLossKernels &k = heads[{s->inputs()->Get(1)->rows(), s->inputs()->Get(0)->cols()}];
      for (const schema::KernelLaunch *l : *s->launches()) {
        if (l->kind() == schema::LaunchKind_Gemm)
          continue;
        const std::string n = names.Get(l->kernel())->str();
        if (n.rfind("tnlm_cross_entropy_grad", 0) == 0)
          k.crossEntropyGrad = &kernel(l, where), k.block = unsigned(l->block()),
          k.gradRows = n.rfind("tnlm_cross_entropy_grad_rows", 0) == 0,
          k.gradShared = unsigned(l->shared_mem());
        else if (n.rfind("tnlm_cross_entropy_loss", 0) == 0)
          k.crossEntropyLoss = &kernel(l, where), k.lossBlock = unsigned(l->block());
        else if (n.rfind("tnlm_loss_total", 0) == 0)
          k.lossTotal = &kernel(l, where), k.lossTotalBlock = unsigned(l->block());
      }
    }
  if (heads.size() > 1)
    throw Error(artifact_.source() + ": lm head losses of " + std::to_string(heads.size()) +
                " shapes; the GPU executor takes one");
  for (const auto &[shape, k] : heads)
    lmHeads_[shape] = std::make_unique<LmHeadLoss>(*context_, *gemm_, k, lmHeadChunkRows_,
                                                   shape.first, shape.second);
}

const schema::Operand *CudaExecutor::accumulatedInto(const Function &f, unsigned index,
                                                     const schema::Operand *temp, unsigned next) {
  // Autodiff's accumulation `&grad = add(&grad, temp)` as step `next`, temp f32 and read by no
  // later step (until one writes it again): the GEMM can add into the gradient (β = 1) and the
  // add is skipped.
  const auto &steps = *f.fn->steps();
  // With the per-step finite checks every step writes its own outputs (they are read back).
  if (checkFinite_ || next >= steps.size() || temp->dtype() != schema::DType_F32)
    return nullptr;
  const schema::Step &a = *steps.Get(next);
  if (a.kind() != schema::KernelKind_Add || a.inputs()->size() != 2 || a.outputs()->size() != 1)
    return nullptr;
  const schema::Operand *g = a.inputs()->Get(0), *t = a.inputs()->Get(1), *o = a.outputs()->Get(0);
  if (g->kind() != schema::OperandKind_State || !sameOperand(g, o) || !sameOperand(t, temp) ||
      g->rows() != temp->rows() || g->cols() != temp->cols())
    return nullptr;
  for (unsigned j = next + 1; j < steps.size(); ++j) {
    for (const schema::Operand *in : *steps.Get(j)->inputs())
      if (sameOperand(in, temp))
        return nullptr;
    bool rewritten = false;
    for (const schema::Operand *out : *steps.Get(j)->outputs())
      rewritten = rewritten || sameOperand(out, temp);
    if (rewritten)
      break;
  }
  (void)index;
  return g;
}

bool CudaExecutor::reuseLaStatesFromEnvironment() {
  return switchFromEnvironment("TNLM_LA_REUSE_STATES",
                               "every Lightning backward pass with its own state pass and scan",
                               "the dq and dv passes read the forward's and the dk pass's states");
}

CUdeviceptr CudaExecutor::keptLaStates(CUdeviceptr workspace, int64_t batch, int64_t heads,
                                       int64_t seq) const {
  const auto it = keptLaSlots_.find(workspace);
  if (it == keptLaSlots_.end())
    return 0;
  // The states this call's plan needs on this GPU, against the slot's (sized for 132 SMs).
  const size_t need = size_t(keptLaStatesOf(batch, heads, seq, context_->multiprocessors())) *
                      size_t(kTrainLaStateBytes);
  return need <= it->second.second ? it->second.first : 0;
}

bool CudaExecutor::Overlap::conflicts(const Overlap &later) const {
  auto meets = [](const std::vector<Range> &a, const std::vector<Range> &b) {
    for (const Range &x : a)
      for (const Range &y : b)
        if (x.meets(y))
          return true;
    return false;
  };
  return meets(later.writes, reads) || meets(later.writes, writes) || meets(later.reads, writes);
}

void CudaExecutor::addAccesses(const Function &f, unsigned first, unsigned last, int64_t rows,
                               Overlap &into) const {
  const auto &steps = *f.fn->steps();
  for (unsigned j = first; j <= last && j < steps.size(); ++j) {
    const schema::Step &s = *steps.Get(j);
    for (const schema::Operand *o : *s.inputs())
      if (const Overlap::Range r = extentOf(o, rows); r.hi > r.lo)
        into.reads.push_back(r);
    for (const schema::Operand *o : *s.outputs())
      if (const Overlap::Range r = extentOf(o, rows); r.hi > r.lo)
        into.writes.push_back(r);
  }
}

bool CudaExecutor::gradStreamFromEnvironment() {
  const char *v = std::getenv("TNLM_GRAD_STREAM");
  if (!v || !*v)
    return false;
  const std::string_view s(v);
  if (s != "0" && s != "1")
    throw Error("TNLM_GRAD_STREAM=" + std::string(s) +
                ": expected 0 (every step on one stream, the default) or 1 (the weight "
                "gradients' GEMMs on a second stream, beside the rest of the backward)");
  return s == "1";
}

bool CudaExecutor::firstWriteFromEnvironment() {
  return switchFromEnvironment("TNLM_GRAD_FIRST_WRITE", "the optimizer step zeroes the gradients",
                               "the next train step's first writes overwrite them");
}

void CudaExecutor::setGradFirstWrite(bool on) {
  if (!on)
    zeroStaleGradients(artifact_.source() + ": zeroing the gradients");
  firstWrite_ = on;
}

int CudaExecutor::gradientIndex(const schema::Operand *g) const {
  const auto *st = artifact_.root().state();
  if (!g || g->kind() != schema::OperandKind_State || !st || g->offset() >= st->size() ||
      g->offset() >= stale_.size())
    return -1;
  return st->Get(g->offset())->kind() == schema::StateKind_Gradient ? int(g->offset()) : -1;
}

bool CudaExecutor::fullGradient(const schema::Operand *g) const {
  const int i = gradientIndex(g);
  return i >= 0 && g->col_offset() == 0 && g->rows() > 0 &&
         (g->ld() == g->cols() || g->rows() == 1) &&
         size_t(g->rows()) * size_t(g->cols()) * 4 == stateBytes_[i];
}

bool CudaExecutor::overwrites(const schema::Operand *g, const std::string &where) {
  const int i = gradientIndex(g);
  if (i < 0 || !stale_[i])
    return false;
  if (!fullGradient(g)) {
    touchGradient(g, where);
    return false;
  }
  stale_[i] = 0;
  return true;
}

void CudaExecutor::touchGradient(const schema::Operand *g, const std::string &where) {
  const int i = gradientIndex(g);
  if (i < 0 || !stale_[i])
    return;
  context_->fillBytes(state_[i], 0, stateBytes_[i], where + ": zeroing a gradient first");
  stale_[i] = 0;
}

void CudaExecutor::zeroStaleGradients(const std::string &where) {
  for (size_t i = 0; i < stale_.size(); ++i)
    if (stale_[i]) {
      context_->fillBytes(state_[i], 0, stateBytes_[i], where + ": zeroing a gradient");
      stale_[i] = 0;
    }
}

bool CudaExecutor::touchesGradients(const Function &f) const {
  for (const schema::Step *s : *f.fn->steps()) {
    for (const schema::Operand *o : *s->inputs())
      if (gradientIndex(o) >= 0)
        return true;
    for (const schema::Operand *o : *s->outputs())
      if (gradientIndex(o) >= 0)
        return true;
  }
  return false;
}

bool CudaExecutor::anyStale() const {
  return std::find(stale_.begin(), stale_.end(), 1) != stale_.end();
}

bool CudaExecutor::runTrainStep(const Function &f, unsigned index, const schema::Step &s,
                                int64_t batch, int64_t seq, const std::string &where) {
  const int64_t rows = batch * seq;
  const auto &in = *s.inputs();
  const auto &out = *s.outputs();
  auto ptr = [&](const schema::Operand *o) { return operand(o, where); };
  auto ld = [](const schema::Operand *o) { return static_cast<long long>(o->ld()); };
  auto rowsOf = [&](const schema::Operand *o) {
    return o->rows() >= 0 ? o->rows() : o->rows() == -2 ? batch : rows;
  };
  auto f32 = [&](unsigned i) { return s.f32_attrs()->Get(i); };
  auto i64 = [&](unsigned i) { return s.i64_attrs()->Get(i); };
  const auto &names = *artifact_.root().kernels()->names();
  // The step's launch of kernel `name` (CudaEmitter::trainStep's names).
  auto launchOf = [&](const std::string &prefix) -> const schema::KernelLaunch * {
    if (s.launches())
      for (const schema::KernelLaunch *l : *s.launches())
        if (l->kind() != schema::LaunchKind_Gemm &&
            names.Get(l->kernel())->str().rfind(prefix, 0) == 0)
          return l;
    throw Error(where + ": the step has no " + prefix + " launch");
  };
  auto config = [](const schema::KernelLaunch *l, unsigned gx, unsigned gy = 1) {
    LaunchConfig c;
    c.grid.x = gx;
    c.grid.y = gy;
    c.block.x = static_cast<unsigned>(l->block());
    c.sharedBytes = static_cast<unsigned>(l->shared_mem());
    return c;
  };
  auto launch = [&](const std::string &prefix, unsigned gx, unsigned gy, auto... args) {
    const schema::KernelLaunch *l = launchOf(prefix);
    context_->launchWith(kernel(l, where), config(l, gx, gy), where, args...);
  };
  const unsigned R = static_cast<unsigned>(rows);
  const schema::Operand *y = out.size() ? out.Get(0) : nullptr;

  switch (s.kind()) {
  case schema::KernelKind_Fill: {
    if (y->ld() != y->cols())
      throw Error(where + ": a fill of a strided buffer");
    const size_t n = size_t(rowsOf(y) * y->cols());
    if (const int g = gradientIndex(y); g >= 0 && y->col_offset() == 0 && n * 4 == stateBytes_[g]) {
      // @optimizer_step's zeroing of a gradient: left to the next @train_step's first write
      // (TNLM_GRAD_FIRST_WRITE; not under the per-step finite checks, which read it back).
      if (firstWrite_ && !checkFinite_ && f.name != "train_step" && floatBits(f32(0)) == 0) {
        stale_[g] = 1;
        return true;
      }
      stale_[g] = 0; // filled in full here
    }
    switch (y->dtype()) {
    case schema::DType_F32: {
      // The optimizer's zeroing of every gradient: consecutive f32 fills of the same value into
      // buffers that follow each other in memory (only alignment padding between) as one fill.
      const CUdeviceptr start = ptr(y);
      CUdeviceptr end = start + n * 4;
      const auto &steps = *f.fn->steps();
      for (unsigned j = index + 1; j < steps.size(); ++j) {
        const schema::Step &t = *steps.Get(j);
        if (t.kind() != schema::KernelKind_Fill || t.outputs()->size() != 1 || !t.f32_attrs() ||
            t.f32_attrs()->size() < 1 || floatBits(t.f32_attrs()->Get(0)) != floatBits(f32(0)))
          break;
        const schema::Operand *o = t.outputs()->Get(0);
        if (o->dtype() != schema::DType_F32 || o->ld() != o->cols() || o->rows() < 0)
          break;
        const CUdeviceptr p = ptr(o);
        if (p < end || p - end >= Arena::kAlignment)
          break;
        end = p + CUdeviceptr(o->rows() * o->cols()) * 4;
        skip_.push_back({&f, j});
      }
      context_->fillWords(start, floatBits(f32(0)), size_t(end - start) / 4, where);
      break;
    }
    case schema::DType_I32:
      context_->fillWords(ptr(y), uint32_t(int32_t(f32(0))), n, where);
      break;
    case schema::DType_BF16: { // two bf16 per word (n even, or one more element's bytes)
      const uint32_t b = f32ToBf16(f32(0));
      if (n % 2 != 0)
        throw Error(where + ": a bf16 fill of an odd number of elements");
      context_->fillWords(ptr(y), b | (b << 16), n / 2, where);
      break;
    }
    default:
      throw Error(where + ": a fill of an unsupported dtype");
    }
    return true;
  }
  case schema::KernelKind_CrossEntropy:
  case schema::KernelKind_CrossEntropyGrad: {
    const schema::Operand *z = in.Get(0);
    const int vocab = int(z->cols()), ignore = int(i64(0));
    const bool grad = s.kind() == schema::KernelKind_CrossEntropyGrad;
    // The loss alone (from this tnlmc on): no gradient written.
    const bool lossKernel = launchesKernel(artifact_.root(), s, "tnlm_cross_entropy_loss");
    if (grad)
      launch("tnlm_loss_grad_scale", 1, 1, ptr(in.Get(2)), invCount_, lossK_);
    if (!grad && lossKernel) {
      launch("tnlm_cross_entropy_loss", R, 1, ptr(z), ld(z), ptr(in.Get(1)), vocab, ignore,
             rowLoss_);
    } else {
      if (!grad && lossScratchBytes_ < size_t(rows) * size_t(z->cols()) * 2)
        throw Error(where + ": no scratch for the loss's gradient (recompile with this tnlmc)");
      const CUdeviceptr dx = grad ? ptr(y) : lossScratch_;
      const long long lddx = grad ? ld(y) : z->cols();
      if (launchesKernel(artifact_.root(), s, "tnlm_cross_entropy_grad_rows")) {
        // (from this tnlmc on) at most one CTA per SM looping over the rows, which it takes
        const unsigned grid = unsigned(std::min<int64_t>(std::max<int64_t>(rows, 1),
                                                         std::max(1, context_->multiprocessors())));
        launch("tnlm_cross_entropy_grad_rows", grid, 1, ptr(z), ld(z), ptr(in.Get(1)),
               static_cast<long long>(rows), vocab, ignore, grad ? lossK_ : invCount_, dx, lddx,
               rowLoss_);
      } else {
        launch("tnlm_cross_entropy_grad", R, 1, ptr(z), ld(z), ptr(in.Get(1)), vocab, ignore,
               grad ? lossK_ : invCount_, dx, lddx, rowLoss_);
      }
    }
    const long long n = rows;
    launch("tnlm_loss_total", 1, 1, rowLoss_, n, lossTotal_);
    if (!grad)
      launch("tnlm_loss_mean", 1, 1, lossTotal_, invCount_, ptr(y));
    return true;
  }
  case schema::KernelKind_LmHeadLoss: {
    const schema::Operand *h = in.Get(0), *w = in.Get(1);
    const bool grad = in.size() == 4;
    auto head = lmHeads_.find({w->rows(), h->cols()});
    if (head == lmHeads_.end())
      throw Error(where + ": no lm head loss of this shape was set up");
    if (w->ld() != w->cols())
      throw Error(where + ": the lm head's weight is not contiguous");
    LmHeadLossCall c;
    c.h = ptr(h), c.ldh = ld(h), c.w = ptr(w), c.labels = ptr(in.Get(2));
    c.ignoreIndex = int(i64(0));
    c.rows = rows, c.rowLoss = rowLoss_, c.total = lossTotal_;
    if (grad) {
      launch("tnlm_loss_grad_scale", 1, 1, ptr(in.Get(3)), invCount_, lossK_);
      const schema::Operand *dh = out.Get(1), *dw = out.Get(2);
      c.k = lossK_;
      if (dh->dtype() != schema::DType_BF16 && dh->dtype() != schema::DType_F32)
        throw Error(where + ": dh must be bf16 or f32");
      c.dh = ptr(dh), c.lddh = ld(dh), c.dhBf16 = dh->dtype() == schema::DType_BF16;
      // dW straight into the gradient where the next step accumulates it.
      const schema::Operand *g = accumulatedInto(f, index, dw, index + 1);
      if (g && g->ld() == g->cols()) {
        c.dw = ptr(g), c.accumulateDw = !overwrites(g, where);
        skip_.push_back({&f, index + 1});
      } else {
        c.dw = ptr(dw), c.accumulateDw = false;
      }
    }
    head->second->run(c, where);
    launch("tnlm_loss_mean", 1, 1, lossTotal_, invCount_, ptr(y));
    return true;
  }
  case schema::KernelKind_LinearGradInput: {
    const schema::Operand *dy = in.Get(0), *w = in.Get(1);
    if (runFusedMulGrad(f, index, dy, w, y, rows, where))
      return true;
    GemmShape shape{rows, y->cols(), dy->cols(), y->ld(), w->ld(), dy->ld()};
    gemm_->gradInput(y->dtype() == schema::DType_F32 ? GemmType::Bf16F32Out : GemmType::Bf16, shape,
                     ptr(dy), ptr(w), ptr(y), where);
    return true;
  }
  case schema::KernelKind_LinearGradWeight: {
    const schema::Operand *dy = in.Get(0), *x = in.Get(1);
    if (const schema::Operand *g = accumulatedInto(f, index, y, index + 1)) {
      GemmShape shape{rows, x->cols(), dy->cols(), x->ld(), g->ld(), dy->ld()};
      gemm_->gradWeight(GemmType::Bf16F32Out, shape, ptr(dy), ptr(x), ptr(g), where, 1.0f,
                        overwrites(g, where) ? 0.0f : 1.0f);
      skip_.push_back({&f, index + 1});
      return true;
    }
    GemmShape shape{rows, x->cols(), dy->cols(), x->ld(), y->ld(), dy->ld()};
    gemm_->gradWeight(GemmType::Bf16F32Out, shape, ptr(dy), ptr(x), ptr(y), where);
    return true;
  }
  case schema::KernelKind_Add: {
    if (!s.launches() || s.launches()->size() == 0 ||
        s.launches()->Get(0)->kind() == schema::LaunchKind_Gemm ||
        names.Get(s.launches()->Get(0)->kernel())->str().rfind("tnlm_add_rows", 0) != 0)
      return false; // the forward's bf16 add
    launch("tnlm_add_rows", unsigned(rowsOf(y)), 1, ptr(in.Get(0)), ld(in.Get(0)), ptr(in.Get(1)),
           ld(in.Get(1)), ptr(y), ld(y));
    return true;
  }
  case schema::KernelKind_SrmsNormGrad:
    launch("tnlm_srms_norm_grad", R, 1, ptr(in.Get(0)), ld(in.Get(0)), ptr(in.Get(1)),
           ld(in.Get(1)), ptr(y), ld(y), f32(0));
    return true;
  case schema::KernelKind_AddSrmsNormGrad: {
    const bool dsum = in.size() > 2;
    const CUdeviceptr ds = dsum ? ptr(in.Get(2)) : 0;
    const long long ldd = dsum ? ld(in.Get(2)) : 0;
    launch("tnlm_add_srms_norm_grad", R, 1, ptr(in.Get(0)), ld(in.Get(0)), ds, ldd, ptr(in.Get(1)),
           ld(in.Get(1)), ptr(y), ld(y), f32(0));
    return true;
  }
  case schema::KernelKind_GatedLinearGrad: {
    const schema::Operand *x = in.Get(0), *w1 = in.Get(1), *w2 = in.Get(2), *dy = in.Get(3);
    const schema::Operand *dx = out.Get(0), *dw1 = out.Get(1), *dw2 = out.Get(2);
    const int64_t F = dy->cols(), K = x->cols();
    // Scratch: [da | db] as one [rows, 2F] matrix, so that where W2's bf16 copy follows W1's
    // (and dW2 follows dW1) the pair's two products are one GEMM each: dx = [da db]·[W1; W2]
    // (K = 2F) and [dW1; dW2] = [da db]ᵀ·x; then a, b [rows, F] each where recomputed.
    const bool recompute = in.size() != 6;
    if (size_t((recompute ? 4 : 2) * rows * F * 2) > gatedGradBytes_)
      throw Error(where + ": the gated linear backward's scratch is too small");
    const CUdeviceptr da = gatedGrad_, db = da + F * 2;
    CUdeviceptr a = da + 2 * rows * F * 2, b = a + rows * F * 2;
    const long long ldf = F, ldd = 2 * F;
    long long lda = ldf, ldb = ldf;
    if (!recompute) { // the forward's a, b (tnlmc keeps them live for this step)
      a = ptr(in.Get(4)), lda = ld(in.Get(4));
      b = ptr(in.Get(5)), ldb = ld(in.Get(5));
    } else {
      const GemmShape fwd{rows, K, F, x->ld(), w1->ld(), F};
      gemm_->linear(GemmType::Bf16, fwd, ptr(x), ptr(w1), a, where);
      gemm_->linear(GemmType::Bf16, fwd, ptr(x), ptr(w2), b, where);
    }
    // (Done by the dgrad that made dy, in its epilogue: runFusedMulGrad.)
    const bool productDone = mulGradDone_ == std::pair<const void *, unsigned>(&f, index);
    mulGradDone_ = {nullptr, 0};
    if (!productDone)
      launch("tnlm_mul_grad", R, 1, a, lda, b, ldb, ptr(dy), ld(dy), da, ldd, db, ldd);
    else if (recompute)
      throw Error(where + ": the fused product backward ran without the forward's a, b");
    const GemmType dxType =
        dx->dtype() == schema::DType_F32 ? GemmType::Bf16F32Out : GemmType::Bf16;
    // Two [F, K] matrices, dense, the second right after the first (elem bytes each).
    auto stacked = [&](CUdeviceptr m1, CUdeviceptr m2, int64_t ld1, int64_t ld2, size_t elem) {
      return stackGemms_ && ld1 == K && ld2 == K &&
             m2 == m1 + CUdeviceptr(size_t(F) * size_t(K) * elem);
    };
    if (stacked(ptr(w1), ptr(w2), w1->ld(), w2->ld(), 2)) {
      gemm_->gradInput(dxType, {rows, K, 2 * F, dx->ld(), K, ldd}, da, ptr(w1), ptr(dx), where);
      stacked_.insert({&f, index, 1});
    } else {
      gemm_->gradInput(dxType, {rows, K, F, dx->ld(), w1->ld(), ldd}, da, ptr(w1), ptr(dx), where);
      gemm_->gradInput(dxType, {rows, K, F, dx->ld(), w2->ld(), ldd}, db, ptr(w2), ptr(dx), where,
                       1.0f, 1.0f);
    }
    // dW1, dW2 straight into the gradients where the next two steps accumulate them.
    const schema::Operand *g1 = accumulatedInto(f, index, dw1, index + 1);
    const schema::Operand *g2 = g1 ? accumulatedInto(f, index, dw2, index + 2) : nullptr;
    const schema::Operand *t1 = g1 && g2 ? g1 : dw1, *t2 = g1 && g2 ? g2 : dw2;
    float beta = 0.0f;
    if (g1 && g2) {
      // Both stale and written in full: overwritten (one β for both: the stacked GEMM); else
      // both added to (a stale one zeroed first).
      const int i1 = gradientIndex(g1), i2 = gradientIndex(g2);
      if (i1 >= 0 && i2 >= 0 && stale_[i1] && stale_[i2] && fullGradient(g1) && fullGradient(g2)) {
        stale_[i1] = stale_[i2] = 0;
      } else {
        touchGradient(g1, where);
        touchGradient(g2, where);
        beta = 1.0f;
      }
    }
    if (stacked(ptr(t1), ptr(t2), t1->ld(), t2->ld(), 4)) {
      gemm_->gradWeight(GemmType::Bf16F32Out, {rows, K, 2 * F, x->ld(), K, ldd}, da, ptr(x),
                        ptr(t1), where, 1.0f, beta);
      stacked_.insert({&f, index, 2});
    } else {
      gemm_->gradWeight(GemmType::Bf16F32Out, {rows, K, F, x->ld(), t1->ld(), ldd}, da, ptr(x),
                        ptr(t1), where, 1.0f, beta);
      gemm_->gradWeight(GemmType::Bf16F32Out, {rows, K, F, x->ld(), t2->ld(), ldd}, db, ptr(x),
                        ptr(t2), where, 1.0f, beta);
    }
    if (g1 && g2) {
      skip_.push_back({&f, index + 1});
      skip_.push_back({&f, index + 2});
    }
    return true;
  }
  case schema::KernelKind_LightningAttentionGrad: {
    const int H = int(i64(0)), dh = int(i64(1));
    const bool lrpe = i64(3) != 0, silu = i64(4) != 0;
    const int64_t D = int64_t(H) * dh, dk = lrpe ? 2 * dh : dh;
    const schema::Operand *qkvu = in.Get(0), *dy = in.Get(lrpe ? 2 : 1);
    const schema::Operand *dqkvu = out.Get(0);
    if (!f.slopes[index])
      throw Error(where + ": the step has no slopes");
    if (!lrpe && in.size() == 3) {
      // The forward kept φ(q), φ(k) and O in its workspace (the third input: [q', k', O, free]
      // at qkvu's row stride L): dO goes into its free columns [3D, 4D), then three passes of
      // the Hopper forward with every input at stride L: dq = fwd(dO, v, k'), and over the
      // reversed sequence dk = fwd(v, dO, q'), dv = fwd(k', q', dO) (v from qkvu).
      const schema::Operand *fws = in.Get(2);
      if (dh != 128)
        throw Error(where + ": the fast Lightning backward takes head dim 128");
      if (fws->ld() != qkvu->ld() || fws->cols() < 4 * D)
        throw Error(where + ": the forward's workspace must be [rows, " + std::to_string(4 * D) +
                    "] at qkvu's row stride");
      const long long L = ld(qkvu), ldg = ld(dqkvu);
      const CUdeviceptr F = ptr(fws), base = ptr(qkvu), g = ptr(dqkvu);
      const CUdeviceptr qp = F, kp = F + D * 2, Op = F + 2 * D * 2, dOp = F + 3 * D * 2,
                        vp = base + 2 * D * 2;
      launch("tnlm_la_gate_norm_grad_o16", R, 1, Op, L, ptr(dy), ld(dy), base + 3 * D * 2, L,
             g + 3 * D * 2, ldg, dOp, L, int(D), f32(0));
      // φ' = SiLU' at the pre-activation q, k (qkvu's columns [0, 2D)): in dq's and dk's passes'
      // stores, unless the artifact (an earlier tnlmc) has its own pass for it.
      const bool fold = silu && !launchesKernel(artifact_.root(), s, "tnlm_la_silu_scale");
      LightningPass dq{dOp, vp, kp, g, L, ldg, false}, dk{vp, dOp, qp, g + D * 2, L, ldg, true};
      if (fold) {
        dq.oscale = base, dq.ldScale = L;
        dk.oscale = base + D * 2, dk.ldScale = L;
      }
      // dv's pass (K = q', V = dO) has the transpose of dk's states (K = dO, V = q'), in the
      // same direction and plan: it reads them (kernels of format 6 on) instead of its own
      // state pass and scan. So has dq's (K = v, V = k') of the forward's (K = k', V = v): kept
      // by the forward step for this one where they fit (keptLaStates).
      LightningPass dv{kp, qp, dOp, g + 2 * D * 2, L, ldg, true};
      const bool reuse = reuseLaStates_ && artifact_.root().format_version() >= 6;
      dv.reuseTransposed = reuse;
      if (const CUdeviceptr kept = keptLaStates(F, batch, H, seq); reuse && kept)
        dq.states = kept, dq.reuseTransposed = true;
      runLightningPass(f, index, s, batch, seq, dq, where);
      runLightningPass(f, index, s, batch, seq, dk, where);
      runLightningPass(f, index, s, batch, seq, dv, where);
      if (silu && !fold)
        launch("tnlm_la_silu_scale", R, 1, base, L, g, ldg, int(D));
      return true;
    }
    // dθ in the relative form: partials per (b, segment, feature) into dthetaPartial_, how many
    // rows of them returned (the dtheta_sum's chunks). q', k' at one stride, the cos part at q
    // (k), the sin part qSin further, head stride qHead; v, dO at head stride dh. The tensor-core
    // kernel (tnlm_la_dtheta_segments) cuts the sequence into segments where one CTA per
    // (b, h, 16 features) leaves SMs idle: a pass for the segments' own states (in the rest of
    // dthetaPartial_), then every segment from the states before it.
    auto dthetaRelative = [&](CUdeviceptr q, long long ldq, long long qHead, long long qSin,
                              CUdeviceptr k, CUdeviceptr v, long long ldv, CUdeviceptr dO,
                              long long lddo) -> int {
      if (dh % 16 || size_t(batch) * size_t(D) * 8 > dthetaBytes_)
        throw Error(where + ": the relative dθ needs head dim a multiple of 16 and " +
                    std::to_string(batch * D * 8) + " bytes of partials");
      const unsigned gx = unsigned(batch * H), gy = unsigned(dh / 16);
      if (!launchesKernel(artifact_.root(), s, "tnlm_la_dtheta_segments")) {
        launch("tnlm_la_dtheta_relative", gx, gy, q, ldq, qHead, qSin, k, ldq, qHead, qSin, v, ldv,
               dO, lddo, f.slopes[index], int(seq), H, dh, dthetaPartial_);
        return int(batch);
      }
      const schema::KernelLaunch *l = launchOf("tnlm_la_dtheta_segments");
      const DthetaSegments d = dthetaSegments(batch, int64_t(gx) * gy, D, seq,
                                              context_->multiprocessors(), dthetaBytes_);
      const int64_t segs = d.segments, segLen = d.length;
      const CUdeviceptr states = dthetaPartial_ + d.statesOffset;
      LaunchConfig c = config(l, gx, gy);
      for (int statesOnly = segs > 1 ? 1 : 0; statesOnly >= 0; --statesOnly) {
        c.grid.z = unsigned(statesOnly ? segs - 1 : segs);
        context_->launchWith(kernel(l, where), c, where, q, ldq, qHead, qSin, k, ldq, qHead, qSin,
                             v, ldv, dO, lddo, f.slopes[index], int(seq), H, dh, dthetaPartial_,
                             states, int(segLen), statesOnly);
      }
      return int(batch * segs);
    };
    const schema::Operand *ws = out.Get(out.size() - 1);
    const schema::Operand *dtheta = lrpe ? out.Get(1) : nullptr;
    // The relative form where the artifact has its kernels (tnlmc from 2026-12-03 on); dθ =
    // the partials' `rows`, summed in order.
    const bool relative = lrpe && (launchesKernel(artifact_.root(), s, "tnlm_la_dtheta_relative") ||
                                   launchesKernel(artifact_.root(), s, "tnlm_la_dtheta_segments"));
    auto sumDtheta = [&](int rows) {
      context_->fillBytes(ptr(dtheta), 0, size_t(dtheta->rows()) * dtheta->cols() * 4, where);
      launch("tnlm_la_dtheta_sum", unsigned((D + 255) / 256), 1, dthetaPartial_, rows, int(D),
             ptr(dtheta));
    };
    const CUdeviceptr theta = lrpe ? ptr(in.Get(1)) : 0;
    if (ws->cols() < 4 * H * dk + 2 * D)
      throw Error(where + ": the workspace has " + std::to_string(ws->cols()) +
                  " columns, the GPU backward needs " + std::to_string(4 * H * dk + 2 * D));
    const CUdeviceptr base = ptr(qkvu), w = ptr(ws), g = ptr(dqkvu);
    const long long W = ld(ws), W2 = 2 * W;
    const CUdeviceptr qp = w, kp = w + H * dk * 2, dq = w + 2 * H * dk * 4, dkp = dq + H * dk * 2,
                      O = w + 4 * H * dk * 4, dO = O + D * 4;
    // The Hopper passes (from this tnlmc on, CudaEmitter::lightningGrad).
    const bool fast = launchesKernel(artifact_.root(), s, "tnlm_la_grad_pack");
    if (fast && lrpe) {
      // The workspace as bf16 planes of D columns, row stride S: [q c, k c, q s, k s, v, dO,
      // O c, O s, dv s, dq' (2D), dk' (2D)]; eight passes of the Hopper forward: O by halves,
      // dq' halves = fwd(dO, v, k half), dk' halves = rev(v, dO, q half), dv = rev(k c, q c,
      // dO) + rev(k s, q s, dO); dq', dk' per head [cos | sin] (head stride 2 · 128), as
      // la_lrpe_grad reads them.
      if (dh != 128)
        throw Error(where + ": the fast Lightning backward takes head dim 128");
      const long long S = W2;
      if (13 * D > S)
        throw Error(where + ": the workspace is too narrow for the backward's planes");
      auto plane = [&](int i) { return w + CUdeviceptr(i) * D * 2; };
      const CUdeviceptr qc = plane(0), kc = plane(1), qs = plane(2), ks = plane(3), vp = plane(4),
                        dOp = plane(5), Oc = plane(6), Os = plane(7), dv2 = plane(8),
                        dqp = plane(9), dkp2 = plane(11);
      const long long ldg = ld(dqkvu), hs = 2 * dh;
      const int N = int(seq), offset = 0;
      launch("tnlm_la_grad_pack_lrpe", R, 1, base, ld(qkvu), theta, N, offset, int(D), w, S);
      runLightningPass(f, index, s, batch, seq, {qc, kc, vp, Oc, S, S, false}, where);
      runLightningPass(f, index, s, batch, seq, {qs, ks, vp, Os, S, S, false}, where);
      launch("tnlm_la_gate_norm_grad2_o16", R, 1, Oc, Os, S, ptr(dy), ld(dy), base + 3 * D * 2,
             ld(qkvu), g + 3 * D * 2, ldg, dOp, S, int(D), f32(0));
      const long long half = dh * 2; // bytes of one half
      runLightningPass(f, index, s, batch, seq, {dOp, vp, kc, dqp, S, S, false, hs}, where);
      runLightningPass(f, index, s, batch, seq, {dOp, vp, ks, dqp + half, S, S, false, hs}, where);
      runLightningPass(f, index, s, batch, seq, {vp, dOp, qc, dkp2, S, S, true, hs}, where);
      runLightningPass(f, index, s, batch, seq, {vp, dOp, qs, dkp2 + half, S, S, true, hs}, where);
      runLightningPass(f, index, s, batch, seq, {kc, qc, dOp, g + 2 * D * 2, S, ldg, true}, where);
      runLightningPass(f, index, s, batch, seq, {ks, qs, dOp, dv2, S, S, true}, where);
      launch("tnlm_la_add_rows_bf16", R, 1, g + 2 * D * 2, ldg, dv2, S, int(D));
      const int chunks = (N + kPositionChunk - 1) / kPositionChunk;
      const long long dkOff = 2 * D;
      // dθ: in the relative form from the planes (q, k: cos plane, sin plane two planes on,
      // head stride dh) where the artifact has it, else la_lrpe_grad's absolute-form partials.
      launch("tnlm_la_lrpe_grad", unsigned(chunks), unsigned((D + 255) / 256), base, ld(qkvu), dqp,
             S, dkOff, theta, int(batch), N, offset, H, dh, g, ldg,
             relative ? CUdeviceptr(0) : dthetaPartial_);
      const int rowsOfPartials =
          relative ? dthetaRelative(qc, S, dh, 2 * D, kc, vp, S, dOp, S) : chunks;
      sumDtheta(rowsOfPartials);
      return true;
    }
    if (fast) {
      // The workspace as one bf16 pack [q', k', v, dO, O] of row stride S; four passes of the
      // Hopper forward: O = fwd(q', k', v); dq = fwd(dO, v, k'); dk = rev(v, dO, q');
      // dv = rev(k', q', dO) (rev: over the reversed sequence).
      if (dh != 128)
        throw Error(where + ": the fast Lightning backward takes head dim 128");
      const long long S = W2;
      if (5 * D > S)
        throw Error(where + ": the workspace is too narrow for the backward's pack");
      const CUdeviceptr qp2 = w, kp2 = w + D * 2, vp = w + 2 * D * 2, dOp = w + 3 * D * 2,
                        Op = w + 4 * D * 2;
      const long long ldg = ld(dqkvu);
      launch("tnlm_la_grad_pack", R, 1, base, ld(qkvu), int(D), w, S);
      runLightningPass(f, index, s, batch, seq, {qp2, kp2, vp, Op, S, S, false}, where);
      launch("tnlm_la_gate_norm_grad_o16", R, 1, Op, S, ptr(dy), ld(dy), base + 3 * D * 2, ld(qkvu),
             g + 3 * D * 2, ldg, dOp, S, int(D), f32(0));
      runLightningPass(f, index, s, batch, seq, {dOp, vp, kp2, g, S, ldg, false}, where);
      runLightningPass(f, index, s, batch, seq, {vp, dOp, qp2, g + D * 2, S, ldg, true}, where);
      runLightningPass(f, index, s, batch, seq, {kp2, qp2, dOp, g + 2 * D * 2, S, ldg, true},
                       where);
      if (silu)
        launch("tnlm_la_silu_scale", R, 1, base, ld(qkvu), g, ldg, int(D));
      return true;
    }
    const bool prologue = silu || lrpe;
    const CUdeviceptr q = prologue ? qp : base, k = prologue ? kp : base + D * 2;
    const long long ldq = prologue ? W2 : ld(qkvu);
    const CUdeviceptr v = base + 2 * D * 2, u = base + 3 * D * 2;
    const unsigned bh = unsigned(batch * H);
    const int N = int(seq);
    if (prologue) {
      const int offset = 0;
      launch("tnlm_la_grad_prologue", R, 1, base, ld(qkvu), theta, N, offset, H, dh, qp, kp, W2);
    }
    launch("tnlm_la_fwd_simple", bh, 1, q, ldq, k, ldq, v, ld(qkvu), f.slopes[index], O, W, N, H);
    launch("tnlm_la_gate_norm_grad", R, 1, O, W, ptr(dy), ld(dy), u, ld(qkvu), g + 3 * D * 2,
           ld(dqkvu), dO, W2, int(D), f32(0));
    const CUdeviceptr dqOut = lrpe ? dq : g, dkOut = lrpe ? dkp : g + D * 2;
    const long long lddq = lrpe ? W2 : ld(dqkvu);
    launch("tnlm_la_bwd_simple", bh, 1, q, ldq, k, ldq, v, ld(qkvu), dO, W2, f.slopes[index], dqOut,
           lddq, dkOut, lddq, g + 2 * D * 2, ld(dqkvu), N, H);
    if (lrpe) {
      const int chunks = (N + kPositionChunk - 1) / kPositionChunk;
      const long long dkOff = H * dk;
      const int B = int(batch), offset = 0;
      launch("tnlm_la_lrpe_grad", unsigned(chunks), unsigned((D + 255) / 256), base, ld(qkvu), dq,
             W2, dkOff, theta, B, N, offset, H, dh, g, ld(dqkvu),
             relative ? CUdeviceptr(0) : dthetaPartial_);
      // q', k' per head [cos | sin] (head stride 2 dh), dO at the workspace's stride.
      const int rowsOfPartials =
          relative ? dthetaRelative(qp, W2, 2 * dh, dh, kp, v, ld(qkvu), dO, W2) : chunks;
      sumDtheta(rowsOfPartials);
    } else if (silu) {
      launch("tnlm_la_silu_scale", R, 1, base, ld(qkvu), g, ld(dqkvu), int(D));
    }
    return true;
  }
  case schema::KernelKind_EmbeddingGrad: {
    const schema::Operand *dx = in.Get(1);
    if (y->ld() != dx->cols()) // embedding_grad strides the table by d
      throw Error(where + ": the embedding gradient's rows are not dense");
    // The kernel adds into the table's rows: where the next step is the gradient's
    // accumulation (`&grad = add(&grad, y)`), straight into the gradient (no zeroed [V, d]
    // table, no add over it), the add skipped; else into y zeroed first.
    CUdeviceptr table = ptr(y);
    const schema::Operand *g = accumulatedInto(f, index, y, index + 1);
    if (g && g->ld() == y->ld()) {
      table = ptr(g);
      touchGradient(g, where); // adds into some rows only: a stale gradient zeroed first
      skip_.push_back({&f, index + 1});
    } else {
      context_->fillBytes(ptr(y), 0, size_t(rowsOf(y)) * y->ld() * 4, where);
    }
    // A fixed grid (the most segments a call of this shape can have; the unused ones are empty),
    // so that a captured graph replays for any ids.
    const int64_t grid = std::min<int64_t>(rows, rowsOf(y));
    if (grid > 0)
      launch("tnlm_embedding_grad", unsigned(grid), unsigned((dx->cols() + 127) / 128), segOrder_,
             segStart_, segIds_, ptr(dx), ld(dx), int(dx->cols()), f32(0), table);
    return true;
  }
  case schema::KernelKind_GlobalNorm: {
    const auto key = std::make_pair(size_t(&f - functions_.data()), index);
    auto it = optTables_.find(key);
    long long chunks = 0;
    std::vector<HostOptTensor> table;
    for (unsigned i = 1; i < in.size(); ++i) {
      HostOptTensor t{};
      t.g = ptr(in.Get(i));
      t.n = rowsOf(in.Get(i)) * in.Get(i)->cols();
      t.chunk0 = chunks;
      chunks += (t.n + kOptChunk - 1) / kOptChunk;
      table.push_back(t);
    }
    if (it == optTables_.end()) {
      DeviceBuffer b(table.size() * sizeof(HostOptTensor), "the gradients' table");
      context_->copyToDevice(b.get(), table.data(), table.size() * sizeof(HostOptTensor), where);
      it = optTables_.emplace(key, std::move(b)).first;
    }
    if (size_t(chunks) > optChunks_)
      throw Error(where + ": more gradient chunks than allocated");
    launch("tnlm_sum_squares_chunks", unsigned(chunks), 1, it->second.get(), int(table.size()),
           optPartial_);
    const CUdeviceptr none = 0;
    launch("tnlm_sum_squares_total", 1, 1, optPartial_, chunks, accumSteps_, none, ptr(y));
    return true;
  }
  case schema::KernelKind_LrSchedule:
    launch("tnlm_lr_schedule", 1, 1, ptr(in.Get(0)), ptr(in.Get(1)), ptr(y), optT_);
    return true;
  case schema::KernelKind_ClipScale:
    launch("tnlm_clip_scale", 1, 1, ptr(in.Get(0)), ptr(in.Get(1)), ptr(y));
    return true;
  case schema::KernelKind_AdamW: {
    // One launch for the run of AdamW steps that starts here (the later ones are done).
    const auto &steps = *f.fn->steps();
    if (index > 0 && steps.Get(index - 1)->kind() == schema::KernelKind_AdamW)
      return true;
    const auto key = std::make_pair(size_t(&f - functions_.data()), index);
    std::vector<HostOptTensor> table;
    std::vector<std::pair<unsigned, long long>> casts; // (parameter, elements)
    long long chunks = 0;
    for (unsigned j = index; j < steps.size() && steps.Get(j)->kind() == schema::KernelKind_AdamW;
         ++j) {
      const schema::Step &a = *steps.Get(j);
      const auto &ain = *a.inputs();
      const schema::Operand *p = ain.Get(0);
      HostOptTensor t{};
      t.p = master(p, where), t.g = ptr(ain.Get(1)), t.m = ptr(ain.Get(2)), t.v = ptr(ain.Get(3));
      t.n = rowsOf(p) * p->cols();
      t.chunk0 = chunks;
      t.decay = a.i64_attrs() && a.i64_attrs()->size() > 0 ? int(a.i64_attrs()->Get(0)) : 1;
      chunks += (t.n + kOptChunk - 1) / kOptChunk;
      table.push_back(t);
      if (p->kind() == schema::OperandKind_Param && !f32Param_.at(p->offset()))
        casts.push_back({unsigned(p->offset()), t.n});
    }
    // From this tnlmc on, the AdamW kernel writes the bf16 copies (a table of their pointers
    // after the tensors'); before, a cast per weight after it.
    const bool fusedCast = launchesKernel(artifact_.root(), s, "tnlm_fused_adamw_bf16");
    auto it = optTables_.find(key);
    if (it == optTables_.end()) {
      const size_t tableBytes = table.size() * sizeof(HostOptTensor);
      std::vector<CUdeviceptr> copies;
      for (const HostOptTensor &t : table) {
        CUdeviceptr copy = 0;
        for (auto [param, n] : casts)
          if (masters_[param] == t.p)
            copy = params_[param];
        copies.push_back(copy);
      }
      DeviceBuffer b(tableBytes + (fusedCast ? copies.size() * 8 : 0), "the AdamW table");
      context_->copyToDevice(b.get(), table.data(), tableBytes, where);
      if (fusedCast)
        context_->copyToDevice(b.get() + tableBytes, copies.data(), copies.size() * 8, where);
      it = optTables_.emplace(key, std::move(b)).first;
    }
    if (fusedCast) {
      const CUdeviceptr copies = it->second.get() + table.size() * sizeof(HostOptTensor);
      launch("tnlm_fused_adamw_bf16", unsigned(chunks), 1, it->second.get(), int(table.size()),
             ptr(in.Get(5)), ptr(in.Get(6)), optT_, hostHp_[schema::HyperParam_Beta1],
             hostHp_[schema::HyperParam_Beta2], hostHp_[schema::HyperParam_Eps],
             hostHp_[schema::HyperParam_WeightDecay], copies);
      return true;
    }
    launch("tnlm_adamw", unsigned(chunks), 1, it->second.get(), int(table.size()), ptr(in.Get(5)),
           ptr(in.Get(6)), optT_, hostHp_[schema::HyperParam_Beta1],
           hostHp_[schema::HyperParam_Beta2], hostHp_[schema::HyperParam_Eps],
           hostHp_[schema::HyperParam_WeightDecay]);
    for (auto [param, n] : casts) {
      const unsigned grid = unsigned(std::min<long long>((n + 255) / 256, 4096));
      launch("tnlm_cast_bf16", grid, 1, masters_[param], n, params_[param]);
    }
    return true;
  }
  case schema::KernelKind_Increment:
    launch("tnlm_step_increment", 1, 1, ptr(y));
    return true;
  case schema::KernelKind_SiluGrad:
  case schema::KernelKind_LrpeGrad:
  case schema::KernelKind_DecayAttentionGrad:
    throw Error(where + ": the GPU backward runs the fused Lightning Attention's gradient only "
                        "(compile with the train pipeline's fusions)");
  default:
    return false;
  }
}

void CudaExecutor::checkStepFinite(const Function &f, unsigned index, int64_t batch, int64_t seq) {
  const schema::Step &s = *f.fn->steps()->Get(index);
  const std::string where = artifact_.source() + ": @" + f.name + " step " + std::to_string(index);
  const auto &outs = *s.outputs();
  for (unsigned k = 0; k < outs.size(); ++k) {
    const schema::Operand *o = outs.Get(k);
    // Workspaces hold scratch, not results (as CpuExecutor's checks).
    const bool workspace =
        (s.kind() == schema::KernelKind_LightningAttention && k > 0) ||
        (s.kind() == schema::KernelKind_LightningAttentionGrad && k + 1 == outs.size() &&
         outs.size() > 1 + unsigned(s.i64_attrs()->Get(3) != 0)); // (none: the forward's)
    if (workspace || o->dtype() == schema::DType_I32)
      continue;
    const int64_t rows = o->rows() >= 0 ? o->rows() : o->rows() == -2 ? batch : batch * seq;
    // A parameter output (AdamW's) is the f32 master; operand() would give its bf16 copy.
    const bool param = o->kind() == schema::OperandKind_Param;
    const bool bf16 = !param && o->dtype() == schema::DType_BF16;
    const size_t elem = bf16 ? 2 : 4;
    if (rows <= 0 || o->cols() <= 0)
      continue;
    // rows - 1 whole rows and the last row's columns (the view may start at a column offset).
    std::vector<unsigned char> raw((size_t(rows - 1) * size_t(o->ld()) + size_t(o->cols())) * elem);
    context_->copyToHost(raw.data(), param ? master(o, where) : operand(o, where), raw.size(),
                         where);
    context_->synchronize(where);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < o->cols(); ++c) {
        const size_t at = (size_t(r) * size_t(o->ld()) + size_t(c)) * elem;
        float v;
        if (bf16) {
          uint16_t b;
          std::memcpy(&b, &raw[at], 2);
          v = bf16ToF32(b);
        } else {
          std::memcpy(&v, &raw[at], 4);
        }
        if (!std::isfinite(v)) {
          const std::string step = s.name() ? s.name()->str() : std::string("?");
          throw NonFiniteError("non-finite values first appear in the output of step '" + step +
                                   "' (" + schema::EnumNameKernelKind(s.kind()) + ") of @" +
                                   f.name + " on the GPU",
                               step);
        }
      }
  }
}

std::vector<CudaExecutor::StepTime> CudaExecutor::profileRun(const std::string &name,
                                                             const std::vector<Input> &inputs,
                                                             int64_t batch, int64_t seq) {
  const size_t fi = uploadRun(name, inputs, batch, seq);
  std::vector<StepTime> times = profile(fi, batch, seq);
  context_->synchronize(artifact_.source() + ": @" + name + " (profiled)");
  return times;
}

size_t CudaExecutor::uploadRun(const std::string &name, const std::vector<Input> &inputs,
                               int64_t batch, int64_t seq) {
  const std::string &src = artifact_.source();
  if (!train_)
    throw Error(src + ": run() takes train artifacts (use forward() or the recurrent calls)");
  context_->makeCurrent();
  const size_t fi = functionIndex(name);
  const Function &f = functions_[fi];
  const schema::Function &fn = *f.fn;
  artifact_.checkCallShape(batch, seq);
  const int64_t rows = batch * seq;
  std::vector<const void *> host(fn.inputs()->size(), nullptr);
  for (unsigned i = 0; i < fn.inputs()->size(); ++i) {
    const std::string in = fn.inputs()->Get(i)->name()->str();
    auto it =
        std::find_if(inputs.begin(), inputs.end(), [&](const Input &x) { return x.name == in; });
    if (it == inputs.end() || !it->data)
      throw Error(src + ": function '" + name + "' needs input '" + in + "'");
    host[i] = it->data;
    if (in == "hparams") {
      std::memcpy(hostHp_, it->data, sizeof hostHp_);
      accumSteps_ = hostHp_[schema::HyperParam_AccumSteps];
      context_->copyToDevice(inputs_.at(i), it->data, sizeof hostHp_, src + ": hparams");
    } else {
      if (in == "ids")
        checkIds(static_cast<const int32_t *>(it->data), rows, "position");
      context_->copyToDevice(inputs_.at(i), it->data, size_t(rows) * 4, src + ": input " + in);
    }
  }
  // The labels the loss counts (checked as the CPU does), and the embedding backward's
  // grouping of the ids.
  for (const schema::Step *s : *fn.steps()) {
    const auto kind = s->kind();
    const bool fused = kind == schema::KernelKind_LmHeadLoss;
    if (kind == schema::KernelKind_CrossEntropy || kind == schema::KernelKind_CrossEntropyGrad ||
        fused) {
      const schema::Operand *l = s->inputs()->Get(fused ? 2 : 1);
      const int32_t *labels = static_cast<const int32_t *>(host.at(l->offset()));
      const int64_t ignore = s->i64_attrs()->Get(0);
      const int64_t vocab = fused ? s->inputs()->Get(1)->rows() : s->inputs()->Get(0)->cols();
      int64_t counted = 0;
      for (int64_t r = 0; r < rows; ++r) {
        if (labels[r] == ignore)
          continue;
        if (labels[r] < 0 || labels[r] >= vocab)
          throw Error(src + ": label " + std::to_string(labels[r]) + " at position " +
                      std::to_string(r) + " is outside the vocabulary of " + std::to_string(vocab));
        ++counted;
      }
      invCountHost_ = counted > 0 ? 1.0 / double(counted) : NAN;
      context_->copyToDevice(invCount_, &invCountHost_, 8, src + ": the counted labels");
    }
    if (kind == schema::KernelKind_EmbeddingGrad) {
      const schema::Operand *ids = s->inputs()->Get(0);
      const int64_t padding =
          s->i64_attrs() && s->i64_attrs()->size() > 0 ? s->i64_attrs()->Get(0) : -1;
      const int64_t vocab = s->outputs()->Get(0)->rows();
      grouper_.group(static_cast<const int32_t *>(host.at(ids->offset())), rows, vocab, padding,
                     segHost_);
      segments_ = int64_t(segHost_.ids.size());
      // Padded to the fixed grid (min(rows, vocab) segments): empty segments of id 0.
      const size_t grid = size_t(std::min<int64_t>(rows, vocab));
      segHost_.start.resize(grid + 1, segHost_.start.empty() ? 0 : segHost_.start.back());
      segHost_.ids.resize(grid, 0);
      context_->copyToDevice(segOrder_, segHost_.order.data(), segHost_.order.size() * 4,
                             src + ": the embedding grouping");
      context_->copyToDevice(segStart_, segHost_.start.data(), segHost_.start.size() * 4,
                             src + ": the embedding grouping");
      if (grid > 0)
        context_->copyToDevice(segIds_, segHost_.ids.data(), grid * 4,
                               src + ": the embedding grouping");
    }
  }
  return fi;
}

std::vector<std::pair<std::string, std::vector<float>>>
CudaExecutor::run(const std::string &name, const std::vector<Input> &inputs, int64_t batch,
                  int64_t seq) {
  const std::string &src = artifact_.source();
  using Clock = std::chrono::steady_clock;
  auto ms = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
  };
  const auto t0 = Clock::now();
  const size_t fi = uploadRun(name, inputs, batch, seq);
  for (CUevent &e : runEvents_)
    if (!e)
      TNLM_CU(cuEventCreate, (&e, CU_EVENT_DEFAULT), src + ": creating the run's timing events");
  TNLM_CU(cuEventRecord, (runEvents_[0], context_->stream()), src + ": @" + name);
  const auto t1 = Clock::now();
  const Function &f = functions_[fi];
  const schema::Function &fn = *f.fn;
  // Every function replays as one CUDA graph per call shape (the per-call values are in device
  // buffers uploaded above); @optimizer_step's kernels also take some hyperparameters by value,
  // so its graphs are captured again when those change.
  if (checkFinite_) {
    runSteps(fi, batch, seq, [&](unsigned i) { checkStepFinite(f, i, batch, seq); });
  } else {
    if (name == "optimizer_step") {
      const std::array<float, 5> hp = {
          hostHp_[schema::HyperParam_Beta1], hostHp_[schema::HyperParam_Beta2],
          hostHp_[schema::HyperParam_Eps], hostHp_[schema::HyperParam_WeightDecay],
          static_cast<float>(accumSteps_)};
      if (std::memcmp(hp.data(), optGraphHp_.data(), sizeof hp) != 0) {
        for (auto g = graphs_.begin(); g != graphs_.end();)
          g = std::get<0>(g->first) == fi ? graphs_.erase(g) : std::next(g);
        optGraphHp_ = hp;
      }
    }
    launchFunction(fi, batch, seq);
  }
  TNLM_CU(cuEventRecord, (runEvents_[1], context_->stream()), src + ": @" + name);
  const auto t2 = Clock::now();
  context_->synchronize(src + ": @" + name);
  const auto t3 = Clock::now();
  float gpu = 0;
  TNLM_CU(cuEventElapsedTime, (&gpu, runEvents_[0], runEvents_[1]), src + ": @" + name);
  std::vector<std::pair<std::string, std::vector<float>>> results;
  for (const schema::FunctionIO *o : *fn.outputs()) {
    int64_t n = 1;
    for (int64_t d : *o->shape())
      n *= d > 0 ? d : (d == -1 ? batch : seq); // kDimBatch, kDimSeq
    std::vector<float> v(size_t(std::max<int64_t>(n, 0)));
    context_->copyToHost(v.data(), activations_ + o->offset(), v.size() * 4,
                         src + ": @" + name + "'s output " + o->name()->str());
    results.emplace_back(o->name()->str(), std::move(v));
  }
  lastRunTimes_ = {ms(t0, t1), ms(t1, t2), ms(t2, t3), ms(t3, Clock::now()), double(gpu)};
  return results;
}

std::vector<std::vector<float>> CudaExecutor::masterParams() {
  if (!train_)
    throw Error(artifact_.source() + ": master weights exist for train artifacts only");
  const auto &table = *artifact_.root().params();
  std::vector<std::vector<float>> out(table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    size_t n = 1;
    for (int64_t d : *table[i]->shape())
      n *= size_t(d);
    out[i].resize(n);
    context_->copyToHost(out[i].data(), masters_[i], n * 4,
                         artifact_.source() + ": reading the master weights");
  }
  context_->synchronize(artifact_.source() + ": reading the master weights");
  return out;
}

void CudaExecutor::setMasterParams(const ParamValues &params) {
  if (!train_)
    throw Error(artifact_.source() + ": master weights exist for train artifacts only");
  checkParamValues(artifact_, params);
  const std::string where = artifact_.source() + ": uploading the weights";
  std::vector<std::vector<uint16_t>> staged(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    context_->copyToDevice(masters_[i], params[i].data(), params[i].size() * 4, where);
    if (f32Param_[i])
      continue; // θ: the master is the parameter
    staged[i].resize(params[i].size());
    std::transform(params[i].begin(), params[i].end(), staged[i].begin(), f32ToBf16);
    context_->copyToDevice(params_[i], staged[i].data(), staged[i].size() * 2, where);
  }
  context_->synchronize(where);
}

void CudaExecutor::setState(const std::vector<std::vector<float>> &state) {
  const std::string where = artifact_.source() + ": uploading the state";
  if (state.size() != state_.size())
    throw Error(where + ": " + std::to_string(state.size()) + " buffers for " +
                std::to_string(state_.size()));
  for (size_t i = 0; i < state.size(); ++i) // (checked before any is replaced)
    if (state[i].size() * 4 != stateBytes_[i])
      throw Error(where + ": buffer " + std::to_string(i) + " has the wrong size");
  for (size_t i = 0; i < state.size(); ++i)
    context_->copyToDevice(state_[i], state[i].data(), stateBytes_[i], where);
  std::fill(stale_.begin(), stale_.end(), 0); // every buffer replaced
  context_->synchronize(where);
}

std::vector<float> CudaExecutor::stateBuffer(size_t i) {
  if (i >= state_.size())
    throw Error(artifact_.source() + ": no state buffer " + std::to_string(i));
  if (stale_[i])
    zeroStaleGradients(artifact_.source() + ": copying a state buffer back");
  std::vector<float> v(stateBytes_[i] / 4);
  context_->copyToHost(v.data(), state_[i], stateBytes_[i],
                       artifact_.source() + ": copying a state buffer back");
  return v;
}

bool CudaExecutor::gradientsFinite() {
  zeroStaleGradients(artifact_.source() + ": checking the gradients");
  return sumOfSquaresFinite(true);
}
bool CudaExecutor::mastersFinite() { return sumOfSquaresFinite(false); }

bool CudaExecutor::sumOfSquaresFinite(bool gradients) {
  const std::string where = artifact_.source() + ": checking the " +
                            (gradients ? "gradients" : "master weights") + " on the GPU";
  if (!train_)
    throw Error(where + ": not a train artifact");
  context_->makeCurrent();
  // The optimizer's global-norm step provides the two kernels (and their launch shapes).
  const schema::KernelLaunch *chunksL = nullptr, *totalL = nullptr;
  const auto &names = *artifact_.root().kernels()->names();
  for (const Function &f : functions_)
    for (const schema::Step *s : *f.fn->steps())
      if (s->kind() == schema::KernelKind_GlobalNorm && s->launches())
        for (const schema::KernelLaunch *l : *s->launches()) {
          const std::string n = names.Get(l->kernel())->str();
          if (n.rfind("tnlm_sum_squares_chunks", 0) == 0)
            chunksL = l;
          else if (n.rfind("tnlm_sum_squares_total", 0) == 0)
            totalL = l;
        }
  if (!chunksL || !totalL)
    throw Error(where + ": the artifact has no global-norm kernels");
  const int which = gradients ? 0 : 1;
  if (!finiteTables_[which]) {
    std::vector<HostOptTensor> table;
    long long chunks = 0;
    auto add = [&](CUdeviceptr p, long long n) {
      HostOptTensor t{};
      t.g = p, t.n = n, t.chunk0 = chunks;
      chunks += (n + kOptChunk - 1) / kOptChunk;
      table.push_back(t);
    };
    if (gradients) {
      const auto *st = artifact_.root().state();
      for (unsigned i = 0; st && i < st->size(); ++i)
        if (st->Get(i)->kind() == schema::StateKind_Gradient)
          add(state_[i], (long long)(stateBytes_[i] / 4));
    } else {
      const auto &table0 = *artifact_.root().params();
      for (unsigned i = 0; i < table0.size(); ++i) {
        long long n = 1;
        for (int64_t d : *table0[i]->shape())
          n *= d;
        add(masters_[i], n);
      }
    }
    if (table.empty())
      return true;
    finiteTables_[which] =
        std::make_unique<DeviceBuffer>(table.size() * sizeof(HostOptTensor), "the finite check");
    context_->copyToDevice(finiteTables_[which]->get(), table.data(),
                           table.size() * sizeof(HostOptTensor), where);
    finiteChunks_[which] = chunks;
    const size_t need = size_t(std::max(finiteChunks_[0], finiteChunks_[1])) * 8;
    if (!finitePartial_ || finitePartial_->size() < need)
      finitePartial_ = std::make_unique<DeviceBuffer>(need, "the finite check's chunks");
    if (!finiteTotal_)
      finiteTotal_ = std::make_unique<DeviceBuffer>(8, "the finite check's total");
  }
  const long long chunks = finiteChunks_[which];
  const int count = int(finiteTables_[which]->size() / sizeof(HostOptTensor));
  auto config = [](const schema::KernelLaunch *l, unsigned gx) {
    LaunchConfig c;
    c.grid.x = gx;
    c.block.x = static_cast<unsigned>(l->block());
    c.sharedBytes = static_cast<unsigned>(l->shared_mem());
    return c;
  };
  const CUdeviceptr partial = finitePartial_->get(), total = finiteTotal_->get(), none = 0;
  const double divisor = 1.0;
  context_->launchWith(kernel(chunksL, where), config(chunksL, unsigned(chunks)), where,
                       finiteTables_[which]->get(), count, partial);
  context_->launchWith(kernel(totalL, where), config(totalL, 1), where, partial, chunks, divisor,
                       total, none);
  double sum = 0;
  context_->copyToHost(&sum, total, 8, where);
  context_->synchronize(where);
  return std::isfinite(sum);
}

int64_t CudaExecutor::trainStepCounter() {
  const auto *st = artifact_.root().state();
  for (unsigned i = 0; st && i < st->size(); ++i)
    if (st->Get(i)->kind() == schema::StateKind_StepCounter) {
      int32_t v = 0;
      context_->copyToHost(&v, state_[i], 4, artifact_.source() + ": the step counter");
      context_->synchronize(artifact_.source() + ": the step counter");
      return v;
    }
  return 0;
}

} // namespace tnlm::cuda
