#!/usr/bin/python3
"""End-to-end: the posformer CLI forward pass against the PyTorch twin (tests/reference/twin.py).

    /usr/bin/python3 tests/e2e/test_twin.py --posformer build/posformer [--quick] [--only REGEX]
                                            [--keep DIR] [--tol 1e-4] [--no-selfcheck]

--quick: only the 30 scheme x arch cases with T <= 64 (seconds). --keep DIR: keep every case's
config, model, engine output and a repro.sh (the forward command and the compare.py command).

For every position type x arch (encoder, decoder, encoder_decoder) plus variants, it writes a
config, runs `posformer init`, replaces model.safetensors by larger random weights of its own
(so attention is far from uniform and position terms matter), runs `posformer forward` and
compares `hidden` / `logits` with the float64 twin: relative error max|engine - twin| / max|twin|
must be <= tol. It also checks a few refusals of the CLI, and first runs self-checks of the twin
(against torch.nn.Transformer*Layer and a plain-loop evaluation of every score formula).
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
import safetensors_io  # noqa: E402
import twin  # noqa: E402
from e2e_util import Failure, run_cli  # noqa: E402
from e2e_util import shell_quote as _q  # noqa: E402
from compare import compare_model  # noqa: E402

torch.set_num_threads(2)

# --------------------------------------------------------------------------------------------
# Cases

POS_TYPES = ["none", "learned", "sinusoidal", "sinusoidal_half", "rope", "alibi", "t5", "shaw",
             "xl", "deberta"]
ARCHS = ["encoder", "decoder", "encoder_decoder"]

BASE = {"d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 96, "activation": "gelu",
        "norm": "layernorm", "norm_position": "pre", "vocab_size": 97, "max_len": 256}

# Scheme parameters chosen so that clipping / log buckets are exercised at the test lengths.
POS_PARAMS = {
    "rope": {"layout": "interleaved", "base": 10000},
    "t5": {"num_buckets": 32, "max_distance": 128},
    "shaw": {"clip": 8},
    "deberta": {"span": 16},
}

# (pos, arch) -> (T, pos_offset, src_len); default below.
DEFAULT_T = {"encoder": (40, 0, None), "decoder": (65, 7, None), "encoder_decoder": (23, 7, 31)}
SPECIAL_T = {
    ("none", "decoder"): (130, 100, None),
    ("learned", "encoder"): (100, 100, None),
    ("learned", "encoder_decoder"): (60, 100, 45),
    ("sinusoidal", "encoder"): (77, 7, None),
    ("sinusoidal_half", "decoder"): (90, 100, None),
    ("rope", "encoder"): (512, 100, None),
    ("rope", "decoder"): (200, 0, None),
    ("alibi", "decoder"): (300, 7, None),
    ("alibi", "encoder_decoder"): (50, 100, 70),
    ("t5", "encoder"): (300, 0, None),
    ("t5", "decoder"): (512, 0, None),
    ("t5", "encoder_decoder"): (150, 7, 200),
    ("shaw", "encoder"): (37, 7, None),
    ("shaw", "decoder"): (50, 0, None),
    ("xl", "encoder"): (45, 100, None),
    ("xl", "decoder"): (120, 7, None),
    ("deberta", "encoder"): (70, 7, None),
    ("deberta", "decoder"): (512, 100, None),
    ("deberta", "encoder_decoder"): (40, 0, 57),
}


def make_case(name, cfg_over, T, off=0, src=None, pos=None, seed=1, docs=None):
    """docs: lengths of the documents packed into the T tokens (segment ids 0, 1, ...)."""
    cfg = copy.deepcopy(BASE)
    cfg.update(cfg_over)
    if pos is not None:
        p = {"type": pos}
        p.update(POS_PARAMS.get(pos, {}))
        cfg["position"] = p
    seg = None
    if docs is not None:
        assert sum(docs) == T, (name, docs, T)
        seg = [i for i, n in enumerate(docs) for _ in range(n)]
    return {"name": name, "cfg": cfg, "T": T, "off": off, "src": src, "seed": seed, "seg": seg}


def all_cases():
    cases = []
    seed = 100
    for pos in POS_TYPES:
        for arch in ARCHS:
            T, off, src = SPECIAL_T.get((pos, arch), DEFAULT_T[arch])
            seed += 1
            cases.append(make_case(f"{pos}.{arch}", {"arch": arch}, T, off, src, pos, seed))
    V = []
    V.append(make_case("rope_half_partial.decoder",
                       {"arch": "decoder", "position": {"type": "rope", "layout": "half",
                                                        "rotary_dim": 8, "base": 500}},
                       60, 100, seed=201))
    V.append(make_case("rope_interleaved_partial.encoder",
                       {"arch": "encoder", "position": {"type": "rope", "layout": "interleaved",
                                                        "rotary_dim": 6}},
                       33, 7, seed=202))
    V.append(make_case("rope_half.encoder_decoder",
                       {"arch": "encoder_decoder", "position": {"type": "rope", "layout": "half"}},
                       30, 100, 25, seed=203))
    V.append(make_case("gqa2_rope.decoder", {"arch": "decoder", "n_kv_heads": 2}, 64, 7, pos="rope",
                       seed=204))
    rf = {"residual": True}  # RealFormer: pre-softmax scores carried from layer to layer
    V.append(make_case("realformer_post_alibi.decoder",
                       {"arch": "decoder", "norm_position": "post", "attention": rf},
                       300, 7, pos="alibi", seed=241))
    V.append(make_case("realformer_t5.encoder_decoder", {"arch": "encoder_decoder", "attention": rf},
                       40, 7, 33, pos="t5", seed=242))
    V.append(make_case("realformer_deberta.encoder", {"arch": "encoder", "attention": rf},
                       40, 0, pos="deberta", seed=243))
    V.append(make_case("realformer_none.decoder", {"arch": "decoder", "attention": rf},
                       50, 0, pos="none", seed=244))
    V.append(make_case("gqa1_deberta.encoder_decoder", {"arch": "encoder_decoder", "n_kv_heads": 1},
                       35, 7, 40, pos="deberta", seed=205))
    V.append(make_case("gqa2_xl.decoder", {"arch": "decoder", "n_kv_heads": 2}, 50, 100, pos="xl",
                       seed=206))
    V.append(make_case("gqa2_shaw.encoder", {"arch": "encoder", "n_kv_heads": 2}, 30, 0, pos="shaw",
                       seed=207))
    V.append(make_case("gqa2_t5.encoder_decoder", {"arch": "encoder_decoder", "n_kv_heads": 2},
                       40, 7, 33, pos="t5", seed=208))
    V.append(make_case("post_ln_t5.encoder", {"arch": "encoder", "norm_position": "post"},
                       60, 7, pos="t5", seed=209))
    V.append(make_case("post_ln_alibi.decoder", {"arch": "decoder", "norm_position": "post"},
                       70, 100, pos="alibi", seed=210))
    V.append(make_case("post_ln_learned.encoder_decoder",
                       {"arch": "encoder_decoder", "norm_position": "post"},
                       40, 7, 50, pos="learned", seed=211))
    V.append(make_case("post_ln_rope_rms.decoder",
                       {"arch": "decoder", "norm_position": "post", "norm": "rmsnorm"},
                       40, 7, pos="rope", seed=212))
    rsw = {"norm": "rmsnorm", "activation": "swiglu", "bias": False, "tie_embeddings": False}
    V.append(make_case("rms_swiglu_nobias_untied_rope.decoder", dict(rsw, arch="decoder"),
                       80, 7, pos="rope", seed=213))
    V.append(make_case("rms_swiglu_nobias_untied_shaw.encoder_decoder",
                       dict(rsw, arch="encoder_decoder"), 30, 100, 20, pos="shaw", seed=214))
    V.append(make_case("rms_swiglu_nobias_untied_deberta.encoder", dict(rsw, arch="encoder"),
                       40, 0, pos="deberta", seed=215))
    V.append(make_case("swiglu_bias_xl.encoder", {"arch": "encoder", "activation": "swiglu"},
                       30, 7, pos="xl", seed=216))
    V.append(make_case("head_none_sinusoidal.encoder", {"arch": "encoder", "head": "none"},
                       50, 7, pos="sinusoidal", seed=217))
    V.append(make_case("head_none_alibi.encoder_decoder",
                       {"arch": "encoder_decoder", "head": "none"}, 20, 0, 30, pos="alibi", seed=218))
    V.append(make_case("t5_scale1.decoder", {"arch": "decoder", "attention": {"scale": 1.0}},
                       100, 7, pos="t5", seed=219))
    V.append(make_case("t5_scale1.encoder_decoder",
                       {"arch": "encoder_decoder", "attention": {"scale": 1.0}},
                       40, 0, 35, pos="t5", seed=220))
    V.append(make_case("t5_16buckets_md40.encoder",
                       {"arch": "encoder", "position": {"type": "t5", "num_buckets": 16,
                                                        "max_distance": 40}},
                       100, 0, seed=221))
    V.append(make_case("deberta_scale.decoder", {"arch": "decoder", "attention": {"scale": 0.2}},
                       40, 7, pos="deberta", seed=222))
    V.append(make_case("learned_near_max_len.decoder", {"arch": "decoder", "max_len": 128},
                       28, 100, pos="learned", seed=223))
    V.append(make_case("learned_full_max_len.encoder", {"arch": "encoder", "max_len": 64},
                       64, 0, pos="learned", seed=224))
    V.append(make_case("relu_sinusoidal_half.encoder_decoder",
                       {"arch": "encoder_decoder", "activation": "relu"}, 30, 7, 30,
                       pos="sinusoidal_half", seed=225))
    V.append(make_case("gelu_tanh_none.encoder", {"arch": "encoder", "activation": "gelu_tanh"},
                       30, 0, pos="none", seed=226))
    V.append(make_case("alibi_h6.decoder", {"arch": "decoder", "d_model": 48, "n_heads": 6},
                       60, 7, pos="alibi", seed=227))
    V.append(make_case("alibi_h6.encoder", {"arch": "encoder", "d_model": 48, "n_heads": 6},
                       40, 0, pos="alibi", seed=228))
    V.append(make_case("rms_eps1e-2_xl.encoder_decoder",
                       {"arch": "encoder_decoder", "norm": "rmsnorm", "norm_eps": 1e-2},
                       25, 7, 18, pos="xl", seed=229))
    V.append(make_case("shaw_clip2_T1.decoder",
                       {"arch": "decoder", "position": {"type": "shaw", "clip": 2}},
                       1, 100, seed=230))
    V.append(make_case("deberta_span4_T1.encoder",
                       {"arch": "encoder", "position": {"type": "deberta", "span": 4}},
                       1, 7, seed=231))
    V.append(make_case("bigger_rope.decoder",
                       {"arch": "decoder", "d_model": 128, "n_heads": 4, "n_layers": 3,
                        "d_ff": 256, "vocab_size": 300}, 128, 7, pos="rope", seed=232))
    V.append(make_case("rope_far_offset.decoder", {"arch": "decoder"}, 48, 1000000, pos="rope",
                       seed=233))
    # RoPE scalings (SPEC 3), the twin computing the frequencies from the formulas: D = 16,
    # YaRN's ramp (L0 512: low 0, high 4) and llama3's bands (L0 1024: i <= 3 kept, 4 blended)
    # inside the head; dynamic NTK past L0 = 32 (current length off + T = 72)
    for sc_name, sc, arch in [
            ("linear", {"type": "linear", "factor": 4}, "decoder"),
            ("ntk", {"type": "ntk", "factor": 8}, "encoder"),
            ("dynamic_ntk", {"type": "dynamic_ntk", "factor": 4, "original_len": 32}, "decoder"),
            ("dynamic_ntk_below_L0", {"type": "dynamic_ntk", "factor": 4, "original_len": 128},
             "decoder"),
            ("yarn", {"type": "yarn", "factor": 16, "original_len": 512}, "decoder"),
            ("yarn_betas", {"type": "yarn", "factor": 4, "original_len": 256, "beta_fast": 8,
                            "beta_slow": 2}, "encoder_decoder"),
            ("llama3", {"type": "llama3", "factor": 8, "original_len": 1024}, "decoder"),
            ("llama3_factors", {"type": "llama3", "factor": 2, "original_len": 512,
                                "low_freq_factor": 2, "high_freq_factor": 8}, "encoder")]:
        V.append(make_case(f"rope_{sc_name}.{arch}",
                           {"arch": arch, "position": {"type": "rope", "scaling": sc}},
                           65, 7, 31 if arch == "encoder_decoder" else None, seed=240))
    V.append(make_case("linear_rope_yarn.decoder",
                       {"arch": "decoder", "attention": {"type": "linear_rope"},
                        "position": {"type": "rope", "scaling": {"type": "yarn", "factor": 8,
                                                                 "original_len": 512}}},
                       65, 7, seed=242))
    V.append(make_case("rope_half_dynamic_ntk_gqa2.decoder",
                       {"arch": "decoder", "n_kv_heads": 2,
                        "position": {"type": "rope", "layout": "half", "rotary_dim": 12,
                                     "scaling": {"type": "dynamic_ntk", "factor": 2,
                                                 "original_len": 40}}}, 70, 0, seed=241))
    V.append(make_case("sinusoidal_far_offset.encoder", {"arch": "encoder"}, 48, 100000,
                       pos="sinusoidal", seed=234))
    # embed_scale multiplies the token lookup only (not the absolute position, not the tied head)
    V.append(make_case("embed_sqrtd_sinusoidal.decoder", {"arch": "decoder", "embed_scale": "sqrt_d"},
                       65, 7, pos="sinusoidal", seed=235))
    V.append(make_case("embed_sqrtd_learned_untied.encoder_decoder",
                       {"arch": "encoder_decoder", "embed_scale": "sqrt_d", "tie_embeddings": False},
                       30, 7, 35, pos="learned", seed=236))
    V.append(make_case("embed_scale2.5_sinusoidal_half.encoder",
                       {"arch": "encoder", "embed_scale": 2.5}, 40, 0, pos="sinusoidal_half",
                       seed=237))
    # linear attention (absolute schemes only); lengths across the engine's 64-row chunks
    lin = {"attention": {"type": "linear"}}
    V.append(make_case("linear_none.decoder", dict(lin, arch="decoder"), 130, 7, pos="none",
                       seed=255))
    V.append(make_case("linear_learned.decoder", dict(lin, arch="decoder"), 90, 100,
                       pos="learned", seed=256))
    V.append(make_case("linear_sinusoidal.decoder", dict(lin, arch="decoder"), 200, 3,
                       pos="sinusoidal", seed=257))
    V.append(make_case("linear_none.encoder", dict(lin, arch="encoder"), 65, 0, pos="none",
                       seed=258))
    V.append(make_case("linear_learned.encoder", dict(lin, arch="encoder"), 100, 7,
                       pos="learned", seed=259))
    V.append(make_case("linear_sinusoidal_half.encoder", dict(lin, arch="encoder"), 40, 0,
                       pos="sinusoidal_half", seed=260))
    V.append(make_case("linear_sinusoidal.encoder_decoder", dict(lin, arch="encoder_decoder"),
                       70, 7, 90, pos="sinusoidal", seed=261))
    V.append(make_case("linear_learned.encoder_decoder", dict(lin, arch="encoder_decoder"),
                       40, 100, 33, pos="learned", seed=262))
    V.append(make_case("linear_none.encoder_decoder", dict(lin, arch="encoder_decoder"),
                       64, 0, 65, pos="none", seed=263))
    V.append(make_case("linear_gqa2_sinusoidal_half.decoder",
                       dict(lin, arch="decoder", n_kv_heads=2), 65, 0, pos="sinusoidal_half",
                       seed=264))
    V.append(make_case("linear_gqa1_learned.encoder_decoder",
                       dict(lin, arch="encoder_decoder", n_kv_heads=1), 50, 7, 70,
                       pos="learned", seed=265))
    V.append(make_case("linear_post_ln_rms_swiglu_nobias.encoder",
                       dict(lin, **rsw, arch="encoder", norm_position="post", n_kv_heads=2),
                       64, 7, pos="none", seed=266))
    # linear_cos (RoPE outside and absolute schemes) and linear_rope (RoPE inside, numerator only)
    cos = {"attention": {"type": "linear_cos"}}
    V.append(make_case("linear_cos_rope.decoder", dict(cos, arch="decoder"), 130, 7, pos="rope",
                       seed=267))
    V.append(make_case("linear_cos_none.encoder", dict(cos, arch="encoder"), 65, 0, pos="none",
                       seed=268))
    V.append(make_case("linear_cos_learned.encoder_decoder", dict(cos, arch="encoder_decoder"),
                       70, 7, 66, pos="learned", seed=269))
    V.append(make_case("linear_cos_gqa2_sinusoidal.decoder",
                       dict(cos, arch="decoder", n_kv_heads=2), 90, 100, pos="sinusoidal",
                       seed=270))
    V.append(make_case("linear_cos_gqa1_rope.encoder_decoder",
                       dict(cos, arch="encoder_decoder", n_kv_heads=1), 50, 7, 70, pos="rope",
                       seed=271))
    lr = {"attention": {"type": "linear_rope"}}
    V.append(make_case("linear_rope.decoder", dict(lr, arch="decoder"), 130, 7, pos="rope",
                       seed=272))
    V.append(make_case("linear_rope.encoder", dict(lr, arch="encoder"), 65, 0, pos="rope",
                       seed=273))
    V.append(make_case("linear_rope.encoder_decoder", dict(lr, arch="encoder_decoder"),
                       70, 7, 66, pos="rope", seed=274))
    V.append(make_case("linear_rope_gqa2_half_R4.decoder",
                       dict(lr, arch="decoder", n_kv_heads=2), 90, 100, pos="rope", seed=275))
    V[-1]["cfg"]["position"].update({"layout": "half", "rotary_dim": 4})
    V.append(make_case("linear_rope_gqa1_post_rms_swiglu.encoder",
                       dict(lr, **rsw, arch="encoder", norm_position="post", n_kv_heads=1),
                       64, 7, pos="rope", seed=276))
    # performer (FAVOR+): the engine's W from the model file; RoPE outside and absolute schemes
    pf = {"attention": {"type": "performer", "n_features": 24, "seed": 3}}
    V.append(make_case("performer_none.decoder", dict(pf, arch="decoder"), 130, 7, pos="none",
                       seed=277))
    V.append(make_case("performer_rope.encoder", dict(pf, arch="encoder"), 65, 0, pos="rope",
                       seed=278))
    V.append(make_case("performer_learned.encoder_decoder", dict(pf, arch="encoder_decoder"),
                       70, 7, 66, pos="learned", seed=279))
    V.append(make_case("performer_M256_gqa2_rope.decoder",
                       {"attention": {"type": "performer"}, "arch": "decoder", "n_kv_heads": 2},
                       90, 100, pos="rope", seed=280))
    # nystrom (encoder self-attention; an encoder_decoder's decoder runs softmax): T not a
    # multiple of the landmarks, landmarks >= T, GQA, RoPE, the conv over V
    def nys(**a):
        return {"type": "nystrom", **a}
    V.append(make_case("nystrom_m8_none.encoder", {"arch": "encoder", "attention": nys(n_landmarks=8)},
                       40, 0, pos="none", seed=281))
    V.append(make_case("nystrom_m7_gqa2_learned.encoder",
                       {"arch": "encoder", "n_kv_heads": 2, "attention": nys(n_landmarks=7)},
                       45, 7, pos="learned", seed=282))
    V.append(make_case("nystrom_m5_conv3_rope.encoder",
                       {"arch": "encoder", "attention": nys(n_landmarks=5, conv_kernel=3)},
                       33, 100, pos="rope", seed=283))
    V.append(make_case("nystrom_m6_it10_conv5_sinusoidal.encoder_decoder",
                       {"arch": "encoder_decoder",
                        "attention": nys(n_landmarks=6, pinv_iterations=10, conv_kernel=5)},
                       23, 7, 31, pos="sinusoidal", seed=284))
    V.append(make_case("nystrom_default_m_gt_T_sinusoidal_half.encoder",
                       {"arch": "encoder", "attention": nys()}, 20, 0, pos="sinusoidal_half",
                       seed=285))
    V.append(make_case("nystrom_post_ln_rms_swiglu_nobias_gqa1.encoder",
                       dict(rsw, arch="encoder", norm_position="post", n_kv_heads=1,
                            attention=nys(n_landmarks=9, conv_kernel=1)), 70, 0, pos="none",
                       seed=286))
    # sequence packing: several documents in one row, each from position 0, masked from the
    # others (the twin's own [T, T] document mask); rows across the fused kernel's 128-row blocks
    V.append(make_case("packed_alibi.decoder", {"arch": "decoder"}, 53, pos="alibi", seed=290,
                       docs=[5, 17, 1, 30]))
    V.append(make_case("packed_rope_gqa2.decoder", {"arch": "decoder", "n_kv_heads": 2}, 150,
                       pos="rope", seed=291, docs=[60, 1, 70, 19]))
    V.append(make_case("packed_t5.encoder", {"arch": "encoder"}, 40, pos="t5", seed=292,
                       docs=[12, 25, 3]))
    V.append(make_case("packed_deberta.encoder", {"arch": "encoder"}, 32, pos="deberta", seed=293,
                       docs=[9, 9, 14]))
    V.append(make_case("packed_shaw.decoder", {"arch": "decoder"}, 30, pos="shaw", seed=294,
                       docs=[3, 20, 7]))
    V.append(make_case("packed_xl.encoder_decoder", {"arch": "encoder_decoder"}, 24, 0, 17,
                       pos="xl", seed=295, docs=[10, 14]))
    V.append(make_case("packed_learned.encoder", {"arch": "encoder"}, 40, pos="learned", seed=296,
                       docs=[30, 10]))
    V.append(make_case("packed_realformer_alibi.decoder",
                       {"arch": "decoder", "attention": {"type": "softmax", "residual": True}}, 45,
                       pos="alibi", seed=297, docs=[20, 25]))
    return cases + V


# --------------------------------------------------------------------------------------------
# Random weights (larger than init's N(0, 0.02) so attention patterns matter)


def random_tensors(shapes: dict, seed: int) -> dict:
    return e2e_util.random_tensors(shapes, seed, embed_std=1.0)


# --------------------------------------------------------------------------------------------
# Running the CLI


def tok_str(ts):
    return " ".join(str(t) for t in ts)


def run_case(cli, case, work, tol):
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
    written = safetensors_io.load_tensors(st_path)
    want = twin.expected_shapes(cfg)
    got = {k: list(v.shape) for k, v in written.items()}
    if got != want:
        miss = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        shape = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise Failure(f"init tensors differ from docs: missing {miss} extra {extra} "
                      f"shape {[(k, got[k], want[k]) for k in shape]}")
    # the expanded config written back must describe the same model
    with open(os.path.join(mdir, "config.json")) as f:
        back = json.load(f)
    if twin.expected_shapes(back) != want:
        raise Failure("config.json written back by init describes different tensors")
    tensors = random_tensors(want, case["seed"] * 7919)
    for k in want:  # performer: the engine's own random features (drawn by init), not the RNG's
        if k.endswith("performer.features"):
            tensors[k] = written[k]
    safetensors_io.save(st_path, tensors)

    g = torch.Generator().manual_seed(case["seed"])
    V = cfg["vocab_size"]
    tokens = torch.randint(0, V, (case["T"],), generator=g).tolist()
    src = None
    if cfg["arch"] == "encoder_decoder":
        src = torch.randint(0, V, (case["src"],), generator=g).tolist()
    out_path = os.path.join(d, "out.safetensors")
    args = [cli, "forward", mdir, "--tokens", tok_str(tokens)]
    if src is not None:
        args += ["--src", tok_str(src)]
    if case["off"]:
        args += ["--pos-offset", str(case["off"])]
    if case["seg"] is not None:
        args += ["--segments", tok_str(case["seg"])]
    args += ["--out", out_path, "--threads", "2"]
    with open(os.path.join(d, "repro.sh"), "w") as f:   # to re-run one case by hand
        f.write(" ".join(_q(x) for x in args) + "\n")
        cmp = [sys.executable, os.path.join(HERE, "..", "reference", "compare.py"), "--model", mdir,
               "--out", out_path, "--tokens", tok_str(tokens), "--pos-offset", str(case["off"])]
        if src is not None:
            cmp += ["--src", tok_str(src)]
        f.write(" ".join(_q(x) for x in cmp) + "\n")
    rc, out, err = run_cli(args)
    if rc != 0:
        raise Failure(f"forward failed rc={rc}: {(out + err).strip()[-400:]}")
    model = twin.build(cfg, tensors)
    res, problems = compare_model(model, out_path, tokens, src, case["off"], case["seg"])
    if problems:
        raise Failure("; ".join(problems))
    return res


def check_refusals(cli, work):
    """Returns list of (name, ok, detail)."""
    results = []
    d = os.path.join(work, "_refusals")
    os.makedirs(d, exist_ok=True)
    cfg = dict(BASE, arch="decoder", max_len=32, vocab_size=50, position={"type": "learned"})
    cp = os.path.join(d, "cfg.json")
    with open(cp, "w") as f:
        json.dump(cfg, f)
    mdir = os.path.join(d, "model")
    rc, out, err = run_cli([cli, "init", "--config", cp, "--out", mdir, "--seed", "3"])
    if rc != 0:
        return [("refuse.init", False, f"init failed: {(out + err).strip()[-300:]}")]
    o = os.path.join(d, "out.safetensors")

    def expect_fail(name, args, must_contain):
        if os.path.exists(o):
            os.remove(o)
        rc, out, err = run_cli(args)
        msg = (out + err).strip().replace("\n", " | ")
        ok = rc != 0 and all(s in msg for s in must_contain)
        detail = f"rc={rc} msg: {msg[:200]}"
        results.append((name, ok, detail))

    # 30 tokens at offset 5 reach position 34 >= max_len 32
    expect_fail("refuse.learned_past_max_len",
                [cli, "forward", mdir, "--tokens", tok_str(range(1, 31)), "--pos-offset", "5",
                 "--out", o, "--threads", "2"], ["max_len"])
    expect_fail("refuse.learned_T_gt_max_len",
                [cli, "forward", mdir, "--tokens", tok_str([1] * 33), "--out", o,
                 "--threads", "2"], ["max_len"])
    expect_fail("refuse.token_ge_vocab",
                [cli, "forward", mdir, "--tokens", "1 2 300 4", "--out", o, "--threads", "2"],
                ["300"])
    expect_fail("refuse.token_eq_vocab",
                [cli, "forward", mdir, "--tokens", "50", "--out", o, "--threads", "2"], ["50"])
    # exactly at the limit must work
    rc, out, err = run_cli([cli, "forward", mdir, "--tokens", tok_str([1] * 27), "--pos-offset",
                            "5", "--out", o, "--threads", "2"])
    results.append(("accept.learned_up_to_max_len", rc == 0,
                     f"rc={rc} {(out + err).strip()[-200:]}"))
    return results


def init_model(cli, d, name, cfg):
    """`posformer init` of config `cfg` into d/name (seed 5): (model dir, exit code, output on
    one line)."""
    cp = os.path.join(d, name + ".json")
    with open(cp, "w") as f:
        json.dump(cfg, f)
    mdir = os.path.join(d, name)
    rc, out, err = run_cli([cli, "init", "--config", cp, "--out", mdir, "--seed", "5"])
    return mdir, rc, (out + err).strip().replace("\n", " | ")


def check_linear_cli(cli, work):
    """Linear attention through the CLI: the schemes it cannot serve are refused by init naming
    both (and a set attention.scale naming it); `generate` works with a linear model, and its
    recurrent decode state gives the tokens of recomputing the whole sequence (--no-cache),
    greedy and sampled, in a decoder and an encoder_decoder. Returns (name, ok, detail)."""
    results = []
    d = os.path.join(work, "_linear_cli")
    os.makedirs(d, exist_ok=True)

    def init(name, cfg):
        return init_model(cli, d, name, cfg)

    lin = dict(BASE, arch="decoder", attention={"type": "linear"})
    for pos in ("rope", "alibi", "t5", "shaw", "xl", "deberta"):
        _, rc, msg = init(f"refuse_{pos}", dict(lin, position={"type": pos}))
        ok = rc != 0 and "'linear'" in msg and f"'{pos}'" in msg
        results.append((f"refuse.linear_with_{pos}", ok, f"rc={rc} msg: {msg[:200]}"))
    _, rc, msg = init("refuse_scale", dict(lin, attention={"type": "linear", "scale": 0.5}))
    ok = rc != 0 and "attention.scale" in msg and "linear" in msg
    results.append(("refuse.linear_with_scale", ok, f"rc={rc} msg: {msg[:200]}"))
    for variant, refused in (("linear_cos", ("alibi", "t5", "shaw", "xl", "deberta")),
                             ("linear_rope", ("none", "learned", "sinusoidal", "alibi", "t5"))):
        for pos in refused:
            _, rc, msg = init(f"refuse_{variant}_{pos}",
                              dict(lin, attention={"type": variant}, position={"type": pos}))
            ok = rc != 0 and f"'{variant}'" in msg and f"'{pos}'" in msg
            results.append((f"refuse.{variant}_with_{pos}", ok, f"rc={rc} msg: {msg[:200]}"))
        _, rc, msg = init(f"refuse_{variant}_scale",
                          dict(lin, attention={"type": variant, "scale": 0.5},
                               position={"type": "rope"}))
        ok = rc != 0 and "attention.scale" in msg and variant in msg
        results.append((f"refuse.{variant}_with_scale", ok, f"rc={rc} msg: {msg[:200]}"))

    gens = [(arch, "linear", "sinusoidal") for arch in ("decoder", "encoder_decoder")]
    gens += [(arch, v, "rope") for v in ("linear_cos", "linear_rope", "performer")
             for arch in ("decoder", "encoder_decoder")]
    for arch, variant, pos in gens:
        cfg = dict(BASE, arch=arch, vocab_size=260, n_kv_heads=2, position={"type": pos},
                   attention={"type": variant})
        name = f"generate.{variant}_{arch}"
        mdir, rc, msg = init(name, cfg)
        if rc != 0:
            results.append((name, False, f"init failed: {msg[-300:]}"))
            continue
        st = os.path.join(mdir, "model.safetensors")
        tensors = random_tensors(twin.expected_shapes(cfg), 4242)
        for k, t in safetensors_io.load_tensors(st).items():  # performer: the engine's W
            if k.endswith("performer.features"):
                tensors[k] = t
        safetensors_io.save(st, tensors)
        outs, detail, ok = {}, [], True
        for opts in (["--temperature", "0"], ["--temperature", "1", "--seed", "3"]):
            for cache in ([], ["--no-cache"]):
                args = [cli, "generate", mdir, "--prompt", "order ", "--max-new-tokens", "80",
                        "--threads", "2"] + opts + cache
                if arch == "encoder_decoder":
                    args += ["--src", "a source text"]
                rc, out, err = run_cli(args)
                if rc != 0:
                    ok = False
                    detail.append(f"{' '.join(opts + cache)} rc={rc}: {err.strip()[-200:]}")
                outs[(tuple(opts), tuple(cache))] = out
            a, b = outs[(tuple(opts), ())], outs[(tuple(opts), ("--no-cache",))]
            if a != b:
                ok = False
                detail.append(f"{' '.join(opts)}: cached {a!r} != recomputed {b!r}")
            else:
                detail.append(f"{' '.join(opts)}: {len(a.encode())} bytes, cache == no-cache")
        results.append((name, ok, "; ".join(detail)))
    return results


def check_nystrom_cli(cli, work):
    """Nystrom through the CLI: init refuses a decoder (its causal self-attention) and the
    relative score schemes, naming both; `generate` works with an encoder_decoder (nystrom
    encoder, softmax decoder), the cache giving the tokens of recomputing. (name, ok, detail)."""
    results = []
    d = os.path.join(work, "_nystrom_cli")
    os.makedirs(d, exist_ok=True)

    def init(name, cfg):
        return init_model(cli, d, name, cfg)

    nys = {"type": "nystrom", "n_landmarks": 8}
    _, rc, msg = init("refuse_decoder", dict(BASE, arch="decoder", attention=nys))
    ok = rc != 0 and "'nystrom'" in msg and "decoder self-attention" in msg
    results.append(("refuse.nystrom_decoder", ok, f"rc={rc} msg: {msg[:200]}"))
    for pos in ("alibi", "t5", "shaw", "xl", "deberta"):
        _, rc, msg = init(f"refuse_{pos}", dict(BASE, arch="encoder", attention=nys,
                                               position={"type": pos}))
        ok = rc != 0 and "'nystrom'" in msg and f"'{pos}'" in msg
        results.append((f"refuse.nystrom_with_{pos}", ok, f"rc={rc} msg: {msg[:200]}"))
    cfg = dict(BASE, arch="encoder_decoder", vocab_size=260, n_kv_heads=2,
               position={"type": "sinusoidal"}, attention=dict(nys, conv_kernel=3))
    name = "generate.nystrom_encoder_decoder"
    mdir, rc, msg = init(name, cfg)
    if rc != 0:
        return results + [(name, False, f"init failed: {msg[-300:]}")]
    safetensors_io.save(os.path.join(mdir, "model.safetensors"),
                        random_tensors(twin.expected_shapes(cfg), 4243))
    outs, ok = [], True
    for cache in ([], ["--no-cache"]):
        rc, out, err = run_cli([cli, "generate", mdir, "--prompt", "order ", "--max-new-tokens",
                                "40", "--threads", "2", "--temperature", "0", "--src",
                                "a source text longer than the eight landmarks"] + cache)
        ok = ok and rc == 0
        outs.append(out if rc == 0 else err.strip()[-200:])
    ok = ok and outs[0] == outs[1]
    results.append((name, ok, f"cached {outs[0]!r} vs recomputed {outs[1]!r}"))
    return results


# --------------------------------------------------------------------------------------------
# Self-checks of the twin (no engine involved)


def _rand_model(cfg, seed):
    return twin.build(cfg, random_tensors(twin.expected_shapes(cfg), seed))


def selfcheck_torch_layers():
    """Twin with position none vs torch.nn.TransformerEncoderLayer / DecoderLayer (float64)."""
    worst = 0.0
    for arch in ("encoder", "decoder", "encoder_decoder"):
        for npos in ("pre", "post"):
            for act in ("relu", "gelu"):
                cfg = dict(BASE, arch=arch, norm_position=npos, activation=act, n_layers=2,
                           position={"type": "none"})
                m = _rand_model(cfg, 5)
                w = m.w
                d, H, Fh = cfg["d_model"], cfg["n_heads"], cfg["d_ff"]
                T, Ts = 11, 9
                g = torch.Generator().manual_seed(1)
                tok = torch.randint(0, cfg["vocab_size"], (1, T), generator=g)
                src = torch.randint(0, cfg["vocab_size"], (1, Ts), generator=g)

                def mha(mod, P):
                    mod.in_proj_weight.copy_(torch.cat([w[P + n + ".weight"] for n in "qkv"]))
                    mod.in_proj_bias.copy_(torch.cat([w[P + n + ".bias"] for n in "qkv"]))
                    mod.out_proj.weight.copy_(w[P + "o.weight"])
                    mod.out_proj.bias.copy_(w[P + "o.bias"])

                def ln(mod, P):
                    mod.weight.copy_(w[P + ".weight"])
                    mod.bias.copy_(w[P + ".bias"])

                def stack(S, x, causal, mem=None):
                    for i in range(cfg["n_layers"]):
                        L = f"{S}layers.{i}."
                        if mem is None:
                            lay = torch.nn.TransformerEncoderLayer(
                                d, H, Fh, dropout=0.0, activation=act, batch_first=True,
                                norm_first=(npos == "pre"), layer_norm_eps=1e-5).double()
                            ln(lay.norm2, L + "ffn_norm")
                        else:
                            lay = torch.nn.TransformerDecoderLayer(
                                d, H, Fh, dropout=0.0, activation=act, batch_first=True,
                                norm_first=(npos == "pre"), layer_norm_eps=1e-5).double()
                            mha(lay.multihead_attn, L + "cross_attn.")
                            ln(lay.norm2, L + "cross_norm")
                            ln(lay.norm3, L + "ffn_norm")
                        lay.eval()
                        mha(lay.self_attn, L + "attn.")
                        ln(lay.norm1, L + "attn_norm")
                        lay.linear1.weight.copy_(w[L + "ffn.w1.weight"])
                        lay.linear1.bias.copy_(w[L + "ffn.w1.bias"])
                        lay.linear2.weight.copy_(w[L + "ffn.w2.weight"])
                        lay.linear2.bias.copy_(w[L + "ffn.w2.bias"])
                        n = x.shape[1]
                        mask = torch.triu(torch.full((n, n), float("-inf"), dtype=torch.float64),
                                          1) if causal else None
                        if mem is None:
                            x = lay(x, src_mask=mask)
                        else:
                            x = lay(x, mem, tgt_mask=mask)
                    if npos == "pre":
                        x = torch.nn.functional.layer_norm(x, (d,), w[S + "final_norm.weight"],
                                                           w[S + "final_norm.bias"], 1e-5)
                    return x

                with torch.no_grad():
                    E = w["embed.weight"]
                    if arch == "encoder":
                        ref = stack("encoder.", E[tok], False)
                        h, lg = twin.forward(m, tok)
                    elif arch == "decoder":
                        ref = stack("decoder.", E[tok], True)
                        h, lg = twin.forward(m, tok, pos_offset=3)
                    else:
                        mem = stack("encoder.", E[src], False)
                        ref = stack("decoder.", E[tok], True, mem)
                        h, lg = twin.forward(m, tok, pos_offset=3, src=src)
                err = (h - ref).abs().max().item() / ref.abs().max().item()
                err = max(err, (lg - ref @ E.T).abs().max().item() / lg.abs().max().item())
                worst = max(worst, err)
    return worst, worst < 1e-10


def selfcheck_embed_scale():
    """embed_scale s in the twin: a tied model with s equals a model with s = 1 whose token table
    is s E and whose untied head is E (the lookup is scaled, the head and positions are not)."""
    worst = 0.0
    for arch, pos, s in (("decoder", "sinusoidal", "sqrt_d"), ("encoder_decoder", "learned", 2.5)):
        cfg = dict(BASE, arch=arch, embed_scale=s, position={"type": pos})
        m = _rand_model(cfg, 13)
        k = math.sqrt(cfg["d_model"]) if s == "sqrt_d" else s
        cfg1 = dict(cfg, embed_scale=1.0, tie_embeddings=False)
        w1 = dict(m.w)
        w1["lm_head.weight"] = m.w["embed.weight"]
        w1["embed.weight"] = m.w["embed.weight"] * k
        m1 = twin.build(cfg1, w1)
        g = torch.Generator().manual_seed(4)
        tok = torch.randint(0, cfg["vocab_size"], (2, 9), generator=g)
        src = torch.randint(0, cfg["vocab_size"], (2, 7), generator=g) if arch != "decoder" else None
        h, lg = twin.forward(m, tok, pos_offset=3, src=src)
        h1, lg1 = twin.forward(m1, tok, pos_offset=3, src=src)
        worst = max(worst, (h - h1).abs().max().item() / h1.abs().max().item(),
                    (lg - lg1).abs().max().item() / lg1.abs().max().item())
        # and the scale does change the output (positions are not scaled along)
        h0, _ = twin.forward(twin.build(dict(cfg, embed_scale=1.0), m.w), tok, pos_offset=3,
                             src=src)
        if (h0 - h).abs().max().item() < 1e-3:
            return 1.0, False
    return worst, worst < 1e-12


def _loop_attention(m, S, L, x, pos0, causal):
    """Self-attention of one layer by plain loops over (h, i, j), formulas written as in the
    brief / SPEC.md. x: [T, d] (already normed)."""
    c = m.c
    w = m.w
    H, Hkv, D, d = c.H, c.Hkv, c.D, c.d
    T = x.shape[0]
    P = L + "attn."

    def lin(n, inp):
        y = inp @ w[P + n + ".weight"].T
        if (P + n + ".bias") in w:
            y = y + w[P + n + ".bias"]
        return y

    q, k, v = lin("q", x), lin("k", x), lin("v", x)
    pt = c.pos_type
    scale = c.self_scale()

    def rot(vec, mpos):
        R = c.pos["rotary_dim"] or D
        out = vec.clone()
        for i in range(R // 2):
            th = c.pos["base"] ** (-2.0 * i / R)
            a_i, b_i = (2 * i, 2 * i + 1) if c.pos["layout"] == "interleaved" else (i, i + R // 2)
            cs, sn = math.cos(mpos * th), math.sin(mpos * th)
            out[a_i] = vec[a_i] * cs - vec[b_i] * sn
            out[b_i] = vec[b_i] * cs + vec[a_i] * sn
        return out

    def sin_half(mm):
        ws = [10000.0 ** (-2.0 * i / d) for i in range(d // 2)]
        return torch.tensor([math.sin(mm * wi) for wi in ws] + [math.cos(mm * wi) for wi in ws],
                            dtype=torch.float64)

    out = torch.zeros(T, H * D, dtype=torch.float64)
    for h in range(H):
        g = h // (H // Hkv)
        qh = q[:, h * D:(h + 1) * D]
        kh = k[:, g * D:(g + 1) * D]
        vh = v[:, g * D:(g + 1) * D]
        s = torch.full((T, T), float("-inf"), dtype=torch.float64)
        extra_v = {}
        for a in range(T):
            i = pos0 + a
            for b in range(T):
                j = pos0 + b
                if causal and j > i:
                    continue
                qi, kj = qh[a], kh[b]
                if pt == "rope":
                    e = scale * float(rot(qi, i) @ rot(kj, j))
                elif pt == "alibi":
                    sl = twin.alibi_slopes(H)[h].item()
                    e = scale * float(qi @ kj) - sl * ((i - j) if causal else abs(i - j))
                elif pt == "t5":
                    bk = twin.t5_bucket(j - i, not causal, c.pos["num_buckets"],
                                        c.pos["max_distance"])
                    e = scale * float(qi @ kj) + w[S + "rel_bias.weight"][bk, h].item()
                elif pt == "shaw":
                    kc = c.pos["clip"]
                    r = max(-kc, min(kc, j - i)) + kc
                    e = scale * float(qi @ (kj + w[P + "shaw_k"][r]))
                    extra_v[(a, b)] = w[P + "shaw_v"][r]
                elif pt == "xl":
                    WR = w[P + "xl_r.weight"][h * D:(h + 1) * D]       # [D, d]
                    rr = WR @ sin_half(i - j)
                    u, vv = w[P + "xl_u"][h], w[P + "xl_v"][h]
                    e = scale * float(qi @ kj + qi @ rr + u @ kj + vv @ rr)
                elif pt == "deberta":
                    sp = c.pos["span"]

                    def delta(x_, y_):
                        return max(-sp, min(sp - 1, x_ - y_)) + sp
                    Pm = w[S + "rel_emb.weight"]
                    Kr = Pm @ w[P + "pos_k.weight"][h * D:(h + 1) * D].T
                    Qr = Pm @ w[P + "pos_q.weight"][h * D:(h + 1) * D].T
                    if (P + "pos_k.bias") in w:
                        Kr = Kr + w[P + "pos_k.bias"][h * D:(h + 1) * D]
                        Qr = Qr + w[P + "pos_q.bias"][h * D:(h + 1) * D]
                    e = scale * float(qi @ kj + qi @ Kr[delta(i, j)] + kj @ Qr[delta(j, i)])
                else:
                    e = scale * float(qi @ kj)
                s[a, b] = e
        p = torch.softmax(s, dim=-1)
        o = p @ vh
        for (a, b), ev in extra_v.items():
            o[a] += p[a, b] * ev
        out[:, h * D:(h + 1) * D] = o
    return lin("o", out)


def selfcheck_loops():
    worst = 0.0
    for pos in POS_TYPES:
        if pos in ("none", "learned", "sinusoidal", "sinusoidal_half"):
            continue
        variants = [{}]
        if pos == "rope":
            variants = [{"layout": "interleaved"}, {"layout": "half", "rotary_dim": 4, "base": 77.0}]
        for var in variants:
            for causal in (False, True):
                for kv in (4, 2):
                    p = {"type": pos}
                    p.update({"t5": {"num_buckets": 8, "max_distance": 12}, "shaw": {"clip": 3},
                              "deberta": {"span": 3}}.get(pos, {}))
                    p.update(var)
                    cfg = dict(BASE, d_model=32, arch="decoder" if causal else "encoder",
                               n_kv_heads=kv, position=p)
                    m = _rand_model(cfg, 11)
                    S = "decoder." if causal else "encoder."
                    L = S + "layers.1."
                    T, pos0 = 14, 5
                    g = torch.Generator().manual_seed(2)
                    x = torch.randn(1, T, 32, generator=g, dtype=torch.float64)
                    posv = torch.arange(pos0, pos0 + T)
                    got = twin._attention(m, S, L, "attn", x, x, posv, posv, causal)[0]
                    ref = _loop_attention(m, S, L, x[0], pos0, causal)
                    err = (got - ref).abs().max().item() / ref.abs().max().item()
                    worst = max(worst, err)
    return worst, worst < 1e-10


def selfcheck_linear():
    """The twin's linear attention (the whole masked weight matrix, normalised per row) against
    SPEC.md 6 as written, by loops: S = sum_j phi(k_j) v_j^T, z = sum_j phi(k_j) (causal: running
    prefix sums, key j joining before query j reads them), o_i = phi(q_i)^T S / phi(q_i)^T z,
    phi(x) = x + 1 (x > 0) or e^x; GQA head h reads kv head h // (H / Hkv)."""
    worst = 0.0

    def phi(t):
        return torch.where(t > 0, t + 1.0, torch.exp(t))

    for causal in (False, True):
        for kv in (4, 2, 1):
            cfg = dict(BASE, d_model=32, arch="decoder" if causal else "encoder", n_kv_heads=kv,
                       position={"type": "none"}, attention={"type": "linear"})
            m = _rand_model(cfg, 13)
            c, w = m.c, m.w
            S = "decoder." if causal else "encoder."
            P = S + "layers.1.attn."
            T, pos0 = 20, 5
            g = torch.Generator().manual_seed(4)
            x = torch.randn(1, T, 32, generator=g, dtype=torch.float64)
            posv = torch.arange(pos0, pos0 + T)
            got = twin._attention(m, S, S + "layers.1.", "attn", x, x, posv, posv, causal)[0]

            def lin(n, inp):
                return inp @ w[P + n + ".weight"].T + w[P + n + ".bias"]

            q, k, v = lin("q", x[0]), lin("k", x[0]), lin("v", x[0])
            D = c.D
            out = torch.zeros(T, c.H * D, dtype=torch.float64)
            for h in range(c.H):
                gk = h // (c.H // c.Hkv)
                Sm = torch.zeros(D, D, dtype=torch.float64)
                z = torch.zeros(D, dtype=torch.float64)
                kh, vh = k[:, gk * D:(gk + 1) * D], v[:, gk * D:(gk + 1) * D]
                if not causal:
                    for j in range(T):
                        Sm += torch.outer(phi(kh[j]), vh[j])
                        z += phi(kh[j])
                for i in range(T):
                    if causal:
                        Sm += torch.outer(phi(kh[i]), vh[i])
                        z += phi(kh[i])
                    a = phi(q[i, h * D:(h + 1) * D])
                    out[i, h * D:(h + 1) * D] = (a @ Sm) / (a @ z)
            ref = lin("o", out)
            worst = max(worst, ((got - ref).abs().max() / ref.abs().max()).item())
    return worst, worst < 1e-12


