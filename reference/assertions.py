"""The assertions themselves as experiments: the verdict of bncheck's convergence assertions over 10 disjoint seed
sets (is the statistic stable?), and a learning-rate sweep (does BN tolerate larger learning rates?)."""

from __future__ import annotations

import time

import torch.nn.functional as F
from torch import nn

from bncheck.core.errors import BNCheckError
from bncheck.data import digits
from bncheck.examples import seed_cnn
from bncheck.training.ablate import bn_after_activation
from bncheck.training.convergence import assert_converges_faster, assert_same_speed
from bncheck.training.sweep import sweep

from .networks import digits_cnn, mlp


class RunningStatsInTrainBN(nn.BatchNorm1d):
    """A broken BN: normalizes with its running statistics in train mode too (and so never updates them)."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def broken_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 64), RunningStatsInTrainBN(64), nn.ReLU(), nn.Linear(64, 10))


def before_relu_mlp() -> nn.Module:
    return mlp("BN before ReLU, bias, no dropout", inputs=64, hidden=(64,))


def claims() -> list[tuple[str, str, str, callable]]:
    """(claim, short label, expected verdict, check(seeds)) for the stability experiment; each check raises
    BNCheckError or returns a Comparison."""
    d8, d28, flat = digits(), digits(image_size=28), digits(flat=True)
    return [
        ("seed CNN (digits 28x28) converges faster than its no-BN twin (defaults: Adam lr 0.001, target 0.9)",
         "seed CNN faster than no BN", "pass",
         lambda seeds: assert_converges_faster(seed_cnn(), d28, seeds=seeds)),
        ("digits CNN converges faster than its no-BN twin (Adam lr 0.003, 200 steps)",
         "digits CNN faster than no BN", "pass",
         lambda seeds: assert_converges_faster(digits_cnn(), d8, seeds=seeds, lr=0.003, steps=200)),
        ("MLP with BN before ReLU converges faster than with BN after ReLU",
         "MLP: BN before ReLU faster", "fail",
         lambda seeds: assert_converges_faster(before_relu_mlp(), flat, twin=bn_after_activation, seeds=seeds,
                                               lr=0.003, target=0.95, eval_every=5)),
        ("MLP with BN before ReLU and with BN after ReLU train at the same speed (within 1.25x)",
         "MLP: before = after ReLU", "pass",
         lambda seeds: assert_same_speed(before_relu_mlp(), flat, twin=bn_after_activation, seeds=seeds, lr=0.003,
                                         target=0.95, eval_every=5)),
        ("MLP with a BN that normalizes with running statistics in train mode converges faster than its twin",
         "broken BN faster than no BN", "fail",
         lambda seeds: assert_converges_faster(broken_mlp(), flat, seeds=seeds, lr=0.003, target=0.95,
                                               eval_every=5)),
    ]


def stability(sets: int = 10, per_set: int = 3) -> list[dict]:
    """Each claim's verdict and median steps ratio on `sets` disjoint sets of `per_set` seeds."""
    results = []
    for claim, label, expected, check in claims():
        started = time.perf_counter()
        verdicts, medians = [], []
        for i in range(sets):
            seeds = list(range(per_set * i, per_set * i + per_set))
            try:
                cmp = check(seeds)
                verdicts.append("pass")
            except BNCheckError as exc:
                cmp = exc
                verdicts.append("fail")
            medians.append(_median_ratio(cmp))
        results.append({"claim": claim, "label": label, "expected": expected, "verdicts": verdicts,
                        "stable": all(v == expected for v in verdicts), "median_ratios": medians,
                        "seconds": round(time.perf_counter() - started, 1)})
        print(f"stability: {claim}: {verdicts.count(expected)}/{sets} {expected}")
    return results


def _median_ratio(outcome) -> float:
    cmp = outcome.comparison if isinstance(outcome, BNCheckError) else outcome  # the assertion's Comparison
    return round(cmp.median_ratio, 3)


def lr_sweep(seeds=(0, 1, 2), lrs=(0.01, 0.1, 0.5, 1.0, 2.0), steps: int = 300) -> list[dict]:
    """The digits CNN and its no-BN twin under plain SGD at growing learning rates (bncheck.sweep)."""
    result = sweep(digits_cnn(), digits(), lrs=lrs, seeds=list(seeds), optimizer="sgd", steps=steps, target=0.9,
                   stop_at_target=False)  # final accuracy after all steps; steps-to-0.9 still recorded
    print(result.table())
    return [{"variant": r.variant, "lr": r.lr, "seed": r.seed, "steps_to_0.9": r.reached,
             "final_test_accuracy": round(r.final_accuracy, 4), "final_test_loss": round(r.final_loss, 4),
             "diverged": r.diverged, "time": round(r.seconds, 2)} for r in result.rows]
