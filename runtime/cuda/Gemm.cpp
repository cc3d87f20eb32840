//===- Gemm.cpp - y = x·Wᵀ on the GPU through cuBLASLt --------------------===//
#include "runtime/cuda/Gemm.h"

#include "runtime/Error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <vector>

#include <unistd.h>

namespace tnlm::cuda {
namespace {

/// The largest power of two dividing the address, up to 256: cuBLASLt only picks kernels
/// whose vector loads the pointers allow, and assumes 256 unless told.
int alignmentOf(CUdeviceptr ptr) {
  int alignment = 1;
  while (alignment < 256 && ptr % (2 * alignment) == 0)
    alignment *= 2;
  return alignment;
}

std::string describe(int form, GemmType type, const GemmShape &s) {
  static const char *const kForms[] = {"GEMM", "GEMM dx = dy.W", "GEMM dW = dy^T.x"};
  char text[220];
  std::snprintf(text, sizeof text, "%s %s rows=%lld in=%lld out=%lld (ldx=%lld ldw=%lld ldy=%lld)",
                type == GemmType::Bf16         ? "bf16"
                : type == GemmType::Bf16F32Out ? "bf16 -> f32"
                                               : "f32",
                kForms[form], (long long)s.rows, (long long)s.in, (long long)s.out,
                (long long)s.ldx, (long long)s.ldw, (long long)s.ldy);
  return text;
}

std::string join(std::string_view context, const std::string &what) {
  return context.empty() ? what : std::string(context) + ": " + what;
}

} // namespace

struct Gemm::Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t w = nullptr, x = nullptr, y = nullptr;
  cublasLtMatmulPreference_t preference = nullptr;
  cublasLtMatmulAlgo_t algo = {};
  size_t workspace = 0;
  int64_t calls = 0;         // cublasLtMatmul calls queued with it (a graph's capture counts once)
  float alpha = 1, beta = 0; // of the call that made it (TNLM_GEMM_LOG)

  ~Plan() {
    const CublasLtApi &api = cublasLt();
    if (preference)
      api.cublasLtMatmulPreferenceDestroy(preference);
    for (cublasLtMatrixLayout_t layout : {w, x, y})
      if (layout)
        api.cublasLtMatrixLayoutDestroy(layout);
    if (desc)
      api.cublasLtMatmulDescDestroy(desc);
  }
};

Gemm::Gemm(const Context &context, size_t workspaceBytes)
    : context_(context), workspace_(workspaceBytes, "the cuBLASLt workspace") {
  tune_ = tuningFromEnvironment();
  tuneSplitK_ = splitKTuningFromEnvironment();
  if (const char *cache = std::getenv("TNLM_GEMM_TUNE_CACHE"))
    cachePath_ = cache;
  TNLM_CUBLASLT(cublasLtCreate, (&handle_), "creating the cuBLASLt handle");
}

void Gemm::setTuneCache(const std::string &path) {
  cachePath_ = path;
  cacheLoaded_ = false;
  cacheWritable_ = true;
  cache_ = TuneCache{};
}

std::string Gemm::fingerprint() const {
  return "cuBLASLt " + std::to_string(cublasLt().cublasLtGetVersion()) + " on " +
         context_.deviceName() + " (" + std::to_string(context_.multiprocessors()) +
         " SMs), workspace " + std::to_string(workspace_.size()) + " bytes";
}

Gemm::TuneCache Gemm::parseTuneCache(const std::string &text, const std::string &source) {
  const std::string what = source + ": not a GEMM tuning cache (TNLM_GEMM_TUNE_CACHE): ";
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception &e) {
    throw Error(what + "not JSON (" + e.what() + ")");
  }
  if (!j.is_object() || !j.contains("fingerprint") || !j["fingerprint"].is_string() ||
      !j.contains("plans") || !j["plans"].is_array())
    throw Error(what + "expected {\"fingerprint\": string, \"plans\": [...]}");
  TuneCache cache;
  cache.fingerprint = j["fingerprint"].get<std::string>();
  size_t i = 0;
  for (const nlohmann::json &p : j["plans"]) {
    const std::string at = what + "plan " + std::to_string(i++) + ": ";
    if (!p.is_object() || !p.contains("key") || !p["key"].is_array() ||
        p["key"].size() != size_t(kKeyFields) || !p.contains("index") ||
        !p["index"].is_number_integer())
      throw Error(at + "expected {\"key\": [" + std::to_string(kKeyFields) +
                  " integers], \"index\": integer}");
    std::vector<int64_t> key;
    for (const nlohmann::json &v : p["key"]) {
      if (!v.is_number_integer())
        throw Error(at + "a key field is not an integer");
      key.push_back(v.get<int64_t>());
    }
    const int64_t index = p["index"].get<int64_t>();
    if (index < 0 || index >= kTuneCandidates)
      throw Error(at + "index " + std::to_string(index) + " is outside [0, " +
                  std::to_string(kTuneCandidates) + ")");
    if (!cache.choices.emplace(std::move(key), int(index)).second)
      throw Error(at + "the same key twice");
  }
  return cache;
}

