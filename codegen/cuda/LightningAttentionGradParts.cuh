// The fused Lightning Attention's backward on the GPU around its attention core (issue 11):
// the row kernels of cpu::fusedLightningAttentionGrad (runtime/cpu/AttentionGrad.cpp), in its
// order:
//   1. la_grad_prologue     q', k' = LRPE(φ(q)), LRPE(φ(k)) recomputed (bf16, as the forward's
//                           operands), position p = row mod N + offset;
//   2. the forward's O from q', k', v (LightningAttentionBwdSimple.cuh, lightning_fwd_simple;
//      plain layers on the fast path: la_grad_pack, then the Hopper forward kernel, bf16 O);
//   3. la_gate_norm_grad    y = u ⊙ x̂, x̂ = O·r, r = rstd over all D features:
//                           du = dy ⊙ x̂;  g = dy ⊙ u;  dO = r·(g − x̂·mean(x̂ ⊙ g));
//   4. the attention core's backward: dq', dk', dv (lightning_bwd_simple);
//   5. la_lrpe_grad + la_dtheta_sum: dq, dk = φ'(x) ⊙ (dy_c ⊙ cos + dy_s ⊙ sin) and
//      dθ += Σ_{q and k, b, t} p · φ(x) ⊙ (dy_s ⊙ cos − dy_c ⊙ sin) in f64 over fixed chunks of
//      positions, then the chunks in order (deterministic); without LRPE and with φ = SiLU,
//      dq, dk = φ'(x) ⊙ dq', dk' (bw::silu_grad, in place).
// qkvu: bf16 [rows, ld ≥ 4D] (q, k, v, u at columns 0, D, 2D, 3D), D = H·dh; q', k': [rows, H·dk]
// (dk = 2·dh with LRPE: per head the cos half then the sin half). Row kernels: grid.x = rows, one
// CTA of BLOCK threads per row.
#pragma once

#include "tnlm/LightningAttentionBwdSimple.cuh"
#include "tnlm/MmaSync.cuh"

#include <cuda_bf16.h>

