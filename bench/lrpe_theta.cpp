//===- lrpe_theta.cpp - how bf16 dq', dk' amplify into the LRPE θ gradient ---------===//
//
//   tnlm-bench-lrpe-theta        (CPU only, no arguments)
//
// The LRPE θ gradient of a train step, dθ = Σ_t p·x·(dy_s·cos − dy_c·sin) over the q and k sides
// (cpu::lrpeGrad), on random operands with the 385M's layer-0 shape per head (dh = 128, 6 heads
// at the ALiBi slopes of tnl models, θ as docs/model.md's init), against the all-f32 value:
//   1. dq', dk' of cpu::lightningAttentionGrad rounded once to bf16 (as the GPU stores them);
//   2. the inputs (q', k', v, dO) rounded once to bf16, dq', dk' in f32 from those;
//   3. the relative form (below) on those bf16 inputs, in f64.
// Also the sizes of the q and k sides: each grows like the positions p while their sum does
// not (the gradient flows through nearby tokens, where the two sides cancel), so any 2^-9
// rounding of the rotated planes or of their gradients is amplified about N-fold, in case 2 as
// in case 1: f32 dq', dk' alone do not fix it. The GPU's measured errors against the CPU
// (bench/RESULTS.md, 2026-12-03: 0.087 at 512 tokens, 0.22 at 2 x 2048, 1.1 at 8192) match.
// A fix computes dθ in the relative form (case 3: 2.5e-2 at 8192 tokens where the absolute
// form is off by 1.2) inside the Lightning backward (docs/gpu-training.md, "Still to build").
// About 2 minutes on 2 cores (case 3 is O(N²)).
//
//===----------------------------------------------------------------------===//
#include "runtime/DType.h"
#include "runtime/cpu/Backward.h"
#include "runtime/cpu/Kernels.h"
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>
using namespace tnlm;
static float rb(float x) { return bf16ToF32(f32ToBf16(x)); }
int main() {
  const int64_t B = 1, H = 6, dh = 128, D = H * dh;
  for (int64_t N : {65, 512, 2048, 8192}) {
    std::mt19937 rng(5);
    std::normal_distribution<float> nd(0.f, 1.f);
    std::vector<float> xq(B * N * D), xk(B * N * D), v(B * N * D), dO(B * N * D), theta(D);
    for (auto &a : xq)
      a = 0.3f * nd(rng);
    for (auto &a : xk)
      a = 0.3f * nd(rng);
    for (auto &a : v)
      a = nd(rng);
    for (auto &a : dO)
      a = 0.01f * nd(rng);
    for (int64_t i = 0; i < D; ++i)
      theta[i] = float(std::pow(10000.0, -2.0 * double(i) / double(D)));
    const float sl[6] = {0.25f, 0.0625f, 0.015625f, 0.00390625f, 0.5f, 0.125f};
    std::vector<float> qp(B * N * 2 * D), kp(B * N * 2 * D);
    cpu::lrpe(xq.data(), B, N, H, dh, D, theta.data(), 0, qp.data());
    cpu::lrpe(xk.data(), B, N, H, dh, D, theta.data(), 0, kp.data());
    std::vector<float> dq(B * N * 2 * D), dk(B * N * 2 * D), dv(B * N * D);
    cpu::lightningAttentionGrad(qp.data(), kp.data(), v.data(), B, N, H, 2 * dh, dh, 2 * D, 2 * D,
                                D, sl, dO.data(), D, dq.data(), 2 * D, dk.data(), 2 * D, dv.data(),
                                D, 64);
    auto dtheta = [&](const std::vector<float> &gq, const std::vector<float> &gk) {
      std::vector<float> t(D, 0.f), dx(B * N * D);
      cpu::lrpeGrad(xq.data(), B, N, H, dh, D, theta.data(), 0, gq.data(), dx.data(), D, t.data());
      cpu::lrpeGrad(xk.data(), B, N, H, dh, D, theta.data(), 0, gk.data(), dx.data(), D, t.data());
      return t;
    };
    const std::vector<float> exact = dtheta(dq, dk);
    std::vector<float> dqb = dq, dkb = dk;
    for (auto &a : dqb)
      a = rb(a);
    for (auto &a : dkb)
      a = rb(a);
    const std::vector<float> rounded = dtheta(dqb, dkb);
    // The fix's case: the inputs in bf16 (q', k', v, dO rounded once, as the GPU's forward
    // keeps them), dq', dk' in f32 from those; against the all-f32 dθ.
    std::vector<float> qr = qp, kr = kp, vr = v, dOr = dO;
    for (auto *w : {&qr, &kr, &vr, &dOr})
      for (auto &a : *w)
        a = rb(a);
    std::vector<float> dq2(dq.size()), dk2(dk.size()), dv2(dv.size());
    cpu::lightningAttentionGrad(qr.data(), kr.data(), vr.data(), B, N, H, 2 * dh, dh, 2 * D, 2 * D,
                                D, sl, dOr.data(), D, dq2.data(), 2 * D, dk2.data(), 2 * D,
                                dv2.data(), D, 64);
    const std::vector<float> inputsBf16 = dtheta(dq2, dk2);
    double f2 = 0;
    for (int64_t i = 0; i < D; ++i)
      f2 += double(inputsBf16[i] - exact[i]) * (inputsBf16[i] - exact[i]);
    // 3. The relative form on the same bf16 inputs: dθ_(h,c) = −Σ_{m<=n} (n − m)·dS_nm·(qs_n kc_m
    // − qc_n ks_m), dS_nm = λ^(n−m)·(dO_n · v_m), in f64 (O(N²): the fix's arithmetic, naive).
    std::vector<double> rel(size_t(D), 0.0);
    for (int64_t h = 0; h < H; ++h) {
      const double lam = std::exp(-double(sl[h]));
      for (int64_t n = 0; n < N; ++n) {
        const float *qn = qr.data() + (n * H + h) * 2 * dh, *on = dOr.data() + (n * H + h) * dh;
        double decay = 1.0;
        for (int64_t m = n; m >= 0 && decay > 1e-30; --m, decay *= lam) {
          const float *km = kr.data() + (m * H + h) * 2 * dh, *vm = vr.data() + (m * H + h) * dh;
          double dot = 0;
          for (int64_t c = 0; c < dh; ++c)
            dot += double(on[c]) * vm[c];
          const double w = -double(n - m) * decay * dot;
          if (w == 0.0)
            continue;
          for (int64_t c = 0; c < dh; ++c)
            rel[size_t(h * dh + c)] +=
                w * (double(qn[dh + c]) * km[c] - double(qn[c]) * km[dh + c]);
        }
      }
    }
    double g2 = 0;
    for (int64_t i = 0; i < D; ++i)
      g2 += (rel[size_t(i)] - exact[i]) * (rel[size_t(i)] - exact[i]);
    double e2 = 0, r2 = 0, qs = 0, ks = 0;
    for (int64_t i = 0; i < D; ++i)
      e2 += double(rounded[i] - exact[i]) * (rounded[i] - exact[i]),
          r2 += double(exact[i]) * exact[i];
    // The q side and the k side alone (their sum cancels).
    std::vector<float> zero(dq.size(), 0.f);
    const std::vector<float> qside = dtheta(dq, zero), kside = dtheta(zero, dk);
    for (int64_t i = 0; i < D; ++i)
      qs += double(qside[i]) * qside[i], ks += double(kside[i]) * kside[i];
    std::printf("N=%5lld: dθ rel L2 error from bf16 dq', dk' %.3e; from bf16 inputs and f32 "
                "dq', dk' %.3e; the relative form from bf16 inputs %.3e; |dθ| %.3e, |q side| "
                "%.3e, |k side| %.3e\n",
                (long long)N, std::sqrt(e2 / r2), std::sqrt(f2 / r2), std::sqrt(g2 / r2),
                std::sqrt(r2), std::sqrt(qs), std::sqrt(ks));
    std::fflush(stdout);
  }
}