std::string Gemm::formatTuneCache(const TuneCache &cache) {
  nlohmann::json plans = nlohmann::json::array();
  for (const auto &[key, index] : cache.choices)
    plans.push_back({{"key", key}, {"index", index}});
  nlohmann::json j = {{"fingerprint", cache.fingerprint}, {"plans", plans}};
  return j.dump(1) + "\n";
}

void Gemm::loadTuneCache() {
  cache_ = TuneCache{};
  std::error_code error;
  if (!std::filesystem::exists(cachePath_, error)) {
    if (error)
      throw Error(cachePath_ + ": cannot look at the GEMM tuning cache (TNLM_GEMM_TUNE_CACHE): " +
                  error.message());
    cacheLoaded_ = true; // no file yet: an empty cache (written when a plan is tuned)
    return;
  }
  std::ifstream in(cachePath_, std::ios::binary);
  if (!in)
    throw Error(cachePath_ + ": cannot read the GEMM tuning cache (TNLM_GEMM_TUNE_CACHE)");
  std::ostringstream text;
  text << in.rdbuf();
  // An empty file (made by touch or mktemp) is an empty cache; anything else must parse
  // (a malformed file is refused each time, never overwritten).
  TuneCache read = text.str().find_first_not_of(" \t\r\n") == std::string::npos
                       ? TuneCache{fingerprint(), {}}
                       : parseTuneCache(text.str(), cachePath_);
  cacheLoaded_ = true;
  if (read.fingerprint != fingerprint()) {
    std::fprintf(stderr,
                 "gemm tune: %s was made for %s, this is %s: its %zu plans are not used (the "
                 "file is rewritten, without them, as plans are tuned)\n",
                 cachePath_.c_str(), read.fingerprint.c_str(), fingerprint().c_str(),
                 read.choices.size());
    return;
  }
  cache_ = std::move(read);
}

void Gemm::saveTuneCache() {
  if (!cacheWritable_)
    return;
  // A name of this process's own beside FILE, renamed over it once written whole.
  const std::string tmp = cachePath_ + "." + std::to_string(getpid()) + ".tmp";
  std::string problem;
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << formatTuneCache(cache_);
    out.close();
    if (!out)
      problem = "cannot write " + tmp;
  }
  if (problem.empty() && std::rename(tmp.c_str(), cachePath_.c_str()) != 0)
    problem = "cannot rename " + tmp + " over it";
  if (problem.empty())
    return;
  // Best effort: the run goes on with its tuned plans, the choices are just not recorded.
  std::remove(tmp.c_str());
  cacheWritable_ = false;
  std::fprintf(stderr,
               "gemm tune: %s: %s; the GEMM tuning cache (TNLM_GEMM_TUNE_CACHE) is not written "
               "in this run\n",
               cachePath_.c_str(), problem.c_str());
}

bool Gemm::splitKTuningFromEnvironment() {
  const char *v = std::getenv("TNLM_GEMM_TUNE_SPLITK");
  if (!v || !*v)
    return false;
  const std::string s(v);
  if (s != "0" && s != "1")
    throw Error("TNLM_GEMM_TUNE_SPLITK=" + s +
                ": expected 0 (the tuning skips candidates that split K, the default: each "
                "adds a reduction kernel to the step) or 1 (it times them too)");
  return s == "1";
}

int Gemm::tuningFromEnvironment() {
  const char *value = std::getenv("TNLM_GEMM_TUNE");
  if (!value || !*value)
    return 0;
  const std::string_view v(value);
  if (v != "0" && v != "1" && v != "2")
    throw Error("TNLM_GEMM_TUNE=" + std::string(v) +
                ": expected 0 (cuBLASLt's first algorithm, the default), 1 (time its first " +
                std::to_string(kTuneCandidates) +
                " for each GEMM shape and keep the fastest) or 2 (as 1, printing the times)");
  return v[0] - '0';
}

