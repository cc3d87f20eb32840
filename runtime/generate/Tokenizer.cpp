//===- Tokenizer.cpp - text <-> token ids for generation ----------------===//
#include "runtime/generate/Tokenizer.h"
#include "runtime/Error.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>

#if TNLM_HAVE_SENTENCEPIECE
#include <sentencepiece_processor.h>
#endif

namespace fs = std::filesystem;

namespace tnlm::generate {

namespace {

std::string idRangeError(const std::string &who, int32_t id, int64_t vocab) {
  return who + ": token id " + std::to_string(id) + " is outside the vocabulary [0, " +
         std::to_string(vocab) + ")";
}

// The checks both tokenizers make on the options: requested BOS/EOS must exist.
void checkSpecials(const std::string &who, const TokenizerOptions &o, int32_t bos, int32_t eos) {
  if (o.addBos && bos < 0)
    throw Error(who + ": adding BOS was asked for, but there is no BOS id");
  if (o.addEos && eos < 0)
    throw Error(who + ": adding EOS was asked for, but there is no EOS id");
}

} // namespace

//===----------------------------------------------------------------------===//
// ByteTokenizer
//===----------------------------------------------------------------------===//

ByteTokenizer::ByteTokenizer(int64_t vocab, const TokenizerOptions &options)
    : vocab_(vocab), options_(options) {
  if (vocab < 256)
    throw Error("the byte tokenizer needs a vocabulary of at least 256 ids, got " +
                std::to_string(vocab));
  for (int32_t id : {options.bosId, options.eosId})
    if (id >= vocab)
      throw Error(idRangeError("the byte tokenizer's BOS/EOS", id, vocab));
  checkSpecials("the byte tokenizer", options_, options_.bosId, options_.eosId);
}

std::vector<int32_t> ByteTokenizer::encode(const std::string &text) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() + 2);
  if (options_.addBos)
    ids.push_back(options_.bosId);
  for (unsigned char c : text)
    ids.push_back(int32_t(c));
  if (options_.addEos)
    ids.push_back(options_.eosId);
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int32_t> &ids) const {
  std::string text;
  text.reserve(ids.size());
  for (int32_t id : ids) {
    if (id < 0 || int64_t(id) >= vocab_)
      throw Error(idRangeError("the byte tokenizer", id, vocab_));
    if (id < 256)
      text.push_back(char(uint8_t(id)));
  }
  return text;
}

std::string ByteTokenizer::describe() const {
  return "bytes (vocab " + std::to_string(vocab_) + ")";
}

//===----------------------------------------------------------------------===//
// SentencePieceTokenizer
//===----------------------------------------------------------------------===//

struct SentencePieceTokenizer::Impl {
#if TNLM_HAVE_SENTENCEPIECE
  sentencepiece::SentencePieceProcessor sp;
#endif
};

bool SentencePieceTokenizer::available() { return TNLM_HAVE_SENTENCEPIECE != 0; }

SentencePieceTokenizer::SentencePieceTokenizer(const std::string &path,
                                               const TokenizerOptions &options)
    : path_(path), options_(options) {
  const std::string who = "tokenizer " + path;
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st))
    throw Error(who + " does not exist");
  if (fs::is_directory(st))
    throw Error(who + " is a folder, not a SentencePiece model file");
  // Read the bytes here rather than let libsentencepiece open the file, so a read failure
  // says why (errno) instead of a generic status.
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(who + " cannot be read: " + std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad())
    throw Error(who + " cannot be read: " + std::strerror(errno));
  if (bytes.empty())
    throw Error(who + " is empty, not a SentencePiece model (tokenizer.model)");
#if TNLM_HAVE_SENTENCEPIECE
  impl_ = std::make_unique<Impl>();
  auto status = impl_->sp.LoadFromSerializedProto(bytes);
  if (!status.ok())
    throw Error(who + " is not a valid SentencePiece model (tokenizer.model); libsentencepiece: " +
                status.ToString());
  if (impl_->sp.GetPieceSize() <= 0)
    throw Error(who + " is a SentencePiece model without pieces");
  bos_ = options.bosId >= 0 ? options.bosId : impl_->sp.bos_id();
  eos_ = options.eosId >= 0 ? options.eosId : impl_->sp.eos_id();
  for (int32_t id : {bos_, eos_})
    if (id >= vocabSize())
      throw Error(idRangeError(who + " BOS/EOS", id, vocabSize()));
  checkSpecials(who, options_, bos_, eos_);
#else
  throw Error(who + ": this build of tnlm has no SentencePiece support (install "
                    "libsentencepiece-dev, e.g. with scripts/setup, and reconfigure)");
#endif
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

int64_t SentencePieceTokenizer::vocabSize() const {
#if TNLM_HAVE_SENTENCEPIECE
  return impl_->sp.GetPieceSize();
#else
  return 0; // unreachable: the constructor throws
#endif
}

std::vector<int32_t> SentencePieceTokenizer::encode(const std::string &text) const {
  std::vector<int32_t> out;
#if TNLM_HAVE_SENTENCEPIECE
  std::vector<int> ids;
  auto status = impl_->sp.Encode(text, &ids);
  if (!status.ok())
    throw Error("tokenizer " + path_ + " cannot encode the text: " + status.ToString());
  out.reserve(ids.size() + 2);
  if (options_.addBos)
    out.push_back(bos_);
  out.insert(out.end(), ids.begin(), ids.end());
  if (options_.addEos)
    out.push_back(eos_);
#endif
  return out;
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t> &ids) const {
  std::string text;
#if TNLM_HAVE_SENTENCEPIECE
  const int64_t vocab = vocabSize();
  for (int32_t id : ids)
    if (id < 0 || int64_t(id) >= vocab)
      throw Error(idRangeError("tokenizer " + path_, id, vocab));
  auto status = impl_->sp.Decode(std::vector<int>(ids.begin(), ids.end()), &text);
  if (!status.ok())
    throw Error("tokenizer " + path_ + " cannot decode: " + status.ToString());
#endif
  return text;
}

