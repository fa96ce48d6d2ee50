"""PyTorch twin of the posformer forward pass, written from SPEC.md (sections 1, 2, 3, 5, 6),
docs/config.md and docs/checkpoint-format.md only. Everything is computed in float64.
Attention: `softmax` (exact), `linear_cos` (phi = [1, x/|x|]), `linear_rope` (RoPE on the
numerator's features only), `linear` (SPEC.md 6: phi(q) . phi(k) with phi = elu + 1,
evaluated as the whole masked [Tq, Tk] weight matrix, normalised per row), `performer` (the
engine's W from its model file) and `nystrom` (SPEC.md 6, docs/attention.md: landmarks, three
softmaxes, the pseudo-inverse iterations, and the paper's depthwise torch conv2d over V; the
encoder only: an encoder_decoder's decoder runs softmax).

    model = build(config_dict, tensors)          # tensors: name -> torch.Tensor
    hidden, logits = forward(model, tokens, pos_offset=0, src=None, segments=None,
                             dropout_seed=None)

tokens: LongTensor [B, T] (or [T]); for arch encoder_decoder `tokens` are the decoder's
tokens (positions pos_offset ..) and `src` the encoder's (positions 0 ..). For an encoder or
a decoder model the positions of `tokens` are pos_offset .. pos_offset+T-1.
hidden: [B, T, d] (after the final norm for pre-LN); logits: [B, T, V] or None (head none).

segments (sequence packing, docs/architecture.md): document ids [T] of a one-row batch of
`tokens` (decoder or encoder-only tokens; the encoder_decoder's source is one document). A
document is a run of equal ids. Each document's positions restart at 0 at its first token, and
in self-attention a query may only attend to keys of its own document: the score matrix gets
-inf wherever seg[i] != seg[j] (on top of the causal mask). Softmax attention only.

dropout_seed (training forward, config "dropout" > 0; docs/training.md): each sublayer's output
before its residual add and each stack's input embeddings are dropped with the engine's masks
(dropout_ref.py); None = no dropout (evaluation).
"""
import math

import torch
import torch.nn.functional as F

import dropout_ref

DT = torch.float64

# --------------------------------------------------------------------------------------------
# Config


DEFAULTS = {
    "arch": "decoder", "d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 0,
    "d_ff": 1024, "activation": "gelu", "norm": "layernorm", "norm_position": "pre",
    "norm_eps": 1e-5, "bias": True, "vocab_size": 259, "max_len": 1024,
    "tie_embeddings": True, "head": "lm", "embed_scale": 1.0, "dropout": 0.0,
}
POS_DEFAULTS = {
    "rope": {"layout": "interleaved", "rotary_dim": 0, "base": 10000.0},
    "t5": {"num_buckets": 32, "max_distance": 128},
    "shaw": {"clip": 16},
    "deberta": {"span": 64},
}
ABSOLUTE = ("learned", "sinusoidal", "sinusoidal_half")


