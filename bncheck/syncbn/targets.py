"""The plugin's side of the SyncBN check: which layers of a model it runs on, and the check of one of them by
spec ('module.path:attr'), each worker loading its own copy."""

import functools

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bncheck.core.discover import is_batchnorm, layer_label
from bncheck.core.state import clone
from bncheck.syncbn.check import assert_syncbn_matches

__all__ = ["check_model_layer", "is_synchronized", "layer_factory", "syncbn_targets"]


def is_synchronized(module: nn.Module) -> bool:
    """torch's nn.SyncBatchNorm and its subclasses, or a BN-like module whose class name says "Sync"."""
    return isinstance(module, nn.SyncBatchNorm) or ("sync" in type(module).__name__.lower() and is_batchnorm(module))


def syncbn_targets(model: nn.Module, convert: bool = False) -> list[str]:
    """Names of the layers the SyncBN check runs on: the synchronized ones, and with `convert` also every layer
    that nn.SyncBatchNorm.convert_sync_batchnorm turns into one (torch's BN classes and their subclasses)."""
    return [name for name, m in model.named_modules() if is_synchronized(m) or (convert and isinstance(m, _BatchNorm))]


def _load_layer(spec: str, name: str, convert: bool = False, seed: int = 0) -> nn.Module:
    from bncheck.core.spec import load

    # A spec may name the user's own module instance: convert_sync_batchnorm (which swaps layers in place and
    # shares γ, β and the running statistics with the new ones) and the check's state go to a copy only.
    layer = clone(load(spec, seed=seed).model.get_submodule(name))
    return nn.SyncBatchNorm.convert_sync_batchnorm(layer) if convert else layer


def layer_factory(spec: str, name: str = "", convert: bool = False, seed: int = 0):
    """A picklable factory of (a copy of) the layer `name` (qualified, '' for the whole model) of the model `spec`
    ('module.path:attr'), converted to nn.SyncBatchNorm when `convert`: each worker loads the model anew, and the
    model `spec` names is never changed; a factory in the spec builds it under `seed` (the same weights in each)."""
    return functools.partial(_load_layer, spec, name, convert, seed)


def check_model_layer(spec: str, name: str, sample_shape, *, convert: bool = False, seed: int = 0) -> None:
    """assert_syncbn_matches, world size 2, on layer `name` of model `spec`, with samples shaped like
    `sample_shape` (C, *spatial; spatial sizes capped at 4 to keep the processes quick)."""
    channels, *spatial = sample_shape
    label = f"{spec} {layer_label(name)}" + (" (converted to nn.SyncBatchNorm)" if convert else "")
    assert_syncbn_matches(layer_factory(spec, name, convert, seed), world_size=2, seed=seed, name=label,
                          sample_shape=(channels, *(min(s, 4) for s in spatial)))