namespace {
/// One configuration attribute of a cuBLASLt algorithm (its tile, stages, split-K, ...), -1 where
/// cuBLASLt does not say.
int32_t algoConfig(const cublasLtMatmulAlgo_t &algo, cublasLtMatmulAlgoConfigAttributes_t what) {
  int32_t value = -1;
  size_t written = 0;
  if (cublasLt().cublasLtMatmulAlgoConfigGetAttribute(&algo, what, &value, sizeof value,
                                                      &written) != CUBLAS_STATUS_SUCCESS)
    return -1;
  return value;
}
} // namespace

void Gemm::writeLog() const {
  const char *path = std::getenv("TNLM_GEMM_LOG");
  if (!path || !*path || plans_.empty())
    return;
  FILE *f = std::fopen(path, "a");
  if (!f) {
    std::fprintf(stderr, "gemm log: cannot open %s (TNLM_GEMM_LOG): not written\n", path);
    return;
  }
  // One line per plan: its key (as the tuning cache's), the first call's alpha and beta, the
  // calls made with it, and the algorithm's configuration (cuBLASLt's ids).
  for (const auto &[key, plan] : plans_) {
    const auto [form, type, rows, in, out, ldx, ldw, ldy, alignA, alignB, alignD] = key;
    std::fprintf(f,
                 "gemm form=%d type=%d rows=%lld in=%lld out=%lld ldx=%lld ldw=%lld ldy=%lld "
                 "align=%d,%d,%d alpha=%g beta=%g calls=%lld tile=%d stages=%d splitk=%d "
                 "reduction=%d swizzle=%d cluster=%d\n",
                 form, type, (long long)rows, (long long)in, (long long)out, (long long)ldx,
                 (long long)ldw, (long long)ldy, alignA, alignB, alignD, double(plan->alpha),
                 double(plan->beta), (long long)plan->calls,
                 algoConfig(plan->algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
                 algoConfig(plan->algo, CUBLASLT_ALGO_CONFIG_STAGES_ID),
                 algoConfig(plan->algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                 algoConfig(plan->algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
                 algoConfig(plan->algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
                 algoConfig(plan->algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID));
  }
  std::fclose(f);
}

Gemm::~Gemm() {
  writeLog();
  plans_.clear();
  if (handle_)
    cublasLt().cublasLtDestroy(handle_);
}

Gemm::Plan &Gemm::plan(const Key &key, std::string_view context, const Call &call) {
  auto cached = plans_.find(key);
  if (cached != plans_.end())
    return *cached->second;

  auto [formCode, typeCode, rows, in, out, ldx, ldw, ldy, alignA, alignB, alignD] = key;
  const Form form = Form(formCode);
  GemmType type = GemmType(typeCode);
  const cudaDataType_t data = type == GemmType::F32 ? CUDA_R_32F : CUDA_R_16BF;
  const cudaDataType_t yType = type == GemmType::Bf16 ? CUDA_R_16BF : CUDA_R_32F;
  auto plan = std::make_unique<Plan>();
  const std::string where = join(context, describe(formCode, type, {rows, in, out, ldx, ldw, ldy}));

  TNLM_CUBLASLT(cublasLtMatmulDescCreate, (&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), where);
  // Column-major views of the row-major operands (see Gemm.h): W (or dW) as [in, out], x (or
  // dx) as [in, rows], y (or dy) as [out, rows].
  //   Linear:     D = y  [out, rows] = Aᵀ·B, A = W [in, out], B = x [in, rows]      ("TN")
  //   GradInput:  D = dx [in, rows]  = A·B,  A = W [in, out], B = dy [out, rows]    ("NN")
  //   GradWeight: D = dW [in, out]   = A·Bᵀ, A = x [in, rows], B = dy [out, rows]   ("NT")
  const cublasOperation_t opA = form == Form::Linear ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opB = form == Form::GradWeight ? CUBLAS_OP_T : CUBLAS_OP_N;
  TNLM_CUBLASLT(cublasLtMatmulDescSetAttribute,
                (plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA), where);
  TNLM_CUBLASLT(cublasLtMatmulDescSetAttribute,
                (plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB), where);
  auto layout = [&](cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t r, int64_t c, int64_t ld) {
    TNLM_CUBLASLT(cublasLtMatrixLayoutCreate, (l, t, uint64_t(r), uint64_t(c), ld), where);
  };
  // plan->w, plan->x, plan->y hold A, B and D (= C).
  switch (form) {
  case Form::Linear:
    layout(&plan->w, data, in, out, ldw), layout(&plan->x, data, in, rows, ldx);
    layout(&plan->y, yType, out, rows, ldy);
    break;
  case Form::GradInput:
    layout(&plan->w, data, in, out, ldw), layout(&plan->x, data, out, rows, ldy);
    layout(&plan->y, yType, in, rows, ldx);
    break;
  case Form::GradWeight:
    layout(&plan->w, data, in, rows, ldx), layout(&plan->x, data, out, rows, ldy);
    layout(&plan->y, yType, in, out, ldw);
    break;
  }

  TNLM_CUBLASLT(cublasLtMatmulPreferenceCreate, (&plan->preference), where);
  size_t workspaceBytes = workspace_.size();
  TNLM_CUBLASLT(cublasLtMatmulPreferenceSetAttribute,
                (plan->preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspaceBytes,
                 sizeof workspaceBytes),
                where);
  const std::pair<cublasLtMatmulPreferenceAttributes_t, int> alignments[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignA},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignB},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignD},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignD}};
  for (const auto &[attribute, bytes] : alignments) {
    uint32_t value = uint32_t(bytes);
    TNLM_CUBLASLT(cublasLtMatmulPreferenceSetAttribute,
                  (plan->preference, attribute, &value, sizeof value), where);
  }

  // The tuning cache's choice for this key, if it has one.
  const std::vector<int64_t> cacheKey = {formCode, typeCode, rows,   in,     out,   ldx,
                                         ldw,      ldy,      alignA, alignB, alignD};
  if (!cachePath_.empty() && !cacheLoaded_)
    loadTuneCache();
  const auto hit = cachePath_.empty() ? cache_.choices.end() : cache_.choices.find(cacheKey);
  const bool inCache = hit != cache_.choices.end();
  cublasLtMatmulHeuristicResult_t results[kTuneCandidates] = {};
  int found = 0;
  const int wanted = tune_ || inCache ? kTuneCandidates : 1;
  TNLM_CUBLASLT(cublasLtMatmulAlgoGetHeuristic,
                (handle_, plan->desc, plan->w, plan->x, plan->y, plan->y, plan->preference, wanted,
                 results, &found),
                where);
  if (found == 0 || results[0].state != CUBLAS_STATUS_SUCCESS)
    throw Error(where + ": cuBLASLt has no algorithm for this shape and alignment (A, B, D " +
                "aligned to " + std::to_string(alignA) + ", " + std::to_string(alignB) + ", " +
                std::to_string(alignD) + " bytes)");
  plan->algo = results[0].algo;
  plan->workspace = results[0].workspaceSize;
  plan->alpha = call.alpha, plan->beta = call.beta;
  const bool usable = inCache && hit->second < found &&
                      results[hit->second].state == CUBLAS_STATUS_SUCCESS &&
                      results[hit->second].workspaceSize <= workspace_.size();
  if (inCache && !usable)
    std::fprintf(stderr,
                 "gemm tune: %s: %s: the cached algorithm #%d is not among cuBLASLt's %d "
                 "candidates here (%s)\n",
                 cachePath_.c_str(), where.c_str(), hit->second, found,
                 tune_ ? "tuned again" : "its first taken");
  if (usable) {
    plan->algo = results[hit->second].algo;
    plan->workspace = results[hit->second].workspaceSize;
    ++cachedPlans_;
  } else if (tune_ && found > 1) {
    const int chosen = tune(*plan, key, where, call, results, found);
    if (chosen >= 0 && !cachePath_.empty()) {
      cache_.fingerprint = fingerprint();
      cache_.choices[cacheKey] = chosen;
      saveTuneCache();
    }
  }
  return *plans_.emplace(key, std::move(plan)).first->second;
}

