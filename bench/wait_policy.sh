#!/usr/bin/env bash
# OpenMP wait policy on this machine: the BERT-base forward (posformer_bench BM_Encoder, T = 128
# and 512) and the training benchmark's model (posformer train, learned positions, tokens/s)
# under each libgomp policy, interleaved over rounds (policy A, B, C, ..., A, B, C, ...):
#   passive      OMP_WAIT_POLICY=PASSIVE   idle workers sleep at once (futex)
#   active       OMP_WAIT_POLICY=ACTIVE    idle workers spin (GOMP_SPINCOUNT 30e9: forever)
#   default      nothing set               libgomp's default: spin 300000 iterations, then sleep
#   spin=N       GOMP_SPINCOUNT=N          spin N iterations, then sleep
# Usage: bash bench/wait_policy.sh [--rounds 2] [--reps 3] [--policies "passive active ..."]
#   env BUILD_DIR (default build), POSFORMER (default $BUILD_DIR/posformer), STEPS=20 WARM=5
# Prints the median per policy and each policy's time relative to the best.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build}
BENCH=$BUILD_DIR/posformer_bench
POSFORMER=${POSFORMER:-$BUILD_DIR/posformer}
ROUNDS=2
REPS=3
STEPS=${STEPS:-20}
WARM=${WARM:-5}
POLICIES="passive active default spin=1000 spin=10000 spin=100000"
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --policies) POLICIES=$2; shift 2 ;;
    *) echo "wait_policy.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
OUT=$(mktemp -d /tmp/posformer-wait-XXXXXX)
RES=$OUT/results.jsonl
cat >"$OUT/model.json" <<'JSON'
{"arch": "decoder", "d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 1024, "activation": "gelu",
 "norm": "layernorm", "norm_position": "pre", "bias": true, "vocab_size": 260, "max_len": 1024,
 "tie_embeddings": false, "position": {"type": "learned"}}
JSON
# env for a policy; POSFORMER_WAIT_POLICY=none stops the binaries from choosing their own
policy_env() {
  case "$1" in
    passive) echo "OMP_WAIT_POLICY=PASSIVE" ;;
    active) echo "OMP_WAIT_POLICY=ACTIVE" ;;
    default) echo "POSFORMER_WAIT_POLICY=none" ;;
    spin=*) echo "GOMP_SPINCOUNT=${1#spin=}" ;;
  esac
}
for r in $(seq 1 "$ROUNDS"); do
  for p in $POLICIES; do
    e=$(policy_env "$p")
    load=$(cut -d' ' -f1 /proc/loadavg)
    env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u POSFORMER_WAIT_POLICY POSFORMER_NO_REEXEC=1 $e \
      "$BENCH" --benchmark_filter='BM_Encoder/' --benchmark_repetitions="$REPS" \
      --benchmark_report_aggregates_only=true --benchmark_format=json 2>/dev/null |
      /usr/bin/python3 -c '
import json, sys
d = json.load(sys.stdin)
for b in d["benchmarks"]:
    if b.get("aggregate_name") == "median":
        T = b["run_name"].split("/")[1]
        print(json.dumps({"policy": sys.argv[1], "round": int(sys.argv[2]), "case": "bert T=" + T,
                          "value": b["real_time"], "unit": "ms", "load": float(sys.argv[3])}))' \
      "$p" "$r" "$load" | tee -a "$RES"
    rm -rf "$OUT/run"
    env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u POSFORMER_WAIT_POLICY POSFORMER_NO_REEXEC=1 $e \
      "$POSFORMER" train --config "$OUT/model.json" --data default --out "$OUT/run" \
      --steps "$STEPS" --batch 8 --seq-len 256 --eval-every 0 --ckpt-every 0 --threads 2 \
      --quiet >/dev/null
    /usr/bin/python3 - "$OUT/run/metrics.jsonl" "$WARM" "$p" "$r" "$load" <<'PY' | tee -a "$RES"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
w = int(sys.argv[2])
el = [r["tokens"] / r["tokens_per_s"] for r in rows]
tps = (rows[-1]["tokens"] - rows[w - 1]["tokens"]) / (el[-1] - el[w - 1])
print(json.dumps({"policy": sys.argv[3], "round": int(sys.argv[4]), "case": "train tok/s",
                  "value": tps, "unit": "tok/s", "load": float(sys.argv[5])}))
PY
  done
done
/usr/bin/python3 - "$RES" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cases = sorted({r["case"] for r in rows})
pols = list(dict.fromkeys(r["policy"] for r in rows))
print("\n| policy | " + " | ".join(cases) + " |")
print("|---" * (len(cases) + 1) + "|")
med = {(p, c): statistics.median([r["value"] for r in rows if r["policy"] == p and r["case"] == c])
       for p in pols for c in cases}
best = {}
for c in cases:
    vals = [med[(p, c)] for p in pols]
    best[c] = max(vals) if "tok/s" in c else min(vals)
for p in pols:
    cells = []
    for c in cases:
        v = med[(p, c)]
        behind = (best[c] / v - 1) if "tok/s" in c else (v / best[c] - 1)
        cells.append(f"{v:.1f} (+{100 * behind:.0f}%)")
    print(f"| {p} | " + " | ".join(cells) + " |")
print("\n(+x%: how far behind the best policy of that column; medians over rounds;"
      " load average per run in " + sys.argv[1] + ")")
PY