def selfcheck_nystrom():
    """The twin's nystrom against identities: landmarks = T (every segment one row) with 40
    iterations is exact softmax; Z after 40 iterations is A^-1 (A Z = I); the landmark of a
    segment of equal rows is that row (T = 3 segments of 4 equal rows each, 3 landmarks: the
    Nystrom form is then exact too, since softmax(Q K^T) has rank 3 in the segment structure)."""
    g = torch.Generator().manual_seed(5)
    worst = 0.0
    for T in (7, 16):
        q, k, v = (torch.randn(2, 3, T, 8, generator=g, dtype=torch.float64) for _ in range(3))
        got = twin.nystrom_attention(q, k, v, 0.35, T, 40)
        ref = torch.softmax(0.35 * q @ k.transpose(-1, -2), -1) @ v
        worst = max(worst, (got - ref).abs().max().item())
    q, k, v = (torch.randn(1, 2, 3, 8, generator=g, dtype=torch.float64) for _ in range(3))
    rep = lambda x: x.repeat_interleave(4, dim=2)  # noqa: E731  rows 0-3 equal, 4-7, 8-11
    got = twin.nystrom_attention(rep(q), rep(k), rep(v), 0.5, 3, 40)
    ref = torch.softmax(0.5 * rep(q) @ rep(k).transpose(-1, -2), -1) @ rep(v)
    worst = max(worst, (got - ref).abs().max().item())
    return worst, worst < 1e-10


