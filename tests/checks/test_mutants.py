"""Proof by mutants: each planted BatchNorm defect is caught by the check that claims it, no check flags a
correct layer, and no check changes the user's layer."""

import warnings

import pytest
import torch
from planted.correct import CORRECT_LAYERS
from planted.layers import (
    CHANNELS,
    MUTANTS,
    CrashesOnSecondCall,
    DuckBN,
    EpsOutsideSqrt,
    ScratchBN,
    UpdatesInEval,
    build,
    example_input,
)
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torchvision.ops import FrozenBatchNorm2d

from bncheck import LAYER_CHECKS, BNCheckError, BNCheckSkip, BNCheckWarning
from bncheck.core.compare import check_close
from bncheck.core.state import Snapshot
from bncheck.core.tolerances import Tolerance

DIAGNOSED = [m for m in MUTANTS if hasattr(m, "diagnosis")]


def _label(mutant) -> str:
    return f"{mutant.__name__}-{mutant.caught_by}"


def _params(mutants):
    return [pytest.param(m, id=_label(m)) for m in mutants]


def _layer_name(mutant) -> str:
    return f"corpus.{mutant.__name__}"


def _caught(mutant) -> str:
    """The message of the BNCheckError the mutant's check raises (the test fails if it raises none); for a
    warning-level defect (`warns`), of the BNCheckWarning that --bncheck-strict turns into a failure."""
    layer, x = build(mutant)
    warns = getattr(mutant, "warns", False)
    with warnings.catch_warnings():
        if warns:
            warnings.simplefilter("error", BNCheckWarning)
        with pytest.raises(BNCheckWarning if warns else BNCheckError) as info:
            LAYER_CHECKS[mutant.caught_by](layer, x, name=_layer_name(mutant))
    return str(info.value)


@pytest.mark.parametrize("mutant", _params(MUTANTS))
def test_mutant_is_caught_by_its_check(mutant):
    assert _layer_name(mutant) in _caught(mutant)


@pytest.mark.parametrize("mutant", _params([m for m in MUTANTS if getattr(m, "warns", False)]))
def test_a_warning_level_defect_warns_and_fails_nothing(mutant):
    layer, x = build(mutant)
    with pytest.warns(BNCheckWarning, match=mutant.diagnosis):
        LAYER_CHECKS[mutant.caught_by](layer, x, name=_layer_name(mutant))


@pytest.mark.parametrize("mutant", MUTANTS, ids=_label)
def test_mutants_correct_base_passes_the_same_check(mutant):
    """What the check catches is the planted defect, not the options or the input the mutant is built with."""
    layer, x = build(mutant, correct=True)
    LAYER_CHECKS[mutant.caught_by](layer, x, name=_layer_name(mutant))


@pytest.mark.parametrize("mutant", _params(DIAGNOSED))
def test_likely_cause_names_the_planted_defect(mutant):
    _, cause = _caught(mutant).split("Likely cause: ", 1)
    assert mutant.diagnosis in cause


def _correct_params():
    return [pytest.param(layer_id, check, id=f"{layer_id}-{check}")
            for layer_id in CORRECT_LAYERS for check in LAYER_CHECKS]


@pytest.mark.parametrize(("layer_id", "check"), _correct_params())
def test_no_check_flags_a_correct_layer(layer_id, check):
    layer, x = CORRECT_LAYERS[layer_id]()
    try:
        LAYER_CHECKS[check](layer, x, name=layer_id)
    except BNCheckError as exc:
        pytest.fail(f"{check} flagged the correct layer {layer_id}:\n{exc}", pytrace=False)


def _frozen_weight(layer: nn.Module) -> nn.Module:
    """The user froze γ: checks must leave requires_grad=False as it is."""
    layer.weight.requires_grad_(False)
    return layer


def _frozen_parameters(layer: nn.Module) -> set[str]:
    return {name for name, p in layer.named_parameters() if not p.requires_grad}


