//===- Artifact.cpp - load and verify a compiled model.tnlm ---------------===//
#include "runtime/Artifact.h"

#include "runtime/Error.h"

#include <fstream>
#include <iterator>

namespace tnlm {

const char *targetName(Target t) { return t == Target::Cpu ? "cpu" : "cuda:sm_90a"; }

namespace {

Target fromSchema(schema::Target t) {
  return t == schema::Target_CUDA_SM90A ? Target::CudaSm90a : Target::Cpu;
}

// LightningAttention: attributes [heads, head_dim, block, lrpe, silu, position_offset] decide
// which operands exist and how wide they are (tnlm.fbs).
template <typename ParamShape, typename Fail>
void checkLightningAttention(const schema::Step &s, ParamShape paramShape, Fail fail) {
  auto attr = [&](unsigned i) { return s.i64_attrs()->Get(i); };
  const int64_t h = attr(0), dh = attr(1), block = attr(2), lrpe = attr(3), silu = attr(4);
  constexpr int64_t kLimit = int64_t(1) << 24; // keeps the width products below overflow
  if (h <= 0 || h > kLimit || dh <= 0 || dh > kLimit || block <= 0 || (lrpe != 0 && lrpe != 1) ||
      (silu != 0 && silu != 1) || attr(5) < 0)
    fail(" has invalid Lightning Attention attributes");
  const int64_t dk = lrpe ? 2 * dh : dh;
  const unsigned inputs = 1 + static_cast<unsigned>(lrpe);
  const unsigned outputs = (silu || lrpe) ? 2 : 1;
  if (s.inputs()->size() != inputs || s.outputs()->size() != outputs)
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
  if (outputs == 2) {
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
    for (int64_t d : *p->shape())
      if (d <= 0)
        fail("parameter '" + p->name()->str() + "' has a non-positive dimension");
  }
  for (const schema::Function *f : *a.functions()) {
    if (!f->steps() || !f->outputs() || !f->inputs())
      fail("function '" + f->name()->str() + "' lacks steps, inputs or outputs");
    uint64_t arena = f->arena_bytes();
    uint64_t rows = static_cast<uint64_t>(a.max_batch()) * static_cast<uint64_t>(a.max_seq());
    for (const schema::Step *s : *f->steps()) {
      std::string at = "step '" + (s->name() ? s->name()->str() : std::string("?")) + "'";
      if (!s->inputs() || !s->outputs())
        fail(at + " lacks operands");
      // Arity and attributes per kernel, so the executor never indexes past a vector.
      // Operand counts are ranges: LightningAttention takes θ and a workspace only when
      // its LRPE / prologue flags say so (checked below).
      struct Arity { unsigned in, inMax, out, outMax, f32, i64; };
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
        if (t->size() != 3 || t->Get(0) != h || t->Get(2) != dh ||
            s->inputs()->Get(0)->cols() != h * dh || y->cols() != 2 * h * dh ||
            y->ld() != y->cols())
          fail(at + " has LRPE shapes that do not agree");
      } else if (s->kind() == schema::KernelKind_DecayAttention) {
        int64_t h = s->i64_attrs()->Get(0), dk = s->i64_attrs()->Get(1),
                dv = s->i64_attrs()->Get(2);
        if (count(s->slopes()) != static_cast<unsigned>(h) ||
            s->inputs()->Get(0)->cols() != h * dk || s->inputs()->Get(1)->cols() != h * dk ||
            s->inputs()->Get(2)->cols() != h * dv || y->cols() != h * dv)
          fail(at + " has attention shapes that do not agree with its heads and slopes");
      } else if (s->kind() == schema::KernelKind_LightningAttention) {
        checkLightningAttention(*s, paramShape, [&](const std::string &w) { fail(at + w); });
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
      for (auto *list : {s->inputs(), s->outputs()})
        for (const schema::Operand *o : *list) {
          if (o->cols() <= 0 || o->ld() < o->cols() + o->col_offset() || o->col_offset() < 0)
            fail(at + " has an operand with an invalid view");
          switch (o->kind()) {
          case schema::OperandKind_Arena: {
            uint64_t elem = o->dtype() == schema::DType_F32 ? 4 : 2;
            bool scalar = s->kind() == schema::KernelKind_CrossEntropy && list == s->outputs();
            if (o->offset() + static_cast<uint64_t>(o->ld()) * (scalar ? 1 : rows) * elem > arena)
              fail(at + " reads or writes past the end of the arena");
            break;
          }
          case schema::OperandKind_Param:
            if (o->offset() >= a.params()->size())
              fail(at + " refers to parameter #" + std::to_string(o->offset()) +
                   " of " + std::to_string(a.params()->size()));
            break;
          case schema::OperandKind_Input:
            if (o->offset() >= f->inputs()->size())
              fail(at + " refers to a missing function input");
            break;
          default:
            fail(at + " has an operand of unknown kind");
          }
        }
    }
  }
  if (a.target() == schema::Target_CUDA_SM90A)
    checkKernels(a, fail);
}

} // namespace

Artifact Artifact::fromBytes(std::vector<uint8_t> bytes, const std::string &source,
                             Target expected) {
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
  if (target != expected)
    throw Error(source + ": artifact was compiled for target " + targetName(target) +
                " but is being run on the " + targetName(expected) + " backend");
  checkStructure(*root, source);
  Artifact a;
  a.bytes_ = std::move(bytes);
  a.source_ = source;
  return a;
}

Artifact Artifact::load(const std::string &path, Target expected) {
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

int64_t Artifact::vocabSize() const {
  return root().config() ? root().config()->vocab_size() : 0;
}

} // namespace tnlm
