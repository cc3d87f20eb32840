//===- Checkpoint.cpp - the run folder of tnlm-train ----------------------===//
#include "tools/tnlm-train/Checkpoint.h"

#include "runtime/Error.h"
#include "runtime/Safetensors.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <unistd.h>

namespace fs = std::filesystem;

namespace tnlm::train {

namespace {

constexpr const char *kStateFormat = "tnlm-train-state 1";

std::string checkpointName(int64_t step) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "checkpoint-%08lld", static_cast<long long>(step));
  return buf;
}

// Writes text to path through path.tmp, fsync and rename.
void writeTextAtomically(const std::string &path, const std::string &text) {
  std::string tmp = path + ".tmp";
  FILE *f = std::fopen(tmp.c_str(), "wb");
  if (!f)
    throw Error(tmp + ": cannot open for writing: " + std::strerror(errno));
  bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
  ok = ok && std::fflush(f) == 0 && ::fsync(fileno(f)) == 0;
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    throw Error(path + ": cannot write: " + err);
  }
}

void syncDirectory(const std::string &dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::vector<int64_t> shapeOf(const flatbuffers::Vector<int64_t> *shape) {
  return std::vector<int64_t>(shape->begin(), shape->end());
}

} // namespace

RunFolder RunFolder::create(const std::string &path, const nlohmann::json &run) {
  std::error_code ec;
  if (fs::exists(path, ec)) {
    if (!fs::is_directory(path, ec))
      throw Error("--out=" + path + ": exists and is not a folder");
    if (fs::exists(fs::path(path) / "run.json", ec)) {
      RunFolder old;
      old.path_ = path;
      if (!old.checkpoints().empty())
        throw Error("--out=" + path + " holds another run (run.json); continue it with --resume=" +
                    path + " or choose another --out");
      // A run that never reached a checkpoint has nothing to resume: start it again here, if
      // the folder holds only what tnlm-train writes (else nothing is touched).
      std::vector<fs::path> ours;
      for (const auto &entry : fs::directory_iterator(path, ec)) {
        const std::string name = entry.path().filename().string();
        if (name == "run.json" || name == "metrics.jsonl" || name == "loss.png" ||
            name.rfind("checkpoint-", 0) == 0 || name.rfind("model.safetensors", 0) == 0 ||
            name.rfind("loss.png", 0) == 0 || name.rfind("run.json", 0) == 0 ||
            name.rfind("metrics.jsonl", 0) == 0)
          ours.push_back(entry.path());
        else
          throw Error("--out=" + path + " holds a run without a checkpoint and other files ('" +
                      name + "'); choose another --out");
      }
      for (const fs::path &p : ours)
        fs::remove_all(p, ec);
      std::fprintf(stderr, "note: %s held a run without a checkpoint; starting it again\n",
                   path.c_str());
    }
    if (!fs::is_empty(path, ec))
      throw Error("--out=" + path +
                  " is not empty; tnlm-train writes a run only into a new or "
                  "empty folder (nothing was changed)");
  }
  fs::create_directories(path, ec);
  if (ec)
    throw Error("--out=" + path + ": cannot create the folder: " + ec.message());
  RunFolder r;
  r.path_ = path;
  r.run_ = run;
  writeTextAtomically(r.file("run.json"), run.dump(2) + "\n");
  return r;
}

RunFolder RunFolder::open(const std::string &path) {
  std::string runFile = path + "/run.json";
  std::ifstream in(runFile);
  if (!in)
    throw Error("--resume=" + path + ": no run there (cannot read " + runFile + ")");
  RunFolder r;
  r.path_ = path;
  try {
    r.run_ = nlohmann::json::parse(in);
  } catch (const std::exception &e) {
    throw Error(runFile + ": not a valid run description: " + e.what());
  }
  return r;
}

void RunFolder::updateRun(const nlohmann::json &run) {
  run_ = run;
  writeTextAtomically(file("run.json"), run.dump(2) + "\n");
}

