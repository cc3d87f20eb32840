//===- Sampler.cpp - next-token sampling for generation ------------------===//
#include "runtime/generate/Sampler.h"
#include "runtime/Error.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <sstream>
#include <string>

namespace tnlm::generate {

namespace {

// Shortest round-trip form, so "got 1e-09" shows what the user typed, not "got 0.000000".
std::string str(double v) {
  std::ostringstream os;
  os.precision(17);
  os << v;
  return os.str();
}

// SplitMix64's finalizer: a fixed, well-mixed bijection of 64-bit words. Seeding every slot's
// Mersenne Twister through it keeps nearby (seed, slot) pairs from giving related streams.
uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

} // namespace

void SamplingOptions::validate() const {
  // Below 1e-6 the scaled logits (z − max)/T leave the range where sampling differs from
  // argmax and 1/T approaches overflow: ask for greedy instead.
  if (!std::isfinite(temperature) || temperature < 0 || (temperature > 0 && temperature < 1e-6))
    throw Error("--temperature must be 0 (greedy) or a finite number >= 1e-6, got " +
                str(temperature));
  if (topK < 0)
    throw Error("--top-k must be >= 0 (0 = off), got " + std::to_string(topK));
  // Written as !(in range) so that NaN is rejected too.
  if (!(topP > 0 && topP <= 1))
    throw Error("--top-p must be in (0, 1] (1 = off), got " + str(topP));
  if (!std::isfinite(repetitionPenalty) || repetitionPenalty < 1e-6 || repetitionPenalty > 1e6)
    throw Error("--repetition-penalty must be a number in [1e-6, 1e6] (1 = off), got " +
                str(repetitionPenalty));
}

uint64_t Sampler::streamSeed(uint64_t seed, uint64_t slot) {
  return splitmix64(splitmix64(seed) ^ slot);
}

double Sampler::uniform(std::mt19937_64 &rng) {
  // 53 bits fill a double's mantissa exactly, so every value is k / 2^53 with k < 2^53:
  // never 1.0, and the same on every platform (unlike std::uniform_real_distribution).
  return double(rng() >> 11) * 0x1.0p-53;
}

Sampler::Sampler(const SamplingOptions &options, int64_t slots) : options_(options) {
  options_.validate();
  if (slots < 1)
    throw Error("sampler: the number of sequence slots must be >= 1, got " + std::to_string(slots));
  slots_.resize(size_t(slots));
  for (int64_t i = 0; i < slots; ++i)
    reset(i);
}

Sampler::Slot &Sampler::slotAt(int64_t slot) {
  if (slot < 0 || slot >= int64_t(slots_.size()))
    throw Error("sampler: slot " + std::to_string(slot) + " is outside [0, " +
                std::to_string(slots_.size()) + ")");
  return slots_[size_t(slot)];
}

void Sampler::reset(int64_t slot) {
  Slot &s = slotAt(slot);
  s.rng.seed(streamSeed(options_.seed, uint64_t(slot)));
  s.seen.clear();
}

void Sampler::reset(int64_t slot, uint64_t seed) {
  Slot &s = slotAt(slot);
  s.rng.seed(streamSeed(seed, 0));
  s.seen.clear();
}

int32_t Sampler::sample(int64_t slot, const float *logits, int64_t vocab,
                        const std::vector<int32_t> &history) {
  Slot &s = slotAt(slot);
  if (vocab < 1 || vocab > int64_t(std::numeric_limits<int32_t>::max()))
    throw Error("sampler: vocabulary size " + std::to_string(vocab) + " is out of range");
  const size_t n = size_t(vocab);

  std::vector<double> &z = s.z;
  z.resize(n);
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(logits[i]))
      throw Error("sampler: the logits of slot " + std::to_string(slot) + " hold " +
                  (std::isnan(logits[i]) ? "NaN" : "an infinity") + " at token id " +
                  std::to_string(i) + " (vocabulary " + std::to_string(vocab) + ")");
    z[i] = logits[i];
  }

  // 1. Repetition penalty, once per distinct id (HF gathers and scatters by id, so a token
  //    seen five times is penalized once, not five times).
  const double penalty = options_.repetitionPenalty;
  if (penalty != 1.0) {
    // The distinct ids of the history, kept across calls: a slot's history only grows
    // between resets, so each call marks just the new entries (O(new + distinct), not
    // O(history) per token).
    if (s.seen.size() != n || history.size() < s.seenUpTo) {
      s.seen.assign(n, 0);
      s.seenIds.clear();
      s.seenUpTo = 0;
    }
    for (size_t i = s.seenUpTo; i < history.size(); ++i) {
      const int32_t id = history[i];
      if (id < 0 || int64_t(id) >= vocab)
        throw Error("sampler: the history of slot " + std::to_string(slot) + " holds token id " +
                    std::to_string(id) + ", outside the vocabulary [0, " + std::to_string(vocab) +
                    ")");
      if (!s.seen[size_t(id)]) {
        s.seen[size_t(id)] = 1;
        s.seenIds.push_back(id);
      }
    }
    s.seenUpTo = history.size();
    for (int32_t id : s.seenIds) {
      double &v = z[size_t(id)];
      v = v > 0 ? v / penalty : v * penalty;
    }
  }

  // 2. Greedy: argmax, the first maximum wins (strict >), so ties go to the lowest id.
  if (options_.temperature == 0) {
    size_t best = 0;
    for (size_t i = 1; i < n; ++i)
      if (z[i] > z[best])
        best = i;
    return int32_t(best);
  }

  // 3. Temperature (and the maximum, for the max shift: top-k always keeps it).
  const double invT = 1.0 / options_.temperature;
  double maxZ = -std::numeric_limits<double>::infinity();
  for (double &v : z) {
    v *= invT;
    maxZ = std::max(maxZ, v);
  }

  // 4. Top-k: the k-th largest value is the threshold; everything >= it stays (HF's
  //    `scores < topk(scores)[-1]` removal, so ties at the threshold all stay).
  double threshold = -std::numeric_limits<double>::infinity();
  const int64_t k = options_.topK;
  if (k > 0 && k < vocab) {
    s.tmp.assign(z.begin(), z.end());
    std::nth_element(s.tmp.begin(), s.tmp.begin() + (k - 1), s.tmp.end(), std::greater<double>());
    threshold = s.tmp[size_t(k - 1)];
  }

  // Softmax weights of the kept set, max-shifted (left unnormalized: the draw and top-p
  // scale by the total instead); exp dominates the cost, so it is one pass.
  std::vector<Candidate> &cand = s.cand;
  cand.resize(n);
  size_t kept = 0;
  double total = 0;
  for (size_t i = 0; i < n; ++i)
    if (z[i] >= threshold) {
      double e = std::exp(z[i] - maxZ);
      cand[kept++] = {e, int32_t(i)};
      total += e;
    }
  cand.resize(kept);

  // 5. Top-p.
  size_t keep = cand.size();
  if (options_.topP < 1.0 && cand.size() > 1)
    keep = nucleusEnd(cand, options_.topP * total); // mass p of the unnormalized weights

  // 6. Draw: the first kept token whose running mass exceeds u * (kept mass).
  double keptMass = 0;
  for (size_t j = 0; j < keep; ++j)
    keptMass += cand[j].p;
  const double target = uniform(s.rng) * keptMass;
  double acc = 0;
  int32_t last = cand[0].id;
  for (size_t j = 0; j < keep; ++j) {
    if (cand[j].p <= 0)
      continue; // underflowed to 0: never drawable
    acc += cand[j].p;
    last = cand[j].id;
    if (target < acc)
      return cand[j].id;
  }
  return last; // target within rounding of keptMass
}

