#!/usr/bin/python3
"""Renders the benchmark results as one PNG (two panels) from the raw outputs of a session.

    /usr/bin/python3 bench/plot_results.py --bert DIR --train FILE [--out bench/results.png]
                                           [--cpu "the CPU, for the title"]

--bert   the raw-output directory bench/run.sh prints at its end (summary.json, posformer_N.json,
         torch_N.json, ort_N.json)
--train  the results.jsonl of bench/train_bench.sh, or its log (every line that is a JSON object
         with "who" counts)
Left: BERT-base encoder forward, ms per engine at T = 128 and 512 (bars: the medians of
run.sh's table; dots: each slot). Right: training tokens/s, posformer vs PyTorch, learned and
RoPE (bars: median over rounds; dots: each round).
"""
import argparse
import glob
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def bert_series(d):
    """{engine: {T: [per-slot ms]}} and the medians from summary.json."""
    summ = json.load(open(os.path.join(d, "summary.json")))["summary"]
    slots = {}

    def gb(prefix):
        out = {128: [], 512: []}
        for f in sorted(glob.glob(os.path.join(d, f"{prefix}_*.json"))):
            for b in json.load(open(f))["benchmarks"]:
                if b.get("aggregate_name") != "median":
                    continue
                for n in (128, 512):
                    if b["run_name"].replace("/process_time", "") == f"BM_Encoder/{n}/real_time":
                        out[n].append(b["real_time"])
        return out

    slots["posformer"] = gb("posformer")
    torch = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(d, "torch_*.json")))]
    ort = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(d, "ort_*.json")))]
    slots["PyTorch tuned, plain ops (bert.py)"] = {n: [t["ms"][str(n)] for t in torch]
                                                   for n in (128, 512)}
    slots["PyTorch tuned, nn.TransformerEncoder fastpath"] = {
        n: [t["fast_ms"][str(n)] for t in torch] for n in (128, 512)}
    slots["ONNX Runtime 1.30 (onnxruntime-node)"] = {n: [o["ms"][str(n)] for o in ort]
                                                     for n in (128, 512)}
    med = {k: {int(n): v for n, v in summ[k].items()} for k in slots if k in summ}
    return slots, med, json.load(open(os.path.join(d, "summary.json"))).get("start", "")


def train_series(path):
    rows = []
    for line in open(path):
        line = line.strip()
        if line.startswith("{") and '"who"' in line:
            r = json.loads(line)
            if r["who"] in ("posformer", "torch") and "tok_s" in r:
                rows.append(r)
    out = {}
    for r in rows:
        out.setdefault((r["who"], r["pos"]), []).append(r["tok_s"])
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bert", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results.png"))
    ap.add_argument("--cpu", default="", help="the CPU the runs were measured on, for the title")
    a = ap.parse_args()
    if not os.path.isfile(os.path.join(a.bert, "summary.json")):
        sys.exit(f"plot_results: --bert {a.bert}: no summary.json there (give the raw-output "
                 "directory bench/run.sh prints at its end)")
    if not os.path.isfile(a.train):
        sys.exit(f"plot_results: --train {a.train}: no such file")
    try:
        slots, med, start = bert_series(a.bert)
        tr = train_series(a.train)
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"plot_results: cannot read the results: {type(e).__name__}: {e}")
    if not tr:
        sys.exit(f"plot_results: no training results in {a.train}")

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    names = list(slots)
    short = {"posformer": "posformer", "PyTorch tuned, plain ops (bert.py)": "PyTorch (tuned)",
             "PyTorch tuned, nn.TransformerEncoder fastpath": "PyTorch fast path",
             "ONNX Runtime 1.30 (onnxruntime-node)": "ONNX Runtime 1.30"}
    colors = ["#1f5fa8", "#e07b39", "#f2b880", "#5aa469"]
    width = 0.8 / len(names)
    for i, n in enumerate(names):
        for j, T in enumerate((128, 512)):
            x = j + (i - (len(names) - 1) / 2) * width
            m = med.get(n, {}).get(T, statistics.median(slots[n][T]))
            ax1.bar(x, m, width * 0.92, color=colors[i % len(colors)],
                    label=short.get(n, n) if j == 0 else None)
            ax1.plot([x] * len(slots[n][T]), slots[n][T], "k.", ms=4)
            ax1.text(x, max([m] + slots[n][T]) * 1.01, f"{m:.0f}", ha="center", va="bottom",
                     fontsize=8)
    ax1.set_xticks([0, 1], ["T = 128", "T = 512"])
    ax1.set_ylabel("ms per forward (lower is better)")
    ax1.set_title("BERT-base 12-layer encoder forward, batch 1, fp32, 2 threads")
    ax1.legend(fontsize=8)
    ax1.grid(axis="y", alpha=0.3)

    for j, pos in enumerate(("learned", "rope")):
        for i, who in enumerate(("posformer", "torch")):
            v = tr.get((who, pos), [])
            if not v:
                continue
            x = j + (i - 0.5) * 0.38
            m = statistics.median(v)
            ax2.bar(x, m, 0.35, color=colors[i], label=("posformer" if i == 0 else "PyTorch (tuned)")
                    if j == 0 else None)
            ax2.plot([x] * len(v), v, "k.", ms=4)
            ax2.text(x, max([m] + v) * 1.01, f"{m:.0f}", ha="center", va="bottom", fontsize=8)
    ax2.set_xticks([0, 1], ["learned positions", "RoPE"])
    ax2.set_ylabel("training tokens/s (higher is better)")
    ax2.set_title("GPT d256, 4 layers, T 256, batch 8, AdamW")
    ax2.set_ylim(top=ax2.get_ylim()[1] * 1.18)  # room for the legend above the value labels
    ax2.legend(fontsize=8, ncols=2, loc="upper center")
    ax2.grid(axis="y", alpha=0.3)
    fig.suptitle(f"posformer vs peers, same machine, interleaved runs (bars: medians, dots: "
                 f"each slot/round); BERT session {start.split(' load')[0]}"
                 + (f"\n{a.cpu}" if a.cpu else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(a.out)


if __name__ == "__main__":
    main()
