//===- gemm.cpp - the train step's GEMMs, each with all of cuBLASLt's candidates ---===//
//
//   tnlm-bench-gemm PLANS [--candidates=32] [--reps=20] [--inplace]          (--help)
//   PLANS: the lines TNLM_GEMM_LOG=PLANS made a run write (runtime/cuda/Gemm.h), e.g.
//     TNLM_GEMM_LOG=plans.txt tnlm-bench-train 385m-train.tnlm --no-profile
//   For each plan (a GEMM shape of the run and how often the run called it): cuBLASLt's
//   heuristic asked for up to `candidates` algorithms on operands of the plan's shape, types,
//   leading dimensions and alignments (random bf16 inputs, the output zeroed; alpha and beta
//   as logged), each candidate run twice untimed, then `reps` times between two CUDA events.
//   One JSON line per plan: the heuristic's first (what the run computes with, unless tuned),
//   the fastest candidate and the fastest that does not split K, with their configurations
//   and TFLOP/s; then a summary: the sum over plans of calls × time for each of the three.
//   --inplace asks the heuristic only for split-K candidates that reduce in place (in the
//   output, in its type, in a fixed order) besides those that do not split. Exits 77 without
//   a CUDA device, 1 on an error.
//
//===----------------------------------------------------------------------===//
#include "runtime/Error.h"
#include "runtime/cuda/CudaApi.h"
#include "runtime/cuda/CudaContext.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace tnlm;
using namespace tnlm::cuda;

namespace {

struct PlanLine {
  int form = 0, type = 0;
  int64_t rows = 0, in = 0, out = 0, ldx = 0, ldw = 0, ldy = 0;
  int alignA = 256, alignB = 256, alignD = 256;
  float alpha = 1, beta = 0;
  int64_t calls = 0;
};

std::vector<PlanLine> readPlans(const std::string &path) {
  std::ifstream in(path);
  if (!in)
    throw Error(path + ": cannot read the plans (TNLM_GEMM_LOG's output)");
  std::vector<PlanLine> plans;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    if (line.rfind("gemm ", 0) != 0)
      continue;
    PlanLine p;
    long long rows, inDim, outDim, ldx, ldw, ldy, calls;
    double alpha, beta;
    if (std::sscanf(line.c_str(),
                    "gemm form=%d type=%d rows=%lld in=%lld out=%lld ldx=%lld ldw=%lld ldy=%lld "
                    "align=%d,%d,%d alpha=%lf beta=%lf calls=%lld",
                    &p.form, &p.type, &rows, &inDim, &outDim, &ldx, &ldw, &ldy, &p.alignA,
                    &p.alignB, &p.alignD, &alpha, &beta, &calls) != 14 ||
        p.form < 0 || p.form > 2 || p.type < 0 || p.type > 2)
      throw Error(path + ":" + std::to_string(number) + ": not a TNLM_GEMM_LOG line: " + line);
    p.rows = rows, p.in = inDim, p.out = outDim, p.ldx = ldx, p.ldw = ldw, p.ldy = ldy;
    p.alpha = float(alpha), p.beta = float(beta), p.calls = calls;
    plans.push_back(p);
  }
  if (plans.empty())
    throw Error(path + ": no plans in it");
  return plans;
}

int32_t config(const cublasLtMatmulAlgo_t &algo, cublasLtMatmulAlgoConfigAttributes_t what) {
  int32_t value = -1;
  size_t written = 0;
  cublasLt().cublasLtMatmulAlgoConfigGetAttribute(&algo, what, &value, sizeof value, &written);
  return value;
}

std::string describe(const cublasLtMatmulAlgo_t &algo) {
  char text[160];
  std::snprintf(text, sizeof text,
                "{\"tile\":%d,\"stages\":%d,\"splitk\":%d,\"reduction\":%d,\"swizzle\":%d,"
                "\"cluster\":%d}",
                config(algo, CUBLASLT_ALGO_CONFIG_TILE_ID),
                config(algo, CUBLASLT_ALGO_CONFIG_STAGES_ID),
                config(algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM),
                config(algo, CUBLASLT_ALGO_CONFIG_REDUCTION_SCHEME),
                config(algo, CUBLASLT_ALGO_CONFIG_CTA_SWIZZLING),
                config(algo, CUBLASLT_ALGO_CONFIG_CLUSTER_SHAPE_ID));
  return text;
}

