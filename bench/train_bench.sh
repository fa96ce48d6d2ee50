#!/usr/bin/env bash
# Training throughput of posformer against PyTorch on the same machine, same session, interleaved.
#
#   bash bench/train_bench.sh [POSFORMER_BINARY]      (default: build/posformer)
#   env: ROUNDS=3 STEPS=30 WARM=5 THREADS=2 WORK=/tmp/posformer-train-bench
#        PEERS=<dir of torch_bench.py> (default ../shared/peers)  NO_TORCH=1 skips PyTorch (0: runs it)
#        BASELINE=<another posformer binary> is run too, interleaved (before/after comparisons)
#        ACCUM_PARALLEL=N (N >= 2): the binary under test (not BASELINE) trains the same 8
#        sequences per step as N micro-batches of 8/N side by side (`--batch 8/N --accum N
#        --accum-parallel`, docs/training.md); with BASELINE set to the same binary this is an
#        A/B of that mode in one run
#
# Model (the issue's and torch_bench.py's): byte-level GPT decoder, d 256, 4 layers, 4 heads,
# d_ff 1024, exact (erf) GELU, pre-LN LayerNorm with biases, untied LM head, T 256, batch 8,
# AdamW, fp32, learned absolute positions and RoPE (interleaved). posformer's vocabulary is 260
# (256 bytes + its 4 special tokens), PyTorch's 256.
#
# Each round runs, one after the other: `posformer train` (learned), `posformer train` (rope),
# `torch_bench.py --only train` (both models), and the fp32 peak (`posformer bench peak`: 12
# independent FMA chains per thread on the widest vectors the CPU has, AVX-512 where present,
# on THREADS threads; and a 2048^3 dnnl_sgemm; the peak used for MFU is the best round, the closest to the
# hardware's when other jobs share the machine). posformer's rate is tokens / wall time over steps
# WARM+1..STEPS of the training loop as logged in metrics.jsonl (data sampling, forward, backward,
# gradient clipping, AdamW, logging: everything between two steps); PyTorch's is torch_bench's
# median step (forward + backward + zero_grad + AdamW step). Reported: the median over rounds.
#
# Model FLOPs per token (SPEC.md section 7): training = 3 x forward; forward per layer =
# 2 * (4 d^2 + 2 d d_ff) for the matmuls + 2 T d for scores and weighted sum (causal: half of
# 4 T d), plus 2 d V for the LM head. MFU = tokens/s * FLOPs per token / measured peak.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/bench/common.sh"
POSFORMER=$(realpath "${1:-$ROOT/build/posformer}")
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-30}
WARM=${WARM:-5}
THREADS=${THREADS:-2}
WORK=${WORK:-/tmp/posformer-train-bench}
PEERS=${PEERS:-$ROOT/../shared/peers}
PY=/usr/bin/python3
# NO_TORCH: 1 (or yes / true) skips PyTorch, 0 / empty / unset runs it; anything else is refused
# (NO_TORCH=0 used to skip it too, since only emptiness was tested)
case "${NO_TORCH:-}" in
  ""|0|no|false) NO_TORCH="" ;;
  1|yes|true) NO_TORCH=1 ;;
  *) echo "train_bench: NO_TORCH must be 1 or 0 (got '$NO_TORCH')" >&2; exit 1 ;;
esac
bash "$ROOT/scripts/setup.sh" >&2
[[ -x "$POSFORMER" ]] || { echo "train_bench: no posformer binary at $POSFORMER (build first)" >&2; exit 1; }
(( WARM < STEPS )) || { echo "train_bench: WARM must be < STEPS" >&2; exit 1; }
mkdir -p "$WORK"
RES="$WORK/results.jsonl"
: > "$RES"

# ---- model configs (the same model as torch_bench.py's GPT)
for pos in learned rope; do
  if [[ $pos == learned ]]; then p='{"type": "learned"}'; else p='{"type": "rope", "layout": "interleaved", "base": 10000}'; fi
  cat > "$WORK/$pos.json" <<EOF
{
  "arch": "decoder", "d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 1024,
  "activation": "gelu", "norm": "layernorm", "norm_position": "pre", "bias": true,
  "vocab_size": 260, "max_len": 1024, "tie_embeddings": false,
  "position": $p
}
EOF
done

