"""Shared pieces of the twin tests (test_twin.py, test_grad_twin.py): running the CLI, random
weights with controlled scales, and the PASS/FAIL report with its exit status."""
import math
import os
import re
import subprocess
import sys
import traceback

import torch


class Failure(Exception):
    pass


def run_cli(args, timeout=300):
    p = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout,
                       env=dict(os.environ, OMP_NUM_THREADS="2"))
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def shell_quote(x):
    return "'" + str(x).replace("'", "'\\''") + "'"


def require_cli(path):
    """Absolute path of the posformer CLI, or a failed run when it is not there."""
    cli = os.path.abspath(path)
    if not os.access(cli, os.X_OK):
        print(f"posformer CLI not found or not executable: {cli}")
        print("0 passed, 1 failed")
        sys.exit(1)
    return cli


def random_tensors(shapes: dict, seed: int, embed_std: float = 1.0) -> dict:
    """Random weights (float64 draws rounded to float32, so exactly representable in the
    engine's F32) with scales that make every term matter: scores of O(1..5) so attention is far
    from uniform (q, k gain 1.3), FFN pre-activations O(2) so the activation's curvature matters
    (w1, w3 gain 2), position tables O(0.5..1). embed_std scales the token embedding and LM head
    (the logits)."""
    g = torch.Generator().manual_seed(seed)

    def n(shape, std):
        return torch.randn(shape, generator=g, dtype=torch.float64) * std

    out = {}
    for name in sorted(shapes):
        shp = shapes[name]
        if name in ("embed.weight", "lm_head.weight"):
            t = n(shp, embed_std)
        elif re.search(r"(attn_norm|ffn_norm|cross_norm|final_norm)\.weight$", name):
            t = 1.0 + (torch.rand(shp, generator=g, dtype=torch.float64) * 0.4 - 0.2)
        elif name.endswith(".bias"):
            t = n(shp, 0.1)
        elif name.endswith("pos_emb.weight"):
            t = n(shp, 0.5)
        elif name.endswith("rel_bias.weight"):
            t = n(shp, 1.0)
        elif name.endswith(("shaw_k", "shaw_v", "xl_u", "xl_v")):
            t = n(shp, 0.5)
        elif name.endswith("rel_emb.weight"):
            t = n(shp, 1.0)
        elif name.endswith("performer.features"):  # i.i.d. N(0, 1) rows: valid FAVOR+ features
            t = n(shp, 1.0)
        elif name.endswith(".weight") and len(shp) == 2:
            gain = 1.0
            if re.search(r"\.(q|k)\.weight$", name):
                gain = 1.3
            elif re.search(r"ffn\.w[13]\.weight$", name):
                gain = 2.0
            t = n(shp, gain / math.sqrt(shp[1]))
        else:
            raise ValueError(f"no random rule for tensor {name} {shp}")
        out[name] = t.float()
    return out


class Report:
    """One `PASS|FAIL  name  text` line per check; finish() prints the totals and exits 1 when
    anything failed."""

    def __init__(self, width):
        self.width, self.passed, self.failed, self.failures = width, 0, 0, []

    def __call__(self, name, ok, text):
        print(f"{'PASS' if ok else 'FAIL'}  {name:{self.width}s} {text}", flush=True)
        if ok:
            self.passed += 1
        else:
            self.failed += 1
            self.failures.append(name)

    def selfchecks(self, checks):
        """checks: (name, fn) with fn() -> (error, ok)."""
        for name, fn in checks:
            try:
                err, ok = fn()
                self(name, ok, f"err {err:.2e}")
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                self(name, False, f"exception {e}")

    def finish(self, footer=None):
        if self.failures:
            print("failed:", " ".join(self.failures))
        if footer:
            print(footer)
        print(f"{self.passed} passed, {self.failed} failed")
        sys.exit(1 if self.failed else 0)
