"""Population statistics: the exact mean and variance of each BN layer's input over a whole data set, and how far
each layer's running statistics have drifted from them.

`population_stats(model, data)` is the "global training-set mean and variance" alternative to running averages
(what torch.optim.swa_utils.update_bn with momentum=None approximates batch by batch). It runs a copy of the model
in eval mode — the network as it predicts — with a forward pre-hook on every BN-like layer, and accumulates each
channel's mean and sum of squared deviations in float64 over all batches (Chan et al.'s pairwise update, exact up
to float64 rounding, with no E[x²] − E[x]² cancellation).

`assert_population_stats(model, data)` fails when a layer's running statistics are far from its input's
population statistics: stale statistics after fine-tuning, weight surgery or a state_dict loaded without its
buffers, or a momentum bug. The user's model is never run or modified.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from bncheck.core.discover import find_batchnorms, kind_of, layer_label
from bncheck.core.errors import BNCheckError, BNCheckUsageError, assertion_helper, one_line
from bncheck.core.state import clone
from bncheck.training.data import Data, model_device

# Defaults of assert_population_stats, judged on a layer's median channel: its running mean within 0.25 population
# standard deviations of the population mean, its running variance within a factor 1.5 of the population (unbiased)
# variance. Single channels are no measure: a nearly dead ReLU channel of a normally trained model can be 35σ or a
# factor 5000 off (its running average covers only the last ~10 batches of a few active samples), while the median
# channels of the small CNNs, MLPs and the seed CNN trained on digits and MNIST-5k stayed within 0.13σ and a factor
# 1.2, even 100 steps into training at lr=0.01. Weight surgery or never-updated statistics move most channels.
MEAN_TOL = 0.25
VAR_RATIO = 1.5
QUANTILE = 0.5


@dataclass(frozen=True)
class PopulationStats:
    """One BN layer's input over a data set, per channel (float64, CPU): mean and biased variance over `count`
    values per channel (samples × spatial positions)."""

    layer: str
    mean: torch.Tensor
    var: torch.Tensor
    count: int

    @property
    def unbiased_var(self) -> torch.Tensor:
        """var · n/(n − 1): what a BN's running_var estimates (torch stores the unbiased batch variance)."""
        return self.var * self.count / max(self.count - 1, 1)


class Accumulator:
    """Per-channel count, mean and sum of squared deviations, merged batch by batch in float64."""

    def __init__(self):
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise BNCheckUsageError(f"a BN input of shape {tuple(x.shape)}: expected (N, C, *)")
        x = x.detach().to(torch.float64).transpose(0, 1).reshape(x.shape[1], -1)
        n_b = x.shape[1]
        if n_b == 0:
            return
        mean_b = x.mean(1)
        m2_b = ((x - mean_b[:, None]) ** 2).sum(1)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        total = self.n + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / total)
        self.m2 = self.m2 + m2_b + delta ** 2 * (self.n * n_b / total)
        self.n = total

    def result(self, layer: str) -> PopulationStats:
        return PopulationStats(layer, self.mean.cpu(), (self.m2 / self.n).cpu(), self.n)


def batches_of(data, *, split: str, batch_size: int) -> tuple[Iterable, str]:
    """The batches of model inputs in `data`, and a description for messages."""
    if isinstance(data, Data):
        if split not in ("train", "test"):
            raise BNCheckUsageError(f"split={split!r}: expected 'train' or 'test'")
        x = data.x_train if split == "train" else data.x_test
        return _chunks(x, batch_size), f"{data.name}, {split} split ({len(x)} samples)"
    if isinstance(data, torch.Tensor):
        return _chunks(data, batch_size), f"{len(data)} samples"
    if isinstance(data, Iterable) and not isinstance(data, (str, bytes)):
        return (_first_tensor(b) for b in data), "the given batches"
    raise BNCheckUsageError(f"data: expected a bncheck Data, a tensor of inputs or an iterable of batches "
                            f"(a DataLoader), got {type(data).__name__}")


