//===- SafetensorsTest.cpp - safetensors round trips and malformed files --===//
#include "runtime/Safetensors.h"
#include "runtime/Error.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

using namespace tnlm;
namespace fs = std::filesystem;

namespace {

class Safetensors : public ::testing::Test {
protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "tnlm-safetensors-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir = pattern;
  }
  void TearDown() override { fs::remove_all(dir); }

  std::string pathOf(const std::string &name) const { return (dir / name).string(); }

  // A file from explicit pieces: the 8-byte length (the header's own size unless overridden),
  // the header text, then the data.
  std::string craft(const std::string &name, const std::string &header,
                    const std::string &data = "", int64_t lengthField = -1) {
    uint64_t n = lengthField < 0 ? header.size() : static_cast<uint64_t>(lengthField);
    std::string bytes;
    for (int i = 0; i < 8; ++i)
      bytes.push_back(static_cast<char>(n >> (8 * i)));
    bytes += header + data;
    return writeBytes(name, bytes);
  }

  std::string writeBytes(const std::string &name, const std::string &bytes) {
    std::string path = pathOf(name);
    std::ofstream out(path, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return path;
  }

  static std::string readBytes(const std::string &path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }

  // Reading `path` throws a tnlm::Error whose message contains the path and every fragment.
  static void expectReadError(const std::string &path, std::vector<std::string> fragments) {
    try {
      SafetensorsFile::read(path);
      ADD_FAILURE() << "reading " << path << " should have thrown";
    } catch (const Error &e) {
      std::string message = e.what();
      EXPECT_NE(message.find(path), std::string::npos) << message;
      for (const std::string &f : fragments)
        EXPECT_NE(message.find(f), std::string::npos) << "missing '" << f << "' in: " << message;
    }
  }

  fs::path dir;
};

TensorData makeTensor(std::string name, DType dtype, std::vector<int64_t> shape) {
  TensorData t;
  t.name = std::move(name);
  t.dtype = dtype;
  t.shape = std::move(shape);
  t.bytes.resize(static_cast<size_t>(t.numElements()) * elementSize(dtype));
  for (size_t i = 0; i < t.bytes.size(); ++i)
    t.bytes[i] = static_cast<uint8_t>(i * 37 + t.name.size());
  return t;
}

// A valid one-tensor header with the given field values spliced in.
std::string entry(const std::string &name, const std::string &dtype, const std::string &shape,
                  const std::string &offsets) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":" + offsets + "}";
}