namespace tnlm {
namespace la_bw {

// φ = SiLU as cpu's siluValue (x / (1 + e^−x)) and φ' = σ(x)·(1 + x·(1 − σ(x))), both from one
// expf (the CPU's std::exp to a few ulp).
__device__ __forceinline__ void silu_both(float x, float &value, float &slope) {
  const float d = 1.0f + expf(-x), s = 1.0f / d;
  value = x / d;
  slope = s * (1.0f + x * (1.0f - s));
}

// Four bf16 (8 bytes) at a time: the row kernels below take this path where every row they
// touch starts 8-byte aligned and D is a multiple of 4 (the same value per element, the same
// per-element arithmetic as the one-element path; only the order of the per-row f64 sums
// changes; la_gate_norm_grad2's du, dO and x̂ ⊙ g in f32 there), else one element per thread
// and step.
template <typename T> struct IsBf16 { static constexpr bool value = false; };
template <> struct IsBf16<bf16> { static constexpr bool value = true; };
struct __align__(8) Bf16x4 {
  bf16 v[4];
};
__device__ __forceinline__ bool aligned8(const void *p) {
  return (reinterpret_cast<unsigned long long>(p) & 7ull) == 0;
}
__device__ __forceinline__ Bf16x4 load4(const bf16 *p) {
  return *reinterpret_cast<const Bf16x4 *>(p);
}
__device__ __forceinline__ void store4(bf16 *p, const Bf16x4 &x) {
  *reinterpret_cast<Bf16x4 *>(p) = x;
}

template <int BLOCK, bool SILU, bool LRPE>
__device__ __forceinline__ void la_grad_prologue(const bf16 *qkvu, long long ld, const float *theta,
                                                 int N, int offset, int H, int dh, bf16 *qp,
                                                 bf16 *kp, long long ldp) {
  const long long r = blockIdx.x;
  const int D = H * dh, dk = LRPE ? 2 * dh : dh;
  const float pos = static_cast<float>(static_cast<int>(r % N) + offset);
  for (int i = threadIdx.x; i < D; i += BLOCK) {
    const int h = i / dh, c = i % dh;
    float cs = 1.0f, sn = 0.0f;
    if (LRPE) {
      const float angle = pos * theta[i]; // one f32 rounding, as the forward
      cs = cosf(angle), sn = sinf(angle);
    }
    for (int part = 0; part < 2; ++part) {
      float x = __bfloat162float(qkvu[r * ld + part * D + i]);
      if (SILU) {
        float slope;
        silu_both(x, x, slope);
      }
      bf16 *dst = (part == 0 ? qp : kp) + r * ldp + h * dk;
      if (LRPE) {
        dst[c] = __float2bfloat16(x * cs);
        dst[dh + c] = __float2bfloat16(x * sn);
      } else {
        dst[c] = __float2bfloat16(x);
      }
    }
  }
}

// The fast backward's operands of a plain layer (no LRPE) in one bf16 block of row stride ldp
// (the Hopper forward kernel reads q, k and v with one stride): p[r, 0:D] = φ(q),
// p[r, D:2D] = φ(k) (φ = SiLU or the identity), p[r, 2D:3D] = v; the gate and norm backward
// writes dO into p[r, 3D:4D]. grid.x = rows.
template <int BLOCK, bool SILU>
__device__ __forceinline__ void la_grad_pack(const bf16 *qkvu, long long ld, int D, bf16 *p,
                                             long long ldp) {
  const long long r = blockIdx.x;
  const bf16 *xr = qkvu + r * ld;
  bf16 *pr = p + r * ldp;
  if (D % 4 == 0 && aligned8(xr) && aligned8(pr)) {
    for (int i = threadIdx.x * 4; i < 3 * D; i += BLOCK * 4) {
      Bf16x4 x = load4(xr + i);
      if (SILU && i < 2 * D) // (a group of four never straddles 2D)
        for (int j = 0; j < 4; ++j) {
          float value, slope;
          silu_both(__bfloat162float(x.v[j]), value, slope);
          x.v[j] = __float2bfloat16(value);
        }
      store4(pr + i, x);
    }
    return;
  }
  for (int i = threadIdx.x; i < 3 * D; i += BLOCK) {
    const bf16 x = qkvu[r * ld + i];
    if (SILU && i < 2 * D) {
      float value, slope;
      silu_both(__bfloat162float(x), value, slope);
      p[r * ldp + i] = __float2bfloat16(value);
    } else {
      p[r * ldp + i] = x;
    }
  }
}

// Sum of a double over the CTA (BLOCK whole warps), the same for every thread: per-thread
// partials, a warp butterfly, then the warps in index order (deterministic).
template <int BLOCK> __device__ __forceinline__ double cta_sum_f64(double v, double *red) {
  for (int o = 16; o > 0; o >>= 1)
    v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads(); // red may still be read from the previous call
  if (threadIdx.x % 32 == 0)
    red[threadIdx.x / 32] = v;
  __syncthreads();
  double t = 0.0;
#pragma unroll
  for (int w = 0; w < BLOCK / 32; ++w)
    t += red[w];
  return t;
}

// la_gate_norm_grad2's bf16 rows with D ≤ 4·BLOCK·G: the row's O, dy and u loaded once, all
// before the first is used (one memory latency per row instead of three); the same arithmetic,
// in the same order, as its loop over the row.
template <int BLOCK, int G>
__device__ __forceinline__ void la_gate_norm_grad_regs(const bf16 *Ob, const bf16 *dyb,
                                                       const bf16 *ur, bf16 *dub, bf16 *dOr, int D,
                                                       float eps, double *red) {
  // f(k, c) for each of this thread's groups k < G of four columns, starting at c < D.
  auto groups = [&](auto f) {
#pragma unroll
    for (int k = 0; k < G; ++k) {
      const int c = threadIdx.x * 4 + k * BLOCK * 4;
      if (c < D)
        f(k, c);
    }
  };
  Bf16x4 xs[G], gs[G], us[G];
  groups([&](int k, int c) {
    xs[k] = load4(Ob + c);
    gs[k] = load4(dyb + c);
    us[k] = load4(ur + c);
  });
  double ss = 0.0;
  groups([&](int k, int) {
    for (int j = 0; j < 4; ++j) {
      const double v = static_cast<double>(__bfloat162float(xs[k].v[j]));
      ss += v * v;
    }
  });
  const double meanSq = cta_sum_f64<BLOCK>(ss, red) / static_cast<double>(D);
  const float rstd = static_cast<float>(1.0 / sqrt(meanSq + static_cast<double>(eps)));
  float dot = 0.0f;
  groups([&](int k, int c) {
    Bf16x4 d;
    for (int j = 0; j < 4; ++j) {
      const float xhat = __bfloat162float(xs[k].v[j]) * rstd;
      const float gj = __bfloat162float(gs[k].v[j]);
      d.v[j] = __float2bfloat16(gj * xhat);
      dot = fmaf(xhat, gj * __bfloat162float(us[k].v[j]), dot);
    }
    store4(dub + c, d);
  });
  const float mean = static_cast<float>(cta_sum_f64<BLOCK>(static_cast<double>(dot), red) /
                                        static_cast<double>(D));
  groups([&](int k, int c) {
    Bf16x4 o4;
    for (int j = 0; j < 4; ++j) {
      const float xhat = __bfloat162float(xs[k].v[j]) * rstd;
      const float gj = __bfloat162float(gs[k].v[j]) * __bfloat162float(us[k].v[j]);
      o4.v[j] = __float2bfloat16(rstd * (gj - xhat * mean));
    }
    store4(dOr + c, o4);
  });
}

// The gate and the cross-head norm's backward for one row: O (TO: the forward's output before
// them), dy (TDY), u = qkvu's 4th part; du (TG) and dO (bf16, the attention core's input).
// rstd as the forward's epilogue from Σ O² (f64), the mean of x̂ ⊙ g in f64, as the CPU (on
// the four-at-a-time path: the per-element products and each thread's sum in f32).
// O2 (optional, same stride): the LRPE layer's second pass; the norm's input is O + O2 (f32
// sum of the two, as the forward's epilogue).
template <int BLOCK, typename TO, typename TDY, typename TG>
__device__ __forceinline__ void la_gate_norm_grad2(const TO *O, const TO *O2, long long ldo,
                                                   const TDY *dy, long long lddy, const bf16 *u,
                                                   long long ldu, TG *du, long long lddu, bf16 *dO,
                                                   long long lddo, int D, float eps) {
  __shared__ double red[BLOCK / 32];
  const long long r = blockIdx.x;
  const TO *Or = O + r * ldo;
  const TO *O2r = O2 != nullptr ? O2 + r * ldo : nullptr;
  auto o = [&](int c) { return to_float(Or[c]) + (O2r != nullptr ? to_float(O2r[c]) : 0.0f); };
  const TDY *dyr = dy + r * lddy;
  const bf16 *ur = u + r * ldu;
  if (IsBf16<TO>::value && IsBf16<TDY>::value && IsBf16<TG>::value && O2r == nullptr &&
      D % 4 == 0 && aligned8(Or) && aligned8(dyr) && aligned8(ur) && aligned8(du + r * lddu) &&
      aligned8(dO + r * lddo)) {
    // (the same for every thread of the CTA: the sums' __syncthreads are reached by all)
    const bf16 *Ob = reinterpret_cast<const bf16 *>(Or);
    const bf16 *dyb = reinterpret_cast<const bf16 *>(dyr);
    bf16 *dub = reinterpret_cast<bf16 *>(du + r * lddu);
    bf16 *dOr = dO + r * lddo;
    // D up to 4·BLOCK: the row in registers (one group of four per thread; a run-time count
    // of up to four groups kept 74 registers, for all rows: 3 CTAs per SM, slower than the loop).
    if (D <= BLOCK * 4) {
      la_gate_norm_grad_regs<BLOCK, 1>(Ob, dyb, ur, dub, dOr, D, eps, red);
      return;
    }
    double ss4 = 0.0;
    for (int c = threadIdx.x * 4; c < D; c += BLOCK * 4) {
      const Bf16x4 x = load4(Ob + c);
      for (int j = 0; j < 4; ++j) {
        const double v = static_cast<double>(__bfloat162float(x.v[j]));
        ss4 += v * v;
      }
    }
    const double meanSq4 = cta_sum_f64<BLOCK>(ss4, red) / static_cast<double>(D);
    const float rstd4 = static_cast<float>(1.0 / sqrt(meanSq4 + static_cast<double>(eps)));
    // The per-element work in f32 (each thread's four products summed in f32, the threads'
    // sums in f64): the f64 path converted each element about seven times, at 16 conversions
    // per SM and clock; dO is bf16, so f32 (2^-24) loses nothing that matters.
    float dot4 = 0.0f;
    for (int c = threadIdx.x * 4; c < D; c += BLOCK * 4) {
      const Bf16x4 x = load4(Ob + c), g = load4(dyb + c), uu = load4(ur + c);
      Bf16x4 d;
      for (int j = 0; j < 4; ++j) {
        const float xhat = __bfloat162float(x.v[j]) * rstd4, gj = __bfloat162float(g.v[j]);
        d.v[j] = __float2bfloat16(gj * xhat);
        dot4 = fmaf(xhat, gj * __bfloat162float(uu.v[j]), dot4);
      }
      store4(dub + c, d);
    }
    const float mean4 = static_cast<float>(cta_sum_f64<BLOCK>(static_cast<double>(dot4), red) /
                                           static_cast<double>(D));
    for (int c = threadIdx.x * 4; c < D; c += BLOCK * 4) {
      const Bf16x4 x = load4(Ob + c), g = load4(dyb + c), uu = load4(ur + c);
      Bf16x4 o4;
      for (int j = 0; j < 4; ++j) {
        const float xhat = __bfloat162float(x.v[j]) * rstd4;
        const float gj = __bfloat162float(g.v[j]) * __bfloat162float(uu.v[j]);
        o4.v[j] = __float2bfloat16(rstd4 * (gj - xhat * mean4));
      }
      store4(dOr + c, o4);
    }
    return;
  }
  double ss = 0.0;
  for (int c = threadIdx.x; c < D; c += BLOCK) {
    const double x = static_cast<double>(o(c));
    ss += x * x;
  }
  const double meanSq = cta_sum_f64<BLOCK>(ss, red) / static_cast<double>(D);
  const float rstd = static_cast<float>(1.0 / sqrt(meanSq + static_cast<double>(eps)));
  double dot = 0.0;
  for (int c = threadIdx.x; c < D; c += BLOCK) {
    const float xhat = o(c) * rstd, g = to_float(dyr[c]);
    du[r * lddu + c] = out_of<TG>(g * xhat);
    dot += static_cast<double>(xhat) * (static_cast<double>(g) * __bfloat162float(ur[c]));
  }
  const double mean = cta_sum_f64<BLOCK>(dot, red) / static_cast<double>(D);
  for (int c = threadIdx.x; c < D; c += BLOCK) {
    const double xhat = o(c) * rstd;
    const double g = static_cast<double>(to_float(dyr[c])) * __bfloat162float(ur[c]);
    dO[r * lddo + c] =
        __float2bfloat16(static_cast<float>(static_cast<double>(rstd) * (g - xhat * mean)));
  }
}

template <int BLOCK, typename TO, typename TDY, typename TG>
__device__ __forceinline__ void la_gate_norm_grad(const TO *O, long long ldo, const TDY *dy,
                                                  long long lddy, const bf16 *u, long long ldu,
                                                  TG *du, long long lddu, bf16 *dO, long long lddo,
                                                  int D, float eps) {
  la_gate_norm_grad2<BLOCK, TO, TDY, TG>(O, static_cast<const TO *>(nullptr), ldo, dy, lddy, u, ldu,
                                         du, lddu, dO, lddo, D, eps);
}

// The LRPE layer's fast-backward pack (one bf16 stride ldp, planes of D columns, head stride
// dh): [q cos, k cos, q sin, k sin, v] with q', k' = φ(x) · cos / sin(p θ), p = row mod N +
// offset (as la_grad_prologue and the forward's ew::lrpe_split). grid.x = rows.
template <int BLOCK, bool SILU>
__device__ __forceinline__ void la_grad_pack_lrpe(const bf16 *qkvu, long long ld,
                                                  const float *theta, int N, int offset, int D,
                                                  bf16 *p, long long ldp) {
  const long long r = blockIdx.x;
  const float pos = static_cast<float>(static_cast<int>(r % N) + offset);
  bf16 *pr = p + r * ldp;
  for (int i = threadIdx.x; i < D; i += BLOCK) {
    const float angle = pos * theta[i];
    const float cs = cosf(angle), sn = sinf(angle);
    for (int part = 0; part < 2; ++part) {
      float x = __bfloat162float(qkvu[r * ld + part * D + i]);
      if (SILU) {
        float slope;
        silu_both(x, x, slope);
      }
      pr[part * D + i] = __float2bfloat16(x * cs);
      pr[(2 + part) * D + i] = __float2bfloat16(x * sn);
    }
    pr[4 * D + i] = qkvu[r * ld + 2 * D + i];
  }
}

// y[r, 0:D] += x[r, 0:D] (bf16, the sum in f32): the LRPE layer's dv from its two passes.
template <int BLOCK>
__device__ __forceinline__ void la_add_rows_bf16(bf16 *y, long long ldy, const bf16 *x,
                                                 long long ldx, int D) {
  const long long r = blockIdx.x;
  for (int c = threadIdx.x; c < D; c += BLOCK)
    y[r * ldy + c] =
        __float2bfloat16(__bfloat162float(y[r * ldy + c]) + __bfloat162float(x[r * ldx + c]));
}

// Without LRPE, φ = SiLU: dq, dk = φ'(x) ⊙ dq', dk' in place (columns [0, 2D) of dqkvu).
template <int BLOCK, typename TG>
__device__ __forceinline__ void la_silu_scale(const bf16 *qkvu, long long ld, TG *dqkvu,
                                              long long lddqkvu, int D) {
  const long long r = blockIdx.x;
  const bf16 *xr = qkvu + r * ld;
  if (IsBf16<TG>::value && D % 4 == 0 && aligned8(xr) && aligned8(dqkvu + r * lddqkvu)) {
    bf16 *gr = reinterpret_cast<bf16 *>(dqkvu + r * lddqkvu);
    for (int c = threadIdx.x * 4; c < 2 * D; c += BLOCK * 4) {
      const Bf16x4 x = load4(xr + c);
      Bf16x4 g = load4(gr + c);
      for (int j = 0; j < 4; ++j) {
        float value, slope;
        silu_both(__bfloat162float(x.v[j]), value, slope);
        g.v[j] = __float2bfloat16(__bfloat162float(g.v[j]) * slope);
      }
      store4(gr + c, g);
    }
    return;
  }
  for (int c = threadIdx.x; c < 2 * D; c += BLOCK) {
    float value, slope;
    silu_both(__bfloat162float(qkvu[r * ld + c]), value, slope);
    dqkvu[r * lddqkvu + c] = out_of<TG>(to_float(dqkvu[r * lddqkvu + c]) * slope);
  }
}

// Positions per dθ chunk (the CPU's kPositionChunk).
constexpr int kPositionChunk = 16;

// The LRPE (and SiLU) backward of q and k. grid = (ceil(N / kPositionChunk), ceil(D / BLOCK)):
// thread i of a CTA owns feature i of the chunk's positions t, for t in order, q then k, b in
// order: it writes dq, dk (TG, into dqkvu columns i and D + i) and its f64 dθ partial
// (partial[chunk · D + i]). dqk: dq', dk' (TDQ [rows, H·2dh] each, ld lddqk, dk' at dkOff).
template <int BLOCK, bool SILU, typename TDQ, typename TG>
__device__ __forceinline__ void la_lrpe_grad(const bf16 *qkvu, long long ld, const TDQ *dqk,
                                             long long lddqk, long long dkOff, const float *theta,
                                             int B, int N, int offset, int H, int dh, TG *dqkvu,
                                             long long lddqkvu, double *partial) {
  const int D = H * dh, i = blockIdx.y * BLOCK + threadIdx.x;
  if (i >= D)
    return;
  const int h = i / dh, c = i % dh, chunk = blockIdx.x;
  const int t0 = chunk * kPositionChunk, t1 = min(N, t0 + kPositionChunk);
  const float th = theta[i];
  double acc = 0.0;
  for (int t = t0; t < t1; ++t) {
    const float p = static_cast<float>(t + offset);
    const float angle = p * th;
    const float cs = cosf(angle), sn = sinf(angle);
    for (int op = 0; op < 2; ++op)
      for (int b = 0; b < B; ++b) {
        const long long row = static_cast<long long>(b) * N + t;
        const TDQ *dyr = dqk + row * lddqk + op * dkOff;
        const float dyc = to_float(dyr[h * 2 * dh + c]), dys = to_float(dyr[h * 2 * dh + dh + c]);
        const float g = dyc * cs + dys * sn;
        float x = __bfloat162float(qkvu[row * ld + op * D + i]), slope = 1.0f;
        if (SILU)
          silu_both(x, x, slope);
        dqkvu[row * lddqkvu + op * D + i] = out_of<TG>(SILU ? g * slope : g);
        if (partial)
          acc += static_cast<double>(p) * x *
                 (static_cast<double>(dys) * cs - static_cast<double>(dyc) * sn);
      }
  }
  if (partial)
    partial[static_cast<long long>(chunk) * D + i] = acc;
}

// The LRPE θ gradient in the relative form (cpu::lrpeThetaGradRelative, the reference): with
// q'_n = [qc | qs] = φ(q_n)·[cos | sin](nθ) and likewise k', the pair (n, m ≤ n) has the score
// λ^(n−m) Σ_c (qc_n,c kc_m,c + qs_n,c ks_m,c) = λ^(n−m) Σ_c q_n,c k_m,c cos((n−m)θ_c), so
//   dθ_c = −Σ_{m≤n} (n−m) λ^(n−m) (dO_n·v_m) (qs_n,c kc_m,c − qc_n,c ks_m,c):
// every weight a distance, never an absolute position. The absolute form (la_lrpe_grad's
// partials: a q side and a k side, each ~p times larger than their sum) amplifies the bf16
// rounding of its inputs ~N-fold; this one does not (docs/gpu-training.md).
// By blocks of C tokens with two fp32 states per (b, h): S = Σ_{m<t0} λ^(t0−1−m) v_m k'_mᵀ and
// the position-weighted T = Σ_{m<t0} (t0−1−m) λ^(t0−1−m) v_m k'_mᵀ; token n = t0 + r − 1 of the
// block takes dO_n·λ^r (T + r S) from before it, its block's pairs directly (fp32 C × C scores).
// One CTA per (b·H + h, block of CB features): its state columns are the CB kc columns, then
// the CB ks ones (2·CB = 32: lane = column). q: the cos part at q + row·ldq + h·qHead + c, the
// sin part qSin further (the fast path's planes: qHead = dh, qSin = 2D; the reference path's
// [cos | sin] per head: qHead = 2 dh, qSin = dh); k alike; v and dO at h·DV. partial[b·D + h·dh +
// c] = the f64 sum over the (b, h) sequence (la_dtheta_sum adds the b in order).
template <int DV, int CB, int C> struct DthetaRelative {
  static constexpr int COLS = 2 * CB, LDB = DV + 2, LDW = C + 1;
  // fp32 [S, T (DV × COLS), K', Q' (C × COLS), W (C × LDW), λ^0..C], then bf16 [dO, v (C × LDB)]
  static constexpr int FLOATS = 2 * DV * COLS + 2 * C * COLS + C * LDW + C + 1;
  static constexpr int SMEM = (FLOATS + 1) / 2 * 2 * 4 + 2 * C * LDB * 2;
};

template <int DV, int CB, int C, int BLOCK>
__device__ __forceinline__ void
la_dtheta_relative(const bf16 *q, long long ldq, long long qHead, long long qSin, const bf16 *k,
                   long long ldk, long long kHead, long long kSin, const bf16 *v, long long ldv,
                   const bf16 *dO, long long lddo, const float *slopes, int N, int H, int dh,
                   double *partial) {
  using P = DthetaRelative<DV, CB, C>;
  static_assert(P::COLS == 32 && BLOCK % 32 == 0 && C % (BLOCK / 32) == 0, "lane = column");
  static_assert(DV % (BLOCK / 32) == 0 && (DV / (BLOCK / 32)) % 2 == 0, "state rows per warp");
  static_assert(BLOCK == 256 && C == 64 && DV % 2 == 0, "the score tile: 16 × 16 threads, 4 × 4");
  constexpr int WARPS = BLOCK / 32, NPW = C / WARPS, JPW = DV / WARPS, COLS = P::COLS;
  extern __shared__ __align__(16) unsigned char la_dtheta_smem[];
  float *sS = reinterpret_cast<float *>(la_dtheta_smem), *sT = sS + DV * COLS;
  float *sK = sT + DV * COLS, *sQ = sK + C * COLS, *sW = sQ + C * COLS, *lam = sW + C * P::LDW;
  bf16 *sO = reinterpret_cast<bf16 *>(la_dtheta_smem + (P::FLOATS + 1) / 2 * 2 * 4);
  bf16 *sV = sO + C * P::LDB;
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int bh = blockIdx.x, b = bh / H, h = bh % H, c0 = blockIdx.y * CB;
  const long long row0 = static_cast<long long>(b) * N;
  const float slope = slopes[h];
  for (int i = tid; i <= C; i += BLOCK)
    lam[i] = expf(-slope * static_cast<float>(i));
  // This thread's state entries (rows warp·JPW + jj, column lane), kept in registers.
  float S[JPW], T[JPW];
#pragma unroll
  for (int jj = 0; jj < JPW; ++jj)
    S[jj] = T[jj] = 0.0f;
  for (int i = tid; i < DV * COLS; i += BLOCK)
    sS[i] = sT[i] = 0.0f;
  const int col = lane, fc = c0 + (col < CB ? col : col - CB);
  // Column col of k' (kc of feature fc, then ks); of q the factor its score column takes in dθ:
  // −qs for a kc column, +qc for a ks column.
  const long long kcol = h * kHead + fc + (col < CB ? 0 : kSin);
  const long long qcol = h * qHead + fc + (col < CB ? qSin : 0);
  const float qsign = col < CB ? -1.0f : 1.0f;
  double acc = 0.0;
  __syncthreads();
  for (int t0 = 0; t0 < N; t0 += C) {
    const int len = min(C, N - t0);
    // The block's dO, v (bf16 pairs), k' and q' columns; zeros past the sequence's end.
    for (int i = tid; i < C * DV / 2; i += BLOCK) {
      const int n = i / (DV / 2), j = 2 * (i % (DV / 2));
      __nv_bfloat162 o = __float2bfloat162_rn(0.0f), x = o;
      if (n < len) {
        const long long r = row0 + t0 + n;
        o = *reinterpret_cast<const __nv_bfloat162 *>(dO + r * lddo + h * DV + j);
        x = *reinterpret_cast<const __nv_bfloat162 *>(v + r * ldv + h * DV + j);
      }
      *reinterpret_cast<__nv_bfloat162 *>(sO + n * P::LDB + j) = o;
      *reinterpret_cast<__nv_bfloat162 *>(sV + n * P::LDB + j) = x;
    }
    for (int n = warp; n < C; n += WARPS) {
      float kv = 0.0f, qv = 0.0f;
      if (n < len) {
        const long long r = row0 + t0 + n;
        kv = __bfloat162float(k[r * ldk + kcol]);
        qv = qsign * __bfloat162float(q[r * ldq + qcol]);
      }
      sK[n * COLS + col] = kv;
      sQ[n * COLS + col] = qv;
    }
    __syncthreads();
    // The block's weighted scores W_nm = (n − m) λ^(n−m) (dO_n·v_m), m < n (4 × 4 per thread:
    // n = tn + 16a, m = tm + 16b).
    {
      const int tn = tid / 16, tm = tid % 16;
      float a[4][4] = {};
      for (int j = 0; j < DV; j += 2) {
        float2 on[4], vm[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          on[i] = __bfloat1622float2(
              *reinterpret_cast<const __nv_bfloat162 *>(sO + (tn + 16 * i) * P::LDB + j));
          vm[i] = __bfloat1622float2(
              *reinterpret_cast<const __nv_bfloat162 *>(sV + (tm + 16 * i) * P::LDB + j));
        }
#pragma unroll
        for (int x = 0; x < 4; ++x)
#pragma unroll
          for (int y = 0; y < 4; ++y)
            a[x][y] += on[x].x * vm[y].x + on[x].y * vm[y].y;
      }
#pragma unroll
      for (int x = 0; x < 4; ++x)
#pragma unroll
        for (int y = 0; y < 4; ++y) {
          const int n = tn + 16 * x, m = tm + 16 * y;
          sW[n * P::LDW + m] = m < n ? static_cast<float>(n - m) * lam[n - m] * a[x][y] : 0.0f;
        }
    }
    __syncthreads();
    // Per token n = warp + WARPS·i of the block, column col: from before the block
    // λ^r (dO_n·T + r dO_n·S), r = n + 1, plus Σ_{m<n} W_nm k'_m; then × its q factor.
    {
      float X[NPW], Y[NPW];
#pragma unroll
      for (int i = 0; i < NPW; ++i)
        X[i] = Y[i] = 0.0f;
      if (t0 > 0)
        for (int j = 0; j < DV; j += 2) {
          const float s0 = sS[j * COLS + col], s1 = sS[(j + 1) * COLS + col];
          const float u0 = sT[j * COLS + col], u1 = sT[(j + 1) * COLS + col];
#pragma unroll
          for (int i = 0; i < NPW; ++i) {
            const float2 o = __bfloat1622float2(
                *reinterpret_cast<const __nv_bfloat162 *>(sO + (warp + WARPS * i) * P::LDB + j));
            X[i] += o.x * u0 + o.y * u1;
            Y[i] += o.x * s0 + o.y * s1;
          }
        }
      float G[NPW];
#pragma unroll
      for (int i = 0; i < NPW; ++i) {
        const int r = warp + WARPS * i + 1;
        G[i] = lam[r] * (X[i] + static_cast<float>(r) * Y[i]);
      }
      for (int m = 0; m < C - 1; ++m) {
        const float km = sK[m * COLS + col];
#pragma unroll
        for (int i = 0; i < NPW; ++i)
          G[i] += sW[(warp + WARPS * i) * P::LDW + m] * km;
      }
      float blockSum = 0.0f;
#pragma unroll
      for (int i = 0; i < NPW; ++i)
        blockSum += sQ[(warp + WARPS * i) * COLS + col] * G[i];
      acc += static_cast<double>(blockSum);
    }
    __syncthreads();
    // The states at the block's end: T ← λ^len (T + len S) + Σ_m d λ^d v_m k'_m,
    // S ← λ^len S + Σ_m λ^d v_m k'_m, d = len − 1 − m.
    {
      const float ll = lam[len], fl = static_cast<float>(len);
#pragma unroll
      for (int jj = 0; jj < JPW; ++jj) {
        T[jj] = ll * (T[jj] + fl * S[jj]);
        S[jj] = ll * S[jj];
      }
      for (int m = 0; m < len; ++m) {
        const int d = len - 1 - m;
        const float ks = lam[d] * sK[m * COLS + col], kt = static_cast<float>(d) * ks;
#pragma unroll
        for (int jj = 0; jj < JPW; jj += 2) {
          const float2 x = __bfloat1622float2(
              *reinterpret_cast<const __nv_bfloat162 *>(sV + m * P::LDB + warp * JPW + jj));
          S[jj] += x.x * ks;
          T[jj] += x.x * kt;
          S[jj + 1] += x.y * ks;
          T[jj + 1] += x.y * kt;
        }
      }
#pragma unroll
      for (int jj = 0; jj < JPW; ++jj) {
        sS[(warp * JPW + jj) * COLS + col] = S[jj];
        sT[(warp * JPW + jj) * COLS + col] = T[jj];
      }
    }
    __syncthreads();
  }
  // Feature c0 + c: its kc and ks columns' sums over the warps, in order.
  double *red = reinterpret_cast<double *>(la_dtheta_smem);
  red[tid] = acc;
  __syncthreads();
  if (tid < CB) {
    double sum = 0.0;
    for (int w = 0; w < WARPS; ++w)
      sum += red[w * 32 + tid] + red[w * 32 + CB + tid];
    partial[static_cast<long long>(b) * H * dh + h * dh + c0 + tid] = sum;
  }
}

// la_dtheta_relative on tensor cores (mma.sync m16n8k16 bf16, fp32 accumulators, operands from
// shared memory by ldmatrix): the same sums by blocks of C = 64 tokens, one CTA of 8 warps per
// (b·H + h, block of 16 features, segment).
// Matrix products: the scores A = dO·vᵀ (bf16 operands, exact), X = dO·T, Y = dO·S (the states
// fp32, split as bf16 hi + lo: 16 mantissa bits), Z = W·k' (W = (n−m) λ^(n−m) A, hi + lo), and
// the state update S += vᵀ·(λ^d k'), T += vᵀ·(d λ^d k') (the weighted keys hi + lo). The states
// stay in the accumulators of the update (warp w: state rows 16w..16w+15, all 32 columns) from
// block to block; their hi + lo go to shared memory for the next block's X, Y. W goes from the
// scores' accumulators to shared memory as hi + lo; G = λ^r (X + r Y) + Z (r = n + 1) is
// weighted by q' and summed per column in registers.
template <int DV, int CB, int C> struct DthetaRelativeTc {
  // Row lengths in elements: dO, v; k', q', the weighted keys; W; the states' hi + lo (each row
  // padded by 16 bytes: the 8 rows of an ldmatrix fall in different 16-byte bank groups).
  static constexpr int COLS = 2 * CB, LO = DV + 8, LK = COLS + 8, LW = C + 8, LS = COLS + 8;
  static constexpr int align(int b) { return (b + 127) / 128 * 128; }
  static constexpr int O_BYTES = align(C * LO * 2), K_BYTES = align(C * LK * 2),
                       W_BYTES = align(C * LW * 2), S_BYTES = align(DV * LS * 2),
                       L_BYTES = align((C + 1) * 4);
  // dO, v; k', q', the weighted keys λ^d k' and d λ^d k' (hi, lo each); W (hi, lo); S and T
  // (hi, lo each); λ^i, i = 0..C.
  static constexpr int OFF_K = 2 * O_BYTES, OFF_W = OFF_K + 6 * K_BYTES,
                       OFF_S = OFF_W + 2 * W_BYTES, OFF_L = OFF_S + 4 * S_BYTES,
                       SMEM = OFF_L + L_BYTES;
};

// x as bf16 hi + lo (hi = bf16(x), lo = bf16(x − hi): 16 mantissa bits between them).
__device__ __forceinline__ void store_hi_lo(bf16 &hi, bf16 &lo, float x) {
  const bf16 h = __float2bfloat16(x);
  hi = h;
  lo = __float2bfloat16(x - __bfloat162float(h));
}
// The pair (x0, x1) as bf16x2 hi + lo, stored at shared addresses hi, lo.
__device__ __forceinline__ void st_hi_lo_pair(unsigned hi, unsigned lo, float x0, float x1) {
  const __nv_bfloat162 h = __floats2bfloat162_rn(x0, x1);
  const float2 hf = __bfloat1622float2(h);
  const __nv_bfloat162 l = __floats2bfloat162_rn(x0 - hf.x, x1 - hf.y);
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(hi), "r"(*reinterpret_cast<const unsigned *>(&h))
               : "memory");
  asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(lo), "r"(*reinterpret_cast<const unsigned *>(&l))
               : "memory");
}
// d[s] += a · (B hi + B lo), s = 0, 1: the two n8 tiles of a 16 × 16 K × N tile stored as hi
// and lo (transposed ldmatrix, this lane's row address at hi, lo), hi first.
__device__ __forceinline__ void dt_mma_hi_lo(float (*d)[4], const unsigned (&a)[4], unsigned hi,
                                             unsigned lo) {
  unsigned bh[4], bl[4];
  mma::ldsm_x4_t(bh, hi);
  mma::ldsm_x4_t(bl, lo);
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    mma::mma16816(d[s], a, bh[2 * s], bh[2 * s + 1]);
    mma::mma16816(d[s], a, bl[2 * s], bl[2 * s + 1]);
  }
}

