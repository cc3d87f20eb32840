//===- Safetensors.cpp - read and write .safetensors files ----------------===//
#include "runtime/Safetensors.h"

#include "runtime/Error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <set>
#include <unistd.h>

// Tensor bytes go between file and memory unchanged, and safetensors is little-endian.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tnlm's safetensors I/O assumes a little-endian host"
#endif

namespace tnlm {

namespace {

// ordered_json keeps the header's entry order, which is the order tensors() reports.
using Json = nlohmann::ordered_json;

constexpr const char *kMetadataKey = "__metadata__";

// The reference implementation refuses headers above 100 MB; refusing them too means a
// corrupt length field cannot make us allocate gigabytes before failing.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

std::string inQuotes(const std::string &s) { return "'" + s + "'"; }

[[noreturn]] void fail(const std::string &path, const std::string &message) {
  throw Error(path + ": " + message);
}

[[noreturn]] void failTensor(const std::string &path, const std::string &tensor,
                             const std::string &message) {
  throw Error(path + ": tensor " + inQuotes(tensor) + ": " + message);
}

std::string shapeString(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i)
    s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string offsetsString(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

// Reads a non-negative integer that fits in int64 from a header field; anything else (a
// float such as 2.0 or 2.5, a string, a negative value) is an error naming `what`.
int64_t readCount(const Json &value, const std::string &path, const std::string &tensor,
                  const std::string &what) {
  if (!value.is_number_integer())
    failTensor(path, tensor, what + " = " + value.dump() + " is not an integer");
  if (value.is_number_unsigned()) {
    uint64_t u = value.get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      failTensor(path, tensor, what + " = " + value.dump() + " is too large");
    return static_cast<int64_t>(u);
  }
  int64_t v = value.get<int64_t>();
  if (v < 0)
    failTensor(path, tensor, what + " = " + value.dump() + " is negative");
  return v;
}

const Json &requireField(const Json &entry, const char *field, const std::string &path,
                         const std::string &tensor) {
  auto it = entry.find(field);
  if (it == entry.end())
    failTensor(path, tensor, std::string("missing \"") + field + "\"");
  return *it;
}

// Where one tensor's bytes lie, before they are read.
struct Extent {
  uint64_t begin;
  uint64_t end;
  size_t index;
};

// Parses and checks one header entry against a data section of `dataSize` bytes.
TensorData parseEntry(const std::string &name, const Json &entry, uint64_t dataSize,
                      const std::string &path, Extent &extent) {
  if (name.empty())
    fail(path, "header has a tensor with an empty name");
  if (!entry.is_object())
    failTensor(path, name, "header entry is not a JSON object");

  TensorData t;
  t.name = name;

  const Json &dtype = requireField(entry, "dtype", path, name);
  if (!dtype.is_string())
    failTensor(path, name, "\"dtype\" is not a string");
  std::optional<DType> parsed = parseDType(dtype.get<std::string>());
  if (!parsed)
    failTensor(path, name, "unknown dtype " + inQuotes(dtype.get<std::string>()));
  t.dtype = *parsed;

  const Json &shape = requireField(entry, "shape", path, name);
  if (!shape.is_array())
    failTensor(path, name, "\"shape\" is not an array");
  for (size_t i = 0; i < shape.size(); ++i)
    t.shape.push_back(readCount(shape[i], path, name, "shape[" + std::to_string(i) + "]"));

  const Json &offsets = requireField(entry, "data_offsets", path, name);
  if (!offsets.is_array() || offsets.size() != 2)
    failTensor(path, name, "\"data_offsets\" is not an array of two integers");
  uint64_t begin = static_cast<uint64_t>(readCount(offsets[0], path, name, "data_offsets[0]"));
  uint64_t end = static_cast<uint64_t>(readCount(offsets[1], path, name, "data_offsets[1]"));
  if (begin > end)
    failTensor(path, name, "data_offsets " + offsetsString(begin, end) + " begin after they end");
  if (end > dataSize)
    failTensor(path, name,
               "data_offsets " + offsetsString(begin, end) +
                   " are out of range: the data section has " + std::to_string(dataSize) +
                   " bytes");

  // numElements throws on overflow; the byte count can still overflow on its own.
  uint64_t count = static_cast<uint64_t>(numElements(t.shape, path + ": tensor " + inQuotes(name)));
  uint64_t size = elementSize(t.dtype);
  if (count > std::numeric_limits<uint64_t>::max() / size)
    failTensor(path, name, "shape " + shapeString(t.shape) + " is too large");
  if (end - begin != count * size)
    failTensor(path, name,
               "data_offsets " + offsetsString(begin, end) + " span " +
                   std::to_string(end - begin) + " bytes but shape " + shapeString(t.shape) +
                   " of " + dtypeName(t.dtype) + " needs " + std::to_string(count * size));

  extent.begin = begin;
  extent.end = end;
  return t;
}

std::map<std::string, std::string> parseMetadata(const Json &value, const std::string &path) {
  if (!value.is_object())
    fail(path, "\"__metadata__\" is not a JSON object");
  std::map<std::string, std::string> metadata;
  for (const auto &[key, v] : value.items()) {
    if (!v.is_string())
      fail(path, "\"__metadata__\" entry " + inQuotes(key) + " is not a string");
    metadata[key] = v.get<std::string>();
  }
  return metadata;
}

// Two tensors sharing bytes would alias silently; empty tensors occupy nothing and are
// exempt. Gaps are allowed: they waste space but leave every tensor unambiguous.
void checkNoOverlap(std::vector<Extent> extents, const std::vector<TensorData> &tensors,
                    const std::string &path) {
  extents.erase(std::remove_if(extents.begin(), extents.end(),
                               [](const Extent &e) { return e.begin == e.end; }),
                extents.end());
  std::sort(extents.begin(), extents.end(), [](const Extent &a, const Extent &b) {
    return a.begin != b.begin ? a.begin < b.begin : a.index < b.index;
  });
  // Tracking the extent reaching furthest catches overlaps with any earlier tensor, not only
  // the adjacent one.
  const Extent *furthest = nullptr;
  for (const Extent &e : extents) {
    if (furthest && e.begin < furthest->end)
      fail(path, "tensors " + inQuotes(tensors[furthest->index].name) + " " +
                     offsetsString(furthest->begin, furthest->end) + " and " +
                     inQuotes(tensors[e.index].name) + " " + offsetsString(e.begin, e.end) +
                     " overlap");
    if (!furthest || e.end > furthest->end)
      furthest = &e;
  }
}

std::string systemError() { return std::strerror(errno); }

} // namespace

int64_t numElements(const std::vector<int64_t> &shape, const std::string &what) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0)
      throw Error(what + ": negative dimension in shape " + shapeString(shape));
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d)
      throw Error(what + ": shape " + shapeString(shape) + " has too many elements");
    n *= d;
  }
  return n;
}

