"""The benchmarks without pytest: `python -m bncheck bench SPEC --input-shape C,H,W` measures bncheck.bench's cases
for a model and prints a table (samples/s, GB/s, fraction of the copy bandwidth) with the conditions.

Its options come from the tables in bncheck.run.options: the model's input, device and seed from OPTIONS (as
`python -m bncheck check`), the benchmark knobs from BENCH_OPTIONS (as the plugin's `--bncheck-bench-<name>`)."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bncheck.bench.cases import benchmark_cases, case_threads, cudnn_flag, layer_inputs
from bncheck.bench.results import Result, fmt_time, measure, noise_warning
from bncheck.core.spec import Loaded
from bncheck.core.tolerances import dtype_name
from bncheck.run.options import BENCH_OPTIONS, DEFAULT_BATCH_SIZE, OPTIONS, Option
from bncheck.run.plan import example_input
from bncheck.run.settings import OPTIONS_BY_NAME, bench_settings_from, settings_from

SHARED = ("input_shape", "batch_size", "device", "seed")  # OPTIONS the benchmarks take too


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def device_label(device: torch.device, threads: int | None = None) -> str:
    """The device in words; on the CPU with the machine and torch's thread count (`threads`, None: the current)."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    threads = torch.get_num_threads() if threads is None else threads
    return f"{device} ({platform.machine()}, {threads} thread{'s' if threads != 1 else ''})"


def header(spec: str, results: Sequence[Result]) -> list[str]:
    """The lines that state the conditions: device and CPU threads, torch, cudnn.benchmark, shapes, and each copy
    roofline."""
    if not results:
        return [f"bncheck bench: {spec}: nothing to run"]
    case = results[0].case
    flag = cudnn_flag(case)
    lines = [f"bncheck bench: {spec} on {device_label(case.device, case_threads(case))}, torch {torch.__version__}, "
             f"cudnn.benchmark={flag}{' (no effect on cpu)' if case.device.type == 'cpu' else ''}, "
             f"input {tuple(case.shape)}, median of blocked_autorange (min_run_time {case.min_run_time:g} s)"]
    seen = set()
    for r in results:
        roof = r.case.roofline
        if roof is not None and roof.value is not None and id(roof) not in seen:
            seen.add(id(roof))
            lines.append(f"copy roofline ({dtype_name(roof.dtype)}, 2 x {roof.nbytes >> 20} MiB moved per copy): "
                         f"{roof.value / 1e9:.1f} GB/s")
    return lines


def format_table(results: Sequence[Result | dict], *, markdown: bool = False) -> str:
    """One row per case (a Result or its `row()`): time per call, samples/s (model), GB/s and fraction of copy
    bandwidth (BN targets)."""
    head = ("case", "time", "samples/s", "GB/s", "of copy")
    rows = []
    for r in (r.row() if isinstance(r, Result) else r for r in results):
        if r["skipped"]:
            rows.append((r["name"], f"skipped: {r['skipped']}", "", "", ""))
            continue
        gbs = r["bytes_per_s"] and r["bytes_per_s"] / 1e9
        rows.append((r["name"], fmt_time(r["time_s"]), "" if r["layer"] else _fmt(r["samples_per_s"], ",.0f"),
                     "" if gbs is None else _fmt(gbs, ".3g"),
                     "" if gbs is None else _fmt(r["fraction_of_copy"], ".2f")))
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
        # a "|" inside a code span still splits a table cell: escaped
        lines += ["| " + " | ".join([f"`{row[0]}`".replace("|", "\\|"), *row[1:]]) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(str(row[i])) for row in [head, *rows]) for i in range(len(head))]
    out = []
    for row in [head, *rows]:
        if row[1].startswith("skipped"):
            out.append(f"{row[0]:<{widths[0]}}  {row[1]}")
        else:
            out.append((f"{row[0]:<{widths[0]}}  " + "  ".join(f"{c:>{w}}" for c, w in zip(row[1:], widths[1:])))
                       .rstrip())
    return "\n".join(out)


