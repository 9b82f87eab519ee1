"""Convergence assertions on real data (scikit-learn's 8x8 digits): the seed CNN beats its no-BN twin, broken BN
and twins that make no difference fail with per-seed steps in the message, the verdict is stable across seeds,
the learning-rate assertion and the sweep, and the user's model is never touched.

Every training here runs on one CPU thread (two pytest-xdist workers share two cores); the digits-sized CNN of the
seed design trains in ~0.1 s per run, the seed CNN itself (digits resized to 28x28) in ~0.5 s.
"""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bncheck.core.errors import BNCheckError, BNCheckUsageError
from bncheck.core.state import Snapshot
from bncheck.data import Data, digits
from bncheck.examples import seed_cnn
from bncheck.training.ablate import ablate, bn_after_activation
from bncheck.training.convergence import (
    assert_converges_faster,
    assert_no_slower,
    assert_same_speed,
    assert_tolerates_higher_lr,
    compare_convergence,
)
from bncheck.training.fit import Training, batch_order, fit, initialized, train
from bncheck.training.sweep import combinations, sweep

BENCHMARK_BUDGET_S = 30  # the bound for one convergence test on CPU


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def flat():
    return digits(flat=True)


@pytest.fixture(scope="module")
def d28():
    return digits(image_size=28)


# --- models: the seed CNN's design at digits size, and broken BNs ----------------------------------------------------


def digits_cnn(bn2=nn.BatchNorm2d, bn1=nn.BatchNorm1d) -> nn.Module:
    """bncheck.examples.seed_cnn's design for 8x8 inputs: 3x3 convs with padding, the same BN positions."""
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), bn2(6),
        nn.Conv2d(6, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(48, 120), nn.ReLU(), bn1(120), nn.Linear(120, 60), nn.ReLU(), nn.Linear(60, 10))


def mlp(dropout: float = 0.0) -> nn.Module:
    """The second tutorial's MLP at digits size: Linear → BN → ReLU (→ Dropout) → Linear."""
    return nn.Sequential(nn.Linear(64, 64), nn.BatchNorm1d(64), nn.ReLU(),
                         *([nn.Dropout(dropout)] if dropout else []), nn.Linear(64, 10))


class _Zeroing:
    """Broken: multiplies the normalized output by 0 (a γ stuck at 0, a mask bug)."""

    def forward(self, x):
        return super().forward(x) * 0


class ZeroBN2d(_Zeroing, nn.BatchNorm2d):
    pass


class ZeroBN1d(_Zeroing, nn.BatchNorm1d):
    pass


class _RunningInTrain:
    """Broken: normalizes with the running statistics in train mode too (the wrong statistics; never updates)."""

    def forward(self, x):
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class RunningInTrain2d(_RunningInTrain, nn.BatchNorm2d):
    pass


class RunningInTrain1d(_RunningInTrain, nn.BatchNorm1d):
    pass


def momentum_zero_cnn():
    """Broken: momentum=0, so eval mode normalizes with the initial statistics 0 and 1 forever."""
    return digits_cnn(lambda c: nn.BatchNorm2d(c, momentum=0.0), lambda c: nn.BatchNorm1d(c, momentum=0.0))


FAST = {"lr": 0.003, "steps": 200, "seeds": 3}  # the digits CNN: BN reaches 90 % in ~40 steps, its twin in ~110


