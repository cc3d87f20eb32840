#!/usr/bin/env python3
"""Exact resume after a real SIGKILL (tnlm-train).

Run A trains STEPS steps uninterrupted. Run B is the same command, killed with SIGKILL once a
checkpoint exists and before it finishes, then continued with --resume. Every step's loss
(and grad norm, lr, validation loss) of B must equal A's exactly: the data position, the
optimizer state and the step counter are all in the checkpoint, and the kernels are
deterministic for a given thread count.

usage: train-resume.py TNLM_TRAIN ARTIFACT DATA WORKDIR
"""
import json
import os
import signal
import subprocess
import sys
import time

STEPS = 300
tool, artifact, data, work = sys.argv[1:5]


def command(out):
    return [tool, artifact, f"--data={data}", f"--steps={STEPS}", "--lr=3e-3", "--warmup=10",
            "--save-every=25", "--keep=2", "--eval-every=50", "--eval-batches=2",
            "--threads=2", "--quiet", f"--out={out}"]


def metrics(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


a, b = os.path.join(work, "a"), os.path.join(work, "b")
subprocess.run(command(a), check=True)

proc = subprocess.Popen(command(b))
deadline = time.time() + 120
while time.time() < deadline:
    done = [d for d in os.listdir(b) if d.startswith("checkpoint-") and not d.endswith(".tmp")] \
        if os.path.isdir(b) else []
    if done and max(int(d.split("-")[1]) for d in done) >= 50:
        break
    if proc.poll() is not None:
        fail("run B finished before it could be killed; make the run longer")
    time.sleep(0.005)
proc.send_signal(signal.SIGKILL)
proc.wait()
if proc.returncode != -signal.SIGKILL:
    fail(f"run B was not killed (exit status {proc.returncode})")
killed_at = len(metrics(b))
if killed_at >= STEPS:
    fail("run B had finished when it was killed")
print(f"killed run B after {killed_at} logged steps")

subprocess.run([tool, artifact, f"--resume={b}", "--quiet", "--threads=2"], check=True)

ma, mb = metrics(a), metrics(b)
if len(ma) != STEPS or len(mb) != STEPS:
    fail(f"expected {STEPS} metrics lines, got {len(ma)} (A) and {len(mb)} (B)")
for x, y in zip(ma, mb):
    for key in ("step", "loss", "grad_norm", "lr", "val_loss", "tokens"):
        if x.get(key) != y.get(key):
            fail(f"step {x['step']}: {key} {x.get(key)!r} (uninterrupted) != {y.get(key)!r} "
                 "(killed and resumed)")
wa = open(os.path.join(a, "model.safetensors"), "rb").read()
wb = open(os.path.join(b, "model.safetensors"), "rb").read()
if wa != wb:
    fail("final weights differ")
kept = sorted(d for d in os.listdir(b) if d.startswith("checkpoint-"))
if len(kept) != 2:
    fail(f"--keep=2 left {kept}")
print(f"exact resume: {STEPS} steps identical, final weights identical, checkpoints kept {kept}")