def selfcheck_packed():
    """The twin's segment mask: a packed row of 3 documents equals each document run alone
    (positions from 0), for relative, rotary and absolute schemes in both self-attention
    directions."""
    g = torch.Generator().manual_seed(11)
    worst = 0.0
    seg = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    for arch, pos in (("decoder", "t5"), ("encoder", "alibi"), ("decoder", "rope"),
                      ("encoder", "deberta"), ("decoder", "learned"), ("encoder", "xl"),
                      ("decoder", "shaw")):
        p = {"type": pos}
        p.update(POS_PARAMS.get(pos, {}))
        cfg = dict(BASE, arch=arch, position=p)
        m = twin.build(cfg, {k: 0.3 * torch.randn(s, generator=g, dtype=torch.float64)
                             for k, s in twin.expected_shapes(cfg).items()})
        tok = torch.randint(0, cfg["vocab_size"], (1, 10), generator=g)
        h, _ = twin.forward(m, tok, segments=seg)
        for a, b in ((0, 3), (3, 7), (7, 10)):
            ha, _ = twin.forward(m, tok[:, a:b])
            worst = max(worst, (h[0, a:b] - ha[0]).abs().max().item())
    return worst, worst < 1e-12


def selfcheck_rope_t5():
    """RoPE relative identity <R_m q, R_n k> = <q, R_(n-m) k>; half layout = row-permuted
    interleaved; T5 buckets against the HF T5 code path (vectorised torch, float64)."""
    g = torch.Generator().manual_seed(3)
    worst = 0.0
    q = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)
    k = torch.randn(1, 1, 1, 16, generator=g, dtype=torch.float64)
    for layout in ("interleaved", "half"):
        for (mq, nk) in ((3, 10), (100, 7), (-5, 40)):
            a = (twin.rope_rotate(q, torch.tensor([mq]), 12, 10000.0, layout) *
                 twin.rope_rotate(k, torch.tensor([nk]), 12, 10000.0, layout)).sum()
            b = (q * twin.rope_rotate(k, torch.tensor([nk - mq]), 12, 10000.0, layout)).sum()
            worst = max(worst, abs(a - b).item())
    # half layout on permuted dims == interleaved
    R = 12
    perm = list(range(0, R, 2)) + list(range(1, R, 2)) + list(range(R, 16))
    inter = twin.rope_rotate(q, torch.tensor([37]), R, 10000.0, "interleaved")
    half = twin.rope_rotate(q[..., perm], torch.tensor([37]), R, 10000.0, "half")
    worst = max(worst, (inter[..., perm] - half).abs().max().item())

    def hf_bucket(rel, bidirectional, num_buckets, max_distance):
        ret = torch.zeros_like(rel)
        if bidirectional:
            num_buckets //= 2
            ret += (rel > 0).long() * num_buckets
            rel = rel.abs()
        else:
            rel = -torch.min(rel, torch.zeros_like(rel))
        max_exact = num_buckets // 2
        small = rel < max_exact
        large = max_exact + (torch.log(rel.double() / max_exact) / math.log(max_distance / max_exact)
                             * (num_buckets - max_exact)).long()
        large = torch.min(large, torch.full_like(large, num_buckets - 1))
        return ret + torch.where(small, rel, large)

    rel = torch.arange(-600, 601)
    bad = 0
    for bi in (True, False):
        for nb, md in ((32, 128), (16, 40), (8, 12)):
            mine = torch.tensor([twin.t5_bucket(int(r), bi, nb, md) for r in rel])
            bad += int((mine != hf_bucket(rel, bi, nb, md)).sum())
    ok = worst < 1e-12 and bad == 0
    return max(worst, float(bad)), ok


