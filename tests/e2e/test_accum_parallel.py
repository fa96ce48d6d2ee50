#!/usr/bin/python3
"""train --accum-parallel (the --accum micro-batches of a step side by side, one per thread, each
into its own gradient buffer): for every arch and the position schemes with score hooks and
learned tables (T5, Shaw, Transformer-XL, DeBERTa, ALiBi, RoPE, learned), sequence packing,
dropout and a ViT with mixing, the losses and saved weights are bit-identical at 1 and 2
threads (a data race between the micro-batches would break that), the per-step losses equal
the serial accumulation's up to rounding (the first step's exactly: same forward, same data),
resume is exact, and a bad combination is named.
Usage: test_accum_parallel.py --posformer PATH [--keep]"""
import json
import os
import random

import harness

h = harness.Harness("posformer_accum_par_", __doc__)
PF, W, run, check, write = h.pf, h.dir, h.run, h.check, h.write
losses = harness.train_losses

rng = random.Random(5)
words = ["order", "length", "rotary", "position", "attention", "bias", "relative", "train", "decay"]
DATA = write(os.path.join(W, "corpus.txt"),
             "\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(200)))

SCHEMES = {"t5": {"num_buckets": 8, "max_distance": 12}, "shaw": {"clip": 3}, "deberta": {"span": 4},
           "xl": {}, "alibi": {}, "rope": {}, "learned": {}}


def config(name, arch, pos, extra=None):
    c = {"arch": arch, "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "vocab_size": 260,
         "max_len": 64, "position": {"type": pos, **SCHEMES[pos]}, "dropout": 0.1}
    c.update(extra or {})
    return write(os.path.join(W, name + ".json"), json.dumps(c))


CASES = [  # name, arch, position, extra train flags
    ("dec_t5_packed", "decoder", "t5", ["--pack-documents"]),
    ("dec_xl", "decoder", "xl", []),
    ("dec_rope", "decoder", "rope", []),
    ("enc_shaw", "encoder", "shaw", []),
    ("enc_deberta", "encoder", "deberta", []),
    ("encdec_alibi", "encoder_decoder", "alibi", []),
    ("dec_learned", "decoder", "learned", []),
]


def train(cfg, out, threads, parallel=True, extra=(), steps=6, more=()):
    args = ["train", "--config", cfg, "--data", DATA, "--out", out, "--steps", steps, "--batch", 2,
            "--seq-len", 24, "--accum", 3, "--eval-every", 0, "--ckpt-every", 2, "--threads", threads,
            "--quiet", "--seed", 11, "--lr", 3e-3, *extra, *more]
    if parallel:
        args.append("--accum-parallel")
    run(*args)
    return losses(out)


def weights(d):
    with open(os.path.join(d, "model.safetensors"), "rb") as f:
        return f.read()


def t_threads_and_serial():
    for name, arch, pos, extra in CASES:
        cfg = config(name, arch, pos)
        a, b, s = (os.path.join(W, f"{name}_{k}") for k in ("t1", "t2", "serial"))
        la, lb = train(cfg, a, 1, extra=extra), train(cfg, b, 2, extra=extra)
        assert len(la) == 6 and la == lb, f"{name}: 1 vs 2 threads differ:\n{la}\n{lb}"
        assert weights(a) == weights(b), f"{name}: saved weights differ between 1 and 2 threads"
        ls = train(cfg, s, 2, parallel=False, extra=extra)
        assert ls[0] == la[0], f"{name}: first step's loss differs from the serial loop: {ls[0]} vs {la[0]}"
        assert [x[0] for x in ls] == [y[0] for y in la]
        for (_, x), (_, y) in zip(ls, la):
            assert abs(x - y) <= 1e-6 * abs(x), f"{name}: serial vs side by side:\n{ls}\n{la}"


def t_vit_mixing_dropout():
    cfg = write(os.path.join(W, "vit.json"), json.dumps({
        "arch": "vit", "image_size": 28, "patch_size": 7, "channels": 1, "num_classes": 10, "d_model": 32,
        "n_layers": 2, "n_heads": 4, "d_ff": 64, "dropout": 0.1, "position": {"type": "rope_2d"}}))
    outs = []
    for threads in (1, 2):
        d = os.path.join(W, f"vit_t{threads}")
        run("train", "--config", cfg, "--data", "fashion-mnist", "--max-images", 256, "--out", d, "--steps", 5,
            "--batch", 16, "--accum", 2, "--accum-parallel", "--eval-every", 0, "--ckpt-every", 0,
            "--val-fraction", 0, "--flip", "--erase", 0.5, "--cutmix", 1.0, "--mixup", 0.4, "--mix-prob", 0.8,
            "--label-smoothing", 0.1, "--threads", threads, "--quiet", "--seed", 2)
        outs.append(d)
    la, lb = losses(outs[0]), losses(outs[1])
    assert len(la) == 5 and la == lb, f"ViT: 1 vs 2 threads differ:\n{la}\n{lb}"
    assert weights(outs[0]) == weights(outs[1])
    assert json.load(open(os.path.join(outs[0], "train.json")))["accum_parallel"] is True


def t_resume_exact():
    cfg = config("resume", "decoder", "t5")
    a, b = os.path.join(W, "res_full"), os.path.join(W, "res_split")
    la = train(cfg, a, 2, steps=8)
    train(cfg, b, 2, steps=8, more=["--stop-after", 3])
    assert len(losses(b)) == 3
    run("train", "--resume", b, "--quiet")
    assert losses(b) == la, f"resumed side-by-side run differs:\n{la}\n{losses(b)}"


def t_bad_combination_named():
    cfg = config("bad", "decoder", "rope")
    p = run("train", "--config", cfg, "--data", DATA, "--out", os.path.join(W, "bad"), "--steps", 2,
            "--accum-parallel", "--quiet", ok=False)
    assert p.returncode != 0 and "--accum-parallel" in p.err and "--accum 2 or more" in p.err, p.err
    assert not os.path.exists(os.path.join(W, "bad", "metrics.jsonl"))


check("1 vs 2 threads bit-identical, serial accumulation equal up to rounding (every arch, hooks)",
      t_threads_and_serial)
check("ViT with mixing, erasing and dropout: 1 vs 2 threads bit-identical, kept in train.json",
      t_vit_mixing_dropout)
check("resume is exact with --accum-parallel", t_resume_exact)
check("--accum-parallel without --accum >= 2 is refused, naming both", t_bad_combination_named)
h.finish()
