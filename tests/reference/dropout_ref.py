"""posformer's dropout masks, written from docs/training.md ("Regularisation") with numpy, for
the twins: element i of a site keyed `key` is kept iff the top 24 bits of the i-th output of a
splitmix64 stream started at `key` are >= round(p 2^24); kept elements are scaled by 1/(1-p).
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
    """[n] float64: 0 (dropped) or 1/(1-p) (kept)."""
    with np.errstate(over="ignore"):
        i = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(key) + i * np.uint64(GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    u = z >> np.uint64(40)
    keep = u >= np.uint64(round(p * 16777216.0))
    return torch.from_numpy(keep.astype(np.float64)) / (1.0 - p)


def apply(x: torch.Tensor, p: float, seed: int, stack: str, layer: int, sub: int) -> torch.Tensor:
    """x [B, T, d] (any float dtype): dropped as the engine drops its [B*T, d] buffer."""
    if p == 0:
        return x
    m = mask(site_key(seed, stack, layer, sub), x.numel(), p).to(x.dtype).reshape(x.shape)
    return x * m
