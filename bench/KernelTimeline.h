//===- KernelTimeline.h - every kernel of a graph replay, timed by CUPTI ---===//
//
// The GPU's own record of what ran (CUPTI's activity API: one record per kernel, memcpy and
// memset, graph nodes included, start and end in ns on the GPU's clock), so that a train
// step replayed as one CUDA graph can be split by kernel without launching its steps one by
// one (which adds the launches' gaps) or serializing them (ncu, at base clocks). libcupti is
// opened with dlopen (TNLM_CUPTI, else libcupti.so.13 on the loader's path, else the
// toolkit's lib64): a benchmark without it reports that and runs on.
//
//===----------------------------------------------------------------------===//
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace tnlm::bench {

struct TimelineRecord {
  std::string name; ///< the kernel's name demangled without arguments; "memset 4096 bytes", ...
  uint64_t start = 0, end = 0;
};

class KernelTimeline {
public:
  /// Opens libcupti and starts recording; false (with `why`) when it cannot.
  bool start(std::string *why);
  /// The GPU clock now (ns, the records' clock): marks where a step begins and ends.
  uint64_t now() const;
  /// Stops recording and returns every record, sorted by start.
  std::vector<TimelineRecord> stop();
  ~KernelTimeline();

private:
  bool started_ = false;
};

struct TimelineSummary {
  double spanMs = 0; ///< first kernel's start to last one's end
  double busyMs = 0; ///< the union of the kernels' intervals
  double gapMs = 0;  ///< span - busy: where no kernel ran
  int64_t kernels = 0;
  struct Kind {
    std::string name;
    double ms = 0; ///< the sum of its kernels' durations
    int64_t count = 0;
  };
  std::vector<Kind> kinds; ///< slowest first
  /// The gaps by boundary: the kernel whose end last covered the timeline (`before`) and the
  /// one that started after the idle time (`after`); ms is the idle time summed over the
  /// boundaries of that pair of names, count how many there were. Largest first.
  struct Boundary {
    std::string before, after;
    double ms = 0;
    int64_t count = 0;
  };
  std::vector<Boundary> gaps;
  /// The longest idle intervals themselves (at most kLongest, longest first): where in the
  /// window (ms from its first record's start), how long, and the records around them (the
  /// one that covered the timeline before, the one that started after, and the next one).
  struct Idle {
    double atMs = 0, ms = 0;
    int64_t index = 0; ///< the record after it, counted from the window's first
    std::string before, after, next;
  };
  static constexpr size_t kLongest = 6;
  std::vector<Idle> longest;
};

/// The records whose start lies in [from, to), summarized (durations by name, busy, gaps and
/// the boundaries they sit at).
TimelineSummary summarize(const std::vector<TimelineRecord> &records, uint64_t from, uint64_t to);

} // namespace tnlm::bench
