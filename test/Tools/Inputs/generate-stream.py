#!/usr/bin/env python3
"""Whether tnlm-run streams a completion as it is produced: read the first byte of its stdout
and close the pipe. A completion written as tokens come gets its next write refused and the
process ends by SIGPIPE long before its --max-tokens; one held back to the end (or in a stdio
buffer larger than the whole completion: 2,000 bytes against glibc's 4 KiB for a pipe) would
be all written by then, and the process would exit 0.

usage: generate-stream.py TNLM_RUN ARTIFACT WEIGHTS
"""
import signal
import subprocess
import sys

run, artifact, weights = sys.argv[1:4]
p = subprocess.Popen([run, artifact, "--weights=" + weights, "--prompt=one", "--max-tokens=2000",
                      "--temperature=0", "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
first = p.stdout.read(1)
p.stdout.close()
rc = p.wait()
print("first byte:", len(first), "ended by SIGPIPE:", rc == -signal.SIGPIPE, "rc", rc)
