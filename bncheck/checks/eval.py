"""Eval mode: output from the running statistics, no state change, samples independent of each other."""

import contextlib
import functools

import torch
from torch import nn

from bncheck.checks.registry import check
from bncheck.core import oracle
from bncheck.core.capture import eval_run, float_leaves, forward
from bncheck.core.compare import check_close, fail
from bncheck.core.discover import find_batchnorms
from bncheck.core.errors import BNCheckSkip, BNCheckUsageError, assertion_helper, one_line
from bncheck.core.harness import LayerCase, layer_case, params, run
from bncheck.core.reference import torch_output
from bncheck.core.state import Snapshot, clone, materialized
from bncheck.core.threads import one_thread, single_threaded
from bncheck.core.tolerances import tolerance_for


@check("eval_output")
@assertion_helper
@single_threaded
def assert_eval_output(layer, x, *, name: str = "", seed: int = 0) -> None:
    """Eval output is (x − running_mean)/sqrt(running_var + eps)·γ + β; batch stats when not tracking."""
    case = layer_case(layer, name, x, seed)
    for probe in case.inputs:
        for train in case.eval_like_modes():
            twin = case.fresh()
            weight, bias = params(twin)
            batch = lambda: oracle.train_forward(probe.x, case.eps, weight, bias)  # noqa: E731
            if case.tracks:
                expected = oracle.eval_forward(probe.x, twin.running_mean, twin.running_var, case.eps, weight, bias)
                hypotheses = [("eval mode normalizes with the batch statistics instead of the running ones", batch)]
            else:
                expected, hypotheses = batch(), []
            reference = functools.partial(torch_output, twin, probe.x, train=not case.tracks, eps=case.eps)
            y = run(twin, probe.x, train=train)
            check_close(y, expected, where=case.where(probe, "train mode" if train else "eval mode"),
                        quantity="output", tol=tolerance_for("output", probe.x.dtype), axes=("sample", "channel"),
                        hypotheses=hypotheses, reference=reference,
                        cause="eval mode does not normalize with the running statistics and the layer's eps")


@check("eval_state")
@check("model_eval_state", scope="model", needs_batchnorm=False)
@assertion_helper
def assert_eval_state(module: nn.Module, x, *, name: str = "", seed: int = 0) -> None:
    """A forward in eval mode changes no buffer or parameter: of a BN layer (on x and the probes; a frozen BN in
    train mode too), or of a whole model (on x, Lazy parameters materialized first)."""
    if find_batchnorms(module).keys() == {""}:
        with one_thread():
            _layer_eval_state(module, x, name=name, seed=seed)
        return
    run = eval_run(module, x)
    changed = [c for c in run.changed if not _observed(module, c)]
    if changed:
        raise fail(f"{name or type(module).__name__}, eval mode", f"a forward changed the model: "
                   f"{'; '.join(changed[:5])}", "a BN layer updates its running statistics outside train mode")


# documented aliases: the item ids' names for a whole model, and the former names
assert_model_eval_state = assert_eval_no_state_change = assert_eval_state_unchanged = assert_eval_state


# torch.ao.quantization's observers and fake-quantizers update their statistics in eval mode by design (they follow
# observer_enabled, not .training): their state is not BN's, and they are frozen before outputs are compared.
_OBSERVERS = (torch.ao.quantization.ObserverBase, torch.ao.quantization.FakeQuantizeBase)


def _observed(model: nn.Module, change: str) -> bool:
    """Whether a Snapshot difference ("state_dict['a.b.scale'] changed") is a quantization observer's state."""
    key = change.split("'")[1] if "'" in change else ""
    owner = key.rsplit(".", 1)[0] if "." in key else ""
    try:
        return isinstance(model.get_submodule(owner), _OBSERVERS)
    except AttributeError:
        return False


