#!/usr/bin/python3
"""End-to-end checks of posformer extrapolate (the length-extrapolation study): a tiny study
writes a well-formed results.csv, results.md and PNG; killed (SIGKILL) or interrupted (SIGINT)
after its first model, a rerun does not retrain that model and ends with results identical to an
uninterrupted study; changed settings are refused; bad flags get clear messages.
Usage: test_extrapolate.py --posformer PATH [--keep]"""
import csv
import json
import math
import os
import random
import signal
import subprocess
import time

import harness

h = harness.Harness("posformer_extrap_", __doc__, env={"OMP_NUM_THREADS": "2"})
PF, W, run, check, write = h.pf, h.dir, h.run, h.check, h.write


# A small corpus of blank-line separated documents (enough held-out text for 2 windows of 64).
rng = random.Random(7)
WORDS = "the a of to in is on at by it as an or be we he she they you this that with from".split()
DATA = write("data.txt", "\n\n".join(
    " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) for _ in range(600)) + "\n")
CFG = write("tiny.json", json.dumps({
    "arch": "decoder", "d_model": 32, "n_layers": 2, "n_heads": 2, "d_ff": 64,
    "vocab_size": 260, "max_len": 32, "position": {"type": "rope"}}))
LENS = [16, 32, 64]


def study_args(out, steps=40, lens=LENS, positions="learned,rope", extra=()):
    return ["extrapolate", "--config", CFG, "--positions", positions, "--train-len", "16",
            "--eval-lens", ",".join(map(str, lens)), "--steps", str(steps), "--batch", "4",
            "--lr", "3e-3", "--data", DATA, "--val-fraction", "0.2", "--eval-tokens", "512",
            "--ckpt-every", "5", "--threads", "2", "--out", out, *extra]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


FULL = os.path.join(W, "full")


def t_tiny_study():
    p = run(*study_args(FULL))
    rows = read_csv(os.path.join(FULL, "results.csv"))
    want = ["model", "position", "attention", "variant", "train_len", "eval_len", "status", "loss",
            "ppl", "bits_per_byte", "windows", "tokens"]
    assert list(rows[0].keys()) == want, rows[0].keys()
    # the RoPE model is also scored under each default scaling (rope:TYPE), stretched to L
    variants = ["none", "rope:linear", "rope:ntk", "rope:yarn", "rope:llama3"]
    assert [(r["model"], r["variant"], int(r["eval_len"])) for r in rows] == \
        [("learned", "none", L) for L in LENS] + [("rope", v, L) for v in variants for L in LENS], \
        [(r["model"], r["variant"], r["eval_len"]) for r in rows]
    # at the training length every scaling has factor 1: the model as trained, to rounding
    at_train = [float(r["loss"]) for r in rows if r["model"] == "rope" and r["eval_len"] == "16"]
    assert max(at_train) - min(at_train) < 1e-5, at_train
    # past it they differ from the model as trained (the scaling is applied)
    at64 = {r["variant"]: float(r["loss"]) for r in rows if r["model"] == "rope" and r["eval_len"] == "64"}
    assert all(abs(at64[v] - at64["none"]) > 1e-6 for v in variants[1:]), at64
    for r in rows:
        L = int(r["eval_len"])
        if r["model"] == "learned" and L > 32:  # past the learned table: n/a, not a crash
            assert r["status"].startswith("n/a: learned table ends at max_len 32"), r
            continue
        assert r["status"] == "ok", r
        ppl, loss = float(r["ppl"]), float(r["loss"])
        assert math.isfinite(ppl) and 1 < ppl < 260, r
        assert abs(math.exp(loss) - ppl) < 1e-3 * ppl, r
        # every length scores the same 512 held-out tokens: 512 / L whole windows of L targets
        assert int(r["windows"]) == 512 // L and int(r["tokens"]) == (512 // L) * L, r
    md = open(os.path.join(FULL, "results.md")).read()
    assert "| model | eval variant | 16 (train) | 32 | 64 |" in md, md
    assert "| rope | rope:yarn |" in md, md
    table = [ln for ln in md.splitlines() if ln.startswith("| learned |")]
    assert len(table) == 2 and table[0].endswith("| n/a |"), table
    png = open(os.path.join(FULL, "extrapolation.png"), "rb").read()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000, len(png)
    assert "best at length 64: rope" in p.stdout, p.stdout[-500:]
    manifest = json.load(open(os.path.join(FULL, "manifest.json")))
    assert sorted(manifest["models"]) == ["learned", "rope"]
    assert all(m["finished"] for m in manifest["models"].values())


def _interrupt_after_first_model(out, sig):
    """Starts the study, sends `sig` once the first model is in the manifest, returns the exit
    status and the first model's weight file mtime then."""
    man = os.path.join(out, "manifest.json")
    proc = subprocess.Popen([PF, *study_args(out, steps=200)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=h.environ())
    t0 = time.time()
    while not os.path.exists(man):
        assert proc.poll() is None, "the study ended before its first model was in the manifest"
        assert time.time() - t0 < 300, "no manifest after 300 s"
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    first = os.path.join(out, "models", "learned", "model.safetensors")
    return proc.returncode, err.decode(errors="replace"), os.stat(first).st_mtime_ns


def _resume_matches_uninterrupted(out, sig, want_rc):
    full = os.path.join(W, "full400")
    if not os.path.exists(os.path.join(full, "results.csv")):
        run(*study_args(full, steps=200))
    rc, err, mtime = _interrupt_after_first_model(out, sig)
    assert rc == want_rc, (rc, err[-1500:])
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert list(manifest["models"]) == ["learned"], manifest["models"].keys()
    p = run(*study_args(out, steps=200))
    assert "[1/2] learned: finished earlier (manifest), not retrained" in p.stderr, p.stderr[-1500:]
    assert "[1/2] learned: training" not in p.stderr, p.stderr[-1500:]
    assert os.stat(os.path.join(out, "models", "learned", "model.safetensors")).st_mtime_ns == mtime
    got = open(os.path.join(out, "results.csv")).read()
    want = open(os.path.join(full, "results.csv")).read()
    assert got == want, f"resumed results differ from the uninterrupted study:\n{got}\n{want}"


def t_kill9_resumes():
    _resume_matches_uninterrupted(os.path.join(W, "killed"), signal.SIGKILL, -signal.SIGKILL)


def t_sigint_resumes():
    out = os.path.join(W, "sigint")
    _resume_matches_uninterrupted(out, signal.SIGINT, 130)


def t_changed_spec_refused():
    p = run(*study_args(FULL, steps=41), ok=False)
    assert p.returncode != 0, p.stdout
    assert "holds a study trained with other settings (steps: 40 there, 41 now)" in p.stderr, p.stderr


def t_changed_eval_reevaluates():
    mt = os.stat(os.path.join(FULL, "models", "rope", "model.safetensors")).st_mtime_ns
    p = run(*study_args(FULL, lens=[16, 32]))
    assert "rope: evaluated again" in p.stdout, p.stdout
    assert "training" not in p.stderr, p.stderr[-1000:]
    assert os.stat(os.path.join(FULL, "models", "rope", "model.safetensors")).st_mtime_ns == mt
    rows = read_csv(os.path.join(FULL, "results.csv"))
    assert [int(r["eval_len"]) for r in rows] == [16, 32] * 6, rows


def t_refused_combination_skipped():
    out = os.path.join(W, "combo")
    p = run(*study_args(out, steps=3, positions="rope,alibi",
                       extra=["--attention", "linear_rope"]))
    rows = read_csv(os.path.join(out, "results.csv"))
    skipped = [r for r in rows if r["model"] == "alibi+linear_rope"]
    assert len(skipped) == 1 and skipped[0]["status"].startswith(
        "skipped: [config] attention 'linear_rope' cannot serve position 'alibi'"), skipped
    assert [r["status"] for r in rows if r["model"] == "rope+linear_rope"] == ["ok"] * 15, rows
    assert "alibi+linear_rope: skipped, [config] attention 'linear_rope'" in p.stdout, p.stdout


def t_bad_flags():
    enc = write(os.path.join(W, "enc.json"), json.dumps({
        "arch": "encoder", "d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64}))
    cases = [
        (["--positions", "rope,sinusodal"], 'unknown type "sinusodal" (known: none, learned'),
        (["--positions", "rope,rope"], '--positions lists "rope" twice'),
        (["--attention", "softmx"], '--attention: unknown type "softmx"'),
        (["--eval-lens", "64,32"], "--eval-lens must be increasing, got 64 then 32"),
        (["--train-len", "1"], "--train-len must be in [2, 2^20], got 1"),
        (["--eval-tokens", "50"], "--eval-tokens (50) must cover at least one window"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--lr", "-1"], "--lr must be > 0"),
        (["--val-fraction", "0"], "--val-fraction must be in (0, 0.5]"),
        (["--config", enc], "must have arch decoder, got encoder"),
    ]
    for extra, msg in cases:
        a = study_args(os.path.join(W, "bad"))
        for i in range(0, len(extra), 2):  # replace the flag's value, or add the flag
            if extra[i] in a:
                a[a.index(extra[i]) + 1] = extra[i + 1]
            else:
                a += extra[i:i + 2]
        p = run(*a, ok=False)
        assert p.returncode != 0 and msg in p.stderr, (extra, p.returncode, p.stderr[-800:])
    assert not os.path.exists(os.path.join(W, "bad", "manifest.json"))
    # a missing required flag is refused by the parser
    p = run("extrapolate", "--config", CFG, "--data", DATA, "--out", W + "/bad2", ok=False)
    assert p.returncode != 0 and "--positions is required" in p.stderr, p.stderr


check("tiny study: csv, markdown table, png; learned n/a past its table", t_tiny_study)
check("changed training settings in the same DIR are refused", t_changed_spec_refused)
check("changed eval lengths re-evaluate without retraining", t_changed_eval_reevaluates)
check("kill -9 after the first model: resumes, no retraining, identical results", t_kill9_resumes)
check("Ctrl-C after the first model: rc 130, resumes, identical results", t_sigint_resumes)
check("a combination the registry refuses is skipped with its message", t_refused_combination_skipped)
check("bad flags are refused clearly", t_bad_flags)

h.finish()
