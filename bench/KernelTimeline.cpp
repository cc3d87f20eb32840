//===- KernelTimeline.cpp - every kernel of a graph replay, timed by CUPTI -===//
#include "bench/KernelTimeline.h"

#include <cupti.h>
#include <cxxabi.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>

namespace tnlm::bench {
namespace {

struct Cupti {
  void *lib = nullptr;
  decltype(&cuptiActivityRegisterCallbacks) registerCallbacks = nullptr;
  decltype(&cuptiActivityEnable) enable = nullptr;
  decltype(&cuptiActivityDisable) disable = nullptr;
  decltype(&cuptiActivityFlushAll) flushAll = nullptr;
  decltype(&cuptiActivityGetNextRecord) nextRecord = nullptr;
  decltype(&cuptiGetTimestamp) timestamp = nullptr;
};

Cupti &api() {
  static Cupti c;
  return c;
}

std::mutex &recordsMutex() {
  static std::mutex m;
  return m;
}
std::vector<TimelineRecord> &records() {
  static std::vector<TimelineRecord> r;
  return r;
}

// "void tnlm::k<int>(float*, int)" → "tnlm::k<int>": the name without its parameter list.
std::string kernelName(const char *mangled) {
  if (!mangled)
    return "?";
  int status = 0;
  char *d = abi::__cxa_demangle(mangled, nullptr, nullptr, &status);
  std::string s = status == 0 && d ? d : mangled;
  std::free(d);
  // Cut at the '(' of the parameters (the last top-level one).
  int depth = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '<')
      ++depth;
    else if (s[i] == '>')
      --depth;
    else if (s[i] == '(' && depth == 0) {
      s.resize(i);
      break;
    }
  }
  if (s.rfind("void ", 0) == 0)
    s = s.substr(5);
  return s;
}

constexpr size_t kBufferBytes = 8u << 20;

void CUPTIAPI bufferRequested(uint8_t **buffer, size_t *size, size_t *maxRecords) {
  *buffer = static_cast<uint8_t *>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *maxRecords = 0;
}

void CUPTIAPI bufferCompleted(CUcontext, uint32_t, uint8_t *buffer, size_t, size_t validSize) {
  CUpti_Activity *rec = nullptr;
  std::vector<TimelineRecord> got;
  while (api().nextRecord(buffer, validSize, &rec) == CUPTI_SUCCESS) {
    switch (rec->kind) {
    case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
    case CUPTI_ACTIVITY_KIND_KERNEL: {
      const auto *k = reinterpret_cast<const CUpti_ActivityKernel10 *>(rec);
      got.push_back({kernelName(k->name), k->start, k->end});
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMCPY: {
      const auto *m = reinterpret_cast<const CUpti_ActivityMemcpy6 *>(rec);
      const char *dir = m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_HTOD   ? "HtoD"
                        : m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOH ? "DtoH"
                        : m->copyKind == CUPTI_ACTIVITY_MEMCPY_KIND_DTOD ? "DtoD"
                                                                         : "other";
      got.push_back({std::string("memcpy ") + dir + " " + std::to_string(m->bytes) + " bytes",
                     m->start, m->end});
      break;
    }
    case CUPTI_ACTIVITY_KIND_MEMSET: {
      const auto *m = reinterpret_cast<const CUpti_ActivityMemset4 *>(rec);
      got.push_back({"memset " + std::to_string(m->bytes) + " bytes", m->start, m->end});
      break;
    }
    default:
      break;
    }
  }
  std::free(buffer);
  std::lock_guard<std::mutex> lock(recordsMutex());
  records().insert(records().end(), got.begin(), got.end());
}

template <typename F> bool sym(void *lib, const char *name, F &f) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  return f != nullptr;
}

} // namespace

bool KernelTimeline::start(std::string *why) {
  Cupti &c = api();
  if (!c.lib) {
    std::vector<std::string> paths;
    if (const char *p = std::getenv("TNLM_CUPTI"))
      paths.push_back(p);
    paths.push_back("libcupti.so.13");
    paths.push_back("/usr/local/cuda/lib64/libcupti.so.13");
    paths.push_back("/usr/local/cuda/extras/CUPTI/lib64/libcupti.so.13");
    for (const std::string &p : paths)
      if ((c.lib = dlopen(p.c_str(), RTLD_NOW | RTLD_LOCAL)))
        break;
    if (!c.lib) {
      *why = "libcupti.so.13 not found (set TNLM_CUPTI to its path)";
      return false;
    }
    if (!sym(c.lib, "cuptiActivityRegisterCallbacks", c.registerCallbacks) ||
        !sym(c.lib, "cuptiActivityEnable", c.enable) ||
        !sym(c.lib, "cuptiActivityDisable", c.disable) ||
        !sym(c.lib, "cuptiActivityFlushAll", c.flushAll) ||
        !sym(c.lib, "cuptiActivityGetNextRecord", c.nextRecord) ||
        !sym(c.lib, "cuptiGetTimestamp", c.timestamp)) {
      *why = "libcupti lacks the activity API";
      c.lib = nullptr;
      return false;
    }
  }
  if (c.registerCallbacks(bufferRequested, bufferCompleted) != CUPTI_SUCCESS ||
      c.enable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) != CUPTI_SUCCESS) {
    *why = "CUPTI refused to record kernels";
    return false;
  }
  c.enable(CUPTI_ACTIVITY_KIND_MEMCPY);
  c.enable(CUPTI_ACTIVITY_KIND_MEMSET);
  started_ = true;
  return true;
}

