"""Does BatchNorm make a model converge faster? Train it and its twin the same way and count the steps.

`compare_convergence(model, data)` trains copies of `model` and of its twin (by default the no-BN twin from
bncheck.ablate) from the same initial weights, on the same batches in the same order, with the same optimizer
and learning rate, once per seed, and records for each run the first evaluated step at which it reached a
target (accuracy or loss on the held-out split). The assertions judge such a comparison:

- `assert_converges_faster`: the model needs clearly fewer steps than its twin (median ratio ≤ max_ratio).
- `assert_no_slower` / `assert_same_speed`: for "no measurable difference" claims.
- `assert_tolerates_higher_lr`: at a large learning rate the model still converges, its twin does not or
  does worse.
- `sweep`: every combination of variant × learning rate × seed (like the seed tutorial's RunBuilder).

The user's model is never trained, moved or re-initialized: everything runs on copies (bncheck.core.state.clone).
"""

from __future__ import annotations

import itertools
import math
import statistics
import time
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from bncheck.core.errors import BNCheckError, BNCheckUsageError, one_line
from bncheck.core.state import clone, materialized, modes_kept, private_rng
from bncheck.training.ablate import ablate
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


def _share_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy every parameter and buffer of `source` into `target` where name and shape agree."""
    mine = target.state_dict()
    shared = {k: v for k, v in source.state_dict().items() if k in mine and mine[k].shape == v.shape}
    target.load_state_dict(shared, strict=False)


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
    training = _training(training, overrides)
    _require_data(data)
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


def _require_data(data) -> None:
    if not isinstance(data, Data):
        raise BNCheckUsageError(f"data: expected a bncheck.Data (digits(), mnist5k(), fashion_mnist(root) or "
                                f"Data(name, x_train, y_train, x_test, y_test)), got {type(data).__name__}")


def _training(training: Training | None, overrides: dict) -> Training:
    unknown = set(overrides) - set(Training.__dataclass_fields__)
    if unknown:
        raise BNCheckUsageError(f"unknown training setting(s): {', '.join(sorted(unknown))}; "
                                f"known: {', '.join(Training.__dataclass_fields__)}")
    base = training or Training()
    return Training(**{**base.__dict__, **overrides}) if overrides else base


def _seeds(seeds: int | Sequence[int]) -> list[int]:
    seeds = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise BNCheckUsageError("seeds: need at least one")
    return seeds


def _pair(model: nn.Module, twin, seed: int, reinit: bool) -> tuple[nn.Module, nn.Module]:
    """The model and its twin for one seed, with identical initial weights wherever they share a weight."""
    base = initialized(model, seed) if reinit else model
    if twin is None:
        other = ablate(base)
    elif isinstance(twin, nn.Module):
        other = initialized(twin, seed) if reinit else clone(twin)
        _share_weights(base, other)
    elif callable(twin):
        other = twin(base)
    else:
        raise BNCheckUsageError(f"twin must be None (the no-BN twin), an nn.Module or a function model -> model, "
                                f"got {type(twin).__name__}")
    return base, other


@dataclass
class Comparison:
    """Per seed, a model's and its twin's training curves under one Training."""

    training: Training
    label: str
    twin_label: str
    seeds: list[int]
    runs: list[Curve]
    twin_runs: list[Curve]
    data: str = ""  # the data set's name

    @property
    def censor(self) -> int:
        """The step count that stands for 'not reached within the budget' (one scoring interval past it)."""
        return self.training.steps + self.training.eval_every

    def _steps(self, curves) -> list[int]:
        return [c.reached if c.reached is not None else self.censor for c in curves]

    @property
    def steps(self) -> list[int]:
        """The model's steps-to-target per seed (censor() where it never got there)."""
        return self._steps(self.runs)

    @property
    def twin_steps(self) -> list[int]:
        return self._steps(self.twin_runs)

    @property
    def ratios(self) -> list[float]:
        """model steps / twin steps per seed (< 1: the model was faster). A run that never reached the target
        counts as censor() steps, so a ratio against such a twin is an upper bound of the true one."""
        return [a / b for a, b in zip(self.steps, self.twin_steps)]

    @property
    def median_ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def wins(self) -> int:
        """Seeds on which the model reached the target in strictly fewer steps than its twin."""
        return sum(a < b for a, b in zip(self.steps, self.twin_steps))

    @property
    def reached(self) -> int:
        return sum(c.reached is not None for c in self.runs)

    @property
    def twin_reached(self) -> int:
        return sum(c.reached is not None for c in self.twin_runs)

    def table(self) -> str:
        """One line per seed: steps to target of both, the ratio and the final test accuracies."""
        def cell(c: Curve) -> str:
            if c.reached is not None:
                return str(c.reached)
            return f">{self.training.steps}" + (" (diverged)" if c.diverged else "")

        width = max(len(self.label), len(self.twin_label), 12)
        lines = [f"  {'seed':>4}  {self.label:>{width}}  {self.twin_label:>{width}}  ratio  final acc "
                 f"({self.label} / {self.twin_label})"]
        for seed, a, b, r in zip(self.seeds, self.runs, self.twin_runs, self.ratios):
            lines.append(f"  {seed:>4}  {cell(a):>{width}}  {cell(b):>{width}}  {r:5.2f}  "
                         f"{a.final_accuracy:.3f} / {b.final_accuracy:.3f}")
        return "\n".join(lines)

    def summary(self) -> str:
        return (f"{self.label} vs {self.twin_label}: median steps ratio {self.median_ratio:.2f}, {self.label} "
                f"faster on {self.wins} of {len(self.seeds)} seeds; reached the target: {self.label} "
                f"{self.reached}/{len(self.seeds)}, {self.twin_label} {self.twin_reached}/{len(self.seeds)}")

    def __str__(self) -> str:
        on = f"on {self.data}, " if self.data else ""
        return f"{self.summary()}\n  ({on}{self.training.describe()})\n{self.table()}"


