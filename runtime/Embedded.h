//===- Embedded.h - the payload of an emitted executable ---------*- C++ -*-===//
//
// tnlmc --emit=executable writes one file: the prebuilt generation runner (tnlm-exe-runner:
// the runtime, the CPU kernels, sampling and tokenizers, statically linked), then the
// artifact, then optionally the weights (safetensors), then this trailer as the last bytes:
//
//   "TNLMEXE1" | artifact offset | artifact size | weights offset | weights size   (u64, LE)
//
// The runner finds its own file (/proc/self/exe), reads the trailer, verifies the artifact
// from its bytes and reads the weights from their region, so the executable needs nothing
// else of tnlm at run time.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_EMBEDDED_H
#define TNLM_RUNTIME_EMBEDDED_H

#include <cstdint>
#include <cstring>
#include <string>

namespace tnlm {

struct EmbeddedPayload {
  static constexpr char kMagic[9] = "TNLMEXE1";
  static constexpr size_t kTrailerBytes = 8 + 4 * 8;
  uint64_t artifactOffset = 0, artifactSize = 0;
  uint64_t weightsOffset = 0, weightsSize = 0; // size 0: no weights embedded

  /// The trailer's bytes.
  std::string trailer() const {
    std::string t(kMagic, 8);
    for (uint64_t v : {artifactOffset, artifactSize, weightsOffset, weightsSize})
      for (int i = 0; i < 8; ++i)
        t.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return t;
  }

  /// Parses the last kTrailerBytes of a file of `fileSize` bytes; false when they are not a
  /// trailer or its regions do not lie inside the file.
  bool parse(const unsigned char *t, uint64_t fileSize) {
    if (std::memcmp(t, kMagic, 8) != 0)
      return false;
    uint64_t v[4];
    for (int k = 0; k < 4; ++k) {
      v[k] = 0;
      for (int i = 7; i >= 0; --i)
        v[k] = (v[k] << 8) | t[8 + 8 * k + i];
    }
    artifactOffset = v[0];
    artifactSize = v[1];
    weightsOffset = v[2];
    weightsSize = v[3];
    const uint64_t end = fileSize - kTrailerBytes;
    auto inside = [&](uint64_t off, uint64_t size) { return off <= end && size <= end - off; };
    return artifactSize > 0 && inside(artifactOffset, artifactSize) &&
           inside(weightsOffset, weightsSize);
  }
};

} // namespace tnlm

#endif // TNLM_RUNTIME_EMBEDDED_H