int64_t TensorData::numElements() const {
  return tnlm::numElements(shape, "tensor " + inQuotes(name));
}

std::vector<float> TensorData::toF32() const {
  size_t n = static_cast<size_t>(numElements());
  if (bytes.size() != n * elementSize(dtype))
    throw Error("tensor " + inQuotes(name) + ": holds " + std::to_string(bytes.size()) +
                " bytes but shape " + shapeString(shape) + " of " + dtypeName(dtype) + " needs " +
                std::to_string(n * elementSize(dtype)));
  std::vector<float> out(n);
  tnlm::toF32(dtype, bytes.data(), out.data(), n);
  return out;
}

TensorData TensorData::fromF32(std::string name, DType dtype, std::vector<int64_t> shape,
                               const std::vector<float> &values) {
  TensorData t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  size_t n = static_cast<size_t>(t.numElements());
  if (values.size() != n)
    throw Error("tensor " + inQuotes(t.name) + ": " + std::to_string(values.size()) +
                " values given for shape " + shapeString(t.shape));
  t.bytes.resize(n * elementSize(dtype));
  tnlm::fromF32(dtype, values.data(), t.bytes.data(), n);
  return t;
}

SafetensorsFile SafetensorsFile::read(const std::string &path) {
  return read(path, 0, UINT64_MAX);
}

