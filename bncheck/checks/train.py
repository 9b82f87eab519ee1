"""Train-mode forward: standardization, the batch statistics behind it, and the n = 1 guard."""

import functools

import torch

from bncheck.checks.registry import check
from bncheck.core import oracle
from bncheck.core.compare import check_close, fail
from bncheck.core.errors import assertion_helper
from bncheck.core.harness import layer_case, params, run
from bncheck.core.reference import torch_output
from bncheck.core.threads import single_threaded
from bncheck.core.tolerances import tolerance_for


@check("standardization")
@assertion_helper
@single_threaded
def assert_standardization(layer, x, *, name: str = "", seed: int = 0) -> None:
    """With γ=1, β=0 in train mode, each channel's output has mean 0 and std sqrt(var/(var+eps)) ≈ 1."""
    case = layer_case(layer, name, x, seed)
    case.require_train_mode()
    for probe in case.inputs:
        twin = case.fresh()
        weight, bias = params(twin)
        with torch.no_grad():
            if weight is not None:
                weight.fill_(1.0)
            if bias is not None:
                bias.zero_()
        reference = _reference_stats(twin, probe.x, case.eps)
        y = run(twin, probe.x, train=True)
        stats_in, stats_out = oracle.batch_stats(probe.x), oracle.batch_stats(y)
        tol = tolerance_for("output", probe.x.dtype)
        cause = "the layer does not standardize each channel over N and the spatial dims (dims other than 1)"
        check_close(stats_out.mean, torch.zeros_like(stats_out.mean), where=case.where(probe),
                    quantity="per-channel mean of the output (γ=1, β=0)", tol=tol,
                    reference=lambda: reference("mean"),
                    cause=cause + ", or does not subtract the batch mean")
        check_close(stats_out.var.sqrt(), (stats_in.var / (stats_in.var + case.eps)).sqrt(), where=case.where(probe),
                    quantity="per-channel std of the output (γ=1, β=0)", tol=tol,
                    reference=lambda: reference("std"),
                    cause=cause + ", or does not divide by sqrt(var + eps)")


@check("batch_stats")
@assertion_helper
@single_threaded
def assert_batch_stats(layer, x, *, name: str = "", seed: int = 0) -> None:
    """Train-mode output equals the oracle: (x − mean)/sqrt(var_biased + eps)·γ + β with the layer's own eps."""
    case = layer_case(layer, name, x, seed)
    case.require_train_mode()
    for probe in case.inputs:
        twin = case.fresh()
        weight, bias = params(twin)
        xp, eps = probe.x, case.eps
        stats = oracle.batch_stats(xp)
        hypotheses = [
            ("eps outside the sqrt: (x − mean)/(sqrt(var) + eps)",
             lambda: _affine(oracle.normalize(xp, stats.mean, (stats.var.sqrt() + eps) ** 2, 0.0), weight, bias, xp)),
            ("the normalization uses the unbiased variance; it must use the biased one",
             lambda: oracle.normalize(xp, stats.mean, stats.unbiased_var, eps, weight, bias)),
            ("affine applied in the wrong order: (x̂ + β)·γ instead of x̂·γ + β",
             lambda: _affine(oracle.normalize(xp, stats.mean, stats.var, eps), weight, bias, xp, swapped=True)),
            ("the running statistics are used in train mode instead of the batch statistics",
             lambda: oracle.eval_forward(xp, case.state["running_mean"], case.state["running_var"], eps, weight,
                                         bias)),
            ("the layer ignores its eps (uses 1e-5, PyTorch's default)",
             lambda: oracle.train_forward(xp, 1e-5, weight, bias)),
            ("the layer ignores its eps (uses 1e-3, Keras' default)",
             lambda: oracle.train_forward(xp, 1e-3, weight, bias)),
            ("statistics per sample over the spatial dims only (instance norm), not over the batch",
             lambda: _normalized_over(xp, list(range(2, xp.dim())), eps, weight, bias)),
            ("statistics over the batch dim only (per position), not over the spatial dims too",
             lambda: _normalized_over(xp, [0], eps, weight, bias)),
        ]
        reference = functools.partial(torch_output, twin, xp, train=True, eps=eps)
        y = run(twin, probe.x, train=True)
        check_close(y, oracle.train_forward(xp, eps, weight, bias), where=case.where(probe, "train mode"),
                    quantity="output", tol=tolerance_for("output", probe.x.dtype), axes=("sample", "channel"),
                    hypotheses=hypotheses, reference=reference,
                    cause="wrong batch statistics: reduction over the wrong dims, a wrong variance, or eps misplaced")


def _reference_stats(twin, x, eps: float):
    """f('mean' | 'std'): the per-channel mean or std of torch's own train output with the twin's state on x (None
    where torch refuses), computed once, on first use: only a failing comparison needs it."""
    @functools.cache
    def stats():
        y = torch_output(twin, x, train=True, eps=eps)
        return None if y is None else oracle.batch_stats(y)

    def of(which: str):
        found = stats()
        return None if found is None else found.mean if which == "mean" else found.var.sqrt()
    return of


def _normalized_over(x, dims, eps, weight, bias):
    """Train-mode BN with the statistics reduced over `dims` instead of all dims but 1 (a known bug)."""
    if not dims:
        return None
    x = x.detach().double().cpu()
    mean = x.mean(dims, keepdim=True)
    x_hat = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(dims, keepdim=True) + eps)
    return _affine(x_hat, weight, bias, x)


def _affine(x_hat, weight, bias, x, swapped=False):
    """x̂·γ + β, or (x̂ + β)·γ when swapped; None where the layer lacks γ or β for the swap to matter."""
    w = None if weight is None else oracle.per_channel(weight.detach().double().cpu(), x)
    b = None if bias is None else oracle.per_channel(bias.detach().double().cpu(), x)
    if swapped:
        return None if w is None or b is None else (x_hat + b) * w
    return x_hat * (1.0 if w is None else w) + (0.0 if b is None else b)


@check("single_value")
@assertion_helper
@single_threaded
def assert_single_value(layer, x, *, name: str = "", seed: int = 0) -> None:
    """Train mode with one value per channel (n = 1) raises instead of returning garbage."""
    case = layer_case(layer, name, x, seed)
    case.require_train_mode()
    one = x.detach()[(slice(0, 1), slice(None)) + (slice(0, 1),) * (x.dim() - 2)]
    try:
        y = run(case.fresh(), one, train=True)
    except Exception:
        return
    summary = "NaN" if bool(torch.isnan(y).any()) else f"values in [{float(y.min()):.4g}, {float(y.max()):.4g}]"
    raise fail(f"{case.title}, input {tuple(one.shape)}, train mode",
               f"one value per channel returned output ({summary}) instead of raising",
               "no check that n > 1: a batch of one cannot be standardized (PyTorch raises "
               "'Expected more than 1 value per channel when training')")


assert_single_value_raises = assert_single_value  # its former name (a documented alias)
