//===- Gemm.h - y = x·Wᵀ on the GPU through cuBLASLt -----------*- C++ -*-===//
//
// The linear layers of a plan: y[rows, out] = alpha · x[rows, in] · W[out, in]ᵀ + beta · y,
// all row-major with leading dimensions (so q, k, v, u read as column slices of one fused
// projection output), weights in their Hugging Face [out, in] layout.
//   Bf16: bf16 x, W, y; fp32 accumulation and scaling (CUBLAS_COMPUTE_32F), so the only
//         rounding beyond fp32 sums is the final one to bf16 (relative 2^-8 at most).
//   Bf16F32Out: bf16 x and W, fp32 accumulation and an fp32 y (the logits: no bf16 rounding
//         of the result).
//   F32:  fp32 everything, no TF32.
// In cuBLASLt's column-major terms this is yᵀ[out, rows] = W · xᵀ: A = W stored as a
// column-major [in, out] matrix with op T, B = xᵀ as column-major [in, rows], which is the
// "TN" layout Hopper's kernels prefer.
//
// A plan (descriptors, layouts, the algorithm cuBLASLt's heuristic chose) is made on the
// first call of each shape and pointer alignment and kept, so the calls inside a captured
// CUDA graph, and all later calls, do no set-up. The workspace is allocated once.
//
// Tuning (TNLM_GEMM_TUNE=1, or setTuning): the plan times up to kTuneCandidates of the
// heuristic's algorithms on the call's own operands (one untimed run each, then kTuneRounds
// rounds of the mean of kTuneRuns each, a candidate's best round counting) and keeps the
// fastest where it beats the heuristic's first by more than kTuneMargin. The output is
// written in place where beta = 0 (the call overwrites it next) and into a scratch copy of its
// shape otherwise; where that scratch does not fit in the GPU's memory, or the stream is being
// captured, the heuristic's first choice is kept. TNLM_GEMM_TUNE=2 also prints each plan's times to
// stderr. Off by default: the choice depends on timings, so two runs may pick different algorithms
// (whose sums round differently). TNLM_GEMM_TUNE_CACHE=FILE (or setTuneCache) makes the choices
// repeatable: a plan found in FILE takes the algorithm recorded there (its index in the heuristic's
// list, no timing), and each plan tuned writes its choice to FILE, so a later run with the same
// FILE (a resumed training run) computes with the same algorithms.
//
// TNLM_GEMM_LOG=FILE: when the Gemm is destroyed, one line per plan is appended to FILE (its
// shape, alignments, alpha and beta, how many calls were queued with it and the algorithm's
// configuration): the input of tnlm-bench-gemm (bench/gemm.cpp).
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CUDA_GEMM_H
#define TNLM_RUNTIME_CUDA_GEMM_H

#include "runtime/cuda/CudaContext.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <tuple>
#include <vector>

namespace tnlm::cuda {

enum class GemmType { Bf16, F32, Bf16F32Out };

struct GemmShape {
  int64_t rows = 0, in = 0, out = 0;
  /// Leading dimensions in elements; 0 means dense (in, in, out).
  int64_t ldx = 0, ldw = 0, ldy = 0;
};

class Gemm {
public:
  static constexpr size_t kDefaultWorkspace = 32u << 20; // what Hopper's kernels ask for

  /// Creates the cuBLASLt handle and the workspace. Throws if cuBLASLt is missing.
  explicit Gemm(const Context &context, size_t workspaceBytes = kDefaultWorkspace);
  ~Gemm();
  Gemm(const Gemm &) = delete;
  Gemm &operator=(const Gemm &) = delete;

  /// A second workspace of the same size, used by the GEMMs queued on the context's side
  /// stream (Context::useSideStream), so that they may run beside the main stream's.
  void createSideWorkspace();

  /// Queues y = alpha·x·Wᵀ + beta·y on the context's stream. `context` names the step in
  /// errors, to which the shape is added.
  void linear(GemmType type, const GemmShape &shape, CUdeviceptr x, CUdeviceptr w, CUdeviceptr y,
              std::string_view context = {}, float alpha = 1.0f, float beta = 0.0f);

  /// The linear layer's backward (training), in the forward's terms (`shape` as for linear:
  /// rows, in, out; ldx is x's or dx's leading dimension, ldw W's or dW's, ldy dy's):
  ///   gradInput:  dx[rows, in] = alpha·dy[rows, out]·W[out, in] + beta·dx  (cuBLASLt "NN":
  ///               dxᵀ = W_cm · dy_cm, W_cm the [in, out] column-major view of W);
  ///   gradWeight: dW[out, in] = alpha·dy[rows, out]ᵀ·x[rows, in] + beta·dW  (cuBLASLt "NT":
  ///               dW_cm = x_cm · dy_cmᵀ, summed over rows; beta = 1 accumulates, e.g. the
  ///               tied embedding's two uses or gradient accumulation).
  /// Types as for linear: Bf16 (bf16 in and out), Bf16F32Out (bf16 in, fp32 out: the weight
  /// gradients and the residual stream's gradient), F32.
  void gradInput(GemmType type, const GemmShape &shape, CUdeviceptr dy, CUdeviceptr w,
                 CUdeviceptr dx, std::string_view context = {}, float alpha = 1.0f,
                 float beta = 0.0f);
  void gradWeight(GemmType type, const GemmShape &shape, CUdeviceptr dy, CUdeviceptr x,
                  CUdeviceptr dw, std::string_view context = {}, float alpha = 1.0f,
                  float beta = 0.0f);

