"""Synchronized BatchNorm layers for tests/syncbn/test_syncbn.py: a correct one written from scratch for CPU/gloo,
mutants with the known synchronization bugs, and layers whose workers misbehave (hang, raise, die, outlive a killed
parent) to prove that the SyncBN check always shuts its processes down; and rank functions for the launcher alone.

Module-level, so that every worker process can unpickle them or a factory of them (tests/ is on sys.path).
"""

import os
import time
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.nn import functional as dist_nn


def _dims(x: torch.Tensor) -> list[int]:
    return [0, *range(2, x.dim())]


def _channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, differentiable: the backward all-reduces the incoming gradient."""
    with warnings.catch_warnings():  # torch 2.14 marks it deprecated for a functional API that is not autograd-aware
        warnings.simplefilter("ignore", FutureWarning)
        return dist_nn.all_reduce(t)


def _synced() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class SumSyncBatchNorm(nn.Module):
    """Correct: all-reduces each rank's per-channel sum, sum of squares and count (autograd-aware collective, so
    the backward all-reduces the gradient terms too), then normalizes with the global mean and biased variance."""

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def global_stats(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Global (mean, biased var, count) per channel."""
        x64 = x.double()  # sum of squares minus squared mean cancels: accumulate in float64
        c = x.shape[1]
        count = torch.full((c,), x.numel() / c, dtype=torch.float64)
        packed = torch.cat([x64.sum(_dims(x)), (x64 * x64).sum(_dims(x)), count])
        if _synced():
            packed = all_reduce(packed)
        total, squares, n = packed.split(c)
        mean = total / n
        return mean, squares / n - mean * mean, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            mean, var, n = self.global_stats(x)
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - m).add_(m * mean.to(self.running_mean.dtype))
                self.running_var.mul_(1 - m).add_(m * (var * n / (n - 1)).to(self.running_var.dtype))
        else:
            mean, var = self.running_mean, self.running_var
        x_hat = (x - _channel(mean, x).to(x.dtype)) / torch.sqrt(_channel(var, x).to(x.dtype) + self.eps)
        return x_hat * _channel(self.weight, x) + _channel(self.bias, x)


class AveragedVarianceSyncBatchNorm(SumSyncBatchNorm):
    """Mutant: the global mean is right, but the variance is the plain average of the ranks' own variances, which
    loses the spread between the ranks' means (and ignores unequal batch sizes)."""

    def global_stats(self, x):
        mean, _, n = super().global_stats(x)
        local_var = x.double().var(_dims(x), correction=0)
        world = dist.get_world_size() if _synced() else 1
        var = all_reduce(local_var) / world if _synced() else local_var
        return mean, var, n


class EqualWeightsSyncBatchNorm(SumSyncBatchNorm):
    """Mutant (pytorch/pytorch#22192): combines the ranks' means and variances correctly (the spread between the
    ranks' means included) but weighs every rank equally: right for equal batch sizes, wrong for unequal ones."""

    def global_stats(self, x):
        x64, dims = x.double(), _dims(x)
        c, n_local = x.shape[1], x.numel() / x.shape[1]
        mean, var = x64.mean(dims), x64.var(dims, correction=0)
        world = dist.get_world_size() if _synced() else 1
        packed = torch.cat([mean, var + mean * mean])
        if _synced():
            packed = all_reduce(packed)
        mean_sum, second_sum = packed.split(c)
        g_mean = mean_sum / world
        n = torch.full((c,), n_local, dtype=torch.float64)
        if _synced():
            n = all_reduce(n)
        return g_mean, second_sum / world - g_mean * g_mean, n


