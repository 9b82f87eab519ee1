"""The comparator at the heart of every check (bncheck.core.compare) and the tolerance policy it applies
(bncheck.core.tolerances): what passes, what fails with which fields, and the two kinds of warning."""

import warnings

import pytest
import torch

from bncheck import BNCheckError, BNCheckWarning, BNConformanceWarning
from bncheck.core.compare import check_close, deviation, fail, matches, nonconforming
from bncheck.core.tolerances import QUANTITIES, TOLERANCES, Tolerance, tolerance_for, warned_floor

TOL = Tolerance(rtol=1e-4, atol=1e-4)
EXPECTED = torch.tensor([[1.0, -2.0, 3.0], [4.0, 5.0, -6.0]], dtype=torch.float64)


def _check(got, expected=EXPECTED, **kwargs):
    kwargs = {"where": "bn1, probe", "quantity": "output", "tol": TOL, "cause": "the generic cause",
              "axes": ("sample", "channel"), **kwargs}
    check_close(got, expected, **kwargs)


def test_within_the_tolerance_passes_and_just_outside_fails():
    _check(EXPECTED + 1.9e-4 * EXPECTED.abs().clamp(min=1) / 2)
    with pytest.raises(BNCheckError):
        _check(EXPECTED + torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1e-2]], dtype=torch.float64))


def test_a_failure_names_the_worst_element_by_axis_with_its_fields():
    got = EXPECTED.clone()
    got[1, 2] += 0.5
    got[0, 0] += 0.1
    with pytest.raises(BNCheckError) as info:
        _check(got)
    err = info.value
    assert (err.where, err.quantity, err.index, err.expected, err.got, err.tolerance) == (
        "bn1, probe", "output", "sample=1, channel=2", -6.0, -5.5, TOL)
    assert "in 2 of 6 elements" in str(err) and "Likely cause: the generic cause" in str(err)


def test_the_first_matching_hypothesis_names_the_cause_and_others_are_not_computed():
    got = EXPECTED * 2
    computed = []

    def never():
        computed.append(True)
        return EXPECTED

    with pytest.raises(BNCheckError) as info:
        _check(got, hypotheses=[("a wrong scale", lambda: EXPECTED * 3), ("γ doubled", lambda: EXPECTED * 2),
                                ("never reached", never)])
    assert info.value.cause == "γ doubled" and not computed


def test_a_shape_mismatch_fails_naming_both_shapes():
    with pytest.raises(BNCheckError, match=r"has shape \(3,\), expected \(2, 3\)"):
        _check(torch.zeros(3))


def test_nan_fails_where_the_oracle_is_finite_and_passes_with_equal_nan_where_both_are():
    nan = EXPECTED.clone()
    nan[0, 1] = float("nan")
    with pytest.raises(BNCheckError):
        _check(nan)
    _check(nan, expected=nan, equal_nan=True)
    with pytest.raises(BNCheckError):
        _check(nan, expected=nan)


def test_the_reference_widens_the_tolerance_by_torchs_own_deviation_and_only_when_needed():
    got = EXPECTED + 5e-4
    _check(got, reference=EXPECTED + 2e-4)  # torch itself is 2e-4 off: 4 x that is allowed
    with pytest.raises(BNCheckError, match="torch's own deviation"):
        _check(EXPECTED + 5e-3, reference=EXPECTED + 2e-4)
    calls = []
    _check(EXPECTED, reference=lambda: calls.append(1))
    assert calls == []


def test_float64_within_float32s_tolerance_only_is_a_warning_by_the_precision_policy():
    got = EXPECTED + 1e-6
    with pytest.warns(BNCheckWarning, match="below its input's precision"):
        _check(got, tol=TOLERANCES[torch.float64])
    with pytest.raises(BNCheckError):  # the same values in float32 are no precision matter: they are within tol
        _check((EXPECTED + 1e-2).float(), tol=TOLERANCES[torch.float64])
    assert warned_floor(torch.float64) == TOLERANCES[torch.float32]
    assert warned_floor(torch.float16) == TOLERANCES[torch.float16]


def test_the_quantity_table_picks_the_row_by_what_is_compared():
    assert set(QUANTITIES) >= {"output", "gradient", "statistics", "identical", "fusion"}
    assert tolerance_for("output", torch.bfloat16) == TOLERANCES[torch.bfloat16]
    assert tolerance_for("statistics", torch.float64) == TOLERANCES[torch.float32]  # float32 state
    assert tolerance_for("statistics", torch.float16) == TOLERANCES[torch.float16]  # a model held in half
    assert tolerance_for("identical", torch.float32) == TOLERANCES[torch.float64]
    with pytest.raises(KeyError):
        tolerance_for("speed", torch.float32)


def test_deviation_and_matches():
    assert deviation(EXPECTED, EXPECTED + 0.25) == pytest.approx(0.25)
    assert deviation(EXPECTED, torch.zeros(3)) == float("inf")
    assert deviation(torch.tensor([float("nan")]), torch.tensor([float("nan")])) == 0.0
    assert matches(EXPECTED + 1e-5, EXPECTED, TOL) and not matches(EXPECTED + 1e-2, EXPECTED, TOL)


def test_fail_and_nonconforming_speak_the_same_fields():
    err = fail("bn1, empty batch", "raised ValueError", "a guard")
    assert (str(err), err.cause) == ("bn1, empty batch: raised ValueError. Likely cause: a guard", "a guard")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        nonconforming("bn1, empty batch", "raised ValueError", "returns an empty output", "a guard")
    [w] = caught
    assert issubclass(w.category, BNConformanceWarning) and issubclass(w.category, BNCheckWarning)
    assert str(w.message) == ("bn1, empty batch: raised ValueError; torch returns an empty output (torch "
                              "conformance, not the BN contract). Likely cause: a guard")