def run_bench(spec_or_model: str | nn.Module, input_shape: Sequence[int] | str | None = None, *,
              batch_size: int | str = DEFAULT_BATCH_SIZE, device: str | torch.device = "auto",
              dtypes: Sequence[str | torch.dtype] | str = ("float32",), seed: int | str = 0,
              progress: Callable[[Result], None] | None = None, **knobs) -> list[Result]:
    """Load SPEC ('module.path:attr', as the plugin) or take a model, build the input (`input_shape` is one
    sample's shape; else the spec's example input), and measure every case for each dtype. `knobs`: the
    BENCH_OPTIONS by name (modes, memory_format, layers, min_run_time, warmup, quick, no_cudnn_benchmark, threads),
    as text or values. `progress` is called with each Result as it comes."""
    from bncheck.core import spec as spec_mod

    unknown = sorted(set(knobs) - {option.name for option in BENCH_OPTIONS})
    if unknown:
        raise TypeError(f"run_bench() got unexpected keyword arguments {', '.join(unknown)}")
    bench = bench_settings_from(knobs)
    # the checks' own rules and example input: train-mode BN needs n > 1, the input-shape setting wins
    settings = settings_from({"input_shape": input_shape, "batch_size": batch_size, "seed": seed})
    if isinstance(spec_or_model, nn.Module):
        loaded = Loaded(type(spec_or_model).__name__, spec_or_model, getattr(spec_or_model, "example_input", None))
    else:
        loaded = spec_mod.load(spec_or_model, option=None, seed=settings.seed)
    model = loaded.model
    example, _ = example_input(loaded, settings, "--input-shape ")
    dev = OPTIONS_BY_NAME["device"].parse(device) if isinstance(device, str) else torch.device(device)
    if isinstance(dtypes, str):
        dtypes = [d for d in dtypes.replace(" ", "").split(",") if d]
    dtype_list = [spec_mod.parse_dtype(d) if isinstance(d, str) else d for d in dtypes]
    example = tuple(t.to(dev) for t in example) if isinstance(example, tuple) else example.to(dev)
    inputs = layer_inputs(model, example)  # one capture (on a copy) serves every dtype
    results = []
    for dtype in dtype_list:
        cases = benchmark_cases(model, example, device=dev, dtype=dtype, inputs=inputs, **bench.case_options())
        for case in cases:
            result = measure(case)
            results.append(result)
            if progress:
                progress(result)
    return results


def _add_option(p: argparse.ArgumentParser, option: Option) -> None:
    kwargs = {"action": "store_true"} if option.switch else {"metavar": option.metavar}
    p.add_argument(f"--{option.dashed()}", dest=option.name, help=option.help, **kwargs)


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("spec", help="module.path:attr (an nn.Module or zero-argument factory), e.g. "
                                "torchvision.models:resnet50 or torch.nn:LazyBatchNorm2d")
    for option in OPTIONS:
        if option.name in SHARED:
            _add_option(p, option)
    p.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16,float16,float64")
    for option in BENCH_OPTIONS:
        _add_option(p, option)
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--json", metavar="PATH", help="also write every case and figure to PATH")
    p.add_argument("--plot", metavar="FILE", help="also draw each BN layer's bandwidth as a fraction of the copy "
                                                  "roofline to FILE (PNG; needs matplotlib)")
    return p


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register `bench` on `python -m bncheck`'s subparsers (sets func=cli)."""
    p = subparsers.add_parser("bench", help="throughput benchmarks of a model and its BN layers",
                              description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=cli)
    return p


def cli(args: argparse.Namespace) -> int:
    """Run the benchmarks an argparse namespace describes and print the table (rows as they come)."""
    def progress(result: Result):  # rows as they come on stderr; the table on stdout at the end
        print(format_table([result]).splitlines()[-1], file=sys.stderr, flush=True)

    if args.plot:  # before minutes of timing, not after
        from bncheck.frontends.bench_plot import require_matplotlib

        require_matplotlib()
    print(f"bncheck bench: {args.spec} ...", file=sys.stderr, flush=True)
    shared = {name: getattr(args, name) for name in SHARED if getattr(args, name) is not None}
    knobs = {option.name: getattr(args, option.name) for option in BENCH_OPTIONS}
    results = run_bench(args.spec, dtypes=args.dtype, progress=progress, **shared, **knobs)
    lines = header(args.spec, results)
    warning = noise_warning(results)
    print("\n".join(lines))
    print(format_table(results, markdown=args.markdown))
    if warning:
        print(f"warning: {warning}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": lines, "warnings": [warning] if warning else [],
                       "results": [{"name": r.name, **r.case.info(), **r.figures()} for r in results]}, f, indent=1)
    if args.plot:
        from bncheck.frontends.bench_plot import plot_fractions

        plot_fractions(results, args.plot, lines)
        print(f"bncheck bench: wrote {args.plot}", file=sys.stderr)
    return 0