// Reorders `cand` so that its first N entries are the nucleus: the smallest set of tokens,
// taken by (weight desc, id asc), whose summed weight reaches `need`; returns N. A quickselect on
// mass, expected O(n): a full sort of a 64k vocabulary per token would cost milliseconds,
// and flat distributions have nuclei of thousands of tokens, so sorting a prefix is no
// cure. Invariants: cand[0, lo) is in the nucleus with mass `cum`; the nucleus ends in
// (lo, hi].
size_t Sampler::nucleusEnd(std::vector<Candidate> &cand, double need) {
  auto before = [](const Candidate &a, const Candidate &b) {
    return a.p != b.p ? a.p > b.p : a.id < b.id;
  };
  size_t lo = 0, hi = cand.size();
  double cum = 0;
  while (hi - lo > 32) {
    // Median of three (first, middle, last) as the pivot, so ordered input is not quadratic.
    Candidate a = cand[lo], b = cand[lo + (hi - lo) / 2], c = cand[hi - 1];
    if (before(b, a))
      std::swap(a, b);
    if (before(c, b))
      std::swap(b, c);
    if (before(b, a))
      std::swap(a, b);
    const Candidate pivot = b;
    // [lo, m): ranked before the pivot; then the pivot itself at m.
    size_t m = lo;
    for (size_t i = lo; i < hi; ++i)
      if (before(cand[i], pivot))
        std::swap(cand[i], cand[m++]);
    for (size_t i = m; i < hi; ++i)
      if (cand[i].id == pivot.id) {
        std::swap(cand[i], cand[m]);
        break;
      }
    double mass = 0;
    for (size_t i = lo; i < m; ++i)
      mass += cand[i].p;
    if (cum + mass >= need) {
      hi = m; // the nucleus ends among the tokens ranked before the pivot
      continue;
    }
    cum += mass + cand[m].p;
    lo = m + 1;
    if (cum >= need)
      return lo; // the pivot is the last token of the nucleus
  }
  // A short range is left: rank it (a total order, so the result is unique) and walk it.
  std::sort(cand.begin() + long(lo), cand.begin() + long(hi), before);
  for (size_t i = lo; i < hi; ++i) {
    cum += cand[i].p;
    if (cum >= need)
      return i + 1;
  }
  return hi; // rounding left the sum just below p: the range found above stands
}

} // namespace tnlm::generate
