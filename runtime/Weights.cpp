//===- Weights.cpp - parameters of an artifact: load, init, save ----------===//
#include "runtime/Weights.h"

#include "runtime/DType.h"
#include "runtime/Error.h"
#include "runtime/Init.h"
#include "runtime/Safetensors.h"

#include <set>
#include <sstream>

namespace tnlm {

namespace {

std::string shapeStr(const std::vector<int64_t> &shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i)
    os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

std::vector<int64_t> paramShape(const schema::Param &p) {
  return std::vector<int64_t>(p.shape()->begin(), p.shape()->end());
}

DType paramDType(const schema::Param &p) {
  switch (p.dtype()) {
  case schema::DType_BF16:
    return DType::BF16;
  case schema::DType_F16:
    return DType::F16;
  default:
    return DType::F32;
  }
}

} // namespace

ParamValues loadWeights(const Artifact &artifact, const std::string &path) {
  return loadWeights(artifact, SafetensorsFile::read(path));
}

ParamValues loadWeights(const Artifact &artifact, const SafetensorsFile &file) {
  const std::string &path = file.path();
  const auto &params = *artifact.root().params();
  ParamValues values(params.size());
  std::vector<std::string> problems;
  std::set<std::string> expected;
  for (size_t i = 0; i < params.size(); ++i) {
    const schema::Param &p = *params[i];
    std::string name = p.name()->str();
    expected.insert(name);
    const TensorData *t = file.find(name);
    if (!t) {
      problems.push_back("missing '" + name + "' " + shapeStr(paramShape(p)));
      continue;
    }
    if (!isFloatingPoint(t->dtype) || t->dtype == DType::F64) {
      problems.push_back("'" + name + "' has dtype " + dtypeName(t->dtype) +
                         " (expected F32, BF16 or F16)");
      continue;
    }
    if (t->shape != paramShape(p)) {
      problems.push_back("'" + name + "' has shape " + shapeStr(t->shape) + ", expected " +
                         shapeStr(paramShape(p)));
      continue;
    }
    values[i] = t->toF32();
  }
  for (const TensorData &t : file.tensors())
    if (!expected.count(t.name))
      problems.push_back("unexpected '" + t.name + "' (not a parameter of this model)");
  if (!problems.empty()) {
    std::string msg = path + ": weights do not match the artifact " + artifact.source() + " (" +
                      std::to_string(problems.size()) + " problem" +
                      (problems.size() > 1 ? "s" : "") + "):";
    for (const std::string &p : problems)
      msg += "\n  " + p;
    throw Error(msg);
  }
  return values;
}

ParamValues randomWeights(const Artifact &artifact, uint64_t seed) {
  const auto &params = *artifact.root().params();
  ParamValues values(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    std::vector<int64_t> shape = paramShape(*params[i]);
    int64_t n = numElements(shape, params[i]->name()->str());
    try {
      values[i].resize(static_cast<size_t>(n));
    } catch (const std::bad_alloc &) {
      throw Error(artifact.source() + ": cannot allocate parameter '" +
                  params[i]->name()->str() + "' (" + std::to_string(n) + " elements)");
    }
    initParameter(params[i]->name()->str(), shape, seed, values[i].data());
  }
  return values;
}

void checkParamValues(const Artifact &artifact, const ParamValues &values) {
  const auto &table = *artifact.root().params();
  if (values.size() != table.size())
    throw Error(artifact.source() + ": " + std::to_string(values.size()) +
                " parameter tensors given for " + std::to_string(table.size()) + " parameters");
  for (size_t i = 0; i < table.size(); ++i) {
    int64_t expected = numElements(paramShape(*table[i]), table[i]->name()->str());
    if (static_cast<int64_t>(values[i].size()) != expected)
      throw Error(artifact.source() + ": parameter '" + table[i]->name()->str() + "' has " +
                  std::to_string(values[i].size()) + " values, expected " +
                  std::to_string(expected));
  }
}

void saveWeights(const Artifact &artifact, const ParamValues &values, const std::string &path) {
  const auto &params = *artifact.root().params();
  if (values.size() != params.size())
    throw Error(path + ": internal error: " + std::to_string(values.size()) +
                " parameter values for " + std::to_string(params.size()) + " parameters");
  std::vector<TensorData> tensors;
  for (size_t i = 0; i < params.size(); ++i)
    tensors.push_back(TensorData::fromF32(params[i]->name()->str(), paramDType(*params[i]),
                                          paramShape(*params[i]), values[i]));
  const schema::ModelConfig *cfg = artifact.root().config();
  std::map<std::string, std::string> metadata = {{"format", "pt"}, {"producer", "tnlm-run"}};
  if (cfg && cfg->name())
    metadata["model"] = cfg->name()->str();
  writeSafetensors(path, tensors, metadata);
}

} // namespace tnlm