template <int DV, int CB, int C, int BLOCK>
__device__ __forceinline__ void
la_dtheta_relative_tc(const bf16 *q, long long ldq, long long qHead, long long qSin, const bf16 *k,
                      long long ldk, long long kHead, long long kSin, const bf16 *v, long long ldv,
                      const bf16 *dO, long long lddo, const float *slopes, int N, int H, int dh,
                      double *partial, float *segStates, int segLen, int statesOnly) {
  using P = DthetaRelativeTc<DV, CB, C>;
  constexpr int COLS = P::COLS, WARPS = BLOCK / 32, LO = P::LO, LK = P::LK, LW = P::LW, LS = P::LS;
  static_assert(BLOCK == 256 && C == 64 && COLS == 32 && DV == 128, "the tile assignment");
  extern __shared__ __align__(128) unsigned char la_dtheta_tc_smem[];
  unsigned char *const base = la_dtheta_tc_smem;
  bf16 *sO = reinterpret_cast<bf16 *>(base), *sV = reinterpret_cast<bf16 *>(base + P::O_BYTES);
  bf16 *sK = reinterpret_cast<bf16 *>(base + P::OFF_K);
  bf16 *sQ = reinterpret_cast<bf16 *>(base + P::OFF_K + P::K_BYTES);
  bf16 *sKsh = reinterpret_cast<bf16 *>(base + P::OFF_K + 2 * P::K_BYTES);
  bf16 *sKsl = reinterpret_cast<bf16 *>(base + P::OFF_K + 3 * P::K_BYTES);
  bf16 *sKth = reinterpret_cast<bf16 *>(base + P::OFF_K + 4 * P::K_BYTES);
  bf16 *sKtl = reinterpret_cast<bf16 *>(base + P::OFF_K + 5 * P::K_BYTES);
  const unsigned aO = mma::smem_u32(sO), aV = mma::smem_u32(sV), aK = mma::smem_u32(sK),
                 aKsh = mma::smem_u32(sKsh), aKsl = mma::smem_u32(sKsl), aKth = mma::smem_u32(sKth),
                 aKtl = mma::smem_u32(sKtl), aWh = mma::smem_u32(base + P::OFF_W),
                 aWl = aWh + P::W_BYTES, aSh = mma::smem_u32(base + P::OFF_S),
                 aSl = aSh + P::S_BYTES, aTh = aSl + P::S_BYTES, aTl = aTh + P::S_BYTES;
  float *lam = reinterpret_cast<float *>(base + P::OFF_L);

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, gid = lane / 4, tig = lane % 4;
  const int bh = blockIdx.x, b = bh / H, h = bh % H, c0 = blockIdx.y * CB;
  const long long row0 = static_cast<long long>(b) * N;
  const float slope = slopes[h];
  // Segment g = blockIdx.z of gridDim.z: tokens [s0, s1), segLen a multiple of C. statesOnly:
  // the segment's own S, T (from zero) into segStates, for the segments after it; else dθ over
  // the segment from the states of the segments before it (their S, T in order:
  // T ← λ^L (T + L·S) + T_g, S ← λ^L S + S_g).
  const int g = blockIdx.z, s0 = g * segLen, s1 = min(N, s0 + segLen);
  auto statesOf = [&](int seg) {
    return segStates + ((static_cast<long long>(seg) * gridDim.x + bh) * gridDim.y + blockIdx.y) *
                           2 * DV * COLS;
  };
  for (int i = tid; i <= C; i += BLOCK)
    lam[i] = expf(-slope * static_cast<float>(i));
  // This thread's state entries: S[t][e], T[t][e] at row 16·warp + gid + 8 (e / 2), column
  // 8t + 2·tig + e % 2 (segStates: entry row·COLS + column, S then T).
  float S[4][4], T[4][4];
  {
    const bool prefix = !statesOnly && g > 0;
    const float lL = expf(-slope * static_cast<float>(segLen)), fL = static_cast<float>(segLen);
#pragma unroll
    for (int t = 0; t < 4; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = (16 * warp + gid + 8 * (e / 2)) * COLS + 8 * t + 2 * tig + e % 2;
        float sv = 0.0f, tv = 0.0f;
        for (int seg = 0; prefix && seg < g; ++seg) {
          const float *st = statesOf(seg);
          tv = lL * (tv + fL * sv) + st[DV * COLS + i];
          sv = lL * sv + st[i];
        }
        S[t][e] = sv;
        T[t][e] = tv;
      }
  }
  // The states' hi + lo (rows j, columns c; K × N operands of X, Y) for the next block.
  auto splitStates = [&]() {
#pragma unroll
    for (int t = 0; t < 4; ++t)
#pragma unroll
      for (int e = 0; e < 4; e += 2) {
        const unsigned at = 2u * ((16 * warp + gid + 4 * e) * LS + 8 * t + 2 * tig);
        st_hi_lo_pair(aSh + at, aSl + at, S[t][e], S[t][e + 1]);
        st_hi_lo_pair(aTh + at, aTl + at, T[t][e], T[t][e + 1]);
      }
  };
  if (!statesOnly)
    splitStates();
  // Column col of k' and q' (as la_dtheta_relative): kc then ks of feature c0 + col mod CB; of
  // q the factor −qs (kc columns) or +qc (ks columns).
  const int col = lane, fc = c0 + (col < CB ? col : col - CB);
  const long long kcol = h * kHead + fc + (col < CB ? 0 : kSin);
  const long long qcol = h * qHead + fc + (col < CB ? qSin : 0);
  // Σ over the blocks of q'·G, per column 16·(warp % 2) + 8s + 2·tig + e of this thread.
  double acc[2][2] = {};
  // The next block's dO, v (bf16 pairs: element pair u of this thread at row tid / (DV / 2) +
  // u·BLOCK / (DV / 2), column 2 (tid % (DV / 2))), k' and q' columns (rows warp + WARPS·u),
  // fetched into registers while the current block is worked on (nothing waits on the loads
  // before the next block's step 1); zeros past the sequence's end.
  constexpr int PAIRS = C * DV / 2 / BLOCK, ROWS = C / WARPS, PSTEP = BLOCK / (DV / 2);
  __nv_bfloat162 po[PAIRS], pv[PAIRS];
  bf16 pk[ROWS], pq[ROWS];
  const int pn = tid / (DV / 2), pj = 2 * (tid % (DV / 2));
  auto fetch = [&](int start) {
    const int count = min(C, s1 - start); // the block's len (segLen a multiple of C or not)
    const long long r = row0 + start;
    const bf16 *o = dO + (r + pn) * lddo + h * DV + pj, *x = v + (r + pn) * ldv + h * DV + pj;
#pragma unroll
    for (int u = 0; u < PAIRS; ++u) {
      po[u] = pv[u] = __float2bfloat162_rn(0.0f);
      if (pn + PSTEP * u < count) {
        po[u] = *reinterpret_cast<const __nv_bfloat162 *>(o + PSTEP * u * lddo);
        pv[u] = *reinterpret_cast<const __nv_bfloat162 *>(x + PSTEP * u * ldv);
      }
    }
    const bf16 *kp = k + (r + warp) * ldk + kcol, *qp = q + (r + warp) * ldq + qcol;
#pragma unroll
    for (int u = 0; u < ROWS; ++u) {
      pk[u] = pq[u] = __float2bfloat16(0.0f);
      if (warp + WARPS * u < count) {
        pk[u] = kp[WARPS * u * ldk];
        pq[u] = qp[WARPS * u * ldq];
      }
    }
  };
  if (s0 < s1)
    fetch(s0);
  __syncthreads();
  // ldmatrix lane addresses (byte offsets within a tile): a row-major A operand (rows lane % 16,
  // column 8 (lane / 16)); a B operand stored N × K (rows (lane % 8) + 8 (lane / 16), column
  // 8 ((lane / 8) % 2)); a B operand stored K × N, transposed (rows (lane % 8) + 8 ((lane / 8) %
  // 2), column 8 (lane / 16)); Aᵀ of a matrix stored K × M (as the N × K B operand).
  const int rA = lane % 16, cA = 8 * (lane / 16), rNK = lane % 8 + 8 * (lane / 16),
            cNK = 8 * ((lane / 8) % 2), rKN = lane % 8 + 8 * ((lane / 8) % 2),
            cKN = 8 * (lane / 16);
  for (int t0 = s0; t0 < s1; t0 += C) {
    const int len = min(C, s1 - t0);
    // 1. The block's fetched dO, v, k' and q' factors (bf16) into shared memory, and the
    //    weighted keys λ^d k', d λ^d k' (d = len − 1 − m; zero from len on) as hi + lo.
#pragma unroll
    for (int u = 0; u < PAIRS; ++u) {
      const int n = pn + PSTEP * u;
      *reinterpret_cast<__nv_bfloat162 *>(sO + n * LO + pj) = po[u];
      *reinterpret_cast<__nv_bfloat162 *>(sV + n * LO + pj) = pv[u];
    }
#pragma unroll
    for (int u = 0; u < ROWS; ++u) {
      const int m = warp + WARPS * u;
      sK[m * LK + col] = pk[u];
      sQ[m * LK + col] = col < CB ? __hneg(pq[u]) : pq[u];
      float ks = 0.0f, kt = 0.0f;
      if (m < len) {
        const int d = len - 1 - m;
        ks = lam[d] * __bfloat162float(pk[u]);
        kt = static_cast<float>(d) * ks;
      }
      store_hi_lo(sKsh[m * LK + col], sKsl[m * LK + col], ks);
      store_hi_lo(sKth[m * LK + col], sKtl[m * LK + col], kt);
    }
    __syncthreads();
    if (t0 + C < s1)
      fetch(t0 + C); // in flight during steps 2-4
    if (!statesOnly) {
      // 2. The scores A = dO·vᵀ on and below the diagonal, 16 × 16 tiles (tn, tm ≤ tn): tile p
      //    = warp, warp + 8 of the 10; W_nm = (n − m) λ^(n−m) A_nm (m < n, else 0) as hi + lo.
      for (int p = warp; p < 10; p += WARPS) {
        const int tn = p < 1 ? 0 : p < 3 ? 1 : p < 6 ? 2 : 3, tm = p - tn * (tn + 1) / 2;
        float a[2][4] = {};
#pragma unroll
        for (int kk = 0; kk < DV; kk += 16) {
          unsigned fa[4], fb[4];
          mma::ldsm_x4(fa, aO + 2u * ((16 * tn + rA) * LO + kk + cA));
          mma::ldsm_x4(fb, aV + 2u * ((16 * tm + rNK) * LO + kk + cNK));
          mma::mma16816(a[0], fa, fb[0], fb[1]);
          mma::mma16816(a[1], fa, fb[2], fb[3]);
        }
#pragma unroll
        for (int s = 0; s < 2; ++s)
#pragma unroll
          for (int e = 0; e < 4; e += 2) {
            const int n = 16 * tn + gid + 4 * e, m = 16 * tm + 8 * s + 2 * tig;
            const float w0 = m < n ? static_cast<float>(n - m) * lam[n - m] * a[s][e] : 0.0f;
            const float w1 =
                m + 1 < n ? static_cast<float>(n - m - 1) * lam[n - m - 1] * a[s][e + 1] : 0.0f;
            const unsigned at = 2u * (n * LW + m);
            st_hi_lo_pair(aWh + at, aWl + at, w0, w1);
          }
      }
      __syncthreads();
      // 3. X = dO·T, Y = dO·S (the states before the block), Z = W·k' for rows 16 tn.., columns
      //    16 hc..16 hc + 15 (tn = warp / 2, hc = warp % 2); G = λ^r (X + r Y) + Z, r = n + 1,
      //    times its q factor, summed per column.
      const int tn = warp / 2, hc = warp % 2;
      float x[2][4] = {}, y[2][4] = {}, z[2][4] = {};
      if (t0 > 0) {
#pragma unroll
        for (int kk = 0; kk < DV; kk += 16) {
          unsigned fa[4];
          mma::ldsm_x4(fa, aO + 2u * ((16 * tn + rA) * LO + kk + cA));
          const unsigned at = 2u * ((kk + rKN) * LS + 16 * hc + cKN);
          dt_mma_hi_lo(x, fa, aTh + at, aTl + at);
          dt_mma_hi_lo(y, fa, aSh + at, aSl + at);
        }
      }
      for (int kk = 0; kk <= 16 * tn; kk += 16) { // W is zero right of the diagonal tile
        unsigned wh[4], wl[4], fk[4];
        mma::ldsm_x4(wh, aWh + 2u * ((16 * tn + rA) * LW + kk + cA));
        mma::ldsm_x4(wl, aWl + 2u * ((16 * tn + rA) * LW + kk + cA));
        mma::ldsm_x4_t(fk, aK + 2u * ((kk + rKN) * LK + 16 * hc + cKN));
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          mma::mma16816(z[s], wh, fk[2 * s], fk[2 * s + 1]);
          mma::mma16816(z[s], wl, fk[2 * s], fk[2 * s + 1]);
        }
      }
#pragma unroll
      for (int s = 0; s < 2; ++s) {
        float sum0 = 0.0f, sum1 = 0.0f;
#pragma unroll
        for (int e = 0; e < 4; e += 2) {
          const int n = 16 * tn + gid + 4 * e, c = 16 * hc + 8 * s + 2 * tig;
          const float r = static_cast<float>(n + 1), l = lam[n + 1];
          const float2 qf =
              __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162 *>(sQ + n * LK + c));
          sum0 += qf.x * (l * (x[s][e] + r * y[s][e]) + z[s][e]);
          sum1 += qf.y * (l * (x[s][e + 1] + r * y[s][e + 1]) + z[s][e + 1]);
        }
        acc[s][0] += static_cast<double>(sum0);
        acc[s][1] += static_cast<double>(sum1);
      }
    } // !statesOnly
    // 4. The states at the block's end: T ← λ^len (T + len S) + vᵀ·(d λ^d k'), S ← λ^len S +
    //    vᵀ·(λ^d k'), d = len − 1 − m; warp w the state rows 16w.., all columns.
    {
      const float ll = lam[len], fl = static_cast<float>(len);
#pragma unroll
      for (int t = 0; t < 4; ++t)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          T[t][e] = ll * (T[t][e] + fl * S[t][e]);
          S[t][e] = ll * S[t][e];
        }
