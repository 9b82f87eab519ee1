"""What a case runs: the modes and memory formats, and the function to time that a case's `setup` builds from a
private copy of the module (never the user's object) and a fresh copy of its input."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from bncheck.core.errors import BNCheckSkip, BNCheckUsageError
from bncheck.core.state import clone, materialized
from bncheck.core.tolerances import LOW_PRECISION

MODES = ("forward_train", "forward_eval", "backward")
MEMORY_FORMATS = ("contiguous", "channels_last")


def checked_modes(modes: Iterable[str] | None) -> tuple[str, ...]:
    """`modes` (None: all of MODES) as a tuple; raises BNCheckUsageError for none or one that is not a mode."""
    modes = tuple(modes) if modes is not None else MODES
    if not modes:
        raise BNCheckUsageError(f"expected one or more of {', '.join(MODES)}")
    for m in modes:
        if m not in MODES:
            raise BNCheckUsageError(f"mode {m!r}: expected one of {', '.join(MODES)}")
    return modes


def checked_formats(memory_formats: Iterable[str] | None) -> tuple[str, ...]:
    """`memory_formats` (None: all of MEMORY_FORMATS) as a tuple; raises BNCheckUsageError for none or an unknown
    one."""
    formats = tuple(memory_formats) if memory_formats is not None else MEMORY_FORMATS
    if not formats:
        raise BNCheckUsageError(f"expected one or more of {', '.join(MEMORY_FORMATS)}")
    for f in formats:
        memory_format_for(f, 4)  # validates the name
    return formats


def memory_format_for(name: str, ndim: int) -> torch.memory_format | None:
    """torch's memory format for `name` on an `ndim`-D tensor; None when it does not apply (channels_last: 4-D
    and 5-D only)."""
    if name == "contiguous":
        return torch.contiguous_format
    if name == "channels_last":
        return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)
    raise BNCheckUsageError(f"memory format {name!r}: expected one of {', '.join(MEMORY_FORMATS)}")


def inputs_tuple(example) -> tuple:
    """The example input as the positional arguments of a forward call."""
    return example if isinstance(example, tuple) else (example,)


def first_tensor(example) -> torch.Tensor:
    for t in inputs_tuple(example):
        if isinstance(t, torch.Tensor):
            return t
    raise BNCheckUsageError("the example input holds no tensor")


def _prepare(t, device, dtype, fmt):
    """An input tensor on `device`, floating ones cast to `dtype` (None: kept), 4-D/5-D ones in `fmt`; a fresh
    tensor."""
    if not isinstance(t, torch.Tensor):
        return t
    dtype = dtype if dtype is not None and t.is_floating_point() else t.dtype
    t = t.detach().to(device=device, dtype=dtype, copy=True)
    return t.contiguous(memory_format=fmt) if t.dim() in (4, 5) else t


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype in LOW_PRECISION:
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def _private_copy(module: nn.Module, example, device, dtype, fmt) -> nn.Module:
    """`module` cloned onto `device`, Lazy parameters materialized, cast to `dtype` (float16/bfloat16: kept
    float32, as under autocast) and to `fmt`."""
    work = materialized(clone(module).to(device),
                        tuple(_prepare(t, device, None, torch.contiguous_format) for t in inputs_tuple(example)))
    if dtype not in LOW_PRECISION:
        work.to(dtype)
    if fmt is not torch.contiguous_format:
        work.to(memory_format=fmt)
    return work


def case_setup(module: nn.Module, example, mode: str, device: torch.device, dtype: torch.dtype,
               fmt: torch.memory_format, *, wrt_inputs: bool,
               skip: str | None = None) -> Callable[[], Callable[[], object]]:
    """A case's `setup`: when called, it builds the private copy and the input and returns the function to time
    (or raises BNCheckSkip with `skip`).

    - forward_train: `module.train()`, autograd on (the graph a training step records), output discarded;
    - forward_eval: `module.eval()` under `torch.no_grad()`;
    - backward: `torch.autograd.grad` of the train-mode output (grad_output = ones) with respect to the
      parameters that require grad (and the input too with `wrt_inputs`, or when nothing else does),
      `retain_graph=True`, so only the backward pass is timed.
    float32/float64 cast the copy and input to `dtype`; float16/bfloat16 are mixed precision as in training: the
    copy keeps float32 parameters and runs under `torch.autocast` (a lone BN layer then gets its input in the low
    dtype and keeps float32 γ/β/statistics, exactly what it sees inside an autocast model).
    """
    def setup():
        if skip:
            raise BNCheckSkip(skip)
        work = _private_copy(module, example, device, dtype, fmt)
        xs = tuple(_prepare(t, device, dtype, fmt) for t in inputs_tuple(example))
        work.train(mode != "forward_eval")
        if mode == "backward":
            return _backward_fn(work, xs, device, dtype, wrt_inputs=wrt_inputs)
        grad_mode = torch.enable_grad if mode == "forward_train" else torch.no_grad

        def fn():
            with grad_mode(), _autocast(device, dtype):
                work(*xs)
        return fn
    return setup


def _backward_fn(work: nn.Module, xs: tuple, device, dtype, *, wrt_inputs: bool):
    params = [p for p in work.parameters() if p.requires_grad]
    inputs = [t for t in xs if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if wrt_inputs or not params:
        for t in inputs:
            t.requires_grad_(True)
    else:
        inputs = []
    wrt = inputs + params
    if not wrt:
        raise BNCheckSkip("backward: nothing requires grad (no floating-point input, no trainable parameter)")
    with torch.enable_grad(), _autocast(device, dtype):
        out = work(*xs)
    outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad]
    if not outs:
        raise BNCheckSkip("backward: no output requires grad")
    grads = [torch.ones_like(t) for t in outs]

    def fn():
        return torch.autograd.grad(outs, wrt, grads, retain_graph=True, allow_unused=True)
    return fn
