"""What one run of every check on a model found: an Outcome per item, gathered in a Report to print, filter and
assert on."""

from dataclasses import dataclass, field

from bncheck.core.errors import BNCheckError

STATUSES = ("passed", "warned", "failed", "skipped")


@dataclass(frozen=True)
class Outcome:
    """One item: `name` is its stable id (`running_stats[layer1.0.bn1]`), `layer` None for model-level items;
    `status` is 'passed', 'warned' (passed with lint findings), 'failed' or 'skipped'; `message` the failure's or
    the skip's text; `error` the BNCheckError itself (its fields) for a failure that raised one."""

    name: str
    layer: str | None
    status: str
    message: str = ""
    warnings: tuple[str, ...] = ()
    error: BaseException | None = None


@dataclass
class Report:
    """Every item's outcome on one model, in the order the items ran."""

    spec: str
    header: str
    outcomes: list[Outcome] = field(default_factory=list)
    passes: object = None  # with the profile option: the run's Passes (bncheck.core.passes), else None

    def having(self, status: str) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def failures(self) -> list[Outcome]:
        return self.having("failed")

    @property
    def skips(self) -> list[Outcome]:
        return self.having("skipped")

    @property
    def warnings(self) -> list[str]:
        return [w for o in self.outcomes for w in o.warnings]

    @property
    def ok(self) -> bool:
        return not self.failures

    def for_layer(self, layer: str | None) -> list[Outcome]:
        return [o for o in self.outcomes if o.layer == layer]

    def counts(self, outcomes: list[Outcome] | None = None) -> dict[str, int]:
        """Items by status (of `outcomes`, by default every one)."""
        counts = dict.fromkeys(STATUSES, 0)
        for o in self.outcomes if outcomes is None else outcomes:
            counts[o.status] += 1
        return counts

    def by_layer(self) -> dict[str | None, dict[str, int]]:
        """counts() per layer (None: the model's own items), in the order the layers first ran."""
        layers = dict.fromkeys(o.layer for o in self.outcomes)
        return {layer: self.counts(self.for_layer(layer)) for layer in layers}

    def summary(self) -> str:
        """'209 items: 205 passed, 1 warned, 0 failed, 3 skipped'."""
        return f"{len(self.outcomes)} items: " + ", ".join(f"{n} {s}" for s, n in self.counts().items())

    def assert_ok(self) -> None:
        """Raise a BNCheckError that lists every failure (the first one's fields carried as its cause)."""
        if self.failures:
            first = next((o.error for o in self.failures if o.error is not None), None)
            raise BNCheckError(f"{self.spec}: {len(self.failures)} of {len(self.outcomes)} items failed:\n"
                               + "\n".join(f"{o.name}: {o.message}" for o in self.failures)) from first

    def __str__(self) -> str:
        lines = [self.header]
        for o in self.outcomes:
            detail = o.message or " | ".join(o.warnings)
            lines.append(f"{o.status.upper()[:4]:4}  {o.name}" + (f"\n      {detail}" if detail else ""))
        return "\n".join([*lines, self.summary()] + ([f"passes: {self.passes}"] if self.passes is not None else []))