#pragma unroll
      for (int kk = 0; kk < C; kk += 16) {
        unsigned fa[4]; // vᵀ: element (j, m) = v[m][j]
        mma::ldsm_x4_t(fa, aV + 2u * ((kk + rNK) * LO + 16 * warp + cNK));
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const unsigned at = 2u * ((kk + rKN) * LK + 16 * half + cKN);
          dt_mma_hi_lo(S + 2 * half, fa, aKsh + at, aKsl + at);
          dt_mma_hi_lo(T + 2 * half, fa, aKth + at, aKtl + at);
        }
      }
    }
    __syncthreads();
    // 5. The new states' hi + lo for the next block's X, Y (the block's reads are done).
    if (!statesOnly)
      splitStates();
  }
  if (statesOnly) {
    float *st = statesOf(g);
#pragma unroll
    for (int t = 0; t < 4; ++t)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int i = (16 * warp + gid + 8 * (e / 2)) * COLS + 8 * t + 2 * tig + e % 2;
        st[i] = S[t][e];
        st[DV * COLS + i] = T[t][e];
      }
    return;
  }
  // The columns' sums: over the 8 rows of a warp's tile (lanes of one tig), then over the 4 row
  // tiles in order; feature c0 + c its kc and ks columns.
#pragma unroll
  for (int s = 0; s < 2; ++s)