STATE_CASES = {
    "correct": lambda: _frozen_weight(ScratchBN(CHANNELS)),
    "lazy": nn.LazyBatchNorm2d,  # an uninitialized parameter has no requires_grad_ to call
    "failing-mutant": lambda: _frozen_weight(UpdatesInEval(CHANNELS)),
    "skipping": lambda: _frozen_weight(nn.BatchNorm2d(CHANNELS, track_running_stats=False)),
    "skipping-frozen": lambda: FrozenBatchNorm2d(CHANNELS),
    "crashing": lambda: _frozen_weight(CrashesOnSecondCall(CHANNELS)),
}


@pytest.mark.parametrize("train", [True, False], ids=["from-train", "from-eval"])
@pytest.mark.parametrize("case", STATE_CASES)
@pytest.mark.parametrize("check", LAYER_CHECKS)
def test_check_leaves_the_users_layer_unchanged(check, case, train):
    layer = STATE_CASES[case]().train(train)
    x = example_input(4)
    before, frozen = Snapshot.of(layer), _frozen_parameters(layer)
    allowed = (BNCheckError, BNCheckSkip, RuntimeError) if case == "crashing" else (BNCheckError, BNCheckSkip)
    CrashesOnSecondCall.calls = 0
    try:
        LAYER_CHECKS[check](layer, x, name="user")
    except allowed as exc:
        # eval_single_sample reports a sample that cannot run alone as a failure, the crash as its cause
        outcome = RuntimeError if isinstance(exc.__cause__, RuntimeError) else type(exc)
    else:
        outcome = None
    # single_value runs one forward, statistics_registered none (nothing to crash); channel_mismatch wants a raise,
    # and empty_batch reports one as a conformance warning
    if case == "crashing" and check not in ("single_value", "statistics_registered", "channel_mismatch",
                                            "empty_batch"):
        assert outcome is RuntimeError, "the planted crash did not stop the check midway"
    assert before.differences(layer) == []
    assert layer.training is train
    assert _frozen_parameters(layer) == frozen
    assert all(p.grad is None for p in layer.parameters())


def test_corpus_is_large_and_covers_every_check():
    assert len(MUTANTS) >= 20 and len(set(MUTANTS)) == len(MUTANTS)
    assert len(DIAGNOSED) >= 6
    for mutant in MUTANTS:
        assert mutant.caught_by in LAYER_CHECKS, _label(mutant)
        assert mutant.rank in (2, 3, 4, 5), _label(mutant)
        assert mutant.__doc__ and "\n" not in mutant.__doc__.strip(), f"{_label(mutant)}: one-line docstring"
    caught = {m.caught_by for m in MUTANTS}
    assert set(LAYER_CHECKS) - caught == set()


def test_corpus_has_every_kind_of_layer():
    """From-scratch layers, torch BN subclasses and duck-typed BN-likes (no torch BN, no ScratchBN) all appear."""
    for kind in (ScratchBN, nn.BatchNorm2d, DuckBN):
        assert any(issubclass(m, kind) for m in MUTANTS), kind.__name__
    assert not issubclass(DuckBN, (ScratchBN, _BatchNorm))


def test_a_gradient_that_follows_from_a_wrong_forward_says_so():
    """eps outside the sqrt makes the backward fail too: the message sends the user to the forward."""
    layer, x = build(EpsOutsideSqrt)
    with pytest.raises(BNCheckError) as info:
        LAYER_CHECKS["backward"](layer, x, name="eps_outside")
    assert info.value.cause.startswith("the forward output is already wrong in train mode (the batch_stats check")
    assert "a broken backward" not in str(info.value)


def test_a_failure_prints_the_digits_that_differ_and_the_difference():
    expected, got = torch.tensor([-3.14342]), torch.tensor([-3.14341])
    with pytest.raises(BNCheckError) as info:
        check_close(got, expected, where="w", quantity="q", tol=Tolerance(rtol=0, atol=1e-7), cause="c")
    message = str(info.value)
    shown = message.split("expected ", 1)[1].split(",")[:2]
    assert shown[0] != shown[1].removeprefix(" got "), message
    assert "(off by 1e-05, 3.2e-06 relative)" in message
