//===- DataTest.cpp - the tnlm-train data loader ---------------------------===//
#include "runtime/train/Data.h"
#include "runtime/Error.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <sys/wait.h>
#include <unistd.h>

using namespace tnlm;
using namespace tnlm::train;
namespace fs = std::filesystem;

namespace {

class Data : public ::testing::Test {
protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "tnlm-data-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir = pattern;
  }
  void TearDown() override { fs::remove_all(dir); }

  std::string pathOf(const std::string &name) const { return (dir / name).string(); }

  std::string write(const std::string &name, const std::string &bytes) {
    fs::path p = dir / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }

  std::string shard(const std::string &name, const std::vector<int32_t> &tokens, int version = 1) {
    fs::path p = dir / name;
    fs::create_directories(p.parent_path());
    writeTokenShard(p.string(), tokens, version);
    return p.string();
  }

  // A text of n pseudo-random printable bytes (no EOS byte), for window tests.
  std::string text(size_t n, unsigned salt = 0) {
    std::string s;
    for (size_t i = 0; i < n; ++i)
      s.push_back(char('a' + (i * 7 + salt + i / 13) % 26));
    return s;
  }

  DataConfig config(const std::string &train, int64_t batch, int64_t seq) {
    DataConfig c;
    c.trainPath = train;
    c.batch = batch;
    c.seq = seq;
    return c;
  }

  fs::path dir;
};

std::vector<int32_t> bytesOf(const std::string &s) {
  return std::vector<int32_t>(reinterpret_cast<const unsigned char *>(s.data()),
                              reinterpret_cast<const unsigned char *>(s.data()) + s.size());
}

// The whole train stream, read back as one sequential window.
std::vector<int32_t> stream(DataConfig c) {
  c.order = WindowOrder::Sequential;
  c.batch = 1;
  c.seq = DataLoader::open(c).summary().trainTokens - 1;
  Batch b = DataLoader::open(c).next();
  std::vector<int32_t> all = b.ids;
  all.push_back(b.labels.back());
  return all;
}

// The message of the tnlm::Error that `f` throws ("" if none).
template <typename F> std::string errorOf(F &&f) {
  try {
    f();
  } catch (const Error &e) {
    return e.what();
  }
  return "";
}

#define EXPECT_ERROR(stmt, ...)                                                                    \
  do {                                                                                             \
    std::string message = errorOf([&] { stmt; });                                                  \
    ASSERT_FALSE(message.empty()) << "no tnlm::Error from " #stmt;                                 \
    for (const char *part : {__VA_ARGS__})                                                         \
      EXPECT_NE(message.find(part), std::string::npos) << "'" << part << "' not in: " << message;  \
  } while (0)

TEST_F(Data, TextBytesAreTokensAndLabelsAreShifted) {
  DataConfig c = config(write("a.txt", "hello!"), 1, 4);
  c.order = WindowOrder::Sequential;
  DataLoader d = DataLoader::open(c);
  EXPECT_EQ(d.summary().format, "text");
  EXPECT_EQ(d.summary().trainFiles, 1);
  EXPECT_EQ(d.summary().trainTokens, 6);
  Batch b = d.next();
  EXPECT_EQ(b.ids, bytesOf("hell"));
  EXPECT_EQ(b.labels, bytesOf("ello"));
}

TEST_F(Data, FolderIsRecursiveSortedAndJoinedWithEos) {
  write("b.txt", "BB");
  write("a.txt", "A");
  write("sub/c.txt", "CCC");
  write("sub/empty.txt", "");
  write(".hidden", "never");
  write(".git/x", "never");
  DataConfig c = config(dir.string(), 1, 2);
  c.eosId = 2;
  std::vector<int32_t> expected = bytesOf("A\2BB\2CCC");
  EXPECT_EQ(stream(c), expected);
  EXPECT_EQ(DataLoader::open(c).summary().trainFiles, 4);
  c.eosId = -1; // no separator
  EXPECT_EQ(stream(c), bytesOf("ABBCCC"));
}

