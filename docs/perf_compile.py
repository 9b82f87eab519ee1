"""Compilation cost of torch.compile (inductor, CPU) and of bncheck's assert_compile_matches, one model per process.

usage: .venv/bin/python docs/perf_compile.py seed_cnn|resnet18   (TORCHINDUCTOR_CACHE_DIR picks a cold or warm cache)
"""

import importlib
import sys
import time

import torch
import torchvision

from bncheck.checks.compiled import assert_compile_matches
from bncheck.testing.examples import seed_cnn


def timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def train_step(m, x):
    m.train()
    m(x).sum().backward()


def eval_step(m, x):
    m.eval()
    with torch.no_grad():
        m(x)


def main(name: str) -> None:
    model = seed_cnn() if name == "seed_cnn" else torchvision.models.resnet18(num_classes=10)
    x = seed_cnn().example_input if name == "seed_cnn" else torch.randn(2, 3, 32, 32)
    steps = {"train": train_step, "eval": eval_step}
    start = time.perf_counter()
    importlib.import_module("torch._inductor.compile_fx")  # the one-off import, timed apart from the compilation

    imported = time.perf_counter() - start
    eager = {mode: min(timed(lambda s=step: s(model, x)) for _ in range(3)) for mode, step in steps.items()}
    compiled = torch.compile(model)
    first = {mode: timed(lambda s=step: s(compiled, x)) for mode, step in steps.items()}
    cached = {mode: min(timed(lambda s=step: s(compiled, x)) for _ in range(3)) for mode, step in steps.items()}
    check = timed(lambda: assert_compile_matches(model, x, name=name))
    print(f"{name}: import inductor {imported:.1f} s | " + " | ".join(
        f"{mode}: first compiled call {first[mode]:.1f} s, cached call {cached[mode] * 1e3:.0f} ms, eager "
        f"{eager[mode] * 1e3:.0f} ms" for mode in steps) + f" | assert_compile_matches {check:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1])
