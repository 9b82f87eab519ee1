"""How many CPU threads torch uses while bncheck works: one (the checks) or the count asked for (the benchmarks),
the caller's count restored afterwards."""

import contextlib
import functools

import torch


@contextlib.contextmanager
def num_threads(count: int | None):
    """torch's intra-op CPU threads set to `count` inside the block (None: left as they are), the caller's count
    restored after."""
    saved = torch.get_num_threads()
    changed = count is not None and count != saved
    if changed:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        if changed:
            torch.set_num_threads(saved)


@contextlib.contextmanager
def one_thread():
    """torch's intra-op CPU threads set to 1 inside the block, the caller's count restored after.

    bncheck's tensors are small (probes, one captured batch): extra threads only add synchronization. With a
    busy neighbour on a 2-core machine (as under pytest -n 2) the per-layer checks of resnet50 took 14.1 s on
    2 threads vs 3.7 s on one (docs/PERFORMANCE.md)."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


def single_threaded(check):
    """Decorator: run `check` inside one_thread()."""
    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        with one_thread():
            return check(*args, **kwargs)
    return wrapper
