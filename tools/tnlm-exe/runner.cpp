//===- runner.cpp - the generation runner of emitted executables ----------===//
//
//   ./tnl-385m-gen --weights=model.safetensors --tokenizer=tokenizer.model --prompt="..."
//
// tnlmc --emit=executable appends a recurrent artifact (and, with --embed-weights, the
// weights) to a copy of this program (runtime/Embedded.h); at start it reads them from its
// own file. The flags are tnlm-run's generation flags. Without a payload it says so. A CUDA
// artifact runs on GPU 0 (the driver, cuBLASLt and NVRTC are opened at run time); without a
// driver or a GPU it says so in one sentence before reading the weights.
//
//===----------------------------------------------------------------------===//
#include "runtime/Artifact.h"
#include "runtime/Embedded.h"
#include "runtime/Error.h"
#include "runtime/Weights.h"
#include "runtime/cpu/Parallel.h"
#include "tools/tnlm-run/Generate.h"
#include "tools/tnlm-run/Options.h"
#if TNLM_RUNNER_HAVE_CUDA
#include "tools/tnlm-run/CudaGenerate.h"
#endif

#include <cstdio>
#include <fstream>
#include <iterator>

#include <unistd.h>

using namespace tnlm;

namespace {

std::string selfPath() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0)
    throw Error("cannot find this program's own file (/proc/self/exe)");
  buf[n] = '\0';
  return buf;
}

int run(int argc, char **argv) {
  const std::string self = selfPath();
  std::ifstream in(self, std::ios::binary);
  in.seekg(0, std::ios::end);
  const uint64_t size = static_cast<uint64_t>(in.tellg());
  EmbeddedPayload payload;
  unsigned char trailer[EmbeddedPayload::kTrailerBytes];
  if (size < sizeof trailer || !in.seekg(static_cast<std::streamoff>(size - sizeof trailer)) ||
      !in.read(reinterpret_cast<char *>(trailer), sizeof trailer) || !payload.parse(trailer, size))
    throw Error(self + " carries no model (no tnlm trailer at its end): it is the runner that "
                       "tnlmc --emit=executable copies, or an emitted executable that was "
                       "truncated or modified; emit it again");
  std::vector<uint8_t> bytes(payload.artifactSize);
  in.seekg(static_cast<std::streamoff>(payload.artifactOffset));
  if (!in.read(reinterpret_cast<char *>(bytes.data()), static_cast<std::streamsize>(bytes.size())))
    throw Error(self + ": cannot read the embedded artifact");
  Artifact artifact =
      Artifact::fromBytes(std::move(bytes), self + " (embedded artifact)", std::nullopt);
  const bool cudaTarget = artifact.target() == Target::CudaSm90a;
  const std::string model = artifact.root().config() && artifact.root().config()->name()
                                ? artifact.root().config()->name()->str()
                                : "model";
  const bool embedded = payload.weightsSize > 0;
  Options opts(argv[0], std::string(argv[0]) + (embedded ? "" : " --weights=FILE") +
                            " --prompt=TEXT [options]\n\nGenerates text with the " + model +
                            " model compiled into this program (batch " +
                            std::to_string(artifact.maxBatch()) + ", prompts up to " +
                            std::to_string(artifact.maxSeq()) + " tokens" +
                            (embedded ? ", weights included" : "") + ").");
  opts.value("weights", "file",
             embedded ? "Parameters as safetensors instead of the embedded ones"
                      : "Parameters as safetensors (Hugging Face names; f32/bf16/f16)");
  declareGenerationFlags(opts);
  opts.value("seed", "n", "Seed of sampling (default 0)");
  opts.value("threads", "n", "CPU threads (default: all cores)");
  opts.flag("quiet", "No statistics on stderr");
  if (!opts.parse(argc, argv))
    return 0;
  if (!opts.positional().empty())
    throw Error("unexpected argument '" + opts.positional()[0] + "' (see --help)");
  if (!opts.has("weights") && !embedded)
    throw Error("give the parameters: --weights=FILE (safetensors with Hugging Face names; "
                "this executable was emitted without --embed-weights)");
  if (opts.has("threads"))
    cpu::setNumThreads(static_cast<int>(opts.getInt("threads", 0, 1, 1024)));
  const bool quiet = opts.has("quiet");
  generate::SamplingOptions sampling = samplingFromFlags(opts);
  GenerateOptions g = generateOptionsFromFlags(opts, sampling, quiet);
  if (cudaTarget) {
#if TNLM_RUNNER_HAVE_CUDA
    cuda::driver(); // no driver or no GPU: one sentence, before the weights are read
#else
    throw Error(self + " holds a CUDA model, and this runner was built without the CUDA runtime");
#endif
  }
  ParamValues params =
      opts.has("weights") ? loadWeights(artifact, opts.get("weights"))
                          : loadWeights(artifact, SafetensorsFile::read(self, payload.weightsOffset,
                                                                        payload.weightsSize));
#if TNLM_RUNNER_HAVE_CUDA
  if (cudaTarget) {
    generateOnCuda(artifact, params, opts.get("tokenizer", "bytes"), g);
    return 0;
  }
#endif
  generateOnCpu(artifact, std::move(params), opts.get("tokenizer", "bytes"), g);
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "%s: error: %s\n", argv[0], e.what());
    return 1;
  }
}
