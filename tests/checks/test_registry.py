"""One registry of checks: every item id is a public `assert_<id>` function (former names kept as aliases), the
README's tables list exactly the registered items with their level, and a user's own check joins the plan through
the same decorator."""

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import bncheck
from bncheck.checks.registry import REGISTRY, checks

README = (Path(__file__).parents[2] / "README.md").read_text()

ALIASES = {
    "assert_eval_state_unchanged": "assert_eval_state", "assert_eval_no_state_change": "assert_eval_state",
    "assert_single_value_raises": "assert_single_value", "assert_channel_mismatch_raises": "assert_channel_mismatch",
    "assert_train_differs_from_eval": "assert_model_train_vs_eval",
    "assert_state_dict_roundtrip": "assert_model_state_dict_roundtrip",
    "assert_bn_ops_follow_mode": "assert_model_bn_mode", "assert_fusion_matches": "assert_model_fusion",
    "assert_compile_matches": "assert_model_compile", "assert_export_matches": "assert_model_export",
    "assert_model_eval_state": "assert_eval_state", "assert_model_eval_single_sample": "assert_eval_single_sample",
}


@pytest.mark.parametrize("item", [c.name for c in REGISTRY.values() if c.scope != "lint"])
def test_every_item_is_the_public_function_named_after_it(item):
    assert getattr(bncheck, f"assert_{item}") is REGISTRY[item].function
    assert f"assert_{item}" in bncheck.__all__


@pytest.mark.parametrize(("old", "new"), ALIASES.items())
def test_former_names_are_aliases(old, new):
    assert getattr(bncheck, old) is getattr(bncheck, new) and old in bncheck.__all__


def test_the_readme_table_lists_every_layer_item_with_its_level():
    rows = dict(re.findall(r"^\| `(\w+)` \| (contract|conformance)[^|]* \|", README, re.M))
    assert rows == {c.name: c.level for c in checks("layer")}


@pytest.mark.parametrize("item", [c.name for c in REGISTRY.values() if c.scope != "layer"])
def test_the_readme_names_every_model_item_and_lint(item):
    assert f"`{item}`" in README


def test_the_scope_tables_are_views_of_the_registry():
    assert list(bncheck.LAYER_CHECKS) == [c.name for c in checks("layer")]
    assert list(bncheck.MODEL_CHECKS) == [c.name.removeprefix("model_") for c in checks("model") if not c.option]
    assert list(bncheck.LINTS) == [c.name.removeprefix("lint_") for c in checks("lint")]


@pytest.fixture
def users_check():
    """A check of the user's own, registered from outside the package as the README shows, removed afterwards."""

    @bncheck.check("momentum_is_default")
    def assert_momentum_is_default(layer, x, *, name="", seed=0):
        """The layer keeps torch's default momentum 0.1."""
        if layer.momentum != 0.1:
            raise bncheck.BNCheckError(f"{name}: momentum is {layer.momentum}, expected 0.1")

    yield assert_momentum_is_default
    del REGISTRY["momentum_is_default"]


def test_a_users_check_joins_the_plan(users_check):
    model = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, bias=False), nn.BatchNorm2d(4, momentum=0.3))
    report = bncheck.check_model(model, torch.randn(4, 3, 8, 8))
    ours = {o.name: o.status for o in report.outcomes if o.name.startswith("momentum_is_default")}
    assert ours == {"momentum_is_default[1]": "passed", "momentum_is_default[4]": "failed"}
    assert "momentum is 0.3" in report.failures[0].message and len(report.failures) == 1


@pytest.mark.parametrize(("kwargs", "why"), [({"scope": "graph"}, "scope must be"), ({"level": "style"}, "level")])
def test_a_malformed_declaration_is_refused(kwargs, why):
    with pytest.raises(ValueError, match=why):
        bncheck.check("mine", **kwargs)
