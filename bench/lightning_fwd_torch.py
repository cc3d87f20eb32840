#!/usr/bin/env python3
"""Comparison baselines for bench/lightning_fwd.cu, run on the device machine (PyTorch 2.11).

For the three PERFORMANCE.md shapes (D = 128, bf16, layout [B, N, H, D]) prints one JSON line
per case in the same format as the CUDA benchmark:
  * torch_sdpa_flash: softmax attention, causal, FlashAttention backend (forward only);
  * torch_naive_linear: ((Q Kᵀ) ⊙ M) V with M[i, j] = exp(-s_h (i - j)) for j <= i (bf16
    matmuls, the decay mask precomputed outside the timing); skipped where the N x N scores
    would not fit comfortably (> 24 GB).
With --bwd, forward + backward (q, k, v, do -> o, dq, dk, dv) instead, one JSON line per case:
  * fla_chunk_simple_gla: flash-linear-attention's Triton kernels (fla-org/flash-linear-attention,
    not installed on the device machine: scripts/device-bench-lightning puts a fetched copy on
    PYTHONPATH), the same decay as a per-head log decay g_gamma = -s_h, scale 1;
  * torch_sdpa_flash: softmax attention, causal (FlashAttention backend);
  * torch_naive_linear: the masked form above through autograd (where it fits);
  each with the max and L2 errors of o, dq, dk, dv against fp32 (the naive masked form in fp32
  on batch 0 and the first heads; softmax attention against PyTorch's math backend in fp32)
  and its extra memory: the peak allocated during fwd+bwd beyond the inputs and the four
  outputs.
Timing: CUDA events around each call, median and min of `reps` calls after warm-up.
The I/O floor is the linear-attention one (8E bytes / 4.3 TB/s), reported for every row so
the rows can be compared directly.
"""
import json
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BW = 4.3e12
D = 128
SHAPES = [(8, 16, 2048), (4, 16, 8192), (1, 16, 32768)]
REPS = 30


def alibi(H):
    def pow2(n):
        return [2.0 ** (-8.0 * (h + 1) / n) for h in range(n)]

    P = 1
    while P * 2 <= H:
        P *= 2
    s = pow2(P)
    if P < H:
        s += pow2(2 * P)[0::2][: H - P]
    return s


def timeit(fn, reps=REPS, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2], ts[0]


def line(impl, B, H, N, med, mn, flops, extra=None):
    E = B * H * N * D
    floor = 8 * E / BW * 1e3
    d = {"op": "lightning_attention_fwd" if impl != "torch_sdpa_flash" else "softmax_attention_fwd",
         "impl": impl, "B": B, "H": H, "N": N, "D": D, "dtype": "bf16",
         "median_ms": round(med, 4), "min_ms": round(mn, 4), "io_floor_ms": round(floor, 4),
         "tb_per_s": round(8 * E / (med * 1e-3) / 1e12, 3),
         "pct_io_floor": round(100 * floor / med, 1),
         "tflop_per_s": round(flops / (med * 1e-3) / 1e12, 1)}
    if extra:
        d.update(extra)
    print(json.dumps(d), flush=True)


def decay_mask(s, N, dev, dtype):
    i = torch.arange(N, device=dev)
    dist = (i[:, None] - i[None, :]).float()
    return torch.where(dist >= 0, torch.exp(-s[:, None, None] * dist.clamp(min=0)),
                       torch.zeros((), device=dev)).to(dtype)  # [H, N, N]


def naive_linear(q, k, v, M):  # [B, H, N, D] each, M [H, N, N]
    return torch.matmul(torch.matmul(q, k.transpose(-1, -2)) * M, v)


def errors(outs, refs):
    d = {}
    for name, o, r in zip(("o", "dq", "dk", "dv"), outs, refs):
        o, r = o.float(), r.float()
        d[name + "_max_rel_err"] = float((o - r).abs().max() / r.abs().max())
        d[name + "_rel_l2_err"] = float((o - r).norm() / r.norm())
    return d


