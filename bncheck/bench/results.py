"""A case's figures: `measure` times a case (bncheck.bench.timing) and makes a Result: seconds per call, samples/s,
and for a BN layer bytes/s and that as a fraction of the copy roofline measured in the same run."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bncheck.bench.cases import BenchCase, case_threads
from bncheck.bench.timing import prepared, timer
from bncheck.core.errors import BNCheckSkip


@dataclass(frozen=True)
class Result:
    """The figures of one case. time_s is the median seconds per call; skipped holds the reason when the case
    could not run (and the figures are None)."""

    case: BenchCase
    time_s: float | None
    iqr_s: float | None = None
    samples_per_s: float | None = None
    bytes_per_s: float | None = None
    copy_bytes_per_s: float | None = None
    fraction_of_copy: float | None = None
    number_per_run: int | None = None
    runs: int | None = None
    skipped: str | None = None

    @property
    def name(self) -> str:
        return self.case.name

    @classmethod
    def of(cls, case: BenchCase, time_s: float, *, iqr_s: float | None = None, copy_bytes_per_s: float | None = None,
           number_per_run: int | None = None, runs: int | None = None) -> Result:
        bytes_per_s = case.min_bytes / time_s if case.min_bytes is not None else None
        fraction = bytes_per_s / copy_bytes_per_s if bytes_per_s is not None and copy_bytes_per_s else None
        return cls(case, time_s, iqr_s, case.samples / time_s, bytes_per_s, copy_bytes_per_s if bytes_per_s else None,
                   fraction, number_per_run, runs)

    def figures(self) -> dict:
        """JSON-ready figures (pytest-benchmark's extra_info, `--json`)."""
        return {"time_s": self.time_s, "iqr_s": self.iqr_s, "samples_per_s": self.samples_per_s,
                "bytes_per_s": self.bytes_per_s, "copy_bytes_per_s": self.copy_bytes_per_s,
                "fraction_of_copy": self.fraction_of_copy, "number_per_run": self.number_per_run, "runs": self.runs,
                "skipped": self.skipped}

    def row(self) -> dict:
        """The case's name, its layer (None: the model) and the figures: a table row, JSON-ready."""
        return {"name": self.name, "layer": self.case.layer, **self.figures()}

    def __repr__(self) -> str:
        if self.skipped:
            return f"<Result {self.name}: skipped ({self.skipped})>"
        extra = f", {self.bytes_per_s / 1e9:.1f} GB/s" if self.bytes_per_s else ""
        extra += f" = {self.fraction_of_copy:.2f} of copy" if self.fraction_of_copy else ""
        return f"<Result {self.name}: {fmt_time(self.time_s)}, {self.samples_per_s:.1f} samples/s{extra}>"


def copy_figure(case: BenchCase) -> float | None:
    """The copy bandwidth (bytes/s) a BN case is set against, measured once per roofline; None for a case
    without a roofline (a model, or a case with no byte count)."""
    if case.min_bytes is None or case.roofline is None:
        return None
    return case.roofline.bytes_per_s


def measure(case: BenchCase, *, min_run_time: float | None = None) -> Result:
    """Time `case`: built and warmed up (`prepared`), then the median of `timer(...).blocked_autorange()`, turned
    into figures. A case that cannot run returns a skipped Result."""
    try:
        copy = copy_figure(case)  # measured (once per roofline) before the case allocates anything
        with prepared(case) as fn:
            m = timer(fn, case.synchronize, case.name).blocked_autorange(
                min_run_time=case.min_run_time if min_run_time is None else min_run_time)
            del fn  # the case's tensors die with the `with` block, not with this frame
    except BNCheckSkip as exc:
        return Result(case, None, skipped=str(exc))
    return Result.of(case, m.median, iqr_s=m.iqr, copy_bytes_per_s=copy, number_per_run=m.number_per_run,
                     runs=len(m.raw_times))


# Timings whose interquartile range exceeds this fraction of their median came from a busy machine: the threshold at
# which torch.utils.benchmark's own Measurement.has_warnings flags "system fluctuation".
NOISY_SPREAD = 0.1


def spread(result: Result) -> float | None:
    """The result's IQR / median (None: skipped, or no IQR)."""
    if result.time_s is None or result.iqr_s is None or not result.time_s > 0:
        return None
    return result.iqr_s / result.time_s


def noisy(results: Iterable[Result], threshold: float = NOISY_SPREAD) -> list[Result]:
    """The results whose spread (IQR / median) is at least `threshold`, in order."""
    return [r for r in results if (s := spread(r)) is not None and s >= threshold]


class NoisyTimingWarning(UserWarning):
    """A benchmark's timings spread too widely to be trusted (the machine was busy)."""


def busy_machine(threads_flag: str | None = None, threshold: float = NOISY_SPREAD) -> str:
    """The noise warning without its cases; it advises `threads_flag` (the front end's flag) when given."""
    fewer = f" or with {threads_flag}=1" if threads_flag else ""
    return (f"timings spread: IQR >= {threshold:.0%} of the median, the machine was likely busy; rerun on an idle "
            f"machine{fewer}")


def threads_advice(busy: Iterable[Result], threads_flag: str) -> str | None:
    """`threads_flag` when some of the noisy results ran on more than one thread, else None (nothing to advise)."""
    return threads_flag if any(case_threads(r.case) > 1 for r in busy) else None


def noise_warning(results: Iterable[Result], *, threads_flag: str = "--threads",
                  threshold: float = NOISY_SPREAD) -> str | None:
    """One line naming the noisy results with their spread, or None when every timing is steady."""
    busy = noisy(results, threshold)
    if not busy:
        return None
    cases = ", ".join(f"{r.name} ({spread(r):.0%})" for r in busy)
    return f"{busy_machine(threads_advice(busy, threads_flag), threshold)}: {cases}"


def fmt_time(s: float | None) -> str:
    """Seconds as a short human figure: 1.2 ms, 340 us."""
    if s is None:
        return "-"
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if s >= scale:
            return f"{s / scale:.3g} {unit}"
    return f"{s / 1e-9:.3g} ns"
