"""`python -m bncheck bench SPEC --plot FILE`: each BN layer's bandwidth as a fraction of the copy roofline measured
in the same run, one panel per mode and one bar per dtype and memory format, drawn with matplotlib into an image
file (a bare Figure: no pyplot, no display, the caller's backend untouched)."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

from bncheck.bench.results import Result
from bncheck.bench.workloads import MODES
from bncheck.core.errors import BNCheckUsageError
from bncheck.core.extras import require
from bncheck.core.tolerances import dtype_name


def require_matplotlib() -> None:
    """Raises a one-line BNCheckUsageError naming the extra to install when matplotlib cannot be imported."""
    require("matplotlib", extra="bench", feature="--plot")


def bn_results(results: Sequence[Result]) -> list[Result]:
    """The results that have a fraction of the copy roofline: the BN targets that ran."""
    return [r for r in results if r.fraction_of_copy is not None]


def _series(results: Sequence[Result]) -> list[tuple[str, str]]:
    """The (dtype, memory format) pairs, in the order measured: one bar each per layer."""
    return list(dict.fromkeys((dtype_name(r.case.dtype), r.case.memory_format) for r in results))


def _panel(ax, results: Sequence[Result], targets: list[str], series: list[tuple[str, str]], mode: str) -> None:
    """One mode: a horizontal bar per target and series, the copy roofline as a line at 1."""
    height = 0.8 / len(series)
    for j, (dtype, fmt) in enumerate(series):
        by_target = {r.case.target: r.fraction_of_copy for r in results
                     if r.case.mode == mode and (dtype_name(r.case.dtype), r.case.memory_format) == (dtype, fmt)}
        ys = [i - 0.4 + (j + 0.5) * height for i, t in enumerate(targets) if t in by_target]
        values = [by_target[t] for t in targets if t in by_target]
        bars = ax.barh(ys, values, height=height * 0.9, label=f"{dtype}, {fmt}")
        ax.bar_label(bars, [f"{v:.2f}" for v in values], padding=2, fontsize=6)
    ax.axvline(1.0, color="black", ls="--", lw=0.9, label="copy roofline")
    ax.set_title(mode, fontsize=10)
    ax.set_xlabel("BN bytes/s ÷ copy bytes/s", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(axis="x", alpha=0.3)


def plot_fractions(results: Sequence[Result], path: str | Path, title_lines: Sequence[str] = ()) -> None:
    """Draws every BN target's fraction of the copy roofline (panels: modes; rows: layers in model order) with
    `title_lines` (the run's conditions) above, into `path` (its suffix picks the format; PNG by default)."""
    figures = bn_results(results)
    if not figures:
        raise BNCheckUsageError("--plot: no BN layer was measured, nothing to draw (--layers none?)")
    require_matplotlib()
    from matplotlib.figure import Figure

    targets = list(dict.fromkeys(r.case.target for r in figures))
    shapes = {r.case.target: tuple(r.case.shape) for r in figures}
    series = _series(figures)
    modes = [m for m in MODES if any(r.case.mode == m for r in figures)]
    rows = len(targets) * (0.22 * len(series) + 0.12)
    title = "\n".join(textwrap.fill(line, 130) for line in title_lines)
    fig = Figure(figsize=(4.2 * len(modes) + 1.5, rows + 1.6 + 0.18 * title.count("\n")), layout="constrained")
    axes = fig.subplots(1, len(modes), sharey=True, squeeze=False)[0]
    for ax, mode in zip(axes, modes):
        _panel(ax, figures, targets, series, mode)
    axes[0].set_yticks(range(len(targets)), [f"{t} {shapes[t]}" for t in targets], fontsize=7)
    axes[0].invert_yaxis()
    for ax in axes:
        ax.set_xlim(0, max(1.1, ax.get_xlim()[1] * 1.08))  # room for the bar labels; the roofline always shown
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=7)
    fig.suptitle(f"{title}\nEach BN layer's bandwidth as a fraction of the copy roofline (past 1: data from a "
                 f"cache, not memory)", fontsize=8)
    fig.savefig(path, dpi=110)
