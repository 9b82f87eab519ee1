"""Float64 reference of PyTorch's BatchNorm contract, from the formulas of Ioffe & Szegedy (2015), Alg. 1-2.

Independent of torch's batch_norm: plain tensor arithmetic in float64 on the CPU. Channels are dim 1;
statistics reduce over every other dim.
"""

from dataclasses import dataclass

import torch


def reduce_dims(x: torch.Tensor) -> list[int]:
    """All dims but the channel dim 1."""
    return [0, *range(2, x.dim())]


def per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a (C,) vector to broadcast against x (N, C, *)."""
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def _f64(t):
    return None if t is None else t.detach().to(device="cpu", dtype=torch.float64, copy=True)


@dataclass(frozen=True)
class BatchStats:
    mean: torch.Tensor  # (C,)
    var: torch.Tensor  # (C,), biased: divides by n
    n: int  # values per channel

    @property
    def unbiased_var(self) -> torch.Tensor:
        return self.var * self.n / (self.n - 1)


def batch_stats(x: torch.Tensor) -> BatchStats:
    """Per-channel mean and biased variance of a batch."""
    x = _f64(x)
    dims = reduce_dims(x)
    n = x.numel() // x.shape[1]
    mean = x.sum(dims) / n
    var = ((x - per_channel(mean, x)) ** 2).sum(dims) / n
    return BatchStats(mean, var, n)


def normalize(x, mean, var, eps, weight=None, bias=None) -> torch.Tensor:
    """y = (x − mean) / sqrt(var + eps) · γ + β, per channel; γ, β optional."""
    x = _f64(x)
    y = (x - per_channel(_f64(mean), x)) / torch.sqrt(per_channel(_f64(var), x) + eps)
    if weight is not None:
        y = y * per_channel(_f64(weight), x)
    if bias is not None:
        y = y + per_channel(_f64(bias), x)
    return y


def train_forward(x, eps, weight=None, bias=None) -> torch.Tensor:
    """Train-mode output: normalized with the batch's own mean and biased variance."""
    stats = batch_stats(x)
    return normalize(x, stats.mean, stats.var, eps, weight, bias)


def eval_forward(x, running_mean, running_var, eps, weight=None, bias=None) -> torch.Tensor:
    """Eval-mode output: normalized with the running statistics."""
    return normalize(x, running_mean, running_var, eps, weight, bias)


@dataclass(frozen=True)
class RunningStats:
    mean: torch.Tensor
    var: torch.Tensor
    num_batches_tracked: int

    @classmethod
    def of(cls, layer) -> "RunningStats":
        nbt = getattr(layer, "num_batches_tracked", None)
        return cls(_f64(layer.running_mean), _f64(layer.running_var), 0 if nbt is None else int(nbt))


def momentum_factor(momentum: float | None, num_batches_tracked: int) -> float:
    """The weight of the new batch: momentum, or 1/num_batches_tracked for the cumulative average."""
    return 1.0 / num_batches_tracked if momentum is None else momentum


def update_running(state: RunningStats, x, momentum: float | None) -> RunningStats:
    """One train step: running ← (1 − m)·running + m·batch, the variance unbiased (n/(n−1))."""
    stats = batch_stats(x)
    nbt = state.num_batches_tracked + 1
    m = momentum_factor(momentum, nbt)
    return RunningStats(
        (1 - m) * state.mean + m * stats.mean,
        (1 - m) * state.var + m * stats.unbiased_var,
        nbt,
    )


@dataclass(frozen=True)
class Gradients:
    x: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor


def train_backward(x, dy, eps, weight=None) -> Gradients:
    """Gradients of train-mode BN (Ioffe & Szegedy, Alg. 1 differentiated; batch stats depend on x)."""
    x, dy = _f64(x), _f64(dy)
    stats = batch_stats(x)
    dims = reduce_dims(x)
    inv_std = per_channel(1.0 / torch.sqrt(stats.var + eps), x)
    x_hat = (x - per_channel(stats.mean, x)) * inv_std
    d_bias = dy.sum(dims)
    d_weight = (dy * x_hat).sum(dims)
    gamma = per_channel(_f64(weight), x) if weight is not None else 1.0
    n = stats.n
    dx = gamma * inv_std / n * (n * dy - per_channel(d_bias, x) - x_hat * per_channel(d_weight, x))
    return Gradients(dx, d_weight, d_bias)


def eval_backward(x, dy, running_mean, running_var, eps, weight=None) -> Gradients:
    """Gradients of eval-mode BN: a per-channel affine map of x."""
    x, dy = _f64(x), _f64(dy)
    dims = reduce_dims(x)
    inv_std = per_channel(1.0 / torch.sqrt(_f64(running_var) + eps), x)
    x_hat = (x - per_channel(_f64(running_mean), x)) * inv_std
    gamma = per_channel(_f64(weight), x) if weight is not None else 1.0
    return Gradients(dy * gamma * inv_std, (dy * x_hat).sum(dims), dy.sum(dims))
