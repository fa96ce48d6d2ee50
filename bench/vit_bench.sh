#!/usr/bin/env bash
# ViT training throughput of posformer against the same ViT in PyTorch: same machine, one run,
# interleaved rounds, images/s side by side (issue 10's speed line: at least 1.3x).
#
#   bash bench/vit_bench.sh [POSFORMER_BINARY]      (default: build/posformer)
#   env: ROUNDS=3 STEPS=30 WARM=5 BATCH=128 THREADS=2 POSITIONS="rope_2d learned_2d"
#        PRECISION=f32 (bf16: posformer --precision bf16 against PyTorch under
#        torch.autocast("cpu", bfloat16), both mixed precision)
#        CONFIG=configs/vit-fashion-mnist.json WORK=/tmp/posformer-vit-bench
#        ACCUM_PARALLEL=N (N >= 2: posformer trains the same BATCH images per step as N
#        micro-batches of BATCH/N side by side, `--batch BATCH/N --accum N --accum-parallel`,
#        docs/training.md; PyTorch keeps one batch of BATCH)
#
# Model: CONFIG (Fashion-MNIST 28x28 gray, patch 7 = 16 patches + CLS, d 128, 4 layers, 4 heads,
# d_ff 256, pre-LN, exact GELU, 10 classes), its position replaced by each of POSITIONS (the
# config's own is rope_2d). The PyTorch peer is bench/vit_bench.py (the same model; its --check
# compares its logits with tests/reference/vit_twin.py), run with the fair settings of
# bench/torch_env.py (copied from ../shared/peers: OpenBLAS SapphireRapids kernels, passive
# OpenMP waits, no-mmap malloc, THREADS threads) and Debian's OpenBLAS as its BLAS.
#
# Each round runs `posformer train --data fashion-mnist` then vit_bench.py on the same
# Fashion-MNIST images, per position. Both rates are images / wall time over steps WARM+1..STEPS
# of the training loop (posformer: from metrics.jsonl, so data, forward, backward, clipping,
# AdamW and logging; PyTorch: batch gather, forward, backward, clip_grad_norm_, AdamW).
# Reported: the median over rounds of each side and their ratio, the median of the per-round
# ratios (each pair ran back to back, so it cancels most of the shared machine's load swings),
# and the PyTorch median single step too (kinder to it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/common.sh"
POSFORMER=$(realpath "${1:-$ROOT/build/posformer}")
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-30}
WARM=${WARM:-5}
BATCH=${BATCH:-128}
THREADS=${THREADS:-2}
PRECISION=${PRECISION:-f32}
case "$PRECISION" in
  f32) AUTOCAST=none ;;
  bf16) AUTOCAST=bf16 ;;
  *) echo "vit_bench: PRECISION must be f32 or bf16, got '$PRECISION'" >&2; exit 1 ;;
esac
POSITIONS=${POSITIONS:-rope_2d learned_2d}
CONFIG=$(realpath "${CONFIG:-$ROOT/configs/vit-fashion-mnist.json}")
WORK=${WORK:-/tmp/posformer-vit-bench}
PY=/usr/bin/python3
[[ -x "$POSFORMER" ]] || { echo "vit_bench: no posformer binary at $POSFORMER (build first)" >&2; exit 1; }
[[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]] ||
  { echo "vit_bench: Fashion-MNIST missing (bash scripts/setup.sh installs dataset-fashion-mnist)" >&2; exit 1; }
(( WARM < STEPS )) || { echo "vit_bench: WARM must be < STEPS" >&2; exit 1; }
mkdir -p "$WORK"
RES="$WORK/results.jsonl"
: > "$RES"

for pos in $POSITIONS; do
  "$PY" -c 'import json, sys; c = json.load(open(sys.argv[1])); c["position"] = {"type": sys.argv[2]}
json.dump(c, open(sys.argv[3], "w"))' "$CONFIG" "$pos" "$WORK/$pos.json"
done

# PyTorch's BLAS: Debian's OpenBLAS (bench/common.sh)
peer_blas_setup "$WORK" || exit 1

# the same model: parameter counts, and the peer's logits against the float64 twin
for pos in $POSITIONS; do
  rm -rf "$WORK/init-$pos"
  "$POSFORMER" train --config "$WORK/$pos.json" --data fashion-mnist --out "$WORK/init-$pos" --steps 1 \
    --batch 2 --eval-every 0 --ckpt-every 0 --val-fraction 0 --threads 1 --quiet >/dev/null
  pp=$("$PY" - "$WORK/init-$pos/model.safetensors" <<'EOF'
import json, math, struct, sys
f = open(sys.argv[1], "rb")
h = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
print(sum(math.prod(v["shape"]) for k, v in h.items() if k != "__metadata__"))
EOF
)
  tp=$(peer_env "$PY" "$ROOT/bench/vit_bench.py" --config "$WORK/$pos.json" --count-params |
       "$PY" -c 'import json, sys; print(json.load(sys.stdin)["params"])')
  chk=$(peer_env "$PY" "$ROOT/bench/vit_bench.py" --config "$WORK/$pos.json" --check)
  echo "$pos: parameters posformer $pp, PyTorch $tp; peer $chk"
  [[ "$pp" == "$tp" ]] || { echo "vit_bench: parameter counts differ for $pos" >&2; exit 1; }
