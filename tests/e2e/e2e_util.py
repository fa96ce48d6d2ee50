"""Shared pieces of the twin tests (test_twin.py, test_grad_twin.py): random weights with
controlled scales; running the CLI and the PASS/FAIL report come from the torch-free harness.py
(re-exported here)."""
import math
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Failure, Report, require_cli, run_cli, shell_quote  # noqa: E402

__all__ = ["Failure", "Report", "require_cli", "run_cli", "shell_quote", "random_tensors"]


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
