"""The benchmarks without pytest: `python -m bncheck bench SPEC --input-shape C,H,W` runs bncheck.bench.measure's cases
for a model and prints a table (samples/s, GB/s, fraction of the copy bandwidth) with the conditions."""

from __future__ import annotations

import argparse
import json
import platform
import sys
from collections.abc import Callable, Sequence

import torch
from torch import nn

from bncheck.bench.measure import (
    MEMORY_FORMATS,
    MODES,
    Result,
    benchmark_cases,
    cudnn_flag,
    fmt_time,
    layer_inputs,
    measure,
)
from bncheck.core.errors import BNCheckUsageError
from bncheck.core.tolerances import dtype_name
from bncheck.run.options import DEFAULT_BATCH_SIZE
from bncheck.run.settings import OPTIONS_BY_NAME


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({platform.machine()}, {torch.get_num_threads()} threads)"


def header(spec: str, results: Sequence[Result]) -> list[str]:
    """The lines that state the conditions: device, torch, cudnn.benchmark, shapes, and each copy roofline."""
    if not results:
        return [f"bncheck bench: {spec}: nothing to run"]
    case = results[0].case
    flag = cudnn_flag(case)
    lines = [f"bncheck bench: {spec} on {device_label(case.device)}, torch {torch.__version__}, "
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


def _parse_list(text: str | Sequence[str] | None, default: Sequence[str]) -> tuple[str, ...]:
    if text is None:
        return tuple(default)
    if isinstance(text, str):
        return tuple(p for p in text.replace(" ", "").split(",") if p)
    return tuple(text)


def run_bench(spec_or_model: str | nn.Module, input_shape: Sequence[int] | str | None = None, *,
              batch_size: int = DEFAULT_BATCH_SIZE,
              device: str | torch.device = "auto", dtypes: Sequence[str | torch.dtype] | str = ("float32",),
              memory_formats: Sequence[str] | str | None = None, modes: Sequence[str] | str = MODES,
              layers: Sequence[str] | str | None = None, quick: bool = False, min_run_time: float | None = None,
              cudnn_benchmark: bool | None = True, seed: int = 0,
              progress: Callable[[Result], None] | None = None) -> list[Result]:
    """Load SPEC ('module.path:attr', as the plugin) or take a model, build the input (`input_shape` is one
    sample's shape; else the spec's example input), and measure every case for each dtype. `layers`: None = all
    BN layers, "none" (or []) = the model only, or names. `progress` is called with each Result as it comes."""
    from bncheck.core import spec as spec_mod

    OPTIONS_BY_NAME["batch_size"].parse(str(batch_size))  # the check's rule: train-mode BN needs n > 1
    if isinstance(spec_or_model, nn.Module):
        spec, model, example = type(spec_or_model).__name__, spec_or_model, getattr(spec_or_model, "example_input",
                                                                                     None)
    else:
        loaded = spec_mod.load(spec_or_model, option=None)
        spec, model, example = loaded.spec, loaded.model, loaded.example_input
    if isinstance(input_shape, str):
        input_shape = spec_mod.parse_shape(input_shape)
    if input_shape is not None:
        example = torch.randn((batch_size, *input_shape), generator=torch.Generator().manual_seed(seed))
    if example is None:
        raise BNCheckUsageError(f"{spec}: no input shape: pass --input-shape C,H,W (one sample, without the batch "
                                f"dim), or give the model an `example_input` attribute")
    dev = spec_mod.parse_device(device) if isinstance(device, str) else torch.device(device)
    dtype_list = [spec_mod.parse_dtype(d) if isinstance(d, str) else d
                  for d in _parse_list(dtypes, ())]
    if isinstance(layers, str):
        layers = [] if layers in ("none", "") else None if layers == "all" else list(_parse_list(layers, ()))
    formats = _parse_list(memory_formats, MEMORY_FORMATS)
    mode_list = _parse_list(modes, MODES)
    example = tuple(t.to(dev) for t in example) if isinstance(example, tuple) else example.to(dev)
    inputs = layer_inputs(model, example)  # one capture (on a copy) serves every dtype
    results = []
    for dtype in dtype_list:
        cases = benchmark_cases(model, example, device=dev, dtype=dtype, memory_formats=formats, modes=mode_list,
                                layers=layers, quick=quick, min_run_time=min_run_time,
                                cudnn_benchmark=cudnn_benchmark, inputs=inputs)
        for case in cases:
            result = measure(case)
            results.append(result)
            if progress:
                progress(result)
    return results


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("spec", help="module.path:attr (an nn.Module or zero-argument factory), e.g. "
                                "torchvision.models:resnet50 or torch.nn:LazyBatchNorm2d")
    p.add_argument("--input-shape", help="one sample's shape without the batch dim, e.g. 3,224,224")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", help="comma-separated: float32,bfloat16,float16,float64")
    p.add_argument("--memory-format", default="contiguous,channels_last",
                   help="comma-separated: contiguous,channels_last (channels_last only for 4-D/5-D inputs)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated: " + ",".join(MODES))
    p.add_argument("--layers", default="all", help="all, none (the model only) or comma-separated BN layer names")
    p.add_argument("--min-run-time", type=float, default=None, help="seconds of timing per case (default 0.2)")
    p.add_argument("--quick", action="store_true", help="short measurements (CI smoke run)")
    p.add_argument("--no-cudnn-benchmark", action="store_true", help="run with torch.backends.cudnn.benchmark off")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--markdown", action="store_true", help="print the table as markdown")
    p.add_argument("--json", metavar="PATH", help="also write every case and figure to PATH")
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

    print(f"bncheck bench: {args.spec} ...", file=sys.stderr, flush=True)
    results = run_bench(args.spec, args.input_shape, batch_size=args.batch_size, device=args.device,
                        dtypes=args.dtype, memory_formats=args.memory_format, modes=args.modes, layers=args.layers,
                        quick=args.quick, min_run_time=args.min_run_time,
                        cudnn_benchmark=not args.no_cudnn_benchmark, seed=args.seed,
                        progress=progress)
    print("\n".join(header(args.spec, results)))
    print(format_table(results, markdown=args.markdown))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header(args.spec, results),
                       "results": [{"name": r.name, **r.case.info(), **r.figures()} for r in results]}, f, indent=1)
    return 0
