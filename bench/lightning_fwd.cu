// Benchmark + correctness check of the Lightning Attention forward kernels
// (codegen/cuda/LightningAttentionFwd.cuh) on one GPU.
//
// Build: scripts/device-bench-lightning (nvcc, sm_90a + PTX). Run on the device machine:
//   build-device/lightning_fwd             all cases (correctness + timing), JSON lines on stdout
//   build-device/lightning_fwd --small     only the small correctness cases (compute-sanitizer)
//   build-device/lightning_fwd --perf [--shape=i] [--nosweep] [--reps=n]   timing cases only
//   build-device/lightning_fwd --bwd [--shape=i] [--reps=n] [--bwd-sms=n]   forward + backward
//     (three passes; --bwd-sms: the SM count their segment plan is made for, default all;
//     --bwd-own-states: the dv pass computes its states instead of reading the dk pass's)
//
// Every case: fresh random inputs (q, k = SiLU(N(0,1)), v = N(0,1), bf16, layout [B, N, H, D]),
// output poisoned with NaN before the kernel runs, an fp32 reference from a plain recurrence
// kernel (one CTA per (b, h), S_t = λ S_{t-1} + k_tᵀ v_t, o_t = q_t S_t), and
// max |o - ref|, max |o - ref| / max |ref| ("max_rel_err"), ‖o - ref‖ / ‖ref‖ ("rel_l2_err");
// the kernel runs twice and must give the same error (races); small cases also check the
// final-state output. Decay rates: ALiBi slopes, and the same times 1e-5 (last-layer factor).
// Timing: median (and min) of `reps` forwards after 5 warm-ups, CUDA events around each whole
// forward (all passes, stream launches); "pass2_median_ms" times the main kernel alone;
// "graph_median_ms" replays the forward captured in a CUDA graph. I/O floor
// (docs/PERFORMANCE.md): 8E bytes / 4.3e12 B/s, E = B·H·N·D; FLOPs 4E(D + C).
// Kernels: "sm90_wgmma" (default, Hopper) and "mma_sync" (portable) on the same inputs.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../codegen/cuda/LightningAttentionFwdSm90.cuh"
#include "CudaCheck.h"

using bf16 = __nv_bfloat16;
using namespace tnlm::la;

static constexpr double kBandwidth = 4.3e12; // bytes/s, PERFORMANCE.md copy ceiling

// ---------------------------------------------------------------------------------------------
// Inputs
// ---------------------------------------------------------------------------------------------
__device__ __forceinline__ uint32_t hash32(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}
__global__ void init_kernel(bf16 *p, long long n, uint64_t seed, int silu) {
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const uint32_t a = hash32(seed * 0x9E3779B97F4A7C15ULL + 2 * i);
    const uint32_t b = hash32(seed * 0x9E3779B97F4A7C15ULL + 2 * i + 1);
    const float u1 = (a + 1.0f) * 2.3283064e-10f, u2 = b * 2.3283064e-10f;
    float x = sqrtf(-2.f * logf(u1)) * cospif(2.f * u2);
    if (silu)
      x = x / (1.f + expf(-x));
    p[i] = __float2bfloat16(x);
  }
}