# --------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--posformer", required=True, help="path to the posformer CLI")
    ap.add_argument("--quick", action="store_true", help="the 30 scheme x arch cases only, T (and src length) capped at 64")
    ap.add_argument("--only", default=None, help="regex on case names")
    ap.add_argument("--keep", default=None, help="keep work files in this directory")
    ap.add_argument("--tol", type=float, default=2e-5)
    ap.add_argument("--no-selfcheck", action="store_true")
    a = ap.parse_args()
    cli = e2e_util.require_cli(a.posformer)

    report = e2e_util.Report(50)

    if not a.no_selfcheck and a.only is None:
        report.selfchecks([
            ("selfcheck.twin_vs_torch_nn_layers", selfcheck_torch_layers),
            ("selfcheck.twin_vs_loop_formulas", selfcheck_loops),
            ("selfcheck.rope_identity_t5_buckets", selfcheck_rope_t5),
            ("selfcheck.embed_scale_is_the_lookup_only", selfcheck_embed_scale),
            ("selfcheck.twin_linear_vs_prefix_sums", selfcheck_linear),
            ("selfcheck.twin_nystrom_identities", selfcheck_nystrom),
            ("selfcheck.twin_packed_row_equals_documents_alone", selfcheck_packed),
        ])

    work = a.keep or tempfile.mkdtemp(prefix="posformer_twin_")
    os.makedirs(work, exist_ok=True)
    try:
        cases = all_cases()
        if a.quick:
            cases = cases[:len(POS_TYPES) * len(ARCHS)]
        if a.only:
            cases = [c for c in cases if re.search(a.only, c["name"])]
        for case in cases:
            if a.quick:
                case["T"] = min(case["T"], 64)
                if case["src"]:
                    case["src"] = min(case["src"], 64)
            t0 = time.time()
            try:
                res = run_case(cli, case, work, a.tol)
                rel = max(r for _, r in res.values())
                detail = "  ".join(f"{k} rel {r:.2e} abs {mx:.2e}" for k, (mx, r) in res.items())
                ok = rel <= a.tol
                src = f" src={case['src']}" if case["src"] else ""
                report(case["name"], ok, f"T={case['T']} offset={case['off']}{src}  rel_err {rel:.2e}"
                       f"   [{detail}]  ({time.time() - t0:.1f}s)")
            except Failure as e:
                report(case["name"], False, f"T={case['T']} offset={case['off']}  {e}")
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                report(case["name"], False, f"T={case['T']} offset={case['off']}  exception {e}")
        if a.only is None or re.search(a.only, "refuse"):
            try:
                for name, ok, detail in check_refusals(cli, work):
                    report(name, ok, detail)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                report("refuse", False, f"exception {e}")
        if a.only is None or re.search(a.only, "nystrom_cli"):
            try:
                for name, ok, detail in check_nystrom_cli(cli, work):
                    report(name, ok, detail)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                report("nystrom_cli", False, f"exception {e}")
        if a.only is None or re.search(a.only, "linear_cli"):
            try:
                for name, ok, detail in check_linear_cli(cli, work):
                    report(name, ok, detail)
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                report("linear_cli", False, f"exception {e}")
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    report.finish()


if __name__ == "__main__":
    main()
