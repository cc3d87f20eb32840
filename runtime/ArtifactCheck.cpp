//===- ArtifactCheck.cpp - structural verification of an artifact ---------===//
//
// What the FlatBuffers verifier cannot know: every index, view and shape the executors follow
// stays inside its storage and agrees with its kernel, so a crafted or stale artifact is
// refused with a message instead of making the runtime read out of bounds.
//
//===----------------------------------------------------------------------===//
#include "runtime/ArtifactCheck.h"

#include "runtime/Error.h"

#include <algorithm>
#include <string>
#include <vector>

namespace tnlm::detail {

namespace {

// LightningAttention: attributes [heads, head_dim, block, lrpe, silu, position_offset] decide
// which operands exist and how wide they are (tnlm.fbs). The workspace exists for LRPE, and for
// φ on the CPU (CUDA applies φ in place in qkvu).
template <typename ParamShape, typename Fail>
void checkLightningAttention(const schema::Step &s, bool cuda, ParamShape paramShape, Fail fail) {
  auto attr = [&](unsigned i) { return s.i64_attrs()->Get(i); };
  const int64_t h = attr(0), dh = attr(1), block = attr(2), lrpe = attr(3), silu = attr(4);
  constexpr int64_t kLimit = int64_t(1) << 24; // keeps the width products below overflow
  if (h <= 0 || h > kLimit || dh <= 0 || dh > kLimit || block <= 0 || (lrpe != 0 && lrpe != 1) ||
      (silu != 0 && silu != 1) || attr(5) < 0)
    fail(" has invalid Lightning Attention attributes");
  const int64_t dk = lrpe ? 2 * dh : dh;
  const unsigned inputs = 1 + static_cast<unsigned>(lrpe);
  // (CUDA artifacts compiled before φ moved into qkvu carry the unused workspace: accepted.)
  const unsigned outputs = (lrpe || (silu && !cuda)) ? 2 : 1;
  const bool oldCudaWorkspace = cuda && silu && !lrpe && s.outputs()->size() == 2;
  if (s.inputs()->size() != inputs || (s.outputs()->size() != outputs && !oldCudaWorkspace))
    fail(" has operands that do not match its LRPE and activation flags");
  if (!s.slopes() || s.slopes()->size() != static_cast<unsigned>(h))
    fail(" has attention shapes that do not agree with its heads and slopes");
  const schema::Operand *x = s.inputs()->Get(0), *y = s.outputs()->Get(0);
  if (x->kind() != schema::OperandKind_Arena || x->cols() != 4 * h * dh || y->cols() != h * dh)
    fail(" has attention shapes that do not agree with its heads and slopes");
  if (lrpe) {
    auto t = paramShape(s.inputs()->Get(1));
    if (t->size() != 3 || t->Get(0) != h || t->Get(1) != 1 || t->Get(2) != dh)
      fail(" has LRPE shapes that do not agree");
  }
  if (s.outputs()->size() == 2) {
    const schema::Operand *ws = s.outputs()->Get(1);
    // (CUDA: a plain layer's SiLU workspace of a train step has qkvu's width, 4·H·dh.)
    const int64_t wsCols = cuda && !lrpe ? 4 * h * dh : 2 * h * dk;
    if (ws->kind() != schema::OperandKind_Arena ||
        (ws->cols() != wsCols && !(cuda && !lrpe && ws->cols() == 2 * h * dk)) ||
        ws->ld() != ws->cols() || ws->col_offset() != 0)
      fail(" has a workspace that does not fit its q and k");
  }
}

// CUDA artifacts: one non-empty image, and launches whose kernel indices name its symbols.
template <typename Fail> void checkKernels(const schema::Artifact &a, Fail fail) {
  const schema::Kernels *k = a.kernels();
  if (!k || k->image()->size() == 0)
    fail("a CUDA artifact without a kernel image");
  if (k->image_kind() != schema::ImageKind_Cubin && k->image_kind() != schema::ImageKind_Ptx)
    fail("unknown kernel image kind");
  for (const flatbuffers::String *n : *k->names())
    if (!n || n->size() == 0)
      fail("a kernel without a name");
  const int64_t kernels = k->names()->size();
  for (const schema::Function *f : *a.functions())
    for (const schema::Step *s : *f->steps()) {
      std::string at = "step '" + (s->name() ? s->name()->str() : std::string("?")) + "'";
      if ((!s->launches() || s->launches()->size() == 0) && s->kind() != schema::KernelKind_Fill)
        fail(at + " has no kernel launches"); // (a fill is a memset of the executor's)
      if (!s->launches())
        continue;
      for (const schema::KernelLaunch *l : *s->launches()) {
        if (l->kind() == schema::LaunchKind_Gemm) {
          if (l->kernel() != -1 || l->gemm_n() <= 0 || l->gemm_k() <= 0)
            fail(at + " has an invalid GEMM launch");
          continue;
        }
        if (l->kind() > schema::LaunchKind_MAX)
          fail(at + " has a launch of unknown kind");
        if (l->kernel() < 0 || l->kernel() >= kernels)
          fail(at + " launches kernel #" + std::to_string(l->kernel()) + " of " +
               std::to_string(kernels));
        if (l->block() <= 0 || l->block() > 1024 || l->shared_mem() < 0 ||
            l->shared_mem() > 227 * 1024)
          fail(at + " has an invalid block or shared-memory size");
      }
    }
}

// Dimensions, row strides and row counts stay below 2^31 (BLAS and CUDA index with 32 bits),
// so the byte products below cannot overflow 64 bits.
constexpr int64_t kMaxDim = (int64_t(1) << 31) - 1;

bool smallPositive(int64_t v) { return v > 0 && v <= (int64_t(1) << 24); }

uint64_t elementBytes(schema::DType t) {
  switch (t) {
  case schema::DType_F32:
  case schema::DType_I32:
    return 4;
  case schema::DType_BF16:
  case schema::DType_F16:
    return 2;
  default:
    return 0;
  }
}

// offset + ld·rows·elem <= arena, without wrapping.
bool fitsArena(uint64_t offset, uint64_t ld, uint64_t rows, uint64_t elem, uint64_t arena) {
  uint64_t bytes = 0, end = 0;
  return !__builtin_mul_overflow(ld, rows, &bytes) &&
         !__builtin_mul_overflow(bytes, elem, &bytes) &&
         !__builtin_add_overflow(offset, bytes, &end) && end <= arena;
}

// Shapes that the kernels rely on, per kernel kind (tnlm.fbs): widths agree with the
// attributes and with the parameters; per-call operands are per-call, fixed ones fixed.
template <typename Fail>
void checkStepShapes(const schema::Artifact &a, const schema::Step &s,
                     const std::vector<uint64_t> &stateElements,
                     const std::vector<uint64_t> &paramElements, Fail fail) {
  auto in = [&](unsigned i) { return s.inputs()->Get(i); };
  auto out = [&](unsigned i) { return s.outputs()->Get(i); };
  auto nin = s.inputs()->size(), nout = s.outputs()->size();
  auto attr = [&](unsigned i) { return s.i64_attrs()->Get(i); };
  auto perCall = [](const schema::Operand *o) { return o->rows() < 0; };
  auto is = [](const schema::Operand *o, int64_t rows, int64_t cols) {
    return o->rows() == rows && o->cols() == cols && o->ld() == cols;
  };
  auto pshape = [&](const schema::Operand *o) {
    if (o->kind() != schema::OperandKind_Param)
      fail(" expects a parameter operand");
    return a.params()->Get(o->offset())->shape();
  };
  auto allPerCall = [&](std::initializer_list<const schema::Operand *> ops) {
    for (const schema::Operand *o : ops)
      if (!perCall(o))
        fail(" has an activation operand with a fixed row count");
  };
  auto slopesFor = [&](int64_t h) {
    if (!s.slopes() || s.slopes()->size() != static_cast<unsigned>(h))
      fail(" has attention shapes that do not agree with its heads and slopes");
  };
  const schema::Operand *y = out(0);
  switch (s.kind()) {
  case schema::KernelKind_Linear:
  case schema::KernelKind_LinearGradInput: {
    auto w = pshape(in(1));
    bool grad = s.kind() == schema::KernelKind_LinearGradInput;
    allPerCall({in(0), y});
    if (w->size() != 2 || w->Get(grad ? 0 : 1) != in(0)->cols() ||
        w->Get(grad ? 1 : 0) != y->cols())
      fail(" has a weight whose shape does not match its operands");
    break;
  }
  case schema::KernelKind_Embedding: {
    auto t = pshape(in(1));
    allPerCall({y});
    if (t->size() != 2 || t->Get(1) != y->cols() || y->ld() != y->cols())
      fail(" has a table whose shape does not match its output");
    break;
  }
  case schema::KernelKind_Lrpe:
  case schema::KernelKind_LrpeGrad: {
    auto t = pshape(in(1));
    int64_t h = attr(0), dh = attr(1);
    if (!smallPositive(h) || !smallPositive(dh) || attr(2) < 0)
      fail(" has invalid LRPE attributes");
    bool grad = s.kind() == schema::KernelKind_LrpeGrad;
    const schema::Operand *wide = grad ? in(2) : y, *narrow = grad ? y : in(0);
    allPerCall({in(0), wide, narrow});
    if (t->size() != 3 || t->Get(0) != h || t->Get(2) != dh || in(0)->cols() != h * dh ||
        narrow->cols() != h * dh || wide->cols() != 2 * h * dh || wide->ld() != wide->cols() ||
        (grad && !is(out(1), h, dh)))
      fail(" has LRPE shapes that do not agree");
    break;
  }
  case schema::KernelKind_DecayAttention:
  case schema::KernelKind_DecayAttentionGrad: {
    int64_t h = attr(0), dk = attr(1), dv = attr(2);
    if (!smallPositive(h) || !smallPositive(dk) || !smallPositive(dv) || attr(3) < 0)
      fail(" has invalid attention attributes");
    slopesFor(h);
    bool grad = s.kind() == schema::KernelKind_DecayAttentionGrad;
    for (unsigned i = 0; i < nin; ++i)
      if (!perCall(in(i)) || in(i)->cols() != (i < 2 ? h * dk : h * dv))
        fail(" has attention shapes that do not agree with its heads and slopes");
    for (unsigned i = 0; i < nout; ++i)
      if (!perCall(out(i)) || out(i)->cols() != (grad && i < 2 ? h * dk : h * dv))
        fail(" has attention shapes that do not agree with its heads and slopes");
    break;
  }
  case schema::KernelKind_LightningAttention:
    allPerCall({in(0), y});
    checkLightningAttention(s, a.target() == schema::Target_CUDA_SM90A, pshape, fail);
    break;
  case schema::KernelKind_LightningAttentionGrad: {
    const int64_t h = attr(0), dh = attr(1), block = attr(2), lrpe = attr(3), silu = attr(4);
    if (!smallPositive(h) || !smallPositive(dh) || block <= 0 || (lrpe != 0 && lrpe != 1) ||
        (silu != 0 && silu != 1) || attr(5) < 0)
      fail(" has invalid Lightning Attention attributes");
    slopesFor(h);
    // CUDA, a plain layer: a third input, the forward's workspace (φ(q), φ(k), O at qkvu's
    // row stride), and then no workspace of its own.
    const bool fromForward = a.target() == schema::Target_CUDA_SM90A && !lrpe && nin == 3;
    if (fromForward ? nout != 1 : (nin != 2u + lrpe || nout != 2u + lrpe))
      fail(" has operands that do not match its LRPE flag");
    const schema::Operand *x = in(0), *dy = in(1 + lrpe), *dx = out(0);
    const schema::Operand *ws = fromForward ? in(2) : out(1 + lrpe);
    if (x->kind() != schema::OperandKind_Arena || dy->kind() != schema::OperandKind_Arena ||
        ws->kind() != schema::OperandKind_Arena)
      fail(" expects activation operands");
    allPerCall({x, dy, dx, ws});
    const int64_t dk = lrpe ? 2 * dh : dh;
    if (x->cols() != 4 * h * dh || dx->cols() != 4 * h * dh || dy->cols() != h * dh ||
        ws->cols() != (fromForward ? 4 * h * dh : 4 * h * dk + 2 * h * dh) ||
        ws->ld() != (fromForward ? x->ld() : ws->cols()) || ws->col_offset() != 0)
      fail(" has attention shapes that do not agree with its heads");
    // (The forward keeps φ(q), φ(k) and O, bf16 as qkvu, only for φ = SiLU.)
    if (fromForward && (silu != 1 || ws->dtype() != x->dtype()))
      fail(" reads a forward workspace that a SiLU layer's forward did not write");
    if (lrpe) {
      auto t = pshape(in(1));
      if (t->size() != 3 || t->Get(0) != h || t->Get(1) != 1 || t->Get(2) != dh ||
          !is(out(1), h, dh))
        fail(" has LRPE shapes that do not agree");
    }
    break;
  }
  case schema::KernelKind_GatedLinear:
  case schema::KernelKind_GatedLinearGrad: {
    const schema::Operand *x = in(0);
    bool grad = s.kind() == schema::KernelKind_GatedLinearGrad;
    allPerCall({x, y});
    for (unsigned i : {1u, 2u}) {
      auto w = pshape(in(i));
      if (w->size() != 2 || w->Get(1) != x->cols() ||
          w->Get(0) != (grad ? in(3)->cols() : y->cols()) ||
          (grad && (!is(out(i), w->Get(0), w->Get(1)) || y->cols() != x->cols())))
        fail(" has a weight whose shape does not match its operands");
    }
    if (grad)
      allPerCall({in(3)});
    if (grad && nin != 4) { // CUDA: the forward's a, b [rows, F]
      if (nin != 6)
        fail(" has neither 4 nor 6 operands");
      allPerCall({in(4), in(5)});
      if (in(4)->cols() != in(3)->cols() || in(5)->cols() != in(3)->cols())
        fail(" has saved products whose width is not the gradient's");
    }
    break;
  }
  case schema::KernelKind_LinearGradWeight:
    allPerCall({in(0), in(1)});
    if (!is(y, in(0)->cols(), in(1)->cols()))
      fail(" has a weight gradient whose shape does not match its operands");
    break;
  case schema::KernelKind_CrossEntropy:
    allPerCall({in(0)});
    if (!is(y, 1, 1))
      fail(" must write a [1, 1] loss");
    break;
  case schema::KernelKind_LmHeadLoss: {
    // The executor reads h and writes dh for batch·seq rows (not per slot), h in the target's
    // activation dtype (bf16 on CUDA, f32 on the CPU), dh in it or f32, the loss and dloss f32.
    const bool cuda = a.target() == schema::Target_CUDA_SM90A;
    const schema::DType act = cuda ? schema::DType_BF16 : schema::DType_F32;
    auto w = pshape(in(1));
    if (in(0)->rows() != -1 || in(0)->dtype() != act)
      fail(" has an lm head input that is not one activation row per position");
    if (w->size() != 2 || w->Get(1) != in(0)->cols() || in(1)->rows() != w->Get(0))
      fail(" has an lm head weight whose shape does not match its input");
    if (in(2)->dtype() != schema::DType_I32 || !perCall(in(2)))
      fail(" needs one i32 label per position");
    if (!is(y, 1, 1) || y->dtype() != schema::DType_F32)
      fail(" must write a [1, 1] f32 loss");
    if ((nin == 4) != (nout == 3) || nout == 2)
      fail(" has a loss gradient without dh and dW (or those without it)");
    if (nin == 4) {
      const schema::Operand *dh = out(1), *dw = out(2);
      if (dh->rows() != -1 || (dh->dtype() != act && dh->dtype() != schema::DType_F32))
        fail(" has a dh that is not one bf16 or f32 row per position");
      if (!is(in(3), 1, 1) || in(3)->dtype() != schema::DType_F32 || dh->cols() != in(0)->cols() ||
          !is(dw, w->Get(0), w->Get(1)) || dw->dtype() != schema::DType_F32)
        fail(" has gradient shapes that do not agree with its lm head");
    }
    break;
  }
  case schema::KernelKind_CrossEntropyGrad:
    allPerCall({in(0), y});
    if (!is(in(2), 1, 1) || y->cols() != in(0)->cols())
      fail(" has shapes that do not agree with its logits");
    break;
  case schema::KernelKind_EmbeddingGrad:
    allPerCall({in(1)});
    if (y->rows() < 1 || y->cols() != in(1)->cols() || y->ld() != y->cols())
      fail(" has a table gradient whose shape does not match its input");
    break;
  case schema::KernelKind_SrmsNormGrad:
  case schema::KernelKind_SiluGrad:
  case schema::KernelKind_AddSrmsNormGrad:
    for (unsigned i = 0; i < nin; ++i)
      if (!perCall(in(i)) || in(i)->cols() != y->cols())
        fail(" has operands whose widths do not agree");
    allPerCall({y});
    break;
  case schema::KernelKind_Concat: {
    uint64_t total = 0;
    for (unsigned i = 0; i < nin; ++i) {
      if (!perCall(in(i)) || in(i)->cols() != in(0)->cols())
        fail(" has parts whose widths do not agree");
      total += in(i)->cols();
    }
    allPerCall({y});
    if (static_cast<uint64_t>(y->cols()) != total)
      fail(" has a result whose width is not the sum of its parts");
    break;
  }
  case schema::KernelKind_Fill:
    break;
  case schema::KernelKind_GlobalNorm:
    for (unsigned i = 1; i < nin; ++i)
      if (perCall(in(i)) || in(i)->ld() != in(i)->cols())
        fail(" norms a gradient that is not parameter-shaped");
    if (!is(y, 1, 1))
      fail(" must write a [1, 1] norm");
    break;
  case schema::KernelKind_LrSchedule:
  case schema::KernelKind_ClipScale:
    if (!is(in(0), 1, 1) || !is(y, 1, 1))
      fail(" must read and write [1, 1] scalars");
    break;
  case schema::KernelKind_AdamW: {
    const schema::Operand *p = in(0);
    for (unsigned i : {1u, 2u, 3u})
      if (!is(in(i), p->rows(), p->cols()))
        fail(" has a gradient or moment whose shape is not its parameter's");
    if (p->rows() < 0 || !is(in(4), 1, 1) || in(4)->dtype() != schema::DType_I32 ||
        !is(in(5), 1, 1) || !is(in(6), 1, 1))
      fail(" has scalar operands that are not [1, 1]");
    for (auto [o, i] : {std::pair<unsigned, unsigned>{0, 0}, {1, 2}, {2, 3}})
      if (out(o)->kind() != in(i)->kind() || out(o)->offset() != in(i)->offset())
        fail(" must update its parameter and moments in place");
    break;
  }
  case schema::KernelKind_Increment:
    if (!is(in(0), 1, 1) || in(0)->dtype() != schema::DType_I32 || y->offset() != in(0)->offset())
      fail(" must increment the i32 step counter in place");
    break;
  case schema::KernelKind_LightningPrefill:
  case schema::KernelKind_LightningDecode: {
    const bool prefill = s.kind() == schema::KernelKind_LightningPrefill;
    const int64_t h = attr(0), dh = attr(1), lrpe = attr(prefill ? 3 : 2),
                  silu = attr(prefill ? 4 : 3);
    if (!smallPositive(h) || !smallPositive(dh) || (prefill && attr(2) <= 0) ||
        (lrpe != 0 && lrpe != 1) || (silu != 0 && silu != 1))
      fail(" has invalid recurrent attention attributes");
    slopesFor(h);
    const int64_t dk = lrpe ? 2 * dh : dh;
    // The prefill's prologue workspace: q', k' in f32 on the CPU; on CUDA, SiLU runs in
    // place and only LRPE's bf16 planes need one.
    const bool cuda = a.target() == schema::Target_CUDA_SM90A;
    const bool workspace = prefill && (lrpe || (silu && !cuda));
    if (nin != 3u + lrpe || nout != (workspace ? 3u : 2u))
      fail(" has operands that do not match its LRPE and activation flags");
    const schema::Operand *x = in(0), *state = in(1);
    allPerCall({x, y});
    if (x->cols() != 4 * h * dh || y->cols() != h * dh)
      fail(" has attention shapes that do not agree with its heads");
    if (state->cols() != dh || state->rows() != a.max_batch() * h * dk ||
        out(1)->kind() != state->kind() || out(1)->offset() != state->offset())
      fail(" must update a [max batch, heads, dk, dv] state in place");
    if (in(2)->dtype() != schema::DType_I32 || in(2)->rows() != -2)
      fail(" needs one i32 length or position per slot");
    if (lrpe) {
      auto t = pshape(in(3));
      if (t->size() != 3 || t->Get(0) != h || t->Get(1) != 1 || t->Get(2) != dh)
        fail(" has LRPE shapes that do not agree");
    }
    if (nout == 3 && (out(2)->cols() != 2 * h * dk || out(2)->ld() != out(2)->cols() ||
                      out(2)->col_offset() != 0 || !perCall(out(2))))
      fail(" has a workspace that does not fit its q and k");
    break;
  }
  case schema::KernelKind_GatherLast:
    allPerCall({in(0)});
    if (y->rows() != -2 || y->cols() != in(0)->cols() || in(1)->dtype() != schema::DType_I32 ||
        in(1)->rows() != -2)
      fail(" must gather one row of the input's width per slot");
    break;
  default: // Silu, Mul, Add, SrmsNorm, AddSrmsNorm: one width, one row count throughout
    for (unsigned i = 0; i < nin; ++i)
      if (in(i)->cols() != y->cols() || in(i)->rows() != y->rows())
        fail(" has operands whose widths do not agree");
    if (nout > 1 && (out(1)->cols() != y->cols() || out(1)->rows() != y->rows()))
      fail(" has operands whose widths do not agree");
    for (unsigned i = 0; i < nin; ++i)
      if (in(i)->kind() != schema::OperandKind_Arena &&
          (in(i)->rows() < 0 || in(i)->ld() != in(i)->cols()))
        fail(" has operands whose widths do not agree");
    break;
  }
  (void)stateElements;
  (void)paramElements;
}

constexpr unsigned A = 1u << schema::OperandKind_Arena, P = 1u << schema::OperandKind_Param,
                   I = 1u << schema::OperandKind_Input, S = 1u << schema::OperandKind_State;

// The kinds of operand each input slot of each kernel may be (tnlm.fbs KernelKind comments).
unsigned inputRoles(schema::KernelKind kind, unsigned slot) {
  switch (kind) {
  case schema::KernelKind_Embedding: // ids, table
    return slot == 0 ? I : P;
  case schema::KernelKind_Linear:             // x, W
  case schema::KernelKind_Lrpe:               // x, θ
  case schema::KernelKind_LightningAttention: // qkvu, θ
  case schema::KernelKind_GatedLinear:        // x, W1, W2
  case schema::KernelKind_LinearGradInput:    // dy, W
    return slot == 0 ? A : P;
  case schema::KernelKind_LrpeGrad:        // x, θ, dy
  case schema::KernelKind_GatedLinearGrad: // x, W1, W2, dy[, a, b]
    return slot == 0 || slot >= 3 || (kind == schema::KernelKind_LrpeGrad && slot == 2) ? A : P;
  case schema::KernelKind_LightningAttentionGrad: // qkvu[, θ], dy: θ is a parameter
    return A | P;
  case schema::KernelKind_CrossEntropy:     // logits, labels
  case schema::KernelKind_CrossEntropyGrad: // logits, labels, dloss
    return slot == 1 ? I : A;
  case schema::KernelKind_EmbeddingGrad: // ids, dx
    return slot == 0 ? I : A;
  case schema::KernelKind_LmHeadLoss: // h, W, labels[, dloss]
    return slot == 1 ? P : slot == 2 ? I : A;
  case schema::KernelKind_Add: // activations, or parameter-shaped gradients and state
  case schema::KernelKind_Mul:
    return A | S | P;
  case schema::KernelKind_GlobalNorm: // hparams, gradients
    return slot == 0 ? I : A | S;
  case schema::KernelKind_LrSchedule: // step, hparams
    return slot == 0 ? S : I;
  case schema::KernelKind_ClipScale: // norm, hparams
    return slot == 0 ? A : I;
  case schema::KernelKind_AdamW: // p, g, m, v, step, lr, scale, hparams
    return slot == 0 ? P : slot == 1 ? A | S : slot <= 4 ? S : slot <= 6 ? A : I;
  case schema::KernelKind_Increment:
    return S;
  case schema::KernelKind_LightningPrefill: // qkvu, state, lengths, θ
  case schema::KernelKind_LightningDecode:  // qkvu, state, positions, θ
    return slot == 0 ? A : slot == 1 ? S : slot == 2 ? I : P;
  case schema::KernelKind_GatherLast: // x, lengths
    return slot == 0 ? A : I;
  default:
    return A;
  }
}

unsigned outputRoles(schema::KernelKind kind, unsigned slot) {
  switch (kind) {
  case schema::KernelKind_AdamW:
    return slot == 0 ? P : S;
  case schema::KernelKind_Increment:
    return S;
  case schema::KernelKind_LightningPrefill: // y, state, workspace
  case schema::KernelKind_LightningDecode:  // y, state
    return slot == 1 ? S : A;
  case schema::KernelKind_Add:
  case schema::KernelKind_Mul:
  case schema::KernelKind_Fill:
    return A | S;
  case schema::KernelKind_LmHeadLoss: // loss, dh, dW (a gradient state when written in place)
    return slot == 2 ? A | S : A;
  default:
    return A;
  }
}

std::string roleNames(unsigned roles) {
  std::string s;
  for (int k = schema::OperandKind_MIN; k <= schema::OperandKind_MAX; ++k)
    if (roles & (1u << k))
      s += std::string(s.empty() ? "" : " or ") +
           schema::EnumNameOperandKind(static_cast<schema::OperandKind>(k));
  return s;
}

// The function's results: f32 arena blocks, [batch·seq, vocab] (logits) or fixed-size
// (scalars such as the loss), each written by some step.
template <typename Fail>
void checkOutputs(const schema::Artifact &a, const schema::Function &f, uint64_t rows, Fail fail) {
  std::string at = "function '" + f.name()->str() + "'";
  if (f.outputs()->size() == 0)
    fail(at + " has no result");
  for (const schema::FunctionIO *out : *f.outputs()) {
    if (!out->shape() || out->kind() != schema::OperandKind_Arena ||
        out->dtype() != schema::DType_F32)
      fail(at + " has a result that is not an f32 arena block");
    const bool perCall = out->shape()->size() == 3 && out->shape()->Get(0) == -1;
    const bool perSlot = perCall && out->shape()->Get(1) == 1; // [batch, 1, V]
    int64_t cols = out->shape()->size() == 0 ? 1 : out->shape()->Get(out->shape()->size() - 1);
    uint64_t outRows = perSlot ? static_cast<uint64_t>(a.max_batch()) : 1;
    // Per call: [batch, seq, V] or [batch, 1, V]; otherwise fixed dims, each in 1..kMaxDim.
    if (perCall && !perSlot && out->shape()->Get(1) != -2)
      fail(at + " has a result of an unknown per-call shape");
    if (!perCall)
      for (unsigned i = 0; i + 1 < out->shape()->size(); ++i) {
        int64_t d = out->shape()->Get(i);
        if (d < 1 || d > kMaxDim || __builtin_mul_overflow(outRows, uint64_t(d), &outRows) ||
            outRows > kMaxDim)
          fail(at + " has a result whose shape is out of range");
      }
    if (cols <= 0 || cols > kMaxDim ||
        !fitsArena(out->offset(), static_cast<uint64_t>(cols), perCall && !perSlot ? rows : outRows,
                   4, f.arena_bytes()))
      fail(at + " has a result outside the arena");
    bool written = false;
    for (const schema::Step *s : *f.steps()) {
      if (!s->outputs())
        continue; // reported with the step
      for (const schema::Operand *o : *s->outputs())
        written |= o->kind() == schema::OperandKind_Arena && o->offset() == out->offset() &&
                   o->col_offset() == 0 && o->cols() == cols && o->ld() == cols;
    }
    if (!written)
      fail(at + " returns a block that no step writes");
  }
}

// Per-kernel arity: operand counts (ranges) and the minimum attribute counts.
struct Arity {
  unsigned in, inMax, out, outMax, f32, i64;
};
const Arity kArity[] = {
    {2, 2, 1, 1, 1, 0},        // Embedding
    {1, 1, 1, 1, 1, 0},        // SrmsNorm
    {2, 2, 1, 1, 0, 0},        // Linear
    {1, 1, 1, 1, 0, 0},        // Silu
    {2, 2, 1, 1, 0, 0},        // Mul
    {2, 2, 1, 1, 0, 0},        // Add
    {2, 2, 1, 1, 0, 3},        // Lrpe
    {3, 3, 1, 1, 0, 4},        // DecayAttention
    {2, 2, 1, 1, 0, 1},        // CrossEntropy
    {1, 2, 1, 2, 1, 6},        // LightningAttention
    {2, 2, 2, 2, 1, 0},        // AddSrmsNorm
    {3, 3, 1, 1, 0, 0},        // GatedLinear
    {2, 2, 1, 1, 0, 0},        // LinearGradInput
    {2, 2, 1, 1, 0, 0},        // LinearGradWeight
    {2, 2, 1, 1, 1, 0},        // SrmsNormGrad
    {2, 3, 1, 1, 1, 0},        // AddSrmsNormGrad
    {2, 2, 1, 1, 0, 0},        // SiluGrad
    {3, 3, 2, 2, 0, 3},        // LrpeGrad
    {4, 4, 3, 3, 0, 4},        // DecayAttentionGrad
    {2, 3, 1, 3, 1, 6},        // LightningAttentionGrad (CUDA: + the forward's workspace)
    {4, 6, 3, 3, 0, 0},        // GatedLinearGrad (+ the forward's a, b on CUDA)
    {2, 2, 1, 1, 1, 0},        // EmbeddingGrad
    {3, 3, 1, 1, 0, 1},        // CrossEntropyGrad
    {2, 4096, 1, 1, 0, 0},     // Concat
    {0, 0, 1, 1, 1, 0},        // Fill
    {2, 1u << 20, 1, 1, 0, 0}, // GlobalNorm
    {2, 2, 1, 1, 0, 0},        // LrSchedule
    {2, 2, 1, 1, 0, 0},        // ClipScale
    {8, 8, 3, 3, 0, 1},        // AdamW
    {1, 1, 1, 1, 0, 0},        // Increment
    {3, 4, 2, 3, 1, 5},        // LightningPrefill
    {3, 4, 2, 2, 1, 4},        // LightningDecode
    {2, 2, 1, 1, 0, 0},        // GatherLast
    {3, 4, 1, 3, 0, 1},        // LmHeadLoss
};
static_assert(sizeof(kArity) / sizeof(kArity[0]) == schema::KernelKind_MAX + 1,
              "one arity per kernel kind");

// Checks that go beyond the FlatBuffers verifier: every index and shape the executor will
// follow must be in range, so a crafted artifact cannot make it read out of bounds.
} // namespace

void checkStructure(const schema::Artifact &a, const std::string &src) {
  auto fail = [&](const std::string &what) { throw Error(src + ": invalid artifact: " + what); };
  if (!a.params() || !a.functions() || a.functions()->size() == 0)
    fail("no parameters or functions");
  if (a.max_batch() <= 0 || a.max_seq() <= 0)
    fail("max batch and max sequence must be positive");
  auto checkShape = [&](const flatbuffers::Vector<int64_t> *shape, const std::string &what,
                        bool scalarOk) {
    if (!shape || (shape->size() == 0 && !scalarOk))
      fail(what + " without a shape");
    uint64_t elements = 1;
    for (int64_t d : *shape)
      if (d <= 0 || d > kMaxDim ||
          __builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements) ||
          elements > (uint64_t(1) << 40))
        fail(what + " has a dimension that is not in 1.." + std::to_string(kMaxDim) +
             " or more than 2^40 elements");
    return elements;
  };
  std::vector<uint64_t> paramElements, stateElements;
  for (const schema::Param *p : *a.params())
    paramElements.push_back(checkShape(p->shape(), "parameter '" + p->name()->str() + "'", false));
  if (a.state())
    for (const schema::StateBuffer *st : *a.state()) {
      stateElements.push_back(checkShape(st->shape(), "state '" + st->name()->str() + "'", true));
      if (st->dtype() !=
          (st->kind() == schema::StateKind_StepCounter ? schema::DType_I32 : schema::DType_F32))
        fail("state '" + st->name()->str() + "' has the wrong dtype for its kind");
      if (st->param() >= static_cast<int32_t>(a.params()->size()))
        fail("state '" + st->name()->str() + "' refers to a missing parameter");
    }
  // Rows index BLAS calls (32-bit sizes); every product below stays far from 2^64.
  uint64_t rows = 0;
  if (__builtin_mul_overflow(static_cast<uint64_t>(a.max_batch()),
                             static_cast<uint64_t>(a.max_seq()), &rows) ||
      rows > kMaxDim)
    fail("max batch x max sequence (" + std::to_string(a.max_batch()) + " x " +
         std::to_string(a.max_seq()) + ") exceeds " + std::to_string(kMaxDim) + " rows");
  const bool cpu = a.target() == schema::Target_CPU;
  for (const schema::Function *f : *a.functions()) {
    if (!f->steps() || !f->outputs() || !f->inputs())
      fail("function '" + f->name()->str() + "' lacks steps, inputs or outputs");
    for (const schema::FunctionIO *in : *f->inputs())
      if (!in->name() || !in->shape() ||
          (in->dtype() == schema::DType_F32
               ? in->shape()->size() != 1 || in->shape()->Get(0) < schema::HyperParam_Count
               : in->dtype() != schema::DType_I32))
        fail("function '" + f->name()->str() +
             "' has an input that is neither token ids nor "
             "a hyperparameter vector of " +
             std::to_string(schema::HyperParam_Count) + " f32");
    uint64_t arena = f->arena_bytes();
    checkOutputs(a, *f, rows, fail);
    uint64_t used = 0; // end of the furthest operand: the arena the plan really needs
    for (const schema::Step *s : *f->steps()) {
      std::string at = "step '" + (s->name() ? s->name()->str() : std::string("?")) + "'";
      if (!s->inputs() || !s->outputs())
        fail(at + " lacks operands");
      unsigned kind = static_cast<unsigned>(s->kind());
      if (kind > schema::KernelKind_MAX)
        fail(at + " has unknown kernel kind " + std::to_string(kind));
      auto count = [](auto *v) { return v ? v->size() : 0u; };
      const Arity &ar = kArity[kind];
      if (s->inputs()->size() < ar.in || s->inputs()->size() > ar.inMax ||
          s->outputs()->size() < ar.out || s->outputs()->size() > ar.outMax ||
          count(s->f32_attrs()) < ar.f32 || count(s->i64_attrs()) < ar.i64)
        fail(at + " has the wrong number of operands or attributes");
      // Operand views: kinds, index ranges, and extents inside their storage.
      for (auto *list : {s->inputs(), s->outputs()})
        for (unsigned i = 0; i < list->size(); ++i) {
          const schema::Operand *o = list->Get(i);
          const bool output = list == s->outputs();
          if (o->cols() <= 0 || o->col_offset() < 0 || o->cols() > kMaxDim || o->ld() > kMaxDim ||
              o->ld() < o->cols() + o->col_offset() || o->rows() < -2 || o->rows() > kMaxDim)
            fail(at + " has an operand with an invalid view");
          unsigned roles = output ? outputRoles(s->kind(), i) : inputRoles(s->kind(), i);
          if (o->kind() > schema::OperandKind_MAX || !(roles & (1u << o->kind())))
            fail(at + " has " + (output ? "output" : "input") + " #" + std::to_string(i) +
                 " of the wrong kind (expected " + roleNames(roles) + ")");
          const uint64_t viewRows = o->rows() == -1   ? rows
                                    : o->rows() == -2 ? static_cast<uint64_t>(a.max_batch())
                                                      : static_cast<uint64_t>(o->rows());
          switch (o->kind()) {
          case schema::OperandKind_Arena: {
            uint64_t elem = elementBytes(o->dtype());
            if (elem == 0 || (cpu && o->dtype() != schema::DType_F32))
              fail(at + " has an activation of a dtype this target does not store");
            if (!fitsArena(o->offset(), static_cast<uint64_t>(o->ld()), viewRows, elem, arena))
              fail(at + " reads or writes past the end of the arena");
            used = std::max(used, o->offset() + static_cast<uint64_t>(o->ld()) * viewRows * elem);
            break;
          }
          case schema::OperandKind_Param: {
            if (o->offset() >= a.params()->size())
              fail(at + " refers to parameter #" + std::to_string(o->offset()) + " of " +
                   std::to_string(a.params()->size()));
            // Parameters are read whole: no view may start or stride outside the tensor.
            auto shape = a.params()->Get(o->offset())->shape();
            int64_t last = shape->Get(shape->size() - 1);
            if (o->col_offset() != 0 || o->cols() != last || o->ld() != last ||
                (o->rows() >= 0 &&
                 static_cast<uint64_t>(o->rows()) * last != paramElements[o->offset()]))
              fail(at + " views parameter '" + a.params()->Get(o->offset())->name()->str() +
                   "' with a column offset or width other than the tensor's");
            break;
          }
          case schema::OperandKind_State: {
            if (o->offset() >= stateElements.size())
              fail(at + " refers to state #" + std::to_string(o->offset()) + " of " +
                   std::to_string(stateElements.size()));
            const schema::StateBuffer *st = a.state()->Get(o->offset());
            if (o->col_offset() != 0 || o->ld() != o->cols() || o->rows() < 0 ||
                static_cast<uint64_t>(o->rows()) * o->cols() != stateElements[o->offset()] ||
                o->dtype() != st->dtype())
              fail(at + " views state '" + st->name()->str() + "' other than whole");
            break;
          }
          case schema::OperandKind_Input: {
            if (o->offset() >= f->inputs()->size())
              fail(at + " refers to a missing function input");
            const schema::FunctionIO *in = f->inputs()->Get(o->offset());
            if (in->dtype() != o->dtype() || (in->dtype() == schema::DType_F32 &&
                                              (o->rows() != 1 || o->cols() > in->shape()->Get(0))))
              fail(at + " reads function input '" + in->name()->str() + "' with another view");
            break;
          }
          default:
            fail(at + " has an operand of unknown kind");
          }
        }
      checkStepShapes(a, *s, stateElements, paramElements,
                      [&](const std::string &w) { fail(at + w); });
    }
    // The planner's arena is the furthest buffer end rounded up to its 64-byte alignment; a
    // larger declared size would only make the runtime allocate what no step touches.
    if (arena > used + 4096)
      fail("function '" + f->name()->str() + "' declares an arena of " + std::to_string(arena) +
           " bytes but its steps use " + std::to_string(used));
  }
  if (a.target() == schema::Target_CUDA_SM90A)
    checkKernels(a, fail);
}

} // namespace tnlm::detail
