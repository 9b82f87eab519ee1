"""The one table of settings: each option's name, parser, default and help. The pytest plugin adds
`--bncheck-<name>` and the ini key `bncheck_<name>` for each, the command line `--<name>`; a bad value is a
BNCheckUsageError carrying the option's name, which each front end words with its own flag. Imports no torch: the
plugin reads this table when pytest starts."""

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
           "example input)", None, _core("parse_shape"), "C,H,W"),
    Option("batch_size", f"batch size of the example input (default {DEFAULT_BATCH_SIZE})", DEFAULT_BATCH_SIZE,
           _integer("batch_size", 2, " (train-mode BN needs n > 1)"), "N"),
    Option("device", "auto (the GPU when there is one; default), cpu, cuda or cuda:N", "auto",
           _core("parse_device"), "DEVICE"),
    Option("dtype", "float32 (default); float16/bfloat16 pick the dtype check's input dtype", "float32",
           _core("parse_dtype"), "DTYPE"),
    Option("seed", "seed of the example input and the layers' test state (default 0)", 0, _integer("seed"), "N"),
    Option("strict", "lint findings fail instead of warn", False),
    Option("syncbn", "also check torch's BN layers converted to nn.SyncBatchNorm across 2 processes (needs 2 GPUs; "
           "synchronized BN layers are always checked)", False),
    Option("convergence", "also a convergence item per model: it must reach 0.9 test accuracy in fewer steps than "
           "its no-BN twin, on real data fitting its input (built in: 8x8 digits, MNIST-5k; or data_root)", False),
    Option("data_root", "directory holding FashionMNIST/raw/ with the four uncompressed IDX files (train-*, t10k-*): "
           "the convergence item's data instead of the built-in sets; never downloads", None, _data_root, "DIR"),
)
