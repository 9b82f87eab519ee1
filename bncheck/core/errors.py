"""The exceptions and warning category every bncheck check speaks in."""

import functools
import unittest


class BNCheckError(AssertionError):
    """A BatchNorm layer or model broke the contract; the message says where, what, and why, and the fields hold
    the same as data: `where` (layer, input, mode), `quantity`, `expected` and `got` (the worst element's values),
    `index` (that element, by axis name), `tolerance`, `cause` (the likely cause), and `report` (the Comparison,
    DriftReport or Watch of a convergence, population or guard assertion). A field a failure does not have is None."""

    def __init__(self, message: str, *, where: str | None = None, quantity: str | None = None,
                 expected: float | None = None, got: float | None = None, index: str | None = None,
                 tolerance=None, cause: str | None = None, report=None):
        super().__init__(message)
        self.where, self.quantity, self.expected, self.got = where, quantity, expected, got
        self.index, self.tolerance, self.cause, self.report = index, tolerance, cause, report

    def because(self, cause: str) -> "BNCheckError":
        """This failure with another likely cause (one that only the caller can know, such as a wrong forward
        behind a wrong gradient)."""
        message = str(self).split(" Likely cause: ", 1)[0]
        fields = {k: getattr(self, k) for k in ("where", "quantity", "expected", "got", "index", "tolerance",
                                                "report")}
        return BNCheckError(f"{message} Likely cause: {cause}", cause=cause, **fields)


class BNCheckSkip(unittest.SkipTest):
    """A check does not apply: the layer legitimately lacks what it needs (pytest reports a skip)."""


class BNCheckWarning(UserWarning):
    """A lint finding: legal PyTorch, but almost certainly not what the author meant."""


class BNConformanceWarning(BNCheckWarning):
    """A layer keeps the BN contract but differs from torch's own layers at an edge the contract does not fix (an
    empty batch, a channel mismatch, a switch flipped at run time): a warning by default, a failure where torch
    conformance is asked for (or under strict)."""


class BNCheckUsageError(ValueError):
    """bncheck was called with input it cannot use (bad spec, shape, device, ...). A bad setting carries its
    `field` (the setting's name) and `value`, so that each front end names it by its own flag (`flagged`)."""

    def __init__(self, message: str, *, field: str | None = None, value=None):
        super().__init__(message)
        self.reason, self.field, self.value = message, field, value

    def flagged(self, flag: str) -> str:
        """'{flag}={value}: {reason}' for a bad setting ('{flag}: {reason}' for a switch), the plain message
        otherwise."""
        if not self.field:
            return self.reason
        return f"{flag}: {self.reason}" if self.value is True else f"{flag}={self.value}: {self.reason}"

    def __str__(self) -> str:
        return self.flagged(self.field) if self.field else self.reason


for _public in (BNCheckError, BNCheckSkip, BNCheckWarning, BNConformanceWarning, BNCheckUsageError):
    _public.__module__ = "bncheck"  # how tracebacks and reprs name them: where users import them from


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for errors that must fit on one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def assertion_helper(check):
    """`check`, raising its BNCheckError, BNCheckSkip or (strict) BNCheckWarning from its own frame, which pytest
    hides (`__tracebackhide__`): a failing test shows the user's line and bncheck's message, not bncheck's
    internals."""
    @functools.wraps(check)
    def helper(*args, **kwargs):
        __tracebackhide__ = True
        try:
            return check(*args, **kwargs)
        except (BNCheckError, BNCheckSkip, BNCheckWarning) as exc:
            raise exc.with_traceback(None)  # noqa: B904 - the same exception, without bncheck's frames
    return helper