def _quantile_channel(values: torch.Tensor, q: float) -> int:
    """The channel whose value is the q-quantile of `values` (an actual channel: the upper one at ties)."""
    order = values.argsort()
    return int(order[min(len(order) - 1, max(0, math.ceil(q * len(order)) - 1))])


def _first_tensor(batch) -> torch.Tensor:
    x = batch[0] if isinstance(batch, (tuple, list)) and batch else batch
    if not isinstance(x, torch.Tensor):
        raise BNCheckUsageError(f"a batch of the data is a {type(x).__name__}: expected a tensor of inputs or "
                                f"(inputs, targets, ...)")
    return x


def _chunks(x: torch.Tensor, batch_size: int):
    if batch_size < 1:
        raise BNCheckUsageError(f"batch_size={batch_size}: expected a positive integer")
    return (x[i:i + batch_size] for i in range(0, len(x), batch_size))


@torch.no_grad()
def population_stats(model: nn.Module, data, *, split: str = "train", batch_size: int = 1000,
                     device=None) -> dict[str, PopulationStats]:
    """Per BN-like layer (in the order of their first call), the exact per-channel mean and variance of its input
    over every sample of `data`: a bncheck Data (its `split`), a tensor of inputs, or an iterable of batches
    (x or (x, y, ...)). Runs a copy of `model` in eval mode on `device` (default: the model's)."""
    batches, _ = batches_of(data, split=split, batch_size=batch_size)
    device = model_device(model, device)
    net = clone(model).to(device).eval()
    accumulators: dict[str, Accumulator] = {}

    def hook(name):
        def pre(module, args):
            if args and isinstance(args[0], torch.Tensor):
                accumulators.setdefault(name, Accumulator()).add(args[0])
        return pre

    handles = [m.register_forward_pre_hook(hook(name)) for name, m in find_batchnorms(net).items()]
    try:
        feed(net, batches, device)
    finally:
        for h in handles:
            h.remove()
    return {name: acc.result(name) for name, acc in accumulators.items()}


def feed(net: nn.Module, batches, device, *, before=None, stops: tuple[type[Exception], ...] = ()) -> None:
    """`net` on every batch (moved to `device`), `before()` ahead of each; an exception of `stops` ends that
    forward quietly, any other is a one-line usage error (the model rejected the data), and so is no batch at all."""
    seen = 0
    for x in batches:
        if before is not None:
            before()
        try:
            net(x.to(device))
        except stops:
            pass
        except Exception as exc:  # the model rejected the data: one line, not a traceback from its forward
            raise BNCheckUsageError(f"the model rejected a batch of shape {tuple(x.shape)}: {one_line(exc)}") from exc
        seen += 1
    if not seen:
        raise BNCheckUsageError("data holds no samples")


def _buffer64(module: nn.Module, name: str) -> torch.Tensor | None:
    t = getattr(module, name, None)
    return t.detach().to("cpu", torch.float64) if isinstance(t, torch.Tensor) else None


