#!/usr/bin/python3
"""End-to-end: the posformer backward pass and AdamW against PyTorch autograd / torch.optim.AdamW.

    /usr/bin/python3 tests/e2e/test_grad_twin.py --posformer build/posformer [--only REGEX]
                                                 [--keep DIR] [--tol 1e-4] [--loss-tol 1e-5]

For every position type x objective (clm on a decoder, mlm on an encoder, seq2seq on an
encoder_decoder) plus variants (post-LN, rmsnorm + swiglu + no bias + untied head, GQA,
gelu_tanh, relu, partial / half RoPE, scale overrides), it writes a small config, runs
`posformer init`, replaces model.safetensors by larger random weights (so gradients are
O(1e-3 .. 1) and position terms matter), builds a batch of its own (fixed seeds) and runs
`posformer grad --steps 5 --lr 1e-3 --weight-decay 0.1 --beta1 0.9 --beta2 0.95 --eps 1e-8`.
The float64 twin (tests/reference/grad_twin.py on top of twin.py) gives the loss, the autograd
gradient of every parameter and the losses of 5 torch.optim.AdamW steps. Checks:
  - loss: |engine - torch| / |torch| <= tol (1e-4);
  - every parameter: max|g_engine - g_torch| / max(max|g_torch|, floor) <= tol, where floor is
    only there for gradients that are zero in exact arithmetic (see grad_floor());
  - every parameter tensor against float64 central differences: the engine's directional
    derivative <g_engine, u> along a random unit direction u of that tensor vs
    (L(w + h u) - L(w - h u)) / 2h with L the float64 twin's loss (its forward only, no
    autograd; h = 1e-5), within tol relative to the gradient tensor's norm
    (engine_vs_finite_diff);
  - the 5 AdamW losses: each within loss_tol (1e-5) relative;
  - a second AdamW run with a large weight decay (lr 1e-2, wd 5, 3 steps, same tolerance) so
    that which parameters decay (decay vs no-decay groups: no norms, no `.bias`) moves the loss
    far more than fp32 noise (a wrong group for DeBERTa's pos_q/pos_k biases shows as ~1e-3).
AdamW's first update is ~lr * sign(g) for every element, so an element whose gradient is at the
fp32 round-off level (both implementations correct, opposite signs) would turn the 5-step check
into a coin flip; torch's FIRST step therefore takes the engine's gradient for exactly such
elements (step1_tiebreak: only where the update directions differ and the gradients agree to
the gradient tolerance). The count and the loss error without it are printed.
The twin itself is self-checked first: autograd vs float64 central differences of the twin
loss (directional derivatives) and torch.optim.AdamW vs a hand-written AdamW.
Prints one line per case and ends with `N passed, M failed`; exit status 1 if any failed.
"""
import argparse
import copy
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
import e2e_util  # noqa: E402
import grad_twin  # noqa: E402
import safetensors_io  # noqa: E402
import twin  # noqa: E402
from e2e_util import Failure, run_cli  # noqa: E402
from e2e_util import shell_quote as _q  # noqa: E402

torch.set_num_threads(1)   # tiny float64 models: threads only add overhead

POS_TYPES = ["none", "learned", "sinusoidal", "sinusoidal_half", "rope", "alibi", "t5", "shaw",
             "xl", "deberta"]
OBJECTIVES = {"clm": "decoder", "mlm": "encoder", "seq2seq": "encoder_decoder"}

V = 40              # vocabulary: 0 .. 37 ordinary tokens, 38 = bos, 39 = mask
BOS, MASK = 38, 39

BASE = {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 48, "activation": "gelu",
        "norm": "layernorm", "norm_position": "pre", "vocab_size": V, "max_len": 32}

# Scheme parameters small enough that clipping / log buckets happen at T = 8 .. 16.
POS_PARAMS = {
    "rope": {"layout": "interleaved", "base": 10000},
    "t5": {"num_buckets": 8, "max_distance": 12},
    "shaw": {"clip": 3},
    "deberta": {"span": 4},
}

# AdamW settings of the acceptance line, and a strong-decay probe.
ADAM = {"steps": 5, "lr": 1e-3, "wd": 0.1, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8}
ADAM_DECAY = {"steps": 3, "lr": 1e-2, "wd": 5.0, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8}


def make_case(name, objective, cfg_over=None, pos=None, seed=1, T=None, S=None, docs=None,
              train=None):
    """docs: per batch row, the lengths of the documents packed into its T tokens (clm, mlm).
    train: {"dropout_seed": s, "label_smoothing": e}, the training forward's options (the
    config's "dropout" > 0 needs a seed), put into the batch for both sides."""
    cfg = copy.deepcopy(BASE)
    cfg["arch"] = OBJECTIVES[objective]
    if pos is not None:
        p = {"type": pos}
        p.update(POS_PARAMS.get(pos, {}))
        cfg["position"] = p
    cfg.update(cfg_over or {})
    T = T or {"clm": 16, "mlm": 12, "seq2seq": 10}[objective]
    S = S or (13 if objective == "seq2seq" else None)
    return {"name": name, "objective": objective, "cfg": cfg, "T": T, "S": S, "seed": seed,
            "docs": docs, "train": train or {}}