// ALiBi slopes (docs/model.md "Decay rates"), times a per-layer factor.
static std::vector<float> alibi(int H) {
  auto pow2 = [](int n) {
    std::vector<float> s(n);
    for (int h = 0; h < n; ++h)
      s[h] = std::pow(2.0f, -8.0f * (h + 1) / n);
    return s;
  };
  int P = 1;
  while (P * 2 <= H)
    P *= 2;
  std::vector<float> s = pow2(P);
  if (P < H) {
    std::vector<float> s2 = pow2(2 * P);
    for (int i = 0; i < H - P; ++i)
      s.push_back(s2[2 * i]);
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// fp32 reference: the recurrence, one CTA per (b, h), thread j owns column j of the state.
// ---------------------------------------------------------------------------------------------
template <int DK, int DV>
__global__ void __launch_bounds__(DV)
    reference_kernel(const bf16 *q, const bf16 *k, const bf16 *v, const float *slopes, float *oref,
                     float *sref, int B, int N, int H) {
  const int bh = blockIdx.x, b = bh / H, h = bh % H, j = threadIdx.x;
  const float lam = expf(-slopes[h]);
  __shared__ float sq[DK], sk[DK];
  float S[DK];
#pragma unroll
  for (int i = 0; i < DK; ++i)
    S[i] = 0.f;
  for (int t = 0; t < N; ++t) {
    const long long row = ((long long)b * N + t) * H + h;
    for (int i = j; i < DK; i += DV) {
      sq[i] = __bfloat162float(q[row * DK + i]);
      sk[i] = __bfloat162float(k[row * DK + i]);
    }
    const float vj = __bfloat162float(v[row * DV + j]);
    __syncthreads();
    float acc = 0.f;
#pragma unroll
    for (int i = 0; i < DK; ++i) {
      S[i] = fmaf(lam, S[i], sk[i] * vj);
      acc = fmaf(sq[i], S[i], acc);
    }
    oref[row * DV + j] = acc;
    __syncthreads();
  }
  if (sref)
#pragma unroll
    for (int i = 0; i < DK; ++i)
      sref[((long long)bh * DK + i) * DV + j] = S[i];
}

// Error statistics: [0] max |d|, [1] max |ref|, [2] Σ d², [3] Σ ref², [4] non-finite count.
struct ErrStats {
  unsigned int max_abs_bits, max_ref_bits;
  double sum_d2, sum_r2;
  unsigned long long nonfinite;
};
template <class T> __device__ __forceinline__ float to_f(T x);
template <> __device__ __forceinline__ float to_f<bf16>(bf16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ float to_f<float>(float x) { return x; }

template <class T>
__global__ void compare_kernel(const T *o, const float *ref, long long n, ErrStats *st) {
  float mabs = 0.f, mref = 0.f;
  double d2 = 0, r2 = 0;
  unsigned long long bad = 0;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const float x = to_f<T>(o[i]), r = ref[i];
    if (!isfinite(x)) {
      ++bad;
      continue;
    }
    const float d = fabsf(x - r);
    mabs = fmaxf(mabs, d);
    mref = fmaxf(mref, fabsf(r));
    d2 += (double)d * d;
    r2 += (double)r * r;
  }
  for (int off = 16; off > 0; off >>= 1) {
    mabs = fmaxf(mabs, __shfl_xor_sync(0xffffffffu, mabs, off));
    mref = fmaxf(mref, __shfl_xor_sync(0xffffffffu, mref, off));
    d2 += __shfl_xor_sync(0xffffffffu, d2, off);
    r2 += __shfl_xor_sync(0xffffffffu, r2, off);
    bad += __shfl_xor_sync(0xffffffffu, bad, off);
  }
  if ((threadIdx.x & 31) == 0) {
    atomicMax(&st->max_abs_bits, __float_as_uint(mabs));
    atomicMax(&st->max_ref_bits, __float_as_uint(mref));
    atomicAdd(&st->sum_d2, d2);
    atomicAdd(&st->sum_r2, r2);
    atomicAdd(&st->nonfinite, bad);
  }
}

struct Err {
  double max_abs = 0, max_ref = 0, rel_l2 = 0;
  unsigned long long nonfinite = 0;
  double max_rel() const { return max_ref > 0 ? max_abs / max_ref : max_abs; }
};
template <class T> static Err compare(const T *o, const float *ref, long long n) {
  ErrStats *d;
  CK(cudaMalloc(&d, sizeof(ErrStats)));
  CK(cudaMemset(d, 0, sizeof(ErrStats)));
  compare_kernel<T><<<1024, 256>>>(o, ref, n, d);
  CK(cudaGetLastError());
  ErrStats h;
  CK(cudaMemcpy(&h, d, sizeof(h), cudaMemcpyDeviceToHost));
  CK(cudaFree(d));
  Err e;
  float a, r;
  std::memcpy(&a, &h.max_abs_bits, 4);
  std::memcpy(&r, &h.max_ref_bits, 4);
  e.max_abs = a;
  e.max_ref = r;
  e.rel_l2 = h.sum_r2 > 0 ? std::sqrt(h.sum_d2 / h.sum_r2) : std::sqrt(h.sum_d2);
  e.nonfinite = h.nonfinite;
  return e;
}

template <class KC> static cudaError_t launch(const LightningFwdArgs &a, cudaStream_t st = 0) {
  if constexpr (KC::kHopper)
    return launch_lightning_fwd_sm90<KC>(a, st);
  else
    return launch_lightning_fwd<KC>(a, st);
}

// ---------------------------------------------------------------------------------------------
// One problem (inputs + reference) and runs of the kernel on it with several plans.
// ---------------------------------------------------------------------------------------------
template <class Cfg> struct Problem {
  int B, H, N;
  std::string decay;
  bf16 *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
  float *slopes = nullptr, *oref = nullptr, *sref = nullptr, *ws = nullptr, *fin = nullptr;
  size_t ws_bytes = 0;
  long long E_in() const { return (long long)B * N * H * Cfg::DK; }
  long long E_out() const { return (long long)B * N * H * Cfg::DV; }

  Problem(int B_, int H_, int N_, float layer_factor, const char *decay_name, uint64_t seed)
      : B(B_), H(H_), N(N_), decay(decay_name) {
    CK(cudaMalloc(&q, E_in() * sizeof(bf16)));
    CK(cudaMalloc(&k, E_in() * sizeof(bf16)));
    CK(cudaMalloc(&v, E_out() * sizeof(bf16)));
    CK(cudaMalloc(&o, E_out() * sizeof(bf16)));
    CK(cudaMalloc(&oref, E_out() * sizeof(float)));
    CK(cudaMalloc(&sref, (size_t)B * H * Cfg::DK * Cfg::DV * sizeof(float)));
    CK(cudaMalloc(&fin, (size_t)B * H * Cfg::DK * Cfg::DV * sizeof(float)));
    CK(cudaMalloc(&slopes, H * sizeof(float)));
    std::vector<float> s = alibi(H);
    for (float &x : s)
      x *= layer_factor;
    CK(cudaMemcpy(slopes, s.data(), H * sizeof(float), cudaMemcpyHostToDevice));
    init_kernel<<<2048, 256>>>(q, E_in(), seed * 3 + 0, 1);
    init_kernel<<<2048, 256>>>(k, E_in(), seed * 3 + 1, 1);
    init_kernel<<<2048, 256>>>(v, E_out(), seed * 3 + 2, 0);
    CK(cudaGetLastError());
    reference_kernel<Cfg::DK, Cfg::DV><<<B * H, Cfg::DV>>>(q, k, v, slopes, oref, sref, B, N, H);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
  }
  ~Problem() {
    for (void *p : {(void *)q, (void *)k, (void *)v, (void *)o, (void *)oref, (void *)sref,
                    (void *)slopes, (void *)ws, (void *)fin})
      if (p)
        cudaFree(p);
  }

  LightningFwdArgs args(const LightningFwdPlan &p, bool final_state) {
    if (p.workspace_bytes > ws_bytes) {
      if (ws)
        CK(cudaFree(ws));
      CK(cudaMalloc(&ws, p.workspace_bytes));
      ws_bytes = p.workspace_bytes;
    }
    LightningFwdArgs a{};
    a.q = q;
    a.k = k;
    a.v = v;
    a.o = o;
    a.slopes = slopes;
    a.piece_states = ws;
    a.final_state = final_state ? fin : nullptr;
    a.B = B;
    a.N = N;
    a.H = H;
    a.in_sb = (long long)N * H * Cfg::DK; // q, k, v share strides only when DK == DV
    a.in_sn = (long long)H * Cfg::DK;
    a.in_sh = Cfg::DK;
    a.out_sb = (long long)N * H * Cfg::DV;
    a.out_sn = (long long)H * Cfg::DV;
    a.out_sh = Cfg::DV;
    a.seg_len = p.seg_len;
    a.num_segs = p.num_segs;
    a.piece_len = p.piece_len;
    a.pieces_per_bh = p.pieces_per_bh;
    return a;
  }

  // Runs one plan with kernel configuration KC: correctness (poisoned output), then optional
  // timing. Returns pass.
  template <class KC = Cfg>
  bool run(const char *tag, int num_sms, int force_segs, int force_pieces, bool is_default,
           int reps, bool check_final) {
    static_assert(KC::DK == Cfg::DK && KC::DV == Cfg::DV, "head dims");
    LightningFwdPlan plan =
        plan_lightning_fwd(B, H, N, KC::DK, KC::DV, KC::C, num_sms, force_segs, force_pieces);
    LightningFwdArgs a = args(plan, check_final);
    CK(cudaMemset(o, 0xFF, E_out() * sizeof(bf16))); // NaN poison
    CK(launch<KC>(a));
    CK(cudaDeviceSynchronize());
    Err e = compare<bf16>(o, oref, E_out());
    Err ef;
    if (check_final)
      ef = compare<float>(fin, sref, (long long)B * H * Cfg::DK * Cfg::DV);
    // Second run on the same inputs: the result must not move (races).
    CK(cudaMemset(o, 0xFF, E_out() * sizeof(bf16)));
    CK(launch<KC>(a));
    CK(cudaDeviceSynchronize());
    Err e2 = compare<bf16>(o, oref, E_out());
    const bool stable = e2.max_abs == e.max_abs && e2.nonfinite == e.nonfinite;

    double med = 0, mn = 0, main_med = 0, graph_med = 0;
    if (reps > 0) {
      cudaEvent_t ev0, ev1;
      CK(cudaEventCreate(&ev0));
      CK(cudaEventCreate(&ev1));
      std::vector<float> ts, tm;
      for (int i = 0; i < 5; ++i)
        CK(launch<KC>(a));
      for (int i = 0; i < reps; ++i) {
        CK(cudaEventRecord(ev0));
        CK(launch<KC>(a));
        CK(cudaEventRecord(ev1));
        CK(cudaEventSynchronize(ev1));
        float ms;
        CK(cudaEventElapsedTime(&ms, ev0, ev1));
        ts.push_back(ms);
      }
      // Pass 2 alone (the workspace holds the states of the last full run).
      if (plan.pieces_per_bh > 0) {
        for (int i = 0; i < reps; ++i) {
          CK(cudaEventRecord(ev0));
          if constexpr (KC::kHopper)
            lightning_fwd_sm90_main_kernel<KC>
                <<<B * H * plan.num_segs, KC::NTHREADS, KC::SMEM_MAIN>>>(a);
          else
            lightning_fwd_main_kernel<KC>
                <<<B * H * plan.num_segs, KC::NTHREADS, KC::SMEM_MAIN>>>(a);
          CK(cudaEventRecord(ev1));
          CK(cudaEventSynchronize(ev1));
          float ms;
          CK(cudaEventElapsedTime(&ms, ev0, ev1));
          tm.push_back(ms);
        }
        std::sort(tm.begin(), tm.end());
        main_med = tm[tm.size() / 2];
      }
      // The same forward captured once into a CUDA graph and replayed (how the runtime runs
      // it): removes host launch gaps between the passes.
      {
        cudaStream_t cs;
        CK(cudaStreamCreateWithFlags(&cs, cudaStreamNonBlocking));
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK(cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal));
        CK(launch<KC>(a, cs));
        CK(cudaStreamEndCapture(cs, &graph));
        CK(cudaGraphInstantiate(&exec, graph, 0));
        for (int i = 0; i < 5; ++i)
          CK(cudaGraphLaunch(exec, cs));
        std::vector<float> tg;
        for (int i = 0; i < reps; ++i) {
          CK(cudaEventRecord(ev0, cs));
          CK(cudaGraphLaunch(exec, cs));
          CK(cudaEventRecord(ev1, cs));
          CK(cudaEventSynchronize(ev1));
          float ms;
          CK(cudaEventElapsedTime(&ms, ev0, ev1));
          tg.push_back(ms);
        }
        std::sort(tg.begin(), tg.end());
        graph_med = tg[tg.size() / 2];
        CK(cudaGraphExecDestroy(exec));
        CK(cudaGraphDestroy(graph));
        CK(cudaStreamDestroy(cs));
      }
      CK(cudaGetLastError());
      std::sort(ts.begin(), ts.end());
      med = ts[ts.size() / 2];
      mn = ts[0];
      CK(cudaEventDestroy(ev0));
      CK(cudaEventDestroy(ev1));
    }
    const bool pass = e.nonfinite == 0 && e.max_rel() < 2e-2 && e.rel_l2 < 1e-2 && stable &&
                      (!check_final || (ef.nonfinite == 0 && ef.rel_l2 < 5e-3));
    const double E = (double)B * H * N * Cfg::DV;
    const double bytes = 8.0 * E; // PERFORMANCE.md: read q, k, v, write o (D = DK = DV)
    const double floor_ms = bytes / kBandwidth * 1e3;
    const double flops = 4.0 * E * (Cfg::DK + KC::C);
    std::printf(
        "{\"op\": \"lightning_attention_fwd\", \"impl\": \"tnlm_cuda\", \"case\": \"%s\", "
        "\"B\": %d, \"H\": %d, \"N\": %d, \"DK\": %d, \"DV\": %d, \"dtype\": \"bf16\", "
        "\"decay\": \"%s\", \"kernel\": \"%s\", \"block\": %d, \"warps\": %d, \"segments\": %d, "
        "\"seg_len\": %d, "
        "\"pieces_per_bh\": %d, \"default_plan\": %s",
        tag, B, H, N, Cfg::DK, Cfg::DV, decay.c_str(), KC::kHopper ? "sm90_wgmma" : "mma_sync",
        KC::C, KC::NWARPS, plan.num_segs, plan.seg_len, plan.pieces_per_bh,
        is_default ? "true" : "false");
    if (reps > 0)
      std::printf(", \"median_ms\": %.4f, \"min_ms\": %.4f, \"pass2_median_ms\": %.4f, "
                  "\"io_floor_ms\": %.4f, \"tb_per_s\": %.3f, \"pct_io_floor\": %.1f, "
                  "\"tflop_per_s\": %.1f, \"graph_median_ms\": %.4f, \"graph_pct_io_floor\": %.1f",
                  med, mn, main_med, floor_ms, bytes / (med * 1e-3) / 1e12, 100.0 * floor_ms / med,
                  flops / (med * 1e-3) / 1e12, graph_med, 100.0 * floor_ms / graph_med);
    std::printf(
        ", \"max_abs_err\": %.3e, \"max_ref\": %.3e, \"max_rel_err\": %.3e, \"rel_l2_err\": "
        "%.3e, \"nonfinite\": %llu, \"stable\": %s",
        e.max_abs, e.max_ref, e.max_rel(), e.rel_l2, e.nonfinite, stable ? "true" : "false");
    if (check_final)
      std::printf(", \"final_state_rel_l2\": %.3e, \"final_state_max_rel\": %.3e", ef.rel_l2,
                  ef.max_rel());
    std::printf(", \"pass\": %s}\n", pass ? "true" : "false");
    std::fflush(stdout);
    return pass;
  }
};

// out[b, n] = in[b, N - 1 - n] for rows of `row` elements ([B, N, row] layout): the reversed
// sequences the dk and dv references are computed on.
template <class T>
__global__ void reverse_tokens_kernel(const T *in, T *out, int B, int N, long long row) {
  const long long total = (long long)B * N * row;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total;
       i += (long long)gridDim.x * blockDim.x) {
    const long long r = i / row, c = i % row, b = r / N, n = r % N;
    out[(b * N + (N - 1 - n)) * row + c] = in[i];
  }
}

