//===- tnlm-run.cpp - run a compiled tnlm artifact ------------------------===//
//
//   tnlm-run MODEL.tnlm --init=random --seed=1 --save-weights=w.safetensors
//   tnlm-run MODEL.tnlm --weights=w.safetensors --tokens=1,5,9 --print-logits
//   tnlm-run MODEL.tnlm --weights=w.safetensors --perplexity=text.txt
//   tnlm-run MODEL-cuda.tnlm --device=cuda --init=random --tokens=1,5,9
//
// Links the runtime only (no MLIR, no LLVM). Every failure is one sentence on stderr that
// names the file, tensor or flag at fault, and a non-zero exit status.
//
//===----------------------------------------------------------------------===//
#include "runtime/Artifact.h"
#include "runtime/CpuExecutor.h"
#include "runtime/Error.h"
#include "runtime/Weights.h"
#include "runtime/cpu/Kernels.h"
#include "tools/tnlm-run/Generate.h"
#include "tools/tnlm-run/Options.h"
#if TNLM_RUN_HAVE_CUDA
#include "runtime/cuda/CudaExecutor.h"
#include "tools/tnlm-run/CudaGenerate.h"
#endif

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>

using namespace tnlm;

namespace {

std::vector<int32_t> parseTokenList(const std::string &text, int64_t vocab) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    char *end = nullptr;
    long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end != '\0')
      throw Error("--tokens: '" + item + "' is not an integer token id");
    if (v < 0 || v >= vocab)
      throw Error("--tokens: token id " + item + " is outside the vocabulary [0, " +
                  std::to_string(vocab) + ")");
    ids.push_back(static_cast<int32_t>(v));
  }
  if (ids.empty())
    throw Error("--tokens: no token ids given");
  return ids;
}

// Bytes of a text file for byte-vocabulary models; little-endian uint32 ids for a .bin file.
std::vector<int32_t> readTokens(const std::string &path, int64_t vocab) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw Error(path + ": cannot open the perplexity input");
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                             std::istreambuf_iterator<char>());
  if (in.bad())
    throw Error(path + ": cannot read the perplexity input");
  std::vector<int32_t> ids;
  bool binary = path.size() > 4 && path.compare(path.size() - 4, 4, ".bin") == 0;
  if (binary) {
    if (bytes.size() % 4 != 0)
      throw Error(path + ": a token-id file holds little-endian uint32 ids, but its size (" +
                  std::to_string(bytes.size()) + " bytes) is not a multiple of 4");
    for (size_t i = 0; i < bytes.size(); i += 4) {
      uint32_t v = bytes[i] | (bytes[i + 1] << 8) | (bytes[i + 2] << 16) |
                   (static_cast<uint32_t>(bytes[i + 3]) << 24);
      if (v >= static_cast<uint64_t>(vocab))
        throw Error(path + ": token id " + std::to_string(v) + " at index " +
                    std::to_string(i / 4) + " is outside the vocabulary [0, " +
                    std::to_string(vocab) + ")");
      ids.push_back(static_cast<int32_t>(v));
    }
  } else {
    if (vocab < 256)
      throw Error(path +
                  ": text is read as bytes, which needs a vocabulary of at least 256 "
                  "(this model has " +
                  std::to_string(vocab) +
                  "); pass token ids as a .bin file of little-endian uint32");
    if (vocab > 256)
      throw Error(path + ": this model's vocabulary (" + std::to_string(vocab) +
                  ") is not bytes; pass token ids as a .bin file of little-endian uint32");
    ids.assign(bytes.begin(), bytes.end());
  }
  if (ids.size() < 2)
    throw Error(path + ": perplexity needs at least 2 tokens, the file has " +
                std::to_string(ids.size()));
  return ids;
}

// Mean negative log-likelihood over non-overlapping windows of at most max_seq tokens,
// max_batch windows per forward call; each window predicts its own tokens 1..len-1.
template <class Executor>
void perplexity(Executor &exec, const std::vector<int32_t> &ids, bool quiet) {
  const Artifact &a = exec.artifact();
  const int64_t window = a.maxSeq(), vocab = exec.vocabSize();
  const int64_t total = static_cast<int64_t>(ids.size());
  double nllSum = 0.0;
  int64_t counted = 0, done = 0;
  auto start = std::chrono::steady_clock::now();
  while (done < total) {
    // Full windows go in batches; a short tail window runs alone.
    int64_t remaining = total - done;
    int64_t len = std::min(window, remaining);
    int64_t batch = len == window ? std::min<int64_t>(a.maxBatch(), remaining / window) : 1;
    if (len < 2) // a lone last token has nothing to predict
      break;
    std::vector<int32_t> chunk(ids.begin() + done, ids.begin() + done + batch * len);
    std::vector<int32_t> labels(chunk.size());
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t t = 0; t < len; ++t)
        labels[b * len + t] = t + 1 < len ? chunk[b * len + t + 1] : -100;
    std::vector<float> logits = exec.forward(chunk.data(), batch, len);
    int64_t n = 0;
    double mean = cpu::crossEntropy(logits.data(), labels.data(), batch * len, vocab, -100, &n);
    nllSum += mean * static_cast<double>(n);
    counted += n;
    done += batch * len;
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!quiet && total > window)
      std::fprintf(stderr, "\rperplexity: %lld/%lld tokens (%.0f%%), %.0f tokens/s",
                   static_cast<long long>(done), static_cast<long long>(total),
                   100.0 * done / total, done / std::max(secs, 1e-9));
  }
  if (!quiet && total > window)
    std::fprintf(stderr, "\n");
  double nll = nllSum / static_cast<double>(counted);
  std::printf("tokens: %lld  predicted: %lld  mean nll: %.6f  perplexity: %.4f\n",
              static_cast<long long>(total), static_cast<long long>(counted), nll, std::exp(nll));
}

