#!/usr/bin/python3
"""Exact attention forward time against T, posformer (fp32 fused, bf16 products) and the peers,
from the raw outputs of one bench/attention_bench.sh run, as one PNG (two panels).

    /usr/bin/python3 bench/plot_attention_peers.py DIR [--out bench/attention-peers.png]
                                                   [--cpu "the CPU, for the title"]

DIR is the raw-output directory attention_bench.sh prints at its end (pf_fused_N.jsonl,
pf_bf16_N.jsonl, ort_N.txt, ort_causal_N.txt, torch_N.txt). Left: non-causal, right: causal;
top: forward ms per T on log axes, lines through the medians of the rounds, dots for each round;
bottom: ONNX Runtime's median over each series' median, with issue 8's line (1.3x non-causal,
3x causal, stated at T = 4096). PyTorch is its best form at each T (the fastest median among plain ops,
masked_fill and F._scaled_dot_product_attention), as in the script's table.
"""
import argparse
import glob
import json
import os
import re
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(d):
    """{(series, causal): {T: [ms per round]}}"""
    s = {}
    for tag, name in (("fused", "posformer fp32 (fused)"), ("bf16", "posformer bf16 products")):
        for f in sorted(glob.glob(os.path.join(d, f"pf_{tag}_*.jsonl"))):
            for line in open(f):
                j = json.loads(line)
                if "forward_ms" in j:
                    s.setdefault((name, j["causal"]), {}).setdefault(j["T"], []).append(j["forward_ms"])
    for f in sorted(glob.glob(os.path.join(d, "ort_*.txt"))):
        for line in open(f):
            m = re.search(r"(non-causal|causal) 12x64 n=(\d+): ([\d.]+) ms", line)
            if m:
                s.setdefault(("ONNX Runtime (fp32)", m[1] == "causal"), {}).setdefault(int(m[2]), []).append(float(m[3]))
    torch = {}
    for f in sorted(glob.glob(os.path.join(d, "torch_[0-9]*.txt"))):
        for line in open(f):
            m = re.match(r"attn\s+n=(\d+) (non-causal|causal) (.*?)\s+([\d.]+) ms", line)
            if m:
                torch.setdefault((int(m[1]), m[2] == "causal"), {}).setdefault(m[3].strip(), []).append(float(m[4]))
    for (T, c), forms in torch.items():  # the best form's rounds
        best = min(forms.values(), key=statistics.median)
        s.setdefault(("PyTorch best form (fp32)", c), {})[T] = best
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--out", default="bench/attention-peers.png")
    ap.add_argument("--cpu", default="")
    a = ap.parse_args()
    s = load(a.dir)
    if not s:
        sys.exit(f"plot_attention_peers.py: no attention_bench.sh outputs in {a.dir}")
    styles = {"posformer fp32 (fused)": ("tab:blue", "o"), "posformer bf16 products": ("tab:green", "s"),
              "ONNX Runtime (fp32)": ("tab:red", "^"), "PyTorch best form (fp32)": ("tab:orange", "v")}
    ours = sorted({T for (n, c), pts in s.items() if n.startswith("posformer") for T in pts})
    ort = "ONNX Runtime (fp32)"
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for col, causal in enumerate((False, True)):
        ax, rx = axes[0][col], axes[1][col]
        base = s.get((ort, causal), {})
        for name, (color, marker) in styles.items():
            pts = {T: v for T, v in s.get((name, causal), {}).items() if T in ours}
            if not pts:
                continue
            Ts = sorted(pts)
            ax.plot(Ts, [statistics.median(pts[T]) for T in Ts], color=color, marker=marker, label=name)
            for T in Ts:
                ax.scatter([T] * len(pts[T]), pts[T], color=color, s=10, alpha=0.5)
            rT = [T for T in Ts if T in base]
            if name != ort and rT:
                rx.plot(rT, [statistics.median(base[T]) / statistics.median(pts[T]) for T in rT],
                        color=color, marker=marker, label=name)
        target = 3.0 if causal else 1.3
        rx.axhline(1.0, color="tab:red", lw=1)
        rx.axhline(target, color="gray", ls="--", lw=1, label=f"issue 8's line at T = 4096 ({target}x)")
        for a_ in (ax, rx):
            a_.set_xscale("log", base=2)
            a_.set_xticks(ours, [str(T) for T in ours])
            a_.grid(True, which="both", alpha=0.3)
            a_.legend(fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("forward ms (lower is better)")
        ax.set_title(("causal" if causal else "non-causal") + ", 12 heads x D 64, batch 1, 2 threads")
        rx.set_xlabel("T (sequence length)")
        rx.set_ylabel("speed-up over ONNX Runtime (medians)")
    fig.suptitle("Exact attention forward" + (f" on {a.cpu}" if a.cpu else "") +
                 " (bench/attention_bench.sh; lines: medians, dots: rounds)")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
