//===- Tokenizer.h - text <-> token ids for generation -----------*- C++ -*-===//
//
// Two tokenizers behind one interface:
//   * ByteTokenizer: a token id is a byte (ids 0..255), for byte-vocabulary models. Encoding
//     maps bytes to ids and nothing else: ids that a model uses as BOS/EOS (our tiny models:
//     BOS 1, EOS 2) are also the bytes 0x01/0x02, and encode() gives them no special
//     meaning; stopping at EOS is the generation loop's business.
//   * SentencePieceTokenizer: a tokenizer.model file (the released TransNormerLLM
//     checkpoints' format), through the system's libsentencepiece.
//
// Streaming: decoding one token at a time is wrong for both (a UTF-8 character can span
// several byte tokens, and SentencePiece drops the leading space of the first word of a
// text, so "▁world" decoded alone is "world" even after "Hello"). StreamDecoder returns,
// token by token, exactly the text that the whole sequence decodes to, holding back what is
// not yet complete.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_GENERATE_TOKENIZER_H
#define TNLM_RUNTIME_GENERATE_TOKENIZER_H

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace tnlm::generate {

class Tokenizer {
public:
  virtual ~Tokenizer() = default;

  /// Text (UTF-8 expected, not required for bytes) to ids, with BOS/EOS added only where the
  /// tokenizer was created with addBos/addEos.
  virtual std::vector<int32_t> encode(const std::string &text) const = 0;
  /// Ids to text. Ids outside [0, vocabSize()) are a tnlm::Error.
  virtual std::string decode(const std::vector<int32_t> &ids) const = 0;
  /// Number of token ids; loadTokenizer checks it against the model's vocabulary.
  virtual int64_t vocabSize() const = 0;
  /// Beginning/end-of-sequence ids, -1 where there is none.
  virtual int32_t bosId() const = 0;
  virtual int32_t eosId() const = 0;
  /// One line for logs, e.g. "bytes (vocab 256)" or "sentencepiece m.model (vocab 64000)".
  virtual std::string describe() const = 0;
};

/// Options of loadTokenizer and the tokenizer classes.
struct TokenizerOptions {
  /// Prepend BOS / append EOS in encode(). Off by default: the released checkpoints'
  /// tokenizer configs set add_bos_token = add_eos_token = false.
  bool addBos = false;
  bool addEos = false;
  /// BOS/EOS ids from the model's config; >= 0 overrides the tokenizer's own (the model was
  /// trained with the config's ids). A byte tokenizer has no ids of its own.
  int32_t bosId = -1;
  int32_t eosId = -1;
};

class ByteTokenizer final : public Tokenizer {
public:
  /// `vocab` >= 256: ids 256..vocab-1 (a model's padded or special ids) decode to nothing.
  explicit ByteTokenizer(int64_t vocab = 256, const TokenizerOptions &options = {});

  std::vector<int32_t> encode(const std::string &text) const override;
  /// Exactly the bytes, invalid UTF-8 included, so decode(encode(s)) == s for every s.
  std::string decode(const std::vector<int32_t> &ids) const override;
  int64_t vocabSize() const override { return vocab_; }
  int32_t bosId() const override { return options_.bosId; }
  int32_t eosId() const override { return options_.eosId; }
  std::string describe() const override;

private:
  int64_t vocab_;
  TokenizerOptions options_;
};

class SentencePieceTokenizer final : public Tokenizer {
public:
  /// Loads a SentencePiece model file; tnlm::Error naming the file if it is missing,
  /// unreadable or not a SentencePiece model, or if this build has no SentencePiece.
  explicit SentencePieceTokenizer(const std::string &path, const TokenizerOptions &options = {});
  ~SentencePieceTokenizer() override;

  std::vector<int32_t> encode(const std::string &text) const override;
  std::string decode(const std::vector<int32_t> &ids) const override;
  int64_t vocabSize() const override;
  int32_t bosId() const override { return bos_; }
  int32_t eosId() const override { return eos_; }
  std::string describe() const override;

  /// Whether this build links libsentencepiece (TNLM_HAVE_SENTENCEPIECE at configure time).
  static bool available();

private:
  struct Impl; // keeps <sentencepiece_processor.h> out of this header
  std::unique_ptr<Impl> impl_;
  std::string path_;
  TokenizerOptions options_;
  int32_t bos_ = -1, eos_ = -1;
};

/// The tokenizer for a model with `modelVocab` token ids:
///   * "bytes": a ByteTokenizer; needs modelVocab >= 256.
///   * a path to a SentencePiece model, or a folder holding tokenizer.model (a checkpoint
///     folder); its vocabulary must equal modelVocab exactly.
/// (A file literally named "bytes" is reached as "./bytes".)
/// Every refusal is a tnlm::Error naming the file and, for a mismatch, both sizes.
std::unique_ptr<Tokenizer> loadTokenizer(const std::string &spec, int64_t modelVocab,
                                         const TokenizerOptions &options = {});

/// Incremental decoding for streaming output. push() takes the next generated id and
/// returns the text it adds (possibly empty); finish() returns what is still held back.
/// The concatenation of every push() and finish() result equals
///   decode(context + generated).substr(decode(context).size())
/// for tokenizers whose decode is prefix-stable (bytes, SentencePiece), and each non-final
/// piece is whole UTF-8: text is held back while it ends in an incomplete UTF-8 sequence or
/// in U+FFFD (how SentencePiece renders an incomplete byte-fallback character).
///
/// How (the offset scheme of HF's text-generation-inference and vLLM): the decoder decodes
/// a short window [prefix, end) of the tokens and emits what the window's text has beyond
/// the text of [prefix, read), where `read` is how far it has emitted. Both texts start at
/// the same token, so a leading-space strip applies to both alike and cancels out. The
/// window's start only moves to a point whose text is non-empty, since starting at a
/// token that decodes to nothing (a control token, a lone "▁") could make the next word
/// lose its space.
class StreamDecoder {
public:
  /// `context`: the ids before the first pushed one (the prompt, BOS included); their text
  /// is not emitted, but it decides e.g. whether the first generated word keeps its space.
  /// The tokenizer must outlive the decoder.
  explicit StreamDecoder(const Tokenizer &tokenizer, std::vector<int32_t> context = {});

  std::string push(int32_t id);
  /// Everything still held back (an incomplete UTF-8 tail comes out as the tokenizer
  /// decodes it: raw bytes for ByteTokenizer, U+FFFD for SentencePiece). push() may follow.
  std::string finish();

  /// Whether `text` ends in an incomplete UTF-8 sequence or in U+FFFD (exposed for tests).
  static bool endsIncomplete(const std::string &text);

private:
  std::string window(size_t from, size_t to) const;

  const Tokenizer &tokenizer_;
  std::vector<int32_t> tokens_;
  size_t prefix_ = 0, read_ = 0;
  std::string prefixText_; // decode of [prefix_, read_)
};

} // namespace tnlm::generate

#endif // TNLM_RUNTIME_GENERATE_TOKENIZER_H
