"""What is timed: `benchmark_cases` turns a model and its example input into BenchCases, the model and each of its BN
layers x mode x memory format, each naming itself stably and building its own private copy when set up."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from bncheck.bench.roofline import Roofline, default_copy_bytes, layer_min_bytes
from bncheck.bench.timing import no_sync, synchronizer
from bncheck.bench.workloads import MODES, case_setup, checked_formats, checked_modes, first_tensor, memory_format_for
from bncheck.core.discover import find_batchnorms, is_frozen
from bncheck.core.errors import BNCheckUsageError
from bncheck.core.tolerances import dtype_name

MODEL = "model"  # the target name of whole-model cases
# By quick: quick mode (CI) measures briefly.
DEFAULT_MIN_RUN_TIME = {False: 0.2, True: 0.01}
DEFAULT_WARMUP = {False: 10, True: 1}


@dataclass(frozen=True)
class BenchCase:
    """One thing to time. `setup()` builds a private copy (never the user's model) and returns the zero-argument
    function to time; it may raise BNCheckSkip. `synchronize()` waits for the case's device. `samples` and
    `min_bytes` (BN targets only) turn a time into figures."""

    name: str
    target: str  # MODEL or a BN layer's qualified name
    mode: str
    setup: Callable[[], Callable[[], object]]
    synchronize: Callable[[], None] = no_sync
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
    threads: int | None = None  # torch's CPU threads while timing; None: the caller's count

    @property
    def layer(self) -> str | None:
        """The BN layer's name; None for a whole-model case."""
        return None if self.target == MODEL else self.target

    def info(self) -> dict:
        """What was run, JSON-ready (pytest-benchmark's extra_info, `--json`)."""
        return {"target": self.target, "mode": self.mode, "dtype": dtype_name(self.dtype),
                "memory_format": self.memory_format, "device": str(self.device), "shape": list(self.shape),
                "samples": self.samples, "min_bytes": self.min_bytes, "cudnn_benchmark": cudnn_flag(self),
                "num_threads": case_threads(self), "torch": torch.__version__}


def cudnn_flag(case: BenchCase) -> bool:
    """The torch.backends.cudnn.benchmark value the case runs with."""
    return torch.backends.cudnn.benchmark if case.cudnn_benchmark is None else case.cudnn_benchmark


def case_threads(case: BenchCase) -> int:
    """The number of torch CPU threads the case is timed on."""
    return torch.get_num_threads() if case.threads is None else case.threads


def case_name(mode: str, target: str, dtype: torch.dtype, memory_format: str) -> str:
    """The stable id: bench_forward_train[layer1.0.bn1|float32|channels_last]."""
    return f"bench_{mode}[{target}|{dtype_name(dtype)}|{memory_format}]"


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
    threads: int | None

    def case(self, target: str, mode: str, fmt_name: str, setup: Callable[[], Callable[[], object]],
             **figures) -> BenchCase:
        """The BenchCase of `target` in `mode` and memory format `fmt_name`, with this plan's settings."""
        return BenchCase(case_name(mode, target, self.dtype, fmt_name), target, mode, setup, memory_format=fmt_name,
                         synchronize=self.synchronize, device=self.device, dtype=self.dtype, roofline=self.roofline,
                         min_run_time=self.min_run_time, warmup=self.warmup, cudnn_benchmark=self.cudnn_benchmark,
                         threads=self.threads, **figures)


def _plan(example_input, device, dtype, memory_formats, modes, *, quick: bool, min_run_time, warmup,
          cudnn_benchmark, threads, roofline, copy_nbytes) -> _Plan:
    """benchmark_cases' settings checked and completed (quick: CI defaults); raises BNCheckUsageError on a bad one."""
    device = torch.device(device) if device is not None else first_tensor(example_input).device
    if isinstance(dtype, str):
        from bncheck.core.spec import parse_dtype
        dtype = parse_dtype(dtype)
    modes = checked_modes(modes)
    formats = checked_formats(memory_formats)
    min_run_time = DEFAULT_MIN_RUN_TIME[quick] if min_run_time is None else min_run_time
    warmup = DEFAULT_WARMUP[quick] if warmup is None else warmup
    if roofline is None:
        nbytes = copy_nbytes or default_copy_bytes(device, quick)
        roofline = Roofline(device, dtype, nbytes, min_run_time=max(min_run_time, 0.05), threads=threads)
    return _Plan(device, dtype, modes, formats, synchronizer(device), roofline, min_run_time, warmup,
                 cudnn_benchmark, threads)


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
    wanted = wanted_layers(bns, layers)
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


def wanted_layers(bns: dict[str, nn.Module], layers: Iterable[str] | None) -> list[str]:
    """The names of the BN layers to benchmark (`layers`: None = all), in model order; an unknown name is a
    BNCheckUsageError of the `layers` setting."""
    if layers is not None:
        given = list(layers)
        unknown = sorted(set(given) - set(bns))
        if unknown:
            raise BNCheckUsageError(f"no BN layer named {', '.join(map(repr, unknown))}; the model's BN layers are "
                                    f"{', '.join(n for n in bns if n) or 'none'}", field="layers",
                                    value=",".join(given))
        layers = set(given)
    return [n for n in bns if n and (layers is None or n in layers)]


def _target_cases(target: _Target, plan: _Plan) -> list[BenchCase]:
    """The cases of `target`: one per mode in each memory format that applies to its input."""
    x = first_tensor(target.example) if target.example is not None else None
    shape = tuple(x.shape) if x is not None else ()
    cases = []
    for fmt_name in plan.formats:
        fmt = memory_format_for(fmt_name, x.dim() if x is not None else 2)
        if fmt is None:
            continue
        for mode in plan.modes:
            setup = case_setup(target.module, target.example, mode, plan.device, plan.dtype, fmt,
                               wrt_inputs=target.name != MODEL,
                               skip=target.skip or (target.train_skip if mode != "forward_eval" else None))
            cases.append(plan.case(target.name, mode, fmt_name, setup, shape=shape,
                                   samples=int(shape[0]) if shape else 1,
                                   min_bytes=layer_min_bytes(target.bn, x, mode, plan.dtype)))
    return cases


def benchmark_cases(model: nn.Module, example_input, *, device: torch.device | str | None = None,
                    dtype: torch.dtype = torch.float32, memory_formats: Iterable[str] | None = None,
                    modes: Iterable[str] | None = MODES, layers: Iterable[str] | None = None, quick: bool = False,
                    min_run_time: float | None = None, warmup: int | None = None, cudnn_benchmark: bool | None = True,
                    threads: int | None = None, inputs: dict[str, torch.Tensor] | None = None,
                    roofline: Roofline | None = None, copy_nbytes: int | None = None) -> list[BenchCase]:
    """Every benchmark of `model` on `example_input` (a tensor or tuple; its shape is fixed): for the model and
    each BN layer (`layers`: None = all, or the names to keep; the model itself is target "model"), for each mode
    (None: all) and each memory format (default: contiguous, and channels_last for 4-D/5-D inputs).

    The user's model is only read: each case clones it (or the layer) when it is set up. A layer's input is its
    real input in one forward pass of a copy (`bncheck.capture`; pass `inputs` to reuse a capture), kept on the
    CPU until a case moves it to `device`. quick: short measurements and warm-up, and a smaller roofline copy,
    for CI. threads: torch's CPU threads while each case (and the copy roofline) is timed, restored after;
    None: the caller's count.
    """
    plan = _plan(example_input, device, dtype, memory_formats, modes, quick=quick, min_run_time=min_run_time,
                 warmup=warmup, cudnn_benchmark=cudnn_benchmark, threads=threads, roofline=roofline,
                 copy_nbytes=copy_nbytes)
    return [case for target in _targets(model, example_input, layers, inputs)
            for case in _target_cases(target, plan)]


def layer_inputs(model: nn.Module, example_input) -> dict[str, torch.Tensor]:
    """Each BN layer's real input in one forward pass of a copy of `model` in eval mode (which, unlike train
    mode, accepts any batch size), on the CPU."""
    from bncheck.core.capture import capture

    return {n: t.detach().cpu() for n, t in capture(model, example_input, train=False).inputs.items()}
