"""Two levels: the BN contract fails, torch conformance warns. Correct hand-written BNs that differ from torch only
at the edges the contract leaves open pass by default, warn (BNConformanceWarning), and fail under strict or
torch_conformance; torch's own layers conform."""

import warnings

import pytest
import torch
from planted.correct import CORRECT_LAYERS
from planted.layers import example_input
from planted.textbook import TEXTBOOK, textbook_net

from bncheck import LAYER_CHECKS, BNCheckError, BNCheckSkip, BNConformanceWarning, check_model

CONFORMANCE_ITEMS = {"empty_batch", "channel_mismatch", "running_stats"}


def _run(layer_id: str, check: str) -> list[warnings.WarningMessage]:
    """The BNConformanceWarnings of one check on a textbook layer; fails the test on a BNCheckError."""
    make, rank = TEXTBOOK[layer_id]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            LAYER_CHECKS[check](make(), example_input(rank), name=layer_id)
        except BNCheckError as exc:
            pytest.fail(f"{check} failed the correct textbook layer {layer_id}:\n{exc}", pytrace=False)
    return [w for w in caught if issubclass(w.category, BNConformanceWarning)]


@pytest.mark.parametrize("layer_id", TEXTBOOK)
def test_a_textbook_layer_passes_every_check_and_warns_where_it_is_not_torch(layer_id):
    ran, warned = 0, set()
    for check in LAYER_CHECKS:
        try:
            found = _run(layer_id, check)
        except BNCheckSkip:
            continue
        ran += 1
        if found:
            assert check in CONFORMANCE_ITEMS, f"{check} warned of torch conformance: {found[0].message}"
            assert "torch conformance, not the BN contract" in str(found[0].message)
            warned.add(check)
    assert ran >= len(LAYER_CHECKS) - 3, f"only {ran} checks ran"
    assert warned, "no conformance difference found: the layer is not the kind this test is about"


@pytest.mark.parametrize(("layer_id", "check"), [(i, c) for i in CORRECT_LAYERS for c in sorted(CONFORMANCE_ITEMS)])
def test_torchs_own_layers_conform(layer_id, check):
    layer, x = CORRECT_LAYERS[layer_id]()
    with warnings.catch_warnings():
        warnings.simplefilter("error", BNConformanceWarning)
        LAYER_CHECKS[check](layer, x, name=layer_id)  # a BNCheckSkip is reported as a skip


def test_a_textbook_model_passes_by_default_and_fails_under_torch_conformance_or_strict():
    model = textbook_net()
    default = check_model(model, model.example_input)
    assert default.failures == [], "\n".join(o.message for o in default.failures)
    assert default.counts()["passed"] > 20
    warned = {o.name.split("[")[0] for o in default.outcomes if o.status == "warned"}
    assert {"empty_batch", "channel_mismatch"} <= warned
    conformance = check_model(model, model.example_input, torch_conformance=True)
    failed = {o.name.split("[")[0] for o in conformance.failures}
    assert failed == {"empty_batch", "channel_mismatch"}, failed
    assert all("fails under strict or torch conformance" in o.message for o in conformance.failures)
    strict = check_model(model, model.example_input, strict=True)
    assert failed < {o.name.split("[")[0] for o in strict.failures}  # dtype's float32 output fails too


def test_a_torch_model_passes_under_torch_conformance():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                torch.nn.Flatten(), torch.nn.Linear(144, 5, bias=False), torch.nn.BatchNorm1d(5))
    report = check_model(model, input_shape=(3, 8, 8), torch_conformance=True)
    assert report.failures == [] and report.counts()["passed"] > 20
