#!/usr/bin/env bash
# Speed benchmark, one command: builds posformer_bench, then runs posformer and the peers
# (../shared/peers: PyTorch with its fair settings, ONNX Runtime) interleaved in ONE session
#   posformer, torch, ORT, posformer, torch, ORT, ..., posformer
# and prints a side-by-side table of medians (results in bench/RESULTS.md).
#
# Usage: bash bench/run.sh [--rounds N] [--reps R] [--workdir DIR] [--quick]
#   --rounds N   peer rounds (default 2): N+1 posformer slots, N torch and N ORT slots
#   --reps R     repetitions per case (google-benchmark repetitions / peer timed runs; default 7)
#   --workdir    peers' work dir (npm install, ONNX export, OpenBLAS; default /tmp/peers-work)
#   --quick      encoder only (skips the sgemm / linear / component families and attention)
# BASELINE_BENCH=<another posformer_bench> is timed in every posformer slot too (an A/B of two
# commits in one session, e.g. one built from an older checkout); its row says which binary.
# Unless --quick, it ends with bench/attention_bench.sh (the attention table, RESULTS.md sec. 3).
# Environment: BUILD_DIR (default build-bench).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/bench/common.sh"
PEERS=$(cd "$ROOT/../shared/peers" && pwd)
BUILD_DIR=${BUILD_DIR:-$ROOT/build-bench}
W=/tmp/peers-work
ROUNDS=2
REPS=7
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --workdir) W=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    -h|--help) sed -n 2,12p "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
if [ -n "${BASELINE_BENCH:-}" ] && [ ! -x "$BASELINE_BENCH" ]; then
  echo "run.sh: BASELINE_BENCH=$BASELINE_BENCH is not an executable posformer_bench" >&2; exit 2
