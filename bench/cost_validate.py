#!/usr/bin/python3
"""Validates `posformer cost` by measurement (docs/cost.md).

1. Memory: for a few configs, the predicted training memory (weights + gradients + AdamW moments
   + tape activations + workspace) against the peak resident-size growth of real training steps
   (`posformer cost --measure N`: Transformer::loss_and_grad + AdamW::step on random tokens, in a
   fresh process, VmHWM after the steps minus VmRSS before the model is made).
2. Time: training steps of a softmax and a linear-attention decoder at several T with the same
   tokens per step; measured time per token relative to the shortest T against the predicted
   training FLOPs per token relative to it. The cases run --rounds times, interleaved, and each
   keeps its fastest step over all rounds (the machine is shared: the fastest step is the one
   least disturbed).

Prints markdown tables (the ones in docs/cost.md) and writes the raw results as JSON to --out.
Usage: bench/cost_validate.py [--posformer build/posformer] [--steps 3] [--threads 2]
                              [--out /tmp/posformer_cost_validate.json] [--quick]
"""
import argparse
import json
import os
import platform
import subprocess
import tempfile

ap = argparse.ArgumentParser()
ap.add_argument("--posformer", default="build/posformer")
ap.add_argument("--steps", type=int, default=3)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--out", default="/tmp/posformer_cost_validate.json")
ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the timing cases")
ap.add_argument("--only", choices=["memory", "time"], help="run one of the two parts")
ap.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
ap.add_argument("--match", default="", help="only the memory cases whose name contains this")
args = ap.parse_args()
PF = os.path.abspath(args.posformer)
W = tempfile.mkdtemp(prefix="posformer_costval_")

SMALL = {"d_model": 256, "n_layers": 4, "n_heads": 4, "d_ff": 1024, "vocab_size": 260,
         "max_len": 8192}
MEMORY_CASES = [  # name, config, T, B
    ("decoder rope softmax (fused: keeps L)", dict(SMALL, arch="decoder", position={"type": "rope"}), 1024, 4),
    ("decoder shaw softmax (unfused: keeps P)", dict(SMALL, arch="decoder", position={"type": "shaw"}), 512, 4),
    ("decoder linear", dict(SMALL, arch="decoder", attention={"type": "linear"}), 1024, 4),
    ("encoder post-LN learned performer", dict(SMALL, arch="encoder", norm_position="post",
                                              position={"type": "learned"},
                                              attention={"type": "performer", "n_features": 128}), 512, 4),
    ("enc-dec alibi GQA SwiGLU RMSNorm", dict(SMALL, arch="encoder_decoder", n_heads=8, n_kv_heads=2,
                                            activation="swiglu", norm="rmsnorm", bias=False,
                                            position={"type": "alibi"}), 512, 4),
    ("BERT-base size encoder (+ LM head)", {"arch": "encoder", "d_model": 768, "n_layers": 12,
                                            "n_heads": 12, "d_ff": 3072, "norm_position": "post",
                                            "vocab_size": 30522, "max_len": 512,
                                            "position": {"type": "learned"}}, 128, 4),
    # arch vit: T is the patch count (+ CLS) of the config's image_size, B images
    ("vit rope_2d softmax, 224x224 / 16, CLS", {"arch": "vit", "d_model": 256, "n_layers": 4,
                                                "n_heads": 4, "d_ff": 1024, "num_classes": 1000,
                                                "position": {"type": "rope_2d"}}, None, 16),
    ("vit learned_2d softmax, 64x64 / 4, mean pool", {"arch": "vit", "d_model": 256, "n_layers": 4,
                                                      "n_heads": 4, "d_ff": 1024,
                                                      "image_size": 64, "patch_size": 4,
                                                      "num_classes": 10, "pool": "mean",
                                                      "position": {"type": "learned_2d"}}, None, 4),
]
TIME_T = [256, 512, 1024, 2048, 4096]
TOKENS = 4096  # per step at every T (B = TOKENS / T)
TIME_BASE = {"arch": "decoder", "d_model": 256, "n_layers": 2, "n_heads": 4, "d_ff": 1024,
             "vocab_size": 260, "max_len": 8192, "position": {"type": "none"}}