def per_seed_rows(message: str, seeds) -> list[str]:
    rows = [line.split() for line in message.splitlines() if line.strip().split(" ")[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(seeds), message
    return rows


# --- assert_converges_faster -----------------------------------------------------------------------------------------


def test_seed_cnn_converges_faster_than_its_twin_benchmark(benchmark, d28):
    """The seed CNN (bncheck.examples.seed_cnn, 28x28 input) on real digits resized to 28x28, default Training:
    3 seeds, Adam lr=0.001, target 90 % test accuracy. Timed: one convergence test must cost under 30 s on CPU."""
    model = seed_cnn()
    before = Snapshot.of(model)
    cmp = benchmark.pedantic(assert_converges_faster, args=(model, d28), kwargs={"seeds": 3}, rounds=1, iterations=1)
    assert cmp.wins == 3 and cmp.median_ratio <= 0.8, str(cmp)
    assert cmp.reached == cmp.twin_reached == 3
    assert before.differences(model) == []


@pytest.mark.timing
def test_a_convergence_test_costs_under_its_budget(benchmark, d28):
    """The bench session's bound (pytest -m timing -p no:xdist): the test above under BENCHMARK_BUDGET_S."""
    assert benchmark.enabled, "a timing test runs with pytest-benchmark enabled: pytest -m timing -p no:xdist"
    benchmark.pedantic(assert_converges_faster, args=(seed_cnn(), d28), kwargs={"seeds": 3}, rounds=1, iterations=1)
    assert benchmark.stats.stats.max < BENCHMARK_BUDGET_S


def test_digits_cnn_converges_faster_and_user_model_unchanged(d8):
    model = digits_cnn().eval()
    model[3].weight.requires_grad_(False)
    before = Snapshot.of(model)
    cmp = assert_converges_faster(model, d8, **FAST)
    assert cmp.wins == 3 and all(r <= 0.8 for r in cmp.ratios), str(cmp)
    assert before.differences(model) == []
    assert not model.training and not model[3].weight.requires_grad


def test_zeroing_bn_fails_with_each_seeds_steps(d8):
    model = digits_cnn(ZeroBN2d, ZeroBN1d)
    before = Snapshot.of(model)
    with pytest.raises(BNCheckError) as info:
        assert_converges_faster(model, d8, **FAST)
    message = str(info.value)
    assert "BN does not converge faster than no BN (median steps ratio ≤ 0.8 required)" in message
    rows = per_seed_rows(message, range(3))
    assert all(r[1] == ">200" and r[2].isdigit() and int(r[2]) <= 200 for r in rows), message  # twin reached
    assert "reached the target: BN 0/3, no BN 3/3" in message
    assert "never reached the target" in message and "zeroed or constant output" in message
    assert before.differences(model) == []  # also on failure
    cmp = info.value.comparison  # the Comparison travels with the error
    assert cmp.reached == 0 and cmp.twin_reached == 3 and cmp.data == "digits"


def test_bn_with_running_stats_in_train_mode_fails_as_training_alike(d8):
    """A BN that normalizes with its (never-updated) running statistics is an affine layer: the model then trains
    exactly like its twin, step for step."""
    with pytest.raises(BNCheckError) as info:
        assert_converges_faster(digits_cnn(RunningInTrain2d, RunningInTrain1d), d8, **FAST)
    message = str(info.value)
    rows = per_seed_rows(message, range(3))
    assert all(r[1] == r[2] for r in rows), message
    assert "median steps ratio 1.00" in message
    assert "train alike" in message and "running instead of batch statistics" in message


def test_momentum_zero_fails_naming_eval_mode_statistics(d8):
    with pytest.raises(BNCheckError) as info:
        assert_converges_faster(momentum_zero_cnn(), d8, **FAST)
    message = str(info.value)
    assert "reached the target: BN 0/3" in message
    assert "learns in train mode" in message and "never updated: momentum 0" in message


def test_twin_where_bn_placement_makes_no_difference_fails(flat):
    """The second tutorial's claim: BN before or after the activation makes no measurable difference."""
    with pytest.raises(BNCheckError) as info:
        assert_converges_faster(mlp(), flat, twin=bn_after_activation, lr=0.003, target=0.95, eval_every=5,
                                seeds=5)
    message = str(info.value)
    assert "BN does not converge faster than bn_after_activation" in message
    assert len(per_seed_rows(message, range(5))) == 5
    assert "train alike: what the twin changes makes no measurable difference" in message


def test_require_every_seed(d8):
    cmp = assert_converges_faster(digits_cnn(), d8, require="every", max_ratio=0.8, **FAST)
    with pytest.raises(BNCheckError, match="steps ratio ≤ 0.1 on every seed required"):
        assert_converges_faster(digits_cnn(), d8, require="every", max_ratio=0.1, **FAST)
    assert max(cmp.ratios) <= 0.8


@pytest.mark.slow
def test_verdict_is_stable_over_ten_seed_sets(d8):
    """The same assertion, 10 times with 10 disjoint sets of 3 seeds: the same verdict (pass) every time, and its
    statistic well clear of the bound. (The failing verdicts' stability: reference/README.md, 'stability'.)"""
    medians = []
    for run in range(10):
        cmp = assert_converges_faster(digits_cnn(), d8, seeds=range(3 * run, 3 * run + 3), lr=0.003, steps=200)
        medians.append(cmp.median_ratio)
    assert max(medians) <= 0.6, medians


# --- no measurable difference ----------------------------------------------------------------------------------------

NO_DIFFERENCE = {"twin": bn_after_activation, "lr": 0.003, "target": 0.95, "eval_every": 5, "seeds": 5}


def test_no_slower_and_same_speed_for_a_no_difference_claim(flat):
    cmp = assert_no_slower(mlp(), flat, **NO_DIFFERENCE)
    assert 0.8 <= cmp.median_ratio <= 1.25 and cmp.reached == cmp.twin_reached == 5
    assert assert_same_speed(mlp(), flat, **NO_DIFFERENCE).median_ratio == cmp.median_ratio  # deterministic


def test_no_slower_fails_when_the_model_is_slower(d8):
    """The no-BN twin as the model, the BN model as its twin: the model is the slower one."""
    bn = digits_cnn()
    with pytest.raises(BNCheckError) as info:
        assert_no_slower(ablate(bn), d8, twin=bn, label="no BN", twin_label="BN", **FAST)
    message = str(info.value)
    assert "no BN converges slower than BN (median steps ratio ≤ 1.25 required)" in message
    assert all(float(r[3]) > 1.25 for r in per_seed_rows(message, range(3)))


def test_same_speed_fails_when_bn_is_faster(d8):
    with pytest.raises(BNCheckError, match=r"differ measurably: BN is faster .*within \[0.80, 1.25\]"):
        assert_same_speed(digits_cnn(), d8, **FAST)


def test_unreachable_target_is_inconclusive(flat):
    for check in (assert_no_slower, assert_same_speed):
        with pytest.raises(BNCheckError, match="inconclusive: neither BN nor no BN reached the target"):
            check(mlp(), flat, target=1.01, steps=20, seeds=2)
    with pytest.raises(BNCheckError, match="inconclusive: neither reached the target"):
        assert_converges_faster(mlp(), flat, target=1.01, steps=20, seeds=2)


# --- higher learning rates, sweeps -----------------------------------------------------------------------------------


def test_bn_tolerates_a_learning_rate_its_twin_does_not(d8):
    """SGD at lr=1: the BN CNN reaches 90 % in ~50 steps, its twin stays at chance."""
    cmp = assert_tolerates_higher_lr(digits_cnn(), d8, lr=1.0, optimizer="sgd", steps=150, seeds=3)
    assert cmp.reached == 3 and cmp.twin_reached == 0


def test_tolerates_higher_lr_fails_where_the_twin_copes(flat):
    with pytest.raises(BNCheckError) as info:
        assert_tolerates_higher_lr(mlp(), flat, twin=bn_after_activation, lr=0.003, target=0.9, seeds=3)
    message = str(info.value)
    assert "does not tolerate a higher learning rate than bn_after_activation" in message
    assert "bn_after_activation copes as well at lr=0.003: it reached the target on 3/3 seeds" in message


def test_tolerates_higher_lr_fails_where_the_model_itself_fails(d8):
    with pytest.raises(BNCheckError, match=r"BN itself does not converge at lr=1000 \(reached the target on 0/2"):
        assert_tolerates_higher_lr(digits_cnn(), d8, lr=1000.0, optimizer="sgd", steps=20, seeds=2)


def test_combinations_like_runbuilder():
    runs = combinations(lr=[0.01, 0.001], batch_size=[100, 1000])
    assert [tuple(r) for r in runs] == [(0.01, 100), (0.01, 1000), (0.001, 100), (0.001, 1000)]
    assert runs[1].lr == 0.01 and runs[1].batch_size == 1000 and type(runs[0]).__name__ == "Run"


def test_sweep_every_variant_lr_and_seed(d8):
    model = digits_cnn()
    before = Snapshot.of(model)
    result = sweep(model, d8, lrs=[0.1, 1.0], seeds=[0, 1], optimizer="sgd", steps=150)
    assert [(r.seed, r.lr, r.variant) for r in result.rows] == [
        (s, lr, v) for s in (0, 1) for lr in (0.1, 1.0) for v in ("BN", "no BN")]
    assert result.largest_converging_lr("BN") == 1.0
    assert result.converged("no BN", 1.0) == 0
    assert result.largest_converging_lr("no BN") is None  # lr=0.1 is too slow for it within 150 steps
    assert result.median_final_accuracy("BN", 1.0) > 0.9 > result.median_final_accuracy("no BN", 1.0)
    table = result.table().splitlines()
    assert table[0].split() == ["variant", "lr", "seed", "steps", "final", "acc", "final", "loss"]
    assert len(table) == 9 and ">150" in result.table()
    # all variants of one seed start from the same weights: the BN model's first conv is the twin's
    rows = {(r.seed, r.variant): r.curve for r in result.rows if r.lr == 0.1}
    assert rows[(0, "BN")].steps[0] == rows[(0, "no BN")].steps[0] == 10
    assert before.differences(model) == []


# --- training itself -------------------------------------------------------------------------------------------------


def test_train_is_deterministic_and_leaves_the_global_rng_alone(flat):
    model = mlp(dropout=0.2)
    state = torch.random.get_rng_state()
    a = train(model, flat, steps=30, eval_every=10, seed=3, stop_at_target=False)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train(model, flat, steps=30, eval_every=10, seed=3, stop_at_target=False)
    c = train(model, flat, steps=30, eval_every=10, seed=4, stop_at_target=False)
    assert a.test_accuracy == b.test_accuracy and a.train_loss == b.train_loss
    assert a.train_loss != c.train_loss
    assert a.steps == [10, 20, 30] and len(a.seconds) == 3 and a.seconds == sorted(a.seconds)
    assert all(0 <= v <= 1 for v in a.test_accuracy + a.train_accuracy)


def test_training_on_the_cpu_seeds_no_gpu_generator(flat, monkeypatch):
    """torch.manual_seed would also seed every GPU, or, CUDA not initialized yet, queue that seeding for the
    caller's first CUDA call: training and re-initializing on the CPU seed the CPU generator only."""
    seeded = []
    for name in ("manual_seed", "manual_seed_all", "seed", "seed_all"):
        monkeypatch.setattr(torch.cuda, name, lambda *args, name=name: seeded.append(name))
    model, lazy = mlp(dropout=0.2), nn.Sequential(nn.LazyLinear(8), nn.BatchNorm1d(8))
    queued = list(torch.cuda._lazy_seed_tracker.get_calls()), list(torch.cuda._queued_calls)
    state = torch.random.get_rng_state()
    net, _ = fit(model, flat, steps=10, eval_every=10, seed=3)
    fresh = initialized(model, seed=1)
    initialized(lazy, seed=1)
    assert seeded == []
    assert (list(torch.cuda._lazy_seed_tracker.get_calls()), list(torch.cuda._queued_calls)) == queued
    assert torch.equal(torch.random.get_rng_state(), state)
    # the seed still decides: the same seed draws the same dropout masks and the same fresh weights
    again, _ = fit(model, flat, steps=10, eval_every=10, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    assert torch.equal(fresh[0].weight, initialized(model, seed=1)[0].weight)


def test_lazy_parameters_are_materialized_from_the_seed(flat):
    lazy = nn.Sequential(nn.LazyLinear(32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))
    a, _ = fit(lazy, flat, steps=10, eval_every=10, seed=5)
    b, _ = fit(lazy, flat, steps=10, eval_every=10, seed=5)
    assert isinstance(lazy[0].weight, nn.parameter.UninitializedParameter)  # the user's model stays lazy
    assert a[0].weight.shape == (32, 64) and torch.equal(a[0].weight, b[0].weight)


def test_fit_returns_the_trained_copy_and_stops_at_the_target(flat):
    model = mlp()
    before = Snapshot.of(model)
    net, curve = fit(model, flat, target=0.9, steps=300, eval_every=5)
    assert net is not model and before.differences(model) == []
    assert curve.reached == curve.steps[-1] < 300 and curve.final_accuracy >= 0.9
    assert net.training  # the copy is left as training left it
    x, y = flat.x_test, flat.y_test
    with torch.no_grad():
        assert (net.eval()(x).argmax(1) == y).float().mean().item() == pytest.approx(curve.final_accuracy)


def test_loss_target(flat):
    curve = train(mlp(), flat, metric="loss", target=0.5, steps=300, eval_every=5)
    assert curve.reached is not None and curve.final_loss <= 0.5
    assert all(loss > 0.5 for loss in curve.test_loss[:-1])


def test_batch_order_is_full_batches_and_per_epoch_permutations():
    order = batch_order(10, 3, 7, seed=0, device="cpu")  # 3 batches per epoch; one sample left out each epoch
    assert order.shape == (7, 3)
    for epoch in range(2):
        block = order[3 * epoch:3 * epoch + 3].flatten()
        assert len(set(block.tolist())) == 9
    assert torch.equal(order, batch_order(10, 3, 7, seed=0, device="cpu"))
    assert not torch.equal(order, batch_order(10, 3, 7, seed=1, device="cpu"))


def test_initialized_is_seeded_and_reset():
    model = digits_cnn()
    with torch.no_grad():
        model[3].running_mean.fill_(5.0)
    a, b, c = initialized(model, 0), initialized(model, 0), initialized(model, 1)
    assert torch.equal(a[0].weight, b[0].weight) and not torch.equal(a[0].weight, c[0].weight)
    assert float(a[3].running_mean.abs().max()) == 0.0 and float(model[3].running_mean[0]) == 5.0


def test_twin_module_shares_the_models_weights_where_it_can(d8):
    """A twin given as a module starts from the model's weights wherever name and shape agree."""
    bn = digits_cnn()
    cmp = compare_convergence(bn, d8, twin=ablate(bn), seeds=[0], lr=0.003, steps=40, stop_at_target=False)
    same = compare_convergence(bn, d8, seeds=[0], lr=0.003, steps=40, stop_at_target=False)
    assert cmp.twin_runs[0].test_accuracy == same.twin_runs[0].test_accuracy
    assert cmp.twin_label == "Sequential" and same.twin_label == "no BN"


def test_reinit_false_keeps_the_models_weights(d8):
    model = digits_cnn()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # all-zero weights cannot learn: only visible if these weights are kept
    kept = compare_convergence(model, d8, seeds=[0], reinit=False, lr=0.003, steps=20, stop_at_target=False)
    fresh = compare_convergence(model, d8, seeds=[0], lr=0.003, steps=20, stop_at_target=False)
    assert kept.runs[0].final_accuracy < 0.2 < fresh.runs[0].final_accuracy


def test_lazy_model_trains(flat):
    model = nn.Sequential(nn.LazyLinear(32), nn.LazyBatchNorm1d(), nn.ReLU(), nn.Linear(32, 10))
    cmp = compare_convergence(model, flat, seeds=[0], steps=30, stop_at_target=False)
    assert cmp.runs[0].final_accuracy > 0.5 and cmp.twin_runs[0].final_accuracy > 0.5
    assert isinstance(model[0].weight, nn.parameter.UninitializedParameter)  # the user's model stays lazy


def test_diverging_training_is_recorded(d8):
    curve = train(ablate(digits_cnn()), d8, lr=1e6, optimizer="sgd", steps=50, eval_every=5, stop_at_target=False)
    assert curve.diverged and curve.reached is None and len(curve.steps) < 10
    assert not math.isfinite(curve.train_loss[-1]) or not math.isfinite(curve.test_loss[-1])


# --- bad input -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, fragment", [
    ({"metric": "f1"}, "metric='f1': expected one of accuracy, loss"),
    ({"optimizer": "lbfgs"}, "optimizer='lbfgs': expected one of adam, sgd, momentum"),
    ({"batch_size": 1}, "batch_size must be at least 2"),
    ({"steps": 0}, "steps and eval_every must be positive"),
    ({"epochs": 3}, "unknown training setting(s): epochs"),
    ({"batch_size": 5000}, "batch_size=5000 is larger than the training split"),
    ({"seeds": []}, "seeds: need at least one"),
    ({"twin": 3}, "twin must be None"),
])
def test_bad_settings_are_one_line_usage_errors(flat, kwargs, fragment):
    with pytest.raises(BNCheckUsageError) as info:
        compare_convergence(mlp(), flat, **kwargs)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_model_that_does_not_fit_the_data_is_a_usage_error(d8):
    with pytest.raises(BNCheckUsageError, match=r"training on digits \(1, 8, 8\) failed: RuntimeError.*"
                                                r"output 10 logits"):
        compare_convergence(mlp(), d8, seeds=1, steps=5)
    with pytest.raises(BNCheckUsageError, match="expected a bncheck.Data"):
        compare_convergence(mlp(), (d8.x_train, d8.y_train))


def test_custom_optimizer_and_describe():
    t = Training(optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr), lr=0.5, target=0.8)
    assert "test accuracy ≥ 0.8" in t.describe() and "lr=0.5" in t.describe()
    assert isinstance(t.make_optimizer([nn.Parameter(torch.zeros(1))]), torch.optim.SGD)
    assert Training(metric="loss", target=0.3).reached(0.2) and not Training(target=0.9).reached(0.8)


