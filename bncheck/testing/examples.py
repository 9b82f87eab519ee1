"""Models shipped with bncheck, for its quick start and its own tests."""

import torch
from torch import nn


def seed_cnn() -> nn.Module:
    """The seed tutorial's Fashion-MNIST CNN with BN (deeplizard): BatchNorm2d(6) after the first conv block,
    BatchNorm1d(120) after the first linear layer. Input: (N, 1, 28, 28)."""
    net = nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2, 2), nn.BatchNorm2d(6),
        nn.Conv2d(6, 12, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2, 2),
        nn.Flatten(start_dim=1),
        nn.Linear(12 * 4 * 4, 120), nn.ReLU(), nn.BatchNorm1d(120),
        nn.Linear(120, 60), nn.ReLU(),
        nn.Linear(60, 10),
    )
    net.example_input = torch.randn(8, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    return net
