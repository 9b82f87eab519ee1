"""Correct BatchNorm layers, each with a matching input: no bncheck check may flag any of them.

CORRECT_LAYERS maps a readable id to a factory returning (layer, x). Hand-made layers get small inputs
(batch 4-8, spatial <= 6); the torchvision models' layers get their real inputs captured on a (2, 3, 64, 64) batch.
"""

import functools
from collections.abc import Callable

import torch
import torchvision
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

import bncheck
from planted.layers import CHANNELS, DuckBN, ManualBackwardBN, ScratchBN, example_input

Factory = Callable[[], tuple[nn.Module, torch.Tensor]]


class BatchNormAct2d(nn.BatchNorm2d):
    """BN followed by an activation child, like timm's BatchNormAct2d."""

    def __init__(self, num_features, act: nn.Module | None = None, **kwargs):
        super().__init__(num_features, **kwargs)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x):
        return self.act(super().forward(x))


def _layer(cls: Callable[..., nn.Module], rank: int, *args, **kwargs) -> Factory:
    return lambda: (cls(*args, **kwargs), example_input(rank))


_OPTIONS = {"affine=False": {"affine": False}, "track_running_stats=False": {"track_running_stats": False},
            "momentum=None": {"momentum": None}, "momentum=0.3": {"momentum": 0.3}, "eps=1e-3": {"eps": 1e-3}}

HAND_MADE: dict[str, Factory] = {
    "BatchNorm1d-2d": _layer(nn.BatchNorm1d, 2, CHANNELS),
    "BatchNorm1d-3d": _layer(nn.BatchNorm1d, 3, CHANNELS),
    "BatchNorm2d": _layer(nn.BatchNorm2d, 4, CHANNELS),
    "BatchNorm3d": _layer(nn.BatchNorm3d, 5, CHANNELS),
    **{f"{cls.__name__}-{label}": _layer(cls, rank, CHANNELS, **options)
       for label, options in _OPTIONS.items() for cls, rank in ((nn.BatchNorm1d, 2), (nn.BatchNorm2d, 4))},
    "LazyBatchNorm1d": _layer(nn.LazyBatchNorm1d, 3),
    "LazyBatchNorm2d": _layer(nn.LazyBatchNorm2d, 4),
    "SyncBatchNorm": _layer(nn.SyncBatchNorm, 4, CHANNELS),
    "FrozenBatchNorm2d": _layer(FrozenBatchNorm2d, 4, CHANNELS),
    "ScratchBN-2d": _layer(ScratchBN, 2, CHANNELS),
    "ScratchBN-4d": _layer(ScratchBN, 4, CHANNELS),
    "ScratchBN-momentum=None": _layer(ScratchBN, 3, CHANNELS, momentum=None),
    "ScratchBN-affine=False": _layer(ScratchBN, 4, CHANNELS, affine=False),
    "ScratchBN-track_running_stats=False": _layer(ScratchBN, 3, CHANNELS, track_running_stats=False),
    "ManualBackwardBN": _layer(ManualBackwardBN, 4, CHANNELS),
    "DuckBN": _layer(DuckBN, 3, CHANNELS),
    "BatchNormAct2d-Identity": _layer(BatchNormAct2d, 4, CHANNELS),
    "BatchNormAct2d-ReLU": _layer(lambda: BatchNormAct2d(CHANNELS, nn.ReLU()), 4),
}


_MODELS = {
    "resnet18": torchvision.models.resnet18,
    "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "resnet18-frozen": functools.partial(torchvision.models.resnet18, norm_layer=FrozenBatchNorm2d),
}


@functools.cache
def _captured(model_name: str) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor]]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = _MODELS[model_name]()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return bncheck.find_batchnorms(model), bncheck.capture(model, x).inputs


def _model_layer(model_name: str, layer_name: str) -> Factory:
    def make():
        layers, inputs = _captured(model_name)
        return layers[layer_name], inputs[layer_name]
    return make


def model_layers() -> dict[str, Factory]:
    """Every BN layer of every model (all 74 run in a few seconds, so no sampling)."""
    out = {}
    for model_name in _MODELS:
        layers, _ = _captured(model_name)
        out |= {f"{model_name}.{name}": _model_layer(model_name, name) for name in layers}
    return out


CORRECT_LAYERS: dict[str, Factory] = HAND_MADE | model_layers()