def test_data_held_on_the_training_device(d8):
    """The data moves once; training indexes it where it lives (no per-step host copies)."""
    moved = d8.to("cpu")
    assert moved.x_train is d8.x_train  # a no-op on the same device
    assert isinstance(moved, Data)


# --- the plugin's --bncheck-convergence item -------------------------------------------------------------------------

CONVMODELS = '''
import torch
from torch import nn


def _x(*shape):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def digits_cnn():
    """The seed CNN's design at 8x8: the built-in digits fit its input."""
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.BatchNorm2d(6),
        nn.Conv2d(6, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(48, 120), nn.ReLU(), nn.BatchNorm1d(120), nn.Linear(120, 60), nn.ReLU(), nn.Linear(60, 10))
    return net, _x(4, 1, 8, 8)


class ZeroBN1d(nn.BatchNorm1d):
    def forward(self, x):
        return super().forward(x) * 0


zero_bn = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), ZeroBN1d(32), nn.ReLU(), nn.Linear(32, 10))
zero_bn.example_input = _x(4, 1, 8, 8)

features3 = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 10))  # no data set has 3 features
features3.example_input = _x(4, 3)

six_classes = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.BatchNorm1d(8), nn.Linear(8, 6))
six_classes.example_input = _x(4, 1, 8, 8)

small28 = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(49, 16), nn.BatchNorm1d(16), nn.ReLU(),
                        nn.Linear(16, 10))  # 1x28x28 input: Fashion-MNIST's shape
small28.example_input = _x(4, 1, 28, 28)
'''