TEST_F(Data, TokenShardsBothVersionsInPathOrder) {
  shard("s/b.bin", {5, 6, 7}, 2);
  shard("s/a.bin", {1, 2, 65535}, 1);
  write("s/README.md", "not read: a shard folder reads only *.bin");
  DataConfig c = config(pathOf("s"), 1, 2);
  c.vocabSize = 70000;
  EXPECT_EQ(stream(c), (std::vector<int32_t>{1, 2, 65535, 5, 6, 7}));
  DataLoader d = DataLoader::open(c);
  EXPECT_EQ(d.summary().format, "shards");
  EXPECT_EQ(d.summary().trainFiles, 2);
}

TEST_F(Data, ShardWithoutBinSuffixIsDetectedAndGlobsSelectFiles) {
  shard("data_train_0.bin", {1, 2, 3});
  shard("data_train_1.bin", {4, 5});
  shard("data_val_0.bin", {9, 9, 9});
  DataConfig c = config(pathOf("data_train_*.bin"), 1, 2);
  EXPECT_EQ(stream(c), (std::vector<int32_t>{1, 2, 3, 4, 5}));
  fs::rename(pathOf("data_val_0.bin"), pathOf("tokens.dat"));
  EXPECT_EQ(stream(config(pathOf("tokens.dat"), 1, 2)), (std::vector<int32_t>{9, 9, 9}));
  EXPECT_ERROR(DataLoader::open(config(pathOf("nothing_*.bin"), 1, 2)), "nothing_*.bin",
               "no file matches");
}

TEST_F(Data, SourceErrorsNameTheFileAndTheFault) {
  EXPECT_ERROR(DataLoader::open(config(pathOf("missing.txt"), 1, 4)), "missing.txt",
               "no such file or folder");
  write("empty/e.txt", "");
  EXPECT_ERROR(DataLoader::open(config(pathOf("empty"), 1, 4)), "empty", "no tokens");
  fs::create_directories(dir / "nofiles");
  EXPECT_ERROR(DataLoader::open(config(pathOf("nofiles"), 1, 4)), "holds no files");
  std::string shortText = write("short.txt", "abc");
  EXPECT_ERROR(DataLoader::open(config(shortText, 1, 4)), "short.txt", "3 tokens",
               "seq + 1 = 5 tokens");
  DataConfig small = config(write("t.txt", "hello world"), 1, 4);
  small.vocabSize = 100;
  small.eosId = 1;
  EXPECT_ERROR(DataLoader::open(small), "t.txt", "at least 256", "vocabulary size is 100");
  shard("mix/a.bin", {1, 2, 3});
  write("mix/b.txt", "text");
  fs::rename(pathOf("mix/a.bin"), pathOf("mix/a.tok")); // a shard by its magic, among text
  EXPECT_ERROR(DataLoader::open(config(pathOf("mix"), 1, 2)), "mixes token shards", "a.tok",
               "b.txt");
}

TEST_F(Data, UnreadableFile) {
  std::string f = write("locked.txt", "some text here");
  fs::permissions(f, fs::perms::none);
  if (geteuid() != 0) {
    EXPECT_ERROR(DataLoader::open(config(f, 1, 2)), "locked.txt", "cannot read");
    return;
  }
  // Root reads files whatever their mode: check as user nobody in a child process.
  fs::permissions(dir, fs::perms::owner_all | fs::perms::others_exec | fs::perms::group_exec);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    if (setgid(65534) != 0 || setuid(65534) != 0)
      _exit(3);
    try {
      DataLoader::open(config(f, 1, 2));
      _exit(2); // accepted an unreadable file
    } catch (const tnlm::Error &e) {
      std::string m = e.what();
      _exit(m.find("locked.txt") != std::string::npos && m.find("cannot read") != std::string::npos
                ? 0
                : 1);
    }
  }
  int status = 0;
  ASSERT_EQ(waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: wrong message, 2: accepted, 3: could not drop root";
}

