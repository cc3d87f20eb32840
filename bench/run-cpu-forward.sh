#!/usr/bin/env bash
# CPU forward throughput of the tiny and 385M-shape models at seq 256 and 2048 (batch 1).
# PIPELINE=none compiles without the fusion passes (default: infer, as tnlmc does).
# Prints one JSON line per case; paste them into bench/RESULTS.md with the date, commit,
# machine and this command.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build}
ninja -C "$B" tnlmc tnlm-bench-cpu-forward > /dev/null
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for model in tiny tnl-385m; do
  for seq in 256 2048; do
    iters=5
    if [ "$model" = tnl-385m ] && [ "$seq" = 2048 ]; then iters=3; fi
    "$B/bin/tnlmc" "models/$model.json" --dtype=f32 --pipeline="${PIPELINE:-infer}" --batch=1 --seq=$seq -o "$TMP/$model-$seq.tnlm"
    "$B/bin/tnlm-bench-cpu-forward" "$TMP/$model-$seq.tnlm" --iters=$iters --label="$model/${PIPELINE:-infer}"
  done
done