fi
PY=/usr/bin/python3
OUT=$W/bench-$(date +%Y%m%d-%H%M%S)
mkdir -p "$OUT"
log() { echo "[run.sh $(date +%H:%M:%S)] $*" >&2; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

# ---------------------------------------------------------------- build
bash "$ROOT/scripts/setup.sh" --bench >&2
log "building posformer_bench in $BUILD_DIR"
cmake -S "$ROOT" -B "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$BUILD_DIR" -j2 --target posformer_bench >/dev/null
BENCH=$BUILD_DIR/posformer_bench

# ---------------------------------------------------------------- peers setup
[ -d "$W/node_modules/onnxruntime-node" ] || bash "$PEERS/setup.sh" "$W" >&2
# PyTorch's BLAS: Debian's OpenBLAS, unpacked into the work dir if needed (bench/common.sh)
peer_blas_setup "$W" || exit 1
if [ ! -f "$W/bert12.onnx" ]; then
  log "exporting the 12-layer encoder to ONNX"
  peer_env $PY -W ignore "$PEERS/onnx_export.py" --workdir "$W" --reps 3 >&2
fi

# PyTorch: the shared harness (torch_bench.py: its settings, warm-up and median) on the fp32
# encoder cases only (its bf16 autocast cases need AVX512-BF16/AMX, which this CPU lacks).
cat >"$OUT/torch_encoder.py" <<'EOF'
import json, os, sys
out = sys.argv.pop(1)
sys.path.insert(0, os.environ["PEERS"])
import torch_bench as tb  # parses argv; torch_env.setup() runs before torch is imported
import torch, torch.nn as nn, bert
import statistics, time
res = {"settings": tb.SETTINGS, "torch": torch.__version__, "ms": {}, "fast_ms": {}, "cpu_ms": {}}
import ctypes
torch.randn(64, 64) @ torch.randn(64, 64)  # loads the BLAS; report which one and its kernels
libs = sorted({l.split()[-1] for l in open("/proc/self/maps") if "blas" in l.split()[-1]})
res["blas"] = ", ".join(libs)
for lib in libs:
    if "openblas" in lib:
        ob = ctypes.CDLL(lib); ob.openblas_get_corename.restype = ctypes.c_char_p
        res["blas"] += f" (OpenBLAS kernels: {ob.openblas_get_corename().decode()})"
        break
m = bert.build(12)
torch.manual_seed(0)
layer = nn.TransformerEncoderLayer(768, 12, 3072, dropout=0.0, activation="gelu",
                                   layer_norm_eps=1e-12, batch_first=True)
fast = nn.TransformerEncoder(layer, 12, enable_nested_tensor=False).eval()
torch.manual_seed(1)
for n in (128, 512):
    x = torch.randn(1, n, 768)
    with torch.no_grad():
        cpu = []  # process CPU time of each call (both threads), beside the harness's wall time
        def call():
            c = time.process_time()
            m(x)
            cpu.append(time.process_time() - c)
        res["ms"][n] = tb.bench(call)
        res["cpu_ms"][n] = statistics.median(cpu[max(1, tb.args.warmup):]) * 1e3
        res["fast_ms"][n] = tb.bench(lambda: fast(x))
    print(f"torch 12L seq={n}: plain ops {res['ms'][n]:.1f} ms, "
          f"nn.TransformerEncoder fastpath {res['fast_ms'][n]:.1f} ms", file=sys.stderr, flush=True)
json.dump(res, open(out, "w"))
EOF

# ---------------------------------------------------------------- interleaved session
# Repetitions of the benchmarks in one call run in random order (google-benchmark's random
# interleaving), so load that drifts during the call spreads over all of them.
BM_ARGS=(--benchmark_repetitions="$REPS" --benchmark_report_aggregates_only=true
         --benchmark_enable_random_interleaving=true --benchmark_out_format=json)
# posformer_bench, like the posformer CLI, chooses its OpenMP wait policy (POSFORMER_WAIT_POLICY,
# default auto: GOMP_SPINCOUNT=100000 when no other task is runnable, else PASSIVE, the setting
# tuned PyTorch gets). libgomp's default (spin 300000, then sleep) is timed beside it with
# POSFORMER_NO_REEXEC=1 and no OMP_WAIT_POLICY.
run_posformer() {
  log "posformer slot $1 (load $(load))"
  echo "$(load)" >"$OUT/load_posformer_$1.txt"
  env -u OMP_WAIT_POLICY -u POSFORMER_NO_REEXEC "$BENCH" --benchmark_filter='BM_Encoder' \
    "${BM_ARGS[@]}" --benchmark_out="$OUT/posformer_$1.json" >"$OUT/posformer_$1.txt" 2>&1
  grep -E '_median' "$OUT/posformer_$1.txt" >&2 || true
  env -u OMP_WAIT_POLICY POSFORMER_NO_REEXEC=1 "$BENCH" --benchmark_filter='BM_Encoder/' \
    "${BM_ARGS[@]}" --benchmark_out="$OUT/posdefault_$1.json" >"$OUT/posdefault_$1.txt" 2>&1
  sed 's/^BM_/default wait policy: BM_/' "$OUT/posdefault_$1.txt" | grep -E '_median' >&2 || true
  if [ -n "${BASELINE_BENCH:-}" ]; then
    env -u OMP_WAIT_POLICY -u POSFORMER_NO_REEXEC "$BASELINE_BENCH" --benchmark_filter='BM_Encoder/' \
      "${BM_ARGS[@]}" --benchmark_out="$OUT/posbase_$1.json" >"$OUT/posbase_$1.txt" 2>&1
    sed 's/^BM_/baseline: BM_/' "$OUT/posbase_$1.txt" | grep -E '_median' >&2 || true
  fi
}
# dnnl_sgemm / ops::linear on the layer's shapes and one layer's non-matmul pieces
run_matmul() {
  log "posformer matmul/components slot (load $(load))"
  echo "$(load)" >"$OUT/load_matmul.txt"
  env -u OMP_WAIT_POLICY -u POSFORMER_NO_REEXEC "$BENCH" \
    --benchmark_filter='BM_Sgemm|BM_Linear|BM_Attention|BM_Gelu|BM_AddBias|BM_LayerNorm|BM_Residual' \
    "${BM_ARGS[@]}" --benchmark_out="$OUT/matmul.json" >"$OUT/matmul.txt" 2>&1
}
run_torch() {
  log "torch slot $1 (load $(load))"
  echo "$(load)" >"$OUT/load_torch_$1.txt"
  PEERS=$PEERS peer_env $PY "$OUT/torch_encoder.py" "$OUT/torch_$1.json" --reps "$REPS" --workdir "$W"
}
run_ort() {
  log "ORT slot $1 (load $(load))"
  echo "$(load)" >"$OUT/load_ort_$1.txt"
  node "$PEERS/onnx_bench.mjs" "$W" "$REPS" >"$OUT/ort_$1.txt" 2>&1
  cat "$OUT/ort_$1.txt" >&2
  cp "$W/onnx_bench.json" "$OUT/ort_$1.json"
}
START="$(date -u +%Y-%m-%dT%H:%MZ) load $(load)"
for r in $(seq 1 "$ROUNDS"); do
  run_posformer "$r"
  run_torch "$r"
  run_ort "$r"
  [ "$r" = 1 ] && [ "$QUICK" = 0 ] && run_matmul
done
run_posformer $((ROUNDS + 1))
END="$(date -u +%Y-%m-%dT%H:%MZ) load $(load)"

# ---------------------------------------------------------------- table
$PY - "$OUT" "$ROUNDS" "$REPS" "$START" "$END" <<'EOF'
import glob, json, os, re, statistics, subprocess, sys
out, rounds, reps, start, end = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
med = statistics.median
def flops(n): return 12 * (2 * n * 768 * (4 * 768 + 2 * 3072) + 4 * n * n * 768)

def slots(prefix):
    """Per slot (file): {benchmark name without /process_time: its median aggregate}."""
    files = glob.glob(f"{out}/{prefix}_*.json") or glob.glob(f"{out}/{prefix}.json")
    res, ctx = [], {}
    for f in sorted(files, key=lambda p: int((re.findall(r"_(\d+)\.json", p) or ["0"])[0])):
        d = json.load(open(f))
        ctx = d["context"]
        res.append({b["run_name"].replace("/process_time", ""): b for b in d["benchmarks"]
                    if b.get("aggregate_name") == "median"})
    return res, ctx
pos, ctx = slots("posformer")
posdef, _ = slots("posdefault")
posbase, _ = slots("posbase")
mm, _ = slots("matmul")
torch = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/torch_*.json"))]
ort = [json.load(open(f)) for f in sorted(glob.glob(f"{out}/ort_*.json"))]
loads = {k: [open(f).read().split()[0] for f in sorted(glob.glob(f"{out}/load_{k}*.txt"))]
         for k in ("posformer", "torch", "ort", "matmul")}

def series(sl, name, field="real_time"): return [s[name][field] for s in sl if name in s]
def fmt(v): return " / ".join(f"{x:.0f}" for x in v)
cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
model = re.search(r"Model name:\s*(.*)", cpu).group(1).strip()
print(f"\nmachine: {model}, {os.cpu_count()} cores; posformer threads {ctx.get('posformer_threads')}, "
      f"features {ctx.get('cpu_features')}, wait policy {ctx.get('wait_policy')}")
print(f"session: {start} -> {end}; {rounds} peer rounds, {rounds + 1} posformer slots, {reps} reps each")
print(f"torch {torch[0]['torch']}: {torch[0]['settings']}; BLAS {torch[0]['blas']}")
print("load average (1 min) at each slot: " + "; ".join(f"{k} {', '.join(v)}" for k, v in loads.items() if v) + "\n")
print("12-layer BERT-base encoder forward, batch 1, fp32, 2 threads: median of the per-slot medians, ms (GFLOP/s)")
print(f"| {'engine':48s} | {'T = 128':>18s} | {'T = 512':>19s} | per-slot ms, T=128 | per-slot ms, T=512 |")
print(f"|{'-'*50}|{'-'*20}|{'-'*21}|---|---|")
rows = [("posformer", {n: series(pos, f"BM_Encoder/{n}/real_time") for n in (128, 512)}),
        ("PyTorch tuned, plain ops (bert.py)", {n: [t["ms"][str(n)] for t in torch] for n in (128, 512)}),
        ("PyTorch tuned, nn.TransformerEncoder fastpath", {n: [t["fast_ms"][str(n)] for t in torch] for n in (128, 512)}),
        ("ONNX Runtime 1.30 (onnxruntime-node)", {n: [o["ms"][str(n)] for o in ort] for n in (128, 512)}),
        ("posformer, libgomp default wait policy (ref.)", {n: series(posdef, f"BM_Encoder/{n}/real_time") for n in (128, 512)})]
if posbase:
    rows.append((f"baseline {os.environ.get('BASELINE_BENCH', '')}"[-48:],
                 {n: series(posbase, f"BM_Encoder/{n}/real_time") for n in (128, 512)}))
summary = {}
for name, v in rows:
    m = {n: med(v[n]) for n in (128, 512)}
    summary[name] = m
    cells = [f"{m[n]:7.1f} ({flops(n) / m[n] / 1e6:5.1f})" for n in (128, 512)]
    print(f"| {name:48s} | {cells[0]:>18s} | {cells[1]:>19s} | {fmt(v[128])} | {fmt(v[512])} |")
p = summary["posformer"]
for name in list(summary)[1:4]:
    print(f"  posformer time / {name}: " + ", ".join(f"T={n} {p[n] / summary[name][n]:.2f}" for n in (128, 512)))
if all("cpu_ms" in t for t in torch):
    print("\nprocess CPU time per forward (both threads; median of the per-slot medians), ms; spinning counts too")
    print("| engine | T = 128 | T = 512 |")
    print("|---|---|---|")
    pc = {n: med(series(pos, f"BM_Encoder/{n}/real_time", "cpu_time")) for n in (128, 512)}
    tc = {n: med([t["cpu_ms"][str(n)] for t in torch]) for n in (128, 512)}
    print(f"| posformer | {pc[128]:.0f} | {pc[512]:.0f} |")
    print(f"| PyTorch tuned, plain ops | {tc[128]:.0f} | {tc[512]:.0f} |")

if any("BM_EncoderProfiled/128/real_time" in s for s in pos):
    print("\nmatmul share of the posformer forward (profiler on, in the posformer slots; median over slots)")
    print("| T | forward ms | linears ms (GFLOP/s) | attention QK^T, PV ms (GFLOP/s), est. | matmul share | non-matmul ms (share) |")
    print("|---|---|---|---|---|---|")
    for n in (128, 512):
        e = [s[f"BM_EncoderProfiled/{n}/real_time"] for s in pos if f"BM_EncoderProfiled/{n}/real_time" in s]
        g = lambda k: med([x[k] for x in e])
        print(f"| {n} | {g('real_time'):.1f} | {g('lin_ms'):.1f} ({g('lin_GFLOPs'):.0f}) | {g('attn_mm_ms'):.1f} "
              f"({g('attn_mm_GFLOPs'):.0f}) | {g('mm_share_%'):.1f}% | {g('non_mm_ms'):.1f} ({100 - g('mm_share_%'):.1f}%) |")
if mm:
    print("\ndnnl_sgemm vs ops::linear on one layer's linear shapes, y[M,N] = x[M,K] W[N,K]^T: median GFLOP/s")
    print("| M = T | N | K | calls per layer | dnnl_sgemm | ops::linear (sgemm + bias) | ops::linear_packed (packed W, bias fused) |")
    print("|---|---|---|---|---|---|---|")
    for n in (128, 512):
        tot_fl = tot_s = 0.0
        for (N, K, calls) in ((2304, 768, 0), (768, 768, 4), (3072, 768, 1), (768, 3072, 1)):
            sg = med(series(mm, f"BM_Sgemm/{n}/{N}/{K}/real_time", "GFLOP/s"))
            li = med(series(mm, f"BM_Linear/{n}/{N}/{K}/real_time", "GFLOP/s"))
            lp_s = series(mm, f"BM_LinearPacked/{n}/{N}/{K}/real_time", "GFLOP/s")
            lp = f"{med(lp_s):.0f}" if lp_s else "-"
            fl = 2.0 * n * N * K
            tot_fl += calls * fl
            tot_s += calls * fl / (sg * 1e9)
            c = {0: "0 (torch's fused qkv)", 4: "4 (q, k, v, o)", 1: "1"}[calls]
            print(f"| {n} | {N} | {K} | {c} | {sg:.0f} | {li:.0f} | {lp} |")
        print(f"| {n} | | | the layer's mix | {tot_fl / tot_s / 1e9:.0f} | |")
    ceil = series(mm, "BM_Sgemm/2048/2048/2048/real_time", "GFLOP/s")
    if ceil:
        print(f"| 2048 | 2048 | 2048 | the ceiling (large square) | {med(ceil):.0f} | |")
    print("\none layer's non-matmul pieces, median us (x12 layers per forward); on packed weights (the default)")
    print("the bias adds, the GELU and the residual adds run fused in the gemms' epilogues, so these are the")
    print("separate passes that the unpacked path (POSFORMER_PACKED=0) pays")
    comp = [("attention core (QK^T, softmax, PV; 12 heads)", "BM_Attention/{n}/real_time", 1),
            ("exact GELU [T, 3072]", "BM_Gelu/{n}/real_time", 1),
            ("bias add [T, 768] x5 (q, k, v, o, w2)", "BM_AddBias/{n}/768/real_time", 5),
            ("bias add [T, 3072] (w1)", "BM_AddBias/{n}/3072/real_time", 1),
            ("layernorm [T, 768] x2", "BM_LayerNorm/{n}/real_time", 2),
            ("residual add [T, 768] x2", "BM_Residual/{n}/real_time", 2)]
    print("| piece | T=128 | T=512 |")
    print("|---|---|---|")
    for name, key, mult in comp:
        v = [med(series(mm, key.format(n=n))) * mult for n in (128, 512)]
        print(f"| {name} | {v[0]:.0f} | {v[1]:.0f} |")
json.dump({"summary": summary, "start": start, "end": end}, open(f"{out}/summary.json", "w"), indent=1)
print(f"\nraw outputs: {out}")
EOF

# ---------------------------------------------------------------- attention (issue 8, 2.1)
if [ "$QUICK" = 0 ]; then
  BUILD_DIR=$BUILD_DIR bash "$ROOT/bench/attention_bench.sh" --rounds "$ROUNDS" --workdir "$W"
fi
