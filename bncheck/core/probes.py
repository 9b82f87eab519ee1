"""The one place that builds probe inputs: batches shaped to make every BN constant and convention visible."""

import functools
from dataclasses import dataclass

import torch

# (batch, spatial) per input rank: N differs from the spatial size so reduction-dim mix-ups show.
_SHAPES = {2: (6, ()), 3: (3, (5,)), 4: (3, (5, 2)), 5: (3, (2, 3, 2))}


@dataclass(frozen=True)
class Probe:
    label: str
    x: torch.Tensor


def _channel_pattern(c: int, values: torch.Tensor) -> torch.Tensor:
    return values[torch.arange(c) % len(values)]


def probes(like: torch.Tensor, eps: float, seed: int = 0) -> list[Probe]:
    """Probe batches with `like`'s rank, channel count and device (float32, or float64 if `like` is):

    - offsets: large per-channel offsets (±100) and scales (0.5 to 4);
    - near-eps: zero-mean channels whose variance is 0.1, 1 and 10 times eps (eps inside the sqrt shows);
    - few-values: two values per channel, so the unbiased factor n/(n−1) = 2.
    """
    if like.dim() not in _SHAPES:
        return []
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    made = _made(like.dim(), like.shape[1], eps, seed)  # cached: hand out copies only
    return [Probe(label, t.to(device=like.device, dtype=dtype, copy=True)) for label, t in made]


@functools.lru_cache(maxsize=256)
def _made(rank: int, c: int, eps: float, seed: int) -> list[tuple[str, torch.Tensor]]:
    batch, spatial = _SHAPES[rank]
    gen = torch.Generator().manual_seed(seed)
    offset = _channel_pattern(c, torch.tensor([100.0, -40.0, 3.0, -100.0, 60.0, 0.0, 25.0]))
    scale = _channel_pattern(c, torch.tensor([0.5, 4.0, 1.5, 2.5, 1.0]))
    tiny = _channel_pattern(c, torch.tensor([0.1, 1.0, 10.0])) ** 0.5 * eps**0.5

    def shaped(n, sp, mean, std):
        shape = (n, c, *sp)
        view = (1, c, *([1] * len(sp)))
        z = torch.randn(shape, generator=gen, dtype=torch.float64)
        z = (z - z.mean([0, *range(2, z.dim())], keepdim=True)) / z.std([0, *range(2, z.dim())], keepdim=True)
        return mean.view(view) + std.view(view) * z

    ones = (1,) * len(spatial)
    made = {
        "offsets": shaped(batch, spatial, offset, scale),
        "near-eps": shaped(batch, spatial, torch.zeros(c), tiny),
        "few-values": shaped(2, ones, offset, scale),
    }
    return [(f"probe {name} {tuple(t.shape)}", t) for name, t in made.items()]
