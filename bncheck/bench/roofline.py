"""The yardstick a BN layer's time is set against: the bytes one BN call must at least move (`bn_min_bytes`) and the
device's copy bandwidth (`copy_bandwidth`: a large `dst.copy_(src)`, read + write counted, in the case's dtype)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bncheck.bench.timing import synchronizer, timer
from bncheck.bench.workloads import MODES
from bncheck.core.discover import is_frozen
from bncheck.core.errors import BNCheckUsageError
from bncheck.core.threads import num_threads

# By (cpu|gpu, quick): larger than any cache of the machines here; quick (CI) copies less.
DEFAULT_COPY_BYTES = {("cpu", False): 64 << 20, ("cpu", True): 32 << 20,
                      ("gpu", False): 512 << 20, ("gpu", True): 64 << 20}
VECTOR_BYTES = 4  # γ, β, running and saved statistics are float32 (also for float16/bfloat16 input)


def default_copy_bytes(device: torch.device, quick: bool = False) -> int:
    return DEFAULT_COPY_BYTES[("cpu" if device.type == "cpu" else "gpu", quick)]


def copy_bandwidth(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, nbytes: int | None = None,
                   *, min_run_time: float = 0.2) -> float:
    """Bytes/s of `dst.copy_(src)` for two `nbytes` tensors on `device`, counting the read and the write
    (2·nbytes per copy): the roofline a memory-bound op like BN is compared with. Median of
    `blocked_autorange`; the tensors are freed before returning."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = default_copy_bytes(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    n = max(1, nbytes // itemsize)
    src = torch.ones(n, dtype=dtype, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # first touch (page faults) outside the measurement
    sync = synchronizer(device)
    sync()
    m = timer(lambda: dst.copy_(src), sync, "copy").blocked_autorange(min_run_time=min_run_time)
    return 2 * n * itemsize / m.median


@dataclass
class Roofline:
    """The copy bandwidth of one (device, dtype), measured once on first use (on `threads` CPU threads, None: the
    caller's count, as the cases it is shared by) and shared by the cases of a run."""

    device: torch.device
    dtype: torch.dtype
    nbytes: int
    min_run_time: float = 0.2
    value: float | None = None
    threads: int | None = None

    @property
    def bytes_per_s(self) -> float:
        if self.value is None:
            with num_threads(self.threads):
                self.value = copy_bandwidth(self.device, self.dtype, self.nbytes, min_run_time=self.min_run_time)
        return self.value


def bn_min_bytes(x: torch.Tensor | tuple[int, ...], mode: str, *, dtype: torch.dtype | None = None,
                 affine: bool = True, running_stats: bool = True, batch_stats: bool = True) -> int:
    """The bytes one BN call must at least move between memory and the chip: a lower bound (a fused single
    pass, every byte touched once), so bytes/s from it is what the op achieves at the least.

    X = numel·itemsize of the input (x, or a shape with `dtype`); C channels; vectors are float32 (4 B each).
    - forward_eval:  read x, write y = 2X; read γ, β, running mean, running var (those present).
    - forward_train: read x (at least once: the statistics need it before y can be written, so a real kernel
      reads it twice unless x stays in cache), write y = 2X; read γ, β; read and write running mean and var;
      write the saved mean and inverse std.
    - backward (of train mode): read x and dy, write dx = 3X; read γ and the saved mean and inverse std; write
      dγ, dβ. When the layer normalizes with fixed statistics (`batch_stats=False`: a frozen BN), dx = dy·scale
      needs no x: read dy, write dx = 2X, read the per-channel scale.
    Memory format and layout do not change the count.
    """
    if isinstance(x, torch.Tensor):
        shape, itemsize = tuple(x.shape), x.element_size()
    else:
        shape, itemsize = tuple(x), torch.empty((), dtype=dtype or torch.float32).element_size()
    if len(shape) < 2:
        raise BNCheckUsageError(f"BN input must be (N, C, *), got shape {shape}")
    big = math.prod(shape) * itemsize
    c = shape[1]
    if mode == "forward_eval":
        tensors, vectors = 2, 2 * affine + 2 * running_stats
    elif mode == "forward_train":
        tensors, vectors = 2, 2 * affine + 4 * running_stats + 2
    elif mode == "backward":
        if batch_stats:
            tensors, vectors = 3, affine + 2 + 2 * affine
        else:
            tensors, vectors = 2, 1
    else:
        raise BNCheckUsageError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
    return tensors * big + vectors * c * VECTOR_BYTES


def layer_min_bytes(bn: nn.Module | None, x: torch.Tensor | None, mode: str, dtype: torch.dtype) -> int | None:
    """bn_min_bytes of layer `bn` on `x` in `mode`, with the vectors the layer has; None without a BN layer or a
    floating-point (N, C, *) input."""
    if bn is None or x is None or x.dim() < 2 or not x.is_floating_point():
        return None
    return bn_min_bytes(tuple(x.shape), mode, dtype=dtype, affine=getattr(bn, "weight", None) is not None,
                       running_stats=getattr(bn, "running_mean", None) is not None, batch_stats=not is_frozen(bn))
