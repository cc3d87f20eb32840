//===- CudaExecutor.cpp - run a CUDA artifact's plan on the GPU -----------===//
#include "runtime/cuda/CudaExecutor.h"

#include "runtime/DType.h"
#include "runtime/Error.h"

#include <algorithm>
#include <string_view>

namespace tnlm::cuda {

namespace {

// The kernel-side layout of tnlm::la::LightningFwdArgs (codegen/cuda/LightningAttentionFwd.cuh),
// which is passed by value: same member types in the same order, so the same layout on the
// host (bf16 pointers travel as void pointers).
struct LightningArgs {
  const void *q, *k, *v;
  void *o;
  const float *slopes;
  float *pieceStates;
  float *finalState;
  int B, N, H;
  long long inSb, inSn, inSh;
  long long outSb, outSn, outSh;
  int segLen, numSegs, pieceLen, piecesPerBh;
};
static_assert(sizeof(LightningArgs) == 7 * 8 + 3 * 4 + 4 + 6 * 8 + 4 * 4, "LightningFwdArgs");

// The header's segment plan (plan_lightning_fwd without the force_* overrides), which the
// generated launch metadata defers to run time.
struct LightningPlan {
  int segLen = 0, numSegs = 1, pieceLen = 0, piecesPerBh = 0;
};

LightningPlan planLightning(int B, int H, int N, int C, int numSms) {
  LightningPlan p;
  const int bh = B * H;
  const int chunks = (N + C - 1) / C;
  int segs = bh >= numSms ? 1 : numSms / bh;
  segs = std::max(1, std::min(segs, chunks));
  const int segChunks = (chunks + segs - 1) / segs;
  p.segLen = segChunks * C;
  p.numSegs = (N + p.segLen - 1) / p.segLen;
  if (p.numSegs <= 1) {
    p.numSegs = 1;
    p.pieceLen = p.segLen;
    return p;
  }
  int k = 1;
  while (2 * bh * (p.numSegs - 1) * k <= numSms && segChunks % (2 * k) == 0)
    k *= 2;
  p.pieceLen = p.segLen / k;
  p.piecesPerBh = (p.numSegs - 1) * k;
  return p;
}

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
  const auto &table = *root.params();
  checkParamValues(artifact, params);
  size_t paramBytes = 0;
  for (size_t i = 0; i < table.size(); ++i) {
    paramBytes +=
        (params[i].size() * 2 + Arena::kAlignment - 1) / Arena::kAlignment * Arena::kAlignment;
  }
  const schema::Function &fn = artifact.function("forward");
  const schema::FunctionIO *out = fn.outputs()->Get(0);
  vocab_ = out->shape()->Get(out->shape()->size() - 1);
  const int64_t maxRows = artifact.maxBatch() * artifact.maxSeq();
  bool logitsLinear = false; // forward() reads the logits from the f32 GEMM's staging buffer
  for (const schema::Step *s : *fn.steps())
    logitsLinear |= s->kind() == schema::KernelKind_Linear && s->outputs()->size() == 1 &&
                    s->outputs()->Get(0)->dtype() == schema::DType_F32 &&
                    s->outputs()->Get(0)->offset() == out->offset();
  if (!logitsLinear)
    throw Error(src + ": @forward's logits are not the f32 output of a linear step");

  if (context) {
    context_ = context;
  } else {
    ownedContext_ = std::make_unique<Context>(ordinal);
    context_ = ownedContext_.get();
  }
  context_->makeCurrent();

  // Lightning piece states: plan_lightning_fwd keeps B·H·pieces_per_bh ≤ #SMs (pieces only
  // double while 2·B·H·(segs-1)·k ≤ #SMs; with k = 1, B·H·(segs-1) < B·H·(#SMs / (B·H))), so
  // #SMs states of DK×DV f32 cover every call; forward() checks it anyway.
  bool lightning = false;
  for (const schema::Step *s : *fn.steps())
    lightning |= s->kind() == schema::KernelKind_LightningAttention;
  workspaceBytes_ = lightning ? size_t(context_->multiprocessors()) * kLaStateBytes : 0;

  auto up = [](size_t b) {
    return (b + Arena::kAlignment - 1) / Arena::kAlignment * Arena::kAlignment;
  };
  size_t slopeBytes = 0;
  for (const schema::Step *s : *fn.steps())
    if (s->slopes())
      slopeBytes += up(s->slopes()->size() * sizeof(float));
  const size_t total = up(fn.arena_bytes()) + up(maxRows * sizeof(int32_t)) + slopeBytes +
                       paramBytes + up(workspaceBytes_) + up(maxRows * vocab_ * 2) +
                       Arena::kAlignment;
  arena_ = std::make_unique<Arena>(total, src + ": the device arena");
  activations_ = arena_->allocate(std::max<size_t>(fn.arena_bytes(), 1), "the activations");
  ids_ = arena_->allocate(maxRows * sizeof(int32_t), "the ids");
  if (workspaceBytes_)
    workspace_ = arena_->allocate(workspaceBytes_, "the Lightning Attention workspace");
  logitsStage_ = arena_->allocate(maxRows * vocab_ * 2, "the bf16 logits");

