"""Each optional feature without its extra installed: one line naming the extra to install."""

import subprocess
import sys

import pytest
from plugin_runs import assert_usage_error

from bncheck import BNCheckUsageError
from bncheck.core.extras import require


def test_require_names_the_package_and_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)  # as if not installed
    with pytest.raises(BNCheckUsageError) as info:
        require("sklearn.datasets", extra="data", feature="digits()")
    assert str(info.value) == "digits() needs sklearn, which is not installed: pip install 'bncheck[data]'"


def test_the_convergence_item_without_the_data_extra_is_one_usage_error(bnmodels, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", "--bncheck-convergence")
    assert_usage_error(result, "--bncheck-convergence: the convergence item needs mlxtend",
                       "pip install 'bncheck[data]'")


def test_the_data_sets_and_the_strategies_name_their_extra():
    code = ("import sys; sys.modules[{0!r}] = None\n"
            "try:\n    {1}\nexcept ValueError as exc:\n    print(exc)")
    for blocked, statement, extra in (("sklearn", "import bncheck; bncheck.digits()", "data"),
                                      ("hypothesis", "import bncheck.strategies", "properties")):
        done = subprocess.run([sys.executable, "-c", code.format(blocked, statement)], capture_output=True,
                              text=True)
        assert done.stdout.strip().endswith(f"pip install 'bncheck[{extra}]'"), done.stdout + done.stderr


def test_the_benchmark_items_without_pytest_benchmark_are_one_usage_error_before_anything_runs(bnmodels):
    result = bnmodels.runpytest("--bncheck-model=bnmodels:net", "--bncheck-benchmark", "-p", "no:benchmark")
    assert_usage_error(result, "--bncheck-benchmark needs pytest-benchmark", "pip install 'bncheck[bench]'")
    assert "collected" not in result.stdout.str()