# ---- fp32 peak programs
cat > "$WORK/sgemm_peak.cpp" <<'EOF'
// 2048^3 fp32 dnnl_sgemm on the OpenMP threads given by OMP_NUM_THREADS; best of 4 after 1 warm-up.
#include <oneapi/dnnl/dnnl.h>
#include <chrono>
#include <cstdio>
#include <vector>
int main() {
  const int n = 2048;
  std::vector<float> a(size_t(n) * n, 0.5f), b(size_t(n) * n, 0.25f), c(size_t(n) * n, 0.0f);
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
    dnnl_sgemm('N', 'N', n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(), n);
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (rep > 0 && dt < best) best = dt;
  }
  std::printf("%.2f\n", 2.0 * n * n * double(n) / best / 1e9);
}
EOF
HAVE_SGEMM=1
g++ -O2 "$WORK/sgemm_peak.cpp" -ldnnl -o "$WORK/sgemm_peak" 2>/dev/null || HAVE_SGEMM=0

# ---- PyTorch's BLAS: Debian's OpenBLAS (bench/common.sh; the reference BLAS gives ~25 tokens/s)
if [[ -z "${NO_TORCH:-}" ]]; then
  [[ -f "$PEERS/torch_bench.py" ]] || { echo "train_bench: no torch_bench.py in $PEERS (set PEERS or NO_TORCH=1)" >&2; exit 1; }
  peer_blas_setup "$WORK" || exit 1
fi

echo "posformer: $POSFORMER ($("$POSFORMER" --version 2>/dev/null || echo '?')); rounds $ROUNDS, steps $STEPS (warm-up $WARM), threads $THREADS"
if ((${ACCUM_PARALLEL:-0} >= 2)); then
  ((8 % ACCUM_PARALLEL == 0)) || { echo "train_bench: ACCUM_PARALLEL must divide 8" >&2; exit 1; }
  echo "posformer (not the baseline): --batch $((8 / ACCUM_PARALLEL)) --accum $ACCUM_PARALLEL --accum-parallel"
fi
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs; load before: $(cut -d' ' -f1-3 /proc/loadavg)"

run_posformer() {  # round pos [binary label]
  local bin=${3:-$POSFORMER} who=${4:-posformer}
  local out="$WORK/run-$who-$2-$1"
  rm -rf "$out"
  local batch=(--batch 8)
  if [[ $who == posformer ]] && ((${ACCUM_PARALLEL:-0} >= 2)); then
    batch=(--batch $((8 / ACCUM_PARALLEL)) --accum "$ACCUM_PARALLEL" --accum-parallel)
  fi
  "$bin" train --config "$WORK/$2.json" --data default --out "$out" --steps "$STEPS" \
    "${batch[@]}" --seq-len 256 --eval-every 0 --ckpt-every 0 --threads "$THREADS" --quiet >/dev/null
  "$PY" - "$out/metrics.jsonl" "$WARM" "$2" "$1" "$(cut -d' ' -f1 /proc/loadavg)" "$who" >> "$RES" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"tokens_per_s"' in l]
warm = int(sys.argv[2])
el = [r["tokens"] / r["tokens_per_s"] for r in rows]  # wall seconds since the loop started
a, b = rows[warm - 1], rows[-1]
tps = (b["tokens"] - a["tokens"]) / (el[-1] - el[warm - 1])
print(json.dumps({"who": sys.argv[6], "pos": sys.argv[3], "round": int(sys.argv[4]), "tok_s": tps,
                  "load": float(sys.argv[5])}))
EOF
  tail -n1 "$RES"
}

for ((r = 1; r <= ROUNDS; ++r)); do
  run_posformer "$r" learned
  run_posformer "$r" rope
  if [[ -n "${BASELINE:-}" ]]; then
    run_posformer "$r" learned "$(realpath "$BASELINE")" baseline
    run_posformer "$r" rope "$(realpath "$BASELINE")" baseline
  fi
  if [[ -z "${NO_TORCH:-}" ]]; then
    peer_env "$PY" "$PEERS/torch_bench.py" --only train --workdir "$WORK/torch" > "$WORK/torch-$r.log" 2>&1 ||
      { cat "$WORK/torch-$r.log" >&2; exit 1; }
    "$PY" - "$WORK/torch/torch_bench.json" "$r" "$(cut -d' ' -f1 /proc/loadavg)" >> "$RES" <<'EOF'