SafetensorsFile SafetensorsFile::read(const std::string &source, uint64_t offset,
                                      uint64_t size) {
  namespace fs = std::filesystem;
  const bool region = offset != 0 || size != UINT64_MAX;
  const std::string path = region ? source + " (embedded weights)" : source;
  std::error_code ec;
  fs::file_status status = fs::status(source, ec);
  if (status.type() == fs::file_type::not_found)
    fail(path, "cannot open safetensors file: no such file");
  if (ec)
    fail(path, "cannot open safetensors file: " + ec.message());
  if (!fs::is_regular_file(status))
    fail(path, "cannot open safetensors file: not a regular file");
  uint64_t fileSize = fs::file_size(source, ec);
  if (ec)
    fail(path, "cannot read safetensors file: " + ec.message());
  if (region) {
    if (offset > fileSize || size > fileSize - offset)
      fail(path, "the region [" + std::to_string(offset) + ", +" + std::to_string(size) +
                     ") lies outside the file (" + std::to_string(fileSize) + " bytes)");
    fileSize = size;
  }

  std::ifstream in(source, std::ios::binary);
  if (!in)
    fail(path, "cannot open safetensors file: " + systemError());
  // Reads below are relative to the region's start.
  auto seekTo = [&](uint64_t at) { in.seekg(static_cast<std::streamoff>(offset + at)); };
  seekTo(0);
  if (fileSize < 8)
    fail(path, "file is " + std::to_string(fileSize) +
                   " bytes, shorter than the 8-byte header length field");

  unsigned char lengthBytes[8];
  if (!in.read(reinterpret_cast<char *>(lengthBytes), 8))
    fail(path, "cannot read the header length: " + systemError());
  uint64_t headerSize = 0;
  for (int i = 7; i >= 0; --i)
    headerSize = (headerSize << 8) | lengthBytes[i];
  if (headerSize > fileSize - 8)
    fail(path, "header length " + std::to_string(headerSize) + " is larger than the file (" +
                   std::to_string(fileSize - 8) + " bytes after the length field)");
  if (headerSize > kMaxHeaderBytes)
    fail(path, "header length " + std::to_string(headerSize) + " exceeds the 100 MiB limit");
  uint64_t dataSize = fileSize - 8 - headerSize;

  std::string text(headerSize, '\0');
  if (headerSize && !in.read(text.data(), static_cast<std::streamsize>(headerSize)))
    fail(path, "cannot read the JSON header: " + systemError());

  // The JSON object model keeps only one value per key, so duplicates must be caught while
  // parsing: top-level keys arrive at depth 1.
  std::string duplicate;
  std::set<std::string> seen;
  auto onEvent = [&](int depth, Json::parse_event_t event, Json &parsed) {
    if (event == Json::parse_event_t::key && depth == 1 && parsed.is_string()) {
      const std::string &key = parsed.get_ref<const std::string &>();
      if (!seen.insert(key).second && duplicate.empty())
        duplicate = key;
    }
    return true;
  };
  Json header;
  try {
    header = Json::parse(text, onEvent);
  } catch (const Json::exception &e) {
    fail(path, std::string("malformed JSON header: ") + e.what());
  }
  if (!header.is_object())
    fail(path, "malformed JSON header: not a JSON object");
  if (!duplicate.empty())
    fail(path, "duplicate entry " + inQuotes(duplicate) + " in the header");

  SafetensorsFile file;
  file.path_ = path;
  std::vector<Extent> extents;
  for (const auto &[name, entry] : header.items()) {
    if (name == kMetadataKey) {
      file.metadata_ = parseMetadata(entry, path);
      continue;
    }
    Extent extent{0, 0, file.tensors_.size()};
    file.tensors_.push_back(parseEntry(name, entry, dataSize, path, extent));
    file.index_[name] = extent.index;
    extents.push_back(extent);
  }
  checkNoOverlap(extents, file.tensors_, path);

  // Only now, with every offset known to be sane, touch the data.
  uint64_t dataStart = 8 + headerSize;
  for (const Extent &e : extents) {
    TensorData &t = file.tensors_[e.index];
    t.bytes.resize(e.end - e.begin);
    if (t.bytes.empty())
      continue;
    seekTo(dataStart + e.begin);
    if (!in.read(reinterpret_cast<char *>(t.bytes.data()),
                 static_cast<std::streamsize>(t.bytes.size())))
      failTensor(path, t.name, "cannot read data: " + systemError());
  }
  return file;
}

