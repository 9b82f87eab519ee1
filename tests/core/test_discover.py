"""Discovery finds every BN-like layer, of every kind, and nothing else."""

import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from bncheck import find_batchnorms, is_batchnorm, kind_of


class DuckBN(nn.Module):
    """Looks like BN without subclassing torch's: its own running_mean/running_var buffers."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.register_buffer("running_mean", torch.zeros(c))
        self.register_buffer("running_var", torch.ones(c))
        self.momentum = 0.1


class SubBN(nn.BatchNorm2d):
    def forward(self, x):
        return super().forward(x)


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.BatchNorm2d(3)


def test_every_kind_is_found_with_its_qualified_name():
    model = nn.Sequential(
        nn.BatchNorm1d(3), nn.BatchNorm2d(3), nn.BatchNorm3d(3), nn.LazyBatchNorm2d(), nn.SyncBatchNorm(3),
        FrozenBatchNorm2d(3), SubBN(3), DuckBN(3), Wrapper(),
    )
    found = find_batchnorms(model)
    assert list(found) == ["0", "1", "2", "3", "4", "5", "6", "7", "8.inner"]
    assert kind_of(found["5"]) == "FrozenBatchNorm2d, frozen"
    assert kind_of(found["6"]) == "SubBN, subclass of BatchNorm2d"
    assert kind_of(found["7"]) == "DuckBN, BN-like"
    assert kind_of(found["3"]) == "LazyBatchNorm2d"


def test_other_norms_are_not_batchnorm():
    for module in (nn.GroupNorm(1, 3), nn.LayerNorm(3), nn.InstanceNorm2d(3, track_running_stats=True),
                   nn.InstanceNorm1d(3, affine=True), nn.LocalResponseNorm(2), nn.Linear(3, 3)):
        assert not is_batchnorm(module), type(module).__name__


def test_a_bn_model_itself_is_found_under_the_empty_name():
    assert list(find_batchnorms(nn.BatchNorm2d(4))) == [""]


def test_untracked_torch_bn_is_still_batchnorm():
    assert is_batchnorm(nn.BatchNorm2d(3, track_running_stats=False))
