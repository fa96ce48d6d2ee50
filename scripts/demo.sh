#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: installs dependencies, builds posformer and runs a
# small length-extrapolation study (docs/extrapolation.md): four small decoders on the default
# corpus (Debian fortunes + Tang/Song poems), one per position encoding (none, sinusoidal, RoPE,
# ALiBi), same data, seed and budget, trained at 64 tokens and scored on held-out text at 64 to
# 512 tokens. It prints the perplexity table, writes the plot, and prints a sample (longer than
# the training length) from the model with the lowest perplexity at the longest length.
# Measured on a shared 2-core machine: the build 332 s of CPU from scratch (about 3 min with -j2),
# the study 173 s of CPU (5.4 min of wall time at load average 10, less on an idle machine).
# Ctrl-C stops it; run it again to resume where it stopped (finished models are not retrained).
#
#   bash scripts/demo.sh          the study (above)
#   bash scripts/demo.sh train    the training demo: one RoPE decoder with a live progress line,
#                                 validation perplexity, samples and the loss plot
#
# Environment: POSFORMER_DEMO_STEPS (steps per model; study 600, train 400),
# POSFORMER_DEMO_DIR (output; study runs/demo-study, train runs/demo),
# POSFORMER_DEMO_POSITIONS (study: comma-separated encodings, default none,sinusoidal,rope,alibi).
set -euo pipefail
MODE=${1:-study}
case "$MODE" in
  study | train) ;;
  -h | --help) sed -n 2,18p "$0"; exit 0 ;;
  *) echo "demo.sh: unknown mode '$MODE' (study or train; see --help)" >&2; exit 2 ;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
echo "building posformer ..."
cmake -S "$ROOT" -B "$ROOT/build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$ROOT/build" -j2 --target posformer_cli >/dev/null
PF="$ROOT/build/posformer"
if [ "$MODE" = study ]; then
  STEPS=${POSFORMER_DEMO_STEPS:-600}
  RUN=${POSFORMER_DEMO_DIR:-$ROOT/runs/demo-study}
  POSITIONS=${POSFORMER_DEMO_POSITIONS:-none,sinusoidal,rope,alibi}
  mkdir -p "$(dirname "$RUN")"
  if [ -f "$RUN/study.json" ]; then
    echo "resuming the study in $RUN (rm -rf $RUN to start over)"
  fi
  echo
  echo "== length-extrapolation study: $POSITIONS"
  echo "   d_model 128 x 4 layers, $STEPS steps of batch 16 x 64 tokens each, the same data, seed"
  echo "   and learning rate; perplexity on held-out text at 64 (the training length) to 512"
  echo
  "$PF" extrapolate --config configs/extrapolate.json --positions "$POSITIONS" \
    --train-len 64 --eval-lens 64,128,256,512 --steps "$STEPS" --batch 16 --lr 1e-3 \
    --data default --eval-tokens 8192 --threads 2 --out "$RUN"
  BEST=$(/usr/bin/python3 - "$RUN/results.csv" <<'PY'
import csv, sys
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["status"] == "ok" and r["variant"] == "none"]
longest = max(int(r["eval_len"]) for r in rows)
print(min((float(r["ppl"]), r["model"]) for r in rows if int(r["eval_len"]) == longest)[1])
PY
)
  echo
  echo "== sample from $BEST (best at the longest length; 300 bytes, past its 64-token training length)"
  "$PF" generate "$RUN/models/$BEST" --prompt "The " --max-new-tokens 300 --temperature 0.8 \
    --top-k 40 --seed 1 --stream
  echo
  echo
  echo "plot: $RUN/extrapolation.png    table: $RUN/results.md    data: $RUN/results.csv"
  echo "the full study (docs/extrapolation.md): $PF extrapolate --help"
  exit 0
fi

# train: the training demo
STEPS=${POSFORMER_DEMO_STEPS:-400}
RUN=${POSFORMER_DEMO_DIR:-$ROOT/runs/demo}
rm -rf "$RUN"
mkdir -p "$(dirname "$RUN")"
CFG="$ROOT/configs/demo-rope.json"
echo
echo "== model"
"$PF" init --config "$CFG" --out "$RUN.init" >/dev/null
"$PF" info "$RUN.init" | sed -n '2,5p;/component/,$p'
rm -rf "$RUN.init"
echo
echo "== training ($STEPS steps, batch 16 x 128 bytes, RoPE, AdamW; Ctrl-C stops and saves)"
"$PF" train --config "$CFG" --data default --out "$RUN" --steps "$STEPS" --batch 16 --seq-len 128 \
  --lr 2e-3 --warmup $(( STEPS < 500 ? STEPS / 10 : 50 )) --eval-every 100 --ckpt-every 100 --threads 2
echo
echo "== validation (held-out documents)"
tail -n 1 "$RUN/metrics.jsonl" | /usr/bin/python3 -c \
  'import json,sys; r=json.loads(sys.stdin.read()); print("step %d: loss %.4f nats/token, perplexity %.2f, %.3f bits/byte" % (r["step"], r["val_loss"], r["val_ppl"], r["val_bpb"]))'
echo
echo "== sample (temperature 0.8, top-k 40)"
"$PF" generate "$RUN" --prompt "The " --max-new-tokens 200 --temperature 0.8 --top-k 40 --seed 1 --stream
echo
echo "== sample (Tang poem prompt)"
"$PF" generate "$RUN" --prompt "《" --max-new-tokens 120 --temperature 0.8 --top-k 40 --seed 2 --stream
echo
"$PF" plot "$RUN" >/dev/null
echo "loss plot: $RUN/loss.png    metrics: $RUN/metrics.jsonl"
echo "continue training: $PF train --resume $RUN --steps $((STEPS * 2))"
