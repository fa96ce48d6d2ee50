"""Float64 PyTorch twin of posformer's arch vit (docs/vision.md, SPEC.md section 4).

Written independently of the engine and of twin.py: the patch embedding is a timm-style
torch.nn.Conv2d (kernel = stride = patch_size) loaded from `patch_embed.weight` [d, C*p*p]
viewed as [d, C, p, p]; the 2-D RoPE rotates complex pairs (torch.view_as_complex); learned_2d is
resized with torch.nn.functional.interpolate (align_corners=False) as timm's
resample_abs_pos_embed; gradients come from autograd.

    forward(cfg, weights, images) -> logits [B, num_classes]
    loss(cfg, weights, images, labels) -> mean cross-entropy
"""
import math

import torch
import torch.nn.functional as F

import dropout_ref

DT = torch.float64


def patch_embed_conv(cfg, w):
    """timm's PatchEmbed: Conv2d(C, d, p, stride=p) with the engine's weights."""
    d, C, p = cfg["d_model"], cfg.get("channels", 3), cfg.get("patch_size", 16)
    conv = torch.nn.Conv2d(C, d, p, stride=p, bias="patch_embed.bias" in w, dtype=DT)
    with torch.no_grad():
        conv.weight.copy_(w["patch_embed.weight"].view(d, C, p, p))
        if conv.bias is not None:
            conv.bias.copy_(w["patch_embed.bias"])
    return conv


def patch_embed(cfg, w, images):
    """[B, C, H, W] -> [B, N, d] (patches row-major), differentiable in w."""
    d, C, p = cfg["d_model"], cfg.get("channels", 3), cfg.get("patch_size", 16)
    x = F.conv2d(images, w["patch_embed.weight"].view(d, C, p, p), w.get("patch_embed.bias"),
                 stride=p)                                   # [B, d, gh, gw]
    return x.flatten(2).transpose(1, 2)


