//===- Data.h - training data for tnlm-train ---------------------*- C++ -*-===//
//
// Reads the training (and validation) tokens once and hands out batches of windows.
//
// Sources (a path: one file, a folder searched recursively, or a glob pattern in the last
// component, matched in that folder only, e.g. "data/fineweb_train_*.bin"):
//   * text, for byte-vocabulary models (vocab >= 256): every file is one document whose bytes
//     are its token ids; documents are joined with DataConfig::eosId between them.
//   * token shards in the llm.c format: a header of 256 little-endian int32 ([0] = 20240520,
//     [1] = 1 for uint16 tokens or 2 for uint32, [2] = token count), then the tokens. Shards
//     are concatenated as they are (they carry their own end-of-text tokens).
// A file whose name ends in ".bin" must be a shard; any other file is a shard if it starts
// with the magic and text otherwise. A folder holding any *.bin file is a shard folder and
// only its *.bin files are read; otherwise every file is read, except files that hold a NUL
// byte in their first 4 KiB (binary, e.g. fortune's .dat indexes) and links to files already
// read (each file once, by its canonical path). Names starting with '.' are
// skipped and files are taken in bytewise order of their paths, so the stream is the same on
// every machine. One source may not mix text and shards.
//
// All tokens are held as one int32 stream in memory (4 bytes a token: fine for the data
// sizes tnlm-train is meant for; a memory-mapped reader would replace this for billions).
//
// Windows are seq + 1 consecutive tokens: ids = the first seq, labels = the last seq (label
// t is the token after id t, as tnlm.cross_entropy expects). Windows may span documents.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_TRAIN_DATA_H
#define TNLM_RUNTIME_TRAIN_DATA_H

#include <nlohmann/json.hpp>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace tnlm::train {

/// The llm.c token-shard magic (header word 0).
constexpr int32_t kShardMagic = 20240520;
/// Header words of a token shard (256 int32 = 1024 bytes).
constexpr int64_t kShardHeaderWords = 256;

enum class WindowOrder {
  /// Window starts drawn uniformly from all seq + 1 windows of the train stream (seeded).
  Random,
  /// Consecutive windows: each starts seq tokens after the previous one, so every token is an
  /// input once per epoch; when the next window would run past the end, the epoch counter goes
  /// up and the cursor returns to 0.
  Sequential,
};

/// "random" / "sequential"; parseWindowOrder throws tnlm::Error on anything else.
const char *windowOrderName(WindowOrder order);
WindowOrder parseWindowOrder(const std::string &name);

struct DataConfig {
  std::string trainPath;
  /// A separate validation source; empty: split the last valFraction of the train stream.
  std::string valPath;
  /// In [0, 1); 0 with no valPath means no validation. Not allowed together with valPath.
  /// The validation set is the last floor(valFraction·N) tokens of the train stream, moved to
  /// the nearest document boundary (just after an eosId token; the earlier on a tie) if one
  /// lies within a tenth of that size and both sides keep a window; otherwise the split is at
  /// that exact token. Windows never cross the split.
  double valFraction = 0.0;
  int64_t vocabSize = 256;
  /// Separates text documents; for shards, a token after which the validation split may be
  /// placed (a document boundary). Negative: no separator.
  int32_t eosId = 2;
  int64_t batch = 1;
  int64_t seq = 128;
  WindowOrder order = WindowOrder::Random;
  uint64_t seed = 0;
  /// Size of the fixed validation set, in batches (0: none).
  int64_t evalBatches = 0;
};

/// ids and labels are row-major [batch, seq].
struct Batch {
  int64_t batch = 0;
  int64_t seq = 0;
  std::vector<int32_t> ids;
  std::vector<int32_t> labels;
};

/// Numbers for progress lines.
struct DataSummary {
  std::string format; // "text" or "shards"
  int64_t trainFiles = 0;
  int64_t valFiles = 0; // 0 when validation is split from the train source
  int64_t skippedBinary = 0; // files of a text folder skipped as binary (a NUL in 4 KiB)
  int64_t trainTokens = 0;
  int64_t valTokens = 0;
  /// How the validation set was made: "none", "separate source", "split at a document
  /// boundary" or "split at a token boundary".
  std::string valSplit = "none";
};

