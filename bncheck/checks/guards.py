"""Guards around the user's own training code: run their training step or evaluation — which changes their model,
as it would anyway — and assert what it did to the BN layers: frozen layers stayed frozen, evaluation was pure,
trainable layers updated. A guard adds only hooks that it removes (watch): no forward pass or state of its own."""

from collections.abc import Callable, Iterable

import torch
from torch import nn

from bncheck.checks.watch import AFFINE, COUNTER, STATISTICS, Change, Watch, describe_flips, watch
from bncheck.core.discover import find_batchnorms, is_frozen, kind_of, layer_label
from bncheck.core.errors import BNCheckError, BNCheckUsageError, assertion_helper

FROZEN_IN_TRAIN_MODE = (
    "the frozen layers ran in train mode: model.train() after freezing puts every layer back in train mode, and "
    "requires_grad=False freezes γ/β, not the running statistics (pytorch/pytorch#86590). Keep them in eval mode, "
    "e.g. override the model's train() to call .eval() on them again, or use torchvision.ops.FrozenBatchNorm2d")
STATS_WRITTEN = (
    "the statistics were written outside a train-mode forward of the layer (load_state_dict, weight averaging, a "
    "functional batch_norm with training=True on its buffers, in-place edits)")
AFFINE_TRAINED = ("γ/β require grad, so the optimizer updates them: set requires_grad=False on them and leave them "
                  "out of the optimizer")
AFFINE_WRITTEN = ("γ/β were written in place although they do not require grad (load_state_dict, weight averaging, "
                  "in-place edits)")
EVAL_IN_TRAIN_MODE = (
    "the BN layers ran in train mode during evaluate(): call model.eval() before evaluating (torch.no_grad() does "
    "not stop BN from updating its running statistics) and restore the previous mode afterwards "
    "(pytorch/pytorch#5406)")
EVAL_WRITES = ("evaluate() changes BN state outside a train-mode forward (load_state_dict, weight averaging, a "
               "functional batch_norm with training=True on the buffers, in-place edits)")
LEFT_IN_EVAL = (
    "evaluate() switches to eval mode (model.eval()) and does not switch back, so the training that follows runs "
    "in eval mode and BN statistics stop updating: remember model.training and call model.train(was_training) at "
    "the end, in a finally block")
LEFT_IN_TRAIN = ("evaluate() switches modules to train mode (model.train()) and leaves them there: restore each "
                 "module's previous mode at the end")
NOT_CALLED = "step() never called the layers: their branch is unused or bypassed in the forward"
RAN_IN_EVAL = (
    "the layers ran in eval mode: step() does not call model.train(), so an earlier evaluation (model.eval()) left "
    "the model in eval mode; if they are meant to be frozen, leave them out with layers=")
MOMENTUM_ZERO = "momentum=0: a train-mode forward leaves the running statistics where they are"
FROZEN_KIND = "a frozen BN (FrozenBatchNorm-like) never updates its statistics"
NO_UPDATE = (
    "the layers ran in train mode but did not update their statistics: their forward does not update them (a "
    "functional batch_norm with training=False or without its buffers), or track_running_stats was switched off")


def grad_frozen(layer: nn.Module) -> bool:
    """γ/β are Parameters and none requires grad: frozen the usual way (which does not freeze the statistics)."""
    params = [p for p in (getattr(layer, q, None) for q in AFFINE) if isinstance(p, nn.Parameter)]
    return bool(params) and not any(p.requires_grad for p in params)


def meant_frozen(model: nn.Module) -> dict[str, nn.Module]:
    """The BN-like layers meant to be frozen: FrozenBatchNorm-like ones and those whose γ/β do not require grad."""
    return {n: m for n, m in find_batchnorms(model).items() if is_frozen(m) or grad_frozen(m)}


def _tracks(layer: nn.Module) -> bool:
    return all(isinstance(getattr(layer, q, None), torch.Tensor) for q in STATISTICS)


