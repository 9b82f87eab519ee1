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


# --- the training loop around BN: planted bugs for the guards (bncheck.checks.guards, bncheck.watch) -----------------


class Detector(nn.Module):
    """A correct small detector-like net: a conv backbone with BatchNorm2d and a head with BatchNorm1d."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(16, 6, bias=False), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))

    def forward(self, x):
        return self.head(self.backbone(x))

    def freeze_backbone(self) -> "Detector":
        """requires_grad=False on the backbone's parameters and the backbone in eval mode (the usual recipe)."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone.eval()
        return self


class FrozenByEval(Detector):
    """freezes its backbone by requires_grad=False and backbone.eval(), which the next model.train() undoes."""
    caught_by = "assert_bn_frozen"

    def __init__(self):
        super().__init__()
        self.freeze_backbone()


class FrozenByTrainOverride(Detector):
    """The fix for FrozenByEval: train() puts the frozen backbone back in eval mode every time."""

    def __init__(self):
        super().__init__()
        self.freeze_backbone()

    def train(self, mode: bool = True):
        super().train(mode)
        if not any(p.requires_grad for p in self.backbone.parameters()):
            self.backbone.eval()
        return self


def _optimizer_step(model, optimizer, x, y) -> float:
    loss = F.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def train_step(model, optimizer, x, y):
    """A correct training step: model.train(), then one optimizer step on the cross-entropy; returns the loss."""
    model.train()
    return _optimizer_step(model, optimizer, x, y)


def train_step_in_eval_mode(model, optimizer, x, y):
    """runs the step in eval mode ('no dropout'), so BN statistics never update (caught_by assert_stats_updated)."""
    model.eval()
    return _optimizer_step(model, optimizer, x, y)


def evaluate(model, x):
    """A correct evaluation: eval mode under no_grad, the caller's modes restored afterwards; returns the logits."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for m, training in modes.items():
            m.training = training


def evaluate_leaves_eval_mode(model, x):
    """calls model.eval() and never switches back: training continues in eval mode (caught_by assert_eval_is_pure)."""
    model.eval()
    with torch.no_grad():
        return model(x)


def evaluate_in_train_mode(model, x):
    """trusts torch.no_grad() alone: BN runs in train mode and updates its statistics (caught_by
    assert_eval_is_pure)."""
    with torch.no_grad():
        return model(x)


def epoch_keeps_last_batch(model, optimizer, x, y, batch_size):
    """one epoch in batches with the last partial one kept (drop_last=False): with 66 samples in batches of 32, BN
    trains on a batch of 2 (caught_by watch(...).small_batches)."""
    return [train_step(model, optimizer, x[i:i + batch_size], y[i:i + batch_size])
            for i in range(0, len(x), batch_size)]


def epoch_drops_last_batch(model, optimizer, x, y, batch_size):
    """The fix for epoch_keeps_last_batch: full batches only (drop_last=True)."""
    return [train_step(model, optimizer, x[i:i + batch_size], y[i:i + batch_size])
            for i in range(0, len(x) - batch_size + 1, batch_size)]


# --- BN beyond eager mode: planted bugs for model_compile and model_export (bncheck.checks.compiled, .exported) -------


class CompiledMomentumBN(nn.BatchNorm2d):
    """updates its running statistics with momentum 0.5 under torch.compile, 0.1 in eager."""
    caught_by = "model_compile"

    def forward(self, x):
        momentum = 0.5 if torch.compiler.is_compiling() else self.momentum
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, momentum,
                            self.eps)


class EveryOtherCallBN(nn.BatchNorm2d):
    """updates its running statistics every other call, a Python counter behind assume_constant_result: the compiled
    code reads it once (no update) and bakes that in."""
    caught_by = "model_compile"

    def __init__(self, c):
        super().__init__(c)
        self.calls = 0

    @torch.compiler.assume_constant_result
    def _updates_now(self) -> bool:
        self.calls += 1
        return self.calls % 2 == 0

    def forward(self, x):
        momentum = self.momentum if self._updates_now() else 0.0
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.training, momentum,
                            self.eps)


class ExportBatchStatsBN(nn.BatchNorm2d):
    """normalizes with batch statistics whenever torch.compiler.is_exporting(): the exported program bakes them into
    inference."""
    caught_by = "model_export"

    def forward(self, x):
        training = self.training or torch.compiler.is_exporting()
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, training, self.momentum,
                            self.eps)
