"""One forward pass of a model, on a copy, recording each BN layer's real input and who produced it; and the one
eval-mode pass the model checks share (eval_run)."""

import weakref
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.utils._pytree import tree_leaves

from bncheck.core.discover import find_batchnorms
from bncheck.core.errors import BNCheckUsageError, one_line
from bncheck.core.harness import fingerprint
from bncheck.core.state import Snapshot, clone, materialized


@dataclass(frozen=True)
class Capture:
    """Per BN layer: its input on the example batch and the module whose output it was (if any);
    per conv/linear layer: its input (what a conv→BN fusion check needs)."""

    inputs: dict[str, torch.Tensor]
    producers: dict[str, str]
    producer_inputs: dict[str, torch.Tensor]
    output: object
    twin: nn.Module  # the copy that ran (its state after the pass)


def float_leaves(out) -> list[torch.Tensor]:
    """The floating-point tensors of a model's output (a tensor, or any nest of tuples, lists and dicts)."""
    return [t for t in tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def forward(model: nn.Module, example_input):
    """model(example_input), a tuple example being the positional arguments."""
    return model(*example_input) if isinstance(example_input, tuple) else model(example_input)


def capture(model: nn.Module, example_input, *, train: bool | None = None) -> Capture:
    """Run a copy of `model` (in its own modes, or all train/eval) on `example_input` under no_grad.

    The user's model is never run: hooks, lazy initialization and running-stat updates all land on the copy.
    """
    twin = clone(model)
    if train is not None:
        twin.train(train)
    names = {id(m): n for n, m in twin.named_modules()}
    bns = find_batchnorms(twin)
    inputs: dict[str, torch.Tensor] = {}
    producers: dict[str, str] = {}
    producer_inputs: dict[str, torch.Tensor] = {}
    produced: dict[int, str] = {}
    alive: list[torch.Tensor] = []  # keeps outputs alive so that id() stays unique during the pass

    def on_output(module, args, output):
        for t in tree_leaves(output):
            if isinstance(t, torch.Tensor):
                produced.setdefault(id(t), names[id(module)])
                alive.append(t)

    def on_producer_input(name):
        def hook(module, args):
            if name not in producer_inputs and args and isinstance(args[0], torch.Tensor):
                producer_inputs[name] = args[0].detach().clone()
        return hook

    def on_bn_input(name):
        def hook(module, args):
            if name not in inputs and args and isinstance(args[0], torch.Tensor):
                inputs[name] = args[0].detach().clone()
                if id(args[0]) in produced:
                    producers[name] = produced[id(args[0])]
        return hook

    handles = [m.register_forward_hook(on_output) for n, m in twin.named_modules() if n]
    handles += [m.register_forward_pre_hook(on_bn_input(n)) for n, m in bns.items()]
    handles += [m.register_forward_pre_hook(on_producer_input(n)) for n, m in twin.named_modules()
                if isinstance(m, (_ConvNd, nn.Linear))]
    try:
        with torch.no_grad():
            output = forward(twin, example_input)
    except Exception as exc:  # the user's model rejected the input: say so in one line
        raise BNCheckUsageError(f"the model rejected the example input: {one_line(exc)}") from exc
    finally:
        for h in handles:
            h.remove()
    return Capture(inputs, producers, producer_inputs, output, twin)


EVAL_RUN_SAMPLES = 2  # samples of each producer's input an EvalRun keeps (fusion is per sample in eval mode)


@dataclass(frozen=True)
class EvalRun:
    """One eval-mode forward of a copy of a model on its example input, which the model checks that read an
    unchanged model's eval pass share (eval state, train vs eval, one sample vs the batch, fusion). It keeps what
    they read, no copy of the model and no activation beyond it: a plan holds it as long as it lives."""

    output: object
    producers: dict[str, str]  # BN layer -> the conv/linear whose output it normalizes
    producer_inputs: dict[str, torch.Tensor]  # conv/linear -> its first EVAL_RUN_SAMPLES input samples
    changed: list[str]  # what the pass changed in its copy (Snapshot differences)


_RUNS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def eval_run(model: nn.Module, example_input) -> EvalRun:
    """The EvalRun of `model` on `example_input`, made once while neither changed (every check of a plan gets the
    same work copy and example): each check that needs an eval pass of its own no longer runs one."""
    key = (fingerprint(model), tuple(t._version for t in tree_leaves(example_input) if isinstance(t, torch.Tensor)))
    cached = _RUNS.get(model)
    if cached is not None and cached[0] == key and cached[1] is example_input:
        return cached[2]
    before = materialized(clone(model), example_input).eval()
    snapshot = Snapshot.of(before)
    captured = capture(before, example_input)
    run = EvalRun(captured.output, captured.producers,
                  {name: x[:EVAL_RUN_SAMPLES].clone() for name, x in captured.producer_inputs.items()},
                  snapshot.differences(captured.twin))
    _RUNS[model] = (key, example_input, run)
    return run
