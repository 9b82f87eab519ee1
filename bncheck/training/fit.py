"""One training run: `fit(model, data)` trains a copy of `model` with seeded batches and RNGs and returns it with
its Curve (held-out scores every eval_every steps, and the step the target fell); the caller's model and RNGs are
left as they were."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bncheck.core.errors import BNCheckUsageError
from bncheck.core.state import clone, materialized, modes_kept, private_rng
from bncheck.training.data import Data, model_device
from bncheck.training.progress import progress_bar

OPTIMIZERS: dict[str, Callable] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr),
    "momentum": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}
METRICS = ("accuracy", "loss")


@dataclass(frozen=True)
class Training:
    """How every run of a comparison trains: the same for a model and its twin.

    steps: the most optimizer steps a run may take; eval_every: how often (in steps) the held-out split is
    scored, which is also the resolution of steps-to-target; target: the accuracy to reach (metric="accuracy",
    ≥) or the loss to get under (metric="loss", ≤), both on the held-out split in eval mode."""

    steps: int = 300
    batch_size: int = 64
    lr: float = 0.001  # Adam's own default; at 0.01 the no-BN seed CNN is nearly as fast (see reference/README.md)
    optimizer: str | Callable = "adam"
    target: float = 0.9
    metric: str = "accuracy"
    eval_every: int = 10
    stop_at_target: bool = True

    def __post_init__(self):
        if self.metric not in METRICS:
            raise BNCheckUsageError(f"metric={self.metric!r}: expected one of {', '.join(METRICS)}")
        if isinstance(self.optimizer, str) and self.optimizer not in OPTIMIZERS:
            raise BNCheckUsageError(f"optimizer={self.optimizer!r}: expected one of {', '.join(OPTIMIZERS)} "
                                    f"or a callable (params, lr) -> torch.optim.Optimizer")
        if self.batch_size < 2:
            raise BNCheckUsageError("batch_size must be at least 2 (train-mode BN needs more than one value)")
        if self.steps < 1 or self.eval_every < 1:
            raise BNCheckUsageError("steps and eval_every must be positive")

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        make = OPTIMIZERS[self.optimizer] if isinstance(self.optimizer, str) else self.optimizer
        return make(params, self.lr)

    def reached(self, value: float) -> bool:
        return value >= self.target if self.metric == "accuracy" else value <= self.target

    def describe(self) -> str:
        opt = self.optimizer if isinstance(self.optimizer, str) else getattr(self.optimizer, "__name__", "custom")
        goal = f"test accuracy ≥ {self.target:g}" if self.metric == "accuracy" else f"test loss ≤ {self.target:g}"
        return (f"{goal}, at most {self.steps} steps of {opt} lr={self.lr:g}, batch {self.batch_size}, "
                f"scored every {self.eval_every} steps")


@dataclass
class Curve:
    """One training run: scores on the held-out split at each evaluated step, and when the target fell."""

    label: str
    seed: int
    steps: list[int] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # mean over the steps since the previous point
    train_accuracy: list[float] = field(default_factory=list)  # likewise, in train mode (the tutorial's measure)
    seconds: list[float] = field(default_factory=list)  # training time so far (evaluation excluded)
    reached: int | None = None  # first evaluated step that met the target; None: not within the budget
    diverged: bool = False  # the training loss became NaN or infinite

    @property
    def final_accuracy(self) -> float:
        return self.test_accuracy[-1] if self.test_accuracy else float("nan")

    @property
    def final_loss(self) -> float:
        return self.test_loss[-1] if self.test_loss else float("nan")


def initialized(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with fresh weights: every module's reset_parameters() with the CPU generator (and that of
    the model's CUDA device, if on one) seeded with `seed`, in module order (BN layers also reset their running
    statistics). The caller's RNGs are left as they were (bncheck.core.state.private_rng)."""
    copy = clone(model)
    with private_rng(seed, model_device(copy)):
        for m in copy.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return copy



@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, loss_fn=F.cross_entropy,
             chunk: int = 1000) -> tuple[float, float]:
    """(accuracy, mean loss) of `model` in eval mode on (x, y); the model's modes are restored afterwards."""
    correct, total_loss = 0, 0.0
    with modes_kept(model):
        model.eval()
        for i in range(0, len(x), chunk):
            out = model(x[i:i + chunk])
            total_loss += float(loss_fn(out, y[i:i + chunk], reduction="sum"))
            correct += int((out.argmax(1) == y[i:i + chunk]).sum())
    return correct / len(x), total_loss / len(x)


def batch_order(n: int, batch_size: int, steps: int, seed: int, device) -> torch.Tensor:
    """The sample indices of every step, (steps, batch_size): epochs of seeded permutations, made once on the
    host and moved to `device` in one copy. Batches never straddle an epoch boundary and are always full."""
    per_epoch = n // batch_size
    if per_epoch < 1:
        raise BNCheckUsageError(f"batch_size={batch_size} is larger than the training split ({n} samples)")
    gen = torch.Generator().manual_seed(seed)
    epochs = math.ceil(steps / per_epoch)
    perms = [torch.randperm(n, generator=gen)[:per_epoch * batch_size] for _ in range(epochs)]
    return torch.cat(perms).reshape(-1, batch_size)[:steps].to(device)


def train(model: nn.Module, data: Data, training: Training | None = None, **kwargs) -> Curve:
    """Train a copy of `model` on `data` and return its Curve (fit's, without the trained copy)."""
    return fit(model, data, training, **kwargs)[1]


