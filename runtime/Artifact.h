//===- Artifact.h - load and verify a compiled model.tnlm -------*- C++ -*-===//
//
// The runtime touches an artifact only after the FlatBuffers verifier accepted it and its
// identifier, format version and target were checked (IREE's rule: verify before use).
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_ARTIFACT_H
#define TNLM_RUNTIME_ARTIFACT_H

#include "runtime/schema/tnlm_generated.h"

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tnlm {

enum class Target { Cpu, CudaSm90a };
const char *targetName(Target t);

class Artifact {
public:
  /// Reads and verifies `path`; throws tnlm::Error naming the file and the problem.
  /// `expected` is the backend that will run it (none: any target; see target()).
  static Artifact load(const std::string &path, std::optional<Target> expected);
  /// Same for bytes already in memory (`source` names them in messages).
  static Artifact fromBytes(std::vector<uint8_t> bytes, const std::string &source,
                            std::optional<Target> expected);

  /// The backend the artifact was compiled for.
  Target target() const;

  const schema::Artifact &root() const { return *schema::GetSizePrefixedArtifact(bytes_.data()); }
  const schema::Function &function(const std::string &name) const;
  const std::string &source() const { return source_; }
  int64_t maxBatch() const { return root().max_batch(); }
  int64_t maxSeq() const { return root().max_seq(); }
  int64_t vocabSize() const;
  /// Throws tnlm::Error unless 1 ≤ batch ≤ max batch and 1 ≤ seq ≤ max sequence.
  void checkCallShape(int64_t batch, int64_t seq) const;

private:
  std::vector<uint8_t> bytes_;
  std::string source_;
};

} // namespace tnlm

#endif // TNLM_RUNTIME_ARTIFACT_H