def all_cases():
    cases = []
    seed = 300
    for pos in POS_TYPES:
        for obj in OBJECTIVES:
            seed += 1
            cases.append(make_case(f"{pos}.{obj}", obj, pos=pos, seed=seed))
    rope_half_partial = {"position": {"type": "rope", "layout": "half", "rotary_dim": 4,
                                      "base": 500}}
    rsw = {"norm": "rmsnorm", "activation": "swiglu", "bias": False, "tie_embeddings": False}
    cases += [
        make_case("rope_half_partial.clm", "clm", rope_half_partial, seed=401),
        make_case("rope_half_partial.mlm", "mlm", rope_half_partial, seed=402),
        make_case("rope_half.seq2seq", "seq2seq",
                  {"position": {"type": "rope", "layout": "half"}}, seed=403),
        make_case("rope_interleaved_partial.clm", "clm",
                  {"position": {"type": "rope", "layout": "interleaved", "rotary_dim": 6}},
                  seed=404),
        make_case("post_ln_t5.clm", "clm", {"norm_position": "post"}, pos="t5", seed=405),
        make_case("post_ln_alibi.mlm", "mlm", {"norm_position": "post"}, pos="alibi", seed=406),
        make_case("post_ln_learned.seq2seq", "seq2seq", {"norm_position": "post"}, pos="learned",
                  seed=407),
        make_case("post_ln_rms_deberta.clm", "clm", {"norm_position": "post", "norm": "rmsnorm"},
                  pos="deberta", seed=408),
        make_case("rms_swiglu_nobias_untied_rope.clm", "clm", rsw, pos="rope", seed=409),
        make_case("rms_swiglu_nobias_untied_deberta.mlm", "mlm", rsw, pos="deberta", seed=410),
        make_case("rms_swiglu_nobias_untied_shaw.seq2seq", "seq2seq", rsw, pos="shaw", seed=411),
        make_case("rms_swiglu_nobias_untied_xl.seq2seq", "seq2seq", rsw, pos="xl", seed=412),
        make_case("swiglu_bias_t5.mlm", "mlm", {"activation": "swiglu"}, pos="t5", seed=413),
        make_case("gqa2_rope.clm", "clm", {"n_kv_heads": 2}, pos="rope", seed=414),
        # regularisation (docs/training.md): residual + embedding dropout with the engine's
        # counter-based masks (dropout_ref.py), label smoothing; every arch, pre- and post-LN
        make_case("dropout_smooth_rope.clm", "clm", {"dropout": 0.25}, pos="rope", seed=430,
                  train={"dropout_seed": 12345, "label_smoothing": 0.1}),
        make_case("dropout_post_ln_learned.mlm", "mlm", {"dropout": 0.4, "norm_position": "post"},
                  pos="learned", seed=431, train={"dropout_seed": 2 ** 63 + 77}),
        make_case("dropout_smooth_t5.seq2seq", "seq2seq", {"dropout": 0.1}, pos="t5", seed=432,
                  train={"dropout_seed": 9, "label_smoothing": 0.2}),
        make_case("smooth_alibi.clm", "clm", pos="alibi", seed=433,
                  train={"label_smoothing": 0.3}),
        # RoPE scalings (SPEC 3): D = 8; dynamic NTK past L0 = 8 at T = 16; YaRN's mscale
        *[make_case(f"rope_{n}.{obj}", obj, {"position": {"type": "rope", "scaling": sc}},
                    seed=450 + i)
          for i, (n, obj, sc) in enumerate([
              ("linear", "clm", {"type": "linear", "factor": 4}),
              ("ntk", "mlm", {"type": "ntk", "factor": 8}),
              ("dynamic_ntk", "clm", {"type": "dynamic_ntk", "factor": 4, "original_len": 8}),
              ("yarn", "clm", {"type": "yarn", "factor": 16, "original_len": 256}),
              ("yarn", "seq2seq", {"type": "yarn", "factor": 4, "original_len": 64}),
              ("llama3", "clm", {"type": "llama3", "factor": 8, "original_len": 64})])],
        # RealFormer (attention.residual): scores carried layer to layer; T 80 / 70 span two
        # query blocks of the backward, so carried gradients cross block edges
        make_case("realformer_post_alibi.clm", "clm",
                  {"norm_position": "post", "n_layers": 3, "max_len": 128,
                   "attention": {"residual": True}}, pos="alibi", seed=431, T=80),
        make_case("realformer_shaw.clm", "clm",
                  {"max_len": 128, "attention": {"residual": True}}, pos="shaw", seed=432, T=70),
        make_case("realformer_t5.seq2seq", "seq2seq", {"attention": {"residual": True}}, pos="t5",
                  seed=433),
        make_case("realformer_rope_gqa2.mlm", "mlm",
                  {"n_kv_heads": 2, "attention": {"residual": True}}, pos="rope", seed=434),
        make_case("gqa2_xl.mlm", "mlm", {"n_kv_heads": 2}, pos="xl", seed=415),
        make_case("gqa2_deberta.seq2seq", "seq2seq", {"n_kv_heads": 2}, pos="deberta", seed=416),
        make_case("gqa2_shaw.clm", "clm", {"n_kv_heads": 2}, pos="shaw", seed=417),
        make_case("gqa1_t5.seq2seq", "seq2seq", {"n_kv_heads": 1}, pos="t5", seed=418),
        make_case("gelu_tanh_sinusoidal.clm", "clm", {"activation": "gelu_tanh"},
                  pos="sinusoidal", seed=419),
        make_case("gelu_tanh_alibi.seq2seq", "seq2seq", {"activation": "gelu_tanh"}, pos="alibi",
                  seed=420),
        make_case("relu_learned.mlm", "mlm", {"activation": "relu"}, pos="learned", seed=421),
        make_case("relu_rope.clm", "clm", {"activation": "relu"}, pos="rope", seed=422),
        make_case("t5_scale1.clm", "clm", {"attention": {"scale": 1.0}}, pos="t5", seed=423),
        make_case("deberta_scale.mlm", "mlm", {"attention": {"scale": 0.2}}, pos="deberta",
                  seed=424),
        make_case("alibi_h6.clm", "clm", {"d_model": 48, "n_heads": 6}, pos="alibi", seed=425),
        make_case("learned_full_max_len.clm", "clm", {"max_len": 16}, pos="learned", seed=426),
        make_case("rms_eps1e-2_shaw.mlm", "mlm", {"norm": "rmsnorm", "norm_eps": 1e-2},
                  pos="shaw", seed=427),
        # embed_scale: dE of the lookup carries the scale, the tied head's part does not
        make_case("embed_sqrtd_sinusoidal.clm", "clm", {"embed_scale": "sqrt_d"},
                  pos="sinusoidal", seed=428),
        make_case("embed_sqrtd_learned.seq2seq", "seq2seq", {"embed_scale": "sqrt_d"},
                  pos="learned", seed=429),
        make_case("embed_scale2.5_untied_sinusoidal_half.mlm", "mlm",
                  {"embed_scale": 2.5, "tie_embeddings": False}, pos="sinusoidal_half", seed=430),
    ]
    # linear attention (absolute schemes only); T = 70 crosses the engine's 64-row chunks
    lin = {"attention": {"type": "linear"}}
    cases += [
        make_case("linear_none.clm", "clm", lin, pos="none", seed=428),
        make_case("linear_learned.clm", "clm", lin, pos="learned", seed=429),
        make_case("linear_sinusoidal.mlm", "mlm", lin, pos="sinusoidal", seed=430),
        make_case("linear_none.mlm", "mlm", lin, pos="none", seed=431),
        make_case("linear_learned.seq2seq", "seq2seq", lin, pos="learned", seed=432),
        make_case("linear_sinusoidal.seq2seq", "seq2seq", lin, pos="sinusoidal", seed=433),
        make_case("linear_none.seq2seq", "seq2seq", lin, pos="none", seed=434),
        make_case("linear_sinusoidal_half_long.clm", "clm", dict(lin, max_len=80),
                  pos="sinusoidal_half", seed=435, T=70),
        make_case("linear_learned_long.seq2seq", "seq2seq", dict(lin, max_len=80), pos="learned",
                  seed=436, T=66, S=70),
        make_case("linear_gqa2_sinusoidal.clm", "clm", dict(lin, n_kv_heads=2),
                  pos="sinusoidal", seed=437),
        make_case("linear_gqa1_none.mlm", "mlm", dict(lin, n_kv_heads=1), pos="none", seed=438),
        make_case("linear_post_rms_swiglu_untied.seq2seq", "seq2seq",
                  dict(lin, norm_position="post", **rsw), pos="learned", seed=439),
    ]
    # linear_cos (RoPE outside, absolute schemes) and linear_rope (RoPE inside the numerator)
    cos, lr = {"attention": {"type": "linear_cos"}}, {"attention": {"type": "linear_rope"}}
    cases += [
        make_case("linear_cos_rope.clm", "clm", cos, pos="rope", seed=440),
        make_case("linear_cos_learned.mlm", "mlm", cos, pos="learned", seed=441),
        make_case("linear_cos_none.seq2seq", "seq2seq", cos, pos="none", seed=442),
        make_case("linear_cos_gqa2_rope_long.clm", "clm", dict(cos, n_kv_heads=2, max_len=80),
                  pos="rope", seed=443, T=70),
        make_case("linear_rope.clm", "clm", lr, pos="rope", seed=444),
        make_case("linear_rope.mlm", "mlm", lr, pos="rope", seed=445),
        make_case("linear_rope.seq2seq", "seq2seq", lr, pos="rope", seed=446),
        make_case("linear_rope_gqa1_long.clm", "clm", dict(lr, n_kv_heads=1, max_len=80),
                  pos="rope", seed=447, T=70),
        make_case("linear_rope_half_R4_long.seq2seq", "seq2seq", dict(lr, max_len=80),
                  pos="rope", seed=448, T=66, S=70),
    ]
    cases[-1]["cfg"]["position"].update({"layout": "half", "rotary_dim": 4})
    # performer: W is a buffer (no gradient, AdamW leaves it); the engine's W from the file
    pf = {"attention": {"type": "performer", "n_features": 12, "seed": 4}}
    cases += [
        make_case("performer_none.clm", "clm", pf, pos="none", seed=449),
        make_case("performer_rope.mlm", "mlm", pf, pos="rope", seed=450),
        make_case("performer_learned.seq2seq", "seq2seq", pf, pos="learned", seed=451),
        make_case("performer_gqa2_sinusoidal_long.clm", "clm",
                  dict(pf, n_kv_heads=2, max_len=80), pos="sinusoidal", seed=452, T=70),
    ]
    # nystrom (encoders; seq2seq: the encoder, its decoder runs softmax): T not a multiple of the
    # landmarks, fewer iterations, the conv over V (its weights' gradient), GQA, RoPE
    def nys(**a):
        return {"attention": {"type": "nystrom", **a}}
    cases += [
        make_case("nystrom_m5_none.mlm", "mlm", nys(n_landmarks=5), pos="none", seed=450),
        make_case("nystrom_m5_conv3_learned.mlm", "mlm", nys(n_landmarks=5, conv_kernel=3),
                  pos="learned", seed=451),
        make_case("nystrom_m8_it3_sinusoidal.mlm", "mlm", nys(n_landmarks=8, pinv_iterations=3),
                  pos="sinusoidal", seed=452),
        make_case("nystrom_m4_conv5_sinusoidal.seq2seq", "seq2seq",
                  nys(n_landmarks=4, conv_kernel=5), pos="sinusoidal", seed=453),
        make_case("nystrom_gqa2_m3_conv3_rope.mlm", "mlm",
                  dict(nys(n_landmarks=3, conv_kernel=3), n_kv_heads=2), pos="rope", seed=454),
        make_case("nystrom_gqa1_post_rms_swiglu_untied.seq2seq", "seq2seq",
                  dict(nys(n_landmarks=6, conv_kernel=1), n_kv_heads=1, norm_position="post",
                       **rsw), pos="learned", seed=455),
    ]
    # sequence packing: each row holds several documents (segment ids), each from position 0
    # and attending only to itself; 1-token documents included
    packed = [[5, 7, 4], [9, 1, 6]]
    for i, (pos, obj) in enumerate([("alibi", "clm"), ("rope", "clm"), ("t5", "mlm"),
                                    ("deberta", "clm"), ("learned", "mlm"), ("shaw", "clm"),
                                    ("xl", "mlm")]):
        cases.append(make_case(f"packed_{pos}.{obj}", obj, pos=pos, seed=470 + i, T=16,
                               docs=packed))
    cases.append(make_case("packed_gqa2_rope.mlm", "mlm", {"n_kv_heads": 2}, pos="rope", seed=478,
                           T=16, docs=packed))
    return cases