TEST_F(Data, MalformedShards) {
  std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6};
  std::string good = shard("good.bin", tokens);
  std::string bytes;
  {
    std::ifstream in(good, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  auto patched = [&](size_t at, uint32_t v) {
    std::string b = bytes;
    for (int i = 0; i < 4; ++i)
      b[at + i] = char((v >> (8 * i)) & 0xff);
    return b;
  };
  EXPECT_ERROR(DataLoader::open(config(write("magic.bin", patched(0, 12345)), 1, 2)), "magic.bin",
               "header word 0 is 12345", "20240520");
  EXPECT_ERROR(DataLoader::open(config(write("version.bin", patched(4, 3)), 1, 2)), "version.bin",
               "version 3");
  EXPECT_ERROR(DataLoader::open(config(write("cut.bin", bytes.substr(0, bytes.size() - 3)), 1, 2)),
               "cut.bin", "says 6 tokens", "truncated");
  EXPECT_ERROR(DataLoader::open(config(write("long.bin", bytes + "xx"), 1, 2)), "long.bin",
               "trailing bytes");
  EXPECT_ERROR(DataLoader::open(config(write("tiny.bin", "abc"), 1, 2)), "tiny.bin",
               "not a token shard", "1024");
  DataConfig c = config(shard("vocab.bin", {1, 2, 300, 4}, 2), 1, 2);
  c.vocabSize = 256;
  EXPECT_ERROR(DataLoader::open(c), "vocab.bin", "token 2 ", "is 300", "vocabulary size 256");
}

TEST_F(Data, OptionErrors) {
  std::string f = write("t.txt", text(100));
  for (double bad : {-0.1, 1.0, 1.5, std::nan("")}) {
    DataConfig c = config(f, 1, 4);
    c.valFraction = bad;
    EXPECT_ERROR(DataLoader::open(c), "valFraction", "outside [0, 1)");
  }
  DataConfig both = config(f, 1, 4);
  both.valPath = f;
  both.valFraction = 0.1;
  EXPECT_ERROR(DataLoader::open(both), "either");
  EXPECT_ERROR(DataLoader::open(config(f, 0, 4)), "batch");
  EXPECT_ERROR(DataLoader::open(config(f, 1, 0)), "seq");
  EXPECT_ERROR(parseWindowOrder("shuffled"), "shuffled");
  EXPECT_EQ(parseWindowOrder(windowOrderName(WindowOrder::Sequential)), WindowOrder::Sequential);
}

TEST_F(Data, RandomWindowsAreSeededAndComeFromTheStream) {
  DataConfig c = config(write("t.txt", text(5000)), 4, 16);
  c.seed = 7;
  std::vector<int32_t> all = stream(c);
  DataLoader a = DataLoader::open(c), b = DataLoader::open(c);
  c.seed = 8;
  DataLoader other = DataLoader::open(c);
  bool differs = false;
  for (int step = 0; step < 20; ++step) {
    Batch x = a.next(), y = b.next(), z = other.next();
    ASSERT_EQ(x.ids.size(), 4u * 16u);
    EXPECT_EQ(x.ids, y.ids);
    EXPECT_EQ(x.labels, y.labels);
    differs |= x.ids != z.ids;
    for (int r = 0; r < 4; ++r) {
      const int32_t *ids = x.ids.data() + r * 16, *labels = x.labels.data() + r * 16;
      // The window is somewhere in the stream, and labels are the ids moved by one.
      auto at = std::search(all.begin(), all.end(), ids, ids + 16);
      ASSERT_NE(at, all.end());
      EXPECT_TRUE(std::equal(labels, labels + 16, at + 1));
    }
  }
  EXPECT_TRUE(differs);
  EXPECT_EQ(a.position().batches, 20);
  EXPECT_EQ(a.position().windows, 80);
  EXPECT_NEAR(a.epochs(), 80.0 * 16 / 5000, 1e-12);
}

TEST_F(Data, UniformIndexIsSpelledOut) {
  // The standard fixes mt19937_64's output: the 10000th of a default-seeded engine.
  std::mt19937_64 check;
  check.discard(9999);
  EXPECT_EQ(check(), 9981545732273789042ull);
  // Below the rejection limit the index is the raw output mod n, one draw each.
  std::mt19937_64 rng(123), raw(123);
  uint64_t draws = 0;
  for (int i = 0; i < 1000; ++i)
    EXPECT_EQ(uniformIndex(rng, 1000, draws), raw() % 1000);
  EXPECT_EQ(draws, 1000u);
  // n = 2^63 + 1 rejects about half of all outputs; every result is still below n.
  uint64_t n = (1ull << 63) + 1;
  draws = 0;
  for (int i = 0; i < 200; ++i)
    EXPECT_LT(uniformIndex(rng, n, draws), n);
  EXPECT_GT(draws, 250u);
  draws = 0;
  EXPECT_EQ(uniformIndex(rng, 1, draws), 0u);
}

TEST_F(Data, SequentialWindowsTileTheStreamAndCountEpochs) {
  // 23 tokens, seq 5: windows start at 0, 5, 10, 15 (15 + 6 <= 23); then epoch 1 starts.
  std::string t = text(23);
  DataConfig c = config(write("t.txt", t), 2, 5);
  c.order = WindowOrder::Sequential;
  DataLoader d = DataLoader::open(c);
  std::vector<int32_t> all = bytesOf(t);
  std::vector<int> starts = {0, 5, 10, 15, 0, 5, 10, 15};
  for (int step = 0; step < 4; ++step) {
    Batch b = d.next();
    for (int r = 0; r < 2; ++r) {
      int s = starts[size_t(step * 2 + r)];
      EXPECT_TRUE(std::equal(b.ids.begin() + r * 5, b.ids.begin() + r * 5 + 5, all.begin() + s));
      EXPECT_TRUE(
          std::equal(b.labels.begin() + r * 5, b.labels.begin() + r * 5 + 5, all.begin() + s + 1));
    }
    EXPECT_EQ(d.position().epoch, step < 1 ? 0 : step < 3 ? 1 : 2);
  }
  EXPECT_DOUBLE_EQ(d.epochs(), 2.0);
}

TEST_F(Data, ResumeReproducesTheUninterruptedRun) {
  for (WindowOrder order : {WindowOrder::Random, WindowOrder::Sequential}) {
    DataConfig c = config(write("t.txt", text(3000)), 3, 32);
    c.order = order;
    c.seed = 99;
    DataLoader original = DataLoader::open(c);
    for (int i = 0; i < 37; ++i)
      original.next();
    std::string saved = original.stateString();
    // Through text and back, as a checkpoint would store it.
    nlohmann::json json = nlohmann::json::parse(saved);
    DataLoader resumed = DataLoader::open(c), resumed2 = DataLoader::open(c);
    resumed.restoreString(saved);
    resumed2.restore(json);
    EXPECT_EQ(resumed.position().batches, 37);
    for (int i = 0; i < 50; ++i) {
      Batch x = original.next(), y = resumed.next(), z = resumed2.next();
      ASSERT_EQ(x.ids, y.ids) << windowOrderName(order) << " batch " << i;
      ASSERT_EQ(x.labels, y.labels);
      ASSERT_EQ(x.ids, z.ids);
    }
    EXPECT_EQ(original.stateString(), resumed.stateString());
  }
}

TEST_F(Data, RestoreRefusesAStateOfOtherDataOrSettings) {
  DataConfig c = config(write("t.txt", text(3000)), 2, 16);
  DataLoader d = DataLoader::open(c);
  d.next();
  nlohmann::json state = d.state();

  DataConfig otherSeq = c;
  otherSeq.seq = 17;
  EXPECT_ERROR(DataLoader::open(otherSeq).restore(state), "seq 16", "this run has 17");
  DataConfig otherSeed = c;
  otherSeed.seed = 1;
  EXPECT_ERROR(DataLoader::open(otherSeed).restore(state), "seed");
  DataConfig otherData = config(write("u.txt", text(3000, 5)), 2, 16);
  EXPECT_ERROR(DataLoader::open(otherData).restore(state), "checksum");
  nlohmann::json broken = state;
  broken.erase("rng_draws");
  EXPECT_ERROR(DataLoader::open(c).restore(broken), "rng_draws");
  EXPECT_ERROR(DataLoader::open(c).restoreString("{not json"), "not valid JSON");
}

TEST_F(Data, ValidationSplitPrefersADocumentBoundary) {
  // Documents of 900 and 100 bytes + 1 EOS: valFraction 0.1 targets the last 100 tokens; the
  // boundary after the EOS (token 901, 100 tokens of validation) is within tolerance.
  write("docs/a.txt", std::string(900, 'a'));
  write("docs/b.txt", std::string(100, 'b'));
  DataConfig c = config(pathOf("docs"), 2, 8);
  c.valFraction = 0.1;
  c.evalBatches = 3;
  DataLoader d = DataLoader::open(c);
  EXPECT_EQ(d.summary().valSplit, "split at a document boundary");
  EXPECT_EQ(d.summary().trainTokens, 901);
  EXPECT_EQ(d.summary().valTokens, 100);
  ASSERT_EQ(d.validationBatches().size(), 3u);
  for (const Batch &b : d.validationBatches())
    for (int32_t id : b.ids)
      EXPECT_EQ(id, 'b');

  // One document: no boundary, so the split is at the token (the last 101 tokens of 1001).
  write("one.txt", std::string(1001, 'x'));
  c.trainPath = pathOf("one.txt");
  DataLoader t = DataLoader::open(c);
  EXPECT_EQ(t.summary().valSplit, "split at a token boundary");
  EXPECT_EQ(t.summary().valTokens, 100);
  EXPECT_EQ(t.summary().trainTokens, 901);
}

TEST_F(Data, ValidationBatchesAreFixedAndSpanTheStream) {
  std::string v = text(400, 3);
  DataConfig c = config(write("train.txt", text(2000)), 2, 10);
  c.valPath = write("val.txt", v);
  c.evalBatches = 4;
  DataLoader a = DataLoader::open(c);
  EXPECT_EQ(a.summary().valFiles, 1);
  EXPECT_EQ(a.summary().valTokens, 400);
  const std::vector<Batch> &vb = a.validationBatches();
  ASSERT_EQ(vb.size(), 4u);
  std::vector<int32_t> all = bytesOf(v);
  // Eight windows from the first (start 0) to the last (start 389).
  EXPECT_TRUE(std::equal(vb[0].ids.begin(), vb[0].ids.begin() + 10, all.begin()));
  EXPECT_TRUE(std::equal(vb[3].labels.end() - 10, vb[3].labels.end(), all.end() - 10));
  for (int i = 0; i < 5; ++i)
    a.next(); // training batches do not move the validation set
  DataLoader b = DataLoader::open(c);
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(a.validationBatches()[i].ids, b.validationBatches()[i].ids);
    EXPECT_EQ(a.validationBatches()[i].labels, b.validationBatches()[i].labels);
  }
  EXPECT_NE(a.describe().find("val 400 tokens (1 file)"), std::string::npos) << a.describe();
}

