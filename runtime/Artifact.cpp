//===- Artifact.cpp - load and verify a compiled model.tnlm ---------------===//
#include "runtime/Artifact.h"

#include "runtime/Error.h"

#include <algorithm>
#include <fstream>
#include <iterator>

namespace tnlm {

const char *targetName(Target t) { return t == Target::Cpu ? "cpu" : "cuda:sm_90a"; }

namespace {

Target fromSchema(schema::Target t) {
  return t == schema::Target_CUDA_SM90A ? Target::CudaSm90a : Target::Cpu;
}

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
    if (ws->kind() != schema::OperandKind_Arena || ws->cols() != 2 * h * dk ||
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
      if (!s->launches() || s->launches()->size() == 0)
        fail(at + " has no kernel launches");
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

// The kind of operand each input slot of each kernel must be (tnlm.fbs KernelKind comments).
schema::OperandKind inputRole(schema::KernelKind kind, unsigned slot) {
  switch (kind) {
  case schema::KernelKind_Embedding: // ids, table
    return slot == 0 ? schema::OperandKind_Input : schema::OperandKind_Param;
  case schema::KernelKind_Linear:             // x, W
  case schema::KernelKind_Lrpe:               // x, θ
  case schema::KernelKind_LightningAttention: // qkvu, θ
  case schema::KernelKind_GatedLinear:        // x, W1, W2
    return slot == 0 ? schema::OperandKind_Arena : schema::OperandKind_Param;
  case schema::KernelKind_CrossEntropy: // logits, labels
    return slot == 0 ? schema::OperandKind_Arena : schema::OperandKind_Input;
  default:
    return schema::OperandKind_Arena;
  }
}

// The function's result: one f32 [batch·seq, vocab] block inside the arena.
template <typename Fail>
void checkOutputs(const schema::Artifact &a, const schema::Function &f, uint64_t rows, Fail fail) {
  std::string at = "function '" + f.name()->str() + "'";
  if (f.outputs()->size() != 1)
    fail(at + " must have exactly one result");
  const schema::FunctionIO *out = f.outputs()->Get(0);
  if (!out->shape() || out->shape()->size() == 0 || out->kind() != schema::OperandKind_Arena ||
      out->dtype() != schema::DType_F32)
    fail(at + " has a result that is not an f32 arena block");
  int64_t vocab = out->shape()->Get(out->shape()->size() - 1);
  if (vocab <= 0 || vocab > kMaxDim ||
      !fitsArena(out->offset(), static_cast<uint64_t>(vocab), rows, 4, f.arena_bytes()))
    fail(at + " has a result outside the arena");
  // Some step must write exactly that block.
  bool written = false;
  for (const schema::Step *s : *f.steps()) {
    if (!s->outputs())
      continue; // reported with the step
    for (const schema::Operand *o : *s->outputs())
      written |= o->kind() == schema::OperandKind_Arena && o->offset() == out->offset() &&
                 o->col_offset() == 0 && o->cols() == vocab && o->ld() == vocab;
  }
  if (!written)
    fail(at + " returns a block that no step writes");
}

// Checks that go beyond the FlatBuffers verifier: every index and shape the executor will
// follow must be in range, so a crafted artifact cannot make it read out of bounds.
void checkStructure(const schema::Artifact &a, const std::string &src) {
  auto fail = [&](const std::string &what) { throw Error(src + ": invalid artifact: " + what); };
  if (!a.params() || !a.functions() || a.functions()->size() == 0)
    fail("no parameters or functions");
  if (a.max_batch() <= 0 || a.max_seq() <= 0)
    fail("max batch and max sequence must be positive");
  for (const schema::Param *p : *a.params()) {
    if (!p->shape() || p->shape()->size() == 0)
      fail("parameter without a shape");
    uint64_t elements = 1;
    for (int64_t d : *p->shape())
      if (d <= 0 || d > kMaxDim ||
          __builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements) ||
          elements > (uint64_t(1) << 40))
        fail("parameter '" + p->name()->str() + "' has a dimension that is not in 1.." +
             std::to_string(kMaxDim) + " or more than 2^40 elements");
  }
  for (const schema::Function *f : *a.functions()) {
    if (!f->steps() || !f->outputs() || !f->inputs())
      fail("function '" + f->name()->str() + "' lacks steps, inputs or outputs");
    uint64_t arena = f->arena_bytes();
    // Rows index BLAS calls (32-bit sizes); every product below stays far from 2^64.
    uint64_t rows = 0;
    if (__builtin_mul_overflow(static_cast<uint64_t>(a.max_batch()),
                               static_cast<uint64_t>(a.max_seq()), &rows) ||
        rows > kMaxDim)
      fail("max batch x max sequence (" + std::to_string(a.max_batch()) + " x " +
           std::to_string(a.max_seq()) + ") exceeds " + std::to_string(kMaxDim) + " rows");
    checkOutputs(a, *f, rows, fail);
    uint64_t used = 0; // end of the furthest operand: the arena the plan really needs
    for (const schema::Step *s : *f->steps()) {
      std::string at = "step '" + (s->name() ? s->name()->str() : std::string("?")) + "'";
      if (!s->inputs() || !s->outputs())
        fail(at + " lacks operands");
      // Arity and attributes per kernel, so the executor never indexes past a vector.
      // Operand counts are ranges: LightningAttention takes θ and a workspace only when
      // its LRPE / prologue flags say so (checked below).
      struct Arity {
        unsigned in, inMax, out, outMax, f32, i64;
      };
      static const Arity arity[] = {
          {2, 2, 1, 1, 1, 0}, // Embedding
          {1, 1, 1, 1, 1, 0}, // SrmsNorm
          {2, 2, 1, 1, 0, 0}, // Linear
          {1, 1, 1, 1, 0, 0}, // Silu
          {2, 2, 1, 1, 0, 0}, // Mul
          {2, 2, 1, 1, 0, 0}, // Add
          {2, 2, 1, 1, 0, 3}, // Lrpe
          {3, 3, 1, 1, 0, 4}, // DecayAttention
          {2, 2, 1, 1, 0, 1}, // CrossEntropy
          {1, 2, 1, 2, 1, 6}, // LightningAttention
          {2, 2, 2, 2, 1, 0}, // AddSrmsNorm
          {3, 3, 1, 1, 0, 0}, // GatedLinear
      };
      unsigned kind = static_cast<unsigned>(s->kind());
      if (kind >= sizeof(arity) / sizeof(arity[0]))
        fail(at + " has unknown kernel kind " + std::to_string(kind));
      auto count = [](auto *v) { return v ? v->size() : 0u; };
      const Arity &ar = arity[kind];
      if (s->inputs()->size() < ar.in || s->inputs()->size() > ar.inMax ||
          s->outputs()->size() < ar.out || s->outputs()->size() > ar.outMax ||
          count(s->f32_attrs()) < ar.f32 || count(s->i64_attrs()) < ar.i64)
        fail(at + " has the wrong number of operands or attributes");
      auto paramShape = [&](const schema::Operand *o) {
        if (o->kind() != schema::OperandKind_Param || o->offset() >= a.params()->size())
          fail(at + " expects a parameter operand");
        return a.params()->Get(o->offset())->shape();
      };
      const schema::Operand *y = s->outputs()->Get(0);
      if (s->kind() == schema::KernelKind_Linear) {
        auto w = paramShape(s->inputs()->Get(1));
        if (w->size() != 2 || w->Get(1) != s->inputs()->Get(0)->cols() || w->Get(0) != y->cols())
          fail(at + " has a weight whose shape does not match its operands");
      } else if (s->kind() == schema::KernelKind_Embedding) {
        auto t = paramShape(s->inputs()->Get(1));
        if (t->size() != 2 || t->Get(1) != y->cols() || y->ld() != y->cols())
          fail(at + " has a table whose shape does not match its output");
      } else if (s->kind() == schema::KernelKind_Lrpe) {
        auto t = paramShape(s->inputs()->Get(1));
        int64_t h = s->i64_attrs()->Get(0), dh = s->i64_attrs()->Get(1);
        if (!smallPositive(h) || !smallPositive(dh) || s->i64_attrs()->Get(2) < 0)
          fail(at + " has invalid LRPE attributes");
        if (t->size() != 3 || t->Get(0) != h || t->Get(2) != dh ||
            s->inputs()->Get(0)->cols() != h * dh || y->cols() != 2 * h * dh ||
            y->ld() != y->cols())
          fail(at + " has LRPE shapes that do not agree");
      } else if (s->kind() == schema::KernelKind_DecayAttention) {
        int64_t h = s->i64_attrs()->Get(0), dk = s->i64_attrs()->Get(1),
                dv = s->i64_attrs()->Get(2);
        if (!smallPositive(h) || !smallPositive(dk) || !smallPositive(dv) ||
            s->i64_attrs()->Get(3) < 0)
          fail(at + " has invalid attention attributes");
        if (count(s->slopes()) != static_cast<unsigned>(h) ||
            s->inputs()->Get(0)->cols() != h * dk || s->inputs()->Get(1)->cols() != h * dk ||
            s->inputs()->Get(2)->cols() != h * dv || y->cols() != h * dv)
          fail(at + " has attention shapes that do not agree with its heads and slopes");
      } else if (s->kind() == schema::KernelKind_LightningAttention) {
        checkLightningAttention(*s, a.target() == schema::Target_CUDA_SM90A, paramShape,
                                [&](const std::string &w) { fail(at + w); });
      } else if (s->kind() == schema::KernelKind_GatedLinear) {
        const schema::Operand *x = s->inputs()->Get(0);
        for (unsigned i : {1u, 2u}) {
          auto w = paramShape(s->inputs()->Get(i));
          if (w->size() != 2 || w->Get(1) != x->cols() || w->Get(0) != y->cols())
            fail(at + " has a weight whose shape does not match its operands");
        }
      } else if (s->kind() != schema::KernelKind_CrossEntropy) {
        if (s->outputs()->size() > 1 && s->outputs()->Get(1)->cols() != y->cols())
          fail(at + " has operands whose widths do not agree");
        for (const schema::Operand *o : *s->inputs())
          if (o->kind() != schema::OperandKind_Arena || o->cols() != y->cols())
            fail(at + " has operands whose widths do not agree");
      }
      const bool cpu = a.target() == schema::Target_CPU;
      for (auto *list : {s->inputs(), s->outputs()})
        for (unsigned i = 0; i < list->size(); ++i) {
          const schema::Operand *o = list->Get(i);
          if (o->cols() <= 0 || o->col_offset() < 0 || o->cols() > kMaxDim || o->ld() > kMaxDim ||
              o->ld() < o->cols() + o->col_offset())
            fail(at + " has an operand with an invalid view");
          // Every slot has one role: token ids, a parameter, or an activation in the arena.
          schema::OperandKind role =
              list == s->outputs() ? schema::OperandKind_Arena : inputRole(s->kind(), i);
          if (o->kind() != role)
            fail(at + " has " + (list == s->outputs() ? "output" : "input") + " #" +
                 std::to_string(i) + " of the wrong kind (expected " +
                 schema::EnumNameOperandKind(role) + ")");
          switch (o->kind()) {
          case schema::OperandKind_Arena: {
            uint64_t elem = elementBytes(o->dtype());
            if (elem == 0 || (cpu && o->dtype() != schema::DType_F32))
              fail(at + " has an activation of a dtype this target does not store");
            bool scalar = s->kind() == schema::KernelKind_CrossEntropy && list == s->outputs();
            if (!fitsArena(o->offset(), static_cast<uint64_t>(o->ld()), scalar ? 1 : rows, elem,
                           arena))
              fail(at + " reads or writes past the end of the arena");
            used = std::max(used, o->offset() +
                                      static_cast<uint64_t>(o->ld()) * (scalar ? 1 : rows) * elem);
            break;
          }
          case schema::OperandKind_Param: {
            if (o->offset() >= a.params()->size())
              fail(at + " refers to parameter #" + std::to_string(o->offset()) + " of " +
                   std::to_string(a.params()->size()));
            // Parameters are read whole: no view may start or stride outside the tensor.
            auto shape = a.params()->Get(o->offset())->shape();
            int64_t last = shape->Get(shape->size() - 1);
            if (o->col_offset() != 0 || o->cols() != last || o->ld() != last)
              fail(at + " views parameter '" + a.params()->Get(o->offset())->name()->str() +
                   "' with a column offset or width other than the tensor's");
            break;
          }
          case schema::OperandKind_Input:
            if (o->offset() >= f->inputs()->size())
              fail(at + " refers to a missing function input");
            break;
          default:
            fail(at + " has an operand of unknown kind");
          }
        }
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

} // namespace

Artifact Artifact::fromBytes(std::vector<uint8_t> bytes, const std::string &source,
                             std::optional<Target> expected) {
  // Layout: uint32 size prefix, then the FlatBuffer whose identifier sits at bytes 8..11.
  if (bytes.size() < 12 || !schema::SizePrefixedArtifactBufferHasIdentifier(bytes.data()))
    throw Error(source + ": not a tnlm artifact (missing the \"TNLM\" file identifier)");
  uint64_t declared = flatbuffers::ReadScalar<uint32_t>(bytes.data()) + sizeof(uint32_t);
  if (declared != bytes.size())
    throw Error(source + ": truncated or padded artifact (" + std::to_string(bytes.size()) +
                " bytes, the header says " + std::to_string(declared) + ")");
  flatbuffers::Verifier verifier(bytes.data(), bytes.size());
  if (!schema::VerifySizePrefixedArtifactBuffer(verifier))
    throw Error(source + ": corrupted artifact (FlatBuffers verification failed)");
  const schema::Artifact *root = schema::GetSizePrefixedArtifact(bytes.data());
  if (root->format_version() != schema::FormatVersion_Current)
    throw Error(source + ": artifact format version " + std::to_string(root->format_version()) +
                " is not supported by this runtime (expects " +
                std::to_string(schema::FormatVersion_Current) + "); recompile it with tnlmc");
  Target target = fromSchema(root->target());
  if (expected && target != *expected)
    throw Error(source + ": artifact was compiled for target " + targetName(target) +
                " but is being run on the " + targetName(*expected) + " backend");
  checkStructure(*root, source);
  Artifact a;
  a.bytes_ = std::move(bytes);
  a.source_ = source;
  return a;
}

Target Artifact::target() const { return fromSchema(root().target()); }

Artifact Artifact::load(const std::string &path, std::optional<Target> expected) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(path + ": cannot open artifact");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  if (in.bad())
    throw Error(path + ": cannot read artifact");
  return fromBytes(std::move(bytes), path, expected);
}

const schema::Function &Artifact::function(const std::string &name) const {
  for (const schema::Function *f : *root().functions())
    if (f->name()->str() == name)
      return *f;
  throw Error(source_ + ": artifact has no function '" + name + "'");
}

void Artifact::checkCallShape(int64_t batch, int64_t seq) const {
  if (batch < 1 || batch > maxBatch())
    throw Error(source_ + ": batch " + std::to_string(batch) + " is outside 1.." +
                std::to_string(maxBatch()) + " (the compiled --batch)");
  if (seq < 1 || seq > maxSeq())
    throw Error(source_ + ": sequence length " + std::to_string(seq) + " is outside 1.." +
                std::to_string(maxSeq()) + " (the compiled --seq)");
}

int64_t Artifact::vocabSize() const { return root().config() ? root().config()->vocab_size() : 0; }

} // namespace tnlm
