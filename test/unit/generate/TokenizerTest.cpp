//===- TokenizerTest.cpp - byte and SentencePiece tokenizers, streaming ---===//
#include "runtime/generate/Tokenizer.h"
#include "runtime/Error.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <sys/wait.h>
#include <unistd.h>

using namespace tnlm;
using namespace tnlm::generate;
namespace fs = std::filesystem;

namespace {

// Strict UTF-8 validity (no overlongs, surrogates or code points above U+10FFFF).
bool validUtf8(const std::string &s) {
  size_t i = 0;
  while (i < s.size()) {
    uint8_t c = uint8_t(s[i]);
    size_t n = c < 0x80             ? 0
               : (c & 0xE0) == 0xC0 ? 1
               : (c & 0xF0) == 0xE0 ? 2
               : (c & 0xF8) == 0xF0 ? 3
                                    : 9;
    if (n == 9 || i + n >= s.size())
      return false; // not a lead byte, or the sequence is cut off
    uint32_t cp = n == 0 ? c : n == 1 ? c & 0x1F : n == 2 ? c & 0x0F : c & 0x07;
    for (size_t k = 1; k <= n; ++k) {
      uint8_t d = uint8_t(s[i + k]);
      if ((d & 0xC0) != 0x80)
        return false;
      cp = (cp << 6) | (d & 0x3F);
    }
    static const uint32_t minCp[] = {0, 0x80, 0x800, 0x10000};
    if (cp < minCp[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n + 1;
  }
  return true;
}

struct Streamed {
  std::vector<std::string> pieces; // what each push() returned, then finish()
  std::string text;                // their concatenation
};

Streamed stream(const Tokenizer &t, const std::vector<int32_t> &ids,
                std::vector<int32_t> context = {}) {
  StreamDecoder d(t, std::move(context));
  Streamed s;
  for (int32_t id : ids)
    s.pieces.push_back(d.push(id));
  s.pieces.push_back(d.finish());
  for (const auto &p : s.pieces)
    s.text += p;
  return s;
}

template <typename F> std::string errorOf(F &&f) {
  try {
    f();
  } catch (const Error &e) {
    return e.what();
  }
  return "(no tnlm::Error thrown)";
}

bool contains(const std::string &s, const std::string &part) {
  return s.find(part) != std::string::npos;
}

const std::string kUtf8 =
    "h\xC3\xA9llo w\xC3\xB6rld \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E "
    "\xF0\x9F\x99\x82!"; // "héllo wörld — 日本語 🙂!"

} // namespace

//===----------------------------------------------------------------------===//
// Bytes
//===----------------------------------------------------------------------===//

TEST(ByteTokenizer, RoundTripsEveryByte) {
  ByteTokenizer t;
  EXPECT_EQ(t.vocabSize(), 256);
  std::string all;
  for (int b = 0; b < 256; ++b)
    all.push_back(char(b));
  for (const std::string &s : {std::string("plain ascii, with punctuation!"), kUtf8, all,
                               std::string(), std::string("\xFF\xFE broken \xE6\x97")}) {
    auto ids = t.encode(s);
    ASSERT_EQ(ids.size(), s.size());
    for (size_t i = 0; i < s.size(); ++i)
      EXPECT_EQ(ids[i], int32_t(uint8_t(s[i])));
    EXPECT_EQ(t.decode(ids), s);
  }
}

TEST(ByteTokenizer, SpecialIdsAreJustBytes) {
  // The tiny models' BOS 1 / EOS 2 are also the bytes 0x01 / 0x02: encode maps bytes only.
  TokenizerOptions o;
  o.bosId = 1;
  o.eosId = 2;
  ByteTokenizer t(256, o);
  EXPECT_EQ(t.bosId(), 1);
  EXPECT_EQ(t.eosId(), 2);
  EXPECT_EQ(t.encode("\x01x\x02"), (std::vector<int32_t>{1, 'x', 2}));
  EXPECT_EQ(t.decode({1, 'x', 2}), "\x01x\x02");
  o.addBos = o.addEos = true;
  ByteTokenizer be(256, o);
  EXPECT_EQ(be.encode("ab"), (std::vector<int32_t>{1, 'a', 'b', 2}));
  // Asking for BOS without an id is refused; so is an id outside the vocabulary.
  TokenizerOptions none;
  none.addBos = true;
  EXPECT_THROW(ByteTokenizer(256, none), Error);
  TokenizerOptions big;
  big.eosId = 256;
  EXPECT_THROW(ByteTokenizer(256, big), Error);
  EXPECT_EQ(ByteTokenizer().bosId(), -1);
}

TEST(ByteTokenizer, LargerVocabularies) {
  ByteTokenizer t(260);
  EXPECT_EQ(t.vocabSize(), 260);
  EXPECT_EQ(t.decode({'a', 256, 259, 'b'}), "ab"); // ids past the bytes have no text
  EXPECT_THROW(t.decode({260}), Error);
  EXPECT_THROW(t.decode({-1}), Error);
  EXPECT_THROW(ByteTokenizer(255), Error);
  EXPECT_THROW(ByteTokenizer().decode({256}), Error);
}

TEST(ByteTokenizer, LoadTokenizerBytes) {
  auto t = loadTokenizer("bytes", 256);
  EXPECT_EQ(t->vocabSize(), 256);
  EXPECT_EQ(loadTokenizer("bytes", 512)->vocabSize(), 512);
  std::string e = errorOf([] { loadTokenizer("bytes", 100); });
  EXPECT_TRUE(contains(e, "256") && contains(e, "100")) << e;
  EXPECT_THROW(loadTokenizer("", 256), Error);
}

TEST(StreamDecoder, EndsIncomplete) {
  EXPECT_FALSE(StreamDecoder::endsIncomplete(""));
  EXPECT_FALSE(StreamDecoder::endsIncomplete("abc"));
  EXPECT_TRUE(StreamDecoder::endsIncomplete("a\xE6"));
  EXPECT_TRUE(StreamDecoder::endsIncomplete("a\xE6\x97"));
  EXPECT_FALSE(StreamDecoder::endsIncomplete("a\xE6\x97\xA5"));
  EXPECT_TRUE(StreamDecoder::endsIncomplete("\xF0\x9F\x99"));
  EXPECT_FALSE(StreamDecoder::endsIncomplete("\xF0\x9F\x99\x82"));
  EXPECT_TRUE(StreamDecoder::endsIncomplete("\xC3"));
  EXPECT_FALSE(StreamDecoder::endsIncomplete("\xC3\xA9"));
  EXPECT_TRUE(StreamDecoder::endsIncomplete("x\xEF\xBF\xBD")); // U+FFFD
  EXPECT_FALSE(StreamDecoder::endsIncomplete("\x80"));         // invalid, not incomplete
  EXPECT_FALSE(StreamDecoder::endsIncomplete("a\xFF"));
}

TEST(StreamDecoder, BytesHoldBackIncompleteUtf8) {
  ByteTokenizer t;
  const std::string text = "a\xE6\x97\xA5\xF0\x9F\x99\x82"
                           "b"; // a日🙂b
  Streamed s = stream(t, t.encode(text));
  std::vector<std::string> want = {"a", "", "", "\xE6\x97\xA5", "", "", "", "\xF0\x9F\x99\x82",
                                   "b", ""};
  EXPECT_EQ(s.pieces, want);
  EXPECT_EQ(s.text, text);

  // Every piece of a longer text is whole UTF-8, and the pieces add up to the text.
  Streamed u = stream(t, t.encode(kUtf8));
  for (const auto &p : u.pieces)
    EXPECT_TRUE(validUtf8(p)) << p;
  EXPECT_EQ(u.text, kUtf8);

  // An incomplete tail stays held until finish(), which returns it as decoded (raw bytes).
  StreamDecoder d(t);
  EXPECT_EQ(d.push('x'), "x");
  EXPECT_EQ(d.push(0xE6), "");
  EXPECT_EQ(d.push(0x97), "");
  EXPECT_EQ(d.finish(), "\xE6\x97");
  EXPECT_EQ(d.finish(), "");
  EXPECT_EQ(d.push('y'), "y"); // pushing after finish() goes on

  // Context text is not emitted.
  Streamed c = stream(t, t.encode(" there"), t.encode("hi"));
  EXPECT_EQ(c.text, " there");

  // Long streams (the window is trimmed) still add up.
  std::string longText;
  for (int i = 0; i < 3000; ++i)
    longText += (i % 7 == 0) ? std::string("\xE2\x80\x94") : std::string(1, char('a' + i % 26));
  EXPECT_EQ(stream(t, t.encode(longText)).text, longText);
}

//===----------------------------------------------------------------------===//
// SentencePiece: models trained here with spm_train on generated text
//===----------------------------------------------------------------------===//

namespace {

class SentencePiece : public ::testing::Test {
protected:
  static fs::path dir;
  static std::string setupError; // why the models could not be made (the tests then fail)
  static std::string unigram, bpeBytes;

  // Generated text: words of consonant-vowel syllables, some UTF-8 words, punctuation.
  static std::string corpus() {
    uint64_t x = 88172645463325252ull;
    auto next = [&] {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      return x;
    };
    const std::string cons = "bcdfghklmnprstvz", vow = "aeiou";
    std::vector<std::string> words;
    for (int w = 0; w < 400; ++w) {
      std::string s;
      for (uint64_t k = 0, n = 1 + next() % 3; k < n; ++k)
        s += std::string(1, cons[next() % cons.size()]) + vow[next() % vow.size()];
      words.push_back(s);
    }
    // Every ASCII letter and digit occurs, so test texts need no unknown pieces.
    for (const char *a :
         {"Hello",  "world", "two",       "spaces",  "and",  "trailing", "one", "The",
          "quick",  "brown", "fox",       "jumps",   "over", "lazy",     "dog", "0123456789",
          "QWERTY", "UIOP",  "ASDFGHJKL", "ZXCVBNM", "ok",   "yes"})
      words.push_back(a);
    for (const char *u : {"caf\xC3\xA9", "na\xC3\xAFve",
                          "\xC3\xBC"
                          "ber",
                          "stra\xC3\x9F"
                          "e",
                          "\xE6\x97\xA5\xE6\x9C\xAC", "\xE8\xAA\x9E",
                          "\xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82"})
      words.push_back(u);
    const char *ends[] = {".", ",", "!", "?", " (yes)", " -- ok;"};
    std::string text;
    for (int line = 0; line < 2000; ++line) {
      for (uint64_t k = 0, n = 3 + next() % 10; k < n; ++k)
        text += (k ? " " : "") + words[next() % words.size()];
      text += std::string(ends[next() % 6]) + "\n";
    }
    return text;
  }

  static std::string train(const std::string &name, const std::string &extra) {
    std::string spm = TNLM_SPM_TRAIN;
    if (spm.empty())
      spm = "spm_train"; // not found at configure time: try PATH, fail loudly below
    fs::path log = dir / (name + ".log");
    // Identity normalization and kept whitespace make round trips exact (as in the
    // LLaMA-style tokenizers the released checkpoints use).
    std::string cmd = spm + " --input=" + (dir / "corpus.txt").string() +
                      " --model_prefix=" + (dir / name).string() +
                      " --character_coverage=1.0 --normalization_rule_name=identity"
                      " --remove_extra_whitespaces=false --num_threads=1 " +
                      extra + " > " + log.string() + " 2>&1";
    int rc = std::system(cmd.c_str());
    std::string model = (dir / (name + ".model")).string();
    if (rc != 0 || !fs::exists(model)) {
      std::ifstream in(log);
      std::stringstream ss;
      ss << in.rdbuf();
      setupError = "spm_train failed (exit " +
                   std::to_string(WIFEXITED(rc) ? WEXITSTATUS(rc) : rc) +
                   "); it comes with the Debian package sentencepiece: run scripts/setup.\n" +
                   "command: " + cmd + "\noutput:\n" + ss.str();
    }
    return model;
  }

  static void SetUpTestSuite() {
    std::string pattern = (fs::temp_directory_path() / "tnlm-spm-XXXXXX").string();
    if (!mkdtemp(pattern.data())) {
      setupError = "mkdtemp failed";
      return;
    }
    dir = pattern;
    std::ofstream(dir / "corpus.txt", std::ios::binary) << corpus();
    unigram = train("unigram", "--model_type=unigram --vocab_size=300");
    if (setupError.empty())
      bpeBytes = train("bpe", "--model_type=bpe --vocab_size=400 --byte_fallback=true");
  }
  static void TearDownTestSuite() {
    if (!dir.empty())
      fs::remove_all(dir);
  }

  void SetUp() override {
    if (!SentencePieceTokenizer::available())
      FAIL() << "this build has no SentencePiece support: install libsentencepiece-dev "
                "(scripts/setup) and reconfigure";
    if (!setupError.empty())
      FAIL() << setupError;
  }

  std::string write(const std::string &name, const std::string &bytes) {
    fs::path p = dir / name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p.string();
  }

  // Round trip + streaming checks shared by both models.
  static void checkText(const Tokenizer &t, const std::string &s) {
    auto ids = t.encode(s);
    EXPECT_EQ(t.decode(ids), s);
    Streamed st = stream(t, ids);
    EXPECT_EQ(st.text, s);
    for (const auto &p : st.pieces)
      EXPECT_TRUE(validUtf8(p)) << "a streamed piece is not whole UTF-8 in: " << s;
  }
};

fs::path SentencePiece::dir;
std::string SentencePiece::setupError, SentencePiece::unigram, SentencePiece::bpeBytes;

const std::vector<std::string> kTexts = {
    "bako dira lumo",                                                // plain ASCII
    "  two  spaces   and a trailing one ",                           // spaces
    "Hello, world! (yes) -- ok; ke? mu.",                            // punctuation
    "caf\xC3\xA9 na\xC3\xAFve \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E " // UTF-8 seen in training
    "\xD0\xBF\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82",
};

} // namespace

TEST_F(SentencePiece, UnigramRoundTripsAndStreams) {
  auto t = loadTokenizer(unigram, 300);
  EXPECT_EQ(t->vocabSize(), 300);
  EXPECT_EQ(t->bosId(), 1); // spm_train's defaults: <unk> 0, <s> 1, </s> 2
  EXPECT_EQ(t->eosId(), 2);
  EXPECT_TRUE(contains(t->describe(), "sentencepiece")) << t->describe();
  for (const auto &s : kTexts)
    checkText(*t, s);
  // Released checkpoints: no BOS/EOS added unless asked.
  auto ids = t->encode("bako");
  EXPECT_NE(ids.front(), 1);
  TokenizerOptions o;
  o.addBos = o.addEos = true;
  auto be = loadTokenizer(unigram, 300, o);
  auto withSpecials = be->encode("bako");
  EXPECT_EQ(withSpecials.front(), 1);
  EXPECT_EQ(withSpecials.back(), 2);
  EXPECT_EQ(be->decode(withSpecials), "bako"); // control pieces have no text
  EXPECT_EQ(stream(*be, withSpecials).text, "bako");
}

TEST_F(SentencePiece, ByteFallbackStreamsWholeCharacters) {
  auto t = loadTokenizer(bpeBytes, 400);
  for (const auto &s : kTexts)
    checkText(*t, s);
  // Characters never seen in training become byte pieces: the decoder holds them back
  // until the character is whole.
  const std::string unseen = "ok \xF0\x9F\x99\x82 \xE6\xBC\xA2\xE5\xAD\x97 ok"; // ok 🙂 漢字 ok
  checkText(*t, unseen);
  Streamed s = stream(*t, t->encode(unseen));
  int held = 0;
  for (const auto &p : s.pieces)
    held += p.empty();
  EXPECT_GE(held, 3 + 2 + 2) << "byte pieces of 🙂 and 漢字 should be held back";
  // An incomplete character at the end comes out of finish() as SentencePiece renders it.
  auto ids = t->encode("\xF0\x9F\x99\x82");
  ids.pop_back();
  Streamed cut = stream(*t, ids);
  EXPECT_EQ(cut.text, t->decode(ids));
  for (size_t i = 0; i + 1 < cut.pieces.size(); ++i)
    EXPECT_EQ(cut.pieces[i], "");
}

TEST_F(SentencePiece, StreamingKeepsTheLeadingSpaceRule) {
  auto t = loadTokenizer(unigram, 300);
  const std::string text = "bako dira lumo kesa";
  auto ids = t->encode(text);
  ASSERT_GE(ids.size(), 4u);
  // Decoded alone, a word piece loses its space; after its context it keeps it.
  for (size_t cut = 1; cut < ids.size(); ++cut) {
    std::vector<int32_t> context(ids.begin(), ids.begin() + long(cut));
    std::vector<int32_t> rest(ids.begin() + long(cut), ids.end());
    std::string full = t->decode(ids), before = t->decode(context);
    ASSERT_EQ(full.compare(0, before.size(), before), 0);
    EXPECT_EQ(stream(*t, rest, context).text, full.substr(before.size())) << "cut " << cut;
  }
  // The first generated word after a prompt keeps its space.
  auto prompt = t->encode("bako");
  auto gen = t->encode(" dira");
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), gen.begin(), gen.end());
  EXPECT_EQ(stream(*t, gen, prompt).text, t->decode(all).substr(t->decode(prompt).size()));
  EXPECT_EQ(stream(*t, gen, prompt).text.substr(0, 1), " ");
  // BOS as the whole context: the first word is stripped exactly as decode() strips it.
  std::vector<int32_t> withBos = {t->bosId()};
  withBos.insert(withBos.end(), ids.begin(), ids.end());
  EXPECT_EQ(stream(*t, ids, {t->bosId()}).text, t->decode(withBos));
  EXPECT_EQ(stream(*t, ids, {t->bosId()}).text, text);
}

