"""The settings of one run, built from the options table (bncheck.run.options) in one place, validated there."""

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from bncheck.run.options import DEFAULT_BATCH_SIZE, OPTIONS


@dataclass(frozen=True)
class Settings:
    input_shape: tuple[int, ...] | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    seed: int = 0
    strict: bool = False
    syncbn: bool = False  # also check torch's BN layers converted to nn.SyncBatchNorm across processes
    convergence: bool = False  # also the convergence item: faster than the no-BN twin on real data
    data_root: str | None = None  # Fashion-MNIST for the convergence item (else a built-in data set)

    def __post_init__(self):
        if self.batch_size < 2:  # whoever builds Settings, the one rule for every front end
            OPTIONS_BY_NAME["batch_size"].parse(str(self.batch_size))


OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}


def settings_from(given: Mapping[str, object]) -> Settings:
    """Settings from the values given by option name: text (or an int) goes through the option's parser, an absent
    value (None, or False for a switch) takes the default. A bad value raises a BNCheckUsageError naming the
    option (its `field`)."""
    values = {}
    for option in OPTIONS:
        value = given.get(option.name)
        if value is None or (option.switch and value is False):
            value = option.default
        if option.switch:
            value = bool(value)
        elif isinstance(value, (str, int)) and not isinstance(value, bool):
            value = option.parse(str(value))
        values[option.name] = value
    return Settings(**values)
