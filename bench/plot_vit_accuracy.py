#!/usr/bin/python3
"""Validation accuracy of a ViT training run against wall time, from its metrics.jsonl.

    /usr/bin/python3 bench/plot_vit_accuracy.py RUN_DIR OUT_PREFIX [--batch 128]

The elapsed time at step s is s * batch / images_per_s (images_per_s in metrics.jsonl is the
run's average since its start). Writes OUT_PREFIX.csv (step, seconds, val_acc, val_loss) and
OUT_PREFIX.png, with the Fashion-MNIST README's reference accuracies drawn as lines.
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("run")
ap.add_argument("out")
ap.add_argument("--batch", type=int, default=128)
ap.add_argument("--test-acc", type=float, default=None, help="final test accuracy (%%) to mark")
ap.add_argument("--tta-acc", type=float, default=None,
                help="final test accuracy (%%) with eval --tta flip, to mark")
ap.add_argument("--machine", default="2 threads, 2-core machine",
                help="what the run ran on, for the x axis label")
a = ap.parse_args()
ips, rows = {}, []
for line in open(a.run + "/metrics.jsonl"):
    r = json.loads(line)
    if "images_per_s" in r:
        ips[r["step"]] = r["images_per_s"]
    elif "val_acc" in r and r["step"] in ips and (not rows or rows[-1][0] != r["step"]):
        rows.append((r["step"], r["step"] * a.batch / ips[r["step"]], r["val_acc"], r["val_loss"]))
with open(a.out + ".csv", "w") as f:
    f.write("step,seconds,val_acc,val_loss\n")
    for s, t, acc, loss in rows:
        f.write(f"{s},{t:.1f},{acc:.4f},{loss:.4f}\n")
fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
ax.plot([t / 60 for _, t, _, _ in rows], [100 * acc for _, _, acc, _ in rows], "o-",
        label="posformer ViT (validation)")
if a.test_acc:
    ax.plot([rows[-1][1] / 60], [a.test_acc], "s", color="#d94801", label="test set, end")
if a.tta_acc:
    ax.plot([rows[-1][1] / 60], [a.tta_acc], "^", color="#6a51a3",
            label="test set, end, flip test-time augmentation")
for name, v in [("MLP 88.3", 88.3), ("XGBoost 89.8", 89.8), ("2-conv TF tutorial 91.6", 91.6),
                ("HOG+SVM 92.6", 92.6)]:
    ax.axhline(v, color="#969696", lw=0.8, ls="--")
    ax.text(0.2, v + 0.1, name, fontsize=7, color="#636363")
ax.set_xlabel(f"wall time (minutes; {a.machine})")
ax.set_ylabel("accuracy (%)")
ax.set_ylim(70, 95)
ax.grid(alpha=0.3)
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
fig.savefig(a.out + ".png")
print("wrote", a.out + ".csv", a.out + ".png")
