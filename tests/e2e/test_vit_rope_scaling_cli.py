#!/usr/bin/python3
"""RoPE scalings per axis of an arch vit model with position rope_2d at the command line
(`eval --image-size --rope-scaling`, `predict --rope-scaling`, `vit-resolution --rope-scalings`):
  - at the trained size every default factor is 1: each scaling equals the unscaled model;
  - at 56 x 56 (grid 8 x 8 over the trained 4 x 4) linear changes the result, the default factor
    equals --rope-factor 2 (new / trained grid), and the override equals the same scaling
    written in the model's config;
  - predict under --rope-scaling equals predict of the model with the scaling in its config;
    info shows a per-axis factor;
  - vit-resolution adds one row per --rope-scalings type for the rope_2d model only (scaling
    column; at the trained size every row equals the unscaled one);
  - refusals name the flag: --rope-original-len for rope_2d, any --rope-* flag for a vit model
    with another position, a factor below 1, an --image-size not a multiple of the patch.
Usage: test_vit_rope_scaling_cli.py --posformer PATH [--keep]"""
import csv
import json
import os
import shutil
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, HERE)
import e2e_util  # noqa: E402
import harness  # noqa: E402
import safetensors_io  # noqa: E402

h = harness.Harness("posformer_vit_rope_cli_", __doc__, timeout=300)
PF, W, run, check, write = h.pf, h.dir, h.run, h.check, h.write
BASE = {"arch": "vit", "image_size": 28, "patch_size": 7, "channels": 1, "num_classes": 10,
        "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 48}
IMAGES = ["--data", "fashion-mnist-test", "--max-images", "40"]


def model(name, position):
    cfg = dict(BASE, position=position)
    d = os.path.join(W, name)
    run("init", "--config", write(name + ".json", json.dumps(cfg)), "--out", d, "--seed", "5")
    # larger random weights than init's, so that positions (and their scaling) change the output
    st = os.path.join(d, "model.safetensors")
    shapes = {n: list(t.shape) for n, t in safetensors_io.load_tensors(st).items()}
    cls = shapes.pop("cls_token")  # not among random_tensors' rules (as test_vit_twin.py)
    w = e2e_util.random_tensors(shapes, 23, embed_std=0.5)
    w["cls_token"] = (torch.randn(cls, generator=torch.Generator().manual_seed(24),
                                  dtype=torch.float64) * 0.5).float()
    safetensors_io.save(st, w)
    return d


def with_scaling(d, name, scaling):
    out = os.path.join(W, name)
    shutil.copytree(d, out)
    cp = os.path.join(out, "config.json")
    with open(cp) as f:
        cfg = json.load(f)
    cfg["position"]["scaling"] = scaling
    with open(cp, "w") as f:
        json.dump(cfg, f)
    return out


def result(d, *extra):
    """eval's summary line up to the scaling note: 'loss L, accuracy A%'."""
    p = run("eval", d, *IMAGES, "--confusion", os.path.join(W, "c.png"), *extra)
    line = [ln for ln in p.out.splitlines() if " images (" in ln][0]
    return line.split(": ", 1)[1].split(" (rope scaling")[0].split("), ", 1)[1]


ROPE = model("rope", {"type": "rope_2d"})
LEARNED = model("learned", {"type": "learned_2d"})


def t_trained_size_unscaled():
    plain = result(ROPE)
    for t in ("linear", "ntk", "dynamic_ntk", "yarn", "llama3"):
        got = result(ROPE, "--rope-scaling", t)
        assert got == plain, f"{t} at the trained size: {got} vs {plain}"


def t_larger_images():
    plain = result(ROPE, "--image-size", "56")
    lin = result(ROPE, "--image-size", "56", "--rope-scaling", "linear")
    assert lin != plain, f"linear at 56 equals plain: {lin}"
    two = result(ROPE, "--image-size", "56", "--rope-scaling", "linear", "--rope-factor", "2")
    assert two == lin, f"default factor (56/28 = 2) {lin} vs --rope-factor 2 {two}"
    for t, sc in (("yarn", {"type": "yarn"}), ("ntk", {"type": "ntk", "factor": 2})):
        conf = with_scaling(ROPE, "rope_" + t, sc)
        flags = ["--rope-scaling", t] + (["--rope-factor", "2"] if "factor" in sc else [])
        over = result(ROPE, "--image-size", "56", *flags)
        inconf = result(conf, "--image-size", "56")
        assert over == inconf, f"{t}: override {over} vs config {inconf}"
        assert over != plain, f"{t} at 56 equals plain"


def t_predict():
    import gzip
    raw = gzip.open("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").read()
    # one 56 x 56 gray PNG (each pixel doubled), written without matplotlib
    import struct
    import zlib
    rows = b"".join(b"\0" + bytes(raw[16 + (r // 2) * 28 + c // 2] for c in range(56))
                    for r in range(56))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff))
    png = write("img56.png", b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(
        ">IIBBBBB", 56, 56, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b""))
    plain = run("predict", ROPE, "--images", png, "--top", "10").out
    over = run("predict", ROPE, "--images", png, "--top", "10", "--rope-scaling", "linear").out
    conf = run("predict", with_scaling(ROPE, "rope_lin", {"type": "linear"}), "--images", png,
               "--top", "10").out
    assert over == conf and over != plain, f"override {over!r} config {conf!r} plain {plain!r}"
    info = run("info", with_scaling(ROPE, "rope_pair", {"type": "yarn", "factor": [2, 1.5]})).out
    assert "rope_2d, scaling yarn s=2x1.5" in info, info


def t_vit_resolution_rows():
    pre = os.path.join(W, "res")
    run("vit-resolution", ROPE, LEARNED, "--sizes", "28", "56", "--max-images", "40", "--out",
        pre, "--rope-scalings", "linear,ntk,yarn")
    with open(pre + ".csv") as f:
        rows = list(csv.DictReader(f))
    got = [(os.path.basename(r["model"]), r["scaling"], r["size"]) for r in rows]
    want = [("rope", s, z) for s in ("none", "linear s=auto", "ntk s=auto", "yarn s=auto")
            for z in ("28", "56")] + [("learned", "none", "28"), ("learned", "none", "56")]
    assert got == want, f"rows {got}"
    at28 = {(r["accuracy"], r["loss"]) for r in rows if r["model"] == ROPE and r["size"] == "28"}
    assert len(at28) == 1, f"rope_2d rows differ at the trained size: {at28}"
    at56 = {(r["accuracy"], r["loss"]) for r in rows if r["model"] == ROPE and r["size"] == "56"}
    assert len(at56) == 4, f"scalings alike at 56: {at56}"
    with open(pre + ".md") as f:
        md = f.read()
    assert "| scaling |" in md and "linear s=auto" in md, md


def refused(args, *words):
    p = run(*args, ok=False)
    assert p.returncode != 0, f"accepted: {args}"
    for w in words:
        assert w in p.err, f"{w!r} not in {p.err.strip()[-300:]!r}"


def t_refusals():
    refused(["eval", ROPE, *IMAGES, "--rope-scaling", "yarn", "--rope-original-len", "4"],
            "--rope-original-len", "rope_2d", "4 x 4")
    refused(["eval", LEARNED, *IMAGES, "--rope-scaling", "linear"],
            "--rope-scaling", "rope_2d", "learned_2d")
    refused(["predict", LEARNED, "--images", "x.png", "--rope-scaling", "linear"],
            "rope_2d", "learned_2d")
    refused(["vit-resolution", LEARNED, "--sizes", "28", "--out", os.path.join(W, "r2"),
             "--rope-scaling", "ntk"], "rope_2d", "learned_2d")
    refused(["eval", ROPE, *IMAGES, "--rope-scaling", "linear", "--rope-factor", "0.5"],
            "--rope-factor", "0.5")
    refused(["eval", ROPE, *IMAGES, "--rope-scaling", "ntk_aware"], "--rope-scaling", "ntk_aware")
    refused(["eval", ROPE, *IMAGES, "--image-size", "30"], "--image-size", "30", "patch_size 7")
    refused(["vit-resolution", ROPE, "--sizes", "28", "--out", os.path.join(W, "r3"),
             "--rope-scalings", "linear,warp"], "--rope-scalings", "warp")


check("every scaling at the trained size = unscaled", t_trained_size_unscaled)
check("56x56: linear changes it, auto factor = 2, override = config", t_larger_images)
check("predict --rope-scaling = the scaling in the config; info", t_predict)
check("vit-resolution --rope-scalings rows", t_vit_resolution_rows)
check("refusals name the flag", t_refusals)
h.finish()
