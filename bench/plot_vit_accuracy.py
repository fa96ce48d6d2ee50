#!/usr/bin/python3
"""Validation accuracy of a ViT training run against wall time, from its metrics.jsonl.

    /usr/bin/python3 bench/plot_vit_accuracy.py RUN_DIR OUT_PREFIX [--batch 128]
    /usr/bin/python3 bench/plot_vit_accuracy.py RUN_DIR OUT_PREFIX --eval-checkpoints POSFORMER \
        [--data fashion-mnist-test]

The elapsed time at step s is (images seen by step s) / images_per_s (images_per_s in
metrics.jsonl is the run's average since its start; runs whose records lack the image count use
s * batch). By default the accuracy is the run's validation accuracy (its val_acc records);
with --eval-checkpoints, every complete checkpoint the run kept (train --keep-last large enough)
is evaluated on --data with that posformer binary, after the run, so a run trained on all
images (--val-fraction 0) gets a test-accuracy curve without evaluations slowing it. Writes
OUT_PREFIX.csv (step, seconds, accuracy, loss, and which set) and OUT_PREFIX.png, with the
Fashion-MNIST README's reference accuracies drawn as lines.
"""
import argparse
import json
import os
import re
import subprocess
import tempfile

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
ap.add_argument("--eval-checkpoints", metavar="POSFORMER", default=None,
                help="evaluate the run's kept checkpoints with this posformer binary")
ap.add_argument("--data", default="fashion-mnist-test", help="--eval-checkpoints: eval --data")
a = ap.parse_args()
ips, seen, rows = {}, {}, []
for line in open(a.run + "/metrics.jsonl"):
    r = json.loads(line)
    if "images_per_s" in r:
        ips[r["step"]] = r["images_per_s"]
        seen[r["step"]] = r.get("tokens", r["step"] * a.batch)
    elif "val_acc" in r and r["step"] in ips and (not rows or rows[-1][0] != r["step"]):
        if not a.eval_checkpoints:
            rows.append((r["step"], seen[r["step"]] / ips[r["step"]], r["val_acc"], r["val_loss"]))
which = "validation"
if a.eval_checkpoints:
    which = a.data
    ckdir = os.path.join(a.run, "checkpoints")
    steps = sorted(int(n[5:]) for n in os.listdir(ckdir)
                   if re.fullmatch(r"step-[0-9]+", n) and os.path.exists(os.path.join(ckdir, n, "COMPLETE")))
    for step in steps:
        if step not in ips:
            continue
        with tempfile.TemporaryDirectory() as tmp:  # a model directory: the run's config + these weights
            for name in ("config.json", "tokenizer.json"):
                if os.path.exists(os.path.join(a.run, name)):
                    os.symlink(os.path.abspath(os.path.join(a.run, name)), os.path.join(tmp, name))
            os.symlink(os.path.abspath(os.path.join(ckdir, f"step-{step:09d}", "model.safetensors")),
                       os.path.join(tmp, "model.safetensors"))
            out = subprocess.run([a.eval_checkpoints, "eval", tmp, "--data", a.data], capture_output=True,
                                 text=True, check=True).stdout
        m = re.search(r"loss ([0-9.]+), accuracy ([0-9.]+)%", out)
        if not m:
            raise SystemExit(f"no accuracy in eval's output for step {step}: {out!r}")
        rows.append((step, seen[step] / ips[step], float(m.group(2)) / 100, float(m.group(1))))
        print(f"step {step}: {m.group(2)}%")
with open(a.out + ".csv", "w") as f:
    f.write("step,seconds,accuracy,loss,set\n")
    for s_, t, acc, loss in rows:
        f.write(f"{s_},{t:.1f},{acc:.4f},{loss:.4f},{which}\n")
fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
ax.plot([t / 60 for _, t, _, _ in rows], [100 * acc for _, _, acc, _ in rows], "o-",
        label=f"posformer ViT ({which})")
if a.test_acc:
    ax.plot([rows[-1][1] / 60], [a.test_acc], "s", color="#d94801", label="test set, end")
if a.tta_acc:
    ax.plot([rows[-1][1] / 60], [a.tta_acc], "^", color="#6a51a3",
            label="test set, end, flip test-time augmentation")
for name, v in [("MLP 88.3", 88.3), ("XGBoost 89.8", 89.8), ("2-conv TF tutorial 91.6", 91.6),
                ("HOG+SVM 92.6", 92.6)]:
    ax.axhline(v, color="#969696", lw=0.8, ls="--")
    ax.text(0.2, v + 0.1, name, fontsize=7, color="#636363")
ax.axvline(15, color="#cb181d", lw=0.8, ls=":")
ax.text(14.9, 93.6, "15 min", fontsize=7, color="#cb181d", ha="right")
ax.axhline(90, color="#cb181d", lw=0.8, ls=":")
ax.set_xlabel(f"wall time (minutes; {a.machine})")
ax.set_ylabel("accuracy (%)")
ax.set_ylim(70, 95)
ax.grid(alpha=0.3)
ax.legend(loc="lower right", fontsize=8)
fig.tight_layout()
fig.savefig(a.out + ".png")
print("wrote", a.out + ".csv", a.out + ".png")
