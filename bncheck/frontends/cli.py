"""`python -m bncheck check SPEC [--input-shape C,H,W]`: every check on one model, without pytest;
`python -m bncheck bench SPEC [--input-shape C,H,W]`: the throughput benchmarks
(bncheck.frontends.bench_cli) as a table;
`torchrun --nproc-per-node=G -m bncheck syncbn SPEC`: the SyncBN check across the ranks of a torchrun job."""

import argparse
import os
import shlex
import sys

from bncheck.core import spec as spec_mod
from bncheck.core.errors import BNCheckUsageError, one_line
from bncheck.frontends import bench_cli
from bncheck.run.check import run_plan
from bncheck.run.options import OPTIONS
from bncheck.run.plan import Plan
from bncheck.run.settings import settings_from


def reproduce(args, seed: int) -> str:
    """'bncheck: reproduce with: python -m bncheck check SPEC ... --seed N': every option given, the seed always."""
    words = ["python", "-m", "bncheck", "check", args.spec]
    for option in OPTIONS:
        value = getattr(args, option.name)
        if option.name != "seed" and value not in (None, False):
            words += [f"--{option.dashed()}"] + ([] if value is True else [str(value)])
    return "bncheck: reproduce with: " + shlex.join([*words, "--seed", str(seed)])


def check(args) -> int:
    settings = settings_from({option.name: getattr(args, option.name) for option in OPTIONS})
    loaded = spec_mod.load(args.spec, option=None, seed=settings.seed)
    report = run_plan(Plan(loaded, settings, shape_option="--input-shape "))
    print(report)
    print(reproduce(args, settings.seed))
    print(f"{len(report.failures)} failed" if report.failures else "all checks passed")
    return 0 if report.ok else 1


def syncbn(args) -> int:
    from bncheck.run.cluster import check_on_cluster, cluster_verdict

    settings = settings_from({"input_shape": args.input_shape, "batch_size": args.batch_size, "seed": args.seed})
    report = check_on_cluster(args.spec, settings, convert=True if args.convert else None)
    if report is not None:  # rank 0
        print(report)
        counts = report.counts()
        print(f"{counts['failed']} failed" if counts["failed"] else "all checks passed" if counts["passed"] else
              "no layer could be checked here: each one skipped, saying why")
    status = 0 if cluster_verdict(report) else 1
    # The verdict is in and the process group destroyed; at interpreter exit torch's gloo threads sometimes abort
    # the process ("terminate called without an active exception", seen in 1 of 4 runs), which torchrun reports as
    # a crashed rank: leave without running C++ destructors.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _syncbn_parser(sub) -> None:
    p = sub.add_parser("syncbn", help="the SyncBN check across the ranks of a torchrun job",
                       description="Run under torchrun, one process per rank (e.g. torchrun --nnodes=N "
                                   "--nproc-per-node=G -m bncheck syncbn SPEC): each rank runs its own batch through "
                                   "each synchronized BN layer of the model (or, when it has none, each torch BN layer "
                                   "converted to nn.SyncBatchNorm), and rank 0 compares every rank's output, "
                                   "gradients and running statistics with one BN over the whole gathered batch. nccl "
                                   "on GPUs (one per local rank), gloo on the CPU.",
                       epilog="exit status on every rank: 0 every layer passed (or skipped, saying why), 1 a layer "
                              "failed, 2 bad input. Example: torchrun --standalone --nproc-per-node=2 -m bncheck "
                              "syncbn bncheck.examples:seed_cnn")
    p.add_argument("spec", help="the model, as for the check command")
    p.add_argument("--convert", action="store_true", help="also convert torch's BN layers to nn.SyncBatchNorm when "
                   "the model has synchronized layers of its own (default: only when it has none)")
    for name in ("input_shape", "batch_size", "seed"):
        option = next(o for o in OPTIONS if o.name == name)
        p.add_argument(f"--{option.dashed()}", dest=option.name, help=option.help, metavar=option.metavar)
    p.set_defaults(func=syncbn)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bncheck", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="run every bncheck check on a model",
                       description="Every bncheck check on one model (its BN layers, the model checks and the lints), "
                                   "on copies: the model is never changed.",
                       epilog="exit status: 0 every check passed, 1 a check failed, 2 bad input (a one-line error). "
                              "Example: python -m bncheck check torchvision:resnet18 --input-shape 3,64,64")
    p.add_argument("spec", help="module.path:attr (an nn.Module, or a factory or class of one), torchvision:NAME or "
                   "timm:NAME (random weights), each optionally with literal keyword arguments, e.g. "
                   "'pkg.mod:Net(width=16)'")
    for option in OPTIONS:
        kwargs = {"action": "store_true"} if option.switch else {"metavar": option.metavar}
        p.add_argument(f"--{option.dashed()}", dest=option.name, help=option.help, **kwargs)
    p.set_defaults(func=check)
    bench_cli.add_subparser(sub)
    _syncbn_parser(sub)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except BNCheckUsageError as exc:
        print(f"error: {exc.flagged('--' + exc.field.replace('_', '-')) if exc.field else exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # a model that fails outside any one check (e.g. under the benchmark): one line
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1