# --------------------------------------------------------------------------------------------
# Random weights (larger than init's N(0, 0.02): attention far from uniform, position terms
# matter, gradients O(1e-3 .. 1)); the rules of tests/e2e/test_twin.py except a smaller
# token embedding / LM head.


def random_tensors(shapes: dict, seed: int) -> dict:
    return e2e_util.random_tensors(shapes, seed, embed_std=0.5)  # logits O(3): CE not saturated


# --------------------------------------------------------------------------------------------
# Batches: clm / mlm / seq2seq with fixed seeds (B = 2, one row with ignored targets)


def make_batch(case):
    batch = make_plain_batch(case)
    batch.update(case.get("train", {}))
    if case.get("docs"):
        batch["segments"] = [[i for i, n in enumerate(row) for _ in range(n)]
                             for row in case["docs"]]
        assert all(len(s) == case["T"] for s in batch["segments"]), case["name"]
    return batch


def make_plain_batch(case):
    g = torch.Generator().manual_seed(case["seed"] * 31 + 7)
    T, B = case["T"], 2
    obj = case["objective"]

    def rnd(*shape):
        return torch.randint(0, BOS, shape, generator=g)

    if obj == "clm":
        w = rnd(B, T + 1)
        tokens = w[:, :T].clone()
        targets = w[:, 1:].clone()
        targets[1, T - 3:] = -1                 # a padded tail: ignored targets
        return {"tokens": tokens.tolist(), "targets": targets.tolist()}
    if obj == "mlm":
        orig = rnd(B, T)
        tokens = orig.clone()
        targets = torch.full((B, T), -1, dtype=torch.long)
        for b in range(B):
            perm = torch.randperm(T, generator=g)
            k = max(2, int(round(0.3 * T)))
            for j in perm[:k].tolist():
                targets[b, j] = orig[b, j]
                tokens[b, j] = MASK
            # one more counted position left unmasked (BERT's "keep" 10%)
            j = perm[k].item()
            targets[b, j] = orig[b, j]
        return {"tokens": tokens.tolist(), "targets": targets.tolist()}
    if obj == "seq2seq":
        src = rnd(B, case["S"])
        y = rnd(B, T)
        tokens = torch.cat([torch.full((B, 1), BOS, dtype=torch.long), y[:, :-1]], dim=1)
        targets = y.clone()
        targets[0, T - 2:] = -1
        return {"tokens": tokens.tolist(), "targets": targets.tolist(), "src": src.tolist()}
    raise ValueError(obj)


