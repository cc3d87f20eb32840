//===- CudaExecutor.cpp - run a CUDA artifact's plan on the GPU -----------===//
#include "runtime/cuda/CudaExecutor.h"

#include "codegen/cuda/LightningFwdPlan.h"

#include "runtime/DType.h"
#include "runtime/Error.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string_view>

namespace tnlm::cuda {

namespace {

// The Lightning Attention kernels' arguments (bf16 pointers as 16-bit words; same layout) and
// their segment plan, from the header the kernels use.
using LightningArgs = la::LightningFwdArgsT<uint16_t>;

constexpr int kLaHeadDim = 128, kLaChunk = 64;
constexpr size_t kLaStateBytes = size_t(kLaHeadDim) * kLaHeadDim * sizeof(float);

size_t dtypeBytes(schema::DType d) {
  return d == schema::DType_F32 || d == schema::DType_I32 ? 4 : 2;
}

} // namespace

CudaExecutor::CudaExecutor(const Artifact &artifact, const ParamValues &params, Context *context,
                           int ordinal)
    : artifact_(artifact) {
  const std::string &src = artifact.source();
  const schema::Artifact &root = artifact.root();
  if (root.target() != schema::Target_CUDA_SM90A || !root.kernels())
    throw Error(src + ": not a CUDA artifact (compile with --target=cuda:sm_90a)");
  train_ = root.mode() == schema::Mode_Train;
  const auto &table = *root.params();
  checkParamValues(artifact, params);
  for (const schema::Function *fn : *root.functions())
    functions_.push_back(
        Function{fn->name()->str(), fn, {}, 0, fn->name()->str() == "decode_step"});
  stackGemms_ = stackingFromEnvironment();
  fuseSglu_ = sgluFusionFromEnvironment();
  fuseSilu_ = siluFusionFromEnvironment();
  firstWrite_ = firstWriteFromEnvironment();
  gradStream_ = gradStreamFromEnvironment();
  reuseLaStates_ = reuseLaStatesFromEnvironment();
  if (const char *pdl = std::getenv("TNLM_PDL")) {
    const std::string_view v(pdl);
    if (v != "0" && v != "1")
      throw Error("TNLM_PDL=" + std::string(v) +
                  ": expected 0 (no programmatic dependent launch) or 1 (the default)");
    programmatic_ = v == "1";
  }
  if (const char *cv = std::getenv("TNLM_DECODE_CARVEOUT"); cv && *cv) {
    const std::string v(cv);
    const bool digits = v.size() <= 3 && v.find_first_not_of("0123456789") == std::string::npos;
    const int pct = digits ? std::stoi(v) : -1;
    if (v != "driver" && v != "auto" && (pct < 0 || pct > 100))
      throw Error("TNLM_DECODE_CARVEOUT=" + v +
                  ": expected 'auto' (the default: one shared-memory carveout for every kernel "
                  "of @decode_step, from what they need), a percent from 0 to 100 (the carveout "
                  "every kernel of @decode_step asks for) or 'driver' (the driver's choice per "
                  "kernel)");
    autoCarveout_ = v == "auto";
    carveout_ = digits ? pct : -1;
  }
  if (const char *fuse = std::getenv("TNLM_DECODE_FUSE")) {
    const std::string_view v(fuse);
    if (v != "0" && v != "1")
      throw Error("TNLM_DECODE_FUSE=" + std::string(v) +
                  ": expected 0 (the qkvu GEMV and the decode kernel apart, the default) or 1 (one "
                  "launch)");
    decodeFusion_ = v == "1";
  }
  if (const char *pf = std::getenv("TNLM_GEMV_PREFETCH")) {
    const std::string_view v(pf);
    if (v != "0" && v != "1" && v != "2")
      throw Error("TNLM_GEMV_PREFETCH=" + std::string(v) +
                  ": expected 0 (no L2 prefetch of later decode GEMVs' weights, the default), 1 "
                  "(the next GEMV's) or 2 (the one after it)");
    gemvPrefetch_ = v[0] - '0';
  }
  // Parameters are uploaded as bf16 (what the GEMMs and kernels read), except LRPE's θ, which
  // the prologues read as f32: angles p·θ reach 10^4 rad, where θ's bf16 rounding (2^-9)
  // would move them by tens of radians. θ is the parameter input of the attention steps.
  f32Param_.assign(table.size(), false);
  for (const Function &f : functions_)
    for (const schema::Step *s : *f.fn->steps()) {
      const auto kind = s->kind();
      if (kind != schema::KernelKind_LightningAttention &&
          kind != schema::KernelKind_LightningPrefill && kind != schema::KernelKind_LightningDecode)
        continue;
      for (unsigned i = 1; i < s->inputs()->size(); ++i)
        if (s->inputs()->Get(i)->kind() == schema::OperandKind_Param)
          f32Param_.at(s->inputs()->Get(i)->offset()) = true;
    }
  size_t paramBytes = 0;
  for (size_t i = 0; i < table.size(); ++i) {
    paramBytes += (params[i].size() * (f32Param_[i] ? 4 : 2) + Arena::kAlignment - 1) /
                  Arena::kAlignment * Arena::kAlignment;
  }
  const int64_t maxRows = artifact.maxBatch() * artifact.maxSeq();
  size_t arenaBytes = 0, inputCount = 0;
  int64_t maxHeads = 0;
  bool lightning = false, prefill = false;
  for (Function &f : functions_) {
    const schema::Function &fn = *f.fn;
    arenaBytes = std::max<size_t>(arenaBytes, fn.arena_bytes());
    inputCount = std::max<size_t>(inputCount, fn.inputs() ? fn.inputs()->size() : 0);
    const schema::FunctionIO *out = fn.outputs()->Get(0);
    if (!train_) // (train functions return scalars: the vocabulary is the artifact's, below)
      vocab_ = out->shape()->Get(out->shape()->size() - 1);
    bool logitsLinear = false; // the f32 logits come straight from the last GEMM (bf16 in)
    for (const schema::Step *s : *fn.steps()) {
      logitsLinear |= s->kind() == schema::KernelKind_Linear && s->outputs()->size() == 1 &&
                      s->outputs()->Get(0)->dtype() == schema::DType_F32 &&
                      s->outputs()->Get(0)->offset() == out->offset() &&
                      s->outputs()->Get(0)->ld() == vocab_;
      const auto kind = s->kind();
      lightning |= kind == schema::KernelKind_LightningAttention ||
                   kind == schema::KernelKind_LightningPrefill;
      if (kind == schema::KernelKind_GatedLinear)
        // gated_linear stays whole only in @decode_step (one row per slot, CudaEmitter.cpp).
        gatedScratchBytes_ =
            std::max<size_t>(gatedScratchBytes_, 2 * size_t(artifact.maxBatch()) *
                                                     size_t(s->outputs()->Get(0)->cols()) * 2);
      if (kind == schema::KernelKind_LightningPrefill) {
        prefill = true;
        maxHeads = std::max<int64_t>(maxHeads, s->i64_attrs()->Get(0));
      }
    }
    if (train_) // outputs: the loss (and no logits)
      continue;
    if (!logitsLinear || out->kind() != schema::OperandKind_Arena)
      throw Error(src + ": @" + f.name + "'s logits are not the dense f32 output of a linear step");
    f.logitsOffset = out->offset();
  }

  if (train_) // the functions' outputs are losses: the vocabulary is the artifact's
    vocab_ = artifact.vocabSize();
  if (context) {
    context_ = context;
  } else {
    ownedContext_ = std::make_unique<Context>(ordinal);
    context_ = ownedContext_.get();
  }
  context_->makeCurrent();

  // Lightning piece states: plan_lightning_fwd keeps B·H·pieces_per_bh ≤ #SMs (pieces only
  // double while 2·B·H·(segs-1)·k ≤ #SMs; with k = 1, B·H·(segs-1) < B·H·(#SMs / (B·H))), so
  // #SMs states of DK×DV f32 cover every call; runLightning checks it anyway. The prefill's
  // final states of one pass: [max batch · H][DK][DV] f32.
  workspaceBytes_ = lightning ? size_t(context_->multiprocessors()) * kLaStateBytes : 0;
  scratchBytes_ = prefill ? size_t(artifact.maxBatch()) * size_t(maxHeads) * kLaStateBytes : 0;

  auto up = [](size_t b) {
    return (b + Arena::kAlignment - 1) / Arena::kAlignment * Arena::kAlignment;
  };
  size_t slopeBytes = 0, stateBytes = 0;
  for (const Function &f : functions_)
    for (const schema::Step *s : *f.fn->steps())
      if (s->slopes())
        slopeBytes += up(s->slopes()->size() * sizeof(float));
  if (root.state())
    for (const schema::StateBuffer *st : *root.state()) {
      size_t n = 1;
      for (int64_t d : *st->shape())
        n *= size_t(d);
      stateBytes_.push_back(n * 4);
      stateBytes += up(n * 4);
    }
  const int64_t inputWords = std::max<int64_t>(maxRows, 16); // ids, labels, or hparams
  size_t masterBytes = 0;
  if (train_)
    for (size_t i = 0; i < table.size(); ++i)
      if (!f32Param_[i])
        masterBytes += up(params[i].size() * 4);
  const size_t total = up(arenaBytes) + inputCount * up(inputWords * sizeof(int32_t)) +
                       masterBytes + slopeBytes + paramBytes + up(workspaceBytes_) +
                       up(scratchBytes_) + up(gatedScratchBytes_) + stateBytes + Arena::kAlignment;
  // Training: the master weights are in `total`; its scratch (separate buffers) is added here.
  const size_t trainScratch = train_ ? planTrainScratch() : 0;
  if (total + trainScratch > context_->totalMemory()) {
    auto gib = [](size_t b) { return std::to_string(b / double(1u << 30)).substr(0, 6) + " GiB"; };
    throw Error(
        src + ": the parameters (" + gib(paramBytes + masterBytes) +
        "), the planned activations (" + gib(arenaBytes) + ") and the state (" + gib(stateBytes) +
        ")" +
        (train_ ? " with the train steps' scratch (" + gib(trainScratch) + ")" : std::string()) +
        " for batch " + std::to_string(artifact.maxBatch()) + " x sequence " +
        std::to_string(artifact.maxSeq()) + " need " + gib(total + trainScratch) +
        ", more than the " + gib(context_->totalMemory()) + " of " + context_->deviceName() +
        (train_ ? ": compile with --recompute=full (if it is not already), a smaller --batch "
                  "or --seq (tnlmc --summary shows what fits)"
                : ": compile with a smaller --batch or --seq"));
  }
  trainScratchBytes_ = trainScratch;
  arena_ = std::make_unique<Arena>(total, src + ": the device arena");
  activations_ = arena_->allocate(std::max<size_t>(arenaBytes, 1), "the activations");
  for (size_t i = 0; i < inputCount; ++i)
    inputs_.push_back(arena_->allocate(inputWords * sizeof(int32_t), "the inputs"));
  staged_.resize(inputCount);
  if (workspaceBytes_)
    workspace_ = arena_->allocate(workspaceBytes_, "the Lightning Attention workspace");
  if (scratchBytes_)
    scratch_ = arena_->allocate(scratchBytes_, "the prefill's final states");
  if (gatedScratchBytes_)
    gatedScratch_ = arena_->allocate(gatedScratchBytes_, "the gated GEMMs' products");
  for (size_t i = 0; i < stateBytes_.size(); ++i)
    state_.push_back(arena_->allocate(std::max<size_t>(stateBytes_[i], 4), "the state"));
  stale_.assign(stateBytes_.size(), 0);

  // Parameters as bf16 (one host buffer per tensor, kept until the copies have run), θ as f32.
  // In table order, back to back (the arena's 256-byte alignment leaves no gap after a [F, K]
  // bf16 matrix with K a multiple of 128): a gated pair's W2 follows its W1, which lets the
  // Linear and GatedLinearGrad steps run the pair as one GEMM (stackedGemms() counts them).
  std::vector<std::vector<uint16_t>> staged(table.size());
  params_.resize(table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    const std::string name = table[i]->name()->str();
    if (f32Param_[i]) {
      params_[i] = arena_->allocate(params[i].size() * 4, "parameter '" + name + "'");
      context_->copyToDevice(params_[i], params[i].data(), params[i].size() * 4,
                             src + ": uploading parameter '" + name + "'");
      continue;
    }
    staged[i].resize(params[i].size());
    std::transform(params[i].begin(), params[i].end(), staged[i].begin(), f32ToBf16);
    params_[i] = arena_->allocate(staged[i].size() * 2, "parameter '" + name + "'");
    context_->copyToDevice(params_[i], staged[i].data(), staged[i].size() * 2,
                           src + ": uploading parameter '" + name + "'");
  }
  if (train_) { // the f32 masters (θ is f32 already: its own master)
    masters_.resize(table.size());
    for (size_t i = 0; i < table.size(); ++i) {
      if (f32Param_[i]) {
        masters_[i] = params_[i];
        continue;
      }
      const std::string name = table[i]->name()->str();
      masters_[i] = arena_->allocate(params[i].size() * 4, "master weight '" + name + "'");
      context_->copyToDevice(masters_[i], params[i].data(), params[i].size() * 4,
                             src + ": uploading master weight '" + name + "'");
    }
  }
  for (Function &f : functions_) {
    f.slopes.assign(f.fn->steps()->size(), 0);
    for (unsigned i = 0; i < f.fn->steps()->size(); ++i) {
      const schema::Step *s = f.fn->steps()->Get(i);
      if (!s->slopes() || s->slopes()->size() == 0)
        continue;
      f.slopes[i] = arena_->allocate(s->slopes()->size() * sizeof(float), "slopes");
      context_->copyToDevice(f.slopes[i], s->slopes()->data(), s->slopes()->size() * sizeof(float),
                             src + ": uploading the slopes of step " + std::to_string(i));
    }
  }
  resetState();
  const schema::Kernels &kernels = *root.kernels();
  module_ = std::make_unique<Module>(
      *context_,
      std::string_view(reinterpret_cast<const char *>(kernels.image()->data()),
                       kernels.image()->size()),
      src);
  for (const flatbuffers::String *name : *kernels.names()) {
    module_->kernel(name->str(), src + ": loading the kernels");
    hasSgluKernel_ = hasSgluKernel_ || name->str() == kSgluFusedKernel;
    hasMulGradKernel_ = hasMulGradKernel_ || name->str() == kMulGradFusedKernel;
    hasSiluKernel_ = hasSiluKernel_ || name->str() == kSiluFusedKernel;
  }
  gemm_ = std::make_unique<Gemm>(*context_);
  if (train_)
    allocateTrain();
  context_->synchronize(src + ": uploading the parameters");
}

CudaExecutor::~CudaExecutor() {
  // enqueue() returns before the GPU is done: wait (ignoring errors) before the graphs, the
  // module, the GEMM workspace and the arena go.
  if (context_)
    driver().cuStreamSynchronize(context_->stream());
  for (CUevent e : decodeUploaded_)
    if (e)
      driver().cuEventDestroy(e);
  for (CUevent e : runEvents_)
    if (e)
      driver().cuEventDestroy(e);
}

CUdeviceptr CudaExecutor::operand(const schema::Operand *o, const std::string &where) const {
  switch (o->kind()) {
  case schema::OperandKind_Arena:
    return activations_ + o->offset() + o->col_offset() * dtypeBytes(o->dtype());
  case schema::OperandKind_Param:
    return params_.at(o->offset()) + o->col_offset() * (f32Param_.at(o->offset()) ? 4 : 2);
  case schema::OperandKind_Input:
    if (o->offset() >= inputs_.size())
      throw Error(where + ": an operand names function input " + std::to_string(o->offset()) +
                  " of " + std::to_string(inputs_.size()));
    return inputs_[o->offset()];
  case schema::OperandKind_State:
    if (o->offset() >= state_.size())
      throw Error(where + ": an operand names state " + std::to_string(o->offset()) + " of " +
                  std::to_string(state_.size()));
    return state_[o->offset()] + o->col_offset() * 4;
  default:
    throw Error(where + ": an operand of unknown kind");
  }
}

// The device bytes an operand's rows span (from its first row's start to its last row's end,
// at its row stride: the columns of other operands in between count too), for the weight
// gradients' side stream. Parameters and the function's inputs are not written by a train
// step: none.
CudaExecutor::Overlap::Range CudaExecutor::extentOf(const schema::Operand *o, int64_t rows) const {
  switch (o->kind()) {
  case schema::OperandKind_Arena: {
    const CUdeviceptr lo = activations_ + o->offset();
    const int64_t r = std::max<int64_t>(1, o->rows() >= 0 ? o->rows() : rows);
    return {lo, lo + CUdeviceptr(r * std::max(o->ld(), o->cols()) * dtypeBytes(o->dtype()))};
  }
  case schema::OperandKind_State:
    if (o->offset() < state_.size())
      return {state_[o->offset()], state_[o->offset()] + stateBytes_[o->offset()]};
    return {};
  default:
    return {};
  }
}

Kernel &CudaExecutor::kernel(const schema::KernelLaunch *l, const std::string &where) {
  const auto &names = *artifact_.root().kernels()->names();
  if (l->kernel() < 0 || static_cast<unsigned>(l->kernel()) >= names.size())
    throw Error(where + ": launch of kernel index " + std::to_string(l->kernel()) + " of " +
                std::to_string(names.size()));
  return module_->kernel(names.Get(l->kernel())->str(), where);
}

void CudaExecutor::runStep(const Function &f, unsigned index, const schema::Step &s, int64_t batch,
                           int64_t seq, const std::string &where) {
  const int64_t rows = batch * seq;
  const auto &in = *s.inputs();
  const auto &out = *s.outputs();
  auto ptr = [&](const schema::Operand *o) { return operand(o, where); };
  auto f32 = [&](unsigned i) { return s.f32_attrs()->Get(i); };
  auto kernelOf = [&](const schema::KernelLaunch *l) -> Kernel & { return kernel(l, where); };
  auto perRow = [&](const schema::KernelLaunch *l) {
    LaunchConfig c;
    c.grid.x = static_cast<unsigned>(rows);
    c.block.x = static_cast<unsigned>(l->block());
    c.sharedBytes = static_cast<unsigned>(l->shared_mem());
    decodeLaunch(c, f.decode);
    return c;
  };
  const schema::Operand *y = out.Get(0);
  auto ld = [](const schema::Operand *o) { return static_cast<long long>(o->ld()); };
  if (!skip_.empty()) {
    auto it = std::find(skip_.begin(), skip_.end(), std::make_pair(&f, index));
    if (it != skip_.end()) { // done by an earlier step of this run
      skip_.erase(it);
      return;
    }
  }
  if (train_ && runTrainStep(f, index, s, batch, seq, where))
    return;
  if (!s.launches() || s.launches()->size() == 0)
    throw Error(where + ": the step has no launches (not compiled for a CUDA target)");

  // The decode GEMV (rec::gemv) where the step has one and the call has at most 8 rows; its
  // prologue computes the norm of the step before it (which was skipped, see gemvFor).
  if (const schema::KernelLaunch *fused = gemvDecodeFor(f, index, rows)) {
    runGemvDecode(f, index, s, *fused, rows, where);
    return;
  }
  if (const schema::KernelLaunch *gemv = gemvFor(f, index, rows)) {
    LaunchConfig c;
    c.block.x = static_cast<unsigned>(gemv->block());
    const bool gated = s.kind() == schema::KernelKind_GatedLinear;
    const GemvLayout g = gemvLayout(*gemv, gated, rows);
    c.grid.x = static_cast<unsigned>(g.grid);
    c.sharedBytes = static_cast<unsigned>(g.sharedBytes);
    decodeLaunch(c, f.decode);
    const CUdeviceptr w2 = gated ? ptr(in.Get(2)) : ptr(in.Get(1));
    const GemvInputs v = gemvInputs(f, index, gemv->prologue(), where);
    const GemvPrefetch pf = gemvPrefetchFor(f, index, rows, where);
    context_->launchWith(kernelOf(gemv), c, where, v.x, v.ldx, v.x2, v.ldx2, v.sum, v.ldsum, v.eps,
                         ptr(in.Get(1)), w2, ptr(y), ld(y), int(rows), int(gemv->gemm_n()),
                         int(gemv->gemm_k()), int(g.rowsPerCta), int(g.stageRows), int(g.stages),
                         int(g.warpsPerRow), pf.w, pf.bytes, pf.w2, pf.bytes2);
    return;
  }
  // A norm that the next step's GEMV computes itself (lightning_decode: only its epilogue).
  if (fusedIntoNext(f, index, rows) && s.kind() != schema::KernelKind_LightningDecode)
    return;
  if (s.kind() == schema::KernelKind_GatedLinear) { // larger batches: two GEMMs, the product
    const schema::KernelLaunch *g = nullptr, *mul = nullptr;
    for (const schema::KernelLaunch *l : *s.launches()) {
      if (l->kind() == schema::LaunchKind_Gemm)
        g = l;
      else if (l->kind() == schema::LaunchKind_PerRow)
        mul = l;
    }
    if (!g || !mul || !gatedScratch_)
      throw Error(where + ": a gated linear step without its GEMM and product launches");
    if (rows > artifact_.maxBatch())
      throw Error(where + ": a gated linear step of " + std::to_string(rows) +
                  " rows; the executor's scratch holds one row per slot (decode steps)");
    GemmShape shape;
    shape.rows = rows;
    shape.in = g->gemm_k();
    shape.out = g->gemm_n();
    shape.ldx = in.Get(0)->ld();
    shape.ldy = g->gemm_n();
    const CUdeviceptr a = gatedScratch_, b = gatedScratch_ + size_t(rows) * g->gemm_n() * 2;
    gemm_->linear(GemmType::Bf16, shape, ptr(in.Get(0)), ptr(in.Get(1)), a, where);
    gemm_->linear(GemmType::Bf16, shape, ptr(in.Get(0)), ptr(in.Get(2)), b, where);
    LaunchConfig c = perRow(mul);
    const long long ldab = g->gemm_n();
    context_->launchWith(kernelOf(mul), c, where, a, ldab, b, ldab, ptr(y), ld(y));
    return;
  }
  if (s.kind() == schema::KernelKind_Linear) {
    const schema::KernelLaunch *l = s.launches()->Get(0);
    GemmShape shape;
    // Rows: the call's batch · seq, or one per slot (the prefill's lm head after gather_last).
    shape.rows = in.Get(0)->rows() == -2 ? batch : rows;
    shape.in = l->gemm_k();
    shape.out = l->gemm_n();
    shape.ldx = in.Get(0)->ld();
    shape.ldy = y->ld();
    // A gated pair (the lowering's a, b: the column halves of one [rows, 2F] buffer) whose W2
    // bf16 copy follows W1's: one GEMM y[:, 0:2F] = x·[W1; W2]ᵀ, the next step skipped.
    // (Not with --sync-steps: a fault is then named by its own step.)
    if (stackGemms_ && !syncSteps_ && index + 1 < f.fn->steps()->size() &&
        y->dtype() == schema::DType_BF16 && in.Get(0)->rows() != -2) {
      const schema::Step &n = *f.fn->steps()->Get(index + 1);
      const schema::Operand *x2 = n.kind() == schema::KernelKind_Linear && n.inputs() &&
                                          n.inputs()->size() == 2 && n.launches() &&
                                          n.launches()->size() == 1
                                      ? n.inputs()->Get(0)
                                      : nullptr;
      if (x2 && ptr(x2) == ptr(in.Get(0)) && x2->ld() == in.Get(0)->ld() &&
          x2->rows() == in.Get(0)->rows() && n.launches()->Get(0)->gemm_k() == shape.in &&
          n.launches()->Get(0)->gemm_n() == shape.out) {
        const schema::Operand *y2 = n.outputs()->Get(0);
        const CUdeviceptr w1 = ptr(in.Get(1)), w2 = ptr(n.inputs()->Get(1));
        const CUdeviceptr out2 = ptr(y2);
        if (y2->dtype() == schema::DType_BF16 && y->ld() == 2 * shape.out && y2->ld() == y->ld() &&
            y2->rows() == y->rows() && out2 == ptr(y) + CUdeviceptr(shape.out * 2) &&
            w2 == w1 + CUdeviceptr(shape.out * shape.in * 2)) {
          stacked_.insert({&f, index, 0});
          // With its product after it: one kernel for the GEMM and the product, where it can.
          if (runFusedSglu(f, index, in.Get(0), w1, y, shape.rows, shape.in, shape.out, where))
            return;
          GemmShape pair = shape;
          pair.out = 2 * shape.out;
          gemm_->linear(GemmType::Bf16, pair, ptr(in.Get(0)), w1, ptr(y), where);
          skip_.push_back({&f, index + 1});
          return;
        }
      }
    }
    // A train step's qkvu with the φ of the Lightning step after it, where it can.
    if (y->dtype() == schema::DType_BF16 && in.Get(0)->rows() != -2 &&
        runFusedSilu(f, index, in.Get(0), ptr(in.Get(1)), y, shape.rows, shape.in, shape.out,
                     where))
      return;
    // The logits (f32 output): bf16 x and W, f32 accumulation and result.
    gemm_->linear(y->dtype() == schema::DType_F32 ? GemmType::Bf16F32Out : GemmType::Bf16, shape,
                  ptr(in.Get(0)), ptr(in.Get(1)), ptr(y), where);
    return;
  }
  if (s.kind() == schema::KernelKind_LightningAttention ||
      s.kind() == schema::KernelKind_LightningPrefill) {
    runLightning(f, index, s, batch, seq, where);
    return;
  }
  if (s.kind() == schema::KernelKind_LightningDecode) {
    if (seq != 1)
      throw Error(where + ": a decode step takes one token per slot, not " + std::to_string(seq));
    runDecode(f, index, s, batch, where);
    return;
  }
  if (s.kind() == schema::KernelKind_GatherLast) {
    const schema::KernelLaunch *l = s.launches()->Get(0);
    if (l->kind() != schema::LaunchKind_PerSlot)
      throw Error(where + ": expected a per-slot launch");
    LaunchConfig c;
    c.grid.x = static_cast<unsigned>(batch);
    c.block.x = static_cast<unsigned>(l->block());
    context_->launchWith(kernelOf(l), c, where, ptr(in.Get(0)), ld(in.Get(0)), ptr(in.Get(1)),
                         int(seq), ptr(y), ld(y));
    return;
  }
  for (const schema::KernelLaunch *l : *s.launches()) {
    if (l->kind() != schema::LaunchKind_PerRow)
      throw Error(where + ": expected a per-row launch");
    Kernel &k = kernelOf(l);
    const LaunchConfig c = perRow(l);
    switch (s.kind()) {
    case schema::KernelKind_Embedding: {
      const schema::Operand *table = in.Get(1);
      int vocab =
          static_cast<int>(artifact_.root().params()->Get(table->offset())->shape()->Get(0));
      context_->launchWith(k, c, where, ptr(in.Get(0)), ptr(table), vocab, ptr(y), ld(y), f32(0));
      break;
    }
    case schema::KernelKind_SrmsNorm:
      context_->launchWith(k, c, where, ptr(in.Get(0)), ld(in.Get(0)), ptr(y), ld(y), f32(0));
      break;
    case schema::KernelKind_AddSrmsNorm: {
      const schema::Operand *n = out.Get(1);
      context_->launchWith(k, c, where, ptr(in.Get(0)), ld(in.Get(0)), ptr(in.Get(1)),
                           ld(in.Get(1)), ptr(y), ld(y), ptr(n), ld(n), f32(0));
      break;
    }
    case schema::KernelKind_Silu:
      context_->launchWith(k, c, where, ptr(in.Get(0)), ld(in.Get(0)), ptr(y), ld(y));
      break;
    case schema::KernelKind_Mul:
    case schema::KernelKind_Add:
      context_->launchWith(k, c, where, ptr(in.Get(0)), ld(in.Get(0)), ptr(in.Get(1)),
                           ld(in.Get(1)), ptr(y), ld(y));
      break;
    default:
      throw Error(where + ": kernel kind " + std::to_string(static_cast<int>(s.kind())) +
                  " has no CUDA launch in the runtime");
    }
  }
}

// A Lightning Attention step (launches from CudaEmitter::lightning). Plain layer: prologue
// φ(q), φ(k) in place in qkvu, one forward pass (state, scan, main) -> y, epilogue
// y = u ⊙ SRMSNorm(y). LRPE layer: the prologue writes the planes [q cos | k cos | q sin |
// k sin] into the step's workspace (same row stride as qkvu, so q, k and v share the strides
// LightningFwdArgs has one set of), pass 0 runs on the cos planes -> y, pass 1 on the sin
// planes -> workspace plane 0 (no longer read), and the epilogue norms and gates the sum.
// Prefill (LightningPrefill): inputs qkvu, state, lengths[, θ], outputs y, state[, the LRPE
// workspace]; the prologue (rec::prefill_prologue) zeroes q', k' of the left padding, each
// pass also writes its final states into scratch_ and a StateCommit launch copies them into
// the slots' state.
void CudaExecutor::runLightning(const Function &f, unsigned index, const schema::Step &s,
                                int64_t batch, int64_t seq, const std::string &where) {
  const int64_t rows = batch * seq;
  const auto &in = *s.inputs();
  const auto &out = *s.outputs();
  auto i64 = [&](unsigned i) { return s.i64_attrs()->Get(i); };
  const int heads = static_cast<int>(i64(0)), dh = static_cast<int>(i64(1));
  const bool lrpe = i64(3) != 0;
  const bool prefill = s.kind() == schema::KernelKind_LightningPrefill;
  const unsigned wsIndex = prefill ? 2 : 1, thetaIndex = prefill ? 3 : 1;
  if (dh != kLaHeadDim)
    throw Error(where + ": the CUDA Lightning Attention kernel needs head dim 128, not " +
                std::to_string(dh));
  if (!f.slopes[index])
    throw Error(where + ": the step has no slopes");
  const schema::Operand *qkvu = in.Get(0);
  const schema::Operand *y = out.Get(0);
  const schema::Operand *ws = out.size() > wsIndex ? out.Get(wsIndex) : nullptr;
  if (lrpe && (!ws || in.size() <= thetaIndex || ws->ld() != qkvu->ld()))
    throw Error(where + ": an LRPE layer needs θ and a workspace with qkvu's row stride");
  // A plain layer with a workspace (train steps keep qkvu for the backward): φ(q), φ(k) go
  // there instead of in place.
  const bool siluWs = !lrpe && !prefill && ws != nullptr;
  if (siluWs && ws->ld() != qkvu->ld())
    throw Error(where + ": the SiLU workspace needs qkvu's row stride");
  // From this tnlmc on (the epilogue tnlm_gated_norm_from_o), O goes into the SiLU workspace's
  // columns [2D, 3D) as well, for the backward, and the epilogue reads it there.
  const bool keepO = siluWs && launchesKernel(artifact_.root(), s, "tnlm_gated_norm_from_o");
  if (keepO && ws->cols() < 3 * heads * dh)
    throw Error(where + ": the workspace is too narrow to keep O");
  if (prefill && (in.size() < 3 || out.size() < 2))
    throw Error(where + ": a prefill step needs its state and lengths");
  if (prefill && size_t(batch) * size_t(heads) * kLaStateBytes > scratchBytes_)
    throw Error(where + ": the prefill's final states need more than the " +
                std::to_string(scratchBytes_) + " bytes allocated");
  const CUdeviceptr lengths = prefill ? operand(in.Get(2), where) : 0;
  const int64_t d = int64_t(heads) * dh;
  const CUdeviceptr base = operand(qkvu, where);
  const la::LightningFwdPlan plan = la::plan_lightning_fwd(
      int(batch), heads, int(seq), kLaHeadDim, kLaHeadDim, kLaChunk, context_->multiprocessors());
  const size_t need = plan.workspace_bytes;
  if (need > workspaceBytes_)
    throw Error(where + ": the Lightning Attention plan needs " + std::to_string(need) +
                " bytes of piece states, " + std::to_string(workspaceBytes_) + " allocated");
  // A train step's plain layer keeps its piece states for its backward's dq pass (where they
  // fit: keptLaStates; with TNLM_LA_REUSE_STATES=0 the shared workspace).
  const CUdeviceptr kept =
      keepO && reuseLaStates_ ? keptLaStates(operand(ws, where), batch, heads, seq) : 0;
  // Pass p's q, k, o and their strides.
  auto argsOf = [&](int pass) {
    LightningArgs a{};
    CUdeviceptr q = siluWs ? operand(ws, where) : base, o = operand(y, where);
    long long ldo = y->ld();
    if (lrpe) {
      const CUdeviceptr w = operand(ws, where);
      q = w + (pass == 0 ? 0 : 2 * d * 2);
      if (pass == 1)
        o = w, ldo = ws->ld();
    } else if (keepO) {
      o = operand(ws, where) + 2 * d * 2, ldo = ws->ld();
    }
    a.q = reinterpret_cast<const uint16_t *>(q);
    a.k = reinterpret_cast<const uint16_t *>(q + d * 2);
    a.v = reinterpret_cast<const uint16_t *>(base + 2 * d * 2);
    a.o = reinterpret_cast<uint16_t *>(o);
    a.slopes = reinterpret_cast<const float *>(f.slopes[index]);
    a.piece_states =
        plan.pieces_per_bh > 0 ? reinterpret_cast<float *>(kept ? kept : workspace_) : nullptr;
    a.final_state = prefill ? reinterpret_cast<float *>(scratch_) : nullptr;
    a.B = int(batch);
    a.N = int(seq);
    a.H = heads;
    a.in_sn = qkvu->ld();
    a.in_sb = seq * qkvu->ld();
    a.in_sh = dh;
    a.out_sn = ldo;
    a.out_sb = seq * ldo;
    a.out_sh = dh;
    a.seg_len = plan.seg_len;
    a.num_segs = plan.num_segs;
    a.piece_len = plan.piece_len;
    a.pieces_per_bh = plan.pieces_per_bh;
    return a;
  };
  const unsigned bh = static_cast<unsigned>(batch * heads);
  int pass = 0;          // forward passes started (a main launch ends one)
  bool attended = false; // per-row launches before the attention: prologue; after: epilogue
  LightningArgs a = argsOf(0);
  for (const schema::KernelLaunch *l : *s.launches()) {
    Kernel &k = kernel(l, where);
    LaunchConfig c;
    c.block.x = static_cast<unsigned>(l->block());
    c.sharedBytes = static_cast<unsigned>(l->shared_mem());
    switch (l->kind()) {
    case schema::LaunchKind_PerRow:
      c.grid.x = static_cast<unsigned>(rows);
      if (!attended && prefill) { // φ, LRPE and the left padding's zeros
        const CUdeviceptr theta = lrpe ? operand(in.Get(thetaIndex), where) : 0;
        const CUdeviceptr w = lrpe ? operand(ws, where) : base;
        const long long ldw = lrpe ? ws->ld() : qkvu->ld();
        context_->launchWith(k, c, where, base, qkvu->ld(), theta, lengths, int(seq), w, ldw);
      } else if (!attended && lrpe) {
        const schema::Operand *theta = in.Get(1);
        context_->launchWith(k, c, where, base, qkvu->ld(), operand(theta, where), int(seq),
                             operand(ws, where), ws->ld());
      } else if (!attended) {
        // φ(q), φ(k) in place in qkvu (not read after this inference step), or into the
        // train step's workspace (unless the qkvu GEMM did it: runFusedSilu).
        if (siluWs && siluDone_ == std::pair<const void *, unsigned>(&f, index)) {
          siluDone_ = {nullptr, 0};
          ++siluSkipped_;
          break;
        }
        const CUdeviceptr w = siluWs ? operand(ws, where) : base;
        context_->launchWith(k, c, where, base, qkvu->ld(), w, qkvu->ld());
      } else if (lrpe) { // y = u ⊙ SRMSNorm(y + workspace plane 0), in place
        context_->launchWith(k, c, where, base + 3 * d * 2, qkvu->ld(), operand(ws, where),
                             ws->ld(), operand(y, where), y->ld(), s.f32_attrs()->Get(0));
      } else if (keepO) { // y = u ⊙ SRMSNorm(O), O in the workspace's columns [2D, 3D)
        context_->launchWith(k, c, where, base + 3 * d * 2, qkvu->ld(),
                             operand(ws, where) + 2 * d * 2, ws->ld(), operand(y, where), y->ld(),
                             s.f32_attrs()->Get(0));
      } else { // y = u ⊙ SRMSNorm(y), in place
        context_->launchWith(k, c, where, base + 3 * d * 2, qkvu->ld(), operand(y, where), y->ld(),
                             s.f32_attrs()->Get(0));
      }
      break;
    case schema::LaunchKind_LightningState:
      if (pass >= (lrpe ? 2 : 1))
        throw Error(where + ": more Lightning Attention passes than the layer has");
      a = argsOf(pass);
      if (plan.pieces_per_bh > 0) {
        c.grid.x = bh * static_cast<unsigned>(plan.pieces_per_bh);
        context_->launchWith(k, c, where, a);
      }
      break;
    case schema::LaunchKind_LightningScan:
      if (plan.pieces_per_bh > 0) {
        c.grid.x = kLaHeadDim * kLaHeadDim / 1024;
        c.grid.y = bh;
        context_->launchWith(k, c, where, a);
      }
      break;
    case schema::LaunchKind_LightningMain:
      attended = true;
      c.grid.x = bh * static_cast<unsigned>(plan.num_segs);
      context_->launchWith(k, c, where, a);
      ++pass;
      break;
    case schema::LaunchKind_StateCommit: {
      if (!prefill || pass == 0)
        throw Error(where + ": a state commit outside a prefill pass");
      c.grid.x = static_cast<unsigned>(kLaStateBytes / sizeof(float) / 4 / l->block());
      c.grid.y = bh;
      const int dkTotal = lrpe ? 2 * kLaHeadDim : kLaHeadDim;
      context_->launchWith(k, c, where, scratch_, operand(out.Get(1), where), lengths, heads,
                           dkTotal, (pass - 1) * kLaHeadDim);
      break;
    }
    default:
      throw Error(where + ": unexpected launch kind in a Lightning Attention step");
    }
  }
  if (pass != (lrpe ? 2 : 1))
    throw Error(where + ": the step has " + std::to_string(pass) +
                " Lightning Attention passes, the layer needs " + std::to_string(lrpe ? 2 : 1));
}

bool CudaExecutor::switchFromEnvironment(const char *name, const char *off, const char *on) {
  const char *value = std::getenv(name);
  if (!value || !*value)
    return true;
  const std::string_view v(value);
  if (v != "0" && v != "1")
    throw Error(std::string(name) + "=" + std::string(v) + ": expected 0 (" + off + ") or 1 (" +
                on + ", the default)");
  return v == "1";
}

bool CudaExecutor::siluFusionFromEnvironment() {
  return switchFromEnvironment("TNLM_SILU_FUSE", "cuBLASLt's GEMM and the SiLU kernel",
                               "the fused kernel where the artifact has it");
}

bool CudaExecutor::sgluFusionFromEnvironment() {
  return switchFromEnvironment("TNLM_SGLU_FUSE", "cuBLASLt's GEMM and the product kernel",
                               "the fused kernel where the artifact has it");
}

namespace {

/// A TMA descriptor of a [rows, cols] bf16 row-major matrix (row stride ld elements), boxes of
/// 64 columns x boxRows rows, 128-byte swizzle (GemmSm90.cuh's layout).
struct TmaDescBytes {
  alignas(64) unsigned char bytes[128];
};
bool encodeTma(TmaDescBytes &d, CUdeviceptr p, int64_t rows, int64_t cols, int64_t ld,
               unsigned boxRows) {
  static_assert(sizeof(CUtensorMap) == sizeof(TmaDescBytes), "descriptor size");
  CUtensorMap m;
  const cuuint64_t dims[2] = {cuuint64_t(cols), cuuint64_t(rows)};
  const cuuint64_t strides[1] = {cuuint64_t(ld * 2)};
  const cuuint32_t box[2] = {64, boxRows}, estr[2] = {1, 1};
  if (driver().cuTensorMapEncodeTiled(
          &m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, reinterpret_cast<void *>(p), dims, strides, box,
          estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
          CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) != CUDA_SUCCESS)
    return false;
  std::memcpy(d.bytes, &m, sizeof m);
  return true;
}

// A persistent GEMM of ours (GemmSm90.cuh) over [rows, cols] of D in 128 x 128 tiles (the
// fused SGLU forward's columns of a and b, the ping-pong form's tiles): one CTA per tile, at
// most one per SM.
LaunchConfig gemmSm90Launch(int64_t rows, int64_t cols, unsigned smem, int sms) {
  const int64_t tiles = ((rows + 127) / 128) * ((cols + 127) / 128);
  LaunchConfig c;
  c.grid.x = unsigned(std::min<int64_t>(tiles, sms));
  c.block.x = kGemmSm90Threads;
  c.sharedBytes = smem;
  return c;
}

} // namespace

bool CudaExecutor::runFusedSglu(const Function &f, unsigned index, const schema::Operand *x,
                                CUdeviceptr w, const schema::Operand *y, int64_t rows, int64_t in,
                                int64_t out, const std::string &where) {
  // Where tnlmc put the kernel in the module (checked bit for bit against the unfused path by
  // tnlm-gpu-executor --train; the inference functions by their GPU-vs-CPU checks).
  if (!fuseSglu_ || !hasSgluKernel_ || index + 2 >= f.fn->steps()->size() || rows < 1)
    return false;
  const schema::Step &m = *f.fn->steps()->Get(index + 2);
  if (m.kind() != schema::KernelKind_Mul || !m.inputs() || m.inputs()->size() != 2 ||
      !m.outputs() || m.outputs()->size() != 1)
    return false;
  const schema::Operand *ma = m.inputs()->Get(0), *mb = m.inputs()->Get(1),
                        *p = m.outputs()->Get(0);
  auto ptr = [&](const schema::Operand *o) { return operand(o, where); };
  const CUdeviceptr yp = ptr(y), pp = ptr(p), xp = ptr(x);
  if (ptr(ma) != yp || ptr(mb) != yp + CUdeviceptr(out * 2) || ma->ld() != y->ld() ||
      mb->ld() != y->ld() || p->dtype() != schema::DType_BF16 || ma->cols() != out ||
      p->cols() != out || in < 64 || in % 64 != 0 || out % 8 != 0 || x->ld() % 8 != 0 ||
      y->ld() % 8 != 0 || p->ld() % 8 != 0 || (xp | yp | pp | w) % 16 != 0 || rows > INT32_MAX ||
      out > INT32_MAX)
    return false;
  // The kernel writes a, b and p from each tile at different times (TMA stores in flight
  // together): p must not share a byte with [a | b] (the memory plan may put the product over
  // the pair's dead buffer, as the unfused product kernel allows; then the unfused path runs).
  // Nor x: other tiles still read it while a tile's p is stored (in the inference functions
  // the memory plan may put the product over the norm's dead output).
  // (y's rows span [a | b]: its row stride is 2F.)
  const Overlap::Range pr = extentOf(p, rows);
  if (pr.meets(extentOf(y, rows)) || pr.meets(extentOf(x, rows)))
    return false;
  TmaDescBytes dx, dw, da, db, dp;
  if (!encodeTma(dx, xp, rows, in, x->ld(), 128) || !encodeTma(dw, w, 2 * out, in, in, 128) ||
      !encodeTma(da, yp, rows, out, y->ld(), 64) ||
      !encodeTma(db, yp + CUdeviceptr(out * 2), rows, out, y->ld(), 64) ||
      !encodeTma(dp, pp, rows, out, p->ld(), 64))
    return false;
  Kernel &k = module_->kernel(kSgluFusedKernel, where);
  const LaunchConfig c = gemmSm90Launch(rows, out, kGemmSm90Smem, context_->multiprocessors());
  context_->launchWith(k, c, where, dx, dw, da, db, dp, int(rows), int(out), int(in));
  skip_.push_back({&f, index + 1});
  skip_.push_back({&f, index + 2});
  fusedSglu_.insert({&f, index});
  return true;
}

bool CudaExecutor::runFusedSilu(const Function &f, unsigned index, const schema::Operand *x,
                                CUdeviceptr w, const schema::Operand *y, int64_t rows, int64_t k,
                                int64_t n, const std::string &where) {
  // The train step's plain Lightning step right after this linear, reading its output as
  // qkvu, with φ = SiLU into its workspace (runLightning's siluWs) as its first launch: that
  // launch is done here, in the GEMM's epilogue. (Checked bit for bit against the unfused
  // path by tnlm-gpu-executor --train.) Not with --sync-steps: a fault is then named by its
  // own step.
  if (!fuseSilu_ || !hasSiluKernel_ || syncSteps_ || index + 1 >= f.fn->steps()->size() ||
      rows < 1 || rows > INT32_MAX || n > INT32_MAX || k > INT32_MAX)
    return false;
  const schema::Step &s = *f.fn->steps()->Get(index + 1);
  if (s.kind() != schema::KernelKind_LightningAttention || !s.inputs() || !s.outputs() ||
      s.inputs()->size() < 1 || s.outputs()->size() < 2 || !s.i64_attrs() ||
      s.i64_attrs()->size() < 5 || s.i64_attrs()->Get(3) != 0 || s.i64_attrs()->Get(4) == 0 ||
      !s.launches() || s.launches()->size() < 1 ||
      s.launches()->Get(0)->kind() != schema::LaunchKind_PerRow)
    return false;
  const int64_t d = s.i64_attrs()->Get(0) * s.i64_attrs()->Get(1), P = 2 * d;
  const schema::Operand *qkvu = s.inputs()->Get(0), *ws = s.outputs()->Get(1);
  auto ptr = [&](const schema::Operand *o) { return operand(o, where); };
  // Its first launch is the SiLU row kernel (tnlmc's name for it; a per-row launch's kernel
  // index names a kernel, a GEMM launch's does not).
  const std::string_view first =
      artifact_.root().kernels()->names()->Get(s.launches()->Get(0)->kernel())->string_view();
  if (first != "tnlm_silu_c" + std::to_string(P) || ptr(qkvu) != ptr(y) || qkvu->ld() != y->ld() ||
      n != 4 * d || ws->ld() != y->ld() || ws->cols() < P || ws->dtype() != schema::DType_BF16 ||
      P % 64 != 0)
    return false;
  const CUdeviceptr xp = ptr(x), yp = ptr(y), wsp = ptr(ws);
  if (k < 64 || k % 64 != 0 || n % 8 != 0 || x->ld() % 8 != 0 || y->ld() % 8 != 0 ||
      (xp | yp | wsp | w) % 16 != 0)
    return false;
  // The kernel stores a tile's φ while other tiles still read x and write y: the workspace
  // must share no byte with either (a memory plan may put it over x where x is dead after the
  // GEMM, as with --recompute=full).
  const Overlap::Range wr = extentOf(ws, rows);
  if (wr.meets(extentOf(x, rows)) || wr.meets(extentOf(y, rows)))
    return false;
  TmaDescBytes tx, tw, ty, tws;
  if (!encodeTma(tx, xp, rows, k, x->ld(), 128) || !encodeTma(tw, w, n, k, k, 128) ||
      !encodeTma(ty, yp, rows, n, y->ld(), 64) || !encodeTma(tws, wsp, rows, P, ws->ld(), 64))
    return false;
  // The ping-pong form (128 x 128 tiles).
  Kernel &kern = module_->kernel(kSiluFusedKernel, where);
  const LaunchConfig c =
      gemmSm90Launch(rows, n, kGemmSm90PingpongSmem, context_->multiprocessors());
  context_->launchWith(kern, c, where, tx, tw, ty, tws, int(rows), int(n), int(k), int(P));
  siluDone_ = {&f, index + 1};
  fusedSilu_.insert({&f, index});
  ++siluFusedLaunches_;
  return true;
}

bool CudaExecutor::runFusedMulGrad(const Function &f, unsigned index, const schema::Operand *dz,
                                   const schema::Operand *w, const schema::Operand *dy,
                                   int64_t rows, const std::string &where) {
  // dy = dz·W (this step, W [K, F] row-major) read only as the dy of a gated pair's backward
  // (GatedLinearGrad) within the next steps, which has the forward's a, b: that step's
  // mul_grad (da = dy·b, db = dy·a) runs here, in the GEMM's epilogue, into its scratch; dy
  // itself is never written.
  // With the per-step finite checks every step writes its own outputs (they are read back).
  if (!fuseSglu_ || !hasMulGradKernel_ || syncSteps_ || checkFinite_ || rows < 1 ||
      rows > INT32_MAX || dy->dtype() != schema::DType_BF16 ||
      dy->kind() != schema::OperandKind_Arena)
    return false;
  const auto &steps = *f.fn->steps();
  auto ptr = [&](const schema::Operand *o) { return operand(o, where); };
  const Overlap::Range dyBytes = extentOf(dy, rows);
  if (dyBytes.hi <= dyBytes.lo)
    return false;
  auto readsDy = [&](const schema::Step &s) {
    for (const schema::Operand *o : *s.inputs())
      if (extentOf(o, rows).meets(dyBytes))
        return true;
    return false;
  };
  unsigned g = index + 1;
  for (; g < steps.size() && g <= index + 3; ++g) {
    const schema::Step &s = *steps.Get(g);
    if (s.kind() == schema::KernelKind_GatedLinearGrad)
      break;
    if (readsDy(s))
      return false;
  }
  if (g >= steps.size() || g > index + 3)
    return false;
  const schema::Step &gs = *steps.Get(g);
  if (!gs.inputs() || gs.inputs()->size() != 6 || !gs.outputs())
    return false;
  const schema::Operand *gdy = gs.inputs()->Get(3), *a = gs.inputs()->Get(4),
                        *b = gs.inputs()->Get(5);
  const int64_t F = dy->cols(), K = dz->cols();
  if (ptr(gdy) != ptr(dy) || gdy->ld() != dy->ld() || gdy->cols() != F || a->cols() != F ||
      b->cols() != F || a->dtype() != schema::DType_BF16 || b->dtype() != schema::DType_BF16 ||
      dz->dtype() != schema::DType_BF16)
    return false;
  // dy is dead after the gated step: a later step that reads any of dy's bytes reads what a
  // step after the gated one wrote over them (one output covering what it reads of dy's).
  std::vector<Overlap::Range> written;
  for (unsigned j = g + 1; j < steps.size(); ++j) {
    const schema::Step &s = *steps.Get(j);
    for (const schema::Operand *o : *s.inputs()) {
      const Overlap::Range r = extentOf(o, rows);
      const CUdeviceptr lo = std::max(r.lo, dyBytes.lo), hi = std::min(r.hi, dyBytes.hi);
      if (lo >= hi)
        continue;
      bool covered = false;
      for (const Overlap::Range &w : written)
        covered = covered || (w.lo <= lo && hi <= w.hi);
      if (!covered)
        return false;
    }
    bool whole = false; // all of dy's bytes written again: nothing after reads dy
    for (const schema::Operand *o : *s.outputs())
      if (const Overlap::Range r = extentOf(o, rows); r.hi > r.lo) {
        written.push_back(r);
        whole = whole || (r.lo <= dyBytes.lo && dyBytes.hi <= r.hi);
      }
    if (whole)
      break;
  }
  if (size_t(2 * rows * F * 2) > gatedGradBytes_)
    return false;
  const CUdeviceptr dzp = ptr(dz), wp = ptr(w), ap = ptr(a), bp = ptr(b);
  const CUdeviceptr da = gatedGrad_, db = gatedGrad_ + CUdeviceptr(F * 2);
  if (K < 64 || K % 64 != 0 || F % 8 != 0 || dz->ld() % 8 != 0 || w->ld() % 8 != 0 ||
      a->ld() % 8 != 0 || b->ld() % 8 != 0 || (dzp | wp | ap | bp | da) % 16 != 0 ||
      F > INT32_MAX || K > INT32_MAX)
    return false;
  TmaDescBytes tz, tw, tda, tdb, ta, tb;
  if (!encodeTma(tz, dzp, rows, K, dz->ld(), 128) || !encodeTma(tw, wp, K, F, w->ld(), 64) ||
      !encodeTma(tda, da, rows, F, 2 * F, 64) || !encodeTma(tdb, db, rows, F, 2 * F, 64) ||
      !encodeTma(ta, ap, rows, F, a->ld(), 64) || !encodeTma(tb, bp, rows, F, b->ld(), 64))
    return false;
  // The ping-pong form.
  Kernel &k = module_->kernel(kMulGradFusedKernel, where);
  const LaunchConfig c =
      gemmSm90Launch(rows, F, kGemmSm90PingpongSmem, context_->multiprocessors());
  context_->launchWith(k, c, where, tz, tw, tda, tdb, ta, tb, int(rows), int(F), int(K));
  mulGradDone_ = {&f, g};
  fusedMulGrad_.insert({&f, index});
  return true;
}

bool CudaExecutor::stackingFromEnvironment() {
  return switchFromEnvironment("TNLM_GEMM_STACK", "a gated pair's GEMMs one by one",
                               "stacked where W1 and W2 are adjacent");
}

void CudaExecutor::runLightningPass(const Function &f, unsigned index, const schema::Step &s,
                                    int64_t batch, int64_t seq, const LightningPass &p,
                                    const std::string &where) {
  const int heads = static_cast<int>(s.i64_attrs()->Get(0));
  const la::LightningFwdPlan plan = la::plan_lightning_fwd(
      int(batch), heads, int(seq), kLaHeadDim, kLaHeadDim, kLaChunk, context_->multiprocessors());
  if (plan.workspace_bytes > workspaceBytes_)
    throw Error(where + ": the Lightning Attention plan needs " +
                std::to_string(plan.workspace_bytes) + " bytes of piece states, " +
                std::to_string(workspaceBytes_) + " allocated");
  if (!f.slopes[index])
    throw Error(where + ": the step has no slopes");
  const long long lastIn = p.reversed ? (seq - 1) * p.ldIn * 2 : 0;
  const long long lastOut = p.reversed ? (seq - 1) * p.ldOut * 2 : 0;
  LightningArgs a{};
  a.q = reinterpret_cast<const uint16_t *>(p.q + lastIn);
  a.k = reinterpret_cast<const uint16_t *>(p.k + lastIn);
  a.v = reinterpret_cast<const uint16_t *>(p.v + lastIn);
  a.o = reinterpret_cast<uint16_t *>(p.o + lastOut);
  a.slopes = reinterpret_cast<const float *>(f.slopes[index]);
  a.piece_states = plan.pieces_per_bh > 0
                       ? reinterpret_cast<float *>(p.states ? p.states : workspace_)
                       : nullptr;
  a.final_state = nullptr;
  a.B = int(batch);
  a.N = int(seq);
  a.H = heads;
  a.in_sn = p.reversed ? -p.ldIn : p.ldIn;
  a.in_sb = seq * p.ldIn;
  a.in_sh = kLaHeadDim;
  a.out_sn = p.reversed ? -p.ldOut : p.ldOut;
  a.out_sb = seq * p.ldOut;
  a.out_sh = p.outSh;
  a.seg_len = plan.seg_len;
  a.num_segs = plan.num_segs;
  a.piece_len = plan.piece_len;
  a.pieces_per_bh = plan.pieces_per_bh;
  if (p.oscale) {
    const long long lastScale = p.reversed ? (seq - 1) * p.ldScale * 2 : 0;
    a.oscale = reinterpret_cast<const uint16_t *>(p.oscale + lastScale);
    a.os_sn = p.reversed ? -p.ldScale : p.ldScale;
    a.os_sb = seq * p.ldScale;
    a.os_sh = kLaHeadDim;
  }
  a.state_t = p.reuseTransposed ? 1 : 0;
  const unsigned bh = static_cast<unsigned>(batch * heads);
  bool main = false;
  for (const schema::KernelLaunch *l : *s.launches()) {
    const auto kind = l->kind();
    if (kind != schema::LaunchKind_LightningState && kind != schema::LaunchKind_LightningScan &&
        kind != schema::LaunchKind_LightningMain)
      continue;
    LaunchConfig c;
    c.block.x = static_cast<unsigned>(l->block());
    c.sharedBytes = static_cast<unsigned>(l->shared_mem());
    if (kind == schema::LaunchKind_LightningMain) {
      c.grid.x = bh * static_cast<unsigned>(plan.num_segs);
      context_->launchWith(kernel(l, where), c, where, a);
      main = true;
      break;
    }
    if (plan.pieces_per_bh == 0 || p.reuseTransposed)
      continue;
    if (kind == schema::LaunchKind_LightningState) {
      c.grid.x = bh * static_cast<unsigned>(plan.pieces_per_bh);
    } else {
      c.grid.x = kLaHeadDim * kLaHeadDim / 1024;
      c.grid.y = bh;
    }
    context_->launchWith(kernel(l, where), c, where, a);
  }
  if (!main)
    throw Error(where + ": the step has no Lightning Attention main launch");
}

// A decode step (launches from CudaEmitter::decode): rec::lightning_decode, then the
// norm/gate epilogue over each slot's row.
void CudaExecutor::runDecode(const Function &f, unsigned index, const schema::Step &s,
                             int64_t batch, const std::string &where) {
  const auto &in = *s.inputs();
  const auto &out = *s.outputs();
  const int heads = static_cast<int>(s.i64_attrs()->Get(0));
  const int dh = static_cast<int>(s.i64_attrs()->Get(1));
  const bool lrpe = s.i64_attrs()->Get(2) != 0;
  if (!f.slopes[index])
    throw Error(where + ": the step has no slopes");
  if (in.size() < (lrpe ? 4u : 3u) || out.size() < 2 || dh % 16 != 0)
    throw Error(where + ": a decode step needs qkvu, its state, the positions (and θ), and a "
                        "head dim that is a multiple of 16");
  const schema::Operand *qkvu = in.Get(0), *y = out.Get(0);
  const CUdeviceptr base = operand(qkvu, where);
  for (const schema::KernelLaunch *l : *s.launches()) {
    Kernel &k = kernel(l, where);
    LaunchConfig c;
    c.block.x = static_cast<unsigned>(l->block());
    c.sharedBytes = static_cast<unsigned>(l->shared_mem());
    decodeLaunch(c, true);
    if (l->kind() == schema::LaunchKind_Decode) {
      c.grid.x = static_cast<unsigned>(batch * heads);
      c.grid.y = static_cast<unsigned>(dh / 16);
      const CUdeviceptr theta = lrpe ? operand(in.Get(3), where) : 0;
      context_->launchWith(k, c, where, base, static_cast<long long>(qkvu->ld()), theta,
                           operand(in.Get(2), where), f.slopes[index], operand(in.Get(1), where),
                           operand(y, where), static_cast<long long>(y->ld()), heads);
    } else if (l->kind() == schema::LaunchKind_PerRow) { // y = u ⊙ SRMSNorm(y), in place
      if (fusedIntoNext(f, index, batch))
        continue; // the out projection's GEMV norms and gates o itself
      c.grid.x = static_cast<unsigned>(batch);
      context_->launchWith(k, c, where, base + 3 * int64_t(heads) * dh * 2,
                           static_cast<long long>(qkvu->ld()), operand(y, where),
                           static_cast<long long>(y->ld()), s.f32_attrs()->Get(0));
    } else {
      throw Error(where + ": unexpected launch kind in a decode step");
    }
  }
}

void CudaExecutor::checkInputs(size_t fi, const char *second) const {
  const schema::Function &fn = *functions_.at(fi).fn;
  if (!fn.inputs() || fn.inputs()->size() != 2 || !fn.inputs()->Get(0)->name() ||
      fn.inputs()->Get(0)->name()->str() != "ids" || !fn.inputs()->Get(1)->name() ||
      fn.inputs()->Get(1)->name()->str() != second)
    throw Error(artifact_.source() + ": @" + functions_[fi].name + " must take (ids, " + second +
                ")");
}

const schema::KernelLaunch *CudaExecutor::gemvFor(const Function &f, unsigned index,
                                                  int64_t rows) const {
  if (!gemv_ || index >= f.fn->steps()->size())
    return nullptr;
  const schema::Step &s = *f.fn->steps()->Get(index);
  if (!s.launches() || !s.inputs() || s.inputs()->size() == 0) // (a fill has no inputs)
    return nullptr;
  const schema::Operand *x = s.inputs()->Get(0);
  if (x->ld() % 8 != 0 || x->col_offset() % 8 != 0 || x->cols() % 8 != 0)
    return nullptr;
  for (const schema::KernelLaunch *l : *s.launches())
    if (l->kind() == schema::LaunchKind_Gemv) {
      // Its weight stages and input rows sit in shared memory: at most 227 KiB (the H200's).
      if (rows > l->max_rows() || l->stages() < 1 || l->stages() > 8 ||
          gemvLayout(*l, s.kind() == schema::KernelKind_GatedLinear, rows).sharedBytes > 227 * 1024)
        return nullptr;
      if (l->prologue() < 0 || l->prologue() > 3 || (l->prologue() != 0 && index == 0))
        return nullptr;
      if (l->prologue() != 0) { // the step before must be the norm the prologue stands for
        const schema::Step &n = *f.fn->steps()->Get(index - 1);
        const schema::KernelKind want[] = {schema::KernelKind_Linear, schema::KernelKind_SrmsNorm,
                                           schema::KernelKind_AddSrmsNorm,
                                           schema::KernelKind_LightningDecode};
        if (n.kind() != want[l->prologue()] || !n.f32_attrs() || n.f32_attrs()->size() < 1)
          return nullptr;
      }
      return l;
    }
  return nullptr;
}

// CTA c streams rows [c·rowsPerCta, (c + 1)·rowsPerCta) of W (rec::gemv) through a ring of
// stages of up to 32 KiB (gemvStageBytes_) of rows each (at least one row; a multiple of the 8
// warps' rows where there are that many), within 110 KiB of shared memory with the call's input
// rows. Two CTAs per SM, or one where programmatic launches are on and the CTA's whole share of the
// weights fits in three stages (the decode matrices of small models): then the next kernel's CTA
// fits beside it and issues all its copies before this kernel ends. (Measured on the H200: more
// stages or one CTA per SM for larger matrices were slower; bench/RESULTS.md.)
CudaExecutor::GemvLayout CudaExecutor::gemvLayout(const schema::KernelLaunch &l, bool gated,
                                                  int64_t rows, int64_t rowsPerCta) const {
  const int64_t n = l.gemm_n(), k = l.gemm_k(), mats = gated ? 2 : 1;
  const int64_t sms = context_->multiprocessors();
  const bool small = (n + sms - 1) / sms * mats * k * 2 <= 3 * 32768;
  const int64_t ctas = sms * (programmatic_ && small ? 1 : 2);
  GemvLayout g;
  g.rowsPerCta = rowsPerCta > 0 ? rowsPerCta : std::max<int64_t>(1, (n + ctas - 1) / ctas);
  int64_t fit = std::max<int64_t>(1, gemvStageBytes_ / (k * 2 * mats)); // rows in a stage
  if (fit >= 8)
    fit -= fit % 8;
  // Warps per row where fewer than 8 rows fit (long rows): from the matrix alone, so that the
  // order of every sum does not depend on the grid.
  const int64_t warps = l.block() / 32;
  g.warpsPerRow = 1;
  while (g.warpsPerRow * 2 * fit <= warps)
    g.warpsPerRow *= 2;
  g.stageRows = std::min(fit, g.rowsPerCta);
  const int64_t stageBytes = (mats * g.stageRows * k * 2 + 127) / 128 * 128;
  const int64_t budget = 110 * 1024 - rows * k * 2;
  g.stages = std::clamp<int64_t>(budget / stageBytes, 1, l.stages());
  g.stages = std::min(g.stages, (g.rowsPerCta + g.stageRows - 1) / g.stageRows);
  g.grid = (n + g.rowsPerCta - 1) / g.rowsPerCta;
  g.sharedBytes = g.stages * stageBytes + rows * k * 2;
  return g;
}

const schema::KernelLaunch *CudaExecutor::gemvDecodeFor(const Function &f, unsigned index,
                                                        int64_t rows) {
  if (!decodeFusion_ || !f.decode || index + 2 >= f.fn->steps()->size())
    return nullptr;
  const schema::Step &s = *f.fn->steps()->Get(index);
  const schema::KernelLaunch *fused = nullptr;
  for (const schema::KernelLaunch *l : *s.launches())
    if (l->kind() == schema::LaunchKind_GemvDecode)
      fused = l;
  if (!fused || s.kind() != schema::KernelKind_Linear || !gemvFor(f, index, rows))
    return nullptr;
  const schema::Step &d = *f.fn->steps()->Get(index + 1);
  if (d.kind() != schema::KernelKind_LightningDecode || !d.i64_attrs() ||
      d.i64_attrs()->size() < 3 || !f.slopes[index + 1] || !fusedIntoNext(f, index + 1, rows))
    return nullptr;
  const int64_t heads = d.i64_attrs()->Get(0), dh = d.i64_attrs()->Get(1);
  const bool lrpe = d.i64_attrs()->Get(2) != 0;
  const int64_t cluster = fused->cluster();
  if (cluster < 4 || cluster % 4 != 0 || dh % cluster != 0 || fused->gemm_n() != 4 * heads * dh ||
      d.inputs()->size() < (lrpe ? 4u : 3u) ||
      operand(d.inputs()->Get(0), "") != operand(s.outputs()->Get(0), "") ||
      d.inputs()->Get(0)->ld() != s.outputs()->Get(0)->ld())
    return nullptr;
  const GemvLayout g = gemvLayout(*fused, false, rows, 4 * dh / cluster);
  if (g.sharedBytes > 200 * 1024)
    return nullptr;
  // Every head's cluster resident at once (CTAs per SM, and SMs per GPC, allowing).
  auto it = clustersFit_.find({fused, rows});
  if (it == clustersFit_.end()) {
    LaunchConfig c;
    c.grid.x = static_cast<unsigned>(heads * cluster);
    c.block.x = static_cast<unsigned>(fused->block());
    c.sharedBytes = static_cast<unsigned>(g.sharedBytes);
    c.cluster = static_cast<unsigned>(cluster);
    Kernel &k = kernel(fused, artifact_.source());
    it = clustersFit_
             .emplace(std::make_pair(fused, rows), context_->maxActiveClusters(k, c) >= heads)
             .first;
  }
  return it->second ? fused : nullptr;
}

// The qkvu GEMV (the prologue's norm as rec::gemv's) and the lightning_decode of the next step
// in one launch (rec::gemv_decode); that step is skipped.
void CudaExecutor::runGemvDecode(const Function &f, unsigned index, const schema::Step &s,
                                 const schema::KernelLaunch &l, int64_t rows,
                                 const std::string &where) {
  const schema::Step &d = *f.fn->steps()->Get(index + 1);
  const int heads = static_cast<int>(d.i64_attrs()->Get(0));
  const int64_t dh = d.i64_attrs()->Get(1);
  const bool lrpe = d.i64_attrs()->Get(2) != 0;
  auto ptr = [&](const schema::Operand *o) { return operand(o, where); };
  auto ld = [](const schema::Operand *o) { return static_cast<long long>(o->ld()); };
  const GemvLayout g = gemvLayout(l, false, rows, 4 * dh / l.cluster());
  LaunchConfig c;
  c.grid.x = static_cast<unsigned>(heads * l.cluster());
  c.block.x = static_cast<unsigned>(l.block());
  c.sharedBytes = static_cast<unsigned>(g.sharedBytes);
  decodeLaunch(c, true);
  c.cluster = static_cast<unsigned>(l.cluster());
  const auto &in = *s.inputs();
  const GemvInputs v = gemvInputs(f, index, l.prologue(), where); // (gemvFor checked the norm)
  const auto &din = *d.inputs();
  const schema::Operand *qkvu = s.outputs()->Get(0), *o = d.outputs()->Get(0);
  const CUdeviceptr theta = lrpe ? ptr(din.Get(3)) : 0;
  const GemvPrefetch pf = gemvPrefetchFor(f, index, rows, where);
  context_->launchWith(kernel(&l, where), c, where, v.x, v.ldx, v.x2, v.ldx2, v.sum, v.ldsum, v.eps,
                       ptr(in.Get(1)), ptr(qkvu), ld(qkvu), int(rows), int(l.gemm_k()),
                       int(g.stageRows), int(g.stages), int(g.warpsPerRow), theta, ptr(din.Get(2)),
                       f.slopes[index + 1], ptr(din.Get(1)), ptr(o), ld(o), heads, pf.w, pf.bytes,
                       pf.w2, pf.bytes2);
  skip_.push_back({&f, index + 1});
  ++fusedDecodes_;
}

CudaExecutor::GemvPrefetch CudaExecutor::gemvPrefetchFor(const Function &f, unsigned index,
                                                         int64_t rows,
                                                         const std::string &where) const {
  GemvPrefetch p;
  if (gemvPrefetch_ <= 0)
    return p;
  const unsigned n = f.fn->steps()->size();
  int seen = 0;
  for (unsigned j = index + 1; j < n; ++j) {
    const schema::KernelLaunch *l = gemvFor(f, j, rows);
    if (!l || ++seen < gemvPrefetch_)
      continue;
    const schema::Step &s = *f.fn->steps()->Get(j);
    const bool gated = s.kind() == schema::KernelKind_GatedLinear;
    const long long bytes = static_cast<long long>(l->gemm_n()) * l->gemm_k() * 2;
    const size_t l2 = context_->l2Bytes();
    if (s.inputs()->size() < (gated ? 3u : 2u) ||
        s.inputs()->Get(1)->kind() != schema::OperandKind_Param ||
        (l2 > 0 && size_t((gated ? 2 : 1) * bytes) > l2 / 3))
      return p;
    p.w = operand(s.inputs()->Get(1), where), p.bytes = bytes;
    if (gated)
      p.w2 = operand(s.inputs()->Get(2), where), p.bytes2 = bytes;
    return p;
  }
  return p;
}

// The prologue's operands of step `index`'s GEMV, from the norm step before it.
CudaExecutor::GemvInputs CudaExecutor::gemvInputs(const Function &f, unsigned index, int prologue,
                                                  const std::string &where) const {
  auto ptr = [&](const schema::Operand *o) { return operand(o, where); };
  auto ld = [](const schema::Operand *o) { return static_cast<long long>(o->ld()); };
  const schema::Operand *in = f.fn->steps()->Get(index)->inputs()->Get(0);
  GemvInputs v;
  v.x = ptr(in), v.ldx = ld(in);
  if (prologue == 0)
    return v;
  const schema::Step &n = *f.fn->steps()->Get(index - 1);
  const auto &nin = *n.inputs();
  v.eps = n.f32_attrs()->Get(0);
  if (prologue == 1) { // srms_norm(x)
    v.x = ptr(nin.Get(0)), v.ldx = ld(nin.Get(0));
  } else if (prologue == 2) { // add_srms_norm(a, b) -> sum, y
    v.x = ptr(nin.Get(0)), v.ldx = ld(nin.Get(0));
    v.x2 = ptr(nin.Get(1)), v.ldx2 = ld(nin.Get(1));
    v.sum = ptr(n.outputs()->Get(0)), v.ldsum = ld(n.outputs()->Get(0));
  } else { // lightning_decode: o (its raw output) and u = qkvu[:, 3D:4D]
    const int64_t d = n.i64_attrs()->Get(0) * n.i64_attrs()->Get(1);
    v.x = ptr(n.outputs()->Get(0)), v.ldx = ld(n.outputs()->Get(0));
    v.x2 = ptr(nin.Get(0)) + 3 * d * 2, v.ldx2 = ld(nin.Get(0));
  }
  return v;
}

bool CudaExecutor::fusedIntoNext(const Function &f, unsigned index, int64_t rows) const {
  const schema::KernelLaunch *next = gemvFor(f, index + 1, rows);
  return next && next->prologue() != 0;
}

size_t CudaExecutor::functionIndex(const std::string &name) const {
  for (size_t i = 0; i < functions_.size(); ++i)
    if (functions_[i].name == name)
      return i;
  throw Error(artifact_.source() + ": the artifact has no @" + name +
              (name == "forward" ? " (a recurrent artifact: generate with --prompt)"
                                 : " (compile with tnlmc --mode=recurrent)"));
}

void CudaExecutor::runSteps(size_t fi, int64_t batch, int64_t seq,
                            const std::function<void(unsigned)> &afterStep) {
  const std::string &src = artifact_.source();
  const Function &f = functions_.at(fi);
  const schema::Function &fn = *f.fn;
  skip_.clear(); // (left over only where a run threw)
  mulGradDone_ = {nullptr, 0};
  siluDone_ = {nullptr, 0};
  if (f.decode) {
    fusedDecodes_ = 0;
    // TNLM_DECODE_CARVEOUT=auto: the first run of a batch size, at the driver's choice, notes
    // what each launch needs; the carveout follows from them (chooseCarveout) for the runs
    // after it, its graph's capture among them.
    collectCarveouts_ = autoCarveout_ && !autoCarveouts_.count(batch);
    carveoutNeeds_.clear();
    decodeCarveout_ = decodeCarveout(batch); // (-1 while collecting)
  }
  // The weight gradients (LinearGradWeight) on the side stream (TNLM_GRAD_STREAM): each forks
  // from the main stream where it is reached; a main-stream step that would write what a
  // pending one reads or writes, or read what it writes, joins first (Overlap).
  const bool overlap = gradStream_ && train_ && f.name == "train_step" && !syncSteps_ && !afterStep;
  Overlap pending;
  if (overlap)
    sideSteps_ = sideJoins_ = 0;
  if (overlap && !context_->hasSideStream()) { // (the first call of a shape is not captured)
    context_->createSideStream();
    gemm_->createSideWorkspace();
  }
  const int64_t rows = batch * seq;
  for (unsigned i = 0; i < fn.steps()->size(); ++i) {
    const schema::Step *s = fn.steps()->Get(i);
    const std::string where = src + ": @" + f.name + " step " + std::to_string(i) + " '" +
                              (s->name() ? s->name()->str() : std::string()) + "'";
    const bool skipped =
        overlap && std::find(skip_.begin(), skip_.end(), std::make_pair(&f, i)) != skip_.end();
    const bool side = overlap && !skipped && s->kind() == schema::KernelKind_LinearGradWeight;
    if (overlap && !skipped && !side && !pending.empty()) {
      // This step's operands and those of the next two (a step may do the next ones' work:
      // an accumulation into a gradient, a stacked GEMM) or of the fills after a fill.
      unsigned last = i + 2;
      const auto &steps = *fn.steps();
      if (s->kind() == schema::KernelKind_Fill)
        while (last + 1 < steps.size() && steps.Get(last + 1)->kind() == schema::KernelKind_Fill)
          ++last;
      Overlap here;
      addAccesses(f, i, last, rows, here);
      if (pending.conflicts(here)) {
        context_->joinSide(where);
        pending.clear();
        ++sideJoins_;
      }
    }
    if (side) {
      context_->forkSide(where);
      context_->useSideStream(true);
      ++sideSteps_;
    }
    try {
      // A stale gradient (its zeroing skipped) read or written by this step as its own
      // operand: zeroed first. (A GEMM that writes a gradient straight into it decides itself:
      // it clears the flag, so that the accumulation step it replaced touches nothing here.)
      if (train_ && anyStale()) {
        for (const schema::Operand *o : *s->inputs())
          touchGradient(o, where);
        for (const schema::Operand *o : *s->outputs())
          if (s->kind() != schema::KernelKind_Fill)
            touchGradient(o, where);
      }
      runStep(f, i, *s, batch, seq, where);
    } catch (...) {
      context_->useSideStream(false);
      if (overlap)
        context_->joinSide(where);
      throw;
    }
    if (side) {
      context_->useSideStream(false);
      // What it read and wrote: where it accumulated into the gradient itself (the next
      // step, skipped), the gradient and not its own output.
      Overlap done;
      addAccesses(f, i, i, rows, done);
      pending.reads.insert(pending.reads.end(), done.reads.begin(), done.reads.end());
      if (std::find(skip_.begin(), skip_.end(), std::make_pair(&f, i + 1)) != skip_.end()) {
        Overlap acc;
        addAccesses(f, i + 1, i + 1, rows, acc);
        pending.writes.insert(pending.writes.end(), acc.writes.begin(), acc.writes.end());
      } else {
        pending.writes.insert(pending.writes.end(), done.writes.begin(), done.writes.end());
      }
    }
    if (syncSteps_)
      context_->synchronize(where);
    if (afterStep)
      afterStep(i);
  }
  if (overlap)
    context_->joinSide(src + ": @" + f.name + ": the weight gradients' side stream");
  if (f.decode && collectCarveouts_) {
    autoCarveouts_[batch] = chooseCarveout(carveoutNeeds_);
    collectCarveouts_ = false;
  }
  // @train_step leaves no gradient stale: one it did not write holds zero, as the artifact says.
  if (train_ && f.name == "train_step")
    zeroStaleGradients(src + ": @train_step (the gradients it did not write)");
}

// The smallest carveout that holds the CTAs per SM of all but the most demanding 5 % of the
// step's launches: one kernel (the lm head's GEMV, whose grid is twice the SMs) may then run a
// second wave instead of every other kernel giving up L1 to shared memory it does not use
// (the H200's 385M at batch 1: 44 %, the lm head alone would ask for 88; bench/RESULTS.md).
// Each need counts one launch's own CTAs, not room for the next kernel's beside them; what
// matters is that every kernel asks for the same one (no reconfiguration between them). The
// percent is a hint that the driver rounds up to a size the SM supports (44 % of 228 KiB: the
// 132 KiB configuration on the H200).
int CudaExecutor::chooseCarveout(std::vector<int> needs) {
  if (needs.empty())
    return -1;
  std::sort(needs.begin(), needs.end());
  const size_t n = needs.size(), keep = (95 * n + 99) / 100; // ⌈0.95 n⌉ ≥ 1
  return needs[keep - 1];
}

int CudaExecutor::decodeCarveout(int64_t batch) const {
  if (!programmatic_)
    return -1;
  if (!autoCarveout_)
    return carveout_;
  auto it = autoCarveouts_.find(batch);
  return it == autoCarveouts_.end() ? -1 : it->second;
}

void CudaExecutor::checkIds(const int32_t *ids, int64_t n, const char *what) const {
  // The embedding kernel gathers without a bounds check; check the ids here.
  for (int64_t i = 0; i < n; ++i)
    if (ids[i] < 0 || ids[i] >= vocab_)
      throw Error(artifact_.source() + ": token id " + std::to_string(ids[i]) + " at " + what +
                  " " + std::to_string(i) + " is outside the vocabulary of " +
                  std::to_string(vocab_));
}

void CudaExecutor::uploadIds(const int32_t *ids, int64_t batch, int64_t seq) {
  const std::string &src = artifact_.source();
  artifact_.checkCallShape(batch, seq);
  const int64_t rows = batch * seq;
  checkIds(ids, rows, "position");
  context_->makeCurrent();
  context_->copyToDevice(inputs_.at(0), ids, rows * sizeof(int32_t), src + ": uploading the ids");
}

void CudaExecutor::launchFunction(size_t fi, int64_t batch, int64_t seq) {
  const std::string &src = artifact_.source();
  // A @train_step from stale gradients is another graph (its first writes overwrite them).
  bool fresh = train_ && anyStale() && functions_[fi].name == "train_step";
  if (fresh && !freshPattern_.empty() && stale_ != freshPattern_) {
    // Not the stale gradients the fresh graphs were captured from (the optimizer's fills
    // skip the same ones each time, so this does not happen): the ordinary graph.
    zeroStaleGradients(src + ": @train_step");
    fresh = false;
  }
  if (fresh && freshPattern_.empty())
    freshPattern_ = stale_;
  const CallKey key{fi + (fresh ? functions_.size() : 0), batch, seq};
  lastCall_ = CallKey{fi, batch, seq};
  // A replayed graph would not keep stale_ in step with what its steps zero (@eval_loss reads
  // no gradient: nothing to do).
  if (train_ && !fresh && anyStale() && touchesGradients(functions_[fi]))
    zeroStaleGradients(src + ": @" + functions_[fi].name);
  if (!useGraphs_ || syncSteps_ || eagerOnly_.count(key)) {
    runSteps(fi, batch, seq);
    return;
  }
  // One graph per function and call shape (the grids and the Lightning segment plan depend
  // on it). The first call of a shape runs the steps directly, which also does the one-time
  // work inside them (cuBLASLt plans, kernel attributes), then captures them for the calls
  // after it.
  auto it = graphs_.find(key);
  if (it == graphs_.end()) {
    // The capture records the same decisions as this run: from the same stale gradients.
    const std::vector<char> staleBefore = stale_;
    runSteps(fi, batch, seq);
    const std::vector<char> staleAfter = stale_;
    try {
      stale_ = staleBefore;
      graphs_.emplace(
          key, context_->capture([&] { runSteps(fi, batch, seq); },
                                 src + ": capturing @" + functions_[fi].name + " as a CUDA graph"));
    } catch (const Error &) {
      // This call is queued already; later calls of the shape launch step by step.
      eagerOnly_.insert(key);
    }
    stale_ = staleAfter;
    if (train_ && functions_[fi].name == "optimizer_step")
      staleAfter_[key] = staleAfter; // the zeroings its replays skip as well
    return;
  }
  it->second.launch(context_->stream(),
                    src + ": replaying the CUDA graph of @" + functions_[fi].name);
  if (fresh) // what the captured steps did: every gradient written or zeroed
    std::fill(stale_.begin(), stale_.end(), 0);
  if (auto s = staleAfter_.find(key); s != staleAfter_.end())
    stale_ = s->second; // @optimizer_step: the gradients whose zeroing it left to the next step
}

size_t CudaExecutor::graphNodes(const std::string &function, int64_t batch, int64_t seq) const {
  for (size_t i = 0; i < functions_.size(); ++i)
    if (functions_[i].name == function) {
      auto it = graphs_.find(CallKey{i, batch, seq});
      return it == graphs_.end() ? 0 : it->second.nodeCount();
    }
  return 0;
}

void CudaExecutor::enqueue(const int32_t *ids, int64_t batch, int64_t seq) {
  const size_t fi = functionIndex("forward");
  uploadIds(ids, batch, seq);
  launchFunction(fi, batch, seq);
}

std::vector<float> CudaExecutor::copyLogits(size_t fi, int64_t rows) {
  std::vector<float> result(size_t(rows) * size_t(vocab_));
  context_->copyToHost(result.data(), activations_ + functions_[fi].logitsOffset,
                       result.size() * sizeof(float),
                       artifact_.source() + ": @" + functions_[fi].name +
                           " (copying the logits back; a kernel fault of any step surfaces "
                           "here: synchronizing after every step, e.g. tnlm-run --sync-steps, "
                           "names the step)");
  return result;
}

std::vector<float> CudaExecutor::logits(int64_t batch, int64_t seq) {
  artifact_.checkCallShape(batch, seq);
  const size_t fi = functionIndex("forward");
  if (lastCall_ != CallKey{fi, batch, seq})
    throw Error(artifact_.source() + ": logits(" + std::to_string(batch) + ", " +
                std::to_string(seq) + ") after another call than a forward of that shape");
  return copyLogits(fi, batch * seq);
}

std::vector<float> CudaExecutor::prefill(const int32_t *ids, const int32_t *lengths, int64_t batch,
                                         int64_t seq) {
  const std::string &src = artifact_.source();
  const size_t fi = functionIndex("prefill");
  checkInputs(fi, "lengths");
  artifact_.checkCallShape(batch, seq);
  for (int64_t b = 0; b < batch; ++b)
    if (lengths[b] < 0 || lengths[b] > seq)
      throw Error(src + ": @prefill: length " + std::to_string(lengths[b]) + " of slot " +
                  std::to_string(b) + " is outside [0, " + std::to_string(seq) + "]");
  // Left padding (codegen/cuda/Recurrent.cuh): slot b's prompt at rows [seq - L, seq).
  std::vector<int32_t> &padded = staged_.at(0), &lens = staged_.at(1);
  padded.assign(size_t(batch * seq), 0);
  for (int64_t b = 0; b < batch; ++b) {
    checkIds(ids + b * seq, lengths[b], "prompt position");
    std::copy_n(ids + b * seq, lengths[b], padded.begin() + b * seq + (seq - lengths[b]));
  }
  lens.assign(lengths, lengths + batch);
  context_->makeCurrent();
  context_->copyToDevice(inputs_.at(0), padded.data(), padded.size() * 4,
                         src + ": uploading the prompts");
  context_->copyToDevice(inputs_.at(1), lens.data(), lens.size() * 4,
                         src + ": uploading the lengths");
  launchFunction(fi, batch, seq);
  return copyLogits(fi, batch);
}

std::vector<float> CudaExecutor::decodeStep(const int32_t *ids, const int32_t *positions,
                                            int64_t batch) {
  const float *l = decodeStepLogits(ids, positions, batch);
  return std::vector<float>(l, l + size_t(batch) * size_t(vocab_));
}

const float *CudaExecutor::decodeStepLogits(const int32_t *ids, const int32_t *positions,
                                            int64_t batch) {
  enqueueDecode(ids, positions, batch);
  const size_t fi = functionIndex("decode_step"), bytes = size_t(batch) * size_t(vocab_) * 4;
  if (decodeLogits_.size() < size_t(artifact_.maxBatch()) * size_t(vocab_) * 4)
    decodeLogits_ =
        PinnedBuffer(size_t(artifact_.maxBatch()) * size_t(vocab_) * 4, "the decode step's logits");
  context_->copyToHost(decodeLogits_.get(), activations_ + functions_[fi].logitsOffset, bytes,
                       artifact_.source() +
                           ": @decode_step (copying the logits back; a kernel fault of any step "
                           "surfaces here: synchronizing after every step, e.g. tnlm-run "
                           "--sync-steps, names the step)");
  return static_cast<const float *>(decodeLogits_.get());
}

size_t CudaExecutor::deviceBytes() const {
  return (arena_ ? arena_->size() : 0) + trainScratchBytes_;
}

void CudaExecutor::enqueueDecode(const int32_t *ids, const int32_t *positions, int64_t batch) {
  launchFunction(uploadDecode(ids, positions, batch), batch, 1);
}

size_t CudaExecutor::uploadDecode(const int32_t *ids, const int32_t *positions, int64_t batch) {
  const std::string &src = artifact_.source();
  const size_t fi = functionIndex("decode_step");
  checkInputs(fi, "positions");
  artifact_.checkCallShape(batch, 1);
  std::vector<int32_t> &tokens = staged_.at(0), &pos = staged_.at(1);
  tokens.assign(ids, ids + batch);
  pos.assign(positions, positions + batch);
  for (int64_t b = 0; b < batch; ++b) {
    if (pos[b] < -1)
      throw Error(src + ": @decode_step: position " + std::to_string(pos[b]) + " of slot " +
                  std::to_string(b) + " (-1 marks an inactive slot)");
    if (pos[b] < 0)
      tokens[b] = 0; // an inactive slot's id is not read for its state; keep it in range
  }
  checkIds(tokens.data(), batch, "slot");
  context_->makeCurrent();
  // From page-locked memory (asynchronous): slot decodeSlot_, once its last upload has run.
  const size_t maxBatch = size_t(artifact_.maxBatch());
  if (!decodeInputs_.get()) {
    decodeInputs_ = PinnedBuffer(2 * 2 * maxBatch * 4, "the decode step's ids and positions");
    for (CUevent &e : decodeUploaded_)
      TNLM_CU(cuEventCreate, (&e, CU_EVENT_DISABLE_TIMING), src + ": creating an upload event");
  }
  const int slot = decodeSlot_;
  decodeSlot_ ^= 1;
  if (decodeUploadPending_[slot])
    TNLM_CU(cuEventSynchronize, (decodeUploaded_[slot]), src + ": waiting for an earlier upload");
  int32_t *host = static_cast<int32_t *>(decodeInputs_.get()) + slot * 2 * maxBatch;
  std::copy(tokens.begin(), tokens.end(), host);
  std::copy(pos.begin(), pos.end(), host + maxBatch);
  context_->copyToDevice(inputs_.at(0), host, tokens.size() * 4, src + ": uploading the tokens");
  context_->copyToDevice(inputs_.at(1), host + maxBatch, pos.size() * 4,
                         src + ": uploading the positions");
  TNLM_CU(cuEventRecord, (decodeUploaded_[slot], context_->stream()),
          src + ": recording an upload event");
  decodeUploadPending_[slot] = true;
  return fi;
}

std::vector<std::vector<float>> CudaExecutor::state() {
  zeroStaleGradients(artifact_.source() + ": copying the state back");
  std::vector<std::vector<float>> result(state_.size());
  for (size_t i = 0; i < state_.size(); ++i) {
    result[i].resize(stateBytes_[i] / 4);
    context_->copyToHost(result[i].data(), state_[i], stateBytes_[i],
                         artifact_.source() + ": copying the recurrent state back");
  }
  return result;
}

void CudaExecutor::resetState() {
  std::fill(stale_.begin(), stale_.end(), 0);
  for (size_t i = 0; i < state_.size(); ++i)
    context_->fillBytes(state_[i], 0, stateBytes_[i], artifact_.source() + ": zeroing the state");
}

std::vector<CudaExecutor::StepTime> CudaExecutor::profileSteps(const int32_t *ids, int64_t batch,
                                                               int64_t seq) {
  const size_t fi = functionIndex("forward");
  uploadIds(ids, batch, seq);
  return profile(fi, batch, seq);
}

std::vector<CudaExecutor::StepTime>
CudaExecutor::profileDecode(const int32_t *ids, const int32_t *positions, int64_t batch) {
  return profile(uploadDecode(ids, positions, batch), batch, 1);
}

std::vector<CudaExecutor::StepTime> CudaExecutor::profile(size_t fi, int64_t batch, int64_t seq) {
  const std::string &src = artifact_.source();
  lastCall_ = {fi, batch, seq};
  const schema::Function &fn = *functions_[fi].fn;
  const unsigned n = fn.steps()->size();
  std::vector<CUevent> events(n + 1, nullptr);
  const std::string what = src + ": profiling the steps";
  struct Release {
    std::vector<CUevent> &events;
    ~Release() {
      for (CUevent e : events)
        if (e)
          driver().cuEventDestroy(e);
    }
  } release{events};
  for (CUevent &e : events)
    TNLM_CU(cuEventCreate, (&e, CU_EVENT_DEFAULT), what);
  TNLM_CU(cuEventRecord, (events[0], context_->stream()), what);
  runSteps(fi, batch, seq,
           [&](unsigned i) { TNLM_CU(cuEventRecord, (events[i + 1], context_->stream()), what); });
  TNLM_CU(cuEventSynchronize, (events[n]), what);
  std::vector<StepTime> times;
  for (unsigned i = 0; i < n; ++i) {
    const schema::Step *s = fn.steps()->Get(i);
    float ms = 0;
    TNLM_CU(cuEventElapsedTime, (&ms, events[i], events[i + 1]), what);
    times.push_back({i, s->name() ? s->name()->str() : std::string(),
                     schema::EnumNameKernelKind(s->kind()), double(ms)});
  }
  return times;
}

std::vector<float> CudaExecutor::forward(const int32_t *ids, int64_t batch, int64_t seq) {
  enqueue(ids, batch, seq);
  return logits(batch, seq);
}

bool CudaExecutor::hasDecodeTrace() const {
  return module_ && module_->global("tnlm_trace_count").first != 0 &&
         module_->global("tnlm_trace").first != 0;
}

void CudaExecutor::resetDecodeTrace() {
  if (!hasDecodeTrace())
    throw Error("the artifact has no decode trace (compile it with TNLM_DECODE_TRACE=1)");
  context_->fillWords(module_->global("tnlm_trace_count").first, 0, 1, "resetting the trace");
}

std::vector<uint64_t> CudaExecutor::decodeTrace() {
  if (!hasDecodeTrace())
    throw Error("the artifact has no decode trace (compile it with TNLM_DECODE_TRACE=1)");
  const CUdeviceptr countPtr = module_->global("tnlm_trace_count").first;
  const auto [records, bytes] = module_->global("tnlm_trace");
  uint32_t count = 0;
  context_->copyToHost(&count, countPtr, sizeof count, "reading the trace");
  const size_t n = std::min<size_t>(count, bytes / (8 * sizeof(uint64_t)));
  std::vector<uint64_t> out(n * 8);
  if (n > 0)
    context_->copyToHost(out.data(), records, out.size() * sizeof(uint64_t), "reading the trace");
  return out;
}

} // namespace tnlm::cuda
