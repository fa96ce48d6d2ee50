#!/usr/bin/python3
"""End-to-end checks of sequence packing and left-padded batched generation through the CLI:
train --pack-documents trains (its loss falls), differs from the unpacked run, resumes bit for
bit and refuses a different setting on resume; eval --pack-documents; generate --prompts-file
(3 prompts of different lengths) prints exactly what each prompt gives alone, greedy and
sampled, with and without the KV cache; bad input (a variant without segment masks, seq2seq,
an empty prompts file) gets clear errors. Usage: test_packing.py --posformer PATH [--keep]"""
import json
import os
import random

import harness

h = harness.Harness("posformer_pack_", __doc__, only=True)
W, run, check, write = h.dir, h.run, h.check, h.write


losses = harness.train_losses


def val_losses(run_dir):
    return [r["val_loss"] for r in harness.metrics(run_dir) if "val_loss" in r]


TINY = {"arch": "decoder", "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64,
        "vocab_size": 260, "max_len": 128, "position": {"type": "rope"}}
CFG = write("tiny.json", TINY)
LIN = write("linear.json", dict(TINY, attention={"type": "linear"}, position={"type": "none"}))
S2S = write("s2s.json", dict(TINY, arch="encoder_decoder"))
rng = random.Random(0)
words = ["order", "length", "rotary", "position", "attention", "bias", "relative", "train", "decay"]
# short documents (2-12 words): a 64-token window holds several
DATA = write("corpus.txt", "\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(2, 12)))
                                       for _ in range(300)))
COMMON = ["--config", CFG, "--data", DATA, "--batch", 4, "--seq-len", 64, "--eval-every", 10,
          "--threads", 2, "--quiet", "--seed", 5, "--lr", 3e-3, "--warmup", 2]
MODEL = os.path.join(W, "packed")


def t_train_resume():
    a, b, u = MODEL, os.path.join(W, "packed_split"), os.path.join(W, "unpacked")
    run("train", *COMMON, "--pack-documents", "--steps", 30, "--ckpt-every", 7, "--out", a)
    la = losses(a)
    assert len(la) == 30, la
    first, last = la[0][1], sum(x for _, x in la[-5:]) / 5
    assert last < 0.6 * first, f"the packed run's loss did not fall: {first} -> {last}"
    with open(os.path.join(a, "train.json")) as f:
        assert json.load(f)["pack_documents"] is True
    run("train", *COMMON, "--pack-documents", "--steps", 30, "--ckpt-every", 7, "--out", b,
        "--stop-after", 11)
    assert len(losses(b)) == 11, losses(b)
    run("train", "--resume", b, "--quiet")
    assert losses(b) == la, f"resumed packed run differs:\n{la}\n{losses(b)}"  # bit for bit
    assert val_losses(b) == val_losses(a)
    run("train", *COMMON, "--steps", 3, "--out", u)
    lu = losses(u)
    assert lu[0] != la[0], "--pack-documents changed nothing in the first step"
    # a different setting on resume is refused, naming it
    p = run("train", "--resume", u, "--pack-documents", "--quiet", ok=False)
    assert p.returncode != 0 and "--pack-documents on differs" in p.stderr, p.stderr
    p = run("train", "--resume", a, "--pack-documents", "--steps", 31, "--quiet")  # same: fine


def t_eval():
    plain = run("eval", MODEL, "--data", DATA, "--seq-len", 64, "--max-windows", 4).stdout
    packed = run("eval", MODEL, "--data", DATA, "--seq-len", 64, "--max-windows", 4,
                 "--pack-documents").stdout
    row = lambda s: [ln for ln in s.splitlines() if ln.startswith("64 ")][0].split()  # noqa: E731
    lp, lk = float(row(plain)[1]), float(row(packed)[1])
    assert lk != lp, (plain, packed)
    assert lk < lp, f"a model trained packed scores worse packed ({lk}) than unpacked ({lp})"


PROMPTS = ["rotary position", "bias", "attention order length decay train"]


def t_generate_batch():
    pf = write("prompts.txt", "\n".join(PROMPTS[:2]) + "\n\n" + PROMPTS[2] + "\n")
    for flags in (["--temperature", 0], ["--temperature", 0.9, "--seed", 4, "--top-k", 20],
                  ["--temperature", 0, "--no-cache"], ["--temperature", 1.0, "--seed", 9,
                                                       "--no-cache"]):
        solo = "".join(run("generate", MODEL, "--prompt", p, "--max-new-tokens", 12, *flags).stdout
                       for p in PROMPTS)
        batch = run("generate", MODEL, "--prompts-file", pf, "--max-new-tokens", 12, *flags).stdout
        assert batch == solo, f"{flags}: batch\n{batch!r}\n!= solo\n{solo!r}"
        assert all(batch.count(p) >= 1 for p in PROMPTS)


def t_bad_input():
    p = run("train", "--config", LIN, "--data", DATA, "--out", os.path.join(W, "lin"),
            "--pack-documents", "--steps", 2, "--quiet", ok=False)
    assert p.returncode != 0 and "attention 'linear' takes no segment mask" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(W, "lin", "model.safetensors"))
    p = run("train", "--config", S2S, "--data", DATA, "--out", os.path.join(W, "s2s"),
            "--pack-documents", "--steps", 2, "--quiet", ok=False)
    assert p.returncode != 0 and "--pack-documents is for the clm and mlm" in p.stderr, p.stderr
    empty = write("empty.txt", "\n\n")
    p = run("generate", MODEL, "--prompts-file", empty, ok=False)
    assert p.returncode != 0 and "holds no prompts" in p.stderr, p.stderr
    p = run("generate", MODEL, "--prompts-file", os.path.join(W, "missing.txt"), ok=False)
    assert p.returncode != 0 and "cannot read --prompts-file" in p.stderr, p.stderr
    lm = os.path.join(W, "lin_model")
    run("init", "--config", LIN, "--out", lm)
    p = run("forward", lm, "--tokens", "1 2 3 4", "--segments", "0 0 1 1", "--out",
            os.path.join(W, "o.safetensors"), ok=False)
    assert p.returncode != 0 and "attention 'linear' takes no segment mask" in p.stderr, p.stderr
    p = run("forward", MODEL, "--tokens", "1 2 3 4", "--segments", "0 1 1", "--out",
            os.path.join(W, "o.safetensors"), ok=False)
    assert p.returncode != 0 and "segment ids row 0 has 3 entries for 4 tokens" in p.stderr, p.stderr
    p = run("forward", MODEL, "--tokens", "1 2 3 4", "--segments", "1 1 0 0", "--out",
            os.path.join(W, "o.safetensors"), ok=False)
    assert p.returncode != 0 and "must not decrease" in p.stderr, p.stderr


check("train --pack-documents: loss falls, differs from unpacked, resume bit for bit, "
      "a different setting on resume refused", t_train_resume)
check("eval --pack-documents", t_eval)
check("generate --prompts-file: each prompt as alone (greedy, sampled, with and without cache)",
      t_generate_batch)
check("bad input: linear attention, seq2seq, empty/missing prompts file, segment shapes",
      t_bad_input)
h.finish()
