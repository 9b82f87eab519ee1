"""Every bncheck item on one zoo model, as the plugin runs them (one Plan, every case), counted per outcome."""

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field

from bncheck.core.discover import kind_of
from bncheck.core.errors import BNCheckUsageError
from bncheck.core.spec import Loaded
from bncheck.core.state import private_rng
from bncheck.run.check import run_plan
from bncheck.run.plan import Plan
from bncheck.run.settings import Settings

from .catalog import ZooModel


@dataclass
class ZooResult:
    """What the plugin would report for one model; `unrunnable` says why it could not run at all (a skip)."""

    id: str
    input_shape: tuple[int, ...]
    bn_layers: int = 0
    kinds: str = ""
    items: int = 0
    passed: int = 0
    skipped: int = 0
    failed: int = 0
    warned: int = 0
    seconds: float = 0.0
    unrunnable: str = ""
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self))


def check(zm: ZooModel, *, batch_size: int = 8, seed: int = 0) -> ZooResult:
    """Build the model (seeded), then run every item of its Plan with the plugin's default settings."""
    result = ZooResult(zm.id, zm.input_shape)
    start = time.perf_counter()
    try:
        with private_rng(seed):
            model = zm.build()
        plan = Plan(Loaded(zm.id, model, zm.example(batch_size, seed)), Settings(batch_size=batch_size, seed=seed))
    except BNCheckUsageError as exc:
        result.unrunnable = str(exc)
        return result
    kinds = Counter(kind_of(m).split(",")[0] for m in plan.layers.values())
    result.bn_layers, result.kinds = len(plan.layers), ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
    report = run_plan(plan)
    counts = report.counts()
    result.items = len(report.outcomes)
    result.passed, result.warned = counts["passed"] + counts["warned"], counts["warned"]
    result.skipped, result.failed = counts["skipped"], counts["failed"]
    result.failures = [f"{o.name}: {o.message}" for o in report.failures]
    result.warnings = [f"{o.name}: {w}" for o in report.outcomes for w in o.warnings]
    result.seconds = round(time.perf_counter() - start, 1)
    return result