// ---------------------------------------------------------------------------------------------
// Forward + backward (--bwd): the backward as three passes of the Hopper forward kernel
// (test/unit/cuda/LightningBwdFastGpuTest.cpp checks the result against the CPU):
//   dq = fwd(dO, v, k), dk = rev(v, dO, q), dv = rev(k, q, dO), rev = the same forward over the
//   reversed sequence (the tensors' last rows, negative token strides), each with the default
//   segment plan (--bwd-sms), the three on their own streams (they only read inputs); the dv
//   pass reads the dk pass's piece states transposed once its scan is done, as the train step
//   does (--bwd-own-states: a workspace, state pass and scan of its own).
// Timed: the forward, then the backward, as one sequence (events around all of it); the I/O
// floor of fwd+bwd is 22E bytes (PERFORMANCE.md). Accuracy: dq against the fp32 reference
// kernel run on (dO, v, k); dk and dv against the reference run on the reversed sequences
// (rev v, rev dO, rev q) and (rev k, rev q, rev dO), compared with the reversed dk and dv.
// ---------------------------------------------------------------------------------------------
template <class Cfg>
static int bench_bwd(int B, int H, int N, int sms, int bwd_sms, bool reuse, int reps,
                     uint64_t seed) {
  Problem<Cfg> p(B, H, N, 1.0f, "alibi", seed);
  const long long E = p.E_in();
  bf16 *dO, *dq, *dk, *dv;
  float *dqref, *sref;
  CK(cudaMalloc(&dO, E * 2));
  CK(cudaMalloc(&dq, E * 2));
  CK(cudaMalloc(&dk, E * 2));
  CK(cudaMalloc(&dv, E * 2));
  CK(cudaMalloc(&dqref, E * 4));
  CK(cudaMalloc(&sref, (size_t)B * H * 128 * 128 * 4));
  init_kernel<<<2048, 256>>>(dO, E, seed * 3 + 7, 0);
  CK(cudaGetLastError());
  reference_kernel<128, 128><<<B * H, 128>>>(dO, p.v, p.k, p.slopes, dqref, sref, B, N, H);
  CK(cudaDeviceSynchronize());
  // The backward's three passes run together: their plan may be made for fewer SMs than the
  // device has (--bwd-sms), so that fewer segments of each fill the SMs between them.
  const LightningFwdPlan plan = plan_lightning_fwd(B, H, N, 128, 128, 64, sms);
  const LightningFwdPlan bplan = plan_lightning_fwd(B, H, N, 128, 128, 64, bwd_sms);
  LightningFwdArgs fwd = p.args(plan, false);
  LightningFwdArgs aq = p.args(bplan, false), ak = aq, av = aq;
  aq.q = dO, aq.k = p.v, aq.v = p.k, aq.o = dq;
  ak.q = p.v, ak.k = dO, ak.v = p.q, ak.o = dk;
  av.q = p.k, av.k = p.q, av.v = dO, av.o = dv;
  const long long last = (long long)(N - 1) * H * 128; // row N - 1 of batch 0
  for (LightningFwdArgs *a : {&ak, &av}) {             // the reversed passes
    a->q += last, a->k += last, a->v += last, a->o += last;
    a->in_sn = -a->in_sn, a->out_sn = -a->out_sn;
  }
  float *ws[3] = {nullptr, nullptr, nullptr}; // each pass its own: they may run together
  LightningFwdArgs *passes[3] = {&aq, &ak, &av};
  for (int i = 0; i < 3; ++i) {
    passes[i]->piece_states = nullptr;
    if (bplan.workspace_bytes > 0) {
      CK(cudaMalloc(&ws[i], bplan.workspace_bytes));
      passes[i]->piece_states = ws[i];
    }
  }
  cudaStream_t s0, s1, s2;
  CK(cudaStreamCreateWithFlags(&s0, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&s1, cudaStreamNonBlocking));
  CK(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
  cudaEvent_t ev0, ev1, fork, j1, j2, scanned;
  for (cudaEvent_t *e : {&ev0, &ev1})
    CK(cudaEventCreate(e));
  for (cudaEvent_t *e : {&fork, &j1, &j2, &scanned})
    CK(cudaEventCreateWithFlags(e, cudaEventDisableTiming));
  // reuse (the train step's way, CudaExecutor's reuseTransposed): the dv pass's states are the
  // dk pass's transposed (its K, V are dk's V, K), so it reads them (state_t) instead of a state
  // pass and scan of its own, once the dk pass's scan is done.
  reuse = reuse && bplan.pieces_per_bh > 0;
  if (reuse) {
    av.piece_states = ak.piece_states;
    av.state_t = 1;
    CK(launch<Cfg>(fwd, s0)); // sets the kernels' shared-memory limits
    CK(cudaStreamSynchronize(s0));
  }
  auto step = [&](bool backwardOnly) {
    if (!backwardOnly)
      CK(launch<Cfg>(fwd, s0));
    CK(cudaEventRecord(fork, s0));
    CK(cudaStreamWaitEvent(s1, fork));
    CK(cudaStreamWaitEvent(s2, fork));
    if (reuse) {
      const int BH = B * H;
      lightning_fwd_sm90_state_kernel<Cfg>
          <<<BH * ak.pieces_per_bh, Cfg::NTHREADS, Cfg::SMEM_STATE, s1>>>(ak);
      lightning_fwd_scan_kernel<Cfg::DK, Cfg::DV>
          <<<dim3(Cfg::DK * Cfg::DV / 1024, BH), 256, 0, s1>>>(ak);
      CK(cudaEventRecord(scanned, s1));
      lightning_fwd_sm90_main_kernel<Cfg>
          <<<BH * ak.num_segs, Cfg::NTHREADS, Cfg::SMEM_MAIN, s1>>>(ak);
      CK(cudaStreamWaitEvent(s2, scanned));
      lightning_fwd_sm90_main_kernel<Cfg>
          <<<BH * av.num_segs, Cfg::NTHREADS, Cfg::SMEM_MAIN, s2>>>(av);
    } else {
      CK(launch<Cfg>(ak, s1));
      CK(launch<Cfg>(av, s2));
    }
    CK(launch<Cfg>(aq, s0));
    CK(cudaEventRecord(j1, s1));
    CK(cudaEventRecord(j2, s2));
    CK(cudaStreamWaitEvent(s0, j1));
    CK(cudaStreamWaitEvent(s0, j2));
    CK(cudaGetLastError());
  };
  CK(cudaMemset(dq, 0xFF, E * 2));
  CK(cudaMemset(dk, 0xFF, E * 2));
  CK(cudaMemset(dv, 0xFF, E * 2));
  step(false);
  CK(cudaStreamSynchronize(s0));
  Err e = compare<bf16>(dq, dqref, E);
  Err edk, edv;
  { // dk, dv against the reference on reversed copies (the reference buffer is reused)
    bf16 *rq, *rk, *rv, *rdO, *rout;
    for (bf16 **x : {&rq, &rk, &rv, &rdO, &rout})
      CK(cudaMalloc(x, E * 2));
    const long long row = (long long)H * 128;
    reverse_tokens_kernel<<<2048, 256>>>(p.q, rq, B, N, row);
    reverse_tokens_kernel<<<2048, 256>>>(p.k, rk, B, N, row);
    reverse_tokens_kernel<<<2048, 256>>>(p.v, rv, B, N, row);
    reverse_tokens_kernel<<<2048, 256>>>(dO, rdO, B, N, row);
    reference_kernel<128, 128><<<B * H, 128>>>(rv, rdO, rq, p.slopes, dqref, sref, B, N, H);
    reverse_tokens_kernel<<<2048, 256>>>(dk, rout, B, N, row);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    edk = compare<bf16>(rout, dqref, E);
    reference_kernel<128, 128><<<B * H, 128>>>(rk, rq, rdO, p.slopes, dqref, sref, B, N, H);
    reverse_tokens_kernel<<<2048, 256>>>(dv, rout, B, N, row);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    edv = compare<bf16>(rout, dqref, E);
    for (bf16 *x : {rq, rk, rv, rdO, rout})
      CK(cudaFree(x));
  }
  auto timeIt = [&](bool backwardOnly) {
    for (int i = 0; i < 5; ++i)
      step(backwardOnly);
    std::vector<float> ts;
    for (int i = 0; i < reps; ++i) {
      CK(cudaEventRecord(ev0, s0));
      step(backwardOnly);
      CK(cudaEventRecord(ev1, s0));
      CK(cudaEventSynchronize(ev1));
      float ms;
      CK(cudaEventElapsedTime(&ms, ev0, ev1));
      ts.push_back(ms);
    }
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
  };
  const double all = timeIt(false), bwd = timeIt(true);
  const double Ed = (double)B * H * N * 128;
  const double floor_ms = 22.0 * Ed / kBandwidth * 1e3, floor_bwd = 14.0 * Ed / kBandwidth * 1e3;
  bool pass = true;
  for (const Err *x : {&e, &edk, &edv})
    pass = pass && x->nonfinite == 0 && x->max_rel() < 2e-2 && x->rel_l2 < 1e-2;
  std::printf("{\"op\": \"lightning_attention_fwd_bwd\", \"impl\": \"tnlm_cuda_three_pass\", "
              "\"B\": %d, \"H\": %d, \"N\": %d, \"D\": 128, \"dtype\": \"bf16\", "
              "\"segments\": %d, \"bwd_plan_sms\": %d, \"bwd_segments\": %d, "
              "\"dv_reads_dk_states\": %s, "
              "\"median_ms\": %.4f, \"bwd_median_ms\": %.4f, \"io_floor_ms\": %.4f, "
              "\"pct_io_floor\": %.1f, "
              "\"bwd_io_floor_ms\": %.4f, \"bwd_pct_io_floor\": %.1f, \"dq_max_rel_err\": %.3e, "
              "\"dq_rel_l2_err\": %.3e, \"dk_max_rel_err\": %.3e, \"dk_rel_l2_err\": %.3e, "
              "\"dv_max_rel_err\": %.3e, \"dv_rel_l2_err\": %.3e, \"extra_bytes\": %llu, "
              "\"pass\": %s}\n",
              B, H, N, plan.num_segs, bwd_sms, bplan.num_segs, reuse ? "true" : "false", all, bwd,
              floor_ms, 100.0 * floor_ms / all, floor_bwd, 100.0 * floor_bwd / bwd, e.max_rel(),
              e.rel_l2, edk.max_rel(), edk.rel_l2, edv.max_rel(), edv.rel_l2,
              (unsigned long long)(plan.workspace_bytes + (reuse ? 2 : 3) * bplan.workspace_bytes),
              pass ? "true" : "false");
  std::fflush(stdout);
  for (cudaEvent_t ev : {ev0, ev1, fork, j1, j2, scanned})
    CK(cudaEventDestroy(ev));
  for (cudaStream_t st : {s0, s1, s2})
    CK(cudaStreamDestroy(st));
  for (void *x : {(void *)dO, (void *)dq, (void *)dk, (void *)dv, (void *)dqref, (void *)sref,
                  (void *)ws[0], (void *)ws[1], (void *)ws[2]})
    if (x)
      CK(cudaFree(x));
  return pass ? 0 : 1;
}

using Cfg128 = LightningFwdConfig<128, 128, 64, 8, 2>;      // default
using Cfg128w16 = LightningFwdConfig<128, 128, 64, 16, 2>;  // 16 warps (128 registers)
using Cfg90 = LightningFwdSm90Config<128, 128, 64, 3, 4>;   // Hopper wgmma (default)
using Cfg90s2 = LightningFwdSm90Config<128, 128, 64, 2, 2>; // Hopper, 2-stage rings
using Cfg90s4 = LightningFwdSm90Config<128, 128, 64, 4, 4>; // Hopper, 4-stage main ring

int main(int argc, char **argv) {
  bool small_only = false, perf_only = false, sweep = true, bwd_only = false, train = false;
  int reps = 30, only_shape = -1, bwd_sms = 0;
  bool bwd_reuse = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--bwd"))
      bwd_only = true; // forward + backward at the three shapes only
    if (!std::strcmp(argv[i], "--small"))
      small_only = true;
    if (!std::strcmp(argv[i], "--perf"))
      perf_only = true; // skip the small cases
    if (!std::strcmp(argv[i], "--nosweep"))
      sweep = false; // default plans only
    if (!std::strcmp(argv[i], "--train-shapes"))
      train = true; // the 385M train step's shapes (H = 8): default plan + a sweep of plans
    if (!std::strncmp(argv[i], "--reps=", 7))
      reps = std::atoi(argv[i] + 7);
    if (!std::strncmp(argv[i], "--shape=", 8))
      only_shape = std::atoi(argv[i] + 8);
    if (!std::strcmp(argv[i], "--bwd-own-states"))
      bwd_reuse = false; // the dv pass with a state pass and scan of its own
    if (!std::strncmp(argv[i], "--bwd-sms=", 10))
      bwd_sms = std::atoi(argv[i] + 10); // the SMs the backward passes' plan is made for
  }
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf(
      "{\"device\": \"%s\", \"sms\": %d, \"l2_mb\": %.1f, \"sm90_smem_main_bytes\": %d, "
      "\"sm90_smem_state_bytes\": %d, \"mma_smem_main_bytes\": %d, \"mma_smem_state_bytes\": "
      "%d}\n",
      prop.name, sms, prop.l2CacheSize / 1048576.0, Cfg90::SMEM_MAIN, Cfg90::SMEM_STATE,
      Cfg128::SMEM_MAIN, Cfg128::SMEM_STATE);

  int fails = 0;
  uint64_t seed = 1;
  if (train) {
    // The shapes of each Lightning pass of the 385M train step (d = 1024: 8 heads of 128): at
    // 4 x 2048 the default plan gives 4 segments of 8 chunks (128 CTAs) and 3 pieces per head;
    // which other plan, or ring depth, runs each pass faster? (Correctness checked per run.)
    struct Train {
      int B, H, N;
      std::vector<std::pair<int, int>> alt;
    };
    const Train shapes[] = {
        {4, 8, 2048, {{1, 0}, {2, 1}, {4, 2}, {8, 1}, {8, 2}, {16, 1}, {32, 1}}},
        {1, 8, 8192, {{8, 1}, {16, 2}, {32, 1}, {64, 1}}},
        {1, 8, 32768, {{16, 1}, {16, 4}, {32, 1}, {64, 1}}}};
    for (const Train &c : shapes) {
      Problem<Cfg128> p(c.B, c.H, c.N, 1.0f, "alibi", seed++);
      fails += !p.template run<Cfg90>("train", sms, 0, 0, true, reps, true);
      fails += !p.template run<Cfg90s2>("train-s2", sms, 0, 0, false, reps, false);
      fails += !p.template run<Cfg90s4>("train-s4", sms, 0, 0, false, reps, false);
      for (auto [sg, k] : c.alt)
        fails += !p.template run<Cfg90>("train-sweep", sms, sg, k, false, reps, false);
    }
    std::printf("{\"summary\": \"train\", \"failures\": %d}\n", fails);
    return fails ? 1 : 0;
  }
  if (bwd_only) {
    const int shapes[3][3] = {{8, 16, 2048}, {4, 16, 8192}, {1, 16, 32768}};
    for (int si = 0; si < 3; ++si)
      if (only_shape < 0 || si == only_shape)
        fails += bench_bwd<Cfg90>(shapes[si][0], shapes[si][1], shapes[si][2], sms,
                                  bwd_sms > 0 ? bwd_sms : sms, bwd_reuse, reps, seed++);
    std::printf("{\"summary\": \"bwd\", \"failures\": %d}\n", fails);
    return fails ? 1 : 0;
  }
  // ---- small correctness cases (partial blocks, H not a power of two, forced segments) ----
  struct Small {
    int B, H, N, segs, pieces;
  };
  const Small smalls[] = {{2, 16, 1, 0, 0},   {2, 16, 63, 0, 0},   {2, 16, 64, 0, 0},
                          {2, 16, 65, 0, 0},  {1, 6, 1, 0, 0},     {3, 6, 63, 0, 0},
                          {3, 6, 64, 0, 0},   {3, 6, 65, 0, 0},    {3, 6, 1000, 0, 0},
                          {1, 6, 65, 2, 1},   {1, 6, 1000, 3, 1},  {1, 6, 1000, 3, 2},
                          {1, 6, 4097, 4, 2}, {2, 16, 2047, 5, 0}, {1, 16, 700, 11, 1}};
  for (const Small &c : smalls) {
    if (perf_only)
      break;
    for (int f = 0; f < 2; ++f) {
      Problem<Cfg128> p(c.B, c.H, c.N, f ? 1e-5f : 1.0f, f ? "alibi*1e-5" : "alibi", seed++);
      char tag[64];
      std::snprintf(tag, sizeof tag, "small");
      fails += !p.run(tag, sms, c.segs, c.pieces, c.segs == 0, 0, true);
      fails += !p.template run<Cfg90>(tag, sms, c.segs, c.pieces, c.segs == 0, 0, true);
      if (c.N % 64 != 0 || c.segs > 0) { // other variants on the partial-block cases
        fails += !p.template run<Cfg128w16>(tag, sms, c.segs, c.pieces, c.segs == 0, 0, true);
        fails += !p.template run<Cfg90s2>(tag, sms, c.segs, c.pieces, c.segs == 0, 0, true);
      }
    }
  }
  if (small_only) {
    std::printf("{\"summary\": \"small\", \"failures\": %d}\n", fails);
    return fails ? 1 : 0;
  }
  // ---- one bandwidth ceiling reading (device-to-device copy, read + write bytes) ----
  if (!perf_only) {
    const size_t n = 1ull << 30;
    void *a, *b;
    CK(cudaMalloc(&a, n));
    CK(cudaMalloc(&b, n));
    CK(cudaMemset(a, 1, n));
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    std::vector<float> ts;
    for (int i = 0; i < 13; ++i) {
      CK(cudaEventRecord(e0));
      CK(cudaMemcpyAsync(b, a, n, cudaMemcpyDeviceToDevice));
      CK(cudaEventRecord(e1));
      CK(cudaEventSynchronize(e1));
      float ms;
      CK(cudaEventElapsedTime(&ms, e0, e1));
      if (i >= 3)
        ts.push_back(ms);
    }
    std::sort(ts.begin(), ts.end());
    std::printf("{\"op\": \"d2d_copy\", \"bytes\": %zu, \"median_ms\": %.4f, \"tb_per_s\": %.3f}\n",
                2 * n, ts[ts.size() / 2], 2.0 * n / (ts[ts.size() / 2] * 1e-3) / 1e12);
    CK(cudaFree(a));
    CK(cudaFree(b));
  }
  // ---- the three PERFORMANCE.md shapes: default plan + a small sweep of segment plans ----
  struct Big {
    int B, H, N;
    std::vector<std::pair<int, int>> alt; // (segments, pieces per segment)
  };
  const Big bigs[] = {{8, 16, 2048, {{2, 1}}},
                      {4, 16, 8192, {{1, 0}, {2, 1}, {4, 1}}},
                      {1, 16, 32768, {{4, 1}, {8, 2}, {16, 1}}}};
  for (int si = 0; si < 3; ++si) {
    if (only_shape >= 0 && si != only_shape)
      continue;
    const Big &c = bigs[si];
    for (int f = 0; f < 2; ++f) {
      if (f == 1 && !sweep)
        break;
      Problem<Cfg128> p(c.B, c.H, c.N, f ? 1e-5f : 1.0f, f ? "alibi*1e-5" : "alibi", seed++);
      fails += !p.template run<Cfg90>("perf", sms, 0, 0, true, reps, f == 0);
      fails += !p.run("perf-mma", sms, 0, 0, false, reps, f == 0);
      if (f == 0 && sweep) {
        fails += !p.template run<Cfg90s2>("perf-s2", sms, 0, 0, false, reps, false);
        fails += !p.template run<Cfg90s4>("perf-s4", sms, 0, 0, false, reps, false);
        fails += !p.template run<Cfg128w16>("perf-w16", sms, 0, 0, false, reps, false);
        for (auto [s, k] : c.alt)
          fails += !p.template run<Cfg90>("perf-sweep", sms, s, k, false, reps, false);
      }
    }
  }
  std::printf("{\"summary\": \"all\", \"failures\": %d}\n", fails);
  return fails ? 1 : 0;
}
