"""Compare a layer's result with the oracle and raise a BNCheckError a user can act on."""

import warnings
from collections.abc import Callable, Sequence

import torch

from bncheck.core.errors import BNCheckError, BNCheckWarning, BNConformanceWarning
from bncheck.core.tolerances import BELOW_INPUT_PRECISION, TOLERANCES, Tolerance


def _values(expected: float, got: float) -> str:
    """'expected 1.23457, got 1.23461 (off by 4e-05, 3.2e-05 relative)': as many digits as it takes to show
    the two apart, and the difference itself."""
    digits = next((d for d in range(6, 18) if f"{expected:.{d}g}" != f"{got:.{d}g}"), 17)
    text = f"expected {expected:.{digits}g}, got {got:.{digits}g}"
    diff = abs(got - expected)
    if diff == diff and diff != float("inf"):  # finite: a NaN or inf speaks for itself
        text += f" (off by {diff:.2g}" + (f", {diff / abs(expected):.2g} relative)" if expected else ")")
    return text


def deviation(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest |a − b| (inf where one is NaN and the other is not); inf when the shapes differ."""
    a = a.detach().to("cpu", torch.float64)
    b = b.detach().to("cpu", torch.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    same = (a == b) | (a.isnan() & b.isnan())
    return float(torch.where(same, 0.0, (a - b).abs().nan_to_num(nan=float("inf"))).max())


def _index(shape, flat: int, axes: Sequence[str]) -> str:
    idx = []
    for size in reversed(shape):
        idx.append(flat % size)
        flat //= size
    idx.reverse()
    names = list(axes) + [f"d{i}" for i in range(len(axes), len(idx))]
    return ", ".join(f"{n}={i}" for n, i in zip(names, idx)) or "scalar"


def _close(got: torch.Tensor, expected: torch.Tensor, tol: Tolerance, equal_nan: bool = False) -> torch.Tensor:
    """Elementwise closeness; NaN/inf in `got` where `expected` is finite never counts as close (NaN where
    `expected` has NaN does, with equal_nan)."""
    diff = (got - expected).abs()
    close = (diff <= tol.atol + tol.rtol * expected.abs()) | (got == expected)
    return close | (got.isnan() & expected.isnan()) if equal_nan else close


def matches(got: torch.Tensor, expected: torch.Tensor, tol: Tolerance) -> bool:
    """Whether `got` equals `expected` within `tol` everywhere (shapes must agree)."""
    got = got.detach().to("cpu", torch.float64)
    expected = expected.detach().to("cpu", torch.float64)
    return got.shape == expected.shape and bool(_close(got, expected, tol).all())


def check_close(got, expected, *, where: str, quantity: str, tol: Tolerance, cause: str,
                hypotheses: Sequence[tuple[str, Callable[[], torch.Tensor | None]]] = (),
                axes: Sequence[str] = ("channel",),
                reference: torch.Tensor | Callable[[], torch.Tensor | None] | None = None,
                equal_nan: bool = False) -> None:
    """Raise BNCheckError unless `got` ≈ `expected` (the oracle's float64 value).

    `reference` is what torch's own computation gives on the same input (or a function computing it, called only
    when `got` is outside `tol`): `tol` widens by its deviation from `expected`, so no layer is held to a bound
    torch itself misses. `hypotheses` are (cause, what a known bug would give, computed only on failure): the
    first that `got` matches names the likely cause.
    """
    got64 = got.detach().to("cpu", torch.float64)
    exp64 = expected.detach().to("cpu", torch.float64)
    if got64.shape != exp64.shape:
        raise BNCheckError(f"{where}: {quantity} has shape {tuple(got64.shape)}, expected {tuple(exp64.shape)}. "
                           f"Likely cause: {cause}", where=where, quantity=quantity, cause=cause)
    close = _close(got64, exp64, tol, equal_nan)
    if not bool(close.all()) and reference is not None:
        reference = reference() if callable(reference) else reference
        if reference is not None:
            tol = tol.allowing(deviation(reference, exp64))
            close = _close(got64, exp64, tol, equal_nan)
    if bool(close.all()):
        return
    if _below_precision(got.dtype, got64, exp64, tol, equal_nan, where=where, quantity=quantity):
        return
    diff = (got64 - exp64).abs().nan_to_num(nan=float("inf"))
    excess = (diff - tol.atol - tol.rtol * exp64.abs()).flatten()
    worst = int(excess.argmax())
    for hypothesis, alternative in hypotheses:
        alternative = alternative()
        if alternative is not None and matches(got64, alternative, tol):
            cause = hypothesis
            break
    bad = int((~close).sum())
    index = _index(got64.shape, worst, axes)
    exp_v, got_v = float(exp64.flatten()[worst]), float(got64.flatten()[worst])
    raise BNCheckError(
        f"{where}: {quantity} differs from the float64 oracle in {bad} of {close.numel()} elements "
        f"({tol}); worst at {index}: {_values(exp_v, got_v)}. Likely cause: {cause}",
        where=where, quantity=quantity, expected=exp_v, got=got_v, index=index, tolerance=tol, cause=cause)


def _below_precision(dtype: torch.dtype, got64: torch.Tensor, exp64: torch.Tensor, tol: Tolerance, equal_nan: bool,
                     *, where: str, quantity: str) -> bool:
    """Whether the precision policy (BELOW_INPUT_PRECISION) lets a result outside `tol` pass, warning that it does."""
    policy = BELOW_INPUT_PRECISION
    floor = TOLERANCES[policy.floor]
    if dtype != policy.dtype or tol.rtol >= floor.rtol or not bool(_close(got64, exp64, floor, equal_nan).all()):
        return False
    warnings.warn(BNCheckWarning(
        f"{where}: {quantity} is within {policy.floor}'s tolerance of the float64 oracle but not {policy.dtype}'s "
        f"({tol}). Likely cause: {policy.cause}".replace("torch.", "")), stacklevel=4)
    return True


def fail(where: str, what: str, cause: str) -> BNCheckError:
    """A BNCheckError for a failure that is not a numeric mismatch."""
    return BNCheckError(f"{where}: {what}. Likely cause: {cause}", where=where, quantity=what, cause=cause)


def nonconforming(where: str, what: str, torch_does: str, cause: str) -> None:
    """Warn (BNConformanceWarning) that a layer differs from torch where the contract leaves it free: `what` the
    layer did, `torch_does` what torch's own layers do instead."""
    warnings.warn(BNConformanceWarning(
        f"{where}: {what}; torch {torch_does} (torch conformance, not the BN contract). Likely cause: {cause}"),
        stacklevel=3)