@pytest.fixture
def convmodels(pytester, _lazy_torch_imports):
    pytester.makepyfile(convmodels=CONVMODELS)
    pytester.syspathinsert()
    return pytester


def _outcomes(result) -> dict[str, str]:
    return {r.nodeid: r.outcome for r in result.reprec.getreports("pytest_runtest_logreport")
            if r.when == "call" or not r.passed}


def _report(result, nodeid):
    return next(r for r in result.reprec.getreports("pytest_runtest_logreport")
                if r.nodeid == nodeid and (r.when == "call" or not r.passed))


def test_plugin_option_and_ini_in_help(pytester, _lazy_torch_imports):
    text = pytester.runpytest("--help").stdout.str()
    group = text.split("bncheck: BatchNorm contract checks:")[1].split("\n\n")[0]
    assert "--bncheck-convergence" in group and "--bncheck-data-root=DIR" in group
    assert re.search(r"^  bncheck_convergence \(bool\):", text, re.M)
    assert re.search(r"^  bncheck_data_root \(string\):", text, re.M)


def test_plugin_adds_one_convergence_item_per_model_only_when_asked(convmodels):
    specs = ["convmodels:digits_cnn", "convmodels:zero_bn"]
    args = [f"--bncheck-model={spec}" for spec in specs] + ["--collect-only", "-q"]
    plain = [line for line in convmodels.runpytest(*args).outlines if "::" in line]
    assert not [line for line in plain if line.endswith("::convergence")]
    with_item = [line for line in convmodels.runpytest(*args, "--bncheck-convergence").outlines if "::" in line]
    expected = []
    for spec in specs:  # each model's items, its convergence item last
        expected += [line for line in plain if line.startswith(f"bncheck[{spec}]")] + [f"bncheck[{spec}]::convergence"]
    assert with_item == expected


