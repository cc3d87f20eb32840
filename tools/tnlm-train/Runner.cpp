//===- Runner.cpp - the executor tnlm-train drives: CPU or GPU ------------===//
#include "tools/tnlm-train/Runner.h"

#include "runtime/Error.h"
#include "runtime/cpu/Parallel.h"

#if TNLM_TRAIN_HAVE_CUDA
#include "runtime/cuda/CudaExecutor.h"
#endif

#include <cmath>

namespace tnlm::train {

namespace {

std::string firstNonFinite(const std::vector<std::vector<float>> &values,
                           const std::vector<std::string> &names, const std::vector<bool> &use) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!use[i])
      continue;
    for (float v : values[i])
      if (!std::isfinite(v))
        return names[i];
  }
  return "";
}

std::vector<std::string> stateNames(const Artifact &a, std::vector<bool> &grads) {
  std::vector<std::string> names;
  const auto *st = a.root().state();
  for (unsigned i = 0; st && i < st->size(); ++i) {
    names.push_back(st->Get(i)->name()->str());
    grads.push_back(st->Get(i)->kind() == schema::StateKind_Gradient);
  }
  return names;
}

std::vector<std::string> paramNames(const Artifact &a) {
  std::vector<std::string> names;
  for (const auto *p : *a.root().params())
    names.push_back(p->name()->str());
  return names;
}

class CpuRunner : public Runner {
public:
  CpuRunner(const Artifact &artifact, ParamValues params)
      : exec_(artifact, std::move(params)), names_(stateNames(artifact, grads_)),
        paramNames_(paramNames(artifact)) {}
  const Artifact &artifact() const override { return exec_.artifact(); }
  std::vector<std::pair<std::string, std::vector<float>>>
  run(const std::string &name, const std::vector<CpuExecutor::Input> &inputs, int64_t batch,
      int64_t seq) override {
    return exec_.run(name, inputs, batch, seq);
  }
  bool setCheckFinite(bool on) override {
    exec_.setCheckFinite(on);
    return true;
  }
  std::string nonFiniteGradient() override { return firstNonFinite(exec_.state(), names_, grads_); }
  std::string nonFiniteParameter() override {
    return firstNonFinite(exec_.params(), paramNames_,
                          std::vector<bool>(exec_.params().size(), true));
  }
  ParamValues params() override { return exec_.params(); }
  void setParams(const ParamValues &params) override { exec_.params() = params; }
  std::vector<std::vector<float>> state() override { return exec_.state(); }
  void setState(const std::vector<std::vector<float>> &state) override { exec_.state() = state; }
  int64_t stepCounter() override { return exec_.stepCounter(); }
  std::string device() const override { return std::to_string(cpu::numThreads()) + " threads"; }

private:
  CpuExecutor exec_;
  std::vector<bool> grads_;
  std::vector<std::string> names_, paramNames_;
};

#if TNLM_TRAIN_HAVE_CUDA
class CudaRunner : public Runner {
public:
  CudaRunner(const Artifact &artifact, const ParamValues &params)
      : exec_(artifact, params), names_(stateNames(artifact, grads_)),
        paramNames_(paramNames(artifact)) {}
  const Artifact &artifact() const override { return exec_.artifact(); }
  std::vector<std::pair<std::string, std::vector<float>>>
  run(const std::string &name, const std::vector<CpuExecutor::Input> &inputs, int64_t batch,
      int64_t seq) override {
    std::vector<cuda::CudaExecutor::Input> in;
    for (const CpuExecutor::Input &i : inputs)
      in.push_back({i.name, i.data});
    return exec_.run(name, in, batch, seq);
  }
  bool setCheckFinite(bool on) override {
    exec_.setCheckFinite(on);
    return true;
  }
  std::string nonFiniteGradient() override { // the gradients only (not the moments)
    if (exec_.gradientsFinite()) // one sum on the device; the buffers come back only after a NaN
      return "";
    for (size_t i = 0; i < grads_.size(); ++i) {
      if (!grads_[i])
        continue;
      for (float v : exec_.stateBuffer(i))
        if (!std::isfinite(v))
          return names_[i];
    }
    return "";
  }
  std::string nonFiniteParameter() override {
    if (exec_.mastersFinite())
      return "";
    const ParamValues p = exec_.masterParams();
    return firstNonFinite(p, paramNames_, std::vector<bool>(p.size(), true));
  }
  ParamValues params() override { return exec_.masterParams(); }
  void setParams(const ParamValues &params) override { exec_.setMasterParams(params); }
  std::vector<std::vector<float>> state() override { return exec_.state(); }
  void setState(const std::vector<std::vector<float>> &state) override { exec_.setState(state); }
  int64_t stepCounter() override { return exec_.trainStepCounter(); }
  bool setGemmTuning(int level, const std::string &cache) override {
    exec_.gemm().setTuning(level);
    exec_.gemm().setTuneCache(cache);
    return true;
  }
  std::string device() const override { return deviceName_; }

private:
  cuda::CudaExecutor exec_;
  std::vector<bool> grads_;
  std::vector<std::string> names_, paramNames_;
  std::string deviceName_ = exec_.context().deviceName();
};
#endif

} // namespace

std::unique_ptr<Runner> makeRunner(const Artifact &artifact, ParamValues params) {
  if (artifact.target() == Target::Cpu)
    return std::make_unique<CpuRunner>(artifact, std::move(params));
#if TNLM_TRAIN_HAVE_CUDA
  return std::make_unique<CudaRunner>(artifact, params);
#else
  throw Error(artifact.source() + ": a cuda:sm_90a train artifact, and this tnlm-train was built "
                                  "without the CUDA runtime layer (compile with --target=cpu)");
#endif
}

} // namespace tnlm::train
