#!/usr/bin/env bash
# CPU generation throughput (tnlm-run --prompt on a recurrent artifact, random weights, greedy):
# the tiny model at batch 1 (contexts of 1,000 and 8,000 tokens: the decode time per token
# must not grow with the context) and batch 16, and the 385M shape (f32) at batch 1.
# Prints tnlm-run's statistics line per case; paste them into bench/RESULTS.md with the date,
# commit, machine and this command.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build}
ninja -C "$B" tnlmc tnlm-run > /dev/null
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
prompt() { python3 -c "import random; r=random.Random($2); print(''.join(r.choice('abcdefgh ') for _ in range($1)))"; }
case_() { # label model batch seq prompt-tokens new-tokens
  local label=$1 model=$2 batch=$3 seq=$4 n=$5 new=$6
  "$B/bin/tnlmc" "models/$model.json" --mode=recurrent --dtype=f32 --batch=$batch --seq=$seq \
    -o "$TMP/$model-$batch-$seq.tnlm"
  "$B/bin/tnlmc" "models/$model.json" --mode=infer --dtype=f32 --batch=1 --seq=16 \
    -o "$TMP/$model-infer.tnlm"
  "$B/bin/tnlm-run" "$TMP/$model-infer.tnlm" --init=random --seed=1 --quiet \
    --save-weights="$TMP/$model.safetensors"
  for i in $(seq 1 "$batch"); do prompt "$n" "$i"; done > "$TMP/prompts.txt"
  printf '%-28s ' "$label"
  "$B/bin/tnlm-run" "$TMP/$model-$batch-$seq.tnlm" --weights="$TMP/$model.safetensors" \
    --prompts="$TMP/prompts.txt" --max-tokens="$new" --temperature=0 2>&1 >/dev/null | tail -1
}
case_ "tiny b1 ctx 1000" tiny 1 1024 1000 500
case_ "tiny b1 ctx 8000" tiny 1 8192 8000 500
case_ "tiny b16 ctx 1000" tiny 16 1024 1000 500
case_ "tnl-385m b1 ctx 100" tnl-385m 1 128 100 16
