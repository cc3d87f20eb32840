//===- Sampler.h - next-token sampling for generation ------------*- C++ -*-===//
//
// Turns one row of logits into the next token id, the way Hugging Face's generate() does, so
// that a flag set copied from a Hugging Face recipe means the same thing here. The steps, in
// this order (the order of HF's logits processors and warpers):
//
//   1. repetition penalty (CTRL rule): every distinct token id in the sequence's history
//      (prompt + generated so far) has its logit z replaced by z / penalty if z > 0, else by
//      z * penalty; penalty > 1 discourages repeats, < 1 encourages them;
//   2. temperature == 0: greedy, return the argmax of the penalized logits (ties go to the
//      lowest id); steps 3-6 are skipped and the slot's random stream is not advanced;
//   3. temperature: z / T;
//   4. top-k: keep the tokens whose logit is >= the k-th largest (ties at the k-th value are
//      all kept, as HF keeps them);
//   5. top-p (nucleus): of what top-k kept, keep the smallest set of most probable tokens
//      whose probability (softmax over the kept set) sums to >= p; at least one token stays;
//   6. draw from the softmax over what is kept.
//
// Arithmetic is in f64 with a max shift before exp, whatever the dtype of the logits.
//
// Determinism: each sequence slot has its own std::mt19937_64, seeded from (seed, slot) by a
// fixed mix, and a draw is the engine's top 53 bits as a double in [0, 1); no
// std::*_distribution is used (their algorithms are implementation-defined). So a slot's
// stream of uniforms is bit-identical on every platform and does not depend on which other
// slots are in the batch or in what order they are sampled. (The token a uniform selects can
// differ between C libraries only if the draw lands within rounding of a boundary between
// two tokens' cumulative probabilities, since exp() is not correctly rounded everywhere.)
//
// Ranking uses the total order (probability descending, id ascending), so ties resolve the
// same way everywhere; the top-p selection partitions with its own code, since
// std::partition's element order is implementation-defined and would change the order in
// which probabilities are summed.
//
// Thread safety: calls for different slots may run concurrently (all mutable state is per
// slot); calls for one slot must not.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_GENERATE_SAMPLER_H
#define TNLM_RUNTIME_GENERATE_SAMPLER_H

#include <cstdint>
#include <random>
#include <utility>
#include <vector>

namespace tnlm::generate {

struct SamplingOptions {
  /// 0 = greedy (argmax); otherwise logits are divided by it. Finite, >= 0.
  double temperature = 1.0;
  /// Keep only the k most likely tokens; 0 = off. >= 0; k >= vocab is the same as off.
  int64_t topK = 0;
  /// Nucleus mass in (0, 1]; 1 = off.
  double topP = 1.0;
  /// CTRL / HF repetition penalty; 1 = off. Finite, > 0.
  double repetitionPenalty = 1.0;
  /// Seed of every slot's stream (mixed with the slot index).
  uint64_t seed = 0;

  /// Throws tnlm::Error naming the offending flag as typed on the command line
  /// (--temperature, --top-k, --top-p, --repetition-penalty).
  void validate() const;
};

class Sampler {
public:
  /// Validates the options (tnlm::Error) and seeds `slots` >= 1 independent streams.
  Sampler(const SamplingOptions &options, int64_t slots);

  /// The next token of the sequence in `slot`, from logits[0 .. vocab). `history` is the
  /// sequence so far (prompt + generated) and only matters for the repetition penalty; between
  /// resets of the slot it must extend the history of the slot's previous call (the sampler
  /// keeps its distinct ids, so each token costs O(new + distinct ids)); ids
  /// outside [0, vocab) in it are an error. A NaN or infinite logit is a tnlm::Error naming
  /// the slot and the token id where it sits.
  int32_t sample(int64_t slot, const float *logits, int64_t vocab,
                 const std::vector<int32_t> &history);

  /// Restarts `slot`'s stream as if the Sampler were new: a fresh sequence in a reused slot
  /// draws exactly what the first sequence in that slot drew.
  void reset(int64_t slot);
  /// Restarts `slot`'s stream from a seed of the caller's (e.g. one per request, so that a
  /// request's tokens do not depend on the slot it lands in): the stream of (seed, 0).
  void reset(int64_t slot, uint64_t seed);

  const SamplingOptions &options() const { return options_; }
  int64_t slots() const { return int64_t(slots_.size()); }

  /// The stream seed of (seed, slot); exposed so tests can pin the mix.
  static uint64_t streamSeed(uint64_t seed, uint64_t slot);
  /// A uniform double in [0, 1) from the top 53 bits of one engine output.
  static double uniform(std::mt19937_64 &rng);

private:
  struct Candidate {
    double p; // softmax weight (unnormalized)
    int32_t id;
  };
  struct Slot {
    std::mt19937_64 rng;
    // Scratch reused between calls so that sampling does not allocate per token.
    std::vector<double> z, tmp;
    std::vector<Candidate> cand;
    std::vector<uint8_t> seen;      // by id: in the history (repetition penalty)
    std::vector<int32_t> seenIds;   // the ids marked in `seen`, in first-seen order
    size_t seenUpTo = 0;            // history entries already marked
  };
  static size_t nucleusEnd(std::vector<Candidate> &cand, double need);
  Slot &slotAt(int64_t slot);

  SamplingOptions options_;
  std::vector<Slot> slots_;
};

} // namespace tnlm::generate

#endif // TNLM_RUNTIME_GENERATE_SAMPLER_H