/// The loader's position; plain numbers so it round-trips through JSON exactly.
struct DataPosition {
  uint64_t rngDraws = 0; // 64-bit outputs taken from the generator since seeding
  int64_t cursor = 0;    // sequential: start of the next window
  int64_t epoch = 0;     // sequential: completed passes; random: not used (0)
  int64_t batches = 0;   // batches handed out
  int64_t windows = 0;   // windows handed out
};

class DataLoader {
public:
  /// Reads and validates every file. Throws tnlm::Error naming the file and the fault: missing
  /// path, unreadable file, no tokens, fewer than seq + 1 tokens in train or validation, a
  /// malformed or truncated shard, a token id >= vocabSize, text for a vocabulary below 256,
  /// or a bad option (valFraction outside [0, 1), batch or seq < 1, ...).
  static DataLoader open(const DataConfig &config);

  const DataConfig &config() const { return config_; }
  const DataSummary &summary() const { return summary_; }
  /// One line, e.g. "data: text, 3 files; train 1,234,567 tokens, val 12,470 tokens (split at
  /// a document boundary)".
  std::string describe() const;

  /// The next training batch.
  Batch next();
  /// The same, written into caller-owned arrays of batch·seq int32 each.
  void next(int32_t *ids, int32_t *labels);

  bool hasValidation() const { return valSize_ > 0; }
  /// evalBatches batches of windows spread evenly over the validation stream, from first to
  /// last window (overlapping when the stream holds fewer windows); the same on every call.
  /// Empty without validation or with evalBatches = 0.
  const std::vector<Batch> &validationBatches() const { return valBatches_; }

  const DataPosition &position() const { return pos_; }
  /// Passes over the train stream so far: sequential, epoch + cursor / train tokens; random,
  /// windows·seq / train tokens (tokens seen as inputs, in train-stream sizes).
  double epochs() const;

  /// The position plus what it depends on (order, seed, batch, seq, train token count and
  /// checksum), as a small JSON object; restore() refuses a state saved for other data or
  /// settings, naming what differs. After restore the next batches are exactly those an
  /// uninterrupted loader would have produced. Restoring a random-order state replays the
  /// generator (rngDraws outputs; about a second per 10^8).
  nlohmann::json state() const;
  void restore(const nlohmann::json &state);
  std::string stateString() const { return state().dump(); }
  void restoreString(const std::string &text);

private:
  DataLoader() = default;
  int64_t nextStart();
  void writeWindow(const int32_t *stream, int64_t start, int32_t *ids, int32_t *labels) const;

  DataConfig config_;
  DataSummary summary_;
  std::vector<int32_t> tokens_;    // train source (and the split-off validation tail)
  std::vector<int32_t> valTokens_; // a separate validation source
  int64_t trainSize_ = 0;          // train = tokens_[0, trainSize_)
  int64_t valSize_ = 0;            // the tail of tokens_, or all of valTokens_
  uint64_t checksum_ = 0;          // FNV-1a over the train tokens
  std::vector<Batch> valBatches_;
  std::mt19937_64 rng_;
  DataPosition pos_;
};

/// Draws a uniform integer in [0, n) from `rng`, n >= 1: rejection of the top 2^64 mod n
/// values, then modulo. Spelled out so that every standard library gives the same sequence
/// (std::uniform_int_distribution's algorithm is implementation-defined). `draws` counts the
/// generator outputs used.
uint64_t uniformIndex(std::mt19937_64 &rng, uint64_t n, uint64_t &draws);

/// Writes an llm.c token shard (version 1 = uint16 tokens, 2 = uint32). For tests and for
/// tools that convert data; throws tnlm::Error on a token that does not fit or an I/O error.
void writeTokenShard(const std::string &path, const std::vector<int32_t> &tokens, int version = 1);

} // namespace tnlm::train

#endif // TNLM_RUNTIME_TRAIN_DATA_H
