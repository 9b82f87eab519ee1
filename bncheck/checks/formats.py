"""Number formats and memory layouts: low-precision, channels_last and non-contiguous inputs give the contract's
results."""

import functools
import warnings

import torch

from bncheck.checks.registry import check
from bncheck.core import oracle
from bncheck.core.compare import check_close, deviation, fail
from bncheck.core.errors import BNCheckSkip, BNCheckWarning, assertion_helper, one_line
from bncheck.core.harness import LayerCase, layer_case, params, run
from bncheck.core.reference import torch_batch_norm, torch_output
from bncheck.core.threads import single_threaded
from bncheck.core.tolerances import FUSION, LOW_PRECISION, dtype_name, runs_batch_norm, tolerance_for


@check("dtype", settings={"dtype": "dtypes"})
@assertion_helper
@single_threaded
def assert_dtype(layer, x, *, name: str = "", seed: int = 0, dtypes=LOW_PRECISION) -> None:
    """float16/bfloat16 input gives values within that dtype's tolerance of the oracle (widened by what torch's own
    BN achieves on the same input and state), while float32 running statistics and γ/β stay float32. An output in
    another dtype than the input's is a BNCheckWarning, not a failure. The layer runs with float32 state, as mixed
    precision runs it (a float64 layer too); a frozen BN, whose γ, β and statistics are plain buffers that type
    promotion would widen, is cast to the input dtype, as users run it. An input the dtype cannot hold (values beyond
    its range) is left out in that dtype: the probes still run."""
    case = layer_case(layer, name, x, seed)
    usable = [d for d in dtypes if runs_batch_norm(str(x.device), d)]
    if not usable:
        raise BNCheckSkip(f"{case.title}: torch runs no BN in {', '.join(map(str, dtypes))} on {x.device}")
    promoted = {}
    for dtype in usable:
        for probe in case.inputs:
            xs = probe.x.to(dtype)
            if not bool(xs.isfinite().all()):
                continue  # beyond the dtype's range (a trained model's activations of 1e5 in float16): no such input
            for train in case.modes():
                twin = case.fresh(dtype if case.frozen else torch.float32)
                weight, bias = params(twin)
                where = case.where(probe, f"{dtype} input", "train mode" if train else "eval mode")
                reference = functools.partial(torch_output, twin, xs, train=train, eps=case.eps)
                y = run(twin, xs, train=train)
                if y.dtype != dtype:
                    promoted.setdefault(dtype, y.dtype)
                if train or not case.tracks:
                    expected = oracle.train_forward(xs, case.eps, weight, bias)
                else:
                    expected = oracle.eval_forward(xs, twin.running_mean, twin.running_var, case.eps, weight, bias)
                check_close(y, expected, where=where, quantity="output", tol=tolerance_for("output", dtype),
                            axes=("sample", "channel"), reference=reference,
                            cause="low-precision arithmetic in the statistics (accumulate in float32), or the wrong "
                                  "statistics for this dtype")
                for key in ("running_mean", "running_var", "weight", "bias"):
                    t = getattr(twin, key, None)
                    if isinstance(t, torch.Tensor) and t.dtype != torch.float32 and not case.frozen:
                        raise fail(where, f"{key} became {t.dtype}, expected float32",
                                   "state cast to the input dtype: running statistics lose precision (and "
                                   "overflow in float16)")
    for dtype, got in promoted.items():
        warnings.warn(BNCheckWarning(
            f"{case.title}: returns {dtype_name(got)} for {dtype_name(dtype)} input (its values are right). "
            f"Likely cause: type promotion against its float32 γ, β or statistics; a .half() model then carries "
            f"{dtype_name(got)} activations after this layer: cast the output back to the input dtype"), stacklevel=3)


@check("memory_format")
@assertion_helper
@single_threaded
def assert_memory_format(layer, x, *, name: str = "", seed: int = 0) -> None:
    """channels_last input gives the same output and running statistics as contiguous input."""
    case = layer_case(layer, name, x, seed)
    if x.dim() not in (4, 5):
        raise BNCheckSkip(f"{case.title}: channels_last applies to 4-D and 5-D inputs only, got {x.dim()}-D")
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    for probe in case.inputs:
        for train in case.modes():
            where = case.where(probe, "channels_last", "train mode" if train else "eval mode")
            plain, strided = case.fresh(), case.fresh()
            contiguous, channels_last = probe.x.contiguous(), probe.x.contiguous(memory_format=fmt)
            # torch's own kernels differ between the two layouts (a wide 3-D input: 1e-3): allow what they show
            references = [torch_batch_norm(plain, t, train=train, eps=case.eps, momentum=case.momentum)
                          for t in (contiguous, channels_last)]
            expected = run(plain, contiguous, train=train)
            got = run(strided, channels_last, train=train)
            cause = "the layer reads memory as if contiguous (ignores strides) or reduces over the wrong dims"
            comparisons = [("output", got, expected)]
            if case.tracks and train:
                comparisons += [(key, getattr(strided, key), getattr(plain, key))
                                for key in ("running_mean", "running_var")]
            for k, (quantity, a, b) in enumerate(comparisons):
                tol = tolerance_for("output", probe.x.dtype)
                if None not in references:
                    tol = tol.allowing(deviation(references[1][k], references[0][k]))
                check_close(a, b, where=where, quantity=f"{quantity} vs contiguous input", tol=tol,
                            axes=("sample", "channel") if k == 0 else ("channel",), cause=cause)


