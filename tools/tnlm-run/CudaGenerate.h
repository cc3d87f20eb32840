//===- CudaGenerate.h - the CUDA executor as a RecurrentModel ---*- C++ -*-===//
//
// For tnlm-run and emitted executables built with the CUDA runtime (TnlmRuntimeCuda).
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TOOLS_TNLM_RUN_CUDAGENERATE_H
#define TNLM_TOOLS_TNLM_RUN_CUDAGENERATE_H

#include "runtime/cuda/CudaExecutor.h"
#include "tools/tnlm-run/Generate.h"

namespace tnlm {

class CudaRecurrentModel final : public RecurrentModel {
public:
  explicit CudaRecurrentModel(cuda::CudaExecutor &exec) : exec_(exec) {}
  const Artifact &artifact() const override { return exec_.artifact(); }
  int64_t vocabSize() const override { return exec_.vocabSize(); }
  std::vector<float> prefill(const int32_t *ids, const int32_t *lengths, int64_t slots,
                             int64_t seq) override {
    return exec_.prefill(ids, lengths, slots, seq);
  }
  const float *decode(const int32_t *ids, const int32_t *positions, int64_t slots) override {
    return exec_.decodeStepLogits(ids, positions, slots);
  }

private:
  cuda::CudaExecutor &exec_;
};

/// generateText on GPU 0: the executor (parameters uploaded as bf16), then the tokenizer
/// (`tokenizer`: as loadTokenizer), then the generation loop.
inline void generateOnCuda(const Artifact &artifact, const ParamValues &params,
                           const std::string &tokenizer, const GenerateOptions &options,
                           bool synchronizeSteps = false) {
  cuda::CudaExecutor exec(artifact, params);
  exec.setSynchronizeSteps(synchronizeSteps);
  std::unique_ptr<generate::Tokenizer> t = generate::loadTokenizer(tokenizer, exec.vocabSize());
  CudaRecurrentModel model(exec);
  generateText(model, *t, options);
}

} // namespace tnlm

#endif // TNLM_TOOLS_TNLM_RUN_CUDAGENERATE_H