template <class Executor> int execute(Executor &exec, const Options &opts, bool quiet);

int run(int argc, char **argv) {
  Options opts("tnlm-run", "tnlm-run MODEL.tnlm (--weights=FILE | --init=random) [actions]");
  opts.value("weights", "file", "Parameters as safetensors (Hugging Face names; f32/bf16/f16)");
  opts.value("init", "random", "Initialize parameters instead (docs/model.md: N(0, 0.02), ...)");
  opts.value("seed", "n", "Seed of --init=random and of sampling (default 0)");
  opts.value("save-weights", "file", "Write the parameters as safetensors");
  opts.value("tokens", "ids", "Comma-separated token ids of one sequence to run");
  opts.flag("print-logits", "With --tokens: print every position's full logits row");
  opts.value("perplexity", "file",
             "Perplexity over a file: bytes for a 256-token vocabulary, else a .bin of uint32 ids");
  declareGenerationFlags(opts);
  opts.value("threads", "n", "CPU threads (default: all cores)");
  opts.flag("quiet", "No progress line on stderr");
  opts.value("device", "cpu|cuda",
             "Executor (default: the artifact's target, cpu or cuda); cuda runs a "
             "--target=cuda:sm_90a artifact on GPU 0");
  opts.flag("sync-steps", "With --device=cuda: wait for every step and launch the steps one by "
                          "one instead of replaying the forward's CUDA graph, so that a kernel "
                          "fault names its step (slower; for debugging)");
  if (!opts.parse(argc, argv))
    return 0;
  if (opts.positional().size() != 1)
    throw Error("expected exactly one artifact (MODEL.tnlm), got " +
                std::to_string(opts.positional().size()) + " positional arguments");
  if (opts.has("weights") == opts.has("init"))
    throw Error(opts.has("weights") ? "--weights and --init are contradictory: give one"
                                    : "give the parameters: --weights=FILE or --init=random");
  if (opts.has("init") && opts.get("init") != "random")
    throw Error("--init: unknown initialization '" + opts.get("init") + "' (expected random)");
  const bool generating = opts.has("prompt") || opts.has("prompts");
  if (opts.has("seed") && !opts.has("init") && !generating)
    throw Error("--seed only applies to --init=random and to sampling (--prompt)");
  if (int(opts.has("tokens")) + int(opts.has("perplexity")) + int(generating) > 1 ||
      (opts.has("prompt") && opts.has("prompts")))
    throw Error("--tokens, --perplexity, --prompt and --prompts are contradictory: run one at a "
                "time");
  if (opts.has("print-logits") && !opts.has("tokens"))
    throw Error("--print-logits needs --tokens");
  if (!generating)
    checkNoGenerationFlags(opts);
  if (!opts.has("tokens") && !opts.has("perplexity") && !opts.has("save-weights") && !generating)
    throw Error("nothing to do: give --prompt, --tokens, --perplexity or --save-weights");
  if (opts.has("threads"))
    cpu::setNumThreads(static_cast<int>(opts.getInt("threads", 0, 1, 1024)));
  bool quiet = opts.has("quiet");

  // The device: --device, else the artifact's target (checked when loading either way).
  std::optional<Target> wanted;
  if (opts.has("device")) {
    const std::string d = opts.get("device");
    if (d != "cpu" && d != "cuda")
      throw Error("--device: unknown device '" + d + "' (expected cpu or cuda)");
    wanted = d == "cuda" ? Target::CudaSm90a : Target::Cpu;
  }
  Artifact artifact = Artifact::load(opts.positional()[0], wanted);
  const bool recurrent = artifact.root().mode() == schema::Mode_Recurrent;
  if (generating && !recurrent)
    throw Error(artifact.source() + " has no @prefill and @decode_step: generation (--prompt) "
                                    "needs an artifact of tnlmc --mode=recurrent");
  if (recurrent && (opts.has("tokens") || opts.has("perplexity")))
    throw Error(artifact.source() +
                " is a recurrent artifact (@prefill, @decode_step): use "
                "--prompt, or compile the model with tnlmc --mode=infer for --tokens and "
                "--perplexity");
  // Sampling flags are checked before the weights are read.
  generate::SamplingOptions sampling;
  if (generating)
    sampling = samplingFromFlags(opts);
  if (artifact.root().mode() == schema::Mode_Train)
    throw Error(artifact.source() +
                " is a train artifact (@train_step, @optimizer_step, "
                "@eval_loss): run it with tnlm-train, or compile the model with tnlmc "
                "--mode=infer for tnlm-run (the trained weights load into either)");
  const std::string device = artifact.target() == Target::CudaSm90a ? "cuda" : "cpu";
  if (opts.has("sync-steps") && device != "cuda")
    throw Error("--sync-steps only applies to CUDA artifacts (--device=cuda)");
#if !TNLM_RUN_HAVE_CUDA
  if (device == "cuda")
    throw Error(artifact.source() +
                ": a CUDA artifact, and this tnlm-run was built without the CUDA runtime");
#else
  if (device == "cuda")
    cuda::driver(); // no driver or no device: its one sentence now, before reading weights
#endif
  ParamValues params =
      opts.has("weights")
          ? loadWeights(artifact, opts.get("weights"))
          : randomWeights(artifact, static_cast<uint64_t>(opts.getInt("seed", 0, 0, INT64_MAX)));
  if (opts.has("save-weights")) {
    saveWeights(artifact, params, opts.get("save-weights"));
    if (!quiet)
      std::fprintf(stderr, "wrote %zu parameters to %s\n", params.size(),
                   opts.get("save-weights").c_str());
  }
  if (!opts.has("tokens") && !opts.has("perplexity") && !generating)
    return 0;
  if (generating) {
    GenerateOptions g = generateOptionsFromFlags(opts, sampling, quiet);
#if TNLM_RUN_HAVE_CUDA
    if (device == "cuda") {
      generateOnCuda(artifact, params, opts.get("tokenizer", "bytes"), g, opts.has("sync-steps"));
      return 0;
    }
#endif
    generateOnCpu(artifact, std::move(params), opts.get("tokenizer", "bytes"), g);
    return 0;
  }

#if TNLM_RUN_HAVE_CUDA
  if (device == "cuda") {
    cuda::CudaExecutor exec(artifact, params);
    exec.setSynchronizeSteps(opts.has("sync-steps"));
    return execute(exec, opts, quiet);
  }
#endif
  CpuExecutor exec(artifact, std::move(params));
  return execute(exec, opts, quiet);
}