def bwd_main():
    """Forward + backward baselines (see the module's docstring)."""
    torch.manual_seed(0)
    dev = "cuda"
    try:
        from fla.ops.simple_gla import chunk_simple_gla
        fla_error = None
    except Exception as e:  # not fetched, or a dependency missing: reported, not fatal
        chunk_simple_gla, fla_error = None, f"{type(e).__name__}: {e}"
    print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
                      "fla": fla_error or "imported"}), flush=True)
    for B, H, N in SHAPES:
        E = B * H * N * D
        x = torch.randn(4, B, N, H, D, device=dev, dtype=torch.bfloat16)
        q, k, v, do = F.silu(x[0]), F.silu(x[1]), x[2].clone(), x[3].clone()
        del x
        s = torch.tensor(alibi(H), device=dev, dtype=torch.float32)
        # fp32 references on batch 0 and the first heads (the N x N form through autograd)
        nh = 2 if N <= 8192 else 1
        sub = [t[:1, :, :nh].float().transpose(1, 2).contiguous().requires_grad_(True)
               for t in (q, k, v)]
        dsub = do[:1, :, :nh].float().transpose(1, 2)
        Mf = decay_mask(s[:nh], N, dev, torch.float32)
        o_ref = naive_linear(*sub, Mf)
        lin_ref = [o_ref.detach()] + list(torch.autograd.grad(o_ref, sub, dsub))
        del o_ref, Mf
        with sdpa_kernel(SDPBackend.MATH):
            o_ref = F.scaled_dot_product_attention(*sub, is_causal=True)
            sm_ref = [o_ref.detach()] + list(torch.autograd.grad(o_ref, sub, dsub))
        del o_ref
        torch.cuda.empty_cache()

        def run(impl, fwd, refs, layout_bnhd, note, flops):
            if layout_bnhd:
                ins = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
                g = do
            else:
                ins = [t.detach().transpose(1, 2).contiguous().requires_grad_(True)
                       for t in (q, k, v)]
                g = do.transpose(1, 2).contiguous()

            def step():
                o = fwd(*ins)
                return [o] + list(torch.autograd.grad(o, ins, g))

            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            outs = step()
            torch.cuda.synchronize()
            extra = torch.cuda.max_memory_allocated() - base - 4 * E * 2
            if layout_bnhd:
                got = [t[:1, :, :nh].transpose(1, 2) for t in outs]
            else:
                got = [t[:1, :nh] for t in outs]
            err = errors(got, refs)
            del outs, got
            med, mn = timeit(step, reps=REPS if N <= 8192 else 10, warm=3)
            floor = 22 * E / BW * 1e3
            d = {"op": "lightning_attention_fwd_bwd" if impl != "torch_sdpa_flash"
                 else "softmax_attention_fwd_bwd", "impl": impl, "B": B, "H": H, "N": N,
                 "D": D, "dtype": "bf16", "median_ms": round(med, 4), "min_ms": round(mn, 4),
                 "io_floor_ms": round(floor, 4), "pct_io_floor": round(100 * floor / med, 1),
                 "tflop_per_s": round(flops / (med * 1e-3) / 1e12, 1),
                 "extra_bytes": int(max(extra, 0)), "note": note}
            d.update({k_: round(v_, 6) for k_, v_ in err.items()})
            print(json.dumps(d), flush=True)
            del ins
            torch.cuda.empty_cache()

        if chunk_simple_gla is not None:
            gg = -s

            def fla_fwd(q_, k_, v_):
                o, _ = chunk_simple_gla(q_, k_, v_, g_gamma=gg, scale=1.0)
                return o
            try:
                run("fla_chunk_simple_gla", fla_fwd, lin_ref, True,
                    "fla Triton chunk kernels, g_gamma = -s_h, scale 1", 0)
            except Exception as e:
                print(json.dumps({"impl": "fla_chunk_simple_gla", "B": B, "H": H, "N": N,
                                  "error": f"{type(e).__name__}: {e}"}), flush=True)
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            run("torch_sdpa_flash",
                lambda q_, k_, v_: F.scaled_dot_product_attention(q_, k_, v_, is_causal=True),
                sm_ref, False, "softmax attention, causal (its own fp32 reference); "
                "FLOPs 2.5 x 4BHN^2D/2", 2.5 * 4 * B * H * N * N * D / 2)
        score_bytes = B * H * N * N * 2
        if score_bytes * 4 > 60e9:
            print(json.dumps({"impl": "torch_naive_linear", "op": "lightning_attention_fwd_bwd",
                              "B": B, "H": H, "N": N, "skipped":
                              f"autograd keeps ~4 x {score_bytes / 1e9:.0f} GB of scores"}),
                  flush=True)
        else:
            M = decay_mask(s, N, dev, torch.bfloat16)
            run("torch_naive_linear", lambda q_, k_, v_: naive_linear(q_, k_, v_, M), lin_ref,
                False, "bf16 matmuls through autograd, decay mask precomputed",
                3 * 4 * B * H * N * N * D)
            del M
        del q, k, v, do, sub, dsub, lin_ref, sm_ref
        torch.cuda.empty_cache()
    return 0


