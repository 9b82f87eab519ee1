"""Running statistics across a whole model: after one train-mode forward, each BN layer's statistics are the
contract's update from its own inputs in that forward, whatever the other layers, hooks or shared tensors did."""

from collections import defaultdict

import torch
from torch import nn

from bncheck.checks.registry import check
from bncheck.core import oracle
from bncheck.core.capture import forward
from bncheck.core.compare import check_close, fail, matches
from bncheck.core.discover import find_batchnorms, is_frozen
from bncheck.core.errors import BNCheckError, BNCheckSkip, assertion_helper
from bncheck.core.harness import DEFAULT_EPS, DEFAULT_MOMENTUM
from bncheck.core.reference import torch_batch_norm
from bncheck.core.state import clone, materialized
from bncheck.core.tolerances import tolerance_for


def _checked_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The BN layers whose statistics a train forward must move: not frozen, tracking, and without BN children of
    their own (a layer that hands parts of its batch to child BNs, as timm's SplitBatchNorm2d does, is checked
    through those children)."""
    found = {}
    for name, bn in find_batchnorms(model).items():
        nested = any(m is not bn for m in find_batchnorms(bn).values())
        if not is_frozen(bn) and isinstance(getattr(bn, "running_mean", None), torch.Tensor) and not nested:
            found[name] = bn
    return found


def _shared(layers: dict[str, nn.Module]) -> list[str]:
    """'a.running_mean and b.running_mean are one tensor' for each statistic two layers share."""
    owner: dict[int, str] = {}
    shared = []
    for name, bn in layers.items():
        for key in ("running_mean", "running_var"):
            t = getattr(bn, key)
            first = owner.setdefault(t.data_ptr(), f"{name}.{key}")
            if first != f"{name}.{key}":
                shared.append(f"{first} and {name}.{key} are one tensor")
    return shared


def _calls(model: nn.Module, x, layers: dict[str, nn.Module]) -> dict[str, list[tuple[torch.Tensor, bool]]]:
    """Per layer, (input, training flag) of every call in one forward of `model` in train mode (no_grad)."""
    calls: dict[str, list[tuple[torch.Tensor, bool]]] = defaultdict(list)

    def recorder(name):
        def hook(module, args):
            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            calls[name].append((None if first is None else first.detach().clone(), module.training))
        return hook

    handles = [bn.register_forward_pre_hook(recorder(name)) for name, bn in layers.items()]
    try:
        model.train()
        with torch.no_grad():
            forward(model, x)
    finally:
        for h in handles:
            h.remove()
    return calls


@check("model_running_stats", scope="model", trains_model=True)
@assertion_helper
def assert_model_running_stats(model: nn.Module, x, *, name: str = "") -> None:
    """After one train-mode forward of the whole model, every BN layer's running statistics (and
    num_batches_tracked) are the oracle's updates from the inputs that layer received, in order, starting from its
    own statistics before: this catches statistics shared between layers or moved outside the layer's forward (hooks,
    other modules). A layer called several times in one forward (shared weights) gets one update per call. A layer
    whose own update is wrong (it does the same alone) is left to the per-layer running_stats check."""
    title = name or type(model).__name__
    twin = materialized(clone(model), x)
    layers = _checked_layers(twin)
    if not layers:
        raise BNCheckSkip(f"{title}: no BN layer that trains with running statistics")
    shared = _shared(layers)
    if shared:
        raise fail(f"{title}, train mode", f"BN layers share running statistics: {'; '.join(shared)}",
                   "one statistics tensor handed to several layers (a mutable default argument, a tensor built "
                   "once at class level, or a buffer assigned from another layer): each layer needs its own")
    before = {n: (oracle.RunningStats.of(bn), clone(bn)) for n, bn in layers.items()}
    calls = _calls(twin, x, layers)
    for layer_name, bn in layers.items():
        state, start = before[layer_name]
        steps = calls.get(layer_name, [])
        for xs, training in steps:
            if xs is None:
                raise BNCheckSkip(f"{title}: {layer_name} was called without a positional input tensor")
            if training:
                state = oracle.update_running(state, xs, getattr(bn, "momentum", DEFAULT_MOMENTUM))
        where = (f"{title}, train mode, one forward: {layer_name} ({type(bn).__name__}), after its "
                 f"{len(steps)} call{'s' if len(steps) != 1 else ''}")
        try:
            _compare(bn, state, steps, start, where)
        except BNCheckError:
            if _same_alone(bn, start, steps):
                continue  # the layer's own update is wrong: the per-layer running_stats item says how
            raise


def _compare(bn: nn.Module, state: oracle.RunningStats, steps, start: nn.Module, where: str) -> None:
    """The layer's statistics and batch count against the oracle's `state`."""
    inputs = [xs for xs, training in steps if training]
    dtype = inputs[0].dtype if inputs else torch.float32
    for key, want in (("running_mean", state.mean), ("running_var", state.var)):
        check_close(getattr(bn, key), want, where=where, quantity=key, tol=tolerance_for("statistics", dtype),
                    reference=lambda key=key: _torch_updates(start, inputs, key),
                    cause="the layer's statistics do not follow from its own inputs: updated outside its forward "
                          "(a hook, another module, a functional batch_norm on its buffers), or shared with "
                          "another layer")
    nbt = getattr(bn, "num_batches_tracked", None)
    if isinstance(nbt, torch.Tensor) and int(nbt) != state.num_batches_tracked:
        raise fail(where, f"num_batches_tracked is {int(nbt)}, expected {state.num_batches_tracked}",
                   "num_batches_tracked must count the layer's train-mode calls (+1 each), and nothing else")


def _same_alone(bn: nn.Module, start: nn.Module, steps) -> bool:
    """Whether the layer alone, from the same start, fed the same inputs in the same modes, ends with the statistics
    it has in the model: then its defect is its own, not the model's."""
    alone = clone(start)
    try:
        with torch.no_grad():
            for xs, training in steps:
                alone.train(training)(xs)
    except Exception:  # alone, it does not even run: the model is what differs
        return False
    return all(matches(getattr(bn, key), getattr(alone, key), tolerance_for("statistics", getattr(alone, key).dtype))
               for key in ("running_mean", "running_var"))


def _torch_updates(start: nn.Module, inputs: list[torch.Tensor], key: str) -> torch.Tensor | None:
    """`key` after torch's own F.batch_norm updates from `start`'s state over `inputs` (None where torch refuses)."""
    layer = clone(start)
    nbt = oracle.RunningStats.of(layer).num_batches_tracked
    for xs in inputs:
        nbt += 1
        done = torch_batch_norm(layer, xs, train=True, eps=float(getattr(layer, "eps", DEFAULT_EPS)),
                                momentum=oracle.momentum_factor(getattr(layer, "momentum", DEFAULT_MOMENTUM), nbt))
        if done is None:
            return None
        with torch.no_grad():
            layer.running_mean.copy_(done[1])
            layer.running_var.copy_(done[2])
    return getattr(layer, key)