@dataclass(frozen=True)
class LayerDrift:
    """One layer's running statistics next to its input's population statistics."""

    layer: str
    kind: str
    population: PopulationStats
    running_mean: torch.Tensor
    running_var: torch.Tensor
    eps: float
    momentum: float | None
    num_batches_tracked: int | None

    @property
    def mean_drift(self) -> torch.Tensor:
        """|running_mean − population mean| per channel, in population standard deviations."""
        return (self.running_mean - self.population.mean).abs() / torch.sqrt(self.population.var + self.eps)

    @property
    def var_ratio(self) -> torch.Tensor:
        """(running_var + eps) / (population unbiased variance + eps) per channel: 1 when they agree."""
        return (self.running_var + self.eps) / (self.population.unbiased_var + self.eps)

    @property
    def log_var_ratio(self) -> torch.Tensor:
        """|log var_ratio| per channel (NaN, e.g. from a negative running_var, counts as infinite)."""
        return self.var_ratio.log().abs().nan_to_num(nan=math.inf)

    def worst_mean(self) -> tuple[int, float]:
        drift = self.mean_drift.nan_to_num(nan=math.inf)
        c = int(drift.argmax())
        return c, float(drift[c])

    def worst_var(self) -> tuple[int, float]:
        """The channel whose variance ratio is furthest from 1 (either way), and that ratio."""
        c = int(self.log_var_ratio.argmax())
        return c, float(self.var_ratio[c])

    def problems(self, mean_tol: float = MEAN_TOL, var_ratio: float = VAR_RATIO,
                 quantile: float = QUANTILE) -> list[str]:
        """One sentence per quantity whose `quantile` channel (the median by default) is beyond its tolerance."""
        out = []
        channels = len(self.mean_drift)
        which = "median" if quantile == 0.5 else "least close" if quantile == 1 else f"{quantile:g}-quantile"
        mean_drift = self.mean_drift.nan_to_num(nan=math.inf)
        c = _quantile_channel(mean_drift, quantile)
        if not float(mean_drift[c]) <= mean_tol:
            w, worst = self.worst_mean()
            out.append(f"running_mean is {float(mean_drift[c]):.3g} population standard deviations from the "
                       f"population mean on the {which} channel (allowed {mean_tol:g}; "
                       f"{int((mean_drift > mean_tol).sum())} of {channels} channels beyond); worst at channel {w}: "
                       f"expected {float(self.population.mean[w]):.6g}, got {float(self.running_mean[w]):.6g} "
                       f"({worst:.3g}σ)")
        c = _quantile_channel(self.log_var_ratio, quantile)
        if not float(self.log_var_ratio[c]) <= math.log(var_ratio):
            w, worst = self.worst_var()
            out.append(f"running_var is {float(self.var_ratio[c]):.3g}× the population (unbiased) variance on the "
                       f"{which} channel (allowed a factor {var_ratio:g} either way; "
                       f"{int((self.log_var_ratio > math.log(var_ratio)).sum())} of {channels} channels beyond); "
                       f"worst at channel {w}: expected {float(self.population.unbiased_var[w]):.6g}, "
                       f"got {float(self.running_var[w]):.6g} ({worst:.3g}×)")
        return out

    def likely_cause(self) -> str:
        fresh = bool((self.running_mean == 0).all() and (self.running_var == 1).all())
        if self.momentum == 0:
            return "momentum=0: the running statistics never move from their initial values"
        if self.num_batches_tracked == 0 or fresh:
            return ("the running statistics were never updated (still the initial 0 and 1): the model never ran "
                    "in train mode, or its state_dict was loaded without the BN buffers (strict=False)")
        return ("stale running statistics: the weights before this layer changed after its statistics were last "
                "updated (fine-tuning with the BN in eval mode or frozen, weight surgery, loading weights without "
                "their BN buffers), or a momentum bug (too small a momentum, Keras's 0.99 where PyTorch means "
                "0.01); recompute them over the training data, e.g. torch.optim.swa_utils.update_bn(loader, model) "
                "with every BN's momentum=None")

    def row(self) -> str:
        c_mean, mean = self.worst_mean()
        c_var, ratio = self.worst_var()
        median_mean = float(self.mean_drift[_quantile_channel(self.mean_drift.nan_to_num(nan=math.inf), 0.5)])
        median_var = float(self.var_ratio[_quantile_channel(self.log_var_ratio, 0.5)])
        return (f"  {layer_label(self.layer):<16} {self.kind:<14} {median_mean:>10.3g}σ {mean:>9.3g}σ ch {c_mean:<4} "
                f"{median_var:>9.3g}× {ratio:>9.3g}× ch {c_var}")


