//===- Executable.h - tnlmc --emit=executable -------------------*- C++ -*-===//
#ifndef TNLM_TOOLS_TNLMC_EXECUTABLE_H
#define TNLM_TOOLS_TNLMC_EXECUTABLE_H

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace tnlmc {

/// Writes `output`: the generation runner at `runner` (tnlm-exe-runner), the artifact, the
/// weights of `weightsPath` when not empty (checked against `params`: every name with its
/// shape, nothing else) and the trailer of runtime/Embedded.h; through a temporary file, then
/// made executable. Returns an error message, or "".
std::string writeExecutable(const std::string &output, const std::vector<uint8_t> &artifact,
                            const std::string &runner, const std::string &weightsPath,
                            const std::vector<std::pair<std::string, std::vector<int64_t>>> &params);

} // namespace tnlmc

#endif // TNLM_TOOLS_TNLMC_EXECUTABLE_H
