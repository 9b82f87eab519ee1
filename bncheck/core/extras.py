"""Optional dependencies: a feature that needs one it lacks says, in one line, which extra installs it."""

import importlib
from types import ModuleType

from bncheck.core.errors import BNCheckUsageError


def require(module: str, *, extra: str, feature: str, field: str | None = None) -> ModuleType:
    """`module`, imported; else a BNCheckUsageError '{feature} needs {package}: pip install "bncheck[{extra}]"'
    (carrying `field`, the option that asked for the feature, so each front end names its own flag)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        raise BNCheckUsageError(f"{feature} needs {package}, which is not installed: pip install 'bncheck[{extra}]'",
                                field=field, value=True if field else None) from None
