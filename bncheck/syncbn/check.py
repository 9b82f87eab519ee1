"""assert_syncbn_matches: a synchronized BN run in `world_size` real processes (launch) gives, on every rank, what
one BN over the whole concatenated batch gives (compare); BNCheckSkip where the layer cannot run here."""

import pickle

import torch
from torch import nn

from bncheck.core.errors import BNCheckSkip, BNCheckUsageError, assertion_helper, one_line
from bncheck.core.state import clone
from bncheck.syncbn.compare import build_setup, compare, run_rank
from bncheck.syncbn.launch import RankError, launch

__all__ = ["GPU_ONLY_MESSAGE", "assert_syncbn_matches", "probed", "torch_syncbn_skip"]

GPU_ONLY_MESSAGE = "SyncBatchNorm expected input tensor to be on GPU"


def _uses_torch_syncbn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.SyncBatchNorm) for m in module.modules())


def _default_sample_shape(module: nn.Module, channels: int) -> tuple[int, ...]:
    if isinstance(module, nn.BatchNorm1d):
        return (channels, 5)
    if isinstance(module, nn.BatchNorm3d):
        return (channels, 2, 3, 2)
    return (channels, 3, 4)


def _channels(module: nn.Module) -> int | None:
    for key in ("num_features", "weight", "running_mean"):
        value = getattr(module, key, None)
        if isinstance(value, int):
            return value
        if isinstance(value, torch.Tensor) and value.dim() == 1:
            return value.shape[0]
    return None


def _check_arguments(module_factory, world_size: int, steps: int, timeout: float) -> None:
    """Raise BNCheckUsageError (one line) for a world_size or steps below 1, a timeout that is not positive, or a
    factory that cannot be pickled."""
    if world_size < 1:
        raise BNCheckUsageError(f"world_size must be at least 1, got {world_size}")
    if steps < 1:
        raise BNCheckUsageError(f"steps must be at least 1 (train steps per check), got {steps}")
    if not isinstance(timeout, int | float) or timeout <= 0:
        raise BNCheckUsageError(f"timeout must be a positive number of seconds, got {timeout}")
    try:
        pickle.dumps(module_factory)
    except Exception as exc:
        raise BNCheckUsageError(f"module_factory must be picklable, since every worker process calls it: use a "
                                f"module-level function or class, or functools.partial of one, not a lambda or a "
                                f"local function ({one_line(exc)})") from exc


def probed(module_factory) -> nn.Module:
    """A copy of the module the factory returns, to inspect and set state on (the factory may return a shared
    module)."""
    probe = module_factory()
    if not isinstance(probe, nn.Module):
        raise BNCheckUsageError(f"module_factory returned {type(probe).__name__}, expected an nn.Module")
    return clone(probe)


def _device_type(device, probe: nn.Module, label: str, world_size: int) -> str:
    """The device type the workers use, 'cpu' or 'cuda' (`device` None: 'cuda' for torch's nn.SyncBatchNorm when
    available); BNCheckSkip when the layer or the world size cannot run on it."""
    if device is None:
        device = "cuda" if _uses_torch_syncbn(probe) and torch.cuda.is_available() else "cpu"
    device = torch.device(device).type
    skip = torch_syncbn_skip(probe, device, label)
    if skip is not None:
        raise BNCheckSkip(skip)
    if device == "cuda" and torch.cuda.device_count() < world_size:
        raise BNCheckSkip(f"{label}: world_size {world_size} needs {world_size} CUDA device(s) (nccl, one process "
                          f"per GPU), found {torch.cuda.device_count()}")
    if device not in ("cpu", "cuda"):
        raise BNCheckUsageError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return device


def torch_syncbn_skip(probe: nn.Module, device: str, label: str) -> str | None:
    """Why the layer cannot be checked on `device` ('cpu' or 'cuda'): torch's nn.SyncBatchNorm rejects CPU input
    under a process group; None where it can."""
    if device != "cpu" or not _uses_torch_syncbn(probe):
        return None
    reason = "this machine has no CUDA device" if not torch.cuda.is_available() else "device='cpu' was asked for"
    return (f"{label}: torch's nn.SyncBatchNorm rejects CPU input under a process group ('{GPU_ONLY_MESSAGE} ...'), "
            f"and {reason}")


