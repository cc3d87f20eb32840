//===- Weights.h - parameters of an artifact: load, init, save --*- C++ -*-===//
#ifndef TNLM_RUNTIME_WEIGHTS_H
#define TNLM_RUNTIME_WEIGHTS_H

#include "runtime/Artifact.h"
#include "runtime/Safetensors.h"

#include <cstdint>
#include <string>
#include <vector>

namespace tnlm {

/// Parameters in the artifact's parameter-table order, as f32 (the CPU backend's dtype).
using ParamValues = std::vector<std::vector<float>>;

/// Reads a safetensors file and matches it against the artifact's parameter table by
/// Hugging Face name. bf16/f16/f32 tensors are converted to f32. Every missing, extra,
/// mis-shaped or non-float tensor is collected and reported in one tnlm::Error.
ParamValues loadWeights(const Artifact &artifact, const std::string &path);
/// The same for a file already read (e.g. weights embedded in an executable).
ParamValues loadWeights(const Artifact &artifact, const SafetensorsFile &file);

/// docs/model.md initialization with `seed` (N(0, 0.02), padding row zero, LRPE θ formula).
ParamValues randomWeights(const Artifact &artifact, uint64_t seed);

/// Throws tnlm::Error unless `values` holds one tensor of the right size per parameter.
void checkParamValues(const Artifact &artifact, const ParamValues &values);

/// Writes the parameters as safetensors in the artifact's parameter dtypes.
void saveWeights(const Artifact &artifact, const ParamValues &values, const std::string &path);

} // namespace tnlm

#endif // TNLM_RUNTIME_WEIGHTS_H
