"""Throughput benchmarks a GPU engineer can trust: forward (train, eval) and backward of a model and of each of
its BN layers, each BN layer against the copy roofline measured in the same run.

How a time is taken (`measure`): the case builds a private copy of the model or layer (`bncheck.core.state.clone`,
never the user's object) and its fixed-shape input, runs it `warmup` times, then times it with
`torch.utils.benchmark.Timer.blocked_autorange`: blocks of N calls, the device synchronized by the clock at the
start and end of each block only, N grown until the synchronize and clock cost is ≤ 0.01 % of a block. The
figure is the median time per call. A synchronize per call would add its cost (µs) to every short kernel;
none at all (pytest-benchmark's default timer) times the launches, not the kernels.

Figures (`Result`): seconds per call; samples/s = batch size / time; for a BN layer (or a model that is one)
bytes/s = `bn_min_bytes` / time and that as a fraction of the device's copy bandwidth (`copy_bandwidth`: a
large `dst.copy_(src)`, read + write counted, in the case's dtype).

What is run (`benchmark_cases`), for the chosen dtype and each memory format that applies:
- forward_train: `module.train()`, autograd on (the graph a training step records), output discarded;
- forward_eval: `module.eval()` under `torch.no_grad()`;
- backward: `torch.autograd.grad` of the train-mode output (grad_output = ones) with respect to the
  parameters that require grad (a model; the input too for a BN layer), `retain_graph=True`, so only the
  backward pass is timed.
float32/float64 cast the copy and input to that dtype; float16/bfloat16 are mixed precision as in training:
the model copy keeps float32 parameters and runs under `torch.autocast`, a BN layer gets its input in the low
dtype and keeps float32 γ/β/statistics (exactly what it sees inside an autocast model).
channels_last applies to 4-D (channels_last) and 5-D (channels_last_3d) inputs.

Left as found: the user's model (only clones run), `torch.backends.cudnn.benchmark` (set for the run, restored
in a finally), the CPU/CUDA RNG (`bncheck.core.state.private_rng`), torch's thread count, and device memory (every
tensor a case allocates is released when its measurement ends; only the caching allocator keeps its cache).

Without pytest: `python -m bncheck bench SPEC --input-shape 3,224,224` (bncheck.frontends.bench_cli).
"""

from __future__ import annotations

import contextlib
import math
import timeit
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from bncheck.core.discover import find_batchnorms, is_frozen
from bncheck.core.errors import BNCheckSkip, BNCheckUsageError
from bncheck.core.state import clone, materialized, private_rng
from bncheck.core.tolerances import LOW_PRECISION, dtype_name

MODES = ("forward_train", "forward_eval", "backward")
MEMORY_FORMATS = ("contiguous", "channels_last")
MODEL = "model"  # the target name of whole-model cases

# Quick mode (CI): short measurements and a smaller (still larger than any CPU cache here) roofline copy.
DEFAULT_MIN_RUN_TIME = {False: 0.2, True: 0.01}
DEFAULT_WARMUP = {False: 10, True: 1}
DEFAULT_COPY_BYTES = {("cpu", False): 64 << 20, ("cpu", True): 32 << 20,
                      ("gpu", False): 512 << 20, ("gpu", True): 64 << 20}
VECTOR_BYTES = 4  # γ, β, running and saved statistics are float32 (also for float16/bfloat16 input)


def memory_format_for(name: str, ndim: int) -> torch.memory_format | None:
    """torch's memory format for `name` on an `ndim`-D tensor; None when it does not apply."""
    if name == "contiguous":
        return torch.contiguous_format
    if name == "channels_last":
        return {4: torch.channels_last, 5: torch.channels_last_3d}.get(ndim)
    raise BNCheckUsageError(f"memory format {name!r}: expected one of {', '.join(MEMORY_FORMATS)}")


