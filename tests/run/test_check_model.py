"""bncheck.check_model: one call runs every item on a model and returns a Report; failures carry their fields."""

import pytest
import torch
from planted.layers import KerasMomentum
from torch import nn

from bncheck import BNCheckError, Report, assert_batch_stats, check_model
from bncheck.checks import LAYER_CHECKS, MODEL_CHECKS
from bncheck.checks.lints import LINTS
from bncheck.core.state import Snapshot
from bncheck.examples import seed_cnn
from bncheck.run.settings import settings_from


def test_check_model_runs_every_item_and_leaves_the_model_as_it_was():
    model = seed_cnn()
    before = Snapshot.of(model)
    report = check_model(model, input_shape=(1, 28, 28))
    assert isinstance(report, Report) and report.ok, str(report)
    total = 2 * len(LAYER_CHECKS) + len(MODEL_CHECKS) + len(LINTS)
    assert report.counts() == {"passed": total - 2, "warned": 0, "failed": 0, "skipped": 2}
    assert {o.layer for o in report.skips} == {"10", None}  # channels_last on BatchNorm1d, no pair to fuse
    assert all(o.message for o in report.skips)
    assert {o.name for o in report.for_layer("3")} >= {"running_stats[3]", "batch_stats[3]"}
    assert f"{total} items: {total - 2} passed, 0 warned, 0 failed, 2 skipped" in str(report)
    report.assert_ok()
    assert before.differences(model) == []


def test_a_failing_model_reports_by_layer_and_check_with_the_errors_fields():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), KerasMomentum(4))
    report = check_model(model, torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)), name="net")
    assert not report.ok and [o.name for o in report.failures] == ["running_stats[1]"]
    error = report.failures[0].error
    assert isinstance(error, BNCheckError) and error.quantity == "running_mean" and "momentum" in error.cause
    assert error.expected is not None and error.got is not None and error.index.startswith("channel=")
    with pytest.raises(BNCheckError, match=r"net: 1 of \d+ items failed:\nrunning_stats\[1\]"):
        report.assert_ok()


def test_a_lint_finding_is_a_warned_outcome():
    report = check_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), input_shape=(3, 8, 8))
    (warned,) = report.having("warned")
    assert warned.name == "lint_redundant_bias" and "bias" in report.warnings[0]


def test_a_comparison_failure_carries_where_what_and_the_tolerance():
    class EpsOutside(nn.BatchNorm1d):
        def forward(self, x):
            mean, var = x.mean(0), x.var(0, unbiased=False)
            return (x - mean) / (var.sqrt() + self.eps) * self.weight + self.bias

    with pytest.raises(BNCheckError) as info:
        assert_batch_stats(EpsOutside(3, eps=0.1), torch.randn(8, 3), name="bn")
    error = info.value
    assert error.where.startswith("bn (EpsOutside") and error.quantity == "output"
    assert "eps outside the sqrt" in error.cause and error.tolerance.rtol == 1e-4
    assert f"expected {error.expected:.6g}" in str(error)


def test_no_input_is_a_usage_error_in_the_library_s_own_words():
    from bncheck import BNCheckUsageError

    with pytest.raises(BNCheckUsageError, match="no input shape: pass input_shape=C,H,W"):
        check_model(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))


def test_check_model_takes_every_option_of_the_plugin_with_its_defaults(monkeypatch):
    """One settings table: check_model's keywords are the plugin's options, defaults included (device auto)."""
    from bncheck.run import check as check_module
    from bncheck.run.options import OPTIONS

    seen = []
    monkeypatch.setattr(check_module, "run_plan", lambda plan: seen.append(plan.settings))
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    check_model(model, input_shape=(3, 8, 8))
    check_model(model, torch.randn(4, 3, 8, 8), batch_size="4", seed=3, device=torch.device("cpu"),
                dtype=torch.bfloat16, strict=True, torch_conformance=True, compile=True, export=True)
    default, given = seen
    assert default == settings_from({"input_shape": (3, 8, 8)})  # every other option at the plugin's default
    assert default.device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert (given.batch_size, given.seed, given.dtype, given.strict, given.torch_conformance, given.compile,
            given.export) == (4, 3, (torch.bfloat16,), True, True, True, True)
    for option in OPTIONS:  # each one reaches its setting
        given = {"input_shape": (3, 8, 8)}
        given.setdefault(option.name, option.default)
        check_model(model, **given)
        assert seen[-1] == default, option.name


@pytest.mark.parametrize(("options", "message"), [
    ({"batch_sizes": 4}, "check_model() has no option batch_sizes; its options: input_shape, batch_size"),
    ({"batch_size": 1}, "batch_size=1: must be at least 2"),
    ({"device": "gpu0"}, "device=gpu0: "),
])
def test_a_bad_option_is_one_usage_error_naming_it(options, message):
    from bncheck import BNCheckUsageError

    with pytest.raises(BNCheckUsageError) as info:
        check_model(nn.BatchNorm1d(3), torch.randn(4, 3), **options)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_an_opt_in_option_adds_its_item():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    report = check_model(model, torch.randn(4, 3, 8, 8), export=True)
    assert report.outcomes[-1].name == "model_export" and report.outcomes[-1].status == "passed"


def test_the_profile_option_counts_the_runs_passes_into_the_report():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))
    report = check_model(model, torch.randn(4, 3, 8, 8), profile=True)
    assert report.passes.model_forward >= 5 and report.passes.layer_forward > 50
    assert str(report).endswith(f"passes: {report.passes}")
    assert check_model(model, torch.randn(4, 3, 8, 8)).passes is None
