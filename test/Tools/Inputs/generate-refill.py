#!/usr/bin/env python3
"""Slots refilled while others decode: five prompts on a 2-slot recurrent artifact, greedy,
with a stop string taken from the first prompt's own completion (bytes 4-5), so that prompt
ends within 6 tokens while the prompt beside it keeps decoding and its slot takes the next
prompt. Prints whether each batched completion equals that prompt run alone (same flags) and
whether the completions ended at different lengths (a slot finished and was refilled while
another was still decoding).

usage: generate-refill.py TNLM_RUN ARTIFACT WEIGHTS TMPDIR
"""
import json
import os
import subprocess
import sys

run, artifact, weights, tmp = sys.argv[1:5]
prompts = ["one", "two", "three", "four", "five"]
common = [run, artifact, "--weights=" + weights, "--max-tokens=16", "--temperature=0", "--quiet"]


def alone(prompt, extra):
    out = subprocess.run(common + ["--prompt=" + prompt] + extra, capture_output=True, check=True)
    assert out.stdout.endswith(b"\n"), out.stdout
    return out.stdout[:-1]


# Raw bytes in argv (a completion need not be UTF-8).
stop = alone(prompts[0], [])[4:6]
extra = [b"--stop=" + stop]
path = os.path.join(tmp, "refill-prompts.txt")
with open(path, "w") as f:
    f.write("\n".join(prompts) + "\n")
out = subprocess.run(common + ["--prompts=" + path] + extra, capture_output=True, check=True)
lines = [json.loads(line) for line in out.stdout.decode().splitlines()]
same = sorted(line["index"] for line in lines) == list(range(len(prompts)))
lengths = []
for line in lines:
    text = alone(prompts[line["index"]], extra)
    lengths.append(len(text))
    # The JSON replaces invalid UTF-8 with U+FFFD, as Python's "replace" does.
    same = same and text.decode("utf-8", "replace") == line["completion"]
print("refill:", len(lines), "prompts, as alone:", same, "lengths differ:", len(set(lengths)) > 1,
      "first ends early:", lengths[0] < 6 if lengths else False)
