#!/usr/bin/env bash
# Resolution extrapolation for ViT position encodings (issue 10, docs/vision.md): trains one
# small ViT per 2-D position scheme at 28 x 28 (Fashion-MNIST, patch 7: a 4 x 4 grid), all with
# the same data, seed and budget, then scores each on the test images resized up (bilinear) to
# larger sizes, so the patch grid grows (42: 6 x 6, 56: 8 x 8) and the model meets positions it
# never trained on. The rope_2d models are also scored under RoPE scalings applied per axis at
# evaluation (ROPE_SCALINGS, factor per axis = new / trained grid; the same trained weights, no
# retraining). Models already trained in OUT (OUT/models/NAME/done) are re-used, so changing
# SIZES or ROPE_SCALINGS only re-scores. Writes OUT/resolution.{csv,md,png} (posformer
# vit-resolution).
#   usage: bench/vit_resolution.sh [POSFORMER]   env: STEPS=600 SIZES="28 42 56" MAX_IMAGES=2000
#                                                     OUT=runs/vit-resolution THREADS=2
#                                                     ROPE_SCALINGS=linear,ntk,yarn ("" = none)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PF=$(realpath "${1:-$ROOT/build/posformer}")
STEPS=${STEPS:-600}
SIZES=${SIZES:-28 42 56}
MAX_IMAGES=${MAX_IMAGES:-2000}
OUT=${OUT:-$ROOT/runs/vit-resolution}
THREADS=${THREADS:-2}
ROPE_SCALINGS=${ROPE_SCALINGS-linear,ntk,yarn}
PY=/usr/bin/python3
mkdir -p "$OUT"
# name -> position object (the rest of configs/vit-fashion-mnist.json is shared)
declare -A POS=(
  [rope_2d_split]='{"type": "rope_2d", "layout": "axial_split"}'
  [rope_2d_interleaved]='{"type": "rope_2d", "layout": "axial_interleaved"}'
  [learned_2d_bicubic]='{"type": "learned_2d", "interpolation": "bicubic"}'
  [sincos_2d]='{"type": "sincos_2d"}'
  [rope_1d_flat]='{"type": "rope"}'
)
ORDER="rope_2d_split rope_2d_interleaved learned_2d_bicubic sincos_2d rope_1d_flat"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; load $(cut -d' ' -f1-3 /proc/loadavg)"
models=()
for name in $ORDER; do
  cfg="$OUT/$name.json"
  "$PY" -c 'import json, sys; c = json.load(open(sys.argv[1])); c["position"] = json.loads(sys.argv[2])
json.dump(c, open(sys.argv[3], "w"))' "$ROOT/configs/vit-fashion-mnist.json" "${POS[$name]}" "$cfg"
  run="$OUT/models/$name"
  if [[ -f "$run/done" ]]; then
    echo "== $name: trained already ($run)"
  else
    echo "== $name: training $STEPS steps of 128 images at 28 x 28"
    rm -rf "$run"
    "$PF" train --config "$cfg" --data fashion-mnist --out "$run" --steps "$STEPS" --batch 128 \
      --lr 1e-3 --warmup 100 --weight-decay 0.05 --val-fraction 0.0833 --threads "$THREADS" --quiet
    touch "$run/done"
  fi
  models+=("$run")
done
scalings=()
[[ -n "$ROPE_SCALINGS" ]] && scalings=(--rope-scalings "$ROPE_SCALINGS")
# shellcheck disable=SC2086
"$PF" vit-resolution "${models[@]}" --sizes $SIZES --max-images "$MAX_IMAGES" \
  --out "$OUT/resolution" --threads "$THREADS" "${scalings[@]}"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
