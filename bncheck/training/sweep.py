"""Sweeps: `sweep(model, data, lrs=...)` trains every combination of variant × learning rate × seed (like the seed
tutorial's RunBuilder) and tabulates steps to target and final scores."""

from __future__ import annotations

import itertools
import statistics
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from bncheck.training.ablate import ablate
from bncheck.training.data import Data, model_device
from bncheck.training.fit import Curve, Training, initialized, require_data, resolve_training, seed_list, train
from bncheck.training.progress import progress_bar


def combinations(**params: Sequence) -> list:
    """Every combination of the given settings as named tuples, like the seed tutorial's RunBuilder.get_runs:
    combinations(lr=[.01, .1], seed=[0, 1]) → [Run(lr=0.01, seed=0), Run(lr=0.01, seed=1), ...]."""
    Run = namedtuple("Run", params.keys())
    return [Run(*values) for values in itertools.product(*params.values())]


@dataclass
class SweepRow:
    variant: str
    lr: float
    seed: int
    reached: int | None
    final_accuracy: float
    final_loss: float
    diverged: bool
    seconds: float
    curve: Curve


@dataclass
class Sweep:
    training: Training
    rows: list[SweepRow]

    def median_final_accuracy(self, variant: str, lr: float) -> float:
        return statistics.median(r.final_accuracy for r in self.rows if r.variant == variant and r.lr == lr)

    def converged(self, variant: str, lr: float) -> int:
        """On how many seeds `variant` reached the target at `lr`."""
        return sum(r.reached is not None for r in self.rows if r.variant == variant and r.lr == lr)

    def largest_converging_lr(self, variant: str) -> float | None:
        """The largest swept lr at which `variant` reached the target on a majority of its seeds."""
        good = [lr for lr in sorted({r.lr for r in self.rows})
                if 2 * self.converged(variant, lr) > sum(r.variant == variant and r.lr == lr for r in self.rows)]
        return good[-1] if good else None

    def table(self) -> str:
        lines = [f"{'variant':>14} {'lr':>8} {'seed':>4} {'steps':>7} {'final acc':>9} {'final loss':>10}"]
        for r in self.rows:
            steps = str(r.reached) if r.reached is not None else f">{self.training.steps}"
            lines.append(f"{r.variant:>14} {r.lr:>8g} {r.seed:>4} {steps:>7} {r.final_accuracy:>9.3f} "
                         f"{r.final_loss:>10.3f}")
        return "\n".join(lines)


def sweep(model: nn.Module, data: Data, *, lrs: Sequence[float], seeds: int | Sequence[int] = 1,
          variants: Mapping[str, Callable[[nn.Module], nn.Module] | None] | None = None,
          training: Training | None = None, device=None, loss_fn=F.cross_entropy, progress: bool | None = None,
          **overrides) -> Sweep:
    """Train every combination of variant × lr × seed (RunBuilder-style). `variants` maps a name to a function
    applied to each seed's freshly initialized model (None: the model itself); by default {"BN": None,
    "no BN": bncheck.ablate}, so all variants of one seed start from the same weights."""
    training = resolve_training(training, overrides)
    require_data(data)
    variants = {"BN": None, "no BN": ablate} if variants is None else dict(variants)
    device = model_device(model, device)
    data = data.to(device)
    rows = []
    runs = combinations(seed=seed_list(seeds), lr=list(lrs), variant=list(variants))
    with progress_bar(len(runs) * training.steps, "sweep", enabled=progress) as bar:
        for run in runs:
            base = initialized(model, run.seed)
            net = base if variants[run.variant] is None else variants[run.variant](base)
            t = Training(**{**training.__dict__, "lr": run.lr})
            c = train(net, data, t, seed=run.seed, label=run.variant, device=device, loss_fn=loss_fn, bar=bar)
            rows.append(SweepRow(run.variant, run.lr, run.seed, c.reached, c.final_accuracy, c.final_loss,
                                 c.diverged, c.seconds[-1] if c.seconds else 0.0, c))
    return Sweep(training, rows)