def _observers_frozen(model: nn.Module, x) -> nn.Module:
    """`model` (a copy in eval mode) with its quantization observers frozen after one forward on x, as QAT's
    evaluation freezes them (torch.ao.quantization.disable_observer): each forward would re-quantize with scales
    of its own batch otherwise."""
    with torch.no_grad():
        forward(model, x)
    model.apply(torch.ao.quantization.disable_observer)
    return model


def _layer_eval_state(layer, x, *, name: str, seed: int) -> None:
    case = layer_case(layer, name, x, seed)
    for probe in case.inputs:
        for train in case.eval_like_modes():
            twin = case.fresh()
            twin.train(train)
            before = Snapshot.of(twin)
            run(twin, probe.x, train=train)
            changed = before.differences(twin)
            if changed:
                raise fail(case.where(probe, "train mode" if train else "eval mode"),
                           f"a forward changed the layer's state: {'; '.join(changed)}",
                           "running statistics updated outside train mode")


def _batch_size(x) -> int | None:
    """N of an input batch (a tensor, or a tuple of arguments whose first tensor is batched); None if none."""
    first = next((t for t in (x if isinstance(x, tuple) else (x,)) if isinstance(t, torch.Tensor)), None)
    return first.shape[0] if first is not None and first.dim() >= 2 else None


def _batched(t, n: int) -> bool:
    return isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[0] == n


def _sample(x, i: int, n: int):
    """Sample i of the batch x alone (every tensor argument with batch dim n sliced to i:i+1)."""
    if isinstance(x, tuple):
        return tuple(_sample(t, i, n) for t in x)
    return x[i:i + 1] if _batched(x, n) else x


def _indexes_the_batch(x, n: int) -> int | None:
    """The position of an integer tensor argument without the batch dim (a graph's edge_index (2, E) over n nodes):
    it refers to samples by index, so the samples are not independent; None when there is none."""
    args = x if isinstance(x, tuple) else (x,)
    return next((k for k, t in enumerate(args) if isinstance(t, torch.Tensor) and not t.is_floating_point()
                 and not t.is_complex() and t.dtype != torch.bool and not _batched(t, n)), None)


def _per_sample(model: nn.Module, x, n: int, keep: list[int] | None = None) -> tuple[list[list[torch.Tensor]], list]:
    """(the model's floating-point outputs on a batch of n, per sample; which outputs those are): slices of the
    outputs with the batch dim (`keep`: these leaves, as the batch run chose them; a batch-level scalar such as an
    auxiliary loss has no sample of its own), or the i-th element of a per-sample list (a detector's list of
    dicts)."""
    with torch.no_grad():
        return _split(forward(model, x), n, keep)


def _split(out, n: int, keep: list[int] | None = None) -> tuple[list[list[torch.Tensor]], list]:
    """_per_sample's split of one batch's output `out`."""
    if isinstance(out, (list, tuple)) and len(out) == n and not any(isinstance(o, torch.Tensor) for o in out):
        return [float_leaves(o) for o in out], []
    leaves = float_leaves(out)
    if keep is None:
        keep = [k for k, t in enumerate(leaves) if _batched(t, n)]
    return [[leaves[k][i:i + 1] for k in keep if k < len(leaves)] for i in range(n)], keep


_BATCH_STATS_IN_EVAL = ("eval mode still uses batch statistics somewhere (a layer left in train mode, a functional "
                        "batch_norm with training=True, or track_running_stats=False)")


def _shapes(per_sample: list[list[torch.Tensor]]) -> list[list[torch.Size]]:
    return [[t.shape for t in sample] for sample in per_sample]


def _in_float64(model: nn.Module, x, like: list[list[torch.Tensor]]) -> list[list[torch.Tensor]] | None:
    """The eval outputs per sample of a float64 copy of the model on x in float64: what the same computation
    gives without float32 rounding, which grows with depth and width; None where the model does not run in it or
    its outputs are not shaped `like` the float32 ones."""
    as64 = lambda t: t.double() if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    try:
        outs, _ = _per_sample(clone(model).double().eval(), tuple(map(as64, x)) if isinstance(x, tuple) else as64(x),
                              len(like))
    except Exception:  # any failure only means there is no float64 reference
        return None
    return outs if _shapes(outs) == _shapes(like) else None