def test_plugin_convergence_passes_for_the_seed_design_on_builtin_digits(convmodels):
    result = convmodels.runpytest("--bncheck-model=convmodels:digits_cnn", "--bncheck-convergence", "-k",
                                  "convergence", "-rP")
    assert _outcomes(result) == {"bncheck[convmodels:digits_cnn]::convergence": "passed"}
    result.stdout.fnmatch_lines(["BN vs no BN: median steps ratio 0.*, BN faster on 3 of 3 seeds*",
                                 "*(on digits, test accuracy ≥ 0.9*"])
    result.stdout.fnmatch_lines(["bncheck[[]convmodels:digits_cnn[]] model: 1 passed, 0 failed"])


def test_plugin_convergence_fails_for_broken_bn_with_the_per_seed_table(convmodels):
    import importlib

    models = importlib.import_module("convmodels")
    before = Snapshot.of(models.zero_bn)
    result = convmodels.runpytest("--bncheck-model=convmodels:zero_bn", "--bncheck-convergence", "--bncheck-seed=5",
                                  "-k", "convergence")
    nodeid = "bncheck[convmodels:zero_bn]::convergence"
    assert _outcomes(result) == {nodeid: "failed"}
    message = _report(result, nodeid).longreprtext
    assert message.startswith("BN does not converge faster than no BN")
    assert [line.split()[0] for line in message.splitlines() if line.startswith("     ")] == ["5", "6", "7"]
    assert "Traceback" not in message and "never reached the target" in message
    assert before.differences(models.zero_bn) == []  # the user's model, the very object the run loaded