def synchronizer(device: torch.device | str) -> Callable[[], None]:
    """A zero-argument function that waits until `device` has finished all queued work (a no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cpu":
        return _no_sync
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    backend = getattr(torch, device.type, None)
    if backend is None or not hasattr(backend, "synchronize"):
        raise BNCheckUsageError(f"cannot synchronize device {device}: torch.{device.type}.synchronize is missing")
    return backend.synchronize


def _no_sync() -> None:
    return None


def _clock(synchronize: Callable[[], None]) -> Callable[[], float]:
    """torch.utils.benchmark's clock, but synchronizing the case's own device (not just the current one)."""
    if synchronize is _no_sync:
        return timeit.default_timer

    def clock() -> float:
        synchronize()
        return timeit.default_timer()
    return clock


def timer(fn: Callable[[], object], synchronize: Callable[[], None], label: str = "") -> torch.utils.benchmark.Timer:
    """A torch.utils.benchmark.Timer of `fn()` whose clock calls `synchronize` (the case's device) first, on the
    caller's thread count; `.blocked_autorange()` then times blocks of calls as the module docstring says."""
    from torch.utils.benchmark import Timer

    return Timer("fn()", globals={"fn": fn}, timer=_clock(synchronize), num_threads=torch.get_num_threads(),
                 label=label)


# ---------------------------------------------------------------------------------------------------- roofline

def copy_bandwidth(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, nbytes: int | None = None,
                   *, min_run_time: float = 0.2) -> float:
    """Bytes/s of `dst.copy_(src)` for two `nbytes` tensors on `device`, counting the read and the write
    (2·nbytes per copy): the roofline a memory-bound op like BN is compared with. Median of
    `blocked_autorange`; the tensors are freed before returning."""
    device = torch.device(device)
    if nbytes is None:
        nbytes = DEFAULT_COPY_BYTES[("cpu" if device.type == "cpu" else "gpu", False)]
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
    """The copy bandwidth of one (device, dtype), measured once on first use and shared by the cases of a run."""

    device: torch.device
    dtype: torch.dtype
    nbytes: int
    min_run_time: float = 0.2
    value: float | None = None

    @property
    def bytes_per_s(self) -> float:
        if self.value is None:
            self.value = copy_bandwidth(self.device, self.dtype, self.nbytes, min_run_time=self.min_run_time)
        return self.value


# ---------------------------------------------------------------------------------------------------- byte model

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


# ---------------------------------------------------------------------------------------------------- cases

@dataclass(frozen=True)
class BenchCase:
    """One thing to time. `setup()` builds a private copy (never the user's model) and returns the zero-argument
    function to time; it may raise BNCheckSkip. `synchronize()` waits for the case's device. `samples` and
    `min_bytes` (BN targets only) turn a time into figures."""

    name: str
    target: str  # MODEL or a BN layer's qualified name
    mode: str
    setup: Callable[[], Callable[[], object]]
    synchronize: Callable[[], None] = _no_sync
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    memory_format: str = "contiguous"
    shape: tuple[int, ...] = ()
    samples: int = 1
    min_bytes: int | None = None
    roofline: Roofline | None = None
    min_run_time: float = 0.2
    warmup: int = 10
    cudnn_benchmark: bool | None = True  # None: leave torch.backends.cudnn.benchmark as it is

    @property
    def layer(self) -> str | None:
        """The BN layer's name; None for a whole-model case."""
        return None if self.target == MODEL else self.target

    def info(self) -> dict:
        """What was run, JSON-ready (pytest-benchmark's extra_info, `--json`)."""
        return {"target": self.target, "mode": self.mode, "dtype": dtype_name(self.dtype),
                "memory_format": self.memory_format, "device": str(self.device), "shape": list(self.shape),
                "samples": self.samples, "min_bytes": self.min_bytes, "cudnn_benchmark": cudnn_flag(self),
                "num_threads": torch.get_num_threads(), "torch": torch.__version__}


def cudnn_flag(case: BenchCase) -> bool:
    """The torch.backends.cudnn.benchmark value the case runs with."""
    return torch.backends.cudnn.benchmark if case.cudnn_benchmark is None else case.cudnn_benchmark


def case_name(mode: str, target: str, dtype: torch.dtype, memory_format: str) -> str:
    """The stable id: bench_forward_train[layer1.0.bn1|float32|channels_last]."""
    return f"bench_{mode}[{target}|{dtype_name(dtype)}|{memory_format}]"


def _inputs_tuple(example) -> tuple:
    return example if isinstance(example, tuple) else (example,)


def _first_tensor(example) -> torch.Tensor:
    for t in _inputs_tuple(example):
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
                        tuple(_prepare(t, device, None, torch.contiguous_format) for t in _inputs_tuple(example)))
    if dtype not in LOW_PRECISION:
        work.to(dtype)
    if fmt is not torch.contiguous_format:
        work.to(memory_format=fmt)
    return work


