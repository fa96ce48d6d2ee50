#!/usr/bin/python3
"""Plots the CSV of `posformer bench attention --error` (approximation error of approximate
attention variants against exact softmax) as one PNG.

    build/posformer bench attention --error --variants nystrom,nystrom:pinv_iterations=20 \\
        --heads 4 --sweep 4,8,16,32,64,128,256,512 --csv docs/attention_error.csv
    /usr/bin/python3 bench/plot_attention_error.py --csv docs/attention_error.csv \\
        --out docs/attention_error.png

One line per (series, inputs): x = the series' approximation size (its `size_field`: nystrom's
n_landmarks, ...), log scale; y = ||out - softmax||_F / ||softmax||_F, log scale. Colour = inputs,
line style = series, so a new variant (performer: n_features) is one more series in the CSV.
"""
import argparse
import csv
import itertools
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--csv", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    rows = list(csv.DictReader(open(a.csv)))
    if not rows:
        raise SystemExit(f"{a.csv}: no rows")
    lines = defaultdict(list)
    for r in rows:
        lines[(r["series"], r["inputs"], r["T"])].append((int(r["size"]), float(r["rel_err"])))
    series = list(dict.fromkeys(k[0] for k in lines))
    inputs = list(dict.fromkeys(k[1] for k in lines))
    colours = dict(zip(inputs, itertools.cycle(["C0", "C1", "C2", "C3", "C4", "C5"])))
    styles = dict(zip(series, itertools.cycle(["-", "--", ":", "-."])))
    markers = dict(zip(series, itertools.cycle(["o", "s", "^", "D"])))
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for (se, inp, T), pts in lines.items():
        pts.sort()
        field = next(r["size_field"] for r in rows if r["series"] == se)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=styles[se],
                marker=markers[se], color=colours[inp], label=f"{se} ({field}), {inp}, T={T}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("approximation size (nystrom: landmarks, performer: random features)")
    ax.set_ylabel("||out - softmax||_F / ||softmax||_F")
    r0 = rows[0]
    ax.set_title(f"approximation error vs exact softmax ({r0['heads']} heads x D {r0['head_dim']}, "
                 "fp32, fixed seeds)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)


if __name__ == "__main__":
    main()
