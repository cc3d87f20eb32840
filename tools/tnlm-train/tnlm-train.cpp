//===- tnlm-train.cpp - run a compiled training job -----------------------===//
//
//   tnlm-train tiny-train.tnlm --data=/usr/share/games/fortunes --val-fraction=0.05
//       --steps=2000 --lr=3e-3 --warmup=100 --out=runs/tiny
//   tnlm-train tiny-train.tnlm --resume=runs/tiny --steps=3000
//
// One optimizer step = --grad-accum calls of @train_step (micro-batches, gradients summed in
// f32) and one @optimizer_step (clipping, AdamW, the learning rate of the step counter).
// Links the runtime only (no MLIR, no LLVM); every failure is one message naming the file,
// tensor or flag at fault, and a non-zero exit status.
//
//===----------------------------------------------------------------------===//
#include "runtime/Artifact.h"
#include "runtime/CpuExecutor.h"
#include "runtime/Error.h"
#include "runtime/Weights.h"
#include "runtime/cpu/Parallel.h"
#include "runtime/train/Data.h"
#include "runtime/train/LossPlot.h"
#include "tools/tnlm-run/Options.h"
#include "tools/tnlm-train/Checkpoint.h"
#include "tools/tnlm-train/Progress.h"
#include "tools/tnlm-train/Runner.h"

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>

using namespace tnlm;
using namespace tnlm::train;

