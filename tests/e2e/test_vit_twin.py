#!/usr/bin/python3
"""End-to-end: arch vit (patch embedding, CLS, 2-D and 1-D positions, pooling, head) against the
float64 PyTorch twin tests/reference/vit_twin.py.

    /usr/bin/python3 tests/e2e/test_vit_twin.py --posformer build/posformer [--only REGEX]

For each case: `posformer init`, weights replaced by larger random ones (so every term
matters), `posformer grad` on a batch of random images and labels (sometimes at another image
size than the config's: the patch grid grows or shrinks, learned_2d is resized, rope_2d under
a RoPE scaling per axis computed by the twin on its own); checks
  - logits and loss within 1e-4 (relative to the largest logit / the loss);
  - every parameter's gradient within 1e-4 of autograd's (relative to its largest entry, or to
    1e-3 of the largest gradient of all for one that is zero in exact arithmetic: attn.k.bias
    without rotary positions);
  - the twin's patch embedding (F.conv2d) equals a timm-style torch.nn.Conv2d module loaded
    with the same weights, and equals the engine's layout: patches flattened as (c, i, j) times
    patch_embed.weight^T.
Prints one line per case and `N passed, M failed`; exit status 1 if any failed.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import e2e_util  # noqa: E402
import safetensors_io  # noqa: E402
import vit_twin  # noqa: E402
from e2e_util import run_cli  # noqa: E402

torch.set_num_threads(1)
TOL = 1e-4

BASE = {"arch": "vit", "image_size": [8, 12], "patch_size": 4, "channels": 2, "num_classes": 5,
        "d_model": 16, "n_layers": 2, "n_heads": 2, "d_ff": 24}


def case(name, over=None, pos=None, size=None, B=3, train=None):
    """train: the training forward's options ({"dropout_seed", "label_smoothing", "mix_lambda"}:
    the last mixes in the labels reversed, as the batcher pairs images), passed to
    `posformer grad` and to the twin."""
    cfg = dict(BASE)
    cfg.update(over or {})
    cfg["position"] = pos or {"type": "none"}
    return name, cfg, size, B, train or {}


CASES = [
    case("rope_2d_split_cls", pos={"type": "rope_2d"}),
    case("rope_2d_interleaved_mean_gqa_partial", {"pool": "mean", "n_kv_heads": 1},
         {"type": "rope_2d", "layout": "axial_interleaved", "rotary_dim": 4, "base": 100.0}),
    case("rope_2d_cls_none", pos={"type": "rope_2d", "cls_position": "none"}),
    case("rope_2d_larger_images", pos={"type": "rope_2d", "layout": "axial_interleaved"},
         size=(12, 16)),
    # RoPE scalings per axis (trained grid 2 x 3; factors default to new / trained grid per axis)
    case("rope_2d_linear_auto_up", pos={"type": "rope_2d", "scaling": {"type": "linear"}},
         size=(16, 20)),
    case("rope_2d_ntk_interleaved_mean", {"pool": "mean"},
         {"type": "rope_2d", "layout": "axial_interleaved", "scaling": {"type": "ntk"}},
         size=(12, 16)),
    case("rope_2d_dynamic_ntk_given_factors",
         pos={"type": "rope_2d", "scaling": {"type": "dynamic_ntk", "factor": [2, 1.5]}},
         size=(16, 16)),
    case("rope_2d_yarn_ramp_cls_origin",
         pos={"type": "rope_2d", "base": 10000.0,
              "scaling": {"type": "yarn", "beta_fast": 2.0, "beta_slow": 0.25}},
         size=(16, 24)),
    case("rope_2d_yarn_cls_none_interleaved",
         pos={"type": "rope_2d", "layout": "axial_interleaved", "cls_position": "none",
              "scaling": {"type": "yarn", "factor": 3}}, size=(12, 20)),
    case("rope_2d_llama3_blend", pos={"type": "rope_2d", "base": 100.0, "scaling": {
        "type": "llama3", "factor": [2, 1.5], "low_freq_factor": 0.05, "high_freq_factor": 0.5}},
         size=(12, 20)),
    case("rope_2d_linear_partial_gqa", {"n_kv_heads": 1},
         {"type": "rope_2d", "layout": "axial_interleaved", "rotary_dim": 4,
          "scaling": {"type": "linear"}}, size=(12, 16)),
    case("learned_2d_bicubic_same", pos={"type": "learned_2d"}),
    case("learned_2d_bicubic_up", pos={"type": "learned_2d"}, size=(16, 20)),
    case("learned_2d_bilinear_up_mean", {"pool": "mean"},
         {"type": "learned_2d", "interpolation": "bilinear"}, size=(12, 20)),
    case("learned_2d_bilinear_down", pos={"type": "learned_2d", "interpolation": "bilinear"},
         size=(4, 8)),
    case("sincos_2d_postln_rms_swiglu_nobias",
         {"norm_position": "post", "norm": "rmsnorm", "activation": "swiglu", "bias": False},
         {"type": "sincos_2d"}, size=(12, 8)),
    case("none_mean", {"pool": "mean"}),
    case("rope_1d_half", pos={"type": "rope", "layout": "half"}),
    case("learned_1d", {"max_len": 40}, {"type": "learned"}),
    case("sinusoidal_1d", {"channels": 3, "patch_size": 2, "image_size": 6},
         {"type": "sinusoidal"}),
    # (appended: each case's seed is its index) regularisation (docs/training.md): dropout (embeddings + every sublayer), label smoothing
    case("dropout_smooth_rope_2d", {"dropout": 0.3}, {"type": "rope_2d"}, B=4,
         train={"dropout_seed": 424242, "label_smoothing": 0.1}),
    case("dropout_postln_learned_2d_mean", {"dropout": 0.2, "norm_position": "post", "pool": "mean"},
         {"type": "learned_2d"}, size=(12, 16), train={"dropout_seed": 5}),
    # mixup / CutMix targets: lambda q(labels) + (1 - lambda) q(labels reversed), torch's
    # cross_entropy with class probabilities (and label smoothing on top)
    case("mixed_targets_smooth_rope_2d", pos={"type": "rope_2d"}, B=4,
         train={"mix_lambda": 0.35, "label_smoothing": 0.1}),
    case("mixed_targets_mean_sincos_2d", {"pool": "mean"}, {"type": "sincos_2d"}, B=3,
         train={"mix_lambda": 0.8}),
]


def weights(shapes, seed):
    g = torch.Generator().manual_seed(seed + 1000)
    rest = {n: s for n, s in shapes.items() if n not in ("cls_token",)}
    w = e2e_util.random_tensors(rest, seed)
    if "cls_token" in shapes:
        w["cls_token"] = (torch.randn(shapes["cls_token"], generator=g, dtype=torch.float64)
                          * 0.5).float()
    return w


def rel(a, b, floor=1e-12):
    return float((a - b).abs().max()) / max(float(b.abs().max()), floor)


def run_case(cli, tmp, name, cfg, size, B, seed, train):
    d = os.path.join(tmp, name)
    os.makedirs(d)
    with open(os.path.join(d, "config.json.in"), "w") as f:
        json.dump(cfg, f)
    rc, out, err = run_cli([cli, "init", "--config", os.path.join(d, "config.json.in"), "--out",
                            os.path.join(d, "m")])
    if rc != 0:
        return False, f"init failed: {err.strip()}"
    shapes = {n: list(t.shape) for n, t in
              safetensors_io.load_tensors(os.path.join(d, "m", "model.safetensors")).items()}
    w32 = weights(shapes, seed)
    safetensors_io.save(os.path.join(d, "m", "model.safetensors"), w32)
    with open(os.path.join(d, "m", "config.json")) as f:
        full = json.load(f)
    g = torch.Generator().manual_seed(seed)
    ih, iw = size or tuple(full["image_size"])
    images = torch.randn(B, full["channels"], ih, iw, generator=g, dtype=torch.float64).float()
    labels = torch.randint(0, full["num_classes"], (B,), generator=g)
    batch = {"images": images.tolist(), "labels": labels.tolist()}
    if "mix_lambda" in train:
        batch["mix_labels"] = labels.flip(0).tolist()
    with open(os.path.join(d, "batch.json"), "w") as f:
        json.dump(batch, f)
    rc, out, err = run_cli([cli, "grad", os.path.join(d, "m"), "--batch",
                            os.path.join(d, "batch.json"), "--out", os.path.join(d, "g.st"),
                            "--steps", "1"] +
                           (["--dropout-seed", str(train["dropout_seed"])]
                            if "dropout_seed" in train else []) +
                           (["--label-smoothing", repr(train["label_smoothing"])]
                            if "label_smoothing" in train else []) +
                           (["--mix-lambda", repr(train["mix_lambda"])]
                            if "mix_lambda" in train else []))
    if rc != 0:
        return False, f"grad failed: {err.strip()}"
    eng = safetensors_io.load_tensors(os.path.join(d, "g.st"))
    w = {n: t.to(torch.float64).clone().requires_grad_(True) for n, t in w32.items()}
    x = images.to(torch.float64)
    logits = vit_twin.forward(full, w, x, dropout_seed=train.get("dropout_seed"))
    target = labels
    if "mix_lambda" in train:  # class probabilities: torch smooths them as q = (1 - eps) p + eps / K
        K = full["num_classes"]
        lam = train["mix_lambda"]
        oh = torch.nn.functional.one_hot
        target = (lam * oh(labels, K) + (1 - lam) * oh(labels.flip(0), K)).to(torch.float64)
    loss = torch.nn.functional.cross_entropy(logits, target,
                                             label_smoothing=train.get("label_smoothing", 0.0))
    loss.backward()
    errs = {"logits": rel(eng["logits"].double(), logits.detach()),
            "loss": abs(float(eng["losses"][0]) - float(loss)) / abs(float(loss))}
    # a gradient that is zero in exact arithmetic (the k bias under a softmax without rotation:
    # a shift of every score of a row) is rounding noise on both sides: the k biases are compared
    # against 1e-2 of the largest gradient (they measured up to 1.4e-4 of it), the rest 1e-3
    gmax = max(float(t.grad.abs().max()) for t in w.values())
    for n, t in w.items():
        floor = (1e-2 if n.endswith("attn.k.bias") else 1e-3) * gmax
        errs["grad." + n] = rel(eng["grad." + n].double(), t.grad, floor)
    # timm-style Conv2d module = the twin's functional patch embedding = the engine's layout
    conv = vit_twin.patch_embed_conv(full, {n: t.detach() for n, t in w.items()})
    with torch.no_grad():
        a = conv(x).flatten(2).transpose(1, 2)
        b = vit_twin.patch_embed(full, {n: t.detach() for n, t in w.items()}, x)
        p, C = full["patch_size"], full["channels"]
        P = x.unfold(2, p, p).unfold(3, p, p)                # [B, C, gh, gw, p, p]
        P = P.permute(0, 2, 3, 1, 4, 5).reshape(B, -1, C * p * p)
        c = P @ w["patch_embed.weight"].detach().T
        if "patch_embed.bias" in w:
            c = c + w["patch_embed.bias"].detach()
    errs["conv2d_vs_twin"] = rel(b, a)
    errs["conv2d_vs_flat_patches"] = rel(c, a)
    worst = max(errs, key=errs.get)
    ok = errs[worst] <= TOL
    return ok, f"worst {worst} {errs[worst]:.2e} (loss {float(loss):.5f}, {len(w)} params)"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--posformer", required=True)
    ap.add_argument("--only", default=None)
    ap.add_argument("--keep", default=None)
    args = ap.parse_args()
    cli = e2e_util.require_cli(args.posformer)
    tmp = args.keep or tempfile.mkdtemp(prefix="vit_twin_")
    os.makedirs(tmp, exist_ok=True)
    passed = failed = 0
    try:
        for i, (name, cfg, size, B, train) in enumerate(CASES):
            if args.only and not re.search(args.only, name):
                continue
            try:
                ok, text = run_case(cli, tmp, name, cfg, size, B, seed=11 + i, train=train)
            except Exception as e:  # noqa: BLE001 - report and go on
                ok, text = False, f"{type(e).__name__}: {e}"
            print(f"{'PASS' if ok else 'FAIL'}  {name:42s} {text}", flush=True)
            passed += ok
            failed += not ok
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