@pytest.mark.parametrize("model, fragment", [
    ("features3", "no built-in data set for input 3 (input shape (3,): a (features,) input takes flattened"),
    ("six_classes", "needs a 10-class classifier (output (N, 10) logits), got (4, 6)"),
])
def test_plugin_convergence_skips_with_a_one_line_reason(convmodels, model, fragment):
    result = convmodels.runpytest(f"--bncheck-model=convmodels:{model}", "--bncheck-convergence", "-k",
                                  "convergence", "-rs")
    assert _outcomes(result) == {f"bncheck[convmodels:{model}]::convergence": "skipped"}
    [line] = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert fragment in line
    if model == "features3":
        assert "supply Fashion-MNIST as the data_root setting" in line


def _tiny_fashion(root, n_train=300, n_test=100):
    from conftest import write_idx

    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    write_idx(raw / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)))
    write_idx(raw / "train-labels-idx1-ubyte", rng.integers(0, 10, n_train))
    write_idx(raw / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)))
    write_idx(raw / "t10k-labels-idx1-ubyte", rng.integers(0, 10, n_test))


@pytest.mark.parametrize("how", ["option", "ini"])
def test_plugin_data_root_trains_on_fashion_mnist(convmodels, how):
    """Random images with random labels: no model reaches 90 % on them, so the item fails as inconclusive, and
    its message shows that it trained on the Fashion-MNIST files of the data root."""
    _tiny_fashion(convmodels.path / "data")
    args = ["--bncheck-model=convmodels:small28", "-k", "convergence"]
    if how == "option":
        args += ["--bncheck-convergence", "--bncheck-data-root=data"]
    else:
        convmodels.makepyprojecttoml('[tool.pytest.ini_options]\nbncheck_convergence = true\n'
                                     'bncheck_data_root = "data"\n')
    result = convmodels.runpytest(*args)
    nodeid = "bncheck[convmodels:small28]::convergence"
    assert _outcomes(result) == {nodeid: "failed"}
    message = _report(result, nodeid).longreprtext
    assert "(on Fashion-MNIST, test accuracy ≥ 0.9" in message and "inconclusive" in message


