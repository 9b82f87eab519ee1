"""Does BatchNorm make a model converge faster? `compare_convergence` trains a model and its twin (by default the no-BN
twin) alike, once per seed, and counts their steps to a target; the assert_* functions judge that Comparison."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import nn

from bncheck.core.errors import BNCheckError, BNCheckUsageError, assertion_helper, one_line
from bncheck.core.state import clone
from bncheck.training.ablate import ablate
from bncheck.training.data import Data, model_device
from bncheck.training.fit import Curve, Training, initialized, require_data, resolve_training, seed_list, train
from bncheck.training.progress import progress_bar


def _share_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy every parameter and buffer of `source` into `target` where name and shape agree."""
    mine = target.state_dict()
    shared = {k: v for k, v in source.state_dict().items() if k in mine and mine[k].shape == v.shape}
    target.load_state_dict(shared, strict=False)


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
    training = resolve_training(training, overrides)
    require_data(data)
    device = model_device(model, device)
    data = data.to(device)
    seeds = seed_list(seeds)
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


@assertion_helper
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


@assertion_helper
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


@assertion_helper
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


@assertion_helper
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
