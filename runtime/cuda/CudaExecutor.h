//===- CudaExecutor.h - run a CUDA artifact's plan on the GPU ---*- C++ -*-===//
//
// The GPU counterpart of CpuExecutor: runs the steps of a cuda:sm_90a artifact's @forward with
// the artifact's kernels (its cubin, loaded once as a Module) and cuBLASLt GEMMs, all queued
// in order on the Context's stream.
//   Parameters arrive as f32 (as for the CPU backend) and are uploaded once as bf16, which is
//   what the generated kernels and the bf16 GEMMs read (LRPE's θ stays f32).
//   One device Arena holds the planned activations (arena_bytes at the planned offsets, the
//   f32 logits among them), the ids, the per-step slopes, the parameters and the Lightning
//   Attention piece-state workspace (bounded by the number of SMs, see CudaExecutor.cpp);
//   nothing is allocated per call.
//   The forward of each call shape (batch, seq) is captured once as a CUDA graph and replayed.
//   Recurrent artifacts (tnlmc --mode=recurrent): @prefill and @decode_step, the per-layer
//   fp32 state in device memory for the executor's lifetime (zero at construction); each
//   call shape of each function is one CUDA graph, so a whole decode step of the batch is
//   one graph launch. Prefill prompts are left-padded on upload (codegen/cuda/Recurrent.cuh).
// Every CUDA error becomes a tnlm::Error naming the artifact and the step.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_RUNTIME_CUDA_CUDAEXECUTOR_H
#define TNLM_RUNTIME_CUDA_CUDAEXECUTOR_H

#include "runtime/Artifact.h"
#include "runtime/EmbeddingSegments.h"
#include "runtime/Weights.h"
#include "runtime/cuda/CudaContext.h"
#include "runtime/cuda/Gemm.h"
#include "runtime/cuda/LmHeadLoss.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

namespace tnlm::cuda {

/// Whether step `s` launches a kernel (not a GEMM) whose name starts with `prefix`: what the
/// tnlmc that wrote the artifact emitted for it.
bool launchesKernel(const schema::Artifact &a, const schema::Step &s, std::string_view prefix);

class CudaExecutor {
public:
  /// `artifact` must be a verified CUDA artifact (Artifact::load(path, Target::CudaSm90a))
  /// and outlive the executor; `params` are f32 in parameter-table order. Creates the
  /// context on `ordinal` unless `context` is given (then it must outlive the executor).
  CudaExecutor(const Artifact &artifact, const ParamValues &params, Context *context = nullptr,
               int ordinal = 0);
  ~CudaExecutor();
  CudaExecutor(const CudaExecutor &) = delete;
  CudaExecutor &operator=(const CudaExecutor &) = delete;

  /// Runs @forward on ids [batch, seq] (row-major, host memory) with batch ≤ max batch and
  /// seq ≤ max sequence; returns the f32 logits [batch · seq, vocab]. Throws tnlm::Error on
  /// bad shapes and on any CUDA error (naming the step). Same as enqueue() then logits().
  std::vector<float> forward(const int32_t *ids, int64_t batch, int64_t seq);

  /// Queues @forward on the context's stream and returns without waiting for it: checks the
  /// ids, uploads them, then replays the CUDA graph of the whole forward for this (batch,
  /// seq), capturing it on the first call of that shape (or, with graphs off, launches the
  /// steps one by one). `ids` must stay valid until the stream has run the upload (the next
  /// logits() or Context::synchronize()).
  void enqueue(const int32_t *ids, int64_t batch, int64_t seq);
  /// Waits for the forward queued last and returns its f32 logits [batch · seq, vocab]
  /// (batch and seq as given to enqueue; anything else is an error).
  std::vector<float> logits(int64_t batch, int64_t seq);

