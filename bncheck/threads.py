"""How many CPU threads torch uses while bncheck works: one, restored afterwards."""

import contextlib
import functools

import torch


@contextlib.contextmanager
def one_thread():
    """torch's intra-op CPU threads set to 1 inside the block, the caller's count restored after.

    bncheck's tensors are small (probes, one captured batch): extra threads only add synchronization, which on a
    busy machine (pytest -n 2 on 2 cores) made the per-layer checks of resnet50 13x slower (40 s vs 3 s)."""
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
