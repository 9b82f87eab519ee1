"""Which modules of a model are BatchNorm layers, and of what kind."""

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

_TORCH_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm,
             nn.LazyBatchNorm1d, nn.LazyBatchNorm2d, nn.LazyBatchNorm3d)


STATISTICS = ("running_mean", "running_var")


def _has_buffer(module: nn.Module, name: str) -> bool:
    # A registered None counts: that is how a BN without running statistics declares them.
    return name in module._buffers


def unregistered_statistics(module: nn.Module) -> list[str]:
    """The running statistics `module` keeps as plain tensor attributes: state_dict() and .to() do not see them."""
    return [name for name in STATISTICS if isinstance(module.__dict__.get(name), torch.Tensor)]


def is_batchnorm(module: nn.Module) -> bool:
    """torch's BN and its subclasses, or any module that looks like BN: its own running_mean/var buffers, or the
    same kept as plain tensor attributes next to γ/β or a num_features (a textbook pattern, and a defect)."""
    if isinstance(module, _InstanceNorm):
        return False
    if isinstance(module, _BatchNorm):
        return True
    if all(_has_buffer(module, name) for name in STATISTICS):
        return True
    return (all(_has_buffer(module, n) or n in unregistered_statistics(module) for n in STATISTICS)
            and any(hasattr(module, key) for key in ("weight", "bias", "num_features")))


def is_frozen(module: nn.Module) -> bool:
    """A frozen BN (torchvision's FrozenBatchNorm2d and its kin): no momentum, γ/β are not Parameters.

    It always normalizes with its stored statistics and has no train-mode behaviour of its own.
    """
    if isinstance(module, _BatchNorm):
        return False
    weight = getattr(module, "weight", None)
    return not hasattr(module, "momentum") and not isinstance(weight, nn.Parameter)


def kind_of(module: nn.Module) -> str:
    """A short label: torch's class name, or 'Name, subclass of X' / 'Name, frozen' / 'Name, BN-like'."""
    cls = type(module)
    if cls in _TORCH_BN:
        return cls.__name__
    if isinstance(module, _BatchNorm):
        base = next(b for b in cls.__mro__ if b in _TORCH_BN or b is _BatchNorm)
        return f"{cls.__name__}, subclass of {base.__name__}"
    if is_frozen(module):
        return f"{cls.__name__}, frozen"
    return f"{cls.__name__}, BN-like"


def layer_label(name: str) -> str:
    """A layer's name in messages: '' (a BN given as the whole model) reads '<model>'."""
    return name or "<model>"


def find_batchnorms(model: nn.Module) -> dict[str, nn.Module]:
    """Every BN-like layer of `model` by qualified name, in registration order; nested BN-likes included."""
    if is_batchnorm(model):
        return {"": model} | {n: m for n, m in model.named_modules() if n and is_batchnorm(m)}
    return {name: m for name, m in model.named_modules() if is_batchnorm(m)}


def sequential_pairs(model: nn.Module):
    """(name, next name) of every two neighbouring children of the nn.Sequential containers in `model`: the only
    data flow visible without running it."""
    for prefix, seq in model.named_modules():
        if isinstance(seq, nn.Sequential):
            names = [f"{prefix}.{n}" if prefix else n for n, _ in seq.named_children()]
            yield from zip(names, names[1:])
