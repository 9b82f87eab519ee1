"""Lints find redundant biases in any model, Keras momentum and frozen γ/β still tracking stats."""

import warnings

import pytest
import torch
import torchvision
from torch import nn

from bncheck import BNCheckWarning
from bncheck.checks.lints import find_frozen_affine_training, find_keras_momentum, find_redundant_bias, lint, warn
from bncheck.core.state import Snapshot


class Branchy(nn.Module):
    """Not a Sequential: conv → BN wired in forward, plus a bias-free pair and a conv that feeds no BN."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3)  # bias feeds BN: redundant
        self.bn_a = nn.BatchNorm2d(4)
        self.b = nn.Conv2d(3, 4, 3, bias=False)
        self.bn_b = nn.BatchNorm2d(4)
        self.c = nn.Conv2d(4, 4, 1)  # bias, but its output goes through ReLU first
        self.bn_c = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 6)  # bias feeds BatchNorm1d: redundant
        self.bn_fc = nn.BatchNorm1d(6)
        self.frozen_src = nn.Conv2d(4, 4, 1)  # bias into a frozen BN: NOT redundant (no batch mean subtracted)
        self.frozen = torchvision.ops.FrozenBatchNorm2d(4)

    def forward(self, x):
        y = self.bn_a(self.a(x)) + self.bn_b(self.b(x))
        y = self.bn_c(torch.relu(self.c(y)))
        y = self.frozen(self.frozen_src(y))
        return self.bn_fc(self.fc(y.mean((2, 3))))


X = torch.randn(4, 3, 8, 8)


def test_redundant_bias_found_by_tensor_identity_in_any_model():
    found = find_redundant_bias(Branchy(), X)
    assert [(f.layer, f.wasted_parameters) for f in found] == [("bn_a", 4), ("bn_fc", 6)]
    assert "a (Conv2d)" in found[0].message and "bias=False" in found[0].message


def test_redundant_bias_without_input_sees_sequential_neighbours():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8))
    assert [f.layer for f in find_redundant_bias(model)] == ["1"]


def test_vgg11_bn_has_redundant_biases_resnet18_has_none():
    assert len(find_redundant_bias(torchvision.models.vgg11_bn(), torch.randn(2, 3, 32, 32))) == 8
    assert find_redundant_bias(torchvision.models.resnet18(), torch.randn(2, 3, 32, 32)) == []


def test_keras_momentum():
    model = nn.Sequential(nn.BatchNorm2d(3, momentum=0.99), nn.BatchNorm2d(3), nn.BatchNorm2d(3, momentum=None))
    found = find_keras_momentum(model)
    assert [f.layer for f in found] == ["0"]
    assert "momentum=0.01" in found[0].message


def test_frozen_affine_only_when_training_and_tracking():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.BatchNorm2d(3), nn.BatchNorm2d(3, track_running_stats=False))
    for bn in model:
        bn.weight.requires_grad_(False)
        bn.bias.requires_grad_(False)
    model[1].eval()
    assert [f.layer for f in find_frozen_affine_training(model)] == ["0"]


def test_lint_never_changes_the_model_and_warns_with_its_category():
    model = Branchy()
    model.bn_a.momentum = 0.9
    snap = Snapshot.of(model)
    findings = lint(model, X)
    assert snap.differences(model) == []
    assert {f.lint for f in findings} == {"redundant_bias", "keras_momentum"}
    with pytest.warns(BNCheckWarning):
        warn(findings)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BNCheckWarning)
        with pytest.raises(BNCheckWarning):
            warn(findings)
