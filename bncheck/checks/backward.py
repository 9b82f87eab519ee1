"""Backward: dx, dγ, dβ against the oracle's analytic gradients, in float64 where the layer runs in it."""

import torch

from bncheck.checks.registry import check
from bncheck.core import oracle
from bncheck.core.compare import check_close, matches
from bncheck.core.errors import BNCheckError, assertion_helper
from bncheck.core.harness import LayerCase, layer_case, params, run
from bncheck.core.threads import single_threaded
from bncheck.core.tolerances import tolerance_for, warned_floor


def _gradients(twin, x, dy, train: bool):
    x = x.detach().clone().requires_grad_(True)
    twin.train(train)
    twin.zero_grad(set_to_none=True)
    twin(x).backward(dy)
    weight, bias = params(twin)
    return x.grad, _grad(weight), _grad(bias)


def _grad(p):
    """A trainable parameter's gradient; zeros when none reached it (a detached γ/β), None if not trainable."""
    if not (isinstance(p, torch.nn.Parameter) and p.requires_grad):
        return None
    return torch.zeros_like(p) if p.grad is None else p.grad


_CAUSE = "a broken backward: a detached statistic, a custom autograd.Function, or in-place edits"


@check("backward")
@assertion_helper
@single_threaded
def assert_backward(layer, x, *, name: str = "", seed: int = 0) -> None:
    """Gradients of the output w.r.t. x, γ and β equal the oracle's, in train mode and (when tracking) eval mode."""
    case = layer_case(layer, name, x, seed)
    modes = case.modes(eval_needs_statistics=True)
    gen = torch.Generator().manual_seed(case.seed + 1)
    for probe in case.inputs:
        dy = torch.randn(probe.x.shape, generator=gen, dtype=torch.float64).to(probe.x.device)
        for train in modes:
            try:  # float64 where the layer supports it: the comparison is then exact to rounding
                twin = case.fresh(torch.float64)
                xs, dys = probe.x.double(), dy
                got = _gradients(twin, xs, dys, train)
            except (RuntimeError, TypeError, NotImplementedError):
                twin = case.fresh()
                xs, dys = probe.x, dy.to(probe.x.dtype)
                got = _gradients(twin, xs, dys, train)
            try:
                _compare(case, twin, xs, dys, train, got, case.where(probe, "train mode" if train else "eval mode"))
            except BNCheckError as exc:
                raise _derived(exc, case, xs, train) from None


def _compare(case: LayerCase, twin, xs, dys, train: bool, got, where: str) -> None:
    """dx, dγ and dβ against the oracle's."""
    weight, _ = params(twin)
    if train:
        expected = oracle.train_backward(xs, dys, case.eps, weight)
    else:
        expected = oracle.eval_backward(xs, dys, twin.running_mean, twin.running_var, case.eps, weight)
    tol = tolerance_for("gradient", xs.dtype)
    check_close(got[0], expected.x, where=where, quantity="dx (gradient w.r.t. the input)", tol=tol,
                axes=("sample", "channel"), cause=_CAUSE, hypotheses=[
                    ("the batch mean and variance are detached from the graph (dx misses their terms)",
                     lambda: oracle.eval_backward(xs, dys, *_batch_mean_var(xs), case.eps, weight).x)]
                if train else [])
    for quantity, g, e in (("dγ (weight.grad)", got[1], expected.weight), ("dβ (bias.grad)", got[2], expected.bias)):
        if g is not None:
            check_close(g, e, where=where, quantity=quantity, tol=tol, cause=_CAUSE, hypotheses=[
                ("no gradient reaches the parameter: it is detached from the graph", lambda: g * 0)])


def _derived(exc: BNCheckError, case: LayerCase, x, train: bool) -> BNCheckError:
    """A gradient failure, said to follow from the forward where the forward itself is wrong: the gradient of a
    wrong function is wrong too, and blaming the backward would send the user to the wrong place."""
    twin = case.fresh(x.dtype if x.dtype == torch.float64 else None)
    weight, bias = params(twin)
    if train:
        expected = oracle.train_forward(x, case.eps, weight, bias)
    else:
        expected = oracle.eval_forward(x, twin.running_mean, twin.running_var, case.eps, weight, bias)
    # float32's bound for float64 input: a layer computing below its input's precision has a right forward
    if matches(run(twin, x, train=train), expected, warned_floor(x.dtype)):
        return exc
    mode, check = ("train", "batch_stats") if train else ("eval", "eval_output")
    return exc.because(f"the forward output is already wrong in {mode} mode (the {check} check says how): this is "
                       f"the gradient of a wrong forward; fix the forward first")


def _batch_mean_var(x):
    stats = oracle.batch_stats(x)
    return stats.mean, stats.var
