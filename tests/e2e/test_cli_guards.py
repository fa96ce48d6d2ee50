#!/usr/bin/python3
"""CLI guards: the memory check of the commands that create or load a model's weights (a model
that cannot fit is refused before anything large is allocated, naming both figures; --force goes
ahead; --memory-limit parsing), generate's output is valid UTF-8, streamed or not, and forward
--batch-file (sequences of different lengths in one padded batch) equals one forward each.
A resumed run refuses training options it would otherwise ignore (--lr, --flip ...), naming them.
Usage: test_cli_guards.py --posformer PATH [--keep]"""
import json
import os
import re
import subprocess

import harness

h = harness.Harness("posformer_guards_", __doc__)
PF, W, run, check, write = h.pf, h.dir, h.run, h.check, h.write

# A refusal does no more than read the config and count parameters: well under a second on any
# machine, also under ASan. Allocating the huge model instead takes a minute or more.
QUICK_S = 20


HUGE = write("huge.json", json.dumps({  # about 40e9 parameters, 160 GB of fp32 weights
    "arch": "decoder", "d_model": 4096, "n_layers": 200, "n_heads": 32, "d_ff": 16384,
    "vocab_size": 32000, "position": {"type": "rope"}}))
TINY = write("tiny.json", json.dumps({
    "arch": "decoder", "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "vocab_size": 260,
    "max_len": 128, "position": {"type": "rope"}}))
DATA = write("corpus.txt", "\n\n".join(f"document {i}: order, length, rotary position." for i in range(60)))
GiB = 1 << 30
FIG = r"[0-9]+\.[0-9] [KMGT]iB|[0-9]+ bytes"


def refused(p, cmd, limit_text=None):
    """p was refused by the memory guard of `cmd` with both figures and the way out."""
    assert p.returncode != 0, f"{cmd} was not refused:\n{p.out}\n{p.err}"
    m = re.search(rf"\[{cmd}\] the model needs (at least )?({FIG}) \(.*\), ({FIG}) available \(([^)]+)\)", p.err)
    assert m, f"no '[{cmd}] the model needs X (...), Y available (...)' in: {p.err!r}"
    if limit_text:
        assert m.group(3) == limit_text and m.group(4) == "--memory-limit", p.err
        assert "raise --memory-limit" in p.err, p.err
    assert "--force" in p.err, p.err
    assert p.seconds < QUICK_S, f"{cmd} took {p.seconds:.1f}s to refuse"
    return m


def params_of(model_dir):
    p = run("info", model_dir)
    return int(re.search(r"^total\s+(\d+)", p.out, re.M).group(1))


def t_huge_refused_with_a_limit():
    out = os.path.join(W, "huge_init")
    p = run("init", "--config", HUGE, "--out", out, "--memory-limit", "1G", ok=False)
    m = refused(p, "init", "1.0 GiB")
    need = m.group(2)
    assert need.endswith("GiB") and 300 < float(need.split()[0]) < 340, p.err  # 2 x 160 GB
    assert re.search(r"for \d+ fp32 weights", p.err), p.err
    assert not os.path.exists(out), "init created its output directory before refusing"
    out = os.path.join(W, "huge_train")
    p = run("train", "--config", HUGE, "--data", DATA, "--out", out, "--steps", "2",
            "--memory-limit", "24G", ok=False)
    m = refused(p, "train", "24.0 GiB")
    assert m.group(1) == "at least " and "16 bytes" in p.err and "AdamW" in p.err, p.err
    assert not os.path.exists(out), "train created its run directory before refusing"


def t_huge_refused_by_what_the_machine_has():
    with open("/proc/meminfo") as f:
        avail = int(re.search(r"MemAvailable:\s+(\d+) kB", f.read()).group(1)) * 1024
    if avail > 400 * GiB:
        print(f"      (skipped: this machine has {avail / GiB:.0f} GiB available)")
        return
    out = os.path.join(W, "huge_init2")
    p = run("init", "--config", HUGE, "--out", out, ok=False)
    refused(p, "init")
    assert "MemAvailable" in p.err or "cgroup" in p.err, p.err
    assert not os.path.exists(out)
    p = run("train", "--config", HUGE, "--data", DATA, "--out", out, ok=False)
    refused(p, "train")