import json, sys
for row in json.load(open(sys.argv[1]))["rows"]:
    if row["section"] == "train":
        pos = "rope" if "RoPE" in row["case"] else "learned"
        print(json.dumps({"who": "torch", "pos": pos, "round": int(sys.argv[2]), "tok_s": row["value"],
                          "load": float(sys.argv[3])}))
EOF
    tail -n2 "$RES"
  fi
  fma=$("$POSFORMER" bench peak --threads "$THREADS" --json)
  echo "$fma" | "$PY" -c 'import json, sys; p = json.loads(sys.stdin.read()); print(json.dumps({"who": "peak_fma", "round": int(sys.argv[1]), "gflops": p["gflops"], "isa": p["isa"]}))' "$r" | tee -a "$RES"
  if ((HAVE_SGEMM)); then
    sg=$(OMP_NUM_THREADS=$THREADS OMP_WAIT_POLICY=PASSIVE "$WORK/sgemm_peak")
    echo "{\"who\": \"peak_sgemm\", \"round\": $r, \"gflops\": $sg}" | tee -a "$RES"
  fi
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

"$PY" - "$RES" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
med = lambda xs: statistics.median(xs) if xs else float("nan")
d, L, H, F, T = 256, 4, 4, 1024, 256
def flops_per_token(V, causal=True):
    per_layer = 2 * (4 * d * d + 2 * d * F) + (2 if causal else 4) * T * d
    return 3 * (L * per_layer + 2 * d * V)
fmas = [r["gflops"] for r in rows if r["who"] == "peak_fma"]
sgs = [r["gflops"] for r in rows if r["who"] == "peak_sgemm"]
fma, sg = max(fmas), max(sgs) if sgs else float("nan")
print()
isa = next((r.get("isa", "?") for r in rows if r["who"] == "peak_fma"), "?")
print(f"fp32 peak, best of {len(fmas)} rounds (median): FMA loop ({isa}) {fma:.1f} ({med(fmas):.1f}) GFLOP/s, "
      f"dnnl_sgemm 2048^3 {sg:.1f} ({med(sgs):.1f}) GFLOP/s")
print(f"model FLOPs per token (3 x forward, causal attention): posformer (V 260) "
      f"{flops_per_token(260) / 1e6:.2f} M, torch (V 256) {flops_per_token(256) / 1e6:.2f} M")
print()
base = any(r["who"] == "baseline" for r in rows)
print(f"| positions | posformer tok/s | PyTorch tok/s | ratio |{' baseline tok/s | speed-up |' if base else ''} "
      f"posformer GFLOP/s | MFU vs FMA peak | MFU vs sgemm peak | PyTorch MFU vs FMA peak |")
print("|---" * (10 if base else 8) + "|")
for pos in ("learned", "rope"):
    p = med([r["tok_s"] for r in rows if r["who"] == "posformer" and r["pos"] == pos])
    t = med([r["tok_s"] for r in rows if r["who"] == "torch" and r["pos"] == pos])
    b = med([r["tok_s"] for r in rows if r["who"] == "baseline" and r["pos"] == pos])
    gf = p * flops_per_token(260) / 1e9
    tgf = t * flops_per_token(256) / 1e9
    print(f"| {pos} | {p:.0f} | {t:.0f} | {p / t:.2f}x |{f' {b:.0f} | {p / b:.2f}x |' if base else ''} "
          f"{gf:.1f} | {100 * gf / fma:.1f}% | {100 * gf / sg:.1f}% | {100 * tgf / fma:.1f}% |")
print()
print("per round (tok/s):")
for r in sorted({r["round"] for r in rows}):
    xs = [x for x in rows if x["round"] == r and "tok_s" in x]
    print(f"  round {r}: " + ", ".join(f"{x['who']} {x['pos']} {x['tok_s']:.0f} (load {x['load']:.1f})" for x in xs))
EOF