  /// Recurrent artifacts. @prefill: ids [batch, seq] row-major with slot b's prompt in
  /// ids[b·seq, b·seq + lengths[b]) (the CPU executor's layout; the rest is ignored), lengths
  /// in [0, seq] (0: the slot keeps its state); returns the f32 logits [batch, vocab] of each
  /// slot's last prompt token (rows of length-0 slots are zero) and leaves each prompted
  /// slot's state after its prompt.
  std::vector<float> prefill(const int32_t *ids, const int32_t *lengths, int64_t batch,
                             int64_t seq);
  /// @decode_step: one token per slot at positions[b] (-1: inactive, state untouched);
  /// returns the f32 logits [batch, vocab]. The whole step replays as one CUDA graph.
  std::vector<float> decodeStep(const int32_t *ids, const int32_t *positions, int64_t batch);
  /// decodeStep's logits in place: [batch, vocab] in the executor's page-locked host memory,
  /// valid until its next call (no allocation or copy on the host: what a generation loop reads).
  const float *decodeStepLogits(const int32_t *ids, const int32_t *positions, int64_t batch);
  /// decodeStep without waiting: checks and uploads, then queues the step's graph; the
  /// logits stay on the device (benchmarks time back-to-back steps with it).
  void enqueueDecode(const int32_t *ids, const int32_t *positions, int64_t batch);
  /// Programmatic dependent launch of @decode_step's kernels (default on: measured faster on
  /// the H200, bench/RESULTS.md; the environment variable TNLM_PDL=0 turns it off). Takes
  /// effect for graphs captured afterwards.
  void setProgrammaticLaunch(bool on) { programmatic_ = on; }
  /// The GEMV path of @decode_step's linear layers for batches up to 4 (default on); off, they
  /// run as cuBLASLt GEMMs as larger batches do (for tests). Takes effect for graphs captured
  /// afterwards.
  void setSmallBatchGemv(bool on) {
    gemv_ = on;
    autoCarveouts_.clear(); // other kernels: the next call of each batch size chooses again
  }
  /// The most bytes of one stage of a decode GEMV's weight ring (default 32 KiB; smaller ones
  /// give more stages and more warps per row: for tests). Takes effect for graphs captured
  /// afterwards.
  void setGemvStageBytes(int64_t bytes) {
    gemvStageBytes_ = std::max<int64_t>(16, bytes);
    autoCarveouts_.clear();
  }
  /// The qkvu GEMV and the lightning_decode after it as one launch where the artifact has it
  /// (rec::gemv_decode; default off since the single-row GEMV path: apart measured as fast or
  /// faster on the H200, bench/RESULTS.md; TNLM_DECODE_FUSE=1 turns it on; the same bits either
  /// way). Takes effect for graphs captured afterwards.
  void setDecodeFusion(bool on) {
    decodeFusion_ = on;
    autoCarveouts_.clear();
  }
  /// Each decode GEMV prefetches into L2 the weights of the GEMV `ahead` GEMVs after it in the
  /// step (0: none, the default; TNLM_GEMV_PREFETCH; a hint, the same bits either way), so that
  /// weights stream from HBM ahead of the kernels that read them (measured no faster on the
  /// H200's 385M, 1B and 7B decode: bench/RESULTS.md). Takes effect for graphs
  /// captured afterwards.
  void setGemvPrefetch(int ahead) {
    gemvPrefetch_ = std::clamp(ahead, 0, 2);
    autoCarveouts_.clear();
  }
  /// The shared-memory carveout (percent) the kernels of a batch-`batch` @decode_step ask
  /// for: with TNLM_DECODE_CARVEOUT=auto (the default) the one chosen at the first call of that
  /// batch size (which itself runs at the driver's choice), else the fixed percent; -1 for the
  /// driver's choice per kernel, and without programmatic launches (TNLM_PDL=0), which take
  /// none. The setters above that change the decode kernels make each batch size choose again.
  int decodeCarveout(int64_t batch) const;
  /// How many qkvu GEMVs of the last @decode_step ran with their lightning_decode fused.
  int64_t fusedDecodeLaunches() const { return fusedDecodes_; }
  /// Bytes of the device allocations (parameters, activations, state, workspaces; a train
  /// artifact's scratch buffers too), without cuBLASLt's workspace and the CUDA context.
  size_t deviceBytes() const;
  /// The recurrent state, in state-table order, f32 (copied back; for tests and tools).
  std::vector<std::vector<float>> state();
  /// Zeroes every recurrent state.
  void resetState();

  /// GPU time of each step of one forward (CUDA events around every step, steps launched one
  /// by one, no graph), after the same checks as enqueue(); for finding where time goes.
  struct StepTime {
    unsigned index;
    std::string name, kind;
    double ms;
  };
  std::vector<StepTime> profileSteps(const int32_t *ids, int64_t batch, int64_t seq);
  /// The same for one @decode_step (which advances the state of the active slots, as any).
  std::vector<StepTime> profileDecode(const int32_t *ids, const int32_t *positions, int64_t batch);
  /// The decode kernels' timing trace of an artifact compiled with TNLM_DECODE_TRACE=1
  /// (Recurrent.cuh's tnlm_trace: 8 numbers per record). hasDecodeTrace: whether it has one;
  /// resetDecodeTrace empties it (queued); decodeTrace waits for the queue and returns the
  /// records written since.
  bool hasDecodeTrace() const;
  void resetDecodeTrace();
  std::vector<uint64_t> decodeTrace();