def t_small_limit_refuses_every_command():
    m = os.path.join(W, "tiny")
    run("init", "--config", TINY, "--out", m)
    n = params_of(m)
    bad = os.path.join(W, "tiny_refused")
    p = run("init", "--config", TINY, "--out", bad, "--memory-limit", "64K", ok=False)
    refused(p, "init", "64.0 KiB")
    assert f"for {n} fp32 weights" in p.err, p.err  # the count info shows
    assert not os.path.exists(bad)
    fwd = os.path.join(W, "fwd.safetensors")
    p = run("forward", m, "--tokens", "1 2 3", "--out", fwd, "--memory-limit", "64K", ok=False)
    refused(p, "forward", "64.0 KiB")
    assert "model file" in p.err, p.err
    assert not os.path.exists(fwd), "forward wrote its output after refusing"
    p = run("train", "--config", TINY, "--data", DATA, "--out", bad, "--memory-limit", "100K", ok=False)
    refused(p, "train", "100.0 KiB")
    assert f"{n} parameters x 16 bytes" in p.err, p.err
    assert not os.path.exists(bad)
    p = run("eval", m, "--data", DATA, "--memory-limit", "64K", ok=False)
    refused(p, "eval", "64.0 KiB")
    p = run("generate", m, "--prompt", "a", "--memory-limit", "64K", ok=False)
    refused(p, "generate", "64.0 KiB")
    assert "KV cache of 129 positions" in p.err, p.err  # 1 prompt token + 128 new
    p = run("info", m, "--memory-limit", "64K", ok=False)
    refused(p, "info", "64.0 KiB")
    batch = write("batch.json", json.dumps({"tokens": [[1, 2, 3]], "targets": [[2, 3, 4]]}))
    p = run("grad", m, "--batch", batch, "--out", os.path.join(W, "g.safetensors"), "--memory-limit", "64K",
            ok=False)
    refused(p, "grad", "64.0 KiB")
    # a generous limit lets them run
    run("forward", m, "--tokens", "1 2 3", "--out", fwd, "--memory-limit", "1G")
    assert os.path.exists(fwd)


def t_force_goes_ahead():
    m = os.path.join(W, "forced")
    p = run("init", "--config", TINY, "--out", m, "--memory-limit", "1K", "--force")
    assert "initialised" in p.out and os.path.exists(os.path.join(m, "model.safetensors")), p.out
    fwd = os.path.join(W, "forced.safetensors")
    run("forward", m, "--tokens", "1 2 3", "--out", fwd, "--memory-limit", "1K", "--force")
    assert os.path.exists(fwd)
    r = os.path.join(W, "forced_run")
    run("train", "--config", TINY, "--data", DATA, "--out", r, "--steps", "2", "--batch", "2", "--seq-len", "16",
        "--quiet", "--memory-limit", "1K", "--force", "--ckpt-every", "1")
    assert os.path.exists(os.path.join(r, "model.safetensors"))
    # resume is guarded too (the run's own config)
    p = run("train", "--resume", r, "--steps", "3", "--quiet", "--memory-limit", "1K", ok=False)
    refused(p, "train", "1.0 KiB")
    run("train", "--resume", r, "--steps", "3", "--quiet", "--memory-limit", "1K", "--force")


def t_resume_refuses_run_options():
    r = os.path.join(W, "resumable")
    run("train", "--config", TINY, "--data", DATA, "--out", r, "--steps", "2", "--batch", "2", "--seq-len", "16",
        "--quiet", "--ckpt-every", "1")
    before = open(os.path.join(r, "metrics.jsonl")).read()
    for extra in (["--lr", "1e-3"], ["--batch", "4"], ["--seed", "5"], ["--flip"], ["--erase", "0.5"],
                  ["--warmup", "0"], ["--label-smoothing", "0.1"], ["--out", r]):
        p = run("train", "--resume", r, "--steps", "3", "--quiet", *extra, ok=False)
        assert p.returncode != 0, f"{extra} was accepted on resume:\n{p.out}"
        assert f"[train] {extra[0]} cannot change when a run is resumed" in p.err, p.err
        assert f"drop {extra[0]} or start a new run" in p.err, p.err
        assert "Traceback" not in p.err and "terminate" not in p.err, p.err
    # nothing was trained by the refused calls; the allowed ones still resume
    assert open(os.path.join(r, "metrics.jsonl")).read() == before
    run("train", "--resume", r, "--steps", "3", "--quiet", "--threads", "1")
    steps = [json.loads(l)["step"] for l in open(os.path.join(r, "metrics.jsonl")) if '"step"' in l]
    assert max(steps) == 3, steps


