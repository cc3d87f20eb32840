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

std::string describe(int form, GemmType type, const GemmShape &s) {
  static const char *const kForms[] = {"GEMM", "GEMM dx = dy.W", "GEMM dW = dy^T.x"};
  char text[220];
  std::snprintf(text, sizeof text, "%s %s rows=%lld in=%lld out=%lld (ldx=%lld ldw=%lld ldy=%lld)",
                type == GemmType::Bf16         ? "bf16"
                : type == GemmType::Bf16F32Out ? "bf16 -> f32"
                                               : "f32",
                kForms[form], (long long)s.rows, (long long)s.in, (long long)s.out,
                (long long)s.ldx, (long long)s.ldw, (long long)s.ldy);
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

  auto [formCode, typeCode, rows, in, out, ldx, ldw, ldy, alignA, alignB, alignD] = key;
  const Form form = Form(formCode);
  GemmType type = GemmType(typeCode);
  const cudaDataType_t data = type == GemmType::F32 ? CUDA_R_32F : CUDA_R_16BF;
  const cudaDataType_t yType = type == GemmType::Bf16 ? CUDA_R_16BF : CUDA_R_32F;
  auto plan = std::make_unique<Plan>();
  const std::string where = join(context, describe(formCode, type, {rows, in, out, ldx, ldw, ldy}));

  TNLM_CUBLASLT(cublasLtMatmulDescCreate, (&plan->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), where);
  // Column-major views of the row-major operands (see Gemm.h): W (or dW) as [in, out], x (or
  // dx) as [in, rows], y (or dy) as [out, rows].
  //   Linear:     D = y  [out, rows] = Aᵀ·B, A = W [in, out], B = x [in, rows]      ("TN")
  //   GradInput:  D = dx [in, rows]  = A·B,  A = W [in, out], B = dy [out, rows]    ("NN")
  //   GradWeight: D = dW [in, out]   = A·Bᵀ, A = x [in, rows], B = dy [out, rows]   ("NT")
  const cublasOperation_t opA = form == Form::Linear ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opB = form == Form::GradWeight ? CUBLAS_OP_T : CUBLAS_OP_N;
  TNLM_CUBLASLT(cublasLtMatmulDescSetAttribute,
                (plan->desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA), where);
  TNLM_CUBLASLT(cublasLtMatmulDescSetAttribute,
                (plan->desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB), where);
  auto layout = [&](cublasLtMatrixLayout_t *l, cudaDataType_t t, int64_t r, int64_t c, int64_t ld) {
    TNLM_CUBLASLT(cublasLtMatrixLayoutCreate, (l, t, uint64_t(r), uint64_t(c), ld), where);
  };
  // plan->w, plan->x, plan->y hold A, B and D (= C).
  switch (form) {
  case Form::Linear:
    layout(&plan->w, data, in, out, ldw), layout(&plan->x, data, in, rows, ldx);
    layout(&plan->y, yType, out, rows, ldy);
    break;
  case Form::GradInput:
    layout(&plan->w, data, in, out, ldw), layout(&plan->x, data, out, rows, ldy);
    layout(&plan->y, yType, in, rows, ldx);
    break;
  case Form::GradWeight:
    layout(&plan->w, data, in, rows, ldx), layout(&plan->x, data, out, rows, ldy);
    layout(&plan->y, yType, in, out, ldw);
    break;
  }

  TNLM_CUBLASLT(cublasLtMatmulPreferenceCreate, (&plan->preference), where);
  size_t workspaceBytes = workspace_.size();
  TNLM_CUBLASLT(cublasLtMatmulPreferenceSetAttribute,
                (plan->preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspaceBytes,
                 sizeof workspaceBytes),
                where);
  const std::pair<cublasLtMatmulPreferenceAttributes_t, int> alignments[] = {
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, alignA},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, alignB},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, alignD},
      {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, alignD}};
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
    throw Error(where + ": cuBLASLt has no algorithm for this shape and alignment (A, B, D " +
                "aligned to " + std::to_string(alignA) + ", " + std::to_string(alignB) + ", " +
                std::to_string(alignD) + " bytes)");
  plan->algo = result.algo;
  plan->workspace = result.workspaceSize;
  return *plans_.emplace(key, std::move(plan)).first->second;
}

void Gemm::linear(GemmType type, const GemmShape &shape, CUdeviceptr x, CUdeviceptr w,
                  CUdeviceptr y, std::string_view context, float alpha, float beta) {
  run(Form::Linear, type, shape, w, x, y, context, alpha, beta);
}

void Gemm::gradInput(GemmType type, const GemmShape &shape, CUdeviceptr dy, CUdeviceptr w,
                     CUdeviceptr dx, std::string_view context, float alpha, float beta) {
  run(Form::GradInput, type, shape, w, dy, dx, context, alpha, beta);
}

void Gemm::gradWeight(GemmType type, const GemmShape &shape, CUdeviceptr dy, CUdeviceptr x,
                      CUdeviceptr dw, std::string_view context, float alpha, float beta) {
  run(Form::GradWeight, type, shape, x, dy, dw, context, alpha, beta);
}

void Gemm::run(Form form, GemmType type, const GemmShape &shape, CUdeviceptr a, CUdeviceptr b,
               CUdeviceptr d, std::string_view context, float alpha, float beta) {
  GemmShape s = shape;
  s.ldx = s.ldx ? s.ldx : s.in;
  s.ldw = s.ldw ? s.ldw : s.in;
  s.ldy = s.ldy ? s.ldy : s.out;
  if (s.rows < 0 || s.in <= 0 || s.out <= 0 || s.ldx < s.in || s.ldw < s.in || s.ldy < s.out)
    throw Error(join(context, describe(int(form), type, s) +
                                  ": sizes must be positive and each leading dimension at least "
                                  "its row length"));
  if (s.rows == 0) {
    if (form == Form::GradWeight && beta != 1.0f)
      throw Error(join(context, describe(int(form), type, s) +
                                    ": no rows: dW would be left as it is (beta must be 1)"));
    return;
  }
  Key key{int(form), int(type), s.rows,         s.in,           s.out,         s.ldx,
          s.ldw,     s.ldy,     alignmentOf(a), alignmentOf(b), alignmentOf(d)};
  Plan &p = plan(key, context);
  cublasStatus_t status = cublasLt().cublasLtMatmul(
      handle_, p.desc, &alpha, reinterpret_cast<const void *>(a), p.w,
      reinterpret_cast<const void *>(b), p.x, &beta, reinterpret_cast<const void *>(d), p.y,
      reinterpret_cast<void *>(d), p.y, &p.algo, reinterpret_cast<void *>(workspace_.get()),
      p.workspace, context_.stream());
  if (status != CUBLAS_STATUS_SUCCESS)
    throwCublasLtError(status, "cublasLtMatmul", join(context, describe(int(form), type, s)));
}

} // namespace tnlm::cuda
