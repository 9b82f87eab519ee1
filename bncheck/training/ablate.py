"""Ablations: twins of a model that differ in exactly one BatchNorm question, every other weight identical.

- `ablate(model)`: the no-BN twin — every BN-like layer replaced by nn.Identity.
- `bn_after_activation(model)` / `bn_before_activation(model)`: BN and an adjacent activation swapped inside
  nn.Sequential containers (BN→act becomes act→BN, or the reverse).
- `drop_bias_before_bn(model)`: conv/linear layers feeding a BN directly lose their bias.
- `drop_dropout(model)`: every dropout layer replaced by nn.Identity.

Each returns a new model (a copy made by bncheck.core.state.clone); the input model is never modified. Parameter and
buffer names of everything that stays are unchanged, so twins can load each other's state_dict(strict=False).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.dropout import _DropoutNd

from bncheck.core.capture import capture
from bncheck.core.discover import find_batchnorms, is_batchnorm, sequential_pairs
from bncheck.core.errors import BNCheckUsageError
from bncheck.core.state import clone

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU,
               nn.Mish, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name), child, new)


def _outermost(names) -> list[str]:
    """Drop names nested inside another name of the list (replacing the outer one removes them)."""
    names = sorted(names, key=len)
    kept: list[str] = []
    for n in names:
        if not any(n.startswith(k + ".") for k in kept):
            kept.append(n)
    return kept


def ablate(model: nn.Module) -> nn.Module:
    """The no-BN twin of `model`: a copy in which every BN-like layer (bncheck.find_batchnorms: torch's BN,
    subclasses, frozen and look-alike BNs) is nn.Identity and every other parameter and buffer is identical."""
    if is_batchnorm(model):
        return nn.Identity()
    twin = clone(model)
    names = _outermost(find_batchnorms(twin))
    if not names:
        raise BNCheckUsageError(f"{type(model).__name__} has no BatchNorm layer to ablate")
    for name in names:
        _replace(twin, name, nn.Identity())
    return twin


def _swap_pairs(model: nn.Module, first: Callable[[nn.Module], bool], second: Callable[[nn.Module], bool],
                what: str) -> nn.Module:
    twin = clone(model)
    swapped = 0
    for seq in [m for m in twin.modules() if isinstance(m, nn.Sequential)]:
        items = list(seq._modules.items())
        i = 0
        while i < len(items) - 1:
            if first(items[i][1]) and second(items[i + 1][1]):
                items[i], items[i + 1] = items[i + 1], items[i]
                swapped += 1
                i += 2
            else:
                i += 1
        seq._modules = OrderedDict(items)  # same names, new order: the state_dict keys stay valid
    if not swapped:
        raise BNCheckUsageError(f"{type(model).__name__} has no {what} pair inside an nn.Sequential to swap")
    return twin


def _is_act(m: nn.Module) -> bool:
    return isinstance(m, ACTIVATIONS)


def bn_after_activation(model: nn.Module) -> nn.Module:
    """A copy with every adjacent BN→activation pair of an nn.Sequential turned into activation→BN."""
    return _swap_pairs(model, is_batchnorm, _is_act, "BN→activation")


def bn_before_activation(model: nn.Module) -> nn.Module:
    """A copy with every adjacent activation→BN pair of an nn.Sequential turned into BN→activation."""
    return _swap_pairs(model, _is_act, is_batchnorm, "activation→BN")


def drop_bias_before_bn(model: nn.Module, example_input=None) -> nn.Module:
    """A copy whose conv/linear layers that feed a BN directly have no bias (bias=None).

    The producer of each BN input is found by tensor identity in one forward pass when an example input is
    given (or the model has an `example_input` attribute), otherwise from adjacent layers of nn.Sequential.
    In train mode the output is unchanged: BN subtracts the batch mean, bias included."""
    if example_input is None:
        example_input = getattr(model, "example_input", None)
    bns = find_batchnorms(model)
    if example_input is not None:
        pairs = [(producer, bn) for bn, producer in capture(model, example_input).producers.items()]
    else:
        pairs = [(a, b) for a, b in sequential_pairs(model) if b in bns]
    twin = clone(model)
    dropped = 0
    for producer_name, bn_name in pairs:
        producer = twin.get_submodule(producer_name)
        if bn_name in bns and isinstance(producer, (_ConvNd, nn.Linear)) and producer.bias is not None:
            producer.bias = None
            dropped += 1
    if not dropped:
        raise BNCheckUsageError(f"{type(model).__name__} has no conv/linear bias feeding a BN directly")
    return twin


def drop_dropout(model: nn.Module) -> nn.Module:
    """A copy with every dropout layer (nn.Dropout, Dropout1d/2d/3d, AlphaDropout, ...) replaced by nn.Identity."""
    twin = clone(model)
    names = [n for n, m in twin.named_modules() if n and isinstance(m, _DropoutNd)]
    if not names:
        raise BNCheckUsageError(f"{type(model).__name__} has no dropout layer to remove")
    for name in names:
        _replace(twin, name, nn.Identity())
    return twin