std::vector<int64_t> RunFolder::checkpoints() const {
  std::vector<int64_t> steps;
  std::error_code ec;
  for (const auto &entry : fs::directory_iterator(path_, ec)) {
    std::string name = entry.path().filename().string();
    long long step = 0;
    char tail = 0;
    if (entry.is_directory() && std::sscanf(name.c_str(), "checkpoint-%lld%c", &step, &tail) == 1)
      steps.push_back(step);
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

std::string RunFolder::save(Runner &exec, const TrainerState &state, int64_t keep) const {
  const Artifact &a = exec.artifact();
  const std::string final = file(checkpointName(state.step)), tmp = final + ".tmp";
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec)
    throw Error(tmp + ": cannot create the checkpoint folder: " + ec.message());

  // Weights in f32 whatever the compiled dtype: the CPU backend trains f32 parameters, and a
  // rounded copy would not resume exactly.
  std::vector<TensorData> weights;
  const auto *params = a.root().params();
  const ParamValues values = exec.params();
  for (unsigned i = 0; i < params->size(); ++i)
    weights.push_back(TensorData::fromF32(params->Get(i)->name()->str(), DType::F32,
                                          shapeOf(params->Get(i)->shape()), values[i]));
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"producer", "tnlm-train"}};
  if (a.root().config() && a.root().config()->name())
    meta["model"] = a.root().config()->name()->str();
  writeSafetensors(tmp + "/model.safetensors", weights, meta);

  // Optimizer state: the moments and the step counter (gradients are zero between steps).
  std::vector<TensorData> tensors;
  const auto *st = a.root().state();
  const std::vector<std::vector<float>> stateValues = exec.state();
  for (unsigned i = 0; st && i < st->size(); ++i) {
    const schema::StateBuffer *s = st->Get(i);
    if (s->kind() == schema::StateKind_Gradient)
      continue;
    TensorData t;
    t.name = s->name()->str();
    t.shape = shapeOf(s->shape());
    t.dtype = s->dtype() == schema::DType_I32 ? DType::I32 : DType::F32;
    const std::vector<float> &v = stateValues[i];
    t.bytes.resize(v.size() * 4);
    std::memcpy(t.bytes.data(), v.data(), t.bytes.size());
    tensors.push_back(std::move(t));
  }
  nlohmann::json trainer = {{"step", state.step},
                            {"tokens", state.tokens},
                            {"elapsed", state.elapsed},
                            {"data", state.data}};
  writeSafetensors(
      tmp + "/state.safetensors", tensors,
      {{"format", kStateFormat}, {"trainer", trainer.dump()}, {"model", meta["model"]}});
  syncDirectory(tmp);
  fs::remove_all(final, ec);
  fs::rename(tmp, final, ec);
  if (ec)
    throw Error(final + ": cannot move the checkpoint into place: " + ec.message());
  syncDirectory(path_);
  // The run's weights for tnlm-run: the newest checkpoint's.
  writeSafetensors(file("model.safetensors"), weights, meta);

  std::vector<int64_t> steps = checkpoints();
  for (size_t i = 0; keep > 0 && i + keep < steps.size(); ++i)
    fs::remove_all(file(checkpointName(steps[i])), ec);
  return final;
}

TrainerState RunFolder::load(Runner &exec) const {
  std::vector<int64_t> steps = checkpoints();
  if (steps.empty())
    throw Error("--resume=" + path_ +
                ": the run has no checkpoint yet (nothing to resume; "
                "start it again with --out)");
  const std::string dir = file(checkpointName(steps.back()));
  exec.setParams(loadWeights(exec.artifact(), dir + "/model.safetensors"));
  const std::string statePath = dir + "/state.safetensors";
  SafetensorsFile f = SafetensorsFile::read(statePath);
  auto meta = f.metadata();
  if (meta["format"] != kStateFormat)
    throw Error(statePath + ": not a tnlm-train state file (format '" + meta["format"] + "')");
  const auto *st = exec.artifact().root().state();
  std::vector<std::vector<float>> values = exec.state();
  for (unsigned i = 0; st && i < st->size(); ++i) {
    const schema::StateBuffer *s = st->Get(i);
    if (s->kind() == schema::StateKind_Gradient) {
      std::fill(values[i].begin(), values[i].end(), 0.0f);
      continue;
    }
    const std::string name = s->name()->str();
    const TensorData *t = f.find(name);
    if (!t)
      throw Error(statePath + ": missing '" + name + "': a checkpoint of another model?");
    DType want = s->dtype() == schema::DType_I32 ? DType::I32 : DType::F32;
    if (t->dtype != want || t->shape != shapeOf(s->shape()))
      throw Error(statePath + ": '" + name + "' has another dtype or shape than this model's");
    std::memcpy(values[i].data(), t->bytes.data(), t->bytes.size());
  }
  exec.setState(values);
  TrainerState state;
  try {
    nlohmann::json trainer = nlohmann::json::parse(meta["trainer"]);
    state.step = trainer.at("step").get<int64_t>();
    state.tokens = trainer.at("tokens").get<int64_t>();
    state.elapsed = trainer.at("elapsed").get<double>();
    state.data = trainer.at("data");
  } catch (const std::exception &e) {
    throw Error(statePath + ": trainer state is malformed: " + e.what());
  }
  if (state.step != steps.back() || exec.stepCounter() != state.step)
    throw Error(statePath + ": step counter " + std::to_string(exec.stepCounter()) +
                " does not match the checkpoint's step " + std::to_string(steps.back()));
  return state;
}

void RunFolder::appendMetrics(const nlohmann::json &line) const {
  std::ofstream out(file("metrics.jsonl"), std::ios::app);
  out << line.dump() << "\n";
  out.flush();
  if (!out)
    throw Error(file("metrics.jsonl") + ": cannot append");
}

std::vector<nlohmann::json> RunFolder::metricsUpTo(int64_t step) const {
  std::vector<nlohmann::json> kept;
  std::ifstream in(file("metrics.jsonl"));
  std::string line;
  std::string text;
  while (std::getline(in, line)) {
    if (line.empty())
      continue;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception &) {
      break; // a line cut off by a kill: everything after it is gone too
    }
    if (j.value("step", int64_t(0)) > step)
      break;
    kept.push_back(j);
    text += j.dump() + "\n";
  }
  writeTextAtomically(file("metrics.jsonl"), text);
  return kept;
}

} // namespace tnlm::train
