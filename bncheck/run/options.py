"""The tables of settings: each option's name, parser, default and help, for OPTIONS (the checks) and BENCH_OPTIONS
(the benchmarks). Each front end makes its own flags of them (bncheck.frontends: the plugin's flags and ini keys,
the command lines'). A bad value is a BNCheckUsageError carrying the option's name, which each front end words with
its own flag. Imports no torch: the plugin reads these tables
when pytest starts."""

from collections.abc import Callable
from dataclasses import dataclass


def _integer(name: str, minimum: int | None = None, why: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        from bncheck.core.errors import BNCheckUsageError

        try:
            value = int(text)
        except (TypeError, ValueError):
            raise BNCheckUsageError("expected an integer", field=name, value=text) from None
        if minimum is not None and value < minimum:
            raise BNCheckUsageError(f"must be at least {minimum}{why}", field=name, value=text)
        return value
    return parse


def _positive_number(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        from bncheck.core.errors import BNCheckUsageError

        try:
            value = float(text)
        except (TypeError, ValueError):
            raise BNCheckUsageError("expected a number", field=name, value=text) from None
        if not value > 0:  # also NaN
            raise BNCheckUsageError("must be greater than 0", field=name, value=text)
        return value
    return parse


def _bench_names(name: str, check: str) -> Callable[[str], tuple[str, ...]]:
    """A comma-separated list, each item checked by bncheck.bench.workloads' `check` (the rule the Python API
    applies too)."""
    def parse(text: str) -> tuple[str, ...]:
        from bncheck.bench import workloads
        from bncheck.core.errors import BNCheckUsageError

        names = tuple(p for p in str(text).replace(" ", "").split(",") if p)
        try:
            return getattr(workloads, check)(names)
        except BNCheckUsageError as exc:
            raise BNCheckUsageError(str(exc), field=name, value=text) from None
    return parse


def _layer_names(text: str) -> tuple[str, ...] | None:
    """all: None (every BN layer); none: () (the model only); else the names, checked against the model later."""
    text = str(text).replace(" ", "")
    if text == "all":
        return None
    return () if text in ("none", "") else tuple(p for p in text.split(",") if p)


def _core(function: str) -> Callable[[str], object]:
    def parse(text: str):
        from bncheck.core import spec

        return getattr(spec, function)(text)
    return parse


def _data_root(text: str) -> str:
    from bncheck.core.errors import BNCheckUsageError
    from bncheck.training.data import check_fashion_root

    try:
        check_fashion_root(text)
    except BNCheckUsageError as exc:
        raise BNCheckUsageError(str(exc), field="data_root", value=text) from None
    return text


@dataclass(frozen=True)
class Option:
    """One setting. `parse` turns the text given on a command line or in an ini file into its value (raising a
    BNCheckUsageError with this option's name); None makes the option a switch, True when given."""

    name: str
    help: str
    default: object = None
    parse: Callable[[str], object] | None = None
    metavar: str | None = None

    @property
    def switch(self) -> bool:
        return self.parse is None

    def dashed(self) -> str:
        return self.name.replace("_", "-")


DEFAULT_BATCH_SIZE = 8

OPTIONS = (
    Option("input_shape", "one sample's shape without the batch dim, e.g. 3,32,32 (default: the model's own "
           "example input, else the shape torchvision or timm states for a model named by them)", None,
           _core("parse_shape"), "C,H,W"),
    Option("batch_size", f"batch size of the example input (default {DEFAULT_BATCH_SIZE})", DEFAULT_BATCH_SIZE,
           _integer("batch_size", 2, " (train-mode BN needs n > 1)"), "N"),
    Option("device", "auto (the GPU when there is one; default), cpu, cuda or cuda:N", "auto",
           _core("parse_device"), "DEVICE"),
    Option("dtype", "the dtype check's low-precision input dtypes: float16, bfloat16 or float16,bfloat16 "
           "(default); every other check runs in the model's own dtype", "float16,bfloat16",
           _core("parse_low_precision"), "DTYPES"),
    Option("seed", "seed of the example input and the layers' test state (default 0)", 0, _integer("seed"), "N"),
    Option("strict", "every warning fails: lint findings, torch-conformance differences, dtype and precision "
           "warnings", False),
    Option("torch_conformance", "torch's behaviour at the edges the BN contract does not fix (empty batch, raising "
           "on a channel mismatch, a run-time switch of track_running_stats) fails instead of warning", False),
    Option("syncbn", "also check torch's BN layers converted to nn.SyncBatchNorm across 2 processes (needs 2 GPUs; "
           "synchronized BN layers are always checked)", False),
    Option("convergence", "also a convergence item per model: it must reach 0.9 test accuracy in fewer steps than "
           "its no-BN twin, on real data fitting its input (built in: 8x8 digits, MNIST-5k; or data_root)", False),
    Option("data_root", "directory holding FashionMNIST/raw/ with the four uncompressed IDX files (train-*, t10k-*): "
           "the convergence item's data instead of the built-in sets; never downloads", None, _data_root, "DIR"),
    Option("compile", "also check the model under torch.compile against eager: train-mode statistics and gradients, "
           "eval output (item model_compile; a first compilation takes tens of seconds on a CPU)", False),
    Option("export", "also check the model under torch.export against eager: the exported eval program's output "
           "and running statistics (item model_export)", False),
    Option("profile", "count each item's whole-model forward passes, backward passes and BN-layer forwards, summed "
           "per model and per check in the summary", False),
)

# The benchmarks' own knobs (the plugin's benchmark items, `python -m bncheck bench`); the model, input, device and
# seed are OPTIONS' above. Defaults None: bncheck.bench's own (quick or not).
BENCH_OPTIONS = (
    Option("modes", "comma-separated: forward_train,forward_eval,backward (default: all)", None,
           _bench_names("modes", "checked_modes"), "MODES"),
    Option("memory_format", "comma-separated: contiguous,channels_last (default: both; channels_last only for "
           "4-D/5-D inputs)", None, _bench_names("memory_format", "checked_formats"), "FORMATS"),
    Option("layers", "all (default), none (the model only) or comma-separated BN layer names", None, _layer_names,
           "LAYERS"),
    Option("min_run_time", "seconds of timing per case (default 0.2; quick 0.01)", None,
           _positive_number("min_run_time"), "SECONDS"),
    Option("warmup", "untimed calls before a case is timed (default 10; quick 1)", None,
           _integer("warmup", 0), "N"),
    Option("quick", "short measurements and a smaller roofline copy (CI smoke run)", False),
    Option("no_cudnn_benchmark", "run with torch.backends.cudnn.benchmark off (default: on for the run, then "
           "restored)", False),
    Option("threads", "torch CPU threads while timing, then restored (default: torch's current count); 1 keeps "
           "timings steady on a shared machine", None, _integer("threads", 1), "N"),
)
