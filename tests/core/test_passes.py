"""bncheck.core.passes: whole-model forwards, lone BN-layer forwards and backward calls, counted while a block runs."""

import torch
from torch import nn

from bncheck.core.passes import counted


def test_counts_top_level_calls_by_kind_and_restores_torch():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    backward = torch.autograd.backward
    with counted() as passes:
        model(torch.randn(2, 3, 5, 5)).sum().backward()  # one model forward: its BN inside is not a layer call
        model[1](torch.randn(2, 4, 3, 3))
        model[0](torch.randn(2, 3, 5, 5))  # a lone conv (the fusion check's producer) is neither
        torch.autograd.grad(model(torch.randn(2, 3, 5, 5)).sum(), model[0].weight)
    assert (passes.model_forward, passes.layer_forward, passes.backward) == (2, 1, 2)
    assert torch.autograd.backward is backward
    with counted() as after:
        pass
    model(torch.randn(2, 3, 5, 5))
    assert after.model_forward == 0  # the hooks are gone
    assert str(passes) == "2 whole-model forward passes, 2 backward passes, 1 BN-layer forwards"
