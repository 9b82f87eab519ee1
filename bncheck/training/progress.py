"""A tqdm progress bar for long training runs: on in an interactive terminal, off under CI and in pipes."""

from __future__ import annotations

import os
import sys


def progress_enabled(enabled: bool | None = None, stream=None) -> bool:
    """`enabled` when given; otherwise on only when the CI environment variable is unset and `stream`
    (stderr by default) is a terminal — and tqdm is installed."""
    if enabled is not None:
        return bool(enabled)
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


class _Silent:
    """What progress_bar returns when the bar is off: the same methods, doing nothing."""

    disable = True

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress_bar(total: int, desc: str, *, enabled: bool | None = None, stream=None):
    """A tqdm bar over `total` steps (or a silent stand-in when progress_enabled says no)."""
    if not progress_enabled(enabled, stream):
        return _Silent()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, leave=False, file=stream if stream is not None else sys.stderr,
                dynamic_ncols=True)
