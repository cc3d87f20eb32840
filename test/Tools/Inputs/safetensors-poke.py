#!/usr/bin/env python3
"""Overwrites element 0 of one tensor of a safetensors file (in place) with a float value.

usage: safetensors-poke.py FILE TENSOR VALUE      (VALUE: a number, nan or inf)
"""
import json
import struct
import sys

path, name, value = sys.argv[1], sys.argv[2], float(sys.argv[3])
data = bytearray(open(path, "rb").read())
n = struct.unpack("<Q", data[:8])[0]
header = json.loads(data[8:8 + n])
entry = header[name]
if entry["dtype"] != "F32":
    sys.exit(f"{name} is {entry['dtype']}, not F32")
at = 8 + n + entry["data_offsets"][0]
data[at:at + 4] = struct.pack("<f", value)
open(path, "wb").write(data)
