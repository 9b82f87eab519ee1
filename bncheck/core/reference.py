"""torch's own batch_norm on a layer's input and state: the bar a layer is held to, never above.

A correct layer cannot beat the rounding of torch's own kernel on the same input (its float16 path without
float32 state, its channels_last_3d kernel on a wide input): comparisons widen their tolerance by it."""

import torch
import torch.nn.functional as F
from torch import nn


def _tensor(module: nn.Module, key: str) -> torch.Tensor | None:
    t = getattr(module, key, None)
    return t.detach() if isinstance(t, torch.Tensor) else None


Result = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


def torch_batch_norm(layer: nn.Module, x: torch.Tensor, *, train: bool, eps: float,
                     momentum: float | None = 0.0) -> Result | None:
    """(output, running_mean, running_var) of torch's F.batch_norm with `layer`'s γ, β and running statistics (on
    copies: the layer is untouched) on x, in train mode or eval mode (batch statistics without running ones);
    None where torch refuses this input (a dtype mix it does not support)."""
    mean, var = _tensor(layer, "running_mean"), _tensor(layer, "running_var")
    tracks = mean is not None and var is not None
    mean, var = (mean.clone(), var.clone()) if tracks else (None, None)
    try:
        with torch.no_grad():
            y = F.batch_norm(x, mean, var, _tensor(layer, "weight"), _tensor(layer, "bias"), train or not tracks,
                             0.1 if momentum is None else momentum, eps)
    except (RuntimeError, TypeError, ValueError):
        return None
    return y, mean, var


def torch_output(layer: nn.Module, x: torch.Tensor, *, train: bool, eps: float) -> torch.Tensor | None:
    """The output of torch's batch_norm with `layer`'s state on x (see torch_batch_norm); None where torch refuses."""
    done = torch_batch_norm(layer, x, train=train, eps=eps)
    return None if done is None else done[0]
