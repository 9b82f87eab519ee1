"""The one table of checks. Each check declares itself with @check: its item id, scope (layer, model or lint),
level (the BN contract, or torch conformance) and what the run layer needs to know to plan it. A user's own check
joins every plan the same way."""

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

SCOPES = ("layer", "model", "lint")
LEVELS = ("contract", "conformance")


@dataclass(frozen=True)
class Check:
    """One check. `name` is its item id (a layer item adds `[layer]`); a layer or model check is the public function
    `assert_<name>`, f(layer or model, x, *, name, **settings) raising a BNCheckError; a lint is f(model, x, producers)
    returning its findings."""

    name: str
    function: Callable
    scope: str = "layer"
    level: str = "contract"
    trains_model: bool = False  # runs the whole model in train mode: skips for a model that cannot train on its input
    needs_batchnorm: bool = True  # False: a model without any BN layer still gets it
    settings: tuple[tuple[str, str], ...] = ()  # (run setting, keyword argument) passed to the function
    option: str | None = None  # an opt-in switch among the run settings: planned only when it is on


REGISTRY: dict[str, Check] = {}


def check(name: str, *, scope: str = "layer", level: str = "contract", trains_model: bool = False,
          needs_batchnorm: bool = True, settings: Mapping[str, str] | None = None, option: str | None = None):
    """Register the decorated function as the check `name` (see Check); returns the function unchanged.

    >>> @check("momentum_is_default")
    ... def assert_momentum_is_default(layer, x, *, name="", seed=0):
    ...     assert layer.momentum == 0.1, f"{name}: momentum {layer.momentum}"
    """
    if scope not in SCOPES or level not in LEVELS:
        raise ValueError(f"check {name!r}: scope must be one of {SCOPES} and level one of {LEVELS}")

    def register(function: Callable) -> Callable:
        REGISTRY[name] = Check(name, function, scope, level, trains_model, needs_batchnorm,
                               tuple((settings or {}).items()), option)
        return function
    return register


def checks(scope: str) -> list[Check]:
    """The registered checks of `scope`, in the order they were registered."""
    return [c for c in REGISTRY.values() if c.scope == scope]


class ScopeTable(Mapping):
    """A live view of the checks of one scope that every plan runs (no opt-in), by name without `prefix` ->
    function: LAYER_CHECKS, MODEL_CHECKS, LINTS."""

    def __init__(self, scope: str, prefix: str = ""):
        self.scope, self.prefix = scope, prefix

    def _checks(self) -> list[Check]:
        return [c for c in checks(self.scope) if c.option is None]

    def __getitem__(self, key: str) -> Callable:
        found = REGISTRY.get(self.prefix + key)
        if found is None or found.scope != self.scope or found.option is not None:
            raise KeyError(key)
        return found.function

    def __iter__(self) -> Iterator[str]:
        return (c.name.removeprefix(self.prefix) for c in self._checks())

    def __len__(self) -> int:
        return len(self._checks())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({dict(self)!r})"
