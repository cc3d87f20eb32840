//===- Generate.cpp - text generation with a recurrent artifact -----------===//
#include "tools/tnlm-run/Generate.h"

#include "runtime/Error.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

namespace tnlm {

namespace {

using Clock = std::chrono::steady_clock;

double seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// One slot's sequence while it generates.
struct Slot {
  int64_t prompt = -1;          // index into the prompts, -1: free
  std::vector<int32_t> history; // prompt + generated ids (the repetition penalty's)
  int64_t position = 0;         // tokens in the state
  int64_t generated = 0;
  int32_t next = 0;   // the token to feed to the next decode step
  std::string text;   // completion so far (decoded)
  size_t printed = 0; // bytes of text already written (streaming)
  std::unique_ptr<generate::StreamDecoder> decoder;
  bool done = false;
};

// The length of the longest suffix of `text` that is a proper prefix of some stop string:
// that much may still turn into a stop string, so streaming holds it back.
size_t heldBack(const std::string &text, const std::vector<std::string> &stops) {
  size_t hold = 0;
  for (const std::string &s : stops)
    for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k)
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
  return hold;
}

} // namespace

void declareGenerationFlags(Options &opts) {
  opts.value("prompt", "text",
             "Generate a continuation of this text (an artifact of "
             "tnlmc --mode=recurrent); the text goes to stdout as it is produced");
  opts.value("prompts", "file",
             "Generate for every line of the file, as one batch of slots "
             "(finished slots take the next prompt)");
  opts.value("max-tokens", "n",
             "New tokens per prompt (default 128); also stops at EOS and --stop");
  opts.repeated("stop", "text", "Stop a completion where this text appears (not printed)");
  opts.value("temperature", "t", "Sampling temperature (default 1; 0: greedy argmax)");
  opts.value("top-k", "k", "Sample from the k most likely tokens (default 0: all)");
  opts.value("top-p", "p",
             "Sample from the smallest set of tokens with probability >= p, in "
             "(0, 1] (default 1: all)");
  opts.value("repetition-penalty", "r",
             "Divide positive / multiply negative logits of tokens seen already by r (default 1)");
  opts.value("tokenizer", "bytes|file",
             "bytes (byte-vocabulary models, the default for a 256 "
             "vocabulary) or a SentencePiece tokenizer.model");
  opts.flag("echo", "Print each prompt before its completion");
}

void checkNoGenerationFlags(const Options &opts) {
  for (const char *flag : {"max-tokens", "stop", "temperature", "top-k", "top-p",
                           "repetition-penalty", "tokenizer", "echo"})
    if (opts.has(flag))
      throw Error(std::string("--") + flag + " applies to generation (--prompt or --prompts)");
}

generate::SamplingOptions samplingFromFlags(const Options &opts) {
  generate::SamplingOptions sampling;
  sampling.temperature = opts.getDouble("temperature", 1.0, -1e30, 1e30);
  sampling.topK = opts.getInt("top-k", 0, INT64_MIN, INT64_MAX);
  sampling.topP = opts.getDouble("top-p", 1.0, -1e30, 1e30);
  sampling.repetitionPenalty = opts.getDouble("repetition-penalty", 1.0, -1e30, 1e30);
  sampling.seed = static_cast<uint64_t>(opts.getInt("seed", 0, 0, INT64_MAX));
  sampling.validate();
  return sampling;
}

GenerateOptions generateOptionsFromFlags(const Options &opts,
                                         const generate::SamplingOptions &sampling, bool quiet) {
  GenerateOptions g;
  if (opts.has("prompt") && opts.has("prompts"))
    throw Error("--prompt and --prompts are contradictory: give one");
  if (opts.has("prompt")) {
    g.prompts = {opts.get("prompt")};
  } else if (opts.has("prompts")) {
    std::ifstream in(opts.get("prompts"));
    if (!in)
      throw Error(opts.get("prompts") + ": cannot open the prompts file");
    for (std::string line; std::getline(in, line);)
      if (!line.empty())
        g.prompts.push_back(line);
    if (g.prompts.empty())
      throw Error(opts.get("prompts") + ": no prompts (one per line)");
  } else {
    throw Error("give a prompt: --prompt=TEXT or --prompts=FILE");
  }
  g.maxTokens = opts.getInt("max-tokens", 128, 0, INT32_MAX);
  g.stops = opts.all("stop");
  g.sampling = sampling;
  g.echoPrompt = opts.has("echo");
  g.quiet = quiet;
  return g;
}

