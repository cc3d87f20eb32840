//===- Init.h - deterministic initialization of parameters ------*- C++ -*-===//
//
// Training from scratch starts from the initialization in docs/model.md ("Initialization"):
// linear and embedding weights ~ N(0, 0.02), the padding row (row 0) of the embedding zero,
// and LRPE θ from its closed form. The random streams are counter-based: element i of a
// tensor is a pure function of (seed, tensor name, i), so a parameter's values do not depend
// on which other parameters exist, the order they are initialized in, or how the work is
// split across threads or ranks.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_INIT_H
#define TNLM_RUNTIME_INIT_H

#include <cstdint>
#include <string>
#include <vector>

namespace tnlm {

/// Standard deviation of linear and embedding weights at initialization.
constexpr float kInitStd = 0.02f;

/// Fills `out` (numElements(shape) floats) with the initial value of the parameter with
/// Hugging Face name `name`:
///   - "*.lrpe.theta", shape [H, 1, dh]: θ_flat[i] = 10000^(-2i/d), d = H·dh, row-major;
///   - "*.weight", rank 2: N(0, kInitStd), with row 0 zero for "model.embed_tokens.weight".
/// Throws tnlm::Error naming the parameter for any other name or an unexpected shape.
void initParameter(const std::string &name, const std::vector<int64_t> &shape, uint64_t seed,
                   float *out);

/// The counter-based generator behind initParameter, exposed for tests and for other
/// deterministic random needs (e.g. synthetic data): the i-th standard normal sample of the
/// stream identified by (seed, streamName).
double standardNormal(uint64_t seed, const std::string &streamName, uint64_t i);

} // namespace tnlm

#endif // TNLM_RUNTIME_INIT_H
