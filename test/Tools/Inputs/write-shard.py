#!/usr/bin/env python3
"""Writes an llm.c token shard: 256 int32 header words (magic 20240520, version 1 = uint16
tokens, token count), then the tokens.

usage: write-shard.py FILE TOKEN...
"""
import struct
import sys

path, tokens = sys.argv[1], [int(t) for t in sys.argv[2:]]
header = [20240520, 1, len(tokens)] + [0] * 253
with open(path, "wb") as f:
    f.write(struct.pack("<256i", *header))
    f.write(struct.pack(f"<{len(tokens)}H", *tokens))
