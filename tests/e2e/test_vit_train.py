#!/usr/bin/python3
"""End-to-end: arch vit through the CLI on real Fashion-MNIST images (Debian's
dataset-fashion-mnist, scripts/setup.sh).

    /usr/bin/python3 tests/e2e/test_vit_train.py --posformer build/posformer

Checks:
  - a tiny ViT (rope_2d, d 32, 2 layers, patch 7) trains on 400 images and its loss falls
    (mean of the last 10 steps below the mean of the first 5 by at least 0.15 nats);
  - resume is bit-exact: a run stopped at step 15 and resumed gives the same losses (every
    metrics line) and the same final weights, byte for byte, as an uninterrupted run, with
    random crop, flip and erasing, mixup / CutMix, label smoothing and the config's dropout on
    (the run keeps those settings in train.json);
  - the same with --precision bf16 (bf16 matmuls): bit-exact resume, the precision kept in
    train.json, its first loss within 2% of float32's but not equal, a resume asking for f32
    and --precision fp16 refused naming the flag;
  - eval reports accuracy, per-class accuracy and a confusion matrix whose counts sum to the
    number of images, and writes the PNG; predict prints one label and probabilities per PNG;
  - vit-resolution writes one CSV row per size (images resized), the markdown table and the
    plot, and refuses a size that is not a multiple of the patch;
  - eval --tta flip runs and says so, a bad --tta value is refused naming the flag;
  - a malformed IDX file, a file that is not a PNG, --label-smoothing / --erase / --mixup /
    --mix-prob out of range, bad mixed targets for `grad` ("mix_labels", --mix-lambda) and a
    config 'dropout' of 1 give clear errors naming what is wrong.
Prints PASS/FAIL lines and `N passed, M failed`; exit status 1 if any failed.
"""
import argparse
import json
import os
import re
import shutil
import struct
import tempfile

import harness
from harness import run_cli