def t_accum_parallel_buffers_guarded():
    # TINY has ~30K parameters: 16 bytes each (~0.5 MiB) fit in 2M, 64 more gradient buffers
    # (4 bytes each, ~7.5 MiB) do not; the message names them
    r = os.path.join(W, "accpar")
    base = ["train", "--config", TINY, "--data", DATA, "--out", r, "--steps", "2", "--batch", "1",
            "--seq-len", "16", "--quiet", "--memory-limit", "2M"]
    p = run(*base, "--accum", "64", "--accum-parallel", ok=False)
    refused(p, "train", "2.0 MiB")
    assert "--accum-parallel's 64 gradient buffers" in p.err, p.err
    assert not os.path.exists(os.path.join(r, "metrics.jsonl"))
    run(*base, "--accum", "64")  # serial accumulation needs no buffers: fits
    # a resumed run is guarded with its stored --accum-parallel
    r2 = os.path.join(W, "accpar2")
    run("train", "--config", TINY, "--data", DATA, "--out", r2, "--steps", "2", "--batch", "1", "--seq-len", "16",
        "--quiet", "--accum", "64", "--accum-parallel", "--ckpt-every", "1", "--stop-after", "1")
    p = run("train", "--resume", r2, "--quiet", "--memory-limit", "2M", ok=False)
    refused(p, "train", "2.0 MiB")
    assert "--accum-parallel's 64 gradient buffers" in p.err, p.err


def t_bad_limits_named():
    m = os.path.join(W, "tiny")
    for bad, why in (("abc", "is not a size"), ("1X", "unknown unit"), ("0", "less than one byte"),
                     ("-5", "is not a size"), ("99999T", None), ("", "is not a size")):
        flag = [f"--memory-limit={bad}"] if bad.startswith("-") else ["--memory-limit", bad]
        p = run("forward", m, "--tokens", "1", "--out", os.path.join(W, "b.safetensors"), *flag, ok=False)
        if bad == "99999T":  # a valid, huge cap: accepted
            assert p.returncode == 0, p.err
            continue
        assert p.returncode != 0 and "--memory-limit" in p.err and why in p.err, (bad, p.err)
        assert "e.g. --memory-limit 1G" in p.err, p.err
    # also refused with --force (the value is wrong whatever the check)
    p = run("init", "--config", TINY, "--out", os.path.join(W, "b"), "--memory-limit", "lots", "--force", ok=False)
    assert p.returncode != 0 and "--memory-limit" in p.err, p.err


def t_help_documents_the_options():
    for cmd in ("init", "forward", "train", "eval", "generate", "grad", "info"):
        p = run(cmd, "--help")
        assert "--memory-limit" in p.out and "--force" in p.out, (cmd, p.out)