def _setup(module: nn.Module, example, mode: str, device, dtype, fmt, *, wrt_inputs: bool, skip: str | None = None):
    """A case's `setup`: builds the private copy and the input, and returns the function to time."""
    def setup():
        if skip:
            raise BNCheckSkip(skip)
        work = _private_copy(module, example, device, dtype, fmt)
        xs = tuple(_prepare(t, device, dtype, fmt) for t in _inputs_tuple(example))
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


def _bytes_kwargs(layer: nn.Module) -> dict:
    return {"affine": getattr(layer, "weight", None) is not None,
            "running_stats": getattr(layer, "running_mean", None) is not None,
            "batch_stats": not is_frozen(layer)}


@dataclass(frozen=True)
class _Plan:
    """benchmark_cases' arguments, validated and with their defaults: what every case of one call shares."""

    device: torch.device
    dtype: torch.dtype
    modes: tuple[str, ...]
    formats: tuple[str, ...]
    synchronize: Callable[[], None]
    roofline: Roofline
    min_run_time: float
    warmup: int
    cudnn_benchmark: bool | None

    def case(self, target: str, mode: str, fmt_name: str, setup: Callable[[], Callable[[], object]],
             **figures) -> BenchCase:
        """The BenchCase of `target` in `mode` and memory format `fmt_name`, with this plan's settings."""
        return BenchCase(case_name(mode, target, self.dtype, fmt_name), target, mode, setup, memory_format=fmt_name,
                         synchronize=self.synchronize, device=self.device, dtype=self.dtype, roofline=self.roofline,
                         min_run_time=self.min_run_time, warmup=self.warmup, cudnn_benchmark=self.cudnn_benchmark,
                         **figures)


def _plan(example_input, device, dtype, memory_formats, modes, *, quick: bool, min_run_time, warmup,
          cudnn_benchmark, roofline, copy_nbytes) -> _Plan:
    """benchmark_cases' settings checked and completed (quick: CI defaults); raises BNCheckUsageError on a bad one."""
    device = torch.device(device) if device is not None else _first_tensor(example_input).device
    if isinstance(dtype, str):
        from bncheck.core.spec import parse_dtype
        dtype = parse_dtype(dtype)
    modes = _checked_modes(modes)
    formats = _checked_formats(memory_formats)
    min_run_time = DEFAULT_MIN_RUN_TIME[quick] if min_run_time is None else min_run_time
    warmup = DEFAULT_WARMUP[quick] if warmup is None else warmup
    if roofline is None:
        nbytes = copy_nbytes or DEFAULT_COPY_BYTES[("cpu" if device.type == "cpu" else "gpu", quick)]
        roofline = Roofline(device, dtype, nbytes, min_run_time=max(min_run_time, 0.05))
    return _Plan(device, dtype, modes, formats, synchronizer(device), roofline, min_run_time, warmup,
                 cudnn_benchmark)


def _checked_modes(modes: Iterable[str]) -> tuple[str, ...]:
    modes = tuple(modes)
    for m in modes:
        if m not in MODES:
            raise BNCheckUsageError(f"mode {m!r}: expected one of {', '.join(MODES)}")
    return modes


def _checked_formats(memory_formats: Iterable[str] | None) -> tuple[str, ...]:
    formats = tuple(memory_formats) if memory_formats is not None else MEMORY_FORMATS
    for f in formats:
        memory_format_for(f, 4)  # validates the name
    return formats


@dataclass(frozen=True, eq=False)
class _Target:
    """One thing benchmark_cases times in every mode and memory format: the model or one of its BN layers."""

    name: str  # MODEL or the layer's qualified name
    module: nn.Module
    example: object  # its input, a tensor or tuple; None for a layer the forward pass never called
    bn: nn.Module | None  # the BN layer whose byte model gives it BN figures
    skip: str | None  # why none of its cases can run
    train_skip: str | None  # why its train-mode cases (forward_train, backward) cannot run


