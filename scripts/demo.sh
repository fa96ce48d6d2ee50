#!/usr/bin/env bash
# The main job on a fresh Debian 12 machine: installs dependencies, builds posformer, then for
# every position encoding initialises a small decoder, prints its parameter counts and runs a
# forward pass over a short text (UTF-8 bytes as token ids), printing a summary of the result.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup.sh
bash scripts/build.sh "$ROOT/build" >/dev/null
PF="$ROOT/build/posformer"
WORK=${POSFORMER_DEMO_DIR:-$ROOT/runs/demo}
mkdir -p "$WORK"
TEXT="posformer: position encodings, proven right."
TOKENS=$(printf '%s' "$TEXT" | od -An -tu1 | tr -s ' \n' ' ')
echo "posformer demo: $("$PF" --version); input: \"$TEXT\" (${#TEXT} byte tokens)"
for pos in none learned sinusoidal sinusoidal_half rope alibi t5 shaw xl deberta; do
  cat > "$WORK/$pos.json" <<JSON
{"arch": "decoder", "d_model": 128, "n_layers": 2, "n_heads": 4, "d_ff": 512,
 "vocab_size": 260, "max_len": 256, "position": {"type": "$pos"}}
JSON
  echo
  echo "=== position: $pos"
  "$PF" init --config "$WORK/$pos.json" --out "$WORK/$pos" --seed 1 >/dev/null
  "$PF" info "$WORK/$pos" | sed -n '/component/,$p'
  "$PF" forward "$WORK/$pos" --tokens "$TOKENS" --out "$WORK/$pos/forward.safetensors"
done
echo
echo "models and outputs are in $WORK (posformer info DIR, posformer forward --help)"