def select(model: nn.Module, layers: str | Iterable[str]) -> dict[str, nn.Module]:
    """The BN-like layers that `layers` names, in model order: a BN layer's name, or any module's name for every
    BN layer under it ('' for the whole model)."""
    bns = find_batchnorms(model)
    modules = dict(model.named_modules())
    names = [layers] if isinstance(layers, str) else list(layers)
    picked = set()
    for n in names:
        if n not in modules:
            known = ", ".join(map(repr, list(bns)[:10])) + (", ..." if len(bns) > 10 else "")
            raise BNCheckUsageError(f"layers: {n!r} is not a module of {type(model).__name__} (its BN layers: "
                                    f"{known or 'none'})")
        under = {b for b in bns if not n or b == n or b.startswith(n + ".")}
        if not under:
            raise BNCheckUsageError(f"layers: {n!r} ({type(modules[n]).__name__}) holds no BN layer")
        picked |= under
    return {b: m for b, m in bns.items() if b in picked}


def _calls(w: Watch, layer: str) -> str:
    calls = w.calls_of(layer)
    train = sum(c.training for c in calls)
    runs = [f"{k}× in {mode} mode" for k, mode in ((train, "train"), (len(calls) - train, "eval")) if k]
    return f"ran {', '.join(runs)}" if runs else "not called"


def _line(w: Watch, layer: str, what: str) -> str:
    return f"- {layer_label(layer)} ({kind_of(w.layers[layer])}, {_calls(w, layer)}): {what}"


def _moved(changes: list[Change]) -> str:
    return "; ".join(map(str, changes))


def _error(title: str, headline: str, lines: list[str], causes: list[str], layers: list[str], quantity: str,
           w: Watch) -> BNCheckError:
    distinct = list(dict.fromkeys(causes))
    if len(distinct) == 1:
        tail = f"Likely cause: {distinct[0]}"
    else:
        tail = "Likely causes: " + " ".join(f"({i}) {c}." for i, c in enumerate(distinct, 1))
    return BNCheckError("\n".join([f"{title}: {headline}:", *lines, tail]),
                        where=", ".join(layer_label(n) for n in layers), quantity=quantity,
                        cause="; ".join(distinct), report=w)


@assertion_helper
def assert_bn_frozen(model: nn.Module, step: Callable, *, layers: str | Iterable[str] | None = None,
                     name: str = ""):
    """Run `step()` (the user's training step: it really changes the model) and assert that the BN layers meant to
    be frozen kept their running statistics, num_batches_tracked, γ and β. Returns what step() returns.

    `layers`: their names (or a module's, for every BN under it); by default the FrozenBatchNorm-like layers and
    those whose γ/β do not require grad."""
    title = name or type(model).__name__
    frozen = select(model, layers) if layers is not None else meant_frozen(model)
    if not frozen:
        raise BNCheckUsageError(f"{title}: no BN layer is meant to be frozen (none is FrozenBatchNorm-like or has "
                                f"γ/β with requires_grad=False): name them, e.g. layers=['backbone']")
    with watch(model) as w:
        result = step()
    bad = {n: w.moved[n] for n in frozen if n in w.moved}
    if not bad:
        return result
    causes = []
    for n, moved in bad.items():
        quantities = {c.quantity for c in moved}
        if quantities & {*STATISTICS, COUNTER}:
            causes.append(FROZEN_IN_TRAIN_MODE if any(c.training for c in w.calls_of(n)) else STATS_WRITTEN)
        if quantities & set(AFFINE):
            trained = any(getattr(getattr(frozen[n], q, None), "requires_grad", False) for q in AFFINE)
            causes.append(AFFINE_TRAINED if trained else AFFINE_WRITTEN)
    raise _error(title, f"{len(bad)} of {len(frozen)} frozen BN layer(s) changed during step()",
                 [_line(w, n, _moved(moved)) for n, moved in bad.items()], causes, list(bad),
                 "frozen BN state", w)