void generateOnCpu(const Artifact &artifact, ParamValues params, const std::string &tokenizer,
                   const GenerateOptions &options) {
  CpuExecutor exec(artifact, std::move(params));
  std::unique_ptr<generate::Tokenizer> t = generate::loadTokenizer(tokenizer, exec.vocabSize());
  generateText(exec, *t, options);
}

std::vector<std::string> generateText(RecurrentModel &exec, const generate::Tokenizer &tokenizer,
                                      const GenerateOptions &options) {
  const Artifact &artifact = exec.artifact();
  const int64_t slots = artifact.maxBatch(), maxSeq = artifact.maxSeq();
  const int64_t vocab = exec.vocabSize();
  const int32_t eos = artifact.root().config()
                          ? static_cast<int32_t>(artifact.root().config()->eos_token_id())
                          : -1;
  if (options.prompts.empty())
    throw Error("--prompt: no prompt given");
  for (const std::string &s : options.stops)
    if (s.empty())
      throw Error("--stop: a stop string must not be empty");
  std::vector<std::vector<int32_t>> encoded;
  for (size_t i = 0; i < options.prompts.size(); ++i) {
    std::vector<int32_t> ids = tokenizer.encode(options.prompts[i]);
    const std::string which =
        options.prompts.size() == 1 ? "the prompt" : "prompt " + std::to_string(i + 1);
    if (ids.empty())
      throw Error(which + " is empty (it encodes to no tokens)");
    if (static_cast<int64_t>(ids.size()) > maxSeq)
      throw Error(which + " has " + std::to_string(ids.size()) + " tokens, more than the " +
                  std::to_string(maxSeq) + " the artifact was compiled for (tnlmc --seq)");
    for (int32_t id : ids)
      if (id < 0 || id >= vocab)
        throw Error(which + ": token id " + std::to_string(id) + " is outside the vocabulary [0, " +
                    std::to_string(vocab) + ")");
    encoded.push_back(std::move(ids));
  }
  const bool stream = options.prompts.size() == 1;
  generate::Sampler sampler(options.sampling, slots);
  std::vector<Slot> slot(slots);
  std::deque<int64_t> waiting;
  for (size_t i = 0; i < encoded.size(); ++i)
    waiting.push_back(static_cast<int64_t>(i));
  std::vector<std::string> completions(encoded.size());
  std::vector<bool> finished(encoded.size(), false);
  size_t nextToPrint = 0; // several prompts: completions are printed in prompt order
  int64_t promptTokens = 0, decodedTokens = 0, decodeSteps = 0;
  const auto started = Clock::now();
  Clock::duration prefillTime{}, decodeTime{};

  auto flushStream = [&](Slot &s, bool final) {
    size_t end = final ? s.text.size() : s.text.size() - heldBack(s.text, options.stops);
    if (end > s.printed) {
      std::fwrite(s.text.data() + s.printed, 1, end - s.printed, stdout);
      std::fflush(stdout);
      s.printed = end;
    }
  };
  // Several prompts: one JSON object per line, in prompt order (completions may hold newlines
  // and any bytes; invalid UTF-8 is replaced by U+FFFD in the JSON only).
  auto printFinished = [&]() {
    while (nextToPrint < completions.size() && finished[nextToPrint]) {
      if (options.prompts.size() > 1) {
        nlohmann::json line = {{"index", nextToPrint}, {"completion", completions[nextToPrint]}};
        if (options.echoPrompt)
          line["prompt"] = options.prompts[nextToPrint];
        std::string text =
            line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
        std::fwrite(text.data(), 1, text.size(), stdout);
        std::fflush(stdout);
      }
      ++nextToPrint;
    }
  };
  // Appends a sampled token to slot s; returns false when the slot is done.
  auto accept = [&](Slot &s, int32_t token) {
    if (token == eos)
      return false;
    s.history.push_back(token);
    s.generated += 1;
    s.next = token;
    const size_t before = s.text.size();
    s.text += s.decoder->push(token);
    // A stop string can only be new where the text just grew; a token may complete several,
    // and the completion ends at the earliest.
    size_t cut = std::string::npos;
    for (const std::string &stop : options.stops) {
      size_t from = before >= stop.size() ? before - stop.size() + 1 : 0;
      cut = std::min(cut, s.text.find(stop, from));
    }
    if (cut != std::string::npos) {
      s.text.resize(cut);
      return false;
    }
    if (stream)
      flushStream(s, false);
    // Positions stop at 2^24, where float(p) (the LRPE angle's position) stops being exact;
    // the state has a constant size, but a head whose decay is below f32's resolution (slope
    // < 6e-8: λ rounds to 1 next to an f32 state) only accumulates, so such lengths are
    // untested.
    if (s.position + 1 >= (int64_t(1) << 24)) {
      if (!options.quiet)
        std::fprintf(stderr, "note: a completion stopped at position 2^24 (the limit of exact "
                             "f32 positions)\n");
      return false;
    }
    return s.generated < options.maxTokens;
  };
  auto finish = [&](Slot &s) {
    s.text += s.decoder->finish();
    if (stream) {
      flushStream(s, true);
      std::fputc('\n', stdout);
      std::fflush(stdout);
    }
    completions[s.prompt] = s.text;
    finished[s.prompt] = true;
    s = Slot();
    printFinished();
  };

  std::vector<int32_t> lengths(slots), positions(slots), stepIds(slots);
  while (true) {
    // Refill free slots with waiting prompts: one @prefill for all of them.
    std::fill(lengths.begin(), lengths.end(), 0);
    int64_t longest = 0;
    for (int64_t b = 0; b < slots && !waiting.empty(); ++b) {
      if (slot[b].prompt >= 0)
        continue;
      Slot &s = slot[b];
      s.prompt = waiting.front();
      waiting.pop_front();
      s.history = encoded[s.prompt];
      s.decoder = std::make_unique<generate::StreamDecoder>(tokenizer, s.history);
      // Each prompt's samples depend on (seed, prompt), not on the slot it lands in.
      sampler.reset(
          b, generate::Sampler::streamSeed(options.sampling.seed, static_cast<uint64_t>(s.prompt)));
      lengths[b] = static_cast<int32_t>(s.history.size());
      longest = std::max<int64_t>(longest, lengths[b]);
      if (stream && options.echoPrompt) {
        std::fwrite(options.prompts[s.prompt].data(), 1, options.prompts[s.prompt].size(), stdout);
        std::fflush(stdout);
      }
    }
    if (longest > 0) {
      std::vector<int32_t> ids(slots * longest, 0);
      for (int64_t b = 0; b < slots; ++b)
        for (int32_t t = 0; t < lengths[b]; ++t)
          ids[b * longest + t] = slot[b].history[t];
      const auto t0 = Clock::now();
      const std::vector<float> logits = exec.prefill(ids.data(), lengths.data(), slots, longest);
      prefillTime += Clock::now() - t0;
      for (int64_t b = 0; b < slots; ++b) {
        if (lengths[b] == 0)
          continue;
        Slot &s = slot[b];
        s.position = lengths[b];
        promptTokens += lengths[b];
        int32_t token = sampler.sample(b, logits.data() + b * vocab, vocab, s.history);
        if (options.maxTokens == 0 || !accept(s, token))
          finish(s);
      }
    }
    bool any = false;
    for (int64_t b = 0; b < slots; ++b) {
      positions[b] = slot[b].prompt >= 0 ? static_cast<int32_t>(slot[b].position) : -1;
      stepIds[b] = slot[b].prompt >= 0 ? slot[b].next : 0;
      any |= slot[b].prompt >= 0;
    }
    if (!any) {
      if (waiting.empty())
        break;
      continue;
    }
    const auto t0 = Clock::now();
    const float *logits = exec.decode(stepIds.data(), positions.data(), slots);
    decodeTime += Clock::now() - t0;
    decodeSteps += 1;
    for (int64_t b = 0; b < slots; ++b) {
      Slot &s = slot[b];
      if (s.prompt < 0)
        continue;
      s.position += 1;
      decodedTokens += 1;
      int32_t token = sampler.sample(b, logits + b * vocab, vocab, s.history);
      if (!accept(s, token))
        finish(s);
    }
  }
  if (std::ferror(stdout))
    throw Error("cannot write the generated text to stdout");
  if (!options.quiet) {
    const double p = seconds(prefillTime), d = seconds(decodeTime);
    const double total = seconds(Clock::now() - started);
    std::fprintf(stderr,
                 "prefill: %lld tokens in %.3f s (%.0f tokens/s); decode: %lld tokens in %.3f s "
                 "(%.0f tokens/s; %lld steps of %lld slots, %.3f ms per step); %.3f s in all\n",
                 static_cast<long long>(promptTokens), p, p > 0 ? promptTokens / p : 0.0,
                 static_cast<long long>(decodedTokens), d, d > 0 ? decodedTokens / d : 0.0,
                 static_cast<long long>(decodeSteps), static_cast<long long>(slots),
                 decodeSteps > 0 ? 1e3 * d / decodeSteps : 0.0, total);
  }
  return completions;
}

} // namespace tnlm
