"""The PyTorch peer of posformer's ViT training (bench/vit_bench.sh): the same model, fp32
(or with --autocast bf16, PyTorch's CPU mixed precision, against posformer's --precision bf16).

    python3 vit_bench.py --config configs/vit-fashion-mnist.json --batch 128 --steps 30 --warm 5

Reads posformer's config (arch vit: image_size, patch_size, channels, num_classes, d_model,
n_layers, n_heads, d_ff, pool; position none / learned_2d / sincos_2d / rope_2d) and builds the
same ViT as a plain torch.nn.Module: patch embedding as one Linear on flattened (c, p, p) patches
(timm's Conv2d layout), CLS token, pre-LN encoder blocks (LayerNorm with bias, fused qkv
Linear, softmax attention scaled 1/sqrt(D), exact-erf GELU FFN), final LayerNorm, Linear head on
the CLS row (or the mean). rope_2d follows SPEC 4 (axial_split / axial_interleaved, theta_i =
base^(-2i/(R/2)), x = column, y = row, CLS unrotated = position (0, 0)), written with cos/sin
tables as fast RoPE code does. Training step: a random batch of Fashion-MNIST images (the IDX gz
read with gzip), forward, cross-entropy, backward, clip_grad_norm_(1.0), AdamW (posformer's
defaults: betas 0.9/0.95, eps 1e-8, weight decay 0.1). The rate is images / wall time over the
steps after the warm-up (as posformer's metrics.jsonl), plus the median step for reference.
Prints one JSON line.
"""
import argparse
import gzip
import json
import math
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_env  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--config", required=True)
p.add_argument("--batch", type=int, default=128)
p.add_argument("--steps", type=int, default=30, help="steps in all, warm-up included")
p.add_argument("--warm", type=int, default=5)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--autocast", choices=["none", "bf16"], default="none",
               help="bf16: forward and loss under torch.autocast('cpu', bfloat16), PyTorch's mixed "
                    "precision (the peer of posformer's train --precision bf16)")
p.add_argument("--data", default="/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz",
               help="IDX images (gz); 'random' for uniform noise")
p.add_argument("--count-params", action="store_true", help="print the parameter count and exit")
p.add_argument("--check", action="store_true",
               help="compare logits with tests/reference/vit_twin.py (float64, same weights) and exit")
torch_env.add_args(p)
args = p.parse_args()
SETTINGS = torch_env.setup(args, threads=args.threads)  # must precede `import torch`

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(args.threads)
torch.manual_seed(0)
cfg = json.load(open(args.config))
assert cfg.get("arch") == "vit", "vit_bench: config must have arch vit"
for k, want in (("norm", "layernorm"), ("norm_position", "pre"), ("activation", "gelu"),
                ("bias", True)):
    assert cfg.get(k, want) == want, f"vit_bench: only {k} = {want} is written here"
assert (cfg.get("attention") or {"type": "softmax"}).get("type", "softmax") == "softmax"
assert not cfg.get("n_kv_heads") or cfg["n_kv_heads"] == cfg["n_heads"]

d, H, L, FF = cfg.get("d_model", 256), cfg.get("n_heads", 4), cfg.get("n_layers", 4), cfg.get("d_ff", 1024)
D = d // H
C, P = cfg.get("channels", 3), cfg.get("patch_size", 16)
IH, IW = (cfg["image_size"],) * 2 if isinstance(cfg["image_size"], int) else cfg["image_size"]
GH, GW = IH // P, IW // P
N = GH * GW
CLS = cfg.get("pool", "cls") == "cls"
T = N + int(CLS)
POS = dict(cfg.get("position") or {"type": "none"})
PT = POS.get("type", "none")
assert PT in ("none", "learned_2d", "sincos_2d", "rope_2d"), f"vit_bench: position {PT} not written"
EPS = cfg.get("norm_eps", 1e-5)