  size_t planCount() const { return plans_.size(); }

  static constexpr int kTuneCandidates = 8, kTuneRuns = 5, kTuneRounds = 3;
  /// Another candidate replaces the heuristic's first only when faster by this fraction.
  static constexpr float kTuneMargin = 0.02f;
  /// 0: the heuristic's first algorithm; 1: the fastest of its first kTuneCandidates, timed
  /// on the first call of each plan; 2: as 1, printing the times to stderr. Plans made before
  /// keep their algorithm. The constructor reads TNLM_GEMM_TUNE (0 if unset; other values
  /// than 0, 1, 2 throw, naming the variable).
  void setTuning(int level) { tune_ = level; }
  /// TNLM_GEMM_TUNE's level (0 where unset or empty); throws tnlm::Error for another value
  /// than 0, 1 or 2. Needs no GPU.
  static int tuningFromEnvironment();
  /// TNLM_GEMM_TUNE_SPLITK: whether the tuning times candidates that split K (false where
  /// unset, empty or 0; true for 1); throws tnlm::Error for another value. Needs no GPU.
  static bool splitKTuningFromEnvironment();
  int tuning() const { return tune_; }
  /// Plans whose candidates were timed, and of those the ones where another algorithm than
  /// the heuristic's first was faster.
  int timedPlans() const { return timedPlans_; }
  int changedPlans() const { return changedPlans_; }
  /// Plans whose algorithm came from the tuning cache.
  int cachedPlans() const { return cachedPlans_; }

  /// The tuning cache (TNLM_GEMM_TUNE_CACHE, read by the constructor; "" = none). Its file is
  /// read on the first plan made after this: a missing or empty file is an empty cache, one
  /// made for another GPU, cuBLASLt or workspace size is not used (a note on stderr; rewritten
  /// without its entries when a plan is tuned), an unreadable or malformed one throws naming it
  /// (each time). Written (whole, through a temporary file of this process renamed over it)
  /// each time a plan is tuned; where that fails, a note on stderr and no more writes (the run
  /// goes on).
  void setTuneCache(const std::string &path);
  const std::string &tuneCache() const { return cachePath_; }
  /// The file's contents: for which GPU, cuBLASLt and workspace ("fingerprint"), and per plan
  /// key (kKeyFields integers) the candidate index chosen (0 <= index < kTuneCandidates).
  static constexpr int kKeyFields = 11;
  struct TuneCache {
    std::string fingerprint;
    std::map<std::vector<int64_t>, int> choices;
  };
  /// JSON text <-> TuneCache; parse throws tnlm::Error naming `source` and what is wrong.
  /// Need no GPU.
  static TuneCache parseTuneCache(const std::string &text, const std::string &source);
  static std::string formatTuneCache(const TuneCache &cache);

private:
  struct Plan;
  enum class Form { Linear, GradInput, GradWeight };
  // form, type, rows, in, out, ldx, ldw, ldy, alignment of A, B, D (the operands as cuBLASLt
  // sees them)
  using Key =
      std::tuple<int, int, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int, int, int>;
  /// The operands of the call that makes the plan (tuning runs on them).
  struct Call {
    CUdeviceptr a, b, d;
    float alpha, beta;
  };
  Plan &plan(const Key &key, std::string_view context, const Call &call);
  /// Times the candidates and keeps the fastest in `plan`: its index, or -1 where none was
  /// timed (the heuristic's first kept).
  int tune(Plan &plan, const Key &key, const std::string &where, const Call &call,
           const cublasLtMatmulHeuristicResult_t *results, int found);
  std::string fingerprint() const;
  /// TNLM_GEMM_LOG=FILE: appends one line per plan to FILE (bench/gemm.cpp reads them).
  void writeLog() const;
  void loadTuneCache();
  void saveTuneCache();
  void run(Form form, GemmType type, const GemmShape &shape, CUdeviceptr a, CUdeviceptr b,
           CUdeviceptr d, std::string_view context, float alpha, float beta);

  const Context &context_;
  cublasLtHandle_t handle_ = nullptr;
  DeviceBuffer workspace_, sideWorkspace_;
  /// The workspace of the stream GEMMs are queued on now.
  CUdeviceptr workspace() const;
  std::map<Key, std::unique_ptr<Plan>> plans_;
  int tune_ = 0;
  bool tuneSplitK_ = false; // TNLM_GEMM_TUNE_SPLITK=1: the tuning times split-K candidates too
  int timedPlans_ = 0, changedPlans_ = 0, cachedPlans_ = 0;
  std::string cachePath_;
  bool cacheLoaded_ = false, cacheWritable_ = true;
  TuneCache cache_;
};

} // namespace tnlm::cuda

#endif // TNLM_RUNTIME_CUDA_GEMM_H
