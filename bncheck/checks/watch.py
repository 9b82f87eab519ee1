"""watch(model): what a block of the user's own code did to the model's BN layers — every BN call with its mode
and batch, the training flags it flipped, the BN statistics and γ/β it moved — for tests to assert on.

Only forward pre-hooks are added, and removed when the block ends (also when it raises): the model runs as it
would without the watch."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from bncheck.core.compare import deviation
from bncheck.core.discover import STATISTICS, find_batchnorms, kind_of, layer_label

COUNTER = "num_batches_tracked"
AFFINE = ("weight", "bias")
QUANTITIES = (*STATISTICS, COUNTER, *AFFINE)
LABELS = {"weight": "γ (weight)", "bias": "β (bias)"}
_LAZY = "uninitialized (Lazy)"


def _fingerprint(t):
    if not isinstance(t, torch.Tensor):
        return None
    return _LAZY if is_lazy(t) else t.detach().clone()


def bn_state(layer: nn.Module) -> dict[str, torch.Tensor | str | None]:
    """Copies of a BN layer's running statistics, num_batches_tracked, γ and β (None where it has none)."""
    return {q: _fingerprint(getattr(layer, q, None)) for q in QUANTITIES}


@dataclass(frozen=True)
class Change:
    """One BN tensor that differs after the block: `amount` is the largest elementwise change (inf when its shape
    changed or a value turned NaN), or for num_batches_tracked the counts before and after."""

    layer: str
    quantity: str
    before: torch.Tensor | str | None
    after: torch.Tensor | str | None
    amount: float

    def __str__(self) -> str:
        label = LABELS.get(self.quantity, self.quantity)
        tensors = isinstance(self.before, torch.Tensor) and isinstance(self.after, torch.Tensor)
        if tensors and self.quantity == COUNTER and self.before.numel() == 1 == self.after.numel():
            return f"{label} {int(self.before)} -> {int(self.after)}"
        if tensors and self.before.shape == self.after.shape:
            return f"{label} moved by up to {self.amount:.3g}"
        describe = lambda t: (f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor)  # noqa: E731
                              else t if isinstance(t, str) else "None")
        return f"{label} {describe(self.before)} -> {describe(self.after)}"


def changes(layer: str, before: dict, after: dict) -> list[Change]:
    """What differs between two bn_state()s of the same layer, in QUANTITIES order."""
    out = []
    for q in QUANTITIES:
        a, b = before.get(q), after.get(q)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            amount = deviation(b, a)
            if amount > 0 or a.dtype != b.dtype:
                out.append(Change(layer, q, a, b, amount))
        elif not (a is None and b is None) and not (isinstance(a, str) and a == b):
            out.append(Change(layer, q, a, b, math.inf))
    return out


def _per_channel(shape: tuple[int, ...]) -> int:
    if len(shape) < 2:
        return math.prod(shape)
    return shape[0] * math.prod(shape[2:])


@dataclass(frozen=True)
class Call:
    """One call of a BN layer during the block: its mode then, and its input's shape (() when not a tensor)."""

    layer: str
    training: bool
    shape: tuple[int, ...]

    @property
    def per_channel(self) -> int:
        """The values each channel's batch statistics come from: N × the spatial positions."""
        return _per_channel(self.shape)


@dataclass
class Watch:
    """What happened to `model`'s BN layers inside a `with watch(model)` block; `flips` and `moved` are filled when
    the block ends (`calls` as it runs)."""

    model: nn.Module = field(repr=False)
    layers: dict[str, nn.Module] = field(repr=False)
    calls: list[Call] = field(default_factory=list)
    flips: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # module name -> (training before, after)
    moved: dict[str, list[Change]] = field(default_factory=dict)  # BN layer -> what changed, in model order
    done: bool = False
    modules: int = 0  # how many modules the model has (named_modules)

    def calls_of(self, layer: str) -> list[Call]:
        """The calls of one BN layer, in order."""
        return [c for c in self.calls if c.layer == layer]

    def train_calls(self) -> list[Call]:
        return [c for c in self.calls if c.training]

    def small_batches(self, threshold: int = 2) -> list[Call]:
        """Train-mode calls whose batch statistics came from at most `threshold` values per channel (N × spatial
        positions): 1 raises in torch, 2 or a few give running statistics made of noise (a last batch that
        drop_last=False keeps)."""
        return [c for c in self.calls if c.training and c.per_channel <= threshold]

    def __str__(self) -> str:
        train = len(self.train_calls())
        lines = [f"watch({type(self.model).__name__}): {len(self.calls)} BN call(s), {train} in train mode, "
                 f"{len(self.calls) - train} in eval mode, on {len({c.layer for c in self.calls})} of "
                 f"{len(self.layers)} BN layer(s)"]
        for name, layer in self.layers.items():
            calls = self.calls_of(name)
            sizes = sorted({c.per_channel for c in calls if c.training})
            size = f"{sizes[0]}..{sizes[-1]}" if len(sizes) > 1 else f"{sizes[0]}" if sizes else "-"
            moved = "; ".join(map(str, self.moved.get(name, []))) or ("unchanged" if self.done else "?")
            trains = sum(c.training for c in calls)
            lines.append(f"  {layer_label(name)} ({kind_of(layer)}): {trains} train / {len(calls) - trains} eval "
                         f"call(s), values per channel in train mode {size}; {moved}")
        if self.flips:
            lines.append(f"  training flags flipped: {describe_flips(self.flips, self.modules)}")
        small = self.small_batches()
        if small:
            where = ", ".join(f"{layer_label(c.layer)} ({c.per_channel})" for c in small[:10])
            lines.append(f"  train-mode calls on at most 2 values per channel: {where}"
                         + (f" and {len(small) - 10} more" if len(small) > 10 else ""))
        return "\n".join(lines)


def describe_flips(flips: dict[str, tuple[bool, bool]], modules: int | None = None, limit: int = 10) -> str:
    """'<model> train -> eval, backbone train -> eval, ...' (at most `limit` names, then a count), or 'every module
    (12): train -> eval' when all `modules` of the model flipped alike."""
    mode = {True: "train", False: "eval"}
    if len(flips) == modules and len(set(flips.values())) == 1:
        a, b = next(iter(flips.values()))
        return f"every module ({modules}): {mode[a]} -> {mode[b]}"
    items = [f"{layer_label(n)} {mode[a]} -> {mode[b]}" for n, (a, b) in flips.items()]
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more module(s)" if len(items) > limit else "")


def _first_tensor(args, kwargs) -> torch.Tensor | None:
    return next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)


@contextlib.contextmanager
def watch(model: nn.Module):
    """`with watch(model) as w:` records every BN-like layer's calls in the block (mode, input shape) and, when it
    ends, the modules whose training flag flipped and the BN statistics, counters and γ/β that moved."""
    layers = find_batchnorms(model)
    flags = {n: m.training for n, m in model.named_modules()}
    w = Watch(model, layers, modules=len(flags))
    states = {n: bn_state(m) for n, m in layers.items()}

    def hook(name):
        def pre(module, args, kwargs):
            x = _first_tensor(args, kwargs)
            w.calls.append(Call(name, module.training, tuple(x.shape) if x is not None else ()))
        return pre

    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in layers.items()]
    try:
        yield w
    finally:
        for h in handles:
            h.remove()
        now = {n: m.training for n, m in model.named_modules()}
        w.flips = {n: (flags[n], now[n]) for n in flags if n in now and flags[n] != now[n]}
        moved = {n: changes(n, states[n], bn_state(m)) for n, m in layers.items()}
        w.moved = {n: c for n, c in moved.items() if c}
        w.done = True
