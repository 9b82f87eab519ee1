"""Correct BatchNorm layers written from scratch the way tutorials and papers write them.

Each is right in every respect of the contract (batch statistics, eps inside the sqrt, momentum update with the
unbiased variance, eval from the running statistics, gradients) but none copies torch's edge behaviour: they raise
on an empty batch, let γ/β broadcast against a 1-channel input, or update their buffers whether or not
`track_running_stats` was switched off at run time. bncheck must pass them (those differences are conformance
warnings) and fail them only under strict.
"""

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _shape(x: torch.Tensor) -> tuple[int, ...]:
    return (1, -1) + (1,) * (x.dim() - 2)


class TutorialBatchNorm2d(nn.BatchNorm2d):
    """A subclass of torch's BatchNorm2d with its own forward, as the forums' 'BatchNorm2d from scratch' writes it."""

    def forward(self, x):
        if self.training and x.numel() // x.size(1) == 1:
            raise ValueError("Expected more than 1 value per channel when training")
        factor = 0.0
        if self.training and self.track_running_stats:
            self.num_batches_tracked += 1
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        if self.training:
            mean = x.mean([0, 2, 3])
            var = x.var([0, 2, 3], unbiased=False)
            n = x.numel() / x.size(1)
            with torch.no_grad():
                self.running_mean = factor * mean + (1 - factor) * self.running_mean
                self.running_var = factor * var * n / (n - 1) + (1 - factor) * self.running_var
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y


class PaperBatchNorm(nn.Module):
    """Ioffe & Szegedy's Algorithm 1 in a plain nn.Module with registered buffers, for (N, C) and (N, C, *)."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        dims = [0, *range(2, x.dim())]
        if self.training:
            n = x.numel() // x.shape[1]
            if n <= 1:
                raise ValueError("Expected more than 1 value per channel when training")
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean)
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var * n / (n - 1))
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - mean.view(_shape(x))) / torch.sqrt(var.view(_shape(x)) + self.eps)
        return x_hat * self.weight.view(_shape(x)) + self.bias.view(_shape(x))


class FunctionalBatchNorm(PaperBatchNorm):
    """F.batch_norm on its own buffers, with its own train flag and batch counter: what a library's 'custom BN'
    often is."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__(num_features, eps, momentum)
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.track_running_stats = True

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.eps)


class ScratchBatchNorm1d(_BatchNorm):
    """A subclass of torch's _BatchNorm for (N, C) input with the whole train step written out."""

    def _check_input_dim(self, x):
        if x.dim() != 2:
            raise ValueError(f"expected 2D input (got {x.dim()}D input)")

    def forward(self, x):
        self._check_input_dim(x)
        if self.training:
            if x.shape[0] < 2:
                raise ValueError("Expected more than 1 value per channel when training")
            mean = x.mean(0)
            var = ((x - mean) ** 2).mean(0)
            if self.track_running_stats and self.running_mean is not None:
                self.num_batches_tracked.add_(1)
                m = 1.0 / self.num_batches_tracked.item() if self.momentum is None else self.momentum
                n = x.shape[0]
                with torch.no_grad():
                    self.running_mean.mul_(1 - m).add_(m * mean)
                    self.running_var.mul_(1 - m).add_(m * var * n / (n - 1))
        elif self.running_mean is not None:
            mean, var = self.running_mean, self.running_var
        else:
            mean, var = x.mean(0), x.var(0, unbiased=False)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.affine else y


TEXTBOOK = {
    "TutorialBatchNorm2d": (lambda: TutorialBatchNorm2d(4), 4),
    "PaperBatchNorm-1d": (lambda: PaperBatchNorm(4), 2),
    "PaperBatchNorm-2d": (lambda: PaperBatchNorm(4), 4),
    "FunctionalBatchNorm-2d": (lambda: FunctionalBatchNorm(4), 4),
    "ScratchBatchNorm1d": (lambda: ScratchBatchNorm1d(4), 2),
}


def textbook_net() -> nn.Module:
    """A small CNN whose two BN layers are textbook ones (2-d and 1-d), with its example input: correct, not
    torch-identical."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), PaperBatchNorm(4), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                          nn.Flatten(), nn.Linear(16, 6, bias=False), ScratchBatchNorm1d(6))
    model.example_input = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    return model