# --------------------------------------------------------------------------------------------
# CLI


def engine_grad(cli, mdir, batch_path, out_path, adam):
    args = [cli, "grad", mdir, "--batch", batch_path, "--out", out_path,
            "--steps", str(adam["steps"]), "--lr", repr(adam["lr"]),
            "--weight-decay", repr(adam["wd"]), "--beta1", repr(adam["beta1"]),
            "--beta2", repr(adam["beta2"]), "--eps", repr(adam["eps"]), "--threads", "2"]
    with open(batch_path) as f:  # training-forward options travel in the batch (make_case)
        b = json.load(f)
    if "dropout_seed" in b:
        args += ["--dropout-seed", str(b["dropout_seed"])]
    if "label_smoothing" in b:
        args += ["--label-smoothing", repr(b["label_smoothing"])]
    rc, out, err = run_cli(args)
    if rc != 0:
        raise Failure(f"grad failed rc={rc}: {(out + err).strip()[-400:]}")
    return safetensors_io.load_tensors(out_path), args


def grad_floor(gt: dict) -> dict:
    """Denominator floor per parameter. A gradient that is zero in exact arithmetic (e.g. the key
    bias of plain softmax attention: q . b_k is the same for every key, so softmax removes it)
    is fp32 round-off in the engine; such a tensor is compared with the gradient scale of its
    sibling weight (`X.bias` -> `X.weight`), else with the largest gradient of the model."""
    gmax = max(t.abs().max().item() for t in gt.values())
    out = {}
    for n, t in gt.items():
        m = t.abs().max().item()
        if m > 1e-9 * gmax:
            out[n] = m
            continue
        sib = n[:-len(".bias")] + ".weight" if n.endswith(".bias") else None
        ref = gt[sib].abs().max().item() if sib in gt else gmax
        out[n] = max(m, ref, 1e-30)
    return out