template <class Executor> int execute(Executor &exec, const Options &opts, bool quiet) {
  const Artifact &artifact = exec.artifact();
  const int64_t vocab = exec.vocabSize();
  if (opts.has("perplexity")) {
    perplexity(exec, readTokens(opts.get("perplexity"), vocab), quiet);
    return 0;
  }
  std::vector<int32_t> ids = parseTokenList(opts.get("tokens"), vocab);
  if (static_cast<int64_t>(ids.size()) > artifact.maxSeq())
    throw Error("--tokens: " + std::to_string(ids.size()) +
                " tokens exceed the compiled "
                "maximum sequence length " +
                std::to_string(artifact.maxSeq()) + " (recompile with a larger --seq)");
  const int64_t n = static_cast<int64_t>(ids.size());
  std::vector<float> logits = exec.forward(ids.data(), 1, n);
  for (int64_t t = 0; t < n; ++t) {
    const float *row = logits.data() + t * vocab;
    int64_t best = 0;
    for (int64_t v = 1; v < vocab; ++v)
      if (row[v] > row[best])
        best = v;
    std::printf("position %lld: token %d -> argmax %lld (logit %.6g)\n", static_cast<long long>(t),
                ids[t], static_cast<long long>(best), row[best]);
    if (opts.has("print-logits")) {
      std::printf("logits %lld:", static_cast<long long>(t));
      for (int64_t v = 0; v < vocab; ++v)
        std::printf(" %.7g", row[v]);
      std::printf("\n");
    }
  }
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  try {
    return run(argc, argv);
  } catch (const Error &e) {
    std::fprintf(stderr, "tnlm-run: error: %s\n", e.what());
    return 1;
  } catch (const std::bad_alloc &) {
    std::fprintf(stderr, "tnlm-run: error: out of memory\n");
    return 1;
  } catch (const std::exception &e) { // e.g. a size no kernel can take
    std::fprintf(stderr, "tnlm-run: error: %s\n", e.what());
    return 1;
  }
}
