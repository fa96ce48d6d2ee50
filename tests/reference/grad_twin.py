"""Backward and AdamW twin of posformer, on top of the float64 forward twin (twin.py).

    model = load_model(DIR)                       # or twin.build(cfg, tensors)
    leaves = make_leaves(model)                   # name -> float64 leaf tensor, requires_grad
    loss, grads = loss_and_grads(model, batch)    # autograd, float64
    losses = adamw_losses(model, batch, steps=5, lr=1e-3, weight_decay=0.1,
                          betas=(0.9, 0.95), eps=1e-8)

batch: dict {"tokens": [[...]] (B x T), "targets": [[...]] (B x T, -1 = ignored),
             "src": [[...]] (encoder_decoder only), "segments": [[...]] (B x T document ids,
             optional: packed documents, twin.py)}, the same JSON the engine's `grad` reads.

Loss: logits = twin.forward(model, tokens, pos_offset=0, src) (which applies the config's
embed_scale to the token lookup, so autograd gives embed.weight the lookup's gradient times the
scale plus the tied head's unscaled one) ; mean over all (b, t) with
target >= 0 of cross_entropy(logits[b, t], target)  (torch.nn.functional.cross_entropy with
ignore_index=-1, reduction="mean").

AdamW: torch.optim.AdamW (float64, amsgrad=False) with two parameter groups: decay (weight
matrices, embeddings, position tables) and no-decay (norm weights / biases and every `.bias`
tensor, including DeBERTa's pos_q / pos_k biases), see is_decay(); buffers (is_buffer:
performer's random features) are not parameters at all. The step counter and the
learning rate are the same for both groups; the loss is recorded before each step.
"""
import json
import os
import re
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402
import twin  # noqa: E402

DT = torch.float64

_NORM = re.compile(r"(attn_norm|cross_norm|ffn_norm|final_norm)\.(weight|bias)$")


def is_decay(name: str) -> bool:
    """AdamW weight decay applies: not to norm parameters, not to any `.bias` tensor
    (`rel_bias.weight` of T5 is a position table, it decays)."""
    if _NORM.search(name):
        return False
    if name.endswith(".bias"):
        return False
    return True


def is_buffer(name: str) -> bool:
    """Non-trainable buffers (performer's random features): no gradient, no AdamW, no decay."""
    return name.endswith("performer.features")


def load_model(model_dir: str):
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = json.load(f)
    tensors = safetensors_io.load_tensors(os.path.join(model_dir, "model.safetensors"))
    return twin.build(cfg, tensors)


def make_leaves(model) -> dict:
    """Replaces model.w by float64 leaf tensors with requires_grad (same values); returns them.
    twin.py reads every weight through model.w, so autograd sees all parameters."""
    leaves = {n: t.detach().to(DT).clone().requires_grad_(True) for n, t in model.w.items()
              if not is_buffer(n)}
    model.w = dict(model.w, **leaves)   # buffers stay plain tensors
    return leaves


def _batch_tensors(batch: dict):
    tokens = torch.as_tensor(batch["tokens"], dtype=torch.long)
    targets = torch.as_tensor(batch["targets"], dtype=torch.long)
    src = batch.get("src")
    if src is not None:
        src = torch.as_tensor(src, dtype=torch.long)
    if tokens.shape != targets.shape:
        raise ValueError(f"tokens {list(tokens.shape)} vs targets {list(targets.shape)}")
    return tokens, targets, src


def loss_of(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy over targets >= 0 (a 0-dim float64 tensor, differentiable)."""
    tokens, targets, src = _batch_tensors(batch)
    if "segments" in batch:  # packed documents: the twin takes one row of segment ids at a time
        rows = [twin.forward(model, tokens[b:b + 1], pos_offset=0,
                             src=None if src is None else src[b:b + 1],
                             segments=batch["segments"][b])[1] for b in range(tokens.shape[0])]
        logits = None if rows[0] is None else torch.cat(rows, dim=0)
    else:
        _, logits = twin.forward(model, tokens, pos_offset=0, src=src,
                                 dropout_seed=batch.get("dropout_seed"))
    if logits is None:
        raise ValueError("the loss needs an LM head (head: lm)")
    V = logits.shape[-1]
    if int((targets >= 0).sum()) == 0:
        raise ValueError("batch has no counted targets")
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=-1,
                           reduction="mean", label_smoothing=float(batch.get("label_smoothing", 0)))


def loss_and_grads(model, batch: dict):
    """Returns (loss float, dict name -> float64 gradient) at the model's current weights.
    Calls make_leaves when model.w are not leaves with requires_grad yet."""
    if not all(t.requires_grad and t.is_leaf for n, t in model.w.items() if not is_buffer(n)):
        make_leaves(model)
    names = sorted(n for n in model.w if not is_buffer(n))
    loss = loss_of(model, batch)
    gs = torch.autograd.grad(loss, [model.w[n] for n in names], allow_unused=True)
    grads = {}
    for n, g in zip(names, gs):
        grads[n] = torch.zeros_like(model.w[n]) if g is None else g.detach()
    return float(loss.item()), grads


def adamw_losses(model, batch: dict, steps: int, lr: float, weight_decay: float,
                 betas=(0.9, 0.95), eps: float = 1e-8, first_grads=None):
    """Runs `steps` torch.optim.AdamW steps (constant lr) on the batch, starting from the model's
    current weights (modified in place); returns the losses recorded before each step.

    first_grads: optional dict name -> tensor used as the gradient of the FIRST step instead of
    autograd's (the loss is still torch's). AdamW's first update is lr * g / (|g| + eps), i.e.
    about lr * sign(g) for every element, however small g is; an element whose gradient is
    below the fp32 round-off of another implementation can take the opposite sign there, and
    one such element can move the later losses by far more than 1e-5 relative (see
    tests/e2e/test_grad_twin.py, step1_tiebreak)."""
    leaves = make_leaves(model)
    dec = [leaves[n] for n in sorted(leaves) if is_decay(n)]
    nodec = [leaves[n] for n in sorted(leaves) if not is_decay(n)]
    groups = [{"params": dec, "weight_decay": weight_decay}]
    if nodec:
        groups.append({"params": nodec, "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, amsgrad=False)
    losses = []
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        loss = loss_of(model, batch)
        losses.append(float(loss.item()))
        loss.backward()
        for p in leaves.values():     # a parameter the loss does not reach still steps (decay)
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        if first_grads is not None and len(losses) == 1:
            for n, g in first_grads.items():
                leaves[n].grad.copy_(g.to(DT))
        opt.step()
    return losses


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="loss / gradient norms / AdamW losses of a batch")
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch", required=True)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--weight-decay", type=float, default=0.1)
    a = ap.parse_args()
    with open(a.batch) as f:
        b = json.load(f)
    m = load_model(a.model)
    loss, grads = loss_and_grads(m, b)
    print(f"loss {loss:.10f}")
    for n in sorted(grads):
        print(f"  {n:50s} max|g| {grads[n].abs().max().item():.3e}  decay={is_decay(n)}")
    print("losses", adamw_losses(load_model(a.model), b, a.steps, a.lr, a.weight_decay))