  /// CUDA-graph replay of the forward (default on). Off: every call launches each step.
  void setUseGraphs(bool on) { useGraphs_ = on; }
  /// Number of forward graphs captured so far (one per (batch, seq) called; a shape whose
  /// capture fails runs step by step instead).
  size_t graphCount() const { return graphs_.size(); }
  /// Kernel launches (graph nodes) of the captured graph of `function` at (batch, seq), or 0.
  size_t graphNodes(const std::string &function, int64_t batch, int64_t seq) const;
  /// The GEMMs' plans (their count, and with TNLM_GEMM_TUNE how many tuning timed or changed).
  const Gemm &gemm() const { return *gemm_; }
  /// The same, to set its tuning (Gemm::setTuning, setTuneCache) before the first call.
  Gemm &gemm() { return *gemm_; }
  /// The GEMMs run as one over a stacked pair (W1, W2 adjacent: the gated pair's forward, its
  /// dx and its dW): how many distinct (function, step) places did so.
  size_t stackedGemms() const { return stacked_.size(); }
  /// The gated pairs run as one kernel with their product (SGLU's forward: the artifact's
  /// tnlm::kSgluFusedKernel, codegen/cuda/GemmSm90.cuh): how many distinct (function, step)
  /// places did so.
  size_t fusedSglus() const { return fusedSglu_.size(); }
  /// The dgrads run as one kernel with the gated pair's product backward after them
  /// (tnlm::kMulGradFusedKernel; also TNLM_SGLU_FUSE): how many distinct (function, step)
  /// places did so.
  size_t fusedMulGrads() const { return fusedMulGrad_.size(); }
  /// The qkvu GEMMs run with Lightning Attention's φ in their epilogue (tnlm::kSiluFusedKernel:
  /// the train step's φ(q), φ(k) into its workspace; TNLM_SILU_FUSE): how many distinct
  /// (function, step) places did so.
  size_t fusedSilus() const { return fusedSilu_.size(); }
  /// Fused qkvu GEMMs queued, and the Lightning steps' SiLU launches skipped after them, over
  /// every run that queued steps (not graph replays): equal where each fusion's skip happened.
  int64_t siluFusedLaunches() const { return siluFusedLaunches_; }
  int64_t siluLaunchesSkipped() const { return siluSkipped_; }
  /// TNLM_SILU_FUSE: 1 (or unset) runs a train step's qkvu GEMM and the φ of the Lightning
  /// step after it as the fused kernel where the artifact has it; 0 as cuBLASLt's GEMM and the
  /// SiLU kernel (the same bits where cuBLASLt's algorithm sums as ours does: checked at the
  /// benched shapes and the GPU tests' ones). Another value throws, naming the variable.
  static bool siluFusionFromEnvironment();
  void setFuseSilu(bool on) { fuseSilu_ = on; }
  /// TNLM_SGLU_FUSE: 1 (or unset) runs a stacked gated pair and its product as the fused
  /// kernel where the artifact has it; 0 as cuBLASLt's GEMM and the product kernel (the same
  /// bits). Another value throws, naming the variable.
  static bool sgluFusionFromEnvironment();
  void setFuseSglu(bool on) { fuseSglu_ = on; }
  /// Of the last @train_step run step by step (the first call of a shape): the steps queued on
  /// the side stream (TNLM_GRAD_STREAM) and the joins a conflict forced before the end.
  int64_t sideSteps() const { return sideSteps_; }
  int64_t sideJoins() const { return sideJoins_; }
  /// TNLM_GEMM_STACK: 1 (or unset) stacks, 0 does not; another value throws, naming the
  /// variable. Needs no GPU.
  static bool stackingFromEnvironment();
  /// TNLM_GRAD_FIRST_WRITE: 1 (or unset): @optimizer_step leaves the gradients as they are
  /// instead of zeroing them, and the next @train_step's first write of each gradient
  /// overwrites it (β = 0 for the GEMMs; a gradient it would only add to, or not write, is
  /// zeroed there first); 0: the optimizer zeroes them (its fills) and every write adds.
  /// Another value throws, naming the variable. Needs no GPU.
  static bool firstWriteFromEnvironment();
  /// TNLM_LA_REUSE_STATES: 1 (or unset): the plain layer's Lightning backward reads the piece
  /// states its dq pass shares with the forward (kept per layer) and its dv pass with its dk
  /// pass, transposed, instead of a state pass and scan each; 0: every pass has its own.
  /// Another value throws, naming the variable. Needs no GPU.
  static bool reuseLaStatesFromEnvironment();
  /// The same for this executor (tests compare both).
  void setGradFirstWrite(bool on);
  /// TNLM_GRAD_STREAM: 1 queues @train_step's weight-gradient GEMMs (LinearGradWeight) on a
  /// second stream, so that they run beside the rest of the backward (a step that would
  /// touch what one of them still reads or writes waits for it first; the same results bit for
  /// bit); 0 (or unset): every step on one stream. Another value throws, naming the variable.
  /// Needs no GPU.
  static bool gradStreamFromEnvironment();
  /// The same for this executor. Takes effect for graphs captured afterwards.
  void setGradStream(bool on) { gradStream_ = on; }
  /// An on/off variable: unset, empty or 1 is on (the default), 0 off; another value throws
  /// "NAME=value: expected 0 (off) or 1 (on, the default)".
  static bool switchFromEnvironment(const char *name, const char *off, const char *on);