done

ACCUM_PARALLEL=${ACCUM_PARALLEL:-0}
PF_BATCH=(--batch "$BATCH")
if ((ACCUM_PARALLEL >= 2)); then
  ((BATCH % ACCUM_PARALLEL == 0)) || { echo "vit_bench: BATCH must be a multiple of ACCUM_PARALLEL" >&2; exit 1; }
  PF_BATCH=(--batch $((BATCH / ACCUM_PARALLEL)) --accum "$ACCUM_PARALLEL" --accum-parallel)
fi
echo "posformer options: ${PF_BATCH[*]}"
echo "posformer: $POSFORMER; config $CONFIG; rounds $ROUNDS, steps $STEPS (warm-up $WARM), batch $BATCH, threads $THREADS, precision $PRECISION (PyTorch autocast: $AUTOCAST)"
echo "machine: $(lscpu | grep -m1 'Model name' | cut -d: -f2 | xargs), $(nproc) CPUs; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"

for ((r = 1; r <= ROUNDS; ++r)); do
  for pos in $POSITIONS; do
    out="$WORK/run-$pos-$r"
    rm -rf "$out"
    "$POSFORMER" train --config "$WORK/$pos.json" --data fashion-mnist --out "$out" --steps "$STEPS" \
      "${PF_BATCH[@]}" --eval-every 0 --ckpt-every 0 --val-fraction 0 --threads "$THREADS" \
      --precision "$PRECISION" --quiet >/dev/null
    "$PY" - "$out/metrics.jsonl" "$WARM" "$pos" "$r" "$(cut -d' ' -f1 /proc/loadavg)" >> "$RES" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"images_per_s"' in l]
warm = int(sys.argv[2])
el = [r["tokens"] / r["images_per_s"] for r in rows]  # wall seconds since the loop started
a, b = rows[warm - 1], rows[-1]
print(json.dumps({"who": "posformer", "pos": sys.argv[3], "round": int(sys.argv[4]),
                  "img_s": (b["tokens"] - a["tokens"]) / (el[-1] - el[warm - 1]), "load": float(sys.argv[5])}))
EOF
    tail -n1 "$RES"
    peer_env "$PY" "$ROOT/bench/vit_bench.py" --config "$WORK/$pos.json" --batch "$BATCH" \
      --steps "$STEPS" --warm "$WARM" --threads "$THREADS" --autocast "$AUTOCAST" > "$WORK/torch-$pos-$r.json"
    "$PY" - "$WORK/torch-$pos-$r.json" "$pos" "$r" "$(cut -d' ' -f1 /proc/loadavg)" >> "$RES" <<'EOF'
import json, sys
t = json.load(open(sys.argv[1]))
print(json.dumps({"who": "torch", "pos": sys.argv[2], "round": int(sys.argv[3]), "img_s": t["img_s"],
                  "img_s_median_step": t["img_s_median_step"], "load": float(sys.argv[4]),
                  "settings": t["settings"]}))
EOF
    tail -n1 "$RES"
  done
done
echo "load average at end: $(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" - "$RES" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = statistics.median
print()
print("| position | posformer img/s | PyTorch img/s | ratio of medians | median of per-round ratios (min-max) "
      "| PyTorch img/s (median step) | ratio vs that |")
print("|---|---|---|---|---|---|---|")
for pos in dict.fromkeys(r["pos"] for r in rows):
    p = med([r["img_s"] for r in rows if r["who"] == "posformer" and r["pos"] == pos])
    t = med([r["img_s"] for r in rows if r["who"] == "torch" and r["pos"] == pos])
    tm = med([r["img_s_median_step"] for r in rows if r["who"] == "torch" and r["pos"] == pos])
    rr = [a["img_s"] / b["img_s"] for a in rows for b in rows if a["who"] == "posformer" and b["who"] == "torch"
          and a["pos"] == b["pos"] == pos and a["round"] == b["round"]]
    print(f"| {pos} | {p:.0f} | {t:.0f} | {p / t:.2f}x | {med(rr):.2f}x ({min(rr):.2f}-{max(rr):.2f}) "
          f"| {tm:.0f} | {p / tm:.2f}x |")
print()
print("per round (img/s, load average when it ended):")
for r in sorted({r["round"] for r in rows}):
    xs = [x for x in rows if x["round"] == r]
    print(f"  round {r}: " + ", ".join(f"{x['who']} {x['pos']} {x['img_s']:.0f} ({x['load']:.1f})" for x in xs))
EOF
