"""The one table of numeric tolerances: got ≈ expected when |got − expected| ≤ atol + rtol·|expected|."""

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# A layer may deviate from the oracle by this many times what torch's own computation deviates on the same input.
REFERENCE_FACTOR = 4.0


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float
    reference: float = 0.0  # the deviation of torch's own computation on the same input, already in atol

    def __str__(self) -> str:
        text = f"rtol={self.rtol:g}, atol={self.atol:.3g}"
        if self.reference:
            text += f", of which {REFERENCE_FACTOR:g} x {self.reference:.3g}: torch's own deviation on this input"
        return text

    def allowing(self, deviation: float) -> "Tolerance":
        """This tolerance widened by REFERENCE_FACTOR times `deviation`, what torch's own computation (its float32
        path vs float64, its channels_last kernel vs its contiguous one) shows on the same input: a bound that
        grows with depth, width and dtype as rounding does. A non-finite deviation widens nothing."""
        if not 0 < deviation < float("inf"):
            return self
        return Tolerance(self.rtol, self.atol + REFERENCE_FACTOR * deviation, deviation)


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


# Fused conv/linear+BN reorders float32 sums over the receptive field: a looser bound than one BN op (used when
# a pair cannot run in float64).
FUSION = Tolerance(rtol=1e-3, atol=1e-3)

_LOW = (torch.float16, torch.bfloat16)

# The dtype whose row judges each quantity, from the dtype the compared values were computed in. A false alarm of
# one kind of comparison is fixed here, once.
QUANTITIES = {
    "output": lambda dtype: dtype,  # a forward's output: the input's dtype
    "gradient": lambda dtype: dtype,
    # running statistics are float32 state whatever the input, unless the model itself is held in half
    "statistics": lambda dtype: dtype if dtype in _LOW else torch.float32,
    # two runs of one computation that must agree (train vs eval outputs, a state_dict round trip, a program's
    # held state): float64's row, as good as identical
    "identical": lambda dtype: torch.float64,
    # a fused conv/linear→BN against the unfused pair, computed in float64 where it runs there
    "fusion": lambda dtype: torch.float32 if dtype in (torch.float32, torch.float64) else dtype,
}


def tolerance_for(quantity: str, dtype: torch.dtype) -> Tolerance:
    """The tolerance for `quantity` (one of QUANTITIES) computed in `dtype`."""
    return tolerance(QUANTITIES[quantity](dtype))


@dataclass(frozen=True)
class PrecisionPolicy:
    """A result in `dtype` outside its own row but within `floor`'s is a BNCheckWarning (`cause`), not a failure."""

    dtype: torch.dtype
    floor: torch.dtype
    cause: str


# A float64 layer that computes in float32 is right, only below its input's precision.
BELOW_INPUT_PRECISION = PrecisionPolicy(torch.float64, torch.float32,
                                        "the layer computes in float32 on float64 input (below its input's precision)")


def warned_floor(dtype: torch.dtype) -> Tolerance:
    """The loosest bound a result in `dtype` may meet and still pass (with a warning, BELOW_INPUT_PRECISION)."""
    return tolerance(BELOW_INPUT_PRECISION.floor if dtype == BELOW_INPUT_PRECISION.dtype else dtype)