@check("eval_single_sample")
@check("model_eval_single_sample", scope="model", needs_batchnorm=False)
@assertion_helper
def assert_eval_single_sample(model: nn.Module, x, *, name: str = "", seed: int = 0, samples: int = 4) -> None:
    """In eval mode one sample alone gives the same output as inside the batch (a layer or a whole model)."""
    # one thread for a layer's small tensors, torch's own count for a whole model's activations
    with one_thread() if find_batchnorms(model).keys() == {""} else contextlib.nullcontext():
        _eval_single_sample(model, x, name=name, seed=seed, samples=samples)


def _eval_single_sample(model: nn.Module, x, *, name: str, seed: int, samples: int) -> None:
    n = _batch_size(x)
    if n is None or n < 2:
        raise BNCheckUsageError(f"{name or 'model'}: need a batch of at least 2 samples, got "
                                f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    where = name or type(model).__name__
    for bn_name, bn in find_batchnorms(model).items():
        if getattr(bn, "running_mean", None) is None:
            raise BNCheckSkip(f"{where}: {bn_name or 'the layer'} has track_running_stats=False, so eval mode "
                              "normalizes with batch statistics and samples are not independent by design")
    indexing = _indexes_the_batch(x, n)
    if indexing is not None:
        raise BNCheckSkip(f"{where}: input {indexing} is an integer tensor without the batch dim (a graph's "
                          f"edge_index, say): it relates the samples by index, so one alone is not the same input "
                          f"(a graph's nodes are not independent samples)")
    if find_batchnorms(model).keys() == {""}:
        twin = LayerCase(model, name, x, seed).fresh().eval()
        batch, keep = _per_sample(twin, x, n)
    elif any(isinstance(m, _OBSERVERS) for m in model.modules()):
        twin = _observers_frozen(clone(model).eval(), x)
        batch, keep = _per_sample(twin, x, n)
    else:  # the shared eval pass of the unchanged model gives the batch's outputs
        run = eval_run(model, x)
        twin = materialized(clone(model), x).eval()
        batch, keep = _split(run.output, n)
    if batch and not batch[0]:
        raise BNCheckSkip(f"{where}: no floating-point output has the batch dim {n}: there is no per-sample output "
                          f"to compare")
    precise = functools.cache(lambda: _in_float64(twin, x, batch))  # only a failing comparison needs it
    for i in range(min(samples, n)):
        try:
            (alone,), _ = _per_sample(twin, _sample(x, i, n), 1, keep)
        except Exception as exc:  # "Expected more than 1 value per channel when training": batch statistics
            raise fail(where, f"eval mode, sample {i} alone raised {one_line(exc)}", _BATCH_STATS_IN_EVAL) from exc
        if [a.shape for a in alone] != [b.shape for b in batch[i]]:
            raise fail(where, f"sample {i} alone gave outputs shaped {[tuple(a.shape) for a in alone]}, inside "
                              f"the batch {[tuple(b.shape) for b in batch[i]]}",
                       "the output structure depends on the batch size")
        for k, (a, b) in enumerate(zip(alone, batch[i])):
            check_close(a, b, where=f"{where}, eval mode, sample {i} alone vs in a batch of {n}",
                        quantity=f"output {k}" if len(alone) > 1 else "output", tol=tolerance_for("output", b.dtype),
                        axes=("sample", "channel"), reference=lambda: None if precise() is None else precise()[i][k],
                        cause=_BATCH_STATS_IN_EVAL)


assert_model_eval_single_sample = assert_eval_single_sample  # the model item's name (a documented alias)
