#!/usr/bin/python3
"""posformer cost from the command line: its parameter count equals `posformer info` on an
initialised model of the same config (every arch), --json is well-formed and agrees with the
table, and bad flags and configs are refused naming what is wrong.
Usage: test_cost_cli.py --posformer PATH [--keep]"""
import json
import os
import re

import harness

h = harness.Harness("posformer_cost_", __doc__, timeout=120)
PF, W, run, check, write = h.pf, h.dir, h.run, h.check, h.write


BASE = {"d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64, "vocab_size": 260, "max_len": 64}
CONFIGS = {
    "decoder_rope": dict(BASE, arch="decoder", position={"type": "rope"}),
    "encoder_learned_performer": dict(BASE, arch="encoder", position={"type": "learned"},
                                      attention={"type": "performer", "n_features": 16}),
    "encdec_t5_gqa_swiglu": dict(BASE, arch="encoder_decoder", n_kv_heads=2, activation="swiglu",
                                 tie_embeddings=False, position={"type": "t5"}),
    "vit_learned_2d": {"arch": "vit", "d_model": 32, "n_layers": 2, "n_heads": 4, "d_ff": 64,
                       "image_size": [16, 12], "patch_size": 4, "channels": 3, "num_classes": 7,
                       "position": {"type": "learned_2d"}},
}


def t_equals_info():
    for name, cfg in CONFIGS.items():
        path = write(name + ".json", cfg)
        md = os.path.join(W, name)
        run("init", "--config", path, "--out", md)
        info = run("info", md).out
        total = int(re.search(r"^total\s+(\d+)", info, re.M).group(1))
        T = [] if cfg["arch"] == "vit" else ["--seq-len", 32]  # a ViT's T is its patch count
        j = json.loads(run("cost", "--config", path, *T, "--json").out)
        assert j["parameters"]["total"] == total, (name, j["parameters"], total)
        for comp in ("embedding", "position", "attention", "ffn", "norm", "head"):
            m = re.search(rf"^{comp}\s+(\d+)", info, re.M)
            assert j["parameters"][comp] == (int(m.group(1)) if m else 0), (name, comp, info)
        table = run("cost", "--config", path, *T).out
        assert re.search(rf"^\s+total\s+{total}$", table, re.M), table


def t_json_well_formed():
    path = write("d.json", CONFIGS["decoder_rope"])
    j = json.loads(run("cost", "--config", path, "--seq-len", 48, "--batch", 3, "--json").out)
    assert j["seq_len"] == 48 and j["batch"] == 3 and j["tokens_per_step"] == 144, j
    for kind in ("forward_flops", "training_flops"):
        parts = j[kind]
        s = sum(parts[k]["per_step"] for k in ("projections", "ffn", "attention", "embed_head", "rest"))
        assert abs(s - parts["total"]["per_step"]) <= 1e-9 * s, (kind, parts)
        assert abs(parts["total"]["per_token"] * 144 - parts["total"]["per_step"]) <= 1e-6 * s
    mem = j["training_memory_bytes"]
    P = j["parameters"]["total"]
    assert mem["weights"] + mem["gradients"] + mem["adamw_moments"] == 16 * P, mem
    parts_sum = sum(mem[k] for k in ("weights", "gradients", "adamw_moments", "master_copy",
                                     "activations", "workspace", "packed_weights"))
    assert abs(parts_sum - mem["total"]) <= 1e-9 * mem["total"], mem
    jb = json.loads(run("cost", "--config", path, "--precision", "bf16", "--json").out)
    mb = jb["training_memory_bytes"]
    assert mb["weights"] + mb["gradients"] + mb["adamw_moments"] + mb["master_copy"] == 20 * P, mb
    assert j["decode"]["kv_cache_bytes_per_token"] == 2 * 2 * 4 * 8 * 4, j["decode"]  # 2 L Hkv D 4
    assert j["attention_overtakes"]["layer_matmuls_at_T"] > 0


def t_bad_flags_refused():
    path = write("d2.json", CONFIGS["decoder_rope"])
    learned = write("l.json", dict(BASE, arch="decoder", position={"type": "learned"}))
    cases = [
        (["--config", path, "--precision", "fp16"], "[precision] must be one of fp32, bf16"),
        (["--config", path, "--optimizer", "sgd"], "--optimizer must be adamw"),
        (["--config", path, "--seq-len", 0], "--seq-len"),
        (["--config", path, "--batch", 0], "--batch"),
        (["--config", path, "--src-len", 8], "--src-len is only for encoder_decoder"),
        (["--config", learned, "--seq-len", 65], "exceeds the learned position table (max_len 64)"),
        (["--config", os.path.join(W, "missing.json")], "missing.json"),
        (["--config", write("bad.json", dict(BASE, arch="decoder", n_heads=5))], "n_heads"),
        (["--config", path, "--precision", "bf16", "--measure", 1], "--measure trains with fp32 storage"),
    ]
    for argv, words in cases:
        p = run("cost", *argv, ok=False)
        assert p.returncode != 0, (argv, p.out)
        assert words in p.err, (argv, words, p.err)


check("cost's parameter counts equal `posformer info` on an initialised model", t_equals_info)
check("--json is well-formed: parts sum to totals, 16 / 20 bytes per parameter, KV cache", t_json_well_formed)
def t_measure_reports():
    path = write("m.json", CONFIGS["encdec_t5_gqa_swiglu"])
    j = json.loads(run("cost", "--config", path, "--seq-len", 16, "--batch", 2, "--measure", 2,
                       "--threads", 1, "--json").out)
    m = j["measured"]
    assert m["steps"] == 2 and m["threads"] == 1 and m["step_seconds_median"] > 0, m
    assert m["predicted_bytes"] == j["training_memory_bytes"]["total"], m
    assert m["peak_rss_growth_bytes"] is None or m["peak_rss_growth_bytes"] > 0, m
    table = run("cost", "--config", path, "--seq-len", 16, "--measure", 2).out
    assert re.search(r"measured\s+2 training steps", table), table


def t_vit():
    path = write("v.json", CONFIGS["vit_learned_2d"])
    j = json.loads(run("cost", "--config", path, "--batch", 3, "--json").out)
    # 4x3 patches + CLS = 13 tokens per image, 3 images
    assert j["seq_len"] == 13 and j["images"] == 3 and j["tokens_per_step"] == 39, j
    assert j["image_size"] == [16, 12] and j["decode"]["applicable"] is False, j
    j2 = json.loads(run("cost", "--config", path, "--image-size", "32x24", "--json").out)
    assert j2["seq_len"] == 8 * 6 + 1 and j2["parameters"] == j["parameters"], j2
    table = run("cost", "--config", path, "--image-size", 8).out
    assert "1 images of 8x8 (2x2 patches + CLS = 5 tokens)" in table, table
    assert "not applicable (arch vit classifies images" in table, table
    m = json.loads(run("cost", "--config", path, "--batch", 2, "--measure", 2, "--threads", 1,
                       "--json").out)["measured"]
    assert m["steps"] == 2 and m["step_seconds_median"] > 0, m
    assert m["peak_rss_growth_bytes"] is None or m["peak_rss_growth_bytes"] > 0, m
    dec = write("d3.json", CONFIGS["decoder_rope"])
    for argv, words in [
        (["--config", path, "--seq-len", 8], "--seq-len does not apply to arch vit"),
        (["--config", path, "--image-size", "18x12"], "must be a positive multiple of patch_size 4"),
        (["--config", path, "--image-size", "16x"], "--image-size must be HxW"),
        (["--config", dec, "--image-size", 16], "--image-size is only for arch vit"),
    ]:
        p = run("cost", *argv, ok=False)
        assert p.returncode != 0 and words in p.err, (argv, words, p.err)


check("--measure runs training steps and reports time and peak memory", t_measure_reports)
check("vit: T from the image size, decode not applicable, --measure, refusals", t_vit)
check("bad flags and configs are refused naming what is wrong", t_bad_flags_refused)
h.finish()
