"""Proof by mutants: BatchNorm layers with exactly one planted defect each, and the correct layers they derive from.

Every mutant names the bncheck check that must catch it (`caught_by`), the input rank it needs (`rank`),
constructor options that make its defect reachable (`options`), and, where bncheck offers a diagnosis for it,
a phrase its "Likely cause" must contain (`diagnosis`). Its direct base class is a correct layer: the same
check passes on the base, so what the check catches is the one overridden method.
"""

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from bncheck.core.tolerances import LOW_PRECISION

CHANNELS = 4
# (batch, spatial) per rank; small, and N differs from the spatial sizes so that reduction-dim mix-ups show.
_SHAPES = {2: (8, ()), 3: (4, (5,)), 4: (4, (3, 5)), 5: (2, (2, 3, 2))}


def example_input(rank: int, channels: int = CHANNELS, seed: int = 0) -> torch.Tensor:
    batch, spatial = _SHAPES[rank]
    gen = torch.Generator().manual_seed(seed)
    return 2.0 * torch.randn(batch, channels, *spatial, generator=gen) + 0.5


def channel_dims(x: torch.Tensor) -> list[int]:
    """The dims BN statistics average over: all but the channel dim 1."""
    return [0, *range(2, x.dim())]


def per_channel(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


class ScratchBN(nn.Module):
    """A correct BatchNorm for any rank in plain tensor ops, one small method per step of the contract."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
        super().__init__()
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        tracked = {"running_mean": torch.zeros(num_features), "running_var": torch.ones(num_features),
                   "num_batches_tracked": torch.tensor(0, dtype=torch.long)}
        for key, value in tracked.items():
            self.register_buffer(key, value if track_running_stats else None)

    def forward(self, x):
        self.check_input(x)
        xc = x.to(self.compute_dtype(x))
        y = self.transform(xc)
        if self.updates_running():
            self.update_running(xc.detach())
        return self.cast_output(y, x)

    def uses_batch_stats(self) -> bool:
        return self.training or not self.track_running_stats

    def check_input(self, x):
        if x.shape[1] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels (dim 1), got input of size {tuple(x.shape)}")
        n = x.numel() // x.shape[1]
        if self.uses_batch_stats() and n == 1:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        if self.training and self.eps <= 0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {self.eps}")

    def compute_dtype(self, x) -> torch.dtype:
        """float32 statistics for half inputs, float64 for float64."""
        return torch.promote_types(x.dtype, torch.float32)

    def updates_running(self) -> bool:
        return self.training and self.track_running_stats

    def update_running(self, x):
        # Computed apart from the normalization statistics, so that a mutant's normalization defect stays out of
        # the running statistics (one defect per mutant).
        n = x.numel() // x.shape[1]
        self.count_batch()
        if n == 0:  # an empty batch has no statistics
            return
        mean, var = x.mean(channel_dims(x)), x.var(channel_dims(x), correction=0)
        m = self.momentum_factor()
        self.running_mean.copy_(self.average(self.running_mean, mean, m))
        self.running_var.copy_(self.average(self.running_var, self.unbias(var, n), m))

    def count_batch(self):
        self.num_batches_tracked += 1

    def momentum_factor(self) -> float:
        return 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum

    def average(self, old, new, m):
        return (1 - m) * old + m * new

    def unbias(self, var, n):
        return var * n / (n - 1)

    def transform(self, x):
        """x̂·γ + β in the compute dtype."""
        return self.scale_shift(self.normalize(x, *self.statistics(x)))

    def statistics(self, x):
        """Mean and variance to normalize with, shaped to broadcast against x."""
        if self.uses_batch_stats():
            return self.batch_stats(x)
        return per_channel(self.running_mean, x), per_channel(self.running_var, x)

    def reduce_dims(self, x):
        return channel_dims(x)

    def batch_stats(self, x):
        """Mean and biased variance over reduce_dims."""
        dims = self.reduce_dims(x)
        mean = x.mean(dims, keepdim=True)
        return mean, (x - mean).square().mean(dims, keepdim=True)

    def normalize(self, x, mean, var):
        return (x - mean) / torch.sqrt(var + self.eps)

    def scale_shift(self, x_hat):
        if not self.affine:
            return x_hat
        return x_hat * per_channel(self.weight, x_hat) + per_channel(self.bias, x_hat)

    def cast_output(self, y, x):
        return y.to(x.dtype)


def _train_bn_grads(dy, x_hat, inv_std, weight):
    """Correct (dx, dγ, dβ) of train-mode BN (Ioffe & Szegedy 2015, Alg. 1 differentiated)."""
    dims = channel_dims(dy)
    dgamma, dbeta = (dy * x_hat).sum(dims), dy.sum(dims)
    dx_hat = dy * per_channel(weight, dy)
    dx = inv_std * (dx_hat - dx_hat.mean(dims, keepdim=True)
                    - x_hat * (dx_hat * x_hat).mean(dims, keepdim=True))
    return dx, dgamma, dbeta


class TrainBNFunction(torch.autograd.Function):
    """Train-mode x̂·γ + β with a hand-written backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = channel_dims(x)
        mean = x.mean(dims, keepdim=True)
        inv_std = torch.rsqrt((x - mean).square().mean(dims, keepdim=True) + eps)
        x_hat = (x - mean) * inv_std
        ctx.save_for_backward(x_hat, inv_std, weight)
        return x_hat * per_channel(weight, x) + per_channel(bias, x)

    @staticmethod
    def backward(ctx, dy):
        return *_train_bn_grads(dy, *ctx.saved_tensors), None


class ManualBackwardBN(ScratchBN):
    """A correct ScratchBN whose train-mode transform runs through a custom autograd.Function."""

    function = TrainBNFunction

    def transform(self, x):
        if not (self.training and self.affine):
            return super().transform(x)
        return self.function.apply(x, self.weight, self.bias, self.eps)


class DuckBN(nn.Module):
    """A correct BN-like layer that is no torch BN subclass: F.batch_norm on its own buffers, no batch counter."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def running(self):
        """The buffers F.batch_norm reads and updates in place."""
        return self.running_mean, self.running_var

    def forward(self, x):
        return F.batch_norm(x, *self.running(), self.weight, self.bias, self.training, self.momentum, self.eps)


# --- running statistics -------------------------------------------------------------------------------------

class KerasMomentum(ScratchBN):
    """Momentum convention flipped (Keras/TF): running = m·running + (1 − m)·batch."""
    caught_by, rank, diagnosis = "running_stats", 2, "momentum convention flipped"

    def average(self, old, new, m):
        return m * old + (1 - m) * new


class BiasedRunningVar(ScratchBN):
    """The running variance takes the biased batch variance (no n/(n−1))."""
    caught_by, rank, diagnosis = "running_stats", 4, "biased batch variance"

    def unbias(self, var, n):
        return var


class RunningStatsReplaced(ScratchBN):
    """The running statistics are replaced by the batch statistics instead of averaged."""
    caught_by, rank, diagnosis = "running_stats", 3, "replaced by the batch statistics"

    def average(self, old, new, m):
        return new


class NoBatchCounter(ScratchBN):
    """num_batches_tracked is never incremented."""
    caught_by, rank, diagnosis = "running_stats", 2, "num_batches_tracked must count"

    def count_batch(self):
        pass


class EpsAddedToRunningVar(ScratchBN):
    """eps is added to running_var on each update (a pre-computed denominator stored as the statistic)."""
    caught_by, rank = "running_stats", 4
    diagnosis = "eps is added to the running variance"
    # With the default eps 1e-5 the drift is below float32 tolerance; Keras' 1e-3 (a ported layer) shows it.
    options: ClassVar[dict] = {"eps": 1e-3}

    def update_running(self, x):
        super().update_running(x)
        self.running_var.add_(self.eps)


class MomentumNoneAsDefault(nn.BatchNorm2d):
    """momentum=None is treated as 0.1 instead of the cumulative average 1/num_batches_tracked."""
    caught_by, rank, diagnosis = "running_stats", 4, "momentum=None is not treated as a cumulative average"
    options: ClassVar[dict] = {"momentum": None}

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training,
                            self.momentum or 0.1, self.eps)


class DuckCopiesBuffers(DuckBN):
    """Hands F.batch_norm copies of its running buffers: the train-mode updates land on temporaries."""
    caught_by, rank, diagnosis = "running_stats", 3, "not updated in train mode"

    def running(self):
        return self.running_mean.clone(), self.running_var.clone()


# --- train-mode output --------------------------------------------------------------------------------------

class NoMeanSubtraction(ScratchBN):
    """Divides by sqrt(var + eps) but never subtracts the mean."""
    caught_by, rank = "standardization", 5

    def normalize(self, x, mean, var):
        return x / torch.sqrt(var + self.eps)


class DividesByVar(ScratchBN):
    """Divides by var + eps instead of sqrt(var + eps)."""
    caught_by, rank = "standardization", 3

    def normalize(self, x, mean, var):
        return (x - mean) / (var + self.eps)


class EpsOutsideSqrt(ScratchBN):
    """eps outside the sqrt: (x − mean)/(sqrt(var) + eps)."""
    caught_by, rank, diagnosis = "batch_stats", 4, "eps outside the sqrt"

    def normalize(self, x, mean, var):
        return (x - mean) / (torch.sqrt(var) + self.eps)


class HardcodedEps(ScratchBN):
    """Ignores its own eps and uses Keras' 1e-3."""
    caught_by, rank, diagnosis = "batch_stats", 2, "uses 1e-3"

    def normalize(self, x, mean, var):
        return (x - mean) / torch.sqrt(var + 1e-3)


class UnbiasedNormalization(ScratchBN):
    """Normalizes with the unbiased batch variance instead of the biased one."""
    caught_by, rank, diagnosis = "batch_stats", 4, "unbiased variance"

    def batch_stats(self, x):
        mean, var = super().batch_stats(x)
        n = x.numel() // x.shape[1]
        return mean, var * n / (n - 1)


class AffineSwapped(ScratchBN):
    """Applies the affine map in the wrong order: (x̂ + β)·γ."""
    caught_by, rank, diagnosis = "batch_stats", 3, "wrong order"

    def scale_shift(self, x_hat):
        return (x_hat + per_channel(self.bias, x_hat)) * per_channel(self.weight, x_hat)


class PerPositionStats(ScratchBN):
    """Reduces over the batch dim only: one mean and variance per channel and position."""
    caught_by, rank = "batch_stats", 4
    diagnosis = "statistics over the batch dim only"

    def reduce_dims(self, x):
        return [0]


class PerSampleStats(ScratchBN):
    """Instance-norm style: reduces over the spatial dims of each sample, not over the batch."""
    caught_by, rank = "batch_stats", 3
    diagnosis = "instance norm"

    def reduce_dims(self, x):
        return list(range(2, x.dim()))


class TrainUsesRunningStats(ScratchBN):
    """Normalizes with the running statistics in train mode too."""
    caught_by, rank, diagnosis = "batch_stats", 2, "running statistics are used in train mode"

    def statistics(self, x):
        return per_channel(self.running_mean, x), per_channel(self.running_var, x)


class NoSingleValueGuard(ScratchBN):
    """No n > 1 guard: returns an output for a single value per channel in train mode."""
    caught_by, rank, diagnosis = "single_value", 4, "no check that n > 1"

    def check_input(self, x):
        pass


# --- eval mode ----------------------------------------------------------------------------------------------

class EvalUsesBatchStats(ScratchBN):
    """Eval mode normalizes with the batch statistics instead of the running ones."""
    caught_by, rank, diagnosis = "eval_output", 4, "batch statistics instead of the running ones"

    def statistics(self, x):
        return self.batch_stats(x)


class UpdatesInEval(ScratchBN):
    """Updates the running statistics in eval mode too."""
    caught_by, rank, diagnosis = "eval_state", 2, "updated outside train mode"

    def updates_running(self):
        return self.track_running_stats


class EvalBatchMean(ScratchBN):
    """Eval mode mixes the batch mean with the running variance."""
    caught_by, rank = "eval_single_sample", 2

    def statistics(self, x):
        if self.training:
            return super().statistics(x)
        return self.batch_stats(x)[0], per_channel(self.running_var, x)


# --- backward -----------------------------------------------------------------------------------------------

class DetachedStats(ScratchBN):
    """The batch mean and variance are detached from the graph, so dx misses their terms."""
    caught_by, rank, diagnosis = "backward", 4, "detached from the graph"

    def batch_stats(self, x):
        mean, var = super().batch_stats(x)
        return mean.detach(), var.detach()


class DgammaForgetsXhat(TrainBNFunction):
    """dγ = Σ dy, forgetting the x̂ factor."""

    @staticmethod
    def backward(ctx, dy):
        dx, _, dbeta, _ = TrainBNFunction.backward(ctx, dy)
        return dx, dy.sum(channel_dims(dy)), dbeta, None


class WrongDgammaFunction(ManualBackwardBN):
    """Custom autograd.Function whose dγ forgets x̂ (dγ = Σ dy)."""
    caught_by, rank = "backward", 3
    function = DgammaForgetsXhat


class DxDropsVarianceTerm(TrainBNFunction):
    """dx = γ/σ·(dy − mean(dy)): drops the −x̂·mean(dy·x̂) term of the variance."""

    @staticmethod
    def backward(ctx, dy):
        _, inv_std, weight = ctx.saved_tensors
        _, dgamma, dbeta, _ = TrainBNFunction.backward(ctx, dy)
        dx_hat = dy * per_channel(weight, dy)
        return inv_std * (dx_hat - dx_hat.mean(channel_dims(dy), keepdim=True)), dgamma, dbeta, None


class WrongDxFunction(ManualBackwardBN):
    """Custom autograd.Function whose dx drops the variance term."""
    caught_by, rank = "backward", 2
    function = DxDropsVarianceTerm


class GammaDetached(ScratchBN):
    """γ enters the graph detached: weight.grad stays None although weight.requires_grad is True."""
    caught_by, rank = "backward", 4
    diagnosis = "detached from the graph"

    def scale_shift(self, x_hat):
        return x_hat * per_channel(self.weight.detach(), x_hat) + per_channel(self.bias, x_hat)


# --- number formats and memory layouts ---------------------------------------------------------------------

class HalfOutputUpcast(nn.BatchNorm2d):
    """Upcasts half input to float32 and returns float32: right values, a warning (a failure under strict)."""
    caught_by, rank, diagnosis, warns = "dtype", 4, "cast the output back to the input dtype", True

    def forward(self, x):
        return super().forward(x.float() if x.dtype in LOW_PRECISION else x)


class RunningStatsInInputDtype(ScratchBN):
    """Casts its running statistics to the input dtype (float16 running stats lose precision)."""
    caught_by, rank, diagnosis = "dtype", 3, "state cast to the input dtype"

    def forward(self, x):
        self.running_mean, self.running_var = self.running_mean.to(x.dtype), self.running_var.to(x.dtype)
        return super().forward(x)


class ChannelsLastIgnored(nn.BatchNorm2d):
    """Reads the input's storage as if it were contiguous NCHW, scrambling channels_last input."""
    caught_by, rank = "memory_format", 4

    def forward(self, x):
        return super().forward(torch.as_strided(x, x.shape, torch.empty(x.shape).stride(), x.storage_offset()))



class StridesIgnored(nn.BatchNorm1d):
    """Reads a (N, C, L) input's storage as if it were contiguous, scrambling transposed or sliced input."""
    caught_by, rank = "non_contiguous", 3

    def forward(self, x):
        return super().forward(torch.as_strided(x, x.shape, torch.empty(x.shape).stride(), x.storage_offset()))


class ViewNotReshape(ScratchBN):
    """Flattens the spatial dims with x.view(N, C, -1), which raises on a non-contiguous input."""
    caught_by, rank, diagnosis = "non_contiguous", 4, "use x.reshape"

    def batch_stats(self, x):
        flat = x.view(x.shape[0], x.shape[1], -1)
        mean = flat.mean((0, 2)).view(1, -1, 1, 1)
        return mean, (x - mean).square().mean(self.reduce_dims(x), keepdim=True)


# --- the edges of the contract ------------------------------------------------------------------------------

class StatisticsNotBuffers(ScratchBN):
    """Keeps running_mean/running_var as plain tensor attributes (a textbook pattern): state_dict() loses them."""
    caught_by, rank, diagnosis = "statistics_registered", 4, "register_buffer"

    def __init__(self, num_features, **kwargs):
        super().__init__(num_features, **kwargs)
        for key in ("running_mean", "running_var"):
            value = self._buffers.pop(key)
            setattr(self, key, value)


class EmptyBatchNaN(ScratchBN):
    """Updates the running statistics from an empty batch too: 0/0 leaves them NaN."""
    caught_by, rank, diagnosis, warns = "empty_batch", 4, "skip the running-statistics update", True

    def update_running(self, x):
        self.count_batch()
        mean, var = x.mean(channel_dims(x)), x.var(channel_dims(x), correction=0)
        n = x.numel() // x.shape[1]
        m = self.momentum_factor()
        self.running_mean.copy_(self.average(self.running_mean, mean, m))
        self.running_var.copy_(self.average(self.running_var, var * n / max(n - 1, 1), m))


class EmptyBatchRaises(ScratchBN):
    """Guards n > 1 with `n <= 1`, so an empty batch (n = 0) raises."""
    caught_by, rank, diagnosis, warns = "empty_batch", 2, "treats N = 0 as an error", True

    def check_input(self, x):
        if self.uses_batch_stats() and x.numel() // x.shape[1] <= 1:
            raise ValueError("Expected more than 1 value per channel when training")


class ChannelsBroadcast(ScratchBN):
    """Never checks the channel count: a 1-channel input broadcasts against γ, β and the statistics."""
    caught_by, rank, diagnosis, warns = "channel_mismatch", 4, "broadcast silently", True

    def check_input(self, x):
        if self.uses_batch_stats() and x.numel() // x.shape[1] == 1:
            raise ValueError("Expected more than 1 value per channel when training")


class FunctionalDefaultEps(DuckBN):
    """Calls F.batch_norm with eps=1e-5 written out instead of self.eps: invisible at the default eps."""
    caught_by, rank = "large_eps", 3

    def forward(self, x):
        return F.batch_norm(x, *self.running(), self.weight, self.bias, self.training, self.momentum, 1e-5)


class BatchStatsOnlyWithGrad(ScratchBN):
    """Uses batch statistics only when the input requires grad (`self.training and x.requires_grad`)."""
    caught_by, rank, diagnosis = "grad_modes", 4, "by the autograd mode"

    def statistics(self, x):
        if self.training and x.requires_grad:
            return self.batch_stats(x)
        return per_channel(self.running_mean, x), per_channel(self.running_var, x)


class MomentumZeroIsNone(ScratchBN):
    """Tests the momentum for truth (`self.momentum or 1/num_batches_tracked`): momentum=0 averages cumulatively."""
    caught_by, rank, diagnosis = "running_stats", 2, "momentum=0 is taken for momentum=None"

    def momentum_factor(self) -> float:
        return self.momentum or 1.0 / float(self.num_batches_tracked)


class AbsGamma(ScratchBN):
    """Scales by |γ| (a positivity constraint gone wrong): invisible while every γ is positive."""
    caught_by, rank = "batch_stats", 4

    def scale_shift(self, x_hat):
        return x_hat * per_channel(self.weight.abs(), x_hat) + per_channel(self.bias, x_hat)


class UpdatesUntracked(ScratchBN):
    """Updates whenever it has buffers, ignoring track_running_stats switched off at run time."""
    caught_by, rank, diagnosis, warns = "running_stats", 3, "not self.track_running_stats", True

    def updates_running(self) -> bool:
        return self.training and self.running_mean is not None


class ComputesInFloat32(ScratchBN):
    """Computes in float32 whatever the input's dtype: float64 input gets float32 precision (a warning)."""
    caught_by, rank, diagnosis, warns = "backward", 4, "below its input's precision", True

    def compute_dtype(self, x) -> torch.dtype:
        return torch.float32

MUTANTS: list[type[nn.Module]] = [
    KerasMomentum, BiasedRunningVar, RunningStatsReplaced, NoBatchCounter, EpsAddedToRunningVar,
    MomentumNoneAsDefault, DuckCopiesBuffers,
    NoMeanSubtraction, DividesByVar, EpsOutsideSqrt, HardcodedEps, UnbiasedNormalization, AffineSwapped,
    PerPositionStats, PerSampleStats, TrainUsesRunningStats, NoSingleValueGuard,
    EvalUsesBatchStats, UpdatesInEval, EvalBatchMean,
    DetachedStats, WrongDgammaFunction, WrongDxFunction, GammaDetached,
    HalfOutputUpcast, RunningStatsInInputDtype, ChannelsLastIgnored, StridesIgnored, ViewNotReshape,
    StatisticsNotBuffers, EmptyBatchNaN, EmptyBatchRaises, ChannelsBroadcast, FunctionalDefaultEps,
    BatchStatsOnlyWithGrad, MomentumZeroIsNone, AbsGamma, ComputesInFloat32, UpdatesUntracked,
]


def build(cls: type[nn.Module], *, correct: bool = False) -> tuple[nn.Module, torch.Tensor]:
    """A mutant (or, with correct=True, its correct base class) with its options, and a matching input."""
    layer_cls = cls.__bases__[0] if correct else cls
    return layer_cls(CHANNELS, **getattr(cls, "options", {})), example_input(cls.rank)


class CrashesOnSecondCall(ScratchBN):
    """A correct ScratchBN whose second forward raises RuntimeError: a check stopped midway (not a mutant)."""

    # Class-wide on purpose: checks run deep copies, and an instance counter would restart with each copy.
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        if type(self).calls >= 2:
            raise RuntimeError("planted crash on the second forward")
        return super().forward(x)