  int64_t vocabSize() const { return vocab_; }
  const Artifact &artifact() const { return artifact_; }
  Context &context() { return *context_; }
  /// Train artifacts (tnlmc --mode=train --target=cuda:sm_90a; work in progress, issue 11):
  /// runs function `name` (train_step, optimizer_step, eval_loss) for a call of batch × seq
  /// with the named host inputs (ids, labels: int32 [batch · seq]; hparams: f32
  /// [HyperParam.Count]), step by step (no graph yet), and returns its outputs by name (the
  /// loss as one value). The parameters are f32 master weights with bf16 copies for the
  /// GEMMs and kernels; gradients, moments and the step counter live in the state.
  struct Input {
    std::string name;
    const void *data;
  };
  std::vector<std::pair<std::string, std::vector<float>>>
  run(const std::string &name, const std::vector<Input> &inputs, int64_t batch, int64_t seq);
  /// Where the host's time in the last run() went (ms, steady clock): checking and uploading
  /// the inputs (the labels counted, the embedding backward's grouping), queuing the work (a
  /// graph launch, or capturing one), waiting for the GPU, reading the outputs back; and gpuMs,
  /// the GPU's time from the queued work's start to its end (CUDA events around it: the
  /// kernels and any idle time between them, the uploads not included).
  struct RunTimes {
    double prepareMs = 0, launchMs = 0, waitMs = 0, readMs = 0, gpuMs = 0;
  };
  const RunTimes &lastRunTimes() const { return lastRunTimes_; }
  /// run()'s work without its outputs, each step timed (CUDA events, launched one by one, no
  /// graph): where a train step's time goes (bench/train.cpp).
  std::vector<StepTime> profileRun(const std::string &name, const std::vector<Input> &inputs,
                                   int64_t batch, int64_t seq);
  /// The f32 master weights, in parameter-table order (copied back).
  std::vector<std::vector<float>> masterParams();
  /// Replaces the master weights (and their bf16 copies): checkpoints resuming.
  void setMasterParams(const ParamValues &params);
  /// Replaces every state buffer (state-table order, f32 words): checkpoints resuming.
  void setState(const std::vector<std::vector<float>> &state);
  /// The train artifact's step counter (completed optimizer steps).
  int64_t trainStepCounter();
  /// State buffer i alone (state-table order, f32 words; copied back).
  std::vector<float> stateBuffer(size_t i);
  /// Train artifacts: whether every gradient (state kind Gradient) or every master weight is
  /// finite, from their sum of squares on the device (the optimizer's own kernels; one f64
  /// comes back instead of the buffers). False also where the sum overflows (|values| beyond
  /// ~1e154): callers that must name the tensor scan the host copies after a false.
  bool gradientsFinite();
  bool mastersFinite();

  /// When set, synchronizes after every step so that an asynchronous kernel fault is
  /// reported with the step that caused it (slower; for debugging; implies no graphs).
  void setSynchronizeSteps(bool on) { syncSteps_ = on; }
  /// Train artifacts: with checks on, run() copies every step's outputs back after it runs and
  /// throws tnlm::NonFiniteError naming the first step (and function) whose output holds a NaN
  /// or infinity (step by step, no graph; for finding where a NaN starts; slow).
  void setCheckFinite(bool on) { checkFinite_ = on; }

private:
  // One function of the artifact: its steps' slopes on the device and where its f32 logits
  // [rows, vocab] are.
  struct Function {
    std::string name;
    const schema::Function *fn = nullptr;
    std::vector<CUdeviceptr> slopes; // f32 per step (0 where the step has none)
    size_t logitsOffset = 0;
    bool decode = false; // @decode_step: GEMVs for small batches, programmatic launches
  };
  // (function, batch, seq); a @train_step that starts from stale gradients is function index
  // + the function count (its own graph: its first writes overwrite).
  using CallKey = std::tuple<size_t, int64_t, int64_t>;

