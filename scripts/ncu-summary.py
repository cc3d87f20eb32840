#!/usr/bin/env python3
"""Per-kernel time from an ncu CSV (`ncu --metrics gpu__time_duration.sum --csv ...`).
With dram__bytes_read.sum and dram__bytes_write.sum in the CSV too, each kernel's DRAM traffic
per step (GB) and its rate (TB/s over its time) follow its launches.

Groups the launches by kernel name and prints, per name, the launches and the time per
optimizer step (the total divided by the launches of tnlm_lr_schedule, which runs once per
optimizer step; 1 where there is none), largest first. ncu locks the clocks at base and
serializes the kernels, so the times are above what a graph replay takes; they rank the
kernels. Usage: scripts/ncu-summary.py NCU.csv [--top=N]
"""
import csv
import sys
from collections import defaultdict


def main(argv):
    if len(argv) < 2 or argv[1] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if len(argv) >= 2 else 2
    top = 40
    for a in argv[2:]:
        if a.startswith("--top="):
            top = int(a[len("--top="):])
        else:
            print(f"ncu-summary: unknown argument {a}", file=sys.stderr)
            return 2
    try:
        lines = open(argv[1], encoding="utf-8", errors="replace").read().splitlines()
    except OSError as e:
        print(f"ncu-summary: {e}", file=sys.stderr)
        return 1
    # ncu prints its own lines (==PROF==, the program's output) before the CSV header.
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        print(f"ncu-summary: {argv[1]}: no ncu CSV header (\"ID\",...) found", file=sys.stderr)
        return 1
    total = defaultdict(float)
    count = defaultdict(int)
    dram = defaultdict(float)  # bytes
    byte_units = {"byte": 1.0, "Kbyte": 1e3, "Mbyte": 1e6, "Gbyte": 1e9, "KB": 1e3, "MB": 1e6,
                  "GB": 1e9}
    for row in csv.DictReader(lines[start:]):
        if row.get("Metric Name") in ("dram__bytes_read.sum", "dram__bytes_write.sum"):
            value = float(row["Metric Value"].replace(",", ""))
            dram[row["Kernel Name"]] += value * byte_units.get(row.get("Metric Unit", "byte"), 1.0)
            continue
        if row.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = row.get("Metric Unit", "ns")
        value = float(row["Metric Value"].replace(",", ""))
        scale = {"ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}.get(unit, 1e-3)
        name = row["Kernel Name"]
        total[name] += value * scale
        count[name] += 1
    if not total:
        print(f"ncu-summary: {argv[1]}: no gpu__time_duration.sum rows", file=sys.stderr)
        return 1
    steps = max(1, count.get("tnlm_lr_schedule", 0))
    print(f"per optimizer step ({steps} steps in the profile; ncu: base clocks, one kernel at a time)")
    rows = sorted(total.items(), key=lambda kv: -kv[1])
    for name, us in rows[:top]:
        traffic = ""
        if dram:
            gb = dram.get(name, 0.0) / 1e9
            traffic = f"  {gb / steps:7.3f} GB {gb / (us * 1e-6) / 1e3 if us > 0 else 0.0:5.2f} TB/s"
        print(f"  {us / steps:10.1f} us  {count[name] / steps:7.1f} launches{traffic}  {name[:90]}")
    print(f"  {sum(total.values()) / steps:10.1f} us  in all ({len(rows)} kernels)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
