"""Backward: dx, dγ, dβ against the oracle's analytic gradients, in float64 where the layer runs in it."""

import torch

from bncheck.core import oracle
from bncheck.core.compare import check_close
from bncheck.core.harness import LayerCase, params
from bncheck.core.threads import single_threaded
from bncheck.core.tolerances import tolerance


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


@single_threaded
def assert_backward(layer, x, *, name: str = "", seed: int = 0) -> None:
    """Gradients of the output w.r.t. x, γ and β equal the oracle's, in train mode and (when tracking) eval mode."""
    case = LayerCase(layer, name, x, seed)
    modes = ([] if case.frozen else [True]) + ([False] if case.tracks else [])
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
            weight, _ = params(twin)
            if train:
                expected = oracle.train_backward(xs, dys, case.eps, weight)
            else:
                expected = oracle.eval_backward(xs, dys, twin.running_mean, twin.running_var, case.eps, weight)
            where = case.where(probe, "train mode" if train else "eval mode")
            tol = tolerance(xs.dtype)
            cause = "a broken backward: a detached statistic, a custom autograd.Function, or in-place edits"
            check_close(got[0], expected.x, where=where, quantity="dx (gradient w.r.t. the input)", tol=tol,
                        axes=("sample", "channel"), cause=cause, hypotheses=[
                            ("the batch mean and variance are detached from the graph (dx misses their terms)",
                             lambda: oracle.eval_backward(xs, dys, *_batch_mean_var(xs), case.eps, weight).x)]
                        if train else [])
            for quantity, g, e in (("dγ (weight.grad)", got[1], expected.weight),
                                   ("dβ (bias.grad)", got[2], expected.bias)):
                if g is not None:
                    check_close(g, e, where=where, quantity=quantity, tol=tol, cause=cause, hypotheses=[
                        ("no gradient reaches the parameter: it is detached from the graph", lambda: g * 0)])


def _batch_mean_var(x):
    stats = oracle.batch_stats(x)
    return stats.mean, stats.var
