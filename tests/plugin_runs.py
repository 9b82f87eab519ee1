"""Reading the outcome of a pytester run of the plugin: node ids, outcomes, one-line usage errors (shared by the
plugin, options, false-alarm, bench and convergence tests)."""

import pytest

from bncheck.checks import LAYER_CHECKS, MODEL_CHECKS
from bncheck.checks.lints import LINTS

USAGE_ERROR = pytest.ExitCode.USAGE_ERROR


def expected_ids(spec: str, layers: list[str]) -> list[str]:
    ids = [f"bncheck[{spec}]::{check}[{layer}]" for layer in layers for check in LAYER_CHECKS]
    ids += [f"bncheck[{spec}]::model_{check}" for check in MODEL_CHECKS]
    return ids + [f"bncheck[{spec}]::lint_{lint}" for lint in LINTS]


def outcomes_by_id(result) -> dict[str, str]:
    """nodeid -> outcome of its call phase (or of the phase that failed or skipped), from an in-process run."""
    out = {}
    for rep in result.reprec.getreports("pytest_runtest_logreport"):
        if rep.when == "call" or not rep.passed:
            out[rep.nodeid] = rep.outcome
    return out


def selected_ids(result) -> list[str]:
    """Node ids of the items an in-process run selected (after -k, --lf, ...), in order."""
    [call] = result.reprec.getcalls("pytest_collection_finish")
    return [item.nodeid for item in call.session.items]


def collected_ids(result) -> list[str]:
    """Node ids printed by `--collect-only -q`."""
    return [line for line in result.outlines if "::" in line and not line.startswith(("=", " "))]


def assert_usage_error(result, *fragments: str) -> None:
    """Exit code 4, one stderr line `ERROR: ...` holding every fragment, and no traceback anywhere."""
    assert result.ret == USAGE_ERROR, result.stdout.str() + result.stderr.str()
    everything = result.stdout.str() + result.stderr.str()
    assert "Traceback" not in everything
    errors = [line for line in result.errlines if line.startswith("ERROR: ")]
    assert len(errors) == 1, result.errlines
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    assert [line for line in result.errlines if line.strip()] == errors, "the error must fit on one line"