if args.quick:
    MEMORY_CASES = [(n, dict(c, n_layers=1), max(64, T // 8), B) for n, c, T, B in MEMORY_CASES[:3]]
    TIME_T, TOKENS = [128, 256, 512], 512
MEMORY_CASES = [m for m in MEMORY_CASES if args.match in m[0]]


def cost(cfg, T, B, measure):
    path = os.path.join(W, "cfg.json")
    with open(path, "w") as f:
        json.dump(cfg, f)
    argv = [PF, "cost", "--config", path, "--batch", str(B), "--json"]
    if T is not None:  # None: a ViT, whose T is its patch count
        argv += ["--seq-len", str(T)]
    if measure:
        argv += ["--measure", str(measure), "--threads", str(args.threads)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{p.stderr}")
    return json.loads(p.stdout)


def mib(x):
    return f"{x / 2**20:.1f}"


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


raw = {"cpu": cpu_name(), "cores": os.cpu_count(), "threads": args.threads, "memory": [], "time": []}
print(f"CPU: {raw['cpu']}, {raw['cores']} cores, {args.threads} threads, {args.steps} steps per case"
      f", load average {os.getloadavg()[0]:.1f} at the start\n")

if args.only != "time":
    print("| config | T x B | params | predicted: state / activations / workspace / packed weights / total (MiB) "
          "| measured peak growth (MiB) | error |")
    print("|---|---|---|---|---|---|")
    for name, cfg, T, B in MEMORY_CASES:
        j = cost(cfg, T, B, args.steps)
        m, meas = j["training_memory_bytes"], j["measured"]
        state = m["weights"] + m["gradients"] + m["adamw_moments"] + m["master_copy"]
        got = meas["peak_rss_growth_bytes"]
        err = f"{100 * (m['total'] - got) / got:+.1f}%" if got else "n/a"
        print(f"| {name} | {j['seq_len']} x {B} | {j['parameters']['total'] / 1e6:.2f} M | {mib(state)} / "
              f"{mib(m['activations'])} / {mib(m['workspace'])} / {mib(m['packed_weights'])} / **{mib(m['total'])}** | "
              f"{mib(got) if got else 'n/a'} | {err} |", flush=True)
        raw["memory"].append({"name": name, "T": T, "B": B, "cost": j})
    print()

if args.only != "memory":
    cases = [(att, T) for att in ("softmax", "linear") for T in TIME_T]
    fastest, costs = {}, {}
    for r in range(args.rounds):  # interleaved: a burst of load hits every case alike
        for att, T in cases:
            B = max(1, TOKENS // T)
            j = cost(dict(TIME_BASE, attention={"type": att}), T, B, args.steps)
            costs[att, T] = j
            fastest[att, T] = min(fastest.get((att, T), 1e30), j["measured"]["step_seconds_min"])
    print("| attention | T | B | predicted training FLOPs/token (M) | predicted ratio to "
          f"T={TIME_T[0]} | measured fastest s/step | measured ratio | attention share of FLOPs |")
    print("|---|---|---|---|---|---|---|---|")
    for att, T in cases:
        j = costs[att, T]
        j0 = costs[att, TIME_T[0]]
        f = j["training_flops"]["total"]["per_token"]
        f0 = j0["training_flops"]["total"]["per_token"]
        s = fastest[att, T] / j["tokens_per_step"]
        s0 = fastest[att, TIME_T[0]] / j0["tokens_per_step"]
        share = j["training_flops"]["attention"]["per_step"] / j["training_flops"]["total"]["per_step"]
        print(f"| {att} | {T} | {j['batch']} | {f / 1e6:.2f} | {f / f0:.2f} | {fastest[att, T]:.3f} | "
              f"{s / s0:.2f} | {100 * share:.0f}% |", flush=True)
        raw["time"].append({"attention": att, "T": T, "fastest_step_s": fastest[att, T], "cost": j})

with open(args.out, "w") as f:
    json.dump(raw, f, indent=1)
print(f"\nraw results: {args.out}")
