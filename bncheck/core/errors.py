"""The exceptions and warning category every bncheck check speaks in."""

import unittest


class BNCheckError(AssertionError):
    """A BatchNorm layer or model broke the contract; the message says where, what, and why."""


class BNCheckSkip(unittest.SkipTest):
    """A check does not apply: the layer legitimately lacks what it needs (pytest reports a skip)."""


class BNCheckWarning(UserWarning):
    """A lint finding: legal PyTorch, but almost certainly not what the author meant."""


class BNCheckUsageError(ValueError):
    """bncheck was called with input it cannot use (bad spec, shape, device, ...)."""


def one_line(exc: BaseException) -> str:
    """`Type: first line of the message`, for errors that must fit on one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")