TEST_F(Safetensors, RoundTripManyDtypesAndShapes) {
  std::vector<TensorData> tensors = {
      makeTensor("model.embed_tokens.weight", DType::BF16, {5, 3}),
      makeTensor("scalar", DType::F32, {}),    // rank 0: one element
      makeTensor("empty", DType::F16, {0, 4}), // zero elements, zero bytes
      makeTensor("ids", DType::I64, {2, 1, 3}),
      makeTensor("count", DType::I32, {7}),
      makeTensor("f64", DType::F64, {1, 1, 1, 2}),
      makeTensor("empty.rank1", DType::F32, {0}),
      makeTensor("mask", DType::Bool, {3}),
  };
  std::string path = pathOf("model.safetensors");
  writeSafetensors(path, tensors);

  SafetensorsFile file = SafetensorsFile::read(path);
  EXPECT_EQ(file.path(), path);
  ASSERT_EQ(file.tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const TensorData &got = file.tensors()[i]; // written order is kept
    EXPECT_EQ(got.name, tensors[i].name);
    EXPECT_EQ(got.dtype, tensors[i].dtype) << got.name;
    EXPECT_EQ(got.shape, tensors[i].shape) << got.name;
    EXPECT_EQ(got.bytes, tensors[i].bytes) << got.name;
  }
  EXPECT_EQ(file.find("scalar")->bytes.size(), 4u);
  EXPECT_TRUE(file.find("empty")->bytes.empty());
  EXPECT_EQ(file.find("nope"), nullptr);
  EXPECT_EQ(&file.get("ids"), file.find("ids"));
  try {
    file.get("nope");
    ADD_FAILURE() << "get of a missing tensor should throw";
  } catch (const Error &e) {
    EXPECT_NE(std::string(e.what()).find("'nope'"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
  }
  EXPECT_TRUE(file.metadata().empty());
}

TEST_F(Safetensors, WrittenLayoutFollowsTheFormat) {
  TensorData t = TensorData::fromF32("w", DType::F32, {2}, {1.0f, -2.5f});
  std::string path = pathOf("layout.safetensors");
  writeSafetensors(path, {t});
  std::string bytes = readBytes(path);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i)
    n = (n << 8) | static_cast<unsigned char>(bytes[i]);
  EXPECT_EQ(n % 8, 0u) << "header must be padded to 8 bytes";
  ASSERT_EQ(bytes.size(), 8 + n + 8);
  std::string header = bytes.substr(8, n);
  EXPECT_EQ(header.rfind("{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0), 0u)
      << header;
  EXPECT_EQ(header.find_first_not_of(' ', header.find_last_of('}') + 1), std::string::npos);
  float data[2];
  std::memcpy(data, bytes.data() + 8 + n, 8);
  EXPECT_EQ(data[0], 1.0f);
  EXPECT_EQ(data[1], -2.5f);
}

TEST_F(Safetensors, ReadsHandWrittenFile) {
  // As another writer might produce it: unpadded header, entries out of data order.
  float a[2] = {3.0f, 4.0f};
  uint16_t b[1] = {0x3f80}; // bf16 1.0
  std::string data(reinterpret_cast<const char *>(b), 2);
  data.append(reinterpret_cast<const char *>(a), 8);
  std::string path =
      craft("hand.safetensors",
            "{" + entry("a", "F32", "[2]", "[2,10]") + "," + entry("b", "BF16", "[]", "[0,2]") +
                ",\"__metadata__\":{\"format\":\"pt\"}}",
            data);
  SafetensorsFile file = SafetensorsFile::read(path);
  ASSERT_EQ(file.tensors().size(), 2u);
  EXPECT_EQ(file.tensors()[0].name, "a"); // header order
  EXPECT_EQ(file.get("a").toF32(), (std::vector<float>{3.0f, 4.0f}));
  EXPECT_EQ(file.get("b").toF32(), (std::vector<float>{1.0f}));
  EXPECT_EQ(file.metadata().at("format"), "pt");
}

TEST_F(Safetensors, Metadata) {
  std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"tnlm.step", "1200"}, {"quote\"and\\slash", "ünïcödé\n"}};
  std::string path = pathOf("meta.safetensors");
  writeSafetensors(path, {makeTensor("x", DType::F32, {2})}, metadata);
  SafetensorsFile file = SafetensorsFile::read(path);
  EXPECT_EQ(file.metadata(), metadata);
  ASSERT_EQ(file.tensors().size(), 1u); // "__metadata__" is not a tensor

  writeSafetensors(path, {}, {{"only", "metadata"}});
  SafetensorsFile empty = SafetensorsFile::read(path);
  EXPECT_TRUE(empty.tensors().empty());
  EXPECT_EQ(empty.metadata().at("only"), "metadata");
}

TEST_F(Safetensors, ConvertsThroughF32) {
  std::vector<float> values = {0.5f, -1.0f, 65504.0f, 3.0f};
  TensorData t = TensorData::fromF32("h", DType::F16, {2, 2}, values);
  EXPECT_EQ(t.bytes.size(), 8u);
  EXPECT_EQ(t.toF32(), values); // all exactly representable in f16
  EXPECT_THROW(TensorData::fromF32("h", DType::F16, {3}, values), Error);
}

TEST_F(Safetensors, AtomicWriteLeavesNoTmpAndKeepsOldFileOnFailure) {
  std::string path = pathOf("atomic.safetensors");
  writeSafetensors(path, {makeTensor("a", DType::F32, {4})});
  EXPECT_TRUE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  std::string before = readBytes(path);

  // Invalid input is refused before anything is written: the old file survives intact.
  TensorData bad = makeTensor("bad", DType::F32, {4});
  bad.bytes.pop_back();
  EXPECT_THROW(writeSafetensors(path, {bad}), Error);
  EXPECT_EQ(readBytes(path), before);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  // The .tmp cannot be created (a directory is in its way): the old file survives intact.
  fs::create_directory(path + ".tmp");
  EXPECT_THROW(writeSafetensors(path, {makeTensor("b", DType::F32, {8})}), Error);
  EXPECT_EQ(readBytes(path), before);
  fs::remove(path + ".tmp");

  // Overwriting replaces the content completely.
  writeSafetensors(path, {makeTensor("c", DType::I32, {1})});
  EXPECT_NE(SafetensorsFile::read(path).find("c"), nullptr);
  EXPECT_EQ(SafetensorsFile::read(path).find("a"), nullptr);
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  try {
    writeSafetensors(pathOf("no/such/dir/x.safetensors"), {});
    ADD_FAILURE() << "writing into a missing directory should throw";
  } catch (const Error &e) {
    EXPECT_NE(std::string(e.what()).find("no/such/dir"), std::string::npos) << e.what();
  }
}

TEST_F(Safetensors, WriterRejectsBadTensors) {
  std::string path = pathOf("w.safetensors");
  TensorData shortData = makeTensor("short", DType::BF16, {3});
  shortData.bytes.resize(5);
  TensorData negative = makeTensor("neg", DType::F32, {});
  negative.shape = {-1};
  TensorData unnamed = makeTensor("", DType::F32, {1});
  TensorData reserved = makeTensor("__metadata__", DType::F32, {1});
  auto expectWriteError = [&](std::vector<TensorData> tensors, const std::string &fragment) {
    try {
      writeSafetensors(path, tensors);
      ADD_FAILURE() << "expected an error containing '" << fragment << "'";
    } catch (const Error &e) {
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(path));
    EXPECT_FALSE(fs::exists(path + ".tmp"));
  };
  expectWriteError({shortData}, "'short': holds 5 bytes but shape [3] of BF16 needs 6");
  expectWriteError({negative}, "negative dimension");
  expectWriteError({unnamed}, "empty name");
  expectWriteError({reserved}, "reserved");
  expectWriteError({makeTensor("d", DType::F32, {1}), makeTensor("d", DType::F32, {1})},
                   "'d': given more than once");
}

//===----------------------------------------------------------------------===//
// One test per kind of malformed file.
//===----------------------------------------------------------------------===//

TEST_F(Safetensors, ErrorMissingFile) {
  expectReadError(pathOf("absent.safetensors"), {"no such file"});
  fs::create_directory(pathOf("adir"));
  expectReadError(pathOf("adir"), {"not a regular file"});
}

TEST_F(Safetensors, ErrorShorterThanLengthField) {
  expectReadError(writeBytes("short", std::string("\x08\x00\x00", 3)), {"3 bytes", "shorter than"});
  expectReadError(writeBytes("empty", ""), {"0 bytes"});
}

TEST_F(Safetensors, ErrorHeaderLengthLargerThanFile) {
  expectReadError(craft("long", "{}", "", 1000), {"header length 1000", "larger than the file"});
  // A length near 2^64 must not overflow into something that looks valid.
  expectReadError(craft("huge", "{}", "", -2 + (int64_t(1) << 62)), {"larger than the file"});
}

TEST_F(Safetensors, ErrorMalformedJson) {
  expectReadError(craft("trunc", "{\"a\":{\"dtype\":"), {"malformed JSON header"});
  expectReadError(craft("zero", ""), {"malformed JSON header"});
  expectReadError(craft("array", "[1,2]"), {"malformed JSON header", "not a JSON object"});
  expectReadError(craft("entry", "{\"a\":5}"), {"tensor 'a'", "not a JSON object"});
  expectReadError(craft("missing", "{\"a\":{\"dtype\":\"F32\",\"shape\":[]}}"),
                  {"tensor 'a'", "missing \"data_offsets\""});
  expectReadError(craft("meta", "{\"__metadata__\":{\"k\":1}}"),
                  {"__metadata__", "'k'", "not a string"});
}

TEST_F(Safetensors, ErrorUnknownDtype) {
  expectReadError(craft("dtype", "{" + entry("w.q", "F8_E4M3", "[1]", "[0,1]") + "}", "x"),
                  {"tensor 'w.q'", "unknown dtype 'F8_E4M3'"});
  expectReadError(
      craft("dtype2", "{\"w\":{\"dtype\":4,\"shape\":[],\"data_offsets\":[0,4]}}", "abcd"),
      {"tensor 'w'", "\"dtype\" is not a string"});
}

TEST_F(Safetensors, ErrorNegativeShape) {
  expectReadError(craft("neg", "{" + entry("w", "F32", "[2,-3]", "[0,0]") + "}"),
                  {"tensor 'w'", "shape[1] = -3 is negative"});
}

TEST_F(Safetensors, ErrorNonIntegerShape) {
  expectReadError(craft("frac", "{" + entry("w", "F32", "[2.5]", "[0,8]") + "}", "01234567"),
                  {"tensor 'w'", "shape[0] = 2.5 is not an integer"});
  expectReadError(craft("str", "{" + entry("w", "F32", "[\"2\"]", "[0,8]") + "}", "01234567"),
                  {"tensor 'w'", "is not an integer"});
  expectReadError(craft("notarray", "{" + entry("w", "F32", "2", "[0,8]") + "}", "01234567"),
                  {"tensor 'w'", "\"shape\" is not an array"});
  // Dimensions whose product overflows int64.
  expectReadError(
      craft("overflow", "{" + entry("w", "F32", "[4294967296,4294967296]", "[0,0]") + "}"),
      {"tensor 'w'", "too many elements"});
}

TEST_F(Safetensors, ErrorOffsetsOutOfRange) {
  expectReadError(craft("range", "{" + entry("w", "F32", "[4]", "[0,16]") + "}", "01234567"),
                  {"tensor 'w'", "[0, 16] are out of range", "8 bytes"});
  expectReadError(craft("order", "{" + entry("w", "F32", "[0]", "[8,4]") + "}", "01234567"),
                  {"tensor 'w'", "begin after they end"});
  expectReadError(craft("neg", "{" + entry("w", "F32", "[0]", "[-4,0]") + "}", "01234567"),
                  {"tensor 'w'", "data_offsets[0] = -4 is negative"});
  expectReadError(craft("three", "{" + entry("w", "F32", "[0]", "[0,0,0]") + "}"),
                  {"tensor 'w'", "not an array of two integers"});
}

TEST_F(Safetensors, ErrorOffsetsInconsistentWithShape) {
  expectReadError(craft("size", "{" + entry("w", "BF16", "[2,3]", "[0,8]") + "}", "01234567"),
                  {"tensor 'w'", "span 8 bytes but shape [2, 3] of BF16 needs 12"});
  expectReadError(craft("scalar", "{" + entry("s", "I64", "[]", "[0,4]") + "}", "0123"),
                  {"tensor 's'", "span 4 bytes but shape [] of I64 needs 8"});
}

TEST_F(Safetensors, ErrorOverlappingTensors) {
  std::string data(16, 'x');
  expectReadError(craft("overlap",
                        "{" + entry("a", "F32", "[3]", "[0,12]") + "," +
                            entry("b", "F32", "[2]", "[8,16]") + "}",
                        data),
                  {"'a' [0, 12]", "'b' [8, 16]", "overlap"});
  // An overlap with a tensor other than the adjacent one: c lies inside a.
  expectReadError(craft("nested",
                        "{" + entry("a", "F32", "[4]", "[0,16]") + "," +
                            entry("b", "F32", "[0]", "[4,4]") + "," +
                            entry("c", "F32", "[1]", "[8,12]") + "}",
                        data),
                  {"'a'", "'c'", "overlap"});
  // Aliasing by identical offsets.
  expectReadError(
      craft("same",
            "{" + entry("a", "F32", "[2]", "[0,8]") + "," + entry("b", "I32", "[2]", "[0,8]") + "}",
            data),
      {"'a'", "'b'", "overlap"});
  // Empty tensors anywhere are fine, and so is a gap between tensors.
  SafetensorsFile ok = SafetensorsFile::read(craft("ok",
                                                   "{" + entry("a", "F32", "[1]", "[0,4]") + "," +
                                                       entry("e", "F32", "[0]", "[2,2]") + "," +
                                                       entry("b", "F32", "[1]", "[8,12]") + "}",
                                                   data));
  EXPECT_EQ(ok.tensors().size(), 3u);
}

TEST_F(Safetensors, ErrorDuplicateNames) {
  expectReadError(
      craft("dup",
            "{" + entry("w", "F32", "[1]", "[0,4]") + "," + entry("w", "F32", "[1]", "[4,8]") + "}",
            "01234567"),
      {"duplicate entry 'w'"});
  expectReadError(craft("dupmeta", "{\"__metadata__\":{},\"__metadata__\":{}}"),
                  {"duplicate entry '__metadata__'"});
}

} // namespace
