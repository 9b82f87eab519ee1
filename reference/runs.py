"""A small run manager, like the first tutorial's RunBuilder/RunManager: every combination of the given settings
is trained epoch by epoch, and each epoch becomes one row of a CSV table."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from bncheck.data import Data
from bncheck.training.fit import Training, initialized, train
from bncheck.training.progress import progress_bar
from bncheck.training.sweep import combinations

COLUMNS = ("experiment", "data", "network", "setting", "batch_size", "lr", "seed", "epoch", "loss", "accuracy",
           "test_loss", "test_accuracy", "time")


@dataclass(frozen=True)
class Experiment:
    """One grid of runs: `make(network, setting, data)` builds a model; every data × network × setting ×
    batch_size × lr × seed combination trains for `epochs` epochs with Adam."""

    name: str
    data: dict[str, Callable[[], Data]]
    networks: dict[str, Sequence[str]]  # network name → its settings
    make: Callable[[str, str, Data], nn.Module]
    epochs: int
    seeds: Sequence[int]
    batch_sizes: Sequence[int] = (64,)
    lrs: Sequence[float] = (0.001,)
    optimizer: str = "adam"

    def runs(self) -> list[tuple]:
        """(data, network, setting, batch_size, lr, seed) of every run, in RunBuilder order."""
        grid = combinations(data=list(self.data), network=list(self.networks), batch_size=list(self.batch_sizes),
                            lr=list(self.lrs))
        return [(g.data, g.network, setting, g.batch_size, g.lr, seed)
                for g in grid for setting in self.networks[g.network] for seed in self.seeds]


def epoch_rows(experiment: Experiment, data_name: str, data: Data, network: str, setting: str, batch_size: int,
               lr: float, seed: int) -> list[dict]:
    """Train one run; one row per epoch: training loss and accuracy over the epoch's batches (train mode, the
    tutorial's numbers), test loss and accuracy after it (eval mode), cumulative training time in seconds."""
    per_epoch = len(data.x_train) // batch_size
    training = Training(steps=experiment.epochs * per_epoch, batch_size=batch_size, lr=lr,
                        optimizer=experiment.optimizer, target=2.0, eval_every=per_epoch, stop_at_target=False)
    model = initialized(experiment.make(network, setting, data), seed)
    curve = train(model, data, training, seed=seed, label=f"{network} {setting}", progress=False)
    return [{"experiment": experiment.name, "data": data_name, "network": network, "setting": setting,
             "batch_size": batch_size, "lr": lr, "seed": seed, "epoch": i + 1, "loss": round(curve.train_loss[i], 5),
             "accuracy": round(curve.train_accuracy[i], 5), "test_loss": round(curve.test_loss[i], 5),
             "test_accuracy": round(curve.test_accuracy[i], 5), "time": round(curve.seconds[i], 3)}
            for i in range(len(curve.steps))]


def run_experiment(experiment: Experiment, *, progress: bool | None = None) -> list[dict]:
    """Every run of the experiment; each data set is loaded once."""
    rows: list[dict] = []
    loaded = {name: load() for name, load in experiment.data.items()}
    runs = experiment.runs()
    started = time.perf_counter()
    with progress_bar(len(runs), experiment.name, enabled=progress) as bar:
        for data, network, setting, batch_size, lr, seed in runs:
            rows += epoch_rows(experiment, data, loaded[data], network, setting, batch_size, lr, seed)
            bar.update(1)
    print(f"{experiment.name}: {len(runs)} runs, {len(rows)} epochs in {time.perf_counter() - started:.0f} s")
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in ("batch_size", "seed", "epoch"):
            row[key] = int(row[key])
        for key in ("lr", "loss", "accuracy", "test_loss", "test_accuracy", "time"):
            row[key] = float(row[key])
    return rows