def t_generate_valid_utf8():
    # A random byte-level model emits arbitrary bytes: cut and malformed characters.
    m = os.path.join(W, "tiny")
    for prompt in ("《", "The ", "\u5e8a\u524d"):
        for opts in (["--temperature", "1.5", "--seed", "3"], ["--temperature", "0"]):
            a = run("generate", m, "--prompt", prompt, "--max-new-tokens", "200", *opts, binary=True).stdout
            b = run("generate", m, "--prompt", prompt, "--max-new-tokens", "200", "--stream", *opts, binary=True).stdout
            assert a == b, f"stream differs for {prompt!r} {opts}:\n{a!r}\n{b!r}"
            text = a.decode("utf-8")  # strict: raises on invalid UTF-8
            assert text.startswith(prompt) and text.endswith("\n"), text
    # the sampled output did contain replacements (the model's bytes were not valid UTF-8)
    a = run("generate", m, "--prompt", "x", "--max-new-tokens", "200", "--temperature", "1.5", "--seed", "3").out
    assert "\ufffd" in a, a
    # a prompt that ends inside a character is held until the model's bytes complete it, or
    # replaced: never printed raw
    p = subprocess.run([PF, "generate", m, "--prompt", b"ab\xe5\xba", "--max-new-tokens", "8", "--temperature",
                        "1.5", "--seed", "1"], capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    p.stdout.decode("utf-8")
    assert p.stdout.startswith(b"ab"), p.stdout


def read_safetensors(path):
    import numpy as np
    with open(path, "rb") as f:
        raw = f.read()
    n = int.from_bytes(raw[:8], "little")
    head = json.loads(raw[8:8 + n])
    out = {}
    for name, e in head.items():
        if name == "__metadata__":
            continue
        a, b = e["data_offsets"]
        dt = {"F32": np.float32, "I32": np.int32}[e["dtype"]]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], dtype=dt).reshape(e["shape"])
    return out


def t_forward_batch_file():
    import numpy as np
    seqs = ["5 17 99 3", "", "1 2 3 4 5 6 7 8 9", "200,201 7", "42"]  # a blank line is skipped
    batch = write("batch.txt", "\n".join(seqs) + "\n")
    m = os.path.join(W, "tiny")
    for cfg, name in ((TINY, "rope decoder"), (write("enc.json", json.dumps({
            "arch": "encoder", "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64,
            "vocab_size": 260, "max_len": 32, "position": {"type": "alibi"}})), "alibi encoder")):
        md = os.path.join(W, "bf_" + name.replace(" ", "_"))
        run("init", "--config", cfg, "--out", md, "--seed", "4")
        out = os.path.join(W, "batch.safetensors")
        run("forward", md, "--batch-file", batch, "--out", out)
        t = read_safetensors(out)
        rows = [s for s in seqs if s]
        assert list(t["lengths"]) == [len(r.replace(",", " ").split()) for r in rows], t["lengths"]
        assert t["hidden"].shape[:2] == (len(rows), 9), t["hidden"].shape
        for b, r in enumerate(rows):
            one = os.path.join(W, "one.safetensors")
            run("forward", md, "--tokens", r, "--out", one)
            h = read_safetensors(one)["hidden"]
            L = h.shape[0]
            err = np.abs(t["hidden"][b, :L] - h).max() / np.abs(h).max()
            assert err < 1e-5, f"{name}: sequence {b} differs by {err:.2e} from its own forward"
            if "logits" in t:
                lg = read_safetensors(one)["logits"]
                assert np.abs(t["logits"][b, :L] - lg).max() / np.abs(lg).max() < 1e-5, (name, b)
    bad = write("bad_batch.txt", "1 2 3\n4 x 6\n")
    p = run("forward", m, "--batch-file", bad, "--out", os.path.join(W, "x.safetensors"), ok=False)
    assert p.returncode != 0 and "--batch-file line 2" in p.err and "'x'" in p.err, p.err
    empty = write("empty_batch.txt", "\n \n")
    p = run("forward", m, "--batch-file", empty, "--out", os.path.join(W, "x.safetensors"), ok=False)
    assert p.returncode != 0 and "no token sequences" in p.err, p.err


check("a 40B-parameter config is refused at once under --memory-limit", t_huge_refused_with_a_limit)
check("a 40B-parameter config is refused at once by this machine's memory", t_huge_refused_by_what_the_machine_has)
check("init, forward, train, eval, generate, info and grad refuse a model over the limit", t_small_limit_refuses_every_command)
check("--force goes ahead (and resume is guarded)", t_force_goes_ahead)
check("resume refuses the run's own options (--lr, --flip ...), naming them", t_resume_refuses_run_options)
check("--accum-parallel's gradient buffers are counted by the guard (new run and resume)", t_accum_parallel_buffers_guarded)
check("bad --memory-limit values are named", t_bad_limits_named)
check("--help documents --memory-limit and --force", t_help_documents_the_options)
check("generate prints valid UTF-8, the same streamed or not", t_generate_valid_utf8)
check("forward --batch-file: each padded sequence equals its own forward", t_forward_batch_file)
h.finish()
