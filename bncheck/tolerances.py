"""The one table of numeric tolerances: got ≈ expected when |got − expected| ≤ atol + rtol·|expected|."""

from dataclasses import dataclass

import torch


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


def tolerance(dtype: torch.dtype) -> Tolerance:
    """The tolerance for results computed in `dtype` (float32's for anything not listed)."""
    return TOLERANCES.get(dtype, TOLERANCES[torch.float32])

# Fused conv/linear+BN reorders float32 sums over the receptive field: a looser bound than one BN op.
FUSION = Tolerance(rtol=1e-3, atol=1e-3)