def sincos_1d(pos, dim):
    """MAE get_1d_sincos_pos_embed_from_grid: [sin(pos w) | cos(pos w)], w_i = 10000^(-i/(dim/2))."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=DT) / (dim / 2.0))
    out = pos.to(DT)[:, None] * omega[None]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(gh, gw, d):
    """MAE get_2d_sincos_pos_embed: meshgrid(w, h) puts the column first."""
    rows = torch.arange(gh).repeat_interleave(gw)
    cols = torch.arange(gw).repeat(gh)
    return torch.cat([sincos_1d(cols, d // 2), sincos_1d(rows, d // 2)], dim=1)


def sinusoid(pos, d, half):
    i = torch.arange(d // 2, dtype=DT)
    ang = pos.to(DT)[:, None] * torch.pow(torch.tensor(10000.0, dtype=DT), -2.0 * i / d)[None]
    if half:
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)
    return torch.stack([torch.sin(ang), torch.cos(ang)], dim=2).reshape(len(pos), d)


def rotate_pairs(x, ang, mag=None):
    """x [..., T, 2P] as P complex pairs (x[2j] + i x[2j+1]) times mag exp(i ang[T, P])."""
    z = torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2).contiguous())
    z = z * torch.polar(torch.ones_like(ang) if mag is None else mag, ang)
    return torch.view_as_real(z).reshape(x.shape)


def scaled_freqs(Ra, base, sc, s, L0, L):
    """SPEC 3's scalings for one axis of rotary width Ra (frequencies theta_i = base^(-2i/Ra)),
    scale s, trained length L0, current length L -> (theta [Ra/2], mscale)."""
    kind = sc.get("type", "none")
    i = torch.arange(Ra // 2, dtype=DT)
    th = base ** (-2.0 * i / Ra)
    if kind == "none":
        return th, 1.0
    if kind == "linear":
        return th / s, 1.0
    if kind in ("ntk", "dynamic_ntk"):
        if kind == "dynamic_ntk":
            s = s * max(L, L0) / L0 - (s - 1)
        return (base * s ** (Ra / (Ra - 2))) ** (-2.0 * i / Ra), 1.0
    if kind == "yarn":
        def corr(r):
            return Ra * math.log(L0 / (2 * math.pi * r)) / (2 * math.log(base))
        low = math.floor(corr(sc.get("beta_fast", 32.0)))
        high = math.ceil(corr(sc.get("beta_slow", 1.0)))
        ramp = 1 - torch.clamp((i - low) / max(0.001, high - low), 0, 1)
        return th / s * (1 - ramp) + th * ramp, 1 + 0.1 * math.log(s)
    if kind == "llama3":
        lo, hi = sc.get("low_freq_factor", 1.0), sc.get("high_freq_factor", 4.0)
        lam = 2 * math.pi / th
        a = (L0 / lam - lo) / (hi - lo)
        mid = (1 - a) * th / s + a * th
        return torch.where(lam < L0 / hi, th, torch.where(lam > L0 / lo, th / s, mid)), 1.0
    raise ValueError(kind)


def rope_1d(x, pos, R, base, layout):
    th = base ** (-2.0 * torch.arange(R // 2, dtype=DT) / R)
    ang = pos.to(DT)[:, None] * th[None]
    y = x.clone()
    if layout == "half":  # pairs (x[i], x[i + R/2]): permute to interleaved, rotate, back
        perm = torch.stack([torch.arange(R // 2), torch.arange(R // 2) + R // 2], 1).reshape(-1)
        inv = torch.argsort(perm)
        y[..., :R] = rotate_pairs(x[..., :R][..., perm], ang)[..., inv]
    else:
        y[..., :R] = rotate_pairs(x[..., :R], ang)
    return y


def rope_2d(x, rows, cols, R, base, layout, scaling=None, trained=None, cls_position="origin"):
    """SPEC 4: theta_i = base^(-2i/(R/2)); x = column, y = row. Under a scaling each axis gets
    SPEC 3's frequencies at width R/2 with its trained grid length (trained = (gh0, gw0)), the
    current grid length and its factor (default: current / trained, at least 1; dynamic_ntk 1).
    CLS rows (-1): "origin" as patch (0, 0), "none" untouched."""
    sc = scaling or {"type": "none"}
    f = sc.get("factor", "auto")
    f = [f, f] if not isinstance(f, list) else f
    cur = (int(rows.max()) + 1, int(cols.max()) + 1)
    axis = []
    for a in range(2):  # 0 = rows (y), 1 = cols (x)
        if sc.get("type", "none") == "none":
            axis.append(scaled_freqs(R // 2, base, sc, 1.0, 1, 1))
            continue
        s = f[a] if f[a] != "auto" else \
            (1.0 if sc["type"] == "dynamic_ntk" else max(1.0, cur[a] / trained[a]))
        axis.append(scaled_freqs(R // 2, base, sc, float(s), trained[a], cur[a]))
    (thy, my), (thx, mx) = axis
    cx = torch.where(cols < 0, 0, cols).to(DT)[:, None] * thx[None]   # [T, R/4]
    cy = torch.where(rows < 0, 0, rows).to(DT)[:, None] * thy[None]
    q = R // 4
    mag_x, mag_y = torch.full((len(rows), q), float(mx), dtype=DT), \
        torch.full((len(rows), q), float(my), dtype=DT)
    if layout == "axial_split":
        ang, mag = torch.cat([cx, cy], dim=1), torch.cat([mag_x, mag_y], dim=1)
    else:  # axial_interleaved: 4-dim blocks [x-pair, y-pair]
        ang = torch.stack([cx, cy], dim=2).reshape(len(rows), R // 2)
        mag = torch.stack([mag_x, mag_y], dim=2).reshape(len(rows), R // 2)
    if cls_position == "none":  # CLS untouched
        mag = torch.where((rows < 0)[:, None], torch.ones_like(mag), mag)
    y = x.clone()
    y[..., :R] = rotate_pairs(x[..., :R], ang, mag)
    return y


def _lin(w, name, x):
    y = x @ w[name + ".weight"].T
    return y + w[name + ".bias"] if name + ".bias" in w else y


def _norm(cfg, w, name, x):
    eps = cfg.get("norm_eps", 1e-5)
    if cfg.get("norm", "layernorm") == "rmsnorm":
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w[name + ".weight"]
    return F.layer_norm(x, (x.shape[-1],), w[name + ".weight"], w[name + ".bias"], eps)


def _ffn(cfg, w, L, x):
    h = _lin(w, L + "ffn.w1", x)
    act = cfg.get("activation", "gelu")
    if act == "swiglu":
        h = F.silu(h) * _lin(w, L + "ffn.w3", x)
    elif act == "relu":
        h = torch.relu(h)
    elif act == "gelu_tanh":
        h = F.gelu(h, approximate="tanh")
    else:
        h = F.gelu(h)
    return _lin(w, L + "ffn.w2", h)


def forward(cfg, w, images, dropout_seed=None):
    """dropout_seed: training forward with the config's "dropout" (the engine's masks,
    dropout_ref.py: the encoder's input embeddings and every sublayer's output); None = none."""
    p_drop = float(cfg.get("dropout", 0.0))

    def drop(y, layer, sub):
        if dropout_seed is None or p_drop == 0:
            return y
        return dropout_ref.apply(y, p_drop, int(dropout_seed), "encoder.", layer, sub)

    d, H = cfg["d_model"], cfg["n_heads"]
    Hkv = cfg.get("n_kv_heads") or H
    D = d // H
    p = cfg.get("patch_size", 16)
    ih, iw = (cfg["image_size"], cfg["image_size"]) if isinstance(cfg["image_size"], int) \
        else cfg["image_size"]
    gh0, gw0 = ih // p, iw // p
    B, _, Himg, Wimg = images.shape
    gh, gw = Himg // p, Wimg // p
    N = gh * gw
    cls = cfg.get("pool", "cls") == "cls"
    pos = dict(cfg.get("position") or {"type": "none"})
    pt = pos.get("type", "none")
    x = patch_embed(cfg, w, images)
    if cls:
        x = torch.cat([w["cls_token"].expand(B, 1, d), x], dim=1)
    T = x.shape[1]
    rows = torch.cat([torch.tensor([-1] * cls, dtype=torch.long), torch.arange(gh).repeat_interleave(gw)])
    cols = torch.cat([torch.tensor([-1] * cls, dtype=torch.long), torch.arange(gw).repeat(gh)])
    if pt == "learned":
        x = x + w["encoder.pos_emb.weight"][:T][None]
    elif pt in ("sinusoidal", "sinusoidal_half"):
        x = x + sinusoid(torch.arange(T), d, pt == "sinusoidal_half")[None]
    elif pt == "sincos_2d":
        P = sincos_2d(gh, gw, d)
        x = x + torch.cat([torch.zeros(int(cls), d, dtype=DT), P])[None]
    elif pt == "learned_2d":
        tab = w["encoder.pos_emb.weight"]
        grid = tab[int(cls):].reshape(gh0, gw0, d)
        if (gh, gw) != (gh0, gw0):
            grid = F.interpolate(grid.permute(2, 0, 1)[None], size=(gh, gw),
                                 mode=pos.get("interpolation", "bicubic"),
                                 align_corners=False)[0].permute(1, 2, 0)
        x = x + torch.cat([tab[:int(cls)], grid.reshape(N, d)])[None]
    pre = cfg.get("norm_position", "pre") == "pre"

    def attn(L, h):
        q = _lin(w, L + "attn.q", h).view(B, T, H, D).transpose(1, 2)
        k = _lin(w, L + "attn.k", h).view(B, T, Hkv, D).transpose(1, 2)
        v = _lin(w, L + "attn.v", h).view(B, T, Hkv, D).transpose(1, 2)
        R = pos.get("rotary_dim", 0) or D
        if pt == "rope":
            q = rope_1d(q, torch.arange(T), R, pos.get("base", 10000.0),
                        pos.get("layout", "interleaved"))
            k = rope_1d(k, torch.arange(T), R, pos.get("base", 10000.0),
                        pos.get("layout", "interleaved"))
        elif pt == "rope_2d":
            lay, b = pos.get("layout", "axial_split"), pos.get("base", 10000.0)
            extra = dict(scaling=pos.get("scaling"), trained=(gh0, gw0),
                         cls_position=pos.get("cls_position", "origin"))
            q = rope_2d(q, rows, cols, R, b, lay, **extra)
            k = rope_2d(k, rows, cols, R, b, lay, **extra)
        k = k.repeat_interleave(H // Hkv, dim=1)
        v = v.repeat_interleave(H // Hkv, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        o = torch.softmax(s, dim=-1) @ v
        return _lin(w, L + "attn.o", o.transpose(1, 2).reshape(B, T, H * D))

    x = drop(x, 0, 3)
    for i in range(cfg.get("n_layers", 4)):
        L = f"encoder.layers.{i}."
        if pre:
            x = x + drop(attn(L, _norm(cfg, w, L + "attn_norm", x)), i, 0)
            x = x + drop(_ffn(cfg, w, L, _norm(cfg, w, L + "ffn_norm", x)), i, 2)
        else:
            x = _norm(cfg, w, L + "attn_norm", x + drop(attn(L, x), i, 0))
            x = _norm(cfg, w, L + "ffn_norm", x + drop(_ffn(cfg, w, L, x), i, 2))
    if pre:
        x = _norm(cfg, w, "encoder.final_norm", x)
    pooled = x[:, 0] if cls else x.mean(dim=1)
    return _lin(w, "head", pooled)


def loss(cfg, w, images, labels):
    return F.cross_entropy(forward(cfg, w, images), labels)