class Config:
    def __init__(self, cfg: dict):
        c = dict(DEFAULTS)
        c.update({k: v for k, v in cfg.items() if k not in ("position", "attention")})
        for k, v in c.items():
            setattr(self, k, v)
        pos = dict(cfg.get("position") or {"type": "none"})
        self.pos_type = pos.pop("type", "none")
        p = dict(POS_DEFAULTS.get(self.pos_type, {}))
        p.update(pos)
        self.pos = p
        att = dict(cfg.get("attention") or {})
        self.attn_type = att.get("type", "softmax")
        assert self.attn_type in ("softmax", "linear", "linear_cos", "linear_rope", "performer",
                                  "nystrom"), f"twin: no attention {self.attn_type}"
        self.n_features = int(att.get("n_features", 256))  # performer: random features M
        self.scale = att.get("scale", None)
        self.residual = bool(att.get("residual", False))  # RealFormer: carried scores
        if self.attn_type == "linear":
            # no scores to scale; no score matrix for relative terms; RoPE breaks phi > 0
            assert self.scale is None, "linear attention takes no scale"
            assert self.pos_type in ("none",) + ABSOLUTE, \
                f"linear attention does not serve position {self.pos_type}"
        if self.attn_type == "linear_cos":  # rotations keep the cosine: RoPE outside is fine
            assert self.scale is None, "linear_cos attention takes no scale"
            assert self.pos_type in ("none", "rope") + ABSOLUTE, \
                f"linear_cos attention does not serve position {self.pos_type}"
        if self.attn_type == "performer":  # approximates softmax of the q, k it is given
            assert self.scale is None, "performer attention takes no scale"
            assert self.pos_type in ("none", "rope") + ABSOLUTE, \
                f"performer attention does not serve position {self.pos_type}"
        if self.attn_type == "linear_rope":  # RoPE inside, on the numerator's features
            assert self.scale is None, "linear_rope attention takes no scale"
            assert self.pos_type == "rope", "linear_rope attention needs position rope"
        if self.attn_type == "nystrom":
            self.n_landmarks = int(att.get("n_landmarks", 64))
            self.pinv_iterations = int(att.get("pinv_iterations", 6))
            self.conv_kernel = int(att.get("conv_kernel", 0))
            assert self.arch != "decoder", "nystrom cannot serve a decoder's self-attention"
            assert self.pos_type in ("none", "rope") + ABSOLUTE, \
                f"nystrom attention does not serve position {self.pos_type}"
            assert not self.residual, "nystrom attention has no scores to carry"
        self.H = self.n_heads
        self.Hkv = self.n_kv_heads if self.n_kv_heads else self.n_heads
        self.d = self.d_model
        self.D = self.d // self.H
        assert self.H * self.D == self.d and self.H % self.Hkv == 0
        self.stacks = {"encoder": ["encoder."], "decoder": ["decoder."],
                       "encoder_decoder": ["encoder.", "decoder."]}[self.arch]

    def self_scale(self):
        if self.scale is not None:
            return float(self.scale)
        if self.pos_type == "deberta":
            return 1.0 / math.sqrt(3 * self.D)
        return 1.0 / math.sqrt(self.D)

    def token_scale(self) -> float:
        """Multiplier of the token embedding lookup (docs/config.md `embed_scale`): a positive
        number, or "sqrt_d" = sqrt(d_model) as in Vaswani et al. The tied LM head is not scaled."""
        s = self.embed_scale
        if s == "sqrt_d":
            return math.sqrt(self.d)
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 \
                or math.isinf(s):
            raise ValueError(f"embed_scale must be a positive number or 'sqrt_d', got {s!r}")
        return float(s)

    def stack_attention(self, S: str) -> str:
        """nystrom serves the encoder; an encoder_decoder's decoder runs softmax."""
        if self.attn_type == "nystrom" and S == "decoder.":
            return "softmax"
        return self.attn_type

    def cross_scale(self):
        return float(self.scale) if self.scale is not None else 1.0 / math.sqrt(self.D)


def expected_shapes(cfg: dict):
    """Every tensor name -> shape the config needs (docs/checkpoint-format.md)."""
    c = Config(cfg)
    d, H, Hkv, D, Fh, V = c.d, c.H, c.Hkv, c.D, c.d_ff, c.vocab_size
    out = {"embed.weight": [V, d]}
    if c.head == "lm" and not c.tie_embeddings:
        out["lm_head.weight"] = [V, d]

    def norm(name):
        out[name + ".weight"] = [d]
        if c.norm == "layernorm":
            out[name + ".bias"] = [d]

    def lin(name, o, i):
        out[name + ".weight"] = [o, i]
        if c.bias:
            out[name + ".bias"] = [o]

    for S in c.stacks:
        if c.attn_type == "performer":  # non-trainable buffer: the random features W [M, D]
            out[S + "performer.features"] = [c.n_features, D]
        for i in range(c.n_layers):
            L = f"{S}layers.{i}."
            norm(L + "attn_norm")
            lin(L + "attn.q", H * D, d)
            lin(L + "attn.k", Hkv * D, d)
            lin(L + "attn.v", Hkv * D, d)
            lin(L + "attn.o", d, H * D)
            if S == "decoder." and c.arch == "encoder_decoder":
                norm(L + "cross_norm")
                lin(L + "cross_attn.q", H * D, d)
                lin(L + "cross_attn.k", Hkv * D, d)
                lin(L + "cross_attn.v", Hkv * D, d)
                lin(L + "cross_attn.o", d, H * D)
            norm(L + "ffn_norm")
            lin(L + "ffn.w1", Fh, d)
            lin(L + "ffn.w2", d, Fh)
            if c.activation == "swiglu":
                lin(L + "ffn.w3", Fh, d)
            if c.stack_attention(S) == "nystrom" and c.conv_kernel > 0:
                out[L + "attn.conv.weight"] = [H, c.conv_kernel]
            if c.pos_type == "shaw":
                k = c.pos["clip"]
                out[L + "attn.shaw_k"] = [2 * k + 1, D]
                out[L + "attn.shaw_v"] = [2 * k + 1, D]
            if c.pos_type == "xl":
                out[L + "attn.xl_u"] = [H, D]
                out[L + "attn.xl_v"] = [H, D]
                out[L + "attn.xl_r.weight"] = [H * D, d]
            if c.pos_type == "deberta":
                lin(L + "attn.pos_q", H * D, d)
                lin(L + "attn.pos_k", H * D, d)
        if c.norm_position == "pre":
            norm(S + "final_norm")
        if c.pos_type == "learned":
            out[S + "pos_emb.weight"] = [c.max_len, d]
        if c.pos_type == "t5":
            out[S + "rel_bias.weight"] = [c.pos["num_buckets"], H]
        if c.pos_type == "deberta":
            out[S + "rel_emb.weight"] = [2 * c.pos["span"], d]
    return out