TEST_F(Data, ShortValidationAndTrainAfterTheSplit) {
  DataConfig c = config(write("t.txt", text(100)), 1, 16);
  c.valFraction = 0.05; // 5 tokens of validation
  EXPECT_ERROR(DataLoader::open(c), "validation data", "t.txt", "5 tokens", "seq + 1 = 17");
  c.valFraction = 0.9; // 10 tokens of train
  EXPECT_ERROR(DataLoader::open(c), "train data", "10 tokens before the validation split");
  c.valFraction = 0;
  c.valPath = write("v.txt", "tiny");
  EXPECT_ERROR(DataLoader::open(c), "validation data", "v.txt", "4 tokens");
  c.valPath = shard("v.bin", {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17});
  EXPECT_ERROR(DataLoader::open(c), "is shards but the train data is text");
}

TEST_F(Data, NoValidationAndDescribe) {
  DataConfig c = config(write("t.txt", text(1234)), 1, 8);
  c.evalBatches = 2;
  DataLoader d = DataLoader::open(c);
  EXPECT_FALSE(d.hasValidation());
  EXPECT_TRUE(d.validationBatches().empty());
  EXPECT_EQ(d.describe(), "data: text, 1 file; train 1,234 tokens, no validation");
}

TEST_F(Data, NextIntoCallerArrays) {
  DataConfig c = config(write("t.txt", text(500)), 2, 8);
  DataLoader a = DataLoader::open(c), b = DataLoader::open(c);
  std::vector<int32_t> ids(16), labels(16);
  a.next(ids.data(), labels.data());
  Batch x = b.next();
  EXPECT_EQ(ids, x.ids);
  EXPECT_EQ(labels, x.labels);
}

} // namespace