def rope_tables():
    """cos/sin [T, R/2] of SPEC 4's angles per rotated pair; CLS (row -1) gets angle 0."""
    R = POS.get("rotary_dim", 0) or D
    base = float(POS.get("base", 10000.0))
    th = base ** (-2.0 * torch.arange(R // 4, dtype=torch.float64) / (R // 2))
    rows = torch.arange(GH).repeat_interleave(GW).double()
    cols = torch.arange(GW).repeat(GH).double()
    if CLS:
        rows, cols = torch.cat([torch.zeros(1, dtype=torch.float64), rows]), torch.cat([torch.zeros(1, dtype=torch.float64), cols])
    ax, ay = cols[:, None] * th[None], rows[:, None] * th[None]
    if POS.get("layout", "axial_split") == "axial_split":
        ang = torch.cat([ax, ay], 1)
    else:  # axial_interleaved
        ang = torch.stack([ax, ay], 2).reshape(T, R // 2)
    return R, torch.cos(ang).float(), torch.sin(ang).float()


def rope(x, R, cos, sin):
    """Rotate pairs (x[2j], x[2j+1]) of the first R dims of x [B, H, T, D] by the table's angles."""
    xr = x[..., :R]
    a, b = xr[..., 0::2], xr[..., 1::2]
    y = torch.stack([a * cos - b * sin, a * sin + b * cos], -1).flatten(-2)
    return y if R == D else torch.cat([y, x[..., R:]], -1)


def sincos_2d():
    """MAE layout: [sin(x w) | cos(x w) | sin(y w) | cos(y w)], w_i = 10000^(-i/(d/4)); CLS zeros."""
    w = 1.0 / 10000 ** (torch.arange(d // 4, dtype=torch.float64) / (d / 4.0))
    rows = torch.arange(GH).repeat_interleave(GW).double()
    cols = torch.arange(GW).repeat(GH).double()
    ex, ey = cols[:, None] * w[None], rows[:, None] * w[None]
    tab = torch.cat([torch.sin(ex), torch.cos(ex), torch.sin(ey), torch.cos(ey)], 1)
    return torch.cat([torch.zeros(int(CLS), d, dtype=torch.float64), tab]).float()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=EPS), nn.LayerNorm(d, eps=EPS)
        self.qkv, self.o = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.w1, self.w2 = nn.Linear(d, FF), nn.Linear(FF, d)

    def forward(self, x, rt):
        B = x.shape[0]
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        if rt is not None:
            q, k = rope(q, *rt), rope(k, *rt)
        s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(D))
        a = (torch.softmax(s, -1) @ v).transpose(1, 2).reshape(B, T, d)
        x = x + self.o(a)
        return x + self.w2(F.gelu(self.w1(self.ln2(x))))


class ViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Linear(C * P * P, d)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02) if CLS else None
        self.pos = nn.Parameter(torch.randn(T, d) * 0.02) if PT == "learned_2d" else None
        self.register_buffer("sincos", sincos_2d() if PT == "sincos_2d" else None)
        self.rt = None
        if PT == "rope_2d":
            R, cos, sin = rope_tables()
            self.rt = (R, cos, sin)
        self.blocks = nn.ModuleList(Block() for _ in range(L))
        self.norm = nn.LayerNorm(d, eps=EPS)
        self.head = nn.Linear(d, cfg.get("num_classes", 10))

    def forward(self, img):  # [B, C, H, W]
        B = img.shape[0]
        x = img.view(B, C, GH, P, GW, P).permute(0, 2, 4, 1, 3, 5).reshape(B, N, C * P * P)
        x = self.patch(x)
        if CLS:
            x = torch.cat([self.cls.expand(B, 1, d), x], 1)
        if self.pos is not None:
            x = x + self.pos
        if self.sincos is not None:
            x = x + self.sincos
        for blk in self.blocks:
            x = blk(x, self.rt)
        x = self.norm(x)
        return self.head(x[:, 0] if CLS else x.mean(1))


model = ViT()
n_params = sum(t.numel() for t in model.parameters())
if args.count_params:
    print(json.dumps({"params": n_params}))
    sys.exit(0)
if args.check:  # the same model as the engine's float64 twin, under posformer's weight names
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
    import vit_twin  # noqa: E402
    m = model.double()
    w = {"patch_embed.weight": m.patch.weight, "patch_embed.bias": m.patch.bias, "head.weight": m.head.weight,
         "head.bias": m.head.bias, "encoder.final_norm.weight": m.norm.weight, "encoder.final_norm.bias": m.norm.bias}
    if CLS:
        w["cls_token"] = m.cls.view(d)
    if m.pos is not None:
        w["encoder.pos_emb.weight"] = m.pos
    for i, b in enumerate(m.blocks):
        pre = f"encoder.layers.{i}."
        for j, nm in enumerate("qkv"):
            w[pre + f"attn.{nm}.weight"] = b.qkv.weight[j * d:(j + 1) * d]
            w[pre + f"attn.{nm}.bias"] = b.qkv.bias[j * d:(j + 1) * d]
        for nm, lin in (("attn.o", b.o), ("ffn.w1", b.w1), ("ffn.w2", b.w2), ("attn_norm", b.ln1), ("ffn_norm", b.ln2)):
            w[pre + nm + ".weight"], w[pre + nm + ".bias"] = lin.weight, lin.bias
    if m.rt is not None:
        m.rt = (m.rt[0], m.rt[1].double(), m.rt[2].double())
    img = torch.rand(3, C, IH, IW, dtype=torch.float64)
    with torch.no_grad():
        err = (m(img) - vit_twin.forward(cfg, w, img)).abs().max().item()
    print(json.dumps({"check": "logits vs tests/reference/vit_twin.py", "max_abs_err": err}))
    sys.exit(0 if err < 1e-6 else 1)  # the rope/sincos tables are built in fp32: ~1e-8

if args.data == "random":
    images = torch.rand(4096, C, IH, IW)
else:
    raw = gzip.open(args.data).read()
    n, h, w = (int.from_bytes(raw[4 * i:4 * i + 4], "big") for i in (1, 2, 3))
    assert (h, w) == (IH, IW) and C == 1, "vit_bench: IDX images must match image_size, 1 channel"
    images = torch.frombuffer(bytearray(raw[16:16 + n * h * w]), dtype=torch.uint8).view(n, 1, h, w)
labels = torch.randint(0, cfg.get("num_classes", 10), (images.shape[0],))  # speed only: labels need not be real

opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
gen = torch.Generator().manual_seed(0)
ts = []
t_all = None
for step in range(args.steps):
    if step == args.warm:
        t_all = time.perf_counter()
    t = time.perf_counter()
    idx = torch.randint(0, images.shape[0], (args.batch,), generator=gen)
    x = images[idx].float() * (1.0 / 255) if images.dtype == torch.uint8 else images[idx]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16"):
        loss = F.cross_entropy(model(x), labels[idx])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    ts.append(time.perf_counter() - t)
wall = time.perf_counter() - t_all
timed = args.steps - args.warm
print(json.dumps({"img_s": timed * args.batch / wall, "img_s_median_step": args.batch / statistics.median(ts[args.warm:]),
                  "params": n_params, "loss": loss.item(), "settings": SETTINGS, "torch": torch.__version__, "autocast": args.autocast}))