class DetachedSyncBatchNorm(SumSyncBatchNorm):
    """Mutant: the forward is right, but the statistics are all-reduced outside autograd (torch.distributed's
    plain all_reduce on detached sums), so the backward sees only the rank's own contribution to them: the output
    and running statistics match, dx does not."""

    def global_stats(self, x):
        x64, dims = x.double(), _dims(x)
        c = x.shape[1]
        local = torch.cat([x64.sum(dims), (x64 * x64).sum(dims)])
        total = local.detach().clone()
        if _synced():
            dist.all_reduce(total)
        packed = local + (total - local.detach())  # the global value, but the gradient of the local sums only
        n = torch.full((c,), x.numel() / c, dtype=torch.float64)
        if _synced():
            dist.all_reduce(n)
        sums, squares = packed.split(c)
        mean = sums / n
        return mean, squares / n - mean * mean, n


class HangingSyncBatchNorm(SumSyncBatchNorm):
    """Every rank hangs in its forward (as in a deadlock): the check must time out and end the processes."""

    def forward(self, x):
        while True:
            time.sleep(0.05)


class RaisingSyncBatchNorm(SumSyncBatchNorm):
    """Rank 1 raises before the collective, so rank 0 is left waiting in it."""

    def forward(self, x):
        if dist.get_rank() == 1:
            raise RuntimeError("planted failure on rank 1")
        return super().forward(x)


class DyingSyncBatchNorm(SumSyncBatchNorm):
    """Rank 1's process exits abruptly, without a report."""

    def forward(self, x):
        if dist.get_rank() == 1:
            os._exit(3)
        return super().forward(x)


class PidFileHangingSyncBatchNorm(HangingSyncBatchNorm):
    """Writes "<its pid> <its parent's pid>" to `directory`/rank<r>.pid, then hangs: for the test that kills the
    check's process and expects the workers (and a forkserver, their parent) to exit by themselves."""

    def __init__(self, num_features: int, directory: str):
        super().__init__(num_features)
        self.directory = directory

    def forward(self, x):
        path = os.path.join(self.directory, f"rank{dist.get_rank()}.pid")
        with open(path + ".tmp", "w") as f:
            f.write(f"{os.getpid()} {os.getppid()}")
        os.replace(path + ".tmp", path)
        return super().forward(x)


# ---- the user's own objects: a check must leave them exactly as they are -----------------------------------------

SHARED_SYNC_BN = SumSyncBatchNorm(4)  # one module every call of the factory below returns


def shared_sync_bn() -> SumSyncBatchNorm:
    """A factory that returns the same (the user's) module every time, rather than a fresh one."""
    return SHARED_SYNC_BN


# Model instances a spec names ('planted.sync:PLAIN_MODEL'), as the plugin's --bncheck-model does.
PLAIN_MODEL = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())
SYNC_MODEL = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), SumSyncBatchNorm(4), nn.ReLU())


# ---- rank functions for bncheck.syncbn.launch alone ------------------------------------------------------------

def all_reduced_rank(rank: int, world_size: int, device: torch.device, payload) -> int:
    """The sum of every rank's number, all-reduced over the process group."""
    t = torch.tensor([rank], device=device)
    dist.all_reduce(t)
    return int(t.item())


def raising_rank(rank: int, world_size: int, device: torch.device, payload) -> int:
    """Rank 1 raises (quoting the payload) while rank 0 waits in a collective that rank 1 never joins."""
    if rank == 1:
        raise ValueError(f"planted failure, payload {payload!r}")
    return all_reduced_rank(rank, world_size, device, payload)


# The text of a spec module of models holding these layers, for the plugin and torchrun tests to write and name
# (`syncmodels:scratch`); it imports them from here.
SPEC_MODULE = """
import torch
from torch import nn
from planted.sync import SumSyncBatchNorm, AveragedVarianceSyncBatchNorm

def _model(bn):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), bn, nn.ReLU())
    model.example_input = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    return model

def scratch():
    return _model(SumSyncBatchNorm(4))

def averaged():
    return _model(AveragedVarianceSyncBatchNorm(4))

def torch_sync():
    return _model(nn.SyncBatchNorm(4))

def plain():
    return _model(nn.BatchNorm2d(4))
"""
