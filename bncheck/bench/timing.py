"""How a case is timed: blocks of calls with the case's own device synchronized by the clock at each block's ends
only, after the case is built and warmed up under settings that are restored afterwards, whatever happens."""

from __future__ import annotations

import contextlib
import timeit
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from bncheck.core.errors import BNCheckUsageError
from bncheck.core.state import private_rng
from bncheck.core.threads import num_threads

if TYPE_CHECKING:
    from bncheck.bench.cases import BenchCase


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A zero-argument function that waits until `device` has finished all queued work (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cpu":
        return no_sync
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "synchronize"):
        raise BNCheckUsageError(f"cannot synchronize device {device}: torch.{device.type}.synchronize is missing")
    return backend.synchronize


def no_sync() -> None:
    """The CPU's synchronizer: its work is done when the call returns."""
    return None


def _clock(synchronize: Callable[[], None]) -> Callable[[], float]:
    """torch.utils.benchmark's clock, but synchronizing the case's own device (not just the current one)."""
    if synchronize is no_sync:
        return timeit.default_timer

    def clock() -> float:
        synchronize()
        return timeit.default_timer()
    return clock


def timer(fn: Callable[[], object], synchronize: Callable[[], None], label: str = "") -> torch.utils.benchmark.Timer:
    """A torch.utils.benchmark.Timer of `fn()` whose clock calls `synchronize` (the case's device) first, on the
    caller's thread count. Its `.blocked_autorange()` times blocks of N calls, N grown until the synchronize and
    clock cost is ≤ 0.01 % of a block, and its median is the time per call: a synchronize per call would add its
    cost (µs) to every short kernel, none at all (pytest-benchmark's own timer) would time the launches."""
    from torch.utils.benchmark import Timer

    return Timer("fn()", globals={"fn": fn}, timer=_clock(synchronize), num_threads=torch.get_num_threads(),
                 label=label)


@contextlib.contextmanager
def environment(case: BenchCase):
    """The settings a measurement runs under, restored afterwards whatever happens: cudnn.benchmark (the case's
    value, or left as is when None), torch's CPU thread count (case.threads, None: as is) and the RNG state of the
    CPU and the case's CUDA device."""
    saved = torch.backends.cudnn.benchmark
    try:
        with private_rng(device=case.device), num_threads(case.threads):
            if case.cudnn_benchmark is not None:
                torch.backends.cudnn.benchmark = case.cudnn_benchmark
            yield
    finally:
        torch.backends.cudnn.benchmark = saved


@contextlib.contextmanager
def prepared(case: BenchCase, *, warmup: int | None = None):
    """Inside `environment(case)`: the case's function, built and warmed up (then the device synchronized);
    every tensor it holds is released on exit."""
    with environment(case):
        fn = case.setup()
        try:
            for _ in range(case.warmup if warmup is None else warmup):
                fn()
            case.synchronize()
            yield fn
        finally:
            case.synchronize()
            del fn