def _sample_shape(probe: nn.Module, sample_shape, label: str) -> tuple[int, ...]:
    """`sample_shape` as a tuple, or the default one for the layer's kind and number of channels."""
    if sample_shape is None:
        channels = _channels(probe)
        if channels is None:
            raise BNCheckUsageError(f"{label}: cannot tell the number of channels; pass sample_shape=(C, ...)")
        sample_shape = _default_sample_shape(probe, channels)
    return tuple(sample_shape)


def _batch_sizes(batch_sizes, world_size: int) -> list[int]:
    """The per-rank batch sizes (default 2, 3, 4, ...); BNCheckUsageError unless every rank gets samples."""
    batch_sizes = list(batch_sizes) if batch_sizes is not None else [2 + r for r in range(world_size)]
    if len(batch_sizes) != world_size or min(batch_sizes) < 1:
        raise BNCheckUsageError(f"batch_sizes must give a positive batch size for each of the {world_size} ranks, "
                                f"got {batch_sizes}")
    return batch_sizes


@assertion_helper
def assert_syncbn_matches(module_factory, world_size: int = 2, *, batch_sizes=None, sample_shape=None,
                          steps: int = 2, device=None, dtype: torch.dtype = torch.float32, timeout: float = 60.0,
                          seed: int = 0, name: str = "", start_method: str | None = None) -> None:
    """A synchronized BN over `world_size` real processes equals one BN on the concatenated global batch.

    module_factory: a picklable zero-argument callable returning the synchronized BN layer (a module-level
        function or class, or functools.partial of one); it is called once here and once in every worker. The
        module it returns here is only inspected (its state is set on a copy), so a factory may return a shared
        module.
    batch_sizes: per-rank batch sizes (default: unequal, 2, 3, 4, ...); each rank's data has its own per-channel
        mean and scale, so that averaging per-rank statistics shows.
    sample_shape: one sample's shape (C, *spatial), default (C, 3, 4), (C, 5) for BatchNorm1d, (C, 2, 3, 2) for
        BatchNorm3d; C from the layer's num_features.
    steps: train steps, each a forward and a backward with a random upstream gradient, followed (when the layer
        tracks running statistics) by an eval forward.
    device: "cpu" (gloo) or "cuda" (nccl, one process per GPU); default "cuda" for torch's nn.SyncBatchNorm when
        CUDA is available, else "cpu".
    timeout: seconds for the whole run; every worker is terminated, then killed, when it runs out.
    start_method: multiprocessing start method (default forkserver, which imports torch once, else spawn).

    Per rank and train step: the output, dx, dγ and dβ (each rank's own share, which DDP sums), running_mean,
    running_var and num_batches_tracked must match the float64 oracle on the whole batch within bncheck's
    tolerance for `dtype`; then the eval output. Raises BNCheckError naming the rank, the step, the quantity and
    the worst element; BNCheckSkip when torch's nn.SyncBatchNorm cannot run here (no GPU: it rejects CPU input);
    BNCheckUsageError (one line) for a factory that cannot be pickled, a world_size or steps below 1, a timeout
    that is not positive, or batch_sizes that leave a rank without samples.
    """
    _check_arguments(module_factory, world_size, steps, timeout)
    probe = probed(module_factory)
    label = name or type(probe).__name__
    device = _device_type(device, probe, label, world_size)
    sample_shape = _sample_shape(probe, sample_shape, label)
    setup = build_setup(probe, label, dtype, _batch_sizes(batch_sizes, world_size), sample_shape, steps, seed)
    try:
        got = launch(run_rank, world_size, payload=(module_factory, setup),
                     backend="nccl" if device == "cuda" else "gloo", timeout=timeout, start_method=start_method,
                     label=label)
    except RankError as exc:  # a GPU-only layer on the CPU: every rank says so, and it is a skip
        if GPU_ONLY_MESSAGE not in exc.message:
            raise
        raise BNCheckSkip(f"{label}: {exc.message} (torch's nn.SyncBatchNorm rejects CPU input under a process "
                          f"group)") from None
    compare(setup, got)
