"""The curves of runs.csv and the learning-rate sweep as one PNG (`plot`), and the README's headline figure of the seed
CNN vs its no-BN twin (`headline`); matplotlib, Agg backend: no display needed."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

TUTORIAL = {"no BN": 0.91, "BN": 0.937}  # tutorial 1, Fashion-MNIST, training-set accuracy at epoch 20


def curves(rows: list[dict], **where) -> dict[str, tuple[list[int], list[float], list[float], list[float]]]:
    """setting → (epochs, mean, min, max over seeds) of `where['metric']` for the rows matching `where`."""
    metric = where.pop("metric")
    by = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if all(row[k] == v for k, v in where.items()):
            by[row["setting"]][row["epoch"]].append(row[metric])
    out = {}
    for setting, epochs in by.items():
        xs = sorted(epochs)
        out[setting] = (xs, [statistics.mean(epochs[x]) for x in xs], [min(epochs[x]) for x in xs],
                        [max(epochs[x]) for x in xs])
    return out


def _style(setting: str) -> dict:
    """MLP settings: colour by BN position, dashes for no bias, thin lines for dropout; CNN settings: defaults."""
    if "ReLU" not in setting and setting not in ("no BN, bias, no dropout", "no BN, bias, dropout 0.2"):
        return {"lw": 1.4}
    colour = "tab:gray" if setting.startswith("no BN") else "tab:blue" if "before" in setting else "tab:orange"
    return {"color": colour, "ls": "--" if "no bias" in setting else "-",
            "lw": 0.9 if "dropout 0.2" in setting else 1.6}


def _panel(ax, rows, title, metric, tutorial=False, band=True, **where):
    for setting, (xs, mean, lo, hi) in sorted(curves(rows, metric=metric, **where).items()):
        line, = ax.plot(xs, mean, label=setting, **_style(setting))
        if band:
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
    if tutorial:
        for setting, value in TUTORIAL.items():
            ax.axhline(value, ls="--", lw=0.8, color="grey")
            ax.text(1, value, f" tutorial {setting}: {value:.1%}", va="bottom", fontsize=7, color="grey")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("epoch", fontsize=8)
    ax.set_ylabel(metric.replace("_", " "), fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="lower right")


def plot(rows: list[dict], sweep: list[dict], stability: list[dict], path: Path) -> None:
    """One figure: the seed CNN (tutorial setting and smaller batches on MNIST-5k; digits), the MLP settings on
    MNIST-5k and digits, the learning-rate sweep and the stability of the assertions' statistic. Curves are the
    mean over seeds with the min-max band."""
    fig, axes = plt.subplots(2, 4, figsize=(21, 10))
    seed = [r for r in rows if r["experiment"] == "seed"]
    _panel(axes[0, 0], seed, "seed CNN, MNIST-5k, Adam lr 0.01, batch 1000 (tutorial setting)\n"
           "training accuracy (the tutorial's measure)", "accuracy", tutorial=True, batch_size=1000)
    _panel(axes[0, 1], seed, "seed CNN, MNIST-5k, Adam lr 0.01, batch 100\ntraining accuracy", "accuracy",
           tutorial=True, batch_size=100)
    _panel(axes[0, 2], seed, "seed CNN, MNIST-5k, Adam lr 0.01, batch 100\ntest accuracy (eval mode, held out)",
           "test_accuracy", batch_size=100)
    _panel(axes[0, 3], [r for r in rows if r["experiment"] == "cnn"], "seed CNN, digits 28x28, Adam lr 0.01, "
           "batch 100\ntest accuracy", "test_accuracy")
    mlp = [r for r in rows if r["experiment"] == "mlp"]
    _panel(axes[1, 0], mlp, "MLP 784-128-64-10, MNIST-5k, Adam lr 0.001, batch 64\ntest accuracy (blue: BN "
           "before ReLU, orange: after,\ngrey: no BN; dashed: no bias; thin: dropout 0.2)", "test_accuracy", band=False,
           data="MNIST-5k")
    _panel(axes[1, 1], mlp, "MLP 64-128-64-10, digits, Adam lr 0.001, batch 64\ntest accuracy", "test_accuracy",
           band=False, data="digits")
    _sweep_panel(axes[1, 2], sweep)
    _stability_panel(axes[1, 3], stability)
    for a in axes[0]:
        a.set_ylim(0.8, 1.0)
    for a in axes[1, :2]:
        a.set_ylim(0.85, 1.0)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _sweep_panel(ax, sweep: list[dict]) -> None:
    for variant in sorted({r["variant"] for r in sweep}):
        lrs = sorted({r["lr"] for r in sweep if r["variant"] == variant})
        acc = [statistics.median(r["final_test_accuracy"] for r in sweep if r["variant"] == variant and r["lr"] == lr)
               for lr in lrs]
        ax.plot(lrs, acc, marker="o", label=variant)
    ax.set_xscale("log")
    ax.set_title("digits CNN, plain SGD, 300 steps\nmedian final test accuracy vs learning rate", fontsize=9)
    ax.set_xlabel("learning rate", fontsize=8)
    ax.set_ylabel("test accuracy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _stability_panel(ax, stability: list[dict]) -> None:
    for i, claim in enumerate(stability):
        ratios = claim["median_ratios"]
        ax.scatter(ratios, [i] * len(ratios), s=14, alpha=0.7,
                   color=["tab:green" if v == claim["expected"] else "tab:red" for v in claim["verdicts"]])
    ax.axvline(0.8, ls="--", lw=0.8, color="grey")
    ax.axvline(1.25, ls=":", lw=0.8, color="grey")
    ax.set_yticks(range(len(stability)))
    ax.set_yticklabels([c.get("label", c["claim"][:30]) for c in stability], fontsize=7)
    ax.invert_yaxis()
    ax.set_title("each assertion on 10 disjoint sets of 3 seeds: median steps\nratio (green: expected verdict; "
                 "dashed: bound 0.8, dotted: 1.25)", fontsize=9)
    ax.set_xlabel("median steps ratio (model / twin)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)


# Training images per epoch of each data set (bncheck.data's stratified splits, reference/README.md): an epoch of
# batch B is len // B optimizer steps (reference.runs.epoch_rows).
TRAIN_SIZES = {"MNIST-5k": 4000, "digits 28x28": 1438, "digits": 1438}
HEADLINE = {"experiment": "seed", "data": "MNIST-5k", "batch_size": 1000}  # the tutorial's setting
HEADLINE_TARGET = 0.95


def first_step(steps: list[int], accuracy: list[float], target: float) -> int | None:
    """The first step whose accuracy is at least `target`; None if none is."""
    return next((s for s, a in zip(steps, accuracy) if a >= target), None)


def headline(rows: list[dict], path: Path) -> None:
    """The README's figure: the seed CNN vs its no-BN twin in the tutorial's setting (HEADLINE), held-out test
    accuracy against optimizer steps, mean over seeds with the min-max band, and the step where each mean first
    reaches HEADLINE_TARGET. Raises ValueError when runs.csv holds no such runs."""
    chosen = [r for r in rows if all(r[k] == v for k, v in HEADLINE.items())]
    if not chosen:
        raise ValueError(f"no runs of {HEADLINE} in runs.csv: run `python -m reference seed` first")
    per_epoch = TRAIN_SIZES[HEADLINE["data"]] // HEADLINE["batch_size"]
    seeds = len({r["seed"] for r in chosen})
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colours = {"BN": "tab:blue", "no BN": "tab:gray"}
    marks = []
    for setting, (epochs, mean, lo, hi) in sorted(curves(chosen, metric="test_accuracy").items()):
        steps = [e * per_epoch for e in epochs]
        label = "with BN (as published)" if setting == "BN" else "no-BN twin (BN layers removed)"
        ax.plot(steps, mean, color=colours[setting], lw=2, label=label)
        ax.fill_between(steps, lo, hi, color=colours[setting], alpha=0.15, lw=0)
        reached = first_step(steps, mean, HEADLINE_TARGET)
        if reached is not None:
            ax.axvline(reached, color=colours[setting], ls=":", lw=1)
            marks.append(f"{setting}: step {reached}")
    final = {s: m[-1] for s, (_, m, _, _) in curves(chosen, metric="test_accuracy").items()}
    ax.text(0.97, 0.3, f"at step {max(r['epoch'] for r in chosen) * per_epoch}: BN {final.get('BN', 0):.1%}, "
            f"no BN {final.get('no BN', 0):.1%}\nBN buys speed early, not final accuracy", transform=ax.transAxes,
            ha="right", fontsize=8, color="dimgray")
    ax.axhline(HEADLINE_TARGET, color="black", ls="--", lw=0.8)
    ax.text(ax.get_xlim()[1], HEADLINE_TARGET, f"{HEADLINE_TARGET:.0%}  ", ha="right", va="bottom", fontsize=8)
    ax.set_ylim(0.5, 1.0)
    ax.set_xlabel(f"optimizer steps (Adam lr 0.01, batch {HEADLINE['batch_size']}: {per_epoch} steps per epoch)")
    ax.set_ylabel("test accuracy (held-out, eval mode)")
    ax.set_title(f"The seed CNN learns faster with BatchNorm than without\nMNIST-5k, mean of {seeds} seeds "
                 f"(band: min-max); first at {HEADLINE_TARGET:.0%}: {', '.join(marks) or 'neither'}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
