"""Whole-model planted bugs, each naming the item that must catch it (`caught_by`, as in planted.layers: a
model check's item `model_<check>` or a per-layer check), and the correct models beside them that once drew false
alarms or exercise a model check's edge (several calls, several inputs, outputs per image)."""

import torch
import torch.nn.functional as F
from torch import nn

from planted.correct import BatchNormAct2d
from planted.layers import ScratchBN


def net(bn: nn.Module) -> nn.Module:
    """conv → `bn` → ReLU → pool → linear, with trained-looking statistics in `bn` (one variance near eps)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bn, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():  # a trained-looking state, so that eval vs train and fusion see real statistics
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.running_var[0] = 1e-4  # near eps: eps placement shows
    return model


class EvalIgnoredBN(nn.BatchNorm2d):
    """calls the functional batch_norm with training=True whatever its mode."""
    caught_by = "model_bn_mode"

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, True, 0.1, self.eps)


class TrainIgnoredBN(nn.BatchNorm2d):
    """always normalizes with the running statistics, so train() has no effect."""
    caught_by = "model_train_vs_eval"

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.1, self.eps)


class UnsavedStatsBN(nn.Module):
    """running statistics are non-persistent buffers, lost by state_dict()."""
    caught_by = "model_state_dict_roundtrip"

    def __init__(self, c):
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", torch.zeros(c), persistent=False)
        self.register_buffer("running_var", torch.ones(c), persistent=False)
        self.momentum, self.eps = 0.1, 1e-5

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, 0.1, 1e-5)


class EpsOutsideInEvalBN(nn.BatchNorm2d):
    """eval mode divides by sqrt(running_var) + eps, which is not what conv-BN fusion assumes."""
    caught_by = "model_fusion"

    def forward(self, x):
        if self.training:
            return super().forward(x)
        shape = (1, -1, 1, 1)
        return ((x - self.running_mean.view(shape)) / (self.running_var.view(shape).sqrt() + self.eps)
                * self.weight.view(shape) + self.bias.view(shape))


class UpdatedTwiceBN(nn.BatchNorm2d):
    """A BN whose own update is wrong (a second forward inside forward): the per-layer checks' business."""
    caught_by = "running_stats"

    def forward(self, x):
        super().forward(x)
        return super().forward(x)


class LogsBatchStatistics(nn.Module):
    """logs a 'clean' normalized activation by a functional batch_norm on its BN's own buffers, with
    training=True: the statistics move twice per forward, although the BN layer alone is correct."""
    caught_by = "model_running_stats"

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x):
        h = self.conv(x)
        self.logged = F.batch_norm(h.detach(), self.bn.running_mean, self.bn.running_var, training=True).std()
        return self.bn(h)


class DefaultStatsBN(nn.Module):
    """its statistics default to tensors built once, when the def ran: every instance shares them."""
    caught_by = "model_running_stats"

    def __init__(self, c, running_mean=torch.zeros(4), running_var=torch.ones(4)):  # noqa: B008
        super().__init__()
        self.weight, self.bias = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.register_buffer("running_mean", running_mean)
        self.register_buffer("running_var", running_var)
        self.momentum, self.eps = 0.1, 1e-5

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum, self.eps)


class Siamese(nn.Module):
    """Correct: one BN applied to two branches, so two updates per forward."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), bn

    def forward(self, x):
        return self.bn(self.conv(x)) - self.bn(self.conv(x.flip(-1) * 2))


class PerImage(nn.Module):
    """A detector-like head: one dict per image (as torchvision's detectors return in eval mode)."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.body = net(bn)

    def forward(self, images):
        return [{"scores": logits, "labels": logits.argmax(0, keepdim=True)} for logits in self.body(images)]


class TwoInputs(nn.Module):
    """forward(a, b): the example input is the tuple of arguments."""

    def __init__(self, bn: nn.Module):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, bias=False), bn

    def forward(self, a, b):
        return self.bn(self.conv(a + b))


class EvalEpsOutsideSqrtAct(BatchNormAct2d):
    """Eval mode divides by sqrt(running_var) + eps: the fused map (eps inside) differs."""
    caught_by = "model_fusion"

    def forward(self, x):
        if self.training:
            return super().forward(x)
        y = (x - self.running_mean[:, None, None]) / (self.running_var[:, None, None].sqrt() + self.eps)
        return self.act(y * self.weight[:, None, None] + self.bias[:, None, None])


class EvalMovesRunningMean(nn.BatchNorm2d):
    """Moves its running mean in eval mode too."""
    caught_by = "model_eval_state"

    def forward(self, x):
        y = super().forward(x)
        if not self.training:
            with torch.no_grad():
                self.running_mean.add_(0.1)
        return y


class Float32Compute(ScratchBN):
    """Computes in float32 and returns float32 for half input (plain type promotion): right values."""

    def forward(self, x):
        return super().forward(x.float())


class Float32ComputeWrongEps(ScratchBN):
    """Computes in float32 but adds eps outside the sqrt: wrong values."""
    caught_by = "dtype"

    def forward(self, x):
        x = x.float()
        if not self.training:
            return super().forward(x)
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        y = (x - mean[:, None, None]) / (var[:, None, None].sqrt() + self.eps)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


class PartlyNaN(nn.Module):
    """A correct BN model whose output is NaN by design in one column (log of a negative constant)."""

    def __init__(self):
        super().__init__()
        self.lin, self.bn = nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3)

    def forward(self, x):
        y = self.bn(self.lin(x))
        return torch.cat([y, torch.log(-torch.ones_like(y[:, :1]))], dim=1)


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.bn = nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3)

    def forward(self, x):
        return self.bn(self.lin(x)) * float("inf") if not self.training else self.bn(self.lin(x))


class StatsAsAttributes(nn.Module):
    """Keeps a running mean as a plain attribute that the state_dict does not hold (the mutant)."""
    caught_by = "model_state_dict_roundtrip"

    def __init__(self):
        super().__init__()
        self.lin, self.bn = nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3)
        self.shift = torch.zeros(3)

    def forward(self, x):
        y = self.bn(self.lin(x))
        if self.training:
            self.shift = self.shift + self.lin(x).detach().mean(0)
        return y + self.shift


class RoundsWithTheBatch(nn.Module):
    """Correct in exact arithmetic (x − m + m = x, samples independent), but float32 rounding depends on the
    batch's mean m: a deep or wide model's rounding, in miniature."""

    def __init__(self, batch_stats_in_eval: bool = False):
        super().__init__()
        self.bn = nn.BatchNorm1d(6)
        self.batch_stats_in_eval = batch_stats_in_eval  # the mutant: F.batch_norm(training=True) in eval mode

    def forward(self, x):
        m = 3e4 * x.mean(0, keepdim=True)
        bn = self.bn
        return F.batch_norm(x - m + m, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            bn.training or self.batch_stats_in_eval, bn.momentum, bn.eps)
