#!/usr/bin/env bash
# CPU training throughput (tnlm-train: @train_step + @optimizer_step per step) of the tiny
# model (batch 16 x seq 256, the demo's shape) and the 385M shape (f32, batch 1 x seq 512,
# byte data), on the fortune cookies of Debian's `fortunes` package. Prints one JSON line per
# case: tokens/s and seconds per step (medians over the steps after the first), peak RSS.
# Paste them into bench/RESULTS.md with the date, commit, machine and this command.
set -euo pipefail
cd "$(dirname "$0")/.."
B=${BUILD_DIR:-build}
ninja -C "$B" tnlmc tnlm-train > /dev/null
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
run() { # model batch seq steps
  local model=$1 batch=$2 seq=$3 steps=$4
  "$B/bin/tnlmc" "models/$model.json" --mode=train --dtype=f32 --batch=$batch --seq=$seq \
    -o "$TMP/$model.tnlm"
  /usr/bin/time -f "%M" -o "$TMP/$model.rss" "$B/bin/tnlm-train" "$TMP/$model.tnlm" \
    --data=/usr/share/games/fortunes --steps=$steps --eval-every=0 --save-every=0 --quiet \
    --out="$TMP/run-$model"
  python3 - "$TMP/run-$model/metrics.jsonl" "$TMP/$model.rss" "$model" $batch $seq <<'PY'
import json, statistics, sys
m = [json.loads(l) for l in open(sys.argv[1])]
steps = [x["step_s"] for x in m[1:]] or [m[0]["step_s"]]
s = statistics.median(steps)
tokens = int(sys.argv[4]) * int(sys.argv[5])
rss = int(open(sys.argv[2]).read().split()[-1]) / 1024 / 1024
print(json.dumps({"model": sys.argv[3], "batch": int(sys.argv[4]), "seq": int(sys.argv[5]),
                  "steps": len(m), "step_s": round(s, 4), "tokens_per_s": round(tokens / s),
                  "peak_rss_gib": round(rss, 2)}))
PY
}
run tiny 16 256 ${TINY_STEPS:-50}
run tnl-385m 1 512 ${BIG_STEPS:-4}