def _targets(model: nn.Module, example_input, layers: Iterable[str] | None,
             inputs: dict[str, torch.Tensor] | None) -> list[_Target]:
    """The whole model, then each selected BN layer with its captured input (captured here unless `inputs` is
    given); raises BNCheckUsageError for a name in `layers` that is not a BN layer."""
    bns = find_batchnorms(model)
    wanted = _wanted_layers(bns, layers)
    if inputs is None and bns:
        inputs = layer_inputs(model, example_input)
    inputs = inputs or {}
    # A train-mode forward raises on a BN that sees one value per channel: those cases skip, saying which layer.
    too_small = {n: tuple(x.shape) for n, x in inputs.items() if not is_frozen(bns[n]) and x.numel() <= x.shape[1]}
    first = next(iter(too_small.items()), None)
    # A model that is itself a BN layer also gets BN figures (and no separate layer case).
    targets = [_Target(MODEL, model, example_input, bns.get(""), None, first and (
        f"model: train mode needs more than 1 value per channel, BN layer {first[0]!r} gets {first[1]}"))]
    for name in wanted:
        x = inputs.get(name)
        targets.append(_Target(
            name, bns[name], x, bns[name],
            None if x is not None else f"{name} was not called in the forward pass on the example input",
            name in too_small and f"{name}: train mode needs more than 1 value per channel, its input is "
                                  f"{too_small[name]}" or None))
    return targets


def _wanted_layers(bns: dict[str, nn.Module], layers: Iterable[str] | None) -> list[str]:
    """The names of the BN layers to benchmark (`layers`: None = all), in model order."""
    if layers is not None:
        layers = set(layers)
        unknown = sorted(layers - set(bns))
        if unknown:
            raise BNCheckUsageError(f"--layers: no BN layer named {', '.join(map(repr, unknown))}; the model's BN "
                                    f"layers are {', '.join(n for n in bns if n) or 'none'}")
    return [n for n in bns if n and (layers is None or n in layers)]


def _target_cases(target: _Target, plan: _Plan) -> list[BenchCase]:
    """The cases of `target`: one per mode in each memory format that applies to its input."""
    x = _first_tensor(target.example) if target.example is not None else None
    shape = tuple(x.shape) if x is not None else ()
    cases = []
    for fmt_name in plan.formats:
        fmt = memory_format_for(fmt_name, x.dim() if x is not None else 2)
        if fmt is None:
            continue
        for mode in plan.modes:
            setup = _setup(target.module, target.example, mode, plan.device, plan.dtype, fmt,
                           wrt_inputs=target.name != MODEL,
                           skip=target.skip or (target.train_skip if mode != "forward_eval" else None))
            cases.append(plan.case(target.name, mode, fmt_name, setup, shape=shape,
                                   samples=int(shape[0]) if shape else 1,
                                   min_bytes=_min_bytes(target.bn, x, mode, plan.dtype)))
    return cases


def _min_bytes(bn: nn.Module | None, x: torch.Tensor | None, mode: str, dtype: torch.dtype) -> int | None:
    """bn_min_bytes of `bn` on `x` in `mode`; None without a BN layer or a floating-point (N, C, *) input."""
    if bn is None or x is None or x.dim() < 2 or not x.is_floating_point():
        return None
    return bn_min_bytes(tuple(x.shape), mode, dtype=dtype, **_bytes_kwargs(bn))


def benchmark_cases(model: nn.Module, example_input, *, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32, memory_formats: Iterable[str] | None = None,
                    modes: Iterable[str] = MODES, layers: Iterable[str] | None = None, quick: bool = False,
                    min_run_time: float | None = None, warmup: int | None = None, cudnn_benchmark: bool | None = True,
                    inputs: dict[str, torch.Tensor] | None = None, roofline: Roofline | None = None,
                    copy_nbytes: int | None = None) -> list[BenchCase]:
    """Every benchmark of `model` on `example_input` (a tensor or tuple; its shape is fixed): for the model and
    each BN layer (`layers`: None = all, or the names to keep; the model itself is target "model"), for each mode
    and each memory format (default: contiguous, and channels_last for 4-D/5-D inputs).

    The user's model is only read: each case clones it (or the layer) when it is set up. A layer's input is its
    real input in one forward pass of a copy (`bncheck.capture`; pass `inputs` to reuse a capture), kept on the
    CPU until a case moves it to `device`. quick: short measurements and warm-up, for CI.
    """
    plan = _plan(example_input, device, dtype, memory_formats, modes, quick=quick, min_run_time=min_run_time,
                 warmup=warmup, cudnn_benchmark=cudnn_benchmark, roofline=roofline, copy_nbytes=copy_nbytes)
    return [case for target in _targets(model, example_input, layers, inputs)
            for case in _target_cases(target, plan)]


