"""Every bncheck item on one zoo model, as the plugin runs them (one Plan, every case), counted per outcome."""

import json
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field

from bncheck.core.discover import kind_of
from bncheck.core.errors import BNCheckError, BNCheckSkip, BNCheckUsageError, BNCheckWarning, one_line
from bncheck.core.spec import Loaded
from bncheck.core.state import private_rng
from bncheck.run.plan import Plan, Settings

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
    for case in plan.cases():
        result.items += 1
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", BNCheckWarning)
            try:
                case.run()
                result.passed += 1
            except BNCheckSkip:
                result.skipped += 1
            except BNCheckError as exc:
                result.failed += 1
                result.failures.append(f"{case.name}: {exc}")
            except Exception as exc:  # a crash inside a check is a failure too, never hidden
                result.failed += 1
                result.failures.append(f"{case.name}: crashed: {one_line(exc)}")
        found = [str(w.message) for w in caught if issubclass(w.category, BNCheckWarning)]
        if found:
            result.warned += 1
            result.warnings += [f"{case.name}: {w}" for w in dict.fromkeys(found)]
    result.seconds = round(time.perf_counter() - start, 1)
    return result
