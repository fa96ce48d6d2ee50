#!/usr/bin/python3
"""Compare an engine forward output with the PyTorch twin.

    /usr/bin/python3 tests/reference/compare.py --model DIR --out OUT.safetensors \
        --tokens "1 2 3" [--src "4 5"] [--pos-offset N] [--tol 1e-4]

Loads DIR/config.json and DIR/model.safetensors, runs the twin (float64), loads the engine's
OUT file (`hidden` [T, d], and `logits` [T, V] with an LM head) and prints, for each tensor,
max |engine - twin| and the relative error max|engine - twin| / max|twin|.
Exit status 1 when a relative error exceeds --tol (or a tensor is missing / misshapen).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402
import twin  # noqa: E402


def parse_tokens(s):
    return [int(t) for t in s.replace(",", " ").split()]


def errors(engine: torch.Tensor, ref: torch.Tensor):
    diff = (engine.to(torch.float64) - ref).abs().max().item()
    scale = ref.abs().max().item()
    return diff, diff / scale if scale > 0 else diff


def compare_dir(model_dir, out_path, tokens, src=None, pos_offset=0):
    """Returns dict name -> (max_abs, rel) and a list of problems (strings)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    tensors = safetensors_io.load_tensors(os.path.join(model_dir, "model.safetensors"))
    model = twin.build(cfg, tensors)
    return compare_model(model, out_path, tokens, src, pos_offset)


def compare_model(model, out_path, tokens, src=None, pos_offset=0, segments=None):
    h, logits = twin.forward(model, torch.tensor(tokens)[None],
                             pos_offset=pos_offset,
                             src=None if src is None else torch.tensor(src)[None],
                             segments=segments)
    eng = safetensors_io.load_tensors(out_path)
    res, problems = {}, []
    want = {"hidden": h[0]}
    if logits is not None:
        want["logits"] = logits[0]
    elif "logits" in eng:
        problems.append("engine wrote `logits` but the model has head none")
    for name, ref in want.items():
        if name not in eng:
            problems.append(f"engine output lacks `{name}`")
            continue
        if list(eng[name].shape) != list(ref.shape):
            problems.append(f"`{name}` shape {list(eng[name].shape)} != twin {list(ref.shape)}")
            continue
        if not torch.isfinite(eng[name]).all():
            problems.append(f"`{name}` has non-finite values")
            continue
        res[name] = errors(eng[name], ref)
    return res, problems


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--src", default=None)
    ap.add_argument("--pos-offset", type=int, default=0)
    ap.add_argument("--tol", type=float, default=1e-4)
    a = ap.parse_args()
    res, problems = compare_dir(a.model, a.out, parse_tokens(a.tokens),
                                None if a.src is None else parse_tokens(a.src), a.pos_offset)
    bad = bool(problems)
    for p in problems:
        print("ERROR:", p)
    for name, (mx, rel) in res.items():
        flag = "ok" if rel <= a.tol else "FAIL"
        print(f"{name}: max_abs_err {mx:.3e}  rel_err {rel:.3e}  ({flag}, tol {a.tol:g})")
        bad |= rel > a.tol
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
