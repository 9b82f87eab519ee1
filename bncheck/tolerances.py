"""The one table of numeric tolerances: got ≈ expected when |got − expected| ≤ atol + rtol·|expected|."""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float

    def __str__(self) -> str:
        return f"rtol={self.rtol:g}, atol={self.atol:g}"


# Outputs of BN are O(1) z-scores times γ plus β, so one absolute floor per dtype is meaningful.
TOLERANCES = {
    torch.float64: Tolerance(rtol=1e-7, atol=1e-7),
    torch.float32: Tolerance(rtol=1e-4, atol=1e-4),
    torch.float16: Tolerance(rtol=1e-2, atol=1e-2),
    torch.bfloat16: Tolerance(rtol=5e-2, atol=5e-2),
}

# Low-precision dtypes the dtype check exercises.
LOW_PRECISION = (torch.float16, torch.bfloat16)


@functools.cache
def runs_batch_norm(device: str, dtype: torch.dtype) -> bool:
    """Whether torch runs a train-mode batch_norm forward and backward in `dtype` on `device` (constant input:
    no random number is drawn)."""
    try:
        x = torch.tensor([[0.0, 1.0], [2.0, 4.0]], device=device).to(dtype).requires_grad_(True)
        w = torch.ones(2, device=device, requires_grad=True)
        F.batch_norm(x, torch.zeros(2, device=device), torch.ones(2, device=device), w, None, True).sum().backward()
        return True
    except (RuntimeError, TypeError, NotImplementedError):
        return False


def dtype_name(dtype: torch.dtype) -> str:
    """torch.float32 -> 'float32', as the plugin's and the CLIs' options spell dtypes."""
    return str(dtype).removeprefix("torch.")


def tolerance(dtype: torch.dtype) -> Tolerance:
    """The tolerance for results computed in `dtype` (float32's for anything not listed)."""
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])

# Fused conv/linear+BN reorders float32 sums over the receptive field: a looser bound than one BN op.
FUSION = Tolerance(rtol=1e-3, atol=1e-3)