  // Parameters as bf16 (one host buffer per tensor, kept until the copies have run).
  std::vector<std::vector<uint16_t>> staged(table.size());
  params_.resize(table.size());
  for (size_t i = 0; i < table.size(); ++i) {
    const std::string name = table[i]->name()->str();
    staged[i].resize(params[i].size());
    std::transform(params[i].begin(), params[i].end(), staged[i].begin(), f32ToBf16);
    params_[i] = arena_->allocate(staged[i].size() * 2, "parameter '" + name + "'");
    context_->copyToDevice(params_[i], staged[i].data(), staged[i].size() * 2,
                           src + ": uploading parameter '" + name + "'");
  }
  slopes_.assign(fn.steps()->size(), 0);
  for (unsigned i = 0; i < fn.steps()->size(); ++i) {
    const schema::Step *s = fn.steps()->Get(i);
    if (!s->slopes() || s->slopes()->size() == 0)
      continue;
    slopes_[i] = arena_->allocate(s->slopes()->size() * sizeof(float), "slopes");
    context_->copyToDevice(slopes_[i], s->slopes()->data(), s->slopes()->size() * sizeof(float),
                           src + ": uploading the slopes of step " + std::to_string(i));
  }
  const schema::Kernels &kernels = *root.kernels();
  module_ = std::make_unique<Module>(
      *context_,
      std::string_view(reinterpret_cast<const char *>(kernels.image()->data()),
                       kernels.image()->size()),
      src);
  for (const flatbuffers::String *name : *kernels.names())
    module_->kernel(name->str(), src + ": loading the kernels");
  gemm_ = std::make_unique<Gemm>(*context_);
  context_->synchronize(src + ": uploading the parameters");
  hostLogits_.resize(maxRows * vocab_);
}

CudaExecutor::~CudaExecutor() = default;

void CudaExecutor::runStep(unsigned index, const schema::Step &s, int64_t batch, int64_t seq,
                           const std::string &where) {
  const int64_t rows = batch * seq;
  const auto &in = *s.inputs();
  const auto &out = *s.outputs();
  auto ptr = [&](const schema::Operand *o) -> CUdeviceptr {
    switch (o->kind()) {
    case schema::OperandKind_Arena:
      return activations_ + o->offset() + o->col_offset() * dtypeBytes(o->dtype());
    case schema::OperandKind_Param:
      return params_.at(o->offset()) + o->col_offset() * 2;
    case schema::OperandKind_Input:
      return ids_;
    default:
      throw Error(where + ": an operand of unknown kind");
    }
  };
  auto f32 = [&](unsigned i) { return s.f32_attrs()->Get(i); };
  auto i64 = [&](unsigned i) { return s.i64_attrs()->Get(i); };
  const auto &names = *artifact_.root().kernels()->names();
  auto kernelOf = [&](const schema::KernelLaunch *l) -> Kernel & {
    if (l->kernel() < 0 || static_cast<unsigned>(l->kernel()) >= names.size())
      throw Error(where + ": launch of kernel index " + std::to_string(l->kernel()) + " of " +
                  std::to_string(names.size()));
    return module_->kernel(names.Get(l->kernel())->str(), where);
  };
  auto perRow = [&](const schema::KernelLaunch *l) {
    LaunchConfig c;
    c.grid.x = static_cast<unsigned>(rows);
    c.block.x = static_cast<unsigned>(l->block());
    c.sharedBytes = static_cast<unsigned>(l->shared_mem());
    return c;
  };
  const schema::Operand *y = out.Get(0);
  auto ld = [](const schema::Operand *o) { return static_cast<long long>(o->ld()); };
  if (!s.launches() || s.launches()->size() == 0)
    throw Error(where + ": the step has no launches (not compiled for a CUDA target)");

  if (s.kind() == schema::KernelKind_Linear) {
    const schema::KernelLaunch *l = s.launches()->Get(0);
    GemmShape shape;
    shape.rows = rows;
    shape.in = l->gemm_k();
    shape.out = l->gemm_n();
    shape.ldx = in.Get(0)->ld();
    shape.ldy = y->ld();
    if (y->dtype() == schema::DType_F32) {
      // The logits: bf16 x and W with an f32 result, which Gemm's types (all bf16 or all f32)
      // do not express; the bf16 result goes to the staging buffer and forward() widens it.
      shape.ldy = shape.out;
      gemm_->linear(GemmType::Bf16, shape, ptr(in.Get(0)), ptr(in.Get(1)), logitsStage_, where);
    } else {
      gemm_->linear(GemmType::Bf16, shape, ptr(in.Get(0)), ptr(in.Get(1)), ptr(y), where);
    }
    return;
  }
  if (s.kind() == schema::KernelKind_LightningAttention) {
    const int heads = static_cast<int>(i64(0)), dh = static_cast<int>(i64(1));
    const bool lrpe = i64(3) != 0;
    if (lrpe || dh != kLaHeadDim)
      throw Error(where + ": the CUDA Lightning Attention kernel needs head dim 128 without LRPE");
    if (!slopes_[index])
      throw Error(where + ": the step has no slopes");
    const schema::Operand *qkvu = in.Get(0);
    const int64_t d = int64_t(heads) * dh;
    const CUdeviceptr base = ptr(qkvu);
    LightningPlan plan =
        planLightning(int(batch), heads, int(seq), kLaChunk, context_->multiprocessors());
    const size_t need = size_t(batch) * heads * plan.piecesPerBh * kLaStateBytes;
    if (need > workspaceBytes_)
      throw Error(where + ": the Lightning Attention plan needs " + std::to_string(need) +
                  " bytes of piece states, " + std::to_string(workspaceBytes_) + " allocated");
    LightningArgs a{};
    a.q = reinterpret_cast<const void *>(base);
    a.k = reinterpret_cast<const void *>(base + d * 2);
    a.v = reinterpret_cast<const void *>(base + 2 * d * 2);
    a.o = reinterpret_cast<void *>(ptr(y));
    a.slopes = reinterpret_cast<const float *>(slopes_[index]);
    a.pieceStates = plan.piecesPerBh > 0 ? reinterpret_cast<float *>(workspace_) : nullptr;
    a.finalState = nullptr;
    a.B = int(batch);
    a.N = int(seq);
    a.H = heads;
    a.inSn = qkvu->ld();
    a.inSb = seq * qkvu->ld();
    a.inSh = dh;
    a.outSn = y->ld();
    a.outSb = seq * y->ld();
    a.outSh = dh;
    a.segLen = plan.segLen;
    a.numSegs = plan.numSegs;
    a.pieceLen = plan.pieceLen;
    a.piecesPerBh = plan.piecesPerBh;
    const unsigned bh = static_cast<unsigned>(batch * heads);
    bool attended = false; // per-row launches before the attention: prologue; after: epilogue
    for (const schema::KernelLaunch *l : *s.launches()) {
      Kernel &k = kernelOf(l);
      LaunchConfig c;
      c.block.x = static_cast<unsigned>(l->block());
      c.sharedBytes = static_cast<unsigned>(l->shared_mem());
      switch (l->kind()) {
      case schema::LaunchKind_PerRow:
        if (!attended) {
          // Prologue φ(q), φ(k): in place in qkvu rather than into the step's workspace, so
          // that q, k and v share the strides LightningFwdArgs has one set of (the workspace,
          // ld 2D, and v in qkvu, ld 4D, would not). qkvu is not read after this step.
          context_->launchWith(k, perRow(l), where, base, ld(qkvu), base, ld(qkvu));
        } else { // epilogue y = u ⊙ SRMSNorm(y), in place
          const CUdeviceptr u = base + 3 * d * 2;
          context_->launchWith(k, perRow(l), where, u, ld(qkvu), ptr(y), ld(y), f32(0));
        }
        break;
      case schema::LaunchKind_LightningState:
        if (plan.piecesPerBh > 0) {
          c.grid.x = bh * static_cast<unsigned>(plan.piecesPerBh);
          context_->launchWith(k, c, where, a);
        }
        break;
      case schema::LaunchKind_LightningScan:
        if (plan.piecesPerBh > 0) {
          c.grid.x = kLaHeadDim * kLaHeadDim / 1024;
          c.grid.y = bh;
          context_->launchWith(k, c, where, a);
        }
        break;
      case schema::LaunchKind_LightningMain:
        attended = true;
        c.grid.x = bh * static_cast<unsigned>(plan.numSegs);
        context_->launchWith(k, c, where, a);
        break;
      default:
        throw Error(where + ": unexpected launch kind in a Lightning Attention step");
      }
    }
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

std::vector<float> CudaExecutor::forward(const int32_t *ids, int64_t batch, int64_t seq) {
  const std::string &src = artifact_.source();
  artifact_.checkCallShape(batch, seq);
  const int64_t rows = batch * seq;
  // The embedding kernel gathers without a bounds check; check the ids here.
  const int64_t tableRows = vocab_;
  for (int64_t i = 0; i < rows; ++i)
    if (ids[i] < 0 || ids[i] >= tableRows)
      throw Error(src + ": token id " + std::to_string(ids[i]) + " at position " +
                  std::to_string(i) + " is outside the vocabulary of " + std::to_string(tableRows));
  context_->makeCurrent();
  context_->copyToDevice(ids_, ids, rows * sizeof(int32_t), src + ": uploading the ids");
  const schema::Function &fn = artifact_.function("forward");
  for (unsigned i = 0; i < fn.steps()->size(); ++i) {
    const schema::Step *s = fn.steps()->Get(i);
    const std::string where = src + ": step " + std::to_string(i) + " '" +
                              (s->name() ? s->name()->str() : std::string()) + "'";
    runStep(i, *s, batch, seq, where);
    if (syncSteps_)
      context_->synchronize(where);
  }
  context_->copyToHost(hostLogits_.data(), logitsStage_, rows * vocab_ * 2,
                       src + ": forward (copying the logits back)");
  std::vector<float> logits(rows * vocab_);
  std::transform(hostLogits_.begin(), hostLogits_.begin() + rows * vocab_, logits.begin(),
                 bf16ToF32);
  return logits;
}

} // namespace tnlm::cuda
