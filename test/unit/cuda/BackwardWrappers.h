//===- BackwardWrappers.h - extern "C" wrappers of Backward.cuh's templates -*- C++ -*-===//
//
// The kernels BackwardGpuTest.cpp runs on the device and BackwardCompileTest.cpp compiles with
// NVRTC everywhere (CI included: no GPU needed), one source for both.
//
//===----------------------------------------------------------------------===//
#ifndef TNLM_TEST_UNIT_CUDA_BACKWARDWRAPPERS_H
#define TNLM_TEST_UNIT_CUDA_BACKWARDWRAPPERS_H

#include <string>

namespace tnlm::cuda::test {

// The wrappers: row kernels at COLS = 768 and 4096 (BLOCK 256) and 100 (BLOCK 32), bf16 or
// f32 gradients; the per-tensor kernels.
inline std::string backwardWrappers() {
  std::string s = "#include \"tnlm/Backward.cuh\"\nusing bf16 = __nv_bfloat16;\n"
                  "using tnlm::bw::OptTensor;\n";
  for (int cols : {100, 768, 4096}) {
    const std::string c = std::to_string(cols), b = cols == 100 ? "32" : "256";
    const std::string bounds = "extern \"C\" __global__ void __launch_bounds__(" + b + ")\n";
    for (const char *t : {"bf16", "float"}) {
      const std::string ts = t, acc = ts == "float" ? "true" : "false";
      s += bounds + "srms_norm_grad_c" + c + "_" + ts + "(const bf16 *x, long long ldx, const " +
           ts + " *dy, long long lddy, " + ts + " *dx, long long lddx, float eps) {\n" +
           "  tnlm::bw::srms_norm_grad<" + c + ", " + b + ", " + ts + ", " + ts + ", " + acc +
           ">(x, ldx, dy, lddy, dx, lddx, eps);\n}\n";
      s += bounds + "add_srms_norm_grad_c" + c + "_" + ts +
           "(const bf16 *sum, long long lds, const float *dsum, long long ldd, const " + ts +
           " *dy, long long lddy, float *g, long long ldg, float eps) {\n" +
           "  tnlm::bw::add_srms_norm_grad<" + c + ", " + b + ", " + ts +
           ">(sum, lds, dsum, ldd, dy, lddy, g, ldg, eps);\n}\n";
      s += bounds + "silu_grad_c" + c + "_" + ts + "(const bf16 *x, long long ldx, const " + ts +
           " *dy, long long lddy, " + ts + " *dx, long long lddx) {\n" + "  tnlm::bw::silu_grad<" +
           c + ", " + b + ", " + ts + ", " + ts + ", " + acc +
           ">(x, ldx, dy, lddy, dx, lddx);\n}\n";
    }
    s += bounds + "mul_grad_c" + c +
         "(const bf16 *a, long long lda, const bf16 *b, long long ldb, const bf16 *dy, long long "
         "lddy, bf16 *da, long long ldda, bf16 *db, long long lddb) {\n"
         "  tnlm::bw::mul_grad<" +
         c + ", " + b + ", bf16, bf16>(a, lda, b, ldb, dy, lddy, da, ldda, db, lddb);\n}\n";
  }
  for (const char *t : {"bf16", "float"})
    s += std::string("extern \"C\" __global__ void __launch_bounds__(128)\nembedding_grad_") + t +
         "(const int *order, const int *start, const int *ids, const " + t +
         " *dx, long long lddx, int d, float scale, float *dtable) {\n"
         "  tnlm::bw::embedding_grad<128>(order, start, ids, dx, lddx, d, scale, dtable);\n}\n";
  for (const char *t : {"bf16", "float"})
    s += std::string("extern \"C\" __global__ void __launch_bounds__(256)\ncross_entropy_grad_") +
         t +
         "(const float *x, long long ldx, const int *labels, int vocab, int ignore, const "
         "double *k, " +
         t +
         " *dx, long long lddx, double *rowLoss) {\n"
         "  tnlm::bw::cross_entropy_grad<256>(x, ldx, labels, vocab, ignore, k, dx, lddx, "
         "rowLoss);\n}\n";
  for (const char *t : {"bf16", "float"})
    s += std::string(
             "extern \"C\" __global__ void __launch_bounds__(1024)\ncross_entropy_grad_rows_") +
         t +
         "(const float *x, long long ldx, const int *labels, long long rows, int vocab, int "
         "ignore, const double *k, " +
         t +
         " *dx, long long lddx, double *rowLoss) {\n"
         "  tnlm::bw::cross_entropy_grad_rows<1024>(x, ldx, labels, rows, vocab, ignore, k, dx, "
         "lddx, rowLoss);\n}\n";
  // The held rows (bw::cross_entropy_grad_rows_held<1024, REG, HELD4, bf16>) as tnlmc emits
  // them per vocabulary: REG = min(6, ceil(HELD4 / 1024)), HELD4 = vocab / 4 (CudaEmitter's
  // lossKernels); v1001 is built for 1000 (a row of 1001 takes the two passes).
  for (const char *cfg :
       {"64000, 6, 16000", "100, 1, 25", "5000, 2, 1250", "1000, 1, 250", "1001, 1, 250"}) {
    const std::string c(cfg), v = c.substr(0, c.find(',')), rest = c.substr(c.find(',') + 1);
    s += "extern \"C\" __global__ void __launch_bounds__(1024)\ncross_entropy_grad_rows_held_v" +
         v +
         "(const float *x, long long ldx, const int *labels, long long rows, int vocab, int "
         "ignore, const double *k, bf16 *dx, long long lddx, double *rowLoss) {\n"
         "  tnlm::bw::cross_entropy_grad_rows_held<1024," +
         rest + ", bf16>(x, ldx, labels, rows, vocab, ignore, k, dx, lddx, rowLoss);\n}\n";
  }
  s += "extern \"C\" __global__ void __launch_bounds__(256)\n"
       "cross_entropy_loss(const float *x, long long ldx, const int *labels, int vocab, int "
       "ignore, double *rowLoss) {\n"
       "  tnlm::bw::cross_entropy_loss<256>(x, ldx, labels, vocab, ignore, rowLoss);\n}\n"
       "extern \"C\" __global__ void __launch_bounds__(1024)\n"
       "cross_entropy_loss_1024(const float *x, long long ldx, const int *labels, int vocab, int "
       "ignore, double *rowLoss) {\n"
       "  tnlm::bw::cross_entropy_loss<1024>(x, ldx, labels, vocab, ignore, rowLoss);\n}\n";
  s += "extern \"C\" __global__ void __launch_bounds__(1)\n"
       "loss_total(const double *rowLoss, long long rows, double *total) {\n"
       "  tnlm::bw::loss_total(rowLoss, rows, total);\n}\n"
       "extern \"C\" __global__ void __launch_bounds__(256)\n"
       "loss_total_block(const double *rowLoss, long long rows, double *total) {\n"
       "  tnlm::bw::loss_total_block<256>(rowLoss, rows, total);\n}\n";
  s += "extern \"C\" __global__ void __launch_bounds__(256)\n"
       "sum_squares_chunks(const OptTensor *t, int count, double *partial) {\n"
       "  tnlm::bw::sum_squares_chunks<256>(t, count, partial);\n}\n"
       "extern \"C\" __global__ void __launch_bounds__(1)\n"
       "sum_squares_total(const double *partial, long long chunks, double divisor, double "
       "*total, float *norm) {\n"
       "  tnlm::bw::sum_squares_total(partial, chunks, divisor, total, norm);\n}\n"
       "extern \"C\" __global__ void __launch_bounds__(256)\n"
       "sum_squares_total_block(const double *partial, long long chunks, double divisor, double "
       "*total, float *norm) {\n"
       "  tnlm::bw::sum_squares_total_block<256>(partial, chunks, divisor, total, norm);\n}\n"
       "extern \"C\" __global__ void __launch_bounds__(256)\n"
       "adamw(const OptTensor *t, int count, const float *lr, const float *scale, const int "
       "*step, float beta1, float beta2, float eps, float wd) {\n"
       "  tnlm::bw::adamw<256>(t, count, lr, scale, step, beta1, beta2, eps, wd);\n}\n"
       "extern \"C\" __global__ void __launch_bounds__(256)\n"
       "adamw_bf16(const OptTensor *t, int count, const float *lr, const float *scale, const int "
       "*step, float beta1, float beta2, float eps, float wd, bf16 *const *copies) {\n"
       "  tnlm::bw::adamw<256>(t, count, lr, scale, step, beta1, beta2, eps, wd, copies);\n}\n"
       "extern \"C\" __global__ void __launch_bounds__(1)\n"
       "optimizer_scalars(const int *counter, const float *hp, const float *norm, float *lr, "
       "float *scale, int *t) {\n  tnlm::bw::optimizer_scalars(counter, hp, norm, lr, scale, "
       "t);\n}\n"
       "extern \"C\" __global__ void __launch_bounds__(1)\n"
       "step_increment(int *counter) {\n  tnlm::bw::step_increment(counter);\n}\n";
  return s;
}

} // namespace tnlm::cuda::test

#endif // TNLM_TEST_UNIT_CUDA_BACKWARDWRAPPERS_H
