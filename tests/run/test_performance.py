"""Speed benchmarks (pytest-benchmark) behind docs/PERFORMANCE.md; each also asserts the run is all green."""

import statistics
import subprocess
import sys
import time

import pytest
import torch
import torchvision

from bncheck import LAYER_CHECKS, MODEL_CHECKS, BNCheckSkip, capture, find_batchnorms
from bncheck.checks.lints import LINTS

PLUGIN_RUN = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
              "--bncheck-model=torchvision.models:resnet18", "--bncheck-input-shape=3,64,64"]
IMPORTS = [sys.executable, "-c", "import torch, torchvision, pytest, bncheck.frontends.plugin"]
RESNET50_BUDGET_S = 10  # the core issue's bound for every per-layer check on resnet50's 53 BN layers, 2-core CPU


def _all_layer_checks(model, x) -> int:
    """Every per-layer check on every BN layer, each on its captured input; returns how many ran."""
    inputs = capture(model, x).inputs
    ran = 0
    for name, layer in find_batchnorms(model).items():
        for check in LAYER_CHECKS.values():
            try:
                check(layer, inputs[name], name=name)
                ran += 1
            except BNCheckSkip:
                pass
    return ran


@pytest.mark.slow
def test_all_layer_checks_on_resnet50(benchmark):
    model = torchvision.models.resnet50()
    x = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert len(find_batchnorms(model)) == 53
    ran = benchmark.pedantic(_all_layer_checks, args=(model, x), rounds=1, iterations=1)
    assert ran == 53 * len(LAYER_CHECKS)


@pytest.mark.timing
def test_all_layer_checks_on_resnet50_within_budget(benchmark):
    """The bench session's bound (pytest -m timing -p no:xdist): the test above under RESNET50_BUDGET_S."""
    assert benchmark.enabled, "a timing test runs with pytest-benchmark enabled: pytest -m timing -p no:xdist"
    test_all_layer_checks_on_resnet50(benchmark)
    assert benchmark.stats.stats.max < RESNET50_BUDGET_S


def _run(cmd):
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.mark.slow
def test_plugin_run_on_resnet18(benchmark, tmp_path):
    out = benchmark.pedantic(_run, args=(PLUGIN_RUN,), kwargs={}, rounds=1, iterations=1)
    assert f"{20 * len(LAYER_CHECKS) + len(MODEL_CHECKS) + len(LINTS)} passed" in out  # resnet18: 20 BN layers


@pytest.mark.timing
def test_import_share_of_a_plugin_run(benchmark):
    """A measurement only (docs/PERFORMANCE.md's bare-imports figure): it belongs to the bench session."""
    benchmark.pedantic(_run, args=(IMPORTS,), rounds=3, iterations=1)


def _one_test_run(directory, *plugin_args) -> float:
    """Seconds of a whole `pytest` process running one trivial test in `directory`."""
    start = time.perf_counter()
    _run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugin_args, str(directory)])
    return time.perf_counter() - start


@pytest.mark.timing
def test_an_installed_bncheck_costs_a_pytest_run_under_a_tenth_of_a_second(tmp_path):
    """A one-test pytest run in an unrelated directory, with bncheck installed vs `-p no:bncheck`: medians of 5
    interleaved runs each (the plugin's entry point imports no torch, tests/test_layout.py)."""
    (tmp_path / "test_one.py").write_text("def test_one():\n    assert True\n")
    with_bncheck, without = [], []
    for _ in range(5):
        with_bncheck.append(_one_test_run(tmp_path))
        without.append(_one_test_run(tmp_path, "-p", "no:bncheck"))
    cost = statistics.median(with_bncheck) - statistics.median(without)
    print(f"one-test pytest run: {statistics.median(with_bncheck):.2f} s with bncheck, "
          f"{statistics.median(without):.2f} s with -p no:bncheck: {cost:+.3f} s")
    assert cost < 0.1, (with_bncheck, without)


RESNET50_MODEL_PASSES = 12  # whole-model forward passes of one resnet50 run, the plan's own capture included


@pytest.mark.timing
def test_a_resnet50_run_stays_within_its_budget_of_whole_model_passes():
    """A count, not a time, but a resnet50 run is a bench-session cost: the model checks share their eval pass
    (bncheck.core.capture.eval_run), so that 858 items cost at most RESNET50_MODEL_PASSES forwards of the model."""
    from bncheck import check_model
    from bncheck.core.passes import counted

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.resnet50()
    with counted() as passes:
        report = check_model(model, input_shape=(3, 64, 64), device="cpu")
    assert report.ok and len(report.outcomes) == 858
    assert passes.model_forward <= RESNET50_MODEL_PASSES, passes