@pytest.mark.parametrize("args, fragments", [
    (["--bncheck-data-root=nowhere"], ["--bncheck-data-root=nowhere: Fashion-MNIST not found under "
                                       "nowhere/FashionMNIST/raw: missing train-images-idx3-ubyte"]),
    (["--bncheck-convergence", "--bncheck-data-root=convmodels.py"],
     ["--bncheck-data-root=convmodels.py: Fashion-MNIST not found"]),
])
def test_plugin_bad_data_root_is_a_one_line_usage_error(convmodels, args, fragments):
    from plugin_runs import assert_usage_error

    assert_usage_error(convmodels.runpytest("--bncheck-model=convmodels:digits_cnn", *args), *fragments)


def test_plugin_ini_data_root_is_relative_to_the_ini_file(convmodels):
    from plugin_runs import assert_usage_error

    convmodels.makepyprojecttoml('[tool.pytest.ini_options]\nbncheck_data_root = "nowhere"\n')
    assert_usage_error(convmodels.runpytest("--bncheck-model=convmodels:digits_cnn"),
                       f"bncheck_data_root={convmodels.path / 'nowhere'}: Fashion-MNIST not found")


# --- reference/: the seed experiments regenerate ---------------------------------------------------------------------


@pytest.mark.slow
def test_reference_quick_run_writes_the_table_and_the_plot(tmp_path):
    """`python -m reference cnn --quick` (2 epochs, 1 seed) writes runs.csv with the documented columns and
    curves.png; the full run is the same code with more epochs and seeds."""
    import csv
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "reference", "cnn", "--quick", "--out", str(tmp_path)], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    with (tmp_path / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["experiment", "data", "network", "setting", "batch_size", "lr", "seed", "epoch", "loss",
                             "accuracy", "test_loss", "test_accuracy", "time"]
    assert {(r["setting"], r["epoch"]) for r in rows} == {(s, e) for s in ("BN", "no BN") for e in ("1", "2")}
    assert all(0 <= float(r["test_accuracy"]) <= 1 for r in rows)
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| digits 28x28 | seed CNN | BN |" in (tmp_path / "summary.md").read_text()