const TensorData *SafetensorsFile::find(const std::string &name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

const TensorData &SafetensorsFile::get(const std::string &name) const {
  const TensorData *t = find(name);
  if (!t)
    failTensor(path_, name, "not found in the file");
  return *t;
}

void writeSafetensors(const std::string &path, const std::vector<TensorData> &tensors,
                      const std::map<std::string, std::string> &metadata) {
  // Validate everything before creating any file, so bad input never touches the disk.
  Json header = Json::object();
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto &[key, value] : metadata)
      meta[key] = value;
    header[kMetadataKey] = std::move(meta);
  }
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorData &t : tensors) {
    if (t.name.empty())
      fail(path, "cannot write a tensor with an empty name");
    if (t.name == kMetadataKey)
      failTensor(path, t.name, "the name is reserved for metadata");
    if (!names.insert(t.name).second)
      failTensor(path, t.name, "given more than once");
    uint64_t n = static_cast<uint64_t>(numElements(t.shape, path + ": tensor " + inQuotes(t.name)));
    uint64_t expected = n * elementSize(t.dtype);
    if (t.bytes.size() != expected)
      failTensor(path, t.name,
                 "holds " + std::to_string(t.bytes.size()) + " bytes but shape " +
                     shapeString(t.shape) + " of " + dtypeName(t.dtype) + " needs " +
                     std::to_string(expected));
    header[t.name] = {{"dtype", dtypeName(t.dtype)},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + expected}}};
    offset += expected;
  }

  std::string text = header.dump();
  // Spaces are valid trailing JSON whitespace; the padding puts the data section on an
  // 8-byte boundary so a reader may map it and view tensors in place.
  text.append((8 - text.size() % 8) % 8, ' ');
  unsigned char lengthBytes[8];
  for (int i = 0; i < 8; ++i)
    lengthBytes[i] = static_cast<unsigned char>(static_cast<uint64_t>(text.size()) >> (8 * i));

  std::string tmp = path + ".tmp";
  FILE *f = std::fopen(tmp.c_str(), "wb");
  if (!f)
    fail(tmp, "cannot open for writing: " + systemError());
  bool ok = std::fwrite(lengthBytes, 1, 8, f) == 8 &&
            std::fwrite(text.data(), 1, text.size(), f) == text.size();
  for (size_t i = 0; ok && i < tensors.size(); ++i) {
    const std::vector<uint8_t> &bytes = tensors[i].bytes;
    ok = std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  }
  // fsync before the rename: otherwise a crash can leave the new name on empty data.
  ok = ok && std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  std::string error = ok ? "" : systemError();
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    error = systemError();
  }
  if (!ok) {
    std::remove(tmp.c_str());
    fail(tmp, "write failed: " + error);
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    error = systemError();
    std::remove(tmp.c_str());
    fail(path, "cannot rename " + inQuotes(tmp) + " into place: " + error);
  }
}

} // namespace tnlm
