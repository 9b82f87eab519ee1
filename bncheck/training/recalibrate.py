"""recalibrate(model, data): set each BN layer's running statistics to the population statistics of its input over a
data set — the "precise BN" remedy for statistics that drifted or went stale (fvcore's update_bn_stats, torch's
torch.optim.swa_utils.update_bn) — changing nothing else of the model.

The passes run on a copy of the model; only the final running_mean, running_var and num_batches_tracked are
copied into the user's layers, so their modes, parameters and other buffers stay as they were."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from bncheck.checks.guards import meant_frozen, select
from bncheck.core.discover import STATISTICS, find_batchnorms, layer_label
from bncheck.core.errors import BNCheckUsageError
from bncheck.core.state import clone
from bncheck.training.data import model_device
from bncheck.training.population import Accumulator, PopulationStats, batches_of, feed


class _Stop(Exception):
    """Ends a forward pass once the layer being recalibrated has seen its input: the rest cannot change it."""


def _replayable(data, *, split: str, batch_size: int, batches: int | None):
    """A function giving the same batches on every call (one call per pass), and a description of them. A one-shot
    iterator, or the first `batches` batches of a loader (which may shuffle), are kept in a list."""
    first, source = batches_of(data, split=split, batch_size=batch_size)
    if batches is not None:
        if batches < 1:
            raise BNCheckUsageError(f"batches={batches}: expected a positive integer or None (all)")
        kept = list(itertools.islice(first, batches))
        return (lambda: iter(kept)), f"the first {len(kept)} batches of {source}"
    if isinstance(data, Iterator):
        kept = list(first)
        return (lambda: iter(kept)), source
    return (lambda: batches_of(data, split=split, batch_size=batch_size)[0]), source


def _targets(model: nn.Module, layers) -> dict[str, nn.Module]:
    if layers is None:
        frozen = meant_frozen(model)
        chosen = {n: m for n, m in find_batchnorms(model).items() if n not in frozen}
    else:
        chosen = select(model, layers)
    untracked = [n for n, m in chosen.items() if not all(isinstance(getattr(m, q, None), torch.Tensor)
                                                         for q in STATISTICS)]
    if layers is not None and untracked:
        raise BNCheckUsageError(f"layers: {', '.join(map(layer_label, untracked))} keep no running statistics "
                                f"(track_running_stats=False)")
    targets = {n: m for n, m in chosen.items() if n not in untracked}
    if not targets:
        raise BNCheckUsageError(f"{type(model).__name__}: no BN layer with running statistics to recalibrate")
    lazy = [layer_label(n) for n, m in targets.items() if is_lazy(m.running_mean)]
    if lazy:
        raise BNCheckUsageError(f"{', '.join(lazy)}: Lazy BN not initialized yet: run one forward first")
    return targets


def _set(layer: nn.Module, stats: PopulationStats, batches: int) -> None:
    layer.running_mean.copy_(stats.mean)
    layer.running_var.copy_(stats.unbiased_var)  # what running_var estimates: torch stores the unbiased variance
    counter = getattr(layer, "num_batches_tracked", None)
    if isinstance(counter, torch.Tensor):
        counter.fill_(batches)  # as after update_bn: a momentum=None layer continues this cumulative average


class _Pass:
    """One pass of the copy over the data with pre-hooks on the layers still to recalibrate: accumulates the
    input of `current` (of all of them when None); with `stop`, ends each forward at the next such layer."""

    def __init__(self, net: nn.Module, layers: dict[str, nn.Module], current: str | None, stop: bool):
        self.net, self.layers, self.current, self.stop = net, layers, current, stop
        self.acc: dict[str, Accumulator] = {}
        self.calls: dict[str, int] = {}  # forward calls per layer over the pass
        self.order: list[str] = []  # first calls, in order
        self.shared = False  # a layer called twice in one forward: its later inputs depend on its own statistics
        self._in_forward: dict[str, int] = {}

    def _pre(self, name: str):
        def pre(module, args, kwargs):
            if self.current not in (None, name):
                if self.stop and self.current in self._in_forward:
                    raise _Stop
                return
            x = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if x is None:
                return
            self.acc.setdefault(name, Accumulator()).add(x)
            self.calls[name] = self.calls.get(name, 0) + 1
            self._in_forward[name] = self._in_forward.get(name, 0) + 1
            self.shared |= self._in_forward[name] > 1
            if name not in self.order:
                self.order.append(name)
        return pre

    def run(self, batches, device) -> _Pass:
        handles = [m.register_forward_pre_hook(self._pre(n), with_kwargs=True) for n, m in self.layers.items()]
        try:
            feed(self.net, batches, device, before=self._in_forward.clear, stops=(_Stop,))
        finally:
            for h in handles:
                h.remove()
        return self


@torch.no_grad()
def recalibrate(model: nn.Module, data, *, batches: int | None = None, layers=None, exact: bool = True,
                split: str = "train", batch_size: int = 1000, device=None) -> dict[str, PopulationStats]:
    """Set each BN layer's running_mean and running_var to the population mean and unbiased variance of its input
    over `data` (its first `batches` batches), and num_batches_tracked to the batches it saw; nothing else of
    `model` changes. Returns the statistics set, by layer in call order (a layer never called keeps its own).

    `data`: a bncheck Data (its `split`), a tensor of inputs, or batches (x or (x, y, ...)), e.g. a DataLoader.
    `layers`: names (a module's for every BN under it); default every BN with running statistics except those
    meant to be frozen (FrozenBatchNorm-like, or γ/β not requiring grad), as fvcore leaves eval-mode BN alone.
    exact=True: each layer's input as the model computes it in eval mode with the layers before it recalibrated —
    what assert_population_stats checks — at the cost of one pass per layer, each ending at that layer.
    exact=False: one pass with those layers in train mode, as fvcore and update_bn do (each layer sees the earlier
    ones normalize with batch statistics): far cheaper on a deep model, close for large batches."""
    replay, _ = _replayable(data, split=split, batch_size=batch_size, batches=batches)
    targets = _targets(model, layers)
    device = model_device(model, device)
    net = clone(model).to(device).eval()
    twins = {n: m for n, m in find_batchnorms(net).items() if n in targets}
    if not exact:
        for layer in twins.values():
            layer.training = True  # the layer only: a child (the activation or dropout of a 'BN + act') stays eval
        first = _Pass(net, twins, None, stop=False).run(replay(), device)
        done = {n: (first.acc[n].result(n), first.calls[n]) for n in first.order}
    else:
        first = _Pass(net, twins, None, stop=False).run(replay(), device)
        done = {}
        for i, name in enumerate(first.order):
            if i == 0:
                stats, calls = first.acc[name].result(name), first.calls[name]
            else:
                rest = {n: m for n, m in twins.items() if n not in done}
                again = _Pass(net, rest, name, stop=not first.shared).run(replay(), device)
                if name not in again.acc:  # data-dependent control flow skipped it this time
                    continue
                stats, calls = again.acc[name].result(name), again.calls[name]
            _set(twins[name], stats, calls)  # the layers after it see its recalibrated output
            done[name] = (stats, calls)
    for name, (stats, calls) in done.items():
        _set(targets[name], stats, calls)
    return {name: stats for name, (stats, _) in done.items()}