def compare_convergence(model: nn.Module, data: Data, *, twin=None, seeds: int | Sequence[int] = 3,
                        training: Training | None = None, reinit: bool = True, device=None,
                        label: str = "BN", twin_label: str | None = None, loss_fn=F.cross_entropy,
                        progress: bool | None = None, **overrides) -> Comparison:
    """Train copies of `model` and of its twin once per seed under the same Training; return the Comparison.

    twin: None → bncheck.ablate(model) (every BN replaced by nn.Identity); a function model → model (e.g.
    bncheck.bn_after_activation), applied to each seed's freshly initialized model; or an nn.Module,
    initialized with the same seed and then given the model's weights wherever name and shape agree.
    reinit: each seed starts from fresh weights (reset_parameters under that seed); False keeps the model's
    own weights for every seed, so only the batch order and dropout masks vary.
    Keyword overrides set Training fields (steps, batch_size, lr, optimizer, target, metric, eval_every)."""
    training = _training(training, overrides)
    _require_data(data)
    device = model_device(model, device)
    data = data.to(device)
    seeds = _seeds(seeds)
    if twin_label is None:
        twin_label = "no BN" if twin is None else getattr(twin, "__name__", type(twin).__name__)
    runs, twin_runs = [], []
    with progress_bar(2 * len(seeds) * training.steps, f"{label} vs {twin_label}", enabled=progress) as bar:
        for seed in seeds:
            a, b = _pair(model, twin, seed, reinit)
            try:
                runs.append(train(a, data, training, seed=seed, label=label, device=device, loss_fn=loss_fn,
                                  bar=bar))
                twin_runs.append(train(b, data, training, seed=seed, label=twin_label, device=device,
                                       loss_fn=loss_fn, bar=bar))
            except BNCheckUsageError:
                raise
            except RuntimeError as exc:
                raise BNCheckUsageError(f"training on {data.name} {data.sample_shape} failed: {one_line(exc)}"
                                        f" (does the model take this input shape and output "
                                        f"{data.num_classes} logits?)") from exc
    return Comparison(training, label, twin_label, seeds, runs, twin_runs, data.name)


def _failure(cmp: Comparison, message: str) -> BNCheckError:
    """The assertion's BNCheckError, carrying the Comparison as `.report` (and `.comparison`, its older name)."""
    error = BNCheckError(message, where=cmp.label, report=cmp)
    error.comparison = cmp
    return error


def _inconclusive(cmp: Comparison) -> BNCheckError | None:
    if cmp.reached == 0 and cmp.twin_reached == 0:
        return _failure(cmp, f"inconclusive: neither {cmp.label} nor {cmp.twin_label} reached the target on any "
                             f"seed.\n{cmp}\nLower the target, or allow more steps or a better learning rate.")
    return None