int Gemm::tune(Plan &plan, const Key &key, const std::string &where, const Call &call,
               const cublasLtMatmulHeuristicResult_t *results, int found) {
  const DriverApi &driver = cuda::driver();
  const CublasLtApi &api = cublasLt();
  CUstreamCaptureStatus capturing = CU_STREAM_CAPTURE_STATUS_NONE;
  TNLM_CU(cuStreamIsCapturing, (context_.stream(), &capturing), where);
  if (capturing != CU_STREAM_CAPTURE_STATUS_NONE)
    return -1; // nothing may be timed (or allocated) while a graph is being captured
  // Where D is also C (beta != 0, e.g. gradients accumulated into), the candidates write a
  // scratch output of D's extent instead, so D keeps its value for the call itself.
  const auto [formCode, typeCode, rows, in, out, ldx, ldw, ldy, alignA, alignB, alignD] = key;
  DeviceBuffer scratch;
  CUdeviceptr d = call.d;
  if (call.beta != 0.0f) {
    const Form form = Form(formCode);
    const int64_t cols = form == Form::GradWeight ? out : rows;
    const int64_t ld = form == Form::Linear ? ldy : form == Form::GradInput ? ldx : ldw;
    const int64_t height = form == Form::Linear ? out : in;
    const size_t elem = GemmType(typeCode) == GemmType::Bf16 ? 2 : 4;
    try {
      scratch = DeviceBuffer(size_t((cols - 1) * ld + height) * elem, "the GEMM tuning's output");
    } catch (const Error &) {
      if (tune_ > 1)
        std::fprintf(stderr, "gemm tune: %s: no memory for a scratch output, heuristic kept\n",
                     where.c_str());
      return -1;
    }
    d = scratch.get();
  }
  CUevent start = nullptr, stop = nullptr;
  if (driver.cuEventCreate(&start, CU_EVENT_DEFAULT) != CUDA_SUCCESS)
    return -1; // no timing: the heuristic's choice stays
  if (driver.cuEventCreate(&stop, CU_EVENT_DEFAULT) != CUDA_SUCCESS) {
    driver.cuEventDestroy(start);
    return -1;
  }
  const float beta = 0.0f; // the scratch or in-place output is not read
  auto runOnce = [&](int i) {
    return api.cublasLtMatmul(
        handle_, plan.desc, &call.alpha, reinterpret_cast<const void *>(call.a), plan.w,
        reinterpret_cast<const void *>(call.b), plan.x, &beta, reinterpret_cast<const void *>(d),
        plan.y, reinterpret_cast<void *>(d), plan.y, &results[i].algo,
        reinterpret_cast<void *>(workspace()), results[i].workspaceSize, context_.stream());
  };
  std::vector<float> times(size_t(found), -1.0f);
  // Every candidate once, untimed (the kernels loaded, the caches warm for all alike); then
  // each timed from a drained stream.
  std::vector<bool> runs(size_t(found), false);
  // A candidate that splits K is not timed (TNLM_GEMM_TUNE_SPLITK=0, the default: measured
  // 43.46-43.65 ms per 385M step against 43.76 with them, bench/RESULTS.md), the heuristic's
  // first staying a candidate whatever it is.
  auto splits = [&](int i) {
    return i > 0 && !tuneSplitK_ &&
           algoConfig(results[i].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) > 1;
  };
  for (int i = 0; i < found; ++i)
    runs[size_t(i)] = results[i].state == CUBLAS_STATUS_SUCCESS &&
                      results[i].workspaceSize <= workspace_.size() && !splits(i) &&
                      runOnce(i) == CUBLAS_STATUS_SUCCESS; // else it cannot run here
  bool failed = driver.cuStreamSynchronize(context_.stream()) != CUDA_SUCCESS;
  // kTuneRounds rounds, each timing every candidate once (the mean of kTuneRuns runs); a
  // candidate's time is its best round, so that a clock or neighbour's hiccup in one round
  // does not decide the choice (the rounds interleave the candidates, so a drift hits all).
  for (int round = 0; round < kTuneRounds && !failed; ++round) {
    for (int i = 0; i < found && !failed; ++i) {
      if (!runs[size_t(i)])
        continue;
      bool ok = driver.cuEventRecord(start, context_.stream()) == CUDA_SUCCESS;
      for (int r = 0; ok && r < kTuneRuns; ++r)
        ok = runOnce(i) == CUBLAS_STATUS_SUCCESS;
      float ms = 0.0f;
      ok = ok && driver.cuEventRecord(stop, context_.stream()) == CUDA_SUCCESS &&
           driver.cuEventSynchronize(stop) == CUDA_SUCCESS &&
           driver.cuEventElapsedTime(&ms, start, stop) == CUDA_SUCCESS;
      if (!ok)
        failed = true; // an error of the stream: leave it to the call itself to report
      else if (times[size_t(i)] < 0.0f || ms / kTuneRuns < times[size_t(i)])
        times[size_t(i)] = ms / kTuneRuns;
    }
  }
  driver.cuEventDestroy(start);
  driver.cuEventDestroy(stop);
  // The scratch may be freed only after the candidates ran (cuMemFree does not wait for the
  // stream).
  if (scratch.get())
    context_.synchronize(where + ": the GEMM tuning");
  if (failed)
    return -1;
  int best = -1;
  for (int i = 0; i < found; ++i)
    if (times[size_t(i)] >= 0.0f && (best < 0 || times[size_t(i)] < times[size_t(best)]))
      best = i;
  if (best < 0)
    return -1;
  ++timedPlans_;
  // Keep the heuristic's choice unless another is faster by more than timing noise
  // (kTuneMargin), so that runs on the same GPU make the same choices.
  if (best != 0 && times[0] >= 0.0f && times[size_t(best)] > (1.0f - kTuneMargin) * times[0])
    best = 0;
  if (best != 0)
    ++changedPlans_;
  plan.algo = results[best].algo;
  plan.workspace = results[best].workspaceSize;
  if (tune_ > 1) {
    std::string line = "gemm tune: " + where + ":";
    char text[48];
    for (int i = 0; i < found; ++i) {
      if (times[size_t(i)] < 0.0f)
        std::snprintf(text, sizeof text, " #%d -", i);
      else
        std::snprintf(text, sizeof text, " #%d %.4f ms%s", i, double(times[size_t(i)]),
                      i == best ? " (kept)" : "");
      line += text;
    }
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  return best;
}

void Gemm::linear(GemmType type, const GemmShape &shape, CUdeviceptr x, CUdeviceptr w,
                  CUdeviceptr y, std::string_view context, float alpha, float beta) {
  run(Form::Linear, type, shape, w, x, y, context, alpha, beta);
}

void Gemm::gradInput(GemmType type, const GemmShape &shape, CUdeviceptr dy, CUdeviceptr w,
                     CUdeviceptr dx, std::string_view context, float alpha, float beta) {
  run(Form::GradInput, type, shape, w, dy, dx, context, alpha, beta);
}

void Gemm::gradWeight(GemmType type, const GemmShape &shape, CUdeviceptr dy, CUdeviceptr x,
                      CUdeviceptr dw, std::string_view context, float alpha, float beta) {
  run(Form::GradWeight, type, shape, x, dy, dw, context, alpha, beta);
}

void Gemm::run(Form form, GemmType type, const GemmShape &shape, CUdeviceptr a, CUdeviceptr b,
               CUdeviceptr d, std::string_view context, float alpha, float beta) {
  GemmShape s = shape;
  s.ldx = s.ldx ? s.ldx : s.in;
  s.ldw = s.ldw ? s.ldw : s.in;
  s.ldy = s.ldy ? s.ldy : s.out;
  if (s.rows < 0 || s.in <= 0 || s.out <= 0 || s.ldx < s.in || s.ldw < s.in || s.ldy < s.out)
    throw Error(join(context, describe(int(form), type, s) +
                                  ": sizes must be positive and each leading dimension at least "
                                  "its row length"));
  if (s.rows == 0) {
    if (form == Form::GradWeight && beta != 1.0f)
      throw Error(join(context, describe(int(form), type, s) +
                                    ": no rows: dW would be left as it is (beta must be 1)"));
    return;
  }
  Key key{int(form), int(type), s.rows,         s.in,           s.out,         s.ldx,
          s.ldw,     s.ldy,     alignmentOf(a), alignmentOf(b), alignmentOf(d)};
  Plan &p = plan(key, context, Call{a, b, d, alpha, beta});
  ++p.calls;
  cublasStatus_t status = cublasLt().cublasLtMatmul(
      handle_, p.desc, &alpha, reinterpret_cast<const void *>(a), p.w,
      reinterpret_cast<const void *>(b), p.x, &beta, reinterpret_cast<const void *>(d), p.y,
      reinterpret_cast<void *>(d), p.y, &p.algo, reinterpret_cast<void *>(workspace()), p.workspace,
      context_.stream());
  if (status != CUBLAS_STATUS_SUCCESS)
    throwCublasLtError(status, "cublasLtMatmul", join(context, describe(int(form), type, s)));
}

void Gemm::createSideWorkspace() {
  if (!sideWorkspace_.get())
    sideWorkspace_ = DeviceBuffer(workspace_.size(), "the side stream's cuBLASLt workspace");
}

CUdeviceptr Gemm::workspace() const {
  if (context_.onSideStream()) {
    if (!sideWorkspace_.get())
      throw Error("a GEMM on the side stream without its workspace (Gemm::createSideWorkspace)");
    return sideWorkspace_.get();
  }
  return workspace_.get();
}

} // namespace tnlm::cuda