@assertion_helper
def assert_eval_is_pure(model: nn.Module, evaluate: Callable, *, name: str = ""):
    """Run `evaluate()` (the user's evaluation routine) and assert that it moved no BN statistic, counter, γ or β
    and left every module's training flag as it found it. Returns what evaluate() returns."""
    title = name or type(model).__name__
    with watch(model) as w:
        result = evaluate()
    if not w.flips and not w.moved:
        return result
    lines, causes, parts = [], [], []
    if w.flips:
        parts.append(f"it flipped the training flag of {len(w.flips)} module(s)")
        lines.append(f"- training flags changed: {describe_flips(w.flips, w.modules, limit=20)}")
        flips = w.flips.values()
        causes += [LEFT_IN_EVAL] if any(a and not b for a, b in flips) else []
        causes += [LEFT_IN_TRAIN] if any(b and not a for a, b in flips) else []
    if w.moved:
        parts.append(f"it changed the state of {len(w.moved)} BN layer(s)")
    for n, moved in w.moved.items():
        lines.append(_line(w, n, _moved(moved)))
        causes.append(EVAL_IN_TRAIN_MODE if any(c.training for c in w.calls_of(n)) else EVAL_WRITES)
    raise _error(title, f"evaluate() is not pure: {' and '.join(parts)}", lines, causes,
                 list(w.moved) or list(w.flips), "BN state and training flags", w)


def _stale(w: Watch, layer: nn.Module, moved: list[Change]) -> str | None:
    """What did not update in a layer that should have (None when it updated)."""
    quantities = {c.quantity for c in moved}
    counter = getattr(layer, COUNTER, None)
    counted = not isinstance(counter, torch.Tensor) or any(
        c.quantity == COUNTER and isinstance(c.before, torch.Tensor) and bool((c.after > c.before).all())
        for c in moved)
    if counted and quantities & set(STATISTICS):
        return None
    counts = [c for c in moved if c.quantity in {*STATISTICS, COUNTER}]  # γ/β are the optimizer's business here
    what = [_moved(counts)] if counts else []
    if not quantities & set(STATISTICS):
        what.insert(0, "running_mean and running_var unchanged")
    if isinstance(counter, torch.Tensor) and COUNTER not in quantities and counter.numel() == 1:
        what.append(f"{COUNTER} stayed {int(counter)}")
    return "; ".join(what)


@assertion_helper
def assert_stats_updated(model: nn.Module, step: Callable, *, layers: str | Iterable[str] | None = None,
                         name: str = ""):
    """Run `step()` (the user's training step) and assert that every BN layer that should train moved its running
    statistics and counted the step in num_batches_tracked. Returns what step() returns.

    `layers`: their names (or a module's, for every BN under it); by default every BN-like layer with running
    statistics that is not meant to be frozen (not FrozenBatchNorm-like, γ/β requiring grad or absent)."""
    title = name or type(model).__name__
    if layers is not None:
        trainable = select(model, layers)
        untracked = [layer_label(n) for n, m in trainable.items() if not _tracks(m)]
        if untracked:
            raise BNCheckUsageError(f"layers: {', '.join(untracked)} keep no running statistics "
                                    f"(track_running_stats=False)")
    else:
        frozen = meant_frozen(model)
        trainable = {n: m for n, m in find_batchnorms(model).items() if n not in frozen and _tracks(m)}
    if not trainable:
        raise BNCheckUsageError(f"{title}: no BN layer with running statistics is meant to train (each is frozen or "
                                f"has track_running_stats=False)")
    with watch(model) as w:
        result = step()
    stale = {n: what for n, m in trainable.items() if (what := _stale(w, m, w.moved.get(n, []))) is not None}
    if not stale:
        return result
    causes = []
    for n in stale:
        calls, layer = w.calls_of(n), trainable[n]
        if is_frozen(layer):
            causes.append(FROZEN_KIND)
        elif not calls:
            causes.append(NOT_CALLED)
        elif not any(c.training for c in calls):
            causes.append(RAN_IN_EVAL)
        elif getattr(layer, "momentum", None) == 0:
            causes.append(MOMENTUM_ZERO)
        else:
            causes.append(NO_UPDATE)
    raise _error(title, f"{len(stale)} of {len(trainable)} BN layer(s) that should train did not update their "
                 f"running statistics during step()", [_line(w, n, what) for n, what in stale.items()], causes,
                 list(stale), "running statistics", w)
