"""posformer's dropout masks, written from docs/training.md ("Regularisation") and
include/posformer/ops/dropout.h with numpy, for the twins: element i of a site keyed `key` is
kept iff bits 8..31 of a murmur3-finaliser hash of (i, key) are >= round(p 2^24); kept elements
are scaled by 1/(1-p).
A site's key mixes the step's seed with (stack, layer, sublayer): sublayer 0 self-attention,
1 cross-attention, 2 FFN, 3 the stack's input embeddings; stack 0 = encoder, 1 = decoder."""
import numpy as np
import torch

M64 = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15


def _mix(z):
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & M64
    return z ^ (z >> 31)


def site_key(seed: int, stack: str, layer: int, sub: int) -> int:
    site = ((0 if stack == "encoder." else 1) << 32 | layer) * 4 + sub
    state = (seed ^ (site * 0xD1B54A32D192ED03 & M64)) & M64
    return _mix((state + GOLDEN) & M64)  # one splitmix64 draw from that state


def mask(key: int, n: int, p: float) -> torch.Tensor:
    """[n] float64: 0 (dropped) or 1/(1-p) (kept). k1, k2 = the key's low and high 32 bits;
    u_i = fmix32(fmix32(i * 0x9e3779b9 ^ k1) ^ k2) >> 8, kept iff u_i >= round(p 2^24)."""
    def fmix32(h):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(0x85EBCA6B)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(0xC2B2AE35)
        return h ^ (h >> np.uint32(16))

    k1, k2 = np.uint32(key & 0xFFFFFFFF), np.uint32(key >> 32)
    with np.errstate(over="ignore"):
        i = np.arange(n, dtype=np.uint32)
        h = fmix32(fmix32((i * np.uint32(0x9E3779B9)) ^ k1) ^ k2)
    keep = (h >> np.uint32(8)) >= np.uint32(round(p * 16777216.0))
    return torch.from_numpy(keep.astype(np.float64)) / (1.0 - p)


def apply(x: torch.Tensor, p: float, seed: int, stack: str, layer: int, sub: int) -> torch.Tensor:
    """x [B, T, d] (any float dtype): dropped as the engine drops its [B*T, d] buffer."""
    if p == 0:
        return x
    m = mask(site_key(seed, stack, layer, sub), x.numel(), p).to(x.dtype).reshape(x.shape)
    return x * m