def assert_converges_faster(model: nn.Module, data: Data, *, max_ratio: float = 0.8, require: str = "median",
                            **kwargs) -> Comparison:
    """Assert that `model` reaches the target in clearly fewer steps than its twin (by default its no-BN twin).

    The statistic: per seed, ratio = model's steps-to-target / twin's. require="median" (default): the median
    ratio over the seeds is ≤ max_ratio; require="every": every seed's ratio is ≤ max_ratio. The failure
    message lists every seed's steps of both. Other arguments: compare_convergence's. Returns the Comparison."""
    if require not in ("median", "every"):
        raise BNCheckUsageError(f"require={require!r}: expected 'median' or 'every'")
    cmp = compare_convergence(model, data, **kwargs)
    if require == "median":
        ok, rule = cmp.median_ratio <= max_ratio, f"median steps ratio ≤ {max_ratio:g}"
    else:
        ok, rule = all(r <= max_ratio for r in cmp.ratios), f"steps ratio ≤ {max_ratio:g} on every seed"
    if ok:
        return cmp
    raise _failure(cmp, f"{cmp.label} does not converge faster than {cmp.twin_label} ({rule} required).\n{cmp}\n"
                        f"Likely cause: {_slower_cause(cmp)}")


def _slower_cause(cmp: Comparison) -> str:
    """Why the model was not faster, judged from its curves: a broken forward pass, eval-mode statistics that do
    not match training, BN layers that do nothing, or simply no benefit here."""
    target = cmp.training.target
    best_train = statistics.median(max(c.train_accuracy, default=0.0) for c in cmp.runs)
    best_test = statistics.median(max(c.test_accuracy, default=0.0) for c in cmp.runs)
    if cmp.reached == 0 and cmp.twin_reached == 0:
        return ("inconclusive: neither reached the target on any seed; lower the target, or allow more steps or a "
                "better learning rate")
    if any(c.diverged for c in cmp.runs):
        return f"{cmp.label}'s training loss became NaN or infinite (a BN that divides by a zero variance, eps ≤ 0)"
    if cmp.reached == 0 and cmp.training.metric == "accuracy" and best_train >= target:
        return (f"{cmp.label} learns in train mode (median best train-batch accuracy {best_train:.3f}) but not in "
                f"eval mode (median best test accuracy {best_test:.3f}, scored in eval mode): its running "
                f"statistics do not match its training statistics (never updated: momentum 0 or frozen buffers; "
                f"wrong momentum or variance)")
    if cmp.reached == 0:
        return (f"{cmp.label} never reached the target (median best test accuracy {best_test:.3f}, best train-batch "
                f"accuracy {best_train:.3f}): a BN that breaks the forward pass (zeroed or constant output, wrong "
                f"statistics, NaN), or a target out of reach")
    if cmp.twin_reached == cmp.reached and max(cmp.ratios) <= 1.25 and min(cmp.ratios) >= 0.8:
        if cmp.twin_label != "no BN":
            return (f"{cmp.label} and {cmp.twin_label} train alike: what the twin changes makes no measurable "
                    f"difference here (the second seed tutorial's finding for BN before/after the activation, the "
                    f"bias before BN and dropout)")
        return (f"{cmp.label} and {cmp.twin_label} train alike: the BN layers may not be doing anything (normalizing "
                f"with fixed or running instead of batch statistics, identity-like), or BN does not help this "
                f"model/data/learning rate")
    if cmp.median_ratio > 1.25:
        return (f"{cmp.label} is slower than {cmp.twin_label}: a BN whose eval-mode or train-mode statistics are "
                f"wrong, or BN hurts at this batch size/learning rate")
    return f"{cmp.label} is not clearly faster here (BN's benefit depends on depth, learning rate and optimizer)"


def assert_no_slower(model: nn.Module, data: Data, *, max_ratio: float = 1.25, **kwargs) -> Comparison:
    """Assert that `model` is not measurably slower than its twin: median steps ratio ≤ max_ratio."""
    cmp = compare_convergence(model, data, **kwargs)
    err = _inconclusive(cmp)
    if err:
        raise err
    if cmp.median_ratio > max_ratio:
        raise _failure(cmp, f"{cmp.label} converges slower than {cmp.twin_label} (median steps ratio ≤ "
                            f"{max_ratio:g} required).\n{cmp}\nLikely cause: {_slower_cause(cmp)}")
    return cmp


def assert_same_speed(model: nn.Module, data: Data, *, within: float = 1.25, **kwargs) -> Comparison:
    """Assert 'no measurable difference': the median steps ratio lies in [1/within, within]."""
    cmp = compare_convergence(model, data, **kwargs)
    err = _inconclusive(cmp)
    if err:
        raise err
    if not 1 / within <= cmp.median_ratio <= within:
        faster = cmp.label if cmp.median_ratio < 1 else cmp.twin_label
        raise _failure(cmp, f"{cmp.label} and {cmp.twin_label} differ measurably: {faster} is faster (median steps "
                            f"ratio within [{1 / within:.2f}, {within:g}] required).\n{cmp}")
    return cmp


