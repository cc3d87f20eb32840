//===- Artifact.cpp - load and verify a compiled model.tnlm ---------------===//
#include "runtime/Artifact.h"

#include "runtime/ArtifactCheck.h"
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
  if (root->format_version() < schema::FormatVersion_OldestReadable ||
      root->format_version() > schema::FormatVersion_Current)
    throw Error(source + ": artifact format version " + std::to_string(root->format_version()) +
                " is not supported by this runtime (expects " +
                std::to_string(schema::FormatVersion_OldestReadable) + " to " +
                std::to_string(schema::FormatVersion_Current) + "); recompile it with tnlmc");
  Target target = fromSchema(root->target());
  if (expected && target != *expected)
    throw Error(source + ": artifact was compiled for target " + targetName(target) +
                " but is being run on the " + targetName(*expected) + " backend");
  detail::checkStructure(*root, source);
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