def fit(model: nn.Module, data: Data, training: Training | None = None, *, seed: int = 0, label: str = "",
        device=None, loss_fn=F.cross_entropy, progress=None, bar=None, **overrides) -> tuple[nn.Module, Curve]:
    """Train a copy of `model` on `data` (moved to `device` once); return the trained copy and its Curve.

    The copy starts from `model`'s own weights; batches follow batch_order(seed); dropout masks follow
    the CPU generator (and `device`'s, on a GPU) seeded with `seed`; the caller's RNGs are left as they were
    (bncheck.core.state.private_rng). Keyword overrides set Training fields.
    loss_fn(logits, targets, reduction=...) scores both training and evaluation."""
    training = resolve_training(training, overrides)
    require_data(data)
    device = model_device(model, device)
    data = data.to(device)
    net = clone(model).to(device)
    order = batch_order(len(data.x_train), training.batch_size, training.steps, seed, device)
    curve = Curve(label, seed)
    own_bar = bar is None
    bar = progress_bar(training.steps, f"{label or 'train'} seed {seed}", enabled=progress) if own_bar else bar
    try:
        with private_rng(seed, device):
            _run(net, data, order, training, curve, loss_fn, bar)
    finally:
        if own_bar:
            bar.close()
    return net, curve


def _run(net: nn.Module, data: Data, order: torch.Tensor, training: Training, curve: Curve, loss_fn, bar) -> None:
    """fit's training loop: one optimizer step per row of `order`, scored into `curve` every eval_every steps and
    at the last; stops early on divergence, and at the target when stop_at_target."""
    optimizer = _optimizer(net, data, training)
    tally = _Tally(order.device, training.batch_size)
    for step in range(1, training.steps + 1):
        idx = order[step - 1]
        xb, yb = data.x_train[idx], data.y_train[idx]
        out = net(xb)
        loss = loss_fn(out, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        tally.add(loss, out, yb)
        bar.update(1)
        if step % training.eval_every and step != training.steps:
            continue
        _score(net, data, step, tally, curve, loss_fn)
        if _stops(curve, training):
            break
        bar.set_postfix_str(f"acc {curve.test_accuracy[-1]:.3f} loss {curve.test_loss[-1]:.3f}")
        tally.resume_clock()


def _optimizer(net: nn.Module, data: Data, training: Training) -> torch.optim.Optimizer:
    """`net` ready to train: Lazy parameters materialized (under the caller's seeded RNG), train mode, and the
    optimizer of its trainable parameters."""
    materialized(net, data.x_train[:2])  # before the optimizer sees the parameters
    net.train()
    return training.make_optimizer([p for p in net.parameters() if p.requires_grad])


class _Tally:
    """The training loss and train-mode accuracy since the last scored step, summed on the device (no host sync
    per step), and the training time so far with scoring excluded."""

    def __init__(self, device: torch.device, batch_size: int):
        self.device, self.batch_size = device, batch_size
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.since, self.seconds = 0, 0.0
        self.resume_clock()

    def add(self, loss: torch.Tensor, out: torch.Tensor, yb: torch.Tensor) -> None:
        self.loss_sum += loss.detach()
        self.correct += (out.detach().argmax(1) == yb).sum()
        self.since += 1

    def take(self) -> tuple[float, float]:
        """(mean loss, accuracy) over the steps since the last take, which start anew."""
        mean_loss = float(self.loss_sum) / self.since
        accuracy = int(self.correct) / (self.since * self.batch_size)
        self.loss_sum.zero_()
        self.correct.zero_()
        self.since = 0
        return mean_loss, accuracy

    def stop_clock(self) -> float:
        """The training seconds so far, once the device has finished the queued steps."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - self.started
        return self.seconds

    def resume_clock(self) -> None:
        self.started = time.perf_counter()


def _score(net: nn.Module, data: Data, step: int, tally: _Tally, curve: Curve, loss_fn) -> None:
    """Append a point at `step` to `curve`: the held-out split's accuracy and loss, the training figures since the
    previous point and the training time so far."""
    seconds = tally.stop_clock()
    train_loss, train_accuracy = tally.take()
    acc, test_loss = evaluate(net, data.x_test, data.y_test, loss_fn=loss_fn)
    curve.steps.append(step)
    curve.train_loss.append(train_loss)
    curve.train_accuracy.append(train_accuracy)
    curve.test_accuracy.append(acc)
    curve.test_loss.append(test_loss)
    curve.seconds.append(seconds)


def _stops(curve: Curve, training: Training) -> bool:
    """Mark on `curve` a divergence or the first point that met the target; True when training ends there."""
    if not math.isfinite(curve.train_loss[-1]) or not math.isfinite(curve.test_loss[-1]):
        curve.diverged = True
        return True
    score = curve.test_accuracy[-1] if training.metric == "accuracy" else curve.test_loss[-1]
    if curve.reached is None and training.reached(score):
        curve.reached = curve.steps[-1]
        return training.stop_at_target
    return False


def require_data(data) -> None:
    if not isinstance(data, Data):
        raise BNCheckUsageError(f"data: expected a bncheck.Data (digits(), mnist5k(), fashion_mnist(root) or "
                                f"Data(name, x_train, y_train, x_test, y_test)), got {type(data).__name__}")


def resolve_training(training: Training | None, overrides: dict) -> Training:
    """`training` (Training() when None) with keyword overrides of its fields; an unknown field is a usage error."""
    unknown = set(overrides) - set(Training.__dataclass_fields__)
    if unknown:
        raise BNCheckUsageError(f"unknown training setting(s): {', '.join(sorted(unknown))}; "
                                f"known: {', '.join(Training.__dataclass_fields__)}")
    base = training or Training()
    return Training(**{**base.__dict__, **overrides}) if overrides else base


def seed_list(seeds: int | Sequence[int]) -> list[int]:
    """The seeds of a multi-run entry point (compare_convergence, sweep): an int n stands for range(n)."""
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise BNCheckUsageError("seeds: need at least one")
    return seeds
