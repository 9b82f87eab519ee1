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
from mutants import CHANNELS, DuckBN, ManualBackwardBN, ScratchBN, example_input

Factory = Callable[[], tuple[nn.Module, torch.Tensor]]


class BatchNormAct2d(nn.BatchNorm2d):
    """BN followed by an activation child, like timm's BatchNormAct2d."""

    def __init__(self, num_features, act: nn.Module | None = None, **kwargs):
        super().__init__(num_features, **kwargs)
        self.act = act if act is not None else nn.Identity()

    def forward(self, x):
        return self.act(super().forward(x))


def _layer(make: Callable[[], nn.Module], rank: int) -> Factory:
    return lambda: (make(), example_input(rank))


_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}
_RANK = {1: 2, 2: 4}
_OPTIONS = {"affine=False": {"affine": False}, "track_running_stats=False": {"track_running_stats": False},
            "momentum=None": {"momentum": None}, "momentum=0.3": {"momentum": 0.3}, "eps=1e-3": {"eps": 1e-3}}

HAND_MADE: dict[str, Factory] = {
    "BatchNorm1d-2d": _layer(lambda: nn.BatchNorm1d(CHANNELS), 2),
    "BatchNorm1d-3d": _layer(lambda: nn.BatchNorm1d(CHANNELS), 3),
    "BatchNorm2d": _layer(lambda: nn.BatchNorm2d(CHANNELS), 4),
    "BatchNorm3d": _layer(lambda: nn.BatchNorm3d(CHANNELS), 5),
    **{f"BatchNorm{d}d-{label}": _layer(functools.partial(_BN[d], CHANNELS, **kw), _RANK[d])
       for label, kw in _OPTIONS.items() for d in (1, 2)},
    "LazyBatchNorm1d": _layer(nn.LazyBatchNorm1d, 3),
    "LazyBatchNorm2d": _layer(nn.LazyBatchNorm2d, 4),
    "SyncBatchNorm": _layer(lambda: nn.SyncBatchNorm(CHANNELS), 4),
    "FrozenBatchNorm2d": _layer(lambda: FrozenBatchNorm2d(CHANNELS), 4),
    "ScratchBN-2d": _layer(lambda: ScratchBN(CHANNELS), 2),
    "ScratchBN-4d": _layer(lambda: ScratchBN(CHANNELS), 4),
    "ScratchBN-momentum=None": _layer(lambda: ScratchBN(CHANNELS, momentum=None), 3),
    "ScratchBN-affine=False": _layer(lambda: ScratchBN(CHANNELS, affine=False), 4),
    "ScratchBN-track_running_stats=False": _layer(lambda: ScratchBN(CHANNELS, track_running_stats=False), 3),
    "ManualBackwardBN": _layer(lambda: ManualBackwardBN(CHANNELS), 4),
    "DuckBN": _layer(lambda: DuckBN(CHANNELS), 3),
    "BatchNormAct2d-Identity": _layer(lambda: BatchNormAct2d(CHANNELS), 4),
    "BatchNormAct2d-ReLU": _layer(lambda: BatchNormAct2d(CHANNELS, nn.ReLU()), 4),
}


_MODELS = {
    "resnet18": torchvision.models.resnet18,
    "mobilenet_v3_small": torchvision.models.mobilenet_v3_small,
    "resnet18-frozen": functools.partial(torchvision.models.resnet18, norm_layer=FrozenBatchNorm2d),
}


def _sample(names: list[str]) -> list[str]:
    """The first, the middle and the last four BN layers: the stem, a mid-network block, and the narrow-spatial
    tail (2×2 maps, where n is smallest). All of them would triple this file's run time for little new."""
    picked = [names[0], names[len(names) // 2], *names[-4:]]
    return list(dict.fromkeys(picked))


@functools.cache
def _captured(model_name: str) -> tuple[dict[str, nn.Module], dict[str, torch.Tensor]]:
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
    out = {}
    for model_name in _MODELS:
        layers, _ = _captured(model_name)
        out |= {f"{model_name}.{name}": _model_layer(model_name, name) for name in _sample(list(layers))}
    return out


CORRECT_LAYERS: dict[str, Factory] = HAND_MADE | model_layers()