/// A buffer of at least `bytes` whose address is aligned to exactly `alignment` (as logged).
struct Operand {
  DeviceBuffer buffer;
  CUdeviceptr ptr = 0;
};

Operand operand(size_t bytes, int alignment, const Context &ctx,
                const std::vector<uint16_t> &random, bool zero) {
  Operand o;
  o.buffer = DeviceBuffer(bytes + 512, "a GEMM operand");
  o.ptr = o.buffer.get() + (alignment < 256 ? size_t(alignment) : 0);
  if (zero) {
    ctx.fillBytes(o.ptr, 0, bytes);
  } else {
    for (size_t done = 0; done < bytes;) {
      const size_t n = std::min(bytes - done, random.size() * sizeof(uint16_t));
      ctx.copyToDevice(o.ptr + done, random.data(), n);
      done += n;
    }
  }
  return o;
}

int main2(int argc, char **argv) {
  std::string path;
  int candidates = 32, reps = 20;
  bool inplace = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::printf("usage: tnlm-bench-gemm PLANS [--candidates=32] [--reps=20] [--inplace]\n"
                  "  PLANS: what TNLM_GEMM_LOG=PLANS made a run write; each plan's GEMM timed "
                  "with up to\n  `candidates` of cuBLASLt's algorithms (see bench/gemm.cpp)\n");
      return 0;
    }
    if (arg.rfind("--candidates=", 0) == 0)
      candidates = std::atoi(arg.c_str() + 13);
    else if (arg.rfind("--reps=", 0) == 0)
      reps = std::atoi(arg.c_str() + 7);
    else if (arg == "--inplace")
      inplace = true;
    else if (!arg.empty() && arg[0] != '-' && path.empty())
      path = arg;
    else
      throw Error("unknown argument '" + arg + "' (see --help)");
  }
  if (path.empty())
    throw Error("no PLANS file (see --help)");
  if (candidates < 1 || candidates > 256 || reps < 1)
    throw Error("--candidates must be in [1, 256] and --reps at least 1");
  const std::vector<PlanLine> plans = readPlans(path);
  std::string why;
  if (!deviceAvailable(&why)) {
    std::printf("SKIPPED: no CUDA device is available (%s)\n", why.c_str());
    return 77;
  }
  Context ctx;
  const CublasLtApi &api = cublasLt();
  const DriverApi &drv = driver();
  cublasLtHandle_t handle;
  TNLM_CUBLASLT(cublasLtCreate, (&handle), "creating the cuBLASLt handle");
  const size_t workspaceBytes = 32u << 20;
  DeviceBuffer workspace(workspaceBytes, "the cuBLASLt workspace");
  std::vector<uint16_t> random(size_t(16) << 20);
  std::mt19937 gen(5);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (uint16_t &v : random) {
    const float f = uniform(gen);
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    v = uint16_t(bits >> 16); // a bf16 (for an f32 operand, pairs make finite floats)
  }
  CUevent start, stop;
  TNLM_CU(cuEventCreate, (&start, CU_EVENT_DEFAULT), "an event");
  TNLM_CU(cuEventCreate, (&stop, CU_EVENT_DEFAULT), "an event");

  double sumFirst = 0, sumBest = 0, sumNoSplit = 0;
  for (const PlanLine &p : plans) {
    const std::string where = "plan form=" + std::to_string(p.form) +
                              " rows=" + std::to_string(p.rows) + " in=" + std::to_string(p.in) +
                              " out=" + std::to_string(p.out);
    const cudaDataType_t data = p.type == 1 ? CUDA_R_32F : CUDA_R_16BF;
    const cudaDataType_t yType = p.type == 0 ? CUDA_R_16BF : CUDA_R_32F;
    const size_t inElem = p.type == 1 ? 4 : 2, outElem = p.type == 0 ? 2 : 4;
    cublasLtMatmulDesc_t desc;
    TNLM_CUBLASLT(cublasLtMatmulDescCreate, (&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), where);
    // As Gemm::plan: Linear "TN", GradInput "NN", GradWeight "NT".
    const cublasOperation_t opA = p.form == 0 ? CUBLAS_OP_T : CUBLAS_OP_N;
    const cublasOperation_t opB = p.form == 2 ? CUBLAS_OP_T : CUBLAS_OP_N;
    TNLM_CUBLASLT(cublasLtMatmulDescSetAttribute,
                  (desc, CUBLASLT_MATMUL_DESC_TRANSA, &opA, sizeof opA), where);
    TNLM_CUBLASLT(cublasLtMatmulDescSetAttribute,
                  (desc, CUBLASLT_MATMUL_DESC_TRANSB, &opB, sizeof opB), where);
    // A, B, D: rows, cols (column-major), ld.
    int64_t ar, ac, ald, br, bc, bld, dr, dc, dld;
    if (p.form == 0)
      ar = p.in, ac = p.out, ald = p.ldw, br = p.in, bc = p.rows, bld = p.ldx, dr = p.out,
      dc = p.rows, dld = p.ldy;
    else if (p.form == 1)
      ar = p.in, ac = p.out, ald = p.ldw, br = p.out, bc = p.rows, bld = p.ldy, dr = p.in,
      dc = p.rows, dld = p.ldx;
    else
      ar = p.in, ac = p.rows, ald = p.ldx, br = p.out, bc = p.rows, bld = p.ldy, dr = p.in,
      dc = p.out, dld = p.ldw;
    cublasLtMatrixLayout_t la, lb, ld;
    TNLM_CUBLASLT(cublasLtMatrixLayoutCreate, (&la, data, uint64_t(ar), uint64_t(ac), ald), where);
    TNLM_CUBLASLT(cublasLtMatrixLayoutCreate, (&lb, data, uint64_t(br), uint64_t(bc), bld), where);
    TNLM_CUBLASLT(cublasLtMatrixLayoutCreate, (&ld, yType, uint64_t(dr), uint64_t(dc), dld), where);
    Operand a = operand(size_t((ac - 1) * ald + ar) * inElem, p.alignA, ctx, random, false);
    Operand b = operand(size_t((bc - 1) * bld + br) * inElem, p.alignB, ctx, random, false);
    Operand d = operand(size_t((dc - 1) * dld + dr) * outElem, p.alignD, ctx, random, true);

    cublasLtMatmulPreference_t pref;
    TNLM_CUBLASLT(cublasLtMatmulPreferenceCreate, (&pref), where);
    size_t ws = workspaceBytes;
    TNLM_CUBLASLT(cublasLtMatmulPreferenceSetAttribute,
                  (pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws), where);
    const std::pair<cublasLtMatmulPreferenceAttributes_t, int> alignments[] = {
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, p.alignA},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, p.alignB},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, p.alignD},
        {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, p.alignD}};
    for (const auto &[attribute, bytes] : alignments) {
      uint32_t value = uint32_t(bytes);
      TNLM_CUBLASLT(cublasLtMatmulPreferenceSetAttribute, (pref, attribute, &value, sizeof value),
                    where);
    }
    if (inplace) {
      uint32_t mask = CUBLASLT_REDUCTION_SCHEME_INPLACE;
      TNLM_CUBLASLT(cublasLtMatmulPreferenceSetAttribute,
                    (pref, CUBLASLT_MATMUL_PREF_REDUCTION_SCHEME_MASK, &mask, sizeof mask), where);
    }
    std::vector<cublasLtMatmulHeuristicResult_t> results(static_cast<size_t>(candidates));
    int found = 0;
    TNLM_CUBLASLT(cublasLtMatmulAlgoGetHeuristic,
                  (handle, desc, la, lb, ld, ld, pref, candidates, results.data(), &found), where);
    auto runOnce = [&](int i) {
      return api.cublasLtMatmul(handle, desc, &p.alpha, reinterpret_cast<const void *>(a.ptr), la,
                                reinterpret_cast<const void *>(b.ptr), lb, &p.beta,
                                reinterpret_cast<const void *>(d.ptr), ld,
                                reinterpret_cast<void *>(d.ptr), ld, &results[size_t(i)].algo,
                                reinterpret_cast<void *>(workspace.get()),
                                results[size_t(i)].workspaceSize, ctx.stream());
    };
    std::vector<double> ms(size_t(found), -1.0);
    for (int i = 0; i < found; ++i) {
      if (results[size_t(i)].state != CUBLAS_STATUS_SUCCESS ||
          results[size_t(i)].workspaceSize > workspaceBytes)
        continue;
      if (runOnce(i) != CUBLAS_STATUS_SUCCESS || runOnce(i) != CUBLAS_STATUS_SUCCESS)
        continue;
      TNLM_CU(cuEventRecord, (start, ctx.stream()), where);
      bool ok = true;
      for (int r = 0; r < reps && ok; ++r)
        ok = runOnce(i) == CUBLAS_STATUS_SUCCESS;
      TNLM_CU(cuEventRecord, (stop, ctx.stream()), where);
      TNLM_CU(cuEventSynchronize, (stop), where);
      float t = 0;
      TNLM_CU(cuEventElapsedTime, (&t, start, stop), where);
      if (ok)
        ms[size_t(i)] = double(t) / reps;
    }
    ctx.synchronize(where);
    int best = -1, bestNoSplit = -1;
    for (int i = 0; i < found; ++i) {
      if (ms[size_t(i)] < 0)
        continue;
      if (best < 0 || ms[size_t(i)] < ms[size_t(best)])
        best = i;
      if (config(results[size_t(i)].algo, CUBLASLT_ALGO_CONFIG_SPLITK_NUM) <= 1 &&
          (bestNoSplit < 0 || ms[size_t(i)] < ms[size_t(bestNoSplit)]))
        bestNoSplit = i;
    }
    const double flops = 2.0 * double(p.rows) * double(p.in) * double(p.out);
    auto tf = [&](int i) {
      return i < 0 || ms[size_t(i)] <= 0 ? 0.0 : flops / ms[size_t(i)] / 1e9;
    };
    auto at = [&](int i) { return i < 0 ? -1.0 : ms[size_t(i)]; };
    std::printf(
        "{\"bench\":\"gemm\",\"form\":%d,\"type\":%d,\"rows\":%lld,\"in\":%lld,\"out\":%lld,"
        "\"beta\":%g,\"calls\":%lld,\"found\":%d,\"first_ms\":%.4f,\"first_tflops\":%.1f,"
        "\"first\":%s,\"best_ms\":%.4f,\"best_tflops\":%.1f,\"best_index\":%d,\"best\":%s,"
        "\"nosplit_ms\":%.4f,\"nosplit_index\":%d,\"nosplit\":%s,\"all_ms\":[",
        p.form, p.type, (long long)p.rows, (long long)p.in, (long long)p.out, double(p.beta),
        (long long)p.calls, found, at(0), tf(0), found ? describe(results[0].algo).c_str() : "null",
        at(best), tf(best), best, best >= 0 ? describe(results[size_t(best)].algo).c_str() : "null",
        at(bestNoSplit), bestNoSplit,
        bestNoSplit >= 0 ? describe(results[size_t(bestNoSplit)].algo).c_str() : "null");
    for (int i = 0; i < found; ++i)
      std::printf("%s%.4f", i ? "," : "", ms[size_t(i)]);
    std::printf("]}\n");
    std::fflush(stdout);
    if (ms.size() && ms[0] > 0) {
      sumFirst += double(p.calls) * ms[0];
      sumBest += double(p.calls) * at(best);
      sumNoSplit += double(p.calls) * at(bestNoSplit);
    }
    api.cublasLtMatmulPreferenceDestroy(pref);
    api.cublasLtMatrixLayoutDestroy(la);
    api.cublasLtMatrixLayoutDestroy(lb);
    api.cublasLtMatrixLayoutDestroy(ld);
    api.cublasLtMatmulDescDestroy(desc);
  }
  std::printf("{\"bench\":\"gemm_summary\",\"plans\":%zu,\"first_ms\":%.3f,\"best_ms\":%.3f,"
              "\"nosplit_ms\":%.3f,\"inplace_only\":%d,\"gpu\":\"%s\"}\n",
              plans.size(), sumFirst, sumBest, sumNoSplit, inplace ? 1 : 0,
              ctx.deviceName().c_str());
  drv.cuEventDestroy(start);
  drv.cuEventDestroy(stop);
  api.cublasLtDestroy(handle);
  return 0;
}

} // namespace

int main(int argc, char **argv) {
  try {
    return main2(argc, argv);
  } catch (const std::exception &e) {
    std::fprintf(stderr, "tnlm-bench-gemm: error: %s\n", e.what());
    return 1;
  }
}
