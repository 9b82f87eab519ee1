"""Chosen per-layer checks on one layer of each distinct BN configuration in the zoo (class, eps, momentum, affine,
track_running_stats, input rank), each on its real captured input: a quick proof for a changed check, where the
whole zoo takes an hour. python -m tests.zoo.configs CHECK [CHECK ...] (e.g. running_stats large_eps)."""

import sys
import time

import torch

from bncheck import LAYER_CHECKS, BNCheckError, BNCheckSkip, capture, find_batchnorms
from bncheck.run.plan import representative

from .catalog import zoo


def configurations() -> dict[tuple, tuple[str, torch.nn.Module, torch.Tensor]]:
    """(class, module, eps, momentum, affine, track_running_stats, rank) -> (where, layer, its captured input)."""
    found = {}
    for model in zoo():
        try:
            with torch.random.fork_rng():
                torch.manual_seed(0)
                net = model.build()
            inputs = capture(net.eval(), model.example(batch_size=2)).inputs
        except Exception as exc:  # a model that cannot run here cannot show a configuration either
            print(f"skip {model.id}: {type(exc).__name__}: {str(exc)[:80]}")
            continue
        for name, bn in find_batchnorms(net).items():
            if name in inputs:
                key = (type(bn).__qualname__, type(bn).__module__, *(getattr(bn, a, "-") for a in (
                    "eps", "momentum", "affine", "track_running_stats")), inputs[name].dim())
                found.setdefault(key, (f"{model.id}.{name}", bn, representative(inputs[name])))
    return found


def main(checks: list[str]) -> int:
    start = time.perf_counter()
    found = configurations()
    failed = 0
    for where, layer, x in found.values():
        for check in checks:
            try:
                LAYER_CHECKS[check](layer, x, name=where)
            except BNCheckSkip:
                pass
            except BNCheckError as exc:
                failed += 1
                print(f"FAIL {check}: {exc}")
    print(f"{len(found)} BN configurations x {len(checks)} checks: {failed} failed "
          f"({time.perf_counter() - start:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(LAYER_CHECKS)))