uint64_t KernelTimeline::now() const {
  uint64_t t = 0;
  if (api().timestamp)
    api().timestamp(&t);
  return t;
}

std::vector<TimelineRecord> KernelTimeline::stop() {
  if (!started_)
    return {};
  Cupti &c = api();
  c.flushAll(1); // CUPTI_ACTIVITY_FLAG_FLUSH_FORCED
  c.disable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  c.disable(CUPTI_ACTIVITY_KIND_MEMCPY);
  c.disable(CUPTI_ACTIVITY_KIND_MEMSET);
  started_ = false;
  std::vector<TimelineRecord> out;
  {
    std::lock_guard<std::mutex> lock(recordsMutex());
    out.swap(records());
  }
  std::sort(out.begin(), out.end(),
            [](const TimelineRecord &a, const TimelineRecord &b) { return a.start < b.start; });
  return out;
}

KernelTimeline::~KernelTimeline() {
  if (started_)
    stop();
}

TimelineSummary summarize(const std::vector<TimelineRecord> &recs, uint64_t from, uint64_t to) {
  TimelineSummary s;
  std::map<std::string, TimelineSummary::Kind> kinds;
  std::map<std::pair<std::string, std::string>, TimelineSummary::Boundary> gaps;
  uint64_t first = 0, last = 0, busy = 0, coveredTo = 0;
  const std::string *coveredBy = nullptr;                      // the record whose end is coveredTo
  std::vector<std::pair<TimelineSummary::Idle, size_t>> idles; // + the record after's position
  for (size_t at = 0; at < recs.size(); ++at) {
    const TimelineRecord &r = recs[at];
    if (r.start < from || r.start >= to || r.end < r.start)
      continue;
    if (s.kernels == 0)
      first = r.start, coveredTo = r.start, coveredBy = &r.name; // (even if it lasts 0 ns)
    ++s.kernels;
    last = std::max(last, r.end);
    // Records are sorted by start: the union grows by what lies past what is covered.
    if (coveredBy && r.start > coveredTo) { // idle from coveredTo to r.start
      TimelineSummary::Boundary &g = gaps[{*coveredBy, r.name}];
      g.before = *coveredBy, g.after = r.name;
      g.ms += double(r.start - coveredTo) / 1e6;
      ++g.count;
      TimelineSummary::Idle idle;
      idle.atMs = double(coveredTo - first) / 1e6;
      idle.ms = double(r.start - coveredTo) / 1e6;
      idle.index = s.kernels - 1;
      idle.before = *coveredBy, idle.after = r.name;
      idles.push_back({idle, at});
    }
    if (r.end > coveredTo) {
      busy += r.end - std::max(r.start, coveredTo);
      coveredTo = r.end;
      coveredBy = &r.name;
    }
    TimelineSummary::Kind &k = kinds[r.name];
    k.name = r.name;
    k.ms += double(r.end - r.start) / 1e6;
    ++k.count;
  }
  if (s.kernels) {
    s.spanMs = double(last - first) / 1e6;
    s.busyMs = double(busy) / 1e6;
    s.gapMs = s.spanMs - s.busyMs;
  }
  for (auto &[name, k] : kinds)
    s.kinds.push_back(k);
  std::stable_sort(s.kinds.begin(), s.kinds.end(),
                   [](const auto &x, const auto &y) { return x.ms > y.ms; });
  for (auto &[names, g] : gaps)
    s.gaps.push_back(g);
  std::stable_sort(idles.begin(), idles.end(),
                   [](const auto &x, const auto &y) { return x.first.ms > y.first.ms; });
  if (idles.size() > TimelineSummary::kLongest)
    idles.resize(TimelineSummary::kLongest);
  for (auto &[idle, at] : idles) {
    // The next record in the window after the one that ended the idle time.
    for (size_t n = at + 1; n < recs.size(); ++n)
      if (recs[n].start >= from && recs[n].start < to && recs[n].end >= recs[n].start) {
        idle.next = recs[n].name;
        break;
      }
    s.longest.push_back(idle);
  }
  std::stable_sort(s.gaps.begin(), s.gaps.end(),
                   [](const auto &x, const auto &y) { return x.ms > y.ms; });
  return s;
}

} // namespace tnlm::bench
