#!/usr/bin/env python3
"""Compares tnlm-train runs (their metrics.jsonl), for scripts/device-train.

  compare-loss-curves.py GPU.jsonl CPU.jsonl --steps=50
      Every step's training loss of the GPU run against the CPU run from the same initial
      weights and windows (--order=sequential). Bound: |gpu - cpu| <= 2 % of the CPU's loss at
      each of the first 50 steps. Why 2 %: the GPU's matrix products take bf16 inputs (relative
      rounding 2^-9 per input) and its activations are stored in bf16, so one step's loss
      differs by ~1e-4 relative and its gradients by ~2 % (rel L2, tnlm-gpu-executor --train);
      AdamW's normalized update turns that into a small fraction of sign-flipped weight updates
      of size lr, which accumulate over the steps; 2 % of the loss at 50 steps is ~4x what
      independent per-weight differences of lr per step would move it, and far below the
      loss's own change over those steps (~55 %), so a GPU run that trains differently fails.
  compare-loss-curves.py GPU.jsonl CPU.jsonl --final
      The GPU run's final validation loss reaches the CPU run's: gpu <= cpu * 1.01 (1 %: two
      runs of the same data and flags differ by that much from bf16 rounding alone).
  compare-loss-curves.py --throughput=RUN.jsonl --params=P --attn-flops=A
      The median step time of steps 3.. (the first steps capture the CUDA graphs), tokens/s and
      MFU = (6 P + 3 A) tokens / time / 989 TFLOP/s (A: the forward's attention FLOPs per token,
      tnlmc --summary; the backward is twice the forward).
"""
import argparse
import json
import math
import statistics
import sys


def load(path):
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not a JSON line ({e})")
    if not rows:
        sys.exit(f"{path}: no metrics")
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("gpu", nargs="?")
    p.add_argument("cpu", nargs="?")
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--bound", type=float, default=0.02)
    p.add_argument("--final", action="store_true")
    p.add_argument("--final-bound", type=float, default=0.01)
    p.add_argument("--throughput")
    p.add_argument("--params", type=float)
    p.add_argument("--attn-flops", type=float, default=0.0)
    p.add_argument("--peak", type=float, default=989e12)
    a = p.parse_args()

    if a.throughput:
        rows = [r for r in load(a.throughput) if "step_s" in r]
        times = [r["step_s"] for r in rows if r["step"] >= 3]
        if not times:
            sys.exit(f"{a.throughput}: fewer than 3 steps")
        tokens = rows[1]["tokens"] - rows[0]["tokens"]
        t = statistics.median(times)
        flops = (6 * a.params + 3 * a.attn_flops) * tokens
        print(f"median step {t * 1e3:.2f} ms over {len(times)} steps, {tokens / t:,.0f} tokens/s, "
              f"MFU {100 * flops / t / a.peak:.1f} % ({flops / t / 1e12:.1f} TFLOP/s); "
              f"first step {rows[0]['step_s'] * 1e3:.1f} ms, last loss {rows[-1]['loss']:.4f}")
        return 0

    if not a.gpu or not a.cpu:
        p.error("give GPU.jsonl and CPU.jsonl (or --throughput)")
    gpu, cpu = load(a.gpu), load(a.cpu)
    if a.final:
        gv = [r["val_loss"] for r in gpu if "val_loss" in r]
        cv = [r["val_loss"] for r in cpu if "val_loss" in r]
        if not gv or not cv:
            sys.exit("a run has no validation loss")
        if gpu[-1]["step"] != cpu[-1]["step"]:
            sys.exit(f"the runs end at different steps: gpu {gpu[-1]['step']}, cpu {cpu[-1]['step']}")
        ok = math.isfinite(gv[-1]) and gv[-1] <= cv[-1] * (1 + a.final_bound)
        print(f"{'ok  ' if ok else 'FAIL'} final validation loss after {gpu[-1]['step']} steps: "
              f"gpu {gv[-1]:.4f}, cpu {cv[-1]:.4f} (gpu <= cpu * {1 + a.final_bound}); "
              f"train loss gpu {gpu[-1]['loss']:.4f}, cpu {cpu[-1]['loss']:.4f}; "
              f"gpu {gpu[-1]['tokens_per_s']:,.0f} tokens/s, cpu {cpu[-1]['tokens_per_s']:,.0f}")
        for g, c in zip([r for r in gpu if "val_loss" in r], [r for r in cpu if "val_loss" in r]):
            print(f"     step {g['step']:5d}: val gpu {g['val_loss']:.4f} cpu {c['val_loss']:.4f}")
        return 0 if ok else 1

    g = {r["step"]: r["loss"] for r in gpu}
    c = {r["step"]: r["loss"] for r in cpu}
    steps = range(1, a.steps + 1)
    missing = [s for s in steps if s not in g or s not in c]
    if missing:
        sys.exit(f"steps missing from a run (log every step: --log-every has no effect on "
                 f"metrics.jsonl): {missing[:5]}")
    worst, worst_step, bad = 0.0, 0, 0
    for s in steps:
        rel = abs(g[s] - c[s]) / abs(c[s])
        if not math.isfinite(g[s]) or rel > a.bound:
            bad += 1
        if rel > worst or not math.isfinite(g[s]):
            worst, worst_step = rel, s
        if s <= 3 or s % 10 == 0:
            print(f"     step {s:3d}: gpu {g[s]:.5f} cpu {c[s]:.5f} rel {rel:.2e}")
    ok = bad == 0
    print(f"{'ok  ' if ok else 'FAIL'} {a.steps} steps: worst relative loss difference {worst:.2e} "
          f"at step {worst_step} (bound {a.bound}); {bad} steps beyond it; loss {c[1]:.4f} -> "
          f"{c[a.steps]:.4f} on the cpu")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
