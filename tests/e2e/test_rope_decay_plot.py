#!/usr/bin/python3
"""`posformer plot rope-decay`: the CSV is well formed and its values equal an independent
computation of SPEC 3's decay bound f(m) = (2/d) sum_{j=1..d/2} |sum_{i<j} exp(1j m theta_i)|
(frequencies from the twin's rope_frequencies, written from SPEC's formulas; each partial sum
recomputed in Python complex arithmetic), the PNG is a PNG, --out takes a file or a directory,
and `plot RUN_DIR` keeps its meaning. Usage: test_rope_decay_plot.py --posformer PATH [--keep]"""
import cmath
import csv
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import harness  # noqa: E402
import twin  # noqa: E402

h = harness.Harness("posformer_rope_decay_", __doc__, timeout=120)
W, run, expect = h.dir, h.run, h.expect


def bound(theta, m):
    """(2/d) sum_j |S_j|, d/2 = len(theta), each S_j summed from scratch."""
    total = 0.0
    for j in range(1, len(theta) + 1):
        total += abs(sum(cmath.exp(1j * m * theta[i]) for i in range(j)))
    return total / len(theta)


# a small case: d = 12, distances 0..40, base 500, s = 2, L0 = 16 (dynamic_ntk at length 41)
d, M, base, s, L0 = 12, 40, 500.0, 2.0, 16
png = os.path.join(W, "sub", "decay.png")
run("plot", "rope-decay", "--dim", str(d), "--max-distance", str(M), "--base", str(base),
    "--factor", str(s), "--original-len", str(L0), "--out", png)
with open(png[:-4] + ".csv") as f:
    rows = list(csv.reader(f))
names = ["none", "linear", "ntk", "dynamic_ntk", "yarn", "llama3"]
expect(rows[0] == ["distance"] + names, f"CSV header {rows[0]}")
expect(len(rows) == M + 2 and all(len(r) == 7 for r in rows), "CSV: one row per distance 0..M")
expect([int(r[0]) for r in rows[1:]] == list(range(M + 1)), "CSV distances 0..M")
worst = 0.0
for c, name in enumerate(names, start=1):
    theta, _ = twin.rope_frequencies(d, base, {"type": name, "factor": s, "original_len": L0},
                                     M + 1)
    for r in rows[1:]:
        want = bound(theta, int(r[0]))
        worst = max(worst, abs(float(r[c]) - want) / max(1.0, abs(want)))
expect(worst < 1e-12, f"every value equals the independent computation (worst rel {worst:.1e})")
expect(float(rows[1][1]) == (d // 2 + 1) / 2, "f(0) = (d/2 + 1)/2")
expect(len({r[1] for r in rows[2:]}) > 1 and rows[5][1] != rows[5][2], "the curves differ")
with open(png, "rb") as f:
    expect(f.read(8) == b"\x89PNG\r\n\x1a\n", "the PNG is a PNG")
# a directory --out
out_dir = os.path.join(W, "dir")
os.makedirs(out_dir)
run("plot", "rope-decay", "--dim", "8", "--max-distance", "16", "--out", out_dir)
expect(os.path.exists(os.path.join(out_dir, "rope_decay.png")) and
       os.path.exists(os.path.join(out_dir, "rope_decay.csv")), "--out DIR writes rope_decay.*")
p = run("plot", "rope-decay", "--dim", "7", "--out", out_dir, ok=False)
expect(p.returncode != 0 and "--dim must be even" in p.err, f"odd --dim refused: {p.err.strip()}")
# plot RUN_DIR keeps its meaning
p = run("plot", os.path.join(W, "no_run"), ok=False)
expect(p.returncode != 0 and "metrics.jsonl not found" in p.err, "plot RUN_DIR: missing run named")
p = run("plot", "--help")
expect("rope-decay" in p.out and "DIR" in p.out, "plot --help lists DIR and rope-decay")
h.finish()
