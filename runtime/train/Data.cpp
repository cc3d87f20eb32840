//===- Data.cpp - training data for tnlm-train ----------------------------===//
#include "runtime/train/Data.h"

#include "runtime/Error.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fnmatch.h>
#include <fstream>
#include <limits>
#include <set>
#include <memory>

namespace tnlm::train {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kHeaderBytes = kShardHeaderWords * 4;
constexpr size_t kChunkBytes = 1 << 20;
constexpr const char *kStateFormat = "tnlm-train-data-state";
constexpr int kStateVersion = 1;

std::string inQuotes(const std::string &s) { return "'" + s + "'"; }

[[noreturn]] void failFile(const std::string &file, const std::string &message) {
  throw Error(file + ": " + message);
}

// "train data 'path': message", for faults of a whole source rather than of one file.
[[noreturn]] void failSource(const std::string &what, const std::string &path,
                             const std::string &message) {
  throw Error(what + " " + inQuotes(path) + ": " + message);
}

std::string withCommas(int64_t n) {
  std::string digits = std::to_string(n < 0 ? -n : n);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i && (digits.size() - i) % 3 == 0)
      out += ',';
    out += digits[i];
  }
  return n < 0 ? "-" + out : out;
}

bool endsWith(const std::string &s, const std::string &suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool hasGlob(const std::string &name) { return name.find_first_of("*?[") != std::string::npos; }

struct FileCloser {
  void operator()(std::FILE *f) const { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;

File openFile(const std::string &path) {
  File f(std::fopen(path.c_str(), "rb"));
  if (!f)
    failFile(path, std::string("cannot read: ") + std::strerror(errno));
  return f;
}

// Reads exactly n bytes or fails naming the file (a short read here means the file changed
// or an I/O error, since sizes were checked first).
void readExact(std::FILE *f, const std::string &path, void *out, size_t n) {
  if (n && std::fread(out, 1, n, f) != n)
    failFile(path, std::ferror(f) ? std::string("read error: ") + std::strerror(errno)
                                  : std::string("file ended early (changed while reading?)"));
}

uint64_t fileSize(const std::string &path) {
  std::error_code ec;
  uint64_t size = fs::file_size(path, ec);
  if (ec)
    failFile(path, "cannot read: " + ec.message());
  return size;
}

uint32_t readLE32(const unsigned char *p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}

// The files of a source, in bytewise path order. See Data.h for the rules.
std::vector<std::string> collectFiles(const std::string &what, const std::string &path) {
  std::error_code ec;
  std::vector<std::string> files;
  fs::path p(path);
  fs::file_status st = fs::status(p, ec);
  if (!fs::exists(st) && hasGlob(p.filename().string())) {
    fs::path dir = p.has_parent_path() ? p.parent_path() : fs::path(".");
    if (!fs::is_directory(dir, ec))
      failSource(what, path, "no such folder " + inQuotes(dir.string()));
    std::string pattern = p.filename().string();
    for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
      std::string name = it->path().filename().string();
      if (fnmatch(pattern.c_str(), name.c_str(), FNM_PERIOD) == 0 && it->is_regular_file())
        files.push_back(it->path().string());
    }
    if (ec)
      failSource(what, path, "cannot list " + inQuotes(dir.string()) + ": " + ec.message());
    if (files.empty())
      failSource(what, path, "no file matches the pattern");
  } else if (!fs::exists(st)) {
    failSource(what, path, "no such file or folder");
  } else if (fs::is_regular_file(st)) {
    return {path};
  } else if (fs::is_directory(st)) {
    fs::recursive_directory_iterator it(p, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
      if (it->path().filename().string().rfind('.', 0) == 0) {
        if (it->is_directory())
          it.disable_recursion_pending();
        continue;
      }
      if (it->is_regular_file())
        files.push_back(it->path().string());
    }
    if (ec)
      failSource(what, path, "cannot list the folder: " + ec.message());
    if (std::any_of(files.begin(), files.end(), [](auto &f) { return endsWith(f, ".bin"); }))
      files.erase(
          std::remove_if(files.begin(), files.end(), [](auto &f) { return !endsWith(f, ".bin"); }),
          files.end());
    if (files.empty())
      failSource(what, path, "the folder holds no files");
  } else {
    failSource(what, path, "not a file or a folder");
  }
  std::sort(files.begin(), files.end());
  // A folder may hold links to its own files (fortune's "art.u8 -> art"): each file once.
  std::set<std::string> seen;
  std::vector<std::string> unique;
  for (const std::string &f : files) {
    std::string real = fs::weakly_canonical(f, ec).string();
    if (seen.insert(ec ? f : real).second)
      unique.push_back(f);
  }
  return unique;
}

// A file holding a NUL byte in its first 4 KiB is not text (e.g. fortune's strfile indexes).
bool looksBinary(const std::string &file) {
  std::ifstream in(file, std::ios::binary);
  char buf[4096];
  in.read(buf, sizeof buf);
  return std::memchr(buf, 0, static_cast<size_t>(in.gcount())) != nullptr;
}

// The shard version when the file starts with the shard magic, 0 when it does not (-1 for a
// version that is not positive; readShard reports it), so that a source can be classified and
// its token count reserved before any tokens are read.
int peekShardVersion(const std::string &file) {
  if (fileSize(file) < 8)
    return 0;
  File f = openFile(file);
  unsigned char words[8];
  readExact(f.get(), file, words, 8);
  if (int32_t(readLE32(words)) != kShardMagic)
    return 0;
  int32_t version = int32_t(readLE32(words + 4));
  return version > 0 ? version : -1;
}

struct ShardHeader {
  int version = 0;
  int64_t count = 0;
};

ShardHeader checkShardHeader(const std::string &file, std::FILE *f) {
  uint64_t size = fileSize(file);
  if (size < uint64_t(kHeaderBytes))
    failFile(file, "not a token shard: " + std::to_string(size) +
                       " bytes, but the llm.c header alone is " + std::to_string(kHeaderBytes));
  unsigned char header[kHeaderBytes];
  readExact(f, file, header, kHeaderBytes);
  int32_t magic = int32_t(readLE32(header));
  if (magic != kShardMagic)
    failFile(file, "not a token shard: header word 0 is " + std::to_string(magic) +
                       ", the llm.c magic is " + std::to_string(kShardMagic));
  ShardHeader h;
  int32_t version = int32_t(readLE32(header + 4));
  if (version != 1 && version != 2)
    failFile(file, "unsupported token shard version " + std::to_string(version) +
                       " (1 = uint16 tokens, 2 = uint32 tokens)");
  h.version = version;
  h.count = int32_t(readLE32(header + 8));
  if (h.count < 0)
    failFile(file, "token shard header has a negative token count " + std::to_string(h.count));
  uint64_t elem = version == 1 ? 2 : 4;
  uint64_t payload = size - kHeaderBytes;
  uint64_t expected = uint64_t(h.count) * elem;
  if (payload != expected)
    failFile(file, "token shard header says " + withCommas(h.count) + " tokens (" +
                       withCommas(int64_t(expected)) +
                       " bytes after the header), but the file has " +
                       withCommas(int64_t(payload)) + " bytes after the header" +
                       (payload < expected ? " (truncated)" : " (trailing bytes)"));
  return h;
}

void readShard(const std::string &file, int64_t vocab, std::vector<int32_t> &out) {
  File f = openFile(file);
  ShardHeader h = checkShardHeader(file, f.get());
  size_t elem = h.version == 1 ? 2 : 4;
  std::vector<unsigned char> buf(kChunkBytes);
  int64_t done = 0;
  while (done < h.count) {
    int64_t n = std::min<int64_t>(h.count - done, int64_t(kChunkBytes / elem));
    readExact(f.get(), file, buf.data(), size_t(n) * elem);
    for (int64_t i = 0; i < n; ++i) {
      const unsigned char *p = buf.data() + i * elem;
      uint32_t v = elem == 2 ? uint32_t(p[0]) | uint32_t(p[1]) << 8 : readLE32(p);
      if (v >= uint64_t(vocab))
        failFile(file, "token " + std::to_string(done + i) + " (counted from 0) is " +
                           std::to_string(v) + ", not below the vocabulary size " +
                           std::to_string(vocab));
      out.push_back(int32_t(v));
    }
    done += n;
  }
}

// Appends the file's bytes as token ids; returns the number appended.
int64_t readText(const std::string &file, std::vector<int32_t> &out) {
  File f = openFile(file);
  std::vector<unsigned char> buf(kChunkBytes);
  int64_t total = 0;
  for (;;) {
    size_t n = std::fread(buf.data(), 1, buf.size(), f.get());
    out.insert(out.end(), buf.begin(), buf.begin() + n);
    total += int64_t(n);
    if (n < buf.size()) {
      if (std::ferror(f.get()))
        failFile(file, std::string("read error: ") + std::strerror(errno));
      return total;
    }
  }
}

struct Source {
  std::string format;
  int64_t files = 0;
  int64_t skippedBinary = 0; // files of a folder skipped as not text
};

// Reads every file of a source into `out` (see Data.h for the formats and rules).
Source loadSource(const std::string &what, const std::string &path, const DataConfig &config,
                  std::vector<int32_t> &out) {
  std::vector<std::string> files = collectFiles(what, path);
  // In a folder of text, binary files are skipped (and counted); a single file is always read.
  int64_t skippedBinary = 0;
  if (files.size() > 1 && fs::is_directory(path)) {
    std::vector<std::string> kept;
    for (const std::string &f : files)
      if (!endsWith(f, ".bin") && peekShardVersion(f) == 0 && looksBinary(f))
        ++skippedBinary;
      else
        kept.push_back(f);
    if (kept.empty())
      failSource(what, path, "the folder holds only binary files (no text, no token shards)");
    files = std::move(kept);
  }
  std::vector<bool> isShard(files.size());
  std::string firstShard, firstText;
  uint64_t reserve = 0;
  for (size_t i = 0; i < files.size(); ++i) {
    int version = peekShardVersion(files[i]);
    isShard[i] = version != 0 || endsWith(files[i], ".bin");
    std::string &first = isShard[i] ? firstShard : firstText;
    if (first.empty())
      first = files[i];
    uint64_t size = fileSize(files[i]);
    if (!isShard[i])
      reserve += size + 1; // + the EOS
    else if (size > uint64_t(kHeaderBytes) && (version == 1 || version == 2))
      reserve += (size - kHeaderBytes) / (version == 1 ? 2 : 4);
  }
  if (!firstShard.empty() && !firstText.empty())
    failSource(what, path, "mixes token shards (" + firstShard + ") and text (" + firstText + ")");
  Source src;
  src.format = firstShard.empty() ? "text" : "shards";
  src.files = int64_t(files.size());
  src.skippedBinary = skippedBinary;
  if (src.format == "text" && config.vocabSize < 256)
    failFile(firstText, "text is read as bytes (token ids 0-255), which needs a vocabulary of at "
                        "least 256, but the model's vocabulary size is " +
                            std::to_string(config.vocabSize) + " (give token shards instead)");
  out.reserve(size_t(reserve)); // exact for valid data, so the stream is never copied to grow
  bool haveDocument = false;
  for (size_t i = 0; i < files.size(); ++i) {
    if (isShard[i]) {
      readShard(files[i], config.vocabSize, out);
      continue;
    }
    // Documents are joined with the EOS id; empty files are not documents.
    size_t before = out.size();
    if (haveDocument && config.eosId >= 0)
      out.push_back(config.eosId);
    if (readText(files[i], out) == 0)
      out.resize(before);
    else
      haveDocument = true;
  }
  if (out.empty())
    failSource(what, path,
               "no tokens (" + std::to_string(files.size()) +
                   (files.size() == 1 ? " file, empty)" : " files, all empty)"));
  return src;
}

// `detail` follows the token count ("(the last 0.05 of 1,000)"), `hint` the requirement.
void needWindow(const std::string &what, const std::string &path, int64_t tokens, int64_t seq,
                const std::string &detail = "", const std::string &hint = "") {
  if (tokens < seq + 1)
    failSource(what, path,
               withCommas(tokens) + " tokens" + detail +
                   ", but one window needs seq + 1 = " + withCommas(seq + 1) + " tokens" + hint);
}

std::string shortNumber(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

void checkConfig(const DataConfig &c) {
  if (c.trainPath.empty())
    throw Error("train data: no path given");
  if (!(c.valFraction >= 0.0 && c.valFraction < 1.0))
    throw Error("valFraction " + std::to_string(c.valFraction) + " is outside [0, 1)");
  if (!c.valPath.empty() && c.valFraction > 0.0)
    throw Error("give either a validation source (" + inQuotes(c.valPath) +
                ") or valFraction, not both");
  if (c.vocabSize < 1 || c.vocabSize > int64_t(std::numeric_limits<int32_t>::max()) + 1)
    throw Error("vocabulary size " + std::to_string(c.vocabSize) + " is not in [1, 2^31]");
  if (c.eosId >= c.vocabSize)
    throw Error("eosId " + std::to_string(c.eosId) + " is not below the vocabulary size " +
                std::to_string(c.vocabSize));
  if (c.batch < 1 || c.seq < 1)
    throw Error("batch (" + std::to_string(c.batch) + ") and seq (" + std::to_string(c.seq) +
                ") must be at least 1");
  if (c.evalBatches < 0)
    throw Error("evalBatches " + std::to_string(c.evalBatches) + " is negative");
}

// The split point for valFraction: the target is the last floor(f·N) tokens; a document
// boundary (just after an EOS token) within a tenth of the validation size of the target is
// preferred, the nearest one (the earlier on a tie), if both sides still hold a window.
// Otherwise the split is at the exact token. Returns the split and whether it is a boundary.
std::pair<int64_t, bool> splitPoint(const std::vector<int32_t> &t, double fraction, int64_t seq,
                                    int32_t eos) {
  int64_t n = int64_t(t.size());
  int64_t valTarget = int64_t(std::floor(fraction * double(n)));
  int64_t target = n - std::min(valTarget, n);
  int64_t tolerance = valTarget / 10;
  auto isBoundary = [&](int64_t p) { return p > 0 && p < n && t[size_t(p - 1)] == eos; };
  if (eos >= 0) {
    for (int64_t d = 0; d <= tolerance; ++d) {
      for (int64_t p : {target - d, target + d}) {
        if (isBoundary(p) && p >= seq + 1 && n - p >= seq + 1)
          return {p, true};
      }
    }
  }
  return {target, false};
}

uint64_t fnv1a(const int32_t *t, int64_t n) {
  uint64_t h = 14695981039346656037ull;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t v = uint32_t(t[i]);
    for (int b = 0; b < 4; ++b) {
      h ^= (v >> (8 * b)) & 0xff;
      h *= 1099511628211ull;
    }
  }
  return h;
}

std::string hex64(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
  return buf;
}

} // namespace

const char *windowOrderName(WindowOrder order) {
  return order == WindowOrder::Random ? "random" : "sequential";
}

WindowOrder parseWindowOrder(const std::string &name) {
  if (name == "random")
    return WindowOrder::Random;
  if (name == "sequential")
    return WindowOrder::Sequential;
  throw Error("unknown window order " + inQuotes(name) + " (random or sequential)");
}

uint64_t uniformIndex(std::mt19937_64 &rng, uint64_t n, uint64_t &draws) {
  // Values at or above limit = 2^64 − (2^64 mod n) would bias the modulo; redraw them.
  uint64_t rem = (0 - n) % n; // 2^64 mod n, in 64-bit arithmetic
  uint64_t limit = 0 - rem;   // 0 means 2^64 (n divides 2^64): nothing rejected
  for (;;) {
    uint64_t x = rng();
    ++draws;
    if (limit == 0 || x < limit)
      return x % n;
  }
}

DataLoader DataLoader::open(const DataConfig &config) {
  checkConfig(config);
  DataLoader d;
  d.config_ = config;
  const int64_t seq = config.seq;
  Source train = loadSource("train data", config.trainPath, config, d.tokens_);
  d.summary_.format = train.format;
  d.summary_.trainFiles = train.files;
  d.summary_.skippedBinary = train.skippedBinary;
  int64_t n = int64_t(d.tokens_.size());
  const int32_t *valStream = nullptr; // only read here
  if (!config.valPath.empty()) {
    Source val = loadSource("validation data", config.valPath, config, d.valTokens_);
    if (val.format != train.format)
      failSource("validation data", config.valPath,
                 "is " + val.format + " but the train data is " + train.format);
    d.summary_.valFiles = val.files;
    d.summary_.valSplit = "separate source";
    needWindow("validation data", config.valPath, int64_t(d.valTokens_.size()), seq);
    d.trainSize_ = n;
    valStream = d.valTokens_.data();
    d.valSize_ = int64_t(d.valTokens_.size());
  } else if (config.valFraction > 0.0) {
    auto [split, boundary] = splitPoint(d.tokens_, config.valFraction, seq, config.eosId);
    needWindow("validation data", config.trainPath, n - split, seq,
               " (the last " + shortNumber(config.valFraction) + " of " + withCommas(n) + ")",
               "; raise valFraction or give a validation source");
    needWindow("train data", config.trainPath, split, seq,
               " before the validation split (of " + withCommas(n) + ")");
    d.summary_.valSplit = boundary ? "split at a document boundary" : "split at a token boundary";
    d.trainSize_ = split;
    valStream = d.tokens_.data() + split;
    d.valSize_ = n - split;
  } else {
    d.trainSize_ = n;
  }
  needWindow("train data", config.trainPath, d.trainSize_, seq);
  d.summary_.trainTokens = d.trainSize_;
  d.summary_.valTokens = d.valSize_;
  d.checksum_ = fnv1a(d.tokens_.data(), d.trainSize_);
  d.rng_.seed(config.seed);

  if (d.valSize_ > 0 && config.evalBatches > 0) {
    // Window i of W starts at floor(i·last / (W − 1)), last = the final window's start.
    int64_t windows = config.evalBatches * config.batch;
    int64_t last = d.valSize_ - seq - 1;
    for (int64_t b = 0; b < config.evalBatches; ++b) {
      Batch batch{config.batch, seq, std::vector<int32_t>(size_t(config.batch * seq)),
                  std::vector<int32_t>(size_t(config.batch * seq))};
      for (int64_t r = 0; r < config.batch; ++r) {
        int64_t i = b * config.batch + r;
        int64_t start =
            windows == 1 ? 0 : int64_t((unsigned __int128)i * uint64_t(last) / (windows - 1));
        d.writeWindow(valStream, start, batch.ids.data() + r * seq, batch.labels.data() + r * seq);
      }
      d.valBatches_.push_back(std::move(batch));
    }
  }
  return d;
}

std::string DataLoader::describe() const {
  const DataSummary &s = summary_;
  std::string line = "data: " + s.format + ", " + withCommas(s.trainFiles) +
                     (s.trainFiles == 1 ? " file" : " files") +
                     (s.skippedBinary ? " (" + withCommas(s.skippedBinary) + " binary skipped)"
                                      : std::string()) +
                     "; train " +
                     withCommas(s.trainTokens) + " tokens, ";
  if (s.valTokens == 0)
    return line + "no validation";
  line += "val " + withCommas(s.valTokens) + " tokens (";
  if (s.valFiles > 0)
    return line + withCommas(s.valFiles) + (s.valFiles == 1 ? " file)" : " files)");
  return line + s.valSplit + ")";
}

int64_t DataLoader::nextStart() {
  const int64_t seq = config_.seq;
  ++pos_.windows;
  if (config_.order == WindowOrder::Random)
    return int64_t(uniformIndex(rng_, uint64_t(trainSize_ - seq), pos_.rngDraws));
  int64_t start = pos_.cursor;
  pos_.cursor += seq;
  if (pos_.cursor + seq + 1 > trainSize_) {
    pos_.cursor = 0;
    ++pos_.epoch;
  }
  return start;
}

void DataLoader::writeWindow(const int32_t *stream, int64_t start, int32_t *ids,
                             int32_t *labels) const {
  std::copy(stream + start, stream + start + config_.seq, ids);
  std::copy(stream + start + 1, stream + start + 1 + config_.seq, labels);
}

void DataLoader::next(int32_t *ids, int32_t *labels) {
  for (int64_t r = 0; r < config_.batch; ++r)
    writeWindow(tokens_.data(), nextStart(), ids + r * config_.seq, labels + r * config_.seq);
  ++pos_.batches;
}

Batch DataLoader::next() {
  Batch b{config_.batch, config_.seq, std::vector<int32_t>(size_t(config_.batch * config_.seq)),
          std::vector<int32_t>(size_t(config_.batch * config_.seq))};
  next(b.ids.data(), b.labels.data());
  return b;
}

double DataLoader::epochs() const {
  if (config_.order == WindowOrder::Sequential)
    return double(pos_.epoch) + double(pos_.cursor) / double(trainSize_);
  return double(pos_.windows) * double(config_.seq) / double(trainSize_);
}

nlohmann::json DataLoader::state() const {
  return {{"format", kStateFormat},
          {"version", kStateVersion},
          {"order", windowOrderName(config_.order)},
          {"seed", config_.seed},
          {"batch", config_.batch},
          {"seq", config_.seq},
          {"train_tokens", trainSize_},
          {"train_checksum", hex64(checksum_)},
          {"rng_draws", pos_.rngDraws},
          {"cursor", pos_.cursor},
          {"epoch", pos_.epoch},
          {"batches", pos_.batches},
          {"windows", pos_.windows}};
}

void DataLoader::restore(const nlohmann::json &state) {
  auto fail = [](const std::string &message) { throw Error("data loader state: " + message); };
  if (!state.is_object())
    fail("not a JSON object");
  auto field = [&](const char *key) -> const nlohmann::json & {
    auto it = state.find(key);
    if (it == state.end())
      fail(std::string("missing field '") + key + "'");
    return *it;
  };
  // Every number is a non-negative integer; only seed and rng_draws may use all 64 bits.
  auto unsignedInt = [&](const char *key) -> uint64_t {
    const nlohmann::json &v = field(key);
    if (!v.is_number_integer() || (!v.is_number_unsigned() && v.get<int64_t>() < 0))
      fail(std::string("field '") + key + "' is not a non-negative integer");
    return v.get<uint64_t>();
  };
  auto integer = [&](const char *key) -> int64_t {
    uint64_t v = unsignedInt(key);
    if (v > uint64_t(std::numeric_limits<int64_t>::max()))
      fail(std::string("field '") + key + "' is too large");
    return int64_t(v);
  };
  auto string = [&](const char *key) -> std::string {
    const nlohmann::json &v = field(key);
    if (!v.is_string())
      fail(std::string("field '") + key + "' is not a string");
    return v.get<std::string>();
  };
  if (string("format") != kStateFormat)
    fail("format is not '" + std::string(kStateFormat) + "'");
  if (integer("version") != kStateVersion)
    fail("version " + std::to_string(integer("version")) + " is not " +
         std::to_string(kStateVersion));
  auto same = [&](const std::string &what, const std::string &saved, const std::string &now) {
    if (saved != now)
      fail("saved with " + what + " " + saved + ", this run has " + now);
  };
  same("order", string("order"), windowOrderName(config_.order));
  same("seed", std::to_string(unsignedInt("seed")), std::to_string(config_.seed));
  same("batch", std::to_string(integer("batch")), std::to_string(config_.batch));
  same("seq", std::to_string(integer("seq")), std::to_string(config_.seq));
  same("train tokens", std::to_string(integer("train_tokens")), std::to_string(trainSize_));
  same("train data checksum", string("train_checksum"), hex64(checksum_));
  DataPosition p;
  p.rngDraws = unsignedInt("rng_draws");
  p.cursor = integer("cursor");
  p.epoch = integer("epoch");
  p.batches = integer("batches");
  p.windows = integer("windows");
  if (p.cursor + config_.seq + 1 > trainSize_)
    fail("cursor " + std::to_string(p.cursor) + " leaves no window in " +
         std::to_string(trainSize_) + " train tokens");
  rng_.seed(config_.seed);
  rng_.discard(p.rngDraws);
  pos_ = p;
}

void DataLoader::restoreString(const std::string &text) {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    throw Error("data loader state: not valid JSON");
  restore(j);
}

void writeTokenShard(const std::string &path, const std::vector<int32_t> &tokens, int version) {
  if (version != 1 && version != 2)
    throw Error(path + ": token shard version " + std::to_string(version) + " is not 1 or 2");
  if (tokens.size() > size_t(std::numeric_limits<int32_t>::max()))
    throw Error(path + ": " + std::to_string(tokens.size()) + " tokens do not fit a shard header");
  const size_t elem = version == 1 ? 2 : 4;
  std::vector<unsigned char> bytes(size_t(kHeaderBytes) + tokens.size() * elem);
  auto put = [&](size_t at, uint32_t v, size_t n) { // little-endian
    for (size_t b = 0; b < n; ++b)
      bytes[at + b] = (v >> (8 * b)) & 0xff;
  };
  put(0, uint32_t(kShardMagic), 4);
  put(4, uint32_t(version), 4);
  put(8, uint32_t(tokens.size()), 4);
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || (version == 1 && tokens[i] > 0xffff))
      throw Error(path + ": token " + std::to_string(i) + " = " + std::to_string(tokens[i]) +
                  " does not fit a version " + std::to_string(version) + " shard");
    put(size_t(kHeaderBytes) + i * elem, uint32_t(tokens[i]), elem);
  }
  std::string tmp = path + ".tmp";
  {
    File f(std::fopen(tmp.c_str(), "wb"));
    if (!f)
      throw Error(tmp + ": cannot write: " + std::strerror(errno));
    if (std::fwrite(bytes.data(), 1, bytes.size(), f.get()) != bytes.size() ||
        std::fflush(f.get()) != 0)
      throw Error(tmp + ": write error: " + std::strerror(errno));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec)
    throw Error(path + ": cannot rename " + inQuotes(tmp) + " into place: " + ec.message());
}

} // namespace tnlm::train
