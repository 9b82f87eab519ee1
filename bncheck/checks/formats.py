"""Number formats and memory layouts: low-precision inputs and channels_last give the contract's results."""

import torch

from .. import oracle
from ..compare import check_close, fail
from ..errors import BNCheckSkip
from ..harness import LayerCase, params, run
from ..threads import single_threaded
from ..tolerances import LOW_PRECISION, runs_batch_norm, tolerance


@single_threaded
def assert_dtype(layer, x, *, name: str = "", seed: int = 0, dtypes=LOW_PRECISION) -> None:
    """float16/bfloat16 input gives output of the input dtype, within that dtype's tolerance of the oracle,
    while float32 running statistics and γ/β stay float32. A frozen BN, whose γ, β and statistics are plain
    buffers that type promotion would widen, is checked as users run it: cast to the input dtype."""
    case = LayerCase(layer, name, x, seed)
    usable = [d for d in dtypes if runs_batch_norm(str(x.device), d)]
    if not usable:
        raise BNCheckSkip(f"{case.title}: torch runs no BN in {', '.join(map(str, dtypes))} on {x.device}")
    for dtype in usable:
        for probe in case.inputs:
            xs = probe.x.to(dtype)
            for train in ([False] if case.frozen else [True, False]):
                twin = case.fresh(dtype if case.frozen else None)
                weight, bias = params(twin)
                where = case.where(probe, f"{dtype} input", "train mode" if train else "eval mode")
                y = run(twin, xs, train=train)
                if y.dtype != dtype:
                    raise fail(where, f"output dtype is {y.dtype}, expected the input's {dtype}",
                               "the output is not cast back to the input dtype")
                if train or not case.tracks:
                    expected = oracle.train_forward(xs, case.eps, weight, bias)
                else:
                    expected = oracle.eval_forward(xs, twin.running_mean, twin.running_var, case.eps, weight, bias)
                check_close(y, expected, where=where, quantity="output", tol=tolerance(dtype),
                            axes=("sample", "channel"), cause="low-precision arithmetic in the statistics "
                            "(accumulate in float32), or the wrong statistics for this dtype")
                for key in ("running_mean", "running_var", "weight", "bias"):
                    t = getattr(twin, key, None)
                    if isinstance(t, torch.Tensor) and t.dtype != torch.float32 and not case.frozen:
                        raise fail(where, f"{key} became {t.dtype}, expected float32",
                                   "state cast to the input dtype: running statistics lose precision (and "
                                   "overflow in float16)")


@single_threaded
def assert_memory_format(layer, x, *, name: str = "", seed: int = 0) -> None:
    """channels_last input gives the same output and running statistics as contiguous input."""
    case = LayerCase(layer, name, x, seed)
    if x.dim() not in (4, 5):
        raise BNCheckSkip(f"{case.title}: channels_last applies to 4-D and 5-D inputs only, got {x.dim()}-D")
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    for probe in case.inputs:
        for train in ([False] if case.frozen else [True, False]):
            where = case.where(probe, "channels_last", "train mode" if train else "eval mode")
            plain, strided = case.fresh(), case.fresh()
            expected = run(plain, probe.x.contiguous(), train=train)
            got = run(strided, probe.x.contiguous(memory_format=fmt), train=train)
            tol = tolerance(probe.x.dtype)
            cause = "the layer reads memory as if contiguous (ignores strides) or reduces over the wrong dims"
            check_close(got, expected, where=where, quantity="output vs contiguous input", tol=tol,
                        axes=("sample", "channel"), cause=cause)
            if case.tracks and train:
                for key in ("running_mean", "running_var"):
                    check_close(getattr(strided, key), getattr(plain, key), where=where,
                                quantity=f"{key} vs contiguous input", tol=tol, cause=cause)