def assert_tolerates_higher_lr(model: nn.Module, data: Data, *, lr: float, margin: float = 0.02,
                               **kwargs) -> Comparison:
    """Assert that at learning rate `lr` the model still converges while its twin does not, or does worse.

    Passes when the model reaches the target on a majority of seeds and either the twin reaches it on fewer
    seeds, or the model's median final test accuracy beats the twin's by at least `margin`."""
    cmp = compare_convergence(model, data, lr=lr, **kwargs)
    k = len(cmp.seeds)
    med = statistics.median([c.final_accuracy for c in cmp.runs])
    twin_med = statistics.median([c.final_accuracy for c in cmp.twin_runs])
    if cmp.reached * 2 > k and (cmp.twin_reached < cmp.reached or med >= twin_med + margin):
        return cmp
    if cmp.reached * 2 <= k:
        why = f"{cmp.label} itself does not converge at lr={lr:g} (reached the target on {cmp.reached}/{k} seeds)"
    else:
        why = (f"{cmp.twin_label} copes as well at lr={lr:g}: it reached the target on {cmp.twin_reached}/{k} seeds "
               f"and its median final accuracy {twin_med:.3f} is within {margin:g} of {med:.3f}")
    raise _failure(cmp, f"{cmp.label} does not tolerate a higher learning rate than {cmp.twin_label}: {why}.\n{cmp}")


def combinations(**params: Sequence) -> list:
    """Every combination of the given settings as named tuples, like the seed tutorial's RunBuilder.get_runs:
    combinations(lr=[.01, .1], seed=[0, 1]) → [Run(lr=0.01, seed=0), Run(lr=0.01, seed=1), ...]."""
    Run = namedtuple("Run", params.keys())
    return [Run(*values) for values in itertools.product(*params.values())]


@dataclass
class SweepRow:
    variant: str
    lr: float
    seed: int
    reached: int | None
    final_accuracy: float
    final_loss: float
    diverged: bool
    seconds: float
    curve: Curve


@dataclass
class Sweep:
    training: Training
    rows: list[SweepRow]

    def median_final_accuracy(self, variant: str, lr: float) -> float:
        return statistics.median(r.final_accuracy for r in self.rows if r.variant == variant and r.lr == lr)

    def converged(self, variant: str, lr: float) -> int:
        """On how many seeds `variant` reached the target at `lr`."""
        return sum(r.reached is not None for r in self.rows if r.variant == variant and r.lr == lr)

    def largest_converging_lr(self, variant: str) -> float | None:
        """The largest swept lr at which `variant` reached the target on a majority of its seeds."""
        good = [lr for lr in sorted({r.lr for r in self.rows})
                if 2 * self.converged(variant, lr) > sum(r.variant == variant and r.lr == lr for r in self.rows)]
        return good[-1] if good else None

    def table(self) -> str:
        lines = [f"{'variant':>14} {'lr':>8} {'seed':>4} {'steps':>7} {'final acc':>9} {'final loss':>10}"]
        for r in self.rows:
            steps = str(r.reached) if r.reached is not None else f">{self.training.steps}"
            lines.append(f"{r.variant:>14} {r.lr:>8g} {r.seed:>4} {steps:>7} {r.final_accuracy:>9.3f} "
                         f"{r.final_loss:>10.3f}")
        return "\n".join(lines)


def sweep(model: nn.Module, data: Data, *, lrs: Sequence[float], seeds: int | Sequence[int] = 1,
          variants: Mapping[str, Callable[[nn.Module], nn.Module] | None] | None = None,
          training: Training | None = None, device=None, loss_fn=F.cross_entropy, progress: bool | None = None,
          **overrides) -> Sweep:
    """Train every combination of variant × lr × seed (RunBuilder-style). `variants` maps a name to a function
    applied to each seed's freshly initialized model (None: the model itself); by default {"BN": None,
    "no BN": bncheck.ablate}, so all variants of one seed start from the same weights."""
    training = _training(training, overrides)
    _require_data(data)
    variants = {"BN": None, "no BN": ablate} if variants is None else dict(variants)
    device = model_device(model, device)
    data = data.to(device)
    rows = []
    runs = combinations(seed=_seeds(seeds), lr=list(lrs), variant=list(variants))
    with progress_bar(len(runs) * training.steps, "sweep", enabled=progress) as bar:
        for run in runs:
            base = initialized(model, run.seed)
            net = base if variants[run.variant] is None else variants[run.variant](base)
            t = Training(**{**training.__dict__, "lr": run.lr})
            c = train(net, data, t, seed=run.seed, label=run.variant, device=device, loss_fn=loss_fn, bar=bar)
            rows.append(SweepRow(run.variant, run.lr, run.seed, c.reached, c.final_accuracy, c.final_loss,
                                 c.diverged, c.seconds[-1] if c.seconds else 0.0, c))
    return Sweep(training, rows)