def step1_tiebreak(gt: dict, eg: dict, eps: float, floor: dict, tol: float):
    """Gradients for torch's FIRST AdamW step.

    AdamW's first update of an element is lr * g / (|g| + eps): about lr * sign(g), whatever |g|
    is. Where the engine's fp32 gradient and torch's float64 one are both correct to the checked
    tolerance but straddle zero (|g| at the fp32 round-off level, e.g. 1.5e-7 in a tensor whose
    largest gradient is 1.5), the two implementations step that element in opposite directions,
    and one such element can move the next losses by ~lr * |g_next| ~ 1e-4 relative: the 5-step
    comparison would then measure a sign coin-flip, not the optimizer. So for exactly those
    elements whose first update direction g / (|g| + eps) differs by more than 1e-3 between the
    two gradients, AND whose gradient difference is inside the gradient tolerance already
    checked (tol * floor, floor = grad_floor()), torch's first step uses the engine's value.
    Every later step uses torch's own gradients. Returns (dict or None, count, tensor names)."""
    out, count, names = {}, 0, []
    for n, t in gt.items():
        e = eg.get(n)
        if e is None or list(e.shape) != list(t.shape):
            continue
        if floor[n] > t.abs().max().item():
            continue    # zero in exact arithmetic: the loss does not depend on this tensor
        e = e.to(torch.float64)
        ue = e / (e.abs() + eps)
        ut = t / (t.abs() + eps)
        mask = ((ue - ut).abs() > 1e-3) & ((e - t).abs() <= tol * floor[n])
        k = int(mask.sum())
        if k:
            out[n] = torch.where(mask, e, t)
            count += k
            names.append(f"{n}:{k}")
    return (out or None), count, names