  size_t functionIndex(const std::string &name) const;
  /// run()'s checks and uploads (inputs, label count, embedding grouping); the function's index.
  size_t uploadRun(const std::string &name, const std::vector<Input> &inputs, int64_t batch,
                   int64_t seq);
  std::vector<StepTime> profile(size_t function, int64_t batch, int64_t seq);
  /// The GEMV launch step `index` of `f` runs for a call of `rows` rows, or null (no GEMV,
  /// more rows than it serves, GEMVs off, unaligned input, or a prologue without its norm step).
  const schema::KernelLaunch *gemvFor(const Function &f, unsigned index, int64_t rows) const;
  struct GemvLayout {
    int64_t grid = 0, rowsPerCta = 0, stageRows = 0, stages = 0, warpsPerRow = 1, sharedBytes = 0;
  };
  /// The grid, the rows of W per CTA and per shared-memory stage, and the shared memory of the
  /// decode GEMV `l` for a call of `rows` rows (rec::gemv).
  /// rowsPerCta > 0: that many rows per CTA (rec::gemv_decode's share of a head).
  GemvLayout gemvLayout(const schema::KernelLaunch &l, bool gated, int64_t rows,
                        int64_t rowsPerCta = 0) const;
  /// The GemvDecode launch of step `index` (a qkvu linear) where it runs for `rows` rows:
  /// its GEMV would run, the next step is the lightning_decode it stands for and the step
  /// after that fuses the decode's gated norm, and the device holds a cluster per head at
  /// once; else null.
  const schema::KernelLaunch *gemvDecodeFor(const Function &f, unsigned index, int64_t rows);
  /// The decode GEMV's prologue operands (rec::gemv: x, x2, sum, eps) for `prologue`, from step
  /// `index` and the norm step before it.
  struct GemvInputs {
    CUdeviceptr x = 0, x2 = 0, sum = 0;
    long long ldx = 0, ldx2 = 0, ldsum = 0;
    float eps = 0;
  };
  GemvInputs gemvInputs(const Function &f, unsigned index, int prologue,
                        const std::string &where) const;
  /// The weights that the decode GEMV of step `index` prefetches into L2 (setGemvPrefetch):
  /// those of the gemvPrefetch_-th GEMV step after it (W, and W2 of a gated pair), none where
  /// there is none or they would take more than a third of L2.
  struct GemvPrefetch {
    CUdeviceptr w = 0, w2 = 0;
    long long bytes = 0, bytes2 = 0;
  };
  GemvPrefetch gemvPrefetchFor(const Function &f, unsigned index, int64_t rows,
                               const std::string &where) const;
  /// Whether step `index` is a norm that the next step's GEMV computes (so it does not run).
  bool fusedIntoNext(const Function &f, unsigned index, int64_t rows) const;
  void checkInputs(size_t function, const char *second) const; // (ids, second)
  void runStep(const Function &f, unsigned index, const schema::Step &step, int64_t batch,
               int64_t seq, const std::string &where);
  void runGemvDecode(const Function &f, unsigned index, const schema::Step &step,
                     const schema::KernelLaunch &launch, int64_t rows, const std::string &where);
  /// The train plan's backward and optimizer steps (CudaTrainSteps.cpp); false: not one.
  bool runTrainStep(const Function &f, unsigned index, const schema::Step &step, int64_t batch,
                    int64_t seq, const std::string &where);
  /// The f32 master of parameter operand o (the bf16 copy is operand(o)).
  CUdeviceptr master(const schema::Operand *o, const std::string &where) const;
  size_t planTrainScratch(); // the train steps' scratch bytes (CudaTrainSteps.cpp)
  void checkStepFinite(const Function &f, unsigned index, int64_t batch, int64_t seq);
  void allocateTrain(); // and its allocation
  void runLightning(const Function &f, unsigned index, const schema::Step &step, int64_t batch,
                    int64_t seq, const std::string &where);
  /// One pass of the Hopper Lightning forward kernel (the step's State/Scan/Main launches) over
  /// bf16 q, k, v of row stride ldIn into o (row stride ldOut), each head's slope from the step;
  /// reversed: over the reversed sequence (each tensor's last row, negative token strides), as
  /// the backward's dk and dv passes need. Head stride 128 for q, k, v.
  struct LightningPass {
    CUdeviceptr q, k, v, o;
    long long ldIn, ldOut;
    bool reversed;
    long long outSh = 128;  // o's head stride (the LRPE halves: 2 · 128, one half's offset)
    CUdeviceptr oscale = 0; // o ⊙= SiLU'(oscale) in the main kernel's stores (0: none)
    long long ldScale = 0;  // oscale's row stride (its head stride 128)
    // The piece states of the pass just run (same plan, same direction), whose K and V are
    // this pass's V and K, read transposed: no state pass and scan (artifact format 6 on).
    bool reuseTransposed = false;
    CUdeviceptr states = 0; // the piece states' buffer (0: the workspace)
  };
  /// The kept piece states of the plain layer whose forward workspace is `workspace`, where a
  /// call of this shape's plan fits them; else 0 (the forward and the dq pass then use the
  /// shared workspace).
  CUdeviceptr keptLaStates(CUdeviceptr workspace, int64_t batch, int64_t heads, int64_t seq) const;
  // forward workspace -> its piece states (device address, bytes)
  std::map<CUdeviceptr, std::pair<CUdeviceptr, size_t>> keptLaSlots_;
  size_t keptLaBytes_ = 0;
  bool reuseLaStates_ = true; // TNLM_LA_REUSE_STATES
  void runLightningPass(const Function &f, unsigned index, const schema::Step &step, int64_t batch,
                        int64_t seq, const LightningPass &pass, const std::string &where);
  void runDecode(const Function &f, unsigned index, const schema::Step &step, int64_t batch,
                 const std::string &where);
  /// Queues every step of function `f`; `afterStep(i)`, when given, runs after step i.
  void runSteps(size_t f, int64_t batch, int64_t seq,
                const std::function<void(unsigned)> &afterStep = {});
  /// Runs (or replays the graph of) function `f` for this call shape.
  void launchFunction(size_t f, int64_t batch, int64_t seq);
  void checkIds(const int32_t *ids, int64_t n, const char *what) const;
  void uploadIds(const int32_t *ids, int64_t batch, int64_t seq);
  /// Checks and uploads a decode step's ids and positions; returns @decode_step's index.
  size_t uploadDecode(const int32_t *ids, const int32_t *positions, int64_t batch);
  std::vector<float> copyLogits(size_t f, int64_t rows);
  CUdeviceptr operand(const schema::Operand *o, const std::string &where) const;
  Kernel &kernel(const schema::KernelLaunch *launch, const std::string &where);