#pragma unroll
    for (int e = 0; e < 2; ++e)
#pragma unroll
      for (int o = 4; o < 32; o *= 2)
        acc[s][e] += __shfl_xor_sync(0xffffffffu, acc[s][e], o);
  __syncthreads();                                // (every warp is past its last read of dO)
  double *red = reinterpret_cast<double *>(base); // [4 row tiles][COLS]
  if (gid == 0)
#pragma unroll
    for (int s = 0; s < 2; ++s)
#pragma unroll
      for (int e = 0; e < 2; ++e)
        red[(warp / 2) * COLS + 16 * (warp % 2) + 8 * s + 2 * tig + e] = acc[s][e];
  __syncthreads();
  if (tid < CB) {
    double sum = 0.0;
    for (int t = 0; t < 4; ++t)
      sum += red[t * COLS + tid] + red[t * COLS + CB + tid];
    partial[(static_cast<long long>(b) * gridDim.z + g) * H * dh + h * dh + c0 + tid] = sum;
  }
}

// dθ[i] = f32(dθ[i] + Σ_chunk partial[chunk · D + i]), the chunks in order. grid.x = ceil(D /
// BLOCK).
template <int BLOCK>
__device__ __forceinline__ void la_dtheta_sum(const double *partial, int chunks, int D,
                                              float *dtheta) {
  const int i = blockIdx.x * BLOCK + threadIdx.x;
  if (i >= D)
    return;
  double sum = 0.0;
  for (int k = 0; k < chunks; ++k)
    sum += partial[static_cast<long long>(k) * D + i];
  dtheta[i] = static_cast<float>(static_cast<double>(dtheta[i]) + sum);
}

} // namespace la_bw
} // namespace tnlm