def engine_vs_finite_diff(mdir, batch, eg, seed):
    """The engine's gradient against central finite differences in float64: the loss is the
    float64 twin's (twin.py, forward only, no autograd), differentiated numerically along one
    random unit direction u per parameter tensor, against the engine's <g, u> for that tensor.
    Returns {name: (fd, engine)} and the errors |engine - fd| / max(|g|, floor): |g| is the
    L2 norm of the engine's gradient tensor (the largest |<g, u>| any unit u can give), floor
    1e-3 x the largest such norm of the case (tensors whose gradient is ~0)."""
    m = grad_twin.load_model(mdir)
    w = {n: t.detach().to(torch.float64).clone() for n, t in m.w.items()}
    m.w = dict(w)
    gen = torch.Generator().manual_seed(seed)
    h = 1e-5
    out, norm = {}, {}
    with torch.no_grad():
        for n in sorted(w):
            if grad_twin.is_buffer(n):  # not a parameter: no gradient to check
                continue
            u = torch.randn(w[n].shape, generator=gen, dtype=torch.float64)
            u /= u.norm()
            vals = []
            for sgn in (1.0, -1.0):
                m.w[n] = w[n] + sgn * h * u
                vals.append(grad_twin.loss_of(m, batch).item())
            m.w[n] = w[n]
            fd = (vals[0] - vals[1]) / (2 * h)
            if n in eg:
                g = eg[n].to(torch.float64)
                out[n], norm[n] = (fd, float((g * u).sum())), float(g.norm())
            else:
                out[n], norm[n] = (fd, float("nan")), 0.0
    floor = 1e-3 * max(norm.values(), default=1.0)
    rel = {n: abs(an - fd) / max(norm[n], floor) if math.isfinite(an) else float("inf")
           for n, (fd, an) in out.items()}
    return out, rel