# --------------------------------------------------------------------------------------------
# Position helpers (SPEC.md sections 2, 3, 5)


def sinusoid(pos: torch.Tensor, d: int, half: bool) -> torch.Tensor:
    """pos: [N] (any integers, may be negative) -> [N, d].
    interleaved: P[k,2i] = sin(k w_i), P[k,2i+1] = cos(k w_i); half: [sin | cos];
    w_i = 10000^(-2i/d)."""
    i = torch.arange(d // 2, dtype=DT)
    w = torch.pow(torch.tensor(10000.0, dtype=DT), -2.0 * i / d)
    ang = pos.to(DT)[:, None] * w[None, :]
    s, co = torch.sin(ang), torch.cos(ang)
    if half:
        return torch.cat([s, co], dim=1)
    out = torch.empty(pos.shape[0], d, dtype=DT)
    out[:, 0::2] = s
    out[:, 1::2] = co
    return out


def alibi_slopes(H: int) -> torch.Tensor:
    n = 2 ** int(math.floor(math.log2(H)))
    sl = []
    for h in range(H):
        if h < n:
            sl.append(2.0 ** (-8.0 * (h + 1) / n))
        else:
            sl.append(2.0 ** (-4.0 * (2 * (h - n) + 1) / n))
    return torch.tensor(sl, dtype=DT)


def t5_bucket(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
    if bidirectional:
        nb = num_buckets // 2
        offset = nb if rel > 0 else 0
        n = abs(rel)
    else:
        nb = num_buckets
        offset = 0
        n = max(-rel, 0)
    max_exact = nb // 2
    if n < max_exact:
        return offset + n
    b = max_exact + int(math.floor(math.log(n / max_exact) / math.log(max_distance / max_exact)
                                   * (nb - max_exact)))
    return offset + min(b, nb - 1)


SCALING_DEFAULTS = {"factor": 1.0, "original_len": 0, "beta_fast": 32.0, "beta_slow": 1.0,
                    "low_freq_factor": 1.0, "high_freq_factor": 4.0}


def rope_frequencies(R: int, base: float, scaling, cur_len: int):
    """SPEC.md 3's RoPE scalings, written from the formulas: (theta [R/2] float64 list, mscale).
    scaling: None or {"type", "factor", "original_len", ...}; cur_len: largest position + 1."""
    sc = dict(SCALING_DEFAULTS)
    sc.update(scaling or {})
    kind, s, L0 = sc.get("type", "none"), float(sc["factor"]), int(sc["original_len"])
    b = float(base)
    if kind == "ntk":
        b = b * s ** (R / (R - 2))
    elif kind == "dynamic_ntk":
        L = max(cur_len, L0)
        s2 = s * L / L0 - (s - 1)
        b = b * s2 ** (R / (R - 2))
    theta = [b ** (-2.0 * i / R) for i in range(R // 2)]
    mscale = 1.0
    if kind == "linear":
        theta = [t / s for t in theta]
    elif kind == "yarn":
        def corr(r):
            return R * math.log(L0 / (2 * math.pi * r)) / (2 * math.log(b))
        low, high = math.floor(corr(sc["beta_fast"])), math.ceil(corr(sc["beta_slow"]))
        out = []
        for i, t in enumerate(theta):
            ramp = 1 - min(max((i - low) / max(0.001, high - low), 0.0), 1.0)
            out.append((t / s) * (1 - ramp) + t * ramp)
        theta = out
        mscale = 1 + 0.1 * math.log(s)
    elif kind == "llama3":
        lo, hi = sc["low_freq_factor"], sc["high_freq_factor"]
        out = []
        for t in theta:
            lam = 2 * math.pi / t
            if lam < L0 / hi:
                out.append(t)
            elif lam > L0 / lo:
                out.append(t / s)
            else:
                a = (L0 / lam - lo) / (hi - lo)
                out.append((1 - a) * t / s + a * t)
        theta = out
    elif kind not in ("none", "ntk", "dynamic_ntk"):
        raise ValueError(f"unknown rope scaling {kind}")
    return theta, mscale


def rope_rotate(x: torch.Tensor, pos: torch.Tensor, R: int, base: float, layout: str,
                scaling=None, cur_len: int = 0):
    """x: [B, heads, T, D]; pos: [T]. Rotates the first R dims; dims >= R pass through.
    scaling (SPEC 3): frequencies of rope_frequencies at cur_len, cos and sin times mscale."""
    th, mscale = rope_frequencies(R, base, scaling, cur_len)
    theta = torch.tensor(th, dtype=DT)                                      # [R/2]
    ang = pos.to(DT)[:, None] * theta[None, :]                              # [T, R/2]
    cos, sin = mscale * torch.cos(ang), mscale * torch.sin(ang)
    y = x.clone()
    if layout == "interleaved":
        a, b = x[..., 0:R:2], x[..., 1:R:2]
        y[..., 0:R:2] = a * cos - b * sin
        y[..., 1:R:2] = b * cos + a * sin
    elif layout == "half":
        a, b = x[..., : R // 2], x[..., R // 2: R]
        y[..., : R // 2] = a * cos - b * sin
        y[..., R // 2: R] = b * cos + a * sin
    else:
        raise ValueError(f"unknown rope layout {layout}")
    return y


# --------------------------------------------------------------------------------------------
# Model


class Model:
    def __init__(self, cfg: dict, tensors: dict):
        self.cfg_dict = cfg
        self.c = Config(cfg)
        need = expected_shapes(cfg)
        missing = [n for n in need if n not in tensors]
        if missing:
            raise KeyError(f"missing tensors: {missing}")
        extra = [n for n in tensors if n not in need]
        if extra:
            raise KeyError(f"unexpected tensors: {extra}")
        for n, shp in need.items():
            if list(tensors[n].shape) != shp:
                raise ValueError(f"tensor {n}: shape {list(tensors[n].shape)} != {shp}")
        self.w = {n: t.detach().to(DT) for n, t in tensors.items()}

    def get(self, name):
        return self.w.get(name)


def build(config_dict: dict, tensors: dict) -> Model:
    return Model(config_dict, tensors)


def _lin(m: Model, name: str, x: torch.Tensor) -> torch.Tensor:
    y = x @ m.w[name + ".weight"].T
    b = m.get(name + ".bias")
    if b is not None:
        y = y + b
    return y


def _norm(m: Model, name: str, x: torch.Tensor) -> torch.Tensor:
    c = m.c
    g = m.w[name + ".weight"]
    if c.norm == "layernorm":
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)      # biased variance
        return (x - mu) / torch.sqrt(var + c.norm_eps) * g + m.w[name + ".bias"]
    if c.norm == "rmsnorm":
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.norm_eps) * g
    raise ValueError(f"unknown norm {c.norm}")


def _ffn(m: Model, L: str, x: torch.Tensor) -> torch.Tensor:
    act = m.c.activation
    h = _lin(m, L + "ffn.w1", x)
    if act == "relu":
        h = torch.relu(h)
    elif act == "gelu":
        h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
    elif act == "gelu_tanh":
        h = 0.5 * h * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h ** 3)))
    elif act == "swiglu":
        h = F.silu(h) * _lin(m, L + "ffn.w3", x)
    else:
        raise ValueError(f"unknown activation {act}")
    return _lin(m, L + "ffn.w2", h)


def _split(x, heads, D):  # [B, T, heads*D] -> [B, heads, T, D]
    B, T, _ = x.shape
    return x.view(B, T, heads, D).transpose(1, 2)


def _attention(m: Model, S: str, L: str, kind: str, x: torch.Tensor, kv: torch.Tensor,
               qpos: torch.Tensor, kpos: torch.Tensor, causal: bool, carried=None,
               other_doc=None) -> torch.Tensor:
    """kind: 'attn' (self-attention with the position scheme) or 'cross_attn' (no position terms,
    no mask). qpos [Tq], kpos [Tk]: absolute positions. carried: a dict holding the previous
    layer's pre-softmax scores under "S" (RealFormer), replaced by this layer's. other_doc:
    [Tq, Tk] bool, True where query and key belong to different documents (masked)."""
    c = m.c
    if other_doc is not None and (c.attn_type != "softmax" or c.stack_attention(S) != "softmax"):
        raise ValueError(f"segments need softmax attention, not {c.attn_type}")
    H, Hkv, D = c.H, c.Hkv, c.D
    P = L + kind + "."
    q = _split(_lin(m, P + "q", x), H, D)           # [B, H, Tq, D]
    k = _split(_lin(m, P + "k", kv), Hkv, D)        # [B, Hkv, Tk, D]
    v = _split(_lin(m, P + "v", kv), Hkv, D)
    is_self = kind == "attn"
    pt = c.pos_type if is_self else "none"
    if pt == "rope" and c.attn_type != "linear_rope":
        R = c.pos["rotary_dim"] or D
        sc, L = c.pos.get("scaling"), int(max(qpos.max(), kpos.max())) + 1  # current length
        q = rope_rotate(q, qpos, R, c.pos["base"], c.pos["layout"], sc, L)
        k = rope_rotate(k, kpos, R, c.pos["base"], c.pos["layout"], sc, L)
    # GQA: query head h reads kv head h // (H / Hkv)
    rep = H // Hkv
    k = k.repeat_interleave(rep, dim=1)              # [B, H, Tk, D]
    v = v.repeat_interleave(rep, dim=1)
    ii = qpos[:, None]                               # query positions  [Tq, 1]
    jj = kpos[None, :]                               # key positions    [1, Tk]

    if c.attn_type == "performer":
        phi = favor_features(m.w[S + "performer.features"])
        out = _linear_attention(q, k, v, (jj > ii) if causal else None, phi)
        B, _, Tq, _ = out.shape
        return _lin(m, P + "o", out.transpose(1, 2).reshape(B, Tq, H * D))

    if c.attn_type in ("linear", "linear_cos", "linear_rope"):
        rot = None
        if c.attn_type == "linear_rope" and pt == "rope":
            R = c.pos["rotary_dim"] or D
            sc = c.pos.get("scaling")  # never dynamic_ntk (refused with linear_rope)
            rot = lambda x, p: rope_rotate(x, p, R, c.pos["base"], c.pos["layout"], sc)  # noqa: E731
        phi = phi_cos if c.attn_type == "linear_cos" else phi_elu1
        out = _linear_attention(q, k, v, (jj > ii) if causal else None, phi, rot, qpos, kpos)
        B, _, Tq, _ = out.shape
        return _lin(m, P + "o", out.transpose(1, 2).reshape(B, Tq, H * D))
    if c.stack_attention(S) == "nystrom":
        assert not causal
        conv = m.w[P + "conv.weight"] if c.conv_kernel > 0 else None
        out = nystrom_attention(q, k, v, c.self_scale() if is_self else c.cross_scale(),
                                c.n_landmarks, c.pinv_iterations, conv)
        B, _, Tq, _ = out.shape
        return _lin(m, P + "o", out.transpose(1, 2).reshape(B, Tq, H * D))

    scale = c.self_scale() if is_self else c.cross_scale()
    content = q @ k.transpose(-1, -2)                # [B, H, Tq, Tk]
    vextra = None

    if pt in ("none", "learned", "sinusoidal", "sinusoidal_half", "rope"):
        scores = scale * content
    elif pt == "alibi":
        slopes = alibi_slopes(H)[None, :, None, None]
        dist = (ii - jj).to(DT) if causal else (ii - jj).abs().to(DT)
        scores = scale * content - slopes * dist[None, None]
    elif pt == "t5":
        table = m.w[S + "rel_bias.weight"]          # [num_buckets, H], shared by all layers
        nbk, md = c.pos["num_buckets"], c.pos["max_distance"]
        rel = (jj - ii)                              # key minus query
        rmin = int(rel.min())
        lut = torch.tensor([t5_bucket(r, not causal, nbk, md)
                            for r in range(rmin, int(rel.max()) + 1)], dtype=torch.long)
        bucket = lut[rel - rmin]                     # [Tq, Tk]
        bias = table[bucket]                         # [Tq, Tk, H]
        scores = scale * content + bias.permute(2, 0, 1)[None]
    elif pt == "shaw":
        kc = c.pos["clip"]
        r = (jj - ii).clamp(-kc, kc) + kc            # [Tq, Tk]
        aK = m.w[P + "shaw_k"][r]                    # [Tq, Tk, D]
        aV = m.w[P + "shaw_v"][r]
        scores = scale * (content + torch.einsum("bhid,ijd->bhij", q, aK))
        vextra = aV
    elif pt == "xl":
        WR = m.w[P + "xl_r.weight"]                  # [H*D, d]
        u = m.w[P + "xl_u"]                          # [H, D]
        vv = m.w[P + "xl_v"]
        rel = ii - jj                                # m = i - j
        mmin = int(rel.min())
        ms = torch.arange(mmin, int(rel.max()) + 1)
        Rm = (sinusoid(ms, c.d, half=True) @ WR.T).view(-1, H, D)   # [M, H, D]
        idx = (rel - mmin).long()                    # [Tq, Tk]
        qr = torch.einsum("bhid,mhd->bhim", q, Rm)   # [B, H, Tq, M]
        qr = torch.gather(qr, 3, idx[None, None].expand(q.shape[0], H, -1, -1))
        vr = torch.einsum("hd,mhd->hm", vv, Rm)[:, idx]             # [H, Tq, Tk]
        uk = torch.einsum("hd,bhjd->bhj", u, k)[:, :, None, :]      # [B, H, 1, Tk]
        scores = scale * (content + qr + uk + vr[None])
    elif pt == "deberta":
        span = c.pos["span"]
        Pm = m.w[S + "rel_emb.weight"]               # [2span, d]
        Kr = _lin(m, P + "pos_k", Pm).view(-1, H, D)  # [2span, H, D]
        Qr = _lin(m, P + "pos_q", Pm).view(-1, H, D)
        dij = (ii - jj).clamp(-span, span - 1) + span        # delta(i, j)  [Tq, Tk]
        dji = (jj - ii).clamp(-span, span - 1) + span        # delta(j, i)  [Tq, Tk]
        B = q.shape[0]
        c2p = torch.einsum("bhid,rhd->bhir", q, Kr)
        c2p = torch.gather(c2p, 3, dij[None, None].expand(B, H, -1, -1))
        p2c = torch.einsum("bhjd,rhd->bhjr", k, Qr)           # [B, H, Tk, 2span]
        # p2c[b,h,i,j] = Kc_j . Qr[delta(j,i)]
        p2c = p2c[:, :, torch.arange(kpos.shape[0])[None, :], dji]   # [B, H, Tq, Tk]
        scores = scale * (content + c2p + p2c)
    else:
        raise ValueError(f"unknown position type {pt}")

    if carried is not None:  # RealFormer: S_l = (this layer's scores) + S_(l-1), before the mask
        if "S" in carried:
            scores = scores + carried["S"]
        carried["S"] = scores
    if causal:
        scores = scores.masked_fill((jj > ii)[None, None], float("-inf"))
    if other_doc is not None:  # sequence packing: keys of other documents are invisible
        scores = scores.masked_fill(other_doc[None, None], float("-inf"))
    p = torch.softmax(scores, dim=-1)
    out = p @ v                                      # [B, H, Tq, D]
    if vextra is not None:
        out = out + torch.einsum("bhij,ijd->bhid", p, vextra)
    B, _, Tq, _ = out.shape
    out = out.transpose(1, 2).reshape(B, Tq, H * D)
    return _lin(m, P + "o", out)


def phi_elu1(x: torch.Tensor) -> torch.Tensor:
    """The feature map of linear attention: elu(x) + 1 (x + 1 for x > 0, e^x otherwise)."""
    return F.elu(x) + 1.0


def phi_cos(x: torch.Tensor) -> torch.Tensor:
    """linear_cos's feature map [1, x/|x|] (phi(q).phi(k) = 1 + cos(q, k)); [1, 0..] at x = 0."""
    n = x.norm(dim=-1, keepdim=True)
    u = torch.where(n > 0, x / n.clamp_min(1e-300), torch.zeros_like(x))
    return torch.cat([torch.ones_like(x[..., :1]), u], dim=-1)


def favor_features(W: torch.Tensor):
    """Performer's FAVOR+ map with the model file's random features W [M, D] (the engine draws
    them; the twin reads them): phi(x) = exp(W x' - |x'|^2 / 2) / sqrt(M), x' = x D^(-1/4).
    E_W[phi(q).phi(k)] = exp(q.k / sqrt(D)). No stabiliser: it cancels, and float64 has range."""
    W = W.to(DT)
    M, D = W.shape

    def phi(x):
        xs = x * D ** -0.25
        return torch.exp(xs @ W.T - (xs * xs).sum(-1, keepdim=True) / 2) / math.sqrt(M)
    return phi


def _linear_attention(q, k, v, masked, phi=phi_elu1, rot=None, qpos=None, kpos=None):
    """q [B, H, Tq, D], k, v [B, H, Tk, D] (kv heads already repeated); masked [Tq, Tk] bool
    (True = key not visible) or None. o_i = sum_j wn_ij v_j / sum_j wd_ij over the visible keys,
    wd_ij = phi(q_i).phi(k_j), wn_ij = (R_i phi(q_i)).(R_j phi(k_j)) with rot(x, pos) = R (Su's
    RoPE for linear attention, numerator only), else wn = wd: SPEC.md 6 with S and z expanded."""
    a, c = phi(q), phi(k)
    wd = a @ c.transpose(-1, -2)                                  # [B, H, Tq, Tk]
    wn = wd if rot is None else rot(a, qpos) @ rot(c, kpos).transpose(-1, -2)
    if masked is not None:
        wd = wd.masked_fill(masked[None, None], 0.0)
        wn = wn.masked_fill(masked[None, None], 0.0)
    return (wn @ v) / wd.sum(-1, keepdim=True)


def nystrom_attention(q, k, v, scale, n_landmarks, iters, conv=None):
    """q [B, H, Tq, D], k, v [B, H, Tk, D] (kv heads repeated). m = min(n_landmarks, Tq, Tk)
    landmarks: means of the segments [floor(i T / m), floor((i+1) T / m)) of rows;
    softmax(s Q Kl^T) pinv(softmax(s Ql Kl^T)) softmax(s Ql K^T) V with pinv by `iters` steps of
    Z <- Z (13I - AZ (15I - AZ (7I - AZ))) / 4 from Z0 = A^T / (max row sum * max column sum)
    (Xiong et al. 2021, ||A||_inf ||A||_1); conv [H, k]: the paper's depthwise
    Conv2d(H, H, (k, 1), padding=(k // 2, 0), groups=H, bias=False) over V, added."""
    Tq, Tk = q.shape[2], k.shape[2]
    m = min(n_landmarks, Tq, Tk)

    def marks(x, T):
        b = [i * T // m for i in range(m + 1)]
        return torch.stack([x[:, :, b[i]:b[i + 1]].mean(dim=2) for i in range(m)], dim=2)

    ql, kl = marks(q, Tq), marks(k, Tk)
    k1 = torch.softmax(scale * q @ kl.transpose(-1, -2), dim=-1)
    k2 = torch.softmax(scale * ql @ kl.transpose(-1, -2), dim=-1)
    k3 = torch.softmax(scale * ql @ k.transpose(-1, -2), dim=-1)
    eye = torch.eye(m, dtype=q.dtype)
    z = k2.transpose(-1, -2) / (k2.sum(-1).amax(-1) * k2.sum(-2).amax(-1))[..., None, None]
    for _ in range(iters):
        kz = k2 @ z
        z = 0.25 * z @ (13 * eye - kz @ (15 * eye - kz @ (7 * eye - kz)))
    out = k1 @ (z @ (k3 @ v))
    if conv is not None:
        H, ks = conv.shape
        out = out + F.conv2d(v, conv[:, None, :, None], padding=(ks // 2, 0), groups=H)
    return out


def _stack(m: Model, S: str, tokens: torch.Tensor, pos0: int, causal: bool, enc=None,
           segments=None, dropout_seed=None):
    c = m.c

    def drop(y, layer, sub):  # residual dropout at one site (identity without a seed)
        if dropout_seed is None or not c.dropout:
            return y
        return dropout_ref.apply(y, float(c.dropout), int(dropout_seed), S, layer, sub)

    B, T = tokens.shape
    if int(tokens.min()) < 0 or int(tokens.max()) >= c.vocab_size:
        raise ValueError(f"token id out of range [0, {c.vocab_size})")
    pos = torch.arange(pos0, pos0 + T)
    other_doc = None
    if segments is not None:  # packed documents: positions from each document's first token
        seg = [int(s) for s in segments]
        if B != 1 or len(seg) != T or pos0 != 0:
            raise ValueError("segments: one row of T ids, no position offset")
        pos = torch.tensor([i - seg.index(seg[i]) for i in range(T)])
        segt = torch.tensor(seg)
        other_doc = segt[:, None] != segt[None, :]
    x = m.w["embed.weight"][tokens] * c.token_scale()  # [B, T, d]
    if c.pos_type == "learned":
        if pos0 < 0 or int(pos.max()) + 1 > c.max_len:
            raise ValueError(f"positions {pos0}..{pos0 + T - 1} exceed max_len {c.max_len}")
        x = x + m.w[S + "pos_emb.weight"][pos][None]
    elif c.pos_type == "sinusoidal":
        x = x + sinusoid(pos, c.d, half=False)[None]
    elif c.pos_type == "sinusoidal_half":
        x = x + sinusoid(pos, c.d, half=True)[None]
    pre = c.norm_position == "pre"
    cross = enc is not None
    epos = torch.arange(enc.shape[1]) if cross else None
    carried = {} if c.residual else None
    x = drop(x, 0, 3)
    for i in range(c.n_layers):
        L = f"{S}layers.{i}."
        if pre:
            x = x + drop(_attention(m, S, L, "attn", _norm(m, L + "attn_norm", x),
                                    _norm(m, L + "attn_norm", x), pos, pos, causal, carried,
                                    other_doc), i, 0)
            if cross:
                x = x + drop(_attention(m, S, L, "cross_attn", _norm(m, L + "cross_norm", x), enc,
                                        pos, epos, False), i, 1)
            x = x + drop(_ffn(m, L, _norm(m, L + "ffn_norm", x)), i, 2)
        else:
            x = _norm(m, L + "attn_norm",
                      x + drop(_attention(m, S, L, "attn", x, x, pos, pos, causal, carried,
                                          other_doc), i, 0))
            if cross:
                x = _norm(m, L + "cross_norm",
                          x + drop(_attention(m, S, L, "cross_attn", x, enc, pos, epos, False),
                                   i, 1))
            x = _norm(m, L + "ffn_norm", x + drop(_ffn(m, L, x), i, 2))
    if pre:
        x = _norm(m, S + "final_norm", x)
    return x


def forward(model: Model, tokens, pos_offset: int = 0, src=None, segments=None,
            dropout_seed=None):
    c = model.c
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() == 1:
        tokens = tokens[None]
    if c.arch == "encoder":
        h = _stack(model, "encoder.", tokens, pos_offset, causal=False, segments=segments,
                   dropout_seed=dropout_seed)
    elif c.arch == "decoder":
        h = _stack(model, "decoder.", tokens, pos_offset, causal=True, segments=segments,
                   dropout_seed=dropout_seed)
    elif c.arch == "encoder_decoder":
        if src is None:
            raise ValueError("encoder_decoder needs src tokens")
        src = torch.as_tensor(src, dtype=torch.long)
        if src.dim() == 1:
            src = src[None]
        enc = _stack(model, "encoder.", src, 0, causal=False, dropout_seed=dropout_seed)
        h = _stack(model, "decoder.", tokens, pos_offset, causal=True, enc=enc, segments=segments,
                   dropout_seed=dropout_seed)
    else:
        raise ValueError(f"unknown arch {c.arch}")
    logits = None
    if c.head == "lm":
        W = model.w["embed.weight"] if c.tie_embeddings else model.w["lm_head.weight"]
        logits = h @ W.T
    return h, logits
