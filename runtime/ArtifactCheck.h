//===- ArtifactCheck.h - structural verification of an artifact -*- C++ -*-===//
#ifndef TNLM_RUNTIME_ARTIFACTCHECK_H
#define TNLM_RUNTIME_ARTIFACTCHECK_H

#include "runtime/schema/tnlm_generated.h"

#include <string>

namespace tnlm::detail {

/// Throws tnlm::Error ("<src>: invalid artifact: …") unless every index, view and shape of
/// `a` is in range and agrees with its kernel (runtime/schema/tnlm.fbs).
void checkStructure(const schema::Artifact &a, const std::string &src);

} // namespace tnlm::detail

#endif // TNLM_RUNTIME_ARTIFACTCHECK_H
