#!/usr/bin/python3
"""End-to-end training checks through the CLI: exact resume, kill -9 crash safety, bad inputs,
evaluation, generation and plotting. Usage: test_train.py --posformer PATH [--keep]"""
import json
import os
import random
import signal
import subprocess
import time

import harness

h = harness.Harness("posformer_train_", __doc__, only=True)
PF, W, run, check, write = h.pf, h.dir, h.run, h.check, h.write


losses = harness.train_losses


CFG = write(os.path.join(W, "tiny.json"), json.dumps({
    "arch": "decoder", "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "vocab_size": 260,
    "max_len": 128, "position": {"type": "rope"}}))
write(os.path.join(W, "learned.json"), json.dumps({
    "arch": "decoder", "d_model": 32, "n_layers": 1, "n_heads": 4, "d_ff": 64, "max_len": 16,
    "position": {"type": "learned"}}))
rng = random.Random(0)
words = ["order", "length", "rotary", "position", "attention", "bias", "relative", "train", "decay"]
DATA = write(os.path.join(W, "corpus.txt"),
             "\n\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(200)))
COMMON = ["--config", CFG, "--data", DATA, "--batch", 2, "--seq-len", 32, "--eval-every", 5,
          "--threads", 2, "--quiet", "--seed", 3]


def t_resume_exact():
    a, b = os.path.join(W, "full"), os.path.join(W, "split")
    run("train", *COMMON, "--steps", 14, "--ckpt-every", 4, "--out", a)
    run("train", *COMMON, "--steps", 14, "--ckpt-every", 4, "--out", b, "--stop-after", 6)
    assert len(losses(b)) == 6, losses(b)
    run("train", "--resume", b, "--quiet")
    la, lb = losses(a), losses(b)
    assert len(la) == 14 and la == lb, f"losses differ:\n{la}\n{lb}"  # bit for bit (JSON round-trips doubles)


def _loss_lines(run_dir):
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            return sum(1 for line in f if '"loss"' in line)
    except OSError:
        return 0


def _has_checkpoint(run_dir):
    ckdir = os.path.join(run_dir, "checkpoints")
    return os.path.isdir(ckdir) and any(n.startswith("step-") and "." not in n for n in os.listdir(ckdir))


def _saving(run_dir, step):
    """True while the checkpoint of `step` or a later one is being written (its .tmp dir)."""
    try:
        names = os.listdir(os.path.join(run_dir, "checkpoints"))
    except OSError:
        return False
    return any(".tmp." in n and n.startswith("step-") and int(n[5:n.index(".")]) >= step
               for n in names)


def t_kill9():
    # Kills are placed by observed progress, not by wall time, so they land on any machine however
    # fast. Each attempt picks a step a few ahead of what the run has logged; every other attempt
    # kills as soon as that step's checkpoint is seen being written (its .tmp dir: mid-save by
    # construction), the others when its metrics line appears plus 0-4 ms (metrics are logged just
    # before the save, so these land in the save or in the next step). The target always leaves
    # steps to go, so the kill lands unless the process dies first.
    ref, d = os.path.join(W, "kref"), os.path.join(W, "killed")
    steps = 40
    opts = [*COMMON, "--steps", steps, "--ckpt-every", 1, "--keep-last", 2]
    run("train", *opts, "--out", ref)
    kills = mid_save = 0
    r = random.Random(7)
    for attempt in range(40):
        if kills >= 8:
            break
        done = _loss_lines(d)
        target = done + r.randint(1, 4)
        if target > steps - 4:
            break
        cmd = [PF, "train", "--resume", d, "--quiet"] if _has_checkpoint(d) else [PF, "train", *map(str, opts), "--out", d]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 300
        if attempt % 2 == 0:  # in the middle of writing checkpoint `target`
            while (p.poll() is None and not _saving(d, target) and _loss_lines(d) <= target
                   and time.time() < deadline):
                time.sleep(0.0002)
        else:
            while p.poll() is None and _loss_lines(d) < target and time.time() < deadline:
                time.sleep(0.0005)
            time.sleep(r.uniform(0, 0.004))
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            kills += 1
        _, err = p.communicate()
        ckdir = os.path.join(d, "checkpoints")
        mid_save += os.path.isdir(ckdir) and any(".tmp." in n for n in os.listdir(ckdir))
        assert p.returncode in (0, -signal.SIGKILL), f"train exited with {p.returncode}: {err[-2000:]!r}"
        if p.returncode == 0:
            break
    assert kills >= 3, f"only {kills} kills landed"
    assert mid_save >= 1, f"none of the {kills} kills landed while a checkpoint was being written"
    run(*(["train", "--resume", d, "--quiet"] if _has_checkpoint(d) else ["train", *opts, "--out", d]))
    assert losses(d) == losses(ref), "the run killed and resumed differs from the uninterrupted one"
    # every surviving checkpoint verifies
    for n in os.listdir(os.path.join(d, "checkpoints")):
        assert n.startswith("step-") and "." not in n, f"leftover {n}"
        assert os.path.exists(os.path.join(d, "checkpoints", n, "COMPLETE")), n
    run("forward", d, "--tokens", "1 2 3", "--out", os.path.join(W, "k.safetensors"))
    print(f"      ({kills} kill -9 landed, {mid_save} of them while a checkpoint was being written)")


def t_bad_inputs():
    empty = write(os.path.join(W, "empty.txt"), "")
    p = run("train", "--config", CFG, "--data", empty, "--out", os.path.join(W, "b1"), "--steps", 2, ok=False)
    assert p.returncode != 0 and "empty.txt" in p.stderr, p.stderr
    p = run("train", "--config", CFG, "--data", os.path.join(W, "missing.txt"), "--out", os.path.join(W, "b2"),
            "--steps", 2, ok=False)
    assert p.returncode != 0 and "missing.txt" in p.stderr, p.stderr
    # non-UTF-8 bytes are fine for the byte tokenizer
    binf = write(os.path.join(W, "bin.txt"), bytes(range(256)) * 20 + "\u4e2d\u6587".encode() * 50)
    run("train", "--config", CFG, "--data", binf, "--out", os.path.join(W, "b3"), "--steps", 2, "--batch", 2,
        "--seq-len", 16, "--quiet")
    # sequence length past a learned table: the inputs count, not the window's last token (a target only)
    learned = os.path.join(W, "learned.json")  # max_len 16
    for L in (32, 17):
        p = run("train", "--config", learned, "--data", DATA, "--out", os.path.join(W, f"b4_{L}"), "--seq-len", L,
                "--steps", 2, ok=False)
        assert p.returncode != 0 and f"--seq-len {L}" in p.stderr and "max_len 16" in p.stderr, p.stderr
    run("train", "--config", learned, "--data", DATA, "--out", os.path.join(W, "b4_16"), "--seq-len", 16,
        "--steps", 2, "--batch", 2, "--quiet")
    # mlm feeds the encoder L tokens; seq2seq feeds the encoder (L+1)/2 and the decoder the rest
    for arch, ok_len, bad_len in (("encoder", 16, 17), ("encoder_decoder", 31, 32)):
        cfg = write(os.path.join(W, f"learned_{arch}.json"), json.dumps({
            "arch": arch, "d_model": 32, "n_layers": 1, "n_heads": 4, "d_ff": 64, "max_len": 16,
            "position": {"type": "learned"}}))
        run("train", "--config", cfg, "--data", DATA, "--out", os.path.join(W, f"b4_{arch}_ok"), "--seq-len",
            ok_len, "--steps", 2, "--batch", 2, "--quiet")
        p = run("train", "--config", cfg, "--data", DATA, "--out", os.path.join(W, f"b4_{arch}_bad"), "--seq-len",
                bad_len, "--steps", 2, ok=False)
        assert p.returncode != 0 and f"--seq-len {bad_len}" in p.stderr and "max_len 16" in p.stderr, p.stderr
    # flags out of range
    p = run("train", "--config", CFG, "--data", DATA, "--out", os.path.join(W, "b5"), "--steps", 0, ok=False)
    assert p.returncode != 0 and "--steps" in p.stderr, p.stderr
    # a checkpoint from a different config
    d = os.path.join(W, "b6")
    run("train", *COMMON, "--steps", 3, "--out", d)
    cfg = json.load(open(os.path.join(d, "config.json")))
    cfg["d_ff"] = 48
    write(os.path.join(d, "config.json"), json.dumps(cfg))
    p = run("train", "--resume", d, "--steps", 5, "--quiet", ok=False)
    assert p.returncode != 0 and "ffn.w1.weight" in p.stderr and "shape" in p.stderr, p.stderr
    p = run("forward", d, "--tokens", "1 2", "--out", os.path.join(W, "x.safetensors"), ok=False)
    assert p.returncode != 0 and "shape" in p.stderr, p.stderr
    # empty or missing input tokens: named, not a crash
    p = run("forward", d, "--tokens", "", "--out", os.path.join(W, "x.safetensors"), ok=False)
    assert p.returncode != 0 and "--tokens: no tokens given" in p.stderr, p.stderr
    p = run("forward", d, "--out", os.path.join(W, "x.safetensors"), ok=False)
    assert p.returncode != 0 and "no input tokens" in p.stderr, p.stderr
    # a truncated newest checkpoint is skipped; resume continues from the one before
    d = os.path.join(W, "b7")
    run("train", *COMMON, "--steps", 6, "--ckpt-every", 2, "--keep-last", 3, "--out", d)
    newest = sorted(os.listdir(os.path.join(d, "checkpoints")))[-1]
    f = os.path.join(d, "checkpoints", newest, "model.safetensors")
    os.truncate(f, os.path.getsize(f) // 2)
    p = run("train", "--resume", d, "--steps", 8, "--quiet")
    assert "truncated" in p.stderr or "skipping" in p.stderr, p.stderr
    # a truncated model file is refused with a clear message
    m = os.path.join(W, "m_trunc")
    run("init", "--config", CFG, "--out", m)
    f = os.path.join(m, "model.safetensors")
    os.truncate(f, os.path.getsize(f) - 10)
    p = run("info", m, ok=False)
    assert p.returncode != 0 and "model.safetensors" in p.stderr, p.stderr


def t_eval_generate_plot():
    d = os.path.join(W, "full")
    p = run("eval", d, "--data", DATA, "--seq-len", 16, 64)
    rows = [l.split() for l in p.stdout.splitlines()[1:]]
    assert len(rows) == 2 and all(float(r[1]) > 0 and float(r[3]) > 0 for r in rows), p.stdout
    learned = os.path.join(W, "learned_model")
    run("init", "--config", os.path.join(W, "learned.json"), "--out", learned)
    p = run("eval", learned, "--data", DATA, "--seq-len", 8, 64)
    assert "not supported" in p.stdout and "max_len 16" in p.stdout, p.stdout
    g1 = run("generate", d, "--prompt", "order ", "--max-new-tokens", 24, "--temperature", 0, binary=True).stdout
    g2 = run("generate", d, "--prompt", "order ", "--max-new-tokens", 24, "--temperature", 0, "--no-cache", binary=True).stdout
    g3 = run("generate", d, "--prompt", "order ", "--max-new-tokens", 24, "--temperature", 0, "--stream", binary=True).stdout
    assert g1 == g2 == g3 and g1.startswith(b"order "), (g1, g2, g3)
    s1 = run("generate", d, "--prompt", "a", "--max-new-tokens", 16, "--seed", 5, "--top-k", 10, "--top-p", 0.9, binary=True).stdout
    s2 = run("generate", d, "--prompt", "a", "--max-new-tokens", 16, "--seed", 5, "--top-k", 10, "--top-p", 0.9, binary=True).stdout
    assert s1 == s2, "sampling with a seed is not reproducible"
    p = run("generate", learned, "--prompt", "x" * 10, "--max-new-tokens", 20, ok=False)
    assert p.returncode != 0 and "max_len" in p.stderr, p.stderr
    p = run("generate", d, "--top-p", 0, ok=False)
    assert p.returncode != 0 and "top-p" in p.stderr, p.stderr
    # --precision bf16 (bf16 linears and attention products): runs, close to f32; bad values named
    b = run("generate", d, "--prompt", "order ", "--max-new-tokens", 24, "--temperature", 0,
            "--precision", "bf16", binary=True).stdout
    assert b.startswith(b"order ") and len(b) > len(b"order "), b
    e32 = run("eval", d, "--data", DATA, "--seq-len", 64).stdout.splitlines()[1].split()
    e16 = run("eval", d, "--data", DATA, "--seq-len", 64, "--precision", "bf16").stdout.splitlines()[1].split()
    assert abs(float(e16[1]) - float(e32[1])) < 0.02 * float(e32[1]), (e32, e16)
    for cmd in (("generate", d, "--prompt", "a"), ("eval", d, "--data", DATA)):
        p = run(*cmd, "--precision", "half", ok=False)
        assert p.returncode != 0 and "--precision" in p.stderr and "'half'" in p.stderr, p.stderr
    run("plot", d)
    png = os.path.join(d, "loss.png")
    assert os.path.getsize(png) > 5000 and open(png, "rb").read(4) == b"\x89PNG"


def t_objectives():
    for arch, pos in (("encoder", "t5"), ("encoder_decoder", "alibi")):
        cfg = write(os.path.join(W, f"{arch}.json"), json.dumps({
            "arch": arch, "d_model": 32, "n_layers": 1, "n_heads": 4, "d_ff": 64, "position": {"type": pos}}))
        d = os.path.join(W, f"obj_{arch}")
        run("train", "--config", cfg, "--data", DATA, "--out", d, "--steps", 8, "--batch", 2, "--seq-len", 24,
            "--eval-every", 4, "--quiet", "--lr", 3e-3)
        l = losses(d)
        assert len(l) == 8 and all(x[1] == x[1] for x in l), l
        p = run("train", "--config", cfg, "--data", DATA, "--out", d + "_x", "--objective", "clm", "--steps", 2,
                ok=False)
        assert p.returncode != 0 and "objective clm" in p.stderr, p.stderr


def t_performer_redraw_resume():
    """performer with attention.redraw_every: W is redrawn from (seed, step) during training and
    saved in checkpoints, so a run stopped and resumed (before and across redraws) gives the
    uninterrupted run's losses bit for bit; the redraws really change the run; W is a buffer
    that `info` lists and parameter counts leave out."""
    cfg = {"arch": "decoder", "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64,
           "vocab_size": 260, "max_len": 128, "position": {"type": "rope"},
           "attention": {"type": "performer", "n_features": 16, "seed": 7, "redraw_every": 3}}
    redraw = write(os.path.join(W, "performer_redraw.json"), json.dumps(cfg))
    cfg["attention"]["redraw_every"] = 0
    fixed = write(os.path.join(W, "performer_fixed.json"), json.dumps(cfg))
    common = [a for a in COMMON if a != CFG and a != "--config"]
    a, b, c = (os.path.join(W, n) for n in ("pf_full", "pf_split", "pf_fixed"))
    run("train", "--config", redraw, *common, "--steps", 11, "--ckpt-every", 4, "--out", a)
    run("train", "--config", redraw, *common, "--steps", 11, "--ckpt-every", 4, "--out", b,
        "--stop-after", 5)
    assert len(losses(b)) == 5, losses(b)
    run("train", "--resume", b, "--quiet")
    la, lb = losses(a), losses(b)
    assert len(la) == 11 and la == lb, f"losses differ:\n{la}\n{lb}"
    run("train", "--config", fixed, *common, "--steps", 11, "--ckpt-every", 4, "--out", c)
    lc = losses(c)
    assert lc[:3] == la[:3], f"the first 3 steps use the initial W in both:\n{la}\n{lc}"
    assert lc[3:] != la[3:], "redraw_every 3 changed nothing"
    m = os.path.join(W, "pf_model")
    run("init", "--config", redraw, "--out", m)
    p = run("info", m)
    assert "decoder.performer.features [16, 8] (not trained)" in p.stdout, p.stdout
    assert "redraw every 3" in p.stdout, p.stdout


def t_nonfinite():
    # a learning rate of 1e30 blows the weights up after the first update: the later steps' loss
    # and gradients are not finite. skip (the default): those updates are skipped and counted, the
    # first one applied; stop: a clear error at the first such step
    args = [a for a in COMMON if a != "--quiet"]
    args[args.index("--eval-every") + 1] = 0
    args += ["--steps", 5, "--lr", 1e30, "--warmup", 0, "--clip", 0]
    p = run("train", *args, "--out", os.path.join(W, "nf_skip"))
    assert "update skipped" in p.stderr and "4 skipped" in p.stdout + p.stderr, p.stdout + p.stderr
    p = run("train", *args, "--out", os.path.join(W, "nf_stop"), "--on-nonfinite", "stop", ok=False)
    assert p.returncode != 0 and "non-finite loss or gradient at step 2" in p.stderr, p.stderr


check("resume reproduces the uninterrupted losses bit for bit", t_resume_exact)
check("non-finite steps: skipped and counted (default), or a clear stop", t_nonfinite)
check("performer: redraws of W every 3 steps, resume reproduces the losses bit for bit",
      t_performer_redraw_resume)
check("kill -9 at random moments (also mid-checkpoint), resume, same losses", t_kill9)
check("bad inputs give clear errors", t_bad_inputs)
check("eval per length, generate (cache == no cache == stream), plot", t_eval_generate_plot)
check("mlm and seq2seq objectives train", t_objectives)
h.finish()
