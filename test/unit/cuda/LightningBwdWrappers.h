//===- LightningBwdWrappers.h - extern "C" wrappers of the GPU Lightning backward --===//
//
// The kernels LightningBwdGpuTest.cpp and LightningFusedGradGpuTest.cpp launch on the device
// (codegen/cuda/LightningAttentionBwdSimple.cuh, LightningAttentionGradParts.cuh), as CUDA
// source for NVRTC; LightningBwdCompileTest.cpp compiles the same text in CI (no GPU needed).
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TEST_UNIT_CUDA_LIGHTNINGBWDWRAPPERS_H
#define TNLM_TEST_UNIT_CUDA_LIGHTNINGBWDWRAPPERS_H

#include <string>

namespace tnlm::cuda::test {

// The fused backward's core block: 16 rows where dk = 256 (its fp32 state is 128 KiB), else 64.
inline int fusedGradBlock(int dk) { return dk == 256 ? 16 : 64; }

/// dtheta_relative's and dtheta_relative_tc's dynamic shared memory (as tnlmc's kLaDthetaSmem,
/// kLaDthetaTcSmem).
constexpr int kDthetaRelativeSmem = 99336, kDthetaRelativeTcSmem = 125312;

/// la_bwd_simple_{bf16,float}: lightning_bwd_simple<128, 128, 64, 256>.
inline std::string lightningBwdSimpleWrappers() {

  std::string s =
      "#include \"tnlm/LightningAttentionBwdSimple.cuh\"\nusing bf16 = __nv_bfloat16;\n";
  for (const char *t : {"bf16", "float"})
    s += std::string("extern \"C\" __global__ void __launch_bounds__(256)\nla_bwd_simple_") + t +
         "(const bf16 *q, long long ldq, const bf16 *k, long long ldk, const bf16 *v, long long "
         "ldv, const bf16 *o, long long ldo, const float *slopes, " +
         t + " *dq, long long lddq, " + t + " *dk, long long lddk, " + t +
         " *dv, long long lddv, int N, int H) {\n"
         "  tnlm::la_bw::lightning_bwd_simple<128, 128, 64, 256>(q, ldq, k, ldk, v, ldv, o, ldo, "
         "slopes, dq, lddq, dk, lddk, dv, lddv, N, H);\n}\n";
  return s;
}

/// The fused op's backward parts: prologue_<silu><lrpe>, fwd_<dk>, bwd_<dk>, gate_norm,
/// lrpe_grad_<silu>, dtheta_sum, silu_scale, dtheta_relative, dtheta_relative_tc.
inline std::string lightningFusedGradWrappers() {

  std::string s = "#include \"tnlm/LightningAttentionGradParts.cuh\"\nusing bf16 = "
                  "__nv_bfloat16;\nusing namespace tnlm::la_bw;\n";
  for (int silu = 0; silu < 2; ++silu)
    for (int lrpe = 0; lrpe < 2; ++lrpe)
      if (silu || lrpe) {
        const std::string tag = std::to_string(silu) + std::to_string(lrpe);
        s += "extern \"C\" __global__ void __launch_bounds__(256) prologue_" + tag +
             "(const bf16 *qkvu, long long ld, const float *theta, int N, int H, int dh, bf16 "
             "*qp, bf16 *kp, long long ldp) {\n  la_grad_prologue<256, " +
             (silu ? "true" : "false") + ", " + (lrpe ? "true" : "false") +
             ">(qkvu, ld, theta, N, 0, H, dh, qp, kp, ldp);\n}\n";
      }
  for (int dk : {128, 256}) {
    const std::string d = std::to_string(dk), c = std::to_string(fusedGradBlock(dk));
    s += "extern \"C\" __global__ void __launch_bounds__(256) fwd_" + d +
         "(const bf16 *q, long long ldq, const bf16 *k, long long ldk, const bf16 *v, long long "
         "ldv, const float *slopes, float *o, long long ldo, int N, int H) {\n"
         "  lightning_fwd_simple<" +
         d + ", 128, " + c + ", 256>(q, ldq, k, ldk, v, ldv, slopes, o, ldo, N, H);\n}\n";
    s += "extern \"C\" __global__ void __launch_bounds__(256) bwd_" + d +
         "(const bf16 *q, long long ldq, const bf16 *k, long long ldk, const bf16 *v, long long "
         "ldv, const bf16 *o, long long ldo, const float *slopes, float *dq, long long lddq, "
         "float *dk, long long lddk, float *dv, long long lddv, int N, int H) {\n"
         "  lightning_bwd_simple<" +
         d + ", 128, " + c +
         ", 256>(q, ldq, k, ldk, v, ldv, o, ldo, slopes, dq, lddq, dk, lddk, dv, lddv, N, "
         "H);\n}\n";
  }
  s += "extern \"C\" __global__ void __launch_bounds__(256) gate_norm(const float *O, long long "
       "ldo, const bf16 *dy, long long lddy, const bf16 *u, long long ldu, float *du, long long "
       "lddu, bf16 *dO, long long lddo, int D, float eps) {\n"
       "  la_gate_norm_grad<256>(O, ldo, dy, lddy, u, ldu, du, lddu, dO, lddo, D, eps);\n}\n";
  for (int silu = 0; silu < 2; ++silu)
    s += "extern \"C\" __global__ void __launch_bounds__(256) lrpe_grad_" + std::to_string(silu) +
         "(const bf16 *qkvu, long long ld, const float *dqk, long long lddqk, long long dkOff, "
         "const float *theta, int B, int N, int H, int dh, float *dqkvu, long long lddqkvu, "
         "double *partial) {\n  la_lrpe_grad<256, " +
         (silu ? "true" : "false") +
         ">(qkvu, ld, dqk, lddqk, dkOff, theta, B, N, 0, H, dh, dqkvu, lddqkvu, partial);\n}\n";
  s += "extern \"C\" __global__ void __launch_bounds__(256) dtheta_sum(const double *partial, int "
       "chunks, int D, float *dtheta) {\n  la_dtheta_sum<256>(partial, chunks, D, dtheta);\n}\n"
       "extern \"C\" __global__ void __launch_bounds__(256) silu_scale(const bf16 *qkvu, long "
       "long ld, float *dqkvu, long long lddqkvu, int D) {\n"
       "  la_silu_scale<256>(qkvu, ld, dqkvu, lddqkvu, D);\n}\n"
       "extern \"C\" __global__ void __launch_bounds__(256, 2) dtheta_relative(const bf16 *q, "
       "long long ldq, long long qHead, long long qSin, const bf16 *k, long long ldk, long long "
       "kHead, long long kSin, const bf16 *v, long long ldv, const bf16 *dO, long long lddo, "
       "const float *slopes, int N, int H, int dh, double *partial) {\n"
       "  la_dtheta_relative<128, 16, 64, 256>(q, ldq, qHead, qSin, k, ldk, kHead, kSin, v, ldv, "
       "dO, lddo, slopes, N, H, dh, partial);\n}\n"
       "static_assert(DthetaRelative<128, 16, 64>::SMEM == " +
       std::to_string(kDthetaRelativeSmem) +
       ", \"dtheta_relative's shared memory\");\n"
       "extern \"C\" __global__ void __launch_bounds__(256, 1) dtheta_relative_tc(const bf16 "
       "*q, long long ldq, long long qHead, long long qSin, const bf16 *k, long long ldk, long "
       "long kHead, long long kSin, const bf16 *v, long long ldv, const bf16 *dO, long long "
       "lddo, const float *slopes, int N, int H, int dh, double *partial, float *segStates, int "
       "segLen, int statesOnly) {\n"
       "  la_dtheta_relative_tc<128, 16, 64, 256>(q, ldq, qHead, qSin, k, ldk, kHead, kSin, v, "
       "ldv, dO, lddo, slopes, N, H, dh, partial, segStates, segLen, statesOnly);\n}\n"
       "static_assert(DthetaRelativeTc<128, 16, 64>::SMEM == " +
       std::to_string(kDthetaRelativeTcSmem) + ", \"dtheta_relative_tc's shared memory\");\n";
  return s;
}

} // namespace tnlm::cuda::test

#endif // TNLM_TEST_UNIT_CUDA_LIGHTNINGBWDWRAPPERS_H