TEST_F(SentencePiece, VocabularyMismatchIsRefused) {
  for (int64_t modelVocab : {299, 301, 64000}) {
    std::string e = errorOf([&] { loadTokenizer(unigram, modelVocab); });
    EXPECT_TRUE(contains(e, unigram)) << e;
    EXPECT_TRUE(contains(e, "300")) << e;
    EXPECT_TRUE(contains(e, std::to_string(modelVocab))) << e;
  }
}

TEST_F(SentencePiece, CheckpointFolder) {
  fs::path folder = dir / "checkpoint";
  fs::create_directories(folder);
  fs::copy_file(unigram, folder / "tokenizer.model", fs::copy_options::overwrite_existing);
  EXPECT_EQ(loadTokenizer(folder.string(), 300)->vocabSize(), 300);
  fs::path empty = dir / "empty-checkpoint";
  fs::create_directories(empty);
  std::string e = errorOf([&] { loadTokenizer(empty.string(), 300); });
  EXPECT_TRUE(contains(e, empty.string()) && contains(e, "tokenizer.model")) << e;
}

TEST_F(SentencePiece, BadFilesAreRefused) {
  std::string junk;
  uint32_t x = 12345;
  for (int i = 0; i < 4096; ++i) {
    x = x * 1664525u + 1013904223u;
    junk.push_back(char(x >> 24));
  }
  std::string missing = (dir / "no-such.model").string();
  for (const std::string &path :
       {missing, write("empty.model", ""), write("junk.model", junk),
        write("text.model", "this is not a tokenizer\n"), dir.string() + "/"}) {
    std::string e = errorOf([&] { loadTokenizer(path, 300); });
    std::string name = path == dir.string() + "/" ? dir.string() : path;
    EXPECT_TRUE(contains(e, name)) << "for " << path << ": " << e;
  }
  EXPECT_TRUE(contains(errorOf([&] { SentencePieceTokenizer tk(missing); }), "does not exist"));
  // A folder given straight to the tokenizer class (not via loadTokenizer).
  EXPECT_TRUE(contains(errorOf([&] { SentencePieceTokenizer tk(dir.string()); }), "folder"));
  // Out-of-range ids are refused at decode.
  auto t = loadTokenizer(unigram, 300);
  EXPECT_THROW(t->decode({300}), Error);
  EXPECT_THROW(t->decode({-1}), Error);
}