@dataclass(frozen=True)
class DriftReport:
    """Per BN layer, its running statistics against its input's population statistics over `source`."""

    source: str
    layers: list[LayerDrift]
    untracked: list[str]  # BN-like layers without running statistics (track_running_stats=False)
    not_called: list[str]  # BN-like layers the forward pass never reached

    def failures(self, mean_tol: float = MEAN_TOL, var_ratio: float = VAR_RATIO,
                 quantile: float = QUANTILE) -> list[tuple[LayerDrift, str]]:
        """(layer, problem) for every quantity of every layer beyond its tolerance, in call order."""
        return [(d, p) for d in self.layers for p in d.problems(mean_tol, var_ratio, quantile)]

    def __str__(self) -> str:
        lines = [f"running statistics vs population statistics over {self.source} (mean: |running − population| in "
                 f"population σ; var: running / population):",
                 f"  {'layer':<16} {'kind':<14} {'mean median':>11} {'worst':>18} {'var median':>10} {'worst':>18}"]
        lines += [d.row() for d in self.layers]
        if self.untracked:
            lines.append(f"  no running statistics (track_running_stats=False): {', '.join(self.untracked)}")
        if self.not_called:
            lines.append(f"  not called in the forward pass: {', '.join(self.not_called)}")
        return "\n".join(lines)


def population_drift(model: nn.Module, data, *, split: str = "train", batch_size: int = 1000,
                     device=None) -> DriftReport:
    """Every BN-like layer's running statistics next to population_stats(model, data), in the order the layers
    are first called (a drift early in the network changes what every later layer sees)."""
    _, source = batches_of(data, split=split, batch_size=batch_size)
    stats = population_stats(model, data, split=split, batch_size=batch_size, device=device)
    layers = find_batchnorms(model)
    drifts, untracked = [], []
    for name, pop in stats.items():
        layer = layers[name]
        mean, var = _buffer64(layer, "running_mean"), _buffer64(layer, "running_var")
        if mean is None or var is None:
            untracked.append(layer_label(name))
            continue
        tracked = getattr(layer, "num_batches_tracked", None)
        drifts.append(LayerDrift(name, kind_of(layer), pop, mean, var, float(getattr(layer, "eps", 1e-5)),
                                 getattr(layer, "momentum", None),
                                 int(tracked) if isinstance(tracked, torch.Tensor) else None))
    not_called = [layer_label(name) for name in layers if name not in stats]
    return DriftReport(source, drifts, untracked, not_called)


@assertion_helper
def assert_population_stats(model: nn.Module, data, *, mean_tol: float = MEAN_TOL, var_ratio: float = VAR_RATIO,
                            quantile: float = QUANTILE, name: str = "", **kwargs) -> DriftReport:
    """Assert that every BN-like layer's running statistics match its input's population statistics over `data`:
    on the layer's median channel (`quantile`=1: on every channel), running_mean within `mean_tol` population
    standard deviations and running_var within a factor `var_ratio` of the population unbiased variance.
    Returns the DriftReport; other arguments: population_drift's."""
    if not (mean_tol >= 0 and var_ratio >= 1 and 0 <= quantile <= 1):
        raise BNCheckUsageError(f"mean_tol={mean_tol:g}, var_ratio={var_ratio:g}, quantile={quantile:g}: need "
                                f"mean_tol ≥ 0, var_ratio ≥ 1 and 0 ≤ quantile ≤ 1")
    report = population_drift(model, data, **kwargs)
    if not report.layers:
        raise BNCheckUsageError(f"{name or type(model).__name__}: no BN layer with running statistics was called "
                                f"on the data")
    failures = report.failures(mean_tol, var_ratio, quantile)
    if not failures:
        return report
    title = name or type(model).__name__
    by_layer: dict[str, tuple[LayerDrift, list[str]]] = {}
    for drift, problem in failures:
        by_layer.setdefault(drift.layer, (drift, []))[1].append(problem)
    lines = [f"{title}: {len(by_layer)} BN layer(s) have running statistics far from the population statistics of "
             f"their input over {report.source}:"]
    for drift, problems in by_layer.values():
        lines.append(f"- layer {layer_label(drift.layer)!r} ({drift.kind}): {'; '.join(problems)}. Likely cause: "
                     f"{drift.likely_cause()}")
    first = next(iter(by_layer))
    if len(by_layer) > 1:
        lines.append(f"Layers after {layer_label(first)!r} see its output: fix the first drifting layer first.")
    lines.append(str(report))
    raise BNCheckError("\n".join(lines), where=title, quantity="running statistics vs population statistics",
                       cause=by_layer[first][0].likely_cause(), report=report)
