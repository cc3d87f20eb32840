//===- Safetensors.h - read and write .safetensors files --------*- C++ -*-===//
//
// The safetensors format: an 8-byte little-endian header length N, N bytes of JSON mapping
// each tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (offsets relative to
// the start of the data section) plus an optional "__metadata__" object of string -> string,
// then the raw little-endian tensor data.
//
// Checkpoints come from outside, so the reader trusts nothing: every malformation is a
// tnlm::Error naming the file and, where there is one, the tensor at fault.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_SAFETENSORS_H
#define TNLM_RUNTIME_SAFETENSORS_H

#include "runtime/DType.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace tnlm {

/// One tensor held in memory: raw bytes in the file's (little-endian, row-major) layout.
struct TensorData {
  std::string name;
  DType dtype = DType::F32;
  std::vector<int64_t> shape; // empty: a rank-0 scalar with one element
  std::vector<uint8_t> bytes;

  /// Product of the shape (1 for rank 0, 0 if any dimension is 0).
  int64_t numElements() const;

  /// The elements widened to fp32 (see tnlm::toF32).
  std::vector<float> toF32() const;

  /// A tensor of type dtype holding `values` (narrowed with tnlm::fromF32). Throws
  /// tnlm::Error if values.size() does not match the shape.
  static TensorData fromF32(std::string name, DType dtype, std::vector<int64_t> shape,
                            const std::vector<float> &values);
};

/// Product of a shape's dimensions; throws tnlm::Error (naming `what`) on a negative
/// dimension or an overflow of int64.
int64_t numElements(const std::vector<int64_t> &shape, const std::string &what);

/// A whole safetensors file read into memory and validated.
class SafetensorsFile {
public:
  /// Reads and validates `path`. Throws tnlm::Error naming the file (and tensor) if it is
  /// missing, unreadable, truncated, or its header is malformed or inconsistent.
  static SafetensorsFile read(const std::string &path);
  /// The same for a safetensors image stored in `size` bytes at `offset` of `file` (weights
  /// embedded in an emitted executable); messages name it "<file> (embedded weights)".
  static SafetensorsFile read(const std::string &file, uint64_t offset, uint64_t size);

  const std::string &path() const { return path_; }

  /// The tensors in the order their entries appear in the header (for files written by
  /// writeSafetensors, the order they were given in).
  const std::vector<TensorData> &tensors() const { return tensors_; }

  /// nullptr when the file has no tensor of that name.
  const TensorData *find(const std::string &name) const;

  /// Like find, but throws tnlm::Error naming the file and tensor when it is absent.
  const TensorData &get(const std::string &name) const;

  /// The "__metadata__" entries (empty when the header has none).
  const std::map<std::string, std::string> &metadata() const { return metadata_; }

private:
  std::string path_;
  std::vector<TensorData> tensors_;
  std::map<std::string, size_t> index_; // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

/// Writes `tensors` in the given order to `path`, with an 8-byte-aligned header padded with
/// spaces. The data goes to `path + ".tmp"` first and is renamed over `path` only once
/// complete, so a failure never leaves a truncated file at `path`. Throws tnlm::Error on
/// invalid input (byte count not matching shape × element size, empty or duplicate names,
/// the reserved name "__metadata__") or an I/O failure.
void writeSafetensors(const std::string &path, const std::vector<TensorData> &tensors,
                      const std::map<std::string, std::string> &metadata = {});

} // namespace tnlm

#endif // TNLM_RUNTIME_SAFETENSORS_H
