//===- Gemm.cpp - y = x·Wᵀ on the GPU through cuBLASLt --------------------===//
#include "runtime/cuda/Gemm.h"

#include "runtime/Error.h"

#include <cstdio>

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

std::string describe(GemmType type, const GemmShape &s) {
  char text[200];
  std::snprintf(text, sizeof text,
                "%s GEMM rows=%lld in=%lld out=%lld (ldx=%lld ldw=%lld ldy=%lld)",
                type == GemmType::Bf16         ? "bf16"
                : type == GemmType::Bf16F32Out ? "bf16 -> f32"
                                               : "f32",
                (long long)s.rows, (long long)s.in, (long long)s.out, (long long)s.ldx,
                (long long)s.ldw, (long long)s.ldy);
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
  TNLM_CUBLASLT(cublasLtCreate, (&handle_), "creating the cuBLASLt handle");
}

Gemm::~Gemm() {
  plans_.clear();
  if (handle_)
    cublasLt().cublasLtDestroy(handle_);
}

Gemm::Plan &Gemm::plan(const Key &key, std::string_view context) {
  auto cached = plans_.find(key);
  if (cached != plans_.end())
    return *cached->second;

  auto [typeCode, rows, in, out, ldx, ldw, ldy, alignX, alignW, alignY] = key;
  GemmType type = GemmType(typeCode);
  const cudaDataType_t data = type == GemmType::F32 ? CUDA_R_32F : CUDA_R_16BF;
  const cudaDataType_t yType = type == GemmType::Bf16 ? CUDA_R_16BF : CUDA_R_32F;
  auto plan = std::make_unique<Plan>();
  const std::string where = join(context, describe(type, {rows, in, out, ldx, ldw, ldy}));

  TNLM_CUBLASLT(cublasLtMatmulDescCreate, (&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), where);
  cublasOperation_t transposed = CUBLAS_OP_T, plain = CUBLAS_OP_N;
  TNLM_CUBLASLT(cublasLtMatmulDescSetAttribute,
                (plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &transposed, sizeof transposed), where);
  TNLM_CUBLASLT(cublasLtMatmulDescSetAttribute,
                (plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &plain, sizeof plain), where);
  // Column-major views of the row-major operands (see Gemm.h): W as [in, out], x as
  // [in, rows], y as [out, rows].
  TNLM_CUBLASLT(cublasLtMatrixLayoutCreate, (&plan->w, data, uint64_t(in), uint64_t(out), ldw),
                where);
  TNLM_CUBLASLT(cublasLtMatrixLayoutCreate, (&plan->x, data, uint64_t(in), uint64_t(rows), ldx),
                where);
  TNLM_CUBLASLT(cublasLtMatrixLayoutCreate, (&plan->y, yType, uint64_t(out), uint64_t(rows), ldy),
                where);

  TNLM_CUBLASLT(cublasLtMatmulPreferenceCreate, (&plan->preference), where);
  size_t workspaceBytes = workspace_.size();
  TNLM_CUBLASLT(cublasLtMatmulPreferenceSetAttribute,
                (plan->preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspaceBytes,
                 sizeof workspaceBytes),
                where);
  const std::pair<cublasLtMatmulPreferenceAttributes_t, int> alignments[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignW},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignX},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignY},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignY}};
  for (const auto &[attribute, bytes] : alignments) {
    uint32_t value = uint32_t(bytes);
    TNLM_CUBLASLT(cublasLtMatmulPreferenceSetAttribute,
                  (plan->preference, attribute, &value, sizeof value), where);
  }

  cublasLtMatmulHeuristicResult_t result = {};
  int found = 0;
  TNLM_CUBLASLT(cublasLtMatmulAlgoGetHeuristic,
                (handle_, plan->desc, plan->w, plan->x, plan->y, plan->y, plan->preference, 1,
                 &result, &found),
                where);
  if (found == 0 || result.state != CUBLAS_STATUS_SUCCESS)
    throw Error(where + ": cuBLASLt has no algorithm for this shape and alignment (x, W, y " +
                "aligned to " + std::to_string(alignX) + ", " + std::to_string(alignW) + ", " +
                std::to_string(alignY) + " bytes)");
  plan->algo = result.algo;
  plan->workspace = result.workspaceSize;
  return *plans_.emplace(key, std::move(plan)).first->second;
}

void Gemm::linear(GemmType type, const GemmShape &shape, CUdeviceptr x, CUdeviceptr w,
                  CUdeviceptr y, std::string_view context, float alpha, float beta) {
  GemmShape s = shape;
  s.ldx = s.ldx ? s.ldx : s.in;
  s.ldw = s.ldw ? s.ldw : s.in;
  s.ldy = s.ldy ? s.ldy : s.out;
  if (s.rows < 0 || s.in <= 0 || s.out <= 0 || s.ldx < s.in || s.ldw < s.in || s.ldy < s.out)
    throw Error(join(context, describe(type, s) +
                                  ": sizes must be positive and each leading dimension at least "
                                  "its row length"));
  if (s.rows == 0)
    return;
  Key key{int(type), s.rows, s.in,           s.out,          s.ldx,
          s.ldw,     s.ldy,  alignmentOf(x), alignmentOf(w), alignmentOf(y)};
  Plan &p = plan(key, context);
  cublasStatus_t status = cublasLt().cublasLtMatmul(
      handle_, p.desc, &alpha, reinterpret_cast<const void *>(w), p.w,
      reinterpret_cast<const void *>(x), p.x, &beta, reinterpret_cast<const void *>(y), p.y,
      reinterpret_cast<void *>(y), p.y, &p.algo, reinterpret_cast<void *>(workspace_.get()),
      p.workspace, context_.stream());
  if (status != CUBLAS_STATUS_SUCCESS)
    throwCublasLtError(status, "cublasLtMatmul", join(context, describe(type, s)));
}

} // namespace tnlm::cuda
