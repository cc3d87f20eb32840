#!/usr/bin/env python3
"""Where a decode step's time goes, from `tnlm-bench-decode --trace=FILE` (an artifact compiled
with TNLM_DECODE_TRACE=1; codegen/cuda/Recurrent.cuh describes the records).

Each launch of a step is named by its tag and key (its weights or state pointer): the records of
one key fall into one group per traced step. Per launch: `gap` = its first CTA's return from
griddepcontrol.wait minus the latest sampled end of the launch before it (how long the previous
grid's completion took to release this one), `input` = the latest sampled "input rows in" minus
that wait, `compute` = the latest end minus the inputs. Printed: the mean of each per position in
a layer (launches per layer = --per-layer, 5 for a kernel-per-step 385M: qkvu GEMV, decode, out
GEMV, gated GEMV, down GEMV), and their sums over the step (microseconds).

usage: decode_trace.py TRACE.csv [--per-layer=5] [--first=1]
"""
import csv
import statistics
import sys
from collections import defaultdict


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    per_layer, first = 5, 1
    for a in argv[2:]:
        if a.startswith("--per-layer="):
            per_layer = int(a.split("=", 1)[1])
        elif a.startswith("--first="):
            first = int(a.split("=", 1)[1])
        else:
            print("decode_trace.py: unknown option " + a, file=sys.stderr)
            return 2
    rows = []
    with open(argv[1]) as f:
        for r in csv.DictReader(f):
            rows.append({k: (v if k == "key" else int(v)) for k, v in r.items()})
    if not rows:
        print("decode_trace.py: no records in " + argv[1], file=sys.stderr)
        return 1
    by_key = defaultdict(list)
    for r in rows:
        by_key[(r["tag"], r["key"])].append(r)
    launches, counts = [], defaultdict(int)
    for (tag, _), rs in by_key.items():
        rs.sort(key=lambda r: r["entry"])
        groups = [[rs[0]]]
        for r in rs[1:]:  # one launch's sampled CTAs start within microseconds
            if r["entry"] - groups[-1][-1]["entry"] > 50000:
                groups.append([r])
            else:
                groups[-1].append(r)
        counts[len(groups)] += 1
        for g in groups:
            inputs = [r["input"] for r in g if r["input"]]
            launches.append({"tag": tag, "grid": g[0]["grid"], "wait": min(r["wait"] for r in g),
                             "input": max(inputs) if inputs else 0,
                             "end": max(r["end"] for r in g)})
    launches.sort(key=lambda l: l["wait"])
    steps = max(counts, key=counts.get)  # launches of most keys: one per traced step
    n = len(launches) // steps
    if n * steps != len(launches):
        print(f"decode_trace.py: {len(launches)} launches do not split into {steps} steps "
              "(a key used by several launches of a step?)", file=sys.stderr)
        return 1
    print(f"{len(rows)} records, {len(launches)} launches: {steps} steps of {n}")
    per_pos = defaultdict(lambda: defaultdict(list))
    totals = defaultdict(list)
    for s in range(first, steps):
        step = launches[s * n:(s + 1) * n]
        sums = defaultdict(float)
        for i, l in enumerate(step):
            gap = (l["wait"] - step[i - 1]["end"]) / 1e3 if i else 0.0
            inp = (l["input"] - l["wait"]) / 1e3 if l["input"] else 0.0
            comp = (l["end"] - (l["input"] or l["wait"])) / 1e3
            pos = "first" if i == 0 else "last" if i == n - 1 else f"layer+{(i - 1) % per_layer}"
            for k, v in (("gap", gap), ("input", inp), ("compute", comp)):
                per_pos[(pos, l["tag"], l["grid"])][k].append(v)
                sums[k] += v
        sums["span"] = (step[-1]["end"] - step[0]["wait"]) / 1e3
        for k, v in sums.items():
            totals[k].append(v)
    print(f"{'position':10} {'tag':>3} {'grid':>5} {'count':>5} {'gap':>7} {'input':>7} "
          f"{'compute':>8}   (mean us per launch)")
    for (pos, tag, grid), v in sorted(per_pos.items()):
        cnt = len(v["gap"]) // max(1, steps - first)
        print(f"{pos:10} {tag:3} {grid:5} {cnt:5} {statistics.mean(v['gap']):7.2f} "
              f"{statistics.mean(v['input']):7.2f} {statistics.mean(v['compute']):8.2f}")
    print("per step (us, mean over steps): " +
          ", ".join(f"{k} {statistics.mean(v):.1f}" for k, v in totals.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
