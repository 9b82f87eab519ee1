"""bncheck's benchmark cases through pytest-benchmark's `benchmark` fixture, timed correctly on a GPU.

pytest-benchmark reads its clock (perf_counter) around rounds of `iterations` calls and never synchronizes the
device, so for CUDA work it times kernel launches. `run_benchmark` therefore runs the case through
`benchmark.pedantic(step, rounds=R, iterations=N)` where `step` calls the case's function and synchronizes the
device on every N-th call, i.e. as the last call of each round: each round's clock stops after the device has
finished all N calls, and it started with the device idle, because the previous round (or, before the first,
an explicit synchronize) ended with one. That is torch.utils.benchmark's block timing, and pytest-benchmark
divides each round by N, so its table, --benchmark-json, --benchmark-compare and --benchmark-histogram show
seconds per call. N is the block size torch.utils.benchmark's `blocked_autorange` picks (synchronize and clock
cost ≤ 0.01 % of a block); that measurement is kept in extra_info as a cross-check (`torch_timer_median_s`).

Everything here uses pytest-benchmark's public API only (`benchmark.pedantic`, `.extra_info`, `.group`,
`.enabled`, `.stats`). The work is bncheck.bench; this module is the pytest view of it.
"""

from __future__ import annotations

import math
import warnings

import pytest

from bncheck.bench.cases import BenchCase
from bncheck.bench.results import NoisyTimingWarning, Result, busy_machine, copy_figure, noisy, threads_advice
from bncheck.bench.timing import prepared, timer
from bncheck.core.errors import BNCheckSkip

MIN_ROUNDS = 5
FIGURES = "bncheck_figures"  # the user property that carries a Result.row() to the summary
THREADS_FLAG = "--bncheck-bench-threads"


class _SyncEveryNth:
    """Calls `fn`; every `n`-th call then synchronizes the device (the end of a pytest-benchmark round)."""

    def __init__(self, fn, n: int, synchronize):
        self.fn, self.n, self.synchronize, self.calls = fn, n, synchronize, 0

    def __call__(self):
        self.fn()
        self.calls += 1
        if self.calls % self.n == 0:
            self.synchronize()


def run_benchmark(benchmark, case: BenchCase, *, min_run_time: float | None = None) -> Result | None:
    """Time `case` through pytest-benchmark's `benchmark` fixture (see the module docstring) and store what ran
    and the figures in `benchmark.extra_info`. Returns the Result, or None when benchmarks are disabled
    (--benchmark-disable, or xdist): then the case runs once, as a smoke test. A case that cannot run skips."""
    if benchmark.group is None:
        benchmark.group = f"{case.mode}|{case.info()['dtype']}|{case.memory_format}"
    benchmark.extra_info.update(case.info())
    min_run_time = case.min_run_time if min_run_time is None else min_run_time
    try:
        if not benchmark.enabled:
            with prepared(case, warmup=0) as fn:
                benchmark.pedantic(fn, rounds=1, iterations=1)
                del fn
            return None
        copy = copy_figure(case)
        with prepared(case) as fn:
            calibration = timer(fn, case.synchronize, case.name).blocked_autorange(min_run_time=min_run_time)
            n = calibration.number_per_run
            rounds = max(MIN_ROUNDS, math.ceil(min_run_time / (calibration.median * n)))
            step = _SyncEveryNth(fn, n, case.synchronize)
            case.synchronize()
            benchmark.pedantic(step, rounds=rounds, iterations=n, warmup_rounds=1)
            del fn, step
    except BNCheckSkip as exc:
        pytest.skip(str(exc))
    stats = benchmark.stats.stats
    result = Result.of(case, stats.median, iqr_s=stats.iqr, copy_bytes_per_s=copy, number_per_run=n,
                       runs=len(stats.data))
    benchmark.extra_info.update(result.figures())
    benchmark.extra_info.update(torch_timer_median_s=calibration.median, torch_timer_number_per_run=n,
                                timing=f"rounds of {n} calls, device synchronized at the end of each round")
    return result


def item_function(case: BenchCase):
    """A test function for `case` that requests pytest-benchmark's fixture (what `make_items` collects)."""
    def bncheck_benchmark(benchmark, record_property):
        result = run_benchmark(benchmark, case)
        if result is not None:
            record_property(FIGURES, result.row())
            warn_if_noisy(result)
    bncheck_benchmark.__doc__ = f"bncheck benchmark {case.name}"
    return bncheck_benchmark


def warn_if_noisy(result: Result) -> None:
    """A NoisyTimingWarning when the result's timings spread (bncheck.bench.results.noisy). The text names no case,
    so pytest's warnings summary shows it once, followed by every item that raised it."""
    if noisy([result]):
        warnings.warn(NoisyTimingWarning(busy_machine(threads_advice([result], THREADS_FLAG))), stacklevel=2)


def require_pytest_benchmark(config: pytest.Config) -> None:
    """A one-line usage error, before anything is collected, when pytest-benchmark is missing or disabled."""
    if not config.pluginmanager.hasplugin("pytest_benchmark") and not config.pluginmanager.hasplugin("benchmark"):
        raise pytest.UsageError("--bncheck-benchmark needs pytest-benchmark, installed (pip install "
                                "'bncheck[bench]') and not disabled (-p no:benchmark)")


def make_items(parent: pytest.Collector, cases: list[BenchCase]) -> list[pytest.Item]:
    """One pytest Function item per case, named `case.name`, under `parent`; each gets the `benchmark` fixture,
    the `bncheck` marker and a ("bncheck_bench", target) user property."""
    require_pytest_benchmark(parent.config)
    items = []
    for case in cases:
        item = pytest.Function.from_parent(parent, name=case.name, callobj=item_function(case))
        item.add_marker("bncheck")
        item.user_properties.append(("bncheck_bench", case.target))
        items.append(item)
    return items


def plan_items(parent: pytest.Collector, plan, bench=None) -> list[pytest.Item]:
    """The plugin's --bncheck-benchmark items of one `bncheck.run.plan.Plan`: every case of its model on its example
    input and device, in the model's own dtype (`python -m bncheck bench --dtype` times others), reusing the plan's
    capture of the BN layers' inputs, with the knobs of `bench` (a bncheck.run.settings.BenchSettings; None: the
    defaults)."""
    from bncheck.bench.cases import benchmark_cases
    from bncheck.run.plan import model_dtype
    from bncheck.run.settings import BenchSettings

    settings = plan.settings
    cases = benchmark_cases(plan.model, plan.example, device=settings.device, dtype=model_dtype(plan.model),
                            inputs=plan.inputs, **(bench or BenchSettings()).case_options())
    return make_items(parent, cases)


def terminal_summary(terminalreporter) -> None:
    """A "bncheck benchmarks" section: bncheck's table (samples/s, GB/s, fraction of copy) of the measured items,
    which pytest-benchmark's own table (times only) lacks. Rows come from the reports, so xdist is no obstacle."""
    from bncheck.frontends.bench_cli import format_table

    rows = [dict(r.user_properties)[FIGURES] for r in terminalreporter.stats.get("passed", [])
            if r.when == "call" and FIGURES in dict(r.user_properties)]
    if rows:
        terminalreporter.section("bncheck benchmarks")
        terminalreporter.line(format_table(rows))