namespace {

std::atomic<int> stopSignal{0};
// The first SIGINT/SIGTERM asks for a checkpoint and a clean stop; a second one kills.
extern "C" void onSignal(int sig) {
  stopSignal = sig;
  std::signal(sig, SIG_DFL);
}

void declareOptions(Options &o) {
  o.value("data", "path",
          "Training text (a file or folder, read as bytes) or llm.c token "
          "shards (a .bin file, a folder of them, or a glob)");
  o.value("val-data", "path", "Validation data (same kinds as --data)");
  o.value("val-fraction", "f",
          "Hold out the last fraction f of --data for validation "
          "(default 0.05 without --val-data)");
  o.value("order", "random|sequential",
          "Windows at seeded random offsets (default), or consecutive ones (replayable)");
  o.value("steps", "n", "Optimizer steps to train in total (or give --tokens)");
  o.value("tokens", "n", "Training tokens in total; steps = tokens / (batch x seq x grad-accum)");
  o.value("batch", "n", "Windows per micro-batch (default: the artifact's --batch)");
  o.value("seq", "n", "Tokens per window (default: the artifact's --seq)");
  o.value("lr", "x", "Peak learning rate (default 3e-4)");
  o.value("min-lr", "x", "Learning rate at the end of the cosine schedule (default lr / 10)");
  o.value("warmup", "n", "Linear warmup steps, from lr/n to lr (default 0)");
  o.value("schedule", "cosine|constant",
          "After warmup: cosine decay reaching --min-lr at step --steps (default), or "
          "constant");
  o.value("beta1", "x", "AdamW beta1 (default 0.9)");
  o.value("beta2", "x", "AdamW beta2 (default 0.999)");
  o.value("eps", "x", "AdamW epsilon (default 1e-8)");
  o.value("weight-decay", "x", "AdamW decoupled weight decay (default 0.01; never on LRPE theta)");
  o.value("clip-grad", "x", "Clip the global gradient norm to x (default 1.0; 0: no clipping)");
  o.value("grad-accum", "k", "Micro-batches per optimizer step (default 1)");
  o.value("seed", "n", "Seed of the random init and the window order (default 1)");
  o.value("eval-every", "n", "Validation loss every n steps and at the end (default 100)");
  o.value("eval-batches", "n", "Validation batches per evaluation (default 20)");
  o.value("save-every", "n", "Checkpoint every n steps and at the end (default 500)");
  o.value("keep", "n", "Keep the n newest checkpoints (default 3; 0: all)");
  o.value("init", "random", "Start from the random init of docs/model.md (the default)");
  o.value("init-from", "file",
          "Start from these weights (safetensors, Hugging Face names): "
          "fine-tuning");
  o.value("out", "dir", "Run folder for metrics, the loss plot and checkpoints (new or empty)");
  o.value("resume", "dir",
          "Continue the run in dir from its newest checkpoint, with its "
          "options; flags given here (e.g. --steps) override them");
  o.value("gemm-tune", "on|off",
          "GPU: time up to 8 of cuBLASLt's algorithms for each matrix-product shape on the "
          "first step and keep the fastest, the choices written to DIR/gemm-tune.json so that "
          "a resumed run computes with the same (default off: cuBLASLt's first choice, the "
          "same bits on every run; measured no faster on the H200, whose 700 W cap sets the "
          "clocks; TNLM_GEMM_TUNE, when set, is the default instead)");
  o.value("log-every", "n", "Without a terminal: a progress line every n steps (default 10)");
  o.value("threads", "n", "CPU threads (default all cores; also TNLM_NUM_THREADS)");
  o.flag("quiet", "No progress output");
}

// The options of a run: given flags, else (on resume) the run's, else the defaults.
struct Settings {
  const Options &flags;
  nlohmann::json saved; // run.json "options" when resuming
  std::string get(const std::string &name, const std::string &dflt = "") const {
    if (flags.has(name))
      return flags.get(name);
    if (saved.contains(name)) {
      if (!saved[name].is_string())
        throw Error("run.json: option '" + name + "' must be a string, as tnlm-train writes it");
      return saved[name].get<std::string>();
    }
    return dflt;
  }
  bool has(const std::string &name) const { return flags.has(name) || saved.contains(name); }
  double number(const std::string &name, double dflt, double min, double max) const {
    return has(name) ? parseNumberFlag(name, get(name), min, max) : dflt;
  }
  int64_t integer(const std::string &name, int64_t dflt, int64_t min, int64_t max) const {
    return has(name) ? parseIntegerFlag(name, get(name), min, max) : dflt;
  }
};

// Paths are stored absolute, so a run resumes from any working directory.
std::string storedOption(const std::string &name, const std::string &value) {
  if ((name == "data" || name == "val-data" || name == "init-from") && !value.empty()) {
    std::error_code ec;
    std::filesystem::path abs = std::filesystem::absolute(value, ec);
    if (!ec)
      return abs.string();
  }
  return value;
}

const char *kRunOptions[] = {"data",         "val-data",   "val-fraction", "order", "steps",
                             "tokens",       "batch",      "seq",          "lr",    "min-lr",
                             "warmup",       "schedule",   "beta1",        "beta2", "eps",
                             "weight-decay", "clip-grad",  "grad-accum",   "seed",  "eval-every",
                             "eval-batches", "save-every", "keep",         "init",  "init-from",
                             "gemm-tune"};

double mean(const std::vector<double> &v) {
  double s = 0;
  for (double x : v)
    s += x;
  return v.empty() ? NAN : s / v.size();
}

int runTraining(const Options &flags) {
  if (flags.positional().size() != 1)
    throw Error("expected one train artifact (tnlmc --mode=train -o model.tnlm), got " +
                std::to_string(flags.positional().size()) + " arguments (see --help)");
  const std::string artifactPath = flags.positional()[0];
  if (flags.has("resume") && (flags.has("init-from") || flags.has("init")))
    throw Error("--resume continues from the run's checkpoint: it cannot be combined with "
                "--init or --init-from");
  if (flags.has("resume") && flags.has("out") && flags.get("out") != flags.get("resume"))
    throw Error("--resume writes into the run's own folder: drop --out");
  if (!flags.has("resume") && !flags.has("out"))
    throw Error("--out=dir is required (the run folder for metrics and checkpoints)");
  if (flags.has("init") && flags.get("init") != "random")
    throw Error("--init: unknown value '" + flags.get("init") +
                "' (expected 'random'; weights come with --init-from=file)");
  if (flags.has("init") && flags.has("init-from"))
    throw Error("--init and --init-from exclude each other");
  if (flags.has("threads"))
    cpu::setNumThreads(static_cast<int>(flags.getInt("threads", 0, 1, 4096)));

  Artifact artifact = Artifact::load(artifactPath, std::nullopt); // cpu or cuda:sm_90a
  if (artifact.root().mode() != schema::Mode_Train)
    throw Error(artifactPath + " is an inference artifact (@forward only); compile a train "
                               "artifact with tnlmc --mode=train");

  std::optional<RunFolder> resumed;
  Settings s{flags, nlohmann::json::object()};
  if (flags.has("resume")) {
    resumed = RunFolder::open(flags.get("resume"));
    s.saved = resumed->run().value("options", nlohmann::json::object());
  }
  const bool quiet = flags.has("quiet");
  const int64_t batch = s.integer("batch", artifact.maxBatch(), 1, artifact.maxBatch());
  const int64_t seq = s.integer("seq", artifact.maxSeq(), 1, artifact.maxSeq());
  const int64_t accum = s.integer("grad-accum", 1, 1, 1 << 20);
  const uint64_t seed = static_cast<uint64_t>(s.integer("seed", 1, 0, INT64_MAX));
  if (!s.has("data"))
    throw Error("--data is required (text or token shards)");
  if (flags.has("steps") && flags.has("tokens"))
    throw Error("--steps and --tokens exclude each other: give the length of the run once");
  // On resume, a length given now replaces the saved one (whichever flag it used).
  const bool byTokens = flags.has("tokens") || (!flags.has("steps") && s.saved.contains("tokens"));
  if (!flags.has("steps") && !flags.has("tokens") && !s.saved.contains("steps") &&
      !s.saved.contains("tokens"))
    throw Error("give the length of the run as --steps=n or --tokens=n");
  const int64_t tokensPerStep = batch * seq * accum;
  int64_t steps = 0;
  if (byTokens) {
    const int64_t tokens = s.integer("tokens", 0, 1, INT64_MAX);
    steps = std::max<int64_t>(1, tokens / tokensPerStep);
    if (steps > INT32_MAX)
      throw Error("--tokens=" + std::to_string(tokens) + " makes " + std::to_string(steps) +
                  " steps, more than the 2^31 - 1 the step counter holds");
  } else {
    steps = s.integer("steps", 0, 1, INT32_MAX);
  }

  // Hyperparameters, in the layout of tnlm::schema::HyperParam.
  std::vector<float> hp(schema::HyperParam_Count, 0.0f);
  const double lr = s.number("lr", 3e-4, 0, 10);
  hp[schema::HyperParam_Lr] = lr;
  hp[schema::HyperParam_MinLr] = s.number("min-lr", lr / 10, 0, lr);
  hp[schema::HyperParam_Warmup] = s.integer("warmup", 0, 0, INT32_MAX);
  hp[schema::HyperParam_TotalSteps] = steps;
  const std::string schedule = s.get("schedule", "cosine");
  if (schedule != "cosine" && schedule != "constant")
    throw Error("--schedule: unknown value '" + schedule + "' (expected cosine or constant)");
  hp[schema::HyperParam_Schedule] =
      schedule == "cosine" ? schema::LrScheduleKind_Cosine : schema::LrScheduleKind_Constant;
  // The optimizer reads f32: β must stay below 1 after rounding (1 − β^t would be 0).
  hp[schema::HyperParam_Beta1] = s.number("beta1", 0.9, 0, 0.9999999);
  hp[schema::HyperParam_Beta2] = s.number("beta2", 0.999, 0, 0.9999999);
  hp[schema::HyperParam_Eps] = s.number("eps", 1e-8, 0, 1);
  hp[schema::HyperParam_WeightDecay] = s.number("weight-decay", 0.01, 0, 10);
  hp[schema::HyperParam_ClipGrad] = s.number("clip-grad", 1.0, 0, 1e30);
  hp[schema::HyperParam_AccumSteps] = accum;
  const int64_t evalEvery = s.integer("eval-every", 100, 0, INT32_MAX);
  const int64_t saveEvery = s.integer("save-every", 500, 0, INT32_MAX);
  const int64_t keep = s.integer("keep", 3, 0, INT32_MAX);
  const int64_t logEvery = flags.getInt("log-every", 10, 1, INT32_MAX);
  // The GEMM tuning: the flag (or the run's), else TNLM_GEMM_TUNE where set (the executor
  // read it), else off.
  const char *tuneEnv = std::getenv("TNLM_GEMM_TUNE");
  const bool tuneFromFlag = s.has("gemm-tune") || !tuneEnv || !*tuneEnv;
  const std::string gemmTune = s.get("gemm-tune", "off");
  if (gemmTune != "on" && gemmTune != "off")
    throw Error("--gemm-tune: unknown value '" + gemmTune + "' (expected on or off)");

  // Data.
  DataConfig dc;
  dc.trainPath = s.get("data");
  dc.valPath = s.get("val-data");
  dc.valFraction = s.number("val-fraction", dc.valPath.empty() ? 0.05 : 0.0, 0, 0.999);
  if (!dc.valPath.empty() && dc.valFraction > 0)
    throw Error("--val-fraction and --val-data exclude each other");
  dc.vocabSize = artifact.vocabSize();
  dc.eosId =
      artifact.root().config() ? static_cast<int32_t>(artifact.root().config()->eos_token_id()) : 2;
  dc.batch = batch;
  dc.seq = seq;
  dc.order = parseWindowOrder(s.get("order", "random"));
  dc.seed = seed;
  dc.evalBatches = s.integer("eval-batches", 20, 0, 1 << 20);
  DataLoader data = DataLoader::open(dc);

  // Weights, optimizer state and the run folder.
  ParamValues init = s.has("init-from") && !resumed ? loadWeights(artifact, s.get("init-from"))
                                                    : randomWeights(artifact, seed);
  std::unique_ptr<Runner> runner = makeRunner(artifact, std::move(init));
  Runner &exec = *runner;
  TrainerState state;
  std::optional<RunFolder> folder;
  LossCurve curve("");
  if (resumed) {
    folder = resumed;
    state = folder->load(exec);
    if (state.step >= steps)
      throw Error("--resume: the run already has " + std::to_string(state.step) +
                  " steps; give a larger --steps to continue it");
    data.restore(state.data);
    for (const nlohmann::json &m : folder->metricsUpTo(state.step)) {
      if (m.contains("loss") && m["loss"].is_number())
        curve.addTrain(m["step"], m["loss"]);
      if (m.contains("val_loss") && m["val_loss"].is_number())
        curve.addVal(m["step"], m["val_loss"]);
    }
    // The flags given now become the run's options, so that a later resume keeps them.
    nlohmann::json run = folder->run();
    nlohmann::json &options = run["options"];
    for (const char *name : kRunOptions)
      if (flags.has(name))
        options[name] = storedOption(name, flags.get(name));
    if (flags.has("steps"))
      options.erase("tokens");
    if (flags.has("tokens"))
      options.erase("steps");
    folder->updateRun(run);
  } else {
    nlohmann::json options = nlohmann::json::object();
    for (const char *name : kRunOptions)
      if (flags.has(name))
        options[name] = storedOption(name, flags.get(name));
    nlohmann::json run = {{"artifact", artifactPath},
                          {"model", artifact.root().config() && artifact.root().config()->name()
                                        ? artifact.root().config()->name()->str()
                                        : "model"},
                          {"options", options}};
    folder = RunFolder::create(flags.get("out"), run);
  }
  if (tuneFromFlag) {
    // The choices beside the checkpoints (TNLM_GEMM_TUNE_CACHE, when set, names another file;
    // without tuning it still applies the choices recorded there, as for the other tools).
    const char *cacheEnv = std::getenv("TNLM_GEMM_TUNE_CACHE");
    const std::string cache = cacheEnv && *cacheEnv ? std::string(cacheEnv)
                              : gemmTune == "on"    ? folder->file("gemm-tune.json")
                                                    : std::string();
    exec.setGemmTuning(gemmTune == "on" ? 1 : 0, cache);
  }
  curve = LossCurve(folder->file("loss.png"),
                    LossPlotOptions{"tnlm-train: " + folder->run().value("model", "model") +
                                    " loss (nats/token)"});
  std::signal(SIGINT, onSignal);
  std::signal(SIGTERM, onSignal);
  auto stoppedWithoutSaving = [&]() {
    std::vector<int64_t> kept = folder->checkpoints();
    return kept.empty() ? std::string("stopped without saving (the run has no checkpoint)")
                        : "stopped without saving (checkpoint-" + std::to_string(kept.back()) +
                              " is intact)";
  };

  Progress progress(quiet, logEvery);
  if (!quiet) {
    std::fprintf(stderr, "%s\n", data.describe().c_str());
    std::fprintf(stderr,
                 "train: %s, %lld steps x %lld tokens (batch %lld x seq %lld x accum %lld), "
                 "%s%s\n",
                 artifact.source().c_str(), static_cast<long long>(steps),
                 static_cast<long long>(tokensPerStep), static_cast<long long>(batch),
                 static_cast<long long>(seq), static_cast<long long>(accum), exec.device().c_str(),
                 resumed ? (", resuming at step " + std::to_string(state.step)).c_str() : "");
  }

  auto evaluate = [&]() {
    std::vector<double> losses;
    for (const Batch &b : data.validationBatches()) {
      if (stopSignal != 0)
        return double(NAN); // a stop request does not wait for the evaluation
      losses.push_back(
          exec.run("eval_loss", {{"ids", b.ids.data()}, {"labels", b.labels.data()}}, batch, seq)
              .front()
              .second[0]);
    }
    return mean(losses);
  };

  auto drawPlot = [&]() {
    PlotResult r = curve.write();
    if (r.changed && !r.message.empty() && !quiet)
      progress.note("loss plot " + r.message);
  };
  // Weights the optimizer made non-finite are never saved. Checked here, before each save, not
  // after every optimizer step (on the GPU that check reads every f32 master weight, ~0.4 ms of
  // a 385M step): between saves a non-finite weight makes the next loss non-finite, which stops
  // the run naming the parameter (the finite checks' rerun, above).
  auto checkpoint = [&]() {
    if (const std::string w = exec.nonFiniteParameter(); !w.empty())
      throw Error("step " + std::to_string(state.step) + ": the weights of '" + w +
                  "' are not finite after the optimizer step (check --lr, --beta1, --beta2, "
                  "--eps); " +
                  stoppedWithoutSaving());
    state.data = data.state();
    std::string where = folder->save(exec, state, keep);
    return where;
  };

  std::vector<int32_t> ids(batch * seq), labels(batch * seq);
  const auto t0 = std::chrono::steady_clock::now();
  const double elapsedBefore = state.elapsed;
  const int64_t firstStep = state.step;
  double lastVal = NAN;
  while (state.step < steps) {
    const auto stepStart = std::chrono::steady_clock::now();
    double lossSum = 0;
    for (int64_t k = 0; k < accum; ++k) {
      data.next(ids.data(), labels.data());
      double loss =
          exec.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, batch, seq)
              .front()
              .second[0];
      if (!std::isfinite(loss)) {
        // Where the NaN starts: the same micro-batch again, every step checked. The weights are
        // untouched (no optimizer step ran), so the last checkpoint stays valid.
        exec.setCheckFinite(true);
        std::string where = "the loss";
        try {
          exec.run("train_step", {{"ids", ids.data()}, {"labels", labels.data()}}, batch, seq);
        } catch (const NonFiniteError &e) {
          where = e.what();
        }
        throw Error("step " + std::to_string(state.step + 1) + ": the loss is " +
                    (std::isnan(loss) ? std::string("nan") : std::to_string(loss)) + ": " + where +
                    "; " + stoppedWithoutSaving());
      }
      lossSum += loss;
    }
    // Non-finite gradients must not reach the weights.
    if (const std::string g = exec.nonFiniteGradient(); !g.empty())
      throw Error("step " + std::to_string(state.step + 1) + ": the gradient '" + g +
                  "' is not finite; " + stoppedWithoutSaving());
    auto opt = exec.run("optimizer_step", {{"hparams", hp.data()}}, batch, seq);
    const double gradNorm = opt[0].second[0], stepLr = opt[1].second[0];
    state.step += 1;
    state.tokens += tokensPerStep;
    const double now = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    state.elapsed = elapsedBefore + now;
    const double stepSeconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - stepStart).count();
    const double loss = lossSum / accum;
    // Throughput of this optimizer step (evaluations and checkpoints are not steps).
    const double tokensPerSecond = tokensPerStep / std::max(stepSeconds, 1e-9);
    curve.addTrain(state.step, loss);
    nlohmann::json line = {{"step", state.step},     {"loss", loss},
                           {"lr", stepLr},           {"grad_norm", gradNorm},
                           {"tokens", state.tokens}, {"tokens_per_s", tokensPerSecond},
                           {"step_s", stepSeconds},  {"elapsed_s", state.elapsed}};
    const bool last = state.step == steps;
    if (data.hasValidation() && evalEvery > 0 && !data.validationBatches().empty() &&
        (state.step % evalEvery == 0 || last)) {
      double val = evaluate();
      if (!std::isnan(val) || stopSignal == 0) {
        lastVal = val;
        line["val_loss"] = lastVal;
        curve.addVal(state.step, lastVal);
      }
    }
    folder->appendMetrics(line);
    progress.update(state.step, steps, loss, lastVal, line.contains("val_loss"), stepLr,
                    tokensPerSecond,
                    (steps - state.step) * (now / std::max<int64_t>(1, state.step - firstStep)));
    if (line.contains("val_loss"))
      drawPlot();
    const bool stopping = stopSignal != 0 && !last;
    if ((saveEvery > 0 && state.step % saveEvery == 0) || last || stopping) {
      std::string where = checkpoint();
      if (stopping) {
        progress.finish();
        std::fprintf(stderr, "%s: checkpoint of step %lld saved to %s; continue with --resume=%s\n",
                     stopSignal == SIGINT ? "interrupted" : "terminated",
                     static_cast<long long>(state.step), where.c_str(), folder->path().c_str());
        drawPlot();
        return 128 + stopSignal;
      }
    }
  }
  progress.finish();
  drawPlot();
  if (!quiet) {
    std::fprintf(stderr, "done: %lld steps, %lld tokens in %.1f s; final train loss %.4f",
                 static_cast<long long>(state.step), static_cast<long long>(state.tokens),
                 state.elapsed, curve.train().empty() ? NAN : curve.train().back().loss);
    if (!std::isnan(lastVal))
      std::fprintf(stderr, ", validation loss %.4f (perplexity %.2f)", lastVal, std::exp(lastVal));
    std::fprintf(stderr, "\nweights: %s; metrics: %s; loss curve: %s\n",
                 folder->file("model.safetensors").c_str(), folder->file("metrics.jsonl").c_str(),
                 folder->file("loss.png").c_str());
  }
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  Options options(
      "tnlm-train",
      "tnlm-train MODEL-train.tnlm --data=PATH --steps=N --out=DIR [options]\n"
      "       tnlm-train MODEL-train.tnlm --resume=DIR [--steps=N]\n\n"
      "Trains a model compiled with tnlmc --mode=train on the CPU (--target=cpu) or "
      "the GPU\n(--target=cuda:sm_90a, bf16 with f32 master weights): metrics as JSON lines, a "
      "loss-curve PNG,\ncheckpoints (Hugging Face safetensors + optimizer state) "
      "that resume exactly; SIGINT/SIGTERM\nsave a checkpoint and stop.");
  declareOptions(options);
  try {
    if (!options.parse(argc, argv))
      return 0;
    return runTraining(options);
  } catch (const Error &e) {
    std::fprintf(stderr, "tnlm-train: error: %s\n", e.what());
    return 1;
  } catch (const std::exception &e) {
    std::fprintf(stderr, "tnlm-train: error: %s\n", e.what());
    return 1;
  }
}
