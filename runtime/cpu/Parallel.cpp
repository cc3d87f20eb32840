//===- Parallel.cpp - persistent thread pool for the CPU kernels ----------===//
//
// Protocol: a job is published under `mu` with a new generation number; every worker runs
// each generation exactly once (the caller waits for all of them before publishing the next),
// taking chunk indices from an atomic counter until none are left.
//
//===----------------------------------------------------------------------===//
#include "runtime/cpu/Parallel.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace tnlm::cpu {
namespace {

using Body = std::function<void(int64_t, int64_t)>;

// True while this thread executes a chunk: nested parallelFor calls then run inline.
thread_local bool tInsideParallel = false;

int defaultThreadCount() {
  if (const char *env = std::getenv("TNLM_NUM_THREADS")) {
    char *end = nullptr;
    long n = std::strtol(env, &end, 10);
    if (end != env && *end == '\0' && n > 0 && n <= 1024)
      return static_cast<int>(n);
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

class Pool {
public:
  Pool() : threads(defaultThreadCount()) {}
  ~Pool() {
    std::lock_guard<std::mutex> call(callMu);
    stopWorkers();
  }

  int size() {
    std::lock_guard<std::mutex> call(callMu);
    return threads;
  }

  void setSize(int n) {
    std::lock_guard<std::mutex> call(callMu);
    int wanted = n > 0 ? n : defaultThreadCount();
    if (wanted == threads)
      return;
    stopWorkers(); // restarted lazily by the next job
    threads = wanted;
  }

  void run(int64_t n, int64_t grain, const Body &fn) {
    if (n <= 0)
      return;
    grain = std::max<int64_t>(grain, 1);
    if (tInsideParallel || n <= grain) {
      fn(0, n);
      return;
    }
    std::unique_lock<std::mutex> call(callMu);
    if (threads <= 1) {
      call.unlock();
      fn(0, n);
      return;
    }
    if (static_cast<int>(workers.size()) != threads - 1)
      startWorkers();

    // About four chunks per thread balances uneven work without tiny chunks.
    int64_t target = static_cast<int64_t>(threads) * 4;
    int64_t chunk = std::max(grain, (n + target - 1) / target);
    {
      std::lock_guard<std::mutex> lk(mu);
      body = &fn;
      total = n;
      chunkSize = chunk;
      numChunks = (n + chunk - 1) / chunk;
      nextChunk.store(0);
      error = nullptr;
      activeWorkers = static_cast<int>(workers.size());
      ++generation;
    }
    wake.notify_all();
    runChunks();
    std::exception_ptr failure;
    {
      std::unique_lock<std::mutex> lk(mu);
      done.wait(lk, [&] { return activeWorkers == 0; });
      body = nullptr;
      failure = error;
      error = nullptr;
    }
    if (failure)
      std::rethrow_exception(failure);
  }

private:
  void runChunks() {
    bool outer = tInsideParallel;
    tInsideParallel = true;
    for (;;) {
      int64_t c = nextChunk.fetch_add(1);
      if (c >= numChunks)
        break;
      int64_t begin = c * chunkSize;
      int64_t end = std::min(total, begin + chunkSize);
      try {
        (*body)(begin, end);
      } catch (...) {
        std::lock_guard<std::mutex> lk(errMu);
        if (!error)
          error = std::current_exception();
      }
    }
    tInsideParallel = outer;
  }

  void workerLoop(uint64_t seen) {
    for (;;) {
      {
        std::unique_lock<std::mutex> lk(mu);
        wake.wait(lk, [&] { return stopping || generation != seen; });
        if (stopping)
          return;
        seen = generation;
      }
      runChunks();
      std::lock_guard<std::mutex> lk(mu);
      if (--activeWorkers == 0)
        done.notify_one();
    }
  }

  // Both require callMu held.
  void startWorkers() {
    stopWorkers();
    uint64_t current;
    {
      std::lock_guard<std::mutex> lk(mu);
      stopping = false;
      current = generation;
    }
    for (int i = 0; i + 1 < threads; ++i)
      workers.emplace_back([this, current] { workerLoop(current); });
  }
  void stopWorkers() {
    {
      std::lock_guard<std::mutex> lk(mu);
      stopping = true;
    }
    wake.notify_all();
    for (std::thread &t : workers)
      t.join();
    workers.clear();
  }

  std::mutex callMu; // one job at a time; guards `threads` and `workers`
  int threads;
  std::vector<std::thread> workers;

  std::mutex mu; // guards the job fields below, `generation`, `stopping`, `activeWorkers`
  std::condition_variable wake, done;
  uint64_t generation = 0;
  bool stopping = false;
  int activeWorkers = 0;
  const Body *body = nullptr;
  int64_t total = 0, chunkSize = 1, numChunks = 0;
  std::atomic<int64_t> nextChunk{0};

  std::mutex errMu;
  std::exception_ptr error;
};

Pool &pool() {
  static Pool instance;
  return instance;
}

} // namespace

void setNumThreads(int n) { pool().setSize(n); }

int numThreads() { return pool().size(); }

void parallelFor(int64_t n, int64_t grain, const Body &body) { pool().run(n, grain, body); }

} // namespace tnlm::cpu
