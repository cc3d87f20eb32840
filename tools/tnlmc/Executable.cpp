//===- Executable.cpp - tnlmc --emit=executable ---------------------------===//
#include "tools/tnlmc/Executable.h"

#include "runtime/Embedded.h"
#include "runtime/Safetensors.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>

#include <sys/stat.h>

namespace tnlmc {

namespace {

bool readAll(const std::string &path, std::string &out) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return false;
  out.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  return !in.bad();
}

// Every parameter with its shape and nothing else, as the runner's loadWeights will demand:
// reported here, at compile time, instead of by the executable on its first run.
std::string checkWeights(const std::string &path,
                         const std::vector<std::pair<std::string, std::vector<int64_t>>> &params) {
  tnlm::SafetensorsFile file = tnlm::SafetensorsFile::read(path);
  std::string problems;
  auto add = [&](const std::string &p) { problems += (problems.empty() ? "" : "; ") + p; };
  for (const auto &[name, shape] : params) {
    const tnlm::TensorData *t = file.find(name);
    if (!t)
      add("missing '" + name + "'");
    else if (t->shape != shape)
      add("'" + name + "' has another shape than the model's");
    else if (t->dtype != tnlm::DType::F32 && t->dtype != tnlm::DType::BF16 &&
             t->dtype != tnlm::DType::F16)
      add("'" + name + "' has dtype " + tnlm::dtypeName(t->dtype) + " (expected F32, BF16 or F16)");
  }
  for (const tnlm::TensorData &t : file.tensors()) {
    bool known = false;
    for (const auto &p : params)
      known |= p.first == t.name;
    if (!known)
      add("unexpected '" + t.name + "'");
  }
  return problems.empty() ? "" : path + ": the weights do not fit the model: " + problems;
}

} // namespace

std::string
writeExecutable(const std::string &output, const std::vector<uint8_t> &artifact,
                const std::string &runner, const std::string &weightsPath,
                const std::vector<std::pair<std::string, std::vector<int64_t>>> &params) {
  std::string program, weights;
  if (!readAll(runner, program))
    return "cannot read the generation runner '" + runner +
           "' (built beside tnlmc as the tnlm-exe-runner target)";
  if (!weightsPath.empty()) {
    try {
      std::string bad = checkWeights(weightsPath, params);
      if (!bad.empty())
        return bad;
    } catch (const std::exception &e) {
      return e.what();
    }
    if (!readAll(weightsPath, weights))
      return weightsPath + ": cannot read the weights";
  }
  tnlm::EmbeddedPayload payload;
  payload.artifactOffset = program.size();
  payload.artifactSize = artifact.size();
  payload.weightsOffset = program.size() + artifact.size();
  payload.weightsSize = weights.size();
  const std::string tmp = output + ".tmp";
  FILE *f = std::fopen(tmp.c_str(), "wb");
  if (!f)
    return "cannot open '" + tmp + "' for writing: " + std::strerror(errno);
  const std::string trailer = payload.trailer();
  bool ok = std::fwrite(program.data(), 1, program.size(), f) == program.size() &&
            std::fwrite(artifact.data(), 1, artifact.size(), f) == artifact.size() &&
            std::fwrite(weights.data(), 1, weights.size(), f) == weights.size() &&
            std::fwrite(trailer.data(), 1, trailer.size(), f) == trailer.size();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || ::chmod(tmp.c_str(), 0755) != 0 || std::rename(tmp.c_str(), output.c_str()) != 0) {
    std::string err = std::strerror(errno);
    std::remove(tmp.c_str());
    return "cannot write '" + output + "': " + err;
  }
  return "";
}

} // namespace tnlmc
