"""The convergence item (opt-in): a model reaches 90 % test accuracy in fewer steps than its no-BN twin on real data
that fits its input."""

import torch
from torch import nn

from bncheck.checks.registry import check
from bncheck.core.capture import forward
from bncheck.core.errors import BNCheckSkip, BNCheckUsageError, assertion_helper
from bncheck.core.state import clone
from bncheck.training.convergence import assert_converges_faster
from bncheck.training.data import for_input_shape


@check("convergence", scope="model", trains_model=True, option="convergence",
       settings={"seed": "seed", "data_root": "data_root", "device": "device"})
@assertion_helper
def assert_convergence(model: nn.Module, x, *, name: str = "", seed: int = 0, data_root: str | None = None,
                       device: torch.device | str | None = None) -> None:
    """assert_converges_faster with its defaults and seeds seed..seed+2, on Fashion-MNIST from `data_root` or a
    built-in data set that fits x's sample shape; skips when no data fits or the model is not a classifier of that
    data's classes. Prints the per-seed table (pytest -rP shows it)."""
    if not isinstance(x, torch.Tensor):
        raise BNCheckSkip(f"{name}: the convergence item needs a model with one input tensor")
    shape = tuple(x.shape[1:])
    try:
        data = for_input_shape(shape, data_root=data_root, seed=seed)
    except BNCheckUsageError as exc:
        if data_root is not None:
            raise
        raise BNCheckSkip(f"{name}: no built-in data set for input {'x'.join(map(str, shape))} ({exc}); supply "
                          f"Fashion-MNIST as the data_root setting (a DIR with FashionMNIST/raw/ holding the four "
                          f"uncompressed IDX files), or call bncheck.assert_converges_faster(model, data) in a "
                          f"test") from None
    with torch.no_grad():
        out = forward(clone(model).eval(), x)
    if not (isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] == data.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BNCheckSkip(f"{name}: the convergence item needs a {data.num_classes}-class classifier "
                          f"(output (N, {data.num_classes}) logits), got {got}")
    print(assert_converges_faster(model, data, seeds=range(seed, seed + 3), device=device, progress=False))
