#!/usr/bin/python3
"""Time of each attention variant against T, and the measured crossover where causal linear
attention beats exact (fused) softmax, next to two predictions:

  - FLOPs: where the variants' own FLOP counts (their cost(), the figures `bench attention`
    divides by) cross: causal softmax 2 T^2 D H forward, linear ~4 T D^2 H (+ the chunk-local
    quadratic part), so about T = 2D for linear at equal FLOP rates;
  - SPEC.md 7: the quadratic part of a whole layer overtakes its projections and FFN at
    T ~ 6 d (d = H * D): the point where replacing softmax could pay for a whole model.

    /usr/bin/python3 bench/plot_attention_time.py --posformer build/posformer \\
        --variants softmax,linear,linear_cos,performer --seq-lens 256,512,1024,2048,4096,8192 \\
        --csv docs/attention_time.csv --out docs/attention_time.png

Runs `posformer bench attention --json --masks causal --forward-only` (12 heads x D 64 by
default, each case in a fresh process), writes the rows to CSV and draws one PNG (log-log).
--from-csv redraws from a CSV without measuring.
"""
import argparse
import csv
import json
import math
import subprocess

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def measure(a):
    cmd = [a.posformer, "bench", "attention", "--json", "--masks", "causal", "--forward-only",
           "--variants", a.variants, "--seq-lens", a.seq_lens, "--heads", str(a.heads),
           "--head-dim", str(a.head_dim), "--reps", str(a.reps)]
    if a.threads:
        cmd += ["--threads", str(a.threads)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    rows = [json.loads(line) for line in p.stdout.splitlines() if line.startswith("{")]
    bad = [r for r in rows if "error" in r]
    if p.returncode != 0 or bad or not rows:
        raise SystemExit(f"bench failed ({p.returncode}): {bad or p.stderr[-2000:]}")
    cpu = subprocess.run([a.posformer, "bench", "attention", "--seq-lens", "16", "--masks", "full",
                          "--heads", "1", "--reps", "1", "--forward-only"],
                         capture_output=True, text=True).stdout.split("CPU:")[-1].split("\n")[0]
    out = []
    for r in rows:
        flops = r["forward_gflops"] * r["forward_ms"] * 1e6
        out.append({"variant": r["variant"], "T": r["T"], "heads": r["heads"],
                    "head_dim": r["head_dim"], "threads": r["threads"], "forward_ms": r["forward_ms"],
                    "forward_gflops": r["forward_gflops"], "flops": flops, "cpu": cpu.strip()})
    return out


def crossover(xs, a, b):
    """First T (log-interpolated) where series a drops below series b; None if never."""
    for i in range(1, len(xs)):
        d0, d1 = math.log(a[i - 1] / b[i - 1]), math.log(a[i] / b[i])
        if d0 >= 0 > d1 or (i == 1 and d0 < 0):
            if d0 < 0:
                return xs[0]
            f = d0 / (d0 - d1)
            return math.exp(math.log(xs[i - 1]) + f * (math.log(xs[i]) - math.log(xs[i - 1])))
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--posformer", default="build/posformer")
    ap.add_argument("--variants", default="softmax,linear,linear_cos,performer")
    ap.add_argument("--seq-lens", default="256,512,1024,2048,4096,8192")
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--csv", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--from-csv", action="store_true", help="redraw from --csv, measure nothing")
    a = ap.parse_args()
    if a.from_csv:
        rows = [dict(r, T=int(r["T"]), forward_ms=float(r["forward_ms"]), flops=float(r["flops"]),
                     heads=int(r["heads"]), head_dim=int(r["head_dim"]))
                for r in csv.DictReader(open(a.csv))]
    else:
        rows = measure(a)
        with open(a.csv, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    by = {}
    for r in rows:
        by.setdefault(r["variant"], []).append(r)
    for v in by.values():
        v.sort(key=lambda r: r["T"])
    H, D = rows[0]["heads"], rows[0]["head_dim"]
    d = H * D
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for name, rs in by.items():
        ax.plot([r["T"] for r in rs], [r["forward_ms"] for r in rs], marker="o", label=name)
    lines = []
    if "softmax" in by and "linear" in by:
        Ts = [r["T"] for r in by["softmax"]]
        lin = {r["T"]: r for r in by["linear"]}
        if all(T in lin for T in Ts):
            t_meas = crossover(Ts, [lin[T]["forward_ms"] for T in Ts],
                               [r["forward_ms"] for r in by["softmax"]])
            t_flop = crossover(Ts, [lin[T]["flops"] for T in Ts], [r["flops"] for r in by["softmax"]])
            for x, style, label in ((t_meas, "-", "measured"), (t_flop, "--", "FLOPs equal"),
                                    (6 * d, ":", f"SPEC 7: 6d = {6 * d}")):
                if x:
                    ax.axvline(x, color="grey", linestyle=style, alpha=0.7)
                    ax.text(x, ax.get_ylim()[1], f" {label}\n T={x:.0f}", fontsize=7, va="top")
            lines.append(f"causal linear beats fused softmax from T = "
                         f"{t_meas:.0f}" if t_meas else "causal linear never beats softmax here")
            lines.append(f"FLOP counts cross at T = {t_flop:.0f}" if t_flop else "FLOPs never cross")
            lines.append(f"SPEC 7 (whole layer, d = {d}): T ~ 6d = {6 * d}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("T (causal, batch 1)")
    ax.set_ylabel("forward time, ms (median)")
    ax.set_title(f"attention forward time vs T: {H} heads x D {D}, fp32, "
                 f"{rows[0]['threads']} threads\nCPU: {rows[0]['cpu'][:80]}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
