#!/usr/bin/env python3
"""Writes a copy of a safetensors file with every F32 tensor multiplied by a factor.

usage: safetensors-scale.py IN OUT FACTOR

(A tiny model's random init, N(0, 0.02), decodes greedily to one byte repeated; scaled by 10
its greedy completions vary from token to token, so a wrong state shows in the text.)
"""
import array
import json
import struct
import sys

src, dst, factor = sys.argv[1], sys.argv[2], float(sys.argv[3])
data = open(src, "rb").read()
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
body = bytearray(data[8 + n:])
for name, entry in header.items():
    if name == "__metadata__":
        continue
    if entry["dtype"] != "F32":
        sys.exit(f"{name} is {entry['dtype']}, not F32")
    lo, hi = entry["data_offsets"]
    values = array.array("f", bytes(body[lo:hi]))
    body[lo:hi] = array.array("f", [v * factor for v in values]).tobytes()
open(dst, "wb").write(data[:8 + n] + bytes(body))