def run_case(cli, case, work, tol, loss_tol):
    cfg = case["cfg"]
    d = os.path.join(work, case["name"])
    os.makedirs(d, exist_ok=True)
    cfg_path = os.path.join(d, "config.in.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=1)
    mdir = os.path.join(d, "model")
    rc, out, err = run_cli([cli, "init", "--config", cfg_path, "--out", mdir,
                            "--seed", str(case["seed"])])
    if rc != 0:
        raise Failure(f"init failed rc={rc}: {(out + err).strip()[-400:]}")
    st_path = os.path.join(mdir, "model.safetensors")
    want = twin.expected_shapes(cfg)
    written = safetensors_io.load_tensors(st_path)
    got = {k: list(v.shape) for k, v in written.items()}
    if got != want:
        raise Failure(f"init tensors differ from docs: missing {sorted(set(want) - set(got))} "
                      f"extra {sorted(set(got) - set(want))}")
    tensors = random_tensors(want, case["seed"] * 7919)
    for k in want:  # performer: the engine's own random features (drawn by init)
        if grad_twin.is_buffer(k):
            tensors[k] = written[k]
    safetensors_io.save(st_path, tensors)
    batch = make_batch(case)
    batch_path = os.path.join(d, "batch.json")
    with open(batch_path, "w") as f:
        json.dump(batch, f)

    # engine
    out_path = os.path.join(d, "grad.safetensors")
    eng, args = engine_grad(cli, mdir, batch_path, out_path, ADAM)
    out2_path = os.path.join(d, "grad_decay.safetensors")
    eng2, args2 = engine_grad(cli, mdir, batch_path, out2_path, ADAM_DECAY)
    with open(os.path.join(d, "repro.sh"), "w") as f:    # to re-run one case by hand
        f.write(" ".join(_q(x) for x in args) + "\n")
        f.write(" ".join(_q(x) for x in args2) + "\n")
        f.write(" ".join(_q(x) for x in [sys.executable, os.path.join(HERE, "..", "reference",
                                                                      "grad_twin.py"),
                                         "--model", mdir, "--batch", batch_path]) + "\n")

    # torch (the model directory's config.json is the expanded one init wrote back)
    loss_t, gt = grad_twin.loss_and_grads(grad_twin.load_model(mdir), batch)
    eg = {k[len("grad."):]: v for k, v in eng.items() if k.startswith("grad.")}
    floor = grad_floor(gt)
    first, ntie, tie_names = step1_tiebreak(gt, eg, ADAM["eps"], floor, tol)

    def torch_losses(adam, first_grads):
        return grad_twin.adamw_losses(grad_twin.load_model(mdir), batch, adam["steps"],
                                      adam["lr"], adam["wd"], (adam["beta1"], adam["beta2"]),
                                      adam["eps"], first_grads=first_grads)

    losses_t = torch_losses(ADAM, first)
    losses2_t = torch_losses(ADAM_DECAY, first)
    raw_t = torch_losses(ADAM, None) if ntie else losses_t     # for the report only

    problems = []
    # gradient tensors: names and shapes
    if sorted(eg) != sorted(gt):
        problems.append(f"grad tensors: missing {sorted(set(gt) - set(eg))} "
                        f"extra {sorted(set(eg) - set(gt))}")
    worst_name, worst = None, -1.0
    bad = []
    for n in sorted(gt):
        if n not in eg:
            continue
        if list(eg[n].shape) != list(gt[n].shape):
            problems.append(f"grad.{n}: shape {list(eg[n].shape)} != {list(gt[n].shape)}")
            continue
        diff = (eg[n].to(torch.float64) - gt[n]).abs().max().item()
        rel = diff / floor[n]
        if not math.isfinite(rel):
            rel = float("inf")
        if rel > worst:
            worst, worst_name = rel, n
        if rel > tol:
            bad.append(f"grad.{n} rel {rel:.2e} (max|diff| {diff:.2e}, "
                       f"max|g_torch| {gt[n].abs().max().item():.2e})")
    if bad:
        problems.append(f"{len(bad)} gradient(s) off: " + "; ".join(bad[:6]))

    # the engine's backward against float64 central differences (double reference path)
    fdv, fd_rel = engine_vs_finite_diff(mdir, batch, eg, case["seed"])
    fd_name = max(fd_rel, key=fd_rel.get)
    fd_worst = fd_rel[fd_name]
    fd_bad = [f"{n}: engine {fdv[n][1]:.8e} fd {fdv[n][0]:.8e} (rel {r:.1e})"
              for n, r in sorted(fd_rel.items()) if not r <= tol]
    if fd_bad:
        problems.append(f"{len(fd_bad)} directional derivative(s) off the float64 finite "
                        f"differences: " + "; ".join(fd_bad[:6]))

    losses_e = eng["losses"].tolist()
    losses2_e = eng2["losses"].tolist()
    loss_rel = abs(losses_e[0] - loss_t) / abs(loss_t)
    if loss_rel > tol:
        problems.append(f"loss {losses_e[0]:.8f} vs torch {loss_t:.8f} (rel {loss_rel:.2e})")

    def steps_rel(le, lt, label):
        if len(le) != len(lt):
            problems.append(f"{label}: {len(le)} losses, expected {len(lt)}")
            return float("inf")
        r = max(abs(a - b) / abs(b) for a, b in zip(le, lt))
        if r > loss_tol:
            problems.append(f"{label} losses off (rel {r:.2e}): engine "
                            f"{['%.8f' % x for x in le]} torch {['%.8f' % x for x in lt]}")
        return r

    adam_rel = steps_rel(losses_e, losses_t, "AdamW")
    decay_rel = steps_rel(losses2_e, losses2_t, "AdamW(wd=5)")
    raw_rel = max(abs(a - b) / abs(b) for a, b in zip(losses_e, raw_t)) \
        if len(losses_e) == len(raw_t) else float("inf")
    res = {"loss": loss_t, "loss_rel": loss_rel, "worst": worst, "worst_name": worst_name,
           "adam_rel": adam_rel, "decay_rel": decay_rel, "drop": losses_t[0] - losses_t[-1],
           "nparams": len(gt), "ntie": ntie, "tie_names": tie_names, "raw_rel": raw_rel,
           "fd_worst": fd_worst, "fd_name": fd_name}
    return res, problems


# --------------------------------------------------------------------------------------------
# Self-checks of the twin's backward (no engine involved)


_POS_TENSOR = re.compile(r"(pos_emb|rel_bias|shaw_k|shaw_v|xl_u|xl_v|xl_r|pos_q|pos_k|rel_emb)")


def selfcheck_gradcheck():
    """The twin's autograd gradient against float64 central differences of the twin loss, as
    directional derivatives: for every position type x objective on a tiny model, one random
    direction over all parameters at once, plus one per position-encoding tensor (and per layer
    for the first token-embedding / attention weights). Shows that the twin's graph reaches
    every parameter (no detached or integer-indexed gaps) where the engine is compared."""
    worst = 0.0
    for pos in POS_TYPES:
        for obj in OBJECTIVES:
            case = make_case("sc", obj, {"d_model": 8, "n_heads": 2, "d_ff": 12, "n_layers": 2},
                             pos=pos, seed=7, T=5, S=4)
            tensors = random_tensors(twin.expected_shapes(case["cfg"]), 99)
            m = twin.build(case["cfg"], tensors)
            leaves = grad_twin.make_leaves(m)
            batch = make_batch(case)
            _, g = grad_twin.loss_and_grads(m, batch)
            gen = torch.Generator().manual_seed(5)
            names = sorted(leaves)
            groups = [names] + [[n] for n in names if _POS_TENSOR.search(n)]
            groups.append([n for n in names if re.search(r"layers\.0\.attn\.[qk]\.", n)])
            for grp in groups:
                u = {n: torch.randn(leaves[n].shape, generator=gen, dtype=torch.float64)
                     for n in grp}
                norm = math.sqrt(sum(float((x * x).sum()) for x in u.values()))
                u = {n: x / norm for n, x in u.items()}      # unit direction
                an = sum(float((g[n] * u[n]).sum()) for n in grp)
                h = 1e-5
                base = {n: leaves[n].detach().clone() for n in grp}
                vals = []
                with torch.no_grad():
                    for sgn in (1.0, -1.0):
                        for n in grp:
                            leaves[n].copy_(base[n] + sgn * h * u[n])
                        vals.append(grad_twin.loss_of(m, batch).item())
                    for n in grp:
                        leaves[n].copy_(base[n])
                fd = (vals[0] - vals[1]) / (2 * h)
                worst = max(worst, abs(fd - an) / max(abs(an), 1e-3))
    return worst, worst < 1e-6


def selfcheck_adamw():
    """grad_twin.adamw_losses against a hand-written AdamW (float64, two groups)."""
    case = make_case("sc", "clm", {"d_model": 8, "n_heads": 2, "d_ff": 12, "n_layers": 1},
                     pos="deberta", seed=8, T=6)
    tensors = random_tensors(twin.expected_shapes(case["cfg"]), 98)
    batch = make_batch(case)
    a = ADAM_DECAY
    lt = grad_twin.adamw_losses(twin.build(case["cfg"], tensors), batch, a["steps"], a["lr"],
                                a["wd"], (a["beta1"], a["beta2"]), a["eps"])
    m = twin.build(case["cfg"], tensors)
    w = {n: t.clone() for n, t in m.w.items()}
    mom = {n: torch.zeros_like(t) for n, t in w.items()}
    vel = {n: torch.zeros_like(t) for n, t in w.items()}
    mine = []
    for t in range(1, a["steps"] + 1):
        m.w = {n: x.clone() for n, x in w.items()}
        loss, g = grad_twin.loss_and_grads(m, batch)
        mine.append(loss)
        for n in w:
            if grad_twin.is_decay(n):
                w[n] = w[n] * (1 - a["lr"] * a["wd"])
            mom[n] = a["beta1"] * mom[n] + (1 - a["beta1"]) * g[n]
            vel[n] = a["beta2"] * vel[n] + (1 - a["beta2"]) * g[n] * g[n]
            mh = mom[n] / (1 - a["beta1"] ** t)
            vh = vel[n] / (1 - a["beta2"] ** t)
            w[n] = w[n] - a["lr"] * mh / (vh.sqrt() + a["eps"])
    err = max(abs(x - y) / abs(y) for x, y in zip(lt, mine))
    # which names decay (docs: not norms, not biases; yes position tables)
    names = twin.expected_shapes(case["cfg"])
    nodec = sorted(n for n in names if not grad_twin.is_decay(n))
    ok_names = all(n.endswith(".bias") or "_norm." in n for n in nodec) and \
        grad_twin.is_decay("decoder.rel_emb.weight") and \
        not grad_twin.is_decay("decoder.layers.0.attn.pos_q.bias") and \
        grad_twin.is_decay("decoder.rel_bias.weight") and \
        grad_twin.is_decay("decoder.layers.0.attn.shaw_k") and \
        grad_twin.is_decay("decoder.layers.0.attn.xl_u")
    return err, err < 1e-12 and ok_names


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--posformer", required=True, help="path to the posformer CLI")
    ap.add_argument("--only", default=None, help="regex on case names")
    ap.add_argument("--keep", default=None, help="keep work files in this directory")
    ap.add_argument("--tol", type=float, default=1e-4, help="loss / gradient relative tolerance")
    ap.add_argument("--loss-tol", type=float, default=1e-5, help="AdamW losses relative tolerance")
    ap.add_argument("--no-selfcheck", action="store_true")
    a = ap.parse_args()
    cli = e2e_util.require_cli(a.posformer)

    t_start = time.time()
    report = e2e_util.Report(42)

    if not a.no_selfcheck and a.only is None:
        report.selfchecks([
            ("selfcheck.twin_grad_vs_finite_diff", selfcheck_gradcheck),
            ("selfcheck.adamw_vs_hand_written", selfcheck_adamw),
        ])

    work = a.keep or tempfile.mkdtemp(prefix="posformer_grad_twin_")
    os.makedirs(work, exist_ok=True)
    try:
        cases = all_cases()
        if a.only:
            cases = [c for c in cases if re.search(a.only, c["name"])]
        for case in cases:
            t0 = time.time()
            try:
                res, problems = run_case(cli, case, work, a.tol, a.loss_tol)
                text = (f"loss {res['loss']:.5f} rel {res['loss_rel']:.1e}  "
                        f"grad worst {res['worst']:.1e} ({res['worst_name']}, "
                        f"{res['nparams']} params)  fd64 {res['fd_worst']:.1e}  "
                        f"adamw5 {res['adam_rel']:.1e} "
                        f"(drop {res['drop']:.1e})  wd5 {res['decay_rel']:.1e}  "
                        f"({time.time() - t0:.1f}s)")
                if res["ntie"]:
                    text += f"  [step-1 tie-break {res['ntie']} elt, without: {res['raw_rel']:.1e}]"
                if res["ntie"] and res["raw_rel"] > a.loss_tol:
                    text += (f"\n      step-1 sign tie-break mattered: "
                             f"{' '.join(res['tie_names'][:6])}"
                             f"{' ...' if len(res['tie_names']) > 6 else ''}")
                if problems:
                    text += "\n      " + "\n      ".join(problems)
                report(case["name"], not problems, text)
            except Failure as e:
                report(case["name"], False, str(e))
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                report(case["name"], False, f"exception {e}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    report.finish(f"total {time.time() - t_start:.1f}s")


if __name__ == "__main__":
    main()