std::string SentencePieceTokenizer::describe() const {
  return "sentencepiece " + path_ + " (vocab " + std::to_string(vocabSize()) + ")";
}

//===----------------------------------------------------------------------===//
// loadTokenizer
//===----------------------------------------------------------------------===//

std::unique_ptr<Tokenizer> loadTokenizer(const std::string &spec, int64_t modelVocab,
                                         const TokenizerOptions &options) {
  if (spec.empty())
    throw Error("no tokenizer given (a tokenizer.model path, a checkpoint folder, or bytes)");
  if (spec == "bytes") {
    if (modelVocab < 256)
      throw Error("the byte tokenizer needs a model vocabulary of at least 256 token ids; the "
                  "model's vocabulary size is " +
                  std::to_string(modelVocab));
    return std::make_unique<ByteTokenizer>(modelVocab, options);
  }
  std::string path = spec;
  std::error_code ec;
  if (fs::is_directory(spec, ec)) {
    // A checkpoint folder: its tokenizer is the conventional tokenizer.model inside.
    path = (fs::path(spec) / "tokenizer.model").string();
    if (!fs::exists(path, ec))
      throw Error("tokenizer folder " + spec + " holds no tokenizer.model");
  }
  auto tokenizer = std::make_unique<SentencePieceTokenizer>(path, options);
  if (tokenizer->vocabSize() != modelVocab)
    throw Error("tokenizer " + path + " has a vocabulary of " +
                std::to_string(tokenizer->vocabSize()) +
                " pieces, but the model's vocabulary size is " + std::to_string(modelVocab) +
                "; they must be equal");
  return tokenizer;
}

//===----------------------------------------------------------------------===//
// StreamDecoder
//===----------------------------------------------------------------------===//

namespace {
// Context tokens the first window reaches back over: enough for SentencePiece's
// space rule to see a word before the first generated token.
constexpr size_t kContextWindow = 8;
// Tokens before the window are dropped once this many pile up, so memory stays bounded.
constexpr size_t kTrimAfter = 1024;
} // namespace

bool StreamDecoder::endsIncomplete(const std::string &text) {
  const size_t n = text.size();
  if (n >= 3 && text.compare(n - 3, 3, "\xEF\xBF\xBD") == 0)
    return true; // U+FFFD
  // Look back over at most 3 continuation bytes for the lead byte of the last sequence.
  size_t cont = 0;
  while (cont < 3 && cont < n && (uint8_t(text[n - 1 - cont]) & 0xC0) == 0x80)
    ++cont;
  if (cont == n)
    return false; // only continuation bytes: invalid, not incomplete
  uint8_t lead = uint8_t(text[n - 1 - cont]);
  size_t need = (lead & 0xE0) == 0xC0   ? 1
                : (lead & 0xF0) == 0xE0 ? 2
                : (lead & 0xF8) == 0xF0 ? 3
                                        : 0;
  return need > cont; // a lead byte still waiting for continuation bytes
}

StreamDecoder::StreamDecoder(const Tokenizer &tokenizer, std::vector<int32_t> context)
    : tokenizer_(tokenizer), tokens_(std::move(context)) {
  read_ = tokens_.size();
  prefix_ = read_ > kContextWindow ? read_ - kContextWindow : 0;
  prefixText_ = window(prefix_, read_);
  // A window starting at text that decodes to nothing would re-apply the leading-space
  // rule; reach further back until there is text (or the start).
  while (prefixText_.empty() && prefix_ > 0) {
    prefix_ = prefix_ > kContextWindow ? prefix_ - kContextWindow : 0;
    prefixText_ = window(prefix_, read_);
  }
}

std::string StreamDecoder::window(size_t from, size_t to) const {
  return tokenizer_.decode(std::vector<int32_t>(tokens_.begin() + from, tokens_.begin() + to));
}

std::string StreamDecoder::push(int32_t id) {
  tokens_.push_back(id);
  std::string full = window(prefix_, tokens_.size());
  if (full.size() <= prefixText_.size() || endsIncomplete(full))
    return {};
  // For a prefix-stable decode `full` starts with prefixText_; if some tokenizer were not,
  // emitting past the old length is the least surprising fallback (as vLLM does).
  std::string out = full.substr(prefixText_.size());
  std::string next = window(read_, tokens_.size());
  if (!next.empty()) {
    prefix_ = read_;
    prefixText_ = std::move(next);
  } else {
    prefixText_ = std::move(full);
  }
  read_ = tokens_.size();
  if (prefix_ > kTrimAfter) {
    tokens_.erase(tokens_.begin(), tokens_.begin() + prefix_);
    read_ -= prefix_;
    prefix_ = 0;
  }
  return out;
}

std::string StreamDecoder::finish() {
  if (read_ == tokens_.size())
    return {};
  std::string full = window(prefix_, tokens_.size());
  std::string out = full.size() > prefixText_.size() ? full.substr(prefixText_.size()) : "";
  prefixText_ = std::move(full);
  read_ = tokens_.size();
  return out;
}

} // namespace tnlm::generate
