"""`python -m bncheck check SPEC [--input-shape C,H,W]`: every check on one model, without pytest;
`python -m bncheck bench SPEC [--input-shape C,H,W]`: the throughput benchmarks
(bncheck.frontends.bench_cli) as a table."""

import argparse
import sys

from bncheck.core import spec as spec_mod
from bncheck.core.errors import BNCheckUsageError, one_line
from bncheck.frontends import bench_cli
from bncheck.run.check import run_plan
from bncheck.run.plan import Plan, Settings


def _settings(args) -> Settings:
    if args.batch_size < 2:
        raise BNCheckUsageError("--batch-size must be at least 2 (train-mode BN needs n > 1)")
    return Settings(
        input_shape=spec_mod.parse_shape(args.input_shape, option="--input-shape") if args.input_shape else None,
        batch_size=args.batch_size,
        device=spec_mod.parse_device(args.device, option="--device"),
        dtype=spec_mod.parse_dtype(args.dtype, option="--dtype"),
        seed=args.seed,
        strict=args.strict,
    )


def check(args) -> int:
    report = run_plan(Plan(spec_mod.load(args.spec, option=None), _settings(args), shape_option="--input-shape "))
    print(report)
    print(f"{len(report.failures)} failed" if report.failures else "all checks passed")
    return 0 if report.ok else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bncheck", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="run every bncheck check on a model")
    p.add_argument("spec", help="module.path:attr (an nn.Module or zero-argument factory)")
    p.add_argument("--input-shape", help="one sample's shape without the batch dim, e.g. 3,32,32")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="lint findings fail")
    p.set_defaults(func=check)
    bench_cli.add_subparser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BNCheckUsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a model that fails outside any one check (e.g. under the benchmark): one line
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1