  const Artifact &artifact_;
  std::unique_ptr<Context> ownedContext_;
  Context *context_ = nullptr;
  std::unique_ptr<Arena> arena_;
  std::unique_ptr<Module> module_;
  std::unique_ptr<Gemm> gemm_;
  CUdeviceptr activations_ = 0, workspace_ = 0, scratch_ = 0, gatedScratch_ = 0;
  size_t workspaceBytes_ = 0, scratchBytes_ = 0, gatedScratchBytes_ = 0;
  bool gemv_ = true;
  int64_t gemvStageBytes_ = 32768;
  bool decodeFusion_ = false; // rec::gemv_decode where the artifact has it (TNLM_DECODE_FUSE)
  int gemvPrefetch_ = 0; // GEMVs ahead whose weights a decode GEMV prefetches (TNLM_GEMV_PREFETCH)
  int64_t fusedDecodes_ = 0;
  // Whether every head's cluster of a GemvDecode launch is resident at once, per call rows
  // (the input rows' shared memory grows with them).
  std::map<std::pair<const schema::KernelLaunch *, int64_t>, bool> clustersFit_;
  bool programmatic_ = true; // programmatic dependent launches in @decode_step (TNLM_PDL)
  // @decode_step's kernels' shared-memory carveout (TNLM_DECODE_CARVEOUT): by default (auto)
  // one per batch size, chosen from what the launches of its first call need
  // (chooseCarveout), else carveout_ (-1: the driver's choice per kernel). decodeCarveout_ is
  // the current run's; collectCarveouts_ while a first call notes the needs.
  bool autoCarveout_ = true;
  int carveout_ = -1;
  std::map<int64_t, int> autoCarveouts_;
  int decodeCarveout_ = -1;
  bool collectCarveouts_ = false;
  std::vector<int> carveoutNeeds_;
  static int chooseCarveout(std::vector<int> needs);
  /// A launch of @decode_step (`decode`) overlaps its neighbours: programmatic, with the
  /// step's one carveout; any other launch neither.
  void decodeLaunch(LaunchConfig &c, bool decode) {
    c.programmatic = decode && programmatic_;
    c.carveout = c.programmatic ? decodeCarveout_ : -1;
    c.carveoutNeeds = c.programmatic && collectCarveouts_ ? &carveoutNeeds_ : nullptr;
  }
  std::vector<CUdeviceptr> inputs_; // i32 [max batch · max seq] per function-input index
  std::vector<CUdeviceptr> state_;  // f32 per state-table entry (recurrent state)
  std::vector<size_t> stateBytes_;
  std::vector<std::vector<int32_t>> staged_; // host copies of the inputs until uploaded
  // @decode_step's host side in page-locked memory (copies truly asynchronous): two slots of
  // [ids | positions] (max batch each) used in turn, one rewritten only once its upload of
  // two calls before has run (its event), and the logits [max batch, vocab].
  PinnedBuffer decodeInputs_, decodeLogits_;
  CUevent decodeUploaded_[2] = {nullptr, nullptr};
  bool decodeUploadPending_[2] = {false, false};
  int decodeSlot_ = 0;
  // Training: the f32 master weights (θ: params_ itself), the per-call scalars and scratch.
  bool train_ = false, checkFinite_ = false;
  std::vector<CUdeviceptr> masters_;
  std::vector<DeviceBuffer> trainBuffers_;
  CUdeviceptr invCount_ = 0, lossK_ = 0, lossTotal_ = 0, rowLoss_ = 0, lossScratch_ = 0;
  CUdeviceptr gatedGrad_ = 0, dthetaPartial_ = 0, segOrder_ = 0, segStart_ = 0, segIds_ = 0;
  CUdeviceptr optPartial_ = 0, optT_ = 0;
  size_t gatedGradBytes_ = 0, optChunks_ = 0, lossScratchBytes_ = 0, dthetaBytes_ = 0;
  int64_t segments_ = 0;  // the call's distinct ids (embedding backward)
  double accumSteps_ = 1; // from the call's hparams
  float hostHp_[16] = {}; // the call's hparams (HyperParam.Count)
  double invCountHost_ = 0;
  EmbeddingSegments segHost_; // the call's grouping (host copy until the upload has run)
  EmbeddingGrouper grouper_;  // makes it (its memory kept from call to call)
  std::map<std::pair<size_t, unsigned>, DeviceBuffer> optTables_; // (function, first step)
  // The fused lm head loss of lm_head_loss steps (by vocabulary and hidden size; one of each
  // in a model) and its rows per chunk (TrainScratch.h).
  std::map<std::pair<int64_t, int64_t>, std::unique_ptr<LmHeadLoss>> lmHeads_;
  int64_t lmHeadChunkRows_ = 0;
  bool sumOfSquaresFinite(bool gradients);
  /// The gradient that step `next` of `f` accumulates `temp` into (autodiff's `&g = add(&g,
  /// temp)`, temp read by no later step), or null.
  const schema::Operand *accumulatedInto(const Function &f, unsigned index,
                                         const schema::Operand *temp, unsigned next);
  /// Steps already done by an earlier step (a GEMM that accumulated into the gradient).
  std::vector<std::pair<const Function *, unsigned>> skip_;
  std::set<std::tuple<const Function *, unsigned, int>> stacked_; // (function, step, which)
  std::unique_ptr<DeviceBuffer> finiteTables_[2]; // gradients, masters (sumOfSquaresFinite)
  std::unique_ptr<DeviceBuffer> finitePartial_, finiteTotal_;
  long long finiteChunks_[2] = {0, 0};
  std::vector<CUdeviceptr> params_; // in parameter-table order: bf16, or f32 where f32Param_
  std::vector<bool> f32Param_;      // LRPE θ (read as f32 by the prologues)
  std::vector<Function> functions_;
  int64_t vocab_ = 0;
  size_t trainScratchBytes_ = 0;
  bool syncSteps_ = false;
  bool stackGemms_ = true;     // TNLM_GEMM_STACK: a gated pair as one GEMM where it can
  bool fuseSglu_ = true;       // TNLM_SGLU_FUSE: a stacked pair and its product as one kernel
  bool hasSgluKernel_ = false; // the module has kSgluFusedKernel (tnlmc's since 2026-12-04)
  std::set<std::pair<const void *, unsigned>> fusedSglu_;
  bool hasMulGradKernel_ = false; // the module has kMulGradFusedKernel
  std::set<std::pair<const void *, unsigned>> fusedMulGrad_;
  // The gated step whose mul_grad the last fused dgrad did (this run; cleared by that step).
  std::pair<const void *, unsigned> mulGradDone_{nullptr, 0};
  RunTimes lastRunTimes_;
  CUevent runEvents_[2] = {nullptr, nullptr}; // around run()'s queued work (RunTimes::gpuMs)
  bool fuseSilu_ = true;       // TNLM_SILU_FUSE: a qkvu GEMM and the next step's φ as one kernel
  bool hasSiluKernel_ = false; // the module has kSiluFusedKernel
  std::set<std::pair<const void *, unsigned>> fusedSilu_;
  int64_t siluFusedLaunches_ = 0, siluSkipped_ = 0;
  // The Lightning step whose φ the last fused qkvu GEMM did (this run; cleared by that step).
  std::pair<const void *, unsigned> siluDone_{nullptr, 0};
  /// Runs the qkvu GEMM of step `index` (y = x·Wᵀ, W [n, k] contiguous) with the φ(q), φ(k)
  /// of the train step's Lightning step right after it as the fused kernel, writing that
  /// step's workspace columns [0, 2D), if the artifact has it and the shapes allow; false
  /// (nothing queued) otherwise.
  bool runFusedSilu(const Function &f, unsigned index, const schema::Operand *x, CUdeviceptr w,
                    const schema::Operand *y, int64_t rows, int64_t k, int64_t n,
                    const std::string &where);
  /// Runs the dgrad of step `index` (dy = dz·W) with the mul_grad of the gated pair's
  /// backward that reads dy (a few steps on, with the forward's a, b) as the fused kernel,
  /// writing that step's da, db scratch and not dy, if the artifact has it and the shapes
  /// allow; false (nothing queued) otherwise.
  bool runFusedMulGrad(const Function &f, unsigned index, const schema::Operand *dz,
                       const schema::Operand *w, const schema::Operand *dy, int64_t rows,
                       const std::string &where);
  /// Runs the stacked gated pair of step `index` (x·[W1; W2]ᵀ into y's [rows, 2F]) and the
  /// product step after it (p = a ⊙ b) as the fused kernel, if the artifact has it and the
  /// shapes allow; false (nothing queued) otherwise.
  bool runFusedSglu(const Function &f, unsigned index, const schema::Operand *x, CUdeviceptr w,
                    const schema::Operand *y, int64_t rows, int64_t in, int64_t out,
                    const std::string &where);
  // TNLM_GRAD_FIRST_WRITE. stale_[i]: gradient state i holds values the artifact says are zero
  // (@optimizer_step's fill of it skipped); the next @train_step overwrites or zeroes it.
  bool firstWrite_ = true;
  bool gradStream_ = false; // TNLM_GRAD_STREAM: weight gradients on the side stream
  int64_t sideSteps_ = 0, sideJoins_ = 0;
  // Device byte ranges read and written by the side stream's pending steps.
  struct Overlap {
    struct Range {
      CUdeviceptr lo = 0, hi = 0;
      bool meets(const Range &o) const { return lo < o.hi && o.lo < hi; }
    };
    std::vector<Range> reads, writes;
    bool empty() const { return reads.empty() && writes.empty(); }
    void clear() { reads.clear(), writes.clear(); }
    /// Whether `later` (a main-stream step) writes what these read or write, or reads what
    /// these write.
    bool conflicts(const Overlap &later) const;
  };
  Overlap::Range extentOf(const schema::Operand *o, int64_t rows) const;
  /// The operands of steps first..last of `f` (their extents at `rows` call rows).
  void addAccesses(const Function &f, unsigned first, unsigned last, int64_t rows,
                   Overlap &into) const;
  std::vector<char> stale_;
  std::vector<char> freshPattern_; // stale_ when the first fresh @train_step graph was captured
  int gradientIndex(const schema::Operand *g) const; // its gradient state, or -1
  bool fullGradient(const schema::Operand *g) const; // g is the whole of its gradient state
  /// Step code about to write gradient g in full (β = 0 possible): true, and g no longer
  /// stale, where g is stale; false where the write must add (g zeroed first if stale and
  /// the write is partial).
  bool overwrites(const schema::Operand *g, const std::string &where);
  /// Zeroes gradient g first where it is stale (a write that adds, or a read).
  void touchGradient(const schema::Operand *g, const std::string &where);
  /// Zeroes every stale gradient (before anything but @train_step reads the state).
  void zeroStaleGradients(const std::string &where);
  bool anyStale() const;
  bool touchesGradients(const Function &f) const; // a step of f reads or writes a gradient
  bool useGraphs_ = true;
  std::map<CallKey, Graph> graphs_; // the captured calls
  // @optimizer_step's graphs take the hyperparameters its launches pass by value (β1, β2, ε,
  // weight decay, the accumulation steps): captured with optGraphHp_, dropped when they change.
  // staleAfter_: the gradients a captured call leaves stale (its skipped fills), set again
  // when its graph is replayed.
  std::array<float, 5> optGraphHp_{};
  std::map<CallKey, std::vector<char>> staleAfter_;
  std::set<CallKey> eagerOnly_; // call shapes whose capture failed
  CallKey lastCall_{0, 0, 0};   // the call enqueued last
};

} // namespace tnlm::cuda

#endif // TNLM_RUNTIME_CUDA_CUDAEXECUTOR_H
