//===- Generate.h - text generation with a recurrent artifact ---*- C++ -*-===//
//
// The generation loop of tnlm-run --prompt (and of emitted executables): prompts are
// encoded, prefilled into the artifact's slots (@prefill), then every active slot decodes one
// token per step (@decode_step) until EOS, a stop string or the token budget; a finished
// slot is refilled with the next waiting prompt (one @prefill call in which the other slots
// are inactive and keep their state; it still computes their padded rows). Text goes to
// stdout: streamed as produced for a single prompt, else one JSON object per prompt and line
// ({"index", "completion"[, "prompt"]}, in prompt order); statistics go to stderr. Sampling is
// seeded per prompt index; sampled text may differ in rare near-ties between artifacts
// compiled for different --batch (other GEMM shapes round the logits differently).
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TOOLS_TNLM_RUN_GENERATE_H
#define TNLM_TOOLS_TNLM_RUN_GENERATE_H

#include "runtime/CpuExecutor.h"
#include "runtime/generate/Sampler.h"
#include "runtime/generate/Tokenizer.h"
#include "tools/tnlm-run/Options.h"

#include <cstdint>
#include <string>
#include <vector>

namespace tnlm {

struct GenerateOptions {
  std::vector<std::string> prompts;
  int64_t maxTokens = 128;            // new tokens per prompt
  std::vector<std::string> stops;     // stop strings (not printed)
  generate::SamplingOptions sampling; // greedy, temperature, top-k, top-p, penalty, seed
  bool echoPrompt = true;             // print the prompt before its completion
  bool quiet = false;                 // no statistics
};

/// The command-line flags of generation, shared by tnlm-run and emitted executables:
/// --prompt, --prompts, --max-tokens, --stop, --temperature, --top-k, --top-p,
/// --repetition-penalty, --tokenizer, --echo (and --seed, declared by the caller).
void declareGenerationFlags(Options &opts);
/// Throws tnlm::Error naming a generation flag given without --prompt / --prompts.
void checkNoGenerationFlags(const Options &opts);
/// The sampling flags, validated (tnlm::Error naming the flag).
generate::SamplingOptions samplingFromFlags(const Options &opts);
/// Prompts (--prompt or every non-empty line of --prompts) and the other flags.
GenerateOptions generateOptionsFromFlags(const Options &opts,
                                         const generate::SamplingOptions &sampling, bool quiet);

/// What the generation loop needs of an executor: the two functions of a recurrent artifact.
/// prefill: ids [slots, seq] with slot b's prompt in its first lengths[b] entries (0: the slot
/// keeps its state) → logits [slots, vocab] of each slot's last prompt token; decode: one id
/// per slot at positions[b] (-1: inactive) → logits [slots, vocab], owned by the model and
/// valid until its next call (the CUDA executor's page-locked buffer: no copy per token).
class RecurrentModel {
public:
  virtual ~RecurrentModel() = default;
  virtual const Artifact &artifact() const = 0;
  virtual int64_t vocabSize() const = 0;
  virtual std::vector<float> prefill(const int32_t *ids, const int32_t *lengths, int64_t slots,
                                     int64_t seq) = 0;
  virtual const float *decode(const int32_t *ids, const int32_t *positions, int64_t slots) = 0;
};

/// The CPU executor as a RecurrentModel.
class CpuRecurrentModel final : public RecurrentModel {
public:
  explicit CpuRecurrentModel(CpuExecutor &exec) : exec_(exec) {}
  const Artifact &artifact() const override { return exec_.artifact(); }
  int64_t vocabSize() const override { return exec_.vocabSize(); }
  std::vector<float> prefill(const int32_t *ids, const int32_t *lengths, int64_t slots,
                             int64_t seq) override {
    return std::move(
        exec_.run("prefill", {{"ids", ids}, {"lengths", lengths}}, slots, seq).front().second);
  }
  const float *decode(const int32_t *ids, const int32_t *positions, int64_t slots) override {
    last_ = std::move(exec_.run("decode_step", {{"ids", ids}, {"positions", positions}}, slots, 1)
                          .front()
                          .second);
    return last_.data();
  }

private:
  CpuExecutor &exec_;
  std::vector<float> last_;
};

/// The completions (without prompts), in prompt order. Throws tnlm::Error on a prompt that
/// is empty or longer than the artifact's --seq, or ids outside the vocabulary.
std::vector<std::string> generateText(RecurrentModel &model, const generate::Tokenizer &tokenizer,
                                      const GenerateOptions &options);
/// generateText on the CPU: the executor, then the tokenizer (`tokenizer`: as loadTokenizer),
/// then the generation loop (tools/tnlm-run/CudaGenerate.h has the GPU's).
void generateOnCpu(const Artifact &artifact, ParamValues params, const std::string &tokenizer,
                   const GenerateOptions &options);
inline std::vector<std::string> generateText(CpuExecutor &exec,
                                             const generate::Tokenizer &tokenizer,
                                             const GenerateOptions &options) {
  CpuRecurrentModel model(exec);
  return generateText(model, tokenizer, options);
}

} // namespace tnlm

#endif // TNLM_TOOLS_TNLM_RUN_GENERATE_H
