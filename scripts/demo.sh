#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: installs dependencies, builds posformer, trains a
# small RoPE decoder on the default corpus (Debian fortunes + Tang/Song poems) for a few
# minutes on 2 cores with a live progress line, then prints validation perplexity, a generated
# sample, and where the loss plot is. POSFORMER_DEMO_STEPS / POSFORMER_DEMO_DIR adjust it.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
echo "building posformer ..."
bash scripts/build.sh "$ROOT/build" >/dev/null
PF="$ROOT/build/posformer"
RUN=${POSFORMER_DEMO_DIR:-$ROOT/runs/demo}
STEPS=${POSFORMER_DEMO_STEPS:-400}
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