CFG = {"arch": "vit", "image_size": 28, "patch_size": 7, "channels": 1, "num_classes": 10,
       "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64, "position": {"type": "rope_2d"}}
TRAIN = ["--data", "fashion-mnist", "--max-images", "400", "--batch", "16", "--lr", "3e-3",
         "--warmup", "5", "--val-fraction", "0.2", "--eval-every", "10", "--ckpt-every", "10",
         "--seed", "3", "--quiet"]


losses = harness.metrics  # every record (training steps and evaluations)


def strip_speed(rows):
    return [{k: v for k, v in r.items() if k != "images_per_s"} for r in rows]


def same_run(x, y):
    """(metrics lines of x, whether y's equal them, whether the weight files are byte-equal)"""
    lx, ly = strip_speed(losses(x)), strip_speed(losses(y))
    with open(os.path.join(x, "model.safetensors"), "rb") as f:
        wx = f.read()
    with open(os.path.join(y, "model.safetensors"), "rb") as f:
        wy = f.read()
    return lx, lx == ly, wx == wy


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--posformer", required=True)
    args = ap.parse_args()
    cli = harness.require_cli(args.posformer)
    tmp = tempfile.mkdtemp(prefix="vit_train_")
    check = harness.Report(30)

    try:
        cfg = os.path.join(tmp, "cfg.json")
        with open(cfg, "w") as f:
            json.dump(CFG, f)
        # 1. loss falls
        run = os.path.join(tmp, "run")
        rc, out, err = run_cli([cli, "train", "--config", cfg, "--out", run, "--steps", "60"]
                               + TRAIN)
        if rc != 0:
            check("train", False, err.strip()[-300:])
        else:
            ls = [r["loss"] for r in losses(run) if "loss" in r]
            first, last = sum(ls[:5]) / 5, sum(ls[-10:]) / 10
            check("loss_falls", last < first - 0.15, f"first 5 {first:.3f} -> last 10 {last:.3f}")
            acc = [r["val_acc"] for r in losses(run) if "val_acc" in r]
            check("val_metrics", len(acc) == 6 and all(0 <= a <= 1 for a in acc)
                  and all(len(r["val_class_acc"]) == 10 for r in losses(run) if "val_acc" in r),
                  f"val_acc {acc}")
            summary = [ln for ln in out.splitlines() if ln.startswith("steps 60,")]
            check("summary_counts_images", len(summary) == 1 and " images/s, " in summary[0],
                  f"final line {summary}")
        # 2. bit-exact resume with augmentation and regularisation
        aug = ["--crop-pad", "2", "--flip", "--erase", "0.5", "--label-smoothing", "0.1",
               "--mixup", "0.4", "--cutmix", "1.0", "--mix-prob", "0.8"]
        cfg_drop = os.path.join(tmp, "cfg_drop.json")
        with open(cfg_drop, "w") as f:
            json.dump(dict(CFG, dropout=0.1), f)
        a, b = os.path.join(tmp, "a"), os.path.join(tmp, "b")
        rc1, _, e1 = run_cli([cli, "train", "--config", cfg_drop, "--out", a, "--steps", "30"]
                             + TRAIN + aug)
        rc2, _, e2 = run_cli([cli, "train", "--config", cfg_drop, "--out", b, "--steps", "30",
                              "--stop-after", "15"] + TRAIN + aug)
        rc3, _, e3 = run_cli([cli, "train", "--resume", b, "--quiet"])
        if rc1 or rc2 or rc3:
            check("resume", False, (e1 + e2 + e3).strip()[-300:])
        else:
            la, eq, weq = same_run(a, b)
            check("resume_bit_exact", eq and weq and len(la) > 30,
                  f"{len(la)} metrics lines equal: {eq}, weights equal: {weq}")
            with open(os.path.join(b, "train.json")) as f:
                kept = json.load(f)
            with open(os.path.join(b, "config.json")) as f:
                kept_cfg = json.load(f)
            check("regularisation_kept_with_run",
                  kept.get("erase") == 0.5 and kept.get("label_smoothing") == 0.1
                  and kept_cfg.get("dropout") == 0.1 and kept.get("mixup") == 0.4
                  and kept.get("cutmix") == 1.0 and kept.get("mix_prob") == 0.8,
                  f"erase {kept.get('erase')}, label_smoothing {kept.get('label_smoothing')}, "
                  f"mixup {kept.get('mixup')}, cutmix {kept.get('cutmix')}, "
                  f"dropout {kept_cfg.get('dropout')}")
        # 2b. bf16 matmuls (--precision bf16): resume bit-exact, kept with the run, a different
        # precision on resume and a bad value refused naming the flag
        c, d = os.path.join(tmp, "c"), os.path.join(tmp, "d")
        bf = ["--precision", "bf16"]
        rc1, _, e1 = run_cli([cli, "train", "--config", cfg_drop, "--out", c, "--steps", "20"]
                             + TRAIN + aug + bf)
        rc2, _, e2 = run_cli([cli, "train", "--config", cfg_drop, "--out", d, "--steps", "20",
                              "--stop-after", "10"] + TRAIN + aug + bf)
        rc4, _, e4 = run_cli([cli, "train", "--resume", d, "--quiet", "--precision", "f32"])
        rc3, _, e3 = run_cli([cli, "train", "--resume", d, "--quiet"])
        rc5, _, e5 = run_cli([cli, "train", "--config", cfg, "--out", os.path.join(tmp, "e"),
                              "--steps", "2", "--precision", "fp16"] + TRAIN)
        if rc1 or rc2 or rc3:
            check("bf16_resume", False, (e1 + e2 + e3).strip()[-300:])
        else:
            lc, eq, weq = same_run(c, d)
            with open(os.path.join(d, "train.json")) as f:
                kept = json.load(f)
            check("bf16_resume_bit_exact", eq and weq and len(lc) > 20
                  and kept.get("precision") == "bf16",
                  f"{len(lc)} metrics lines equal: {eq}, weights equal: {weq}, "
                  f"kept precision {kept.get('precision')}")
            # the first step's loss is the initial model's (same data, dropout masks and init
            # as run a): bf16 moves it, but only by bf16's rounding
            x = [r["loss"] for r in lc if "loss" in r][0]
            y = [r["loss"] for r in strip_speed(losses(a)) if "loss" in r][0]
            check("bf16_first_loss_near_f32", x != y and abs(x - y) < 0.02 * abs(y),
                  f"bf16 {x:.6f} vs f32 {y:.6f}")
        check("bf16_precision_refused", rc4 != 0 and "--precision" in e4 and "bf16" in e4
              and rc5 != 0 and "--precision" in e5 and "fp16" in e5,
              f"resume f32: {e4.strip()[-160:]}; fp16: {e5.strip()[-160:]}")
        # 3. eval and predict
        if rc == 0:
            png = os.path.join(tmp, "conf.png")
            rc, out, err = run_cli([cli, "eval", run, "--data", "fashion-mnist-test",
                                    "--max-images", "200", "--confusion", png])
            rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()
                    and len(line.split()) == 10]
            total = sum(int(v) for r in rows for v in r) if rows else 0
            check("eval_confusion", rc == 0 and "accuracy" in out and total == 200
                  and os.path.getsize(png) > 1000, f"rc {rc}, matrix sum {total}; {err.strip()[-200:]}")
            # --precision bf16 (bf16 linears and attention products): loss and accuracy near f32's
            rcb, outb, errb = run_cli([cli, "eval", run, "--data", "fashion-mnist-test",
                                       "--max-images", "200", "--confusion", png, "--precision", "bf16"])
            def loss_acc(text):
                m = re.search(r"loss ([\d.]+), accuracy ([\d.]+)%", text)
                return (float(m[1]), float(m[2])) if m else (None, None)
            (l32, a32), (l16, a16) = loss_acc(out), loss_acc(outb)
            check("eval_bf16", rcb == 0 and l16 is not None and l32 is not None
                  and abs(l16 - l32) < 0.02 * l32 + 0.01 and abs(a16 - a32) <= 2.0,
                  f"f32 loss {l32} acc {a32}; bf16 loss {l16} acc {a16}; {errb.strip()[-160:]}")
            # test-time augmentation: flip runs and says so; a bad value is refused naming the flag
            rc2, out2, err2 = run_cli([cli, "eval", run, "--data", "fashion-mnist-test",
                                       "--max-images", "64", "--confusion", png, "--tta", "flip"])
            rc3, _, err3 = run_cli([cli, "eval", run, "--data", "fashion-mnist-test",
                                    "--tta", "rotate"])
            check("eval_tta", rc2 == 0 and "test-time augmentation: flip" in out2
                  and rc3 != 0 and "--tta" in err3 and "rotate" in err3,
                  f"flip rc {rc2}; bad value: {err3.strip()[-160:]}")
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            import gzip
            raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
            pngs = []
            for i in range(2):
                img = [[raw[16 + i * 784 + r * 28 + c] / 255.0 for c in range(28)]
                       for r in range(28)]
                p = os.path.join(tmp, f"img{i}.png")
                plt.imsave(p, img, cmap="gray", vmin=0, vmax=1)
                pngs.append(p)
            rc, out, err = run_cli([cli, "predict", run, "--images"] + pngs)
            lines = out.strip().splitlines()
            ok = rc == 0 and len(lines) == 2
            for line in lines if ok else []:
                parts = line.split("\t")
                probs = [float(x.split(":")[1]) for x in parts[2:]]
                ok = ok and parts[1].startswith("label ") and 0 < sum(probs) <= 1.0001 \
                    and probs == sorted(probs, reverse=True)
            check("predict", ok, out.strip().replace("\n", " | ")[:200] or err.strip()[-200:])
        # 3b. resolution table: accuracy at resized image sizes into CSV, markdown, PNG
        if os.path.isdir(run):
            pre = os.path.join(tmp, "res")
            rc, out, err = run_cli([cli, "vit-resolution", run, "--sizes", "28", "35",
                                    "--max-images", "50", "--out", pre])
            ok = rc == 0 and os.path.getsize(pre + ".png") > 1000
            if ok:
                with open(pre + ".csv") as f:
                    csv_rows = f.read().strip().splitlines()[1:]
                with open(pre + ".md") as f:
                    md = f.read()
                ok = len(csv_rows) == 2 and [r.split(",")[3] for r in csv_rows] == ["28", "35"] \
                    and all(r.split(",")[6] == "50" for r in csv_rows) and "| 28 | 35 |" in md
            check("vit_resolution", ok, (out + err).strip().replace("\n", " | ")[-200:])
            rc, out, err = run_cli([cli, "vit-resolution", run, "--sizes", "30", "--out", pre])
            check("vit_resolution_bad_size", rc != 0 and "30" in err and "patch_size 7" in err,
                  err.strip()[-200:])
        # 4. bad inputs named
        bad = os.path.join(tmp, "bad-images")
        with open(bad, "wb") as f:
            f.write(struct.pack(">IIII", 0x801, 1, 28, 28) + bytes(784))
        lab = os.path.join(tmp, "labels")
        with open(lab, "wb") as f:
            f.write(struct.pack(">II", 0x801, 1) + bytes(1))
        rc, out, err = run_cli([cli, "train", "--config", cfg, "--out", os.path.join(tmp, "x"),
                                "--data", f"idx:{bad},{lab}", "--steps", "1", "--quiet"])
        check("bad_idx_named", rc != 0 and "bad magic" in err and "bad-images" in err,
              err.strip()[-200:])
        notpng = os.path.join(tmp, "not.png")
        with open(notpng, "w") as f:
            f.write("plain text")
        if os.path.isdir(run):
            rc, out, err = run_cli([cli, "predict", run, "--images", notpng])
            check("bad_png_named", rc != 0 and "not.png" in err and "PNG" in err,
                  err.strip()[-200:])
        # posformer grad's mixed targets: bad "mix_labels" / --mix-lambda are named
        if os.path.isdir(run):
            img = [[[[0.0] * 28 for _ in range(28)]] for _ in range(2)]
            for name, batch, extra, want in (
                    ("mix_lambda_without_labels", {"images": img, "labels": [1, 2]},
                     ["--mix-lambda", "0.5"], "mix_labels"),
                    ("mix_labels_not_integers", {"images": img, "labels": [1, 2],
                                                 "mix_labels": [1, "x"]}, [], "mixed-in label"),
                    ("mix_label_out_of_range", {"images": img, "labels": [1, 2],
                                                "mix_labels": [1, 10]}, [], "mixed-in label 10"),
                    ("mix_lambda_out_of_range", {"images": img, "labels": [1, 2],
                                                 "mix_labels": [2, 1]}, ["--mix-lambda", "1.5"],
                     "mixing weight")):
                bpath = os.path.join(tmp, name + ".json")
                with open(bpath, "w") as f:
                    json.dump(batch, f)
                rc, _, err = run_cli([cli, "grad", run, "--batch", bpath, "--out",
                                      os.path.join(tmp, name + ".st")] + extra)
                check(f"grad_{name}", rc != 0 and want in err, err.strip()[-200:])
        # regularisation flags out of range are refused naming the flag
        for flag, bad in (("--label-smoothing", "1.5"), ("--erase", "-0.1"), ("--mixup", "-1"),
                          ("--mix-prob", "2")):
            rc, _, err = run_cli([cli, "train", "--config", cfg, "--out", os.path.join(tmp, "r"),
                                  "--steps", "2", flag, bad] + TRAIN)
            check(f"bad{flag.replace('-', '_')}", rc != 0 and flag in err, err.strip()[-200:])
        with open(os.path.join(tmp, "bad_drop.json"), "w") as f:
            json.dump(dict(CFG, dropout=1.0), f)
        rc, _, err = run_cli([cli, "train", "--config", os.path.join(tmp, "bad_drop.json"),
                              "--out", os.path.join(tmp, "r2"), "--steps", "2"] + TRAIN)
        check("bad_dropout_named", rc != 0 and "dropout" in err and "[0, 1)" in err,
              err.strip()[-200:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    check.finish()


if __name__ == "__main__":
    main()