def layer_inputs(model: nn.Module, example_input) -> dict[str, torch.Tensor]:
    """Each BN layer's real input in one forward pass of a copy of `model` in eval mode (which, unlike train
    mode, accepts any batch size), on the CPU."""
    from bncheck.core.capture import capture

    return {n: t.detach().cpu() for n, t in capture(model, example_input, train=False).inputs.items()}


# ---------------------------------------------------------------------------------------------------- measuring

@contextlib.contextmanager
def environment(case: BenchCase):
    """The settings a measurement runs under, restored afterwards whatever happens: cudnn.benchmark (the case's
    value, or left as is when None) and the RNG state of the CPU and the case's CUDA device."""
    saved = torch.backends.cudnn.benchmark
    try:
        with private_rng(device=case.device):
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


@dataclass(frozen=True)
class Result:
    """The figures of one case. time_s is the median seconds per call; skipped holds the reason when the case
    could not run (and the figures are None)."""

    case: BenchCase
    time_s: float | None
    iqr_s: float | None = None
    samples_per_s: float | None = None
    bytes_per_s: float | None = None
    copy_bytes_per_s: float | None = None
    fraction_of_copy: float | None = None
    number_per_run: int | None = None
    runs: int | None = None
    skipped: str | None = None

    @property
    def name(self) -> str:
        return self.case.name

    @classmethod
    def of(cls, case: BenchCase, time_s: float, *, iqr_s: float | None = None, copy_bytes_per_s: float | None = None,
           number_per_run: int | None = None, runs: int | None = None) -> Result:
        bytes_per_s = case.min_bytes / time_s if case.min_bytes is not None else None
        fraction = bytes_per_s / copy_bytes_per_s if bytes_per_s is not None and copy_bytes_per_s else None
        return cls(case, time_s, iqr_s, case.samples / time_s, bytes_per_s, copy_bytes_per_s if bytes_per_s else None,
                   fraction, number_per_run, runs)

    def figures(self) -> dict:
        """JSON-ready figures (pytest-benchmark's extra_info, `--json`)."""
        return {"time_s": self.time_s, "iqr_s": self.iqr_s, "samples_per_s": self.samples_per_s,
                "bytes_per_s": self.bytes_per_s, "copy_bytes_per_s": self.copy_bytes_per_s,
                "fraction_of_copy": self.fraction_of_copy, "number_per_run": self.number_per_run, "runs": self.runs,
                "skipped": self.skipped}

    def row(self) -> dict:
        """The case's name, its layer (None: the model) and the figures: a table row, JSON-ready."""
        return {"name": self.name, "layer": self.case.layer, **self.figures()}

    def __repr__(self) -> str:
        if self.skipped:
            return f"<Result {self.name}: skipped ({self.skipped})>"
        extra = f", {self.bytes_per_s / 1e9:.1f} GB/s" if self.bytes_per_s else ""
        extra += f" = {self.fraction_of_copy:.2f} of copy" if self.fraction_of_copy else ""
        return f"<Result {self.name}: {fmt_time(self.time_s)}, {self.samples_per_s:.1f} samples/s{extra}>"


def copy_figure(case: BenchCase) -> float | None:
    """The copy bandwidth (bytes/s) a BN case is set against, measured once per roofline; None for a case
    without a roofline (a model, or a case with no byte count)."""
    if case.min_bytes is None or case.roofline is None:
        return None
    return case.roofline.bytes_per_s


def measure(case: BenchCase, *, min_run_time: float | None = None) -> Result:
    """Time `case` with torch.utils.benchmark's `blocked_autorange` (see the module docstring) and turn the
    median into figures. A case that cannot run returns a skipped Result."""
    try:
        copy = copy_figure(case)  # measured (once per roofline) before the case allocates anything
        with prepared(case) as fn:
            m = timer(fn, case.synchronize, case.name).blocked_autorange(
                min_run_time=case.min_run_time if min_run_time is None else min_run_time)
            del fn  # the case's tensors die with the `with` block, not with this frame
    except BNCheckSkip as exc:
        return Result(case, None, skipped=str(exc))
    return Result.of(case, m.median, iqr_s=m.iqr, copy_bytes_per_s=copy, number_per_run=m.number_per_run,
                     runs=len(m.raw_times))


def fmt_time(s: float | None) -> str:
    """Seconds as a short human figure: 1.2 ms, 340 us."""
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"