def main():
    if "--bwd" in sys.argv[1:]:
        return bwd_main()
    torch.manual_seed(0)
    dev = "cuda"
    print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(0)}),
          flush=True)
    for B, H, N in SHAPES:
        x = torch.randn(3, B, N, H, D, device=dev, dtype=torch.bfloat16)
        q, k, v = F.silu(x[0]), F.silu(x[1]), x[2]
        del x
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, N, D] views
        # --- softmax SDPA (flash), causal ---
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            fn = lambda: F.scaled_dot_product_attention(qt, kt, vt, is_causal=True)
            med, mn = timeit(fn)
        line("torch_sdpa_flash", B, H, N, med, mn, 4 * B * H * N * N * D / 2,
             {"note": "softmax attention, causal; FLOPs 2BHN^2D"})
        # --- naive masked linear attention with decay ---
        score_bytes = B * H * N * N * 2
        if score_bytes > 24e9:
            print(json.dumps({"impl": "torch_naive_linear", "B": B, "H": H, "N": N,
                              "skipped": f"scores need {score_bytes / 1e9:.0f} GB (+ mask)"}),
                  flush=True)
        else:
            s = torch.tensor(alibi(H), device=dev, dtype=torch.float32)
            i = torch.arange(N, device=dev)
            dist = (i[:, None] - i[None, :]).float()
            M = torch.where(dist >= 0, torch.exp(-s[:, None, None] * dist.clamp(min=0)),
                            torch.zeros((), device=dev)).to(torch.bfloat16)  # [H, N, N]
            del dist

            def naive():
                sc = torch.matmul(qt, kt.transpose(-1, -2))
                sc.mul_(M)
                return torch.matmul(sc, vt)

            med, mn = timeit(naive, reps=REPS if N <= 2048 else 10, warm=2)
            extra = {"note": "bf16 matmuls, decay mask precomputed (not timed)",
                     "extra_memory_gb": round((score_bytes * 2 + H * N * N * 2) / 1e9, 1)}
            # accuracy of the naive bf16 form vs fp32 on batch 0, 4 heads
            o = naive()[0, :4].float()
            qf, kf, vf = (t[0, :4].float() for t in (qt, kt, vt))
            of = torch.matmul(torch.matmul(qf, kf.transpose(-1, -2)) * M[:4].float(), vf)
            extra["max_rel_err"] = float((o - of).abs().max() / of.abs().max())
            extra["rel_l2_err"] = float((o - of).norm() / of.norm())
            del o, qf, kf, vf, of, M
            line("torch_naive_linear", B, H, N, med, mn, 4 * B * H * N * N * D, extra)
        del q, k, v, qt, kt, vt
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