def _layout_precision(case: LayerCase, x: torch.Tensor):
    """(dtype, tolerance) to compare layouts in: float64 where the layer runs in it; else x's dtype, at FUSION's
    bound for reductions over the batch (dγ, dβ, statistics sum hundreds of terms in another order)."""
    try:
        with torch.no_grad():
            case.fresh(torch.float64).train(not case.frozen)(x[:2].double())
        return torch.float64, tolerance_for("output", torch.float64)
    except (RuntimeError, TypeError, NotImplementedError):
        return x.dtype, FUSION


def _layouts(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Non-contiguous inputs a user's model hands BN: strides permuted (a transpose made back), a strided slice of
    a wider tensor, and, with spatial dims, one position expanded along the last (stride 0; along the batch it would
    leave a (N, C) input no variance); each against its own contiguous copy."""
    wide = torch.zeros(*x.shape[:-1], 2 * x.shape[-1], dtype=x.dtype, device=x.device)
    wide[..., ::2] = x
    layouts = {"transposed": x.transpose(0, -1).contiguous().transpose(0, -1), "sliced": wide[..., ::2]}
    if x.dim() > 2:
        layouts["expanded"] = x[..., :1].expand_as(x)
    return layouts


def _outcome(twin, x: torch.Tensor, dy: torch.Tensor, train: bool, backward: bool) -> list[tuple[str, torch.Tensor]]:
    """(quantity, value) of a forward (and a backward) on x as given (no copy: its strides are the point)."""
    twin.train(train)
    x = x.detach().requires_grad_(backward)
    with torch.set_grad_enabled(backward):
        y = twin(x)
    out = [("output", y.detach().clone())]
    if backward:
        y.backward(dy)
        weight, bias = params(twin)
        out += [("dx (gradient w.r.t. the input)", x.grad)]
        out += [(q, p.grad) for q, p in (("dγ (weight.grad)", weight), ("dβ (bias.grad)", bias))
                if isinstance(p, torch.nn.Parameter) and p.grad is not None]
    if train:
        out += [(key, getattr(twin, key).detach().clone()) for key in ("running_mean", "running_var")
                if isinstance(getattr(twin, key, None), torch.Tensor)]
    return out


@check("non_contiguous")
@assertion_helper
@single_threaded
def assert_non_contiguous(layer, x, *, name: str = "", seed: int = 0) -> None:
    """A non-contiguous input (transposed, sliced, expanded) gives the same output as its contiguous copy in train
    and eval mode, and the same running statistics and gradients in train mode (a frozen BN: in eval mode); in
    float64 where the layer runs in it, so that a kernel's summation order (strided and contiguous kernels reduce in
    different orders) decides nothing."""
    case = layer_case(layer, name, x, seed)
    probe = case.inputs[0]
    dtype, tol = _layout_precision(case, probe.x)
    xs = probe.x.to(dtype)
    dy = torch.randn(xs.shape, generator=torch.Generator().manual_seed(case.seed + 2), dtype=torch.float64).to(xs)
    expected = {}  # the contiguous copy's outcome, per mode and values (transposed and sliced hold x's values)
    for layout, strided in _layouts(xs).items():
        for train in case.modes():
            where = case.where(probe, f"{layout} ({'non-' if not strided.is_contiguous() else ''}contiguous, "
                                      f"strides {strided.stride()}, {dtype_name(dtype)})",
                               "train mode" if train else "eval mode")
            backward = train or case.frozen  # eval-mode gradients are elementwise: the train ones show strides
            key = (train, layout == "expanded")
            if key not in expected:
                expected[key] = _outcome(case.fresh(dtype), strided.contiguous(), dy, train, backward)
            try:
                got = _outcome(case.fresh(dtype), strided, dy, train, backward)
            except Exception as exc:
                raise fail(where, f"raised {one_line(exc)}",
                           "x.view(...) on an input that is not contiguous: use x.reshape(...) (or x.contiguous() "
                           "first)") from exc
            for (quantity, a), (_, b) in zip(got, expected[key]):
                check_close(a, b, where=where, quantity=f"{quantity} vs the contiguous copy",
                            tol=tol, axes=("sample", "channel") if a.dim() > 1 else ("channel",),
                            cause="the layer reads memory as if contiguous (ignores strides: a raw data pointer, "
                                  "as_strided, or a kernel without .contiguous())")
