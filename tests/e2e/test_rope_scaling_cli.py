#!/usr/bin/python3
"""RoPE scaling overrides of `posformer eval` and `posformer generate` (--rope-scaling TYPE
--rope-factor s --rope-original-len L0 ...): the override equals the same scaling written in the
model's config, greedy KV-cache decoding with dynamic NTK past L0 equals --no-cache for a one-layer
model (cached keys re-rotated), and bad flags are refused with messages naming them.
Usage: test_rope_scaling_cli.py --posformer PATH [--keep]"""
import json
import os
import shutil
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "reference"))
sys.path.insert(0, HERE)
import e2e_util  # noqa: E402
import harness  # noqa: E402
import safetensors_io  # noqa: E402
import twin  # noqa: E402

h = harness.Harness("posformer_rope_cli_", __doc__, timeout=300)
PF, W, run, check, write = h.pf, h.dir, h.run, h.check, h.write


def model(name, n_layers=2, position=None):
    cfg = {"arch": "decoder", "d_model": 32, "n_layers": n_layers, "n_heads": 4, "d_ff": 64,
           "vocab_size": 260, "max_len": 256, "position": position or {"type": "rope"}}
    d = os.path.join(W, name)
    run("init", "--config", write(name + ".json", json.dumps(cfg)), "--out", d, "--seed", "5")
    # larger random weights than init's, so that positions (and their scaling) change the output
    st = os.path.join(d, "model.safetensors")
    safetensors_io.save(st, e2e_util.random_tensors(twin.expected_shapes(cfg), 17, embed_std=0.5))
    return d


DATA = write("corpus.txt", "\n\n".join(f"document {i}: order, length, rotary position, "
                                       f"{i * i} squared." for i in range(80)))


def eval_losses(d, *extra):
    p = run("eval", d, "--data", DATA, "--seq-len", "32", "96", "--max-windows", "4", *extra)
    rows = [ln.split() for ln in p.out.splitlines()[1:] if ln.strip()]
    return {int(r[0]): float(r[1]) for r in rows}


def t_eval_override_equals_config():
    m = model("m2")
    sc = {"type": "yarn", "factor": 4, "original_len": 32}
    # the same weights with the scaling written in the config
    m_sc = os.path.join(W, "m2_yarn")
    shutil.copytree(m, m_sc)
    cp = os.path.join(m_sc, "config.json")
    with open(cp) as f:
        cfg = json.load(f)
    cfg["position"]["scaling"] = sc
    with open(cp, "w") as f:
        json.dump(cfg, f)
    plain = eval_losses(m)
    over = eval_losses(m, "--rope-scaling", "yarn", "--rope-factor", "4",
                       "--rope-original-len", "32")
    inconf = eval_losses(m_sc)
    assert over == inconf, (over, inconf)
    assert over != plain, (over, plain)
    # --rope-scaling none evaluates the scaled model without its scaling
    assert eval_losses(m_sc, "--rope-scaling", "none") == plain


def t_generate_dynamic_ntk_cache_equals_recompute():
    m = model("m1", n_layers=1)
    for sc in (["--rope-scaling", "dynamic_ntk", "--rope-factor", "4", "--rope-original-len", "8"],
               ["--rope-scaling", "llama3", "--rope-factor", "8", "--rope-original-len", "16",
                "--rope-low-freq-factor", "2", "--rope-high-freq-factor", "8"]):
        g = ["generate", m, "--prompt", "rotary", "--max-new-tokens", "40", "--temperature", "0",
             *sc]
        a, b = run(*g).out, run(*g, "--no-cache").out
        assert a == b, f"{sc}: cached {a!r} != recomputed {b!r}"
    plain = run("generate", m, "--prompt", "rotary", "--max-new-tokens", "40", "--temperature",
                "0").out
    scaled = run("generate", m, "--prompt", "rotary", "--max-new-tokens", "40", "--temperature",
                 "0", "--rope-scaling", "linear", "--rope-factor", "16").out
    assert plain != scaled, "the linear scaling changed nothing"


def t_refusals_name_the_flag():
    m = os.path.join(W, "m2")
    al = model("alibi", position={"type": "alibi"})
    cases = [
        (["eval", al, "--data", DATA, "--rope-scaling", "linear", "--rope-factor", "2"],
         ["[eval]", "RoPE models only", "alibi"]),
        (["generate", al, "--rope-scaling", "ntk", "--rope-factor", "2"],
         ["[generate]", "RoPE models only", "alibi"]),
        (["eval", m, "--data", DATA, "--rope-scaling", "ntk_aware"],
         ["--rope-scaling", "ntk_aware", "dynamic_ntk"]),
        (["eval", m, "--data", DATA, "--rope-scaling", "linear", "--rope-factor", "0.5"],
         ["--rope-*", "position.scaling.factor", "0.5"]),
        (["generate", m, "--rope-scaling", "yarn", "--rope-factor", "4"],
         ["position.scaling.original_len", "required", "yarn"]),
        (["eval", m, "--data", DATA, "--rope-factor", "4"], ["need --rope-scaling"]),
        (["generate", m, "--rope-scaling", "linear", "--rope-factor", "2", "--rope-beta-fast", "8"],
         ["--rope-beta-fast", "yarn", "linear"]),
    ]
    for a, words in cases:
        p = run(*a, ok=False)
        assert p.returncode != 0, f"accepted: {a}"
        for w in words:
            assert w in p.err, f"{a}: {w!r} not in {p.err!r}"
    for cmd in ("eval", "generate"):
        h = run(cmd, "--help").out
        assert "--rope-scaling" in h and "--rope-original-len" in h, h


check("eval --rope-scaling equals the scaling in the config", t_eval_override_equals_config)
check("generate: dynamic NTK past L0 cached equals --no-cache (one layer)",
      t_generate_dynamic_ntk_cache_equals_recompute)
check("bad --rope-* flags and non-RoPE models are refused, naming the flag",
      t_refusals_name_the_flag)
h.finish()
