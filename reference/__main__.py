"""Regenerate reference/results: `python -m reference [EXPERIMENT ...] [--quick] [--out DIR] [--plot-only]`;
`python -m reference headline` redraws only the README's figure, headline.png, from the stored runs.csv.

Experiments (all by default; about 5 minutes on one core of a 2-core Xeon):
  seed       the seed CNN with and without BN, MNIST-5k, 20 epochs, Adam lr 0.01, batch 1000 (the tutorial's
             setting) and batch 100, 5 seeds
  cnn        the same on digits resized to 28x28, batch 100
  mlp        the second tutorial's MLP: no BN, BN before/after ReLU x bias on/off x dropout on/off; digits and
             MNIST-5k, 20 epochs, Adam lr 0.001, batch 64, 3 seeds
  stability  the convergence assertions' verdicts over 10 disjoint sets of 3 seeds
  lr         the digits CNN and its no-BN twin under plain SGD at learning rates 0.01 ... 2
Writes runs.csv (one row per run and epoch), stability.json, lr_sweep.csv, summary.md, curves.png and
headline.png (the seed CNN vs its no-BN twin; drawn when runs.csv holds the seed experiment).
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from bncheck.data import digits, mnist5k

from . import assertions, networks
from .plot import headline, plot
from .runs import Experiment, read_csv, run_experiment, write_csv

RESULTS = Path(__file__).with_name("results")
EXPERIMENTS = ("seed", "cnn", "mlp", "stability", "lr")
HEADLINE = "headline"  # not an experiment: redraw headline.png only


def experiments(quick: bool) -> dict[str, Experiment]:
    epochs, seeds = (2, [0]) if quick else (20, [0, 1, 2, 3, 4])
    return {
        "seed": Experiment(
            "seed", {"MNIST-5k": mnist5k}, {"seed CNN": networks.CNN_SETTINGS},
            lambda network, setting, data: networks.cnn(setting), epochs=epochs, seeds=seeds,
            batch_sizes=(1000, 100), lrs=(0.01,)),
        "cnn": Experiment(
            "cnn", {"digits 28x28": lambda: digits(image_size=28)}, {"seed CNN": networks.CNN_SETTINGS},
            lambda network, setting, data: networks.cnn(setting), epochs=epochs, seeds=seeds,
            batch_sizes=(100,), lrs=(0.01,)),
        "mlp": Experiment(
            "mlp", {"digits": lambda: digits(flat=True), "MNIST-5k": lambda: mnist5k(flat=True)},
            {"MLP": list(networks.MLP_SETTINGS)},
            lambda network, setting, data: networks.mlp(setting, inputs=data.sample_shape[0]),
            epochs=epochs, seeds=seeds[:3], batch_sizes=(64,), lrs=(0.001,)),
    }


def summary(rows: list[dict], stability: list[dict], sweep: list[dict]) -> str:
    """Markdown tables: per run group, the mean (min–max) over seeds at epoch 10 and at the last epoch."""
    groups: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        key = (r["experiment"], r["data"], r["network"], r["setting"], r["batch_size"], r["lr"])
        groups.setdefault(key, {}).setdefault(r["epoch"], []).append(r)
    lines = ["| data | network | setting | batch | lr | seeds | train acc @10 | train acc @last | test acc @10 | "
             "test acc @last | train s/run |", "|---|---|---|---|---|---|---|---|---|---|---|"]

    def cell(epoch_rows, metric):
        values = [r[metric] for r in epoch_rows]
        return f"{statistics.mean(values):.2%} ({min(values):.1%}–{max(values):.1%})"

    for (_, data, network, setting, batch, lr), epochs in groups.items():
        last = max(epochs)
        at10 = epochs.get(min(10, last))
        seconds = statistics.mean(r["time"] for r in epochs[last])
        lines.append(f"| {data} | {network} | {setting} | {batch} | {lr:g} | {len(epochs[last])} | "
                     f"{cell(at10, 'accuracy')} | {cell(epochs[last], 'accuracy')} | {cell(at10, 'test_accuracy')} | "
                     f"{cell(epochs[last], 'test_accuracy')} | {seconds:.1f} |")
    lines += ["", "| claim | expected | verdicts | median steps ratios |", "|---|---|---|---|"]
    for s in stability:
        verdicts = f"{s['verdicts'].count(s['expected'])}/{len(s['verdicts'])} {s['expected']}"
        ratios = ", ".join(f"{r:.2f}" for r in s["median_ratios"])
        lines.append(f"| {s['claim']} | {s['expected']} | {verdicts} | {ratios} |")
    lines += ["", "| variant | lr | seeds reaching 90 % | median final test acc |", "|---|---|---|---|"]
    for variant in sorted({r["variant"] for r in sweep}):
        for lr in sorted({r["lr"] for r in sweep}):
            group = [r for r in sweep if r["variant"] == variant and r["lr"] == lr]
            reached = sum(r["steps_to_0.9"] not in (None, "") for r in group)
            med = statistics.median(float(r["final_test_accuracy"]) for r in group)
            lines.append(f"| {variant} | {lr:g} | {reached}/{len(group)} | {med:.1%} |")
    return "\n".join(lines) + "\n"


def _read_sweep(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["lr"] = float(r["lr"])
        r["final_test_accuracy"] = float(r["final_test_accuracy"])
        r["steps_to_0.9"] = int(r["steps_to_0.9"]) if r["steps_to_0.9"] else None
    return rows


def draw_headline(out: Path, rows: list[dict], *, required: bool) -> None:
    """headline.png in `out` from `rows`; without the seed experiment's runs an error when `required`, else
    nothing."""
    try:
        headline(rows, out / "headline.png")
    except ValueError as exc:
        if required:
            raise SystemExit(f"python -m reference headline: {exc}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reference", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                        help=f"which to run: {', '.join(EXPERIMENTS)} (default: all); or {HEADLINE} alone: "
                             f"redraw only headline.png from the stored runs.csv")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 seed, 2 seed sets: a smoke test")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"results directory (default {RESULTS})")
    parser.add_argument("--plot-only", action="store_true", help="redraw curves.png and summary.md from the files")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    if args.experiments == [HEADLINE]:
        rows = read_csv(args.out / "runs.csv") if (args.out / "runs.csv").exists() else []
        draw_headline(args.out, rows, required=True)
        print(f"wrote {args.out / 'headline.png'}")
        return 0
    chosen = args.experiments or list(EXPERIMENTS)
    unknown = [e for e in chosen if e not in EXPERIMENTS]
    if unknown:
        parser.error(f"unknown experiment(s) {', '.join(unknown)}: choose from {', '.join(EXPERIMENTS)} (or {HEADLINE} "
                     f"alone)")
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    runs_csv, stability_json, sweep_csv = out / "runs.csv", out / "stability.json", out / "lr_sweep.csv"
    started = time.perf_counter()
    if not args.plot_only:
        rows = read_csv(runs_csv) if runs_csv.exists() else []
        grids = experiments(args.quick)
        for name in chosen:
            if name in grids:
                rows = [r for r in rows if r["experiment"] != name] + run_experiment(grids[name])
        write_csv(rows, runs_csv)
        if "stability" in chosen:
            stability = assertions.stability(sets=2 if args.quick else 10)
            stability_json.write_text(json.dumps(stability, indent=1) + "\n")
        if "lr" in chosen:
            sweep = assertions.lr_sweep(seeds=(0,) if args.quick else (0, 1, 2), steps=30 if args.quick else 300)
            with sweep_csv.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(sweep[0]))
                writer.writeheader()
                writer.writerows(sweep)
    rows = read_csv(runs_csv) if runs_csv.exists() else []
    stability = json.loads(stability_json.read_text()) if stability_json.exists() else []
    sweep = _read_sweep(sweep_csv)
    machine = (f"{platform.machine()}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}, "
               f"Python {platform.python_version()}")
    (out / "summary.md").write_text(f"<!-- generated by python -m reference; {machine} -->\n\n"
                                    + summary(rows, stability, sweep))
    plot(rows, sweep, stability, out / "curves.png")
    draw_headline(out, rows, required=False)
    print(f"wrote {out} in {time.perf_counter() - started:.0f} s ({machine})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
